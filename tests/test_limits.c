// tests/test_limits.c — the coordinator's limits on one request or batch, on
// one real kvf-coordinator: --max-batch (the whole SUBMIT is refused),
// --max-prompt-tokens (ids, and text the coordinator tokenizes) and
// --max-new-tokens (ERROR too_long for that request alone, its batch-mates go on), --queue-cap (ERROR busy for what does not fit,
// the queued ones are placed later). Each error is on the request: the same
// connection and another client keep working. --max-msg-size is in
// test_coord_hostile.c.
#include "test_coord_harness.h"
#include "test_util.h"

// SUBMIT of these requests (prompt_len ids 1.., max_new each) without waiting for the ACK.
static void s_submit(zsock_t *s, uint32_t n, const uint32_t *prompt_len, const int32_t *max_new) {
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    kvf_submit_req_t reqs[8];
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = i + 1;
    memset(reqs, 0, sizeof reqs);
    for (uint32_t i = 0; i < n && i < 8; i++) {
        reqs[i].sampling = kvf_sampling_default();
        reqs[i].sampling.max_new_tokens = max_new[i];
        reqs[i].prompt_ids = (kvf_ids_t){ids, prompt_len[i]};
    }
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = n;
    peer_send(s, &m);
}

static void s_expect_error(zsock_t *s, uint64_t rid, kvf_status code, const char *needle) {
    kvf_msg_t e;
    peer_expect(s, KVF_MSG_ERROR, &e);
    cr_assert_eq(e.u.error.rid, rid, "ERROR for rid %lu, wanted %lu (%s)", (unsigned long)e.u.error.rid,
                 (unsigned long)rid, e.u.error.message.ptr);
    cr_assert_eq(e.u.error.code, code, "%s: %s", kvf_status_name((kvf_status)e.u.error.code), e.u.error.message.ptr);
    cr_assert(strstr(e.u.error.message.ptr, needle), "'%s' does not name %s", e.u.error.message.ptr, needle);
    kvf_msg_clear(&e);
}

Test(limits, each_limit_is_an_error_on_that_request, .timeout = 30) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--max-batch", "4", "--max-prompt-tokens", "8", "--max-new-tokens", "16",
                                          "--queue-cap", "3", "--dead-after-ms", "20000", NULL});
    zsock_t *cl = peer_new(p.front, NULL);
    kvf_msg_t ack;

    // --max-batch: five requests are refused as a whole (rid 0), four are taken.
    const uint32_t len5[5] = {4, 4, 4, 4, 4};
    const int32_t new5[5] = {4, 4, 4, 4, 4};
    s_submit(cl, 5, len5, new5);
    s_expect_error(cl, 0, KVF_E_TOO_LONG, "--max-batch 4");

    // --max-prompt-tokens 8 and --max-new-tokens 16: the requests past them fail
    // alone; the one exactly at both limits is queued (no worker yet).
    const uint32_t len3[3] = {9, 4, 8};
    const int32_t new3[3] = {4, 17, 16};
    s_submit(cl, 3, len3, new3);
    peer_expect(cl, KVF_MSG_ACK, &ack);
    cr_assert_eq(ack.u.ack.n_rids, 3);
    uint64_t r3[3] = {ack.u.ack.rids[0], ack.u.ack.rids[1], ack.u.ack.rids[2]};
    kvf_msg_clear(&ack);
    s_expect_error(cl, r3[0], KVF_E_TOO_LONG, "--max-prompt-tokens 8");
    s_expect_error(cl, r3[1], KVF_E_TOO_LONG, "--max-new-tokens 16");

    // --queue-cap 3: one waits already; of four more, two fit and two are busy.
    const uint32_t len4[4] = {2, 2, 2, 2};
    const int32_t new4[4] = {2, 2, 2, 2};
    s_submit(cl, 4, len4, new4);
    peer_expect(cl, KVF_MSG_ACK, &ack);
    cr_assert_eq(ack.u.ack.n_rids, 4);
    uint64_t r4[4];
    for (int i = 0; i < 4; i++) r4[i] = ack.u.ack.rids[i];
    kvf_msg_clear(&ack);
    s_expect_error(cl, r4[2], KVF_E_BUSY, "queue is full");
    s_expect_error(cl, r4[3], KVF_E_BUSY, "queue is full");
    peer_expect_silence(cl, 100);  // nothing about the others

    // Another client is unaffected and sees the queue at its cap.
    zsock_t *other = peer_new(p.front, NULL);
    kvf_msg_t st;
    client_status(other, &st);
    cr_assert_eq(st.u.status.queue_len, 3);
    cr_assert_eq(st.u.status.queue_cap, 3);
    kvf_msg_clear(&st);

    // A worker arrives: exactly the three accepted requests are placed, in order.
    zsock_t *w = worker_new(&p, "w", 100, 100, 16);
    const uint64_t want[3] = {r3[2], r4[0], r4[1]};
    for (int i = 0; i < 3; i++) {
        kvf_msg_t a;
        peer_expect(w, KVF_MSG_ASSIGN, &a);
        cr_assert_eq(a.u.assign.rid, want[i], "ASSIGN %d", i);
        if (i == 0) cr_assert_eq(a.u.assign.sampling.max_new_tokens, 16);
        kvf_msg_clear(&a);
    }
    peer_expect_silence(w, 100);

    // The first connection is still served: within the limits again, accepted.
    uint64_t r;
    client_submit(cl, NULL, 1, 8, 16, &r);
    kvf_msg_t a;
    peer_expect(w, KVF_MSG_ASSIGN, &a);
    cr_assert_eq(a.u.assign.rid, r);
    kvf_msg_clear(&a);

    zsock_destroy(&other);
    zsock_destroy(&cl);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(limits, text_prompts_are_counted_after_tokenizing, .timeout = 30) {
    char model[1024];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--model", model, "--max-prompt-tokens", "8", NULL});
    zsock_t *cl = peer_new(p.front, NULL);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    kvf_submit_req_t reqs[2];
    memset(reqs, 0, sizeof reqs);
    reqs[0].sampling = reqs[1].sampling = kvf_sampling_default();
    // Short in bytes per token or not, a long sentence is far past 8 tokens.
    reqs[0].text = kvf_str("Once upon a time there was a little girl who lived in a village near the forest.");
    reqs[1].text = kvf_str("Hi");
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = 2;
    peer_send(cl, &m);
    kvf_msg_t ack;
    peer_expect(cl, KVF_MSG_ACK, &ack);
    uint64_t r0 = ack.u.ack.rids[0];
    kvf_msg_clear(&ack);
    s_expect_error(cl, r0, KVF_E_TOO_LONG, "--max-prompt-tokens 8");
    peer_expect_silence(cl, 100);  // the short one waits for a worker
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.queue_len, 1);
    kvf_msg_clear(&st);
    zsock_destroy(&cl);
    cr_assert_eq(coord_stop(&p), 0);
}

Test(limits, max_new_tokens_flag_is_checked, .timeout = 10) {
    char line[64];
    FILE *f = popen(KVF_BIN_DIR "/kvf-coordinator --max-new-tokens 0 2>&1; echo rc=$?", "r");
    cr_assert_not_null(f);
    char all[2048] = "";
    while (fgets(line, sizeof line, f)) strncat(all, line, sizeof all - strlen(all) - 1);
    pclose(f);
    cr_assert(strstr(all, "--max-new-tokens"), "%s", all);
    cr_assert(strstr(all, "rc=2"), "%s", all);
}
