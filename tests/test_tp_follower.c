// tests/test_tp_follower.c — forward_sample across a TP group (worker/tp_group.h)
// on a backend that has it (as cuda has). Follower: steps without all_logits go
// through forward_sample with no token wanted, steps with all_logits and steps
// forward_sample refuses go through forward. Leader: forward_sample is offered
// (the step goes to the followers, then the inner backend samples); when the
// inner backend refuses, the leader still runs the step once and the engine's
// forward() of the same batch gets those logits without a second step, while a
// different batch is a new step. A backend without forward_sample always
// gets forward on both. Two forked processes over a shm group; fake backends
// count the calls.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "worker/tp.h"
#include "worker/tp_group.h"

typedef struct {
    int n_forward, n_sample, n_sample_refused, bad_per_seq;
    int leader_bad;  // rank 0: what the engine-like caller saw that it should not have
} s_counts_t;

typedef struct {
    kvf_backend_t base;
    s_counts_t *counts;  // shared with the parent
    int refuse;          // forward_sample answers KVF_E_UNSUPPORTED
} s_fake_t;

// Writes the call's number into every logit, so a caller can tell which run it got.
static int s_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err) {
    (void)err;
    int k = ++((s_fake_t *)be)->counts->n_forward;
    const int rows = b->all_logits ? b->n_tokens : b->n_seqs;
    for (int i = 0; i < rows * be->cfg.vocab_size; i++) logits[i] = (float)k;
    return 0;
}

static int s_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                    const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                    int32_t *out, kvf_err_t *err) {
    (void)history, (void)n_history;
    s_fake_t *f = (s_fake_t *)be;
    if (f->refuse) {
        f->counts->n_sample_refused++;
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "fake: no sampling here");
    }
    for (int i = 0; i < b->n_seqs; i++) {
        if (f->base.opts.tp_rank > 0 && (per_seq[i] || steps[i] != 0)) f->counts->bad_per_seq++;
        out[i] = 7;
    }
    f->counts->n_sample++;
    return 0;
}

static void s_destroy(kvf_backend_t **self_p) {
    free(*self_p);
    *self_p = NULL;
}

static const kvf_backend_ops_t s_ops_sample = {"fake-sample", s_forward, s_destroy, s_sample};
static const kvf_backend_ops_t s_ops_plain = {"fake-plain", s_forward, s_destroy, NULL};

static kvf_backend_t *s_fake_new(int rank, int with_sample, int refuse, s_counts_t *counts) {
    s_fake_t *f = calloc(1, sizeof *f);
    f->base.ops = with_sample ? &s_ops_sample : &s_ops_plain;
    f->base.cfg.vocab_size = 16;
    f->base.opts.block_size = 4;
    f->base.opts.max_batch_size = 4;
    f->base.opts.max_step_tokens = 16;
    f->base.opts.max_logit_rows = 16;
    f->base.opts.max_blocks_per_seq = 4;
    f->base.opts.tp_size = 2;
    f->base.opts.tp_rank = rank;
    f->base.n_blocks = 8;
    f->counts = counts;
    f->refuse = refuse;
    return &f->base;
}

// What the engine does with a step: forward_sample where offered, forward when
// it answers KVF_E_UNSUPPORTED; checks that the logits come from one run.
static int s_engine_step(kvf_backend_t *be, const kvf_batch_t *b, float *logits, s_counts_t *c) {
    const kvf_sampling_t *ps[2] = {NULL, NULL};
    int32_t steps[2] = {0, 0}, ids[2] = {-1, -1};
    kvf_err_t err;
    if (be->ops->forward_sample) {
        int before = c->n_forward;
        if (be->ops->forward_sample(be, b, ps, steps, NULL, NULL, ids, &err) == 0) {
            if (ids[0] != 7 || ids[1] != 7) c->leader_bad++;
            return 0;
        }
        if (err.code != KVF_E_UNSUPPORTED) return -1;
        if (c->n_forward != before + 1) c->leader_bad++;  // the refused step ran once, into the stash
        if (be->ops->forward(be, b, logits, &err) != 0) return -1;
        if (c->n_forward != before + 1 || logits[0] != (float)c->n_forward) c->leader_bad++;  // no second run
        return 0;
    }
    return be->ops->forward(be, b, logits, &err);
}

