// kernels/attention_prefill.h — causal GQA prefill attention over the paged bf16
// KV cache on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulation,
// online softmax), for head_dim 64 and 128. Decode rows (one new token) are
// better served by kernels/attention.h, which shares K and V across the query
// heads of a group and splits long contexts.
#ifndef KVF_KERNELS_ATTENTION_PREFILL_H
#define KVF_KERNELS_ATTENTION_PREFILL_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVF_ATTN_PREFILL_Q 64  // query tokens per tile (build tiles with this q_per_tile)

// 1 when kvf_attention_prefill runs this head_dim.
int kvf_attention_prefill_supports(int head_dim);

// out[t, h] for the tokens of the given tiles (tiles[i] = {seq, first token,
// count <= KVF_ATTN_PREFILL_Q}, from kvf_attn_build_tiles; each tile's tokens
// have consecutive positions and their keys are in the cache); other rows of out
// are left alone. Returns 0, or -1 with err set.
int kvf_attention_prefill(uint16_t *out,              // (n_tokens, n_heads, head_dim) bf16, device
                          const uint16_t *q,          // (n_tokens, n_heads, head_dim) bf16, device
                          const uint16_t *k_cache,    // (n_blocks, block_size, n_kv, head_dim) bf16, device
                          const uint16_t *v_cache,    // (n_blocks, block_size, n_kv, head_dim) bf16, device
                          const int32_t *tiles,       // (n_tiles, 3) device
                          int n_tiles,
                          const int32_t *pos,         // (n_tokens) device
                          const int32_t *block_table, // (n_seqs, max_blocks) device
                          int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                          cudaStream_t stream, kvf_err_t *err);

// Kernel variants, for kvf-kbench and test_kernels (kvf_attention_prefill runs
// the fastest, 2); names short and stable ("v0 64q 4w", ...).
// 0 "v0 64q 4w": a block per (tile, query head), 4 warps x 16 rows, Q in registers.
// 1 "v1 gqa2 4w": a block per (tile, 2 query heads of one KV head), 4 warps x 32
//   rows (two m16 fragments a warp), Q in shared memory; 1 head (2 warps) when the
//   group is odd.
// 2 "v2 gqa4 8w": the same with 4 heads, 8 warps (2 or 1 heads when 4 does not
//   divide the group).
// 3 "v3 wg gqa4" (sm_90a): a block per (tile, 4 query heads of a group), a
//   warpgroup of 4 warps a head (its 64 rows) on warpgroup MMA (wgmma), Q, K and V
//   in 128-byte-swizzled shared memory; at most 128 registers (16 warps an SM).
// 4 "v4 wg gqa4 3st" (sm_90a): the same with a ring of 3 K/V stages (one barrier
//   a stage instead of two).
// Every variant runs every head_dim that kvf_attention_prefill_supports accepts
// and computes the same result (up to f32 summation order). Variants 3-4 exist
// only where kernels/ was built for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a, the
// default) and run only on compute capability 9.0.
// The variant kvf_attention_prefill runs: 4 where available, else 2.
int kvf_attention_prefill_default_variant(void);

// 1 when the variant can run here (built for it, and on this device's compute capability).
int kvf_attention_prefill_variant_available(int variant);

int kvf_attention_prefill_n_variants(void);
const char *kvf_attention_prefill_variant_name(int variant);  // NULL when out of range

// kvf_attention_prefill with the given variant (0 .. n_variants - 1); the other
// parameters and the result are kvf_attention_prefill's. Returns 0, or -1 with
// err set (KVF_E_INVAL for a bad variant).
int kvf_attention_prefill_variant(int variant, uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                  const uint16_t *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                  const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim,
                                  int block_size, cudaStream_t stream, kvf_err_t *err);

// kvf_attention_prefill over an FP8 cache (E4M3 bytes, common/fp8.h): each key
// tile is widened to bf16 in shared memory (exact), then scored as the bf16 path
// scores it. Runs the default variant.
int kvf_attention_prefill_fp8(uint16_t *out, const uint16_t *q,
                              const uint8_t *k_cache,  // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                              const uint8_t *v_cache,  // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                              const int32_t *tiles, int n_tiles, const int32_t *pos, const int32_t *block_table,
                              int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                              cudaStream_t stream, kvf_err_t *err);

// kvf_attention_prefill_fp8 with the given variant: 2 .. n_variants - 1 (0 and 1
// have no FP8 form: KVF_E_INVAL, as for a variant not available here).
int kvf_attention_prefill_fp8_variant(int variant, uint16_t *out, const uint16_t *q, const uint8_t *k_cache,
                                      const uint8_t *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                      const int32_t *block_table, int max_blocks, int n_heads, int n_kv,
                                      int head_dim, int block_size, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
