// common/error.c — see error.h.
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static const char *s_names[KVF_STATUS_COUNT] = {
    [KVF_OK] = "ok",
    [KVF_E_INVAL] = "invalid",
    [KVF_E_NOMEM] = "no_memory",
    [KVF_E_NOMEM_BLOCKS] = "no_blocks",
    [KVF_E_TOO_LONG] = "too_long",
    [KVF_E_IO] = "io",
    [KVF_E_FORMAT] = "format",
    [KVF_E_PROTO] = "protocol",
    [KVF_E_UNSUPPORTED] = "unsupported",
    [KVF_E_PEER_LOST] = "peer_lost",
    [KVF_E_BUSY] = "busy",
    [KVF_E_CANCELLED] = "cancelled",
    [KVF_E_NOT_FOUND] = "not_found",
    [KVF_E_DEVICE] = "device",
    [KVF_E_TIMEOUT] = "timeout",
    [KVF_E_DENIED] = "denied",
    [KVF_E_INTERNAL] = "internal",
};

const char *kvf_status_name(kvf_status s) {
    if ((int)s < 0 || s >= KVF_STATUS_COUNT) return "unknown";
    return s_names[s];
}

int kvf_err_set(kvf_err_t *err, kvf_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void kvf_err_clear(kvf_err_t *err) {
    if (err) {
        err->code = KVF_OK;
        err->msg[0] = '\0';
    }
}
