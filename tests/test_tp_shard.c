// tests/test_tp_shard.c — a TP rank's share of the model (worker/tp_shard.h):
// the numbers for tiny-llama (4 heads / 2 KV), stories260K (8 / 4) and
// Llama-3-8B (32 / 8) over T = 1, 2, 4, 8; that the ranks' blocks tile every
// tensor (KV blocks: each KV head on exactly kv_replicas ranks); that every
// query head reads a KV head its rank holds; and that the cpu backend holds
// exactly those blocks (weights and KV bytes) and refuses the same splits.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/modelcfg.h"
#include "common/safetensors.h"
#include "test_util.h"
#include "worker/cpu_backend.h"
#include "worker/tp.h"
#include "worker/tp_shard.h"

static void s_load_cfg(const char *model, kvf_modelcfg_t *cfg) {
    char path[1024];
    kvf_err_t err;
    if (strcmp(model, "llama3-8b") == 0) {
        KVF_FIXTURE_PATH(path, "configs/llama3-8b.json");
        size_t len = 0;
        char *txt = kvf_test_slurp(path, &len);
        cr_assert_not_null(txt, "cannot read %s", path);
        cr_assert_eq(kvf_modelcfg_parse(txt, path, cfg, &err), 0, "%s", err.msg);
        free(txt);
    } else {
        KVF_FIXTURE_PATH(path, model);
        cr_assert_eq(kvf_modelcfg_load(path, cfg, &err), 0, "%s", err.msg);
    }
}

// What each (model, T) must give: refused (why: a substring of the message), or
// per rank nq query heads, nkv KV heads on kv_replicas ranks, ni intermediate rows.
typedef struct {
    const char *model;
    int T;
    const char *refused;
    int nq, nkv, kv_replicas, ni;
} s_case_t;

static const s_case_t s_cases[] = {
    {"tiny-llama", 1, NULL, 4, 2, 1, 344},
    {"tiny-llama", 2, NULL, 2, 1, 1, 172},
    {"tiny-llama", 4, NULL, 1, 1, 2, 86},                      // 2 KV heads, each on 2 ranks
    {"tiny-llama", 8, "attention heads do not split", 0, 0, 0, 0},
    {"stories260K", 1, NULL, 8, 4, 1, 172},
    {"stories260K", 2, NULL, 4, 2, 1, 86},
    {"stories260K", 4, NULL, 2, 1, 1, 43},
    {"stories260K", 8, "intermediate_size 172 does not split", 0, 0, 0, 0},
    {"llama3-8b", 1, NULL, 32, 8, 1, 14336},
    {"llama3-8b", 2, NULL, 16, 4, 1, 7168},
    {"llama3-8b", 4, NULL, 8, 2, 1, 3584},
    {"llama3-8b", 8, NULL, 4, 1, 1, 1792},
};
#define S_N_CASES ((int)(sizeof s_cases / sizeof s_cases[0]))

Test(tp_shard, numbers_per_model_and_size) {
    for (int i = 0; i < S_N_CASES; i++) {
        const s_case_t *c = &s_cases[i];
        kvf_modelcfg_t cfg;
        s_load_cfg(c->model, &cfg);
        for (int r = 0; r < c->T; r++) {
            kvf_tp_shard_t sh;
            kvf_err_t err;
            int rc = kvf_tp_shard_make(&cfg, r, c->T, &sh, &err);
            if (c->refused) {
                cr_assert_eq(rc, -1, "%s T %d rank %d: accepted", c->model, c->T, r);
                cr_assert_eq(err.code, KVF_E_INVAL);
                cr_assert(strstr(err.msg, c->refused), "%s T %d: '%s'", c->model, c->T, err.msg);
                continue;
            }
            cr_assert_eq(rc, 0, "%s T %d rank %d: %s", c->model, c->T, r, err.msg);
            cr_assert_eq(sh.rank, r);
            cr_assert_eq(sh.size, c->T);
            cr_assert_eq(sh.nq, c->nq, "%s T %d: nq %d", c->model, c->T, sh.nq);
            cr_assert_eq(sh.q0, r * c->nq);
            cr_assert_eq(sh.nkv, c->nkv, "%s T %d: nkv %d", c->model, c->T, sh.nkv);
            cr_assert_eq(sh.kv_replicas, c->kv_replicas, "%s T %d: replicas %d", c->model, c->T, sh.kv_replicas);
            cr_assert_eq(sh.kv0, c->kv_replicas == 1 ? r * c->nkv : r / c->kv_replicas, "%s T %d rank %d: kv0 %d",
                         c->model, c->T, r, sh.kv0);
            cr_assert_eq(sh.ni, c->ni);
            cr_assert_eq(sh.i0, r * c->ni);
        }
    }
}

