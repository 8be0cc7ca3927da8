// tests/golden_model.h — a fixture model and its golden data from transformers
// (fixtures/README.md), shared by the cpu and cuda golden tests. Header-only.
#ifndef KVF_TEST_GOLDEN_MODEL_H
#define KVF_TEST_GOLDEN_MODEL_H

#include <jansson.h>

#include "common/modelcfg.h"
#include "common/safetensors.h"
#include "test_util.h"

typedef struct {
    kvf_modelcfg_t cfg;
    kvf_safetensors_t *st;
    json_t *golden;
    float *logits;  // (rows, vocab) golden
    int vocab;
} kvf_golden_model_t;

// Opens fixtures/<name> (or its bf16/ copy) with golden.json and the golden
// logits; skips the test when the fixtures are absent.
static inline void kvf_golden_open(kvf_golden_model_t *m, const char *name, int bf16) {
    char dir[1024], path[1200], rel[256];
    snprintf(rel, sizeof rel, "%s%s", name, bf16 ? "/bf16" : "");
    KVF_FIXTURE_PATH(dir, rel);
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(dir, &m->cfg, &err), 0, "%s", err.msg);
    m->st = kvf_safetensors_open_dir(dir, &err);
    cr_assert_not_null(m->st, "%s", err.msg);
    snprintf(rel, sizeof rel, "%s/golden.json", name);
    KVF_FIXTURE_PATH(path, rel);
    json_error_t je;
    m->golden = json_load_file(path, 0, &je);
    cr_assert_not_null(m->golden, "%s: %s", path, je.text);
    m->vocab = (int)json_integer_value(json_object_get(m->golden, "vocab_size"));
    cr_assert_eq(m->vocab, m->cfg.vocab_size);
    snprintf(rel, sizeof rel, "%s/%s", name, json_string_value(json_object_get(m->golden, "logits_file")));
    KVF_FIXTURE_PATH(path, rel);
    size_t len = 0;
    m->logits = (float *)kvf_test_slurp(path, &len);
    cr_assert_not_null(m->logits, "%s", path);
    cr_assert_eq(len % ((size_t)m->vocab * 4), 0);
}

static inline void kvf_golden_close(kvf_golden_model_t *m) {
    kvf_safetensors_destroy(&m->st);
    json_decref(m->golden);
    free(m->logits);
}

static inline int kvf_golden_n_cases(const kvf_golden_model_t *m) { return (int)json_array_size(json_object_get(m->golden, "cases")); }

static inline json_t *kvf_golden_case(const kvf_golden_model_t *m, int c) { return json_array_get(json_object_get(m->golden, "cases"), c); }

#endif
