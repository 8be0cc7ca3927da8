// tests/test_tp_worker.c — a TP group of real kvf-worker processes (cpu backend,
// shm communicator) end to end against an in-test ROUTER speaking the real
// protocol: rank 0 registers for the group (tp_size 2, group id, the group's
// smallest block count), rank 1 never talks to the coordinator; greedy tokens of
// three golden prompts run together equal the golden ids and those of a TP 1
// worker; SHUTDOWN stops the whole group cleanly; a follower killed mid-run
// makes the leader leave (exit 1) within the TP timeout instead of hanging.
#include <criterion/criterion.h>
#include <czmq.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/zmqutil.h"
#include "proto/codec.h"
#include "test_util.h"

#define S_MAX_RANKS 4
// The ranks' --tp-timeout-ms: short, so that the idle test outlasts it, but past the
// multi-second stalls a loaded 2-core CI machine has (a 50 ms sleep once woke 2.7 s late)
#define S_TP_TIMEOUT_MS 6000
#define S_TP_TIMEOUT_TXT "6000"
#define S_N_CASES 3

typedef struct {
    zsock_t *router;
    char endpoint[256];
    pid_t pid[S_MAX_RANKS];
    int n;
    zframe_t *peer;      // the leader's identity
    char dir[128];       // stdout / stderr of each rank
    char group[64];
} s_fix_t;

static int64_t s_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// Starts tp ranks (tp 1: one plain worker). Rank r gets cache_blocks[r] blocks.
static void s_start(s_fix_t *f, int tp, const int *cache_blocks) {
    memset(f, 0, sizeof *f);
    char model[1024];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    zsys_handler_set(NULL);
    kvf_err_t err;
    f->router = kvf_zmq_router_bind("tcp://127.0.0.1:*", 0, &err);
    cr_assert_not_null(f->router, "%s", err.msg);
    snprintf(f->endpoint, sizeof f->endpoint, "%s", zsock_endpoint(f->router));
    zsock_set_rcvtimeo(f->router, 200);
    snprintf(f->dir, sizeof f->dir, "/tmp/kvf_test_tpw_XXXXXX");
    cr_assert_not_null(mkdtemp(f->dir));
    snprintf(f->group, sizeof f->group, "tpw-%d-%lld", (int)getpid(), (long long)s_ms());
    f->n = tp;
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/kvf-worker", KVF_BIN_DIR);
    for (int r = 0; r < tp; r++) {
        char tps[16], rank[16], blocks[16];
        snprintf(tps, sizeof tps, "%d", tp);
        snprintf(rank, sizeof rank, "%d", r);
        snprintf(blocks, sizeof blocks, "%d", cache_blocks[r]);
        const char *argv[64];
        int n = 0;
        argv[n++] = bin;
        argv[n++] = "--model", argv[n++] = model;
        argv[n++] = "--backend", argv[n++] = "cpu";
        argv[n++] = "--threads", argv[n++] = "1";
        argv[n++] = "--worker-id", argv[n++] = "tp-w0";
        argv[n++] = "--block-size", argv[n++] = "16";
        argv[n++] = "--cache-max-entry-count", argv[n++] = blocks;
        argv[n++] = "--session-len", argv[n++] = "512";
        argv[n++] = "--max-batch-size", argv[n++] = "8";
        argv[n++] = "--max-prefill-token-num", argv[n++] = "128";
        if (r == 0) argv[n++] = "--coordinator", argv[n++] = f->endpoint;
        if (tp > 1) {
            argv[n++] = "--tp", argv[n++] = tps;
            argv[n++] = "--rank", argv[n++] = rank;
            argv[n++] = "--group", argv[n++] = f->group;
            argv[n++] = "--tp-timeout-ms", argv[n++] = S_TP_TIMEOUT_TXT;
        }
        argv[n] = NULL;
        char out[256], errp[256];
        snprintf(out, sizeof out, "%s/out%d", f->dir, r);
        snprintf(errp, sizeof errp, "%s/err%d", f->dir, r);
        f->pid[r] = fork();
        cr_assert_geq(f->pid[r], 0);
        if (f->pid[r] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
            if (!freopen(out, "w", stdout) || !freopen(errp, "w", stderr)) _exit(126);
            execv(bin, (char *const *)argv);
            _exit(127);
        }
    }
}

static char *s_read(const s_fix_t *f, const char *name, int r) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s%d", f->dir, name, r);
    char *s = kvf_test_slurp(p, NULL);
    return s ? s : strdup("");
}

// Waits up to ms for rank r to exit; returns its wait status, or -1.
static int s_wait_exit(s_fix_t *f, int r, int ms) {
    int64_t end = s_ms() + ms;
    while (s_ms() < end) {
        int st;
        if (f->pid[r] > 0 && waitpid(f->pid[r], &st, WNOHANG) == f->pid[r]) {
            f->pid[r] = 0;
            return st;
        }
        usleep(10000);
    }
    return -1;
}

