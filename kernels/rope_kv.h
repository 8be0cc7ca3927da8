// kernels/rope_kv.h — RoPE on q and k, fused with writing k and v into the paged cache.
#ifndef KVF_KERNELS_ROPE_KV_H
#define KVF_KERNELS_ROPE_KV_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// For each token t (position pos[t] of sequence tok_seq[t]), with the fused QKV
// projection row x = qkv[t] (+ bias): q heads and k heads are rotated with HF's
// rotate_half convention (pairs i and i + head_dim/2, angle pos * inv_freq[i],
// f32); q goes to q_out, k and v to slot pos % block_size of block
// block_table[seq, pos / block_size] of this layer's cache (layout of
// worker/backend.h). A block id outside [0, n_blocks) is skipped (the backend
// checks block tables on the host). Returns 0, or -1 with err set.
int kvf_rope_kv(uint16_t *q_out,              // (n, n_heads, head_dim) bf16, device
                uint16_t *k_cache,            // (n_blocks, block_size, n_kv, head_dim) bf16, device
                uint16_t *v_cache,            // (n_blocks, block_size, n_kv, head_dim) bf16, device
                const uint16_t *qkv,          // (n, (n_heads + 2*n_kv) * head_dim) bf16, device
                const float *bias,            // ((n_heads + 2*n_kv) * head_dim) device, or NULL
                const float *inv_freq,        // (head_dim / 2) device
                const int32_t *pos,           // (n) device
                const int32_t *tok_seq,       // (n) device: the sequence (row of block_table) of each token
                const int32_t *block_table,   // (n_seqs, max_blocks) device
                int max_blocks, int n, int n_heads, int n_kv, int head_dim, int block_size,
                int n_blocks, cudaStream_t stream, kvf_err_t *err);

// The same from an f32 qkv (a GEMM that wrote f32: q and k are rounded to bf16
// only once, after the rotation).
int kvf_rope_kv_f32(uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache,
                    const float *qkv,             // (n, (n_heads + 2*n_kv) * head_dim) device
                    const float *bias, const float *inv_freq, const int32_t *pos, const int32_t *tok_seq,
                    const int32_t *block_table, int max_blocks, int n, int n_heads, int n_kv, int head_dim,
                    int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err);

// The same two writing an FP8 cache: K (after the rotation) and V rounded from
// f32 to E4M3 (nearest even, saturated at +-448: common/fp8.h); q_out stays bf16.
int kvf_rope_kv_fp8(uint16_t *q_out,
                    uint8_t *k_cache,  // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                    uint8_t *v_cache,  // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                    const uint16_t *qkv, const float *bias, const float *inv_freq, const int32_t *pos,
                    const int32_t *tok_seq, const int32_t *block_table, int max_blocks, int n, int n_heads, int n_kv,
                    int head_dim, int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err);
int kvf_rope_kv_f32_fp8(uint16_t *q_out, uint8_t *k_cache, uint8_t *v_cache, const float *qkv, const float *bias,
                        const float *inv_freq, const int32_t *pos, const int32_t *tok_seq,
                        const int32_t *block_table, int max_blocks, int n, int n_heads, int n_kv, int head_dim,
                        int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
