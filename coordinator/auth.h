// coordinator/auth.h — who may talk to the coordinator, when it runs with CURVE.
//
// The coordinator's own key pair, the allowed public keys of each role (one
// directory of zcert public files per role: workers, clients, operators) and
// the process's zauth actor (czmq), which refuses at the CURVE handshake every
// key that is in none of the directories: such a peer never delivers a
// message. zauth serves every socket of the process (ZAP has one handler per
// ZeroMQ context), so the split by socket is made here, per message, from the
// key that zauth authenticated (the "User-Id" metadata): the back socket takes
// worker keys only, the front client and operator keys only; anything else is
// dropped unanswered. Operator-only commands check kvf_auth_roles.
#ifndef KVF_COORD_AUTH_H
#define KVF_COORD_AUTH_H

#include <czmq.h>
#include <stdint.h>

#include "common/error.h"

typedef enum {
    KVF_ROLE_WORKER = 1u << 0,
    KVF_ROLE_CLIENT = 1u << 1,
    KVF_ROLE_OPERATOR = 1u << 2,
} kvf_role;

#define KVF_AUTH_ZAP_FRONT "kvfleet-front"
#define KVF_AUTH_ZAP_BACK "kvfleet-back"

typedef struct kvf_auth_s kvf_auth_t;

// Loads the coordinator's secret key file and the three directories (any may
// be NULL: that role has no keys) and starts zauth with exactly those keys.
// Returns a new auth owned by the caller, or NULL with err set (unreadable
// key file or directory, a directory file that is not a key, no allowed key at
// all, or zauth failing to start).
kvf_auth_t *kvf_auth_new(const char *secret_path, const char *worker_dir, const char *client_dir,
                         const char *operator_dir, kvf_err_t *err);

// Stops zauth and frees; accepts NULL; nulls *self_p. Destroy the sockets first.
void kvf_auth_destroy(kvf_auth_t **self_p);

// The coordinator's key pair (owned by the auth), for kvf_zmq_curve_t.
zcert_t *kvf_auth_cert(const kvf_auth_t *a);

// The roles (kvf_role bits) of an authenticated public key (Z85); 0 when unknown.
uint32_t kvf_auth_roles(const kvf_auth_t *a, const char *user_id);

// Whether a message authenticated as user_id may be handled on the front
// (front != 0) or back socket; *roles receives its roles. Returns 1 to handle
// it, 0 to drop it unanswered (logged, at most once a second).
int kvf_auth_admit(kvf_auth_t *a, const char *user_id, int front, uint32_t *roles);

#endif