// Each rank's blocks of every sharded tensor; counts how often each row (column-
// parallel) or column (row-parallel) of the full tensor is held over the group.
Test(tp_shard, blocks_tile_every_tensor) {
    static const kvf_tp_tensor_t all[] = {KVF_TP_WQ, KVF_TP_WK, KVF_TP_WV, KVF_TP_WO, KVF_TP_BQ,
                                          KVF_TP_BK, KVF_TP_BV, KVF_TP_WGATE, KVF_TP_WUP, KVF_TP_WDOWN};
    for (int i = 0; i < S_N_CASES; i++) {
        const s_case_t *c = &s_cases[i];
        if (c->refused) continue;
        kvf_modelcfg_t cfg;
        s_load_cfg(c->model, &cfg);
        const int64_t D = cfg.hidden_size, hd = cfg.head_dim, I = cfg.intermediate_size;
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
            const kvf_tp_tensor_t t = all[k];
            const int row_parallel = t == KVF_TP_WO || t == KVF_TP_WDOWN;
            const int is_kv = t == KVF_TP_WK || t == KVF_TP_WV || t == KVF_TP_BK || t == KVF_TP_BV;
            int64_t span = 0;
            int *count = NULL;
            for (int r = 0; r < c->T; r++) {
                kvf_tp_shard_t sh;
                cr_assert_eq(kvf_tp_shard_make(&cfg, r, c->T, &sh, NULL), 0);
                kvf_tp_part_t p = kvf_tp_shard_part(&cfg, &sh, t);
                // the full shape, as in the HF file
                int64_t d0 = t == KVF_TP_WQ || t == KVF_TP_BQ ? cfg.n_heads * hd
                             : is_kv                          ? cfg.n_kv_heads * hd
                             : t == KVF_TP_WGATE || t == KVF_TP_WUP ? I
                                                                    : D;
                int64_t d1 = t == KVF_TP_WO ? cfg.n_heads * hd : t == KVF_TP_WDOWN ? I
                             : t == KVF_TP_BQ || t == KVF_TP_BK || t == KVF_TP_BV ? 0
                                                                                  : D;
                cr_assert(p.d0 == d0 && p.d1 == d1, "%s T %d tensor %d: shape %lld x %lld", c->model, c->T, (int)t,
                          (long long)p.d0, (long long)p.d1);
                // the block's size is the rank's share
                int64_t share = t == KVF_TP_WQ || t == KVF_TP_BQ || t == KVF_TP_WO ? sh.nq * hd
                                : is_kv                                            ? sh.nkv * hd
                                                                                   : sh.ni;
                if (row_parallel) {
                    cr_assert(p.r0 == 0 && p.nr == d0 && p.nc == share, "%s T %d tensor %d rank %d", c->model, c->T,
                              (int)t, r);
                } else {
                    cr_assert(p.nr == share && p.c0 == 0 && p.nc == (d1 ? d1 : 1), "%s T %d tensor %d rank %d",
                              c->model, c->T, (int)t, r);
                }
                cr_assert_eq(kvf_tp_part_is_full(&p), c->T == 1 || (is_kv && sh.nkv == cfg.n_kv_heads));
                if (!count) {
                    span = row_parallel ? d1 : d0;
                    count = calloc((size_t)span, sizeof *count);
                }
                int64_t a = row_parallel ? p.c0 : p.r0, n = row_parallel ? p.nc : p.nr;
                cr_assert(a >= 0 && a + n <= span);
                for (int64_t e = a; e < a + n; e++) count[e]++;
            }
            const int want = is_kv ? c->kv_replicas : 1;
            for (int64_t e = 0; e < span; e++)
                cr_assert_eq(count[e], want, "%s T %d tensor %d: index %lld held by %d ranks, want %d", c->model,
                             c->T, (int)t, (long long)e, count[e], want);
            free(count);
        }
    }
}