static void s_stop(s_fix_t *f) {
    for (int r = 0; r < f->n; r++)
        if (f->pid[r] > 0) {
            kill(f->pid[r], SIGKILL);
            waitpid(f->pid[r], NULL, 0);
            f->pid[r] = 0;
        }
    zframe_destroy(&f->peer);
    zsock_destroy(&f->router);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    cr_assert_eq(system(cmd), 0);
}

// The next message of `type` within ms, skipping HEARTBEATs and repeated REGISTERs.
static int s_recv_type(s_fix_t *f, kvf_msg_type type, int ms, kvf_msg_t *m) {
    int64_t end = s_ms() + ms;
    while (s_ms() < end) {
        zframe_t *id = NULL;
        kvf_err_t err;
        if (kvf_msg_recv(f->router, &id, m, &err) != 0) {
            zframe_destroy(&id);
            cr_assert_eq(err.code, KVF_E_TIMEOUT, "the worker sent something undecodable: %s", err.msg);
            continue;
        }
        if (!f->peer) f->peer = zframe_dup(id);
        cr_assert(zframe_eq(id, f->peer), "a second peer talks to the coordinator: only rank 0 may");
        zframe_destroy(&id);
        if (m->type == type) return 0;
        cr_assert(m->type == KVF_MSG_HEARTBEAT || m->type == KVF_MSG_REGISTER, "unexpected %s",
                  kvf_msg_type_name(m->type));
        kvf_msg_clear(m);
    }
    return -1;
}

static void s_send(s_fix_t *f, const kvf_msg_t *m) {
    kvf_err_t err;
    cr_assert_eq(kvf_msg_send(f->router, f->peer, m, &err), 0, "%s", err.msg);
}

static void s_register_and_welcome(s_fix_t *f, kvf_msg_t *reg) {
    char *e0 = NULL;
    if (s_recv_type(f, KVF_MSG_REGISTER, 30000, reg) != 0) {
        e0 = s_read(f, "err", 0);
        char *e1 = s_read(f, "err", 1);
        cr_assert_fail("no REGISTER; rank 0: %s\nrank 1: %s", e0, e1);
    }
    kvf_msg_t w;
    kvf_msg_init(&w, KVF_MSG_WELCOME);
    w.u.welcome.heartbeat_ms = 100;
    w.u.welcome.dead_after_ms = 3000;
    s_send(f, &w);
}

typedef struct {
    int32_t prompt[S_N_CASES][300], gold[S_N_CASES][64];
    int32_t np[S_N_CASES], ng[S_N_CASES];
} s_golden_t;

static void s_golden(s_golden_t *g) {
    char path[1024];
    KVF_FIXTURE_PATH(path, "tiny-llama/golden.json");
    json_t *root = json_load_file(path, 0, NULL);
    cr_assert_not_null(root);
    for (int c = 0; c < S_N_CASES; c++) {
        json_t *cs = json_array_get(json_object_get(root, "cases"), (size_t)c);
        json_t *p = json_object_get(cs, "prompt_ids"), *q = json_object_get(cs, "greedy_ids");
        g->np[c] = (int32_t)json_array_size(p);
        g->ng[c] = (int32_t)json_array_size(q);
        cr_assert(g->np[c] <= 300 && g->ng[c] <= 64);
        for (int32_t i = 0; i < g->np[c]; i++) g->prompt[c][i] = (int32_t)json_integer_value(json_array_get(p, i));
        for (int32_t i = 0; i < g->ng[c]; i++) g->gold[c][i] = (int32_t)json_integer_value(json_array_get(q, i));
    }
    json_decref(root);
}

// sampled 0: greedy; 1: temperature 0.8, top-p 0.95, a seed per request, and a
// repetition penalty of 1.1 on the odd rids (the leader's host sampler then, over
// the logits the group gathers: the followers follow it into the gather).
static void s_assign(s_fix_t *f, uint64_t rid, const int32_t *ids, int32_t n, int32_t max_new, int sampled) {
    kvf_msg_t a;
    kvf_msg_init(&a, KVF_MSG_ASSIGN);
    a.u.assign.rid = rid;
    a.u.assign.prompt_ids.ids = (int32_t *)ids;
    a.u.assign.prompt_ids.n = (uint32_t)n;
    a.u.assign.sampling.max_new_tokens = max_new;
    a.u.assign.sampling.ignore_eos = 1;
    if (sampled) {
        a.u.assign.sampling.temperature = 0.8f;
        a.u.assign.sampling.top_p = 0.95f;
        a.u.assign.sampling.seed = 1000 + rid;
        if (rid % 2) a.u.assign.sampling.repetition_penalty = 1.1f;
    }
    s_send(f, &a);
}

