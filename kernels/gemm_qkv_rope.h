// kernels/gemm_qkv_rope.h — the attention's QKV projection with RoPE and the paged
// cache write in its epilogue (sm_90a: TMA loads, warpgroup MMA): what cuBLASLt's qkv
// GEMM and kvf_rope_kv do, in one kernel, so the (n, (H + 2 KV) head_dim) product
// never goes to memory and is read back once more.
#ifndef KVF_KERNELS_GEMM_QKV_ROPE_H
#define KVF_KERNELS_GEMM_QKV_ROPE_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// The head size the kernel takes (two heads a 256-column tile).
#define KVF_QKV_ROPE_HEAD_DIM 128

// 1 when kernels/ was built for sm_90a and the current device is compute capability 9.0.
int kvf_gemm_qkv_rope_available(void);

// A step's table, the same for every layer: for token t at position pos[t] of sequence
// tok_seq[t], cs[t, i] = (cos, sin) of pos[t] * inv_freq[i] (sincosf, as kvf_rope_kv),
// and slot[t] = the element offset of the token's row in a layer's K (or V) cache,
// ((block * block_size + pos % block_size) * n_kv * head_dim) with block =
// block_table[seq, pos / block_size], or -1 when that block id is outside
// [0, n_blocks). Returns 0, or -1 with err set.
int kvf_rope_table(float *cs,                   // (n, head_dim / 2, 2) device
                   int64_t *slot,               // (n) device
                   const float *inv_freq,       // (head_dim / 2) device
                   const int32_t *pos,          // (n) device
                   const int32_t *tok_seq,      // (n) device
                   const int32_t *block_table,  // (n_seqs, max_blocks) device
                   int max_blocks, int n, int head_dim, int n_kv, int block_size, int n_blocks, cudaStream_t stream,
                   kvf_err_t *err);

// qkv = x @ w_qkv^T, f32 accumulation (no q/k/v bias: the cuda backend keeps rope_kv for
// models with one); then as kvf_rope_kv: q and k heads
// rotated (HF's rotate_half pairs i, i + 64, angles from cs), q into q_out, k and v
// into the cache rows at slot (none where slot is -1), each value rounded to bf16 once
// (kvf_rope_kv rounds the GEMM's output first). head_dim KVF_QKV_ROPE_HEAD_DIM,
// n_heads even, d_in a multiple of 64, pointers 16-byte aligned. Returns 0, or -1
// with err set (KVF_E_INVAL: arguments; KVF_E_UNSUPPORTED: not available here).
int kvf_gemm_qkv_rope(uint16_t *q_out,        // (n, n_heads, head_dim) bf16, device
                      uint16_t *k_cache,      // (n_blocks, block_size, n_kv, head_dim) bf16, device
                      uint16_t *v_cache,      // (n_blocks, block_size, n_kv, head_dim) bf16, device
                      const uint16_t *x,      // (n, d_in) bf16, device
                      const uint16_t *w_qkv,  // ((n_heads + 2 n_kv) head_dim, d_in) bf16, device
                      const float *cs,        // kvf_rope_table's
                      const int64_t *slot,    // kvf_rope_table's
                      int n, int d_in, int n_heads, int n_kv, int head_dim, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
