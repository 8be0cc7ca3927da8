// coordinator/coord.c — the coordinator object: sockets, the poll loop, and
// receiving/sending messages. Handlers live in front.c (clients), back.c
// (workers) and dispatch.c (placement and failure handling).
#include "coordinator/coord_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/zmqutil.h"
#include "proto/codec.h"

#define S_MAX_PER_POLL 512  // messages taken from one socket before looking at the other

// ---- configuration and lifetime

void kvf_coord_cfg_default(kvf_coord_cfg_t *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->front = "tcp://127.0.0.1:5555";
    cfg->back = "tcp://127.0.0.1:5556";
    cfg->model_dir = NULL;
    cfg->heartbeat_ms = 500;
    cfg->dead_after_ms = 3000;
    cfg->queue_cap = 100000;
    cfg->watermark = 0;
    cfg->max_batch = 100000;
    cfg->max_prompt_tokens = 1u << 20;
    cfg->max_msg_size = KVF_ZMQ_MAX_MSG;
    cfg->max_retained = 1024;
    cfg->max_redispatch = 16;
    cfg->max_new_tokens = 1u << 20;
}

uint64_t kvf_coord_now(void) { return (uint64_t)zclock_mono(); }

static zsock_t *s_bind(const char *what, const char *endpoint, int64_t max_msg, const kvf_zmq_curve_t *curve,
                       char **bound, kvf_err_t *err) {
    // The transport bound is twice the message limit: messages in between are
    // received and answered with an ERROR that names the limit; past it libzmq
    // drops the connection without buffering the rest.
    int64_t hard = max_msg > (INT32_MAX - 1) / 2 ? INT32_MAX - 1 : 2 * max_msg;
    zsock_t *s = kvf_zmq_router_bind_curve(endpoint, hard, curve, err);
    if (!s) {
        if (err) {
            char tmp[sizeof err->msg];
            memcpy(tmp, err->msg, sizeof tmp);
            snprintf(err->msg, sizeof err->msg, "%s socket: %.480s", what, tmp);
        }
        return NULL;
    }
    // Never block the loop on one peer: a full queue to it is a failed send.
    zsock_set_sndtimeo(s, 0);
    // A peer that reconnects with the identity it had (a restarted worker) takes
    // it over at once, even before the old connection is noticed to be gone.
    // Not with CURVE: there a key of another role (whose messages are dropped)
    // could take over a worker's or client's identity and receive what is sent
    // to it; ZMTP heartbeats (kvf_zmq_router_bind_curve) reap dead connections
    // instead, so that a restarted worker gets its identity back in seconds.
    zsock_set_router_handover(s, curve && curve->cert ? 0 : 1);
    const char *ep = zsock_endpoint(s);
    *bound = kvf_xstrdup(ep ? ep : endpoint);
    return s;
}

kvf_coord_t *kvf_coord_new(const kvf_coord_cfg_t *cfg, kvf_err_t *err) {
    if (!cfg->front || !cfg->back || !*cfg->front || !*cfg->back) {
        kvf_err_set(err, KVF_E_INVAL, "front and back endpoints are required");
        return NULL;
    }
    if (cfg->heartbeat_ms == 0 || cfg->dead_after_ms <= cfg->heartbeat_ms) {
        kvf_err_set(err, KVF_E_INVAL, "--dead-after-ms (%u) must exceed --heartbeat-ms (%u), which must be > 0",
                    cfg->dead_after_ms, cfg->heartbeat_ms);
        return NULL;
    }
    if (cfg->max_batch == 0 || cfg->max_prompt_tokens == 0 || cfg->max_msg_size < 1024) {
        kvf_err_set(err, KVF_E_INVAL, "--max-batch and --max-prompt-tokens must be > 0, --max-msg-size >= 1024");
        return NULL;
    }
    if (cfg->max_new_tokens == 0) {
        kvf_err_set(err, KVF_E_INVAL, "--max-new-tokens must be > 0");
        return NULL;
    }
    kvf_coord_t *c = kvf_xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    c->cfg.front = c->cfg.back = NULL;  // the bound endpoints replace them
    if (cfg->model_dir) {
        c->model_dir = kvf_xstrdup(cfg->model_dir);
        c->cfg.model_dir = c->model_dir;
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.json", cfg->model_dir);
        c->tok = kvf_tokenizer_load(path, err);
        if (!c->tok) goto fail;
        kvf_log(KVF_LOG_INFO, "tokenizer %s: %d ids", path, (int)kvf_tokenizer_vocab_size(c->tok));
    }
    if (cfg->curve_secret && *cfg->curve_secret) {
        // zauth must be there before the first handshake: it starts before the binds.
        c->auth = kvf_auth_new(cfg->curve_secret, cfg->worker_keys, cfg->client_keys, cfg->operator_keys, err);
        if (!c->auth) goto fail;
    } else if (cfg->worker_keys || cfg->client_keys || cfg->operator_keys) {
        kvf_err_set(err, KVF_E_INVAL, "--worker-keys, --client-keys and --operator-keys need --curve-secret");
        goto fail;
    }
    kvf_zmq_curve_t front_curve = {c->auth ? kvf_auth_cert(c->auth) : NULL, NULL, KVF_AUTH_ZAP_FRONT};
    kvf_zmq_curve_t back_curve = {front_curve.cert, NULL, KVF_AUTH_ZAP_BACK};
    c->front = s_bind("front", cfg->front, cfg->max_msg_size, &front_curve, &c->front_ep, err);
    if (!c->front) goto fail;
    c->back = s_bind("back", cfg->back, cfg->max_msg_size, &back_curve, &c->back_ep, err);
    if (!c->back) goto fail;
    c->reg = kvf_registry_new();
    c->aff = kvf_xmalloc(sizeof *c->aff);
    kvf_affinity_init(c->aff);
    c->reqs = kvf_reqtable_new(cfg->max_retained);
    c->queue = kvf_queue_new(cfg->queue_cap);
    c->start_ms = kvf_coord_now();
    c->cfg.journal = NULL;  // only read here
    if (cfg->journal && *cfg->journal && kvf_coord_journal_open(c, cfg->journal, err) < 0) goto fail;
    return c;
fail:
    kvf_coord_destroy(&c);
    return NULL;
}

