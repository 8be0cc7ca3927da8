// worker/tp_group.c — the leader's broadcasting backend and the followers' loop,
// see tp_group.h.
#include "worker/tp_group.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

#define S_MAGIC 0x6b767467u  // "kvtg"

typedef enum { S_STEP = 1, S_NOP = 2, S_STOP = 3 } s_kind_t;

typedef struct {
    uint32_t magic;
    uint32_t kind;       // s_kind_t
    uint64_t seq;        // message number, checked by followers
    int32_t n_seqs, n_tokens, max_blocks, all_logits;
} s_hdr_t;

// The int32 payload of a step for these sizes; -1 when they break the limits.
static int64_t s_payload_len(const kvf_backend_opts_t *o, const s_hdr_t *h) {
    if (h->n_seqs < 1 || h->n_seqs > o->max_batch_size || h->n_tokens < 1 || h->n_tokens > o->max_step_tokens ||
        h->max_blocks < 1 || h->max_blocks > o->max_blocks_per_seq)
        return -1;
    return (int64_t)h->n_tokens + 2 * (int64_t)h->n_seqs + (int64_t)h->n_seqs * h->max_blocks;
}

// ---------------------------------------------------------------- leader

typedef struct {
    kvf_backend_t base;      // first: the engine sees a kvf_backend_t
    kvf_backend_t *inner;    // owned
    kvf_tp_t *ctl;           // not owned
    int32_t *payload;        // (max_step_tokens + 2 max_batch_size + max_batch_size x max_blocks_per_seq)
    uint64_t seq;
    int32_t keepalive_ms;
    pthread_t th;
    int th_started;
    pthread_mutex_t mu;      // one message at a time; held through a whole step
    pthread_cond_t cv;
    int stop;
    int failed;
    kvf_err_t fail_err;
    int64_t last_sent_ms;
    s_hdr_t last;            // the last STEP sent (its payload is still in payload)
    float *stash;            // (max_logit_rows, vocab) inner has forward_sample: logits of a step it refused to sample
    int stash_valid;         // stash holds the logits of the last STEP, for the engine's forward() of it
} s_leader_t;

// Sends one message (header, then the payload of a step). Caller holds mu.
static int s_send(s_leader_t *l, s_kind_t kind, const kvf_batch_t *b, kvf_err_t *err) {
    s_hdr_t h = {S_MAGIC, (uint32_t)kind, ++l->seq, 0, 0, 0, 0};
    int64_t n = 0;
    if (kind == S_STEP) {
        h.n_seqs = b->n_seqs;
        h.n_tokens = b->n_tokens;
        h.max_blocks = b->max_blocks;
        h.all_logits = b->all_logits;
        n = s_payload_len(&l->inner->opts, &h);
        if (n < 0)  // the backend refuses such a batch; the followers need not see it
            return kvf_err_set(err, KVF_E_INVAL, "tp leader: batch of %d sequences / %d tokens / %d blocks per row "
                                                 "is outside the backend's limits",
                               b->n_seqs, b->n_tokens, b->max_blocks);
        int32_t *p = l->payload;
        memcpy(p, b->tokens, sizeof(int32_t) * (size_t)b->n_tokens), p += b->n_tokens;
        memcpy(p, b->n_new, sizeof(int32_t) * (size_t)b->n_seqs), p += b->n_seqs;
        memcpy(p, b->n_past, sizeof(int32_t) * (size_t)b->n_seqs), p += b->n_seqs;
        memcpy(p, b->block_table, sizeof(int32_t) * (size_t)b->n_seqs * (size_t)b->max_blocks);
    }
    if (kind == S_STEP) l->last = h;
    if (kvf_tp_broadcast(l->ctl, &h, sizeof h, 0, err) != 0) return -1;
    if (n > 0 && kvf_tp_broadcast(l->ctl, l->payload, (size_t)n * sizeof(int32_t), 0, err) != 0) return -1;
    l->last_sent_ms = kvf_clock_ms();
    return 0;
}

static void s_mark_failed(s_leader_t *l, const kvf_err_t *err) {
    if (l->failed) return;
    l->failed = 1;
    l->fail_err = *err;
    kvf_log(KVF_LOG_ERROR, "tp leader: the group is lost: %s", err->msg);
}

