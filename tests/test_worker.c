// tests/test_worker.c — the real kvf-worker binary against an in-test ROUTER
// speaking the real protocol (kvf_msg_*): registration with a sane plan, golden
// greedy tokens through ASSIGN/RESULT, bad requests and malformed messages,
// CANCEL, DRAIN, SHUTDOWN and SIGTERM, and the plan refusal before connecting.
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

typedef struct {
    zsock_t *router;
    char endpoint[256];
    pid_t pid;
    zframe_t *peer;      // the worker's identity
    char dir[128];       // its stdout / stderr
} s_fix_t;

static int64_t s_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_start(s_fix_t *f, const char *const *extra) {
    memset(f, 0, sizeof *f);
    char model[1024];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    zsys_handler_set(NULL);
    kvf_err_t err;
    f->router = kvf_zmq_router_bind("tcp://127.0.0.1:*", 0, &err);
    cr_assert_not_null(f->router, "%s", err.msg);
    snprintf(f->endpoint, sizeof f->endpoint, "%s", zsock_endpoint(f->router));
    zsock_set_rcvtimeo(f->router, 200);
    snprintf(f->dir, sizeof f->dir, "/tmp/kvf_test_worker_XXXXXX");
    cr_assert_not_null(mkdtemp(f->dir));
    const char *argv[64];
    int n = 0;
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/kvf-worker", KVF_BIN_DIR);
    argv[n++] = bin;
    argv[n++] = "--model";
    argv[n++] = model;
    argv[n++] = "--backend";
    argv[n++] = "cpu";
    argv[n++] = "--coordinator";
    argv[n++] = f->endpoint;
    argv[n++] = "--threads";
    argv[n++] = "2";
    for (int i = 0; extra && extra[i]; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    char out[256], errp[256];
    snprintf(out, sizeof out, "%s/out", f->dir);
    snprintf(errp, sizeof errp, "%s/err", f->dir);
    f->pid = fork();
    cr_assert_geq(f->pid, 0);
    if (f->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
        freopen(out, "w", stdout);
        freopen(errp, "w", stderr);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
}

static char *s_read(const s_fix_t *f, const char *name) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", f->dir, name);
    char *s = kvf_test_slurp(p, NULL);
    return s ? s : strdup("");
}

// Waits up to ms for the worker to exit; returns its wait status, or -1.
static int s_wait_exit(s_fix_t *f, int ms) {
    int64_t end = s_ms() + ms;
    while (s_ms() < end) {
        int st;
        pid_t r = waitpid(f->pid, &st, WNOHANG);
        if (r == f->pid) {
            f->pid = 0;
            return st;
        }
        usleep(20000);
    }
    return -1;
}

static void s_stop(s_fix_t *f) {
    if (f->pid > 0) {
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
        f->pid = 0;
    }
    zframe_destroy(&f->peer);
    zsock_destroy(&f->router);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    cr_assert_eq(system(cmd), 0);
}

// Receives the next message of type `type` within ms, skipping HEARTBEATs
// (counted in *n_hb when not NULL). Returns 0 and fills *m, or -1.
static int s_recv_type(s_fix_t *f, kvf_msg_type type, int ms, kvf_msg_t *m, int *n_hb) {
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
        zframe_destroy(&id);
        if (m->type == type) return 0;
        if (m->type == KVF_MSG_HEARTBEAT && n_hb) (*n_hb)++;
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
    cr_assert_eq(s_recv_type(f, KVF_MSG_REGISTER, 20000, reg, NULL), 0, "no REGISTER; stderr: %s", s_read(f, "err"));
    kvf_msg_t w;
    kvf_msg_init(&w, KVF_MSG_WELCOME);
    w.u.welcome.heartbeat_ms = 100;
    w.u.welcome.dead_after_ms = 3000;
    s_send(f, &w);
}

typedef struct {
    int32_t ids[1100];
    int32_t n;
    kvf_msg_result_t last;  // the final chunk's scalar fields
    char text[8192];
    size_t n_text;
    int chunks;
} s_result_t;

// Collects RESULT chunks of rid until the final one.
static void s_collect(s_fix_t *f, uint64_t rid, s_result_t *r, int ms) {
    memset(r, 0, sizeof *r);
    int64_t end = s_ms() + ms;
    for (;;) {
        cr_assert_lt(s_ms(), end, "rid %llu did not finish; stderr: %s", (unsigned long long)rid, s_read(f, "err"));
        kvf_msg_t m;
        if (s_recv_type(f, KVF_MSG_RESULT, 1000, &m, NULL) != 0) continue;
        cr_assert_eq(m.u.result.rid, rid, "RESULT for rid %llu, expected %llu", (unsigned long long)m.u.result.rid,
                     (unsigned long long)rid);
        for (uint32_t i = 0; i < m.u.result.tokens.n && r->n < 1100; i++) r->ids[r->n++] = m.u.result.tokens.ids[i];
        if (r->n_text + m.u.result.text.len < sizeof r->text) {
            memcpy(r->text + r->n_text, m.u.result.text.ptr, m.u.result.text.len);
            r->n_text += m.u.result.text.len;
        }
        r->chunks++;
        int fin = m.u.result.finished;
        r->last = m.u.result;
        r->last.tokens.ids = NULL;
        r->last.text.ptr = NULL;
        r->last.error.ptr = NULL;
        kvf_msg_clear(&m);
        if (fin) return;
    }
}

// Collects the interleaved RESULT chunks of rids rid0 .. rid0 + n - 1 until each has finished:
// got[i] the tokens of rid0 + i (at most 64), n_got[i] their count (zeroed here).
static void s_collect_many(s_fix_t *f, uint64_t rid0, int n, int32_t got[][64], int32_t *n_got, int ms) {
    for (int i = 0; i < n; i++) n_got[i] = 0;
    int done = 0;
    int64_t end = s_ms() + ms;
    while (done < n) {
        cr_assert_lt(s_ms(), end, "%d of %d requests finished", done, n);
        kvf_msg_t m;
        if (s_recv_type(f, KVF_MSG_RESULT, 1000, &m, NULL) != 0) continue;
        int c = (int)(m.u.result.rid - rid0);
        cr_assert(c >= 0 && c < n, "RESULT for rid %llu", (unsigned long long)m.u.result.rid);
        for (uint32_t i = 0; i < m.u.result.tokens.n && n_got[c] < 64; i++)
            got[c][n_got[c]++] = m.u.result.tokens.ids[i];
        if (m.u.result.finished) done++;
        kvf_msg_clear(&m);
    }
}

static json_t *s_golden_case(int c) {
    char path[1024];
    KVF_FIXTURE_PATH(path, "tiny-llama/golden.json");
    json_t *g = json_load_file(path, 0, NULL);
    cr_assert_not_null(g);
    json_t *cs = json_incref(json_array_get(json_object_get(g, "cases"), (size_t)c));
    json_decref(g);
    return cs;
}

static int32_t s_ids(json_t *arr, int32_t *out) {
    int32_t n = (int32_t)json_array_size(arr);
    for (int32_t i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return n;
}

static void s_assign_ids(s_fix_t *f, uint64_t rid, int32_t *ids, int32_t n, int32_t max_new) {
    kvf_msg_t a;
    kvf_msg_init(&a, KVF_MSG_ASSIGN);
    a.u.assign.rid = rid;
    a.u.assign.prompt_ids.ids = ids;
    a.u.assign.prompt_ids.n = (uint32_t)n;
    a.u.assign.sampling.max_new_tokens = max_new;
    a.u.assign.sampling.ignore_eos = 1;
    s_send(f, &a);
}

// ---------------------------------------------------------------- tests

Test(worker, registers_serves_golden_tokens_survives_garbage_and_shuts_down) {
    s_fix_t f;
    const char *extra[] = {"--worker-id", "test-w0", "--block-size", "16", "--cache-max-entry-count", "300",
                           "--session-len", "1024", "--max-batch-size", "16", "--max-prefill-token-num", "256", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    kvf_msg_register_t *r = &reg.u.reg;
    cr_assert_str_eq(r->worker_id.ptr, "test-w0");
    cr_assert_str_eq(r->backend.ptr, "cpu");
    cr_assert_eq(r->device, -1);
    cr_assert_eq(r->tp_size, 1);
    cr_assert_eq(r->total_blocks, 300);
    cr_assert_eq(r->free_blocks, 300);
    cr_assert_eq(r->max_batch_size, 16);
    cr_assert_eq(r->max_prefill_tokens, 256);
    cr_assert_eq(r->session_len, 1024);
    cr_assert_eq(r->vocab_size, 2048);
    cr_assert_eq(r->plan.kv_blocks, 300);
    cr_assert_eq(r->plan.block_size, 16);
    cr_assert_eq(r->plan.tokens_fit, 300 * 16);
    cr_assert_eq(r->plan.full_sequences, 300 / 64);
    cr_assert_gt(r->plan.weights_bytes, 1u << 20);
    cr_assert_gt(r->plan.workspace_bytes, 0);
    cr_assert_eq(r->plan.kv_bytes, 300ull * 16 * 2 * 2 * 2 * 32 * 4, "K+V x 2 layers x 2 kv heads x 32 dims, f32");
    cr_assert_eq(r->plan.kv_dtype, 0);
    cr_assert_eq(r->plan.quant, 0);
    kvf_msg_clear(&reg);
    char *out = s_read(&f, "out");
    cr_assert(strstr(out, "300 blocks x 16 tokens"), "the plan is printed: %s", out);
    free(out);

    // garbage and a message a worker does not take: ERROR back, the worker lives on
    const char junk[] = "\xc1\xff\x00 not msgpack";
    const void *frames[2] = {zframe_data(f.peer), junk};
    size_t lens[2] = {zframe_size(f.peer), sizeof junk};
    kvf_err_t err;
    cr_assert_eq(kvf_zmq_send(f.router, frames, lens, 2, &err), 0);
    kvf_msg_t m;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_ERROR, 5000, &m, NULL), 0);
    cr_assert_eq(m.u.error.code, KVF_E_FORMAT);
    kvf_msg_clear(&m);
    kvf_msg_t sub;
    kvf_msg_init(&sub, KVF_MSG_STATUS);
    s_send(&f, &sub);
    cr_assert_eq(s_recv_type(&f, KVF_MSG_ERROR, 5000, &m, NULL), 0);
    cr_assert_eq(m.u.error.code, KVF_E_PROTO);
    kvf_msg_clear(&m);

    // golden prompts: all five at once, tokens equal the golden greedy ids
    int32_t prompt[5][300], gold[5][64], np[5], ng[5];
    for (int c = 0; c < 5; c++) {
        json_t *cs = s_golden_case(c);
        np[c] = s_ids(json_object_get(cs, "prompt_ids"), prompt[c]);
        ng[c] = s_ids(json_object_get(cs, "greedy_ids"), gold[c]);
        json_decref(cs);
    }
    s_assign_ids(&f, 11, prompt[0], np[0], ng[0]);
    s_result_t res;
    s_collect(&f, 11, &res, 60000);
    cr_assert_eq(res.n, ng[0]);
    cr_assert_arr_eq(res.ids, gold[0], sizeof(int32_t) * (size_t)ng[0]);
    cr_assert_eq(res.last.finish_reason, KVF_FINISH_LENGTH);
    cr_assert_eq(res.last.prompt_tokens, (uint32_t)np[0]);
    cr_assert_eq(res.last.completion_tokens, (uint32_t)ng[0]);
    cr_assert_gt(res.chunks, 1, "tokens are streamed in chunks");
    cr_assert_gt(res.n_text, 0, "text comes with the tokens");
    cr_assert_eq(res.last.free_blocks, 300, "every block is free again");

    // a bad request: RESULT finished with error, and the worker keeps serving
    int32_t bad[3] = {0, 5000, 7};
    s_assign_ids(&f, 12, bad, 3, 4);
    s_collect(&f, 12, &res, 10000);
    cr_assert_eq(res.last.finish_reason, KVF_FINISH_ERROR);
    cr_assert_eq(res.last.error_code, KVF_E_INVAL);
    kvf_msg_t both;
    kvf_msg_init(&both, KVF_MSG_ASSIGN);
    both.u.assign.rid = 13;
    s_send(&f, &both);  // neither text nor ids
    s_collect(&f, 13, &res, 10000);
    cr_assert_eq(res.last.finish_reason, KVF_FINISH_ERROR);
    int32_t longp[1100];
    for (int i = 0; i < 1100; i++) longp[i] = 3 + i % 1000;
    s_assign_ids(&f, 14, longp, 1100, 4);
    s_collect(&f, 14, &res, 10000);
    cr_assert_eq(res.last.error_code, KVF_E_TOO_LONG);

    // a text prompt is tokenized by the worker
    kvf_msg_t t;
    kvf_msg_init(&t, KVF_MSG_ASSIGN);
    t.u.assign.rid = 15;
    t.u.assign.text = kvf_str("Hello world");
    t.u.assign.sampling.max_new_tokens = 3;
    t.u.assign.sampling.ignore_eos = 1;
    s_send(&f, &t);
    s_collect(&f, 15, &res, 20000);
    cr_assert_eq(res.last.finish_reason, KVF_FINISH_LENGTH);
    cr_assert_eq(res.last.prompt_tokens, 7, "BOS + 6 tokens of 'Hello world'");
    cr_assert_eq(res.n, 3);

    // the four other golden cases concurrently, results interleaved
    for (int c = 1; c < 5; c++) s_assign_ids(&f, 20 + (uint64_t)c, prompt[c], np[c], ng[c]);
    int32_t got[4][64], n_got[4];
    s_collect_many(&f, 21, 4, got, n_got, 60000);
    for (int c = 1; c < 5; c++) {
        cr_assert_eq(n_got[c - 1], ng[c]);
        cr_assert_arr_eq(got[c - 1], gold[c], sizeof(int32_t) * (size_t)ng[c], "case %d", c);
    }

    // heartbeats carry the load
    int n_hb = 0;
    kvf_msg_t hb;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_HEARTBEAT, 5000, &hb, &n_hb), 0);
    cr_assert_eq(hb.u.heartbeat.total_blocks, 300);
    cr_assert_eq(hb.u.heartbeat.free_blocks, 300);
    cr_assert_eq(hb.u.heartbeat.state, KVF_WSTATE_READY);
    cr_assert_geq(hb.u.heartbeat.tokens_total, 32 * 5 + 3);
    kvf_msg_clear(&hb);

    // CANCEL ends a long request with a final "cancelled"
    s_assign_ids(&f, 30, prompt[0], np[0], 1000);
    cr_assert_eq(s_recv_type(&f, KVF_MSG_RESULT, 20000, &m, NULL), 0);
    cr_assert_eq(m.u.result.rid, 30);
    cr_assert_eq(m.u.result.finished, 0);
    kvf_msg_clear(&m);
    kvf_msg_t cancel;
    kvf_msg_init(&cancel, KVF_MSG_CANCEL);
    cancel.u.cancel.rid = 30;
    s_send(&f, &cancel);
    s_collect(&f, 30, &res, 20000);
    cr_assert_eq(res.last.finish_reason, KVF_FINISH_CANCELLED);
    cr_assert_lt(res.last.completion_tokens, 1000);

    // SHUTDOWN with work in flight: the work is cancelled, exit 0
    s_assign_ids(&f, 31, prompt[1], np[1], 1000);
    kvf_msg_t sd;
    kvf_msg_init(&sd, KVF_MSG_SHUTDOWN);
    s_send(&f, &sd);
    s_collect(&f, 31, &res, 20000);
    cr_assert_eq(res.last.finish_reason, KVF_FINISH_CANCELLED);
    int st = s_wait_exit(&f, 10000);
    cr_assert_neq(st, -1, "the worker did not exit after SHUTDOWN");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d; stderr: %s", st, s_read(&f, "err"));
    s_stop(&f);
}

