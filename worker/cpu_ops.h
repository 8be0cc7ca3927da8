// worker/cpu_ops.h — the CPU reference ops (float32). The cpu backend is built
// from these; every CUDA kernel is tested against the op of the same name here.
//
// Shapes are given in comments; all arrays row-major and contiguous unless a
// stride says otherwise.
#ifndef KVF_CPU_OPS_H
#define KVF_CPU_OPS_H

#include <stdint.h>

#include "common/modelcfg.h"

// out[t, :] = table[ids[t], :]
void kvf_cpu_embed(float *out,             // (n, dim)
                   const float *table,     // (vocab, dim)
                   const int32_t *ids,     // (n)
                   int n, int dim);

// out = x / rms(x) * w, per row
void kvf_cpu_rmsnorm(float *out,           // (n, dim)
                     const float *x,       // (n, dim)
                     const float *w,       // (dim)
                     int n, int dim, float eps);

// out = x @ w^T (+ bias), w in HF layout (out_features, in_features)
void kvf_cpu_matmul(float *out,            // (n, d_out)
                    const float *x,        // (n, d_in)
                    const float *w,        // (d_out, d_in)
                    const float *bias,     // (d_out) or NULL
                    int n, int d_in, int d_out);

// Output columns [o_begin, o_end) of kvf_cpu_matmul (one thread's share). Every
// element is computed in the same order whatever the slicing, so a step's
// results do not depend on the number of threads.
void kvf_cpu_matmul_slice(float *out,      // (n, d_out), columns o_begin..o_end-1 written
                          const float *x,  // (n, d_in)
                          const float *w,  // (d_out, d_in)
                          const float *bias, // (d_out) or NULL
                          int n, int d_in, int d_out, int o_begin, int o_end);

// Inverse frequencies of RoPE for this config (default, linear, llama3 scaling),
// as transformers computes them.
void kvf_cpu_rope_inv_freq(float *inv_freq,            // (head_dim / 2)
                           const kvf_modelcfg_t *cfg);

// Rotates x in place with HF's rotate_half convention (pairs i and i + head_dim/2).
void kvf_cpu_rope(float *x,                 // (n, n_heads, head_dim)
                  const int32_t *pos,       // (n)
                  const float *inv_freq,    // (head_dim / 2)
                  int n, int n_heads, int head_dim);

// Writes k and v of n tokens into the paged cache at their positions.
void kvf_cpu_kv_write(float *k_cache,       // (n_blocks, block_size, n_kv, head_dim)
                      float *v_cache,       // (n_blocks, block_size, n_kv, head_dim)
                      const float *k,       // (n, n_kv, head_dim)
                      const float *v,       // (n, n_kv, head_dim)
                      const int32_t *pos,   // (n) position of each token in its sequence
                      const int32_t *block_table, // (n_blocks_of_seq) this sequence's blocks
                      int n, int n_kv, int head_dim, int block_size);

// Causal attention of n new query tokens of one sequence (positions n_past ..
// n_past+n-1) over its paged cache (which already holds them), GQA: query head h
// reads KV head h / (n_heads / n_kv).
void kvf_cpu_attention(float *out,          // (n, n_heads, head_dim)
                       const float *q,      // (n, n_heads, head_dim)
                       const float *k_cache,// (n_blocks, block_size, n_kv, head_dim)
                       const float *v_cache,// (n_blocks, block_size, n_kv, head_dim)
                       const int32_t *block_table, // this sequence's blocks
                       int n, int n_past, int n_heads, int n_kv, int head_dim, int block_size,
                       float *scratch);     // (n_past + n) floats

// Query heads [h_begin, h_end) of kvf_cpu_attention (one thread's share); out is
// written for those heads only.
void kvf_cpu_attention_heads(float *out,          // (n, n_heads, head_dim)
                             const float *q,      // (n, n_heads, head_dim)
                             const float *k_cache,// (n_blocks, block_size, n_kv, head_dim)
                             const float *v_cache,// (n_blocks, block_size, n_kv, head_dim)
                             const int32_t *block_table, // this sequence's blocks
                             int n, int n_past, int n_heads, int n_kv, int head_dim,
                             int block_size, int h_begin, int h_end,
                             float *scratch);     // (n_past + n) floats

// out = silu(gate) * up
void kvf_cpu_silu_mul(float *out, const float *gate, const float *up, int n);  // (n)

#endif
