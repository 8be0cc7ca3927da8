// tests/test_safetensors.c — safetensors reading, validation of hostile files,
// sharded models, writing, and the dtype conversions.
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/modelcfg.h"
#include "common/safetensors.h"
#include "test_util.h"

// ---------------------------------------------------------------- helpers

static char s_tmp[256];

static void s_mktmp(void) {
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kvf_st_XXXXXX");
    cr_assert_not_null(mkdtemp(s_tmp));
}

static void s_rmtmp(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(st_files, .init = s_mktmp, .fini = s_rmtmp);
TestSuite(st_shards, .init = s_mktmp, .fini = s_rmtmp);

// Writes a file: an 8-byte header length hlen, then header text, then n_data
// bytes of 0xAB.
static void s_write_raw(const char *path, uint64_t hlen, const char *header, size_t n_data) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(lb, 1, 8, f);
    if (header) fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < n_data; i++) fputc(0xAB, f);
    fclose(f);
}

// Opens a file holding header (with its true length) and n_data bytes; expects
// failure with code and every needle in the message.
static void s_expect_bad(const char *header, size_t n_data, kvf_status code, const char *needle1, const char *needle2) {
    char path[320];
    snprintf(path, sizeof path, "%s/bad.safetensors", s_tmp);
    s_write_raw(path, strlen(header), header, n_data);
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
    cr_assert_null(st, "opened a bad file: %s", header);
    cr_assert_eq(err.code, code, "code %s for %s: %s", kvf_status_name(err.code), header, err.msg);
    cr_assert(strstr(err.msg, "bad.safetensors"), "message does not name the file: %s", err.msg);
    if (needle1) cr_assert(strstr(err.msg, needle1), "message lacks \"%s\": %s", needle1, err.msg);
    if (needle2) cr_assert(strstr(err.msg, needle2), "message lacks \"%s\": %s", needle2, err.msg);
}

// ---------------------------------------------------------------- fixtures

static void s_check_llama(const char *dir, kvf_dtype dt) {
    kvf_modelcfg_t cfg;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(dir, &cfg, &err), 0, "%s", err.msg);
    kvf_safetensors_t *st = kvf_safetensors_open_dir(dir, &err);
    cr_assert_not_null(st, "%s", err.msg);
    int64_t h = cfg.hidden_size, v = cfg.vocab_size, im = cfg.intermediate_size;
    int64_t q = (int64_t)cfg.n_heads * cfg.head_dim, kv = (int64_t)cfg.n_kv_heads * cfg.head_dim;
    size_t expected = 2 + (size_t)cfg.n_layers * 9 + (cfg.tie_word_embeddings ? 0 : 1);
    cr_assert_eq(kvf_safetensors_count(st), expected);
    uint64_t n_elems = 0;
    for (size_t i = 0; i < kvf_safetensors_count(st); i++) {
        const kvf_tensor_t *t = kvf_safetensors_at(st, i);
        cr_assert_eq(t->dtype, dt, "%s", t->name);
        uint64_t e = 1;
        for (int d = 0; d < t->n_dims; d++) e *= (uint64_t)t->shape[d];
        cr_assert_eq(t->n_bytes, e * (dt == KVF_DT_F32 ? 4 : 2));
        n_elems += e;
        if (i) cr_assert(strcmp(kvf_safetensors_at(st, i - 1)->name, t->name) < 0, "listing is sorted");
    }
    cr_assert_eq(n_elems, kvf_modelcfg_n_params(&cfg));
    int64_t s_emb[2] = {v, h}, s_norm[1] = {h}, s_q[2] = {q, h}, s_kv[2] = {kv, h}, s_o[2] = {h, q};
    int64_t s_gate[2] = {im, h}, s_down[2] = {h, im};
    cr_assert_not_null(kvf_safetensors_expect(st, "model.embed_tokens.weight", 2, s_emb, &err), "%s", err.msg);
    cr_assert_not_null(kvf_safetensors_expect(st, "model.norm.weight", 1, s_norm, &err), "%s", err.msg);
    char name[128];
    for (int l = 0; l < cfg.n_layers; l++) {
        struct {
            const char *suffix;
            int nd;
            const int64_t *shape;
        } w[] = {
            {"self_attn.q_proj.weight", 2, s_q},   {"self_attn.k_proj.weight", 2, s_kv},
            {"self_attn.v_proj.weight", 2, s_kv},  {"self_attn.o_proj.weight", 2, s_o},
            {"mlp.gate_proj.weight", 2, s_gate},   {"mlp.up_proj.weight", 2, s_gate},
            {"mlp.down_proj.weight", 2, s_down},   {"input_layernorm.weight", 1, s_norm},
            {"post_attention_layernorm.weight", 1, s_norm},
        };
        for (size_t k = 0; k < sizeof w / sizeof w[0]; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, w[k].suffix);
            cr_assert_not_null(kvf_safetensors_expect(st, name, w[k].nd, w[k].shape, &err), "%s", err.msg);
        }
    }
    const kvf_tensor_t *lm = kvf_safetensors_find(st, "lm_head.weight");
    if (cfg.tie_word_embeddings) cr_assert_null(lm);
    else cr_assert_not_null(kvf_safetensors_expect(st, "lm_head.weight", 2, s_emb, &err), "%s", err.msg);
    // A wrong shape is reported with both shapes.
    int64_t wrong[2] = {h, v};
    cr_assert_null(kvf_safetensors_expect(st, "model.embed_tokens.weight", 2, wrong, &err));
    cr_assert(strstr(err.msg, "model.embed_tokens.weight"), "%s", err.msg);
    char want[64];
    snprintf(want, sizeof want, "[%lld, %lld]", (long long)h, (long long)v);
    cr_assert(strstr(err.msg, want), "%s", err.msg);
    cr_assert_null(kvf_safetensors_expect(st, "model.layers.99.mlp.up_proj.weight", 2, s_gate, &err));
    cr_assert_eq(err.code, KVF_E_NOT_FOUND);
    cr_assert(strstr(err.msg, "model.layers.99.mlp.up_proj.weight"), "%s", err.msg);
    // Norm weights of a trained or HF-initialised model are finite and mostly near 1.
    const kvf_tensor_t *norm = kvf_safetensors_find(st, "model.norm.weight");
    float *buf = malloc(sizeof(float) * (size_t)h);
    kvf_tensor_to_f32(norm, buf);
    for (int64_t i = 0; i < h; i++) cr_assert(isfinite(buf[i]));
    free(buf);
    kvf_safetensors_destroy(&st);
    cr_assert_null(st);
    kvf_safetensors_destroy(&st);  // NULL is fine
}

