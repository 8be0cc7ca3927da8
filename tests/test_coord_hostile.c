// tests/test_coord_hostile.c — the real kvf-coordinator against bad peers and
// at the end of its life: garbage, oversized frames, unknown types, wrong
// versions, wrong directions (each answered with ERROR while others are still
// served); SHUTDOWN and SIGTERM exit 0; text prompts tokenized with --model.
#include "common/tokenizer.h"
#include "test_coord_harness.h"
#include "test_util.h"

static void s_send_raw(zsock_t *s, const void *data, size_t len) {
    cr_assert_eq(zmq_send(zsock_resolve(s), data, len, 0), (int)len);
}

static void s_expect_error(zsock_t *s, kvf_status code, const char *needle) {
    kvf_msg_t m;
    peer_expect(s, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.rid, 0);
    cr_assert_eq(m.u.error.code, code, "code %s: %s", kvf_status_name((kvf_status)m.u.error.code),
                 m.u.error.message.ptr);
    if (needle) cr_assert(strstr(m.u.error.message.ptr, needle), "message: %s", m.u.error.message.ptr);
    kvf_msg_clear(&m);
}

Test(coord_hostile, bad_input_gets_error_and_others_are_served) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--max-msg-size", "4096", "--dead-after-ms", "20000", NULL});
    zsock_t *bad = peer_new(p.front, NULL), *good = peer_new(p.front, NULL);
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    // Garbage bytes.
    s_send_raw(bad, "\xc1\xff\x00garbage", 10);
    kvf_msg_t m;
    peer_expect(bad, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.rid, 0);
    cr_assert(m.u.error.code == KVF_E_FORMAT || m.u.error.code == KVF_E_PROTO);
    kvf_msg_clear(&m);
    // A frame past --max-msg-size (but under the transport bound): ERROR naming the limit.
    char *big = calloc(1, 6000);
    s_send_raw(bad, big, 6000);
    free(big);
    s_expect_error(bad, KVF_E_FORMAT, "4096");
    // [1, 99, {}]: an unknown type.
    s_send_raw(bad, "\x93\x01\x63\x80", 4);
    peer_expect(bad, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_PROTO, "%s", m.u.error.message.ptr);
    kvf_msg_clear(&m);
    // [2, 12, {}]: STATUS of a protocol version we do not speak.
    s_send_raw(bad, "\x93\x02\x0c\x80", 4);
    peer_expect(bad, KVF_MSG_ERROR, &m);
    cr_assert_eq(m.u.error.code, KVF_E_PROTO, "%s", m.u.error.message.ptr);
    kvf_msg_clear(&m);
    // A map where an array belongs, a lying count (array of 2^32-1 elements).
    s_send_raw(bad, "\x81\x01\x02", 3);
    peer_expect(bad, KVF_MSG_ERROR, &m);
    kvf_msg_clear(&m);
    s_send_raw(bad, "\xdd\xff\xff\xff\xff\x01", 6);
    peer_expect(bad, KVF_MSG_ERROR, &m);
    kvf_msg_clear(&m);
    // Two payload frames.
    cr_assert_eq(zmq_send(zsock_resolve(bad), "a", 1, ZMQ_SNDMORE), 1);
    s_send_raw(bad, "b", 1);
    s_expect_error(bad, KVF_E_FORMAT, NULL);
    // Wrong direction: a worker's HEARTBEAT and a coordinator's ACK on the client socket.
    worker_heartbeat(bad, 1, 1);
    s_expect_error(bad, KVF_E_PROTO, "HEARTBEAT");
    kvf_msg_t ack;
    kvf_msg_init(&ack, KVF_MSG_ACK);
    peer_send(bad, &ack);
    s_expect_error(bad, KVF_E_PROTO, "ACK");
    // ... and a SUBMIT on the worker socket; a RESULT before REGISTER.
    zsock_t *rogue = peer_new(p.back, "rogue");
    kvf_msg_init(&m, KVF_MSG_STATUS);
    peer_send(rogue, &m);
    s_expect_error(rogue, KVF_E_PROTO, "STATUS");
    worker_result(rogue, 1, NULL, 0, "", 1, KVF_FINISH_STOP, 1);
    s_expect_error(rogue, KVF_E_PROTO, "REGISTER");
    s_send_raw(rogue, "\x01", 1);  // a bare integer is not a message
    peer_expect(rogue, KVF_MSG_ERROR, &m);
    kvf_msg_clear(&m);
    // Past twice the limit the transport drops the sender without reading it all.
    zsock_t *huge = peer_new(p.front, NULL);
    char *blob = calloc(1, 20000);
    s_send_raw(huge, blob, 20000);
    free(blob);
    peer_expect_silence(huge, 200);
    zsock_destroy(&huge);
    // Everyone else is still served, and the worker still gets work.
    kvf_msg_t st;
    client_status(good, &st);
    cr_assert_eq(st.u.status.n_workers, 1, "the rogue did not become a worker");
    cr_assert_eq(status_worker(&st, "w")->load.state, KVF_WSTATE_READY);
    kvf_msg_clear(&st);
    uint64_t rid;
    client_submit(good, NULL, 1, 4, 4, &rid);
    peer_expect(w, KVF_MSG_ASSIGN, &m);
    cr_assert_eq(m.u.assign.rid, rid);
    kvf_msg_clear(&m);
    client_status(bad, &st);  // and so is the one that misbehaved
    kvf_msg_clear(&st);
    zsock_destroy(&bad);
    zsock_destroy(&good);
    zsock_destroy(&rogue);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(coord_hostile, shutdown_stops_cluster_and_exits_zero) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--dead-after-ms", "20000", NULL});
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    zsock_t *op = peer_new(p.front, NULL);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SHUTDOWN);
    peer_send(op, &m);
    peer_expect(op, KVF_MSG_OK, &m);
    kvf_msg_clear(&m);
    peer_expect(w, KVF_MSG_SHUTDOWN, &m);
    kvf_msg_clear(&m);
    cr_assert_eq(coord_wait(&p, 5000), 0, "kvf-coordinator did not exit 0 after SHUTDOWN");
    zsock_destroy(&op);
    zsock_destroy(&w);
}

