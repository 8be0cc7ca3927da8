// tests/test_sched.c — the continuous-batching scheduler on its own (no model):
// a fake "model" appends token 1000 + k as the k-th generated token of a sequence.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "worker/sched.h"

typedef struct {
    int32_t n_gen;     // tokens generated (sampled) so far
    int32_t target;    // finish after this many
    int32_t n_samples; // sample events seen (must equal n_gen: nothing re-emitted)
    int done;
} s_req_t;

typedef struct {
    kvf_blockmgr_t *bm;
    kvf_sched_t *s;
    kvf_sched_opts_t o;
} s_fix_t;

static void s_fix_init_policy(s_fix_t *f, int32_t n_blocks, int32_t bs, int32_t max_batch, int32_t budget,
                              int32_t max_blocks_per_seq, int prefix, int32_t policy) {
    f->bm = kvf_blockmgr_new(n_blocks, bs, prefix);
    f->o = (kvf_sched_opts_t){.block_size = bs, .policy = policy, .max_batch_size = max_batch,
                              .max_prefill_token_num = budget, .max_blocks_per_seq = max_blocks_per_seq};
    kvf_err_t err;
    f->s = kvf_sched_new(&f->o, f->bm, &err);
    cr_assert_not_null(f->s, "%s", err.msg);
}

static void s_fix_init(s_fix_t *f, int32_t n_blocks, int32_t bs, int32_t max_batch, int32_t budget,
                       int32_t max_blocks_per_seq, int prefix) {
    s_fix_init_policy(f, n_blocks, bs, max_batch, budget, max_blocks_per_seq, prefix, KVF_SCHED_MIXED);
}

static void s_fix_fini(s_fix_t *f) {
    kvf_sched_destroy(&f->s);
    cr_assert_eq(kvf_blockmgr_free_count(f->bm), kvf_blockmgr_total(f->bm), "every block came back");
    kvf_blockmgr_destroy(&f->bm);
}

static kvf_seq_t *s_add(s_fix_t *f, uint64_t rid, int32_t n_prompt, s_req_t *r, int32_t target) {
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n_prompt);
    for (int32_t i = 0; i < n_prompt; i++) t[i] = (int32_t)((rid * 31 + (uint64_t)i) % 997);
    memset(r, 0, sizeof *r);
    r->target = target;
    kvf_err_t err;
    kvf_seq_t *seq = kvf_sched_add(f->s, rid, t, n_prompt, r, &err);
    cr_assert_not_null(seq, "%s", err.msg);
    free(t);
    return seq;
}

// Checks the plan's invariants, runs it (fake model) and finishes sequences.
// Returns the number of sequences finished.
static int s_step(s_fix_t *f, kvf_sched_plan_t *plan) {
    kvf_err_t err;
    int n = kvf_sched_schedule(f->s, plan, &err);
    cr_assert(n >= 0, "%s", err.msg);
    cr_assert_leq(plan->n_tokens, f->o.max_prefill_token_num);
    cr_assert_leq(plan->n_seqs, f->o.max_batch_size);
    cr_assert_leq(kvf_sched_n_running(f->s), f->o.max_batch_size);
    int32_t sum = 0;
    for (int i = 0; i < plan->n_seqs; i++) {
        kvf_seq_t *q = plan->seqs[i];
        cr_assert_geq(plan->n_new[i], 1);
        cr_assert_eq(plan->n_past[i], q->n_computed);
        cr_assert_leq(plan->n_past[i] + plan->n_new[i], q->n_tokens);
        cr_assert_geq(q->n_blocks * f->o.block_size, plan->n_past[i] + plan->n_new[i], "blocks cover the step");
        cr_assert_eq(q->state, KVF_SEQ_RUNNING);
        sum += plan->n_new[i];
    }
    cr_assert_eq(sum, plan->n_tokens);
    kvf_sched_complete(f->s, plan);
    int finished = 0;
    for (int i = 0; i < plan->n_seqs; i++) {
        kvf_seq_t *q = plan->seqs[i];
        if (!plan->sample[i]) continue;
        s_req_t *r = q->user;
        r->n_samples++;
        cr_assert_eq(q->n_tokens, q->n_prompt + r->n_gen, "sampled exactly at the end of the known tokens");
        cr_assert_eq(kvf_sched_append(f->s, q, 1000 + r->n_gen, &err), 0);
        r->n_gen++;
        if (r->n_gen == r->target) {
            // generated tokens are intact, in order, never duplicated
            for (int32_t k = 0; k < r->n_gen; k++) cr_assert_eq(q->tokens[q->n_prompt + k], 1000 + k);
            r->done = 1;
            kvf_sched_finish(f->s, q);
            finished++;
        }
    }
    return finished;
}