Test(worker, drain_refuses_new_work_and_sigterm_exits_cleanly) {
    s_fix_t f;
    const char *extra[] = {"--block-size", "16", "--cache-max-entry-count", "200", "--session-len", "512",
                           "--enable-prefix-caching", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    cr_assert_eq(reg.u.reg.prefix_caching, 1);
    cr_assert(strstr(reg.u.reg.worker_id.ptr, ":cpu-"), "default id %s", reg.u.reg.worker_id.ptr);
    kvf_msg_clear(&reg);
    // work in flight, then DRAIN: it finishes, new work is refused
    int32_t p[8] = {0, 48, 79, 312, 1222, 267, 276, 876};
    s_assign_ids(&f, 1, p, 8, 20);
    kvf_msg_t d;
    kvf_msg_init(&d, KVF_MSG_DRAIN);
    s_send(&f, &d);
    s_assign_ids(&f, 2, p, 8, 5);
    int done1 = 0, refused2 = 0, n1 = 0;
    int64_t end = s_ms() + 30000;
    kvf_msg_t m;
    while (!(done1 && refused2)) {
        cr_assert_lt(s_ms(), end);
        if (s_recv_type(&f, KVF_MSG_RESULT, 1000, &m, NULL) != 0) continue;
        if (m.u.result.rid == 1) {
            n1 += (int)m.u.result.tokens.n;
            if (m.u.result.finished) {
                done1 = 1;
                cr_assert_eq(m.u.result.finish_reason, KVF_FINISH_LENGTH);
            }
        } else {
            cr_assert_eq(m.u.result.rid, 2);
            cr_assert(m.u.result.finished);
            cr_assert_eq(m.u.result.finish_reason, KVF_FINISH_ERROR);
            cr_assert_eq(m.u.result.error_code, KVF_E_BUSY);
            refused2 = 1;
        }
        kvf_msg_clear(&m);
    }
    cr_assert_eq(n1, 20, "the running request finished in full");
    cr_assert_eq(s_recv_type(&f, KVF_MSG_HEARTBEAT, 5000, &m, NULL), 0);
    cr_assert_eq(m.u.heartbeat.state, KVF_WSTATE_DRAINING);
    kvf_msg_clear(&m);
    kill(f.pid, SIGTERM);
    int st = s_wait_exit(&f, 10000);
    cr_assert_neq(st, -1, "no exit after SIGTERM");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
    s_stop(&f);
}

Test(worker, registration_is_repeated_until_welcome) {
    s_fix_t f;
    const char *extra[] = {"--block-size", "16", "--cache-max-entry-count", "100", "--session-len", "256", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_REGISTER, 20000, &reg, NULL), 0);
    kvf_msg_clear(&reg);
    int64_t t0 = s_ms();
    cr_assert_eq(s_recv_type(&f, KVF_MSG_REGISTER, 3000, &reg, NULL), 0, "REGISTER is sent again");
    cr_assert_geq(s_ms() - t0, 500, "about once a second");
    kvf_msg_clear(&reg);
    // a refusal before the first WELCOME is fatal: non-zero exit, the reason on stderr
    kvf_msg_t e;
    kvf_msg_init(&e, KVF_MSG_ERROR);
    e.u.error.code = KVF_E_INVAL;
    e.u.error.message = kvf_str("duplicate worker_id");
    s_send(&f, &e);
    int st = s_wait_exit(&f, 10000);
    cr_assert_neq(st, -1);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    char *se = s_read(&f, "err");
    cr_assert(strstr(se, "duplicate worker_id"), "%s", se);
    free(se);
    s_stop(&f);
}

