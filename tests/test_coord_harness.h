// tests/test_coord_harness.h — for the multi-process coordinator tests: start
// the real kvf-coordinator on loopback ports it picks, and play clients and
// workers with real DEALER sockets speaking the protocol (header-only).
#ifndef KVF_TEST_COORD_HARNESS_H
#define KVF_TEST_COORD_HARNESS_H

#include <criterion/criterion.h>
#include <czmq.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/zmqutil.h"
#include "proto/codec.h"

typedef struct {
    pid_t pid;
    char front[256], back[256];
} coord_proc_t;

// Starts kvf-coordinator with both endpoints on free loopback ports plus the
// extra arguments (NULL-terminated), and reads the endpoints it prints.
static inline void coord_start(coord_proc_t *p, const char *const *extra) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    const char *argv[40];
    int n = 0;
    argv[n++] = KVF_BIN_DIR "/kvf-coordinator";
    argv[n++] = "--front";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--back";
    argv[n++] = "tcp://127.0.0.1:*";
    for (int i = 0; extra && extra[i] && n < 38; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // a failed test must not leave it running
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        if (!getenv("KVF_LOG_LEVEL")) setenv("KVF_LOG_LEVEL", "warn", 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    p->pid = pid;
    char line[600];
    size_t len = 0;
    struct pollfd pfd = {fds[0], POLLIN, 0};
    while (len < sizeof line - 1) {
        cr_assert_gt(poll(&pfd, 1, 10000), 0, "kvf-coordinator printed no endpoints in 10 s");
        ssize_t r = read(fds[0], line + len, 1);
        cr_assert_eq(r, 1, "kvf-coordinator exited before printing its endpoints");
        if (line[len] == '\n') break;
        len++;
    }
    line[len] = 0;
    close(fds[0]);
    cr_assert_eq(sscanf(line, "front %255s back %255s", p->front, p->back), 2, "bad first line: %s", line);
}

// Waits up to ms for the process to exit; returns its exit status, or -1 (still running).
static inline int coord_wait(coord_proc_t *p, int ms) {
    for (int t = 0; t <= ms; t += 10) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(10000);
    }
    return -1;
}

// SIGTERM, then its exit status (asserting that it exits within 5 s).
static inline int coord_stop(coord_proc_t *p) {
    if (!p->pid) return -1;
    kill(p->pid, SIGTERM);
    int rc = coord_wait(p, 5000);
    if (rc < 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        cr_assert_fail("kvf-coordinator did not exit within 5 s of SIGTERM");
    }
    return rc;
}

// ---- peers

static inline zsock_t *peer_new(const char *endpoint, const char *identity) {
    kvf_err_t err;
    zsock_t *s = kvf_zmq_dealer_connect(endpoint, identity, 0, &err);
    cr_assert_not_null(s, "%s", err.msg);
    return s;
}

static inline void peer_send(zsock_t *s, const kvf_msg_t *m) {
    kvf_err_t err;
    cr_assert_eq(kvf_msg_send(s, NULL, m, &err), 0, "%s", err.msg);
}

// Receives one message within ms: 0, or -1 on timeout (asserts on anything else).
static inline int peer_recv(zsock_t *s, int ms, kvf_msg_t *m) {
    zsock_set_rcvtimeo(s, ms);
    kvf_err_t err;
    if (kvf_msg_recv(s, NULL, m, &err) < 0) {
        cr_assert_eq(err.code, KVF_E_TIMEOUT, "receive failed: %s", err.msg);
        return -1;
    }
    return 0;
}

// The next message, which must be of this type (within 5 s).
static inline void peer_expect(zsock_t *s, kvf_msg_type type, kvf_msg_t *m) {
    cr_assert_eq(peer_recv(s, 5000, m), 0, "no %s within 5 s", kvf_msg_type_name(type));
    if (m->type == KVF_MSG_ERROR && type != KVF_MSG_ERROR)
        cr_assert_fail("wanted %s, got ERROR %s: %s", kvf_msg_type_name(type),
                       kvf_status_name((kvf_status)m->u.error.code), m->u.error.message.ptr);
    cr_assert_eq(m->type, type, "wanted %s, got %s", kvf_msg_type_name(type), kvf_msg_type_name(m->type));
}

// Nothing arrives within ms.
static inline void peer_expect_silence(zsock_t *s, int ms) {
    kvf_msg_t m;
    if (peer_recv(s, ms, &m) == 0) {
        kvf_msg_type t = m.type;
        kvf_msg_clear(&m);
        cr_assert_fail("unexpected %s", kvf_msg_type_name(t));
    }
}

// ---- a fake worker: registers with a given capacity, then the test drives it.

