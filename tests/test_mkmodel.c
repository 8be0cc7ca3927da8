// tests/test_mkmodel.c — kvf-mkmodel as a black box: run the binary, then load
// what it wrote with the project's own readers.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <jansson.h>

#include "common/modelcfg.h"
#include "common/safetensors.h"
#include "test_util.h"

#define S_BIN KVF_BIN_DIR "/kvf-mkmodel"

static char s_tmp[256];

static void s_mktmp(void) {
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kvf_mk_XXXXXX");
    cr_assert_not_null(mkdtemp(s_tmp));
}

static void s_rmtmp(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(mkmodel, .init = s_mktmp, .fini = s_rmtmp);

// Runs kvf-mkmodel with args; stderr goes to s_tmp/stderr. Returns the exit status.
static int s_run(const char *args) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>'%s/stderr'", S_BIN, args, s_tmp);
    int st = system(cmd);
    cr_assert(WIFEXITED(st), "kvf-mkmodel did not exit normally: %s", cmd);
    return WEXITSTATUS(st);
}

static char *s_stderr(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/stderr", s_tmp);
    char *s = kvf_test_slurp(path, NULL);
    cr_assert_not_null(s);
    return s;
}

static int s_same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = kvf_test_slurp(a, &la), *y = kvf_test_slurp(b, &lb);
    cr_assert(x && y, "%s or %s missing", a, b);
    int same = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

// Loads dir and checks every tensor that a Llama of this config must have.
static void s_check_model(const char *dir, int hidden, int layers, int heads, int kv_heads, int inter,
                          kvf_dtype dt) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(dir, &c, &err), 0, "%s", err.msg);
    cr_assert_str_eq(c.architecture, "LlamaForCausalLM");
    cr_assert_eq(c.hidden_size, hidden);
    cr_assert_eq(c.n_layers, layers);
    cr_assert_eq(c.n_heads, heads);
    cr_assert_eq(c.n_kv_heads, kv_heads);
    cr_assert_eq(c.head_dim, hidden / heads);
    cr_assert_eq(c.intermediate_size, inter);
    cr_assert_eq(c.tie_word_embeddings, 0);
    cr_assert_eq(c.rope_type, KVF_ROPE_DEFAULT);
    cr_assert_eq(c.n_eos, 1);
    cr_assert(c.bos_id >= 256 && c.bos_id < c.vocab_size);
    cr_assert(c.eos_ids[0] >= 256 && c.eos_ids[0] < c.vocab_size && c.eos_ids[0] != c.bos_id);
    cr_assert_str_eq(c.torch_dtype, dt == KVF_DT_F32 ? "float32" : "bfloat16");

    kvf_safetensors_t *st = kvf_safetensors_open_dir(dir, &err);
    cr_assert_not_null(st, "%s", err.msg);
    int64_t h = hidden, v = c.vocab_size, q = (int64_t)heads * c.head_dim, kv = (int64_t)kv_heads * c.head_dim;
    int64_t s_emb[] = {v, h}, s_norm[] = {h}, s_q[] = {q, h}, s_kv[] = {kv, h}, s_o[] = {h, q};
    int64_t s_gate[] = {inter, h}, s_down[] = {h, inter};
    cr_assert_not_null(kvf_safetensors_expect(st, "model.embed_tokens.weight", 2, s_emb, &err), "%s", err.msg);
    cr_assert_not_null(kvf_safetensors_expect(st, "lm_head.weight", 2, s_emb, &err), "%s", err.msg);
    cr_assert_not_null(kvf_safetensors_expect(st, "model.norm.weight", 1, s_norm, &err), "%s", err.msg);
    const char *sfx[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                         "self_attn.o_proj.weight", "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                         "mlp.down_proj.weight",    "input_layernorm.weight",  "post_attention_layernorm.weight"};
    const int64_t *shp[] = {s_q, s_kv, s_kv, s_o, s_gate, s_gate, s_down, s_norm, s_norm};
    char name[128];
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < 9; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, sfx[k]);
            const kvf_tensor_t *t = kvf_safetensors_expect(st, name, k < 7 ? 2 : 1, shp[k], &err);
            cr_assert_not_null(t, "%s", err.msg);
            cr_assert_eq(t->dtype, dt, "%s", name);
        }
    cr_assert_eq(kvf_safetensors_count(st), 3 + 9 * (size_t)layers);

    // Norms are ones; projections look like N(0, 0.02).
    float *buf = malloc(sizeof(float) * (size_t)(v * h));
    kvf_tensor_to_f32(kvf_safetensors_find(st, "model.layers.0.input_layernorm.weight"), buf);
    for (int64_t i = 0; i < h; i++) cr_assert_eq(buf[i], 1.0f);
    kvf_tensor_to_f32(kvf_safetensors_find(st, "model.embed_tokens.weight"), buf);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < v * h; i++) {
        sum += buf[i];
        sq += (double)buf[i] * buf[i];
        cr_assert(fabsf(buf[i]) < 0.08f, "outlier %g", (double)buf[i]);
    }
    double mean = sum / (double)(v * h), sd = sqrt(sq / (double)(v * h) - mean * mean);
    cr_assert(fabs(mean) < 0.002, "mean %g", mean);
    cr_assert(fabs(sd - 0.02) < 0.002, "std %g", sd);
    free(buf);
    kvf_safetensors_destroy(&st);
}

