// worker/worker.c — see worker.h.
#include "worker.h"

#include <czmq.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/curve.h"
#include "common/log.h"
#include "common/zmqutil.h"
#include "proto/codec.h"
#include "worker/tp.h"
#include "worker/tp_group.h"

#define REGISTER_EVERY_MS 1000
#define MAX_IDLE_WAIT_MS 500

typedef enum {
    S_REGISTERING = 0,  // REGISTER sent, waiting for WELCOME
    S_READY = 1,        // taking work
    S_DRAINING = 2,     // finishing work, refusing new
    S_STOPPING = 3,     // SHUTDOWN or stop flag: leave the loop
} s_state;

// One request in flight, and what its current step produced.
typedef struct {
    uint64_t rid;
    int used;
    kvf_detok_t *detok;          // NULL without a tokenizer
    uint32_t prompt_tokens;
    uint32_t completion_tokens;  // resume tokens included
    int32_t *chunk;              // tokens of this step
    int32_t n_chunk, cap_chunk;
    char *text;                  // text of this step
    size_t n_text, cap_text;
    int touched;                 // in the step's touched list
    int finished;
    kvf_finish_reason reason;
} s_wreq_t;

struct kvf_worker_s {
    kvf_worker_opts_t o;
    char *model;
    char *coordinator;
    char id[256];
    kvf_engine_t *engine;
    kvf_tp_t *tp;                // the TP group's communicator; NULL for one rank
    char *tp_group;              // its id (REGISTER's group_id); NULL for one rank
    char plan_text[2048];
    kvf_plan_t plan;

    zsock_t *sock;
    zcert_t *cert;               // our CURVE key pair; NULL: plain
    char server_key[KVF_CURVE_KEY_TXT];  // the coordinator's public key (with cert)
    s_state state;
    int welcomed_once;
    uint32_t registers_unanswered;  // REGISTERs sent since the last WELCOME
    uint32_t heartbeat_ms;
    int64_t next_register_ms, next_heartbeat_ms;
    uint64_t hb_tokens;          // tokens_generated at the last heartbeat
    int64_t hb_time_ms;
    // Heartbeats during a step (a cpu step can outlast the coordinator's
    // --dead-after-ms many times over): while in_step is set the heartbeat thread
    // owns the socket and sends hb_stats (the engine's counters as the step
    // began) when one is due; the main thread does not touch the socket then.
    // hb_mu hands the socket over with a full memory barrier, which is how
    // ZeroMQ lets two threads use one socket, never at the same time.
    pthread_mutex_t hb_mu;
    pthread_cond_t hb_cv;
    pthread_t hb_thread;
    int hb_started, hb_stop, in_step;
    kvf_engine_stats_t hb_stats;

    // rid -> request: open addressing, linear probing, backward-shift deletion
    s_wreq_t *reqs;
    uint32_t cap_reqs, n_reqs;

    uint64_t *touched;           // rids touched in the current step
    uint32_t n_touched, cap_touched;
};

// ---------------------------------------------------------------- request table

static uint32_t s_slot(uint64_t rid, uint32_t cap) {
    rid ^= rid >> 33;
    rid *= 0xff51afd7ed558ccdull;
    rid ^= rid >> 33;
    return (uint32_t)rid & (cap - 1);
}

static s_wreq_t *s_req_find(kvf_worker_t *w, uint64_t rid) {
    if (w->cap_reqs == 0) return NULL;
    for (uint32_t i = s_slot(rid, w->cap_reqs);; i = (i + 1) & (w->cap_reqs - 1)) {
        if (!w->reqs[i].used) return NULL;
        if (w->reqs[i].rid == rid) return &w->reqs[i];
    }
}

static void s_req_put(kvf_worker_t *w, const s_wreq_t *r);

static void s_req_grow(kvf_worker_t *w) {
    if (2 * (w->n_reqs + 1) <= w->cap_reqs) return;
    s_wreq_t *old = w->reqs;
    uint32_t old_cap = w->cap_reqs;
    w->cap_reqs = old_cap ? old_cap * 2 : 64;
    w->reqs = kvf_xcalloc(w->cap_reqs, sizeof(s_wreq_t));
    w->n_reqs = 0;
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i].used) s_req_put(w, &old[i]);
    free(old);
}

