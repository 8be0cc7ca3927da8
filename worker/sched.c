// worker/sched.c — see sched.h.
//
// running: array sorted by arrival (at most max_batch_size entries).
// waiting: a ring buffer; preempted sequences go to its head, new ones to its
// tail. Preemption takes the newest running sequence and pushes it at the head,
// so the queue stays in arrival order and every running sequence is older than
// every waiting one.
#include "sched.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

struct kvf_sched_s {
    kvf_sched_opts_t o;
    kvf_blockmgr_t *bm;             // borrowed
    int32_t max_tokens;             // max_blocks_per_seq * block_size

    kvf_seq_t **running;            // (max_batch_size) by arrival
    int32_t n_running;

    kvf_seq_t **waiting;            // ring (wait_cap)
    int32_t wait_head, n_waiting, wait_cap;

    uint64_t next_arrival;
    uint64_t preemptions;

    // plan storage (max_batch_size each)
    kvf_seq_t **p_seqs;
    int32_t *p_new, *p_past, *p_sample;
};

// ---------------------------------------------------------------- waiting queue

static kvf_seq_t *s_wait_at(const kvf_sched_t *s, int32_t i) {
    return s->waiting[(s->wait_head + i) % s->wait_cap];
}

static void s_wait_grow(kvf_sched_t *s) {
    if (s->n_waiting < s->wait_cap) return;
    int32_t cap = s->wait_cap * 2;
    kvf_seq_t **w = kvf_xmalloc(sizeof(kvf_seq_t *) * (size_t)cap);
    for (int32_t i = 0; i < s->n_waiting; i++) w[i] = s_wait_at(s, i);
    free(s->waiting);
    s->waiting = w;
    s->wait_cap = cap;
    s->wait_head = 0;
}

static void s_wait_push_back(kvf_sched_t *s, kvf_seq_t *seq) {
    s_wait_grow(s);
    s->waiting[(s->wait_head + s->n_waiting) % s->wait_cap] = seq;
    s->n_waiting++;
}

static void s_wait_push_front(kvf_sched_t *s, kvf_seq_t *seq) {
    s_wait_grow(s);
    s->wait_head = (s->wait_head + s->wait_cap - 1) % s->wait_cap;
    s->waiting[s->wait_head] = seq;
    s->n_waiting++;
}

static kvf_seq_t *s_wait_pop_front(kvf_sched_t *s) {
    kvf_seq_t *seq = s->waiting[s->wait_head];
    s->wait_head = (s->wait_head + 1) % s->wait_cap;
    s->n_waiting--;
    return seq;
}

static void s_wait_remove(kvf_sched_t *s, kvf_seq_t *seq) {
    int32_t i = 0;
    while (i < s->n_waiting && s_wait_at(s, i) != seq) i++;
    kvf_assert(i < s->n_waiting);
    for (; i + 1 < s->n_waiting; i++)
        s->waiting[(s->wait_head + i) % s->wait_cap] = s_wait_at(s, i + 1);
    s->n_waiting--;
}

// ---------------------------------------------------------------- running set

static void s_run_insert(kvf_sched_t *s, kvf_seq_t *seq) {
    kvf_assert(s->n_running < s->o.max_batch_size);
    int32_t i = s->n_running;
    while (i > 0 && s->running[i - 1]->arrival > seq->arrival) {
        s->running[i] = s->running[i - 1];
        i--;
    }
    s->running[i] = seq;
    s->n_running++;
    seq->state = KVF_SEQ_RUNNING;
}

static void s_run_remove(kvf_sched_t *s, kvf_seq_t *seq) {
    int32_t i = 0;
    while (i < s->n_running && s->running[i] != seq) i++;
    kvf_assert(i < s->n_running);
    memmove(s->running + i, s->running + i + 1, sizeof(kvf_seq_t *) * (size_t)(s->n_running - i - 1));
    s->n_running--;
}

// ---------------------------------------------------------------- blocks of a sequence

static void s_seq_release_blocks(kvf_sched_t *s, kvf_seq_t *seq) {
    for (int32_t i = 0; i < seq->n_blocks; i++) {
        int rc = kvf_blockmgr_free(s->bm, seq->blocks[i], NULL);
        kvf_assert(rc == 0);
    }
    seq->n_blocks = 0;
    seq->n_hashed = 0;
    seq->n_computed = 0;
}

