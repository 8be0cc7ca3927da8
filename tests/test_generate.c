// tests/test_generate.c — black-box tests of the kvf-generate binary on the
// fixtures: golden greedy ids (stories260K, tiny-llama), teacher-forced logits,
// --prompt tokenization, and every kind of bad input (clear message, non-zero
// exit, no crash).
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

typedef struct {
    int exited;   // 1 when it exited (not killed by a signal)
    int status;   // exit status
    char *out, *err;
} s_proc_t;

static char s_tmp[256];

static void s_tmp_init(void) {
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kvf_test_generate_XXXXXX");
    cr_assert_not_null(mkdtemp(s_tmp));
}

static void s_tmp_fini(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    cr_assert_eq(system(cmd), 0);
}

// Runs kvf-generate with args (a shell fragment), capturing stdout and stderr.
static s_proc_t s_exec(const char *args) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s/kvf-generate %s >%s/out 2>%s/err", KVF_BIN_DIR, args, s_tmp, s_tmp);
    int st = system(cmd);
    s_proc_t p = {0};
    cr_assert_neq(st, -1);
    p.exited = WIFEXITED(st) && WEXITSTATUS(st) < 128;  // the shell reports 128+n for a signal
    p.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    char path[512];
    snprintf(path, sizeof path, "%s/out", s_tmp);
    p.out = kvf_test_slurp(path, NULL);
    snprintf(path, sizeof path, "%s/err", s_tmp);
    p.err = kvf_test_slurp(path, NULL);
    cr_assert(p.out && p.err);
    return p;
}

static void s_proc_free(s_proc_t *p) {
    free(p->out);
    free(p->err);
}

static char *s_ids_csv(json_t *arr) {
    size_t n = json_array_size(arr);
    char *s = malloc(n * 12 + 2);
    size_t k = 0;
    s[0] = 0;
    for (size_t i = 0; i < n; i++)
        k += (size_t)sprintf(s + k, i ? ",%lld" : "%lld", (long long)json_integer_value(json_array_get(arr, i)));
    return s;
}

static void s_assert_ids_eq(json_t *got, json_t *want, const char *what) {
    cr_assert_not_null(got, "%s missing", what);
    cr_assert_eq(json_array_size(got), json_array_size(want), "%s: %zu ids, want %zu", what, json_array_size(got),
                 json_array_size(want));
    for (size_t i = 0; i < json_array_size(want); i++)
        cr_assert_eq(json_integer_value(json_array_get(got, i)), json_integer_value(json_array_get(want, i)),
                     "%s: id %zu differs", what, i);
}

static json_t *s_golden(const char *model) {
    char path[1024], rel[256];
    snprintf(rel, sizeof rel, "%s/golden.json", model);
    KVF_FIXTURE_PATH(path, rel);
    json_error_t jerr;
    json_t *g = json_load_file(path, 0, &jerr);
    cr_assert_not_null(g, "%s: %s", path, jerr.text);
    return g;
}

static void s_check_greedy(const char *model) {
    json_t *g = s_golden(model);
    char dir[1024];
    KVF_FIXTURE_PATH(dir, model);
    json_t *cases = json_object_get(g, "cases");
    s_tmp_init();
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        json_t *want = json_object_get(cs, "greedy_ids");
        char *csv = s_ids_csv(json_object_get(cs, "prompt_ids"));
        char args[12000];
        snprintf(args, sizeof args, "--model %s --prompt-ids %s --max-new-tokens %zu --ignore-eos --json", dir, csv,
                 json_array_size(want));
        s_proc_t p = s_exec(args);
        cr_assert(p.exited && p.status == 0, "%s case %zu: exit %d: %s", model, c, p.status, p.err);
        json_error_t jerr;
        json_t *o = json_loads(p.out, 0, &jerr);
        cr_assert_not_null(o, "stdout is not one JSON object: %s", p.out);
        s_assert_ids_eq(json_object_get(o, "prompt_ids"), json_object_get(cs, "prompt_ids"), "prompt_ids");
        s_assert_ids_eq(json_object_get(o, "output_ids"), want, "output_ids");
        cr_assert_str_eq(json_string_value(json_object_get(o, "finish_reason")), "length");
        cr_assert(json_is_string(json_object_get(o, "text")));
        json_decref(o);
        free(csv);
        s_proc_free(&p);
    }
    s_tmp_fini();
    json_decref(g);
}