static void s_req_put(kvf_worker_t *w, const s_wreq_t *r) {
    uint32_t i = s_slot(r->rid, w->cap_reqs);
    while (w->reqs[i].used) i = (i + 1) & (w->cap_reqs - 1);
    w->reqs[i] = *r;
    w->reqs[i].used = 1;
    w->n_reqs++;
}

static s_wreq_t *s_req_add(kvf_worker_t *w, uint64_t rid) {
    s_req_grow(w);
    s_wreq_t r;
    memset(&r, 0, sizeof r);
    r.rid = rid;
    s_req_put(w, &r);
    return s_req_find(w, rid);
}

static void s_req_remove(kvf_worker_t *w, uint64_t rid) {
    s_wreq_t *r = s_req_find(w, rid);
    if (!r) return;
    kvf_detok_destroy(&r->detok);
    free(r->chunk);
    free(r->text);
    uint32_t mask = w->cap_reqs - 1;
    uint32_t i = (uint32_t)(r - w->reqs);
    w->reqs[i].used = 0;
    // backward shift: pull later entries of the cluster into the hole
    for (uint32_t j = (i + 1) & mask; w->reqs[j].used; j = (j + 1) & mask) {
        uint32_t home = s_slot(w->reqs[j].rid, w->cap_reqs);
        // entry j may move to i when i lies cyclically in [home, j)
        if (((j - home) & mask) >= ((j - i) & mask)) {
            w->reqs[i] = w->reqs[j];
            w->reqs[j].used = 0;
            i = j;
        }
    }
    w->n_reqs--;
}

static void s_text_append(s_wreq_t *r, const char *t) {
    size_t n = strlen(t);
    if (n == 0) return;
    if (r->n_text + n + 1 > r->cap_text) {
        r->cap_text = (r->n_text + n + 1) * 2;
        r->text = kvf_xrealloc(r->text, r->cap_text);
    }
    memcpy(r->text + r->n_text, t, n + 1);
    r->n_text += n;
}

// ---------------------------------------------------------------- sending

static int s_send(kvf_worker_t *w, const kvf_msg_t *m) {
    kvf_err_t err;
    if (kvf_msg_send(w->sock, NULL, m, &err) != 0) {
        kvf_log(KVF_LOG_WARN, "send %s: %s", kvf_msg_type_name(m->type), err.msg);
        return -1;
    }
    return 0;
}

static uint32_t s_free_blocks(const kvf_worker_t *w) {
    kvf_engine_stats_t st;
    kvf_engine_stats(w->engine, &st);
    return (uint32_t)st.free_blocks;
}

static void s_send_register(kvf_worker_t *w) {
    const kvf_engine_opts_t *eo = kvf_engine_opts(w->engine);
    kvf_engine_stats_t st;
    kvf_engine_stats(w->engine, &st);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_REGISTER);
    kvf_msg_register_t *r = &m.u.reg;
    r->worker_id = kvf_str(w->id);
    r->group_id = kvf_str(w->tp ? w->tp_group : w->id);
    r->model = kvf_str(w->model);
    r->backend = kvf_str(eo->backend);
    r->device = strcmp(eo->backend, "cuda") == 0 ? eo->device : -1;
    r->tp_rank = 0;
    r->tp_size = (uint32_t)kvf_tp_size(w->tp);  // free/total blocks are the group's: block ids agree on every rank
    r->total_blocks = (uint32_t)st.total_blocks;
    r->free_blocks = (uint32_t)st.free_blocks;
    r->max_batch_size = (uint32_t)eo->max_batch_size;
    r->max_prefill_tokens = (uint32_t)eo->max_prefill_token_num;
    r->session_len = (uint32_t)eo->session_len;
    r->vocab_size = (uint32_t)kvf_engine_cfg(w->engine)->vocab_size;
    r->prefix_caching = eo->enable_prefix_caching ? 1 : 0;
    r->plan = w->plan;
    s_send(w, &m);
    w->next_register_ms = kvf_clock_ms() + REGISTER_EVERY_MS;
    // A CURVE handshake that fails is silent on this side: say where to look.
    if (++w->registers_unanswered == 10 && w->cert)
        kvf_log(KVF_LOG_WARN,
                "no WELCOME from %s after 10 REGISTERs: is --coordinator-key the coordinator's key, and our public "
                "key in its --worker-keys?",
                w->coordinator);
}

