// tests/test_engine.c — the engine on the tiny-llama fixture (cpu backend):
// golden greedy ids in one batch and one at a time, preemption under a tiny
// pool, prefix caching, resume, scoring, the memory-plan refusal, bad requests,
// sampled batches the same on 1 and 4 sampling threads.
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "worker/engine.h"
#include "worker/sampler.h"

// ---------------------------------------------------------------- fixtures

#define MAX_CASES 8
#define MAX_REQ 80

typedef struct {
    int n_cases;
    int32_t *prompt[MAX_CASES];
    int32_t n_prompt[MAX_CASES];
    int32_t *greedy[MAX_CASES];
    int32_t n_greedy[MAX_CASES];
} s_golden_t;

static int32_t *s_ids(json_t *arr, int32_t *n) {
    *n = (int32_t)json_array_size(arr);
    int32_t *v = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    for (int32_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return v;
}

static void s_golden_load(s_golden_t *g, const char *model) {
    char path[1024];
    char rel[256];
    snprintf(rel, sizeof rel, "%s/golden.json", model);
    KVF_FIXTURE_PATH(path, rel);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert_not_null(root, "%s: %s", path, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    memset(g, 0, sizeof *g);
    g->n_cases = (int)json_array_size(cases);
    cr_assert(g->n_cases > 0 && g->n_cases <= MAX_CASES);
    for (int c = 0; c < g->n_cases; c++) {
        json_t *cs = json_array_get(cases, (size_t)c);
        g->prompt[c] = s_ids(json_object_get(cs, "prompt_ids"), &g->n_prompt[c]);
        g->greedy[c] = s_ids(json_object_get(cs, "greedy_ids"), &g->n_greedy[c]);
    }
    json_decref(root);
}

static void s_golden_free(s_golden_t *g) {
    for (int c = 0; c < g->n_cases; c++) {
        free(g->prompt[c]);
        free(g->greedy[c]);
    }
}

static void s_model_dir(char *buf, size_t n, const char *model) {
    const char *fx = kvf_test_fixtures();
    if (!fx) cr_skip_test("fixtures folder is missing");
    snprintf(buf, n, "%s/%s", fx, model);
}

// ---------------------------------------------------------------- running requests

typedef struct {
    uint64_t rid;
    int32_t out[256];
    int32_t n_out;
    int finished;
    kvf_finish_reason reason;
} s_out_t;

typedef struct {
    s_out_t o[MAX_REQ];
    int n;
    int n_finished;
    int bad;  // a token after finish, or an unknown rid
} s_sink_t;

static void s_on_token(void *ud, uint64_t rid, int32_t token, int finished, kvf_finish_reason reason) {
    s_sink_t *k = ud;
    for (int i = 0; i < k->n; i++) {
        s_out_t *o = &k->o[i];
        if (o->rid != rid) continue;
        if (o->finished) {
            k->bad = 1;
            return;
        }
        if (token >= 0 && o->n_out < 256) o->out[o->n_out++] = token;
        if (finished) {
            o->finished = 1;
            o->reason = reason;
            k->n_finished++;
        }
        return;
    }
    k->bad = 1;
}

static s_out_t *s_track(s_sink_t *k, uint64_t rid) {
    cr_assert_lt(k->n, MAX_REQ);
    s_out_t *o = &k->o[k->n++];
    memset(o, 0, sizeof *o);
    o->rid = rid;
    return o;
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

static kvf_sampling_t s_greedy(int32_t n) {
    kvf_sampling_t s = kvf_sampling_default();
    s.max_new_tokens = n;
    s.ignore_eos = 1;
    return s;
}

static kvf_engine_t *s_engine(const char *model, int32_t bs, int32_t session_len, double cache, int prefix,
                              kvf_err_t *err) {
    char dir[1024];
    s_model_dir(dir, sizeof dir, model);
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.block_size = bs;
    o.session_len = session_len;
    o.cache_max_entry_count = cache;
    o.enable_prefix_caching = prefix;
    o.max_batch_size = 64;
    o.max_prefill_token_num = 512;
    o.n_threads = 2;
    return kvf_engine_new(dir, &o, err);
}

// ---------------------------------------------------------------- tests

Test(engine, golden_cases_in_one_batch_and_one_at_a_time) {
    s_golden_t g;
    s_golden_load(&g, "tiny-llama");
    kvf_err_t err;
    kvf_engine_t *e = s_engine("tiny-llama", 16, 512, 200, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    const kvf_modelcfg_t *cfg = kvf_engine_cfg(e);
    cr_assert_eq(cfg->vocab_size, 2048);
    cr_assert_not_null(kvf_engine_tokenizer(e), "tiny-llama ships a tokenizer.json");

    s_sink_t batch = {0};
    for (int c = 0; c < g.n_cases; c++) {
        kvf_sampling_t s = s_greedy(g.n_greedy[c]);
        s_track(&batch, (uint64_t)c + 1);
        cr_assert_eq(kvf_engine_add(e, (uint64_t)c + 1, g.prompt[c], g.n_prompt[c], NULL, 0, &s, &err), 0, "%s",
                     err.msg);
    }
    s_run(e, &batch);
    for (int c = 0; c < g.n_cases; c++) {
        s_out_t *o = &batch.o[c];
        cr_assert(o->finished);
        cr_assert_eq(o->reason, KVF_FINISH_LENGTH);
        cr_assert_eq(o->n_out, g.n_greedy[c], "case %d: %d tokens", c, o->n_out);
        for (int i = 0; i < o->n_out; i++)
            cr_assert_eq(o->out[i], g.greedy[c][i], "case %d token %d: %d vs golden %d", c, i, o->out[i],
                         g.greedy[c][i]);
    }
    kvf_engine_stats_t st;
    kvf_engine_stats(e, &st);
    cr_assert_eq(st.free_blocks, st.total_blocks, "every block returned");
    cr_assert_eq(st.running + st.waiting, 0);
    int64_t want_gen = 0;
    for (int c = 0; c < g.n_cases; c++) want_gen += g.n_greedy[c];
    cr_assert_eq((int64_t)st.tokens_generated, want_gen);

    // one at a time on the same engine
    for (int c = 0; c < g.n_cases; c++) {
        s_sink_t one = {0};
        kvf_sampling_t s = s_greedy(g.n_greedy[c]);
        s_track(&one, 100);
        cr_assert_eq(kvf_engine_add(e, 100, g.prompt[c], g.n_prompt[c], NULL, 0, &s, &err), 0);
        s_run(e, &one);
        cr_assert_eq(one.o[0].n_out, batch.o[c].n_out);
        cr_assert_arr_eq(one.o[0].out, batch.o[c].out, sizeof(int32_t) * (size_t)one.o[0].n_out);
    }
    kvf_engine_destroy(&e);
    cr_assert_null(e);
    s_golden_free(&g);
}

// 64 prompts built from the golden prompts plus per-request tails.
static int32_t s_make_prompt(const s_golden_t *g, int i, int32_t *out) {
    int c = i % g->n_cases;
    int32_t base = g->n_prompt[c] < 40 ? g->n_prompt[c] : 40;
    memcpy(out, g->prompt[c], sizeof(int32_t) * (size_t)base);
    int32_t tail = 3 + (i * 7) % 37;
    for (int32_t j = 0; j < tail; j++) out[base + j] = (int32_t)((i * 131 + j * 17 + 5) % 2000) + 2;
    return base + tail;
}

static void s_run_64(kvf_engine_t *e, const s_golden_t *g, s_sink_t *k) {
    kvf_err_t err;
    int32_t p[128];
    for (int i = 0; i < 64; i++) {
        int32_t n = s_make_prompt(g, i, p);
        kvf_sampling_t s = s_greedy(16 + i % 9);
        s_track(k, (uint64_t)i + 1);
        cr_assert_eq(kvf_engine_add(e, (uint64_t)i + 1, p, n, NULL, 0, &s, &err), 0, "%s", err.msg);
    }
    s_run(e, k);
    cr_assert_eq(k->n_finished, 64);
}

Test(engine, tiny_pool_preempts_and_gives_the_same_greedy_outputs) {
    s_golden_t g;
    s_golden_load(&g, "tiny-llama");
    kvf_err_t err;
    // longest sequence: 40 + 39 + 24 = 103 tokens <= session_len 112 = 7 blocks of 16
    kvf_engine_t *ample = s_engine("tiny-llama", 16, 112, 1000, 0, &err);
    cr_assert_not_null(ample, "%s", err.msg);
    kvf_engine_t *tiny = s_engine("tiny-llama", 16, 112, 14, 0, &err);  // 2x the longest sequence
    cr_assert_not_null(tiny, "%s", err.msg);
    s_sink_t a = {0}, b = {0};
    s_run_64(ample, &g, &a);
    s_run_64(tiny, &g, &b);
    kvf_engine_stats_t sa, sb;
    kvf_engine_stats(ample, &sa);
    kvf_engine_stats(tiny, &sb);
    cr_assert_eq(sa.preemptions, 0);
    cr_assert_gt(sb.preemptions, 0, "a 14-block pool must preempt");
    cr_assert_eq(sb.total_blocks, 14);
    cr_assert_eq(sb.free_blocks, 14);
    cr_assert_gt(sb.tokens_computed, sa.tokens_computed, "preempted work was recomputed");
    cr_assert_eq(sa.tokens_generated, sb.tokens_generated, "nothing emitted twice");
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(a.o[i].n_out, 16 + i % 9);
        cr_assert_eq(b.o[i].n_out, a.o[i].n_out, "request %d", i);
        cr_assert_arr_eq(b.o[i].out, a.o[i].out, sizeof(int32_t) * (size_t)a.o[i].n_out, "request %d differs", i);
    }
    kvf_engine_destroy(&ample);
    kvf_engine_destroy(&tiny);
    s_golden_free(&g);
}

Test(engine, prefix_caching_hits_and_same_outputs) {
    s_golden_t g;
    s_golden_load(&g, "tiny-llama");
    int c = 4;  // the long (242-token) prompt is the shared prefix
    cr_assert_gt(g.n_prompt[c], 200);
    kvf_err_t err;
    static s_sink_t out[2];
    memset(out, 0, sizeof out);
    kvf_engine_stats_t st[2];
    for (int pc = 0; pc < 2; pc++) {
        kvf_engine_t *e = s_engine("tiny-llama", 16, 512, 300, pc, &err);
        cr_assert_not_null(e, "%s", err.msg);
        int32_t p[300];
        for (int i = 0; i < 6; i++) {
            int32_t n = g.n_prompt[c];
            memcpy(p, g.prompt[c], sizeof(int32_t) * (size_t)n);
            for (int j = 0; j < 5 + i; j++) p[n++] = 100 + 13 * i + j;
            kvf_sampling_t s = s_greedy(12);
            s_track(&out[pc], (uint64_t)i + 1);
            cr_assert_eq(kvf_engine_add(e, (uint64_t)i + 1, p, n, NULL, 0, &s, &err), 0, "%s", err.msg);
            if (i == 0) cr_assert_gt(kvf_engine_step(e, s_on_token, &out[pc], &err), 0);  // first one computes the prefix
        }
        s_run(e, &out[pc]);
        kvf_engine_stats(e, &st[pc]);
        kvf_engine_destroy(&e);
    }
    cr_assert_eq(st[0].prefix_hits, 0);
    // 242 shared tokens = 15 full blocks of 16, for each of the 5 later requests
    cr_assert_geq(st[1].prefix_hits, 5 * 15, "hits %llu", (unsigned long long)st[1].prefix_hits);
    cr_assert_lt(st[1].tokens_computed, st[0].tokens_computed);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(out[1].o[i].n_out, 12);
        cr_assert_arr_eq(out[1].o[i].out, out[0].o[i].out, sizeof(int32_t) * 12, "request %d differs", i);
    }
    s_golden_free(&g);
}

Test(engine, resume_continues_a_sampled_request_identically) {
    s_golden_t g;
    s_golden_load(&g, "tiny-llama");
    kvf_err_t err;
    kvf_engine_t *e = s_engine("tiny-llama", 16, 256, 100, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    kvf_sampling_t s = s_greedy(30);
    s.temperature = 0.9f;
    s.top_p = 0.95f;
    s.seed = 1234;
    s_sink_t full = {0}, rest = {0};
    s_track(&full, 1);
    cr_assert_eq(kvf_engine_add(e, 1, g.prompt[0], g.n_prompt[0], NULL, 0, &s, &err), 0);
    s_run(e, &full);
    cr_assert_eq(full.o[0].n_out, 30);
    s_track(&rest, 2);
    cr_assert_eq(kvf_engine_add(e, 2, g.prompt[0], g.n_prompt[0], full.o[0].out, 11, &s, &err), 0);
    s_run(e, &rest);
    cr_assert_eq(rest.o[0].n_out, 19, "only the tokens after the delivered ones");
    cr_assert_arr_eq(rest.o[0].out, full.o[0].out + 11, sizeof(int32_t) * 19);
    // a request resumed with everything already delivered just finishes
    s_sink_t none = {0};
    s_track(&none, 3);
    cr_assert_eq(kvf_engine_add(e, 3, g.prompt[0], g.n_prompt[0], full.o[0].out, 30, &s, &err), 0);
    s_run(e, &none);
    cr_assert(none.o[0].finished);
    cr_assert_eq(none.o[0].n_out, 0);
    cr_assert_eq(none.o[0].reason, KVF_FINISH_LENGTH);
    kvf_engine_destroy(&e);
    s_golden_free(&g);
}

Test(engine, stop_ids_and_session_len_end_requests) {
    s_golden_t g;
    s_golden_load(&g, "tiny-llama");
    kvf_err_t err;
    kvf_engine_t *e = s_engine("tiny-llama", 16, 64, 50, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    // stop at the 6th golden token (first occurrence)
    int32_t stop = g.greedy[0][5];
    int first = 0;
    while (g.greedy[0][first] != stop) first++;
    kvf_sampling_t s = s_greedy(32);
    s.n_stop_ids = 1;
    s.stop_ids[0] = stop;
    s_sink_t k = {0};
    s_track(&k, 1);
    cr_assert_eq(kvf_engine_add(e, 1, g.prompt[0], g.n_prompt[0], NULL, 0, &s, &err), 0);
    // session_len 64: prompt 60 tokens leaves room for 4 generated tokens
    int32_t p[60];
    for (int i = 0; i < 60; i++) p[i] = 10 + i;
    kvf_sampling_t s2 = s_greedy(100);
    s_track(&k, 2);
    cr_assert_eq(kvf_engine_add(e, 2, p, 60, NULL, 0, &s2, &err), 0);
    s_run(e, &k);
    cr_assert_eq(k.o[0].reason, KVF_FINISH_STOP);
    cr_assert_eq(k.o[0].n_out, first + 1, "the stop token is the last one reported");
    cr_assert_eq(k.o[0].out[first], stop);
    cr_assert_eq(k.o[1].reason, KVF_FINISH_LENGTH);
    cr_assert_eq(k.o[1].n_out, 4);
    kvf_engine_destroy(&e);
    s_golden_free(&g);
}

Test(engine, bad_requests_are_refused_and_cancel_frees) {
    kvf_err_t err;
    kvf_engine_t *e = s_engine("tiny-llama", 16, 64, 50, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    int32_t p[80];
    for (int i = 0; i < 80; i++) p[i] = i + 3;
    kvf_sampling_t s = s_greedy(8);
    cr_assert_eq(kvf_engine_add(e, 1, p, 0, NULL, 0, &s, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(kvf_engine_add(e, 1, p, 64, NULL, 0, &s, &err), -1, "64 > session_len - 1");
    cr_assert_eq(err.code, KVF_E_TOO_LONG);
    p[3] = 2048;
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, &s, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert(strstr(err.msg, "2048"), "%s", err.msg);
    p[3] = -5;
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, &s, &err), -1);
    p[3] = 6;
    kvf_sampling_t bad = s;
    bad.top_p = 0;
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, &bad, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    bad = s;
    bad.max_new_tokens = 0;
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, &bad, &err), -1);
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, NULL, &err), -1);
    cr_assert(!kvf_engine_has_work(e), "nothing was queued");
    // valid, then a duplicate rid
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, &s, &err), 0);
    cr_assert_eq(kvf_engine_add(e, 1, p, 10, NULL, 0, &s, &err), -1);
    cr_assert_eq(kvf_engine_add(e, 2, p, 40, NULL, 0, &s, &err), 0);
    s_sink_t k = {0};
    s_track(&k, 1);
    s_track(&k, 2);
    cr_assert_gt(kvf_engine_step(e, s_on_token, &k, &err), 0);
    kvf_engine_stats_t st;
    kvf_engine_stats(e, &st);
    cr_assert_eq(st.running, 2);
    cr_assert_lt(st.free_blocks, st.total_blocks);
    cr_assert_eq(kvf_engine_cancel(e, 2), 0);
    cr_assert_eq(kvf_engine_cancel(e, 2), -1);
    cr_assert_eq(kvf_engine_cancel(e, 99), -1);
    s_run(e, &k);
    cr_assert(k.o[0].finished);
    cr_assert(!k.o[1].finished, "a cancelled request reports nothing more");
    kvf_engine_stats(e, &st);
    cr_assert_eq(st.free_blocks, st.total_blocks);
    kvf_engine_destroy(&e);
}

