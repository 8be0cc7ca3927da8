// worker/tp.h — the tensor-parallel communicator of one TP group (kvf_tp_t).
//
// A group is T ranks, one process each. Every collective is called by every rank
// in the same order (as with MPI/NCCL). Two implementations:
//   shm   CPU processes on one host: a shared-memory segment named by the group
//         id (shm_open + mmap), a futex barrier, robust mutexes for liveness.
//         all_reduce_sum buffers are host memory.
//   nccl  one GPU per rank (ncclCommInitRank with a unique id that the caller
//         carries to the ranks, e.g. over the worker sockets). all_reduce_sum
//         buffers are device memory (enqueued on the communicator's stream, which
//         kvf_tp_nccl_set_stream may replace); the small-buffer collectives take
//         host memory and stage it through a device buffer.
//
// Determinism: all_reduce_sum gives every rank bitwise identical results. The shm
// communicator adds the ranks' values in rank order (((r0 + r1) + r2) + ...), so
// the result also does not depend on timing.
//
// Failure: no call waits forever. Every wait gives up after the timeout and
// returns KVF_E_PEER_LOST; a rank that sees a dead peer or a timeout marks the
// group aborted, so the others fail too (the group goes down as one). Once a
// collective has failed, the communicator is unusable: destroy it.
#ifndef KVF_TP_H
#define KVF_TP_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define KVF_TP_MAX_SIZE 64             // ranks per group
#define KVF_TP_GROUP_MAX 64            // bytes of a group id, NUL included
#define KVF_TP_DEFAULT_TIMEOUT_MS 30000
#define KVF_TP_NCCL_ID_BYTES 128       // == NCCL_UNIQUE_ID_BYTES

typedef struct kvf_tp_s kvf_tp_t;

typedef struct {
    const char *name;  // "shm", "nccl"
    int (*all_reduce_sum)(kvf_tp_t *tp, float *buf, size_t n, kvf_err_t *err);
    int (*all_gather)(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, kvf_err_t *err);
    int (*broadcast)(kvf_tp_t *tp, void *buf, size_t bytes, int root, kvf_err_t *err);
    int (*barrier)(kvf_tp_t *tp, kvf_err_t *err);
    void (*abort)(kvf_tp_t *tp);
    void (*destroy)(kvf_tp_t **self_p);
    int (*check)(kvf_tp_t *tp, kvf_err_t *err);
} kvf_tp_ops_t;

// The part every implementation shares; implementations embed it first.
struct kvf_tp_s {
    const kvf_tp_ops_t *ops;
    int32_t rank, size;
    int32_t timeout_ms;  // per wait
};

// ---------------------------------------------------------------- the calls

// This rank (0..size-1) and the group size; 0 and 1 for NULL (no TP).
int32_t kvf_tp_rank(const kvf_tp_t *tp);
int32_t kvf_tp_size(const kvf_tp_t *tp);

// buf[0..n) = the sum over the ranks of every rank's buf[0..n), in place.
// Returns 0, or -1 with err set (KVF_E_PEER_LOST: a rank died, timed out or aborted).
int kvf_tp_all_reduce_sum(kvf_tp_t *tp, float *buf, size_t n, kvf_err_t *err);

// recv (size * bytes, host memory) = every rank's send (bytes) in rank order.
int kvf_tp_all_gather(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, kvf_err_t *err);

// buf (bytes, host memory) on every rank = root's buf.
int kvf_tp_broadcast(kvf_tp_t *tp, void *buf, size_t bytes, int root, kvf_err_t *err);

// *v = the minimum (resp. maximum) over the ranks of *v (via all_gather).
int kvf_tp_all_reduce_min_i64(kvf_tp_t *tp, int64_t *v, kvf_err_t *err);
int kvf_tp_all_reduce_max_i64(kvf_tp_t *tp, int64_t *v, kvf_err_t *err);

// Returns when every rank has called it, or -1 with err (KVF_E_PEER_LOST).
int kvf_tp_barrier(kvf_tp_t *tp, kvf_err_t *err);

// Marks the group failed: every rank's pending and later collectives return
// KVF_E_PEER_LOST soon (shm: at once; nccl: ncclCommAbort). Safe from any thread.
void kvf_tp_abort(kvf_tp_t *tp);

// Looks, without waiting, for a reason the group cannot go on: it was aborted, or
// (shm) a peer died or left; then marks it aborted and returns -1 with
// KVF_E_PEER_LOST. Returns 0 while it looks whole (and for NULL). Cheap (a few
// atomic loads and trylocks), safe from any thread: an NCCL communicator made over
// a control group polls it while it waits, so a dead peer process fails the step
// at once instead of after the timeout.
int kvf_tp_check(kvf_tp_t *tp, kvf_err_t *err);

// Frees the communicator (does not abort the group); accepts NULL; nulls *self_p.
void kvf_tp_destroy(kvf_tp_t **self_p);

// ---------------------------------------------------------------- shm