// A HEARTBEAT with the engine's counters st.
static void s_send_heartbeat_of(kvf_worker_t *w, const kvf_engine_stats_t *stp) {
    const kvf_engine_stats_t st = *stp;
    int64_t now = kvf_clock_ms();
    double dt = (double)(now - w->hb_time_ms) / 1000.0;
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_HEARTBEAT);
    kvf_msg_heartbeat_t *h = &m.u.heartbeat;
    h->state = w->state == S_DRAINING ? KVF_WSTATE_DRAINING : KVF_WSTATE_READY;
    h->free_blocks = (uint32_t)st.free_blocks;
    h->total_blocks = (uint32_t)st.total_blocks;
    h->running = (uint32_t)st.running;
    h->waiting = (uint32_t)st.waiting;
    h->tokens_per_s = dt > 0 ? (double)(st.tokens_generated - w->hb_tokens) / dt : 0.0;
    h->tokens_total = st.tokens_generated;
    h->preemptions = st.preemptions;
    h->prefix_hits = st.prefix_hits;
    h->prefix_misses = st.prefix_misses;
    h->rejected = 0;  // the engine queues what does not fit now; it never refuses for blocks
    s_send(w, &m);
    w->hb_tokens = st.tokens_generated;
    w->hb_time_ms = now;
    w->next_heartbeat_ms = now + w->heartbeat_ms;
}

static void s_send_heartbeat(kvf_worker_t *w) {
    kvf_engine_stats_t st;
    kvf_engine_stats(w->engine, &st);
    s_send_heartbeat_of(w, &st);
}

// The heartbeat thread: idle but for the steps (in_step), when it sends the
// heartbeats that fall due. Ends when hb_stop is set.
static void *s_hb_main(void *arg) {
    kvf_worker_t *w = arg;
    pthread_mutex_lock(&w->hb_mu);
    while (!w->hb_stop) {
        int64_t wait_ms = 1000;
        if (w->in_step) {
            const int64_t now = kvf_clock_ms();
            if (now >= w->next_heartbeat_ms) s_send_heartbeat_of(w, &w->hb_stats);
            wait_ms = w->next_heartbeat_ms - kvf_clock_ms();
            if (wait_ms < 1) wait_ms = 1;
        }
        kvf_clock_cond_wait_ms(&w->hb_cv, &w->hb_mu, wait_ms);
    }
    pthread_mutex_unlock(&w->hb_mu);
    return NULL;
}

// A final RESULT for a request that never ran (refused or not allowed).
static void s_send_refusal(kvf_worker_t *w, uint64_t rid, kvf_status code, const char *msg) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_RESULT);
    m.u.result.rid = rid;
    m.u.result.finished = 1;
    m.u.result.finish_reason = KVF_FINISH_ERROR;
    m.u.result.error_code = (uint32_t)code;
    m.u.result.error = kvf_str(msg);
    m.u.result.free_blocks = s_free_blocks(w);
    s_send(w, &m);
}

static void s_send_error(kvf_worker_t *w, uint64_t rid, kvf_status code, const char *msg) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_ERROR);
    m.u.error.rid = rid;
    m.u.error.code = (uint32_t)code;
    m.u.error.message = kvf_str(msg);
    s_send(w, &m);
}

