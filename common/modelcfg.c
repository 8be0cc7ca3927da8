// common/modelcfg.c — see modelcfg.h.
//
// Defaults follow transformers' LlamaConfig / Qwen2Config / MistralConfig where
// a field may be absent (num_key_value_heads, head_dim, rms_norm_eps,
// rope_theta, tie_word_embeddings); the sizes that define the model have no
// default and must be present.
#include "modelcfg.h"

#include <float.h>

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

typedef enum { S_ARCH_LLAMA, S_ARCH_QWEN2, S_ARCH_MISTRAL } s_arch_t;

// ---------------------------------------------------------------- field readers

// A required positive int32 field.
static int s_req_pos_int(json_t *root, const char *name, const char *key, int32_t *out, kvf_err_t *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return kvf_err_set(err, KVF_E_FORMAT, "%s: missing \"%s\"", name, key);
    if (!json_is_integer(v)) return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s\" is not an integer", name, key);
    json_int_t x = json_integer_value(v);
    if (x <= 0 || x > INT32_MAX)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s\" = %lld is out of range (1..%d)", name, key, (long long)x,
                           INT32_MAX);
    *out = (int32_t)x;
    return 0;
}

// An optional positive int32 field: *out is left alone when absent or null.
static int s_opt_pos_int(json_t *root, const char *name, const char *key, int32_t *out, kvf_err_t *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    return s_req_pos_int(root, name, key, out, err);
}

// An optional bool (true/false, or 0/1 as some old configs write); default when absent or null.
static int s_opt_bool(json_t *root, const char *name, const char *key, int def, int32_t *out, kvf_err_t *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
        *out = (int32_t)json_integer_value(v);
        return 0;
    }
    return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s\" is not a boolean", name, key);
}

// An optional finite number (integer or real) in (0, inf); *out left alone when absent or null.
static int s_opt_pos_num(json_t *obj, const char *name, const char *where, const char *key, double *out,
                         kvf_err_t *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s%s\" is not a number", name, where, key);
    double x = json_number_value(v);
    if (!isfinite(x) || x <= 0)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s%s\" = %g must be positive", name, where, key, x);
    *out = x;
    return 0;
}

static int s_req_pos_num(json_t *obj, const char *name, const char *where, const char *key, double *out,
                         kvf_err_t *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return kvf_err_set(err, KVF_E_FORMAT, "%s: missing \"%s%s\"", name, where, key);
    return s_opt_pos_num(obj, name, where, key, out, err);
}

// A token id field: an int, or null/absent (-1).
static int s_token_id(json_t *v, const char *name, const char *key, int32_t vocab, int32_t *out, kvf_err_t *err) {
    if (!json_is_integer(v)) return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s\" is not a token id", name, key);
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= vocab)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s\" = %lld is outside the vocabulary (0..%d)", name, key,
                           (long long)x, vocab - 1);
    *out = (int32_t)x;
    return 0;
}

// ---------------------------------------------------------------- RoPE

// Reads a rope settings object (rope_scaling or rope_parameters). where is the
// prefix for messages ("rope_scaling." or "rope_parameters.").
static int s_rope_object(json_t *obj, const char *name, const char *where, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    json_t *jt = json_object_get(obj, "rope_type");
    const char *tkey = "rope_type";
    if (!jt || json_is_null(jt)) {
        jt = json_object_get(obj, "type");
        tkey = "type";
    }
    const char *type = "default";
    if (jt && !json_is_null(jt)) {
        if (!json_is_string(jt)) return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%s%s\" is not a string", name, where, tkey);
        type = json_string_value(jt);
    }
    json_t *prf = json_object_get(obj, "partial_rotary_factor");
    if (prf && !json_is_null(prf) && !(json_is_number(prf) && json_number_value(prf) == 1.0))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: \"%spartial_rotary_factor\" other than 1 is not supported",
                           name, where);
    if (strcmp(type, "default") == 0) {
        cfg->rope_type = KVF_ROPE_DEFAULT;
        return 0;
    }
    if (strcmp(type, "linear") == 0) {
        cfg->rope_type = KVF_ROPE_LINEAR;
        return s_req_pos_num(obj, name, where, "factor", &cfg->rope_factor, err);
    }
    if (strcmp(type, "llama3") == 0) {
        cfg->rope_type = KVF_ROPE_LLAMA3;
        double orig = 0;
        if (s_req_pos_num(obj, name, where, "factor", &cfg->rope_factor, err) != 0 ||
            s_req_pos_num(obj, name, where, "low_freq_factor", &cfg->rope_low_freq_factor, err) != 0 ||
            s_req_pos_num(obj, name, where, "high_freq_factor", &cfg->rope_high_freq_factor, err) != 0 ||
            s_req_pos_num(obj, name, where, "original_max_position_embeddings", &orig, err) != 0)
            return -1;
        if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
            return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%shigh_freq_factor\" (%g) must exceed \"low_freq_factor\" (%g)",
                               name, where, cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
        if (orig != floor(orig) || orig > INT32_MAX)
            return kvf_err_set(err, KVF_E_FORMAT, "%s: \"%soriginal_max_position_embeddings\" is not an integer", name,
                               where);
        cfg->rope_original_max_position = (int32_t)orig;
        return 0;
    }
    return kvf_err_set(err, KVF_E_UNSUPPORTED,
                       "%s: \"%s%s\" = \"%.40s\" is not supported (default, linear and llama3 are)", name, where, tkey,
                       type);
}

