// Top-k along the rows of a B x N score matrix (f32, f16 or bf16): exact, deterministic, any
// N < 2^32, k <= 1024.
//
// Result order: score descending, ties by lower column (the engine's tie rule). Scores are
// compared through `ordered`, a bijection of their bit patterns onto unsigned integers that
// preserves Rust's `total_cmp` order, so every value (-inf, NaN included) has one place.
// f32 scores give 32-bit keys, f16 and bf16 scores 16-bit keys (half the bytes and fewer
// radix passes: a GPU bank in f16 is ranked on its own f16 scores, never converted).
//
// Algorithm (kernels/README.md has the reasoning):
//   small rows (N <= 1024): one block per row loads the row into shared memory and sorts it
//       (`memrl_topk_small_*`);
//   large rows: radix select of the k-th largest key, most significant digit first, digits of
//       up to 12 bits (12+4 for 16-bit keys, 12+12+8 for 32-bit keys): `memrl_topk_histogram_*`
//       per histogram chunk, then `memrl_topk_select` per row. Then a deterministic compaction:
//       `memrl_topk_count_*` counts each chunk's keys above and equal to the threshold,
//       `memrl_topk_offsets` turns those into exclusive prefix sums, `memrl_topk_gather_*`
//       writes the keys above the threshold and the lowest-column keys equal to it, in column
//       order, with no atomics; `memrl_topk_sort` sorts those k candidates. The scores are
//       streamed once per digit plus twice; nothing else is proportional to N.
//
// Invariants the launches rely on (checked by the Rust side, src/kernels/cuda.rs):
//   blockDim.x == TOPK_THREADS for the streaming kernels and `select`, TOPK_SORT_THREADS for
//   `small`, `offsets` and `sort`;
//   gridDim = (chunks, B) with chunks = ceil(N / chunk) for the streaming kernels (the histogram
//   chunk and the count/gather chunk may differ; select is told the histogram's), (1, B) else;
//   1 <= k <= min(N, 1024); digits of 1 to 12 bits (4 to 12 for select's groups of 16 bins).
// src/kernels/mirror.rs repeats this algorithm step for step on the CPU, where it is tested
// against a plain sort.

#include "common.cuh"

#define TOPK_THREADS 256
#define TOPK_WARPS (TOPK_THREADS / 32)
#define TOPK_SORT_THREADS 512
#define TOPK_SORT_MAX 1024
#define TOPK_BINS 4096

// Per row: the radix-select state. `prefix` holds the digits of the k-th key found so far,
// `mask` the bits they cover, `remaining` how many keys equal to the prefix are still needed.
struct RowState {
    uint32_t prefix;
    uint32_t mask;
    uint32_t remaining;
    uint32_t k;
};

// Rows of at most TOPK_SORT_MAX columns: sort the whole row, keep the first k.
template <typename T>
__device__ void topk_small(const T* scores, uint32_t n, uint32_t k, uint32_t* out) {
    __shared__ uint32_t keys[TOPK_SORT_MAX];
    __shared__ uint32_t cols[TOPK_SORT_MAX];
    const T* row = scores + (size_t)blockIdx.y * n;
    uint32_t len = pow2_at_least(n);
    for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) {
        // Padding sorts after every real element: key 0 is the lowest, column max the last.
        keys[i] = i < n ? ordered(row[i]) : 0u;
        cols[i] = i < n ? i : 0xFFFFFFFFu;
    }
    __syncthreads();
    bitonic_sort(keys, cols, len);
    for (uint32_t i = threadIdx.x; i < k; i += blockDim.x) out[(size_t)blockIdx.y * k + i] = cols[i];
}

