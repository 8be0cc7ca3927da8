// worker/tp_shm.c — the shared-memory communicator of a TP group of CPU
// processes on one host, see tp.h.
//
// Segment "/kvf-tp-<group>":
//   header: magic, size, slot size, the barrier (count + generation, the latter
//           a futex word), the abort word, and one robust process-shared mutex
//           per rank that the rank holds for as long as it is in the group
//   slots:  per rank two halves of slot_bytes each
// A collective moves data in chunks of at most slot_bytes: each rank writes its
// chunk into its own half, all meet at the barrier, each reads what it needs.
// Consecutive chunks (and collectives) alternate halves, so one barrier per chunk
// is enough: a rank can only be writing half h again after the barrier of the
// chunk in between, which every rank reaches only after reading half h.
//
// Liveness: a rank that exits or is killed releases its mutex with the owner
// dead (the kernel's robust list), so a waiting peer sees EOWNERDEAD at its next
// check (every wait slice) and fails at once instead of waiting for the timeout.
// Any failure sets the abort word and wakes the barrier: the group goes down as one.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/tp.h"

#define S_MAGIC 0x6b767470u            // "kvtp"
#define S_DEFAULT_SLOT (4u << 20)
#define S_SLICE_MS 20                  // wait slice between liveness checks
#define S_SPINS 2000                   // busy polls before sleeping on the futex

typedef struct {
    _Atomic uint32_t magic;            // written last by rank 0
    int32_t size;
    uint64_t slot_bytes;
    _Atomic uint32_t aborted;          // 0, or 1 + the rank that aborted the group
    _Atomic uint32_t abort_why;        // s_why_t of the first failure
    char pad0[64];
    _Atomic uint32_t bar_count;        // ranks arrived at the current barrier
    char pad1[60];
    _Atomic uint32_t bar_gen;          // bumped when the last rank arrives (futex word)
    char pad2[60];
    pthread_mutex_t alive[KVF_TP_MAX_SIZE];  // rank r holds alive[r] while in the group
} s_hdr_t;

typedef enum { S_WHY_ABORT = 1, S_WHY_TIMEOUT = 2, S_WHY_DEAD = 3, S_WHY_LEFT = 4 } s_why_t;

typedef struct {
    kvf_tp_t base;                     // first
    char group[KVF_TP_GROUP_MAX];
    char name[KVF_TP_GROUP_MAX + 16];  // "/kvf-tp-<group>"
    s_hdr_t *hdr;
    uint8_t *slots;                    // (size, 2, slot_bytes)
    size_t slot_bytes;
    size_t map_bytes;
    int fd;
    int holds_alive;                   // this rank holds hdr->alive[rank]
    int joined;                        // the join barrier passed: liveness checks on
    int unlinked;                      // rank 0 removed the name
    uint32_t phase;                    // half to use next (same sequence on every rank)
} s_shm_t;

// ---------------------------------------------------------------- helpers

static void s_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void s_futex_wait(_Atomic uint32_t *addr, uint32_t val, int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, &ts, NULL, 0);  // not PRIVATE: shared across processes
}

static void s_futex_wake(_Atomic uint32_t *addr) { syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); }

static inline void s_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint8_t *s_half(s_shm_t *s, int rank, uint32_t phase) {
    return s->slots + ((size_t)rank * 2 + (phase & 1)) * s->slot_bytes;
}

// Marks the group failed (first reason wins) and wakes every waiter.
static void s_set_abort(s_shm_t *s, s_why_t why) {
    uint32_t expect = 0;
    if (atomic_compare_exchange_strong(&s->hdr->aborted, &expect, (uint32_t)s->base.rank + 1))
        atomic_store(&s->hdr->abort_why, (uint32_t)why);
    s_futex_wake(&s->hdr->bar_gen);
}

static int s_abort_err(s_shm_t *s, const char *what, kvf_err_t *err) {
    uint32_t by = atomic_load(&s->hdr->aborted);
    uint32_t why = atomic_load(&s->hdr->abort_why);
    const char *reason = why == S_WHY_TIMEOUT ? "timed out waiting for a peer"
                         : why == S_WHY_DEAD  ? "saw a peer die"
                         : why == S_WHY_LEFT  ? "saw a peer leave"
                                              : "aborted the group";
    return kvf_err_set(err, KVF_E_PEER_LOST, "tp group %s: %s failed on rank %d: rank %u %s", s->group, what,
                       s->base.rank, by ? by - 1 : 0, reason);
}