Test(generate, greedy_ids_equal_golden_stories260K) { s_check_greedy("stories260K"); }
Test(generate, greedy_ids_equal_golden_tiny_llama) { s_check_greedy("tiny-llama"); }

static void s_check_scores(const char *model) {
    json_t *g = s_golden(model);
    char dir[1024], path[1024], rel[256];
    KVF_FIXTURE_PATH(dir, model);
    snprintf(rel, sizeof rel, "%s/%s", model, json_string_value(json_object_get(g, "logits_file")));
    KVF_FIXTURE_PATH(path, rel);
    size_t glen = 0;
    float *gold = (float *)kvf_test_slurp(path, &glen);
    cr_assert_not_null(gold);
    const size_t V = (size_t)json_integer_value(json_object_get(g, "vocab_size"));
    json_t *cases = json_object_get(g, "cases");
    s_tmp_init();
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        json_t *full = json_object_get(cs, "full_ids");
        size_t n_full = json_array_size(full);
        size_t p0 = (size_t)json_integer_value(json_object_get(cs, "first_row_position"));
        size_t r0 = (size_t)json_integer_value(json_object_get(cs, "logits_row_offset"));
        size_t nr = (size_t)json_integer_value(json_object_get(cs, "n_rows"));
        cr_assert_leq((r0 + nr) * V * sizeof(float), glen);
        cr_assert_leq(p0 + nr, n_full);
        char *csv = s_ids_csv(full);
        char args[12000], lpath[512];
        snprintf(lpath, sizeof lpath, "%s/logits.f32", s_tmp);
        snprintf(args, sizeof args, "--model %s --score-ids %s --logits-out %s", dir, csv, lpath);
        s_proc_t p = s_exec(args);
        cr_assert(p.exited && p.status == 0, "%s case %zu: exit %d: %s", model, c, p.status, p.err);
        size_t llen = 0;
        float *lg = (float *)kvf_test_slurp(lpath, &llen);
        cr_assert_not_null(lg);
        cr_assert_eq(llen, n_full * V * sizeof(float), "the file holds (n_ids, vocab) float32");
        double maxd = 0;
        for (size_t j = 0; j < nr; j++)
            for (size_t v = 0; v < V; v++) {
                double d = fabs((double)lg[(p0 + j) * V + v] - (double)gold[(r0 + j) * V + v]);
                if (d > maxd) maxd = d;
            }
        cr_assert_lt(maxd, 1e-3, "%s case %zu: max |logit - golden| = %g", model, c, maxd);
        free(lg);
        free(csv);
        s_proc_free(&p);
    }
    s_tmp_fini();
    free(gold);
    json_decref(g);
}

Test(generate, score_ids_logits_match_golden_stories260K) { s_check_scores("stories260K"); }
Test(generate, score_ids_logits_match_golden_tiny_llama) { s_check_scores("tiny-llama"); }