// One radix pass: a histogram of the digit (key >> shift) & (2^bits - 1) over the keys whose
// higher digits match the row's prefix, per histogram chunk: hist[row][chunk][TOPK_BINS].
// Digits are up to 12 bits wide: cosine scores share their sign and exponent bits, so a narrow
// first digit would pile every score into a few bins and serialize the shared-memory atomics;
// 12 bits spread them, and a plain atomic per key is then cheap.
template <typename T>
__device__ void topk_histogram(const T* scores, uint32_t n, uint32_t chunk, const RowState* state,
                               uint32_t shift, uint32_t bits, uint32_t* hist) {
    __shared__ uint32_t bins[TOPK_BINS];
    const uint32_t nbins = 1u << bits, digit_mask = nbins - 1u;
    for (uint32_t i = threadIdx.x; i < nbins; i += blockDim.x) bins[i] = 0;
    __syncthreads();
    const RowState st = state[blockIdx.y];
    const T* row = scores + (size_t)blockIdx.y * n;
    uint64_t start = (uint64_t)blockIdx.x * chunk;
    uint64_t end = start + chunk < n ? start + chunk : n;
    for (uint64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        uint32_t key = ordered(row[i]);
        if ((key & st.mask) == st.prefix) atomicAdd(&bins[(key >> shift) & digit_mask], 1u);
    }
    __syncthreads();
    uint32_t* out = hist + ((size_t)blockIdx.y * gridDim.x + blockIdx.x) * TOPK_BINS;
    for (uint32_t i = threadIdx.x; i < nbins; i += blockDim.x) out[i] = bins[i];
}

// Sums a row's chunk histograms and fixes the next digit of the k-th key. Block: TOPK_THREADS
// threads; grid (1, B).
extern "C" __global__ void memrl_topk_select(const uint32_t* hist, uint32_t chunks,
                                             RowState* state, uint32_t shift, uint32_t bits) {
    __shared__ uint32_t total[TOPK_BINS];
    __shared__ uint32_t group[TOPK_BINS / 16];
    const uint32_t nbins = 1u << bits, ngroups = nbins / 16;
    const uint32_t* h = hist + (size_t)blockIdx.y * chunks * TOPK_BINS;
    for (uint32_t b = threadIdx.x; b < nbins; b += blockDim.x) {
        uint32_t sum = 0;
        for (uint32_t c = 0; c < chunks; ++c) sum += h[(size_t)c * TOPK_BINS + b];
        total[b] = sum;
    }
    __syncthreads();
    for (uint32_t g = threadIdx.x; g < ngroups; g += blockDim.x) {
        uint32_t sum = 0;
        for (uint32_t b = 16 * g; b < 16 * g + 16; ++b) sum += total[b];
        group[g] = sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        RowState st = state[blockIdx.y];
        uint32_t need = st.remaining, digit = 0;
        // Walk down by groups of 16 bins, then bins, to the one holding the k-th key.
        for (int g = (int)ngroups - 1; g >= 0; --g) {
            if (group[g] < need) {
                need -= group[g];
                continue;
            }
            for (int d = 16 * g + 15; d >= 16 * g; --d) {
                if (total[d] >= need) {
                    digit = (uint32_t)d;
                    break;
                }
                need -= total[d];
            }
            break;
        }
        st.prefix |= digit << shift;
        st.mask |= (nbins - 1u) << shift;
        st.remaining = need;
        state[blockIdx.y] = st;
    }
}

