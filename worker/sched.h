// worker/sched.h — the continuous-batching scheduler (no model inside).
//
// A sequence holds every token known for it (prompt, then generated) and how
// many of them already have KV in the cache (n_computed). Each step it computes
// tokens[n_computed .. n_computed + n_new): a decode step is the one remaining
// token (the last one sampled); a prefill chunk is part of the rest. When a
// chunk reaches the last known token, its logits give the next token ("sample").
//
// Each step (kvf_sched_schedule):
//   1. every running sequence that has finished prefill decodes one token
//      (oldest first), taking 1 from the step's token budget;
//   2. the rest of the budget (max_prefill_token_num) goes to prefill chunks:
//      half-prefilled running sequences first, then waiting ones (FCFS);
//   3. at most max_batch_size sequences are running, hence in one step; a
//      waiting sequence is admitted only when the free blocks could hold all
//      its known tokens (no prefill is started that would have to be preempted
//      before it completes), and never in a step that had to preempt.
// That is KVF_SCHED_MIXED, the default: every running sequence decodes every
// step. KVF_SCHED_PREFILL_FIRST (offline batches, where only throughput counts)
// runs passes 2 and 3 first and decodes only in a step where no prefill chunk
// could run: prompts are prefilled in full steps until max_batch_size sequences
// run or the queue is empty, and then the whole batch decodes together, so the
// decode steps are as large as the batch (their GEMMs at their most efficient)
// and there are as few of them as the waves need. Decodes wait at most until
// the batch is full; in a server with a steady stream of arrivals they would
// wait for each admission, which is why it is not the default.
// Blocks for the tokens a step adds are allocated before it. When a running
// sequence needs a block and none is free, the NEWEST running sequence (by
// arrival) is preempted: its blocks are freed and it goes back to the head of
// the waiting queue, to be recomputed from prompt + tokens generated so far
// (which it keeps; nothing is re-emitted). Ordering is by arrival, so every
// running sequence is older than every waiting one and the oldest always
// progresses: it can preempt everything newer, and the engine's admission check
// guarantees one sequence of session_len tokens fits in the whole pool.
//
// Prefix caching: when a waiting sequence with nothing computed is admitted,
// the full blocks of tokens[0 .. n_tokens-1) are looked up (at least one token
// is always computed, for its logits); hits are shared and skipped. Every block
// that becomes full of computed tokens is committed to the cache.
#ifndef KVF_SCHED_H
#define KVF_SCHED_H

#include <stdint.h>

#include "common/error.h"
#include "worker/blockmgr.h"

typedef enum {
    KVF_SEQ_WAITING = 0,
    KVF_SEQ_RUNNING = 1,
} kvf_seq_state;

typedef struct {
    uint64_t rid;
    uint64_t arrival;       // order of kvf_sched_add calls; smaller = older
    kvf_seq_state state;
    int32_t *tokens;        // (cap) prompt + generated
    int32_t n_tokens;
    int32_t cap;
    int32_t n_prompt;       // tokens given at add (prompt + resume)
    int32_t n_computed;     // tokens with KV in the cache
    int32_t *blocks;        // (max_blocks) block table
    int32_t n_blocks;
    uint64_t *hashes;       // (max_blocks) keys of the first n_hashed full blocks
    int32_t n_hashed;
    int32_t n_preempted;    // times this sequence was preempted
    int32_t sched_new;      // tokens scheduled in the current step (0 = not scheduled)
    void *user;             // caller's per-request state (not owned)
} kvf_seq_t;

typedef enum {
    KVF_SCHED_MIXED = 0,          // decodes first, prefill chunks in what is left of the budget (default)
    KVF_SCHED_PREFILL_FIRST = 1,  // prefill chunks whenever one can run; decodes otherwise
} kvf_sched_policy;

typedef struct {
    int32_t block_size;
    int32_t policy;                 // kvf_sched_policy
    int32_t max_batch_size;         // sequences running at once
    int32_t max_prefill_token_num;  // tokens per step (decodes + prefill chunks)
    int32_t max_blocks_per_seq;     // ceil(session_len / block_size)
} kvf_sched_opts_t;