Test(generate, prompt_text_is_tokenized_with_bos_and_streams) {
    char path[1024], dir[1024];
    KVF_FIXTURE_PATH(path, "tiny-llama/tokenizer_golden.json");
    KVF_FIXTURE_PATH(dir, "tiny-llama");
    json_t *rows = json_load_file(path, 0, NULL);
    cr_assert_not_null(rows);
    if (json_is_object(rows)) {
        json_t *r = json_object_get(rows, "rows");
        if (!r) r = json_object_get(rows, "cases");
        json_incref(r);
        json_decref(rows);
        rows = r;
    }
    cr_assert(json_is_array(rows));
    // the first row with plain ASCII text that survives the shell's quoting
    json_t *row = NULL;
    for (size_t i = 0; i < json_array_size(rows) && !row; i++) {
        const char *t = json_string_value(json_object_get(json_array_get(rows, i), "text"));
        if (!t || strlen(t) < 5) continue;
        int ok = 1;
        for (const char *q = t; *q; q++)
            if (*q < 32 || *q > 126 || *q == '\'') ok = 0;
        if (ok) row = json_array_get(rows, i);
    }
    cr_assert_not_null(row);
    const char *text = json_string_value(json_object_get(row, "text"));
    s_tmp_init();
    char args[4096];
    snprintf(args, sizeof args, "--model %s --prompt '%s' --max-new-tokens 5 --ignore-eos --json", dir, text);
    s_proc_t p = s_exec(args);
    cr_assert(p.exited && p.status == 0, "exit %d: %s", p.status, p.err);
    json_t *o = json_loads(p.out, 0, NULL);
    cr_assert_not_null(o, "%s", p.out);
    s_assert_ids_eq(json_object_get(o, "prompt_ids"), json_object_get(row, "ids_with_special"), "prompt_ids");
    cr_assert_eq(json_array_size(json_object_get(o, "output_ids")), 5);
    json_decref(o);
    s_proc_free(&p);
    // without --json the text is streamed: same generation, same text plus a newline
    snprintf(args, sizeof args, "--model %s --prompt '%s' --max-new-tokens 5 --ignore-eos --json", dir, text);
    p = s_exec(args);
    o = json_loads(p.out, 0, NULL);
    const char *want = json_string_value(json_object_get(o, "text"));
    s_proc_t q;
    snprintf(args, sizeof args, "--model %s --prompt '%s' --max-new-tokens 5 --ignore-eos", dir, text);
    q = s_exec(args);
    cr_assert(q.exited && q.status == 0);
    size_t lw = strlen(want);
    cr_assert_eq(strncmp(q.out, want, lw), 0, "streamed '%s' vs '%s'", q.out, want);
    cr_assert_str_eq(q.out + lw, "\n");
    json_decref(o);
    s_proc_free(&p);
    s_proc_free(&q);
    s_tmp_fini();
    json_decref(rows);
}

Test(generate, sampling_is_seeded) {
    char dir[1024];
    KVF_FIXTURE_PATH(dir, "stories260K");
    s_tmp_init();
    char args[2048];
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --max-new-tokens 40 --temperature 1.0 --top-k 40 "
                                "--top-p 0.9 --seed 7 --json", dir);
    s_proc_t a = s_exec(args), b = s_exec(args);
    cr_assert(a.exited && a.status == 0, "%s", a.err);
    cr_assert_str_eq(a.out, b.out, "same seed, same output");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --max-new-tokens 40 --temperature 1.0 --top-k 40 "
                                "--top-p 0.9 --seed 8 --json", dir);
    s_proc_t c = s_exec(args);
    cr_assert(c.exited && c.status == 0);
    cr_assert_str_neq(a.out, c.out, "another seed, another output");
    s_proc_free(&a);
    s_proc_free(&b);
    s_proc_free(&c);
    s_tmp_fini();
}

// ---------------------------------------------------------------- bad input

static void s_expect_fail(const char *args, const char *needle) {
    s_proc_t p = s_exec(args);
    cr_assert(p.exited, "killed by a signal: %s -> %s", args, p.err);
    cr_assert_neq(p.status, 0, "%s: exit 0", args);
    cr_assert(strstr(p.err, needle), "%s: stderr '%s' does not mention '%s'", args, p.err, needle);
    cr_assert_eq(p.out[0], 0, "%s: nothing on stdout, got '%s'", args, p.out);
    s_proc_free(&p);
}

// --quantization fp8 (and the FP8 cache) through the whole CLI: the run completes with the ids asked for.
Test(generate, fp8_linear_layers_run) {
    char tl[1024], args[2048];
    KVF_FIXTURE_PATH(tl, "tiny-llama");
    s_tmp_init();
    snprintf(args, sizeof args, "--model %s --prompt-ids 1,50,60,70 --max-new-tokens 8 --ignore-eos --json "
             "--quantization fp8 --kv-cache-dtype fp8", tl);
    s_proc_t p = s_exec(args);
    cr_assert(p.exited && p.status == 0, "exit %d: %s", p.status, p.err);
    json_error_t je;
    json_t *j = json_loads(p.out, 0, &je);
    cr_assert_not_null(j, "%s: %s", je.text, p.out);
    cr_assert_eq(json_array_size(json_object_get(j, "output_ids")), 8, "%s", p.out);
    json_decref(j);
    s_proc_free(&p);
    s_tmp_fini();
}