// New blocks the sequence needs to hold n tokens.
static int32_t s_blocks_needed(const kvf_sched_t *s, const kvf_seq_t *seq, int32_t n) {
    int32_t need = (n + s->o.block_size - 1) / s->o.block_size - seq->n_blocks;
    return need > 0 ? need : 0;
}

// The most of `want` new tokens (after n_computed) that fit in the sequence's
// own blocks plus `free_blocks` more.
static int32_t s_fit(const kvf_sched_t *s, const kvf_seq_t *seq, int32_t want, int32_t free_blocks) {
    int64_t room = (int64_t)(seq->n_blocks + free_blocks) * s->o.block_size - seq->n_computed;
    if (room < 0) room = 0;
    return room < want ? (int32_t)room : want;
}

static int s_seq_grow(kvf_sched_t *s, kvf_seq_t *seq, int32_t n, kvf_err_t *err) {
    int32_t need = s_blocks_needed(s, seq, n);
    for (int32_t i = 0; i < need; i++) {
        int32_t id = kvf_blockmgr_alloc(s->bm, err);
        if (id < 0) return -1;
        seq->blocks[seq->n_blocks++] = id;
    }
    return 0;
}

static void s_preempt(kvf_sched_t *s, kvf_seq_t *seq, int32_t *budget, kvf_sched_plan_t *plan) {
    kvf_log(KVF_LOG_DEBUG, "preempt rid %llu (%d tokens, %d computed)", (unsigned long long)seq->rid,
            seq->n_tokens, seq->n_computed);
    if (seq->sched_new > 0) {
        *budget += seq->sched_new;
        seq->sched_new = 0;
    }
    s_run_remove(s, seq);
    s_seq_release_blocks(s, seq);
    seq->state = KVF_SEQ_WAITING;
    seq->n_preempted++;
    s_wait_push_front(s, seq);
    s->preemptions++;
    plan->n_preempted++;
}

// ---------------------------------------------------------------- lifecycle

kvf_sched_t *kvf_sched_new(const kvf_sched_opts_t *opts, kvf_blockmgr_t *bm, kvf_err_t *err) {
    if (!opts || !bm) {
        kvf_err_set(err, KVF_E_INVAL, "scheduler: missing options or block manager");
        return NULL;
    }
    if (opts->block_size < 1 || opts->block_size != kvf_blockmgr_block_size(bm)) {
        kvf_err_set(err, KVF_E_INVAL, "scheduler: block_size %d does not match the block manager's %d",
                    opts->block_size, kvf_blockmgr_block_size(bm));
        return NULL;
    }
    if (opts->max_batch_size < 1 || opts->max_prefill_token_num < opts->max_batch_size) {
        kvf_err_set(err, KVF_E_INVAL,
                    "scheduler: need max_batch_size >= 1 and max_prefill_token_num (%d) >= max_batch_size (%d)",
                    opts->max_prefill_token_num, opts->max_batch_size);
        return NULL;
    }
    if (opts->policy != KVF_SCHED_MIXED && opts->policy != KVF_SCHED_PREFILL_FIRST) {
        kvf_err_set(err, KVF_E_INVAL, "scheduler: unknown policy %d", opts->policy);
        return NULL;
    }
    if (opts->max_blocks_per_seq < 1 || (int64_t)opts->max_blocks_per_seq * opts->block_size > INT32_MAX) {
        kvf_err_set(err, KVF_E_INVAL, "scheduler: max_blocks_per_seq %d out of range", opts->max_blocks_per_seq);
        return NULL;
    }
    kvf_sched_t *s = kvf_xcalloc(1, sizeof *s);
    s->o = *opts;
    s->bm = bm;
    s->max_tokens = opts->max_blocks_per_seq * opts->block_size;
    size_t nb = (size_t)opts->max_batch_size;
    s->running = kvf_xcalloc(nb, sizeof(kvf_seq_t *));
    s->wait_cap = 64;
    s->waiting = kvf_xcalloc((size_t)s->wait_cap, sizeof(kvf_seq_t *));
    s->p_seqs = kvf_xcalloc(nb, sizeof(kvf_seq_t *));
    s->p_new = kvf_xcalloc(nb, sizeof(int32_t));
    s->p_past = kvf_xcalloc(nb, sizeof(int32_t));
    s->p_sample = kvf_xcalloc(nb, sizeof(int32_t));
    return s;
}

