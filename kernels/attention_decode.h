// kernels/attention_decode.h — GQA decode attention over the paged bf16 KV cache
// on the tensor cores: one block per (sequence's new token(s), KV head) whose
// rows are the query heads that share the KV head, so K and V are read once per
// group. For batches of many sequences (the block count fills the device); few
// sequences with long contexts are better served by kvf_attention's key splits.
#ifndef KVF_KERNELS_ATTENTION_DECODE_H
#define KVF_KERNELS_ATTENTION_DECODE_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVF_ATTN_DECODE_ROWS 16  // query rows (tokens x heads of one KV head) per tile

// 1 when kvf_attention_decode runs this shape (head_dim 64 or 128, n_heads /
// n_kv <= KVF_ATTN_DECODE_ROWS).
int kvf_attention_decode_supports(int n_heads, int n_kv, int head_dim);

// Dynamic shared memory one block takes (for occupancy estimates), bytes: the
// most that any variant takes.
size_t kvf_attention_decode_smem(int head_dim);

// out[t, h] = softmax(q[t,h] . K[0..pos[t]] / sqrt(head_dim)) V for the tokens
// of the given tiles: tiles[i] = {seq, first token index in the batch, count},
// count x (n_heads / n_kv) <= KVF_ATTN_DECODE_ROWS, the tile's tokens at
// consecutive positions with their keys already in the cache (decode: count 1);
// tile_tokens: the most tokens any tile holds (1 for decode steps). Other rows of
// out are left alone. Runs the default variant for tile_tokens x n_heads / n_kv
// rows (see below). Returns 0, or -1 with err set.
int kvf_attention_decode(uint16_t *out,               // (n_tokens, n_heads, head_dim) bf16, device
                         const uint16_t *q,           // (n_tokens, n_heads, head_dim) bf16, device
                         const uint16_t *k_cache,     // (n_blocks, block_size, n_kv, head_dim) bf16, device
                         const uint16_t *v_cache,     // (n_blocks, block_size, n_kv, head_dim) bf16, device
                         const int32_t *tiles,        // (n_tiles, 3) device
                         int n_tiles, int tile_tokens,
                         const int32_t *pos,          // (n_tokens) device
                         const int32_t *block_table,  // (n_seqs, max_blocks) device
                         int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                         cudaStream_t stream, kvf_err_t *err);

// Kernel variants, for kvf-kbench and test_kernels (kvf_attention_decode runs
// the fastest for its tiles); names are short and stable ("v0 2x64 4w", ...).
// They differ in how keys are fed to the tensor cores (ring depth, warps a block,
// one ring a block or a warp, KV heads a block); the "t" ones also compute both
// products transposed (S^T = K Q^T, O^T = V^T P^T: the rows are the mma's N of 8,
// half the mma of an m16 fragment that a decode token's G <= 8 rows fill only
// half) and need tiles of at most 8 rows. Results agree to bf16 rounding.
int kvf_attention_decode_n_variants(void);

// The most rows (tile tokens x n_heads / n_kv) a tile may hold under the variant
// (fp8 1: of kvf_attention_decode_fp8_variant): 8 for the transposed ("t", "f8t")
// ones, else KVF_ATTN_DECODE_ROWS; 0 for a variant out of range.
int kvf_attention_decode_variant_max_rows(int fp8, int variant);

// 1 when the bf16 variant runs on the current device with this build: the
// bulk-copy ones (names with " b") need sm_90 code and a compute capability 9.x
// device; the others run everywhere. 0 also for a variant out of range.
int kvf_attention_decode_variant_available(int variant);

// The variant kvf_attention_decode (fp8 0) or kvf_attention_decode_fp8 (fp8 1)
// runs for tiles of at most tile_rows rows (tokens x query heads a KV head): of the
// bf16 ones, the fastest that kvf_attention_decode_variant_available says runs here.
int kvf_attention_decode_default_variant(int fp8, int tile_rows);

// The variant's name (static storage), or NULL when variant is out of range.
const char *kvf_attention_decode_variant_name(int variant);

// kvf_attention_decode run by the given variant, 0 <= variant <
// kvf_attention_decode_n_variants() (else -1 with err KVF_E_INVAL; also when
// tile_tokens x n_heads / n_kv is past the variant's max rows; KVF_E_UNSUPPORTED
// when it is not available here); the other parameters are kvf_attention_decode's.
int kvf_attention_decode_variant(int variant, uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                 const uint16_t *v_cache, const int32_t *tiles, int n_tiles, int tile_tokens,
                                 const int32_t *pos,
                                 const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim,
                                 int block_size, cudaStream_t stream, kvf_err_t *err);

// The same over an FP8 cache (E4M3 bytes, common/fp8.h; the --kv-cache-dtype fp8
// pool): K and V move as bytes and are widened to f16 in shared memory, Q
// (saturated at +-65504), K, V and P meet in f16 mma with f32 accumulators. The
// variants are v5's shape with rings of 3, 4 or 6 chunks; the "f8t" ones compute
// P V transposed (half its mma) and need tiles of at most 8 rows: tile_tokens
// (the most tokens any tile holds: 1 for decode steps) x n_heads / n_kv <= 8,
// else they refuse with KVF_E_INVAL; kvf_attention_decode_fp8 picks by it.
int kvf_attention_decode_fp8(uint16_t *out,               // (n_tokens, n_heads, head_dim) bf16, device
                             const uint16_t *q,           // (n_tokens, n_heads, head_dim) bf16, device
                             const uint8_t *k_cache,      // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                             const uint8_t *v_cache,      // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                             const int32_t *tiles, int n_tiles, int tile_tokens, const int32_t *pos,
                             const int32_t *block_table,
                             int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                             cudaStream_t stream, kvf_err_t *err);
int kvf_attention_decode_fp8_n_variants(void);
const char *kvf_attention_decode_fp8_variant_name(int variant);
int kvf_attention_decode_fp8_variant(int variant, uint16_t *out, const uint16_t *q, const uint8_t *k_cache,
                                     const uint8_t *v_cache, const int32_t *tiles, int n_tiles, int tile_tokens,
                                     const int32_t *pos,
                                     const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim,
                                     int block_size, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
