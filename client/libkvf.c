// client/libkvf.c — see libkvf.h.
#include "libkvf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>

#include "common/alloc.h"
#include "common/curve.h"
#include "common/zmqutil.h"
#include "proto/codec.h"

struct kvf_client_t {
    zsock_t *sock;      // DEALER connected to the coordinator's front socket
    char *endpoint;
    int timeout_ms;     // for control replies
    // Result messages that arrived while a control call waited: a FIFO ring.
    kvf_msg_t *q;
    size_t q_head, q_len, q_cap;
};

// ---------------------------------------------------------------- queue

static void s_queue_push(kvf_client_t *self, kvf_msg_t *msg) {
    if (self->q_len == self->q_cap) {
        size_t cap = self->q_cap ? self->q_cap * 2 : 64;
        kvf_msg_t *q = kvf_xcalloc(cap, sizeof *q);
        for (size_t i = 0; i < self->q_len; i++) q[i] = self->q[(self->q_head + i) % self->q_cap];
        free(self->q);
        self->q = q;
        self->q_cap = cap;
        self->q_head = 0;
    }
    self->q[(self->q_head + self->q_len) % self->q_cap] = *msg;
    self->q_len++;
    memset(msg, 0, sizeof *msg);
}

static int s_queue_pop(kvf_client_t *self, kvf_msg_t *msg) {
    if (self->q_len == 0) return -1;
    *msg = self->q[self->q_head];
    memset(&self->q[self->q_head], 0, sizeof *msg);
    self->q_head = (self->q_head + 1) % self->q_cap;
    self->q_len--;
    return 0;
}

// ---------------------------------------------------------------- socket

// Milliseconds left until deadline (a zclock_mono time; -1 = forever).
static int s_left(int64_t deadline) {
    if (deadline < 0) return -1;
    int64_t left = deadline - zclock_mono();
    return left < 0 ? 0 : (int)(left > INT32_MAX ? INT32_MAX : left);
}

// Receives one message before deadline. 0, or -1 with KVF_E_TIMEOUT / IO /
// FORMAT / PROTO.
static int s_recv(kvf_client_t *self, int64_t deadline, kvf_msg_t *msg, kvf_err_t *err) {
    zmq_pollitem_t item = {.socket = zsock_resolve(self->sock), .events = ZMQ_POLLIN};
    for (;;) {
        int left = s_left(deadline);
        int rc = zmq_poll(&item, 1, left);
        if (rc < 0) {
            return kvf_err_set(err, KVF_E_IO, "waiting for the coordinator at %s: %s", self->endpoint,
                               errno == EINTR ? "interrupted" : zmq_strerror(errno));
        }
        if (rc == 0) {
            if (left == 0)
                return kvf_err_set(err, KVF_E_TIMEOUT, "no reply from the coordinator at %s", self->endpoint);
            continue;
        }
        memset(msg, 0, sizeof *msg);
        return kvf_msg_recv(self->sock, NULL, msg, err);
    }
}

static int s_send(kvf_client_t *self, const kvf_msg_t *msg, kvf_err_t *err) {
    kvf_err_t e;
    if (kvf_msg_send(self->sock, NULL, msg, &e) < 0)
        return kvf_err_set(err, e.code, "sending %s to %s: %s", kvf_msg_type_name(msg->type), self->endpoint,
                           e.msg);
    return 0;
}

static int s_is_result(const kvf_msg_t *m) {
    return m->type == KVF_MSG_TOKENS || m->type == KVF_MSG_DONE || (m->type == KVF_MSG_ERROR && m->u.error.rid != 0);
}

