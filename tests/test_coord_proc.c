// tests/test_coord_proc.c — the real kvf-coordinator binary, with the test
// playing clients and workers: registration and STATUS, placement only where
// blocks fit, queueing until a RESULT frees blocks, results to the right client
// in order, dead workers' work resumed elsewhere, per-request errors, busy,
// cancel, drain, attach.
#include "test_coord_harness.h"

static const char *const s_slow_death[] = {"--dead-after-ms", "20000", NULL};

Test(coord_proc, status_shows_registered_worker) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--queue-cap", "77", "--dead-after-ms", "20000", NULL});
    zsock_t *w = worker_new(&p, "host:gpu0", 100, 90, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.n_workers, 1);
    const kvf_worker_status_t *ws = status_worker(&st, "host:gpu0");
    cr_assert_eq(ws->load.state, KVF_WSTATE_READY);
    cr_assert_eq(ws->load.total_blocks, 100);
    cr_assert_eq(ws->load.free_blocks, 90);
    cr_assert_eq(ws->block_size, 16);
    cr_assert_str_eq(ws->backend.ptr, "cpu");
    cr_assert_eq(ws->device, -1);
    cr_assert_eq(ws->assigned, 0);
    cr_assert_lt(ws->last_seen_ms, 5000);
    cr_assert_eq(st.u.status.queue_cap, 77);
    cr_assert_eq(st.u.status.queue_len, 0);
    kvf_msg_clear(&st);
    // A heartbeat updates the free blocks shown.
    worker_heartbeat(w, 42, 100);
    wait_worker_free(cl, "host:gpu0", 42);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, assign_only_where_blocks_fit_then_queue) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *small = worker_new(&p, "small", 10, 10, 16);
    zsock_t *big = worker_new(&p, "big", 100, 100, 16);
    worker_heartbeat(big, 5, 100);  // big is nearly full right now
    zsock_t *cl = peer_new(p.front, NULL);
    wait_worker_free(cl, "big", 5);
    uint64_t r1, r2;
    // 8 blocks (16 + 112 tokens): only small has 8 free.
    client_submit(cl, "fit", 1, 16, 112, &r1);
    kvf_msg_t m;
    peer_expect(small, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, r1);
    cr_assert_eq(m.u.assign.prompt_ids.n, 16);
    cr_assert_eq(m.u.assign.prompt_ids.ids[15], 16);
    cr_assert_eq(m.u.assign.resume_ids.n, 0);
    cr_assert_eq(m.u.assign.sampling.max_new_tokens, 112);
    kvf_msg_clear(&m);
    peer_expect_silence(big, 200);
    // 14 blocks: more than small's total, more than big's 5 free: queued.
    client_submit(cl, "wait", 1, 16, 208, &r2);
    peer_expect_silence(big, 300);
    peer_expect_silence(small, 1);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.queue_len, 1);
    cr_assert_eq(status_worker(&st, "small")->assigned, 1);
    kvf_msg_clear(&st);
    // small finishes r1 (a RESULT is a report too), big still has 5: nothing moves.
    worker_result(small, r1, (int32_t[]){4}, 1, "x", 1, KVF_FINISH_STOP, 10);
    peer_expect(cl, KVF_MSG_TOKENS, &m);
    kvf_msg_clear(&m);
    peer_expect(cl, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, r1);
    kvf_msg_clear(&m);
    peer_expect_silence(big, 300);
    // big reports blocks freed: the queued request goes there.
    worker_heartbeat(big, 100, 100);
    peer_expect(big, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, r2);
    kvf_msg_clear(&m);
    client_status(cl, &st);
    cr_assert_eq(st.u.status.queue_len, 0);
    cr_assert_eq(st.u.status.requests_done, 1);
    cr_assert_eq(status_worker(&st, "big")->assigned, 1);
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    zsock_destroy(&small);
    zsock_destroy(&big);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, queued_until_result_frees_blocks) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *w = worker_new(&p, "w", 10, 10, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rids[2];
    // Two requests of 6 blocks on a 10-block worker: the ledger takes one only.
    client_submit(cl, NULL, 2, 16, 80, rids);
    kvf_msg_t m;
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rids[0]);
    kvf_msg_clear(&m);
    // Even a report that claims everything free does not let the second in.
    worker_heartbeat(w, 10, 10);
    peer_expect_silence(w, 300);
    worker_result(w, rids[0], (int32_t[]){9, 9}, 2, "", 1, KVF_FINISH_LENGTH, 10);
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rids[1]);
    kvf_msg_clear(&m);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, results_go_to_the_right_client_in_order) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    zsock_t *a = peer_new(p.front, NULL), *b = peer_new(p.front, NULL);
    uint64_t ra, rb;
    client_submit(a, "A", 1, 5, 10, &ra);
    client_submit(b, "B", 1, 7, 10, &rb);
    kvf_msg_t m;
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, ra);
    kvf_msg_clear(&m);
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rb);
    kvf_msg_clear(&m);
    worker_result(w, rb, (int32_t[]){70}, 1, "b1", 0, KVF_FINISH_NONE, 98);
    worker_result(w, ra, (int32_t[]){10, 11}, 2, "a1", 0, KVF_FINISH_NONE, 98);
    worker_result(w, ra, (int32_t[]){12}, 1, "a2", 0, KVF_FINISH_NONE, 98);
    worker_result(w, ra, NULL, 0, "", 1, KVF_FINISH_STOP, 99);
    worker_result(w, rb, (int32_t[]){71}, 1, "b2", 1, KVF_FINISH_LENGTH, 100);
    // A: TOKENS [10 11] "a1", TOKENS [12] "a2", DONE stop 5/3.
    peer_expect(a, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.rid, ra);
    cr_assert_eq(m.u.tokens.tokens.n, 2);
    cr_assert_eq(m.u.tokens.tokens.ids[1], 11);
    cr_assert_str_eq(m.u.tokens.text.ptr, "a1");
    kvf_msg_clear(&m);
    peer_expect(a, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.tokens.ids[0], 12);
    kvf_msg_clear(&m);
    peer_expect(a, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, ra);
    cr_assert_eq(m.u.done.finish_reason, KVF_FINISH_STOP);
    cr_assert_eq(m.u.done.prompt_tokens, 5);
    cr_assert_eq(m.u.done.completion_tokens, 3);
    kvf_msg_clear(&m);
    peer_expect_silence(a, 100);
    // B: its own two chunks, then DONE length.
    peer_expect(b, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.rid, rb);
    cr_assert_eq(m.u.tokens.tokens.ids[0], 70);
    kvf_msg_clear(&m);
    peer_expect(b, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.tokens.ids[0], 71);
    cr_assert_str_eq(m.u.tokens.text.ptr, "b2");
    kvf_msg_clear(&m);
    peer_expect(b, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.finish_reason, KVF_FINISH_LENGTH);
    cr_assert_eq(m.u.done.prompt_tokens, 7);
    cr_assert_eq(m.u.done.completion_tokens, 2);
    kvf_msg_clear(&m);
    // A result for a finished request is dropped, not forwarded.
    worker_result(w, ra, (int32_t[]){13}, 1, "late", 1, KVF_FINISH_STOP, 100);
    peer_expect_silence(a, 200);
    zsock_destroy(&a);
    zsock_destroy(&b);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, dead_worker_request_resumes_elsewhere) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--heartbeat-ms", "100", "--dead-after-ms", "600", NULL});
    zsock_t *w1 = worker_new(&p, "w1", 100, 100, 16);
    zsock_t *w2 = worker_new(&p, "w2", 50, 50, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rid;
    client_submit(cl, "job", 1, 8, 20, &rid);
    kvf_msg_t m;
    peer_expect(w1, KVF_MSG_ASSIGN, &m);  // most free blocks
    cr_assert_eq(m.u.assign.rid, rid);
    kvf_msg_clear(&m);
    worker_result(w1, rid, (int32_t[]){5, 6, 7}, 3, "567", 0, KVF_FINISH_NONE, 98);
    peer_expect(cl, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.tokens.n, 3);
    kvf_msg_clear(&m);
    // w1 falls silent; w2 keeps heartbeating until the request comes to it.
    int64_t deadline = zclock_mono() + 5000;
    int got = 0;
    while (!got && zclock_mono() < deadline) {
        worker_heartbeat(w2, 50, 50);
        if (peer_recv(w2, 100, &m) == 0) {
            cr_assert_eq(m.type, KVF_MSG_ASSIGN, "got %s", kvf_msg_type_name(m.type));
            got = 1;
        }
    }
    cr_assert(got, "request not re-dispatched to w2 within 5 s");
    cr_assert_eq(m.u.assign.rid, rid);
    cr_assert_eq(m.u.assign.resume_ids.n, 3, "resume from the delivered tokens");
    cr_assert_eq(m.u.assign.resume_ids.ids[0], 5);
    cr_assert_eq(m.u.assign.resume_ids.ids[2], 7);
    cr_assert_eq(m.u.assign.prompt_ids.n, 8);
    kvf_msg_clear(&m);
    worker_heartbeat(w2, 49, 50);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(status_worker(&st, "w1")->load.state, KVF_WSTATE_DEAD);
    cr_assert_geq(status_worker(&st, "w1")->last_seen_ms, 600);
    cr_assert_eq(status_worker(&st, "w1")->assigned, 0);
    cr_assert_eq(status_worker(&st, "w2")->load.state, KVF_WSTATE_READY);
    cr_assert_eq(status_worker(&st, "w2")->assigned, 1);
    kvf_msg_clear(&st);
    // The dead worker's late result is refused and not forwarded.
    worker_result(w1, rid, (int32_t[]){99}, 1, "zz", 1, KVF_FINISH_STOP, 100);
    peer_expect(w1, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_PROTO, "told to REGISTER again");
    cr_assert(strstr(m.u.error.message.ptr, "REGISTER"));
    kvf_msg_clear(&m);
    worker_result(w2, rid, (int32_t[]){8}, 1, "8", 1, KVF_FINISH_STOP, 50);
    peer_expect(cl, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.tokens.n, 1);
    cr_assert_eq(m.u.tokens.tokens.ids[0], 8);
    kvf_msg_clear(&m);
    peer_expect(cl, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.completion_tokens, 4, "each token seen once: 5 6 7 8");
    kvf_msg_clear(&m);
    // w1 comes back: registering again makes it alive.
    zsock_destroy(&w1);
    w1 = worker_new(&p, "w1", 100, 100, 16);
    client_status(cl, &st);
    cr_assert_eq(status_worker(&st, "w1")->load.state, KVF_WSTATE_READY);
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    zsock_destroy(&w1);
    zsock_destroy(&w2);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, bad_requests_get_their_own_errors) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--max-prompt-tokens", "100", "--dead-after-ms", "20000", NULL});
    zsock_t *w = worker_new(&p, "w", 20, 20, 16);  // vocab 32000, 320 tokens
    zsock_t *cl = peer_new(p.front, NULL);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    kvf_submit_req_t reqs[8];
    memset(reqs, 0, sizeof reqs);
    int32_t ok_ids[4] = {1, 2, 3, 4}, neg[2] = {1, -5}, big_id[1] = {40000}, many[101] = {0};
    for (int i = 0; i < 8; i++) {
        reqs[i].sampling = kvf_sampling_default();
        reqs[i].sampling.max_new_tokens = 8;
        reqs[i].prompt_ids = (kvf_ids_t){ok_ids, 4};
    }
    reqs[1].sampling.temperature = -1.0f;             // invalid sampling
    reqs[2].prompt_ids = (kvf_ids_t){NULL, 0};        // empty prompt
    reqs[3].prompt_ids = (kvf_ids_t){NULL, 0};
    reqs[3].text = kvf_str("hello");                  // text, but no --model
    reqs[4].prompt_ids = (kvf_ids_t){neg, 2};         // negative id
    reqs[5].prompt_ids = (kvf_ids_t){big_id, 1};      // past the workers' vocab
    reqs[6].prompt_ids = (kvf_ids_t){many, 101};      // past --max-prompt-tokens
    reqs[7].sampling.n_stop_ids = 1;                  // a stop id past the vocab
    reqs[7].sampling.stop_ids[0] = 32000;
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = 8;
    peer_send(cl, &m);
    kvf_msg_t ack;
    peer_expect(cl, KVF_MSG_ACK, &ack);
    cr_assert_eq(ack.u.ack.n_rids, 8);
    const kvf_status want[8] = {KVF_OK,      KVF_E_INVAL, KVF_E_INVAL,    KVF_E_INVAL,
                                KVF_E_INVAL, KVF_E_INVAL, KVF_E_TOO_LONG, KVF_E_INVAL};
    for (int i = 1; i < 8; i++) {
        kvf_msg_t e;
        peer_expect(cl, KVF_MSG_ERROR, &e);
        cr_assert_eq(e.u.error.rid, ack.u.ack.rids[i], "error %d is about request %d", i, i);
        cr_assert_eq(e.u.error.code, want[i], "request %d: %s", i, e.u.error.message.ptr);
        if (i == 3) cr_assert(strstr(e.u.error.message.ptr, "--model"), "%s", e.u.error.message.ptr);
        kvf_msg_clear(&e);
    }
    kvf_msg_t a;
    peer_expect(w, KVF_MSG_ASSIGN, &a);  // the good one went on
    cr_assert_eq(a.u.assign.rid, ack.u.ack.rids[0]);
    kvf_msg_clear(&a);
    uint64_t r_ok = ack.u.ack.rids[0];
    kvf_msg_clear(&ack);
    // More blocks than any worker has: too_long at once (21 blocks > 20).
    uint64_t r;
    client_submit(cl, NULL, 1, 16, 320, &r);
    kvf_msg_t e;
    peer_expect(cl, KVF_MSG_ERROR, &e);
    cr_assert_eq(e.u.error.rid, r);
    cr_assert_eq(e.u.error.code, KVF_E_TOO_LONG);
    kvf_msg_clear(&e);
    // An empty batch is acknowledged with no rids.
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    peer_send(cl, &m);
    peer_expect(cl, KVF_MSG_ACK, &e);
    cr_assert_eq(e.u.ack.n_rids, 0);
    kvf_msg_clear(&e);
    // A whole-message problem: a batch id already in use.
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    m.u.submit.batch_id = kvf_str("dup");
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = 1;
    reqs[0].sampling.max_new_tokens = 316;  // 20 blocks: waits behind the running one, the batch stays
    peer_send(cl, &m);
    peer_expect(cl, KVF_MSG_ACK, &e);
    kvf_msg_clear(&e);
    peer_send(cl, &m);
    peer_expect(cl, KVF_MSG_ERROR, &e);
    cr_assert_eq(e.u.error.rid, 0);
    cr_assert_eq(e.u.error.code, KVF_E_INVAL);
    cr_assert(strstr(e.u.error.message.ptr, "in use"), "%s", e.u.error.message.ptr);
    kvf_msg_clear(&e);
    // The worker reports an error for the good one: the client gets ERROR with its rid.
    kvf_msg_t res;
    kvf_msg_init(&res, KVF_MSG_RESULT);
    res.u.result.rid = r_ok;
    res.u.result.finished = 1;
    res.u.result.finish_reason = KVF_FINISH_ERROR;
    res.u.result.error_code = KVF_E_DEVICE;
    res.u.result.error = kvf_str("cuda fell over");
    res.u.result.free_blocks = 20;
    peer_send(w, &res);
    peer_expect(cl, KVF_MSG_ERROR, &e);
    cr_assert_eq(e.u.error.rid, r_ok);
    cr_assert_eq(e.u.error.code, KVF_E_DEVICE);
    cr_assert(strstr(e.u.error.message.ptr, "cuda fell over"));
    kvf_msg_clear(&e);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, queue_cap_gives_busy) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--queue-cap", "2", NULL});
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rids[4];
    client_submit(cl, NULL, 4, 4, 4, rids);  // no workers: everything waits
    for (int i = 2; i < 4; i++) {
        kvf_msg_t e;
        peer_expect(cl, KVF_MSG_ERROR, &e);
        cr_assert_eq(e.u.error.rid, rids[i]);
        cr_assert_eq(e.u.error.code, KVF_E_BUSY);
        kvf_msg_clear(&e);
    }
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.queue_len, 2);
    cr_assert_eq(st.u.status.queue_cap, 2);
    kvf_msg_clear(&st);
    // A worker arrives: the two queued ones are placed, in order.
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    kvf_msg_t m;
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rids[0]);
    kvf_msg_clear(&m);
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rids[1]);
    kvf_msg_clear(&m);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, cancel_queued_and_assigned) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *w = worker_new(&p, "w", 10, 10, 16);
    zsock_t *cl = peer_new(p.front, NULL), *op = peer_new(p.front, NULL);
    uint64_t rids[2];
    client_submit(cl, "cb", 2, 16, 80, rids);  // 6 blocks each: one runs, one waits
    kvf_msg_t m;
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rids[0]);
    kvf_msg_clear(&m);
    // Cancel the queued one by rid (from another socket: an operator).
    kvf_msg_t c;
    kvf_msg_init(&c, KVF_MSG_CANCEL);
    c.u.cancel.rid = rids[1];
    peer_send(op, &c);
    peer_expect(op, KVF_MSG_OK, &m);
    kvf_msg_clear(&m);
    peer_expect(cl, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, rids[1]);
    cr_assert_eq(m.u.done.finish_reason, KVF_FINISH_CANCELLED);
    kvf_msg_clear(&m);
    // Cancel the batch: the running one is cancelled at its worker.
    kvf_msg_init(&c, KVF_MSG_CANCEL);
    c.u.cancel.batch_id = kvf_str("cb");
    peer_send(cl, &c);
    peer_expect(w, KVF_MSG_CANCEL, &m);
    cr_assert_eq(m.u.cancel.rid, rids[0]);
    kvf_msg_clear(&m);
    peer_expect(cl, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, rids[0]);
    cr_assert_eq(m.u.done.finish_reason, KVF_FINISH_CANCELLED);
    kvf_msg_clear(&m);
    peer_expect(cl, KVF_MSG_OK, &m);
    kvf_msg_clear(&m);
    kvf_msg_t st;
    client_status(op, &st);
    cr_assert_eq(st.u.status.queue_len, 0);
    cr_assert_eq(status_worker(&st, "w")->assigned, 0);
    kvf_msg_clear(&st);
    // Unknown rid: not_found.
    kvf_msg_init(&c, KVF_MSG_CANCEL);
    c.u.cancel.rid = 424242;
    peer_send(op, &c);
    peer_expect(op, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_NOT_FOUND);
    kvf_msg_clear(&m);
    zsock_destroy(&cl);
    zsock_destroy(&op);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, drain_stops_new_work) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *a = worker_new(&p, "a", 100, 100, 16);
    zsock_t *b = worker_new(&p, "b", 50, 50, 16);
    zsock_t *op = peer_new(p.front, NULL);
    kvf_msg_t d, m;
    kvf_msg_init(&d, KVF_MSG_DRAIN);
    d.u.target.worker_id = kvf_str("a");
    peer_send(op, &d);
    peer_expect(op, KVF_MSG_OK, &m);
    kvf_msg_clear(&m);
    peer_expect(a, KVF_MSG_DRAIN, &m);
    kvf_msg_clear(&m);
    kvf_msg_t st;
    client_status(op, &st);
    cr_assert_eq(status_worker(&st, "a")->load.state, KVF_WSTATE_DRAINING);
    kvf_msg_clear(&st);
    uint64_t rid;
    client_submit(op, NULL, 1, 4, 4, &rid);  // a has more free blocks, but drains
    peer_expect(b, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rid);
    kvf_msg_clear(&m);
    peer_expect_silence(a, 200);
    d.u.target.worker_id = kvf_str("nope");
    peer_send(op, &d);
    peer_expect(op, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_NOT_FOUND);
    kvf_msg_clear(&m);
    zsock_destroy(&op);
    zsock_destroy(&a);
    zsock_destroy(&b);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, attach_resends_after_client_left) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rids[2];
    client_submit(cl, "keep", 2, 4, 10, rids);
    kvf_msg_t m;
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    kvf_msg_clear(&m);
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    kvf_msg_clear(&m);
    zsock_destroy(&cl);  // the client goes away
    zclock_sleep(200);
    worker_result(w, rids[0], (int32_t[]){1, 2}, 2, "ab", 0, KVF_FINISH_NONE, 99);
    worker_result(w, rids[0], (int32_t[]){3}, 1, "c", 1, KVF_FINISH_STOP, 99);
    worker_result(w, rids[1], (int32_t[]){4}, 1, "d", 0, KVF_FINISH_NONE, 99);
    worker_heartbeat(w, 77, 100);  // seen in STATUS: every result before it was handled
    zsock_t *again = peer_new(p.front, NULL);
    wait_worker_free(again, "w", 77);
    kvf_msg_t at;
    kvf_msg_init(&at, KVF_MSG_ATTACH);
    at.u.attach.batch_id = kvf_str("keep");
    peer_send(again, &at);
    peer_expect(again, KVF_MSG_ACK, &m);
    cr_assert_eq(m.u.ack.n_rids, 2);
    cr_assert_eq(m.u.ack.rids[1], rids[1]);
    kvf_msg_clear(&m);
    peer_expect(again, KVF_MSG_TOKENS, &m);  // everything of rid 0 so far, at once
    cr_assert_eq(m.u.tokens.rid, rids[0]);
    cr_assert_eq(m.u.tokens.tokens.n, 3);
    cr_assert_str_eq(m.u.tokens.text.ptr, "abc");
    kvf_msg_clear(&m);
    peer_expect(again, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, rids[0]);
    kvf_msg_clear(&m);
    peer_expect(again, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.rid, rids[1]);
    cr_assert_eq(m.u.tokens.tokens.n, 1);
    kvf_msg_clear(&m);
    // New results stream to the re-attached client.
    worker_result(w, rids[1], (int32_t[]){5}, 1, "e", 1, KVF_FINISH_LENGTH, 100);
    peer_expect(again, KVF_MSG_TOKENS, &m);
    cr_assert_eq(m.u.tokens.tokens.ids[0], 5);
    kvf_msg_clear(&m);
    peer_expect(again, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, rids[1]);
    cr_assert_eq(m.u.done.completion_tokens, 2);
    kvf_msg_clear(&m);
    // Complete and delivered: the batch is gone.
    peer_send(again, &at);
    peer_expect(again, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_NOT_FOUND);
    kvf_msg_clear(&m);
    zsock_destroy(&again);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, shutdown_of_one_worker_moves_its_work) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *a = worker_new(&p, "a", 100, 100, 16);
    zsock_t *b = worker_new(&p, "b", 50, 50, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rid;
    client_submit(cl, NULL, 1, 4, 10, &rid);
    kvf_msg_t m;
    peer_expect(a, KVF_MSG_ASSIGN, &m);
    kvf_msg_clear(&m);
    worker_result(a, rid, (int32_t[]){3, 4}, 2, "34", 0, KVF_FINISH_NONE, 99);
    peer_expect(cl, KVF_MSG_TOKENS, &m);
    kvf_msg_clear(&m);
    kvf_msg_t sd;
    kvf_msg_init(&sd, KVF_MSG_SHUTDOWN);
    sd.u.target.worker_id = kvf_str("a");
    peer_send(cl, &sd);
    peer_expect(cl, KVF_MSG_OK, &m);
    kvf_msg_clear(&m);
    peer_expect(a, KVF_MSG_SHUTDOWN, &m);
    kvf_msg_clear(&m);
    // a cancels what it runs on its way out: the request resumes on b.
    worker_result(a, rid, NULL, 0, "", 1, KVF_FINISH_CANCELLED, 100);
    peer_expect(b, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rid);
    cr_assert_eq(m.u.assign.resume_ids.n, 2);
    cr_assert_eq(m.u.assign.resume_ids.ids[1], 4);
    kvf_msg_clear(&m);
    peer_expect_silence(cl, 100);  // the client saw no DONE cancelled
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(status_worker(&st, "a")->load.state, KVF_WSTATE_DRAINING);
    cr_assert_eq(st.u.status.n_workers, 2);
    kvf_msg_clear(&st);
    // The coordinator itself keeps running.
    zsock_destroy(&cl);
    zsock_destroy(&a);
    zsock_destroy(&b);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, refused_request_is_retried_then_given_up) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--max-redispatch", "8", "--dead-after-ms", "20000", NULL});
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rid;
    client_submit(cl, NULL, 1, 4, 10, &rid);
    int assigns = 0;
    kvf_msg_t m;
    for (;;) {
        if (peer_recv(w, 1000, &m) < 0) break;
        cr_assert_eq(m.type, KVF_MSG_ASSIGN);
        cr_assert_eq(m.u.assign.rid, rid);
        kvf_msg_clear(&m);
        assigns++;
        cr_assert_leq(assigns, 20, "re-dispatched without end");
        kvf_msg_t r;
        kvf_msg_init(&r, KVF_MSG_RESULT);
        r.u.result.rid = rid;
        r.u.result.finished = 1;
        r.u.result.finish_reason = KVF_FINISH_ERROR;
        r.u.result.error_code = KVF_E_NOMEM_BLOCKS;
        r.u.result.error = kvf_str("no blocks");
        r.u.result.free_blocks = 100;
        peer_send(w, &r);
    }
    cr_assert_eq(assigns, 9, "the first ASSIGN and 8 re-dispatches");
    peer_expect(cl, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.rid, rid);
    cr_assert_eq(m.u.error.code, KVF_E_PEER_LOST);
    kvf_msg_clear(&m);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_proc, duplicate_worker_id_refused_while_alive) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    // Another process claiming id "w" on another connection.
    zsock_t *imp = peer_new(p.back, "impostor");
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_REGISTER);
    m.u.reg.worker_id = kvf_str("w");
    m.u.reg.backend = kvf_str("cpu");
    m.u.reg.tp_size = 1;
    m.u.reg.total_blocks = 1;
    m.u.reg.free_blocks = 1;
    m.u.reg.plan.block_size = 16;
    peer_send(imp, &m);
    peer_expect(imp, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_INVAL);
    cr_assert(strstr(m.u.error.message.ptr, "duplicate"));
    kvf_msg_clear(&m);
    zsock_t *cl = peer_new(p.front, NULL);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.n_workers, 1);
    cr_assert_eq(status_worker(&st, "w")->load.total_blocks, 100, "the live worker kept its entry");
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    zsock_destroy(&imp);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