// -1 when every peer is alive, else the rank of one that is gone (died or left).
// *died is set when it died holding its lock.
static int s_dead_peer(s_shm_t *s, int *died) {
    for (int p = 0; p < s->base.size; p++) {
        if (p == s->base.rank) continue;
        int rc = pthread_mutex_trylock(&s->hdr->alive[p]);
        if (rc == EBUSY) continue;
        *died = rc == EOWNERDEAD || rc == ENOTRECOVERABLE;
        if (rc == EOWNERDEAD) pthread_mutex_consistent(&s->hdr->alive[p]);
        if (rc == 0 || rc == EOWNERDEAD) pthread_mutex_unlock(&s->hdr->alive[p]);
        return p;
    }
    return -1;
}

// 0 while every peer holds its liveness lock; else marks the group aborted and returns -1 with
// KVF_E_PEER_LOST naming the peer that died or left.
static int s_peer_gone(s_shm_t *s, const char *what, kvf_err_t *err) {
    int died = 0, p = s_dead_peer(s, &died);
    if (p < 0) return 0;
    s_set_abort(s, died ? S_WHY_DEAD : S_WHY_LEFT);
    return kvf_err_set(err, KVF_E_PEER_LOST, "tp group %s: %s failed on rank %d: rank %d %s", s->group, what,
                       s->base.rank, p, died ? "died" : "left the group");
}

// The barrier: sense reversal on a generation counter, futex sleeps in slices,
// liveness and abort checked every slice, the timeout counted from the call.
static int s_barrier(s_shm_t *s, const char *what, kvf_err_t *err) {
    s_hdr_t *h = s->hdr;
    if (atomic_load(&h->aborted)) return s_abort_err(s, what, err);
    uint32_t gen = atomic_load_explicit(&h->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&h->bar_count, 1, memory_order_acq_rel) == (uint32_t)s->base.size - 1) {
        atomic_store_explicit(&h->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->bar_gen, 1, memory_order_release);
        s_futex_wake(&h->bar_gen);
        return 0;
    }
    for (int i = 0; i < S_SPINS; i++) {
        if (atomic_load_explicit(&h->bar_gen, memory_order_acquire) != gen) return 0;
        s_cpu_relax();
    }
    const int64_t deadline = kvf_clock_ms() + s->base.timeout_ms;
    for (;;) {
        if (atomic_load_explicit(&h->bar_gen, memory_order_acquire) != gen) return 0;
        if (atomic_load(&h->aborted)) return s_abort_err(s, what, err);
        if (s->joined && s_peer_gone(s, what, err) != 0) return -1;
        int64_t left = deadline - kvf_clock_ms();
        if (left <= 0) {
            s_set_abort(s, S_WHY_TIMEOUT);
            return kvf_err_set(err, KVF_E_PEER_LOST,
                               "tp group %s: %s failed on rank %d: peers did not arrive within %d ms", s->group, what,
                               s->base.rank, s->base.timeout_ms);
        }
        s_futex_wait(&h->bar_gen, gen, left < S_SLICE_MS ? (int)left : S_SLICE_MS);
    }
}

// ---------------------------------------------------------------- collectives

static int s_all_reduce_sum(kvf_tp_t *tp, float *buf, size_t n, kvf_err_t *err) {
    s_shm_t *s = (s_shm_t *)tp;
    const size_t per = s->slot_bytes / sizeof(float);
    for (size_t off = 0; off < n; off += per) {
        size_t m = n - off < per ? n - off : per;
        uint32_t ph = s->phase++;
        memcpy(s_half(s, tp->rank, ph), buf + off, m * sizeof(float));
        if (s_barrier(s, "all_reduce_sum", err) != 0) return -1;
        // Rank order, the same on every rank: ((r0 + r1) + r2) + ...
        float *out = buf + off;
        memcpy(out, s_half(s, 0, ph), m * sizeof(float));
        for (int p = 1; p < tp->size; p++) {
            const float *src = (const float *)s_half(s, p, ph);
            for (size_t i = 0; i < m; i++) out[i] = out[i] + src[i];
        }
    }
    return 0;
}