// Waits for the reply of type `want` to a control message. Result messages met
// on the way are queued for kvf_client_next; an ERROR about the whole message
// (rid 0) is the coordinator's refusal and becomes *err, and so is an ERROR
// not_found about cancel_rid (the reply to CANCEL of an unknown request);
// anything else (a late reply to an earlier, timed-out call) is dropped.
static int s_wait_reply(kvf_client_t *self, kvf_msg_type want, uint64_t cancel_rid, kvf_msg_t *reply,
                        kvf_err_t *err) {
    int64_t deadline = zclock_mono() + self->timeout_ms;
    for (;;) {
        kvf_msg_t m;
        kvf_err_t e;
        if (s_recv(self, deadline, &m, &e) < 0) {
            if (e.code == KVF_E_FORMAT || e.code == KVF_E_PROTO) continue;  // undecodable: skip it
            if (e.code == KVF_E_TIMEOUT)
                return kvf_err_set(err, KVF_E_TIMEOUT, "no %s from the coordinator at %s within %d ms",
                                   kvf_msg_type_name(want), self->endpoint, self->timeout_ms);
            return kvf_err_set(err, e.code, "%s", e.msg);
        }
        if (m.type == want) {
            *reply = m;
            return 0;
        }
        int refusal = m.type == KVF_MSG_ERROR && (m.u.error.rid == 0 || (cancel_rid && m.u.error.rid == cancel_rid &&
                                                                          m.u.error.code == KVF_E_NOT_FOUND));
        if (!refusal && s_is_result(&m)) {
            s_queue_push(self, &m);
            continue;
        }
        if (refusal) {
            kvf_status code = m.u.error.code < KVF_STATUS_COUNT ? (kvf_status)m.u.error.code : KVF_E_INTERNAL;
            if (code == KVF_OK) code = KVF_E_INTERNAL;
            kvf_err_set(err, code, "coordinator: %s", m.u.error.message.ptr ? m.u.error.message.ptr : "error");
            kvf_msg_clear(&m);
            return -1;
        }
        kvf_msg_clear(&m);
    }
}

// ---------------------------------------------------------------- life cycle

kvf_client_t *kvf_client_new(const char *endpoint, kvf_err_t *err) {
    return kvf_client_new_curve(endpoint, NULL, NULL, err);
}

kvf_client_t *kvf_client_new_curve(const char *endpoint, const char *secret_path, const char *coordinator_key_path,
                                   kvf_err_t *err) {
    if (!endpoint) endpoint = KVF_CLIENT_DEFAULT_ENDPOINT;
    if (!strstr(endpoint, "://")) {
        kvf_err_set(err, KVF_E_INVAL, "'%s' is not a ZeroMQ endpoint (e.g. tcp://host:5555)", endpoint);
        return NULL;
    }
    if ((secret_path && *secret_path) != (coordinator_key_path && *coordinator_key_path)) {
        kvf_err_set(err, KVF_E_INVAL, "CURVE needs both our secret key file and the coordinator's public key file");
        return NULL;
    }
    kvf_err_t e;
    zcert_t *cert = NULL;
    kvf_zmq_curve_t curve = {NULL, NULL, NULL};
    char server_key[KVF_CURVE_KEY_TXT];
    if (secret_path && *secret_path) {
        cert = kvf_curve_load_secret(secret_path, err);
        if (!cert) return NULL;
        if (kvf_curve_load_public(coordinator_key_path, server_key, err) < 0) {
            zcert_destroy(&cert);
            return NULL;
        }
        curve = (kvf_zmq_curve_t){cert, server_key, NULL};
    }
    zsock_t *sock = kvf_zmq_dealer_connect_curve(endpoint, NULL, KVF_ZMQ_MAX_MSG, cert ? &curve : NULL, &e);
    zcert_destroy(&cert);  // the socket holds its own copy of the keys
    if (!sock) {
        kvf_err_set(err, e.code == KVF_E_IO ? KVF_E_INVAL : e.code, "%s", e.msg);
        return NULL;
    }
    kvf_client_t *self = kvf_xcalloc(1, sizeof *self);
    self->sock = sock;
    self->endpoint = kvf_xstrdup(endpoint);
    self->timeout_ms = KVF_CLIENT_DEFAULT_TIMEOUT_MS;
    return self;
}

