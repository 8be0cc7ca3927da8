// tests/test_coord_placement.c — placement as pure functions over a registry:
// both halves of the fit rule, watermark, affinity, most-free and
// shortest-queue tie-breaks, too_long, and promised-since-report accounting.
#include <criterion/criterion.h>
#include <string.h>

#include "coordinator/placement.h"
#include "coordinator/registry.h"
#include "proto/codec.h"

// Registers worker `id` with total/free blocks of block_size tokens.
static int s_add(kvf_registry_t *reg, const char *id, uint32_t total, uint32_t free_blocks, uint32_t block_size) {
    kvf_msg_register_t r;
    memset(&r, 0, sizeof r);
    r.worker_id = kvf_str(id);
    r.backend = kvf_str("cpu");
    r.device = -1;
    r.tp_size = 1;
    r.total_blocks = total;
    r.free_blocks = free_blocks;
    r.plan.block_size = block_size;
    r.plan.kv_blocks = total;
    r.prefix_caching = 1;
    kvf_err_t err;
    int idx = kvf_registry_upsert(reg, &r, id, strlen(id), 0, &err);
    cr_assert_geq(idx, 0, "%s", err.msg);
    return idx;
}

static int32_t s_prompt[4096];

static kvf_place_verdict s_choose(kvf_registry_t *reg, const kvf_affinity_t *aff, uint32_t n_prompt,
                                  uint32_t max_new, uint32_t watermark, kvf_place_t *p) {
    return kvf_place_choose(reg, aff, s_prompt, n_prompt, max_new, watermark, p);
}

Test(placement, need_rounds_up) {
    cr_assert_eq(kvf_place_need(100, 16), 7);
    cr_assert_eq(kvf_place_need(64, 16), 4);
    cr_assert_eq(kvf_place_need(65, 16), 5);
    cr_assert_eq(kvf_place_need(1, 64), 1);
    cr_assert_eq(kvf_place_need(0, 64), 0);
    cr_assert_eq(kvf_place_need(UINT64_MAX / 2, 1), UINT32_MAX);
}

