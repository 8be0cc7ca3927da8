// tests/fuzz/fuzz_modelcfg.c — libFuzzer target over the config.json parser
// (kvf_modelcfg_parse on the input as NUL-terminated text).
//
// Checks beyond the sanitizers, from modelcfg.h: a refusal says why and names
// the file; an accepted config has positive sizes, heads that divide
// (n_heads a multiple of n_kv_heads), an even head_dim, a positive finite
// rms_norm_eps as the float the engine uses, special-token ids
// inside the vocabulary, at most KVF_MAX_EOS eos ids and a supported
// architecture and RoPE type; its parameter count is computed.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/modelcfg.h"

static void s_fail(const char *what, const kvf_err_t *err) {
    fprintf(stderr, "fuzz_modelcfg: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    char *text = malloc(len + 1);
    if (!text) return 0;
    memcpy(text, data, len);
    text[len] = '\0';
    kvf_modelcfg_t cfg;
    kvf_err_t err;
    int rc = kvf_modelcfg_parse(text, "fuzz/config.json", &cfg, &err);
    free(text);
    if (rc != 0) {
        if (!strstr(err.msg, "fuzz/config.json")) s_fail("a refusal does not name the file", &err);
        return 0;
    }
    if (cfg.hidden_size <= 0 || cfg.n_layers <= 0 || cfg.n_heads <= 0 || cfg.n_kv_heads <= 0 ||
        cfg.head_dim <= 0 || cfg.intermediate_size <= 0 || cfg.vocab_size <= 0 || cfg.max_position <= 0)
        s_fail("accepted a non-positive size", NULL);
    if (cfg.n_kv_heads > cfg.n_heads || cfg.n_heads % cfg.n_kv_heads != 0)
        s_fail("accepted heads that do not divide", NULL);
    if (cfg.head_dim % 2 != 0) s_fail("accepted an odd head_dim", NULL);
    // The file's double becomes a float: 1e-50 must not turn into 0, nor 1e39 into inf.
    if (!(cfg.rms_norm_eps > 0.0f) || !isfinite(cfg.rms_norm_eps))
        s_fail("accepted an rms_norm_eps that is not a positive finite float", NULL);
    if (!(cfg.rope_theta > 0.0)) s_fail("accepted a non-positive rope_theta", NULL);
    if (cfg.rope_type != KVF_ROPE_DEFAULT && cfg.rope_type != KVF_ROPE_LINEAR && cfg.rope_type != KVF_ROPE_LLAMA3)
        s_fail("accepted an unknown rope type", NULL);
    if (cfg.bos_id < -1 || cfg.bos_id >= cfg.vocab_size) s_fail("bos id outside the vocabulary", NULL);
    if (cfg.n_eos < 0 || cfg.n_eos > KVF_MAX_EOS) s_fail("too many eos ids", NULL);
    for (int32_t i = 0; i < cfg.n_eos; i++)
        if (cfg.eos_ids[i] < 0 || cfg.eos_ids[i] >= cfg.vocab_size) s_fail("eos id outside the vocabulary", NULL);
    if (!memchr(cfg.architecture, 0, sizeof cfg.architecture) || !memchr(cfg.torch_dtype, 0, sizeof cfg.torch_dtype))
        s_fail("unterminated string in the config", NULL);
    if (strcmp(cfg.architecture, "LlamaForCausalLM") != 0 && strcmp(cfg.architecture, "Qwen2ForCausalLM") != 0 &&
        strcmp(cfg.architecture, "MistralForCausalLM") != 0)
        s_fail("accepted an unsupported architecture", NULL);
    if (kvf_modelcfg_n_params(&cfg) == 0) s_fail("zero parameters", NULL);
    return 0;
}
