// tests/test_blockmgr.c — the KV block manager: free list, refcounts, prefix
// cache hits, LRU eviction, exhaustion, counters.
#include <criterion/criterion.h>
#include <string.h>

#include "worker/blockmgr.h"

Test(blockmgr, new_rejects_bad_sizes) {
    cr_assert_null(kvf_blockmgr_new(0, 16, 1));
    cr_assert_null(kvf_blockmgr_new(4, 0, 1));
    kvf_blockmgr_t *bm = kvf_blockmgr_new(4, 16, 1);
    cr_assert_not_null(bm);
    kvf_blockmgr_destroy(&bm);
    cr_assert_null(bm);
    kvf_blockmgr_destroy(&bm);  // NULL is fine
}

Test(blockmgr, alloc_free_and_exhaustion) {
    kvf_blockmgr_t *bm = kvf_blockmgr_new(4, 16, 0);
    kvf_err_t err;
    int seen[4] = {0};
    for (int i = 0; i < 4; i++) {
        int32_t id = kvf_blockmgr_alloc(bm, &err);
        cr_assert(id >= 0 && id < 4, "alloc %d gave %d", i, id);
        cr_assert_eq(seen[id], 0, "block %d handed out twice", id);
        seen[id] = 1;
        cr_assert_eq(kvf_blockmgr_free_count(bm), 3 - i);
    }
    cr_assert_eq(kvf_blockmgr_alloc(bm, &err), -1);
    cr_assert_eq(err.code, KVF_E_NOMEM_BLOCKS);
    cr_assert_eq(kvf_blockmgr_free(bm, 2, &err), 0);
    cr_assert_eq(kvf_blockmgr_free_count(bm), 1);
    cr_assert_eq(kvf_blockmgr_alloc(bm, &err), 2);
    // bad ids and double frees are errors, not crashes
    cr_assert_eq(kvf_blockmgr_free(bm, 7, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(kvf_blockmgr_free(bm, -1, &err), -1);
    cr_assert_eq(kvf_blockmgr_free(bm, 1, &err), 0);
    cr_assert_eq(kvf_blockmgr_free(bm, 1, &err), -1);
    cr_assert_eq(kvf_blockmgr_incref(bm, 1, &err), -1);
    kvf_blockmgr_destroy(&bm);
}

Test(blockmgr, refcounts) {
    kvf_blockmgr_t *bm = kvf_blockmgr_new(2, 8, 0);
    kvf_err_t err;
    int32_t a = kvf_blockmgr_alloc(bm, &err);
    cr_assert_eq(kvf_blockmgr_refcount(bm, a), 1);
    cr_assert_eq(kvf_blockmgr_incref(bm, a, &err), 0);
    cr_assert_eq(kvf_blockmgr_incref(bm, a, &err), 0);
    cr_assert_eq(kvf_blockmgr_refcount(bm, a), 3);
    cr_assert_eq(kvf_blockmgr_free(bm, a, &err), 0);
    cr_assert_eq(kvf_blockmgr_free(bm, a, &err), 0);
    cr_assert_eq(kvf_blockmgr_free_count(bm), 1, "still referenced once");
    cr_assert_eq(kvf_blockmgr_free(bm, a, &err), 0);
    cr_assert_eq(kvf_blockmgr_free_count(bm), 2);
    cr_assert_eq(kvf_blockmgr_refcount(bm, a), 0);
    cr_assert_eq(kvf_blockmgr_refcount(bm, 5), -1);
    kvf_blockmgr_destroy(&bm);
}

// Fills tokens (n) with a deterministic pattern starting at v.
static void s_fill(int32_t *t, int n, int32_t v) {
    for (int i = 0; i < n; i++) t[i] = v + i;
}

Test(blockmgr, prefix_hits_share_blocks) {
    enum { BS = 4 };
    kvf_blockmgr_t *bm = kvf_blockmgr_new(8, BS, 1);
    kvf_err_t err;
    int32_t toks[3 * BS];
    s_fill(toks, 3 * BS, 100);
    // sequence A computes 3 full blocks and commits them
    int32_t a[3];
    uint64_t h[3];
    uint64_t parent = KVF_BLOCKMGR_ROOT_HASH;
    for (int i = 0; i < 3; i++) {
        a[i] = kvf_blockmgr_alloc(bm, &err);
        cr_assert_eq(kvf_blockmgr_commit_full_block(bm, a[i], parent, toks + i * BS, &h[i], &err), 0);
        cr_assert_eq(h[i], kvf_blockmgr_hash(parent, toks + i * BS, BS));
        parent = h[i];
    }
    // B shares the first two blocks, differs in the third
    int32_t btoks[3 * BS];
    memcpy(btoks, toks, sizeof btoks);
    btoks[2 * BS + 1] = 7;
    int32_t got[3];
    uint64_t gh[3];
    int32_t cached = -1;
    // dry run changes nothing
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, btoks, 3 * BS, 3, 0, got, gh, &cached), 2);
    cr_assert_eq(cached, 0, "A still holds them");
    kvf_blockmgr_stats_t st;
    kvf_blockmgr_stats(bm, &st);
    cr_assert_eq(st.prefix_hits, 0);
    cr_assert_eq(kvf_blockmgr_refcount(bm, a[0]), 1);
    // taking counts and shares
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, btoks, 3 * BS, 3, 1, got, gh, NULL), 2);
    cr_assert_eq(got[0], a[0]);
    cr_assert_eq(got[1], a[1]);
    cr_assert_eq(gh[1], h[1]);
    cr_assert_eq(kvf_blockmgr_refcount(bm, a[0]), 2);
    cr_assert_eq(kvf_blockmgr_refcount(bm, a[2]), 1);
    kvf_blockmgr_stats(bm, &st);
    cr_assert_eq(st.prefix_hits, 2);
    cr_assert_eq(st.prefix_misses, 1);
    // a partial block is never matched; max_blocks limits the match
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, toks, 2 * BS + 3, 8, 0, NULL, NULL, NULL), 2);
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, toks, 3 * BS, 1, 0, NULL, NULL, NULL), 1);
    // same tokens behind a different parent do not match
    int32_t shifted[2 * BS];
    memcpy(shifted, toks + BS, sizeof shifted);
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, shifted, 2 * BS, 2, 0, NULL, NULL, NULL), 0);
    kvf_blockmgr_destroy(&bm);
}

