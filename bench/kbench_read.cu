// bench/kbench_read.cu — kvf-kbench's read ceilings (the "read" section): how fast
// this device streams bytes from its memory when nothing else is done with them.
// The memory-bound kernels (decode attention above all) are judged against these,
// not against the datasheet. Benchmark-only: not part of kernels/.
//
// Stream: one flat buffer, 16-byte loads, U of them in flight a thread, grid-stride.
// Paged: the decode attention's access pattern without its arithmetic: a block per
// (sequence, group of 4 KV heads) reads the 1 KB of K and of V that the group's heads
// hold for each key (paged cache (n_blocks, bs, KV, HD) bf16, bs and KV*HD fixed by the
// caller), U keys in flight a thread pair. Both XOR what they read into one word a block.
#include <stdint.h>

#include <cuda_runtime.h>

#include "bench/kbench_read.h"

template <int U>
static __global__ void __launch_bounds__(256) s_read_stream(uint32_t *out, const uint4 *p, size_t n) {
    uint32_t acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + (U - 1) * stride < n; i += U * stride) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = __ldcs(p + i + u * stride);  // streaming: no reuse
#pragma unroll
        for (int u = 0; u < U; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n; i += stride) {
        const uint4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    acc = __reduce_xor_sync(0xffffffffu, acc);
    if ((threadIdx.x & 31) == 0) atomicXor(out + blockIdx.x, acc);
}

// 128 threads: thread t reads 16 bytes at t % 64 of a key's 1 KB group row, of K (t < 64) or V.
template <int U>
static __global__ void __launch_bounds__(128) s_read_paged(uint32_t *out, const uint4 *kc, const uint4 *vc,
                                                           const int32_t *len, const int32_t *bt, int max_blocks,
                                                           int groups, int bs, int row_chunks) {
    const int seq = blockIdx.x / groups, g = blockIdx.x % groups;
    const int t = threadIdx.x & 63;
    const uint4 *c = threadIdx.x < 64 ? kc : vc;
    const int32_t *btab = bt + (size_t)seq * max_blocks;
    const int n = len[seq];
    uint32_t acc = 0;
    int key = 0;
    for (; key + U <= n; key += U) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int k = key + u, blk = btab[k / bs];
            v[u] = __ldcs(c + ((size_t)blk * bs + k % bs) * row_chunks + (size_t)g * 64 + t);
        }
#pragma unroll
        for (int u = 0; u < U; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; key < n; key++) {
        const uint4 v = __ldcs(c + ((size_t)btab[key / bs] * bs + key % bs) * row_chunks + (size_t)g * 64 + t);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    acc = __reduce_xor_sync(0xffffffffu, acc);
    if ((threadIdx.x & 31) == 0) atomicXor(out + blockIdx.x, acc);
}

extern "C" int kvf_kb_read_stream(uint32_t *out, const void *p, size_t bytes, int blocks, int unroll,
                                  cudaStream_t stream) {
    const size_t n = bytes / 16;
    switch (unroll) {
    case 1: s_read_stream<1><<<blocks, 256, 0, stream>>>(out, (const uint4 *)p, n); break;
    case 4: s_read_stream<4><<<blocks, 256, 0, stream>>>(out, (const uint4 *)p, n); break;
    case 8: s_read_stream<8><<<blocks, 256, 0, stream>>>(out, (const uint4 *)p, n); break;
    default: return -1;
    }
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}

extern "C" int kvf_kb_read_paged(uint32_t *out, const void *k, const void *v, const int32_t *len, const int32_t *bt,
                                 int n_seqs, int max_blocks, int n_kv, int head_dim, int bs, int unroll,
                                 cudaStream_t stream) {
    // a group is 4 KV heads of HD bf16: 64 chunks of 16 bytes when HD is 128
    if (head_dim != 128 || n_kv % 4 != 0) return -1;
    const int groups = n_kv / 4, row_chunks = n_kv * head_dim * 2 / 16;
    const int grid = n_seqs * groups;
    switch (unroll) {
    case 4:
        s_read_paged<4><<<grid, 128, 0, stream>>>(out, (const uint4 *)k, (const uint4 *)v, len, bt, max_blocks, groups,
                                                  bs, row_chunks);
        break;
    case 8:
        s_read_paged<8><<<grid, 128, 0, stream>>>(out, (const uint4 *)k, (const uint4 *)v, len, bt, max_blocks, groups,
                                                  bs, row_chunks);
        break;
    case 16:
        s_read_paged<16><<<grid, 128, 0, stream>>>(out, (const uint4 *)k, (const uint4 *)v, len, bt, max_blocks,
                                                   groups, bs, row_chunks);
        break;
    default: return -1;
    }
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}
