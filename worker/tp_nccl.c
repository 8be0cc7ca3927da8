// worker/tp_nccl.c — the NCCL communicator of a TP group (one GPU per rank),
// see tp.h. Built only when KVF_HAVE_CUDA (worker/tp.cmake, kvf_tp_nccl).
//
// The communicator is non-blocking (config.blocking = 0): ncclCommInitRankConfig
// and each collective return at once (ncclInProgress), and we poll
// ncclCommGetAsyncError and the stream until done, an error, or the timeout. On
// an error or a timeout the communicator is aborted (ncclCommAbort), which
// unblocks the kernels of this rank; the call returns KVF_E_PEER_LOST and the
// communicator refuses every later call. NCCL_NVLS_ENABLE=0 is expected in the
// environment (deploy/tp-run.sh sets it): multicast objects are not lent here.
//
// CUDA_MODULE_LOADING=EAGER (s_eager_modules): with CUDA's default lazy loading the
// first launch of a kernel loads its module, and that waits for the device; when a
// peer has died, an NCCL kernel of this rank spins until the abort, so a step's next
// first-time kernel blocked the host inside cudaLaunchKernel, before any bounded wait
// could see the timeout (2 x H200: the dead-rank test's survivor stuck in the launch
// of layer 0's rmsnorm, right after the embedding's all-reduce).
#include <nccl.h>

#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "kernels/check.h"
#include "worker/tp.h"

#define S_SCRATCH_BYTES (1u << 16)  // staging for the small host-memory collectives

typedef struct {
    kvf_tp_t base;          // first
    ncclComm_t comm;        // the collectives' communicator
    ncclComm_t parent;      // made over a control group: the bounded non-blocking one, kept beside a
                            // blocking comm (kvf_tp_nccl_new_over); NULL otherwise
    cudaStream_t own;       // created here
    cudaStream_t stream;    // where all_reduce_sum enqueues (own, or the caller's)
    int32_t device;
    void *scratch;          // (size * S_SCRATCH_BYTES) device bytes
    int failed;             // aborted: every call fails
    kvf_tp_t *watch;        // the control group it was made over (not owned), polled while waiting; or NULL
} s_nccl_t;

// Every kernel loaded when the process's CUDA context is made. Set before the first CUDA
// call of the process to take effect (kvf-worker sets it at start for --tp > 1; these
// calls are the first of a rank's CUDA otherwise); the operator's own setting wins.
static void s_eager_modules(void) { setenv("CUDA_MODULE_LOADING", "EAGER", 0); }

static void s_yield_us(long us) {
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

// A wait polls without sleeping for its first S_SPIN_POLLS polls (about a millisecond), then
// sleeps between polls. A step enqueues a collective after every row-parallel GEMM; on this
// non-blocking communicator the enqueue returns ncclInProgress and the step waits for it, and the
// GPU runs the next kernel only once the host has enqueued it, so a sleep there (nanosleep's
// 20-50 us become ~60-110 with the timer slack) stalls the device. 2 x H200, a 16-layer model at
// 55 rows (bench/RESULTS.md, session 13): decode steps of 7.2 ms with sleeps, 4.2 with the spin,
// 1.7 at TP 1. Most of what was left is NCCL's non-blocking launch itself (~70 us a collective):
// see s_blocking_comm.
#define S_SPIN_POLLS 2000
static void s_pause(int polls, long us) {
    if (polls < S_SPIN_POLLS) {
#if defined(__x86_64__) || defined(__i386__)
        for (int i = 0; i < 16; i++) __builtin_ia32_pause();
#endif
    } else {
        s_yield_us(us);
    }
}

static void *s_abort_thread(void *pair) {
    ncclComm_t *c = pair;  // {comm, parent or NULL}
    ncclCommAbort(c[0]);
    if (c[1]) ncclCommAbort(c[1]);
    free(pair);
    return NULL;
}

// Aborts on a detached thread: NCCL's abort may join its proxy threads and
// synchronize with peers (NVIDIA/nccl#863, #1777), which a dead peer never
// answers; the failing rank must still return its error now. Its process then
// leaves (a worker whose group is gone exits), which ends the thread too.
static void s_abort_comm(s_nccl_t *n) {
    if (n->comm && !n->failed) {
        pthread_t t;
        pthread_attr_t at;
        ncclComm_t *pair = malloc(2 * sizeof *pair);
        int ok = pair && pthread_attr_init(&at) == 0;
        if (ok) {
            pair[0] = n->comm, pair[1] = n->parent;
            ok = pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED) == 0 &&
                 pthread_create(&t, &at, s_abort_thread, pair) == 0;
            pthread_attr_destroy(&at);
        }
        if (!ok) {
            free(pair);
            ncclCommAbort(n->comm);
            if (n->parent) ncclCommAbort(n->parent);
        }
    }
    n->comm = NULL;
    n->parent = NULL;
    n->failed = 1;
}

