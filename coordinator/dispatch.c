// coordinator/dispatch.c — placement of queued work, the request state
// machine's actions, results to clients, and taking work back from dead workers.
#include "coordinator/coord_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "proto/codec.h"

// ---- the request state machine's actions

static void s_send_worker_cancel(kvf_coord_t *c, int idx, uint64_t rid) {
    if (idx < 0 || (uint32_t)idx >= c->reg->n) return;
    kvf_cworker_t *w = c->reg->w[idx];
    if (w->state == KVF_WSTATE_DEAD) return;
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_CANCEL);
    m.u.cancel.rid = rid;
    kvf_err_t err;
    if (kvf_coord_send(c, c->back, w->ident, w->ident_len, &m, &err) < 0)
        kvf_log(KVF_LOG_WARN, "CANCEL %" PRIu64 " to worker %s not delivered: %s", rid, w->worker_id, err.msg);
}

int kvf_coord_req_event(kvf_coord_t *c, kvf_req_t *req, kvf_req_event ev) {
    int idx = req->worker;
    uint32_t need = req->need, gen = req->worker_gen;
    unsigned act;
    if (kvf_req_apply(req, ev, &act) < 0) return -1;
    if (act & KVF_REQ_ACT_RELEASE) {
        if (idx >= 0 && (uint32_t)idx < c->reg->n && c->reg->w[idx]->generation == gen)
            kvf_registry_note_release(c->reg->w[idx], need);
        req->worker = -1;
        req->need = 0;
        c->dirty = 1;  // blocks came back: queued work may fit now
    }
    if (act & KVF_REQ_ACT_FORWARD_CANCEL) s_send_worker_cancel(c, idx, req->rid);
    // Inside a queue pass the pass itself drops every request that leaves QUEUED.
    if ((act & KVF_REQ_ACT_UNQUEUE) && !c->in_pass) c->queue_stale = 1;
    if (act & KVF_REQ_ACT_REQUEUE) {
        kvf_queue_push_front(c->queue, req->rid, kvf_coord_req_tokens(req));
        req->redispatches++;
    }
    if (act & KVF_REQ_ACT_COMPLETE) {
        kvf_coord_journal_finish(c, req);
        c->requests_done++;
        kvf_coord_settle(c, req->batch);
    }
    return 0;
}

// ---- to clients

void kvf_coord_to_client(kvf_coord_t *c, kvf_req_t *req, const kvf_msg_t *msg) {
    kvf_coord_to_batch(c, req->batch, msg);
}

void kvf_coord_to_batch(kvf_coord_t *c, kvf_batch_t *b, const kvf_msg_t *msg) {
    // Once a send failed the client is gone (or not reading): keep everything
    // for ATTACH instead of streaming with holes.
    if (!b->client_ok) return;
    kvf_err_t err;
    if (kvf_coord_send(c, c->front, b->client, b->client_len, msg, &err) < 0) {
        kvf_log(KVF_LOG_INFO, "batch %s: client unreachable (%s); results kept for ATTACH", b->id, err.msg);
        b->client_ok = 0;
    }
}

void kvf_coord_send_final(kvf_coord_t *c, kvf_req_t *req) {
    kvf_msg_t m;
    if (req->finish_reason == KVF_FINISH_ERROR) {
        kvf_msg_init(&m, KVF_MSG_ERROR);
        m.u.error.rid = req->rid;
        m.u.error.code = req->error_code;
        m.u.error.message = kvf_str(req->error);
    } else {
        kvf_msg_init(&m, KVF_MSG_DONE);
        m.u.done.rid = req->rid;
        m.u.done.finish_reason = req->finish_reason;
        m.u.done.prompt_tokens = req->n_prompt;
        m.u.done.completion_tokens = req->n_out;
    }
    kvf_coord_to_client(c, req, &m);
}

void kvf_coord_fail(kvf_coord_t *c, kvf_req_t *req, kvf_status code, const char *message) {
    kvf_req_set_error(req, (uint32_t)code, message);
    uint32_t prev = req->finish_reason;
    req->finish_reason = KVF_FINISH_ERROR;
    if (kvf_coord_req_event(c, req, KVF_REQ_EV_FAIL) < 0) {
        req->finish_reason = prev;
        return;
    }
    kvf_log(KVF_LOG_DEBUG, "rid %" PRIu64 ": %s: %s", req->rid, kvf_status_name(code), message);
    kvf_coord_send_final(c, req);
}

// ---- settling batches