Test(st_fixtures, tiny_llama_f32) {
    char dir[512];
    KVF_FIXTURE_PATH(dir, "tiny-llama");
    s_check_llama(dir, KVF_DT_F32);
}

Test(st_fixtures, tiny_llama_bf16) {
    char dir[512];
    KVF_FIXTURE_PATH(dir, "tiny-llama/bf16");
    s_check_llama(dir, KVF_DT_BF16);
}

Test(st_fixtures, stories_f32_and_bf16_agree) {
    char d32[512], d16[512];
    KVF_FIXTURE_PATH(d32, "stories260K");
    KVF_FIXTURE_PATH(d16, "stories260K/bf16");
    s_check_llama(d32, KVF_DT_F32);
    s_check_llama(d16, KVF_DT_BF16);
    kvf_err_t err;
    kvf_safetensors_t *a = kvf_safetensors_open_dir(d32, &err);
    kvf_safetensors_t *b = kvf_safetensors_open_dir(d16, &err);
    cr_assert(a && b);
    const kvf_tensor_t *ta = kvf_safetensors_find(a, "model.embed_tokens.weight");
    const kvf_tensor_t *tb = kvf_safetensors_find(b, "model.embed_tokens.weight");
    size_t n = ta->n_bytes / 4;
    float *fa = malloc(n * 4), *fb = malloc(n * 4);
    kvf_tensor_to_f32(ta, fa);
    kvf_tensor_to_f32(tb, fb);
    // The bf16 copy is the f32 weights rounded to nearest even.
    for (size_t i = 0; i < n; i++) cr_assert_eq(kvf_f32_to_bf16(fa[i]), kvf_f32_to_bf16(fb[i]));
    for (size_t i = 0; i < n; i++) cr_assert_eq(fb[i], kvf_bf16_to_f32(kvf_f32_to_bf16(fa[i])), "element %zu", i);
    free(fa);
    free(fb);
    kvf_safetensors_destroy(&a);
    kvf_safetensors_destroy(&b);
}

