// bench/kvf_tpbench.c — kvf-tpbench: what it costs the leader of a TP group to get
// one step's plan to every follower, over the group's shared-memory control
// communicator (worker/tp.h, what worker/tp_group.c uses) or over ZeroMQ ipc
// (issue #8: "measure which is cheaper"). CPU only; the NCCL broadcast needs GPUs.
//
// The leader (this process, rank 0) forks T-1 followers before anything of ZeroMQ
// exists; each process then joins the shm group and makes its own sockets. For
// each message size, each transport runs `warmup` untimed and `iters` timed
// rounds; a round is timed on the leader with CLOCK_MONOTONIC from the send until
// the leader knows every follower has the whole message:
//   shm  kvf_tp_broadcast from rank 0, then kvf_tp_barrier. The broadcast alone
//        returns on the root once every rank has reached its barrier, before the
//        followers copy the message out of the root's slot; the barrier after it
//        is each follower's "I have it" (and the leader learning of it).
//   zmq  one PUSH per follower (bound by the leader, ipc://), each follower
//        answers a 1-byte ack (its rank) on a PUSH to the leader's one PULL.
//        Not PUB/SUB: a plan that is lost leaves the ranks running different
//        steps, and PUB drops silently at the high-water mark and before a
//        subscriber has joined; PUSH blocks instead, and a per-follower socket is
//        what the workers' DEALER/ROUTER links already look like.
// Followers copy each message into their own buffer (the broadcast does; zmq_recv
// does) and check the round number the leader stamped at both ends of it.
//
// Failure: no wait is unbounded. shm calls fail with KVF_E_PEER_LOST when a rank
// dies (robust mutexes) or after the group timeout; the leader's ack PULL waits in
// short slices, checking its children between them, at most S_WAIT_MS in all;
// followers die with the leader (PR_SET_PDEATHSIG). The leader kills and reaps
// its followers on any failure and exits 1; usage errors exit 2.
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/args.h"
#include "common/error.h"
#include "common/log.h"
#include "worker/tp.h"

#define S_MIN_BYTES 16               // the round number is stamped at both ends
#define S_MAX_BYTES (64u << 20)
#define S_WARMUP 100
#define S_WAIT_MS 10000              // longest wait for a peer (shm timeout, zmq receive)
#define S_SLICE_MS 100               // leader: checks its children this often while waiting
#define S_BIG_BYTES (256u << 10)     // sizes above this run fewer rounds (see s_rounds)

static const char *s_usage =
    "usage: kvf-tpbench [--ranks T] [--sizes B1,B2,...] [--iters N] [--json]\n"
    "\n"
    "Latency of sending one TP step plan from the leader (rank 0) to T-1 follower processes until the\n"
    "leader knows every follower has the whole message: the shm control group (kvf_tp_broadcast, then\n"
    "kvf_tp_barrier as the followers' ack) against ZeroMQ ipc (a PUSH per follower, 1-byte acks back on\n"
    "one PULL). T: 2..8 (default 2). Sizes in bytes, %d..%u (default 4096,65536,1048576). N timed\n"
    "rounds per size and transport after %d untimed (default 2000; sizes over 256 KiB run N x 256 KiB /\n"
    "size, at least min(N, 100)). Prints median, p99 and mean microseconds per message; --json: one\n"
    "JSON array.\n";

// ---------------------------------------------------------------- options

typedef struct {
    int32_t ranks;
    int32_t *sizes;  // (n_sizes) bytes, owned
    size_t n_sizes;
    int64_t iters;
    int json;
} s_opts_t;