// The RESULT chunk of one request for this step; forgets a finished request.
static void s_send_chunk(kvf_worker_t *w, s_wreq_t *r, uint32_t free_blocks) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_RESULT);
    kvf_msg_result_t *res = &m.u.result;
    res->rid = r->rid;
    res->tokens.ids = r->chunk;
    res->tokens.n = (uint32_t)r->n_chunk;
    res->text = kvf_str(r->text ? r->text : "");
    res->finished = (uint32_t)r->finished;
    res->finish_reason = r->finished ? (uint32_t)r->reason : KVF_FINISH_NONE;
    if (r->finished) {
        res->prompt_tokens = r->prompt_tokens;
        res->completion_tokens = r->completion_tokens;
        if (r->reason == KVF_FINISH_ERROR) {
            res->error_code = KVF_E_DEVICE;
            res->error = kvf_str("the model step failed on this worker");
        }
    }
    res->free_blocks = free_blocks;
    s_send(w, &m);
    r->n_chunk = 0;
    r->n_text = 0;
    if (r->text) r->text[0] = 0;
    r->touched = 0;
    if (r->finished) s_req_remove(w, r->rid);
}

// Ends every request in flight with a final RESULT "cancelled".
static void s_cancel_all(kvf_worker_t *w) {
    uint32_t n = 0;
    uint64_t *rids = kvf_xmalloc(sizeof(uint64_t) * (w->n_reqs + 1));
    for (uint32_t i = 0; i < w->cap_reqs; i++)
        if (w->reqs[i].used) rids[n++] = w->reqs[i].rid;
    for (uint32_t i = 0; i < n; i++) {
        s_wreq_t *r = s_req_find(w, rids[i]);
        kvf_engine_cancel(w->engine, r->rid);
        r->finished = 1;
        r->reason = KVF_FINISH_CANCELLED;
        s_send_chunk(w, r, s_free_blocks(w));
    }
    free(rids);
    w->n_touched = 0;
}

// Forgets every request without a word: the coordinator took them back.
static void s_drop_all(kvf_worker_t *w) {
    uint32_t n = 0;
    uint64_t *rids = kvf_xmalloc(sizeof(uint64_t) * (w->n_reqs + 1));
    for (uint32_t i = 0; i < w->cap_reqs; i++)
        if (w->reqs[i].used) rids[n++] = w->reqs[i].rid;
    for (uint32_t i = 0; i < n; i++) {
        kvf_engine_cancel(w->engine, rids[i]);
        s_req_remove(w, rids[i]);
    }
    if (n) kvf_log(KVF_LOG_WARN, "dropped %u requests the coordinator took back", n);
    free(rids);
    w->n_touched = 0;
}

// ---------------------------------------------------------------- engine callback

static void s_on_token(void *ud, uint64_t rid, int32_t token, int finished, kvf_finish_reason reason) {
    kvf_worker_t *w = ud;
    s_wreq_t *r = s_req_find(w, rid);
    if (!r) return;
    if (!r->touched) {
        if (w->n_touched == w->cap_touched) {
            w->cap_touched = w->cap_touched ? 2 * w->cap_touched : 64;
            w->touched = kvf_xrealloc(w->touched, sizeof(uint64_t) * w->cap_touched);
        }
        w->touched[w->n_touched++] = rid;
        r->touched = 1;
    }
    if (token >= 0) {
        if (r->n_chunk == r->cap_chunk) {
            r->cap_chunk = r->cap_chunk ? 2 * r->cap_chunk : 8;
            r->chunk = kvf_xrealloc(r->chunk, sizeof(int32_t) * (size_t)r->cap_chunk);
        }
        r->chunk[r->n_chunk++] = token;
        r->completion_tokens++;
        // the stop token ends the text; it is not part of it
        if (r->detok && !(finished && reason == KVF_FINISH_STOP)) {
            const char *t = kvf_detok_push(r->detok, token);
            if (t) s_text_append(r, t);
        }
    }
    if (finished) {
        r->finished = 1;
        r->reason = reason;
        if (r->detok) s_text_append(r, kvf_detok_flush(r->detok));
    }
}

// ---------------------------------------------------------------- messages

