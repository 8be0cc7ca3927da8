// tests/test_engine_cuda.c — the engine on the cuda backend (label gpu): mixed
// prefill/decode batches through paged block tables, judged by the bf16 rules
// of fixtures/README.md (greedy ids identical up to the first step whose golden
// top-1 margin is below 0.1; teacher-forced logits within 2e-2 relative L2),
// and a pool small enough to preempt. Skips where no GPU can be opened.
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "worker/engine.h"

typedef struct {
    int32_t out[64][256];
    int32_t n_out[64];
    int finished[64];
    int bad;
} s_sink_t;

static void s_on_token(void *ud, uint64_t rid, int32_t token, int finished, kvf_finish_reason reason) {
    (void)reason;
    s_sink_t *k = ud;
    if (rid >= 64 || k->finished[rid]) {
        k->bad = 1;
        return;
    }
    if (token >= 0 && k->n_out[rid] < 256) k->out[rid][k->n_out[rid]++] = token;
    if (finished) k->finished[rid] = 1;
}

static kvf_engine_t *s_engine(int32_t session_len, double cache) {
    char dir[1024];
    KVF_FIXTURE_PATH(dir, "tiny-llama");
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.backend = "cuda";
    o.block_size = 16;
    o.session_len = session_len;
    o.cache_max_entry_count = cache;
    o.max_batch_size = 64;
    o.max_prefill_token_num = 512;
    kvf_err_t err;
    kvf_engine_t *e = kvf_engine_new(dir, &o, &err);
    if (!e && (err.code == KVF_E_UNSUPPORTED || err.code == KVF_E_DEVICE))
        cr_skip_test("no cuda backend here: %s", err.msg);
    cr_assert_not_null(e, "%s", err.msg);
    return e;
}

static void s_run(kvf_engine_t *e, s_sink_t *k) {
    kvf_err_t err;
    int steps = 0;
    while (kvf_engine_has_work(e)) {
        cr_assert_geq(kvf_engine_step(e, s_on_token, k, &err), 0, "%s", err.msg);
        cr_assert_lt(++steps, 100000);
    }
    cr_assert_eq(k->bad, 0);
}

static int32_t s_ids(json_t *a, int32_t *out) {
    int32_t n = (int32_t)json_array_size(a);
    for (int32_t i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return n;
}

Test(engine_cuda, golden_cases_in_one_batch_follow_the_bf16_rules) {
    char path[1024];
    KVF_FIXTURE_PATH(path, "tiny-llama/golden.json");
    json_t *g = json_load_file(path, 0, NULL);
    cr_assert_not_null(g);
    kvf_engine_t *e = s_engine(512, 200);
    json_t *cases = json_object_get(g, "cases");
    int nc = (int)json_array_size(cases);
    static s_sink_t k;
    memset(&k, 0, sizeof k);
    kvf_err_t err;
    for (int c = 0; c < nc; c++) {
        int32_t p[512];
        int32_t n = s_ids(json_object_get(json_array_get(cases, (size_t)c), "prompt_ids"), p);
        kvf_sampling_t s = kvf_sampling_default();
        s.max_new_tokens = 32;
        s.ignore_eos = 1;
        cr_assert_eq(kvf_engine_add(e, (uint64_t)c, p, n, NULL, 0, &s, &err), 0, "%s", err.msg);
    }
    s_run(e, &k);
    for (int c = 0; c < nc; c++) {
        json_t *cs = json_array_get(cases, (size_t)c);
        int32_t want[64];
        int32_t nw = s_ids(json_object_get(cs, "greedy_ids"), want);
        json_t *marg = json_object_get(cs, "top1_minus_top2");
        int32_t must = nw;
        for (int32_t i = 0; i < nw; i++)
            if (json_real_value(json_array_get(marg, (size_t)i)) < 0.1) {
                must = i;
                break;
            }
        cr_assert_eq(k.n_out[c], nw);
        for (int32_t i = 0; i < must; i++)
            cr_assert_eq(k.out[c][i], want[i], "case %d token %d (margins allow differences from %d)", c, i, must);
    }
    // teacher-forced logits of the long case
    json_t *cs = json_array_get(cases, (size_t)(nc - 1));
    int32_t full[600];
    int32_t nf = s_ids(json_object_get(cs, "full_ids"), full);
    const int32_t V = 2048;
    float *lg = malloc(sizeof(float) * (size_t)nf * V);
    cr_assert_eq(kvf_engine_score(e, full, nf, lg, &err), 0, "%s", err.msg);
    KVF_FIXTURE_PATH(path, "tiny-llama/tiny-llama.logits.f32");
    size_t glen;
    float *gold = (float *)kvf_test_slurp(path, &glen);
    int32_t p0 = (int32_t)json_integer_value(json_object_get(cs, "first_row_position"));
    int32_t r0 = (int32_t)json_integer_value(json_object_get(cs, "logits_row_offset"));
    int32_t nr = (int32_t)json_integer_value(json_object_get(cs, "n_rows"));
    for (int32_t j = 0; j < nr; j++) {
        double d2 = 0, b2 = 0;
        for (int32_t v = 0; v < V; v++) {
            double a = lg[(size_t)(p0 + j) * V + v], b = gold[(size_t)(r0 + j) * V + v];
            d2 += (a - b) * (a - b);
            b2 += b * b;
        }
        cr_assert_lt(sqrt(d2 / b2), 2e-2, "row %d: rel L2 %g", j, sqrt(d2 / b2));
    }
    free(gold);
    free(lg);
    kvf_engine_stats_t st;
    kvf_engine_stats(e, &st);
    cr_assert_eq(st.free_blocks, st.total_blocks);
    kvf_engine_destroy(&e);
    json_decref(g);
}

Test(engine_cuda, tiny_pool_preempts_and_every_request_completes) {
    kvf_engine_t *e = s_engine(112, 14);
    static s_sink_t k;
    memset(&k, 0, sizeof k);
    kvf_err_t err;
    for (int i = 0; i < 64; i++) {
        int32_t p[80];
        int32_t n = 20 + (i * 7) % 60;
        for (int32_t j = 0; j < n; j++) p[j] = (int32_t)((i * 131 + j * 17 + 5) % 2000) + 2;
        kvf_sampling_t s = kvf_sampling_default();
        s.max_new_tokens = 16 + i % 9;
        s.ignore_eos = 1;
        cr_assert_eq(kvf_engine_add(e, (uint64_t)i, p, n, NULL, 0, &s, &err), 0, "%s", err.msg);
    }
    s_run(e, &k);
    kvf_engine_stats_t st;
    kvf_engine_stats(e, &st);
    cr_assert_gt(st.preemptions, 0);
    cr_assert_eq(st.free_blocks, st.total_blocks);
    for (int i = 0; i < 64; i++) {
        cr_assert(k.finished[i]);
        cr_assert_eq(k.n_out[i], 16 + i % 9);
    }
    kvf_engine_destroy(&e);
}
