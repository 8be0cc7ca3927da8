// tests/test_coord_reqtable.c — the request state table, batches, retention.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "coordinator/reqtable.h"

// The whole table, cell by cell: next state (or -1) and the actions named.
Test(reqtable, transition_table) {
    const struct {
        kvf_req_state s;
        kvf_req_event e;
        int next;
        unsigned act;
    } want[] = {
        {KVF_REQ_NEW, KVF_REQ_EV_ENQUEUE, KVF_REQ_QUEUED, 0},
        {KVF_REQ_NEW, KVF_REQ_EV_PLACE, KVF_REQ_ASSIGNED, 0},
        {KVF_REQ_NEW, KVF_REQ_EV_REQUEUE, -1, 0},
        {KVF_REQ_NEW, KVF_REQ_EV_FINISH, -1, 0},
        {KVF_REQ_NEW, KVF_REQ_EV_CANCEL, -1, 0},
        {KVF_REQ_NEW, KVF_REQ_EV_FAIL, KVF_REQ_FINISHED, KVF_REQ_ACT_COMPLETE},
        {KVF_REQ_QUEUED, KVF_REQ_EV_ENQUEUE, -1, 0},
        {KVF_REQ_QUEUED, KVF_REQ_EV_PLACE, KVF_REQ_ASSIGNED, KVF_REQ_ACT_UNQUEUE},
        {KVF_REQ_QUEUED, KVF_REQ_EV_REQUEUE, -1, 0},
        {KVF_REQ_QUEUED, KVF_REQ_EV_FINISH, KVF_REQ_FINISHED, KVF_REQ_ACT_UNQUEUE | KVF_REQ_ACT_COMPLETE},
        {KVF_REQ_QUEUED, KVF_REQ_EV_CANCEL, KVF_REQ_FINISHED, KVF_REQ_ACT_UNQUEUE | KVF_REQ_ACT_COMPLETE},
        {KVF_REQ_QUEUED, KVF_REQ_EV_FAIL, KVF_REQ_FINISHED, KVF_REQ_ACT_UNQUEUE | KVF_REQ_ACT_COMPLETE},
        {KVF_REQ_ASSIGNED, KVF_REQ_EV_ENQUEUE, -1, 0},
        {KVF_REQ_ASSIGNED, KVF_REQ_EV_PLACE, -1, 0},
        {KVF_REQ_ASSIGNED, KVF_REQ_EV_REQUEUE, KVF_REQ_QUEUED, KVF_REQ_ACT_RELEASE | KVF_REQ_ACT_REQUEUE},
        {KVF_REQ_ASSIGNED, KVF_REQ_EV_FINISH, KVF_REQ_FINISHED, KVF_REQ_ACT_RELEASE | KVF_REQ_ACT_COMPLETE},
        {KVF_REQ_ASSIGNED, KVF_REQ_EV_CANCEL, KVF_REQ_FINISHED,
         KVF_REQ_ACT_RELEASE | KVF_REQ_ACT_FORWARD_CANCEL | KVF_REQ_ACT_COMPLETE},
        {KVF_REQ_ASSIGNED, KVF_REQ_EV_FAIL, KVF_REQ_FINISHED, KVF_REQ_ACT_RELEASE | KVF_REQ_ACT_COMPLETE},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        kvf_req_state next = KVF_REQ_NEW;
        unsigned act = 999;
        int rc = kvf_req_transition(want[i].s, want[i].e, &next, &act);
        if (want[i].next < 0) {
            cr_assert_eq(rc, -1, "%s + %s must be refused", kvf_req_state_name(want[i].s),
                         kvf_req_event_name(want[i].e));
        } else {
            cr_assert_eq(rc, 0, "%s + %s", kvf_req_state_name(want[i].s), kvf_req_event_name(want[i].e));
            cr_assert_eq(next, (kvf_req_state)want[i].next);
            cr_assert_eq(act, want[i].act, "%s + %s actions %u", kvf_req_state_name(want[i].s),
                         kvf_req_event_name(want[i].e), act);
        }
    }
    for (int e = 0; e < KVF_REQ_EV_COUNT; e++) {
        kvf_req_state next;
        unsigned act;
        cr_assert_eq(kvf_req_transition(KVF_REQ_FINISHED, (kvf_req_event)e, &next, &act), -1);
    }
    kvf_req_state next;
    unsigned act;
    cr_assert_eq(kvf_req_transition(KVF_REQ_NEW, (kvf_req_event)77, &next, &act), -1);
}

static kvf_req_t *s_add(kvf_reqtable_t *t, kvf_batch_t *b) {
    int32_t *ids = kvf_xmalloc(3 * sizeof *ids);
    ids[0] = 1, ids[1] = 2, ids[2] = 3;
    kvf_sampling_t s = kvf_sampling_default();
    kvf_req_t *r = kvf_reqtable_add(t, b, "tag", &ids, 3, &s);
    cr_assert_null(ids, "ownership taken");
    return r;
}