Test(st_fixtures, open_dir_without_model) {
    char dir[512];
    KVF_FIXTURE_PATH(dir, "configs");
    kvf_err_t err;
    cr_assert_null(kvf_safetensors_open_dir(dir, &err));
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert(strstr(err.msg, "model.safetensors"), "%s", err.msg);
    cr_assert(strstr(err.msg, "index"), "%s", err.msg);
}

// ---------------------------------------------------------------- hostile files

Test(st_files, empty_and_truncated) {
    char path[320];
    kvf_err_t err;
    snprintf(path, sizeof path, "%s/empty.safetensors", s_tmp);
    s_write_raw(path, 0, NULL, 0);
    FILE *f = fopen(path, "wb");  // really empty: no length either
    fclose(f);
    cr_assert_null(kvf_safetensors_open_file(path, &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "empty.safetensors") && strstr(err.msg, "truncated"), "%s", err.msg);

    // Three bytes of a length.
    f = fopen(path, "wb");
    fwrite("\x10\0\0", 1, 3, f);
    fclose(f);
    cr_assert_null(kvf_safetensors_open_file(path, &err));
    cr_assert(strstr(err.msg, "truncated"), "%s", err.msg);

    // A valid file cut in the middle of its data.
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    snprintf(path, sizeof path, "%s/cut.safetensors", s_tmp);
    s_write_raw(path, strlen(hdr), hdr, 8);
    cr_assert_null(kvf_safetensors_open_file(path, &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "\"a\"") && strstr(err.msg, "past the end"), "%s", err.msg);

    cr_assert_null(kvf_safetensors_open_file("/nonexistent/x.safetensors", &err));
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert(strstr(err.msg, "/nonexistent/x.safetensors"), "%s", err.msg);
}

Test(st_files, header_length_past_file) {
    char path[320];
    kvf_err_t err;
    snprintf(path, sizeof path, "%s/long.safetensors", s_tmp);
    s_write_raw(path, 1000, "{}", 0);
    cr_assert_null(kvf_safetensors_open_file(path, &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "header length 1000"), "%s", err.msg);
    // Far past any sane header, and a length whose 8 + N would overflow.
    s_write_raw(path, 1ull << 40, "{}", 0);
    cr_assert_null(kvf_safetensors_open_file(path, &err));
    cr_assert(strstr(err.msg, "limit"), "%s", err.msg);
    s_write_raw(path, UINT64_MAX - 3, "{}", 0);
    cr_assert_null(kvf_safetensors_open_file(path, &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
}

Test(st_files, header_not_json) {
    s_expect_bad("this is not json", 0, KVF_E_FORMAT, "not valid JSON", NULL);
    s_expect_bad("[1, 2, 3]", 0, KVF_E_FORMAT, "not a JSON object", NULL);
    s_expect_bad("{\"a\": 5}", 0, KVF_E_FORMAT, "\"a\"", "not an object");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8, KVF_E_FORMAT, "not valid JSON", NULL);
}

Test(st_files, offsets_and_shapes) {
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,64]}}", 16, KVF_E_FORMAT, "\"w\"",
                 "past the end");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16, KVF_E_FORMAT, "\"w\"",
                 "needs 16");
    s_expect_bad("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, KVF_E_FORMAT, "\"w\"",
                 "needs 8");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,0]}}", 16, KVF_E_FORMAT, "\"w\"",
                 "bad data_offsets");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-2],\"data_offsets\":[0,16]}}", 16, KVF_E_FORMAT, "\"w\"",
                 "shape[1]");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,16]}}",
                 16, KVF_E_FORMAT, "\"w\"", "overflow");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0]}}", 16, KVF_E_FORMAT, "\"w\"",
                 "data_offsets");
    s_expect_bad("{\"w\":{\"shape\":[4],\"data_offsets\":[0,16]}}", 16, KVF_E_FORMAT, "\"w\"", "dtype");
    s_expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, KVF_E_UNSUPPORTED,
                 "\"w\"", "dimensions");
}

Test(st_files, overlapping_tensors) {
    s_expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                 16, KVF_E_FORMAT, "overlap", "\"b\"");
    s_expect_bad("{\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[4,20]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                 20, KVF_E_FORMAT, "\"a\"", "\"b\"");
}

