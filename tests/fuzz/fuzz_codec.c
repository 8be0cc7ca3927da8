// tests/fuzz/fuzz_codec.c — libFuzzer target over the wire decoder: the
// msgpack pre-scan (kvf_msgpack_prescan) and kvf_msg_decode on untrusted bytes.
//
// Besides the sanitizers, it checks what codec.h promises:
//  - decode accepts only what the pre-scan accepts, and a pre-scanned buffer is
//    exactly one msgpack object that msgpack-c unpacks to the last byte;
//  - a failed decode leaves nothing to release and says why;
//  - a decoded message re-encodes, the encoding decodes, and re-encoding that
//    gives the same bytes (what a peer accepts it can also send on).
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"

static void s_fail(const char *what, const kvf_err_t *err) {
    fprintf(stderr, "fuzz_codec: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    abort();
}

// A pre-scanned buffer must be one complete object, all bytes used.
static void s_check_prescanned(const uint8_t *data, size_t len) {
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 1024)) return;
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack((const char *)data, len, &off, &zone, &obj);
    if (r != MSGPACK_UNPACK_SUCCESS && r != MSGPACK_UNPACK_NOMEM_ERROR)
        s_fail("pre-scan accepted bytes that msgpack-c does not unpack as one object", NULL);
    if (r == MSGPACK_UNPACK_SUCCESS && off != len) s_fail("pre-scan accepted trailing bytes", NULL);
    msgpack_zone_destroy(&zone);
}

static void s_roundtrip(const kvf_msg_t *m) {
    kvf_err_t err;
    char *b1 = NULL, *b2 = NULL;
    size_t n1 = 0, n2 = 0;
    if (kvf_msg_encode(m, &b1, &n1, &err) != 0) s_fail("a decoded message does not re-encode", &err);
    kvf_msg_t m2;
    memset(&m2, 0, sizeof m2);
    if (kvf_msg_decode(b1, n1, &m2, &err) != 0) s_fail("a re-encoded message does not decode", &err);
    if (m2.type != m->type) s_fail("re-decoded message changed type", NULL);
    if (kvf_msg_encode(&m2, &b2, &n2, &err) != 0) s_fail("a re-decoded message does not encode", &err);
    if (n1 != n2 || memcmp(b1, b2, n1) != 0) s_fail("encode(decode(encode(m))) != encode(m)", NULL);
    kvf_msg_clear(&m2);
    free(b1);
    free(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    kvf_err_t err;

    // The pre-scan at the decoder's depth, and at a depth taken from the input.
    int scan_ok = kvf_msgpack_prescan(data, len, KVF_PROTO_MAX_DEPTH, &err) == 0;
    if (!scan_ok && err.msg[0] == '\0') s_fail("pre-scan refused without a message", NULL);
    if (scan_ok) s_check_prescanned(data, len);
    if (len > 0) {
        int depth = data[0] % 70;  // also outside [1, 64]: must be refused, not trusted
        int ok = kvf_msgpack_prescan(data, len, depth, &err) == 0;
        if (ok && (depth < 1 || depth > 64)) s_fail("pre-scan accepted an invalid depth limit", NULL);
        if (ok && depth <= KVF_PROTO_MAX_DEPTH && !scan_ok) s_fail("pre-scan: a tighter limit accepted more", NULL);
    }

    kvf_msg_t m;
    memset(&m, 0xa5, sizeof m);  // the decoder must not rely on a zeroed struct
    if (kvf_msg_decode(data, len, &m, &err) != 0) {
        if (err.msg[0] == '\0') s_fail("decode failed without a message", NULL);
        if (err.code != KVF_E_FORMAT && err.code != KVF_E_PROTO && err.code != KVF_E_NOMEM)
            s_fail("decode failed with an unexpected code", &err);
        kvf_msg_clear(&m);  // "holds nothing to release": clearing must be safe
        return 0;
    }
    if (!scan_ok) s_fail("decode accepted bytes the pre-scan refuses", NULL);
    s_roundtrip(&m);
    kvf_msg_clear(&m);
    return 0;
}
