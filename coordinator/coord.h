// coordinator/coord.h — the kvf-coordinator process as an object: two ROUTER
// sockets (front for clients and operators, back for workers), the registry of
// workers, placement by free KV blocks, the request table and the queue.
// The wire protocol is proto/PROTOCOL.md; the design is ../shared/DESIGN.md.
#ifndef KVF_COORD_COORD_H
#define KVF_COORD_COORD_H

#include <signal.h>
#include <stdint.h>

#include "common/error.h"

typedef struct {
    const char *front;            // client endpoint to bind (tcp://host:port, tcp://host:*, ipc://path)
    const char *back;             // worker endpoint to bind
    const char *model_dir;        // DIR with tokenizer.json, or NULL: text prompts are refused
    uint32_t heartbeat_ms;        // told to workers in WELCOME
    uint32_t dead_after_ms;       // silence after which a worker is dead
    uint32_t queue_cap;           // requests the coordinator holds while nothing fits
    uint32_t watermark;           // blocks kept free on every worker
    uint32_t max_batch;           // requests in one SUBMIT
    uint32_t max_prompt_tokens;   // tokens in one prompt
    int64_t max_msg_size;         // bytes in one message; bigger ones get ERROR (or, past 2x, a dropped connection)
    uint32_t max_retained;        // finished batches kept for ATTACH after their client went away
    uint32_t max_redispatch;      // a request taken back from workers more often than this fails
    uint32_t max_new_tokens;      // output tokens one request may ask for (more: ERROR too_long)
    const char *curve_secret;     // the coordinator's CURVE secret key file; NULL: plain sockets
    const char *worker_keys;      // with curve_secret: directories of allowed public keys, per role
    const char *client_keys;      //   (coordinator/auth.h); NULL: none of that role
    const char *operator_keys;
    const char *journal;          // SQLite job journal to resume from and write (NULL: none)
} kvf_coord_cfg_t;

typedef struct kvf_coord_s kvf_coord_t;

// The defaults of the CLI.
void kvf_coord_cfg_default(kvf_coord_cfg_t *cfg);

// Binds both sockets and loads the tokenizer. Returns a new coordinator owned by
// the caller, or NULL with err set (bad config, bind failure, tokenizer load).
kvf_coord_t *kvf_coord_new(const kvf_coord_cfg_t *cfg, kvf_err_t *err);

// Frees; accepts NULL; nulls *self_p.
void kvf_coord_destroy(kvf_coord_t **self_p);

// The endpoints actually bound (wildcard ports resolved). Owned by the coordinator.
const char *kvf_coord_front_endpoint(const kvf_coord_t *c);
const char *kvf_coord_back_endpoint(const kvf_coord_t *c);

// Serves until *stop becomes non-zero (a signal) or an operator sends SHUTDOWN.
// Returns 0 then; -1 with err set when the sockets fail.
int kvf_coord_run(kvf_coord_t *c, volatile sig_atomic_t *stop, kvf_err_t *err);

#endif