static int s_all_gather(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, kvf_err_t *err) {
    s_shm_t *s = (s_shm_t *)tp;
    if (bytes == 0) return s_barrier(s, "all_gather", err);
    for (size_t off = 0; off < bytes; off += s->slot_bytes) {
        size_t m = bytes - off < s->slot_bytes ? bytes - off : s->slot_bytes;
        uint32_t ph = s->phase++;
        memcpy(s_half(s, tp->rank, ph), (const uint8_t *)send + off, m);
        if (s_barrier(s, "all_gather", err) != 0) return -1;
        for (int p = 0; p < tp->size; p++) memcpy((uint8_t *)recv + (size_t)p * bytes + off, s_half(s, p, ph), m);
    }
    return 0;
}

static int s_broadcast(kvf_tp_t *tp, void *buf, size_t bytes, int root, kvf_err_t *err) {
    s_shm_t *s = (s_shm_t *)tp;
    if (bytes == 0) return s_barrier(s, "broadcast", err);
    for (size_t off = 0; off < bytes; off += s->slot_bytes) {
        size_t m = bytes - off < s->slot_bytes ? bytes - off : s->slot_bytes;
        uint32_t ph = s->phase++;
        if (tp->rank == root) memcpy(s_half(s, root, ph), (const uint8_t *)buf + off, m);
        if (s_barrier(s, "broadcast", err) != 0) return -1;
        if (tp->rank != root) memcpy((uint8_t *)buf + off, s_half(s, root, ph), m);
    }
    return 0;
}

static int s_barrier_op(kvf_tp_t *tp, kvf_err_t *err) { return s_barrier((s_shm_t *)tp, "barrier", err); }

static void s_abort(kvf_tp_t *tp) {
    s_shm_t *s = (s_shm_t *)tp;
    if (s->hdr) s_set_abort(s, S_WHY_ABORT);
}

static void s_destroy(kvf_tp_t **self_p) {
    if (!self_p || !*self_p) return;
    s_shm_t *s = (s_shm_t *)*self_p;
    if (s->hdr) {
        if (s->holds_alive) pthread_mutex_unlock(&s->hdr->alive[s->base.rank]);
        munmap(s->hdr, s->map_bytes);
    }
    if (s->base.rank == 0 && !s->unlinked && s->name[0]) shm_unlink(s->name);
    if (s->fd >= 0) close(s->fd);
    free(s);
    *self_p = NULL;
}

// kvf_tp_check: the abort word, then (once joined) the peers' liveness locks.
static int s_check(kvf_tp_t *tp, kvf_err_t *err) {
    s_shm_t *s = (s_shm_t *)tp;
    if (atomic_load(&s->hdr->aborted)) return s_abort_err(s, "check", err);
    return s->joined ? s_peer_gone(s, "check", err) : 0;
}

static const kvf_tp_ops_t s_shm_ops = {"shm", s_all_reduce_sum, s_all_gather, s_broadcast, s_barrier_op, s_abort,
                                       s_destroy, s_check};

// ---------------------------------------------------------------- joining

static size_t s_hdr_bytes(void) { return (sizeof(s_hdr_t) + 63) & ~(size_t)63; }

static int s_map(s_shm_t *s, kvf_err_t *err) {
    void *p = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (p == MAP_FAILED)
        return kvf_err_set(err, KVF_E_IO, "tp group %s: mmap of %zu bytes: %s", s->group, s->map_bytes,
                           strerror(errno));
    s->hdr = p;
    s->slots = (uint8_t *)p + s_hdr_bytes();
    return 0;
}