static void s_on_assign(kvf_worker_t *w, const kvf_msg_assign_t *a) {
    char msg[600];
    if (w->state == S_DRAINING) {
        s_send_refusal(w, a->rid, KVF_E_BUSY, "worker is draining: it takes no new requests");
        return;
    }
    if (w->state != S_READY) {
        s_send_refusal(w, a->rid, KVF_E_PROTO, "ASSIGN before WELCOME");
        return;
    }
    if (s_req_find(w, a->rid)) {
        s_send_error(w, a->rid, KVF_E_INVAL, "ASSIGN of a request id already running here");
        return;
    }
    int has_text = a->text.len > 0, has_ids = a->prompt_ids.n > 0;
    if (has_text == has_ids) {
        s_send_refusal(w, a->rid, KVF_E_INVAL, "ASSIGN needs exactly one of text and prompt_ids");
        return;
    }
    const kvf_tokenizer_t *tok = kvf_engine_tokenizer(w->engine);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    kvf_err_t err;
    kvf_err_clear(&err);
    if (has_text) {
        if (!tok) {
            snprintf(msg, sizeof msg, "model %s has no tokenizer.json: send prompt_ids", w->model);
            s_send_refusal(w, a->rid, KVF_E_INVAL, msg);
            return;
        }
        if (kvf_tokenizer_encode(tok, a->text.ptr, a->text.len, 1, &ids, &n_ids, &err)) {
            s_send_refusal(w, a->rid, err.code, err.msg);
            return;
        }
        if (n_ids == 0) {
            free(ids);
            s_send_refusal(w, a->rid, KVF_E_INVAL, "the prompt text gives no tokens");
            return;
        }
    }
    const int32_t *p = has_text ? ids : a->prompt_ids.ids;
    int32_t n = has_text ? (int32_t)n_ids : (int32_t)a->prompt_ids.n;
    int rc = kvf_engine_add(w->engine, a->rid, p, n, a->resume_ids.ids, (int32_t)a->resume_ids.n, &a->sampling,
                            &err);
    free(ids);
    if (rc != 0) {
        kvf_log(KVF_LOG_INFO, "request %llu refused: %s", (unsigned long long)a->rid, err.msg);
        s_send_refusal(w, a->rid, err.code, err.msg);
        return;
    }
    s_wreq_t *r = s_req_add(w, a->rid);
    r->prompt_tokens = (uint32_t)n;
    r->completion_tokens = a->resume_ids.n;
    if (tok) {
        r->detok = kvf_detok_new(tok);
        // the client has the text of the resumed tokens: prime the stream with them
        for (uint32_t i = 0; r->detok && i < a->resume_ids.n; i++) kvf_detok_push(r->detok, a->resume_ids.ids[i]);
    }
}

static void s_on_cancel(kvf_worker_t *w, const kvf_msg_cancel_t *c) {
    if (c->rid == 0) return;  // batch ids live in the coordinator
    s_wreq_t *r = s_req_find(w, c->rid);
    if (!r) return;  // not ours (or finished already): ignored, as the protocol says
    kvf_engine_cancel(w->engine, c->rid);
    r->finished = 1;
    r->reason = KVF_FINISH_CANCELLED;
    s_send_chunk(w, r, s_free_blocks(w));
}

