// coordinator/registry.h — the coordinator's table of workers (TP group leaders)
// and the block ledger that placement reads.
//
// Per worker the registry keeps what REGISTER said (block size, total blocks,
// plan), the newest load report, and two numbers that make placement safe:
//   promised — the need of assignments sent after the newest report that the
//              report cannot have seen yet (free − promised is what is really left);
//   ledger   — the need of every request outstanding there (never more than
//              total − watermark, so a worker never has to preempt for placement).
// A report "has seen" an assignment when the worker has sent a RESULT for it or
// for a later one (ZeroMQ keeps the order on one connection): a per-worker FIFO of
// unseen assignments (by sequence number) is popped up to the newest rid reported.
//
// Workers are never removed (dead ones stay for STATUS); indices are stable.
// Nothing here does I/O: it is plain data, unit-tested on its own.
#ifndef KVF_COORD_REGISTRY_H
#define KVF_COORD_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "proto/msg.h"

#define KVF_REGISTRY_MAX_WORKERS 4096
#define KVF_REGISTRY_MAX_IDENT 256

typedef struct {
    uint64_t seq;   // assignment sequence number on this worker
    uint64_t rid;
    uint32_t need;  // blocks
} kvf_unseen_t;

typedef struct {
    char *worker_id, *group_id, *backend, *model;  // owned
    uint8_t ident[KVF_REGISTRY_MAX_IDENT];         // ROUTER identity on the back socket
    size_t ident_len;
    int32_t device;
    uint32_t tp_rank, tp_size;
    uint32_t block_size, total_blocks;
    uint32_t vocab_size, session_len, max_batch_size, prefix_caching;
    kvf_plan_t plan;
    kvf_msg_heartbeat_t load;   // newest heartbeat; free/total_blocks follow every report
    kvf_wstate state;           // READY, DRAINING or DEAD
    uint32_t generation;        // bumped on every (re-)registration
    uint32_t reported_free;     // free_blocks of the newest report
    uint32_t promised;          // need of assignments the newest report has not seen
    uint64_t ledger;            // need of every request outstanding here
    uint32_t outstanding;       // number of those requests
    uint64_t next_seq;
    kvf_unseen_t *unseen;       // FIFO by seq, owned
    uint32_t n_unseen, cap_unseen;
    uint64_t last_seen_ms;      // monotonic ms of its newest message
} kvf_cworker_t;

typedef struct {
    kvf_cworker_t **w;  // owned, stable indices
    uint32_t n, cap;
} kvf_registry_t;

// A new empty registry owned by the caller.
kvf_registry_t *kvf_registry_new(void);

// Frees the registry and its workers; accepts NULL; nulls *self_p.
void kvf_registry_destroy(kvf_registry_t **self_p);

// Index of the worker with this id, or -1.
int kvf_registry_find(const kvf_registry_t *reg, const char *worker_id);

// Index of the worker whose routing identity is these bytes, or -1. Dead
// workers are found too (the caller decides what to tell them).
int kvf_registry_find_ident(const kvf_registry_t *reg, const void *ident, size_t len);

// Checks a REGISTER body: 0, or -1 with err (KVF_E_INVAL) naming the bad field.
int kvf_registry_check(const kvf_msg_register_t *r, kvf_err_t *err);

// Adds the worker or, when its worker_id is known, re-registers it: fields are
// replaced, the ledger and the unseen FIFO are cleared (the caller must first
// take back the requests that were outstanding there), the state becomes READY
// and the REGISTER's free_blocks is the newest report. Returns its index, or -1
// with err set (bad body, identity too long, registry full).
int kvf_registry_upsert(kvf_registry_t *reg, const kvf_msg_register_t *r, const void *ident,
                        size_t ident_len, uint64_t now_ms, kvf_err_t *err);

// One request of `need` blocks was assigned there: promised and ledger grow, the
// assignment joins the unseen FIFO. Returns its sequence number.
uint64_t kvf_registry_note_assign(kvf_cworker_t *w, uint64_t rid, uint32_t need);

// A load report arrived (HEARTBEAT: seen_rid 0; RESULT: its rid). Sets the
// reported free blocks; when seen_rid is in the unseen FIFO, it and every earlier
// assignment leave it; promised becomes the need of what is still unseen.
void kvf_registry_note_report(kvf_cworker_t *w, uint32_t free_blocks, uint64_t seen_rid);

// A request of `need` blocks left the worker (finished, cancelled, moved): the
// ledger shrinks. The unseen FIFO is untouched: blocks a report has not seen
// stay promised until one does.
void kvf_registry_note_release(kvf_cworker_t *w, uint32_t need);

// Forgets everything outstanding (worker dead or restarted): ledger, promised
// and the unseen FIFO go to zero.
void kvf_registry_clear_ledger(kvf_cworker_t *w);

// Blocks free for new work now: reported free − promised (0 when negative).
uint32_t kvf_registry_avail(const kvf_cworker_t *w);

// 1 when new work may be placed there: READY, the group's leader (rank 0), with a pool.
int kvf_registry_placeable(const kvf_cworker_t *w);

#endif
