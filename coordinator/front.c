// coordinator/front.c — messages from clients and operators on the front
// socket: SUBMIT, CANCEL, STATUS, ATTACH, DRAIN, SHUTDOWN. Anything else is
// answered with ERROR and the coordinator goes on serving everyone.
#include "coordinator/coord_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "proto/codec.h"

static void s_reply_ok(kvf_coord_t *c, const void *ident, size_t len) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_OK);
    kvf_err_t err;
    if (kvf_coord_send(c, c->front, ident, len, &m, &err) < 0)
        kvf_log(KVF_LOG_DEBUG, "OK not delivered: %s", err.msg);
}

// ---- SUBMIT

// Turns one submitted request into prompt ids. 0 with *ids (owned) and *n, or
// -1 with err saying what is wrong with this request.
static int s_prompt(kvf_coord_t *c, const kvf_submit_req_t *r, uint32_t vocab, int32_t **ids, uint32_t *n,
                    kvf_err_t *err) {
    *ids = NULL;
    *n = 0;
    if (kvf_sampling_validate(&r->sampling, err) < 0) return -1;
    if ((uint32_t)r->sampling.max_new_tokens > c->cfg.max_new_tokens)
        return kvf_err_set(err, KVF_E_TOO_LONG, "max_new_tokens %d exceeds --max-new-tokens %u",
                           r->sampling.max_new_tokens, c->cfg.max_new_tokens);
    for (int i = 0; vocab && i < r->sampling.n_stop_ids; i++)
        if ((uint32_t)r->sampling.stop_ids[i] >= vocab)
            return kvf_err_set(err, KVF_E_INVAL, "stop id %d is outside the vocabulary [0, %u)",
                               r->sampling.stop_ids[i], vocab);
    if (r->text.len && r->prompt_ids.n)
        return kvf_err_set(err, KVF_E_INVAL, "give the prompt as text or as prompt_ids, not both");
    if (r->prompt_ids.n) {
        if (r->prompt_ids.n > c->cfg.max_prompt_tokens)
            return kvf_err_set(err, KVF_E_TOO_LONG, "prompt of %u tokens exceeds --max-prompt-tokens %u",
                               r->prompt_ids.n, c->cfg.max_prompt_tokens);
        for (uint32_t i = 0; i < r->prompt_ids.n; i++) {
            int32_t id = r->prompt_ids.ids[i];
            if (id < 0 || (vocab && (uint32_t)id >= vocab))
                return kvf_err_set(err, KVF_E_INVAL, "prompt_ids[%u] = %d is outside the vocabulary [0, %u)", i,
                                   id, vocab);
        }
        *ids = kvf_xmalloc((size_t)r->prompt_ids.n * sizeof **ids);
        memcpy(*ids, r->prompt_ids.ids, (size_t)r->prompt_ids.n * sizeof **ids);
        *n = r->prompt_ids.n;
        return 0;
    }
    if (!r->text.len) return kvf_err_set(err, KVF_E_INVAL, "prompt is empty (no text and no prompt_ids)");
    if (!c->tok)
        return kvf_err_set(err, KVF_E_INVAL,
                           "coordinator has no tokenizer: start it with --model DIR or send prompt_ids");
    size_t nt = 0;
    if (kvf_tokenizer_encode(c->tok, r->text.ptr, r->text.len, 1, ids, &nt, err) < 0) {
        if (err) err->code = KVF_E_INVAL;
        return -1;
    }
    if (nt == 0) {
        free(*ids);
        *ids = NULL;
        return kvf_err_set(err, KVF_E_INVAL, "prompt text gives no tokens");
    }
    if (nt > c->cfg.max_prompt_tokens) {
        free(*ids);
        *ids = NULL;
        return kvf_err_set(err, KVF_E_TOO_LONG, "prompt of %zu tokens exceeds --max-prompt-tokens %u", nt,
                           c->cfg.max_prompt_tokens);
    }
    *n = (uint32_t)nt;
    return 0;
}