static int s_lost(s_nccl_t *n, const char *what, const char *why, kvf_err_t *err) {
    kvf_log(KVF_LOG_WARN, "tp nccl rank %d (device %d): %s: %s; aborting the communicator", n->base.rank, n->device,
            what, why);
    s_abort_comm(n);
    kvf_log(KVF_LOG_ERROR, "tp nccl rank %d (device %d): %s: %s; communicator aborted", n->base.rank, n->device, what,
            why);
    return kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d (device %d): %s: %s", n->base.rank, n->device, what, why);
}

// Every S_WATCH_POLLS polls of a wait: has the control group lost a peer? (see kvf_tp_check)
#define S_WATCH_POLLS 32
static int s_watch_lost(s_nccl_t *n, int polls, const char *what, kvf_err_t *err) {
    if (!n->watch || polls % S_WATCH_POLLS != S_WATCH_POLLS - 1) return 0;
    kvf_err_t e;
    kvf_err_clear(&e);
    if (kvf_tp_check(n->watch, &e) == 0) return 0;
    s_lost(n, what, e.msg, err);
    return 1;
}

// Waits until the communicator has no operation in progress (enqueue finished).
static int s_wait_comm(s_nccl_t *n, const char *what, int64_t deadline, kvf_err_t *err) {
    for (int polls = 0;; polls++) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(n->comm, &st);
        if (rc != ncclSuccess) return s_lost(n, what, ncclGetErrorString(rc), err);
        if (st == ncclSuccess) return 0;
        if (st != ncclInProgress) return s_lost(n, what, ncclGetErrorString(st), err);
        if (kvf_clock_ms() >= deadline) return s_lost(n, what, "timed out (a peer is gone or stuck)", err);
        if (s_watch_lost(n, polls, what, err)) return -1;
        s_pause(polls, 50);
    }
}

// Waits for the stream with the communicator's async error checked in between.
static int s_wait_stream(s_nccl_t *n, cudaStream_t stream, const char *what, int64_t deadline, kvf_err_t *err) {
    for (int polls = 0;; polls++) {
        cudaError_t q = cudaStreamQuery(stream);
        if (q == cudaSuccess) return 0;
        if (q != cudaErrorNotReady) return s_lost(n, what, cudaGetErrorString(q), err);
        ncclResult_t st = ncclSuccess;
        if (ncclCommGetAsyncError(n->comm, &st) != ncclSuccess || (st != ncclSuccess && st != ncclInProgress))
            return s_lost(n, what, ncclGetErrorString(st), err);
        if (kvf_clock_ms() >= deadline) return s_lost(n, what, "timed out (a peer is gone or stuck)", err);
        if (s_watch_lost(n, polls, what, err)) return -1;
        s_pause(polls, 20);
    }
}

