// tests/test_modelcfg.c — config.json parsing: the fixture models, the real
// published configs, both RoPE forms, and errors that name their field.
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/modelcfg.h"
#include "test_util.h"

static kvf_modelcfg_t s_load_fixture(const char *rel) {
    char dir[512];
    KVF_FIXTURE_PATH(dir, rel);
    kvf_modelcfg_t cfg;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(dir, &cfg, &err), 0, "%s: %s", rel, err.msg);
    return cfg;
}

// Loads configs/<file> (a bare JSON file, not a model directory) with parse().
static kvf_modelcfg_t s_load_config_file(const char *file) {
    char path[512];
    KVF_FIXTURE_PATH(path, file);
    char *text = kvf_test_slurp(path, NULL);
    cr_assert_not_null(text, "%s", path);
    kvf_modelcfg_t cfg;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_parse(text, path, &cfg, &err), 0, "%s", err.msg);
    free(text);
    return cfg;
}

// ---------------------------------------------------------------- fixtures

Test(modelcfg_fixtures, tiny_llama) {
    const char *dirs[] = {"tiny-llama", "tiny-llama/bf16"};
    for (int i = 0; i < 2; i++) {
        kvf_modelcfg_t c = s_load_fixture(dirs[i]);
        cr_assert_str_eq(c.architecture, "LlamaForCausalLM");
        cr_assert_eq(c.hidden_size, 128);
        cr_assert_eq(c.n_layers, 2);
        cr_assert_eq(c.n_heads, 4);
        cr_assert_eq(c.n_kv_heads, 2);
        cr_assert_eq(c.head_dim, 32);
        cr_assert_eq(c.intermediate_size, 344);
        cr_assert_eq(c.vocab_size, 2048);
        cr_assert_eq(c.max_position, 1024);
        cr_assert_float_eq(c.rms_norm_eps, 1e-5f, 1e-12);
        cr_assert_eq(c.tie_word_embeddings, 0);
        cr_assert_eq(c.attention_bias, 0);
        cr_assert_eq(c.rope_theta, 10000.0);
        cr_assert_eq(c.rope_type, KVF_ROPE_DEFAULT);
        cr_assert_eq(c.bos_id, 0);
        cr_assert_eq(c.n_eos, 1);
        cr_assert_eq(c.eos_ids[0], 1);
        cr_assert_str_eq(c.torch_dtype, "");
        // 2048*128*2 + 2 * (128*128*2 + 64*128*2 + 3*128*344 + 256) + 128
        cr_assert_eq(kvf_modelcfg_n_params(&c), 887424ull);
    }
}

Test(modelcfg_fixtures, stories260k_is_tied) {
    const char *dirs[] = {"stories260K", "stories260K/bf16"};
    for (int i = 0; i < 2; i++) {
        kvf_modelcfg_t c = s_load_fixture(dirs[i]);
        cr_assert_eq(c.hidden_size, 64);
        cr_assert_eq(c.n_layers, 5);
        cr_assert_eq(c.n_heads, 8);
        cr_assert_eq(c.n_kv_heads, 4);
        cr_assert_eq(c.head_dim, 8);
        cr_assert_eq(c.intermediate_size, 172);
        cr_assert_eq(c.vocab_size, 512);
        cr_assert_eq(c.max_position, 512);
        cr_assert_eq(c.tie_word_embeddings, 1);
        cr_assert_eq(c.bos_id, 1);
        cr_assert_eq(c.eos_ids[0], 2);
        // 512*64 + 5 * (64*64*2 + 32*64*2 + 3*64*172 + 128) + 64: no lm_head
        cr_assert_eq(kvf_modelcfg_n_params(&c), 260032ull);
    }
}