Test(st_files, unsupported_dtype) {
    s_expect_bad("{\"__metadata__\":{\"format\":\"pt\"},\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
                 16, KVF_E_UNSUPPORTED, "\"ids\"", "I64");
    s_expect_bad("{\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, KVF_E_UNSUPPORTED, "\"q\"",
                 "F8_E4M3");
}

Test(st_files, handmade_valid_file) {
    // Metadata ignored, space-padded header, a scalar and an empty tensor.
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                      "\"z\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}   ";
    char path[320];
    snprintf(path, sizeof path, "%s/ok.safetensors", s_tmp);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(hdr);
    for (int i = 0; i < 8; i++) fputc((int)((n >> (8 * i)) & 0xff), f);
    fwrite(hdr, 1, n, f);
    float one = 1.5f;
    fwrite(&one, 4, 1, f);
    const unsigned char h[4] = {0x00, 0x3c, 0x00, 0xc0};  // f16 1.0, -2.0 little-endian
    fwrite(h, 1, 4, f);
    fclose(f);
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
    cr_assert_not_null(st, "%s", err.msg);
    cr_assert_eq(kvf_safetensors_count(st), 3);
    cr_assert_null(kvf_safetensors_find(st, "__metadata__"));
    const kvf_tensor_t *s = kvf_safetensors_find(st, "s");
    cr_assert_eq(s->n_dims, 0);
    float out[2];
    kvf_tensor_to_f32(s, out);
    cr_assert_eq(out[0], 1.5f);
    const kvf_tensor_t *t = kvf_safetensors_find(st, "h");
    kvf_tensor_to_f32(t, out);
    cr_assert_eq(out[0], 1.0f);
    cr_assert_eq(out[1], -2.0f);
    cr_assert_str_eq(t->file, path);
    cr_assert_eq(kvf_safetensors_find(st, "z")->n_bytes, 0);
    kvf_safetensors_destroy(&st);
}

// ---------------------------------------------------------------- writing and shards

static const int64_t s_shape_a[KVF_ST_MAX_DIMS] = {3, 2};
static const int64_t s_shape_b[KVF_ST_MAX_DIMS] = {5};

Test(st_files, write_then_read) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[5];
    for (int i = 0; i < 5; i++) b[i] = kvf_f32_to_bf16((float)i * 0.5f - 1.0f);
    const char *names[] = {"alpha", "beta"};
    kvf_dtype dts[] = {KVF_DT_F32, KVF_DT_BF16};
    int nd[] = {2, 1};
    int64_t shapes[2][KVF_ST_MAX_DIMS];
    memcpy(shapes[0], s_shape_a, sizeof s_shape_a);
    memcpy(shapes[1], s_shape_b, sizeof s_shape_b);
    const void *data[] = {a, b};
    char path[320];
    snprintf(path, sizeof path, "%s/w.safetensors", s_tmp);
    kvf_err_t err;
    cr_assert_eq(kvf_safetensors_write(path, 2, names, dts, nd, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes, data, &err),
                 0, "%s", err.msg);
    size_t len;
    char *raw = kvf_test_slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)raw[i];
    cr_assert_eq(hlen % 8, 0, "header padded to 8 bytes");
    cr_assert_eq(len, 8 + hlen + 24 + 10);
    free(raw);
    kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
    cr_assert_not_null(st, "%s", err.msg);
    const kvf_tensor_t *ta = kvf_safetensors_expect(st, "alpha", 2, s_shape_a, &err);
    cr_assert_not_null(ta, "%s", err.msg);
    cr_assert_eq(memcmp(ta->data, a, sizeof a), 0);
    const kvf_tensor_t *tb = kvf_safetensors_expect(st, "beta", 1, s_shape_b, &err);
    cr_assert_not_null(tb, "%s", err.msg);
    float fb[5];
    kvf_tensor_to_f32(tb, fb);
    for (int i = 0; i < 5; i++) cr_assert_eq(fb[i], (float)i * 0.5f - 1.0f);
    kvf_safetensors_destroy(&st);
    // Writing again over the same path replaces it; no temporary is left.
    cr_assert_eq(kvf_safetensors_write(path, 1, names, dts, nd, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes, data, &err),
                 0, "%s", err.msg);
    st = kvf_safetensors_open_file(path, &err);
    cr_assert_eq(kvf_safetensors_count(st), 1);
    kvf_safetensors_destroy(&st);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | wc -l) -eq 1", s_tmp);
    cr_assert_eq(system(cmd), 0, "temporary file left behind");
    // Duplicate names are refused.
    const char *dup[] = {"alpha", "alpha"};
    cr_assert_eq(kvf_safetensors_write(path, 2, dup, dts, nd, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes, data, &err),
                 -1);
    cr_assert(strstr(err.msg, "alpha"), "%s", err.msg);
}