static int s_rope(json_t *root, const char *name, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    cfg->rope_theta = 10000.0;
    cfg->rope_type = KVF_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    if (s_opt_pos_num(root, name, "", "rope_theta", &cfg->rope_theta, err) != 0) return -1;
    json_t *params = json_object_get(root, "rope_parameters");
    if (params && !json_is_null(params)) {
        // transformers 5: everything lives in rope_parameters.
        if (!json_is_object(params))
            return kvf_err_set(err, KVF_E_FORMAT, "%s: \"rope_parameters\" is not an object", name);
        const char *k;
        json_t *sub;
        json_object_foreach(params, k, sub) {
            if (json_is_object(sub))  // {"full_attention": {...}, "sliding_attention": {...}}
                return kvf_err_set(err, KVF_E_UNSUPPORTED,
                                   "%s: \"rope_parameters.%.40s\": RoPE settings per layer type are not supported", name,
                                   k);
        }
        if (s_opt_pos_num(params, name, "rope_parameters.", "rope_theta", &cfg->rope_theta, err) != 0) return -1;
        return s_rope_object(params, name, "rope_parameters.", cfg, err);
    }
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (!scaling || json_is_null(scaling)) return 0;
    if (!json_is_object(scaling))
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"rope_scaling\" is not an object or null", name);
    return s_rope_object(scaling, name, "rope_scaling.", cfg, err);
}

// ---------------------------------------------------------------- parse

static int s_arch(json_t *root, const char *name, kvf_modelcfg_t *cfg, s_arch_t *arch, kvf_err_t *err) {
    json_t *archs = json_object_get(root, "architectures");
    const char *a = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0) {
        if (!json_is_string(json_array_get(archs, 0)))
            return kvf_err_set(err, KVF_E_FORMAT, "%s: \"architectures\"[0] is not a string", name);
        a = json_string_value(json_array_get(archs, 0));
    } else if (archs && !json_is_null(archs)) {
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"architectures\" is not a non-empty list", name);
    } else {
        // No architectures list: fall back on model_type, as transformers does.
        json_t *mt = json_object_get(root, "model_type");
        const char *t = json_is_string(mt) ? json_string_value(mt) : NULL;
        if (!t) return kvf_err_set(err, KVF_E_FORMAT, "%s: missing \"architectures\" (and no \"model_type\")", name);
        if (strcmp(t, "llama") == 0) a = "LlamaForCausalLM";
        else if (strcmp(t, "qwen2") == 0) a = "Qwen2ForCausalLM";
        else if (strcmp(t, "mistral") == 0) a = "MistralForCausalLM";
        else
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: \"model_type\" = \"%.40s\" is not supported", name, t);
    }
    if (strcmp(a, "LlamaForCausalLM") == 0) *arch = S_ARCH_LLAMA;
    else if (strcmp(a, "Qwen2ForCausalLM") == 0) *arch = S_ARCH_QWEN2;
    else if (strcmp(a, "MistralForCausalLM") == 0) *arch = S_ARCH_MISTRAL;
    else
        return kvf_err_set(err, KVF_E_UNSUPPORTED,
                           "%s: \"architectures\" = \"%.60s\" is not supported "
                           "(LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM are)",
                           name, a);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", a);
    return 0;
}

