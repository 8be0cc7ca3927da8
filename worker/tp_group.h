// worker/tp_group.h — how the ranks of a TP group run the same steps.
//
// Rank 0 (the leader) runs the engine: scheduler, block manager, sampler. Its
// backend is wrapped (kvf_tp_leader_new) so that every forward() first sends the
// step's batch — tokens, n_new, n_past, block tables, all_logits — to the
// followers over the group's control communicator (tp.h broadcast from rank 0),
// then runs its own shard. Each follower (kvf_tp_follower_run) receives the
// batch and runs the same forward on its shard; the all-reduces inside the
// backend meet in the same order on every rank. Followers never talk to the
// coordinator and their tokens are not used (a step ends with the same exchange
// of the vocab-parallel logits on every rank, worker/tp_vocab.h), so where the
// backend has forward_sample (cuda, cpu) a follower runs steps without all_logits
// through it with no token wanted: n_seqs ids come back, not the logits.
// The leader offers forward_sample when its backend has it: the step goes to the
// followers, then the backend picks the tokens; a step it refuses to sample
// (KVF_E_UNSUPPORTED) still runs once, into a stash that the engine's forward()
// of the same batch (its fallback, next) returns without a second step.
//
// Why the communicator and not a ZeroMQ socket: it is already shared by the
// group, its messages are ordered with the collectives, and it carries the
// failure model for free — a dead or stuck rank, leader included, makes every
// other rank's next call return KVF_E_PEER_LOST within the timeout. While the
// leader has no step to run, a keepalive thread sends an empty message every
// keepalive period so that followers waiting for the next step do not time out;
// the leader's destroy sends STOP, after which followers return 0.
//
// Wire format of one message (host-endian: the group is one host):
//   header (s_hdr_t in tp_group.c: magic, kind, sequence number, n_seqs,
//   n_tokens, max_blocks, all_logits), then for a STEP one int32 payload:
//   tokens (n_tokens) | n_new (n_seqs) | n_past (n_seqs) | block_table (n_seqs x max_blocks).
#ifndef KVF_TP_GROUP_H
#define KVF_TP_GROUP_H

#include <signal.h>

#include "common/error.h"
#include "worker/backend.h"
#include "worker/tp.h"

// Wraps *inner_p (taking ownership; *inner_p is nulled) into a backend that
// broadcasts each step to the followers of ctl before running it. keepalive_ms:
// the longest silence towards idle followers (0 = ctl's timeout / 4). ctl is
// not owned and must outlive the wrapper. Returns the new backend (destroy sends
// STOP to the followers, then frees the inner one), or NULL with err set (the
// inner backend is then destroyed too).
kvf_backend_t *kvf_tp_leader_new(kvf_backend_t **inner_p, kvf_tp_t *ctl, int32_t keepalive_ms, kvf_err_t *err);

// 0 while the leader's group is healthy; -1 with err (KVF_E_PEER_LOST) once a
// keepalive or a step found a rank gone. -1 with KVF_E_INVAL when be is not a
// leader wrapper.
int kvf_tp_leader_check(kvf_backend_t *be, kvf_err_t *err);

// A follower's loop: receives steps from rank 0 of ctl and runs them on be until
// STOP (returns 0), *stop becomes non-zero (returns 0 after leaving — the group
// then fails: a rank that leaves takes it down), or the group fails (returns -1,
// err KVF_E_PEER_LOST). A step the backend refuses as bad input (the leader's
// forward refuses the same batch) is logged and skipped. be is not owned.
int kvf_tp_follower_run(kvf_backend_t *be, kvf_tp_t *ctl, volatile sig_atomic_t *stop, kvf_err_t *err);

#endif
