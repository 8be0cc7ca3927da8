// coordinator/back.c — messages from workers on the back socket: REGISTER,
// HEARTBEAT, RESULT, ERROR. Every HEARTBEAT and RESULT is a load report.
#include "coordinator/coord_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proto/codec.h"

// ---- REGISTER

static void s_register(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_register_t *r) {
    kvf_err_t err;
    if (kvf_registry_check(r, &err) < 0) {
        kvf_coord_send_error(c, c->back, ident, ilen, 0, err.code, err.msg);
        return;
    }
    int old = kvf_registry_find(c->reg, r->worker_id.ptr);
    if (old >= 0) {
        kvf_cworker_t *o = c->reg->w[old];
        int same_conn = o->ident_len == ilen && memcmp(o->ident, ident, ilen) == 0;
        if (!same_conn && o->state != KVF_WSTATE_DEAD) {
            // Two live processes with one id: refuse the newcomer (workers use
            // their worker_id as identity, so a restart comes on the same one).
            char msg[300];
            snprintf(msg, sizeof msg, "duplicate worker_id %.200s: a live worker has it", o->worker_id);
            kvf_coord_send_error(c, c->back, ident, ilen, 0, KVF_E_INVAL, msg);
            return;
        }
        // A worker that registers again has restarted: what it held is lost.
        if (o->outstanding > 0 || o->state != KVF_WSTATE_DEAD)
            kvf_coord_take_back(c, old, "registered again", same_conn && o->state != KVF_WSTATE_DEAD);
    }
    // The same connection registering under a new id: the old worker is gone.
    int same = kvf_registry_find_ident(c->reg, ident, ilen);
    if (same >= 0 && same != old) {
        if (c->reg->w[same]->state != KVF_WSTATE_DEAD || c->reg->w[same]->outstanding > 0)
            kvf_coord_take_back(c, same, "replaced by a new registration on its connection", 1);
        c->reg->w[same]->ident_len = 0;
    }
    int idx = kvf_registry_upsert(c->reg, r, ident, ilen, kvf_coord_now(), &err);
    if (idx < 0) {
        kvf_coord_send_error(c, c->back, ident, ilen, 0, err.code, err.msg);
        return;
    }
    kvf_cworker_t *w = c->reg->w[idx];
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_WELCOME);
    m.u.welcome.heartbeat_ms = c->cfg.heartbeat_ms;
    m.u.welcome.dead_after_ms = c->cfg.dead_after_ms;
    if (kvf_coord_send(c, c->back, ident, ilen, &m, &err) < 0) {
        kvf_log(KVF_LOG_WARN, "worker %s: WELCOME not delivered: %s", w->worker_id, err.msg);
        w->state = KVF_WSTATE_DEAD;
        return;
    }
    kvf_log(KVF_LOG_INFO, "worker %s %s (group %s, %s device %d, tp %u/%u): %u/%u blocks of %u tokens free, vocab %u",
            w->worker_id, old >= 0 ? "re-registered" : "registered", w->group_id, w->backend, w->device,
            w->tp_rank, w->tp_size, w->reported_free, w->total_blocks, w->block_size, w->vocab_size);
    c->dirty = 1;
}

// The live worker behind this identity, or -1 after telling it why not.
static int s_known(kvf_coord_t *c, const void *ident, size_t ilen, const char *what) {
    int idx = kvf_registry_find_ident(c->reg, ident, ilen);
    char msg[200];
    if (idx < 0) {
        snprintf(msg, sizeof msg, "%s from an unregistered worker: send REGISTER first", what);
        kvf_coord_send_error(c, c->back, ident, ilen, 0, KVF_E_PROTO, msg);
        return -1;
    }
    if (c->reg->w[idx]->state == KVF_WSTATE_DEAD) {
        snprintf(msg, sizeof msg, "%s: worker %s was declared dead and its work re-dispatched: REGISTER again", what,
                 c->reg->w[idx]->worker_id);
        kvf_coord_send_error(c, c->back, ident, ilen, 0, KVF_E_PROTO, msg);
        return -1;
    }
    c->reg->w[idx]->last_seen_ms = kvf_coord_now();
    return idx;
}

// ---- HEARTBEAT

static void s_heartbeat(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_heartbeat_t *h) {
    int idx = s_known(c, ident, ilen, "HEARTBEAT");
    if (idx < 0) return;
    kvf_cworker_t *w = c->reg->w[idx];
    uint32_t free_blocks = h->free_blocks > w->total_blocks ? w->total_blocks : h->free_blocks;
    uint32_t before = kvf_registry_avail(w);
    w->load = *h;
    w->load.total_blocks = w->total_blocks;
    kvf_registry_note_report(w, free_blocks, 0);
    if (kvf_registry_avail(w) > before) c->dirty = 1;  // more room: queued work may fit
    if (h->state == KVF_WSTATE_DRAINING && w->state == KVF_WSTATE_READY) {
        kvf_log(KVF_LOG_INFO, "worker %s reports draining", w->worker_id);
        w->state = KVF_WSTATE_DRAINING;
    }
}

// ---- RESULT