// Enqueue result of a non-blocking call: ncclInProgress is fine, then wait it out.
static int s_enqueued(s_nccl_t *n, ncclResult_t rc, const char *what, int64_t deadline, kvf_err_t *err) {
    if (rc != ncclSuccess && rc != ncclInProgress) return s_lost(n, what, ncclGetErrorString(rc), err);
    return s_wait_comm(n, what, deadline, err);
}

static int s_usable(s_nccl_t *n, const char *what, kvf_err_t *err) {
    if (n->failed)
        return kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d: %s: the communicator was aborted earlier",
                           n->base.rank, what);
    KVF_CUDA_CHECK(cudaSetDevice(n->device), err);
    return 0;
}

// ---------------------------------------------------------------- collectives

static int s_all_reduce_sum(kvf_tp_t *tp, float *buf, size_t count, kvf_err_t *err) {
    s_nccl_t *n = (s_nccl_t *)tp;
    if (s_usable(n, "all_reduce_sum", err) != 0) return -1;
    int64_t deadline = kvf_clock_ms() + tp->timeout_ms;
    if (s_enqueued(n, ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, n->comm, n->stream), "all_reduce_sum",
                   deadline, err) != 0)
        return -1;
    return s_wait_stream(n, n->stream, "all_reduce_sum", deadline, err);
}

static int s_all_gather(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, kvf_err_t *err) {
    s_nccl_t *n = (s_nccl_t *)tp;
    if (s_usable(n, "all_gather", err) != 0) return -1;
    uint8_t *dev = n->scratch;  // (size, chunk)
    for (size_t off = 0; off == 0 || off < bytes; off += S_SCRATCH_BYTES) {
        size_t m = bytes - off < S_SCRATCH_BYTES ? bytes - off : S_SCRATCH_BYTES;
        int64_t deadline = kvf_clock_ms() + tp->timeout_ms;
        uint8_t *mine = dev + (size_t)tp->rank * m;
        if (m) KVF_CUDA_CHECK(cudaMemcpyAsync(mine, (const uint8_t *)send + off, m, cudaMemcpyHostToDevice, n->own), err);
        if (s_enqueued(n, ncclAllGather(mine, dev, m, ncclUint8, n->comm, n->own), "all_gather", deadline, err) != 0)
            return -1;
        if (s_wait_stream(n, n->own, "all_gather", deadline, err) != 0) return -1;
        for (int p = 0; p < tp->size && m; p++)
            KVF_CUDA_CHECK(cudaMemcpy((uint8_t *)recv + (size_t)p * bytes + off, dev + (size_t)p * m, m,
                                      cudaMemcpyDeviceToHost),
                           err);
        if (bytes == 0) break;
    }
    return 0;
}

static int s_broadcast(kvf_tp_t *tp, void *buf, size_t bytes, int root, kvf_err_t *err) {
    s_nccl_t *n = (s_nccl_t *)tp;
    if (s_usable(n, "broadcast", err) != 0) return -1;
    for (size_t off = 0; off == 0 || off < bytes; off += S_SCRATCH_BYTES) {
        size_t m = bytes - off < S_SCRATCH_BYTES ? bytes - off : S_SCRATCH_BYTES;
        int64_t deadline = kvf_clock_ms() + tp->timeout_ms;
        if (tp->rank == root && m)
            KVF_CUDA_CHECK(cudaMemcpyAsync(n->scratch, (uint8_t *)buf + off, m, cudaMemcpyHostToDevice, n->own), err);
        if (s_enqueued(n, ncclBroadcast(n->scratch, n->scratch, m, ncclUint8, root, n->comm, n->own), "broadcast",
                       deadline, err) != 0)
            return -1;
        if (s_wait_stream(n, n->own, "broadcast", deadline, err) != 0) return -1;
        if (tp->rank != root && m)
            KVF_CUDA_CHECK(cudaMemcpy((uint8_t *)buf + off, n->scratch, m, cudaMemcpyDeviceToHost), err);
        if (bytes == 0) break;
    }
    return 0;
}