Test(modelcfg_fixtures, llama3_8b) {
    kvf_modelcfg_t c = s_load_config_file("configs/llama3-8b.json");
    cr_assert_eq(c.hidden_size, 4096);
    cr_assert_eq(c.n_layers, 32);
    cr_assert_eq(c.n_heads, 32);
    cr_assert_eq(c.n_kv_heads, 8);
    cr_assert_eq(c.head_dim, 128);  // derived: 4096 / 32
    cr_assert_eq(c.intermediate_size, 14336);
    cr_assert_eq(c.vocab_size, 128256);
    cr_assert_eq(c.max_position, 8192);
    cr_assert_eq(c.rope_theta, 500000.0);
    cr_assert_eq(c.rope_type, KVF_ROPE_DEFAULT);  // rope_scaling: null
    cr_assert_eq(c.bos_id, 128000);
    cr_assert_eq(c.n_eos, 1);
    cr_assert_eq(c.eos_ids[0], 128001);
    cr_assert_str_eq(c.torch_dtype, "bfloat16");
    cr_assert_eq(kvf_modelcfg_n_params(&c), 8030261248ull);  // Meta-Llama-3-8B's published count
}

Test(modelcfg_fixtures, llama31_scaling) {
    const char *files[] = {"configs/llama3.1-8b.json", "configs/llama3.1-70b.json"};
    for (int i = 0; i < 2; i++) {
        kvf_modelcfg_t c = s_load_config_file(files[i]);
        cr_assert_eq(c.max_position, 131072);
        cr_assert_eq(c.rope_type, KVF_ROPE_LLAMA3);
        cr_assert_eq(c.rope_theta, 500000.0);
        cr_assert_eq(c.rope_factor, 8.0);
        cr_assert_eq(c.rope_low_freq_factor, 1.0);
        cr_assert_eq(c.rope_high_freq_factor, 4.0);
        cr_assert_eq(c.rope_original_max_position, 8192);
        cr_assert_eq(c.n_eos, 3);
        cr_assert_eq(c.eos_ids[0], 128001);
        cr_assert_eq(c.eos_ids[1], 128008);
        cr_assert_eq(c.eos_ids[2], 128009);
    }
    kvf_modelcfg_t c = s_load_config_file("configs/llama3.1-70b.json");
    cr_assert_eq(c.hidden_size, 8192);
    cr_assert_eq(c.n_layers, 80);
    cr_assert_eq(c.n_heads, 64);
    cr_assert_eq(c.head_dim, 128);
    cr_assert_eq(kvf_modelcfg_n_params(&c), 70553706496ull);
}

Test(modelcfg_fixtures, qwen25_7b) {
    kvf_modelcfg_t c = s_load_config_file("configs/qwen2.5-7b.json");
    cr_assert_str_eq(c.architecture, "Qwen2ForCausalLM");
    cr_assert_eq(c.hidden_size, 3584);
    cr_assert_eq(c.n_heads, 28);
    cr_assert_eq(c.n_kv_heads, 4);
    cr_assert_eq(c.head_dim, 128);
    cr_assert_eq(c.attention_bias, 1);
    cr_assert_eq(c.vocab_size, 152064);
    cr_assert_eq(c.rope_theta, 1000000.0);
    cr_assert_float_eq(c.rms_norm_eps, 1e-6f, 1e-13);
    cr_assert_eq(c.bos_id, 151643);
    cr_assert_eq(c.eos_ids[0], 151643);
    cr_assert_eq(kvf_modelcfg_n_params(&c), 7615616512ull);  // Qwen2.5-7B's published count
}

Test(modelcfg_fixtures, missing_dir) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load("/nonexistent/model", &c, &err), -1);
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert(strstr(err.msg, "/nonexistent/model/config.json"), "%s", err.msg);
}

// ---------------------------------------------------------------- synthetic

// A minimal Llama config with extra text spliced in before the closing brace.
static int s_parse(const char *extra, kvf_modelcfg_t *c, kvf_err_t *err) {
    char text[4096];
    snprintf(text, sizeof text,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"num_hidden_layers\":2,"
             "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
             "\"max_position_embeddings\":2048%s}",
             extra);
    return kvf_modelcfg_parse(text, "test.json", c, err);
}

static void s_expect_err(const char *text, kvf_status code, const char *field) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_parse(text, "test.json", &c, &err), -1, "accepted: %s", text);
    cr_assert_eq(err.code, code, "%s: %s", kvf_status_name(err.code), err.msg);
    cr_assert(strstr(err.msg, "test.json"), "%s", err.msg);
    cr_assert(strstr(err.msg, field), "message lacks \"%s\": %s", field, err.msg);
}