// Whether b is the step last sent (header and payload).
static int s_is_last_step(const s_leader_t *l, const kvf_batch_t *b) {
    const s_hdr_t *h = &l->last;
    if (h->n_seqs != b->n_seqs || h->n_tokens != b->n_tokens || h->max_blocks != b->max_blocks ||
        h->all_logits != b->all_logits)
        return 0;
    const int32_t *p = l->payload;
    const size_t nt = (size_t)b->n_tokens, ns = (size_t)b->n_seqs;
    return memcmp(p, b->tokens, nt * sizeof(int32_t)) == 0 && memcmp(p + nt, b->n_new, ns * sizeof(int32_t)) == 0 &&
           memcmp(p + nt + ns, b->n_past, ns * sizeof(int32_t)) == 0 &&
           memcmp(p + nt + 2 * ns, b->block_table, ns * (size_t)b->max_blocks * sizeof(int32_t)) == 0;
}

static int s_leader_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err) {
    s_leader_t *l = (s_leader_t *)be;
    if (!b || !logits) return kvf_err_set(err, KVF_E_INVAL, "tp leader forward: batch and logits are required");
    if (!b->tokens || !b->n_new || !b->n_past || !b->block_table)
        return kvf_err_set(err, KVF_E_INVAL, "batch: tokens, n_new, n_past and block_table are required");
    pthread_mutex_lock(&l->mu);
    int rc = -1;
    if (l->failed) {
        if (err) *err = l->fail_err;
    } else if (l->stash_valid && s_is_last_step(l, b)) {  // forward_sample ran it already: no second run
        l->stash_valid = 0;
        const int64_t rows = b->all_logits ? b->n_tokens : b->n_seqs;
        memcpy(logits, l->stash, (size_t)rows * (size_t)l->base.cfg.vocab_size * sizeof(float));
        rc = 0;
    } else {
        kvf_err_t e;
        kvf_err_clear(&e);
        l->stash_valid = 0;
        if (s_send(l, S_STEP, b, &e) == 0) {
            rc = l->inner->ops->forward(l->inner, b, logits, &e);
        } else if (e.code == KVF_E_INVAL) {
            rc = -1;  // refused before anything was sent
        }
        if (rc != 0 && e.code == KVF_E_PEER_LOST) s_mark_failed(l, &e);
        if (rc != 0 && err) *err = e;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

// Only when the inner backend has forward_sample. The step goes to the followers
// first, as for forward(). When the inner backend refuses to sample it
// (KVF_E_UNSUPPORTED, nothing run) the followers run it all the same, so the
// leader runs it too through forward() into the stash and returns
// KVF_E_UNSUPPORTED; the engine's forward() of the same batch, which comes next,
// gets the stashed logits without a second step. all_logits steps are refused
// before anything is sent (forward_sample is for last-token rows only).
static int s_leader_forward_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                                   const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                                   int32_t *out_tokens, kvf_err_t *err) {
    s_leader_t *l = (s_leader_t *)be;
    if (!b || !per_seq || !out_tokens)
        return kvf_err_set(err, KVF_E_INVAL, "tp leader forward_sample: batch, per_seq and out_tokens are required");
    if (!b->tokens || !b->n_new || !b->n_past || !b->block_table)
        return kvf_err_set(err, KVF_E_INVAL, "batch: tokens, n_new, n_past and block_table are required");
    if (b->all_logits) return kvf_err_set(err, KVF_E_UNSUPPORTED, "tp leader forward_sample: all_logits steps");
    pthread_mutex_lock(&l->mu);
    int rc = -1;
    if (l->failed) {
        if (err) *err = l->fail_err;
    } else {
        kvf_err_t e;
        kvf_err_clear(&e);
        l->stash_valid = 0;
        if (s_send(l, S_STEP, b, &e) == 0) {
            rc = l->inner->ops->forward_sample(l->inner, b, per_seq, steps, history, n_history, out_tokens, &e);
            if (rc != 0 && e.code == KVF_E_UNSUPPORTED) {
                kvf_err_t fe;
                kvf_err_clear(&fe);
                if (l->inner->ops->forward(l->inner, b, l->stash, &fe) == 0)
                    l->stash_valid = 1;  // rc stays -1 with e: UNSUPPORTED, the engine calls forward() next
                else
                    e = fe;
            }
        }
        if (rc != 0 && e.code == KVF_E_PEER_LOST) s_mark_failed(l, &e);
        if (rc != 0 && err) *err = e;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

// Keeps idle followers from timing out: an empty message whenever nothing was
// sent for keepalive_ms.
static void *s_keepalive_main(void *arg) {
    s_leader_t *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        int64_t due = l->last_sent_ms + l->keepalive_ms;
        int64_t now = kvf_clock_ms();
        if (!l->failed && now >= due) {
            kvf_err_t e;
            if (s_send(l, S_NOP, NULL, &e) != 0) s_mark_failed(l, &e);
            continue;
        }
        int64_t wait_ms = l->failed ? 1000 : due - now;
        kvf_clock_cond_wait_ms(&l->cv, &l->mu, wait_ms);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void s_leader_destroy(kvf_backend_t **self_p) {
    if (!self_p || !*self_p) return;
    s_leader_t *l = (s_leader_t *)*self_p;
    if (l->th_started) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->th, NULL);
    }
    if (l->ctl && !l->failed) {
        kvf_err_t e;
        if (s_send(l, S_STOP, NULL, &e) != 0) kvf_log(KVF_LOG_WARN, "tp leader: STOP not delivered: %s", e.msg);
    }
    if (l->inner) l->inner->ops->destroy(&l->inner);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->payload);
    free(l->stash);
    free(l);
    *self_p = NULL;
}

static const kvf_backend_ops_t s_leader_ops = {.name = "tp-leader", .forward = s_leader_forward,
                                               .destroy = s_leader_destroy};
// For an inner backend with forward_sample (cuda, cpu): the engine's greedy steps bring back only the ids.
static const kvf_backend_ops_t s_leader_sample_ops = {.name = "tp-leader", .forward = s_leader_forward,
                                                      .destroy = s_leader_destroy,
                                                      .forward_sample = s_leader_forward_sample};

kvf_backend_t *kvf_tp_leader_new(kvf_backend_t **inner_p, kvf_tp_t *ctl, int32_t keepalive_ms, kvf_err_t *err) {
    if (!inner_p || !*inner_p || !ctl || kvf_tp_rank(ctl) != 0 || keepalive_ms < 0) {
        if (inner_p && *inner_p) (*inner_p)->ops->destroy(inner_p);
        kvf_err_set(err, KVF_E_INVAL, "tp leader: needs a backend and the control communicator of rank 0");
        return NULL;
    }
    s_leader_t *l = calloc(1, sizeof *l);
    kvf_backend_t *inner = *inner_p;
    *inner_p = NULL;
    const kvf_backend_opts_t *o = &inner->opts;
    size_t n = (size_t)o->max_step_tokens + 2 * (size_t)o->max_batch_size +
               (size_t)o->max_batch_size * (size_t)o->max_blocks_per_seq;
    const size_t stash = inner->ops->forward_sample ? (size_t)o->max_logit_rows * (size_t)inner->cfg.vocab_size : 0;
    if (!l || !(l->payload = malloc(n * sizeof(int32_t))) || (stash && !(l->stash = malloc(stash * sizeof(float))))) {
        if (l) free(l->payload);
        free(l);
        inner->ops->destroy(&inner);
        kvf_err_set(err, KVF_E_NOMEM, "tp leader: out of memory");
        return NULL;
    }
    l->base = *inner;  // cfg, opts, plan numbers
    l->base.ops = inner->ops->forward_sample ? &s_leader_sample_ops : &s_leader_ops;
    l->inner = inner;
    l->ctl = ctl;
    l->keepalive_ms = keepalive_ms ? keepalive_ms : ctl->timeout_ms / 4;
    if (l->keepalive_ms < 10) l->keepalive_ms = 10;
    l->last_sent_ms = kvf_clock_ms();
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    kvf_backend_t *be = &l->base;
    if (pthread_create(&l->th, NULL, s_keepalive_main, l) != 0) {
        s_leader_destroy(&be);
        kvf_err_set(err, KVF_E_NOMEM, "tp leader: cannot start the keepalive thread");
        return NULL;
    }
    l->th_started = 1;
    kvf_log(KVF_LOG_INFO, "tp leader: %d ranks, keepalive every %d ms", kvf_tp_size(ctl), l->keepalive_ms);
    return be;
}

int kvf_tp_leader_check(kvf_backend_t *be, kvf_err_t *err) {
    if (!be || (be->ops != &s_leader_ops && be->ops != &s_leader_sample_ops))
        return kvf_err_set(err, KVF_E_INVAL, "not a tp leader backend");
    s_leader_t *l = (s_leader_t *)be;
    pthread_mutex_lock(&l->mu);
    int failed = l->failed;
    if (failed && err) *err = l->fail_err;
    pthread_mutex_unlock(&l->mu);
    return failed ? -1 : 0;
}

// ---------------------------------------------------------------- follower

int kvf_tp_follower_run(kvf_backend_t *be, kvf_tp_t *ctl, volatile sig_atomic_t *stop, kvf_err_t *err) {
    if (!be || !ctl || kvf_tp_rank(ctl) == 0)
        return kvf_err_set(err, KVF_E_INVAL, "tp follower: needs a backend and a communicator rank > 0");
    const kvf_backend_opts_t *o = &be->opts;
    size_t cap = (size_t)o->max_step_tokens + 2 * (size_t)o->max_batch_size +
                 (size_t)o->max_batch_size * (size_t)o->max_blocks_per_seq;
    int32_t *payload = malloc(cap * sizeof(int32_t));
    float *logits = malloc((size_t)o->max_logit_rows * (size_t)be->cfg.vocab_size * sizeof(float));
    // A follower's logits are never used: where the backend can pick tokens itself
    // (forward_sample, e.g. cuda), steps without all_logits run through it with no
    // token wanted, which copies back n_seqs ids instead of n_seqs x vocab floats.
    // The collectives are the same as forward()'s.
    const size_t B = (size_t)o->max_batch_size;
    const kvf_sampling_t **none = calloc(B, sizeof *none);
    int32_t *zeros = calloc(B, sizeof *zeros), *ids = calloc(B, sizeof *ids);
    if (!payload || !logits || !none || !zeros || !ids) {
        free(payload);
        free(logits);
        free(none);
        free(zeros);
        free(ids);
        return kvf_err_set(err, KVF_E_NOMEM, "tp follower: out of memory");
    }
    int rc = 0;
    uint64_t expect = 1, steps = 0;
    kvf_log(KVF_LOG_INFO, "tp follower: rank %d of %d waiting for steps", kvf_tp_rank(ctl), kvf_tp_size(ctl));
    while (!(stop && *stop)) {
        s_hdr_t h;
        if (kvf_tp_broadcast(ctl, &h, sizeof h, 0, err) != 0) {
            rc = -1;
            break;
        }
        if (h.magic != S_MAGIC || h.seq != expect) {
            kvf_tp_abort(ctl);
            rc = kvf_err_set(err, KVF_E_PROTO, "tp follower: message %llu (magic %08x) where %llu was due",
                             (unsigned long long)h.seq, h.magic, (unsigned long long)expect);
            break;
        }
        expect++;
        if (h.kind == S_NOP) continue;
        if (h.kind == S_STOP) {
            kvf_log(KVF_LOG_INFO, "tp follower: STOP from the leader after %llu steps", (unsigned long long)steps);
            break;
        }
        int64_t n = h.kind == S_STEP ? s_payload_len(o, &h) : -1;
        if (n < 0) {
            kvf_tp_abort(ctl);
            rc = kvf_err_set(err, KVF_E_PROTO, "tp follower: bad message kind %u or sizes (%d seqs, %d tokens, %d "
                                               "blocks)", h.kind, h.n_seqs, h.n_tokens, h.max_blocks);
            break;
        }
        if (kvf_tp_broadcast(ctl, payload, (size_t)n * sizeof(int32_t), 0, err) != 0) {
            rc = -1;
            break;
        }
        kvf_batch_t b = {.n_seqs = h.n_seqs, .n_tokens = h.n_tokens, .tokens = payload,
                         .n_new = payload + h.n_tokens, .n_past = payload + h.n_tokens + h.n_seqs,
                         .block_table = payload + h.n_tokens + 2 * h.n_seqs, .max_blocks = h.max_blocks,
                         .all_logits = h.all_logits};
        kvf_err_t e;
        int frc = be->ops->forward_sample && !b.all_logits ? be->ops->forward_sample(be, &b, none, zeros, NULL, NULL, ids, &e) : 1;
        if (frc == 1 || (frc != 0 && e.code == KVF_E_UNSUPPORTED))  // refused before running: run it anyway
            frc = be->ops->forward(be, &b, logits, &e);
        if (frc != 0) {
            if (e.code == KVF_E_PEER_LOST || e.code == KVF_E_DEVICE) {
                if (err) *err = e;
                rc = -1;
                break;
            }
            kvf_log(KVF_LOG_WARN, "tp follower: step %llu refused (so was the leader's): %s",
                    (unsigned long long)h.seq, e.msg);
            continue;
        }
        steps++;
    }
    free(payload);
    free(logits);
    free(none);
    free(zeros);
    free(ids);
    return rc;
}