Test(mkmodel, default_shape_loads) {
    char args[512], dir[300];
    snprintf(dir, sizeof dir, "%s/m", s_tmp);
    snprintf(args, sizeof args, "'%s' --seed 3", dir);
    cr_assert_eq(s_run(args), 0);
    s_check_model(dir, 256, 4, 8, 4, 688, KVF_DT_F32);
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(dir, &c, &err), 0);
    cr_assert_eq(c.max_position, 2048);

    // The tokenizer: HF BPE, byte-level, with the two special tokens, and a
    // vocabulary exactly as large as the config says.
    char path[400];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_error_t jerr;
    json_t *tj = json_load_file(path, 0, &jerr);
    cr_assert_not_null(tj, "%s", jerr.text);
    json_t *model = json_object_get(tj, "model");
    cr_assert_str_eq(json_string_value(json_object_get(model, "type")), "BPE");
    cr_assert(json_is_false(json_object_get(model, "byte_fallback")));
    json_t *vocab = json_object_get(model, "vocab");
    cr_assert_eq((int)json_object_size(vocab), c.vocab_size);
    size_t n_merges = json_array_size(json_object_get(model, "merges"));
    cr_assert(n_merges >= 200 && n_merges <= 250, "%zu merges", n_merges);
    cr_assert_eq(json_integer_value(json_object_get(vocab, "<|begin_of_text|>")), c.bos_id);
    cr_assert_eq(json_integer_value(json_object_get(vocab, "<|end_of_text|>")), c.eos_ids[0]);
    cr_assert_eq(json_integer_value(json_object_get(vocab, "\xc4\xa0")), ' ', "space is byte-level U+0120");
    cr_assert_eq(json_integer_value(json_object_get(vocab, "a")), 'a');
    cr_assert_not_null(json_object_get(vocab, "\xc4\xa0the"), "a merge as common as \" the\" was learned");
    // Every id below the vocab size is used exactly once.
    char *seen = calloc((size_t)c.vocab_size, 1);
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_integer_value(val);
        cr_assert(id >= 0 && id < c.vocab_size && !seen[id], "id %lld for %s", (long long)id, key);
        seen[id] = 1;
    }
    free(seen);
    json_t *added = json_object_get(tj, "added_tokens");
    cr_assert_eq(json_array_size(added), 2);
    cr_assert(json_is_true(json_object_get(json_array_get(added, 0), "special")));
    json_t *pre = json_object_get(tj, "pre_tokenizer");
    cr_assert_str_eq(json_string_value(json_object_get(pre, "type")), "Sequence");
    json_t *bl = json_array_get(json_object_get(pre, "pretokenizers"), 1);
    cr_assert_str_eq(json_string_value(json_object_get(bl, "type")), "ByteLevel");
    cr_assert(json_is_false(json_object_get(bl, "use_regex")));
    json_t *post = json_object_get(tj, "post_processor");
    cr_assert_str_eq(json_string_value(json_object_get(post, "type")), "TemplateProcessing");
    json_decref(tj);
}

Test(mkmodel, bf16_and_custom_shape) {
    char args[512], dir[300];
    snprintf(dir, sizeof dir, "%s/small", s_tmp);
    snprintf(args, sizeof args,
             "'%s' --hidden 64 --layers 2 --heads 4 --kv-heads 1 --intermediate 172 --max-position 512 --dtype bf16",
             dir);
    cr_assert_eq(s_run(args), 0);
    s_check_model(dir, 64, 2, 4, 1, 172, KVF_DT_BF16);
}