Test(sched, rejects_bad_options_and_inputs) {
    kvf_blockmgr_t *bm = kvf_blockmgr_new(8, 4, 0);
    kvf_err_t err;
    kvf_sched_opts_t o = {.block_size = 8, .max_batch_size = 2, .max_prefill_token_num = 16, .max_blocks_per_seq = 4};
    cr_assert_null(kvf_sched_new(&o, bm, &err), "block size mismatch");
    o.block_size = 4;
    o.max_prefill_token_num = 1;
    cr_assert_null(kvf_sched_new(&o, bm, &err), "budget below batch size");
    o.max_prefill_token_num = 16;
    o.policy = 2;
    cr_assert_null(kvf_sched_new(&o, bm, &err), "unknown policy");
    cr_assert(strstr(err.msg, "policy"), "%s", err.msg);
    o.policy = KVF_SCHED_PREFILL_FIRST;
    kvf_sched_t *s = kvf_sched_new(&o, bm, &err);
    cr_assert_not_null(s);
    cr_assert_eq(kvf_sched_set_policy(s, 7, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(kvf_sched_set_policy(s, KVF_SCHED_MIXED, &err), 0);
    int32_t t[17] = {0};
    cr_assert_null(kvf_sched_add(s, 1, t, 0, NULL, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_null(kvf_sched_add(s, 1, t, 17, NULL, &err));
    cr_assert_eq(err.code, KVF_E_TOO_LONG);
    kvf_seq_t *q = kvf_sched_add(s, 1, t, 16, NULL, &err);
    cr_assert_not_null(q);
    cr_assert_eq(kvf_sched_find(s, 1), q);
    cr_assert_null(kvf_sched_find(s, 2));
    cr_assert_eq(kvf_sched_append(s, q, 5, &err), -1, "a full sequence cannot grow");
    cr_assert_eq(err.code, KVF_E_TOO_LONG);
    kvf_sched_destroy(&s);
    kvf_blockmgr_destroy(&bm);
}

Test(sched, long_prompt_is_chunked_alongside_decodes) {
    s_fix_t f;
    s_fix_init(&f, 600, 64, 8, 8192, 512, 0);
    s_req_t ra, rb;
    kvf_sched_plan_t plan;
    s_add(&f, 1, 10, &ra, 100);
    s_step(&f, &plan);  // prefill of the short one
    cr_assert_eq(plan.n_tokens, 10);
    kvf_seq_t *big = s_add(&f, 2, 30000, &rb, 1);
    int steps = 0;
    int32_t done = 0;
    while (!rb.done) {
        s_step(&f, &plan);
        steps++;
        cr_assert_eq(plan.n_seqs, 2, "decode and chunk share every step");
        cr_assert_eq(plan.n_decode, 1);
        cr_assert_eq(plan.seqs[0]->rid, 1);
        cr_assert_eq(plan.n_new[0], 1);
        int32_t chunk = plan.n_new[1];
        cr_assert_eq(chunk, 30000 - done < 8191 ? 30000 - done : 8191, "step %d: chunk %d", steps, chunk);
        cr_assert_eq(plan.sample[1], done + chunk == 30000);
        done += chunk;
        cr_assert_eq(plan.n_tokens, 1 + chunk);
    }
    (void)big;
    cr_assert_eq(steps, 4);  // 8191 * 3 + 5427
    cr_assert_eq(ra.n_gen, 5);
    while (!ra.done) s_step(&f, &plan);
    s_fix_fini(&f);
}

Test(sched, max_batch_size_and_budget) {
    s_fix_t f;
    s_fix_init(&f, 1000, 16, 4, 64, 16, 0);
    s_req_t r[10];
    for (int i = 0; i < 10; i++) s_add(&f, (uint64_t)i + 1, 20 + i, &r[i], 5);
    kvf_sched_plan_t plan;
    int total = 0, steps = 0, max_seen = 0;
    while (total < 10) {
        total += s_step(&f, &plan);
        if (plan.n_seqs > max_seen) max_seen = plan.n_seqs;
        cr_assert_leq(plan.n_tokens, 64);
        cr_assert(++steps < 1000);
    }
    cr_assert_eq(max_seen, 4, "the batch fills up to, and never past, max_batch_size");
    // FCFS: the first plan prefills rid 1, 2, 3 (20 + 21 + 22 = 63 <= 64) and 1 token of rid 4
    s_fix_fini(&f);
}

Test(sched, first_step_fills_budget_fcfs) {
    s_fix_t f;
    s_fix_init(&f, 1000, 16, 8, 64, 16, 0);
    s_req_t r[4];
    for (int i = 0; i < 4; i++) s_add(&f, (uint64_t)i + 1, 20 + i, &r[i], 3);
    kvf_sched_plan_t plan;
    kvf_err_t err;
    cr_assert_eq(kvf_sched_schedule(f.s, &plan, &err), 4);
    cr_assert_eq(plan.n_new[0], 20);
    cr_assert_eq(plan.n_new[1], 21);
    cr_assert_eq(plan.n_new[2], 22);
    cr_assert_eq(plan.n_new[3], 1, "the rest of the budget: a 1-token chunk of rid 4");
    cr_assert_eq(plan.n_tokens, 64);
    cr_assert_eq(plan.sample[0], 1);
    cr_assert_eq(plan.sample[3], 0, "rid 4 is only half prefilled");
    cr_assert_eq(kvf_sched_n_waiting(f.s), 0);
    kvf_sched_complete(f.s, &plan);
    s_fix_fini(&f);
}

Test(sched, preempts_newest_first_and_requeues_at_head) {
    // 3 sequences of 6 prompt tokens, block size 4, 5 blocks.
    s_fix_t f;
    s_fix_init(&f, 5, 4, 4, 64, 8, 0);
    s_req_t r[3];
    kvf_seq_t *q[3];
    for (int i = 0; i < 3; i++) q[i] = s_add(&f, (uint64_t)i + 1, 6, &r[i], 14);
    kvf_sched_plan_t plan;
    s_step(&f, &plan);
    // rid 1, 2 prefill (2 blocks each); rid 3 would need 2 blocks, 1 is free: it waits
    cr_assert_eq(plan.n_seqs, 2);
    cr_assert_eq(kvf_blockmgr_free_count(f.bm), 1);
    cr_assert_eq(kvf_sched_n_waiting(f.s), 1);
    // rid 1, 2 decode (positions 6, 7 fit their 2nd block)
    s_step(&f, &plan);
    cr_assert_eq(plan.n_seqs, 2);
    s_step(&f, &plan);
    cr_assert_eq(plan.n_seqs, 2);
    cr_assert_eq(kvf_sched_n_preemptions(f.s), 0);
    // position 8 needs a third block: rid 1 takes the free one; rid 2 needs one
    // too and is itself the newest running, so it is the one preempted
    s_step(&f, &plan);
    cr_assert_eq(plan.n_preempted, 1);
    cr_assert_eq(plan.n_seqs, 1);
    cr_assert_eq(plan.seqs[0], q[0]);
    cr_assert_eq(kvf_sched_n_preemptions(f.s), 1);
    cr_assert_eq(q[1]->state, KVF_SEQ_WAITING);
    cr_assert_eq(kvf_sched_waiting_at(f.s, 0), q[1], "requeued at the head, before the newer rid 3");
    cr_assert_eq(kvf_sched_waiting_at(f.s, 1), q[2]);
    cr_assert_eq(q[1]->n_blocks, 0);
    cr_assert_eq(q[1]->n_computed, 0);
    cr_assert_eq(r[1].n_gen, 3);
    cr_assert_eq(q[1]->n_tokens, 6 + 3, "generated tokens kept for the recompute");
    cr_assert_eq(q[1]->n_preempted, 1);
    // run to completion: everything finishes, nothing re-emitted (checked in s_step)
    int total = 0, steps = 0;
    while (total < 3) {
        total += s_step(&f, &plan);
        cr_assert(++steps < 500);
    }
    for (int i = 0; i < 3; i++) cr_assert_eq(r[i].n_samples, 14);
    s_fix_fini(&f);
}

Test(sched, admission_waits_for_room_for_the_whole_prompt) {
    // 10 blocks of 4: a 30-token prompt needs 8. With 3 taken by a running
    // sequence it waits, although its first chunk (budget 8 = 2 blocks) would fit.
    s_fix_t f;
    s_fix_init(&f, 10, 4, 4, 8, 10, 0);
    s_req_t ra, rb;
    s_add(&f, 1, 8, &ra, 4);
    kvf_seq_t *b = s_add(&f, 2, 30, &rb, 2);
    kvf_sched_plan_t plan;
    s_step(&f, &plan);
    cr_assert_eq(plan.n_seqs, 1, "only rid 1 runs");
    cr_assert_eq(b->state, KVF_SEQ_WAITING);
    while (!ra.done) {
        cr_assert_eq(b->state, KVF_SEQ_WAITING);
        s_step(&f, &plan);
    }
    // rid 1 finished: all 10 blocks free, rid 2 is admitted and prefills in chunks of 8
    s_step(&f, &plan);
    cr_assert_eq(plan.n_seqs, 1);
    cr_assert_eq(plan.seqs[0], b);
    cr_assert_eq(plan.n_new[0], 8);
    while (!rb.done) s_step(&f, &plan);
    cr_assert_eq(kvf_sched_n_preemptions(f.s), 0);
    s_fix_fini(&f);
}

Test(sched, newest_running_is_the_victim_even_when_it_is_the_needy_one) {
    s_fix_t f;
    s_fix_init(&f, 4, 4, 4, 64, 8, 0);
    s_req_t r[2];
    kvf_seq_t *a = s_add(&f, 1, 4, &r[0], 12);
    kvf_seq_t *b = s_add(&f, 2, 3, &r[1], 12);
    kvf_sched_plan_t plan;
    s_step(&f, &plan);  // a: 4 tokens (1 block), b: 3 (1 block)
    cr_assert_eq(plan.n_seqs, 2);
    // after a few decodes both need more; b is always the newest, so a never gets preempted
    for (int i = 0; i < 40 && !r[0].done; i++) {
        cr_assert_eq(a->n_preempted, 0);  // checked before the step that may finish (and free) it
        s_step(&f, &plan);
    }
    cr_assert(r[0].done);
    cr_assert_gt(b->n_preempted, 0);
    while (!r[1].done) s_step(&f, &plan);
    s_fix_fini(&f);
}

Test(sched, no_starvation_under_pressure) {
    // 40 sequences of random length through a pool that holds ~3 of them: the
    // oldest unfinished sequence makes progress every step, and all finish.
    s_fix_t f;
    s_fix_init(&f, 12, 8, 6, 32, 4, 0);
    enum { N = 40 };
    s_req_t r[N];
    kvf_seq_t *q[N];
    srand(7);
    for (int i = 0; i < N; i++) q[i] = s_add(&f, (uint64_t)i + 1, 1 + rand() % 16, &r[i], 1 + rand() % 14);
    kvf_sched_plan_t plan;
    int total = 0, steps = 0;
    while (total < N) {
        int oldest = 0;
        while (r[oldest].done) oldest++;
        int32_t before = q[oldest]->n_computed;
        int32_t gen_before = r[oldest].n_gen;
        total += s_step(&f, &plan);
        if (!r[oldest].done)
            cr_assert(q[oldest]->n_computed > before || r[oldest].n_gen > gen_before,
                      "step %d: oldest rid %d made no progress", steps, oldest + 1);
        cr_assert(++steps < 5000);
    }
    cr_assert_gt(kvf_sched_n_preemptions(f.s), 0, "the pool was tight enough to preempt");
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].n_samples, r[i].target);
    s_fix_fini(&f);
}

Test(sched, prefix_cache_skips_shared_blocks_and_recompute_hits) {
    s_fix_t f;
    s_fix_init(&f, 64, 4, 4, 64, 16, 1);
    int32_t t[20];
    for (int i = 0; i < 20; i++) t[i] = 50 + i;
    s_req_t ra, rb;
    kvf_err_t err;
    kvf_seq_t *a = kvf_sched_add(f.s, 1, t, 20, &ra, &err);
    memset(&ra, 0, sizeof ra);
    ra.target = 3;
    kvf_sched_plan_t plan;
    s_step(&f, &plan);
    cr_assert_eq(plan.n_new[0], 20);
    cr_assert_eq(a->n_hashed, 5);
    // b shares 16 tokens (4 blocks) and then differs
    t[17] = 999;
    memset(&rb, 0, sizeof rb);
    rb.target = 2;
    kvf_seq_t *b = kvf_sched_add(f.s, 2, t, 20, &rb, &err);
    s_step(&f, &plan);
    cr_assert_eq(plan.n_seqs, 2);
    cr_assert_eq(plan.seqs[1], b);
    cr_assert_eq(plan.n_past[1], 16, "four blocks came from the cache");
    cr_assert_eq(plan.n_new[1], 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(b->blocks[i], a->blocks[i]);
    kvf_blockmgr_stats_t st;
    kvf_blockmgr_stats(f.bm, &st);
    cr_assert_eq(st.prefix_hits, 4);
    cr_assert_eq(st.prefix_misses, 4, "a looked up its 4 full blocks first and missed");
    while (!ra.done || !rb.done) s_step(&f, &plan);
    // a whole prompt that is cached still computes its last token
    t[17] = 67;
    s_req_t rc;
    memset(&rc, 0, sizeof rc);
    rc.target = 1;
    kvf_sched_add(f.s, 3, t, 20, &rc, &err);
    s_step(&f, &plan);
    cr_assert_eq(plan.n_past[0], 16);
    cr_assert_eq(plan.n_new[0], 4, "20 tokens: 4 full blocks reused, the 5th computed (last token must run)");
    cr_assert(rc.done);
    s_fix_fini(&f);
}

// Prefill-first: prompts are prefilled in full steps until the batch is full,
// then the whole batch decodes together; the mixed policy decodes every running
// sequence every step and fills the rest of the budget with prompt chunks.
Test(sched, prefill_first_fills_the_batch_then_decodes_it_whole) {
    for (int32_t policy = KVF_SCHED_MIXED; policy <= KVF_SCHED_PREFILL_FIRST; policy++) {
        s_fix_t f;
        s_fix_init_policy(&f, 1000, 16, 4, 32, 16, 0, policy);
        s_req_t r[6];
        for (int i = 0; i < 6; i++) s_add(&f, (uint64_t)i + 1, 16, &r[i], 3);
        kvf_sched_plan_t plan;
        int total = 0, steps = 0;
        // (decodes, prefill tokens) of each step
        const int32_t want_pf[][2] = {{0, 32}, {0, 32}, {4, 0}, {4, 0}, {0, 32}, {2, 0}, {2, 0}};
        const int32_t want_mixed[][2] = {{0, 32}, {2, 30}, {3, 2}, {2, 30}, {2, 2}, {2, 0}, {1, 0}};
        const int32_t(*want)[2] = policy == KVF_SCHED_PREFILL_FIRST ? want_pf : want_mixed;
        while (total < 6) {
            total += s_step(&f, &plan);
            cr_assert_lt(steps, 7, "policy %d: more than 7 steps", policy);
            cr_assert_eq(plan.n_decode, want[steps][0], "policy %d step %d: %d decodes", policy, steps, plan.n_decode);
            cr_assert_eq(plan.n_tokens - plan.n_decode, want[steps][1], "policy %d step %d: %d prefill tokens",
                         policy, steps, plan.n_tokens - plan.n_decode);
            steps++;
        }
        cr_assert_eq(steps, 7);
        for (int i = 0; i < 6; i++) cr_assert_eq(r[i].n_samples, 3);
        s_fix_fini(&f);
    }
}

// Prefill-first through a pool that holds ~3 sequences: preemption and
// recompute still finish everything, no step is empty while work remains, and
// a running sequence waits for decodes at most until the batch stops growing.
Test(sched, prefill_first_under_pressure_finishes_everything) {
    s_fix_t f;
    s_fix_init_policy(&f, 12, 8, 6, 32, 4, 0, KVF_SCHED_PREFILL_FIRST);
    enum { N = 40 };
    s_req_t r[N];
    srand(11);
    for (int i = 0; i < N; i++) s_add(&f, (uint64_t)i + 1, 1 + rand() % 16, &r[i], 1 + rand() % 14);
    kvf_sched_plan_t plan;
    int total = 0, steps = 0, prefill_run = 0;
    while (total < N) {
        total += s_step(&f, &plan);
        cr_assert_gt(plan.n_seqs, 0, "step %d ran nothing with work left", steps);
        if (plan.n_decode == 0) {
            cr_assert_leq(++prefill_run, 6 * 4, "step %d: decodes waited for %d prefill steps", steps, prefill_run);
        } else {
            prefill_run = 0;
        }
        cr_assert(++steps < 5000);
    }
    for (int i = 0; i < N; i++) cr_assert_eq(r[i].n_samples, r[i].target);
    s_fix_fini(&f);
}