void kvf_coord_settle(kvf_coord_t *c, kvf_batch_t *b) {
    if (b->settle_pending) return;
    if (c->n_to_settle == c->cap_to_settle) {
        c->cap_to_settle = c->cap_to_settle ? 2 * c->cap_to_settle : 16;
        c->to_settle = kvf_xrealloc(c->to_settle, c->cap_to_settle * sizeof *c->to_settle);
    }
    b->settle_pending = 1;
    c->to_settle[c->n_to_settle++] = b;
}

void kvf_coord_settle_all(kvf_coord_t *c) {
    for (uint32_t i = 0; i < c->n_to_settle; i++) {
        kvf_batch_t *b = c->to_settle[i];
        b->settle_pending = 0;
        kvf_reqtable_settle(c->reqs, b);
    }
    c->n_to_settle = 0;
}

// ---- the queue

static int s_still_queued(const kvf_qentry_t *e, void *ctx) {
    kvf_coord_t *c = ctx;
    kvf_req_t *r = kvf_reqtable_get(c->reqs, e->rid);
    return (!r || r->state != KVF_REQ_QUEUED) ? 1 : 0;
}

void kvf_coord_compact_queue(kvf_coord_t *c) {
    if (!c->queue_stale) return;
    c->queue_stale = 0;
    kvf_queue_filter(c->queue, s_still_queued, c);
}

uint32_t kvf_coord_vocab_limit(const kvf_coord_t *c) {
    uint32_t v = c->tok ? (uint32_t)kvf_tokenizer_vocab_size(c->tok) : 0;
    for (uint32_t i = 0; i < c->reg->n; i++) {
        const kvf_cworker_t *w = c->reg->w[i];
        if (w->state == KVF_WSTATE_DEAD || w->vocab_size == 0) continue;
        if (v == 0 || w->vocab_size < v) v = w->vocab_size;
    }
    return v;
}

// ---- placement

// Sends ASSIGN for req to worker p->worker. 0, or -1 when the worker is
// unreachable (it is then marked dead; its work is taken back by check_dead).
static int s_assign(kvf_coord_t *c, kvf_req_t *req, const kvf_place_t *p) {
    kvf_cworker_t *w = c->reg->w[p->worker];
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_ASSIGN);
    m.u.assign.rid = req->rid;
    m.u.assign.prompt_ids = (kvf_ids_t){req->prompt, req->n_prompt};
    m.u.assign.resume_ids = (kvf_ids_t){req->out, req->n_out};
    m.u.assign.sampling = req->sampling;
    m.u.assign.prefix_hash = p->prefix_hash;
    kvf_err_t err;
    if (kvf_coord_send(c, c->back, w->ident, w->ident_len, &m, &err) < 0) {
        kvf_log(KVF_LOG_WARN, "worker %s: ASSIGN %" PRIu64 " not delivered (%s): worker is dead", w->worker_id,
                req->rid, err.msg);
        w->state = KVF_WSTATE_DEAD;
        return -1;
    }
    req->worker = p->worker;
    req->worker_gen = w->generation;
    req->need = p->need;
    kvf_assert(kvf_coord_req_event(c, req, KVF_REQ_EV_PLACE) == 0);
    kvf_registry_note_assign(w, req->rid, p->need);
    kvf_affinity_note(c->aff, p->prefix_hash, p->worker, w->generation);
    kvf_log(KVF_LOG_DEBUG, "rid %" PRIu64 " -> %s (need %u, avail %u, ledger %" PRIu64 "/%u, resume %u)", req->rid,
            w->worker_id, p->need, kvf_registry_avail(w), w->ledger, w->total_blocks, req->n_out);
    return 0;
}

int kvf_coord_place(kvf_coord_t *c, kvf_req_t *req) {
    uint32_t max_new = req->sampling.max_new_tokens > 0 ? (uint32_t)req->sampling.max_new_tokens : 1;
    if (req->n_out >= max_new) {
        // Every token was delivered before its worker was lost: nothing left to run.
        req->finish_reason = KVF_FINISH_LENGTH;
        kvf_coord_req_event(c, req, KVF_REQ_EV_FINISH);
        kvf_coord_send_final(c, req);
        return 1;
    }
    kvf_place_t p;
    switch (kvf_place_choose(c->reg, c->aff, req->prompt, req->n_prompt, max_new, c->cfg.watermark, &p)) {
    case KVF_PLACE_OK:
        return s_assign(c, req, &p) == 0;
    case KVF_PLACE_TOO_LONG: {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "request of %u prompt + %u new tokens needs more KV blocks (or a longer session) than any "
                 "worker has",
                 req->n_prompt, max_new);
        kvf_coord_fail(c, req, KVF_E_TOO_LONG, msg);
        return 1;
    }
    case KVF_PLACE_WAIT:
    default:
        return 0;
    }
}