// Same first block of the prompt -> the worker that served it (its prefix
// cache), even with fewer free blocks; another prompt -> the most free.
Test(coord_proc, prefix_affinity) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *a = worker_new_ex(&p, "a", 100, 100, 16, 1);
    zsock_t *b = worker_new_ex(&p, "b", 90, 90, 16, 1);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t r1, r2, r3;
    client_submit(cl, NULL, 1, 32, 288, &r1);  // 20 blocks on a: a has 80 left, b 90
    kvf_msg_t m;
    peer_expect(a, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, r1);
    uint64_t h = m.u.assign.prefix_hash;
    cr_assert_neq(h, 0);
    kvf_msg_clear(&m);
    client_submit(cl, NULL, 1, 32, 16, &r2);   // same prompt ids 1..32
    peer_expect(a, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, r2);
    cr_assert_eq(m.u.assign.prefix_hash, h);
    kvf_msg_clear(&m);
    client_submit(cl, NULL, 1, 8, 16, &r3);    // shorter than a block: no affinity
    peer_expect(b, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, r3);
    cr_assert_eq(m.u.assign.prefix_hash, 0);
    kvf_msg_clear(&m);
    zsock_destroy(&cl);
    zsock_destroy(&a);
    zsock_destroy(&b);
    cr_assert_eq(coord_stop(&p), 0);
}