void kvf_coord_destroy(kvf_coord_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_coord_t *c = *self_p;
    zsock_destroy(&c->front);
    zsock_destroy(&c->back);
    kvf_auth_destroy(&c->auth);  // after the sockets it guards
    free(c->front_ep);
    free(c->back_ep);
    kvf_tokenizer_destroy(&c->tok);
    kvf_registry_destroy(&c->reg);
    free(c->aff);
    kvf_reqtable_destroy(&c->reqs);
    kvf_queue_destroy(&c->queue);
    kvf_journal_destroy(&c->journal);
    free(c->to_settle);
    free(c->model_dir);
    free(c);
    *self_p = NULL;
}

const char *kvf_coord_front_endpoint(const kvf_coord_t *c) { return c->front_ep; }
const char *kvf_coord_back_endpoint(const kvf_coord_t *c) { return c->back_ep; }

// ---- sending

int kvf_coord_send(kvf_coord_t *c, zsock_t *sock, const void *ident, size_t ident_len, const kvf_msg_t *msg,
                   kvf_err_t *err) {
    (void)c;
    char *buf;
    size_t len;
    if (kvf_msg_encode(msg, &buf, &len, err) < 0) {
        kvf_log(KVF_LOG_ERROR, "cannot encode %s: %s", kvf_msg_type_name(msg->type), err ? err->msg : "");
        return -1;
    }
    const void *frames[2] = {ident, buf};
    size_t lens[2] = {ident_len, len};
    int rc = kvf_zmq_send(sock, frames, lens, 2, err);
    free(buf);
    return rc;
}

void kvf_coord_send_error(kvf_coord_t *c, zsock_t *sock, const void *ident, size_t ident_len, uint64_t rid,
                          kvf_status code, const char *message) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_ERROR);
    m.u.error.rid = rid;
    m.u.error.code = (uint32_t)code;
    m.u.error.message = kvf_str(message);
    kvf_err_t err;
    if (kvf_coord_send(c, sock, ident, ident_len, &m, &err) < 0)
        kvf_log(KVF_LOG_DEBUG, "ERROR to a peer not delivered: %s", err.msg);
}

// ---- receiving

