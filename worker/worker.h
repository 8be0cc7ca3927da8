// worker/worker.h — a kvf-worker process's body: the engine behind a DEALER
// socket speaking proto/PROTOCOL.md to the coordinator.
//
// Lifecycle (explicit states, see s_state in worker.c):
//
//   kvf_worker_new      makes the memory plan (loads the model, sizes the KV
//                       pool) and refuses an impossible one - before any socket
//                       exists
//   kvf_worker_run      REGISTERING --WELCOME--> READY --DRAIN--> DRAINING
//                         REGISTER every second until WELCOME; an ERROR reply
//                         before the first WELCOME is fatal (duplicate id, bad plan)
//                       READY/DRAINING: HEARTBEAT every heartbeat_ms; ASSIGN ->
//                         engine (READY only; DRAINING refuses with an error
//                         RESULT); CANCEL -> final RESULT "cancelled"; an ERROR
//                         "protocol" (the coordinator forgot us: it restarted or
//                         declared us dead, and re-dispatches our requests) ->
//                         our requests are dropped, REGISTERING again
//                       any state: SHUTDOWN or the stop flag -> every request
//                         ends with a final RESULT "cancelled"; run returns 0
//
// Between engine steps the socket is polled without blocking; with no work the
// loop blocks in zmq_poll until a message or the next timer.
#ifndef KVF_WORKER_H
#define KVF_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "common/error.h"
#include "worker/engine.h"

typedef struct {
    const char *model;        // model directory
    const char *coordinator;  // endpoint of the coordinator's back socket, e.g. tcp://host:5556
    const char *worker_id;    // NULL: "<hostname>:gpu<device>" (cuda) or "<hostname>:cpu-<pid>"
    kvf_engine_opts_t engine;
    // Added for tensor parallelism (worker/tp_group.h): tp_size ranks on this
    // host form group tp_group (a shm communicator, worker/tp.h). Rank 0 talks to
    // the coordinator, runs the scheduler and sends each step to the others;
    // ranks > 0 need no coordinator: kvf_worker_run serves the leader's steps
    // until it stops or the group fails. tp_size 0 or 1: no TP.
    // tp_timeout_ms: how long any rank waits for another (0 = 30 s).
    int32_t tp_size, tp_rank;
    const char *tp_group;
    int32_t tp_timeout_ms;
    // CURVE (deploy/SECURITY.md): our secret key file and the coordinator's
    // public key file; both NULL: a plain connection. Loaded by kvf_worker_new.
    const char *curve_secret;
    const char *coordinator_key;
} kvf_worker_opts_t;

typedef struct kvf_worker_s kvf_worker_t;

// Creates the engine and its memory plan; connects nothing. Returns a new worker
// owned by the caller, or NULL with err set (the engine's errors: a bad model,
// bad options, a plan that cannot hold one full-length sequence).
kvf_worker_t *kvf_worker_new(const kvf_worker_opts_t *opts, kvf_err_t *err);

// Frees the worker (socket, engine); accepts NULL; nulls *self_p.
void kvf_worker_destroy(kvf_worker_t **self_p);

// The memory plan as one printable paragraph (valid while the worker lives).
const char *kvf_worker_plan_text(const kvf_worker_t *w);

// The worker's id as sent in REGISTER.
const char *kvf_worker_id(const kvf_worker_t *w);

// Connects to the coordinator and serves until SHUTDOWN or *stop becomes
// non-zero (checked at least every 500 ms and whenever a signal interrupts the
// poll). Returns 0 on a clean stop; -1 with err set when the coordinator
// refused the registration or the socket failed.
int kvf_worker_run(kvf_worker_t *w, volatile sig_atomic_t *stop, kvf_err_t *err);

#endif