// A worker that says "draining" (BUSY) gets nothing more and the request goes
// elsewhere; an ERROR about a rid (not a final RESULT) does not end it.
Test(coord_proc, busy_refusal_moves_work_and_worker_errors_do_not_end_requests) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *a = worker_new(&p, "a", 100, 100, 16);
    zsock_t *b = worker_new(&p, "b", 50, 50, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rid;
    client_submit(cl, NULL, 1, 4, 10, &rid);
    kvf_msg_t m;
    peer_expect(a, KVF_MSG_ASSIGN, &m);
    kvf_msg_clear(&m);
    kvf_msg_t r;
    kvf_msg_init(&r, KVF_MSG_RESULT);
    r.u.result.rid = rid;
    r.u.result.finished = 1;
    r.u.result.finish_reason = KVF_FINISH_ERROR;
    r.u.result.error_code = KVF_E_BUSY;
    r.u.result.error = kvf_str("worker is draining");
    r.u.result.free_blocks = 100;
    peer_send(a, &r);
    peer_expect(b, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rid);
    kvf_msg_clear(&m);
    kvf_msg_t e;
    kvf_msg_init(&e, KVF_MSG_ERROR);
    e.u.error.rid = rid;
    e.u.error.code = KVF_E_INVAL;
    e.u.error.message = kvf_str("ASSIGN of a request id already running here");
    peer_send(b, &e);
    worker_result(b, rid, (int32_t[]){1}, 1, "x", 1, KVF_FINISH_STOP, 50);
    peer_expect(cl, KVF_MSG_TOKENS, &m);
    kvf_msg_clear(&m);
    peer_expect(cl, KVF_MSG_DONE, &m);
    cr_assert_eq(m.u.done.rid, rid);
    kvf_msg_clear(&m);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(status_worker(&st, "a")->load.state, KVF_WSTATE_DRAINING);
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    zsock_destroy(&a);
    zsock_destroy(&b);
    cr_assert_eq(coord_stop(&p), 0);
}