static int s_barrier(kvf_tp_t *tp, kvf_err_t *err) {
    s_nccl_t *n = (s_nccl_t *)tp;
    if (s_usable(n, "barrier", err) != 0) return -1;
    int64_t deadline = kvf_clock_ms() + tp->timeout_ms;
    if (s_enqueued(n, ncclAllReduce(n->scratch, n->scratch, 1, ncclFloat32, ncclSum, n->comm, n->own), "barrier",
                   deadline, err) != 0)
        return -1;
    return s_wait_stream(n, n->own, "barrier", deadline, err);
}

static void s_abort(kvf_tp_t *tp) { s_abort_comm((s_nccl_t *)tp); }

// A clean finalize flushes pending work; abort when it fails or (non-blocking) does not end in time.
static void s_close(ncclComm_t comm, int32_t timeout_ms) {
    ncclResult_t rc = ncclCommFinalize(comm), st = rc;
    int64_t deadline = kvf_clock_ms() + timeout_ms;
    if (rc == ncclInProgress)
        while (ncclCommGetAsyncError(comm, &st) == ncclSuccess && st == ncclInProgress && kvf_clock_ms() < deadline)
            s_yield_us(100);
    if (st == ncclSuccess)
        ncclCommDestroy(comm);
    else
        ncclCommAbort(comm);
}

static void s_destroy(kvf_tp_t **self_p) {
    if (!self_p || !*self_p) return;
    s_nccl_t *n = (s_nccl_t *)*self_p;
    cudaSetDevice(n->device);
    if (n->comm) s_close(n->comm, n->base.timeout_ms);
    if (n->parent) s_close(n->parent, n->base.timeout_ms);
    // After an abort an NCCL kernel may still hold the device, and cudaFree waits
    // for the whole device: leave the scratch and the stream to the process's exit.
    if (!n->failed) {
        if (n->scratch) cudaFree(n->scratch);
        if (n->own) cudaStreamDestroy(n->own);
    }
    free(n);
    *self_p = NULL;
}

static int s_check(kvf_tp_t *tp, kvf_err_t *err) {
    s_nccl_t *n = (s_nccl_t *)tp;
    if (n->failed)
        return kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d: the communicator was aborted", tp->rank);
    return 0;
}

static const kvf_tp_ops_t s_nccl_ops = {"nccl", s_all_reduce_sum, s_all_gather, s_broadcast, s_barrier, s_abort,
                                        s_destroy, s_check};

// ---------------------------------------------------------------- creation

int kvf_tp_nccl_unique_id(uint8_t id[KVF_TP_NCCL_ID_BYTES], kvf_err_t *err) {
    _Static_assert(sizeof(ncclUniqueId) == KVF_TP_NCCL_ID_BYTES, "NCCL unique id size");
    if (!id) return kvf_err_set(err, KVF_E_INVAL, "tp nccl: no id buffer");
    ncclUniqueId u;
    KVF_NCCL_CHECK(ncclGetUniqueId(&u), err);
    memcpy(id, &u, sizeof u);
    return 0;
}

static int s_init(s_nccl_t *n, const uint8_t *id, kvf_err_t *err) {
    KVF_CUDA_CHECK(cudaSetDevice(n->device), err);
    KVF_CUDA_CHECK(cudaStreamCreateWithFlags(&n->own, cudaStreamNonBlocking), err);
    n->stream = n->own;
    KVF_CUDA_CHECK(cudaMalloc(&n->scratch, (size_t)n->base.size * S_SCRATCH_BYTES), err);
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    // Connect every peer now, while all ranks are alive (NCCL >= 2.22 connects lazily, at a
    // collective's first use). A rank that dies later is then a silent peer that the step's
    // bounded wait gives up on; a lazy connect to a process that is gone retried inside NCCL,
    // and the abort waited for it (the dead-rank test hung on 2 H200s). The operator's own
    // setting wins.
    setenv("NCCL_RUNTIME_CONNECT", "0", 0);
    int64_t deadline = kvf_clock_ms() + n->base.timeout_ms;
    ncclResult_t rc = ncclCommInitRankConfig(&n->comm, n->base.size, u, n->base.rank, &cfg);
    if (rc != ncclSuccess && rc != ncclInProgress) {
        n->comm = NULL;
        return kvf_err_set(err, KVF_E_DEVICE, "tp nccl rank %d (device %d): ncclCommInitRankConfig: %s", n->base.rank,
                           n->device, ncclGetErrorString(rc));
    }
    return s_wait_comm(n, "ncclCommInitRankConfig", deadline, err);
}

