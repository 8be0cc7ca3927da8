// kernels/check.c — see check.h.
#include "kernels/check.h"

#include "common/log.h"

int kvf_check_fail(kvf_err_t *err, const char *stmt, long long code, const char *what,
                   const char *file, int line) {
    int dev = -1;
    cudaGetDevice(&dev);
    kvf_log_write(KVF_LOG_ERROR, file, line, "device %d: %s failed: %s (%lld)", dev, stmt,
                  what ? what : "?", code);
    return kvf_err_set(err, KVF_E_DEVICE, "%s:%d: device %d: %s failed: %s (%lld)", file, line, dev,
                       stmt, what ? what : "?", code);
}

int kvf_check_inval(kvf_err_t *err, const char *cond, const char *func) {
    return kvf_err_set(err, KVF_E_INVAL, "%s: precondition failed: %s", func, cond);
}