// Sizes, heads and their consistency.
static int s_sizes(json_t *root, const char *name, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    if (s_req_pos_int(root, name, "hidden_size", &cfg->hidden_size, err) != 0 ||
        s_req_pos_int(root, name, "num_hidden_layers", &cfg->n_layers, err) != 0 ||
        s_req_pos_int(root, name, "num_attention_heads", &cfg->n_heads, err) != 0 ||
        s_req_pos_int(root, name, "intermediate_size", &cfg->intermediate_size, err) != 0 ||
        s_req_pos_int(root, name, "vocab_size", &cfg->vocab_size, err) != 0 ||
        s_req_pos_int(root, name, "max_position_embeddings", &cfg->max_position, err) != 0)
        return -1;
    cfg->n_kv_heads = cfg->n_heads;
    if (s_opt_pos_int(root, name, "num_key_value_heads", &cfg->n_kv_heads, err) != 0) return -1;
    if (cfg->n_kv_heads > cfg->n_heads || cfg->n_heads % cfg->n_kv_heads != 0)
        return kvf_err_set(err, KVF_E_FORMAT,
                           "%s: \"num_attention_heads\" (%d) is not a multiple of \"num_key_value_heads\" (%d)", name,
                           cfg->n_heads, cfg->n_kv_heads);
    cfg->head_dim = 0;
    if (s_opt_pos_int(root, name, "head_dim", &cfg->head_dim, err) != 0) return -1;
    if (cfg->head_dim == 0) {
        if (cfg->hidden_size % cfg->n_heads != 0)
            return kvf_err_set(err, KVF_E_FORMAT,
                               "%s: \"hidden_size\" (%d) is not a multiple of \"num_attention_heads\" (%d) and there "
                               "is no \"head_dim\"",
                               name, cfg->hidden_size, cfg->n_heads);
        cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    }
    if (cfg->head_dim % 2 != 0)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"head_dim\" (%d) must be even for RoPE", name, cfg->head_dim);
    if ((int64_t)cfg->head_dim * cfg->n_heads > INT32_MAX)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: \"head_dim\" x \"num_attention_heads\" is too large", name);
    return 0;
}

// Things the engine does not implement, refused by name.
static int s_unsupported(json_t *root, const char *name, s_arch_t arch, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act) && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: \"hidden_act\" other than \"silu\" is not supported", name);
    int32_t mlp_bias = 0;
    if (s_opt_bool(root, name, "mlp_bias", 0, &mlp_bias, err) != 0) return -1;
    if (mlp_bias) return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: \"mlp_bias\" = true is not supported", name);
    json_t *sw = json_object_get(root, "sliding_window");
    int32_t use_sw = 1;  // Mistral uses its window whenever it is set; Qwen2 only with use_sliding_window
    if (arch == S_ARCH_QWEN2 && s_opt_bool(root, name, "use_sliding_window", 0, &use_sw, err) != 0) return -1;
    if (arch != S_ARCH_LLAMA && use_sw && sw && !json_is_null(sw)) {
        if (!json_is_integer(sw))
            return kvf_err_set(err, KVF_E_FORMAT, "%s: \"sliding_window\" is not an integer or null", name);
        if (json_integer_value(sw) < cfg->max_position)
            return kvf_err_set(err, KVF_E_UNSUPPORTED,
                               "%s: \"sliding_window\" = %lld (< max_position_embeddings %d) is not supported", name,
                               (long long)json_integer_value(sw), cfg->max_position);
    }
    return 0;
}

static int s_special_tokens(json_t *root, const char *name, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    cfg->bos_id = -1;
    cfg->n_eos = 0;
    json_t *bos = json_object_get(root, "bos_token_id");
    if (bos && !json_is_null(bos) && s_token_id(bos, name, "bos_token_id", cfg->vocab_size, &cfg->bos_id, err) != 0)
        return -1;
    json_t *eos = json_object_get(root, "eos_token_id");
    if (!eos || json_is_null(eos)) return 0;
    if (json_is_array(eos)) {
        size_t n = json_array_size(eos);
        if (n > KVF_MAX_EOS)
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: \"eos_token_id\" lists %zu ids (at most %d supported)", name,
                               n, KVF_MAX_EOS);
        for (size_t i = 0; i < n; i++)
            if (s_token_id(json_array_get(eos, i), name, "eos_token_id", cfg->vocab_size, &cfg->eos_ids[i], err) != 0)
                return -1;
        cfg->n_eos = (int32_t)n;
        return 0;
    }
    if (s_token_id(eos, name, "eos_token_id", cfg->vocab_size, &cfg->eos_ids[0], err) != 0) return -1;
    cfg->n_eos = 1;
    return 0;
}

