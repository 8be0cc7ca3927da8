// coordinator/reqtable.h — requests and batches the coordinator knows, and the
// request lifecycle as an explicit state table.
//
//   state \ event  ENQUEUE   PLACE     REQUEUE   FINISH     CANCEL             FAIL
//   NEW            QUEUED    ASSIGNED  -         -          -                  FINISHED
//   QUEUED         -         ASSIGNED  -         FINISHED   FINISHED(unqueue)  FINISHED(unqueue)
//   ASSIGNED       -         -         QUEUED    FINISHED   FINISHED(release,  FINISHED(release)
//                                      (release) (release)   forward cancel)
//   FINISHED       -         -         -         -          -                  -
// ("-": illegal, refused). Each legal transition names the actions the caller
// performs (kvf_req_action flags): give back ledger blocks, drop it from the
// queue, forward CANCEL to its worker, count it finished in its batch.
//
// A request keeps every token delivered (they are the resume_ids of a
// re-dispatch and what ATTACH re-sends) until its batch is released. A batch is
// released when it is complete and its client has everything; one whose client
// went away is retained for ATTACH, at most max_retained of them (oldest out).
#ifndef KVF_COORD_REQTABLE_H
#define KVF_COORD_REQTABLE_H

#include <czmq.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/sampling.h"

typedef enum {
    KVF_REQ_NEW = 0,
    KVF_REQ_QUEUED = 1,
    KVF_REQ_ASSIGNED = 2,
    KVF_REQ_FINISHED = 3,
    KVF_REQ_STATE_COUNT
} kvf_req_state;

typedef enum {
    KVF_REQ_EV_ENQUEUE = 0,  // nothing fits now: wait in the coordinator's queue
    KVF_REQ_EV_PLACE = 1,    // ASSIGN sent to a worker
    KVF_REQ_EV_REQUEUE = 2,  // its worker died or restarted: back to the front of the queue
    KVF_REQ_EV_FINISH = 3,   // final RESULT (stop, length), or every token already delivered
    KVF_REQ_EV_CANCEL = 4,   // a client or operator cancelled it
    KVF_REQ_EV_FAIL = 5,     // invalid, too long, busy, or the worker reported an error
    KVF_REQ_EV_COUNT
} kvf_req_event;

typedef enum {
    KVF_REQ_ACT_NONE = 0,
    KVF_REQ_ACT_RELEASE = 1,         // give its blocks back to its worker's ledger
    KVF_REQ_ACT_UNQUEUE = 2,         // drop it from the coordinator's queue
    KVF_REQ_ACT_FORWARD_CANCEL = 4,  // send CANCEL to its worker
    KVF_REQ_ACT_COMPLETE = 8,        // terminal now: count it finished in its batch
    KVF_REQ_ACT_REQUEUE = 16,        // put it back at the front of the queue
} kvf_req_action;

typedef struct kvf_batch_s kvf_batch_t;

typedef struct {
    uint64_t rid;
    kvf_req_state state;
    kvf_batch_t *batch;        // owner
    uint32_t index;            // position in the batch
    char *tag;                 // owned; client's custom id (may be "")
    int32_t *prompt;           // (n_prompt) owned token ids
    uint32_t n_prompt;
    kvf_sampling_t sampling;
    int32_t *out;              // (n_out) owned: every token delivered so far
    uint32_t n_out, cap_out;
    char *text;                // (text_len) owned: their text, NUL-terminated
    size_t text_len, text_cap;
    int worker;                // registry index while ASSIGNED, else -1
    uint32_t worker_gen;       // that worker's registration generation
    uint32_t need;             // blocks held in that worker's ledger
    uint32_t redispatches;
    uint32_t finish_reason;    // kvf_finish_reason once FINISHED
    uint32_t error_code;       // kvf_status when finish_reason is ERROR
    char *error;               // owned message when finish_reason is ERROR
} kvf_req_t;

struct kvf_batch_s {
    char *id;                  // owned
    uint8_t client[256];       // ROUTER identity of the client it streams to
    size_t client_len;
    int client_ok;             // 0 once a send to the client failed (gone or not reading)
    kvf_req_t **reqs;          // (n) owned
    uint32_t n;
    uint32_t n_finished;
    int retained;              // complete but the client has not got everything
    int settle_pending;        // the coordinator will call kvf_reqtable_settle on it
    char owner[41];            // with CURVE: the key (Z85) that submitted it; "": any client
};