static inline zsock_t *worker_new_ex(const coord_proc_t *p, const char *id, uint32_t total, uint32_t free_blocks,
                                     uint32_t block_size, int prefix_caching) {
    zsock_t *s = peer_new(p->back, id);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_REGISTER);
    m.u.reg.worker_id = kvf_str(id);
    m.u.reg.group_id = kvf_str(id);
    m.u.reg.model = kvf_str("fake");
    m.u.reg.backend = kvf_str("cpu");
    m.u.reg.device = -1;
    m.u.reg.tp_size = 1;
    m.u.reg.total_blocks = total;
    m.u.reg.free_blocks = free_blocks;
    m.u.reg.max_batch_size = 64;
    m.u.reg.vocab_size = 32000;
    m.u.reg.prefix_caching = prefix_caching ? 1 : 0;
    m.u.reg.plan.kv_blocks = total;
    m.u.reg.plan.block_size = block_size;
    m.u.reg.plan.tokens_fit = (uint64_t)total * block_size;
    peer_send(s, &m);
    kvf_msg_t w;
    peer_expect(s, KVF_MSG_WELCOME, &w);
    cr_assert_gt(w.u.welcome.heartbeat_ms, 0);
    kvf_msg_clear(&w);
    return s;
}

static inline zsock_t *worker_new(const coord_proc_t *p, const char *id, uint32_t total, uint32_t free_blocks,
                                  uint32_t block_size) {
    return worker_new_ex(p, id, total, free_blocks, block_size, 0);
}

static inline void worker_heartbeat(zsock_t *s, uint32_t free_blocks, uint32_t total) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_HEARTBEAT);
    m.u.heartbeat.state = KVF_WSTATE_READY;
    m.u.heartbeat.free_blocks = free_blocks;
    m.u.heartbeat.total_blocks = total;
    peer_send(s, &m);
}

static inline void worker_result(zsock_t *s, uint64_t rid, const int32_t *ids, uint32_t n, const char *text,
                                 int finished, kvf_finish_reason reason, uint32_t free_blocks) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_RESULT);
    m.u.result.rid = rid;
    m.u.result.tokens = (kvf_ids_t){(int32_t *)ids, n};
    m.u.result.text = kvf_str(text);
    m.u.result.finished = finished ? 1 : 0;
    m.u.result.finish_reason = finished ? reason : KVF_FINISH_NONE;
    m.u.result.prompt_tokens = 0;
    m.u.result.completion_tokens = 0;
    m.u.result.free_blocks = free_blocks;
    peer_send(s, &m);
}

// ---- a client

// Submits n requests of prompt_len ids (1, 2, 3, ...) and max_new tokens each;
// returns the ACK's rids in rids[] (n of them).
static inline void client_submit(zsock_t *s, const char *batch_id, uint32_t n, uint32_t prompt_len,
                                 int32_t max_new, uint64_t *rids) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    m.u.submit.batch_id = kvf_str(batch_id);
    kvf_submit_req_t *reqs = calloc(n, sizeof *reqs);
    int32_t *ids = calloc(prompt_len, sizeof *ids);
    for (uint32_t i = 0; i < prompt_len; i++) ids[i] = (int32_t)(i + 1);
    for (uint32_t i = 0; i < n; i++) {
        reqs[i].sampling = kvf_sampling_default();
        reqs[i].sampling.max_new_tokens = max_new;
        reqs[i].prompt_ids = (kvf_ids_t){ids, prompt_len};
    }
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = n;
    peer_send(s, &m);
    free(reqs);
    free(ids);
    kvf_msg_t ack;
    peer_expect(s, KVF_MSG_ACK, &ack);
    cr_assert_eq(ack.u.ack.n_rids, n);
    if (batch_id && *batch_id) cr_assert_str_eq(ack.u.ack.batch_id.ptr, batch_id);
    for (uint32_t i = 0; i < n; i++) rids[i] = ack.u.ack.rids[i];
    kvf_msg_clear(&ack);
}

static inline void client_status(zsock_t *s, kvf_msg_t *reply) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_STATUS);
    peer_send(s, &m);
    peer_expect(s, KVF_MSG_STATUS_REPLY, reply);
}

// The status entry of worker id in a STATUS_REPLY (asserts it is there).
static inline const kvf_worker_status_t *status_worker(const kvf_msg_t *reply, const char *id) {
    for (uint32_t i = 0; i < reply->u.status.n_workers; i++)
        if (!strcmp(reply->u.status.workers[i].worker_id.ptr, id)) return &reply->u.status.workers[i];
    cr_assert_fail("worker %s not in STATUS_REPLY", id);
    return NULL;
}

// Polls STATUS until worker id shows free_blocks (a report from another
// connection has no ordering with this client's messages). Asserts within 5 s.
static inline void wait_worker_free(zsock_t *cl, const char *id, uint32_t free_blocks) {
    int64_t deadline = zclock_mono() + 5000;
    for (;;) {
        kvf_msg_t st;
        client_status(cl, &st);
        uint32_t f = status_worker(&st, id)->load.free_blocks;
        kvf_msg_clear(&st);
        if (f == free_blocks) return;
        cr_assert_lt(zclock_mono(), deadline, "worker %s shows %u free blocks, not %u", id, f, free_blocks);
        zclock_sleep(10);
    }
}

#endif