static void s_result(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_result_t *r) {
    int idx = s_known(c, ident, ilen, "RESULT");
    if (idx < 0) return;
    kvf_cworker_t *w = c->reg->w[idx];
    uint32_t free_blocks = r->free_blocks > w->total_blocks ? w->total_blocks : r->free_blocks;
    uint32_t before = kvf_registry_avail(w);
    kvf_registry_note_report(w, free_blocks, r->rid);
    if (kvf_registry_avail(w) > before) c->dirty = 1;  // more room (a release sets it too)
    kvf_req_t *req = kvf_reqtable_get(c->reqs, r->rid);
    // Only the worker a request is assigned to now speaks for it: results from a
    // worker it was taken from, or after a cancel, are dropped (the client sees
    // each token once).
    if (!req || req->state != KVF_REQ_ASSIGNED || req->worker != idx || req->worker_gen != w->generation) {
        kvf_log(KVF_LOG_DEBUG, "worker %s: RESULT for rid %" PRIu64 " dropped (not assigned there)", w->worker_id,
                r->rid);
        return;
    }
    // Never trust counts: no more tokens than the request asked for.
    uint32_t max_new = (uint32_t)req->sampling.max_new_tokens;
    uint32_t n = r->tokens.n;
    if (req->n_out + n > max_new) {
        kvf_log(KVF_LOG_WARN, "worker %s: rid %" PRIu64 " sent %u tokens past max_new_tokens; dropped", w->worker_id,
                req->rid, req->n_out + n - max_new);
        n = max_new - req->n_out;
    }
    if (n || r->text.len) {
        kvf_req_append(req, r->tokens.ids, n, r->text.ptr, r->text.len);
        kvf_coord_journal_tokens(c, req, r->tokens.ids, n, r->text.ptr, r->text.len);
        kvf_msg_t m;
        kvf_msg_init(&m, KVF_MSG_TOKENS);
        m.u.tokens.rid = req->rid;
        m.u.tokens.tokens = (kvf_ids_t){r->tokens.ids, n};
        m.u.tokens.text = r->text;
        kvf_coord_to_client(c, req, &m);
    }
    if (!r->finished) return;
    // The client did not cancel it (that would have finished it here already):
    // the worker stopped it on its own (SHUTDOWN) or found no blocks for it.
    // It resumes elsewhere from the tokens delivered.
    // Refusals that say "not here, not now" (no blocks, draining, not
    // welcomed yet) send it elsewhere too.
    int refused = r->finish_reason == KVF_FINISH_ERROR &&
                  (r->error_code == KVF_E_NOMEM_BLOCKS || r->error_code == KVF_E_BUSY || r->error_code == KVF_E_PROTO);
    if (r->finish_reason == KVF_FINISH_CANCELLED || refused) {
        char why[300];
        snprintf(why, sizeof why, "%s by worker %s%s%.200s", refused ? "refused" : "cancelled", w->worker_id,
                 refused ? ": " : "", refused ? r->error.ptr : "");
        kvf_log(KVF_LOG_WARN, "rid %" PRIu64 " %s: re-dispatching", req->rid, why);
        if (refused && r->error_code == KVF_E_BUSY && w->state == KVF_WSTATE_READY)
            w->state = KVF_WSTATE_DRAINING;  // it says it takes nothing new
        kvf_coord_requeue(c, req, why);
        return;
    }
    if (r->finish_reason == KVF_FINISH_ERROR) {
        char msg[600];
        snprintf(msg, sizeof msg, "worker %s: %.500s", w->worker_id, r->error.len ? r->error.ptr : "error");
        kvf_coord_fail(c, req, r->error_code ? (kvf_status)r->error_code : KVF_E_INTERNAL, msg);
        return;
    }
    uint32_t reason = r->finish_reason;
    if (reason != KVF_FINISH_STOP && reason != KVF_FINISH_LENGTH)
        reason = req->n_out >= max_new ? KVF_FINISH_LENGTH : KVF_FINISH_STOP;
    req->finish_reason = reason;
    kvf_coord_req_event(c, req, KVF_REQ_EV_FINISH);
    kvf_coord_send_final(c, req);
}

// ---- ERROR from a worker

// An ERROR is about a message, not a request's end (a worker ends a request it
// cannot run with a final RESULT, PROTOCOL.md 5): e.g. an ASSIGN of a rid it
// already runs, which goes on there. Logged only.
static void s_worker_error(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_error_t *e) {
    int idx = kvf_registry_find_ident(c->reg, ident, ilen);
    const char *who = idx >= 0 ? c->reg->w[idx]->worker_id : "(unregistered)";
    if (idx >= 0 && c->reg->w[idx]->state != KVF_WSTATE_DEAD) c->reg->w[idx]->last_seen_ms = kvf_coord_now();
    kvf_log(KVF_LOG_WARN, "worker %s: ERROR rid %" PRIu64 " %s: %s", who, e->rid, kvf_status_name(e->code),
            e->message.len ? e->message.ptr : "");
}

// ---- entry

void kvf_coord_back_handle(kvf_coord_t *c, const void *ident, size_t ilen, kvf_msg_t *msg) {
    switch (msg->type) {
    case KVF_MSG_REGISTER:
        s_register(c, ident, ilen, &msg->u.reg);
        break;
    case KVF_MSG_HEARTBEAT:
        s_heartbeat(c, ident, ilen, &msg->u.heartbeat);
        break;
    case KVF_MSG_RESULT:
        s_result(c, ident, ilen, &msg->u.result);
        break;
    case KVF_MSG_ERROR:
        s_worker_error(c, ident, ilen, &msg->u.error);
        break;
    default: {
        char m[160];
        snprintf(m, sizeof m, "%s is not a message for the coordinator's worker socket",
                 kvf_msg_type_name(msg->type));
        kvf_coord_send_error(c, c->back, ident, ilen, 0, KVF_E_PROTO, m);
        break;
    }
    }
}