static int s_on_message(kvf_worker_t *w, kvf_msg_t *m, kvf_err_t *err) {
    switch (m->type) {
    case KVF_MSG_WELCOME:
        if (w->state == S_REGISTERING) {
            w->heartbeat_ms = m->u.welcome.heartbeat_ms ? m->u.welcome.heartbeat_ms : 1000;
            w->state = S_READY;
            w->welcomed_once = 1;
            w->registers_unanswered = 0;
            kvf_log(KVF_LOG_INFO, "welcomed by %s: heartbeat every %u ms", w->coordinator, w->heartbeat_ms);
            s_send_heartbeat(w);
        }
        return 0;  // a WELCOME for a repeated REGISTER: nothing to do
    case KVF_MSG_ASSIGN:
        s_on_assign(w, &m->u.assign);
        return 0;
    case KVF_MSG_CANCEL:
        s_on_cancel(w, &m->u.cancel);
        return 0;
    case KVF_MSG_DRAIN:
        if (w->state == S_READY) {
            kvf_log(KVF_LOG_INFO, "draining: finishing %d running and waiting requests", (int)w->n_reqs);
            w->state = S_DRAINING;
            s_send_heartbeat(w);
        }
        return 0;
    case KVF_MSG_SHUTDOWN:
        kvf_log(KVF_LOG_INFO, "shutdown requested by the coordinator");
        w->state = S_STOPPING;
        return 0;
    case KVF_MSG_ERROR:
        if (!w->welcomed_once)
            return kvf_err_set(err, m->u.error.code ? (kvf_status)m->u.error.code : KVF_E_PROTO,
                               "the coordinator refused the registration: %s (%s)", m->u.error.message.ptr,
                               kvf_status_name((kvf_status)m->u.error.code));
        kvf_log(KVF_LOG_WARN, "coordinator error (rid %llu, %s): %s", (unsigned long long)m->u.error.rid,
                kvf_status_name((kvf_status)m->u.error.code), m->u.error.message.ptr);
        if (m->u.error.code == KVF_E_PROTO && (w->state == S_READY || w->state == S_DRAINING)) {
            // It no longer knows us (it restarted, or declared us dead): it has
            // taken our requests back to re-dispatch them, so drop them here
            // (results for them would be dropped there) and register again.
            s_drop_all(w);
            w->state = S_REGISTERING;
            s_send_register(w);
        }
        return 0;
    default: {
        char msg[128];
        snprintf(msg, sizeof msg, "a worker does not take %s", kvf_msg_type_name(m->type));
        s_send_error(w, 0, KVF_E_PROTO, msg);
        return 0;
    }
    }
}

// Reads every message waiting on the socket. Returns -1 (err set) on a fatal one.
static int s_drain_socket(kvf_worker_t *w, kvf_err_t *err) {
    void *raw = zsock_resolve(w->sock);
    for (;;) {
        int events = 0;
        size_t sz = sizeof events;
        if (zmq_getsockopt(raw, ZMQ_EVENTS, &events, &sz) != 0)
            return kvf_err_set(err, KVF_E_IO, "socket: %s", zmq_strerror(errno));
        if (!(events & ZMQ_POLLIN)) return 0;
        kvf_msg_t m;
        kvf_err_t derr;
        if (kvf_msg_recv(w->sock, NULL, &m, &derr) != 0) {
            if (derr.code == KVF_E_FORMAT || derr.code == KVF_E_PROTO) {
                kvf_log(KVF_LOG_WARN, "bad message from the coordinator: %s", derr.msg);
                s_send_error(w, 0, derr.code, derr.msg);
                continue;
            }
            if (derr.code == KVF_E_TIMEOUT) return 0;
            return kvf_err_set(err, derr.code, "receive: %s", derr.msg);
        }
        int rc = s_on_message(w, &m, err);
        kvf_msg_clear(&m);
        if (rc != 0) return -1;
        if (w->state == S_STOPPING) return 0;
    }
}

// ---------------------------------------------------------------- lifecycle