static void s_seq_free(kvf_seq_t *seq) {
    free(seq->tokens);
    free(seq->blocks);
    free(seq->hashes);
    free(seq);
}

void kvf_sched_destroy(kvf_sched_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_sched_t *s = *self_p;
    while (s->n_running > 0) kvf_sched_finish(s, s->running[s->n_running - 1]);
    while (s->n_waiting > 0) kvf_sched_finish(s, s_wait_at(s, 0));
    free(s->running);
    free(s->waiting);
    free(s->p_seqs);
    free(s->p_new);
    free(s->p_past);
    free(s->p_sample);
    free(s);
    *self_p = NULL;
}

kvf_seq_t *kvf_sched_add(kvf_sched_t *s, uint64_t rid, const int32_t *tokens, int32_t n_tokens, void *user,
                         kvf_err_t *err) {
    if (n_tokens < 1 || !tokens) {
        kvf_err_set(err, KVF_E_INVAL, "a sequence needs at least one token");
        return NULL;
    }
    if (n_tokens > s->max_tokens) {
        kvf_err_set(err, KVF_E_TOO_LONG, "%d tokens exceed the %d a sequence may hold", n_tokens, s->max_tokens);
        return NULL;
    }
    kvf_seq_t *seq = kvf_xcalloc(1, sizeof *seq);
    seq->rid = rid;
    seq->arrival = s->next_arrival++;
    seq->state = KVF_SEQ_WAITING;
    seq->cap = n_tokens + 64 < s->max_tokens ? n_tokens + 64 : s->max_tokens;
    seq->tokens = kvf_xmalloc(sizeof(int32_t) * (size_t)seq->cap);
    memcpy(seq->tokens, tokens, sizeof(int32_t) * (size_t)n_tokens);
    seq->n_tokens = n_tokens;
    seq->n_prompt = n_tokens;
    seq->blocks = kvf_xmalloc(sizeof(int32_t) * (size_t)s->o.max_blocks_per_seq);
    seq->hashes = kvf_xmalloc(sizeof(uint64_t) * (size_t)s->o.max_blocks_per_seq);
    seq->user = user;
    s_wait_push_back(s, seq);
    return seq;
}

kvf_seq_t *kvf_sched_find(const kvf_sched_t *s, uint64_t rid) {
    for (int32_t i = 0; i < s->n_running; i++)
        if (s->running[i]->rid == rid) return s->running[i];
    for (int32_t i = 0; i < s->n_waiting; i++)
        if (s_wait_at(s, i)->rid == rid) return s_wait_at(s, i);
    return NULL;
}

// ---------------------------------------------------------------- one step

// Pass 1: every running sequence with one token left decodes it, oldest first.
static int s_plan_decodes(kvf_sched_t *s, int32_t *budget, kvf_sched_plan_t *plan, kvf_err_t *err) {
    for (int32_t i = 0; i < s->n_running && *budget > 0; i++) {
        kvf_seq_t *seq = s->running[i];
        if (seq->n_tokens - seq->n_computed != 1) continue;
        int preempted_self = 0;
        while (s_blocks_needed(s, seq, seq->n_computed + 1) > kvf_blockmgr_free_count(s->bm)) {
            kvf_seq_t *victim = s->running[s->n_running - 1];
            s_preempt(s, victim, budget, plan);
            if (victim == seq) {
                preempted_self = 1;
                break;
            }
        }
        if (preempted_self) break;  // it was the newest: nothing after it is running
        if (s_seq_grow(s, seq, seq->n_computed + 1, err)) return -1;
        seq->sched_new = 1;
        (*budget)--;
    }
    return 0;
}