// Parses argv into *o. Returns 0, 1 for --help, or -1 with err set.
static int s_parse_args(int argc, char **argv, s_opts_t *o, kvf_err_t *err) {
    memset(o, 0, sizeof *o);
    o->ranks = 2;
    o->iters = 2000;
    const char *sizes = "4096,65536,1048576";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return 1;
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) return kvf_err_set(err, KVF_E_INVAL, "unexpected argument '%s'", a);
        if (strcmp(a, "--ranks") != 0 && strcmp(a, "--sizes") != 0 && strcmp(a, "--iters") != 0)
            return kvf_err_set(err, KVF_E_INVAL, "unknown option '%s' (see --help)", a);
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", a);
        const char *v = argv[++i];
        int64_t n = 0;
        if (strcmp(a, "--ranks") == 0) {
            if (kvf_args_int(a, v, 2, 8, &n, err) != 0) return -1;
            o->ranks = (int32_t)n;
        } else if (strcmp(a, "--sizes") == 0) {
            sizes = v;
        } else {
            if (kvf_args_int(a, v, 1, 100000000, &o->iters, err) != 0) return -1;
        }
    }
    if (kvf_args_ids("--sizes", sizes, &o->sizes, &o->n_sizes, err) != 0) return -1;
    if (o->n_sizes == 0) return kvf_err_set(err, KVF_E_INVAL, "--sizes: empty list");
    for (size_t i = 0; i < o->n_sizes; i++)
        if (o->sizes[i] < S_MIN_BYTES || (uint32_t)o->sizes[i] > S_MAX_BYTES)
            return kvf_err_set(err, KVF_E_INVAL, "--sizes: %d bytes is outside %d..%u", o->sizes[i], S_MIN_BYTES,
                               S_MAX_BYTES);
    return 0;
}

// Timed rounds for a message of `bytes`: N, or fewer for big messages (same on every rank).
static int64_t s_rounds(const s_opts_t *o, size_t bytes) {
    if (bytes <= S_BIG_BYTES) return o->iters;
    int64_t n = (int64_t)((double)o->iters * S_BIG_BYTES / (double)bytes);
    int64_t floor_n = o->iters < 100 ? o->iters : 100;
    return n < floor_n ? floor_n : n;
}

// ---------------------------------------------------------------- one process's links

typedef struct {
    const s_opts_t *o;
    int32_t rank;
    kvf_tp_t *tp;        // the shm control group
    void *zctx;          // this process's ZeroMQ context
    void *plan[8];       // leader: PUSH to follower r (index r); follower: its PULL in plan[0]
    void *ack;           // leader: the PULL of all acks; follower: its PUSH
    uint8_t *buf;        // (max size) the message
    pid_t *kids;         // leader: (ranks) follower pids, kids[0] unused; 0 once reaped
} s_proc_t;

static double s_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void s_stamp(uint8_t *buf, size_t bytes, uint64_t round) {
    memcpy(buf, &round, sizeof round);
    memcpy(buf + bytes - sizeof round, &round, sizeof round);
}

static int s_check_stamp(const uint8_t *buf, size_t bytes, uint64_t round, const char *what, kvf_err_t *err) {
    uint64_t a, b;
    memcpy(&a, buf, sizeof a);
    memcpy(&b, buf + bytes - sizeof b, sizeof b);
    if (a != round || b != round)
        return kvf_err_set(err, KVF_E_PROTO, "%s: %zu-byte message of round %llu carries rounds %llu/%llu", what,
                           bytes, (unsigned long long)round, (unsigned long long)a, (unsigned long long)b);
    return 0;
}

static int s_zmq_fail(const char *what, kvf_err_t *err) {
    int e = zmq_errno();
    return kvf_err_set(err, e == EAGAIN ? KVF_E_TIMEOUT : KVF_E_IO, "zmq %s: %s", what,
                       e == EAGAIN ? "timed out" : zmq_strerror(e));
}

static int s_setopt(void *sock, int opt, int val, kvf_err_t *err) {
    if (zmq_setsockopt(sock, opt, &val, sizeof val) != 0) return s_zmq_fail("setsockopt", err);
    return 0;
}

// Leader: 0 when every follower still runs; else -1 with err naming the first that
// ended (and reaps it).
static int s_kids_alive(s_proc_t *p, kvf_err_t *err) {
    for (int r = 1; r < p->o->ranks; r++) {
        if (!p->kids[r]) continue;
        int st = 0;
        pid_t w = waitpid(p->kids[r], &st, WNOHANG);
        if (w == 0) continue;
        p->kids[r] = 0;
        if (w < 0) return kvf_err_set(err, KVF_E_PEER_LOST, "follower rank %d: waitpid: %s", r, strerror(errno));
        if (WIFSIGNALED(st))
            return kvf_err_set(err, KVF_E_PEER_LOST, "follower rank %d (pid %d) was killed by signal %d", r, (int)w,
                               WTERMSIG(st));
        return kvf_err_set(err, KVF_E_PEER_LOST, "follower rank %d (pid %d) exited with status %d", r, (int)w,
                           WEXITSTATUS(st));
    }
    return 0;
}

