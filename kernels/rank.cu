// Phase B in one launch: for each query's candidate pool, z-score the similarities (over the
// pool, or with fixed statistics) and the Q values (over the pool), clip, mix, and keep the
// top k2, on the device; only k2 positions and their figures per query come back.
//
// It computes what src/retrieve/rank.rs's tensor-op path computes (the spec's "Phase B"
// conventions are documented there: population std, std taken as 1 for a single member, a
// spread under 1e-9 or all-equal values, q_min applied before the statistics, exploration
// ranking by random keys), one block per query instead of some forty tensor ops. The CUDA test
// suite compares its hits with the scalar reference of the spec.
//
// Layout: pools are padded to p columns, p <= RANK_MAX; member j of row r is valid when
// j < lens[r] (and its Q passes q_min). Launch: grid (1, B), block RANK_THREADS.

#include <math.h>

#include "common.cuh"

#define RANK_THREADS 256
#define RANK_MAX 1024

// Must match `RankParams` in src/kernels/cuda.rs field for field.
struct RankParams {
    float lambda;
    float one_minus_lambda;  // rounded from f64, as the tensor path's affine does
    float z_clip;
    float fixed_mul;  // zsim = clamp(sim * fixed_mul + fixed_add) when `fixed`
    float fixed_add;
    float q_min;
    uint32_t fixed;
    uint32_t has_q_min;
    uint32_t p;
    uint32_t k2;  // outputs per row: min(k2, p)
};

__device__ __forceinline__ float clampf(float x, float c) { return fminf(fmaxf(x, -c), c); }

// Sum over the block; every thread gets the total. `scratch` holds RANK_THREADS floats.
__device__ float block_sum(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (uint32_t s = RANK_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        __syncthreads();
    }
    float total = scratch[0];
    __syncthreads();
    return total;
}

__device__ float block_max(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (uint32_t s = RANK_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + s]);
        __syncthreads();
    }
    float total = scratch[0];
    __syncthreads();
    return total;
}

// Mean and the std used for z-scores of the valid entries of x (see the conventions above).
__device__ void pool_stats(const float* x, const float* valid, uint32_t p, float count,
                           float* scratch, float& mean, float& std) {
    float sum = 0.f, hi = -INFINITY, lo = INFINITY;
    for (uint32_t j = threadIdx.x; j < p; j += RANK_THREADS) {
        if (valid[j] > 0.f) {
            sum += x[j];
            hi = fmaxf(hi, x[j]);
            lo = fminf(lo, x[j]);
        }
    }
    float denom = fmaxf(count, 1.f);
    mean = block_sum(sum, scratch) / denom;
    hi = block_max(hi, scratch);
    lo = -block_max(-lo, scratch);
    float sq = 0.f;
    for (uint32_t j = threadIdx.x; j < p; j += RANK_THREADS) {
        float c = (x[j] - mean) * valid[j];
        sq += c * c;
    }
    float s = sqrtf(block_sum(sq, scratch) / denom);
    bool spread = s > 1e-9f && count > 1.f && hi > lo;
    std = spread ? s : 1.f;
}

extern "C" __global__ void memrl_rank(const float* sims, const uint32_t* slots,
                                      const uint32_t* lens, const uint32_t* explore,
                                      const float* random_keys, const float* utility,
                                      RankParams prm, uint32_t* out_pos, float* out_fields) {
    __shared__ float s_sim[RANK_MAX], s_q[RANK_MAX], s_valid[RANK_MAX];
    __shared__ uint32_t s_keys[RANK_MAX], s_cols[RANK_MAX];
    __shared__ float scratch[RANK_THREADS];
    const uint32_t row = blockIdx.y, p = prm.p, len = lens[row];
    const size_t base = (size_t)row * p;
    for (uint32_t j = threadIdx.x; j < p; j += RANK_THREADS) {
        bool v = j < len;
        float q = v ? utility[slots[base + j]] : 0.f;
        if (prm.has_q_min && !(q >= prm.q_min)) v = false;
        s_sim[j] = sims[base + j];
        s_q[j] = q;
        s_valid[j] = v ? 1.f : 0.f;
    }
    __syncthreads();
    float count_part = 0.f;
    for (uint32_t j = threadIdx.x; j < p; j += RANK_THREADS) count_part += s_valid[j];
    const float count = block_sum(count_part, scratch);

    float q_mean, q_std, s_mean = 0.f, s_std = 1.f;
    pool_stats(s_q, s_valid, p, count, scratch, q_mean, q_std);
    if (!prm.fixed) pool_stats(s_sim, s_valid, p, count, scratch, s_mean, s_std);

    // In place: s_sim becomes zsim, s_q becomes zq (the score is recomputed from them after the
    // sort); the sort key goes to s_keys.
    const bool exploring = explore[row] != 0;
    const uint32_t len2 = pow2_at_least(p);
    for (uint32_t j = threadIdx.x; j < len2; j += RANK_THREADS) {
        if (j < p) {
            float v = s_valid[j];
            float zq = clampf(((s_q[j] - q_mean) * v) / q_std, prm.z_clip);
            float zs = prm.fixed ? clampf(s_sim[j] * prm.fixed_mul + prm.fixed_add, prm.z_clip)
                                 : clampf(((s_sim[j] - s_mean) * v) / s_std, prm.z_clip);
            float score = zs * prm.one_minus_lambda + zq * prm.lambda;
            float key = v > 0.f ? (exploring ? random_keys[base + j] : score) : -INFINITY;
            s_sim[j] = zs;
            s_q[j] = zq;
            s_keys[j] = ordered(key);
            s_cols[j] = j;
        } else {
            s_keys[j] = 0u;
            s_cols[j] = 0xFFFFFFFFu;
        }
    }
    __syncthreads();
    bitonic_sort(s_keys, s_cols, len2);
    const uint32_t kk = prm.k2 < p ? prm.k2 : p;
    const size_t plane = (size_t)gridDim.y * kk;
    for (uint32_t i = threadIdx.x; i < kk; i += RANK_THREADS) {
        uint32_t j = s_cols[i];
        float zs = s_sim[j], zq = s_q[j];
        size_t o = (size_t)row * kk + i;
        out_pos[o] = j;
        out_fields[o] = s_valid[j];
        out_fields[plane + o] = zs;
        out_fields[2 * plane + o] = zq;
        out_fields[3 * plane + o] = zs * prm.one_minus_lambda + zq * prm.lambda;
    }
}
