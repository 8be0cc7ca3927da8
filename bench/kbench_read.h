// bench/kbench_read.h — kvf-kbench's read-ceiling kernels (bench/kbench_read.cu).
#ifndef KVF_BENCH_KBENCH_READ_H
#define KVF_BENCH_KBENCH_READ_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Reads `bytes` (a multiple of 16) at p with `blocks` blocks of 256 threads, unroll
// (1, 4 or 8) 16-byte loads in flight a thread; XORs them into out[blockIdx] (blocks
// words, zeroed by the caller or not: the value is not checked). 0, or -1 on a bad
// unroll or launch error.
int kvf_kb_read_stream(uint32_t *out, const void *p, size_t bytes, int blocks, int unroll, cudaStream_t stream);

// Reads what decode attention reads for n_seqs one-token tiles: the K and V rows of
// keys [0, len[s]) of sequence s, in its blocks bt[s * max_blocks ...] of the paged caches
// k, v (n_blocks, bs, n_kv, head_dim) bf16, a block per (sequence, 4 KV heads), unroll
// (4, 8 or 16) keys in flight a thread. head_dim 128 and n_kv a multiple of 4 only.
// out: n_seqs * n_kv / 4 words.
int kvf_kb_read_paged(uint32_t *out, const void *k, const void *v, const int32_t *len, const int32_t *bt, int n_seqs,
                      int max_blocks, int n_kv, int head_dim, int bs, int unroll, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
