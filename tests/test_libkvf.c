// tests/test_libkvf.c — libkvf against a real kvf-coordinator (and, where
// generation is needed, a real CPU kvf-worker) on loopback.
#include <criterion/criterion.h>
#include <string.h>

#include "cluster_harness.h"
#include "proto/codec.h"

static kvf_request_t s_req(const char *text, int max_new) {
    kvf_request_t r = {.text = text, .sampling = kvf_sampling_default()};
    r.sampling.max_new_tokens = max_new;
    return r;
}

// Collects events until every rid in rids[0..n-1] has its last event. Fails on a
// second terminal event for a rid, or on an event of an unknown rid.
typedef struct {
    uint64_t rid;
    int done, errors;
    kvf_finish_reason reason;
    kvf_status code;
    uint32_t n_tokens, completion_tokens, prompt_tokens;
    char text[4096];
} s_res_t;

static void s_collect(kvf_client_t *cl, const uint64_t *rids, size_t n, s_res_t *res, double timeout_s) {
    for (size_t i = 0; i < n; i++) {
        memset(&res[i], 0, sizeof res[i]);
        res[i].rid = rids[i];
    }
    size_t left = n;
    double end = kvh_now() + timeout_s;
    while (left > 0) {
        cr_assert_lt(kvh_now(), end, "%zu requests unfinished after %.0f s", left, timeout_s);
        kvf_event_t ev = {0};
        kvf_err_t err;
        if (kvf_client_next(cl, 200, &ev, &err) < 0) {
            cr_assert_eq(err.code, KVF_E_TIMEOUT, "%s", err.msg);
            continue;
        }
        size_t k = 0;
        while (k < n && rids[k] != ev.rid) k++;
        cr_assert_lt(k, n, "event for rid %llu that was not submitted", (unsigned long long)ev.rid);
        s_res_t *r = &res[k];
        cr_assert_eq(r->done + r->errors, 0, "rid %llu: event after its last one", (unsigned long long)ev.rid);
        if (ev.type == KVF_EVENT_TOKENS) {
            r->n_tokens += ev.n_ids;
            strncat(r->text, ev.text, sizeof r->text - strlen(r->text) - 1);
        } else if (ev.type == KVF_EVENT_DONE) {
            r->done = 1;
            r->reason = ev.finish_reason;
            r->prompt_tokens = ev.prompt_tokens;
            r->completion_tokens = ev.completion_tokens;
            left--;
        } else {
            r->errors = 1;
            r->code = ev.code;
            left--;
        }
        kvf_event_clear(&ev);
    }
}

// ---------------------------------------------------------------- coordinator only