// One step's work, in an order fixed by the scheduler (decodes, then chunks).
// Arrays owned by the scheduler, valid until the next kvf_sched_schedule.
typedef struct {
    int32_t n_seqs;
    int32_t n_tokens;        // sum of n_new
    kvf_seq_t **seqs;        // (n_seqs)
    int32_t *n_new;          // (n_seqs)
    int32_t *n_past;         // (n_seqs) = seqs[i]->n_computed before the step
    int32_t *sample;         // (n_seqs) 1 when the chunk ends at the last known token
    int32_t n_decode;        // of n_seqs, those that decode one token
    int32_t n_preempted;     // sequences preempted while making this plan
} kvf_sched_plan_t;

typedef struct kvf_sched_s kvf_sched_t;

// A scheduler over bm (borrowed; must outlive it; bm's block size must equal
// opts->block_size). Returns a new scheduler owned by the caller, or NULL with
// err set (KVF_E_INVAL) for an option out of range.
kvf_sched_t *kvf_sched_new(const kvf_sched_opts_t *opts, kvf_blockmgr_t *bm, kvf_err_t *err);

// Frees the scheduler and every sequence in it (their blocks go back to bm);
// accepts NULL; nulls *self_p.
void kvf_sched_destroy(kvf_sched_t **self_p);

// Queues a new sequence (at the tail of waiting) with n_tokens known tokens
// (copied; n_tokens >= 1 and <= max_blocks_per_seq * block_size). Returns the
// sequence (owned by the scheduler until kvf_sched_finish), or NULL with err
// set (KVF_E_INVAL / KVF_E_TOO_LONG).
kvf_seq_t *kvf_sched_add(kvf_sched_t *s, uint64_t rid, const int32_t *tokens, int32_t n_tokens, void *user,
                         kvf_err_t *err);

// The sequence with this rid, or NULL.
kvf_seq_t *kvf_sched_find(const kvf_sched_t *s, uint64_t rid);

// Plans the next step into *plan (see above). Returns the number of sequences
// in it (0 when there is nothing to run), or -1 with err set when the pool is
// inconsistent (a bug).
int kvf_sched_schedule(kvf_sched_t *s, kvf_sched_plan_t *plan, kvf_err_t *err);

// Records that the planned step ran: n_computed advances by n_new and every
// block that became full is committed to the prefix cache. Call once per plan,
// before kvf_sched_append / kvf_sched_finish.
void kvf_sched_complete(kvf_sched_t *s, const kvf_sched_plan_t *plan);

// Appends a sampled token. Returns 0, or -1 (KVF_E_TOO_LONG) when the sequence
// already holds max_blocks_per_seq * block_size tokens.
int kvf_sched_append(kvf_sched_t *s, kvf_seq_t *seq, int32_t token, kvf_err_t *err);

// Removes a sequence (finished or cancelled), frees its blocks and the sequence;
// the pointer is invalid afterwards.
void kvf_sched_finish(kvf_sched_t *s, kvf_seq_t *seq);

// Changes the policy (kvf_sched_policy) from the next kvf_sched_schedule on;
// safe at any time (it only orders the passes). Returns 0, or -1 with err set
// (KVF_E_INVAL) for an unknown policy.
int kvf_sched_set_policy(kvf_sched_t *s, int32_t policy, kvf_err_t *err);

// Counts.
int32_t kvf_sched_n_running(const kvf_sched_t *s);
int32_t kvf_sched_n_waiting(const kvf_sched_t *s);
uint64_t kvf_sched_n_preemptions(const kvf_sched_t *s);

// The i-th running (arrival order) / waiting (queue order) sequence, or NULL.
kvf_seq_t *kvf_sched_running_at(const kvf_sched_t *s, int32_t i);
kvf_seq_t *kvf_sched_waiting_at(const kvf_sched_t *s, int32_t i);

#endif