Test(coord_hostile, sigterm_and_bad_flags) {
    coord_proc_t p;
    coord_start(&p, NULL);
    cr_assert_eq(coord_stop(&p), 0);
    // A port already taken: exits non-zero, saying so.
    int rc = system(KVF_BIN_DIR "/kvf-coordinator --front ipc:///nonexistent-dir/x.sock 2>/dev/null");
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1);
    rc = system(KVF_BIN_DIR "/kvf-coordinator --heartbeat-ms x 2>/dev/null");
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
    rc = system(KVF_BIN_DIR "/kvf-coordinator --bogus 1 2>/dev/null");
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
}

Test(coord_hostile, ipc_endpoints) {
    char front[128], back[128], a1[140], a2[140];
    snprintf(front, sizeof front, "/tmp/kvf-coord-test-%d-f.sock", (int)getpid());
    snprintf(back, sizeof back, "/tmp/kvf-coord-test-%d-b.sock", (int)getpid());
    snprintf(a1, sizeof a1, "ipc://%s", front);
    snprintf(a2, sizeof a2, "ipc://%s", back);
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--front", a1, "--back", a2, NULL});
    cr_assert_str_eq(p.front, a1);
    zsock_t *w = worker_new(&p, "w", 10, 10, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.n_workers, 1);
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
    unlink(front);
    unlink(back);
}

