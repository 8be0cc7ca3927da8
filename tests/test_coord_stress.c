// tests/test_coord_stress.c — a property test of the point of kvfleet against
// the real kvf-coordinator: two fake workers that allocate every request's
// full block need at admission (and fail the test if they ever lack the
// blocks, i.e. would have to preempt) run 1500 requests of random sizes from
// one batch; every request must end exactly once with all its tokens in order.
#include "test_coord_harness.h"

#define N_REQ 1500
#define BS 16

typedef struct {
    uint64_t rid;
    uint32_t need, left, next;
} run_t;

typedef struct {
    const char *id;
    zsock_t *s;
    uint32_t total, free_blocks;
    run_t run[256];
    int n_run;
    uint32_t max_used;
    int64_t last_hb;
} fake_t;

static void s_admit(fake_t *f, kvf_msg_t *m) {
    cr_assert_eq(m->type, KVF_MSG_ASSIGN, "worker %s got %s", f->id, kvf_msg_type_name(m->type));
    const kvf_msg_assign_t *a = &m->u.assign;
    uint32_t need = (a->prompt_ids.n + (uint32_t)a->sampling.max_new_tokens + BS - 1) / BS;
    cr_assert_leq(need, f->free_blocks, "worker %s would have to preempt: rid %lu needs %u blocks, %u free", f->id,
                  (unsigned long)a->rid, need, f->free_blocks);
    cr_assert_lt(f->n_run, 256);
    f->free_blocks -= need;
    if (f->total - f->free_blocks > f->max_used) f->max_used = f->total - f->free_blocks;
    f->run[f->n_run++] = (run_t){a->rid, need, (uint32_t)a->sampling.max_new_tokens, 0};
}

// One engine step: every running request gets up to 8 tokens; finished ones free their blocks.
static void s_step(fake_t *f) {
    for (int i = 0; i < f->n_run;) {
        run_t *r = &f->run[i];
        int32_t ids[8];
        uint32_t n = r->left < 8 ? r->left : 8;
        for (uint32_t k = 0; k < n; k++) ids[k] = (int32_t)(r->next + k);
        r->next += n;
        r->left -= n;
        int fin = r->left == 0;
        if (fin) f->free_blocks += r->need;
        worker_result(f->s, r->rid, ids, n, "", fin, KVF_FINISH_LENGTH, f->free_blocks);
        if (fin)
            f->run[i] = f->run[--f->n_run];
        else
            i++;
    }
    int64_t now = zclock_mono();
    if (now - f->last_hb > 100) {
        worker_heartbeat(f->s, f->free_blocks, f->total);
        f->last_hb = now;
    }
}

Test(coord_stress, random_batch_never_overcommits_and_ends_once, .timeout = 120) {
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--dead-after-ms", "20000", NULL});
    fake_t w[2] = {{.id = "w40", .total = 40}, {.id = "w25", .total = 25}};
    for (int i = 0; i < 2; i++) {
        w[i].free_blocks = w[i].total;
        w[i].s = worker_new(&p, w[i].id, w[i].total, w[i].total, BS);
    }
    zsock_t *cl = peer_new(p.front, NULL);
    // One batch, random prompt lengths (1..100) and max_new_tokens (1..64).
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    kvf_submit_req_t *reqs = calloc(N_REQ, sizeof *reqs);
    int32_t prompt[100];
    for (int i = 0; i < 100; i++) prompt[i] = i + 1;
    uint32_t *want = calloc(N_REQ, sizeof *want);
    unsigned seed = 7;
    for (int i = 0; i < N_REQ; i++) {
        reqs[i].sampling = kvf_sampling_default();
        reqs[i].sampling.max_new_tokens = 1 + (int32_t)(rand_r(&seed) % 64);
        reqs[i].prompt_ids = (kvf_ids_t){prompt, 1 + rand_r(&seed) % 100};
        want[i] = (uint32_t)reqs[i].sampling.max_new_tokens;
    }
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = N_REQ;
    peer_send(cl, &m);
    free(reqs);
    kvf_msg_t ack;
    peer_expect(cl, KVF_MSG_ACK, &ack);
    cr_assert_eq(ack.u.ack.n_rids, N_REQ);
    uint64_t first = ack.u.ack.rids[0];
    for (int i = 0; i < N_REQ; i++) cr_assert_eq(ack.u.ack.rids[i], first + (uint64_t)i);
    kvf_msg_clear(&ack);
    uint32_t *got = calloc(N_REQ, sizeof *got);
    int *done = calloc(N_REQ, sizeof *done);
    int n_done = 0;
    int64_t deadline = zclock_mono() + 100000;
    while (n_done < N_REQ) {
        cr_assert_lt(zclock_mono(), deadline, "only %d of %d requests finished", n_done, N_REQ);
        zmq_pollitem_t items[3] = {{zsock_resolve(w[0].s), 0, ZMQ_POLLIN, 0},
                                   {zsock_resolve(w[1].s), 0, ZMQ_POLLIN, 0},
                                   {zsock_resolve(cl), 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, 3, 5);
        for (int k = 0; k < 2; k++)
            while (peer_recv(w[k].s, 0, &m) == 0) {
                s_admit(&w[k], &m);
                kvf_msg_clear(&m);
            }
        while (peer_recv(cl, 0, &m) == 0) {
            uint64_t rid = m.type == KVF_MSG_TOKENS ? m.u.tokens.rid : m.u.done.rid;
            cr_assert(m.type == KVF_MSG_TOKENS || m.type == KVF_MSG_DONE, "client got %s",
                      kvf_msg_type_name(m.type));
            cr_assert(rid >= first && rid < first + N_REQ);
            int i = (int)(rid - first);
            cr_assert_not(done[i], "rid %lu: message after its DONE", (unsigned long)rid);
            if (m.type == KVF_MSG_TOKENS) {
                for (uint32_t k = 0; k < m.u.tokens.tokens.n; k++)
                    cr_assert_eq((uint32_t)m.u.tokens.tokens.ids[k], got[i] + k, "rid %lu: out of order",
                                 (unsigned long)rid);
                got[i] += m.u.tokens.tokens.n;
            } else {
                cr_assert_eq(m.u.done.finish_reason, KVF_FINISH_LENGTH);
                cr_assert_eq(got[i], want[i], "rid %lu: %u of %u tokens", (unsigned long)rid, got[i], want[i]);
                cr_assert_eq(m.u.done.completion_tokens, want[i]);
                done[i] = 1;
                n_done++;
            }
            kvf_msg_clear(&m);
        }
        s_step(&w[0]);
        s_step(&w[1]);
    }
    // Both pools were used, never beyond their totals (s_admit checked each admission).
    cr_assert_gt(w[0].max_used, w[0].total / 2);
    cr_assert_gt(w[1].max_used, w[1].total / 2);
    kvf_msg_t st;
    client_status(cl, &st);
    cr_assert_eq(st.u.status.requests_done, N_REQ);
    cr_assert_eq(st.u.status.queue_len, 0);
    kvf_msg_clear(&st);
    free(got);
    free(done);
    free(want);
    zsock_destroy(&cl);
    zsock_destroy(&w[0].s);
    zsock_destroy(&w[1].s);
    cr_assert_eq(coord_stop(&p), 0);
}