// Per chunk: how many keys are above the threshold and how many equal it:
// counts[row][chunk] = (greater, equal). Totals only, so no barrier per tile.
template <typename T>
__device__ void topk_count(const T* scores, uint32_t n, uint32_t chunk, const RowState* state,
                           uint2* counts) {
    __shared__ uint32_t sums[2];
    if (threadIdx.x == 0) sums[0] = sums[1] = 0;
    __syncthreads();
    const uint32_t threshold = state[blockIdx.y].prefix;
    const T* row = scores + (size_t)blockIdx.y * n;
    uint64_t start = (uint64_t)blockIdx.x * chunk;
    uint64_t end = start + chunk < n ? start + chunk : n;
    uint32_t greater = 0, equal = 0;
    for (uint64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        uint32_t key = ordered(row[i]);
        greater += key > threshold;
        equal += key == threshold;
    }
    for (int off = 16; off > 0; off >>= 1) {
        greater += __shfl_down_sync(0xFFFFFFFFu, greater, off);
        equal += __shfl_down_sync(0xFFFFFFFFu, equal, off);
    }
    if ((threadIdx.x & 31) == 0 && (greater | equal)) {
        atomicAdd(&sums[0], greater);
        atomicAdd(&sums[1], equal);
    }
    __syncthreads();
    if (threadIdx.x == 0)
        counts[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = make_uint2(sums[0], sums[1]);
}

// Exclusive prefix sums of a row's chunk counts, in place. Block: TOPK_SORT_THREADS threads;
// each sums a contiguous run of chunks, then the runs are scanned in shared memory.
extern "C" __global__ void memrl_topk_offsets(uint2* counts, uint32_t chunks) {
    __shared__ uint2 runs[TOPK_SORT_THREADS];
    uint2* c = counts + (size_t)blockIdx.y * chunks;
    uint32_t per = (chunks + blockDim.x - 1) / blockDim.x;
    uint32_t first = threadIdx.x * per, last = first + per < chunks ? first + per : chunks;
    uint2 sum = make_uint2(0, 0);
    for (uint32_t i = first; i < last; ++i) {
        sum.x += c[i].x;
        sum.y += c[i].y;
    }
    runs[threadIdx.x] = sum;
    __syncthreads();
    // Hillis-Steele inclusive scan over the runs.
    for (uint32_t step = 1; step < blockDim.x; step <<= 1) {
        uint2 add = threadIdx.x >= step ? runs[threadIdx.x - step] : make_uint2(0, 0);
        __syncthreads();
        runs[threadIdx.x].x += add.x;
        runs[threadIdx.x].y += add.y;
        __syncthreads();
    }
    uint2 acc = threadIdx.x > 0 ? runs[threadIdx.x - 1] : make_uint2(0, 0);
    for (uint32_t i = first; i < last; ++i) {
        uint2 v = c[i];
        c[i] = acc;
        acc.x += v.x;
        acc.y += v.y;
    }
}

// Block-wide exclusive prefix of two flags over one tile; returns each thread's ranks and the
// tile's totals. Needs TOPK_WARPS * 2 words of shared scratch.
__device__ __forceinline__ void tile_ranks(bool a, bool b, uint32_t* scratch, uint32_t& rank_a,
                                           uint32_t& rank_b, uint32_t& total_a,
                                           uint32_t& total_b) {
    uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t ba = __ballot_sync(0xFFFFFFFFu, a), bb = __ballot_sync(0xFFFFFFFFu, b);
    uint32_t below = (1u << lane) - 1u;
    if (lane == 0) {
        scratch[warp] = __popc(ba);
        scratch[TOPK_WARPS + warp] = __popc(bb);
    }
    __syncthreads();
    uint32_t before_a = 0, before_b = 0;
    total_a = 0;
    total_b = 0;
    for (uint32_t w = 0; w < TOPK_WARPS; ++w) {
        uint32_t ca = scratch[w], cb = scratch[TOPK_WARPS + w];
        if (w < warp) {
            before_a += ca;
            before_b += cb;
        }
        total_a += ca;
        total_b += cb;
    }
    rank_a = before_a + __popc(ba & below);
    rank_b = before_b + __popc(bb & below);
    __syncthreads();  // scratch is reused by the next tile
}

// Writes the row's k candidates: the keys above the threshold at [0, k - remaining) and the
// first `remaining` keys equal to it (lowest columns) after them, each in column order.
template <typename T>
__device__ void topk_gather(const T* scores, uint32_t n, uint32_t chunk, const RowState* state,
                            const uint2* offsets, uint32_t* cand_keys, uint32_t* cand_cols) {
    __shared__ uint32_t scratch[2 * TOPK_WARPS];
    const RowState st = state[blockIdx.y];
    const uint32_t k = st.k, equal_needed = st.remaining, greater_total = k - equal_needed;
    uint2 at = offsets[(size_t)blockIdx.y * gridDim.x + blockIdx.x];
    // Nothing of this chunk can be written: every key above the threshold before it has filled
    // the greater slots, and enough equal keys came before it.
    if (at.x >= greater_total && at.y >= equal_needed) return;
    const T* row = scores + (size_t)blockIdx.y * n;
    uint32_t* keys_out = cand_keys + (size_t)blockIdx.y * k;
    uint32_t* cols_out = cand_cols + (size_t)blockIdx.y * k;
    uint64_t start = (uint64_t)blockIdx.x * chunk;
    uint64_t end = start + chunk < n ? start + chunk : n;
    for (uint64_t base = start; base < end; base += blockDim.x) {
        uint64_t i = base + threadIdx.x;
        uint32_t key = i < end ? ordered(row[i]) : 0u;
        bool g = i < end && key > st.prefix, e = i < end && key == st.prefix;
        // Almost every tile holds no candidate (k of N): one barrier decides for the block.
        if (!__syncthreads_or(g || e)) continue;
        uint32_t ra, rb, ta, tb;
        tile_ranks(g, e, scratch, ra, rb, ta, tb);
        uint32_t pg = at.x + ra, pe = at.y + rb;
        if (g && pg < greater_total) {
            keys_out[pg] = key;
            cols_out[pg] = (uint32_t)i;
        }
        if (e && pe < equal_needed) {
            keys_out[greater_total + pe] = key;
            cols_out[greater_total + pe] = (uint32_t)i;
        }
        at.x += ta;
        at.y += tb;
    }
}

// Sorts each row's k candidates and writes their columns: out[row][0..k).
extern "C" __global__ void memrl_topk_sort(const uint32_t* cand_keys, const uint32_t* cand_cols,
                                           uint32_t k, uint32_t* out) {
    __shared__ uint32_t keys[TOPK_SORT_MAX];
    __shared__ uint32_t cols[TOPK_SORT_MAX];
    const size_t row = blockIdx.y;
    uint32_t len = pow2_at_least(k);
    for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) {
        keys[i] = i < k ? cand_keys[row * k + i] : 0u;
        cols[i] = i < k ? cand_cols[row * k + i] : 0xFFFFFFFFu;
    }
    __syncthreads();
    bitonic_sort(keys, cols, len);
    for (uint32_t i = threadIdx.x; i < k; i += blockDim.x) out[row * k + i] = cols[i];
}

