// coordinator/queue.c — see queue.h. A growable ring buffer.
#include "coordinator/queue.h"

#include <stdlib.h>

#include "common/alloc.h"

kvf_queue_t *kvf_queue_new(uint32_t cap) {
    kvf_queue_t *q = kvf_xcalloc(1, sizeof *q);
    q->cap = cap;
    q->cap_ring = 64;
    q->ring = kvf_xmalloc(q->cap_ring * sizeof *q->ring);
    return q;
}

void kvf_queue_destroy(kvf_queue_t **self_p) {
    if (!self_p || !*self_p) return;
    free((*self_p)->ring);
    free(*self_p);
    *self_p = NULL;
}

static void s_grow(kvf_queue_t *q) {
    if (q->len < q->cap_ring) return;
    uint32_t ncap = q->cap_ring * 2;
    kvf_qentry_t *nr = kvf_xmalloc((size_t)ncap * sizeof *nr);
    for (uint32_t i = 0; i < q->len; i++) nr[i] = q->ring[(q->head + i) & (q->cap_ring - 1)];
    free(q->ring);
    q->ring = nr;
    q->cap_ring = ncap;
    q->head = 0;
}

int kvf_queue_push_back(kvf_queue_t *q, uint64_t rid, uint64_t tokens) {
    if (q->len >= q->cap) return -1;
    s_grow(q);
    q->ring[(q->head + q->len) & (q->cap_ring - 1)] = (kvf_qentry_t){rid, tokens};
    q->len++;
    return 0;
}

void kvf_queue_push_front(kvf_queue_t *q, uint64_t rid, uint64_t tokens) {
    s_grow(q);
    q->head = (q->head + q->cap_ring - 1) & (q->cap_ring - 1);
    q->ring[q->head] = (kvf_qentry_t){rid, tokens};
    q->len++;
}

uint64_t kvf_queue_at(const kvf_queue_t *q, uint32_t i) { return q->ring[(q->head + i) & (q->cap_ring - 1)].rid; }

uint32_t kvf_queue_filter(kvf_queue_t *q, kvf_queue_fn fn, void *ctx) {
    uint32_t mask = q->cap_ring - 1, out = 0, i = 0;
    int stop = 0;
    for (; i < q->len; i++) {
        if (stop && out == i) {  // nothing removed so far: the rest stays where it is
            out = q->len;
            break;
        }
        kvf_qentry_t e = q->ring[(q->head + i) & mask];
        int r = stop ? 0 : fn(&e, ctx);
        if (r < 0) {
            stop = 1;
            r = 0;
        }
        if (r == 0) q->ring[(q->head + out++) & mask] = e;
    }
    uint32_t removed = q->len - out;
    q->len = out;
    return removed;
}
