// client/libkvf.h — the kvfleet C client library: submit prompt batches to a
// kvf-coordinator, stream their results, and operate the cluster.
//
// A client owns one ZeroMQ DEALER socket connected to the coordinator's front
// endpoint; every message is a proto/msg.h message (msgpack, see
// proto/PROTOCOL.md). Requests are fire-and-stream: kvf_client_submit() returns
// once the coordinator has acknowledged the batch with one request id (rid) per
// request, and kvf_client_next() then yields TOKENS / DONE / ERROR events of
// every request of every batch this client submitted, in arrival order.
//
// Control calls (submit, attach, cancel, status, drain, shutdown) wait for
// their reply for at most the client's timeout (kvf_client_set_timeout, default
// 5000 ms). Result events that arrive while a control call waits are not lost:
// they are queued inside the client and handed out by the next kvf_client_next().
//
// A whole generation:
//
//   kvf_err_t err;
//   kvf_client_t *c = kvf_client_new("tcp://127.0.0.1:5555", &err);
//   kvf_request_t r = {.text = "Once upon a time", .sampling = kvf_sampling_default()};
//   uint64_t rid;
//   if (!c || kvf_client_submit(c, NULL, &r, 1, &rid, NULL, &err) < 0) { ...err.msg... }
//   kvf_event_t ev = {0};
//   while (kvf_client_next(c, -1, &ev, &err) == 0) {
//       if (ev.type == KVF_EVENT_TOKENS) fputs(ev.text, stdout);
//       if (ev.type != KVF_EVENT_TOKENS) break;   // DONE (or ERROR: ev.message)
//   }
//   kvf_event_clear(&ev);
//   kvf_client_destroy(&c);
//
// Thread-safety: a kvf_client_t is used by one thread at a time (ZeroMQ sockets
// are not thread-safe). Separate clients in separate threads are independent.
// All functions return 0 on success or -1 with *err filled (err may be NULL);
// nothing here exits or aborts on bad input or a bad peer.
//
// Signals: libkvf uses czmq, which installs a SIGINT/SIGTERM handler (setting
// zsys_interrupted) when the first socket is made; a blocking call then returns
// KVF_E_IO "interrupted". An application with its own handlers calls
// zsys_handler_set(NULL) before kvf_client_new.
#ifndef KVF_LIBKVF_H
#define KVF_LIBKVF_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/sampling.h"
#include "proto/msg.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVF_CLIENT_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define KVF_CLIENT_DEFAULT_TIMEOUT_MS 5000

typedef struct kvf_client_t kvf_client_t;

// One request of a batch. Exactly one of text (a NUL-terminated prompt that the
// coordinator tokenizes) and prompt_ids (n_prompt_ids > 0 token ids, used as
// given) is set. tag is the caller's id for the request (may be NULL); it is
// stored with the request and echoed nowhere else, the caller maps rids itself.
// The library only reads these fields during kvf_client_submit().
typedef struct {
    const char *tag;
    const char *text;
    const int32_t *prompt_ids;
    size_t n_prompt_ids;
    kvf_sampling_t sampling;
} kvf_request_t;

typedef enum {
    KVF_EVENT_NONE = 0,
    KVF_EVENT_TOKENS = 1,  // a chunk of generated tokens of request rid
    KVF_EVENT_DONE = 2,    // request rid finished (always its last event unless an ERROR came)
    KVF_EVENT_ERROR = 3,   // request rid failed (its last event), or rid == 0: a whole-message error
} kvf_event_type;

// One result event. The pointers (ids, text, message) point into storage the
// event owns; release it with kvf_event_clear(). text and message are
// NUL-terminated (possibly empty), never NULL on a filled event.
typedef struct {
    kvf_event_type type;
    uint64_t rid;
    // TOKENS
    const int32_t *ids;
    uint32_t n_ids;
    const char *text;
    // DONE
    kvf_finish_reason finish_reason;
    uint32_t prompt_tokens, completion_tokens;
    // ERROR
    kvf_status code;
    const char *message;
    kvf_msg_t msg_;  // private: the decoded message that owns the storage
} kvf_event_t;

// One worker as the coordinator sees it (strings owned by the status struct).
typedef struct {
    char *worker_id;
    char *group_id;
    char *backend;             // "cpu" | "cuda"
    char *model;
    int32_t device;            // GPU index, -1 for cpu
    uint32_t tp_rank, tp_size;
    uint32_t block_size;       // tokens per KV block
    kvf_msg_heartbeat_t load;  // last reported load; load.state is a kvf_wstate
    kvf_plan_t plan;           // its start-up memory plan
    uint32_t assigned;         // requests placed there and not yet finished
    uint64_t last_seen_ms;     // ms since the coordinator last heard from it
} kvf_worker_info_t;

// The cluster status (a decoded STATUS_REPLY), owned by the caller.
typedef struct {
    kvf_worker_info_t *workers;
    uint32_t n_workers;
    uint32_t queue_len;        // requests the coordinator holds because nothing fits yet
    uint32_t queue_cap;
    uint64_t requests_done;
    uint64_t uptime_ms;
} kvf_cluster_status_t;