Test(blockmgr, freed_cached_blocks_hit_until_evicted_lru) {
    enum { BS = 2 };
    kvf_blockmgr_t *bm = kvf_blockmgr_new(3, BS, 1);
    kvf_err_t err;
    int32_t t[3][BS] = {{1, 2}, {3, 4}, {5, 6}};
    int32_t id[3];
    for (int i = 0; i < 3; i++) {
        id[i] = kvf_blockmgr_alloc(bm, &err);
        cr_assert_eq(kvf_blockmgr_commit_full_block(bm, id[i], KVF_BLOCKMGR_ROOT_HASH, t[i], NULL, &err), 0);
    }
    // free in the order 1, 0, 2: LRU order of eviction is the same
    kvf_blockmgr_free(bm, id[1], &err);
    kvf_blockmgr_free(bm, id[0], &err);
    kvf_blockmgr_free(bm, id[2], &err);
    kvf_blockmgr_stats_t st;
    kvf_blockmgr_stats(bm, &st);
    cr_assert_eq(st.n_free, 3);
    cr_assert_eq(st.n_cached, 3);
    // all three still hit
    for (int i = 0; i < 3; i++) {
        int32_t c = 0;
        cr_assert_eq(kvf_blockmgr_match_prefix(bm, t[i], BS, 1, 0, NULL, NULL, &c), 1);
        cr_assert_eq(c, 1);
    }
    // first alloc evicts block 1 (least recently freed), then 0
    cr_assert_eq(kvf_blockmgr_alloc(bm, &err), id[1]);
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, t[1], BS, 1, 0, NULL, NULL, NULL), 0, "evicted key is gone");
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, t[0], BS, 1, 0, NULL, NULL, NULL), 1);
    // a hit on a cached block takes it out of the LRU: the next eviction is block 2
    int32_t got;
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, t[0], BS, 1, 1, &got, NULL, NULL), 1);
    cr_assert_eq(got, id[0]);
    cr_assert_eq(kvf_blockmgr_free_count(bm), 1);
    cr_assert_eq(kvf_blockmgr_alloc(bm, &err), id[2]);
    cr_assert_eq(kvf_blockmgr_alloc(bm, &err), -1);
    cr_assert_eq(err.code, KVF_E_NOMEM_BLOCKS);
    kvf_blockmgr_stats(bm, &st);
    cr_assert_eq(st.evictions, 2);
    cr_assert_eq(st.n_free, 0);
    kvf_blockmgr_destroy(&bm);
}