// Makes the sockets of this rank under dir and joins them: the leader sends a
// hello on each PUSH and waits for every follower's ack, so no round waits for
// a connection. Returns 0, or -1 with err set.
static int s_zmq_open(s_proc_t *p, const char *dir, size_t max_bytes, kvf_err_t *err) {
    char ep[256];
    const int T = p->o->ranks;
    p->zctx = zmq_ctx_new();
    if (!p->zctx) return s_zmq_fail("ctx_new", err);
    if (p->rank == 0) {
        p->ack = zmq_socket(p->zctx, ZMQ_PULL);
        if (!p->ack) return s_zmq_fail("socket", err);
        if (s_setopt(p->ack, ZMQ_LINGER, 0, err) || s_setopt(p->ack, ZMQ_RCVTIMEO, S_SLICE_MS, err)) return -1;
        // Not 1: the bound applies to the ZMTP handshake's READY command too.
        int64_t small = 256;
        if (zmq_setsockopt(p->ack, ZMQ_MAXMSGSIZE, &small, sizeof small) != 0) return s_zmq_fail("setsockopt", err);
        snprintf(ep, sizeof ep, "ipc://%s/ack", dir);
        if (zmq_bind(p->ack, ep) != 0) return s_zmq_fail(ep, err);
        for (int r = 1; r < T; r++) {
            p->plan[r] = zmq_socket(p->zctx, ZMQ_PUSH);
            if (!p->plan[r]) return s_zmq_fail("socket", err);
            if (s_setopt(p->plan[r], ZMQ_LINGER, 0, err) || s_setopt(p->plan[r], ZMQ_SNDTIMEO, S_WAIT_MS, err))
                return -1;
            snprintf(ep, sizeof ep, "ipc://%s/plan-%d", dir, r);
            if (zmq_bind(p->plan[r], ep) != 0) return s_zmq_fail(ep, err);
        }
        uint8_t hello = 0;
        for (int r = 1; r < T; r++)
            if (zmq_send(p->plan[r], &hello, 1, 0) != 1) return s_zmq_fail("send hello", err);
    } else {
        p->plan[0] = zmq_socket(p->zctx, ZMQ_PULL);
        p->ack = zmq_socket(p->zctx, ZMQ_PUSH);
        if (!p->plan[0] || !p->ack) return s_zmq_fail("socket", err);
        int64_t maxmsg = (int64_t)max_bytes + 256;  // + room for the handshake (see the ack PULL)
        if (s_setopt(p->plan[0], ZMQ_LINGER, 0, err) || s_setopt(p->plan[0], ZMQ_RCVTIMEO, S_WAIT_MS, err) ||
            s_setopt(p->ack, ZMQ_LINGER, 0, err) || s_setopt(p->ack, ZMQ_SNDTIMEO, S_WAIT_MS, err))
            return -1;
        if (zmq_setsockopt(p->plan[0], ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0)
            return s_zmq_fail("setsockopt", err);
        snprintf(ep, sizeof ep, "ipc://%s/plan-%d", dir, p->rank);
        if (zmq_connect(p->plan[0], ep) != 0) return s_zmq_fail(ep, err);
        snprintf(ep, sizeof ep, "ipc://%s/ack", dir);
        if (zmq_connect(p->ack, ep) != 0) return s_zmq_fail(ep, err);
        uint8_t hello;
        if (zmq_recv(p->plan[0], &hello, 1, 0) != 1) return s_zmq_fail("receive hello", err);
        uint8_t me = (uint8_t)p->rank;
        if (zmq_send(p->ack, &me, 1, 0) != 1) return s_zmq_fail("send hello ack", err);
    }
    return 0;
}

static void s_zmq_close(s_proc_t *p) {
    for (int r = 0; r < 8; r++)
        if (p->plan[r]) zmq_close(p->plan[r]), p->plan[r] = NULL;
    if (p->ack) zmq_close(p->ack), p->ack = NULL;
    if (p->zctx) zmq_ctx_term(p->zctx), p->zctx = NULL;  // linger 0: does not block
}

// Leader: one ack from each follower (each rank once). Returns 0, or -1 with err.
static int s_zmq_acks(s_proc_t *p, kvf_err_t *err) {
    uint32_t seen = 0, want = ((1u << p->o->ranks) - 1) & ~1u;
    double t0 = 0;
    while (seen != want) {
        uint8_t a[2];
        int n = zmq_recv(p->ack, a, sizeof a, 0);
        if (n == 1 && a[0] > 0 && a[0] < p->o->ranks && !(seen & (1u << a[0]))) {
            seen |= 1u << a[0];
            continue;
        }
        if (n >= 0) return kvf_err_set(err, KVF_E_PROTO, "zmq: unexpected ack (%d bytes, first %u)", n, a[0]);
        if (zmq_errno() != EAGAIN) return s_zmq_fail("receive ack", err);
        if (s_kids_alive(p, err) != 0) return -1;
        if (t0 == 0) t0 = s_now_us();
        if (s_now_us() - t0 > S_WAIT_MS * 1e3)
            return kvf_err_set(err, KVF_E_TIMEOUT, "zmq: followers did not ack within %d ms (acked mask 0x%x of 0x%x)",
                               S_WAIT_MS, seen, want);
    }
    return 0;
}

// ---------------------------------------------------------------- rounds

typedef enum { S_SHM = 0, S_ZMQ = 1 } s_transport_t;

static const char *s_transport_name[] = {"shm", "zmq-ipc"};

// One round on this rank. Returns 0, or -1 with err set.
static int s_round(s_proc_t *p, s_transport_t t, size_t bytes, uint64_t round, kvf_err_t *err) {
    if (t == S_SHM) {
        if (kvf_tp_broadcast(p->tp, p->buf, bytes, 0, err) != 0) return -1;
        if (p->rank != 0 && s_check_stamp(p->buf, bytes, round, "shm broadcast", err) != 0) return -1;
        return kvf_tp_barrier(p->tp, err);
    }
    if (p->rank == 0) {
        for (int r = 1; r < p->o->ranks; r++)
            if (zmq_send(p->plan[r], p->buf, bytes, 0) != (int)bytes) return s_zmq_fail("send plan", err);
        return s_zmq_acks(p, err);
    }
    int n = zmq_recv(p->plan[0], p->buf, bytes, 0);
    if (n < 0) return s_zmq_fail("receive plan", err);
    if ((size_t)n != bytes)
        return kvf_err_set(err, KVF_E_PROTO, "zmq: a %d-byte plan where %zu bytes were due", n, bytes);
    if (s_check_stamp(p->buf, bytes, round, "zmq plan", err) != 0) return -1;
    uint8_t me = (uint8_t)p->rank;
    if (zmq_send(p->ack, &me, 1, 0) != 1) return s_zmq_fail("send ack", err);
    return 0;
}

typedef struct {
    s_transport_t t;
    size_t bytes;
    int64_t n;
    double median, p99, mean, min;  // microseconds
} s_row_t;

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Runs S_WARMUP + n rounds of (t, bytes); the leader fills *row from us (n entries).
static int s_measure(s_proc_t *p, s_transport_t t, size_t bytes, double *us, s_row_t *row, kvf_err_t *err) {
    const int64_t n = s_rounds(p->o, bytes);
    for (int64_t i = 0; i < S_WARMUP + n; i++) {
        uint64_t round = ((uint64_t)t << 62) ^ ((uint64_t)bytes << 32) ^ (uint64_t)i;
        if (p->rank == 0) s_stamp(p->buf, bytes, round);
        double t0 = s_now_us();
        if (s_round(p, t, bytes, round, err) != 0) return -1;
        double t1 = s_now_us();
        if (p->rank == 0 && i >= S_WARMUP) us[i - S_WARMUP] = t1 - t0;
    }
    if (p->rank != 0) return 0;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += us[i];
    qsort(us, (size_t)n, sizeof *us, s_cmp_double);
    int64_t k99 = (int64_t)((double)n * 0.99 + 0.999999) - 1;  // nearest rank
    *row = (s_row_t){t, bytes, n, us[(n - 1) / 2], us[k99 < 0 ? 0 : k99], sum / (double)n, us[0]};
    return 0;
}

// ---------------------------------------------------------------- one process

// Everything one rank does after the fork. The leader fills rows (n_sizes * 2).
static int s_run(s_proc_t *p, const char *group, const char *dir, s_row_t *rows, kvf_err_t *err) {
    const s_opts_t *o = p->o;
    size_t max_bytes = 0;
    int64_t max_n = 0;
    for (size_t i = 0; i < o->n_sizes; i++) {
        if ((size_t)o->sizes[i] > max_bytes) max_bytes = (size_t)o->sizes[i];
        if (s_rounds(o, (size_t)o->sizes[i]) > max_n) max_n = s_rounds(o, (size_t)o->sizes[i]);
    }
    p->buf = calloc(1, max_bytes);
    double *us = p->rank == 0 ? calloc((size_t)max_n, sizeof *us) : NULL;
    int rc = 0;
    if (!p->buf || (p->rank == 0 && !us)) rc = kvf_err_set(err, KVF_E_NOMEM, "out of memory");
    if (rc == 0) {
        kvf_tp_shm_opts_t so = {.timeout_ms = S_WAIT_MS, .slot_bytes = 0};
        p->tp = kvf_tp_shm_new(group, p->rank, o->ranks, &so, err);
        if (!p->tp) rc = -1;
    }
    if (rc == 0) rc = s_zmq_open(p, dir, max_bytes, err);
    if (rc == 0 && p->rank == 0) rc = s_zmq_acks(p, err);  // the hellos
    for (size_t i = 0; rc == 0 && i < o->n_sizes; i++)
        for (int t = S_SHM; rc == 0 && t <= S_ZMQ; t++)
            rc = s_measure(p, (s_transport_t)t, (size_t)o->sizes[i], us, rows ? &rows[i * 2 + (size_t)t] : NULL, err);
    // Nobody leaves before everyone is done: a rank that leaves fails the group.
    if (rc == 0) rc = kvf_tp_barrier(p->tp, err);
    if (rc != 0 && p->tp) kvf_tp_abort(p->tp);
    s_zmq_close(p);
    kvf_tp_destroy(&p->tp);
    free(us);
    free(p->buf);
    p->buf = NULL;
    return rc;
}

// ---------------------------------------------------------------- report

static void s_print_table(const s_opts_t *o, const s_row_t *rows, size_t n) {
    printf("kvf-tpbench: %d ranks (1 leader + %d follower%s), %d untimed rounds first; microseconds per message "
           "until the leader knows every follower has it\n",
           o->ranks, o->ranks - 1, o->ranks == 2 ? "" : "s", S_WARMUP);
    printf("%-9s %9s %6s %10s %10s %10s %10s\n", "transport", "bytes", "iters", "median_us", "p99_us", "mean_us",
           "min_us");
    for (size_t i = 0; i < n; i++)
        printf("%-9s %9zu %6lld %10.1f %10.1f %10.1f %10.1f\n", s_transport_name[rows[i].t], rows[i].bytes,
               (long long)rows[i].n, rows[i].median, rows[i].p99, rows[i].mean, rows[i].min);
}

static int s_print_json(const s_opts_t *o, const s_row_t *rows, size_t n, kvf_err_t *err) {
    json_t *arr = json_array();
    if (!arr) return kvf_err_set(err, KVF_E_NOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *r = json_pack("{s:s, s:i, s:I, s:I, s:i, s:f, s:f, s:f, s:f}", "transport", s_transport_name[rows[i].t],
                              "ranks", o->ranks, "bytes", (json_int_t)rows[i].bytes, "iters", (json_int_t)rows[i].n,
                              "warmup", S_WARMUP, "median_us", rows[i].median, "p99_us", rows[i].p99, "mean_us",
                              rows[i].mean, "min_us", rows[i].min);
        if (!r || json_array_append_new(arr, r) != 0) rc = kvf_err_set(err, KVF_E_NOMEM, "out of memory");
    }
    char *txt = rc == 0 ? json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
    if (rc == 0 && !txt) rc = kvf_err_set(err, KVF_E_NOMEM, "out of memory");
    if (txt) printf("%s\n", txt);
    free(txt);
    json_decref(arr);
    return rc;
}

// ---------------------------------------------------------------- main

// Leader: reaps every follower, killing those still running first when kill_them
// (after a failure, whose err is kept). Returns 0 when every one exited 0, else -1
// with err naming one that did not.
static int s_reap(s_proc_t *p, int kill_them, kvf_err_t *err) {
    int rc = 0;
    for (int r = 1; r < p->o->ranks; r++) {
        if (!p->kids[r]) continue;
        if (kill_them) kill(p->kids[r], SIGKILL);
        int st = 0;
        pid_t w;
        while ((w = waitpid(p->kids[r], &st, 0)) < 0 && errno == EINTR) {
        }
        p->kids[r] = 0;
        if (kill_them) continue;
        if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (rc == 0)
                kvf_err_set(err, KVF_E_PEER_LOST, "follower rank %d ended badly (%s %d)", r,
                            w < 0 ? "waitpid" : WIFSIGNALED(st) ? "signal" : "status",
                            w < 0 ? errno : WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            rc = -1;
        }
    }
    return rc;
}

int main(int argc, char **argv) {
    kvf_log_setup("kvf-tpbench", 0, KVF_LOG_WARN);
    s_opts_t o;
    kvf_err_t err;
    kvf_err_clear(&err);
    int rc = s_parse_args(argc, argv, &o, &err);
    if (rc == 1) {
        printf(s_usage, S_MIN_BYTES, S_MAX_BYTES, S_WARMUP);
        free(o.sizes);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "kvf-tpbench: %s\n", err.msg);
        fprintf(stderr, s_usage, S_MIN_BYTES, S_MAX_BYTES, S_WARMUP);
        free(o.sizes);
        return 2;
    }

    // Nothing of ZeroMQ exists yet: each process makes its own context after the fork.
    const char *tmp = getenv("TMPDIR");
    char dir[128];
    snprintf(dir, sizeof dir, "%s/kvf-tpb-XXXXXX", tmp && *tmp && strlen(tmp) < 64 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "kvf-tpbench: mkdtemp %s: %s\n", dir, strerror(errno));
        free(o.sizes);
        return 1;
    }
    char group[KVF_TP_GROUP_MAX];
    snprintf(group, sizeof group, "tpbench-%d-%lld", (int)getpid(), (long long)s_now_us());
    pid_t kids[8] = {0};
    s_proc_t p = {.o = &o, .rank = 0, .kids = kids};
    const pid_t leader = getpid();
    fflush(NULL);
    for (int r = 1; r < o.ranks && rc == 0; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            rc = kvf_err_set(&err, KVF_E_IO, "fork: %s", strerror(errno));
            break;
        }
        if (pid == 0) {
            // A follower: dies with the leader, reports its own failure, exits 1.
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != leader) _exit(1);
            kvf_log_setup("kvf-tpbench", r, KVF_LOG_WARN);
            s_proc_t f = {.o = &o, .rank = r};
            int frc = s_run(&f, group, dir, NULL, &err);
            if (frc != 0) fprintf(stderr, "kvf-tpbench: follower rank %d: %s\n", r, err.msg);
            free(o.sizes);
            return frc == 0 ? 0 : 1;
        }
        kids[r] = pid;
    }
    s_row_t *rows = calloc(o.n_sizes * 2, sizeof *rows);
    if (rc == 0 && !rows) rc = kvf_err_set(&err, KVF_E_NOMEM, "out of memory");
    if (rc == 0) rc = s_run(&p, group, dir, rows, &err);
    if (rc != 0) {
        // Which follower ended first tells more than the leader's timeout.
        kvf_err_t kerr;
        if (s_kids_alive(&p, &kerr) != 0) fprintf(stderr, "kvf-tpbench: %s\n", kerr.msg);
    }
    if (s_reap(&p, rc != 0, &err) != 0) rc = -1;
    char path[192];
    for (int r = 1; r < o.ranks; r++) {
        snprintf(path, sizeof path, "%s/plan-%d", dir, r);
        unlink(path);  // zmq removes what it bound; these are leftovers of a failure
    }
    snprintf(path, sizeof path, "%s/ack", dir);
    unlink(path);
    if (rmdir(dir) != 0 && rc == 0) rc = kvf_err_set(&err, KVF_E_IO, "rmdir %s: %s", dir, strerror(errno));
    if (rc == 0) {
        if (o.json)
            rc = s_print_json(&o, rows, o.n_sizes * 2, &err);
        else
            s_print_table(&o, rows, o.n_sizes * 2);
    }
    free(rows);
    free(o.sizes);
    if (rc != 0) {
        fprintf(stderr, "kvf-tpbench: %s\n", err.msg);
        return 1;
    }
    return 0;
}