int kvf_modelcfg_parse(const char *json_text, const char *name, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    kvf_err_clear(err);
    if (!name) name = "config.json";
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(json_text ? json_text : "", 0, &jerr);
    if (!root)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: not valid JSON (line %d: %s)", name, jerr.line, jerr.text);
    int rc = -1;
    s_arch_t arch = S_ARCH_LLAMA;
    if (!json_is_object(root)) {
        kvf_err_set(err, KVF_E_FORMAT, "%s: not a JSON object", name);
        goto done;
    }
    if (s_arch(root, name, cfg, &arch, err) != 0 || s_sizes(root, name, cfg, err) != 0 ||
        s_unsupported(root, name, arch, cfg, err) != 0)
        goto done;
    double eps = 1e-6;
    if (s_opt_pos_num(root, name, "", "rms_norm_eps", &eps, err) != 0) goto done;
    if (eps < FLT_MIN || eps > 1.0) {  // must survive the cast to float and be a plausible epsilon
        kvf_err_set(err, KVF_E_FORMAT, "%s: rms_norm_eps %g is outside [%g, 1]", name, eps, (double)FLT_MIN);
        goto done;
    }
    cfg->rms_norm_eps = (float)eps;
    if (s_opt_bool(root, name, "tie_word_embeddings", 0, &cfg->tie_word_embeddings, err) != 0) goto done;
    if (arch == S_ARCH_QWEN2) cfg->attention_bias = 1;
    else if (arch == S_ARCH_LLAMA && s_opt_bool(root, name, "attention_bias", 0, &cfg->attention_bias, err) != 0)
        goto done;
    if (s_rope(root, name, cfg, err) != 0 || s_special_tokens(root, name, cfg, err) != 0) goto done;
    json_t *dt = json_object_get(root, "torch_dtype");
    if (!json_is_string(dt)) dt = json_object_get(root, "dtype");  // transformers 5 spelling
    if (json_is_string(dt)) snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_string_value(dt));
    rc = 0;
done:
    json_decref(root);
    return rc;
}

int kvf_modelcfg_load(const char *dir, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    kvf_err_clear(err);
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
        return kvf_err_set(err, KVF_E_INVAL, "%s: path too long", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return kvf_err_set(err, KVF_E_IO, "%s: cannot open: %s", path, strerror(errno));
    // Configs are a few KB; refuse anything absurd rather than read it all.
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                rc = kvf_err_set(err, KVF_E_FORMAT, "%s: larger than 16 MB, not a config", path);
                break;
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = kvf_err_set(err, KVF_E_NOMEM, "%s: out of memory", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, 4096, f);
        len += got;
        if (got < 4096) {
            if (ferror(f)) rc = kvf_err_set(err, KVF_E_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (rc == 0) {
        buf[len] = '\0';
        if (strlen(buf) != len) rc = kvf_err_set(err, KVF_E_FORMAT, "%s: contains a NUL byte", path);
        else rc = kvf_modelcfg_parse(buf, path, cfg, err);
    }
    free(buf);
    return rc;
}

uint64_t kvf_modelcfg_n_params(const kvf_modelcfg_t *cfg) {
    uint64_t h = (uint64_t)cfg->hidden_size, v = (uint64_t)cfg->vocab_size, im = (uint64_t)cfg->intermediate_size;
    uint64_t q = (uint64_t)cfg->n_heads * (uint64_t)cfg->head_dim;
    uint64_t kv = (uint64_t)cfg->n_kv_heads * (uint64_t)cfg->head_dim;
    uint64_t layer = h * q + 2 * h * kv + q * h   // q, k, v, o projections
                     + 3 * h * im                 // gate, up, down
                     + 2 * h;                     // input and post-attention norms
    if (cfg->attention_bias) layer += q + 2 * kv;
    uint64_t n = v * h + (uint64_t)cfg->n_layers * layer + h;
    if (!cfg->tie_word_embeddings) n += v * h;
    return n;
}
