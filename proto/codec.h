// proto/codec.h — encode and decode kvf_msg_t (proto/msg.h) as msgpack, and
// send/receive them over ZeroMQ. The only code that includes msgpack.h lives
// behind this header.
#ifndef KVF_PROTO_CODEC_H
#define KVF_PROTO_CODEC_H

#include <czmq.h>
#include <stddef.h>

#include "common/error.h"
#include "proto/msg.h"

#define KVF_PROTO_MAX_DEPTH 16

// Stable upper-case name of a type ("SUBMIT"); "UNKNOWN" for others.
const char *kvf_msg_type_name(kvf_msg_type t);

// Name of a finish reason on the wire ("stop", "length", "cancelled", "error").
const char *kvf_finish_name(kvf_finish_reason r);

// A kvf_str_t that borrows a C string (NULL gives the empty string), for encoding.
kvf_str_t kvf_str(const char *s);

// Initializes *msg as an empty message of this type (all fields zero, sampling
// fields at kvf_sampling_default()).
void kvf_msg_init(kvf_msg_t *msg, kvf_msg_type type);

// Encodes msg. On success *buf is a new buffer owned by the caller (free()) of
// *len bytes and 0 is returned; -1 with err set otherwise.
int kvf_msg_encode(const kvf_msg_t *msg, char **buf, size_t *len, kvf_err_t *err);

// Decodes len untrusted bytes into *msg. The bytes are pre-scanned (counts larger
// than the bytes left, nesting deeper than KVF_PROTO_MAX_DEPTH, strings past the
// end) before msgpack-c sees them. Unknown fields are ignored; an unknown type or
// version, a missing required field or a field of the wrong type is an error.
// On success *msg owns its storage (release with kvf_msg_clear); on failure *msg
// holds nothing to release and err says what was wrong (code KVF_E_FORMAT or KVF_E_PROTO);
// msg->type is still set when the type was read and known (else KVF_MSG_INVALID),
// so that the ERROR reply can name it.
int kvf_msg_decode(const void *data, size_t len, kvf_msg_t *msg, kvf_err_t *err);

// Releases what a decoded message owns and zeroes it. Accepts an encoded-only
// (caller-owned) message too: then it only zeroes it. Safe on a zeroed message.
void kvf_msg_clear(kvf_msg_t *msg);

// The pre-scan on its own: 0 when data is one complete msgpack object within the
// limits, -1 with err set otherwise.
int kvf_msgpack_prescan(const void *data, size_t len, int max_depth, kvf_err_t *err);

// Sends msg as one ZeroMQ message: [identity frame if identity != NULL] [payload].
// For a ROUTER, identity addresses the peer (KVF_E_PEER_LOST when it is gone).
int kvf_msg_send(zsock_t *sock, const zframe_t *identity, const kvf_msg_t *msg, kvf_err_t *err);

// Receives one ZeroMQ message and decodes its last frame. For a ROUTER socket pass
// identity != NULL: *identity becomes the sender's routing frame (caller destroys it,
// also when decoding fails, so that an ERROR can be sent back). Returns 0; -1 with
// err set on a receive failure (KVF_E_IO, or KVF_E_TIMEOUT when the socket's receive
// timeout passed) or on a decode failure (KVF_E_FORMAT / KVF_E_PROTO).
int kvf_msg_recv(zsock_t *sock, zframe_t **identity, kvf_msg_t *msg, kvf_err_t *err);

#endif