kvf_tp_t *kvf_tp_nccl_new(const uint8_t id[KVF_TP_NCCL_ID_BYTES], int32_t rank, int32_t size, int32_t device,
                          int32_t timeout_ms, kvf_err_t *err) {
    if (!id || size < 1 || size > KVF_TP_MAX_SIZE || rank < 0 || rank >= size || device < 0 || timeout_ms < 0) {
        kvf_err_set(err, KVF_E_INVAL, "tp nccl: rank %d of size %d on device %d (timeout %d ms): need an id, 1 <= "
                                      "size <= %d, 0 <= rank < size, device >= 0",
                    rank, size, device, timeout_ms, KVF_TP_MAX_SIZE);
        return NULL;
    }
    s_eager_modules();
    s_nccl_t *n = calloc(1, sizeof *n);
    if (!n) {
        kvf_err_set(err, KVF_E_NOMEM, "tp nccl: out of memory");
        return NULL;
    }
    n->base.ops = &s_nccl_ops;
    n->base.rank = rank;
    n->base.size = size;
    n->base.timeout_ms = timeout_ms > 0 ? timeout_ms : KVF_TP_DEFAULT_TIMEOUT_MS;
    n->device = device;
    kvf_tp_t *tp = &n->base;
    if (s_init(n, id, err) != 0) {
        if (n->comm) s_abort_comm(n);
        n->comm = NULL;
        s_destroy(&tp);
        return NULL;
    }
    kvf_log(KVF_LOG_INFO, "tp nccl: rank %d of %d on device %d joined", rank, size, device);
    return tp;
}

// Rank 0 of ctl makes an NCCL unique id and broadcasts it; 0 on every rank that has it.
static int s_share_id(kvf_tp_t *ctl, uint8_t id[KVF_TP_NCCL_ID_BYTES], kvf_err_t *err) {
    struct {
        int64_t ok;
        uint8_t id[KVF_TP_NCCL_ID_BYTES];
    } msg;
    memset(&msg, 0, sizeof msg);
    kvf_err_t id_err;
    kvf_err_clear(&id_err);
    if (kvf_tp_rank(ctl) == 0) msg.ok = kvf_tp_nccl_unique_id(msg.id, &id_err) == 0;
    if (kvf_tp_broadcast(ctl, &msg, sizeof msg, 0, err) != 0) return -1;
    if (!msg.ok) {
        if (kvf_tp_rank(ctl) == 0 && err)
            *err = id_err;
        else
            kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl: rank 0 could not make the NCCL unique id");
        return -1;
    }
    memcpy(id, msg.id, KVF_TP_NCCL_ID_BYTES);
    return 0;
}

// A blocking communicator's init, on its own thread so that the caller can give up on it.
typedef struct {
    ncclUniqueId id;
    int rank, size, device;
    ncclComm_t comm;
    ncclResult_t rc;
    _Atomic int done;
    _Atomic int refs;  // the thread's and the caller's: the last to let go frees it
} s_init_job_t;

static void s_job_release(s_init_job_t *j) {
    if (atomic_fetch_sub(&j->refs, 1) == 1) free(j);
}