// Pass 2: half-prefilled running sequences take chunks of what is left, oldest
// first. Only the oldest running sequence preempts for room; the others take
// what fits and otherwise wait for the next step.
static int s_plan_chunks(kvf_sched_t *s, int32_t *budget, kvf_sched_plan_t *plan, kvf_err_t *err) {
    for (int32_t i = 0; i < s->n_running && *budget > 0; i++) {
        kvf_seq_t *seq = s->running[i];
        int32_t rem = seq->n_tokens - seq->n_computed;
        if (rem <= 1 || seq->sched_new > 0) continue;
        int32_t want = rem < *budget ? rem : *budget;
        int32_t fit = s_fit(s, seq, want, kvf_blockmgr_free_count(s->bm));
        while (fit == 0 && i == 0 && s->n_running > 1) {
            s_preempt(s, s->running[s->n_running - 1], budget, plan);
            want = rem < *budget ? rem : *budget;
            fit = s_fit(s, seq, want, kvf_blockmgr_free_count(s->bm));
        }
        if (fit == 0) continue;
        if (s_seq_grow(s, seq, seq->n_computed + fit, err)) return -1;
        seq->sched_new = fit;
        *budget -= fit;
    }
    return 0;
}

// Pass 3: admit waiting sequences in FCFS order while slots, budget and free
// blocks last (never by preempting): a sequence is admitted when the free
// blocks hold all its known tokens (its first chunk is what it takes now). The
// head blocks the queue when it does not fit, so nothing overtakes it.
static int s_plan_admit(kvf_sched_t *s, int32_t *budget, kvf_err_t *err) {
    int32_t bs = s->o.block_size;
    while (s->n_waiting > 0 && s->n_running < s->o.max_batch_size && *budget > 0) {
        kvf_seq_t *seq = s_wait_at(s, 0);
        kvf_assert(seq->n_blocks == 0 && seq->n_computed == 0);
        int32_t cached = 0;
        int32_t hits = kvf_blockmgr_match_prefix(s->bm, seq->tokens, seq->n_tokens - 1, s->o.max_blocks_per_seq,
                                                 0, NULL, NULL, &cached);
        int32_t start = hits * bs;
        int32_t rem = seq->n_tokens - start;
        int32_t want = rem < *budget ? rem : *budget;
        int32_t free_after = kvf_blockmgr_free_count(s->bm) - cached;
        // Start only what can finish its prefill with the blocks free now (they
        // are taken chunk by chunk): a prompt admitted into too little room would
        // only be preempted again, its work thrown away.
        if (free_after < (seq->n_tokens + bs - 1) / bs - hits) break;
        int64_t room = (int64_t)free_after * bs;
        int32_t fit = room < want ? (int32_t)room : want;
        if (fit <= 0) break;
        int32_t got = kvf_blockmgr_match_prefix(s->bm, seq->tokens, seq->n_tokens - 1, s->o.max_blocks_per_seq,
                                                1, seq->blocks, seq->hashes, NULL);
        kvf_assert(got == hits);
        seq->n_blocks = hits;
        seq->n_hashed = hits;
        seq->n_computed = start;
        s_wait_pop_front(s);
        s_run_insert(s, seq);
        if (s_seq_grow(s, seq, start + fit, err)) return -1;
        seq->sched_new = fit;
        *budget -= fit;
    }
    return 0;
}