Test(mkmodel, deterministic_and_rerunnable) {
    char a[300], b[300], c[300], args[512], pa[400], pb[400];
    snprintf(a, sizeof a, "%s/a", s_tmp);
    snprintf(b, sizeof b, "%s/b", s_tmp);
    snprintf(c, sizeof c, "%s/c", s_tmp);
    const char *small = "--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128";
    snprintf(args, sizeof args, "'%s' --seed 42 %s", a, small);
    cr_assert_eq(s_run(args), 0);
    snprintf(args, sizeof args, "'%s' %s --seed 42", b, small);
    cr_assert_eq(s_run(args), 0);
    snprintf(args, sizeof args, "'%s' --seed 43 %s", c, small);
    cr_assert_eq(s_run(args), 0);
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        cr_assert(s_same_file(pa, pb), "%s differs for the same seed", files[i]);
        snprintf(pb, sizeof pb, "%s/%s", c, files[i]);
        if (strcmp(files[i], "model.safetensors") == 0) cr_assert(!s_same_file(pa, pb), "seed changes nothing");
        else cr_assert(s_same_file(pa, pb), "%s depends on the seed", files[i]);
    }
    // Running again over an existing model replaces it with the same bytes and
    // leaves no temporary files behind.
    snprintf(args, sizeof args, "'%s' --seed 42 %s", a, small);
    cr_assert_eq(s_run(args), 0);
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    cr_assert(s_same_file(pa, pb));
    char cmd[400];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 4", a);
    cr_assert_eq(system(cmd), 0, "unexpected files in the model directory");
}

static void s_expect_fail(const char *args, const char *needle) {
    cr_assert_neq(s_run(args), 0, "accepted: %s", args);
    char *e = s_stderr();
    cr_assert(strstr(e, needle), "stderr for \"%s\" lacks \"%s\": %s", args, needle, e);
    free(e);
}

Test(mkmodel, bad_flags) {
    char args[512];
    s_expect_fail("", "DIR");
    snprintf(args, sizeof args, "'%s/x' --heads 7", s_tmp);
    s_expect_fail(args, "--heads");
    snprintf(args, sizeof args, "'%s/x' --heads 8 --kv-heads 3", s_tmp);
    s_expect_fail(args, "--kv-heads");
    snprintf(args, sizeof args, "'%s/x' --layers 0", s_tmp);
    s_expect_fail(args, "--layers");
    snprintf(args, sizeof args, "'%s/x' --hidden 12abc", s_tmp);
    s_expect_fail(args, "--hidden");
    snprintf(args, sizeof args, "'%s/x' --dtype f64", s_tmp);
    s_expect_fail(args, "--dtype");
    snprintf(args, sizeof args, "'%s/x' --frobnicate 1", s_tmp);
    s_expect_fail(args, "--frobnicate");
    snprintf(args, sizeof args, "'%s/x' --seed", s_tmp);
    s_expect_fail(args, "--seed");
    snprintf(args, sizeof args, "'%s/x' --seed -1", s_tmp);
    s_expect_fail(args, "--seed");
    snprintf(args, sizeof args, "'%s/x' --hidden 65536 --layers 1024 --intermediate 262144", s_tmp);
    s_expect_fail(args, "GiB");
    // None of these left a model behind.
    char path[300];
    snprintf(path, sizeof path, "%s/x", s_tmp);
    struct stat sb;
    cr_assert_neq(stat(path, &sb), 0);
    // A DIR that cannot be a directory.
    snprintf(args, sizeof args, "'%s/stderr/m' --hidden 64 --heads 4 --kv-heads 2 --layers 1", s_tmp);
    cr_assert_eq(s_run(args), 1);
}

#ifdef KVF_HAVE_TOKENIZER
#include "common/tokenizer.h"

// The generated tokenizer.json loads in the project's tokenizer, adds BOS,
// uses the learned merges and round-trips text.
Test(mkmodel, tokenizer_round_trip) {
    char args[512], dir[300], path[400];
    snprintf(dir, sizeof dir, "%s/t", s_tmp);
    snprintf(args, sizeof args, "'%s' --hidden 64 --layers 1 --heads 4 --kv-heads 2 --intermediate 128", dir);
    cr_assert_eq(s_run(args), 0);
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(dir, &c, &err), 0, "%s", err.msg);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    kvf_tokenizer_t *tok = kvf_tokenizer_load(path, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    cr_assert_eq(kvf_tokenizer_vocab_size(tok), c.vocab_size);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "<|begin_of_text|>"), c.bos_id);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "<|end_of_text|>"), c.eos_ids[0]);
    cr_assert(kvf_tokenizer_is_special(tok, c.bos_id));
    const char *text = "The miller's daughter counted 128 boats on the river, caf\xc3\xa9 \xe2\x9c\x93 and all.";
    int32_t *ids;
    size_t n;
    cr_assert_eq(kvf_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err), 0, "%s", err.msg);
    cr_assert(n > 1);
    cr_assert_eq(ids[0], c.bos_id);
    // Merges were learned: clearly fewer tokens than bytes (about half here).
    cr_assert(n - 1 < strlen(text) * 2 / 3, "%zu tokens for %zu bytes", n - 1, strlen(text));
    char *back;
    cr_assert_eq(kvf_tokenizer_decode(tok, ids + 1, n - 1, &back, &err), 0, "%s", err.msg);
    cr_assert_str_eq(back, text);
    free(back);
    free(ids);
    kvf_tokenizer_destroy(&tok);
}
#endif