Test(reqtable, lifecycle_counts_in_batch) {
    kvf_reqtable_t *t = kvf_reqtable_new(4);
    kvf_err_t err;
    kvf_batch_t *b = kvf_reqtable_batch_new(t, "job-1", "cli", 3, 2, &err);
    cr_assert_not_null(b);
    kvf_req_t *a = s_add(t, b), *c = s_add(t, b);
    cr_assert_eq(a->rid, 1);
    cr_assert_eq(c->rid, 2);
    cr_assert_eq(kvf_reqtable_get(t, 2), c);
    cr_assert_null(kvf_reqtable_get(t, 3));
    unsigned act;
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_ENQUEUE, &act), 0);
    cr_assert_eq(a->state, KVF_REQ_QUEUED);
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_REQUEUE, &act), -1, "not assigned: refused");
    cr_assert_eq(a->state, KVF_REQ_QUEUED, "unchanged");
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_PLACE, &act), 0);
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_REQUEUE, &act), 0);
    cr_assert_eq(a->state, KVF_REQ_QUEUED);
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_PLACE, &act), 0);
    kvf_req_append(a, (int32_t[]){7, 8}, 2, "ab", 2);
    kvf_req_append(a, (int32_t[]){9}, 1, "c", 1);
    cr_assert_eq(a->n_out, 3);
    cr_assert_eq(a->out[2], 9);
    cr_assert_str_eq(a->text, "abc");
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_FINISH, &act), 0);
    cr_assert_eq(b->n_finished, 1);
    cr_assert_eq(kvf_req_apply(a, KVF_REQ_EV_CANCEL, &act), -1, "finished stays finished");
    cr_assert_eq(b->n_finished, 1);
    cr_assert_eq(kvf_reqtable_settle(t, b), 0, "incomplete batch stays");
    cr_assert_eq(kvf_req_apply(c, KVF_REQ_EV_FAIL, &act), 0);
    cr_assert_eq(b->n_finished, 2);
    cr_assert_eq(kvf_reqtable_settle(t, b), 1, "complete and delivered: released");
    cr_assert_null(kvf_reqtable_get(t, 1));
    cr_assert_null(kvf_reqtable_batch(t, "job-1"));
    cr_assert_eq(kvf_reqtable_size(t), 0);
    kvf_reqtable_destroy(&t);
    cr_assert_null(t);
}

Test(reqtable, batch_ids) {
    kvf_reqtable_t *t = kvf_reqtable_new(4);
    kvf_err_t err;
    cr_assert_not_null(kvf_reqtable_batch_new(t, "x", "c", 1, 1, &err));
    cr_assert_null(kvf_reqtable_batch_new(t, "x", "c", 1, 1, &err), "id in use");
    cr_assert(strstr(err.msg, "in use"));
    kvf_batch_t *g1 = kvf_reqtable_batch_new(t, NULL, "c", 1, 1, &err);
    kvf_batch_t *g2 = kvf_reqtable_batch_new(t, "", "c", 1, 1, &err);
    cr_assert(g1 && g2);
    cr_assert_str_neq(g1->id, g2->id);
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    cr_assert_null(kvf_reqtable_batch_new(t, big, "c", 1, 1, &err));
    kvf_reqtable_destroy(&t);  // frees unfinished batches too
}

Test(reqtable, detached_batches_retained_bounded) {
    kvf_reqtable_t *t = kvf_reqtable_new(2);
    kvf_err_t err;
    char id[16];
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "b%d", i);
        kvf_batch_t *b = kvf_reqtable_batch_new(t, id, "c", 1, 1, &err);
        kvf_req_t *r = s_add(t, b);
        b->client_ok = 0;  // the client went away
        cr_assert_eq(kvf_req_apply(r, KVF_REQ_EV_FAIL, NULL), 0);
        cr_assert_eq(kvf_reqtable_settle(t, b), 0, "retained for ATTACH");
        cr_assert(b->retained);
    }
    cr_assert_eq(t->n_retained, 2);
    cr_assert_null(kvf_reqtable_batch(t, "b0"), "oldest evicted past the bound");
    kvf_batch_t *b1 = kvf_reqtable_batch(t, "b1");
    cr_assert_not_null(b1);
    // Re-attached and delivered: released.
    b1->client_ok = 1;
    cr_assert_eq(kvf_reqtable_settle(t, b1), 1);
    cr_assert_eq(t->n_retained, 1);
    cr_assert_null(kvf_reqtable_batch(t, "b1"));
    cr_assert_not_null(kvf_reqtable_batch(t, "b2"));
    // A retained batch about to be settled (pending) is not the one evicted.
    kvf_batch_t *b2 = kvf_reqtable_batch(t, "b2");
    for (int i = 3; i < 5; i++) {
        snprintf(id, sizeof id, "b%d", i);
        kvf_batch_t *b = kvf_reqtable_batch_new(t, id, "c", 1, 1, &err);
        kvf_req_t *r = s_add(t, b);
        b->client_ok = 0;
        cr_assert_eq(kvf_req_apply(r, KVF_REQ_EV_FAIL, NULL), 0);
        if (i == 4) b2->settle_pending = 1;
        kvf_reqtable_settle(t, b);
    }
    cr_assert_eq(t->n_retained, 2);
    cr_assert_not_null(kvf_reqtable_batch(t, "b2"), "pending: kept");
    cr_assert_null(kvf_reqtable_batch(t, "b3"));
    cr_assert_not_null(kvf_reqtable_batch(t, "b4"));
    kvf_reqtable_destroy(&t);
}