// The entry points of the templated kernels, one per score type.
#define MEMRL_TOPK_ENTRIES(T, SUFFIX)                                                            \
    extern "C" __global__ void memrl_topk_small_##SUFFIX(const T* scores, uint32_t n,            \
                                                         uint32_t k, uint32_t* out) {            \
        topk_small<T>(scores, n, k, out);                                                        \
    }                                                                                            \
    extern "C" __global__ void memrl_topk_histogram_##SUFFIX(                                    \
        const T* scores, uint32_t n, uint32_t chunk, const RowState* state, uint32_t shift,      \
        uint32_t bits, uint32_t* hist) {                                                         \
        topk_histogram<T>(scores, n, chunk, state, shift, bits, hist);                           \
    }                                                                                            \
    extern "C" __global__ void memrl_topk_count_##SUFFIX(                                        \
        const T* scores, uint32_t n, uint32_t chunk, const RowState* state, uint2* counts) {     \
        topk_count<T>(scores, n, chunk, state, counts);                                          \
    }                                                                                            \
    extern "C" __global__ void memrl_topk_gather_##SUFFIX(                                       \
        const T* scores, uint32_t n, uint32_t chunk, const RowState* state,                      \
        const uint2* offsets, uint32_t* cand_keys, uint32_t* cand_cols) {                        \
        topk_gather<T>(scores, n, chunk, state, offsets, cand_keys, cand_cols);                  \
    }

MEMRL_TOPK_ENTRIES(float, f32)
MEMRL_TOPK_ENTRIES(__half, f16)
MEMRL_TOPK_ENTRIES(__nv_bfloat16, bf16)