Test(blockmgr, uncached_free_blocks_go_before_cached_ones) {
    enum { BS = 2 };
    kvf_blockmgr_t *bm = kvf_blockmgr_new(2, BS, 1);
    kvf_err_t err;
    int32_t t[BS] = {9, 9};
    int32_t a = kvf_blockmgr_alloc(bm, &err);
    int32_t b = kvf_blockmgr_alloc(bm, &err);
    kvf_blockmgr_commit_full_block(bm, a, KVF_BLOCKMGR_ROOT_HASH, t, NULL, &err);
    kvf_blockmgr_free(bm, a, &err);
    kvf_blockmgr_free(bm, b, &err);
    cr_assert_eq(kvf_blockmgr_alloc(bm, &err), b, "the unkeyed block is used first");
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, t, BS, 1, 0, NULL, NULL, NULL), 1);
    kvf_blockmgr_destroy(&bm);
}

Test(blockmgr, duplicate_commit_keeps_first_and_caching_off_never_hits) {
    enum { BS = 2 };
    kvf_blockmgr_t *bm = kvf_blockmgr_new(4, BS, 1);
    kvf_err_t err;
    int32_t t[BS] = {3, 1};
    int32_t a = kvf_blockmgr_alloc(bm, &err), b = kvf_blockmgr_alloc(bm, &err);
    kvf_blockmgr_commit_full_block(bm, a, KVF_BLOCKMGR_ROOT_HASH, t, NULL, &err);
    kvf_blockmgr_commit_full_block(bm, b, KVF_BLOCKMGR_ROOT_HASH, t, NULL, &err);
    kvf_blockmgr_free(bm, b, &err);
    kvf_blockmgr_stats_t st;
    kvf_blockmgr_stats(bm, &st);
    cr_assert_eq(st.n_cached, 0, "the duplicate went back to the free list");
    int32_t got = -1;
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, t, BS, 1, 0, &got, NULL, NULL), 1);
    cr_assert_eq(got, a);
    cr_assert_eq(kvf_blockmgr_commit_full_block(bm, b, KVF_BLOCKMGR_ROOT_HASH, t, NULL, &err), -1, "b is free");
    kvf_blockmgr_destroy(&bm);

    bm = kvf_blockmgr_new(4, BS, 0);
    a = kvf_blockmgr_alloc(bm, &err);
    cr_assert_eq(kvf_blockmgr_commit_full_block(bm, a, KVF_BLOCKMGR_ROOT_HASH, t, NULL, &err), 0);
    kvf_blockmgr_free(bm, a, &err);
    cr_assert_eq(kvf_blockmgr_match_prefix(bm, t, BS, 1, 1, NULL, NULL, NULL), 0);
    kvf_blockmgr_stats(bm, &st);
    cr_assert_eq(st.n_cached, 0);
    cr_assert_eq(st.prefix_misses, 1);
    kvf_blockmgr_destroy(&bm);
}
