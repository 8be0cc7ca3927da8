// worker/tp.c — the calls of kvf_tp_t that do not depend on the implementation,
// see tp.h. Each checks its arguments and dispatches through the ops table.
#include "worker/tp.h"

#include <stdlib.h>

static int s_check(const kvf_tp_t *tp, const char *what, kvf_err_t *err) {
    if (!tp) return kvf_err_set(err, KVF_E_INVAL, "tp %s: no communicator", what);
    return 0;
}

int32_t kvf_tp_rank(const kvf_tp_t *tp) { return tp ? tp->rank : 0; }

int32_t kvf_tp_size(const kvf_tp_t *tp) { return tp ? tp->size : 1; }

int kvf_tp_all_reduce_sum(kvf_tp_t *tp, float *buf, size_t n, kvf_err_t *err) {
    if (s_check(tp, "all_reduce_sum", err) != 0) return -1;
    if (n == 0) return 0;
    if (!buf) return kvf_err_set(err, KVF_E_INVAL, "tp all_reduce_sum: no buffer");
    return tp->ops->all_reduce_sum(tp, buf, n, err);
}

int kvf_tp_all_gather(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, kvf_err_t *err) {
    if (s_check(tp, "all_gather", err) != 0) return -1;
    if (bytes > 0 && (!send || !recv)) return kvf_err_set(err, KVF_E_INVAL, "tp all_gather: no buffer");
    return tp->ops->all_gather(tp, send, recv, bytes, err);
}

int kvf_tp_broadcast(kvf_tp_t *tp, void *buf, size_t bytes, int root, kvf_err_t *err) {
    if (s_check(tp, "broadcast", err) != 0) return -1;
    if (root < 0 || root >= tp->size)
        return kvf_err_set(err, KVF_E_INVAL, "tp broadcast: root %d outside 0..%d", root, tp->size - 1);
    if (bytes > 0 && !buf) return kvf_err_set(err, KVF_E_INVAL, "tp broadcast: no buffer");
    return tp->ops->broadcast(tp, buf, bytes, root, err);
}

static int s_reduce_i64(kvf_tp_t *tp, int64_t *v, int want_min, kvf_err_t *err) {
    if (s_check(tp, want_min ? "all_reduce_min" : "all_reduce_max", err) != 0) return -1;
    if (!v) return kvf_err_set(err, KVF_E_INVAL, "tp all_reduce: no value");
    int64_t all[KVF_TP_MAX_SIZE];
    if (tp->ops->all_gather(tp, v, all, sizeof *v, err) != 0) return -1;
    int64_t r = all[0];
    for (int i = 1; i < tp->size; i++)
        if (want_min ? all[i] < r : all[i] > r) r = all[i];
    *v = r;
    return 0;
}

int kvf_tp_all_reduce_min_i64(kvf_tp_t *tp, int64_t *v, kvf_err_t *err) { return s_reduce_i64(tp, v, 1, err); }

int kvf_tp_all_reduce_max_i64(kvf_tp_t *tp, int64_t *v, kvf_err_t *err) { return s_reduce_i64(tp, v, 0, err); }

int kvf_tp_barrier(kvf_tp_t *tp, kvf_err_t *err) {
    if (s_check(tp, "barrier", err) != 0) return -1;
    return tp->ops->barrier(tp, err);
}

void kvf_tp_abort(kvf_tp_t *tp) {
    if (tp) tp->ops->abort(tp);
}

int kvf_tp_check(kvf_tp_t *tp, kvf_err_t *err) { return tp && tp->ops->check ? tp->ops->check(tp, err) : 0; }

void kvf_tp_destroy(kvf_tp_t **self_p) {
    if (!self_p || !*self_p) return;
    (*self_p)->ops->destroy(self_p);
    *self_p = NULL;
}