// Takes one message from sock. Returns 1 when one was handled (well-formed or
// answered with an ERROR), 0 when none was waiting, -1 on a socket failure.
static int s_recv_one(kvf_coord_t *c, zsock_t *sock, int front) {
    void *raw = zsock_resolve(sock);
    uint8_t ident[256];
    size_t ident_len = 0;
    zmq_msg_t part, payload;
    zmq_msg_init(&part);
    if (zmq_msg_recv(&part, raw, ZMQ_DONTWAIT) < 0) {
        int e = errno;
        zmq_msg_close(&part);
        if (e == EAGAIN || e == EINTR) return 0;
        kvf_log(KVF_LOG_ERROR, "%s socket: receive failed: %s", front ? "front" : "back", zmq_strerror(e));
        return -1;
    }
    // A ROUTER always prefixes the routing identity (at most 255 bytes).
    ident_len = zmq_msg_size(&part) < sizeof ident ? zmq_msg_size(&part) : sizeof ident;
    memcpy(ident, zmq_msg_data(&part), ident_len);
    int more = zmq_msg_more(&part);
    zmq_msg_close(&part);
    // Read every frame (the next receive must start on a message boundary); keep the last.
    zmq_msg_init(&payload);
    int frames = 0;
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, raw, 0) < 0) {
            zmq_msg_close(&part);
            break;
        }
        more = zmq_msg_more(&part);
        zmq_msg_close(&payload);
        zmq_msg_init(&payload);
        zmq_msg_move(&payload, &part);
        zmq_msg_close(&part);
        frames++;
    }
    zsock_t *reply = sock;
    kvf_err_t err;
    kvf_err_clear(&err);
    size_t size = zmq_msg_size(&payload);
    // With CURVE, zauth let only allowed keys connect and names the sender's
    // key (User-Id, on the frames the peer sent); its role decides whether this
    // socket takes the message. Dropped unanswered: a key of another role
    // learns nothing here.
    c->peer_key = c->auth && frames > 0 ? zmq_msg_gets(&payload, "User-Id") : NULL;
    int admit = !c->auth || (frames > 0 && kvf_auth_admit(c->auth, c->peer_key, front, &c->peer_roles));
    if (!admit) {
    } else if (frames != 1) {
        kvf_coord_send_error(c, reply, ident, ident_len, 0, KVF_E_FORMAT,
                             frames == 0 ? "empty message: expected one payload frame"
                                         : "expected one payload frame after the identity");
    } else if ((int64_t)size > c->cfg.max_msg_size) {
        char m[160];
        snprintf(m, sizeof m, "message of %zu bytes exceeds the limit of %" PRId64 " bytes", size,
                 c->cfg.max_msg_size);
        kvf_coord_send_error(c, reply, ident, ident_len, 0, KVF_E_FORMAT, m);
    } else {
        kvf_msg_t msg;
        if (kvf_msg_decode(zmq_msg_data(&payload), size, &msg, &err) < 0) {
            kvf_log(KVF_LOG_DEBUG, "%s: bad message of %zu bytes: %s", front ? "front" : "back", size, err.msg);
            kvf_coord_send_error(c, reply, ident, ident_len, 0, err.code ? err.code : KVF_E_FORMAT, err.msg);
        } else {
            if (front)
                kvf_coord_front_handle(c, ident, ident_len, &msg);
            else
                kvf_coord_back_handle(c, ident, ident_len, &msg);
            kvf_msg_clear(&msg);
        }
    }
    c->peer_key = NULL;  // it pointed into payload
    zmq_msg_close(&payload);
    return 1;
}

// ---- the loop

int kvf_coord_run(kvf_coord_t *c, volatile sig_atomic_t *stop, kvf_err_t *err) {
    long tick = c->cfg.heartbeat_ms / 2;
    if (tick > (long)c->cfg.dead_after_ms / 4) tick = c->cfg.dead_after_ms / 4;
    if (tick > 100) tick = 100;
    if (tick < 5) tick = 5;
    while (!(stop && *stop) && !c->shutdown) {
        zmq_pollitem_t items[2] = {
            {zsock_resolve(c->back), 0, ZMQ_POLLIN, 0},
            {zsock_resolve(c->front), 0, ZMQ_POLLIN, 0},
        };
        if (zmq_poll(items, 2, tick) < 0) {
            if (errno == EINTR) continue;
            return kvf_err_set(err, KVF_E_IO, "poll failed: %s", zmq_strerror(errno));
        }
        // Workers first: their reports free the room that client work needs.
        // Then clients; then workers again without waiting, so that heartbeats
        // that arrived while a large SUBMIT was handled are seen before anyone
        // is declared dead.
        const int order[3] = {0, 1, 0};
        for (int j = 0; j < 3 && !c->shutdown; j++) {
            int k = order[j];
            if (j < 2 && !(items[k].revents & ZMQ_POLLIN)) continue;
            for (int i = 0; i < S_MAX_PER_POLL && !c->shutdown; i++) {
                int r = s_recv_one(c, k == 0 ? c->back : c->front, k == 1);
                if (r < 0) return kvf_err_set(err, KVF_E_IO, "socket failure (see log)");
                if (r == 0) break;
                kvf_coord_settle_all(c);
            }
        }
        kvf_coord_check_dead(c, kvf_coord_now());
        if (c->dirty && !c->shutdown) {
            c->dirty = 0;
            kvf_coord_dispatch(c);
        }
        kvf_coord_settle_all(c);
        kvf_coord_journal_commit(c);  // group commit: at most one per 20 ms
    }
    if (c->shutdown) {
        // Give the forwarded SHUTDOWNs and the operator's OK a moment to leave.
        zsock_set_linger(c->front, 1000);
        zsock_set_linger(c->back, 1000);
    }
    kvf_log(KVF_LOG_INFO, "stopping: %s", c->shutdown ? "SHUTDOWN from an operator" : "signal");
    return 0;
}