Test(coord_hostile, text_prompts_tokenized_with_model) {
    char dir[1024], path[1100];
    KVF_FIXTURE_PATH(dir, "tiny-llama");
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--model", dir, "--dead-after-ms", "20000", NULL});
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    zsock_t *cl = peer_new(p.front, NULL);
    const char *text = "Hello world, this is kvfleet.";
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    kvf_submit_req_t req;
    memset(&req, 0, sizeof req);
    req.sampling = kvf_sampling_default();
    req.sampling.max_new_tokens = 4;
    req.text = kvf_str(text);
    m.u.submit.reqs = &req;
    m.u.submit.n_reqs = 1;
    peer_send(cl, &m);
    kvf_msg_t ack, a;
    peer_expect(cl, KVF_MSG_ACK, &ack);
    peer_expect(w, KVF_MSG_ASSIGN, &a);
    cr_assert_eq(a.u.assign.rid, ack.u.ack.rids[0]);
    cr_assert_eq(a.u.assign.text.len, 0, "the coordinator sends ids, not text");
    // The same ids as the tokenizer gives with the post-processor (BOS).
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    kvf_err_t err;
    kvf_tokenizer_t *tok = kvf_tokenizer_load(path, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    int32_t *ids;
    size_t n;
    cr_assert_eq(kvf_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err), 0);
    cr_assert_eq(a.u.assign.prompt_ids.n, n);
    for (size_t i = 0; i < n; i++) cr_assert_eq(a.u.assign.prompt_ids.ids[i], ids[i], "id %zu", i);
    free(ids);
    kvf_tokenizer_destroy(&tok);
    kvf_msg_clear(&a);
    kvf_msg_clear(&ack);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

// Mutations of valid messages on both sockets: the coordinator answers what it
// can, never crashes, and still serves a well-behaved client afterwards.
Test(coord_hostile, fuzzed_messages_do_not_take_it_down) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--dead-after-ms", "20000", "--queue-cap", "1000", NULL});
    zsock_t *w = worker_new(&p, "w", 1000, 1000, 16);
    zsock_t *fc = peer_new(p.front, NULL), *fw = peer_new(p.back, "fuzz-worker");
    kvf_msg_t seeds[5];
    kvf_submit_req_t req;
    memset(&req, 0, sizeof req);
    req.sampling = kvf_sampling_default();
    int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    req.prompt_ids = (kvf_ids_t){ids, 6};
    req.tag = kvf_str("t");
    kvf_msg_init(&seeds[0], KVF_MSG_SUBMIT);
    seeds[0].u.submit.reqs = &req;
    seeds[0].u.submit.n_reqs = 1;
    kvf_msg_init(&seeds[1], KVF_MSG_CANCEL);
    seeds[1].u.cancel.rid = 1;
    kvf_msg_init(&seeds[2], KVF_MSG_REGISTER);
    seeds[2].u.reg.worker_id = kvf_str("fz");
    seeds[2].u.reg.tp_size = 1;
    seeds[2].u.reg.total_blocks = 8;
    seeds[2].u.reg.plan.block_size = 4;
    kvf_msg_init(&seeds[3], KVF_MSG_RESULT);
    seeds[3].u.result.rid = 1;
    seeds[3].u.result.tokens = (kvf_ids_t){ids, 6};
    kvf_msg_init(&seeds[4], KVF_MSG_ATTACH);
    seeds[4].u.attach.batch_id = kvf_str("b1-0");
    unsigned seed = 12345;
    for (int i = 0; i < 3000; i++) {
        int k = i % 5;
        char *buf;
        size_t len;
        kvf_err_t err;
        cr_assert_eq(kvf_msg_encode(&seeds[k], &buf, &len, &err), 0);
        int flips = 1 + (int)(rand_r(&seed) % 4);
        for (int f = 0; f < flips; f++) buf[rand_r(&seed) % len] = (char)rand_r(&seed);
        if (rand_r(&seed) % 4 == 0) len = 1 + rand_r(&seed) % len;
        zsock_t *to = (k == 2 || k == 3) ? fw : fc;
        zmq_send(zsock_resolve(to), buf, len, ZMQ_DONTWAIT);
        free(buf);
    }
    zclock_sleep(300);
    zsock_t *good = peer_new(p.front, NULL);
    kvf_msg_t st;
    client_status(good, &st);
    cr_assert_geq(st.u.status.n_workers, 1);
    kvf_msg_clear(&st);
    uint64_t rid;
    client_submit(good, "after-fuzz", 1, 4, 4, &rid);
    zsock_destroy(&good);
    zsock_destroy(&fc);
    zsock_destroy(&fw);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}