// Two shards (a: "alpha"; b: "beta") and an index listing both.
static void s_write_sharded(const char *index_extra) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    float b[5] = {7, 8, 9, 10, 11};
    kvf_err_t err;
    char path[320];
    const char *na[] = {"alpha"}, *nb[] = {"beta"};
    kvf_dtype dt[] = {KVF_DT_F32};
    int nda[] = {2}, ndb[] = {1};
    const void *da[] = {a}, *db[] = {b};
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", s_tmp);
    cr_assert_eq(kvf_safetensors_write(path, 1, na, dt, nda, &s_shape_a, da, &err), 0, "%s", err.msg);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", s_tmp);
    cr_assert_eq(kvf_safetensors_write(path, 1, nb, dt, ndb, &s_shape_b, db, &err), 0, "%s", err.msg);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", s_tmp);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "{\"metadata\":{\"total_size\":44},\"weight_map\":{"
            "\"alpha\":\"model-00001-of-00002.safetensors\","
            "\"beta\":\"model-00002-of-00002.safetensors\"%s}}",
            index_extra);
    fclose(f);
}

Test(st_shards, two_shards) {
    s_write_sharded("");
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_dir(s_tmp, &err);
    cr_assert_not_null(st, "%s", err.msg);
    cr_assert_eq(kvf_safetensors_count(st), 2);
    const kvf_tensor_t *a = kvf_safetensors_expect(st, "alpha", 2, s_shape_a, &err);
    const kvf_tensor_t *b = kvf_safetensors_expect(st, "beta", 1, s_shape_b, &err);
    cr_assert(a && b, "%s", err.msg);
    cr_assert(strstr(a->file, "model-00001-of-00002"));
    cr_assert(strstr(b->file, "model-00002-of-00002"));
    float fb[5];
    kvf_tensor_to_f32(b, fb);
    cr_assert_eq(fb[4], 11.0f);
    kvf_safetensors_destroy(&st);
}

Test(st_shards, tensor_missing_from_shard) {
    s_write_sharded(",\"gamma\":\"model-00002-of-00002.safetensors\"");
    kvf_err_t err;
    cr_assert_null(kvf_safetensors_open_dir(s_tmp, &err));
    cr_assert(strstr(err.msg, "\"gamma\"") && strstr(err.msg, "model-00002-of-00002"), "%s", err.msg);
}

Test(st_shards, missing_shard_file) {
    s_write_sharded(",\"gamma\":\"model-00003-of-00002.safetensors\"");
    kvf_err_t err;
    cr_assert_null(kvf_safetensors_open_dir(s_tmp, &err));
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert(strstr(err.msg, "model-00003-of-00002.safetensors") && strstr(err.msg, "missing"), "%s", err.msg);
}

Test(st_shards, shard_outside_dir_and_bad_index) {
    s_write_sharded(",\"gamma\":\"../evil.safetensors\"");
    kvf_err_t err;
    cr_assert_null(kvf_safetensors_open_dir(s_tmp, &err));
    cr_assert(strstr(err.msg, "gamma"), "%s", err.msg);
    char path[320];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", s_tmp);
    FILE *f = fopen(path, "w");
    fputs("{\"metadata\":{}}", f);
    fclose(f);
    cr_assert_null(kvf_safetensors_open_dir(s_tmp, &err));
    cr_assert(strstr(err.msg, "weight_map"), "%s", err.msg);
}