// A REGISTER repeated on a live connection (a retry, or a restart): its work is
// cancelled there, taken back and placed again; nothing runs twice unaccounted.
Test(coord_proc, repeated_register_cancels_and_replaces_work) {
    coord_proc_t p;
    coord_start(&p, s_slow_death);
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    uint64_t rid;
    client_submit(cl, NULL, 1, 4, 10, &rid);
    kvf_msg_t m;
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    kvf_msg_clear(&m);
    kvf_msg_t reg;
    kvf_msg_init(&reg, KVF_MSG_REGISTER);
    reg.u.reg.worker_id = kvf_str("w");
    reg.u.reg.backend = kvf_str("cpu");
    reg.u.reg.device = -1;
    reg.u.reg.tp_size = 1;
    reg.u.reg.total_blocks = 100;
    reg.u.reg.free_blocks = 100;
    reg.u.reg.plan.block_size = 16;
    peer_send(w, &reg);
    peer_expect(w, KVF_MSG_CANCEL, &m);
    cr_assert_eq(m.u.cancel.rid, rid);
    kvf_msg_clear(&m);
    peer_expect(w, KVF_MSG_WELCOME, &m);
    kvf_msg_clear(&m);
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rid);
    kvf_msg_clear(&m);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(status_worker(&st, "w")->assigned, 1, "counted once");
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}