// The embedding and lm_head split by vocabulary rows: V / T each, the first V % T
// ranks one more, contiguous in rank order, v_stride the largest share; a
// vocabulary smaller than the group is refused.
Test(tp_shard, vocabulary_rows_tile_in_rank_order) {
    const char *models[] = {"tiny-llama", "stories260K", "llama3-8b"};
    for (size_t m = 0; m < 3; m++) {
        kvf_modelcfg_t cfg;
        s_load_cfg(models[m], &cfg);
        const int32_t V0 = cfg.vocab_size;
        for (int32_t V = V0; V <= V0 + 3; V++) {  // even and uneven splits
            cfg.vocab_size = V;
            for (int T = 1; T <= 4; T *= 2) {
                int32_t next = 0;
                for (int r = 0; r < T; r++) {
                    kvf_tp_shard_t sh;
                    cr_assert_eq(kvf_tp_shard_make(&cfg, r, T, &sh, NULL), 0);
                    cr_assert_eq(sh.v0, next, "%s V %d T %d rank %d: v0 %d", models[m], V, T, r, sh.v0);
                    cr_assert_eq(sh.nv, V / T + (r < V % T), "%s V %d T %d rank %d: nv %d", models[m], V, T, r, sh.nv);
                    cr_assert_eq(sh.v_stride, V / T + (V % T != 0));
                    for (int t = KVF_TP_EMBED; t <= KVF_TP_LMHEAD; t++) {
                        kvf_tp_part_t p = kvf_tp_shard_part(&cfg, &sh, (kvf_tp_tensor_t)t);
                        cr_assert(p.d0 == V && p.d1 == cfg.hidden_size && p.r0 == sh.v0 && p.nr == sh.nv &&
                                  p.c0 == 0 && p.nc == cfg.hidden_size);
                        cr_assert_eq(kvf_tp_part_is_full(&p), T == 1);
                    }
                    next += sh.nv;
                }
                cr_assert_eq(next, V, "%s V %d T %d: the ranks hold %d ids", models[m], V, T, next);
            }
        }
    }
    kvf_modelcfg_t cfg;
    s_load_cfg("tiny-llama", &cfg);
    cfg.vocab_size = 1;
    kvf_tp_shard_t sh;
    kvf_err_t err;
    cr_assert_eq(kvf_tp_shard_make(&cfg, 0, 2, &sh, &err), -1);
    cr_assert(strstr(err.msg, "vocabulary of 1 ids does not split over tp_size 2"), "%s", err.msg);
}

// Query head h reads KV head h / (n_heads / n_kv); on its rank that must be a
// held KV head, and the local rule (local h / (nq / nkv)) must find the same one.
Test(tp_shard, query_heads_read_held_kv_heads) {
    for (int i = 0; i < S_N_CASES; i++) {
        const s_case_t *c = &s_cases[i];
        if (c->refused) continue;
        kvf_modelcfg_t cfg;
        s_load_cfg(c->model, &cfg);
        const int g = cfg.n_heads / cfg.n_kv_heads;
        int seen_q[64] = {0};
        for (int r = 0; r < c->T; r++) {
            kvf_tp_shard_t sh;
            cr_assert_eq(kvf_tp_shard_make(&cfg, r, c->T, &sh, NULL), 0);
            cr_assert_eq(sh.nq % sh.nkv, 0);
            for (int lh = 0; lh < sh.nq; lh++) {
                int h = sh.q0 + lh, kv = h / g;
                seen_q[h]++;
                cr_assert(kv >= sh.kv0 && kv < sh.kv0 + sh.nkv, "%s T %d rank %d: head %d reads KV %d, holds %d..%d",
                          c->model, c->T, r, h, kv, sh.kv0, sh.kv0 + sh.nkv - 1);
                cr_assert_eq(lh / (sh.nq / sh.nkv), kv - sh.kv0);
            }
        }
        for (int h = 0; h < cfg.n_heads; h++) cr_assert_eq(seen_q[h], 1, "%s T %d: head %d", c->model, c->T, h);
    }
}

