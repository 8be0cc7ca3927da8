// proto/transport.c — kvf_msg_send / kvf_msg_recv: one kvf_msg_t as one ZeroMQ
// message, [identity frame (ROUTER only)] [payload] (see PROTOCOL.md, "Frames").
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"

static void s_free_payload(void *data, void *hint) {
    (void)hint;
    free(data);
}

static int s_io_err(kvf_err_t *err, const char *what) {
    int e = errno;
    kvf_status code = KVF_E_IO;
    if (e == EAGAIN) code = KVF_E_TIMEOUT;
    else if (e == EHOSTUNREACH) code = KVF_E_PEER_LOST;
    return kvf_err_set(err, code, "%s failed: %s", what, zmq_strerror(e));
}

int kvf_msg_send(zsock_t *sock, const zframe_t *identity, const kvf_msg_t *msg, kvf_err_t *err) {
    void *raw = zsock_resolve(sock);
    if (!raw) return kvf_err_set(err, KVF_E_INVAL, "kvf_msg_send: not a socket");
    char *buf;
    size_t len;
    if (kvf_msg_encode(msg, &buf, &len, err) < 0) return -1;
    if (identity) {
        zframe_t *id = (zframe_t *)identity;  // zframe_data/size do not modify it
        if (zmq_send(raw, zframe_data(id), zframe_size(id), ZMQ_SNDMORE) < 0) {
            free(buf);
            return s_io_err(err, "send");
        }
    }
    // The payload is handed to libzmq without a copy; it frees it when sent.
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, buf, len, s_free_payload, NULL) != 0) {
        free(buf);
        return s_io_err(err, "send");
    }
    if (zmq_msg_send(&m, raw, 0) < 0) {
        int rc = s_io_err(err, "send");
        zmq_msg_close(&m);
        return rc;
    }
    return 0;
}

int kvf_msg_recv(zsock_t *sock, zframe_t **identity, kvf_msg_t *msg, kvf_err_t *err) {
    memset(msg, 0, sizeof *msg);
    if (identity) *identity = NULL;
    void *raw = zsock_resolve(sock);
    if (!raw) return kvf_err_set(err, KVF_E_INVAL, "kvf_msg_recv: not a socket");
    // Read every frame of the message (so that the next recv starts on a message
    // boundary), keeping the first as identity and the last as payload.
    zmq_msg_t payload;
    zmq_msg_init(&payload);
    int frames = 0;
    int more = 1;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, raw, 0) < 0) {
            int rc = s_io_err(err, "receive");
            zmq_msg_close(&part);
            zmq_msg_close(&payload);
            if (frames > 0 && err) err->code = KVF_E_IO;  // broken mid-message: not a plain timeout
            if (identity) zframe_destroy(identity);
            return rc;
        }
        more = zmq_msg_more(&part);
        if (frames == 0 && identity) {
            *identity = zframe_new(zmq_msg_data(&part), zmq_msg_size(&part));
            zmq_msg_close(&part);
        } else {
            zmq_msg_close(&payload);
            zmq_msg_init(&payload);
            zmq_msg_move(&payload, &part);
            zmq_msg_close(&part);
        }
        frames++;
    }
    int want = identity ? 2 : 1;
    int rc;
    if (frames != want) {
        rc = kvf_err_set(err, KVF_E_FORMAT, "expected %d frame%s ([identity] payload), got %d", want,
                         want == 1 ? "" : "s", frames);
    } else {
        rc = kvf_msg_decode(zmq_msg_data(&payload), zmq_msg_size(&payload), msg, err);
    }
    zmq_msg_close(&payload);
    return rc;
}