static void s_submit(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_submit_t *s) {
    kvf_err_t err;
    char msg[256];
    if (s->n_reqs > c->cfg.max_batch) {
        snprintf(msg, sizeof msg, "batch of %u requests exceeds --max-batch %u", s->n_reqs, c->cfg.max_batch);
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_TOO_LONG, msg);
        return;
    }
    kvf_batch_t *b = kvf_reqtable_batch_new(c->reqs, s->batch_id.len ? s->batch_id.ptr : NULL, ident, ilen,
                                            s->n_reqs, &err);
    if (!b) {
        kvf_coord_send_error(c, c->front, ident, ilen, 0, err.code, err.msg);
        return;
    }
    if (c->auth && c->peer_key) snprintf(b->owner, sizeof b->owner, "%s", c->peer_key);
    uint32_t vocab = kvf_coord_vocab_limit(c);
    // Requests that fail validation still get a rid (the client maps ERRORs by rid).
    char **why = kvf_xcalloc(s->n_reqs ? s->n_reqs : 1, sizeof *why);
    uint32_t *code = kvf_xcalloc(s->n_reqs ? s->n_reqs : 1, sizeof *code);
    kvf_msg_t ack;
    kvf_msg_init(&ack, KVF_MSG_ACK);
    ack.u.ack.batch_id = kvf_str(b->id);
    ack.u.ack.rids = kvf_xmalloc((size_t)(s->n_reqs ? s->n_reqs : 1) * sizeof *ack.u.ack.rids);
    ack.u.ack.n_rids = s->n_reqs;
    for (uint32_t i = 0; i < s->n_reqs; i++) {
        const kvf_submit_req_t *r = &s->reqs[i];
        int32_t *ids = NULL;
        uint32_t n = 0;
        kvf_err_clear(&err);
        if (s_prompt(c, r, vocab, &ids, &n, &err) < 0) {
            why[i] = kvf_xstrdup(err.msg);
            code[i] = err.code ? err.code : KVF_E_INVAL;
        }
        kvf_sampling_t samp = r->sampling;
        kvf_req_t *req = kvf_reqtable_add(c->reqs, b, r->tag.ptr, &ids, n, &samp);
        ack.u.ack.rids[i] = req->rid;
    }
    kvf_coord_journal_batch(c, b);
    kvf_coord_to_batch(c, b, &ack);
    free(ack.u.ack.rids);
    if (s->n_reqs == 0) kvf_coord_settle(c, b);  // an empty batch is complete at once
    uint32_t queued = 0, placed = 0, bad = 0, busy = 0;
    kvf_coord_compact_queue(c);  // cancelled rids must not make the queue look busy
    for (uint32_t i = 0; i < s->n_reqs; i++) {
        kvf_req_t *req = b->reqs[i];
        if (why[i]) {
            kvf_coord_fail(c, req, (kvf_status)code[i], why[i]);
            bad++;
            continue;
        }
        // FIFO: only when nothing waits may a new request go straight to a worker.
        if (c->queue->len == 0 && kvf_coord_place(c, req)) {
            placed += req->state == KVF_REQ_ASSIGNED;
            continue;
        }
        if (kvf_queue_push_back(c->queue, req->rid, kvf_coord_req_tokens(req)) == 0) {
            kvf_coord_req_event(c, req, KVF_REQ_EV_ENQUEUE);
            queued++;
        } else {
            snprintf(msg, sizeof msg, "coordinator queue is full (%u requests): try again later", c->queue->cap);
            kvf_coord_fail(c, req, KVF_E_BUSY, msg);
            busy++;
        }
    }
    if (queued) c->dirty = 1;  // the queue pass may place them behind what waits
    for (uint32_t i = 0; i < s->n_reqs; i++) free(why[i]);
    free(why);
    free(code);
    kvf_log(KVF_LOG_INFO, "batch %s: %u requests (%u placed, %u queued, %u invalid, %u busy)", b->id, s->n_reqs,
            placed, queued, bad, busy);
}

// ---- CANCEL

// With CURVE, a batch is its submitter's (and the operators'): 1 after telling
// anyone else ERROR denied (rid 0, the refusal of the whole message), else 0.
static int s_denied(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_batch_t *b, const char *what) {
    if (!c->auth || !b->owner[0] || (c->peer_roles & KVF_ROLE_OPERATOR) ||
        (c->peer_key && strcmp(b->owner, c->peer_key) == 0))
        return 0;
    char msg[300];
    snprintf(msg, sizeof msg, "%s: batch %.200s was submitted with another key", what, b->id);
    kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_DENIED, msg);
    return 1;
}

static void s_cancel_req(kvf_coord_t *c, kvf_req_t *req) {
    if (req->state == KVF_REQ_FINISHED) return;
    uint32_t prev = req->finish_reason;
    req->finish_reason = KVF_FINISH_CANCELLED;
    if (kvf_coord_req_event(c, req, KVF_REQ_EV_CANCEL) < 0) {
        req->finish_reason = prev;
        return;
    }
    kvf_coord_send_final(c, req);
}