// Runs the golden prompts together (rids 1..S_N_CASES) and collects their ids.
static void s_run_cases(s_fix_t *f, const s_golden_t *g, int32_t out[S_N_CASES][64], uint32_t *free_after,
                        int sampled) {
    for (int c = 0; c < S_N_CASES; c++) s_assign(f, (uint64_t)c + 1, g->prompt[c], g->np[c], g->ng[c], sampled);
    int n[S_N_CASES] = {0}, done = 0;
    int64_t end = s_ms() + 120000;
    while (done < S_N_CASES) {
        cr_assert_lt(s_ms(), end, "the group did not finish; rank 0: %s", s_read(f, "err", 0));
        kvf_msg_t m;
        if (s_recv_type(f, KVF_MSG_RESULT, 1000, &m) != 0) continue;
        uint64_t rid = m.u.result.rid;
        cr_assert(rid >= 1 && rid <= S_N_CASES, "RESULT for rid %llu", (unsigned long long)rid);
        int c = (int)rid - 1;
        cr_assert_eq(m.u.result.error_code, 0, "rid %llu failed: %.*s", (unsigned long long)rid,
                     (int)m.u.result.error.len, m.u.result.error.ptr);
        for (uint32_t i = 0; i < m.u.result.tokens.n && n[c] < 64; i++) out[c][n[c]++] = m.u.result.tokens.ids[i];
        if (m.u.result.finished) {
            cr_assert_eq(n[c], g->ng[c], "rid %llu: %d tokens", (unsigned long long)rid, n[c]);
            *free_after = m.u.result.free_blocks;
            done++;
        }
        kvf_msg_clear(&m);
    }
}

static void s_shutdown(s_fix_t *f) {
    kvf_msg_t s;
    kvf_msg_init(&s, KVF_MSG_SHUTDOWN);
    s_send(f, &s);
}

Test(tp_worker, tp2_group_serves_the_same_greedy_tokens_as_tp1) {
    s_golden_t g;
    s_golden(&g);

    // TP 1 reference through the same binary
    s_fix_t f;
    int one[1] = {200};
    s_start(&f, 1, one);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    cr_assert_eq(reg.u.reg.tp_size, 1);
    kvf_msg_clear(&reg);
    int32_t ids1[S_N_CASES][64], smp1[S_N_CASES][64];
    uint32_t free1 = 0;
    s_run_cases(&f, &g, ids1, &free1, 0);
    s_run_cases(&f, &g, smp1, &free1, 1);
    s_shutdown(&f);
    int st = s_wait_exit(&f, 0, 10000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "TP 1 exit status %d", st);
    s_stop(&f);

    // TP 2: rank 1 plans fewer blocks; the group registers the smaller pool
    int two[2] = {200, 180};
    s_start(&f, 2, two);
    s_register_and_welcome(&f, &reg);
    cr_assert_eq(reg.u.reg.tp_size, 2);
    cr_assert_eq(reg.u.reg.tp_rank, 0);
    cr_assert_str_eq(reg.u.reg.group_id.ptr, f.group);
    cr_assert_str_eq(reg.u.reg.worker_id.ptr, "tp-w0");
    cr_assert_eq(reg.u.reg.total_blocks, 180, "the group's pool is its smallest rank's: %u", reg.u.reg.total_blocks);
    cr_assert_eq(reg.u.reg.free_blocks, 180);
    cr_assert_eq(reg.u.reg.plan.kv_bytes, 180ull * 16 * 2 * 2 * 1 * 32 * 4, "one of 2 KV heads per rank: %llu",
                 (unsigned long long)reg.u.reg.plan.kv_bytes);
    kvf_msg_clear(&reg);
    int32_t ids2[S_N_CASES][64], smp2[S_N_CASES][64];
    uint32_t free2 = 0;
    s_run_cases(&f, &g, ids2, &free2, 0);  // greedy: picked across the vocabulary shards
    for (int c = 0; c < S_N_CASES; c++) {
        cr_assert_arr_eq(ids2[c], ids1[c], sizeof(int32_t) * (size_t)g.ng[c], "case %d: TP 2 differs from TP 1", c);
        cr_assert_arr_eq(ids2[c], g.gold[c], sizeof(int32_t) * (size_t)g.ng[c], "case %d: TP 2 differs from golden", c);
    }
    s_run_cases(&f, &g, smp2, &free2, 1);  // sampled: the logits gathered for the leader's sampler
    int differ = 0;
    for (int c = 0; c < S_N_CASES; c++) {
        cr_assert_arr_eq(smp2[c], smp1[c], sizeof(int32_t) * (size_t)g.ng[c], "case %d: sampled TP 2 differs from TP 1",
                         c);
        differ += memcmp(smp1[c], ids1[c], sizeof(int32_t) * (size_t)g.ng[c]) != 0;
    }
    cr_assert_gt(differ, 0, "the sampled requests gave the greedy tokens: the sampling did not run");
    cr_assert_eq(free2, 180, "every block is free again");
    char *out1 = s_read(&f, "err", 1);
    cr_assert(strstr(out1, "tp follower"), "rank 1 ran as a follower: %s", out1);
    free(out1);

    // SHUTDOWN to the leader stops the whole group cleanly
    s_shutdown(&f);
    st = s_wait_exit(&f, 0, 10000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "rank 0 exit status %d: %s", st, s_read(&f, "err", 0));
    st = s_wait_exit(&f, 1, 10000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "rank 1 exit status %d: %s", st, s_read(&f, "err", 1));
    char *e1 = s_read(&f, "err", 1);
    const char *at = strstr(e1, "STOP from the leader after ");
    cr_assert_not_null(at, "rank 1 was not stopped by its leader: %s", e1);
    long steps = strtol(at + strlen("STOP from the leader after "), NULL, 10);
    cr_assert_geq(steps, 20, "rank 1 ran only %ld steps", steps);  // >= the longest case's decode steps
    free(e1);
    s_stop(&f);
}