Test(worker, forgotten_by_the_coordinator_drops_work_and_registers_again) {
    s_fix_t f;
    const char *extra[] = {"--block-size", "16", "--cache-max-entry-count", "100", "--session-len", "1024", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    kvf_msg_clear(&reg);
    int32_t p[8] = {0, 48, 79, 312, 1222, 267, 276, 876};
    s_assign_ids(&f, 5, p, 8, 1000);
    kvf_msg_t m;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_RESULT, 20000, &m, NULL), 0);
    kvf_msg_clear(&m);
    // what a restarted coordinator answers to a HEARTBEAT or RESULT
    kvf_msg_t e;
    kvf_msg_init(&e, KVF_MSG_ERROR);
    e.u.error.code = KVF_E_PROTO;
    e.u.error.message = kvf_str("HEARTBEAT from an unregistered worker: send REGISTER first");
    s_send(&f, &e);
    // RESULTs already queued may still arrive; then REGISTER, with every block free
    int64_t end = s_ms() + 10000;
    int got_reg = 0;
    while (!got_reg) {
        cr_assert_lt(s_ms(), end, "no REGISTER after the coordinator forgot the worker");
        zframe_t *id = NULL;
        kvf_err_t err;
        if (kvf_msg_recv(f.router, &id, &m, &err) != 0) {
            zframe_destroy(&id);
            continue;
        }
        zframe_destroy(&id);
        if (m.type == KVF_MSG_REGISTER) {
            got_reg = 1;
            cr_assert_eq(m.u.reg.free_blocks, m.u.reg.total_blocks, "the dropped request holds no blocks");
        }
        kvf_msg_clear(&m);
    }
    kvf_msg_t w;
    kvf_msg_init(&w, KVF_MSG_WELCOME);
    w.u.welcome.heartbeat_ms = 100;
    s_send(&f, &w);
    cr_assert_eq(s_recv_type(&f, KVF_MSG_HEARTBEAT, 5000, &m, NULL), 0);
    cr_assert_eq(m.u.heartbeat.running + m.u.heartbeat.waiting, 0);
    kvf_msg_clear(&m);
    // no RESULT for the dropped request any more
    cr_assert_eq(s_recv_type(&f, KVF_MSG_RESULT, 500, &m, NULL), -1);
    kill(f.pid, SIGTERM);
    int st = s_wait_exit(&f, 10000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    s_stop(&f);
}