// Rank 0 sends one decode step, one all_logits step and one more decode step,
// then STOP (destroy); rank 1 follows. counts[rank].
static void s_case(int with_sample, int refuse, s_counts_t *counts) {
    char group[KVF_TP_GROUP_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(group, sizeof group, "fol-%d-%ld", (int)getpid(), (long)ts.tv_nsec);
    pid_t pids[2];
    for (int r = 0; r < 2; r++) {
        pids[r] = fork();
        cr_assert_geq(pids[r], 0);
        if (pids[r] != 0) continue;
        kvf_err_t err;
        kvf_tp_shm_opts_t so = {.timeout_ms = 10000};
        kvf_tp_t *ctl = kvf_tp_shm_new(group, r, 2, &so, &err);
        if (!ctl) _exit(10);
        kvf_backend_t *be = s_fake_new(r, with_sample, refuse, &counts[r]);
        int rc = 0;
        if (r == 0) {
            be = kvf_tp_leader_new(&be, ctl, 0, &err);
            if (!be) _exit(11);
            int32_t tok[3] = {1, 2, 3}, n_new[2] = {1, 1}, n_past[2] = {4, 5}, bt[8] = {0, 1, 2, 3, 4, 5, 6, 7};
            float logits[3 * 16];
            kvf_batch_t dec = {2, 2, tok, n_new, n_past, bt, 4, 0};
            int32_t nn3 = 3, np0 = 0;
            kvf_batch_t all = {1, 3, tok, &nn3, &np0, bt, 4, 1};
            int32_t n_past2[2] = {6, 7};
            kvf_batch_t dec2 = {2, 2, tok, n_new, n_past2, bt, 4, 0};
            if (s_engine_step(be, &dec, logits, &counts[0]) != 0 || be->ops->forward(be, &all, logits, &err) != 0 ||
                s_engine_step(be, &dec, logits, &counts[0]) != 0)
                rc = 12;
            if (refuse && rc == 0) {  // a stash is for the same batch only: another one is a new step
                const kvf_sampling_t *ps[2] = {NULL, NULL};
                int32_t steps[2] = {0, 0}, ids[2];
                if (be->ops->forward_sample(be, &dec, ps, steps, NULL, NULL, ids, &err) == 0 || err.code != KVF_E_UNSUPPORTED ||
                    be->ops->forward(be, &dec2, logits, &err) != 0)
                    rc = 14;
                else if (logits[0] != (float)counts[0].n_forward)  // dec2's own run, not the stash
                    counts[0].leader_bad++;
            }
            be->ops->destroy(&be);  // sends STOP
        } else {
            if (kvf_tp_follower_run(be, ctl, NULL, &err) != 0) rc = 13;
            be->ops->destroy(&be);
        }
        kvf_tp_destroy(&ctl);
        _exit(rc);
    }
    for (int r = 0; r < 2; r++) {
        int st;
        waitpid(pids[r], &st, 0);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "rank %d: status %d", r, st);
    }
}

static s_counts_t *s_shared_counts(void) {
    void *p = mmap(NULL, 2 * sizeof(s_counts_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED);
    memset(p, 0, 2 * sizeof(s_counts_t));
    return p;
}

Test(tp_follower, decode_steps_go_through_forward_sample_with_no_token_wanted) {
    s_counts_t *c = s_shared_counts();
    s_case(1, 0, c);
    cr_assert_eq(c[0].n_sample, 2, "the leader samples decode steps on its backend: %d", c[0].n_sample);
    cr_assert_eq(c[0].n_forward, 1, "leader forward calls (the all_logits step): %d", c[0].n_forward);
    cr_assert_eq(c[0].leader_bad, 0);
    cr_assert_eq(c[1].n_sample, 2, "follower forward_sample calls: %d", c[1].n_sample);
    cr_assert_eq(c[1].n_forward, 1, "follower forward calls (the all_logits step): %d", c[1].n_forward);
    cr_assert_eq(c[1].bad_per_seq, 0);
}

Test(tp_follower, a_refused_forward_sample_runs_the_step_once) {
    s_counts_t *c = s_shared_counts();
    s_case(1, 1, c);
    // leader: dec (refused, run into the stash, then handed to forward), all, dec (same), dec (refused,
    // stashed) then dec2 (a different batch: a new step)
    cr_assert_eq(c[0].n_sample_refused, 3);
    cr_assert_eq(c[0].n_forward, 5, "leader runs: %d", c[0].n_forward);
    cr_assert_eq(c[0].leader_bad, 0);
    cr_assert_eq(c[1].n_sample_refused, 4);
    cr_assert_eq(c[1].n_forward, 5, "every step the leader ran, the follower ran once: %d", c[1].n_forward);
}

Test(tp_follower, without_forward_sample_every_step_is_forward) {
    s_counts_t *c = s_shared_counts();
    s_case(0, 0, c);
    cr_assert_eq(c[0].n_forward, 3);
    cr_assert_eq(c[0].leader_bad, 0);
    cr_assert_eq(c[1].n_forward, 3);
    cr_assert_eq(c[1].n_sample, 0);
}