Test(generate, bad_input_fails_cleanly) {
    char tl[1024], st[1024], cmd[4096];
    KVF_FIXTURE_PATH(tl, "tiny-llama");
    KVF_FIXTURE_PATH(st, "stories260K");
    s_tmp_init();
    char args[8192];

    // missing model
    s_expect_fail("--model /nonexistent/kvf-model --prompt-ids 1,2", "/nonexistent/kvf-model");
    // corrupt model: a truncated safetensors file
    snprintf(cmd, sizeof cmd, "mkdir -p %s/corrupt && cp %s/config.json %s/corrupt/ && head -c 1000 "
                              "%s/model.safetensors > %s/corrupt/model.safetensors", s_tmp, st, s_tmp, st, s_tmp);
    cr_assert_eq(system(cmd), 0);
    snprintf(args, sizeof args, "--model %s/corrupt --prompt-ids 1,2", s_tmp);
    s_expect_fail(args, "model.safetensors");
    // unknown architecture
    snprintf(cmd, sizeof cmd, "mkdir -p %s/gpt2 && cp %s/model.safetensors %s/gpt2/ && sed "
                              "'s/LlamaForCausalLM/GPT2LMHeadModel/' %s/config.json > %s/gpt2/config.json",
             s_tmp, st, s_tmp, st, s_tmp);
    cr_assert_eq(system(cmd), 0);
    snprintf(args, sizeof args, "--model %s/gpt2 --prompt-ids 1,2", s_tmp);
    s_expect_fail(args, "GPT2LMHeadModel");
    // ids outside the vocabulary (stories260K: 512)
    snprintf(args, sizeof args, "--model %s --prompt-ids 1,512", st);
    s_expect_fail(args, "512");
    snprintf(args, sizeof args, "--model %s --score-ids 1,9999 --logits-out %s/x.f32", st, s_tmp);
    s_expect_fail(args, "9999");
    // a prompt longer than the context (stories260K: 512 positions)
    int k = snprintf(args, sizeof args, "--model %s --prompt-ids 1", st);
    for (int i = 0; i < 600; i++) k += snprintf(args + k, sizeof args - (size_t)k, ",%d", 3 + i % 500);
    s_expect_fail(args, "512");
    // bad flags and values
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --frobnicate 3", st);
    s_expect_fail(args, "--frobnicate");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1,x,3", st);
    s_expect_fail(args, "--prompt-ids");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --max-new-tokens 0", st);
    s_expect_fail(args, "--max-new-tokens");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --temperature -1", st);
    s_expect_fail(args, "--temperature");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --backend tpu", st);
    s_expect_fail(args, "tpu");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --quantization int4", st);
    s_expect_fail(args, "--quantization 'int4': expected none or fp8");
    snprintf(args, sizeof args, "--model %s", st);
    s_expect_fail(args, "--prompt");
    snprintf(args, sizeof args, "--model %s --prompt-ids 1 --prompt hi", st);
    s_expect_fail(args, "exactly one");
    snprintf(args, sizeof args, "--model %s --score-ids 1,2", st);
    s_expect_fail(args, "--logits-out");
    s_expect_fail("--prompt-ids 1", "--model");
    // a text prompt for a model without a tokenizer
    snprintf(args, sizeof args, "--model %s --prompt hello", st);
    s_expect_fail(args, "tokenizer");
    // an unwritable logits file
    snprintf(args, sizeof args, "--model %s --score-ids 1,2 --logits-out /nonexistent/dir/x.f32", st);
    s_expect_fail(args, "/nonexistent/dir/x.f32");
    (void)tl;
    s_tmp_fini();
}