static void s_expect_err_extra(const char *extra, kvf_status code, const char *field) {
    char text[4096];
    snprintf(text, sizeof text,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"num_hidden_layers\":2,"
             "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
             "\"max_position_embeddings\":2048%s}",
             extra);
    s_expect_err(text, code, field);
}

Test(modelcfg, defaults) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(s_parse("", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_kv_heads, 8);
    cr_assert_eq(c.head_dim, 32);
    cr_assert_eq(c.tie_word_embeddings, 0);
    cr_assert_eq(c.attention_bias, 0);
    cr_assert_eq(c.rope_theta, 10000.0);
    cr_assert_eq(c.rope_type, KVF_ROPE_DEFAULT);
    cr_assert_float_eq(c.rms_norm_eps, 1e-6f, 1e-13);
    cr_assert_eq(c.bos_id, -1);
    cr_assert_eq(c.n_eos, 0);
    // Explicit head_dim need not equal hidden / heads; null means "derive".
    cr_assert_eq(s_parse(",\"head_dim\":64,\"num_key_value_heads\":2", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.head_dim, 64);
    cr_assert_eq(c.n_kv_heads, 2);
    cr_assert_eq(s_parse(",\"head_dim\":null,\"num_key_value_heads\":null", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.head_dim, 32);
    cr_assert_eq(c.n_kv_heads, 8);
    cr_assert_eq(s_parse(",\"tie_word_embeddings\":true,\"attention_bias\":true", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.tie_word_embeddings, 1);
    cr_assert_eq(c.attention_bias, 1);
    // transformers 5 spells torch_dtype "dtype".
    cr_assert_eq(s_parse(",\"dtype\":\"float32\"", &c, &err), 0, "%s", err.msg);
    cr_assert_str_eq(c.torch_dtype, "float32");
}

Test(modelcfg, rope_top_level) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(s_parse(",\"rope_theta\":500000.0,\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}", &c, &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.rope_theta, 500000.0);
    cr_assert_eq(c.rope_type, KVF_ROPE_LINEAR);
    cr_assert_eq(c.rope_factor, 4.0);
    cr_assert_eq(s_parse(",\"rope_theta\":1e6,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32,"
                         "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}",
                         &c, &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.rope_theta, 1e6);
    cr_assert_eq(c.rope_type, KVF_ROPE_LLAMA3);
    cr_assert_eq(c.rope_factor, 32.0);
    cr_assert_eq(c.rope_low_freq_factor, 1.0);
    cr_assert_eq(c.rope_high_freq_factor, 4.0);
    cr_assert_eq(c.rope_original_max_position, 8192);
    cr_assert_eq(s_parse(",\"rope_scaling\":{\"rope_type\":\"default\"}", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.rope_type, KVF_ROPE_DEFAULT);
}

Test(modelcfg, rope_parameters) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(s_parse(",\"rope_parameters\":{\"rope_theta\":250000.0,\"rope_type\":\"default\"}", &c, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(c.rope_theta, 250000.0);
    cr_assert_eq(c.rope_type, KVF_ROPE_DEFAULT);
    cr_assert_eq(s_parse(",\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":\"llama3\",\"factor\":8.0,"
                         "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                         "\"original_max_position_embeddings\":8192}",
                         &c, &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.rope_theta, 500000.0);
    cr_assert_eq(c.rope_type, KVF_ROPE_LLAMA3);
    cr_assert_eq(c.rope_factor, 8.0);
    cr_assert_eq(c.rope_high_freq_factor, 4.0);
    cr_assert_eq(c.rope_original_max_position, 8192);
    cr_assert_eq(s_parse(",\"rope_parameters\":{\"rope_theta\":10000.0,\"rope_type\":\"linear\",\"factor\":2.5}", &c,
                         &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.rope_type, KVF_ROPE_LINEAR);
    cr_assert_eq(c.rope_factor, 2.5);
    s_expect_err_extra(",\"rope_parameters\":{\"rope_theta\":10000.0,\"rope_type\":\"yarn\",\"factor\":4.0}",
                       KVF_E_UNSUPPORTED, "yarn");
    s_expect_err_extra(",\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":8.0}", KVF_E_FORMAT,
                       "rope_parameters.low_freq_factor");
    s_expect_err_extra(",\"rope_parameters\":{\"full_attention\":{\"rope_theta\":1e6,\"rope_type\":\"default\"}}",
                       KVF_E_UNSUPPORTED, "rope_parameters.full_attention");
    s_expect_err_extra(",\"rope_parameters\":[1]", KVF_E_FORMAT, "rope_parameters");
}

Test(modelcfg, rope_errors) {
    s_expect_err_extra(",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0}", KVF_E_UNSUPPORTED, "yarn");
    s_expect_err_extra(",\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":2.0}", KVF_E_UNSUPPORTED, "dynamic");
    s_expect_err_extra(",\"rope_scaling\":{\"type\":\"linear\"}", KVF_E_FORMAT, "rope_scaling.factor");
    s_expect_err_extra(",\"rope_scaling\":{\"type\":\"linear\",\"factor\":-1}", KVF_E_FORMAT, "factor");
    s_expect_err_extra(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,"
                       "\"high_freq_factor\":1,\"original_max_position_embeddings\":8192}",
                       KVF_E_FORMAT, "high_freq_factor");
    s_expect_err_extra(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
                       "\"high_freq_factor\":4}",
                       KVF_E_FORMAT, "original_max_position_embeddings");
    s_expect_err_extra(",\"rope_scaling\":\"linear\"", KVF_E_FORMAT, "rope_scaling");
    s_expect_err_extra(",\"rope_theta\":-5", KVF_E_FORMAT, "rope_theta");
    s_expect_err_extra(",\"rope_theta\":\"big\"", KVF_E_FORMAT, "rope_theta");
}

Test(modelcfg, qwen2_bias_and_window) {
    const char *base = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":896,\"num_hidden_layers\":24,"
                       "\"num_attention_heads\":14,\"num_key_value_heads\":2,\"intermediate_size\":4864,"
                       "\"vocab_size\":151936,\"max_position_embeddings\":32768,\"rope_theta\":1000000.0,"
                       "\"tie_word_embeddings\":true,\"sliding_window\":4096%s}";
    char text[2048];
    kvf_modelcfg_t c;
    kvf_err_t err;
    snprintf(text, sizeof text, base, ",\"use_sliding_window\":false");
    cr_assert_eq(kvf_modelcfg_parse(text, "q.json", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.attention_bias, 1);
    cr_assert_eq(c.head_dim, 64);
    cr_assert_eq(c.tie_word_embeddings, 1);
    // Qwen2.5-0.5B: 494,032,768 parameters with tied embeddings.
    cr_assert_eq(kvf_modelcfg_n_params(&c), 494032768ull);
    snprintf(text, sizeof text, base, ",\"use_sliding_window\":true");
    s_expect_err(text, KVF_E_UNSUPPORTED, "sliding_window");
}

Test(modelcfg, mistral_window) {
    const char *base = "{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":4096,\"num_hidden_layers\":32,"
                       "\"num_attention_heads\":32,\"num_key_value_heads\":8,\"intermediate_size\":14336,"
                       "\"vocab_size\":32768,\"max_position_embeddings\":32768,\"sliding_window\":%s}";
    char text[2048];
    kvf_modelcfg_t c;
    kvf_err_t err;
    snprintf(text, sizeof text, base, "null");
    cr_assert_eq(kvf_modelcfg_parse(text, "m.json", &c, &err), 0, "%s", err.msg);
    cr_assert_str_eq(c.architecture, "MistralForCausalLM");
    cr_assert_eq(c.attention_bias, 0);
    snprintf(text, sizeof text, base, "32768");
    cr_assert_eq(kvf_modelcfg_parse(text, "m.json", &c, &err), 0, "%s", err.msg);
    snprintf(text, sizeof text, base, "4096");
    s_expect_err(text, KVF_E_UNSUPPORTED, "sliding_window");
}

Test(modelcfg, eos_forms) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    cr_assert_eq(s_parse(",\"bos_token_id\":5,\"eos_token_id\":[7,8,9,10]", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.bos_id, 5);
    cr_assert_eq(c.n_eos, 4);
    cr_assert_eq(c.eos_ids[3], 10);
    cr_assert_eq(s_parse(",\"bos_token_id\":null,\"eos_token_id\":null", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.bos_id, -1);
    cr_assert_eq(c.n_eos, 0);
    cr_assert_eq(s_parse(",\"eos_token_id\":[]", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_eos, 0);
    s_expect_err_extra(",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]", KVF_E_UNSUPPORTED, "eos_token_id");
    s_expect_err_extra(",\"eos_token_id\":1000", KVF_E_FORMAT, "eos_token_id");
    s_expect_err_extra(",\"eos_token_id\":[1,\"x\"]", KVF_E_FORMAT, "eos_token_id");
    s_expect_err_extra(",\"bos_token_id\":-3", KVF_E_FORMAT, "bos_token_id");
}

Test(modelcfg, errors_name_the_field) {
    s_expect_err("{\"architectures\":[\"GPT2LMHeadModel\"],\"hidden_size\":256}", KVF_E_UNSUPPORTED,
                 "GPT2LMHeadModel");
    s_expect_err("{\"hidden_size\":256}", KVF_E_FORMAT, "architectures");
    s_expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2,\"num_attention_heads\":8,"
                 "\"intermediate_size\":688,\"vocab_size\":1000,\"max_position_embeddings\":2048}",
                 KVF_E_FORMAT, "hidden_size");
    s_expect_err("{\"architectures\":[\"LlamaForCausalLM\"], \"hidden_size\": 256,", KVF_E_FORMAT, "not valid JSON");
    s_expect_err("", KVF_E_FORMAT, "not valid JSON");
    s_expect_err("[1]", KVF_E_FORMAT, "not a JSON object");
    s_expect_err_extra(",\"num_key_value_heads\":3", KVF_E_FORMAT, "num_key_value_heads");
    s_expect_err_extra(",\"num_key_value_heads\":16", KVF_E_FORMAT, "num_key_value_heads");
    s_expect_err_extra(",\"num_key_value_heads\":0", KVF_E_FORMAT, "num_key_value_heads");
    s_expect_err_extra(",\"mlp_bias\":true", KVF_E_UNSUPPORTED, "mlp_bias");
    s_expect_err_extra(",\"hidden_act\":\"gelu\"", KVF_E_UNSUPPORTED, "hidden_act");
    s_expect_err_extra(",\"rms_norm_eps\":0", KVF_E_FORMAT, "rms_norm_eps");
    s_expect_err_extra(",\"tie_word_embeddings\":\"yes\"", KVF_E_FORMAT, "tie_word_embeddings");
    s_expect_err_extra(",\"head_dim\":33", KVF_E_FORMAT, "head_dim");
    // hidden not divisible by heads and no head_dim to say otherwise.
    s_expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":250,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
                 "\"max_position_embeddings\":2048}",
                 KVF_E_FORMAT, "head_dim");
    s_expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-256,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
                 "\"max_position_embeddings\":2048}",
                 KVF_E_FORMAT, "hidden_size");
    s_expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256.5,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
                 "\"max_position_embeddings\":2048}",
                 KVF_E_FORMAT, "hidden_size");
    s_expect_err("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
                 "\"max_position_embeddings\":99999999999}",
                 KVF_E_FORMAT, "max_position_embeddings");
}

Test(modelcfg, model_type_fallback) {
    kvf_modelcfg_t c;
    kvf_err_t err;
    const char *t = "{\"model_type\":\"qwen2\",\"hidden_size\":256,\"num_hidden_layers\":2,"
                    "\"num_attention_heads\":8,\"intermediate_size\":688,\"vocab_size\":1000,"
                    "\"max_position_embeddings\":2048}";
    cr_assert_eq(kvf_modelcfg_parse(t, "t.json", &c, &err), 0, "%s", err.msg);
    cr_assert_str_eq(c.architecture, "Qwen2ForCausalLM");
    cr_assert_eq(c.attention_bias, 1);
}