Test(worker, reports_at_once_when_it_goes_idle) {
    s_fix_t f;
    const char *extra[] = {"--block-size", "16", "--cache-max-entry-count", "100", "--session-len", "1024", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_REGISTER, 20000, &reg, NULL), 0, "no REGISTER; stderr: %s", s_read(&f, "err"));
    kvf_msg_clear(&reg);
    kvf_msg_t w;
    kvf_msg_init(&w, KVF_MSG_WELCOME);
    w.u.welcome.heartbeat_ms = 60000;  // no periodic heartbeat during this test
    w.u.welcome.dead_after_ms = 180000;
    s_send(&f, &w);
    kvf_msg_t m;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_HEARTBEAT, 5000, &m, NULL), 0, "a first report right after WELCOME");
    kvf_msg_clear(&m);
    int32_t p[8] = {0, 48, 79, 312, 1222, 267, 276, 876};
    s_assign_ids(&f, 9, p, 8, 12);
    s_result_t r;
    s_collect(&f, 9, &r, 20000);
    cr_assert_eq(r.n, 12);
    // The last busy report said "1 running"; the idle one must follow the final
    // RESULT at once, not a heartbeat interval (60 s) later.
    cr_assert_eq(s_recv_type(&f, KVF_MSG_HEARTBEAT, 3000, &m, NULL), 0, "no report on going idle");
    cr_assert_eq(m.u.heartbeat.running, 0);
    cr_assert_eq(m.u.heartbeat.waiting, 0);
    cr_assert_eq(m.u.heartbeat.free_blocks, m.u.heartbeat.total_blocks);
    kvf_msg_clear(&m);
    kill(f.pid, SIGTERM);
    int st = s_wait_exit(&f, 10000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    s_stop(&f);
}