void kvf_client_destroy(kvf_client_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_client_t *self = *self_p;
    kvf_msg_t m;
    while (s_queue_pop(self, &m) == 0) kvf_msg_clear(&m);
    free(self->q);
    zsock_destroy(&self->sock);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void kvf_client_set_timeout(kvf_client_t *self, int timeout_ms) {
    self->timeout_ms = timeout_ms < 1 ? 1 : timeout_ms;
}

const char *kvf_client_endpoint(const kvf_client_t *self) {
    return self->endpoint;
}

// ---------------------------------------------------------------- batches

int kvf_client_submit(kvf_client_t *self, const char *batch_id, const kvf_request_t *reqs, size_t n,
                      uint64_t *rids, char **batch_id_out, kvf_err_t *err) {
    if (n == 0) return kvf_err_set(err, KVF_E_INVAL, "empty batch");
    if (n > UINT32_MAX) return kvf_err_set(err, KVF_E_INVAL, "batch of %zu requests is too large", n);
    for (size_t i = 0; i < n; i++) {
        const kvf_request_t *r = &reqs[i];
        int has_text = r->text != NULL, has_ids = r->n_prompt_ids > 0;
        if (has_text == has_ids)
            return kvf_err_set(err, KVF_E_INVAL, "request %zu: give exactly one of a text prompt and prompt ids", i);
        if (has_ids && !r->prompt_ids) return kvf_err_set(err, KVF_E_INVAL, "request %zu: prompt_ids is NULL", i);
        if (has_text && strlen(r->text) > UINT32_MAX)
            return kvf_err_set(err, KVF_E_TOO_LONG, "request %zu: prompt is too long", i);
        kvf_err_t e;
        if (kvf_sampling_validate(&r->sampling, &e) < 0)
            return kvf_err_set(err, KVF_E_INVAL, "request %zu: %s", i, e.msg);
    }

    kvf_msg_t msg;
    kvf_msg_init(&msg, KVF_MSG_SUBMIT);
    msg.u.submit.batch_id = kvf_str(batch_id);
    msg.u.submit.n_reqs = (uint32_t)n;
    msg.u.submit.reqs = kvf_xcalloc(n, sizeof *msg.u.submit.reqs);
    for (size_t i = 0; i < n; i++) {
        kvf_submit_req_t *w = &msg.u.submit.reqs[i];
        w->tag = kvf_str(reqs[i].tag);
        w->text = kvf_str(reqs[i].text);
        w->prompt_ids.ids = (int32_t *)reqs[i].prompt_ids;
        w->prompt_ids.n = (uint32_t)reqs[i].n_prompt_ids;
        w->sampling = reqs[i].sampling;
    }
    int rc = s_send(self, &msg, err);
    free(msg.u.submit.reqs);
    if (rc < 0) return -1;

    kvf_msg_t ack;
    if (s_wait_reply(self, KVF_MSG_ACK, 0, &ack, err) < 0) return -1;
    if (ack.u.ack.n_rids != n) {
        kvf_err_set(err, KVF_E_PROTO, "coordinator acknowledged %u requests of %zu", ack.u.ack.n_rids, n);
        kvf_msg_clear(&ack);
        return -1;
    }
    memcpy(rids, ack.u.ack.rids, n * sizeof *rids);
    if (batch_id_out) *batch_id_out = kvf_xstrdup(ack.u.ack.batch_id.ptr ? ack.u.ack.batch_id.ptr : "");
    kvf_msg_clear(&ack);
    return 0;
}

int kvf_client_attach(kvf_client_t *self, const char *batch_id, uint64_t **rids, size_t *n_rids, kvf_err_t *err) {
    if (!batch_id || !*batch_id) return kvf_err_set(err, KVF_E_INVAL, "attach needs a batch id");
    kvf_msg_t msg;
    kvf_msg_init(&msg, KVF_MSG_ATTACH);
    msg.u.attach.batch_id = kvf_str(batch_id);
    if (s_send(self, &msg, err) < 0) return -1;
    kvf_msg_t ack;
    if (s_wait_reply(self, KVF_MSG_ACK, 0, &ack, err) < 0) return -1;
    size_t n = ack.u.ack.n_rids;
    *rids = kvf_xmalloc((n ? n : 1) * sizeof **rids);
    if (n) memcpy(*rids, ack.u.ack.rids, n * sizeof **rids);
    *n_rids = n;
    kvf_msg_clear(&ack);
    // The coordinator re-sends everything of the batch after the ACK, so what
    // arrived for its requests before it is superseded: drop it.
    size_t len = self->q_len;
    for (size_t i = 0; i < len; i++) {
        kvf_msg_t m;
        s_queue_pop(self, &m);
        uint64_t rid = m.type == KVF_MSG_TOKENS ? m.u.tokens.rid
                       : m.type == KVF_MSG_DONE ? m.u.done.rid
                                                : m.u.error.rid;
        int ours = 0;
        for (size_t k = 0; k < n && !ours; k++) ours = (*rids)[k] == rid;
        if (ours) kvf_msg_clear(&m);
        else s_queue_push(self, &m);
    }
    return 0;
}

// ---------------------------------------------------------------- events

static void s_event_fill(kvf_event_t *ev, kvf_msg_t *m) {
    memset(ev, 0, sizeof *ev);
    ev->msg_ = *m;
    memset(m, 0, sizeof *m);
    kvf_msg_t *mm = &ev->msg_;
    ev->text = "";
    ev->message = "";
    switch (mm->type) {
    case KVF_MSG_TOKENS:
        ev->type = KVF_EVENT_TOKENS;
        ev->rid = mm->u.tokens.rid;
        ev->ids = mm->u.tokens.tokens.ids;
        ev->n_ids = mm->u.tokens.tokens.n;
        if (mm->u.tokens.text.ptr) ev->text = mm->u.tokens.text.ptr;
        break;
    case KVF_MSG_DONE:
        ev->type = KVF_EVENT_DONE;
        ev->rid = mm->u.done.rid;
        ev->finish_reason = (kvf_finish_reason)mm->u.done.finish_reason;
        ev->prompt_tokens = mm->u.done.prompt_tokens;
        ev->completion_tokens = mm->u.done.completion_tokens;
        break;
    default:  // ERROR
        ev->type = KVF_EVENT_ERROR;
        ev->rid = mm->u.error.rid;
        ev->code = mm->u.error.code < KVF_STATUS_COUNT ? (kvf_status)mm->u.error.code : KVF_E_INTERNAL;
        if (mm->u.error.message.ptr) ev->message = mm->u.error.message.ptr;
        break;
    }
}

int kvf_client_next(kvf_client_t *self, int timeout_ms, kvf_event_t *ev, kvf_err_t *err) {
    kvf_event_clear(ev);
    kvf_msg_t m;
    if (s_queue_pop(self, &m) == 0) {
        s_event_fill(ev, &m);
        return 0;
    }
    int64_t deadline = timeout_ms < 0 ? -1 : zclock_mono() + timeout_ms;
    for (;;) {
        if (s_recv(self, deadline, &m, err) < 0) return -1;
        if (m.type == KVF_MSG_TOKENS || m.type == KVF_MSG_DONE || m.type == KVF_MSG_ERROR) {
            s_event_fill(ev, &m);
            return 0;
        }
        // A late reply to a control call that timed out: not an event.
        kvf_msg_clear(&m);
    }
}

void kvf_event_clear(kvf_event_t *ev) {
    if (!ev) return;
    kvf_msg_clear(&ev->msg_);
    memset(ev, 0, sizeof *ev);
}

// ---------------------------------------------------------------- control

static int s_simple(kvf_client_t *self, kvf_msg_t *msg, kvf_err_t *err) {
    if (s_send(self, msg, err) < 0) return -1;
    kvf_msg_t ok;
    uint64_t cancel_rid = msg->type == KVF_MSG_CANCEL ? msg->u.cancel.rid : 0;
    if (s_wait_reply(self, KVF_MSG_OK, cancel_rid, &ok, err) < 0) return -1;
    kvf_msg_clear(&ok);
    return 0;
}

int kvf_client_cancel(kvf_client_t *self, uint64_t rid, const char *batch_id, kvf_err_t *err) {
    if (rid == 0 && (!batch_id || !*batch_id))
        return kvf_err_set(err, KVF_E_INVAL, "cancel needs a request id or a batch id");
    kvf_msg_t msg;
    kvf_msg_init(&msg, KVF_MSG_CANCEL);
    msg.u.cancel.rid = rid;
    msg.u.cancel.batch_id = kvf_str(rid ? NULL : batch_id);
    return s_simple(self, &msg, err);
}

int kvf_client_drain(kvf_client_t *self, const char *worker_id, kvf_err_t *err) {
    if (!worker_id || !*worker_id) return kvf_err_set(err, KVF_E_INVAL, "drain needs a worker id");
    kvf_msg_t msg;
    kvf_msg_init(&msg, KVF_MSG_DRAIN);
    msg.u.target.worker_id = kvf_str(worker_id);
    return s_simple(self, &msg, err);
}

int kvf_client_shutdown(kvf_client_t *self, kvf_err_t *err) {
    kvf_msg_t msg;
    kvf_msg_init(&msg, KVF_MSG_SHUTDOWN);
    return s_simple(self, &msg, err);
}

static char *s_dup(const kvf_str_t *s) {
    return kvf_xstrdup(s->ptr ? s->ptr : "");
}

int kvf_client_status(kvf_client_t *self, kvf_cluster_status_t **out, kvf_err_t *err) {
    kvf_msg_t msg;
    kvf_msg_init(&msg, KVF_MSG_STATUS);
    if (s_send(self, &msg, err) < 0) return -1;
    kvf_msg_t r;
    if (s_wait_reply(self, KVF_MSG_STATUS_REPLY, 0, &r, err) < 0) return -1;
    const kvf_msg_status_reply_t *sr = &r.u.status;
    kvf_cluster_status_t *st = kvf_xcalloc(1, sizeof *st);
    st->n_workers = sr->n_workers;
    st->workers = kvf_xcalloc(sr->n_workers ? sr->n_workers : 1, sizeof *st->workers);
    for (uint32_t i = 0; i < sr->n_workers; i++) {
        const kvf_worker_status_t *w = &sr->workers[i];
        kvf_worker_info_t *o = &st->workers[i];
        o->worker_id = s_dup(&w->worker_id);
        o->group_id = s_dup(&w->group_id);
        o->backend = s_dup(&w->backend);
        o->model = s_dup(&w->model);
        o->device = w->device;
        o->tp_rank = w->tp_rank;
        o->tp_size = w->tp_size;
        o->block_size = w->block_size;
        o->load = w->load;
        o->plan = w->plan;
        o->assigned = w->assigned;
        o->last_seen_ms = w->last_seen_ms;
    }
    st->queue_len = sr->queue_len;
    st->queue_cap = sr->queue_cap;
    st->requests_done = sr->requests_done;
    st->uptime_ms = sr->uptime_ms;
    kvf_msg_clear(&r);
    *out = st;
    return 0;
}

void kvf_cluster_status_destroy(kvf_cluster_status_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_cluster_status_t *st = *self_p;
    for (uint32_t i = 0; i < st->n_workers; i++) {
        free(st->workers[i].worker_id);
        free(st->workers[i].group_id);
        free(st->workers[i].backend);
        free(st->workers[i].model);
    }
    free(st->workers);
    free(st);
    *self_p = NULL;
}

const char *kvf_wstate_name(uint32_t state) {
    switch (state) {
    case KVF_WSTATE_READY: return "ready";
    case KVF_WSTATE_DRAINING: return "draining";
    case KVF_WSTATE_DEAD: return "dead";
    case KVF_WSTATE_STARTING: return "starting";
    default: return "unknown";
    }
}