Test(libkvf, unreachable_coordinator_times_out_with_a_clear_error) {
    kvf_err_t err;
    cr_assert_null(kvf_client_new("not-an-endpoint", &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    kvf_client_t *cl = kvf_client_new("tcp://127.0.0.1:1", &err);
    cr_assert_not_null(cl, "%s", err.msg);
    kvf_client_set_timeout(cl, 300);
    kvf_cluster_status_t *st = NULL;
    double t0 = kvh_now();
    cr_assert_eq(kvf_client_status(cl, &st, &err), -1);
    double dt = kvh_now() - t0;
    cr_assert_eq(err.code, KVF_E_TIMEOUT);
    cr_assert(strstr(err.msg, "tcp://127.0.0.1:1"), "%s", err.msg);
    cr_assert(dt >= 0.25 && dt < 3, "took %.2f s", dt);
    cr_assert_null(st);
    kvf_event_t ev = {0};
    cr_assert_eq(kvf_client_next(cl, 50, &ev, &err), -1);
    cr_assert_eq(err.code, KVF_E_TIMEOUT);
    kvf_client_destroy(&cl);
    cr_assert_null(cl);
    kvf_client_destroy(&cl);  // NULL is fine
}

Test(libkvf, control_calls_without_workers) {
    kvh_require_bin("kvf-coordinator");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, model, "--queue-cap", "1000", NULL);
    kvf_client_t *cl = kvh_client(&c);
    kvf_err_t err;

    kvf_cluster_status_t *st = NULL;
    cr_assert_eq(kvf_client_status(cl, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(st->n_workers, 0);
    cr_assert_eq(st->queue_cap, 1000);
    kvf_cluster_status_destroy(&st);
    cr_assert_null(st);

    // Invalid requests are refused before anything is sent.
    kvf_request_t bad = s_req("x", 4);
    bad.sampling.top_p = 0;
    uint64_t rid = 0;
    cr_assert_eq(kvf_client_submit(cl, NULL, &bad, 1, &rid, NULL, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert(strstr(err.msg, "top_p"), "%s", err.msg);
    kvf_request_t none = {.sampling = kvf_sampling_default()};
    cr_assert_eq(kvf_client_submit(cl, NULL, &none, 1, &rid, NULL, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(kvf_client_submit(cl, NULL, &bad, 0, &rid, NULL, &err), -1);

    // Nothing can run yet: the requests wait in the coordinator's queue.
    kvf_request_t reqs[3] = {s_req("Hello there", 8), s_req("Second prompt", 8), s_req("Third", 8)};
    int32_t ids[] = {5, 6, 7};
    reqs[2].text = NULL;
    reqs[2].prompt_ids = ids;
    reqs[2].n_prompt_ids = 3;
    reqs[1].tag = "my-tag";
    uint64_t rids[3];
    char *bid = NULL;
    cr_assert_eq(kvf_client_submit(cl, "batch-A", reqs, 3, rids, &bid, &err), 0, "%s", err.msg);
    cr_assert_str_eq(bid, "batch-A");
    free(bid);
    cr_assert(rids[0] != 0 && rids[0] != rids[1] && rids[1] != rids[2]);
    cr_assert_eq(kvf_client_status(cl, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(st->queue_len, 3);
    kvf_cluster_status_destroy(&st);

    // A batch id in use is refused.
    cr_assert_eq(kvf_client_submit(cl, "batch-A", reqs, 1, rids + 0, NULL, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL, "%s", err.msg);

    // A second client re-attaches to the batch and gets the same rids.
    kvf_client_t *cl2 = kvh_client(&c);
    uint64_t *arids = NULL;
    size_t an = 0;
    cr_assert_eq(kvf_client_attach(cl2, "batch-A", &arids, &an, &err), 0, "%s", err.msg);
    cr_assert_eq(an, 3);
    cr_assert_eq(memcmp(arids, rids, sizeof rids), 0);
    free(arids);
    cr_assert_eq(kvf_client_attach(cl2, "no-such-batch", &arids, &an, &err), -1);
    cr_assert_eq(err.code, KVF_E_NOT_FOUND);

    // Cancel one request, then the rest of the batch: each ends with DONE cancelled,
    // streamed to the attached client.
    cr_assert_eq(kvf_client_cancel(cl2, rids[0], NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_client_cancel(cl2, 0, "batch-A", &err), 0, "%s", err.msg);
    s_res_t res[3];
    s_collect(cl2, rids, 3, res, 10);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(res[i].done, 1);
        cr_assert_eq(res[i].reason, KVF_FINISH_CANCELLED);
        cr_assert_eq(res[i].n_tokens, 0);
    }
    cr_assert_eq(kvf_client_cancel(cl2, 987654, NULL, &err), -1);
    cr_assert_eq(err.code, KVF_E_NOT_FOUND, "%s", err.msg);
    cr_assert_eq(kvf_client_drain(cl2, "nobody", &err), -1);
    cr_assert_eq(err.code, KVF_E_NOT_FOUND, "%s", err.msg);

    // A prompt id outside the tokenizer's vocabulary gets a rid and an ERROR.
    int32_t big[] = {1, 999999};
    kvf_request_t r = {.prompt_ids = big, .n_prompt_ids = 2, .sampling = kvf_sampling_default()};
    cr_assert_eq(kvf_client_submit(cl2, NULL, &r, 1, &rid, NULL, &err), 0, "%s", err.msg);
    s_collect(cl2, &rid, 1, res, 10);
    cr_assert_eq(res[0].errors, 1);
    cr_assert_eq(res[0].code, KVF_E_INVAL);

    // SHUTDOWN stops the coordinator.
    cr_assert_eq(kvf_client_shutdown(cl, &err), 0, "%s", err.msg);
    cr_assert_eq(kvh_wait(c.coord, 10), 0, "coordinator did not exit after SHUTDOWN");
    c.coord = 0;
    kvf_client_destroy(&cl);
    kvf_client_destroy(&cl2);
    kvh_teardown(&c);
}

// ---------------------------------------------------------------- with a worker

Test(libkvf, stream_cancel_and_drain_with_one_worker) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, model, NULL);
    kvh_start_worker(&c, model, "w0", "--threads", "1", "--cache-max-entry-count", "256", NULL);
    kvh_wait_ready(&c, 1, 60);
    kvf_client_t *cl = kvh_client(&c);
    kvf_err_t err;

    kvf_request_t reqs[4] = {s_req("The quick brown fox", 12), s_req("Once upon a time", 5),
                             s_req("Numbers: 1 2 3 4 5 6 7 8 9 10", 1), s_req("zzz", 20)};
    reqs[3].sampling.ignore_eos = 1;
    reqs[0].sampling.ignore_eos = 1;
    uint64_t rids[4];
    cr_assert_eq(kvf_client_submit(cl, NULL, reqs, 4, rids, NULL, &err), 0, "%s", err.msg);
    s_res_t res[4];
    s_collect(cl, rids, 4, res, 60);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(res[i].done, 1, "request %d failed (%s)", i, kvf_status_name(res[i].code));
        cr_assert_eq(res[i].n_tokens, res[i].completion_tokens, "request %d: streamed %u tokens, DONE says %u", i,
                     res[i].n_tokens, res[i].completion_tokens);
        cr_assert_gt(res[i].prompt_tokens, 0);
        cr_assert_leq(res[i].completion_tokens, (uint32_t)reqs[i].sampling.max_new_tokens);
    }
    cr_assert_eq(res[0].completion_tokens, 12);
    cr_assert_eq(res[0].reason, KVF_FINISH_LENGTH);
    cr_assert_eq(res[3].completion_tokens, 20);

    // Greedy is deterministic: the same prompt twice gives the same text.
    uint64_t again;
    cr_assert_eq(kvf_client_submit(cl, NULL, &reqs[0], 1, &again, NULL, &err), 0, "%s", err.msg);
    s_res_t res2;
    s_collect(cl, &again, 1, &res2, 60);
    cr_assert_str_eq(res2.text, res[0].text);

    // A long generation cancelled mid-way ends with DONE cancelled and fewer tokens.
    kvf_request_t lng = s_req("A long story:", 400);
    lng.sampling.ignore_eos = 1;
    uint64_t lrid;
    cr_assert_eq(kvf_client_submit(cl, NULL, &lng, 1, &lrid, NULL, &err), 0, "%s", err.msg);
    kvf_event_t ev = {0};
    cr_assert_eq(kvf_client_next(cl, 30000, &ev, &err), 0, "%s", err.msg);
    cr_assert_eq(ev.type, KVF_EVENT_TOKENS);
    kvf_event_clear(&ev);
    cr_assert_eq(kvf_client_cancel(cl, lrid, NULL, &err), 0, "%s", err.msg);
    uint32_t got = 0;
    for (;;) {
        cr_assert_eq(kvf_client_next(cl, 30000, &ev, &err), 0, "%s", err.msg);
        if (ev.type == KVF_EVENT_TOKENS) got += ev.n_ids;
        if (ev.type != KVF_EVENT_TOKENS) break;
        kvf_event_clear(&ev);
    }
    cr_assert_eq(ev.type, KVF_EVENT_DONE);
    cr_assert_eq(ev.finish_reason, KVF_FINISH_CANCELLED);
    cr_assert_lt(ev.completion_tokens, 400);
    kvf_event_clear(&ev);

    // A client that leaves mid-stream: another attaches to the batch by id and
    // gets every token of it (what was already sent, then the rest) exactly once.
    kvf_client_t *gone = kvh_client(&c);
    kvf_request_t two[2] = {s_req("Attach me", 150), s_req("And me", 120)};
    two[0].sampling.ignore_eos = two[1].sampling.ignore_eos = 1;
    uint64_t trids[2];
    cr_assert_eq(kvf_client_submit(gone, "leaving", two, 2, trids, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_client_next(gone, 30000, &ev, &err), 0, "%s", err.msg);
    kvf_event_clear(&ev);
    kvf_client_destroy(&gone);
    kvf_client_t *back = kvh_client(&c);
    uint64_t *arids = NULL;
    size_t an = 0;
    cr_assert_eq(kvf_client_attach(back, "leaving", &arids, &an, &err), 0, "%s", err.msg);
    cr_assert_eq(an, 2);
    cr_assert_eq(arids[0], trids[0]);
    free(arids);
    s_res_t tres[2];
    s_collect(back, trids, 2, tres, 60);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(tres[i].done, 1);
        cr_assert_eq(tres[i].completion_tokens, (uint32_t)two[i].sampling.max_new_tokens);
        cr_assert_eq(tres[i].n_tokens, tres[i].completion_tokens, "attached client saw %u of %u tokens",
                     tres[i].n_tokens, tres[i].completion_tokens);
    }
    kvf_client_destroy(&back);

    // Drain: the worker shows as draining, and new work waits in the queue.
    cr_assert_eq(kvf_client_drain(cl, "w0", &err), 0, "%s", err.msg);
    kvf_cluster_status_t *st = NULL;
    cr_assert_eq(kvf_client_status(cl, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(st->n_workers, 1);
    cr_assert_str_eq(st->workers[0].worker_id, "w0");
    cr_assert_str_eq(kvf_wstate_name(st->workers[0].load.state), "draining");
    cr_assert_str_eq(st->workers[0].backend, "cpu");
    cr_assert_gt(st->workers[0].plan.kv_blocks, 0);
    cr_assert_eq(st->workers[0].load.total_blocks, st->workers[0].plan.kv_blocks);
    kvf_cluster_status_destroy(&st);

    kvf_client_destroy(&cl);
    kvh_teardown(&c);
}
