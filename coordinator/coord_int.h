// coordinator/coord_int.h — what the coordinator's modules (coord.c, front.c,
// back.c, dispatch.c) share. Not for use outside coordinator/.
#ifndef KVF_COORD_INT_H
#define KVF_COORD_INT_H

#include <czmq.h>

#include "common/tokenizer.h"
#include "coordinator/auth.h"
#include "coordinator/coord.h"
#include "coordinator/journal.h"
#include "coordinator/placement.h"
#include "coordinator/queue.h"
#include "coordinator/registry.h"
#include "coordinator/reqtable.h"
#include "proto/msg.h"

struct kvf_coord_s {
    kvf_coord_cfg_t cfg;
    char *model_dir;              // owned copy (cfg.model_dir points here)
    zsock_t *front, *back;
    char *front_ep, *back_ep;     // bound endpoints, owned
    kvf_tokenizer_t *tok;         // NULL without --model
    kvf_registry_t *reg;
    kvf_affinity_t *aff;
    kvf_reqtable_t *reqs;
    kvf_queue_t *queue;
    uint64_t start_ms;
    uint64_t requests_done;
    kvf_batch_t **to_settle;      // batches a request of which completed, settled after each message
    uint32_t n_to_settle, cap_to_settle;
    int dirty;                    // something changed that may let queued work be placed
    int queue_stale;              // the queue may hold rids that are no longer QUEUED
    int in_pass;                  // kvf_coord_dispatch is walking the queue
    int shutdown;                 // an operator asked the coordinator to stop
    kvf_auth_t *auth;             // CURVE keys and zauth; NULL without --curve-secret
    uint32_t peer_roles;          // with auth: kvf_role bits of the sender of the message being handled
    const char *peer_key;         // with auth: its public key (Z85), valid while the message is handled
    kvf_journal_t *journal;       // NULL without --journal
    uint64_t journal_errors;
    uint64_t journal_commit_ms;   // when the journal was last committed
};

// ---- coord.c: messaging

// Encodes msg and sends it to the peer with this routing identity. 0, or -1
// with err set (KVF_E_PEER_LOST when that peer is gone; KVF_E_IO when it is not
// reading and its queue is full).
int kvf_coord_send(kvf_coord_t *c, zsock_t *sock, const void *ident, size_t ident_len, const kvf_msg_t *msg,
                   kvf_err_t *err);

// Sends ERROR {rid, code, message}; failures are logged only.
void kvf_coord_send_error(kvf_coord_t *c, zsock_t *sock, const void *ident, size_t ident_len, uint64_t rid,
                          kvf_status code, const char *message);

uint64_t kvf_coord_now(void);

// ---- coord_journal.c: the job journal (each a no-op without --journal)

// Opens the journal at path and takes back what it holds: unfinished requests
// queued, finished batches retained for ATTACH. 0, or -1 with err.
int kvf_coord_journal_open(kvf_coord_t *c, const char *path, kvf_err_t *err);
void kvf_coord_journal_batch(kvf_coord_t *c, const kvf_batch_t *b);  // a new batch with all its requests
void kvf_coord_journal_tokens(kvf_coord_t *c, const kvf_req_t *req, const int32_t *ids, uint32_t n,
                              const char *text, size_t text_len);
void kvf_coord_journal_finish(kvf_coord_t *c, const kvf_req_t *req);
// Commits what the last loop iterations wrote (one WAL append, no fsync), at
// most every few ms: a busy loop turns many tiny iterations into one commit.
void kvf_coord_journal_commit(kvf_coord_t *c);

// ---- front.c: clients and operators
void kvf_coord_front_handle(kvf_coord_t *c, const void *ident, size_t ident_len, kvf_msg_t *msg);

// ---- back.c: workers
void kvf_coord_back_handle(kvf_coord_t *c, const void *ident, size_t ident_len, kvf_msg_t *msg);

// ---- dispatch.c: placement, results to clients, failure handling

// Places what it can from the queue (front to back); finishes requests that
// can never fit anywhere with ERROR too_long.
void kvf_coord_dispatch(kvf_coord_t *c);

// Declares workers silent for dead_after_ms dead and takes their work back.
void kvf_coord_check_dead(kvf_coord_t *c, uint64_t now_ms);

// Declares worker idx dead (or restarted) and puts its unfinished requests back
// at the front of the queue, in rid order, to resume from the tokens delivered.
// With tell_worker, each is also CANCELled at the worker first (a REGISTER that
// was only a retry must not leave it running work the ledger no longer counts;
// a restarted worker ignores CANCEL of rids it does not have).
void kvf_coord_take_back(kvf_coord_t *c, int idx, const char *why, int tell_worker);

// Applies ev to req and performs the actions the state table names (ledger,
// queue, CANCEL to the worker, batch accounting). Returns 0, or -1 when the
// transition is illegal (req unchanged).
int kvf_coord_req_event(kvf_coord_t *c, kvf_req_t *req, kvf_req_event ev);

// Sends to req's client (marks its batch detached when that fails).
void kvf_coord_to_client(kvf_coord_t *c, kvf_req_t *req, const kvf_msg_t *msg);
void kvf_coord_to_batch(kvf_coord_t *c, kvf_batch_t *b, const kvf_msg_t *msg);

// Takes an ASSIGNED req back from its worker to the front of the queue (it
// resumes from the tokens delivered), or fails it with ERROR peer_lost once it
// has been taken back more than cfg.max_redispatch times (workers dying under
// it, refusing it: it may be what kills them).
void kvf_coord_requeue(kvf_coord_t *c, kvf_req_t *req, const char *why);

// Finishes req with an error (ERROR {rid, code, message} to its client).
void kvf_coord_fail(kvf_coord_t *c, kvf_req_t *req, kvf_status code, const char *message);

// Sends the terminal record of a finished req (DONE, or ERROR for a failed one).
void kvf_coord_send_final(kvf_coord_t *c, kvf_req_t *req);

// Marks b to be settled (released when complete and its client has everything,
// else retained for ATTACH) by kvf_coord_settle_all, which the loop calls
// between messages: handlers may keep using b until they return.
void kvf_coord_settle(kvf_coord_t *c, kvf_batch_t *b);
void kvf_coord_settle_all(kvf_coord_t *c);

// Drops rids that are no longer QUEUED from the queue (after cancels and failures).
void kvf_coord_compact_queue(kvf_coord_t *c);

// A request's size for placement: prompt + max_new_tokens.
static inline uint64_t kvf_coord_req_tokens(const kvf_req_t *r) {
    return (uint64_t)r->n_prompt + (uint64_t)(r->sampling.max_new_tokens > 0 ? r->sampling.max_new_tokens : 1);
}

// Tries to place one NEW or QUEUED request now. Returns 1 when it no longer
// waits (placed, or finished: too long, or every token already delivered), 0
// when it must wait for room.
int kvf_coord_place(kvf_coord_t *c, kvf_req_t *req);

// The largest token id + 1 that prompts may use (the smallest of the
// tokenizer's and the live workers' vocab sizes), or 0 when unknown.
uint32_t kvf_coord_vocab_limit(const kvf_coord_t *c);

#endif