static void s_cancel(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_cancel_t *m) {
    char msg[300];
    if (m->rid) {
        kvf_req_t *req = kvf_reqtable_get(c->reqs, m->rid);
        if (!req) {
            snprintf(msg, sizeof msg, "no request %" PRIu64 " (unknown, or finished and delivered)", m->rid);
            kvf_coord_send_error(c, c->front, ident, ilen, m->rid, KVF_E_NOT_FOUND, msg);
            return;
        }
        if (s_denied(c, ident, ilen, req->batch, "CANCEL")) return;
        s_cancel_req(c, req);
    } else if (m->batch_id.len) {
        kvf_batch_t *b = kvf_reqtable_batch(c->reqs, m->batch_id.ptr);
        if (!b) {
            snprintf(msg, sizeof msg, "no batch %.200s (unknown, or finished and delivered)", m->batch_id.ptr);
            kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_NOT_FOUND, msg);
            return;
        }
        if (s_denied(c, ident, ilen, b, "CANCEL")) return;
        for (uint32_t i = 0; i < b->n; i++) s_cancel_req(c, b->reqs[i]);
    } else {
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_INVAL, "CANCEL needs a rid or a batch_id");
        return;
    }
    s_reply_ok(c, ident, ilen);
}

// ---- STATUS

static void s_status(kvf_coord_t *c, const void *ident, size_t ilen) {
    uint64_t now = kvf_coord_now();
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_STATUS_REPLY);
    kvf_msg_status_reply_t *s = &m.u.status;
    s->n_workers = c->reg->n;
    s->workers = kvf_xcalloc(c->reg->n ? c->reg->n : 1, sizeof *s->workers);
    for (uint32_t i = 0; i < c->reg->n; i++) {
        const kvf_cworker_t *w = c->reg->w[i];
        kvf_worker_status_t *o = &s->workers[i];
        o->worker_id = kvf_str(w->worker_id);
        o->group_id = kvf_str(w->group_id);
        o->backend = kvf_str(w->backend);
        o->model = kvf_str(w->model);
        o->device = w->device;
        o->tp_rank = w->tp_rank;
        o->tp_size = w->tp_size;
        o->block_size = w->block_size;
        o->load = w->load;
        o->load.state = w->state;
        o->load.free_blocks = w->reported_free;
        o->load.total_blocks = w->total_blocks;
        o->plan = w->plan;
        o->assigned = w->outstanding;
        o->last_seen_ms = now - w->last_seen_ms;
    }
    kvf_coord_compact_queue(c);
    s->queue_len = c->queue->len;
    s->queue_cap = c->queue->cap;
    s->requests_done = c->requests_done;
    s->uptime_ms = now - c->start_ms;
    kvf_err_t err;
    if (kvf_coord_send(c, c->front, ident, ilen, &m, &err) < 0)
        kvf_log(KVF_LOG_DEBUG, "STATUS_REPLY not delivered: %s", err.msg);
    free(s->workers);
}

// ---- ATTACH

static void s_attach(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_attach_t *m) {
    char msg[300];
    kvf_batch_t *b = m->batch_id.len ? kvf_reqtable_batch(c->reqs, m->batch_id.ptr) : NULL;
    if (!b) {
        snprintf(msg, sizeof msg, "no batch %.200s (unknown, or finished and delivered)",
                 m->batch_id.len ? m->batch_id.ptr : "(empty)");
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_NOT_FOUND, msg);
        return;
    }
    if (s_denied(c, ident, ilen, b, "ATTACH")) return;
    if (ilen > sizeof b->client) ilen = sizeof b->client;
    memcpy(b->client, ident, ilen);
    b->client_len = ilen;
    b->client_ok = 1;
    // The ACK again (the new client may not have the rids), then everything so far.
    kvf_msg_t ack;
    kvf_msg_init(&ack, KVF_MSG_ACK);
    ack.u.ack.batch_id = kvf_str(b->id);
    ack.u.ack.rids = kvf_xmalloc((size_t)(b->n ? b->n : 1) * sizeof *ack.u.ack.rids);
    ack.u.ack.n_rids = b->n;
    for (uint32_t i = 0; i < b->n; i++) ack.u.ack.rids[i] = b->reqs[i]->rid;
    kvf_coord_to_batch(c, b, &ack);
    free(ack.u.ack.rids);
    uint32_t resent = 0;
    for (uint32_t i = 0; i < b->n && b->client_ok; i++) {
        kvf_req_t *req = b->reqs[i];
        if (req->n_out || req->text_len) {
            kvf_msg_t t;
            kvf_msg_init(&t, KVF_MSG_TOKENS);
            t.u.tokens.rid = req->rid;
            t.u.tokens.tokens = (kvf_ids_t){req->out, req->n_out};
            t.u.tokens.text = (kvf_str_t){req->text, (uint32_t)req->text_len};
            kvf_coord_to_client(c, req, &t);
            resent++;
        }
        if (req->state == KVF_REQ_FINISHED) kvf_coord_send_final(c, req);
    }
    kvf_log(KVF_LOG_INFO, "batch %s: re-attached (%u/%u finished, %u streams re-sent)", b->id, b->n_finished, b->n,
            resent);
    kvf_coord_settle(c, b);
}