Test(engine, plan_refuses_a_pool_below_one_sequence) {
    kvf_err_t err;
    kvf_engine_t *e = s_engine("tiny-llama", 16, 128, 7, 0, &err);  // 128 tokens need 8 blocks
    cr_assert_null(e);
    cr_assert_eq(err.code, KVF_E_NOMEM);
    cr_assert(strstr(err.msg, "--cache-max-entry-count"), "%s", err.msg);
    cr_assert(strstr(err.msg, "--session-len"), "%s", err.msg);
    // a byte budget that leaves too little for the pool
    char dir[1024];
    s_model_dir(dir, sizeof dir, "tiny-llama");
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.memory_budget = 8u << 20;  // weights are ~1.5 MiB, the rest is not 1024 tokens of KV at 0.8
    o.max_batch_size = 8;
    o.max_prefill_token_num = 64;
    o.cache_max_entry_count = 0.01;
    e = kvf_engine_new(dir, &o, &err);
    cr_assert_null(e);
    cr_assert(strstr(err.msg, "--memory-budget"), "%s", err.msg);
    // exactly one sequence fits: accepted, and the plan says so
    e = s_engine("tiny-llama", 16, 128, 8, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    kvf_plan_t p;
    kvf_engine_plan(e, &p);
    cr_assert_eq(p.kv_blocks, 8);
    cr_assert_eq(p.block_size, 16);
    cr_assert_eq(p.tokens_fit, 128);
    cr_assert_eq(p.full_sequences, 1);
    cr_assert_gt(p.weights_bytes, 0);
    cr_assert_gt(p.kv_bytes, 0);
    char text[1024];
    kvf_engine_plan_text(e, text, sizeof text);
    cr_assert(strstr(text, "8 blocks x 16 tokens"), "%s", text);
    kvf_engine_destroy(&e);
}

Test(engine, auto_batch_size_follows_the_pool) {
    char dir[1024];
    s_model_dir(dir, sizeof dir, "tiny-llama");
    kvf_err_t err;
    // {pool blocks (16 tokens), max_prefill_token_num, expected}: 128-token sequences take 8 blocks
    const int cases[][3] = {{8 * 200, 512, 200}, {8 * 10, 512, KVF_ENGINE_BATCH_AUTO_MIN},
                            {8 * 2000, 2048, KVF_ENGINE_BATCH_AUTO_MAX}, {8 * 200, 64, 64}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvf_engine_opts_t o = kvf_engine_opts_default();
        o.block_size = 16;
        o.session_len = 128;
        o.cache_max_entry_count = cases[i][0];
        o.max_prefill_token_num = cases[i][1];
        o.max_batch_size = KVF_ENGINE_BATCH_AUTO;
        o.n_threads = 2;
        kvf_engine_t *e = kvf_engine_new(dir, &o, &err);
        cr_assert_not_null(e, "case %zu: %s", i, err.msg);
        cr_assert_eq(kvf_engine_opts(e)->max_batch_size, cases[i][2], "case %zu: %d", i,
                     kvf_engine_opts(e)->max_batch_size);
        kvf_engine_destroy(&e);
    }
    // an explicit size is kept, and a negative one is still refused
    kvf_engine_t *e = s_engine("tiny-llama", 16, 128, 8 * 200, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    cr_assert_eq(kvf_engine_opts(e)->max_batch_size, 64);
    kvf_engine_destroy(&e);
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.max_batch_size = -1;
    cr_assert_null(kvf_engine_new(dir, &o, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
}

Test(engine, bad_models_and_options_are_errors) {
    kvf_err_t err;
    kvf_engine_opts_t o = kvf_engine_opts_default();
    cr_assert_null(kvf_engine_new("/nonexistent/model", &o, &err));
    cr_assert_neq(err.code, KVF_OK);
    cr_assert(strlen(err.msg) > 0);
    char dir[1024];
    s_model_dir(dir, sizeof dir, "tiny-llama");
    o.backend = "tpu";
    cr_assert_null(kvf_engine_new(dir, &o, &err));
    cr_assert(strstr(err.msg, "tpu"), "%s", err.msg);
    o = kvf_engine_opts_default();
    o.block_size = 0;
    cr_assert_null(kvf_engine_new(dir, &o, &err));
    cr_assert(strstr(err.msg, "--block-size"), "%s", err.msg);
    o = kvf_engine_opts_default();
    o.session_len = 5000;  // tiny-llama: 1024 positions
    cr_assert_null(kvf_engine_new(dir, &o, &err));
    cr_assert(strstr(err.msg, "--session-len"), "%s", err.msg);
}

Test(engine, score_matches_golden_logits) {
    char path[1024];
    KVF_FIXTURE_PATH(path, "tiny-llama/golden.json");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    cr_assert_not_null(root);
    KVF_FIXTURE_PATH(path, "tiny-llama/tiny-llama.logits.f32");
    size_t len = 0;
    float *gold = (float *)kvf_test_slurp(path, &len);
    cr_assert_not_null(gold);
    kvf_err_t err;
    kvf_engine_t *e = s_engine("tiny-llama", 16, 512, 100, 0, &err);
    cr_assert_not_null(e, "%s", err.msg);
    const int32_t V = 2048;
    json_t *cs = json_array_get(json_object_get(root, "cases"), 1);
    int32_t n_full;
    int32_t *full = s_ids(json_object_get(cs, "full_ids"), &n_full);
    int32_t p0 = (int32_t)json_integer_value(json_object_get(cs, "first_row_position"));
    int32_t r0 = (int32_t)json_integer_value(json_object_get(cs, "logits_row_offset"));
    int32_t nr = (int32_t)json_integer_value(json_object_get(cs, "n_rows"));
    float *lg = malloc(sizeof(float) * (size_t)n_full * V);
    cr_assert_eq(kvf_engine_score(e, full, n_full, lg, &err), 0, "%s", err.msg);
    double maxd = 0;
    for (int32_t j = 0; j < nr && p0 + j < n_full; j++)
        for (int32_t v = 0; v < V; v++) {
            double d = fabs(lg[(size_t)(p0 + j) * V + v] - gold[(size_t)(r0 + j) * V + v]);
            if (d > maxd) maxd = d;
        }
    cr_assert_lt(maxd, 1e-3, "max |diff| %g", maxd);
    // busy engine refuses; bad ids refused
    kvf_sampling_t s = s_greedy(4);
    cr_assert_eq(kvf_engine_add(e, 1, full, 5, NULL, 0, &s, &err), 0);
    cr_assert_eq(kvf_engine_score(e, full, n_full, lg, &err), -1);
    cr_assert_eq(err.code, KVF_E_BUSY);
    kvf_engine_cancel(e, 1);
    full[0] = 4096;
    cr_assert_eq(kvf_engine_score(e, full, n_full, lg, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    free(lg);
    free(full);
    free(gold);
    json_decref(root);
    kvf_engine_destroy(&e);
}

// ---------------------------------------------------------------- parallel host sampling

#define SAMPLED_REQ 24

static kvf_sampling_t s_sampled(int i) {
    kvf_sampling_t s = s_greedy(20 + i % 7);
    s.temperature = 0.8f;
    s.top_p = 0.9f;
    s.top_k = 40;
    s.seed = 1000u + (uint64_t)i * 7919u;
    if (i % 3 == 0) s.repetition_penalty = 1.3f;
    return s;
}

// 24 sampled requests in one batch on an engine with n_threads (forward and
// sampling threads; the cpu backend's forward gives the same bits on any count).
static void s_run_sampled(const s_golden_t *g, int32_t n_threads, s_sink_t *k) {
    char dir[1024];
    s_model_dir(dir, sizeof dir, "tiny-llama");
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.block_size = 16;
    o.session_len = 256;
    o.cache_max_entry_count = 400;
    o.max_batch_size = 64;
    o.max_prefill_token_num = 2048;  // all 24 prompts (<= 79 tokens each) in the first step
    o.n_threads = n_threads;
    kvf_err_t err;
    kvf_engine_t *e = kvf_engine_new(dir, &o, &err);
    cr_assert_not_null(e, "%s", err.msg);
    int32_t p[128];
    for (int i = 0; i < SAMPLED_REQ; i++) {
        int32_t n = s_make_prompt(g, i % 4, p);  // 6 requests share each prompt, with different seeds
        kvf_sampling_t s = s_sampled(i);
        s_track(k, (uint64_t)i + 1);
        cr_assert_eq(kvf_engine_add(e, (uint64_t)i + 1, p, n, NULL, 0, &s, &err), 0, "%s", err.msg);
    }
    // the first step prefills every prompt and samples all 24 rows together
    int ran = kvf_engine_step(e, s_on_token, k, &err);
    cr_assert_eq(ran, SAMPLED_REQ, "first step ran %d sequences: %s", ran, ran < 0 ? err.msg : "");
    kvf_step_info_t si;
    kvf_engine_last_step(e, &si);
    cr_assert_eq(si.n_sampled, SAMPLED_REQ);
    s_run(e, k);
    cr_assert_eq(k->n_finished, SAMPLED_REQ);
    kvf_engine_destroy(&e);
}

Test(engine, sampled_batch_same_tokens_on_1_and_4_sampling_threads) {
    s_golden_t g;
    s_golden_load(&g, "tiny-llama");
    static s_sink_t one, four;
    memset(&one, 0, sizeof one);
    memset(&four, 0, sizeof four);
    s_run_sampled(&g, 1, &one);
    s_run_sampled(&g, 4, &four);
    int differ_from_same_prompt = 0;
    for (int i = 0; i < SAMPLED_REQ; i++) {
        cr_assert_eq(one.o[i].n_out, 20 + i % 7, "request %d", i);
        cr_assert_eq(four.o[i].n_out, one.o[i].n_out, "request %d", i);
        cr_assert_arr_eq(four.o[i].out, one.o[i].out, sizeof(int32_t) * (size_t)one.o[i].n_out,
                         "request %d: 4 sampling threads differ from 1", i);
        if (i >= 4) differ_from_same_prompt += memcmp(one.o[i].out, one.o[i - 4].out, sizeof(int32_t) * 20) != 0;
    }
    cr_assert_geq(differ_from_same_prompt, SAMPLED_REQ - 4 - 2, "different seeds should give different outputs");

    // Reference: the logits of every position by teacher-forced scoring, sampled
    // by one sampler with that request's history and step. Catches a row sampled
    // with another row's logits, history or step on both thread counts alike.
    char dir[1024];
    s_model_dir(dir, sizeof dir, "tiny-llama");
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.block_size = 16;
    o.session_len = 256;
    o.cache_max_entry_count = 400;
    o.max_batch_size = 64;
    o.max_prefill_token_num = 512;
    o.n_threads = 2;
    kvf_err_t err;
    kvf_engine_t *e = kvf_engine_new(dir, &o, &err);
    cr_assert_not_null(e, "%s", err.msg);
    const int32_t V = kvf_engine_cfg(e)->vocab_size;
    kvf_sampler_t *smp = kvf_sampler_new(V);
    int32_t ids[256];
    float *lg = malloc(sizeof(float) * 256 * (size_t)V);
    cr_assert(smp && lg);
    for (int i = 0; i < SAMPLED_REQ; i++) {
        int32_t n_p = s_make_prompt(&g, i % 4, ids);
        const s_out_t *out = &one.o[i];
        memcpy(ids + n_p, out->out, sizeof(int32_t) * (size_t)out->n_out);
        int32_t n = n_p + out->n_out - 1;  // the last token is never fed back
        cr_assert_eq(kvf_engine_score(e, ids, n, lg, &err), 0, "%s", err.msg);
        kvf_sampling_t s = s_sampled(i);
        for (int32_t t = 0; t < out->n_out; t++) {
            int32_t tok = kvf_sampler_sample(smp, lg + (size_t)(n_p - 1 + t) * V, V, &s, ids, n_p + t, t);
            cr_assert_eq(tok, out->out[t], "request %d token %d: engine %d, reference %d", i, t, out->out[t], tok);
        }
    }
    free(lg);
    kvf_sampler_destroy(&smp);
    kvf_engine_destroy(&e);
    s_golden_free(&g);
}