static void *s_init_thread(void *arg) {
    s_init_job_t *j = arg;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 1;
    j->rc = cudaSetDevice(j->device) == cudaSuccess ? ncclCommInitRankConfig(&j->comm, j->size, j->id, j->rank, &cfg)
                                                     : ncclUnhandledCudaError;
    atomic_store(&j->done, 1);
    s_job_release(j);
    return NULL;
}

// The step's collectives go to a second, blocking communicator. On the non-blocking one every
// collective returns ncclInProgress and is launched off the caller's thread (NCCL 2.19 on):
// ~70 us a collective that the GPU waits for (2 x H200, bench/RESULTS.md session 13). A blocking
// init waits for every peer with no timeout of its own, so it runs on a thread and the caller
// gives up after the timeout or when the control group loses a peer (the thread is then left to
// the process's exit; the process leaves, its group being unusable). Once it is up, a dead peer
// is seen by the step's bounded waits as before; the non-blocking communicator stays as parent.
// KVF_TP_NCCL_BLOCKING=0 keeps the non-blocking one for the collectives.
static int s_blocking_comm(s_nccl_t *n, kvf_tp_t *ctl, kvf_err_t *err) {
    uint8_t id[KVF_TP_NCCL_ID_BYTES];
    if (s_share_id(ctl, id, err) != 0) return -1;
    s_init_job_t *j = calloc(1, sizeof *j);
    if (!j) return kvf_err_set(err, KVF_E_NOMEM, "tp nccl: out of memory");
    memcpy(&j->id, id, sizeof j->id);
    j->rank = n->base.rank, j->size = n->base.size, j->device = n->device;
    atomic_store(&j->refs, 2);
    pthread_t t;
    pthread_attr_t at;
    int ok = pthread_attr_init(&at) == 0;
    ok = ok && pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED) == 0 &&
         pthread_create(&t, &at, s_init_thread, j) == 0;
    pthread_attr_destroy(&at);
    if (!ok) {
        free(j);
        return kvf_err_set(err, KVF_E_IO, "tp nccl rank %d: no thread for the blocking init", n->base.rank);
    }
    const int64_t deadline = kvf_clock_ms() + n->base.timeout_ms;
    kvf_err_t e;
    kvf_err_clear(&e);
    int rc = 0;
    while (!atomic_load(&j->done)) {
        if (kvf_tp_check(ctl, &e) != 0) {
            rc = kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d: blocking init: %s", n->base.rank, e.msg);
            break;
        }
        if (kvf_clock_ms() >= deadline) {
            rc = kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d: blocking init: not done within %d ms",
                             n->base.rank, n->base.timeout_ms);
            break;
        }
        s_yield_us(1000);
    }
    if (rc == 0 && j->rc != ncclSuccess)
        rc = kvf_err_set(err, KVF_E_DEVICE, "tp nccl rank %d (device %d): blocking ncclCommInitRankConfig: %s",
                         n->base.rank, n->device, ncclGetErrorString(j->rc));
    if (rc == 0) {
        n->parent = n->comm;
        n->comm = j->comm;
    }
    s_job_release(j);
    return rc;
}

kvf_tp_t *kvf_tp_nccl_new_over(kvf_tp_t *ctl, int32_t device, int32_t timeout_ms, kvf_err_t *err) {
    if (!ctl) {
        kvf_err_set(err, KVF_E_INVAL, "tp nccl: no control communicator to send the id over");
        return NULL;
    }
    s_eager_modules();
    uint8_t id[KVF_TP_NCCL_ID_BYTES];
    if (s_share_id(ctl, id, err) != 0) return NULL;
    kvf_tp_t *tp = kvf_tp_nccl_new(id, kvf_tp_rank(ctl), kvf_tp_size(ctl), device, timeout_ms, err);
    const char *benv = getenv("KVF_TP_NCCL_BLOCKING");
    if (tp && kvf_tp_size(ctl) > 1 && !(benv && !strcmp(benv, "0")) && s_blocking_comm((s_nccl_t *)tp, ctl, err) != 0) {
        kvf_log(KVF_LOG_ERROR, "%s", err ? err->msg : "tp nccl: the blocking communicator did not come up");
        kvf_tp_abort(tp);
        kvf_tp_destroy(&tp);
    }
    // Agree on success, so that no rank goes on with a group another rank left.
    int64_t ok = tp != NULL, all = ok;
    kvf_err_t agree_err;
    if (kvf_tp_all_reduce_min_i64(ctl, &all, tp ? err : &agree_err) != 0) {
        kvf_tp_destroy(&tp);
        return NULL;
    }
    if (!all && tp) {
        kvf_tp_abort(tp);
        kvf_tp_destroy(&tp);
        kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl: another rank could not join the NCCL communicator");
    }
    if (tp) ((s_nccl_t *)tp)->watch = ctl;
    return tp;
}