kvf_worker_t *kvf_worker_new(const kvf_worker_opts_t *opts, kvf_err_t *err) {
    int follower = opts && opts->tp_size > 1 && opts->tp_rank > 0;  // a TP rank > 0 has no coordinator
    if (!opts || !opts->model || (!opts->coordinator && !follower)) {
        kvf_err_set(err, KVF_E_INVAL, "a worker needs --model and --coordinator");
        return NULL;
    }
    kvf_worker_t *w = kvf_xcalloc(1, sizeof *w);
    pthread_mutex_init(&w->hb_mu, NULL);
    pthread_cond_init(&w->hb_cv, NULL);
    w->o = *opts;
    w->model = kvf_xstrdup(opts->model);
    w->coordinator = kvf_xstrdup(opts->coordinator ? opts->coordinator : "");
    // Keys before the engine: a wrong path fails in a moment, not after the load.
    if ((opts->curve_secret != NULL) != (opts->coordinator_key != NULL)) {
        kvf_err_set(err, KVF_E_INVAL, "--curve-secret and --coordinator-key go together");
        kvf_worker_destroy(&w);
        return NULL;
    }
    if (opts->curve_secret) {
        w->cert = kvf_curve_load_secret(opts->curve_secret, err);
        if (!w->cert || kvf_curve_load_public(opts->coordinator_key, w->server_key, err) < 0) {
            kvf_worker_destroy(&w);
            return NULL;
        }
    }
    w->o.curve_secret = w->o.coordinator_key = NULL;  // not kept: the keys are loaded
    kvf_engine_opts_t eo_tp = opts->engine;
    if (opts->tp_size > 1) {
        if (!opts->tp_group || opts->tp_rank < 0 || opts->tp_rank >= opts->tp_size) {
            kvf_err_set(err, KVF_E_INVAL, "--tp %d needs --group ID and --rank in [0, %d)", opts->tp_size,
                        opts->tp_size);
            kvf_worker_destroy(&w);
            return NULL;
        }
        kvf_tp_shm_opts_t so = {.timeout_ms = opts->tp_timeout_ms};
        w->tp = kvf_tp_shm_new(opts->tp_group, opts->tp_rank, opts->tp_size, &so, err);
        if (!w->tp) {
            kvf_worker_destroy(&w);
            return NULL;
        }
        eo_tp.tp = w->tp;
        w->tp_group = kvf_xstrdup(opts->tp_group);
        w->o.tp_group = w->tp_group;
    }
    w->engine = kvf_engine_new(opts->model, &eo_tp, err);
    if (!w->engine) {
        kvf_worker_destroy(&w);
        return NULL;
    }
    kvf_engine_plan(w->engine, &w->plan);
    kvf_engine_plan_text(w->engine, w->plan_text, sizeof w->plan_text);
    const kvf_engine_opts_t *eo = kvf_engine_opts(w->engine);
    if (opts->worker_id && *opts->worker_id) {
        snprintf(w->id, sizeof w->id, "%s", opts->worker_id);
    } else {
        char host[200] = "localhost";
        gethostname(host, sizeof host - 1);
        if (strcmp(eo->backend, "cuda") == 0)
            snprintf(w->id, sizeof w->id, "%s:gpu%d", host, eo->device);
        else
            snprintf(w->id, sizeof w->id, "%s:cpu-%d", host, (int)getpid());
    }
    w->heartbeat_ms = 1000;
    w->o.model = w->model;
    w->o.coordinator = w->coordinator;
    w->o.worker_id = w->id;
    return w;
}

void kvf_worker_destroy(kvf_worker_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_worker_t *w = *self_p;
    for (uint32_t i = 0; i < w->cap_reqs; i++)
        if (w->reqs[i].used) {
            kvf_detok_destroy(&w->reqs[i].detok);
            free(w->reqs[i].chunk);
            free(w->reqs[i].text);
        }
    free(w->reqs);
    free(w->touched);
    pthread_mutex_destroy(&w->hb_mu);
    pthread_cond_destroy(&w->hb_cv);
    zsock_destroy(&w->sock);
    zcert_destroy(&w->cert);
    kvf_engine_destroy(&w->engine);  // a TP leader's engine tells its followers to stop
    kvf_tp_destroy(&w->tp);
    free(w->tp_group);
    free(w->model);
    free(w->coordinator);
    free(w);
    *self_p = NULL;
}

const char *kvf_worker_plan_text(const kvf_worker_t *w) { return w->plan_text; }
const char *kvf_worker_id(const kvf_worker_t *w) { return w->id; }

// One engine step with the socket handed to the heartbeat thread meanwhile.
static int s_engine_step(kvf_worker_t *w, kvf_err_t *err) {
    kvf_engine_stats_t st;
    kvf_engine_stats(w->engine, &st);
    pthread_mutex_lock(&w->hb_mu);
    w->hb_stats = st;
    w->in_step = 1;
    pthread_cond_signal(&w->hb_cv);
    pthread_mutex_unlock(&w->hb_mu);
    const int rc = kvf_engine_step(w->engine, s_on_token, w, err);
    pthread_mutex_lock(&w->hb_mu);
    w->in_step = 0;
    pthread_mutex_unlock(&w->hb_mu);
    return rc;
}