Test(placement, first_half_free_minus_promised) {
    kvf_registry_t *reg = kvf_registry_new();
    int w = s_add(reg, "w0", 100, 10, 16);
    kvf_place_t p;
    // 10 prompt + 150 new = 160 tokens = 10 blocks: exactly the free ones.
    cr_assert_eq(s_choose(reg, NULL, 10, 150, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, w);
    cr_assert_eq(p.need, 10);
    // 161 tokens = 11 blocks > 10 free: wait (it fits the total, so not too long).
    cr_assert_eq(s_choose(reg, NULL, 11, 150, 0, &p), KVF_PLACE_WAIT);
    // Promise 4 of the 10: a 7-block request no longer fits, a 6-block one does.
    kvf_registry_note_assign(reg->w[w], 1, 4);
    cr_assert_eq(kvf_registry_avail(reg->w[w]), 6);
    cr_assert_eq(s_choose(reg, NULL, 10, 102, 0, &p), KVF_PLACE_WAIT);
    cr_assert_eq(s_choose(reg, NULL, 10, 86, 0, &p), KVF_PLACE_OK);
    kvf_registry_destroy(&reg);
    cr_assert_null(reg);
}

Test(placement, second_half_ledger_bounds_total) {
    kvf_registry_t *reg = kvf_registry_new();
    int w = s_add(reg, "w0", 20, 20, 16);
    kvf_place_t p;
    kvf_registry_note_assign(reg->w[w], 1, 15);
    // The worker saw the assignment but has not allocated yet: it reports all 20 free.
    kvf_registry_note_report(reg->w[w], 20, 1);
    cr_assert_eq(kvf_registry_avail(reg->w[w]), 20);
    cr_assert_eq(reg->w[w]->ledger, 15);
    // 6 blocks: free says yes, the ledger (15 + 6 > 20) says no.
    cr_assert_eq(s_choose(reg, NULL, 16, 80, 0, &p), KVF_PLACE_WAIT);
    // 5 blocks: 15 + 5 = 20 fits.
    cr_assert_eq(s_choose(reg, NULL, 16, 64, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.need, 5);
    // Releasing the 15 makes room again.
    kvf_registry_note_release(reg->w[w], 15);
    cr_assert_eq(reg->w[w]->ledger, 0);
    cr_assert_eq(reg->w[w]->outstanding, 0);
    cr_assert_eq(s_choose(reg, NULL, 16, 80, 0, &p), KVF_PLACE_OK);
    kvf_registry_destroy(&reg);
}

Test(placement, watermark_on_both_halves) {
    kvf_registry_t *reg = kvf_registry_new();
    s_add(reg, "w0", 20, 20, 16);
    kvf_place_t p;
    // 18 blocks: 18 + 2 <= 20 fits with watermark 2, not with 3 (then never: too long).
    cr_assert_eq(s_choose(reg, NULL, 16, 272, 2, &p), KVF_PLACE_OK);
    cr_assert_eq(p.need, 18);
    cr_assert_eq(s_choose(reg, NULL, 16, 272, 3, &p), KVF_PLACE_TOO_LONG);
    // Free side: report 12 free; 10 blocks fit with watermark 2, not with watermark 3.
    kvf_registry_note_report(reg->w[0], 12, 0);
    cr_assert_eq(s_choose(reg, NULL, 16, 144, 2, &p), KVF_PLACE_OK);
    cr_assert_eq(s_choose(reg, NULL, 16, 144, 3, &p), KVF_PLACE_WAIT);
    kvf_registry_destroy(&reg);
}

Test(placement, most_free_then_shortest_queue) {
    kvf_registry_t *reg = kvf_registry_new();
    s_add(reg, "a", 100, 50, 16);
    int b = s_add(reg, "b", 100, 80, 16);
    kvf_place_t p;
    cr_assert_eq(s_choose(reg, NULL, 4, 4, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, b, "most free blocks wins");
    // Equal availability: the one with fewer outstanding requests wins.
    kvf_registry_note_report(reg->w[0], 80, 0);
    kvf_registry_note_assign(reg->w[0], 1, 1);
    kvf_registry_note_assign(reg->w[0], 2, 1);
    kvf_registry_note_report(reg->w[0], 80, 2);
    cr_assert_eq(kvf_registry_avail(reg->w[0]), 80);
    cr_assert_eq(reg->w[0]->outstanding, 2);
    cr_assert_eq(s_choose(reg, NULL, 4, 4, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, b, "fewer outstanding wins the tie");
    kvf_registry_note_assign(reg->w[b], 3, 1);
    kvf_registry_note_assign(reg->w[b], 4, 1);
    kvf_registry_note_assign(reg->w[b], 5, 1);
    kvf_registry_note_report(reg->w[b], 80, 5);
    cr_assert_eq(s_choose(reg, NULL, 4, 4, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, 0, "now a has the shorter queue");
    kvf_registry_destroy(&reg);
}

Test(placement, prefix_affinity_first) {
    kvf_registry_t *reg = kvf_registry_new();
    int a = s_add(reg, "a", 100, 90, 16);
    int b = s_add(reg, "b", 100, 30, 16);
    kvf_affinity_t *aff = malloc(sizeof *aff);
    kvf_affinity_init(aff);
    for (int i = 0; i < 40; i++) s_prompt[i] = 1000 + i;
    kvf_place_t p;
    cr_assert_eq(s_choose(reg, aff, 40, 8, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, a);
    uint64_t h = kvf_place_prefix_hash(s_prompt, 40, 16);
    cr_assert_neq(h, 0);
    cr_assert_eq(p.prefix_hash, h);
    // b served this first block last: it wins although a has more free blocks.
    kvf_affinity_note(aff, h, b, reg->w[b]->generation);
    cr_assert_eq(kvf_affinity_lookup(aff, reg, h), b);
    cr_assert_eq(s_choose(reg, aff, 40, 8, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, b);
    // Only if it fits: a request too big for b's free blocks goes to a.
    cr_assert_eq(s_choose(reg, aff, 40, 600, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, a);
    // Without a prefix cache on b, affinity is worth nothing: most free wins.
    reg->w[b]->prefix_caching = 0;
    cr_assert_eq(s_choose(reg, aff, 40, 8, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, a);
    reg->w[b]->prefix_caching = 1;
    // A different first block has no affinity.
    s_prompt[3] = 7;
    cr_assert_eq(s_choose(reg, aff, 40, 8, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, a);
    s_prompt[3] = 1003;
    // b re-registers (restarted, cache gone): the affinity no longer holds.
    s_add(reg, "b", 100, 30, 16);
    cr_assert_eq(kvf_affinity_lookup(aff, reg, h), -1);
    cr_assert_eq(s_choose(reg, aff, 40, 8, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.worker, a);
    free(aff);
    kvf_registry_destroy(&reg);
}

Test(placement, prefix_hash_is_first_block_only) {
    int32_t x[32], y[32];
    for (int i = 0; i < 32; i++) x[i] = y[i] = i * 3;
    y[20] = 99;  // second block differs
    cr_assert_eq(kvf_place_prefix_hash(x, 32, 16), kvf_place_prefix_hash(y, 32, 16));
    y[5] = 99;   // first block differs
    cr_assert_neq(kvf_place_prefix_hash(x, 32, 16), kvf_place_prefix_hash(y, 32, 16));
    cr_assert_eq(kvf_place_prefix_hash(x, 15, 16), 0, "shorter than a block: no hash");
    cr_assert_neq(kvf_place_prefix_hash(x, 16, 16), 0);
}

Test(placement, too_long_wait_and_unplaceable) {
    kvf_registry_t *reg = kvf_registry_new();
    kvf_place_t p;
    cr_assert_eq(s_choose(reg, NULL, 10, 10, 0, &p), KVF_PLACE_WAIT, "no worker yet: wait");
    s_add(reg, "small", 10, 10, 16);
    s_add(reg, "big", 50, 50, 16);
    // 51 blocks > every total: too long.
    cr_assert_eq(s_choose(reg, NULL, 16, 800, 0, &p), KVF_PLACE_TOO_LONG);
    cr_assert_eq(s_choose(reg, NULL, 16, 784, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(p.need, 50);
    // The big one draining: the small one can never hold 30 blocks -> too long;
    // with every worker draining -> wait.
    reg->w[1]->state = KVF_WSTATE_DRAINING;
    cr_assert_eq(s_choose(reg, NULL, 16, 464, 0, &p), KVF_PLACE_TOO_LONG);
    reg->w[0]->state = KVF_WSTATE_DEAD;
    cr_assert_eq(s_choose(reg, NULL, 16, 16, 0, &p), KVF_PLACE_WAIT);
    kvf_registry_destroy(&reg);
}

Test(placement, session_len_and_followers) {
    kvf_registry_t *reg = kvf_registry_new();
    int w = s_add(reg, "w0", 100, 100, 16);
    reg->w[w]->session_len = 64;
    kvf_place_t p;
    cr_assert_eq(s_choose(reg, NULL, 32, 32, 0, &p), KVF_PLACE_OK);
    cr_assert_eq(s_choose(reg, NULL, 32, 33, 0, &p), KVF_PLACE_TOO_LONG);
    reg->w[w]->tp_rank = 1;  // a follower rank never takes work
    cr_assert_not(kvf_registry_placeable(reg->w[w]));
    cr_assert_eq(s_choose(reg, NULL, 8, 8, 0, &p), KVF_PLACE_WAIT);
    kvf_registry_destroy(&reg);
}

Test(placement, promised_since_report) {
    kvf_registry_t *reg = kvf_registry_new();
    int w = s_add(reg, "w0", 100, 100, 16);
    kvf_cworker_t *x = reg->w[w];
    cr_assert_eq(kvf_registry_note_assign(x, 11, 30), 1);
    cr_assert_eq(kvf_registry_note_assign(x, 12, 30), 2);
    cr_assert_eq(kvf_registry_avail(x), 40);
    // A heartbeat sent before the worker got them still says 100 free: both stay promised.
    kvf_registry_note_report(x, 100, 0);
    cr_assert_eq(x->promised, 60);
    cr_assert_eq(kvf_registry_avail(x), 40);
    // A RESULT for an unknown rid proves nothing.
    kvf_registry_note_report(x, 100, 999);
    cr_assert_eq(x->promised, 60);
    // A RESULT for rid 11: the worker had it (70 free); 12 is still unseen.
    kvf_registry_note_report(x, 70, 11);
    cr_assert_eq(x->promised, 30);
    cr_assert_eq(kvf_registry_avail(x), 40);
    // A RESULT for rid 12 covers everything before it as well.
    kvf_registry_note_assign(x, 13, 5);
    kvf_registry_note_report(x, 40, 12);
    cr_assert_eq(x->promised, 5);
    cr_assert_eq(kvf_registry_avail(x), 35);
    cr_assert_eq(x->ledger, 65);
    cr_assert_eq(x->outstanding, 3);
    // Re-registration forgets it all.
    s_add(reg, "w0", 100, 100, 16);
    cr_assert_eq(x->promised, 0);
    cr_assert_eq(x->ledger, 0);
    cr_assert_eq(x->n_unseen, 0);
    cr_assert_eq(kvf_registry_avail(x), 100);
    kvf_registry_destroy(&reg);
}

Test(registry, rejects_bad_register) {
    kvf_registry_t *reg = kvf_registry_new();
    kvf_msg_register_t r;
    memset(&r, 0, sizeof r);
    kvf_err_t err;
    cr_assert_eq(kvf_registry_upsert(reg, &r, "x", 1, 0, &err), -1);
    cr_assert(strstr(err.msg, "worker_id"));
    r.worker_id = kvf_str("w");
    r.tp_size = 1;
    r.total_blocks = 10;
    r.free_blocks = 11;
    r.plan.block_size = 16;
    cr_assert_eq(kvf_registry_upsert(reg, &r, "x", 1, 0, &err), -1);
    cr_assert(strstr(err.msg, "free_blocks"));
    r.free_blocks = 10;
    r.plan.block_size = 0;
    cr_assert_eq(kvf_registry_upsert(reg, &r, "x", 1, 0, &err), -1);
    cr_assert(strstr(err.msg, "block_size"));
    r.plan.block_size = 16;
    r.tp_rank = 1;
    cr_assert_eq(kvf_registry_upsert(reg, &r, "x", 1, 0, &err), -1);
    r.tp_rank = 0;
    cr_assert_eq(kvf_registry_upsert(reg, &r, "x", 1, 0, &err), 0);
    cr_assert_eq(kvf_registry_find(reg, "w"), 0);
    cr_assert_eq(kvf_registry_find_ident(reg, "x", 1), 0);
    cr_assert_eq(kvf_registry_find_ident(reg, "y", 1), -1);
    cr_assert_str_eq(reg->w[0]->group_id, "w", "group defaults to the worker id");
    kvf_registry_destroy(&reg);
}