typedef struct {
    int32_t timeout_ms;   // per wait; 0 = KVF_TP_DEFAULT_TIMEOUT_MS
    size_t slot_bytes;    // exchange buffer per rank; larger transfers go in chunks; 0 = 4 MiB
    // joining: ranks start at different times (a launcher starts them one by one, a
    // loaded host is slow to exec), so 0 = the larger of timeout_ms and
    // KVF_TP_JOIN_TIMEOUT_MS; > 0: exactly that
    int32_t join_timeout_ms;
} kvf_tp_shm_opts_t;
#define KVF_TP_JOIN_TIMEOUT_MS 30000

// Joins (rank 0: creates) the shm group `group` (letters, digits, '-', '_', '.';
// at most KVF_TP_GROUP_MAX - 1 bytes; the segment is "/kvf-tp-<group>"), and
// waits until all `size` ranks have joined. Rank 0 removes the name once all have
// joined, so nothing is left behind. Group ids must be unique per launch.
// The calling thread holds this rank's liveness lock: it must outlive the
// communicator (create it on the thread that runs the process, not a short-lived one).
// opts may be NULL. Returns a new communicator owned by the caller, or NULL with
// err set (KVF_E_INVAL: bad arguments; KVF_E_PEER_LOST: the group did not form
// within the join timeout or a rank of this number is already present; KVF_E_IO).
kvf_tp_t *kvf_tp_shm_new(const char *group, int32_t rank, int32_t size, const kvf_tp_shm_opts_t *opts,
                         kvf_err_t *err);

// ---------------------------------------------------------------- nccl (KVF_HAVE_CUDA builds, kvf_tp_nccl)

// Makes a new NCCL unique id (rank 0 does this and sends the bytes to the others).
int kvf_tp_nccl_unique_id(uint8_t id[KVF_TP_NCCL_ID_BYTES], kvf_err_t *err);

// ncclCommInitRank on `device` (made current on the calling thread) with a
// non-blocking config, so that initialisation and every collective can time out
// (timeout_ms, 0 = default): on timeout or an async error the communicator is
// aborted (ncclCommAbort) and the call returns KVF_E_PEER_LOST. Creates its own
// stream. Returns a new communicator owned by the caller, or NULL with err set.
kvf_tp_t *kvf_tp_nccl_new(const uint8_t id[KVF_TP_NCCL_ID_BYTES], int32_t rank, int32_t size, int32_t device,
                          int32_t timeout_ms, kvf_err_t *err);

// The same, with the unique id made by rank 0 of ctl (a group of the same ranks,
// e.g. the shm one) and broadcast over it; the device is `device` on every rank
// (a worker passes its --device). A rank that cannot make or join the
// communicator makes the others fail too. Returns a new communicator owned by
// the caller (ctl stays the caller's and must outlive it: its waits poll
// kvf_tp_check(ctl), so a peer process that dies fails them in about a millisecond),
// or NULL with err set.
kvf_tp_t *kvf_tp_nccl_new_over(kvf_tp_t *ctl, int32_t device, int32_t timeout_ms, kvf_err_t *err);

// The ncclComm_t and cudaStream_t (as void *) for a backend that enqueues its own
// collectives; NULL when tp is not an nccl communicator.
void *kvf_tp_nccl_comm(kvf_tp_t *tp);
void *kvf_tp_nccl_stream(kvf_tp_t *tp);

// For a backend that runs a whole step on its own stream: enqueues the sum
// over the ranks of buf (device, count float32, in place) on `stream` (a
// cudaStream_t) and returns once NCCL has enqueued it, without waiting for it
// to run (so collectives and kernels interleave on the stream, as in Megatron).
// Returns 0, or -1 with err (KVF_E_INVAL: not an nccl communicator;
// KVF_E_PEER_LOST: the communicator failed or was aborted).
int kvf_tp_nccl_all_reduce_enqueue(kvf_tp_t *tp, float *buf, size_t count, void *stream, kvf_err_t *err);

// The same for an all-gather: recv (size x bytes, device) = every rank's send
// (bytes, device) in rank order, enqueued on `stream` without waiting.
int kvf_tp_nccl_all_gather_enqueue(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, void *stream,
                                   kvf_err_t *err);

// Waits until everything enqueued on `stream` has run, checking the
// communicator's asynchronous error in between: a peer that died or a wait past
// the timeout aborts the communicator (this rank's collectives stop, the peers'
// fail too) and returns -1 with KVF_E_PEER_LOST; a failed kernel, KVF_E_PEER_LOST
// with its error. Use in place of cudaStreamSynchronize after collectives, which
// could wait forever. Returns 0 when the stream is done.
int kvf_tp_nccl_wait(kvf_tp_t *tp, void *stream, kvf_err_t *err);

// Makes all_reduce_sum enqueue on `stream` (a cudaStream_t owned by the caller,
// NULL = back to the communicator's own) and still wait for completion with the
// timeout. Returns 0, or -1 when tp is not an nccl communicator.
int kvf_tp_nccl_set_stream(kvf_tp_t *tp, void *stream);

#endif
