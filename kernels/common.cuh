// Device helpers shared by our kernels: the order-preserving keys and the bitonic sort that
// both the top-k and Phase B use to order (key desc, column asc).
#pragma once

#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ uint32_t ordered(float x) {
    uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint32_t ordered16(uint16_t u) {
    return (u & 0x8000u) ? (uint32_t)(uint16_t)~u : (uint32_t)(u | 0x8000u);
}

__device__ __forceinline__ uint32_t ordered(__half x) { return ordered16(__half_as_ushort(x)); }

__device__ __forceinline__ uint32_t ordered(__nv_bfloat16 x) {
    return ordered16(__bfloat16_as_ushort(x));
}

// a comes before b: larger key first, then lower column.
__device__ __forceinline__ bool before(uint32_t ka, uint32_t ia, uint32_t kb, uint32_t ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// Bitonic sort of `len` (a power of two, at most 1024) pairs in shared memory into
// `before` order. Every thread of the block calls it.
__device__ void bitonic_sort(uint32_t* keys, uint32_t* cols, uint32_t len) {
    for (uint32_t size = 2; size <= len; size <<= 1) {
        for (uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
            for (uint32_t t = threadIdx.x; t < len / 2; t += blockDim.x) {
                uint32_t i = 2 * t - (t & (stride - 1));
                uint32_t j = i + stride;
                bool forward = (i & size) == 0;
                bool swap = forward ? before(keys[j], cols[j], keys[i], cols[i])
                                    : before(keys[i], cols[i], keys[j], cols[j]);
                if (swap) {
                    uint32_t tk = keys[i]; keys[i] = keys[j]; keys[j] = tk;
                    uint32_t tc = cols[i]; cols[i] = cols[j]; cols[j] = tc;
                }
            }
            __syncthreads();
        }
    }
}

__device__ __forceinline__ uint32_t pow2_at_least(uint32_t n) {
    uint32_t p = 1;
    while (p < n) p <<= 1;
    return p;
}