int kvf_worker_run(kvf_worker_t *w, volatile sig_atomic_t *stop, kvf_err_t *err) {
    if (w->tp && kvf_tp_rank(w->tp) > 0)  // a TP follower: the leader's steps, no coordinator
        return kvf_tp_follower_run(kvf_engine_backend(w->engine), w->tp, stop, err);
    kvf_zmq_curve_t curve = {w->cert, w->server_key, NULL};
    w->sock = kvf_zmq_dealer_connect_curve(w->coordinator, w->id, KVF_ZMQ_MAX_MSG, w->cert ? &curve : NULL, err);
    if (!w->sock) return -1;
    kvf_log(KVF_LOG_INFO, "worker %s connecting to %s%s", w->id, w->coordinator, w->cert ? " (CURVE)" : "");
    w->state = S_REGISTERING;
    w->hb_time_ms = kvf_clock_ms();
    s_send_register(w);
    if (pthread_create(&w->hb_thread, NULL, s_hb_main, w) != 0)
        return kvf_err_set(err, KVF_E_NOMEM, "cannot start the heartbeat thread");
    w->hb_started = 1;

    int rc = 0;
    zmq_pollitem_t item = {zsock_resolve(w->sock), 0, ZMQ_POLLIN, 0};
    while (w->state != S_STOPPING && !(stop && *stop)) {
        int busy = (w->state == S_READY || w->state == S_DRAINING) && kvf_engine_has_work(w->engine);
        long timeout = 0;
        if (!busy) {
            int64_t next = w->state == S_REGISTERING ? w->next_register_ms : w->next_heartbeat_ms;
            timeout = (long)(next - kvf_clock_ms());
            if (timeout < 0) timeout = 0;
            if (timeout > MAX_IDLE_WAIT_MS) timeout = MAX_IDLE_WAIT_MS;
        }
        if (zmq_poll(&item, 1, timeout) < 0 && errno != EINTR) {
            rc = kvf_err_set(err, KVF_E_IO, "poll: %s", zmq_strerror(errno));
            break;
        }
        if (s_drain_socket(w, err) != 0) {
            rc = -1;
            break;
        }
        if (w->state == S_STOPPING || (stop && *stop)) break;
        if (w->tp && kvf_tp_leader_check(kvf_engine_backend(w->engine), err) != 0) {
            rc = -1;  // a rank is gone: leave, so that the coordinator re-dispatches our work
            break;
        }

        int64_t now = kvf_clock_ms();
        if (w->state == S_REGISTERING && now >= w->next_register_ms) s_send_register(w);
        if ((w->state == S_READY || w->state == S_DRAINING) && now >= w->next_heartbeat_ms) s_send_heartbeat(w);

        if ((w->state == S_READY || w->state == S_DRAINING) && kvf_engine_has_work(w->engine)) {
            kvf_err_t serr;
            w->n_touched = 0;
            if (s_engine_step(w, &serr) < 0) {
                kvf_log(KVF_LOG_ERROR, "step failed: %s", serr.msg);
                if (w->tp && serr.code == KVF_E_PEER_LOST) {  // the TP group is gone: no results, leave
                    if (err) *err = serr;
                    rc = -1;
                    break;
                }
            }
            uint32_t free_blocks = s_free_blocks(w);
            for (uint32_t i = 0; i < w->n_touched; i++) {
                s_wreq_t *r = s_req_find(w, w->touched[i]);
                if (r) s_send_chunk(w, r, free_blocks);
            }
            w->n_touched = 0;
            // Going idle: report at once, so that status does not show the last
            // busy heartbeat's running/waiting counts beside the fresh free blocks.
            if (!kvf_engine_has_work(w->engine)) s_send_heartbeat(w);
        }
    }
    if (w->hb_started) {
        pthread_mutex_lock(&w->hb_mu);
        w->hb_stop = 1;
        pthread_cond_signal(&w->hb_cv);
        pthread_mutex_unlock(&w->hb_mu);
        pthread_join(w->hb_thread, NULL);
        w->hb_started = 0;
    }
    if (rc == 0) {
        s_cancel_all(w);
        kvf_log(KVF_LOG_INFO, "worker %s stopped", w->id);
    }
    return rc;
}
