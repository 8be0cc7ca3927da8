// worker/tp_shard.h — which part of a Llama-family model one tensor-parallel
// rank holds (pure arithmetic; both backends shard with it).
//
// Megatron's split over T ranks (rank r):
//   q_proj, k_proj, v_proj   column-parallel: the output rows of the rank's heads
//   gate_proj, up_proj       column-parallel: intermediate rows [r I/T, (r+1) I/T)
//   o_proj, down_proj        row-parallel: the matching input columns; the ranks'
//                            partial outputs are summed (all-reduce) afterwards
//   embedding, lm_head       vocab-parallel: rows [v0, v0 + nv) of the
//                            vocabulary, V / T each, the first V % T ranks one
//                            more (the embedding's partial rows are summed by an
//                            all-reduce; each rank's logits cover its ids)
//   norms                    full on every rank
// Query heads: n_heads/T consecutive heads per rank. KV heads: when T divides
// n_kv, n_kv/T per rank (the ones its query heads read); when n_kv divides T,
// the one KV head the rank's query heads read, replicated on T/n_kv ranks. Any
// other T is refused, as is a T that does not divide n_heads or I.
//
// Within a rank, local query head h reads local KV head h / (nq / nkv), the
// same rule as the unsharded model, so attention kernels run unchanged on
// (nq, nkv) heads.
#ifndef KVF_TP_SHARD_H
#define KVF_TP_SHARD_H

#include <stdint.h>

#include "common/error.h"
#include "common/modelcfg.h"

typedef struct {
    int32_t rank, size;
    int32_t q0, nq;       // query heads [q0, q0 + nq)
    int32_t kv0, nkv;     // KV heads [kv0, kv0 + nkv): projected and cached on this rank
    int32_t kv_replicas;  // ranks that hold each of these KV heads: 1 (split) or size / n_kv (replicated)
    int32_t i0, ni;       // intermediate rows [i0, i0 + ni)
    int32_t v0, nv;       // vocabulary ids [v0, v0 + nv): embedding and lm_head rows
    int32_t v_stride;     // the largest nv of the group (rows of a rank's logits in gathered buffers)
} kvf_tp_shard_t;

// The sharded tensors (HF names, in a layer: self_attn.{q,k,v,o}_proj.weight,
// self_attn.{q,k,v}_proj.bias, mlp.{gate,up,down}_proj.weight;
// and the embedding and lm_head).
typedef enum {
    KVF_TP_WQ, KVF_TP_WK, KVF_TP_WV, KVF_TP_WO,
    KVF_TP_BQ, KVF_TP_BK, KVF_TP_BV,
    KVF_TP_WGATE, KVF_TP_WUP, KVF_TP_WDOWN,
    KVF_TP_EMBED, KVF_TP_LMHEAD,  // model.embed_tokens.weight, lm_head.weight: (vocab, hidden)
} kvf_tp_tensor_t;

// A rank's block of one tensor: the full shape (d0, d1; d1 = 0 for a 1-D bias)
// and the rows [r0, r0 + nr) x columns [c0, c0 + nc) it keeps (1-D: elements
// [r0, r0 + nr), c0 = 0, nc = 1), row-major as in the file.
typedef struct {
    int64_t d0, d1;
    int64_t r0, nr, c0, nc;
} kvf_tp_part_t;

// Fills *sh with rank's share of cfg over size ranks. Returns 0, or -1 with err
// (KVF_E_INVAL: a size < 1 or > KVF_TP_MAX_SIZE, a rank outside 0..size-1, or a
// size the model does not split over: heads, intermediate_size, KV heads that
// neither divide nor are divided by size, or a vocabulary smaller than size;
// the message names which). The
// message has no component prefix: callers add theirs.
int kvf_tp_shard_make(const kvf_modelcfg_t *cfg, int32_t rank, int32_t size, kvf_tp_shard_t *sh, kvf_err_t *err);

// Rank sh's block of tensor t of cfg (sh from kvf_tp_shard_make with cfg).
kvf_tp_part_t kvf_tp_shard_part(const kvf_modelcfg_t *cfg, const kvf_tp_shard_t *sh, kvf_tp_tensor_t t);

// 1 when the block is the whole tensor (size 1, or a replicated one).
int kvf_tp_part_is_full(const kvf_tp_part_t *p);

#endif
