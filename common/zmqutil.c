// common/zmqutil.c — see zmqutil.h.
#include "zmqutil.h"

#include <errno.h>
#include <string.h>

static void s_common_opts(zsock_t *s, int64_t max_msg) {
    zsock_set_linger(s, 0);
    zsock_set_maxmsgsize(s, (int)(max_msg > 0 && max_msg < INT32_MAX ? max_msg : KVF_ZMQ_MAX_MSG));
    zsock_set_rcvhwm(s, 100000);
    zsock_set_sndhwm(s, 100000);
}

zsock_t *kvf_zmq_router_bind(const char *endpoint, int64_t max_msg, kvf_err_t *err) {
    return kvf_zmq_router_bind_curve(endpoint, max_msg, NULL, err);
}

zsock_t *kvf_zmq_router_bind_curve(const char *endpoint, int64_t max_msg, const kvf_zmq_curve_t *curve,
                                   kvf_err_t *err) {
    zsock_t *s = zsock_new(ZMQ_ROUTER);
    if (!s) {
        kvf_err_set(err, KVF_E_IO, "cannot create ROUTER socket: %s", zmq_strerror(errno));
        return NULL;
    }
    s_common_opts(s, max_msg);
    zsock_set_router_mandatory(s, 1);
    if (curve && curve->cert) {
        if (curve->zap_domain) zsock_set_zap_domain(s, curve->zap_domain);
        zcert_apply(curve->cert, s);
        zsock_set_curve_server(s, 1);
        // Dead peers are noticed (and their identities freed) within seconds,
        // also when the host went away without closing the connection.
        zsock_set_heartbeat_ivl(s, KVF_ZMQ_CURVE_HEARTBEAT_MS);
        zsock_set_heartbeat_timeout(s, 3 * KVF_ZMQ_CURVE_HEARTBEAT_MS);
    }
    if (zsock_bind(s, "%s", endpoint) < 0) {
        kvf_err_set(err, KVF_E_IO, "cannot bind %s: %s", endpoint, zmq_strerror(errno));
        zsock_destroy(&s);
        return NULL;
    }
    return s;
}

zsock_t *kvf_zmq_dealer_connect(const char *endpoint, const char *identity, int64_t max_msg, kvf_err_t *err) {
    return kvf_zmq_dealer_connect_curve(endpoint, identity, max_msg, NULL, err);
}

zsock_t *kvf_zmq_dealer_connect_curve(const char *endpoint, const char *identity, int64_t max_msg,
                                      const kvf_zmq_curve_t *curve, kvf_err_t *err) {
    if (curve && curve->cert && (!curve->server_key || strlen(curve->server_key) != 40)) {
        kvf_err_set(err, KVF_E_INVAL, "CURVE needs the server's public key (40 Z85 characters)");
        return NULL;
    }
    zsock_t *s = zsock_new(ZMQ_DEALER);
    if (!s) {
        kvf_err_set(err, KVF_E_IO, "cannot create DEALER socket: %s", zmq_strerror(errno));
        return NULL;
    }
    s_common_opts(s, max_msg);
    if (identity) zsock_set_identity(s, identity);
    if (curve && curve->cert) {
        zcert_apply(curve->cert, s);
        zsock_set_curve_serverkey(s, curve->server_key);
    }
    if (zsock_connect(s, "%s", endpoint) < 0) {
        kvf_err_set(err, KVF_E_IO, "cannot connect to %s: %s", endpoint, zmq_strerror(errno));
        zsock_destroy(&s);
        return NULL;
    }
    return s;
}

int kvf_zmq_send(zsock_t *sock, const void *const *frames, const size_t *lens, int n, kvf_err_t *err) {
    void *raw = zsock_resolve(sock);
    for (int i = 0; i < n; i++) {
        int flags = (i + 1 < n) ? ZMQ_SNDMORE : 0;
        if (zmq_send(raw, frames[i], lens[i], flags) < 0) {
            int e = errno;
            return kvf_err_set(err, e == EHOSTUNREACH ? KVF_E_PEER_LOST : KVF_E_IO, "send failed: %s",
                               zmq_strerror(e));
        }
    }
    return 0;
}