// ---- DRAIN and SHUTDOWN

static int s_matches(const kvf_cworker_t *w, const kvf_str_t *target) {
    return target->len && (strcmp(w->worker_id, target->ptr) == 0 || strcmp(w->group_id, target->ptr) == 0);
}

static void s_forward(kvf_coord_t *c, kvf_cworker_t *w, kvf_msg_type type) {
    kvf_msg_t m;
    kvf_msg_init(&m, type);
    m.u.target.worker_id = kvf_str(w->worker_id);
    kvf_err_t err;
    if (kvf_coord_send(c, c->back, w->ident, w->ident_len, &m, &err) < 0)
        kvf_log(KVF_LOG_WARN, "%s to worker %s not delivered: %s", kvf_msg_type_name(type), w->worker_id, err.msg);
}

static void s_drain(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_target_t *t) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->reg->n; i++) {
        kvf_cworker_t *w = c->reg->w[i];
        if (!s_matches(w, &t->worker_id)) continue;
        n++;
        if (w->state == KVF_WSTATE_DEAD) continue;
        w->state = KVF_WSTATE_DRAINING;
        s_forward(c, w, KVF_MSG_DRAIN);
        kvf_log(KVF_LOG_INFO, "worker %s draining (%u requests still there)", w->worker_id, w->outstanding);
    }
    if (!n) {
        char msg[300];
        snprintf(msg, sizeof msg, "no worker or group %.200s", t->worker_id.len ? t->worker_id.ptr : "(empty)");
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_NOT_FOUND, msg);
        return;
    }
    s_reply_ok(c, ident, ilen);
}

static void s_shutdown(kvf_coord_t *c, const void *ident, size_t ilen, const kvf_msg_target_t *t) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->reg->n; i++) {
        kvf_cworker_t *w = c->reg->w[i];
        if (t->worker_id.len && !s_matches(w, &t->worker_id)) continue;
        n++;
        if (w->state == KVF_WSTATE_DEAD) continue;
        s_forward(c, w, KVF_MSG_SHUTDOWN);
        // No new work for it; what it holds is taken back when it falls silent.
        w->state = KVF_WSTATE_DRAINING;
    }
    if (t->worker_id.len && !n) {
        char msg[300];
        snprintf(msg, sizeof msg, "no worker or group %.200s", t->worker_id.ptr);
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_NOT_FOUND, msg);
        return;
    }
    s_reply_ok(c, ident, ilen);
    if (!t->worker_id.len) {
        kvf_log(KVF_LOG_INFO, "SHUTDOWN: stopping the cluster (%u workers told)", n);
        c->shutdown = 1;
    }
}

// ---- entry

void kvf_coord_front_handle(kvf_coord_t *c, const void *ident, size_t ilen, kvf_msg_t *msg) {
    // With CURVE, the cluster-wide commands are for operator keys only.
    if (c->auth && (msg->type == KVF_MSG_DRAIN || msg->type == KVF_MSG_SHUTDOWN) &&
        !(c->peer_roles & KVF_ROLE_OPERATOR)) {
        char m[160];
        snprintf(m, sizeof m, "%s needs an operator key (this is a client key)", kvf_msg_type_name(msg->type));
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_DENIED, m);
        return;
    }
    switch (msg->type) {
    case KVF_MSG_SUBMIT:
        s_submit(c, ident, ilen, &msg->u.submit);
        break;
    case KVF_MSG_CANCEL:
        s_cancel(c, ident, ilen, &msg->u.cancel);
        break;
    case KVF_MSG_STATUS:
        s_status(c, ident, ilen);
        break;
    case KVF_MSG_ATTACH:
        s_attach(c, ident, ilen, &msg->u.attach);
        break;
    case KVF_MSG_DRAIN:
        s_drain(c, ident, ilen, &msg->u.target);
        break;
    case KVF_MSG_SHUTDOWN:
        s_shutdown(c, ident, ilen, &msg->u.target);
        break;
    default: {
        char m[160];
        snprintf(m, sizeof m, "%s is not a message for the coordinator's client socket", kvf_msg_type_name(msg->type));
        kvf_coord_send_error(c, c->front, ident, ilen, 0, KVF_E_PROTO, m);
        break;
    }
    }
}