typedef struct {
    kvf_coord_t *c;
    int room;                // some worker has room for at least one block
    uint64_t min_wait;       // fewest tokens of a request that had to wait in this pass
} s_pass_t;

static int s_dispatch_one(const kvf_qentry_t *e, void *ctx) {
    s_pass_t *ps = ctx;
    kvf_coord_t *c = ps->c;
    if (!ps->room) return -1;
    // Fit is monotonic in size: what is at least as big as a request that had
    // to wait waits too (placing others in between only takes room away).
    // Stale entries among them are dropped by a later compaction.
    if (e->tokens >= ps->min_wait) return 0;
    kvf_req_t *req = kvf_reqtable_get(c->reqs, e->rid);
    if (!req || req->state != KVF_REQ_QUEUED) return 1;
    uint64_t tokens = e->tokens;
    if (kvf_coord_place(c, req)) {
        if (req->state == KVF_REQ_ASSIGNED) ps->room = kvf_place_any_room(c->reg, c->cfg.watermark);
        return 1;
    }
    ps->min_wait = tokens;
    return 0;
}

void kvf_coord_dispatch(kvf_coord_t *c) {
    kvf_coord_compact_queue(c);
    if (c->queue->len == 0) return;
    s_pass_t ps = {c, kvf_place_any_room(c->reg, c->cfg.watermark), UINT64_MAX};
    if (ps.room) {
        c->in_pass = 1;
        kvf_queue_filter(c->queue, s_dispatch_one, &ps);
        c->in_pass = 0;
    }
    // A send failure marked a worker dead mid-pass: take its work back now.
    for (uint32_t i = 0; i < c->reg->n; i++)
        if (c->reg->w[i]->state == KVF_WSTATE_DEAD && c->reg->w[i]->outstanding > 0)
            kvf_coord_take_back(c, (int)i, "unreachable", 0);
}

// ---- failure handling

void kvf_coord_requeue(kvf_coord_t *c, kvf_req_t *req, const char *why) {
    if (kvf_coord_req_event(c, req, KVF_REQ_EV_REQUEUE) < 0) return;
    if (req->redispatches > c->cfg.max_redispatch) {
        char msg[300];
        snprintf(msg, sizeof msg, "given up after %u re-dispatches (last: %.200s)", req->redispatches - 1, why);
        kvf_coord_fail(c, req, KVF_E_PEER_LOST, msg);
    }
}

static int s_cmp_desc(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

void kvf_coord_take_back(kvf_coord_t *c, int idx, const char *why, int tell_worker) {
    kvf_cworker_t *w = c->reg->w[idx];
    if (tell_worker) {
        zhashx_t *h = c->reqs->by_rid;
        for (kvf_req_t *r = zhashx_first(h); r; r = zhashx_next(h))
            if (r->state == KVF_REQ_ASSIGNED && r->worker == idx) s_send_worker_cancel(c, idx, r->rid);
    }
    w->state = KVF_WSTATE_DEAD;
    uint64_t *rids = NULL;
    uint32_t n = 0, cap = 0;
    zhashx_t *h = c->reqs->by_rid;
    for (kvf_req_t *r = zhashx_first(h); r; r = zhashx_next(h)) {
        if (r->state != KVF_REQ_ASSIGNED || r->worker != idx) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            rids = kvf_xrealloc(rids, cap * sizeof *rids);
        }
        rids[n++] = r->rid;
    }
    // Pushed to the front newest first, so the queue holds them oldest first.
    if (n) qsort(rids, n, sizeof *rids, s_cmp_desc);
    for (uint32_t i = 0; i < n; i++) kvf_coord_requeue(c, kvf_reqtable_get(c->reqs, rids[i]), why);
    free(rids);
    kvf_registry_clear_ledger(w);
    kvf_log(n ? KVF_LOG_WARN : KVF_LOG_INFO, "worker %s %s: %u request%s back in the queue", w->worker_id, why, n,
            n == 1 ? "" : "s");
    c->dirty = 1;
}

void kvf_coord_check_dead(kvf_coord_t *c, uint64_t now_ms) {
    for (uint32_t i = 0; i < c->reg->n; i++) {
        kvf_cworker_t *w = c->reg->w[i];
        if (w->state == KVF_WSTATE_DEAD) {
            if (w->outstanding > 0) kvf_coord_take_back(c, (int)i, "unreachable", 0);
            continue;
        }
        if (now_ms - w->last_seen_ms > c->cfg.dead_after_ms) {
            char why[64];
            snprintf(why, sizeof why, "silent for %" PRIu64 " ms: dead", now_ms - w->last_seen_ms);
            kvf_coord_take_back(c, (int)i, why, 0);
        }
    }
}
