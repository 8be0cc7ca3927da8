// tests/test_tp_vocab.c — the vocab-parallel lm_head's pieces (worker/tp_vocab.h)
// on crafted rows, one process: each rank's best and their merge pick exactly
// the host sampler's greedy token (ties across shard boundaries, NaN, +-inf) for
// even and uneven splits, and the gathered shards unshard into id order. The
// exchange itself between forked ranks is in test_tp.c.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/sampling.h"
#include "worker/sampler.h"
#include "worker/tp_shard.h"
#include "worker/tp_vocab.h"

// A config every size 1..6 splits (60 heads, KV heads and intermediate rows).
static kvf_modelcfg_t s_cfg(int32_t vocab) {
    kvf_modelcfg_t c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 8, c.n_heads = 60, c.n_kv_heads = 60, c.intermediate_size = 60, c.vocab_size = vocab;
    c.head_dim = 2, c.n_layers = 1;
    return c;
}

static uint32_t s_rng = 12345;
static float s_pick(const float *set, int n) {
    s_rng = s_rng * 1664525u + 1013904223u;
    return set[(s_rng >> 8) % (uint32_t)n];
}

// Row kind k of n logits.
static void s_row(float *row, int n, int k) {
    const float few[] = {-1.0f, 0.0f, 1.0f, 2.0f, 2.0f, NAN};
    for (int i = 0; i < n; i++) {
        switch (k) {
        case 0: row[i] = 3.0f; break;                                 // all tied: id 0
        case 1: row[i] = NAN; break;                                  // all NaN: id 0
        case 2: row[i] = -INFINITY; break;                            // all -inf: id 0
        case 3: row[i] = i < n / 2 ? NAN : (float)(i % 3); break;     // NaN first, then ties at 2
        case 4: row[i] = (i == n - 1 || i == n / 2) ? INFINITY : 0.0f; break;  // two +inf
        case 5: row[i] = (i == n - 1) ? 5.0f : (i == 0 ? NAN : -2.0f); break;  // max in the last id
        default: row[i] = s_pick(few, 6); break;                      // few values: many ties
        }
    }
}

#define S_KINDS 12

static void s_merge_case(int32_t vocab, int32_t T) {
    kvf_modelcfg_t cfg = s_cfg(vocab);
    kvf_tp_shard_t sh[8];
    for (int p = 0; p < T; p++) cr_assert_eq(kvf_tp_shard_make(&cfg, p, T, &sh[p], NULL), 0);
    const size_t msg = kvf_tp_vocab_msg_bytes(S_KINDS);
    uint8_t *all = calloc((size_t)T, msg);
    float *rows = malloc((size_t)S_KINDS * vocab * sizeof(float)), *copy = malloc((size_t)vocab * sizeof(float));
    kvf_sampler_t *smp = kvf_sampler_new(vocab);
    kvf_sampling_t greedy = kvf_sampling_default();
    greedy.temperature = 0.0f;
    for (int k = 0; k < S_KINDS; k++) s_row(rows + (size_t)k * vocab, vocab, k);
    for (int p = 0; p < T; p++) {
        kvf_tp_vocab_hdr_t h = {0, S_KINDS};
        memcpy(all + (size_t)p * msg, &h, sizeof h);
        for (int k = 0; k < S_KINDS; k++) {
            kvf_tp_best_t b = kvf_tp_best_of(rows + (size_t)k * vocab + sh[p].v0, sh[p].nv, sh[p].v0);
            memcpy(all + (size_t)p * msg + sizeof h + (size_t)k * sizeof b, &b, sizeof b);
        }
    }
    for (int k = 0; k < S_KINDS; k++) {
        memcpy(copy, rows + (size_t)k * vocab, (size_t)vocab * sizeof(float));
        const int32_t want = kvf_sampler_sample(smp, copy, vocab, &greedy, NULL, 0, 0);
        const int32_t got = kvf_tp_best_merge(all, T, S_KINDS, k);
        cr_assert_eq(got, want, "vocab %d over %d ranks, row kind %d: merged %d, the sampler's greedy %d", vocab, T,
                     k, got, want);
    }
    kvf_sampler_destroy(&smp);
    free(all), free(rows), free(copy);
}

Test(tp_vocab, merged_bests_are_the_samplers_greedy_pick) {
    const int32_t vocabs[] = {7, 64, 1001};
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++)
        for (int32_t T = 1; T <= 6; T++) s_merge_case(vocabs[v], T);
}

Test(tp_vocab, gathered_shards_unshard_in_id_order) {
    const int32_t V = 1001, R = 3;
    for (int32_t T = 1; T <= 6; T++) {
        kvf_modelcfg_t cfg = s_cfg(V);
        kvf_tp_shard_t sh[8];
        for (int p = 0; p < T; p++) cr_assert_eq(kvf_tp_shard_make(&cfg, p, T, &sh[p], NULL), 0);
        const int32_t S = sh[0].v_stride;
        float *g = malloc((size_t)T * R * S * sizeof(float)), *out = malloc((size_t)R * V * sizeof(float));
        for (int p = 0; p < T; p++) {  // rank p's block: its (R, nv_p) logits (id * 10 + row), then padding -1
            float *blk = g + (size_t)p * R * S;
            for (int i = 0; i < R * S; i++) blk[i] = -1.0f;
            for (int r = 0; r < R; r++)
                for (int i = 0; i < sh[p].nv; i++) blk[(size_t)r * sh[p].nv + i] = (float)((sh[p].v0 + i) * 10 + r);
        }
        kvf_tp_vocab_unshard(out, g, R, V, &sh[T - 1]);
        for (int r = 0; r < R; r++)
            for (int v = 0; v < V; v++)
                cr_assert_eq(out[(size_t)r * V + v], (float)(v * 10 + r), "T %d row %d id %d: %g", T, r, v,
                             out[(size_t)r * V + v]);
        free(g), free(out);
    }
}

// tp NULL (a group of one): the exchange is the argmax, or a copy of the logits.
Test(tp_vocab, a_group_of_one_exchanges_nothing) {
    const int32_t V = 64, R = S_KINDS;
    kvf_modelcfg_t cfg = s_cfg(V);
    kvf_tp_shard_t sh;
    cr_assert_eq(kvf_tp_shard_make(&cfg, 0, 1, &sh, NULL), 0);
    float *rows = malloc((size_t)R * V * sizeof(float)), *out = malloc((size_t)R * V * sizeof(float));
    for (int k = 0; k < R; k++) s_row(rows + (size_t)k * V, V, k);
    int32_t ids[S_KINDS];
    int full = -1;
    kvf_err_t err;
    cr_assert_eq(kvf_tp_vocab_exchange(NULL, &sh, V, rows, R, 0, NULL, NULL, ids, &full, &err), 0, "%s", err.msg);
    cr_assert_eq(full, 0);
    for (int k = 0; k < R; k++) {
        kvf_tp_best_t b = kvf_tp_best_of(rows + (size_t)k * V, V, 0);
        cr_assert_eq(ids[k], b.id < 0 ? 0 : b.id);
    }
    cr_assert_eq(kvf_tp_vocab_exchange(NULL, &sh, V, rows, R, 1, NULL, out, NULL, &full, &err), 0, "%s", err.msg);
    cr_assert_eq(full, 1);
    cr_assert(memcmp(out, rows, (size_t)R * V * sizeof(float)) == 0);
    free(rows), free(out);
}