// --kv-cache-dtype fp8 (and --quantization fp8): the registration's plan says so (kvfctl status shows it),
// and so does the printed plan.
Test(worker, fp8_kv_cache_is_in_the_plan) {
    s_fix_t f;
    const char *extra[] = {"--block-size", "16", "--cache-max-entry-count", "100", "--session-len", "256",
                           "--kv-cache-dtype", "fp8", "--quantization", "fp8", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    cr_assert_eq(reg.u.reg.plan.kv_dtype, 1);
    cr_assert_eq(reg.u.reg.plan.quant, 1);
    cr_assert_eq(reg.u.reg.plan.kv_blocks, 100);
    kvf_msg_clear(&reg);
    char *out = s_read(&f, "out");
    cr_assert(strstr(out, "KV cache (fp8)"), "the plan names the cache: %s", out);
    cr_assert(strstr(out, "(quantization fp8)"), "the plan names the quantization: %s", out);
    free(out);
    s_stop(&f);
}

// --sched prefill-first (offline batches): the printed plan names the policy, and golden prompts sent
// together still come back as the golden greedy ids (the policy changes which rows share a step, not what
// a row computes). A policy that does not exist is a usage error naming the choices.
Test(worker, prefill_first_scheduling_serves_golden_tokens) {
    s_fix_t f;
    const char *extra[] = {"--block-size", "16", "--cache-max-entry-count", "300", "--session-len", "1024",
                           "--max-batch-size", "16", "--max-prefill-token-num", "64", "--sched", "prefill-first", NULL};
    s_start(&f, extra);
    kvf_msg_t reg;
    s_register_and_welcome(&f, &reg);
    kvf_msg_clear(&reg);
    char *out = s_read(&f, "out");
    cr_assert(strstr(out, "steps prefill-first"), "the plan names the policy: %s", out);
    free(out);
    int32_t prompt[3][300], gold[3][64], np[3], ng[3];
    for (int c = 0; c < 3; c++) {
        json_t *cs = s_golden_case(c);
        np[c] = s_ids(json_object_get(cs, "prompt_ids"), prompt[c]);
        ng[c] = s_ids(json_object_get(cs, "greedy_ids"), gold[c]);
        json_decref(cs);
        s_assign_ids(&f, 21 + c, prompt[c], np[c], ng[c]);
    }
    int32_t got[3][64], n_got[3];
    s_collect_many(&f, 21, 3, got, n_got, 60000);
    for (int c = 0; c < 3; c++) {
        cr_assert_eq(n_got[c], ng[c]);
        cr_assert_arr_eq(got[c], gold[c], sizeof(int32_t) * (size_t)ng[c], "case %d", c);
    }
    s_stop(&f);

    const char *bad[] = {"--sched", "fastest", NULL};
    s_start(&f, bad);
    int st = s_wait_exit(&f, 20000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
    char *se = s_read(&f, "err");
    cr_assert(strstr(se, "--sched: 'fastest' is not mixed or prefill-first"), "%s", se);
    free(se);
    s_stop(&f);
}

Test(worker, impossible_plan_exits_before_connecting) {
    s_fix_t f;
    const char *extra[] = {"--memory-budget", "4M", NULL};
    s_start(&f, extra);
    int st = s_wait_exit(&f, 20000);
    cr_assert_neq(st, -1);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    char *se = s_read(&f, "err");
    cr_assert(strstr(se, "--memory-budget"), "stderr names the knob: %s", se);
    free(se);
    kvf_msg_t m;
    cr_assert_eq(s_recv_type(&f, KVF_MSG_REGISTER, 300, &m, NULL), -1, "nothing was sent");
    s_stop(&f);

    // a pool below one full-length sequence names the knobs too
    const char *extra2[] = {"--block-size", "16", "--cache-max-entry-count", "10", "--session-len", "256", NULL};
    s_start(&f, extra2);
    st = s_wait_exit(&f, 20000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0);
    se = s_read(&f, "err");
    cr_assert(strstr(se, "--cache-max-entry-count") && strstr(se, "--session-len"), "%s", se);
    free(se);
    cr_assert_eq(s_recv_type(&f, KVF_MSG_REGISTER, 300, &m, NULL), -1);
    s_stop(&f);

    // a bad flag: usage error
    const char *extra3[] = {"--frobnicate", "1", NULL};
    s_start(&f, extra3);
    st = s_wait_exit(&f, 20000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
    s_stop(&f);

    // a KV cache format that does not exist: usage error naming the flag and the choices
    const char *extra4[] = {"--kv-cache-dtype", "int4", NULL};
    s_start(&f, extra4);
    st = s_wait_exit(&f, 20000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
    se = s_read(&f, "err");
    cr_assert(strstr(se, "--kv-cache-dtype 'int4': expected auto or fp8"), "%s", se);
    free(se);
    s_stop(&f);

    // a quantization that does not exist: the same
    const char *extra5[] = {"--quantization", "awq", NULL};
    s_start(&f, extra5);
    st = s_wait_exit(&f, 20000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
    se = s_read(&f, "err");
    cr_assert(strstr(se, "--quantization 'awq': expected none or fp8"), "%s", se);
    free(se);
    s_stop(&f);
}