static int s_create(s_shm_t *s, kvf_err_t *err) {
    shm_unlink(s->name);  // a segment left by a crashed launch with the same id
    s->fd = shm_open(s->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (s->fd < 0) return kvf_err_set(err, KVF_E_IO, "tp group %s: shm_open %s: %s", s->group, s->name, strerror(errno));
    if (ftruncate(s->fd, (off_t)s->map_bytes) != 0)
        return kvf_err_set(err, KVF_E_IO, "tp group %s: cannot size %s to %zu bytes: %s", s->group, s->name,
                           s->map_bytes, strerror(errno));
    if (s_map(s, err) != 0) return -1;
    s_hdr_t *h = s->hdr;
    h->size = s->base.size;
    h->slot_bytes = s->slot_bytes;
    atomic_init(&h->aborted, 0);
    atomic_init(&h->abort_why, 0);
    atomic_init(&h->bar_count, 0);
    atomic_init(&h->bar_gen, 0);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = 0;
    for (int r = 0; r < s->base.size && rc == 0; r++) rc = pthread_mutex_init(&h->alive[r], &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) return kvf_err_set(err, KVF_E_IO, "tp group %s: pthread_mutex_init: %s", s->group, strerror(rc));
    if (pthread_mutex_lock(&h->alive[0]) != 0)
        return kvf_err_set(err, KVF_E_INTERNAL, "tp group %s: cannot take rank 0's lock", s->group);
    s->holds_alive = 1;
    atomic_store_explicit(&h->magic, S_MAGIC, memory_order_release);
    return 0;
}

// Follower: maps the segment once rank 0 has made it; 1 = try again later.
static int s_attach(s_shm_t *s, kvf_err_t *err) {
    if (s->fd < 0) {
        s->fd = shm_open(s->name, O_RDWR, 0600);
        if (s->fd < 0) {
            if (errno == ENOENT) return 1;
            return kvf_err_set(err, KVF_E_IO, "tp group %s: shm_open %s: %s", s->group, s->name, strerror(errno));
        }
    }
    struct stat st;
    if (fstat(s->fd, &st) != 0 || (size_t)st.st_size < s_hdr_bytes()) goto retry;  // not sized yet
    if (!s->hdr) {
        s_hdr_t probe;
        if (pread(s->fd, &probe, sizeof probe, 0) != (ssize_t)sizeof probe) goto retry;
        if (probe.magic != S_MAGIC) goto retry;
        if (probe.size != s->base.size)
            return kvf_err_set(err, KVF_E_INVAL, "tp group %s: rank %d was told size %d, the group has size %d",
                               s->group, s->base.rank, s->base.size, probe.size);
        if (probe.slot_bytes != s->slot_bytes)
            return kvf_err_set(err, KVF_E_INVAL, "tp group %s: slot size %zu differs from the group's %llu", s->group,
                               s->slot_bytes, (unsigned long long)probe.slot_bytes);
        if ((size_t)st.st_size < s->map_bytes) goto retry;
        if (s_map(s, err) != 0) return -1;
    }
    if (atomic_load_explicit(&s->hdr->magic, memory_order_acquire) != S_MAGIC) goto retry;
    // A segment whose rank 0 is gone was left by an earlier launch: wait for the new one.
    int rc = pthread_mutex_trylock(&s->hdr->alive[0]);
    if (rc != EBUSY) {
        if (rc == EOWNERDEAD) pthread_mutex_consistent(&s->hdr->alive[0]);
        if (rc == 0 || rc == EOWNERDEAD) pthread_mutex_unlock(&s->hdr->alive[0]);
        goto retry;
    }
    rc = pthread_mutex_trylock(&s->hdr->alive[s->base.rank]);
    if (rc == EBUSY)
        return kvf_err_set(err, KVF_E_PEER_LOST, "tp group %s: rank %d is already in the group", s->group,
                           s->base.rank);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&s->hdr->alive[s->base.rank]);
        pthread_mutex_unlock(&s->hdr->alive[s->base.rank]);
        return kvf_err_set(err, KVF_E_PEER_LOST, "tp group %s: an earlier rank %d died in this group: start the "
                                                 "whole group again under a new id", s->group, s->base.rank);
    }
    if (rc != 0) return kvf_err_set(err, KVF_E_IO, "tp group %s: rank lock: %s", s->group, strerror(rc));
    s->holds_alive = 1;
    return 0;