Test(st_shards, single_file_preferred) {
    s_write_sharded(",\"gamma\":\"model-00003-of-00002.safetensors\"");  // a broken index...
    float c[2] = {1, 2};
    const char *n[] = {"only"};
    kvf_dtype dt[] = {KVF_DT_F32};
    int nd[] = {1};
    const int64_t sh[1][KVF_ST_MAX_DIMS] = {{2}};
    const void *d[] = {c};
    char path[320];
    kvf_err_t err;
    snprintf(path, sizeof path, "%s/model.safetensors", s_tmp);
    cr_assert_eq(kvf_safetensors_write(path, 1, n, dt, nd, sh, d, &err), 0);
    kvf_safetensors_t *st = kvf_safetensors_open_dir(s_tmp, &err);  // ...is not read
    cr_assert_not_null(st, "%s", err.msg);
    cr_assert_eq(kvf_safetensors_count(st), 1);
    cr_assert_not_null(kvf_safetensors_find(st, "only"));
    kvf_safetensors_destroy(&st);
}

// ---------------------------------------------------------------- conversions

Test(convert, bf16) {
    cr_assert_eq(kvf_bf16_to_f32(0x3f80), 1.0f);
    cr_assert_eq(kvf_bf16_to_f32(0xc000), -2.0f);
    cr_assert(isinf(kvf_bf16_to_f32(0x7f80)));
    cr_assert(isnan(kvf_bf16_to_f32(0x7fc0)));
    cr_assert_eq(kvf_f32_to_bf16(1.0f), 0x3f80);
    // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
    cr_assert_eq(kvf_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    // 1 + 3*2^-8 is halfway between 0x3f81 and 0x3f82: ties to even (0x3f82).
    cr_assert_eq(kvf_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    cr_assert_eq(kvf_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    cr_assert_eq(kvf_f32_to_bf16(INFINITY), 0x7f80);
    cr_assert_eq(kvf_f32_to_bf16(-INFINITY), 0xff80);
    cr_assert(isnan(kvf_bf16_to_f32(kvf_f32_to_bf16(NAN))));
    // A NaN whose payload sits only in the low bits must not become inf.
    uint32_t u = 0x7f800001u;
    float f;
    memcpy(&f, &u, 4);
    cr_assert(isnan(kvf_bf16_to_f32(kvf_f32_to_bf16(f))));
    // The largest finite float rounds to inf.
    cr_assert_eq(kvf_f32_to_bf16(3.4028235e38f), 0x7f80);
    // Every bf16 value round-trips exactly.
    for (uint32_t h = 0; h < 0x10000; h++) {
        float x = kvf_bf16_to_f32((uint16_t)h);
        if (!isnan(x)) cr_assert_eq(kvf_f32_to_bf16(x), h, "bf16 %04x", h);
    }
}

Test(convert, f16) {
    cr_assert_eq(kvf_f16_to_f32(0x3c00), 1.0f);
    cr_assert_eq(kvf_f16_to_f32(0xc000), -2.0f);
    cr_assert_eq(kvf_f16_to_f32(0x7bff), 65504.0f);
    cr_assert_eq(kvf_f16_to_f32(0x0001), 0x1p-24f);   // smallest subnormal
    cr_assert_eq(kvf_f16_to_f32(0x03ff), 1023 * 0x1p-24f);
    cr_assert_eq(kvf_f16_to_f32(0x0400), 0x1p-14f);   // smallest normal
    cr_assert_eq(kvf_f16_to_f32(0x8001), -0x1p-24f);
    cr_assert(signbit(kvf_f16_to_f32(0x8000)) && kvf_f16_to_f32(0x8000) == 0.0f);
    cr_assert(isinf(kvf_f16_to_f32(0x7c00)) && kvf_f16_to_f32(0x7c00) > 0);
    cr_assert(isinf(kvf_f16_to_f32(0xfc00)) && kvf_f16_to_f32(0xfc00) < 0);
    cr_assert(isnan(kvf_f16_to_f32(0x7e00)));
    cr_assert(isnan(kvf_f16_to_f32(0x7c01)));
    // Every f16 value round-trips exactly (subnormals included).
    for (uint32_t h = 0; h < 0x10000; h++) {
        float x = kvf_f16_to_f32((uint16_t)h);
        if (isnan(x)) cr_assert(isnan(kvf_f16_to_f32(kvf_f32_to_f16(x))), "f16 %04x", h);
        else cr_assert_eq(kvf_f32_to_f16(x), h, "f16 %04x -> %a -> %04x", h, (double)x, kvf_f32_to_f16(x));
    }
    // Rounding: ties to even, overflow to inf, underflow to zero.
    cr_assert_eq(kvf_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);        // tie, even is 1.0
    cr_assert_eq(kvf_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);    // tie, even is up
    cr_assert_eq(kvf_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    cr_assert_eq(kvf_f32_to_f16(65519.0f), 0x7bff);
    cr_assert_eq(kvf_f32_to_f16(65520.0f), 0x7c00);
    cr_assert_eq(kvf_f32_to_f16(1e10f), 0x7c00);
    cr_assert_eq(kvf_f32_to_f16(-1e10f), 0xfc00);
    cr_assert_eq(kvf_f32_to_f16(0x1p-25f), 0x0000);               // tie between 0 and 2^-24: even
    cr_assert_eq(kvf_f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
    cr_assert_eq(kvf_f32_to_f16(3 * 0x1p-25f), 0x0002);           // 1.5 ulp: tie, even is 2
    cr_assert_eq(kvf_f32_to_f16(1e-10f), 0x0000);
    cr_assert_eq(kvf_f32_to_f16(-1e-10f), 0x8000);
    cr_assert_eq(kvf_f32_to_f16(0x1p-14f - 0x1p-26f), 0x0400);    // rounds up into the smallest normal
    cr_assert_eq(kvf_f32_to_f16(INFINITY), 0x7c00);
    cr_assert(isnan(kvf_f16_to_f32(kvf_f32_to_f16(NAN))));
    // Against double arithmetic on a sweep of values: the nearest f16 wins.
    for (int i = 0; i < 20000; i++) {
        float x = ldexpf(1.0f + (float)i / 20000.0f, (i % 40) - 26) * ((i & 1) ? -1.0f : 1.0f);
        float y = kvf_f16_to_f32(kvf_f32_to_f16(x));
        uint16_t hy = kvf_f32_to_f16(x);
        float up = kvf_f16_to_f32((uint16_t)(hy + 1)), dn = kvf_f16_to_f32((uint16_t)(hy - 1));
        double e = fabs((double)y - x);
        if (!isinf(up)) cr_assert(e <= fabs((double)up - x), "%a", (double)x);
        if ((hy & 0x7fff) != 0) cr_assert(e <= fabs((double)dn - x), "%a", (double)x);
    }
}

// ---------------------------------------------------------------- corrupted bytes

// Bytes of a valid file flipped at random (seeded): every open either fails
// with a message or yields tensors that lie inside the file.
Test(st_files, random_corruption_never_crashes) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[5] = {1, 2, 3, 4, 5};
    const char *names[] = {"alpha", "beta"};
    kvf_dtype dts[] = {KVF_DT_F32, KVF_DT_F16};
    int nd[] = {2, 1};
    const int64_t shapes[2][KVF_ST_MAX_DIMS] = {{3, 2}, {5}};
    const void *data[] = {a, b};
    char path[320];
    snprintf(path, sizeof path, "%s/c.safetensors", s_tmp);
    kvf_err_t err;
    cr_assert_eq(kvf_safetensors_write(path, 2, names, dts, nd, shapes, data, &err), 0, "%s", err.msg);
    size_t len = 0;
    unsigned char *orig = (unsigned char *)kvf_test_slurp(path, &len);
    unsigned char *buf = malloc(len);
    uint64_t rng = 12345;
    int opened = 0, refused = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(buf, orig, len);
        size_t cut = len;
        for (int k = 0; k < 1 + iter % 3; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(rng >> 33) % (len - 24);  // mostly the header
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            buf[pos] = (unsigned char)(rng >> 56);
        }
        if (iter % 7 == 0) cut = (size_t)(rng >> 40) % len;  // sometimes truncated too
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, cut, f);
        fclose(f);
        kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
        if (!st) {
            cr_assert(err.code != KVF_OK && err.msg[0], "failure without a message");
            refused++;
            continue;
        }
        opened++;
        for (size_t i = 0; i < kvf_safetensors_count(st); i++) {
            const kvf_tensor_t *t = kvf_safetensors_at(st, i);
            float tmp[64];
            if (t->n_bytes <= sizeof tmp) kvf_tensor_to_f32(t, tmp);  // reads inside the mapping (ASan-checked)
        }
        kvf_safetensors_destroy(&st);
    }
    cr_assert(refused > 100, "only %d corrupted files refused", refused);
    cr_assert(opened > 0, "no harmless corruption (e.g. in a name) was accepted");
    free(orig);
    free(buf);
}