int kvf_sched_schedule(kvf_sched_t *s, kvf_sched_plan_t *plan, kvf_err_t *err) {
    memset(plan, 0, sizeof *plan);
    plan->seqs = s->p_seqs;
    plan->n_new = s->p_new;
    plan->n_past = s->p_past;
    plan->sample = s->p_sample;
    int32_t budget = s->o.max_prefill_token_num;
    for (int32_t i = 0; i < s->n_running; i++) s->running[i]->sched_new = 0;

    if (s->o.policy == KVF_SCHED_PREFILL_FIRST) {
        if (s_plan_chunks(s, &budget, plan, err)) return -1;
        if (plan->n_preempted == 0 && s_plan_admit(s, &budget, err)) return -1;
        // No prefill could run (none left, the batch is full, or no room): decode.
        if (budget == s->o.max_prefill_token_num && s_plan_decodes(s, &budget, plan, err)) return -1;
    } else {
        if (s_plan_decodes(s, &budget, plan, err)) return -1;
        if (s_plan_chunks(s, &budget, plan, err)) return -1;
        // Under memory pressure this step admits nothing: a sequence just preempted
        // would only be re-admitted to be preempted again.
        if (plan->n_preempted == 0 && s_plan_admit(s, &budget, err)) return -1;
    }

    for (int32_t i = 0; i < s->n_running; i++) {
        kvf_seq_t *seq = s->running[i];
        if (seq->sched_new <= 0) continue;
        int32_t k = plan->n_seqs++;
        plan->seqs[k] = seq;
        plan->n_new[k] = seq->sched_new;
        plan->n_past[k] = seq->n_computed;
        plan->sample[k] = seq->n_computed + seq->sched_new == seq->n_tokens;
        plan->n_tokens += seq->sched_new;
        if (seq->n_tokens - seq->n_computed == 1) plan->n_decode++;
    }
    kvf_assert(plan->n_tokens <= s->o.max_prefill_token_num);
    return plan->n_seqs;
}

void kvf_sched_complete(kvf_sched_t *s, const kvf_sched_plan_t *plan) {
    int32_t bs = s->o.block_size;
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        kvf_seq_t *seq = plan->seqs[i];
        seq->n_computed += plan->n_new[i];
        seq->sched_new = 0;
        kvf_assert(seq->n_computed <= seq->n_tokens && seq->n_computed <= seq->n_blocks * bs);
        while ((seq->n_hashed + 1) * bs <= seq->n_computed) {
            int32_t b = seq->n_hashed;
            uint64_t parent = b > 0 ? seq->hashes[b - 1] : KVF_BLOCKMGR_ROOT_HASH;
            int rc = kvf_blockmgr_commit_full_block(s->bm, seq->blocks[b], parent, seq->tokens + (size_t)b * bs,
                                                    &seq->hashes[b], NULL);
            kvf_assert(rc == 0);
            seq->n_hashed++;
        }
    }
}

int kvf_sched_append(kvf_sched_t *s, kvf_seq_t *seq, int32_t token, kvf_err_t *err) {
    if (seq->n_tokens >= s->max_tokens)
        return kvf_err_set(err, KVF_E_TOO_LONG, "sequence %llu reached %d tokens", (unsigned long long)seq->rid,
                           s->max_tokens);
    if (seq->n_tokens == seq->cap) {
        int32_t cap = seq->cap * 2 < s->max_tokens ? seq->cap * 2 : s->max_tokens;
        seq->tokens = kvf_xrealloc(seq->tokens, sizeof(int32_t) * (size_t)cap);
        seq->cap = cap;
    }
    seq->tokens[seq->n_tokens++] = token;
    return 0;
}

void kvf_sched_finish(kvf_sched_t *s, kvf_seq_t *seq) {
    if (seq->state == KVF_SEQ_RUNNING)
        s_run_remove(s, seq);
    else
        s_wait_remove(s, seq);
    s_seq_release_blocks(s, seq);
    s_seq_free(seq);
}

int kvf_sched_set_policy(kvf_sched_t *s, int32_t policy, kvf_err_t *err) {
    if (policy != KVF_SCHED_MIXED && policy != KVF_SCHED_PREFILL_FIRST)
        return kvf_err_set(err, KVF_E_INVAL, "scheduler: unknown policy %d", policy);
    s->o.policy = policy;
    return 0;
}

int32_t kvf_sched_n_running(const kvf_sched_t *s) { return s->n_running; }
int32_t kvf_sched_n_waiting(const kvf_sched_t *s) { return s->n_waiting; }
uint64_t kvf_sched_n_preemptions(const kvf_sched_t *s) { return s->preemptions; }

kvf_seq_t *kvf_sched_running_at(const kvf_sched_t *s, int32_t i) {
    return i >= 0 && i < s->n_running ? s->running[i] : NULL;
}

kvf_seq_t *kvf_sched_waiting_at(const kvf_sched_t *s, int32_t i) {
    return i >= 0 && i < s->n_waiting ? s_wait_at(s, i) : NULL;
}