typedef struct {
    zhashx_t *by_rid;          // rid -> kvf_req_t* (borrowed; batches own requests)
    zhashx_t *batches;         // id -> kvf_batch_t* (owned)
    kvf_batch_t **retained;    // complete batches kept for ATTACH, oldest first
    uint32_t n_retained, max_retained;
    uint64_t next_rid;
    uint64_t next_batch;
    // Called with each batch just before it is freed (released or evicted),
    // e.g. to forget it in the journal. NULL: nothing.
    void (*on_release)(void *ctx, const kvf_batch_t *b);
    void *on_release_ctx;
} kvf_reqtable_t;

// A new empty table; rids start at 1. Owned by the caller.
kvf_reqtable_t *kvf_reqtable_new(uint32_t max_retained);

// Frees every batch and request; accepts NULL; nulls *self_p.
void kvf_reqtable_destroy(kvf_reqtable_t **self_p);

// The legal transition for (state, event): 0 with *next and *actions set, or -1.
int kvf_req_transition(kvf_req_state state, kvf_req_event ev, kvf_req_state *next, unsigned *actions);

// Applies ev to req: 0 and *actions (may be NULL) on a legal transition, -1 (req
// unchanged) otherwise. Completing a request counts it in its batch.
int kvf_req_apply(kvf_req_t *req, kvf_req_event ev, unsigned *actions);

// Names for logs ("QUEUED", "PLACE").
const char *kvf_req_state_name(kvf_req_state s);
const char *kvf_req_event_name(kvf_req_event e);

// A new batch of n requests for client ident (up to 256 bytes). id NULL or ""
// picks a fresh id. Returns the batch (owned by the table) or NULL with err set
// (KVF_E_INVAL: id in use or too long, identity too long). The requests are then
// added with kvf_reqtable_add, exactly n of them.
kvf_batch_t *kvf_reqtable_batch_new(kvf_reqtable_t *t, const char *id, const void *ident, size_t ident_len,
                                    uint32_t n, kvf_err_t *err);

// Adds the next request of batch b (NEW, with a fresh rid). Takes ownership of
// *prompt_p (n_prompt ids; nulled). Returns the request (owned by the batch).
kvf_req_t *kvf_reqtable_add(kvf_reqtable_t *t, kvf_batch_t *b, const char *tag, int32_t **prompt_p,
                            uint32_t n_prompt, const kvf_sampling_t *sampling);

// Puts back a request read from the journal: like kvf_reqtable_add, but at
// position idx of b (free, < b->n) with the given rid (not in the table);
// next_rid moves above it. Returns the request (NEW, owned by the batch).
kvf_req_t *kvf_reqtable_restore(kvf_reqtable_t *t, kvf_batch_t *b, uint64_t rid, uint32_t idx, const char *tag,
                                int32_t **prompt_p, uint32_t n_prompt, const kvf_sampling_t *sampling);

// The request with this rid, or NULL.
kvf_req_t *kvf_reqtable_get(const kvf_reqtable_t *t, uint64_t rid);

// The batch with this id, or NULL.
kvf_batch_t *kvf_reqtable_batch(const kvf_reqtable_t *t, const char *id);

// Appends delivered tokens and their text to req.
void kvf_req_append(kvf_req_t *req, const int32_t *ids, uint32_t n, const char *text, size_t text_len);

// Records why req failed (message copied).
void kvf_req_set_error(kvf_req_t *req, uint32_t code, const char *msg);

// Called when a batch's client may have everything: releases a complete batch
// whose client got every message, or retains one whose client did not (evicting
// the oldest retained beyond max_retained). Does nothing to an incomplete batch.
// Returns 1 when b was released (b is then invalid), 0 otherwise.
int kvf_reqtable_settle(kvf_reqtable_t *t, kvf_batch_t *b);

// Number of requests in the table.
size_t kvf_reqtable_size(const kvf_reqtable_t *t);

#endif