// ---------------------------------------------------------------- for a backend's own stream

// The checks of an *_enqueue call: an nccl communicator that has not failed, buffers, a stream.
static s_nccl_t *s_enqueue_ok(kvf_tp_t *tp, const void *buf, const void *stream, const char *what, kvf_err_t *err) {
    if (!tp || tp->ops != &s_nccl_ops || !buf || !stream) {
        kvf_err_set(err, KVF_E_INVAL, "tp nccl %s_enqueue: needs an nccl communicator, buffers and a stream", what);
        return NULL;
    }
    s_nccl_t *n = (s_nccl_t *)tp;
    if (n->failed) {
        kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d: %s: the communicator was aborted earlier", tp->rank, what);
        return NULL;
    }
    return n;
}

int kvf_tp_nccl_all_reduce_enqueue(kvf_tp_t *tp, float *buf, size_t count, void *stream, kvf_err_t *err) {
    s_nccl_t *n = s_enqueue_ok(tp, buf, stream, "all_reduce", err);
    if (!n) return -1;
    if (count == 0) return 0;
    return s_enqueued(n, ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, n->comm, (cudaStream_t)stream),
                      "all_reduce", kvf_clock_ms() + tp->timeout_ms, err);
}

int kvf_tp_nccl_all_gather_enqueue(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, void *stream,
                                   kvf_err_t *err) {
    s_nccl_t *n = s_enqueue_ok(tp, send && recv ? send : NULL, stream, "all_gather", err);
    if (!n) return -1;
    if (bytes == 0) return 0;
    return s_enqueued(n, ncclAllGather(send, recv, bytes, ncclUint8, n->comm, (cudaStream_t)stream), "all_gather",
                      kvf_clock_ms() + tp->timeout_ms, err);
}

int kvf_tp_nccl_wait(kvf_tp_t *tp, void *stream, kvf_err_t *err) {
    if (!tp || tp->ops != &s_nccl_ops || !stream)
        return kvf_err_set(err, KVF_E_INVAL, "tp nccl wait: needs an nccl communicator and a stream");
    s_nccl_t *n = (s_nccl_t *)tp;
    if (n->failed)
        return kvf_err_set(err, KVF_E_PEER_LOST, "tp nccl rank %d: wait: the communicator was aborted earlier",
                           tp->rank);
    return s_wait_stream(n, (cudaStream_t)stream, "step", kvf_clock_ms() + tp->timeout_ms, err);
}

void *kvf_tp_nccl_comm(kvf_tp_t *tp) {
    return tp && tp->ops == &s_nccl_ops ? (void *)((s_nccl_t *)tp)->comm : NULL;
}

void *kvf_tp_nccl_stream(kvf_tp_t *tp) {
    return tp && tp->ops == &s_nccl_ops ? (void *)((s_nccl_t *)tp)->stream : NULL;
}

int kvf_tp_nccl_set_stream(kvf_tp_t *tp, void *stream) {
    if (!tp || tp->ops != &s_nccl_ops) return -1;
    s_nccl_t *n = (s_nccl_t *)tp;
    n->stream = stream ? (cudaStream_t)stream : n->own;
    return 0;
}