retry:
    if (s->hdr) munmap(s->hdr, s->map_bytes);
    s->hdr = NULL;
    close(s->fd);
    s->fd = -1;
    return 1;
}

static int s_group_ok(const char *g) {
    size_t n = strlen(g);
    if (n == 0 || n >= KVF_TP_GROUP_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = g[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_' || ch == '.'))
            return 0;
    }
    return 1;
}

kvf_tp_t *kvf_tp_shm_new(const char *group, int32_t rank, int32_t size, const kvf_tp_shm_opts_t *opts,
                         kvf_err_t *err) {
    if (!group || !s_group_ok(group)) {
        kvf_err_set(err, KVF_E_INVAL, "tp: group id '%s' must be 1..%d letters, digits, '-', '_' or '.'",
                    group ? group : "(null)", KVF_TP_GROUP_MAX - 1);
        return NULL;
    }
    if (size < 1 || size > KVF_TP_MAX_SIZE || rank < 0 || rank >= size) {
        kvf_err_set(err, KVF_E_INVAL, "tp group %s: rank %d of size %d: need 1 <= size <= %d and 0 <= rank < size",
                    group, rank, size, KVF_TP_MAX_SIZE);
        return NULL;
    }
    int32_t timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : KVF_TP_DEFAULT_TIMEOUT_MS;
    size_t slot = opts && opts->slot_bytes ? opts->slot_bytes : S_DEFAULT_SLOT;
    slot = (slot + 63) & ~(size_t)63;
    if (opts && (opts->timeout_ms < 0 || opts->join_timeout_ms < 0)) {
        kvf_err_set(err, KVF_E_INVAL, "tp group %s: timeout %d ms or join timeout %d ms < 0", group, opts->timeout_ms,
                    opts->join_timeout_ms);
        return NULL;
    }
    const int32_t join_ms = opts && opts->join_timeout_ms > 0 ? opts->join_timeout_ms
                            : timeout_ms > KVF_TP_JOIN_TIMEOUT_MS ? timeout_ms
                                                                  : KVF_TP_JOIN_TIMEOUT_MS;
    if (slot > ((size_t)1 << 30)) {
        kvf_err_set(err, KVF_E_INVAL, "tp group %s: slot of %zu bytes is over 1 GiB", group, slot);
        return NULL;
    }
    s_shm_t *s = calloc(1, sizeof *s);
    if (!s) {
        kvf_err_set(err, KVF_E_NOMEM, "tp group %s: out of memory", group);
        return NULL;
    }
    s->base.ops = &s_shm_ops;
    s->base.rank = rank;
    s->base.size = size;
    s->base.timeout_ms = join_ms;  // the join barrier's wait; timeout_ms once joined
    s->fd = -1;
    snprintf(s->group, sizeof s->group, "%s", group);
    snprintf(s->name, sizeof s->name, "/kvf-tp-%s", group);
    s->slot_bytes = slot;
    s->map_bytes = s_hdr_bytes() + (size_t)size * 2 * slot;
    kvf_tp_t *tp = &s->base;

    if (rank == 0) {
        if (s_create(s, err) != 0) goto fail;
    } else {
        const int64_t deadline = kvf_clock_ms() + join_ms;
        for (;;) {
            int rc = s_attach(s, err);
            if (rc < 0) goto fail;
            if (rc == 0) break;
            if (kvf_clock_ms() >= deadline) {
                kvf_err_set(err, KVF_E_PEER_LOST, "tp group %s: rank %d found no live rank 0 within %d ms", group,
                            rank, join_ms);
                goto fail;
            }
            s_sleep_ms(5);
        }
    }
    if (s_barrier(s, "join", err) != 0) goto fail;
    s->joined = 1;
    s->base.timeout_ms = timeout_ms;
    if (rank == 0) {
        shm_unlink(s->name);
        s->unlinked = 1;
    }
    kvf_log(KVF_LOG_DEBUG, "tp group %s: rank %d of %d joined (shm, %zu-byte slots, timeout %d ms)", group, rank, size,
            slot, timeout_ms);
    return tp;
fail:
    s_destroy(&tp);
    return NULL;
}
