// worker/tp_vocab.h — logits of a vocab-parallel lm_head (worker/tp_shard.h):
// each rank of a TP group computes the logits of its vocabulary ids only, and
// the ranks pick greedy tokens without gathering them.
//
// Every step of a sharded backend ends with the same exchange on every rank, so
// that the group's collectives stay in step whatever each rank was asked for:
//   1. all_gather of a header and each row's best logit over the rank's ids
//      (kvf_tp_best_t: value and id; "none" when every one is NaN). The header
//      carries rank 0's say: does this step need the full logits?
//   2. only when rank 0 said so: all_gather of every rank's logits, rows x
//      v_stride floats each (its rows x nv logits first, row after row, then
//      zeros), then put back in id order (kvf_tp_vocab_unshard; on the device
//      kernels/vocab_unshard.h).
// Rank 0 (the leader, which runs the engine) says "full" for forward() (the
// host samples, or all_logits) and for a forward_sample step with a sampled or
// penalised row; a greedy-only step moves rows x ranks x 8 bytes instead of
// rows x vocab x 4. Followers are never asked for tokens, so they only follow.
//
// Greedy picks (kvf_tp_best_merge) are the host sampler's argmax (worker/
// sampler.h): the highest logit, the lowest id on ties, NaN never wins, id 0
// when every logit of the row is NaN.
#ifndef KVF_TP_VOCAB_H
#define KVF_TP_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "worker/tp.h"
#include "worker/tp_shard.h"

typedef struct {
    float val;    // the row's highest non-NaN logit among the rank's ids
    int32_t id;   // its vocabulary id (lowest on ties); -1: every logit was NaN
} kvf_tp_best_t;

// A rank's exchange message: the header, then one best per row.
typedef struct {
    int32_t want_full;  // rank 0's: 1 when step 2 follows
    int32_t rows;       // rows of this step (checked to agree)
} kvf_tp_vocab_hdr_t;

// Bytes of one rank's message for `rows` rows (header + rows bests).
size_t kvf_tp_vocab_msg_bytes(int32_t rows);

// The best of row (n logits of ids id0 .. id0 + n - 1).
kvf_tp_best_t kvf_tp_best_of(const float *row, int32_t n, int32_t id0);

// The group's pick for row r from the gathered messages (size of them, each
// kvf_tp_vocab_msg_bytes(rows) bytes, in rank order).
int32_t kvf_tp_best_merge(const void *gathered, int32_t size, int32_t rows, int32_t r);

// logits (rows, vocab) in id order from gathered (size, rows x v_stride floats):
// rank p's block starts with its logits (rows, nv_p), ids [v0_p, v0_p + nv_p)
// of each row (sh: any rank's shard of the same split).
void kvf_tp_vocab_unshard(float *logits, const float *gathered, int32_t rows, int32_t vocab,
                          const kvf_tp_shard_t *sh);

// The whole exchange on host memory (the shm communicator; tp NULL: a group of
// one, nothing sent). slice: this rank's logits (rows, sh->nv) of a vocabulary
// of vocab ids, in a buffer of rows x sh->v_stride floats (the rest is zeroed
// and sent as it is). want_full: this rank's say (only rank 0's counts).
// scratch: kvf_tp_vocab_scratch_bytes(sh, rows) bytes. On return: when rank 0
// said "full", logits (rows, vocab) holds every logit (logits NULL: gathered
// and dropped); else, when ids is set, ids[r] is the group's greedy pick of row
// r. *full (may be NULL) says which. Returns 0, or -1 with err (KVF_E_PEER_LOST
// from the communicator; KVF_E_INTERNAL when the ranks disagree on the rows).
int kvf_tp_vocab_exchange(kvf_tp_t *tp, const kvf_tp_shard_t *sh, int32_t vocab, float *slice, int32_t rows,
                          int want_full, void *scratch, float *logits, int32_t *ids, int *full, kvf_err_t *err);

// Scratch bytes kvf_tp_vocab_exchange needs for up to rows rows.
size_t kvf_tp_vocab_scratch_bytes(const kvf_tp_shard_t *sh, int32_t rows);

#endif
