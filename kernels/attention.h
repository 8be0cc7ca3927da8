// kernels/attention.h — causal GQA attention over the paged bf16 (or FP8) KV cache, for
// prefill (variable lengths, tiles of query tokens) and decode (split-K
// flash-decoding over long contexts, then a reduce kernel). Online softmax in
// f32, keys walked in tiles of 32 through shared memory.
#ifndef KVF_KERNELS_ATTENTION_H
#define KVF_KERNELS_ATTENTION_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVF_ATTN_MAX_HEAD_DIM 128
#define KVF_ATTN_MAX_ROWS 16   // query rows (tokens x heads of one KV head) per block
#define KVF_ATTN_MAX_SPLITS 64

// Query tokens per tile for prefill: as many as fill KVF_ATTN_MAX_ROWS rows with
// the n_heads / n_kv query heads that share a KV head. 0 when the group is too big.
int kvf_attn_q_per_tile(int n_heads, int n_kv);

// Host: cuts each sequence's n_new[s] new tokens (which follow each other in the
// batch) into tiles of at most q_per_tile tokens: tiles[i] = {seq, first token
// index in the batch, count}. Returns the number of tiles, or -1 when more than
// max_tiles would be needed.
int kvf_attn_build_tiles(int32_t *tiles,         // (max_tiles, 3) host
                         int max_tiles, const int32_t *n_new, int n_seqs, int q_per_tile);

// Host: puts tiles (from kvf_attn_build_tiles) longest first, in place: by their
// key count (the position after a tile's last token, pos on the host) in steps of
// KVF_ATTN_ORDER_KEYS keys, descending; tiles of one step keep their order.
// kvf_attention and the decode kernels give their blocks out in tile order, and a
// block's time grows with its keys, so the short ones are left for the tail of the
// launch, where SMs run out of work at different times (list scheduling, longest
// first; H200, 374-512 decode rows of 512-640 keys: +2-3%). Not for the prefill
// kernels: they run each prompt's tiles last to first, which keeps a prompt's keys
// in the L2 and measured faster than longest first over all prompts. scratch:
// kvf_attn_order_scratch_ints(n_tiles, max_keys) ints. Returns 0, or -1 on bad
// arguments or a tile of more than max_keys keys (tiles then unchanged).
#define KVF_ATTN_ORDER_KEYS 16
size_t kvf_attn_order_scratch_ints(int n_tiles, int max_keys);
int kvf_attn_order_tiles(int32_t *tiles,          // (n_tiles, 3) host
                         int n_tiles, const int32_t *pos, int max_keys, int32_t *scratch);

// Host: how many splits of the key range (flash-decoding) fill the device:
// returns n_splits (1 .. max_splits) and sets *split_len (keys per split, a
// multiple of 32; huge when n_splits is 1).
int kvf_attn_choose_splits(int n_tiles, int n_kv, int max_ctx, int max_splits, int n_sms, int *split_len);

// Floats of the partial-result buffer for n_splits > 1.
size_t kvf_attn_partial_floats(int n_splits, int n_tokens, int n_heads, int head_dim);

// out[t, h] = softmax(q[t,h] . K[0..pos[t]] / sqrt(head_dim)) V, with K and V of
// head h / (n_heads/n_kv) read through the sequence's block table. Each tile's
// tokens must have consecutive positions (the new tokens of one sequence) whose
// keys are already in the cache. With n_splits > 1 each split of split_len keys
// writes (acc, max, sum) into partial and a reduce kernel combines them.
// head_dim: a multiple of 8 up to KVF_ATTN_MAX_HEAD_DIM (K and V move in
// 16-byte chunks). Returns 0, or -1 with err set.
int kvf_attention(uint16_t *out,               // (n_tokens, n_heads, head_dim) bf16, device
                  float *partial,              // (kvf_attn_partial_floats) device; NULL when n_splits == 1
                  const uint16_t *q,           // (n_tokens, n_heads, head_dim) bf16, device
                  const uint16_t *k_cache,     // (n_blocks, block_size, n_kv, head_dim) bf16, device
                  const uint16_t *v_cache,     // (n_blocks, block_size, n_kv, head_dim) bf16, device
                  const int32_t *tiles,        // (n_tiles, 3) device, from kvf_attn_build_tiles
                  int n_tiles, int q_per_tile,
                  const int32_t *pos,          // (n_tokens) device: position of each token
                  const int32_t *block_table,  // (n_seqs, max_blocks) device
                  int max_blocks, int n_tokens, int n_heads, int n_kv, int head_dim, int block_size,
                  int n_splits, int split_len, cudaStream_t stream, kvf_err_t *err);

// kvf_attention over an FP8 cache (E4M3 bytes, common/fp8.h; widened to f32 in
// shared memory, exact).
int kvf_attention_fp8(uint16_t *out, float *partial, const uint16_t *q,
                      const uint8_t *k_cache,  // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                      const uint8_t *v_cache,  // (n_blocks, block_size, n_kv, head_dim) E4M3, device
                      const int32_t *tiles, int n_tiles, int q_per_tile, const int32_t *pos,
                      const int32_t *block_table, int max_blocks, int n_tokens, int n_heads, int n_kv, int head_dim,
                      int block_size, int n_splits, int split_len, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