Test(tp_shard, bad_arguments) {
    kvf_modelcfg_t cfg;
    s_load_cfg("tiny-llama", &cfg);
    kvf_tp_shard_t sh;
    kvf_err_t err;
    cr_assert_eq(kvf_tp_shard_make(&cfg, 2, 2, &sh, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(kvf_tp_shard_make(&cfg, -1, 2, &sh, &err), -1);
    cr_assert_eq(kvf_tp_shard_make(&cfg, 0, 0, &sh, &err), -1);
    cr_assert_eq(kvf_tp_shard_make(&cfg, 0, KVF_TP_MAX_SIZE + 1, &sh, &err), -1);
    cr_assert_eq(kvf_tp_shard_make(NULL, 0, 1, &sh, &err), -1);
    cr_assert_eq(kvf_tp_shard_make(&cfg, 0, 1, NULL, &err), -1);
    // 3 KV heads over 2 ranks: neither divides the other
    kvf_modelcfg_t odd = cfg;
    odd.n_heads = 6, odd.n_kv_heads = 3;
    cr_assert_eq(kvf_tp_shard_make(&odd, 0, 2, &sh, &err), -1);
    cr_assert(strstr(err.msg, "one must divide the other"), "%s", err.msg);
    // one KV head (MQA) over 4 ranks: replicated everywhere
    kvf_modelcfg_t mqa = cfg;
    mqa.n_kv_heads = 1;
    for (int r = 0; r < 4; r++) {
        cr_assert_eq(kvf_tp_shard_make(&mqa, r, 4, &sh, &err), 0, "%s", err.msg);
        cr_assert(sh.nkv == 1 && sh.kv0 == 0 && sh.kv_replicas == 4 && sh.nq == 1 && sh.q0 == r);
    }
}

// ---------------------------------------------------------------- the cpu backend holds these blocks

// A one-process stand-in for a group: every collective sees this rank's values
// from every rank (the backend's start-up only gathers its plan and agrees).
static int s_fake_gather(kvf_tp_t *tp, const void *send, void *recv, size_t bytes, kvf_err_t *err) {
    (void)err;
    for (int p = 0; p < tp->size; p++) memcpy((char *)recv + (size_t)p * bytes, send, bytes);
    return 0;
}
static int s_fake_reduce(kvf_tp_t *tp, float *buf, size_t n, kvf_err_t *err) {
    (void)tp, (void)buf, (void)n;
    return kvf_err_set(err, KVF_E_INTERNAL, "fake group: no all_reduce at start-up");
}
static int s_fake_bcast(kvf_tp_t *tp, void *buf, size_t bytes, int root, kvf_err_t *err) {
    (void)tp, (void)buf, (void)bytes, (void)root, (void)err;
    return 0;
}
static int s_fake_barrier(kvf_tp_t *tp, kvf_err_t *err) {
    (void)tp, (void)err;
    return 0;
}
static void s_fake_abort(kvf_tp_t *tp) { (void)tp; }
static void s_fake_destroy(kvf_tp_t **self_p) { *self_p = NULL; }
static const kvf_tp_ops_t s_fake_ops = {"fake", s_fake_reduce, s_fake_gather, s_fake_bcast, s_fake_barrier,
                                        s_fake_abort, s_fake_destroy, NULL};

static uint64_t s_expected_weight_floats(const kvf_modelcfg_t *cfg, const kvf_tp_shard_t *sh) {
    const uint64_t D = (uint64_t)cfg->hidden_size, V = (uint64_t)cfg->vocab_size;
    uint64_t per_layer = 2 * D;  // the two norms, full
    static const kvf_tp_tensor_t w[] = {KVF_TP_WQ, KVF_TP_WK, KVF_TP_WV, KVF_TP_WO,
                                        KVF_TP_WGATE, KVF_TP_WUP, KVF_TP_WDOWN};
    static const kvf_tp_tensor_t b[] = {KVF_TP_BQ, KVF_TP_BK, KVF_TP_BV};
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        kvf_tp_part_t p = kvf_tp_shard_part(cfg, sh, w[i]);
        per_layer += (uint64_t)(p.nr * p.nc);
    }
    if (cfg->attention_bias)
        for (size_t i = 0; i < 3; i++) per_layer += (uint64_t)kvf_tp_shard_part(cfg, sh, b[i]).nr;
    const kvf_tp_part_t e = kvf_tp_shard_part(cfg, sh, KVF_TP_EMBED);  // vocab-parallel: the rank's ids
    cr_assert(e.d0 == (int64_t)V && e.d1 == (int64_t)D && e.nr == sh->nv && e.nc == (int64_t)D);
    return (uint64_t)sh->nv * D * (cfg->tie_word_embeddings ? 1 : 2) + D + (uint64_t)cfg->n_layers * per_layer;
}

static void s_cpu_holds_the_shard(const char *model) {
    kvf_modelcfg_t cfg;
    s_load_cfg(model, &cfg);
    char dir[1024];
    KVF_FIXTURE_PATH(dir, model);
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_dir(dir, &err);
    cr_assert_not_null(st, "%s", err.msg);
    int checked = 0;
    for (int i = 0; i < S_N_CASES; i++) {
        const s_case_t *c = &s_cases[i];
        if (strcmp(c->model, model) != 0) continue;
        for (int r = 0; r < c->T; r++) {
            struct kvf_tp_s fake = {&s_fake_ops, r, c->T, 1000};
            kvf_backend_opts_t o;
            memset(&o, 0, sizeof o);
            o.block_size = 16;
            o.max_batch_size = 2;
            o.max_step_tokens = 32;
            o.max_logit_rows = 32;
            o.max_blocks_per_seq = 4;
            o.tp_rank = r;
            o.tp_size = c->T;
            o.tp = c->T > 1 ? &fake : NULL;
            o.n_threads = 1;
            o.cache_max_entry_count = 8;
            o.memory_budget = 256ull << 20;
            kvf_backend_t *be = kvf_cpu_backend_new(&cfg, st, &o, &err);
            if (c->refused) {
                cr_assert_null(be, "%s T %d rank %d: the cpu backend accepted a split tp_shard refuses", model, c->T,
                               r);
                cr_assert_eq(err.code, KVF_E_INVAL, "%s", err.msg);
                cr_assert(strstr(err.msg, c->refused), "%s T %d: '%s'", model, c->T, err.msg);
                continue;
            }
            cr_assert_not_null(be, "%s T %d rank %d: %s", model, c->T, r, err.msg);
            kvf_tp_shard_t sh;
            cr_assert_eq(kvf_tp_shard_make(&cfg, r, c->T, &sh, &err), 0, "%s", err.msg);
            cr_assert_eq(be->weights_bytes, 4 * s_expected_weight_floats(&cfg, &sh), "%s T %d rank %d: %llu bytes",
                         model, c->T, r, (unsigned long long)be->weights_bytes);
            cr_assert_eq(be->n_blocks, 8);
            const uint64_t per_block = 2ull * (uint64_t)cfg.n_layers * 16 * (uint64_t)sh.nkv * cfg.head_dim * 4;
            cr_assert_eq(be->kv_bytes, 8 * per_block, "%s T %d rank %d: KV %llu bytes, want %d KV heads", model, c->T,
                         r, (unsigned long long)be->kv_bytes, sh.nkv);
            be->ops->destroy(&be);
            checked++;
        }
    }
    kvf_safetensors_destroy(&st);
    cr_assert_gt(checked, 0);
}

Test(tp_shard, cpu_backend_holds_tiny_llama_shards) { s_cpu_holds_the_shard("tiny-llama"); }
Test(tp_shard, cpu_backend_holds_stories260K_shards) { s_cpu_holds_the_shard("stories260K"); }

// ---------------------------------------------------------------- the cuda backend refuses the same splits

#ifdef KVF_TEST_CUDA
#include "worker/cuda_backend.h"

// The configuration checks come before any CUDA call: no GPU is needed.
Test(tp_shard, cuda_backend_refuses_the_same_splits_and_a_group_without_nccl) {
    for (int i = 0; i < S_N_CASES; i++) {
        const s_case_t *c = &s_cases[i];
        if (c->T == 1) continue;
        kvf_modelcfg_t cfg;
        s_load_cfg(c->model, &cfg);
        struct kvf_tp_s fake = {&s_fake_ops, 0, c->T, 1000};  // not an NCCL communicator
        kvf_backend_opts_t o;
        memset(&o, 0, sizeof o);
        o.block_size = 16;
        o.max_batch_size = 2;
        o.max_step_tokens = 32;
        o.max_logit_rows = 32;
        o.max_blocks_per_seq = 4;
        o.tp_rank = 0;
        o.tp_size = c->T;
        o.tp = &fake;
        o.cache_max_entry_count = 8;
        kvf_err_t err;
        kvf_backend_t *be = kvf_cuda_backend_new(&cfg, NULL, &o, &err);
        cr_assert_null(be, "%s T %d: accepted", c->model, c->T);
        if (c->refused) {
            cr_assert_eq(err.code, KVF_E_INVAL, "%s", err.msg);
            cr_assert(strstr(err.msg, c->refused), "%s T %d: '%s'", c->model, c->T, err.msg);
        } else {
            cr_assert_eq(err.code, KVF_E_UNSUPPORTED, "%s", err.msg);
            cr_assert(strstr(err.msg, "NCCL communicator"), "%s T %d: '%s'", c->model, c->T, err.msg);
        }
    }
}
#endif