// Connects to a coordinator's front endpoint (e.g. "tcp://127.0.0.1:5555";
// NULL means KVF_CLIENT_DEFAULT_ENDPOINT). Connecting is lazy in ZeroMQ: an
// unreachable coordinator shows up as KVF_E_TIMEOUT on the first call that
// waits for a reply. Returns a new client owned by the caller, or NULL with err
// set (KVF_E_INVAL for a malformed endpoint, KVF_E_IO otherwise).
kvf_client_t *kvf_client_new(const char *endpoint, kvf_err_t *err);

// As kvf_client_new, encrypted and authenticated with CURVE (deploy/SECURITY.md):
// secret_path is our key pair's secret file (from `kvfctl keygen`, NAME_secret),
// coordinator_key_path the coordinator's public key file. Both NULL: plain, as
// kvf_client_new. A coordinator that does not know our key never answers: calls
// end in KVF_E_TIMEOUT. NULL with err set when a key file cannot be loaded.
kvf_client_t *kvf_client_new_curve(const char *endpoint, const char *secret_path, const char *coordinator_key_path,
                                   kvf_err_t *err);

// Closes the socket (unsent messages are dropped) and frees the client and its
// queued events. Accepts NULL and *self_p == NULL; sets *self_p to NULL.
void kvf_client_destroy(kvf_client_t **self_p);

// How long control calls wait for their reply, in ms (>= 1).
void kvf_client_set_timeout(kvf_client_t *self, int timeout_ms);

// The endpoint the client connected to (owned by the client).
const char *kvf_client_endpoint(const kvf_client_t *self);

// Submits n >= 1 requests as one batch and waits for the ACK. batch_id names
// the batch for kvf_client_attach / kvf_client_cancel (NULL or "": the
// coordinator picks one); an id already in use is refused (KVF_E_INVAL). A
// request the coordinator cannot take (invalid for the model, too long, its
// queue full: KVF_E_BUSY) still gets a rid and then an ERROR event. On success rids[0..n-1] (caller storage of n entries)
// receive the request ids in order, and when batch_id_out is not NULL
// *batch_id_out is a new string (free()) with the batch's id. Errors:
// KVF_E_INVAL (a request without a prompt, or invalid sampling — checked before
// anything is sent), KVF_E_TIMEOUT (no reply), or the coordinator's refusal of
// the whole message (e.g. KVF_E_TOO_LONG past its --max-batch, KVF_E_FORMAT)
// with its message.
int kvf_client_submit(kvf_client_t *self, const char *batch_id, const kvf_request_t *reqs, size_t n,
                      uint64_t *rids, char **batch_id_out, kvf_err_t *err);

// Re-attaches to a batch by id (e.g. after a client restart): the coordinator
// re-sends, to this client, every result of the batch so far (each unfinished
// request's tokens as one TOKENS event, then DONE/ERROR of finished ones) and
// streams the rest here; events of those requests that this client had
// received but not yet handed out are dropped, as the re-sent ones include them.
// On
// success *rids is a new array (free()) of the batch's request ids in
// submission order and *n_rids its length. KVF_E_NOT_FOUND when no such batch.
int kvf_client_attach(kvf_client_t *self, const char *batch_id, uint64_t **rids, size_t *n_rids,
                      kvf_err_t *err);

// Waits up to timeout_ms (0: do not wait; < 0: wait forever) for the next
// result event and fills *ev (which must be zeroed or cleared; it is cleared
// first). Returns 0 with an event; -1 with KVF_E_TIMEOUT when none came in
// time; -1 with KVF_E_FORMAT / KVF_E_PROTO when the coordinator sent something
// undecodable or unexpected (the message is dropped; the client stays usable);
// -1 with KVF_E_IO on a socket failure (or when interrupted by a signal).
int kvf_client_next(kvf_client_t *self, int timeout_ms, kvf_event_t *ev, kvf_err_t *err);

// Releases what an event owns and zeroes it. Safe on a zeroed event.
void kvf_event_clear(kvf_event_t *ev);

// Cancels one request (rid != 0) or, with rid == 0, every unfinished request of
// batch batch_id, and waits for the coordinator's OK. Cancelled requests end
// with a DONE event whose finish_reason is KVF_FINISH_CANCELLED. KVF_E_NOT_FOUND
// when there is no such request or batch (or it finished and was delivered).
int kvf_client_cancel(kvf_client_t *self, uint64_t rid, const char *batch_id, kvf_err_t *err);

// Asks for the cluster status. On success *out is a new status owned by the
// caller (kvf_cluster_status_destroy).
int kvf_client_status(kvf_client_t *self, kvf_cluster_status_t **out, kvf_err_t *err);

// Frees a status and nulls the caller's pointer; accepts NULL.
void kvf_cluster_status_destroy(kvf_cluster_status_t **self_p);

// Name of a worker state: "ready", "draining", "dead", "starting", or "unknown".
const char *kvf_wstate_name(uint32_t state);

// Drains a worker (or TP group) by id: it finishes its current work and gets
// nothing new. Waits for OK; KVF_E_NOT_FOUND for an unknown worker.
int kvf_client_drain(kvf_client_t *self, const char *worker_id, kvf_err_t *err);

// Shuts the whole cluster down (coordinator and workers). Waits for OK.
int kvf_client_shutdown(kvf_client_t *self, kvf_err_t *err);

#ifdef __cplusplus
}
#endif

#endif