Test(tp_worker, killed_follower_makes_the_leader_leave) {
    s_golden_t g;
    s_golden(&g);
    s_fix_t f;
    int two[2] = {200, 200};
    s_start(&f, 2, two);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    kvf_msg_clear(&reg);
    // a long request, then the follower dies under it
    s_assign(&f, 7, g.prompt[0], g.np[0], 400, 0);
    kvf_msg_t m;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_RESULT, 30000, &m), 0, "no first RESULT: %s", s_read(&f, "err", 0));
    kvf_msg_clear(&m);
    kill(f.pid[1], SIGKILL);
    int64_t t0 = s_ms();
    int st = s_wait_exit(&f, 0, S_TP_TIMEOUT_MS + 5000);
    int64_t ms = s_ms() - t0;
    cr_assert(st >= 0, "the leader is still running %lld ms after its follower died", (long long)ms);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "leader exit status %d", st);
    char *e0 = s_read(&f, "err", 0);
    cr_assert(strstr(e0, "rank 1 died") || strstr(e0, "rank 1 left"), "%s", e0);
    cr_log_info("leader left %lld ms after its follower was killed", (long long)ms);
    free(e0);
    s_stop(&f);
}

Test(tp_worker, idle_group_stays_up_past_the_timeout_and_bad_flags_are_refused) {
    s_fix_t f;
    int two[2] = {200, 200};
    s_start(&f, 2, two);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    kvf_msg_clear(&reg);
    usleep((S_TP_TIMEOUT_MS + 1500) * 1000);  // past the TP timeout: keepalives hold the idle group together
    for (int r = 0; r < 2; r++) {
        int st;
        cr_assert_eq(waitpid(f.pid[r], &st, WNOHANG), 0, "rank %d ended while idle: %s", r, s_read(&f, "err", r));
    }
    s_golden_t g;
    s_golden(&g);
    int32_t ids[S_N_CASES][64];
    uint32_t fr;
    s_run_cases(&f, &g, ids, &fr, 0);
    for (int c = 0; c < S_N_CASES; c++)
        cr_assert_arr_eq(ids[c], g.gold[c], sizeof(int32_t) * (size_t)g.ng[c], "case %d after idling", c);
    s_shutdown(&f);
    cr_assert_geq(s_wait_exit(&f, 0, 10000), 0);
    cr_assert_geq(s_wait_exit(&f, 1, 10000), 0);
    s_stop(&f);

    // bad flag combinations: exit 2 before anything starts
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/kvf-worker", KVF_BIN_DIR);
    const char *cases[][12] = {
        {"--tp", "2", "--rank", "0", "--coordinator", "tcp://127.0.0.1:1", NULL},   // no --group
        {"--tp", "2", "--rank", "2", "--group", "g", NULL},                         // rank outside
        {"--rank", "1", "--coordinator", "tcp://127.0.0.1:1", NULL},                // rank without --tp
        {"--tp", "2", "--rank", "0", "--group", "g", NULL},                         // leader without coordinator
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            if (!freopen("/dev/null", "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
            const char *argv[32] = {bin, "--model", "/nonexistent", "--backend", "cpu"};
            int n = 5;
            for (int j = 0; cases[i][j]; j++) argv[n++] = cases[i][j];
            argv[n] = NULL;
            execv(bin, (char *const *)argv);
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "flags %zu: status %d", i, st);
    }
}
