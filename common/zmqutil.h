// common/zmqutil.h — ZeroMQ sockets set up the way every kvfleet process needs.
//
// Every socket that receives from outside the process has ZMQ_MAXMSGSIZE set, so
// a hostile peer cannot make us buffer more than KVF_ZMQ_MAX_MSG bytes; linger is
// 0 so that shutdown never blocks on unsent messages; ROUTER sockets are
// ROUTER_MANDATORY so a send to a lost peer fails instead of vanishing.
#ifndef KVF_ZMQUTIL_H
#define KVF_ZMQUTIL_H

#include <czmq.h>
#include <stdint.h>

#include "error.h"

#define KVF_ZMQ_MAX_MSG (64ll << 20)  // default bound on one incoming message

// CURVE settings of one socket (keys loaded with common/curve.h). A ROUTER
// with a cert is a CURVE server: peers without CURVE, or with another server
// key, never get through the handshake, and the zauth actor of the process
// (started before the bind) decides which client keys may connect; zap_domain
// names the socket in those ZAP requests. A DEALER with a cert is a CURVE
// client of the server whose public key is server_key.
typedef struct {
    zcert_t *cert;           // our key pair, not owned; NULL: no CURVE (plain)
    const char *server_key;  // DEALER: the server's public key (Z85, 40 chars)
    const char *zap_domain;  // ROUTER: ZAP domain (NULL: none)
} kvf_zmq_curve_t;

#define KVF_ZMQ_CURVE_HEARTBEAT_MS 1000  // ZMTP heartbeat of a CURVE ROUTER (timeout 3x)

// As kvf_zmq_router_bind / kvf_zmq_dealer_connect, with CURVE when curve and
// curve->cert are not NULL (the keys are set before the bind or connect; a
// CURVE ROUTER also sends ZMTP heartbeats, so that dead peers are reaped).
zsock_t *kvf_zmq_router_bind_curve(const char *endpoint, int64_t max_msg, const kvf_zmq_curve_t *curve,
                                   kvf_err_t *err);
zsock_t *kvf_zmq_dealer_connect_curve(const char *endpoint, const char *identity, int64_t max_msg,
                                      const kvf_zmq_curve_t *curve, kvf_err_t *err);

// A ROUTER bound to endpoint (tcp://host:port, ipc://path, inproc://name).
// Returns a new socket owned by the caller (zsock_destroy), or NULL with err set.
zsock_t *kvf_zmq_router_bind(const char *endpoint, int64_t max_msg, kvf_err_t *err);

// A DEALER connected to endpoint; identity may be NULL (ZeroMQ picks one).
// Returns a new socket owned by the caller, or NULL with err set.
zsock_t *kvf_zmq_dealer_connect(const char *endpoint, const char *identity, int64_t max_msg, kvf_err_t *err);

// Sends n frames as one multipart message (frames[i] of lens[i] bytes; copied).
// Returns 0, or -1 with err set (for ROUTER: KVF_E_PEER_LOST when the peer is gone).
int kvf_zmq_send(zsock_t *sock, const void *const *frames, const size_t *lens, int n, kvf_err_t *err);

#endif
