// coordinator/queue.h — the coordinator's own FIFO of request ids waiting for
// room on some worker. Each entry carries the request's size (prompt + new
// tokens) so that a pass over the queue can skip what cannot fit without
// looking the request up. New requests join at the back and are refused past the
// capacity (the client gets ERROR busy); requests taken back from a dead worker
// rejoin at the front, capacity or not (they were accepted already).
#ifndef KVF_COORD_QUEUE_H
#define KVF_COORD_QUEUE_H

#include <stdint.h>

typedef struct {
    uint64_t rid;
    uint64_t tokens;  // prompt + max_new_tokens
} kvf_qentry_t;

typedef struct {
    kvf_qentry_t *ring;  // owned; capacity cap_ring (a power of two)
    uint32_t cap_ring;
    uint32_t head;    // index of the first element
    uint32_t len;
    uint32_t cap;     // bound for push_back
} kvf_queue_t;

// A new empty queue accepting up to cap requests at the back. Owned by the caller.
kvf_queue_t *kvf_queue_new(uint32_t cap);

// Frees; accepts NULL; nulls *self_p.
void kvf_queue_destroy(kvf_queue_t **self_p);

// Appends rid of this size: 0, or -1 when the queue already holds cap requests.
int kvf_queue_push_back(kvf_queue_t *q, uint64_t rid, uint64_t tokens);

// Prepends rid (beyond the cap if need be).
void kvf_queue_push_front(kvf_queue_t *q, uint64_t rid, uint64_t tokens);

// The i-th rid from the front (i < len).
uint64_t kvf_queue_at(const kvf_queue_t *q, uint32_t i);

// Visits the entries front to back. fn returns 1 to remove the entry, 0 to keep
// it, -1 to keep it and stop (the rest is kept, in order). fn must not touch q.
// Returns the number removed.
typedef int (*kvf_queue_fn)(const kvf_qentry_t *e, void *ctx);
uint32_t kvf_queue_filter(kvf_queue_t *q, kvf_queue_fn fn, void *ctx);

#endif
