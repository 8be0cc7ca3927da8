// worker/kvf_mkmodel.c — kvf-mkmodel: writes a seeded random Llama model in
// Hugging Face layout (config.json, model.safetensors, tokenizer.json,
// tokenizer_config.json), for tests and benchmarks that need a model of a
// given shape without downloading one.
//
// The weights depend only on the seed and the shape, through integer
// arithmetic and exactly rounded float multiplies (no libm), so the same flags
// give byte-identical files on every machine.
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/args.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "mkmodel_tok.h"

#define S_N_MERGES 250
// Refuse to build more than this in memory (the weights are held until written).
#define S_MAX_BYTES (64ull << 30)

typedef struct {
    const char *dir;
    uint64_t seed;
    int32_t hidden, layers, heads, kv_heads, intermediate, max_position;
    kvf_dtype dtype;
} s_opts_t;

// ---------------------------------------------------------------- random weights

// splitmix64: a seed-able generator whose output is the same everywhere.
static uint64_t s_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// An approximately normal sample with standard deviation std: the sum of four
// 16-bit uniforms (Irwin-Hall), centred and scaled to unit variance. Bounded
// at about 3.5 sigma, which is all a random test model needs.
static float s_normal(uint64_t *state, float std) {
    uint64_t r = s_next(state);
    int32_t sum = (int32_t)(r & 0xFFFF) + (int32_t)((r >> 16) & 0xFFFF) + (int32_t)((r >> 32) & 0xFFFF) +
                  (int32_t)(r >> 48) - 2 * 65535;
    // Var of one uniform on [0, 65535] is 65536^2/12; four of them: 65536^2/3.
    const float inv_sd = 1.7320508f / 65536.0f;
    return (float)sum * inv_sd * std;
}

typedef struct {
    char name[96];
    int n_dims;
    int64_t shape[KVF_ST_MAX_DIMS];
    void *data;
} s_tensor_t;

// Fills t with N(0, 0.02)-ish values (or ones for a norm) in dtype. Each tensor
// has its own stream, derived from the seed and its index, so that changing one
// shape leaves the other tensors' first values alone.
static int s_fill(s_tensor_t *t, uint64_t seed, uint64_t index, int is_norm, kvf_dtype dt, kvf_err_t *err) {
    uint64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= (uint64_t)t->shape[d];
    size_t es = dt == KVF_DT_F32 ? 4 : 2;
    t->data = malloc(n ? n * es : 1);
    if (!t->data) return kvf_err_set(err, KVF_E_NOMEM, "%s: cannot allocate %llu bytes", t->name, (unsigned long long)(n * es));
    uint64_t s1 = seed;
    uint64_t s2 = s_next(&s1) ^ (0xD1B54A32D192ED03ull * (index + 1));
    uint64_t state = s_next(&s2);
    for (uint64_t i = 0; i < n; i++) {
        float v = is_norm ? 1.0f : s_normal(&state, 0.02f);
        if (dt == KVF_DT_F32) {
            memcpy((char *)t->data + i * 4, &v, 4);
        } else {
            uint16_t h = dt == KVF_DT_BF16 ? kvf_f32_to_bf16(v) : kvf_f32_to_f16(v);
            memcpy((char *)t->data + i * 2, &h, 2);
        }
    }
    return 0;
}

// ---------------------------------------------------------------- files

// Writes text to dir/name through a temporary file and a rename.
static int s_write_text(const char *dir, const char *name, const char *text, kvf_err_t *err) {
    char path[PATH_MAX], tmp[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dir, name, (long)getpid()) >= sizeof tmp)
        return kvf_err_set(err, KVF_E_INVAL, "%s/%s: path too long", dir, name);
    FILE *f = fopen(tmp, "wb");
    if (!f) return kvf_err_set(err, KVF_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n || fputc('\n', f) == EOF;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return kvf_err_set(err, KVF_E_IO, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

static int s_write_json(const char *dir, const char *name, json_t *root, kvf_err_t *err) {
    // Six significant digits print 1e-05 and 0.02 as written by transformers.
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(root);
    if (!text) return kvf_err_set(err, KVF_E_INTERNAL, "%s: cannot format", name);
    int rc = s_write_text(dir, name, text, err);
    free(text);
    return rc;
}

static int s_mkdirs(const char *dir, kvf_err_t *err) {
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof p, "%s", dir) >= sizeof p) return kvf_err_set(err, KVF_E_INVAL, "%s: path too long", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return kvf_err_set(err, KVF_E_IO, "%s: cannot create: %s", p, strerror(errno));
            *s = c;
            if (c == '\0') break;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return kvf_err_set(err, KVF_E_IO, "%s: not a directory", dir);
    return 0;
}

static json_t *s_config(const s_opts_t *o, int32_t vocab, int32_t bos, int32_t eos) {
    return json_pack("{s:[s],s:b,s:f,s:i,s:i,s:i,s:s,s:i,s:f,s:i,s:i,s:b,s:s,s:i,s:i,s:i,s:i,s:f,s:n,s:f,s:b,s:s,"
                     "s:b,s:i}",
                     "architectures", "LlamaForCausalLM", "attention_bias", 0, "attention_dropout", 0.0,
                     "bos_token_id", (int)bos, "eos_token_id", (int)eos, "head_dim", (int)(o->hidden / o->heads),
                     "hidden_act", "silu", "hidden_size", (int)o->hidden, "initializer_range", 0.02,
                     "intermediate_size", (int)o->intermediate, "max_position_embeddings", (int)o->max_position,
                     "mlp_bias", 0, "model_type", "llama", "num_attention_heads", (int)o->heads, "num_hidden_layers",
                     (int)o->layers, "num_key_value_heads", (int)o->kv_heads, "pretraining_tp", 1, "rms_norm_eps",
                     1e-5, "rope_scaling", "rope_theta", 10000.0, "tie_word_embeddings", 0, "torch_dtype",
                     o->dtype == KVF_DT_F32 ? "float32" : "bfloat16", "use_cache", 1, "vocab_size", (int)vocab);
}

static json_t *s_tokenizer_config(const s_opts_t *o) {
    return json_pack("{s:b,s:b,s:s,s:b,s:s,s:i,s:s}", "add_bos_token", 1, "add_eos_token", 0, "bos_token",
                     "<|begin_of_text|>", "clean_up_tokenization_spaces", 1, "eos_token", "<|end_of_text|>",
                     "model_max_length", (int)o->max_position, "tokenizer_class", "PreTrainedTokenizerFast");
}

// ---------------------------------------------------------------- the model

static int s_make(const s_opts_t *o, kvf_err_t *err) {
    kvf_mktok_t *tok = kvf_mktok_train(S_N_MERGES, err);
    if (!tok) return -1;
    int32_t vocab = kvf_mktok_vocab_size(tok), bos = kvf_mktok_bos_id(tok), eos = kvf_mktok_eos_id(tok);
    int64_t h = o->hidden, hd = o->hidden / o->heads, q = hd * o->heads, kv = hd * o->kv_heads, im = o->intermediate;
    uint64_t params = (uint64_t)vocab * (uint64_t)h * 2 + (uint64_t)h +
                      (uint64_t)o->layers * (uint64_t)(2 * h * q + 2 * h * kv + 3 * h * im + 2 * h);
    uint64_t bytes = params * (o->dtype == KVF_DT_F32 ? 4 : 2);
    if (bytes > S_MAX_BYTES) {
        kvf_mktok_destroy(&tok);
        return kvf_err_set(err, KVF_E_INVAL, "the model would be %.1f GiB; kvf-mkmodel makes at most %llu GiB",
                           (double)bytes / (1 << 30), S_MAX_BYTES >> 30);
    }

    int n = 3 + 9 * o->layers;
    s_tensor_t *ts = calloc((size_t)n, sizeof *ts);
    if (!ts) {
        kvf_mktok_destroy(&tok);
        return kvf_err_set(err, KVF_E_NOMEM, "out of memory");
    }
    int k = 0;
#define S_T2(nm, a, b) (snprintf(ts[k].name, sizeof ts[k].name, "%s", nm), ts[k].n_dims = 2, ts[k].shape[0] = (a), ts[k].shape[1] = (b), k++)
#define S_T1(nm, a) (snprintf(ts[k].name, sizeof ts[k].name, "%s", nm), ts[k].n_dims = 1, ts[k].shape[0] = (a), k++)
    char nm[96];
    S_T2("model.embed_tokens.weight", vocab, h);
    for (int l = 0; l < o->layers; l++) {
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_proj.weight", l); S_T2(nm, q, h);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_proj.weight", l); S_T2(nm, kv, h);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.v_proj.weight", l); S_T2(nm, kv, h);
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", l); S_T2(nm, h, q);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_proj.weight", l); S_T2(nm, im, h);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.up_proj.weight", l); S_T2(nm, im, h);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l); S_T2(nm, h, im);
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l); S_T1(nm, h);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l); S_T1(nm, h);
    }
    S_T1("model.norm.weight", h);
    S_T2("lm_head.weight", vocab, h);
#undef S_T1
#undef S_T2

    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        rc = s_fill(&ts[i], o->seed, (uint64_t)i, ts[i].n_dims == 1, o->dtype, err);

    if (rc == 0) rc = s_mkdirs(o->dir, err);
    if (rc == 0) {
        const char **names = calloc((size_t)n, sizeof *names);
        kvf_dtype *dts = calloc((size_t)n, sizeof *dts);
        int *nds = calloc((size_t)n, sizeof *nds);
        int64_t(*shapes)[KVF_ST_MAX_DIMS] = calloc((size_t)n, sizeof *shapes);
        const void **data = calloc((size_t)n, sizeof *data);
        if (!names || !dts || !nds || !shapes || !data) {
            rc = kvf_err_set(err, KVF_E_NOMEM, "out of memory");
        } else {
            for (int i = 0; i < n; i++) {
                names[i] = ts[i].name;
                dts[i] = o->dtype;
                nds[i] = ts[i].n_dims;
                memcpy(shapes[i], ts[i].shape, sizeof shapes[i]);
                data[i] = ts[i].data;
            }
            char path[PATH_MAX];
            if ((size_t)snprintf(path, sizeof path, "%s/model.safetensors", o->dir) >= sizeof path)
                rc = kvf_err_set(err, KVF_E_INVAL, "%s: path too long", o->dir);
            else
                rc = kvf_safetensors_write(path, n, names, dts, nds, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes, data,
                                           err);
        }
        free(names);
        free(dts);
        free(nds);
        free(shapes);
        free(data);
    }
    for (int i = 0; i < n; i++) free(ts[i].data);
    free(ts);

    if (rc == 0) {
        char *tj = kvf_mktok_json(tok, err);
        rc = tj ? s_write_text(o->dir, "tokenizer.json", tj, err) : -1;
        free(tj);
    }
    if (rc == 0) rc = s_write_json(o->dir, "tokenizer_config.json", s_tokenizer_config(o), err);
    // config.json last: a directory with a config is a complete model.
    if (rc == 0) rc = s_write_json(o->dir, "config.json", s_config(o, vocab, bos, eos), err);
    if (rc == 0)
        printf("%s: LlamaForCausalLM hidden %d, %d layers, %d/%d heads, intermediate %d, vocab %d (%d merges), "
               "%llu parameters, %s\n",
               o->dir, o->hidden, o->layers, o->heads, o->kv_heads, o->intermediate, vocab, kvf_mktok_n_merges(tok),
               (unsigned long long)params, o->dtype == KVF_DT_F32 ? "float32" : "bfloat16");
    kvf_mktok_destroy(&tok);
    return rc;
}

// ---------------------------------------------------------------- flags

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: kvf-mkmodel DIR [--seed N] [--hidden 256] [--layers 4] [--heads 8] [--kv-heads 4]\n"
            "                       [--intermediate 688] [--max-position 2048] [--dtype f32|bf16]\n"
            "Writes a random Llama model (config.json, model.safetensors, tokenizer.json,\n"
            "tokenizer_config.json) into DIR. The same flags give byte-identical files.\n");
}

static int s_parse_args(int argc, char **argv, s_opts_t *o, kvf_err_t *err) {
    *o = (s_opts_t){.seed = 0, .hidden = 256, .layers = 4, .heads = 8, .kv_heads = 4, .intermediate = 688,
                    .max_position = 2048, .dtype = KVF_DT_F32};
    struct {
        const char *flag;
        int32_t *out;
        int64_t max;
    } ints[] = {
        {"--hidden", &o->hidden, 1 << 16},       {"--layers", &o->layers, 1024},
        {"--heads", &o->heads, 1024},            {"--kv-heads", &o->kv_heads, 1024},
        {"--intermediate", &o->intermediate, 1 << 18}, {"--max-position", &o->max_position, 1 << 24},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0') {
            if (o->dir) return kvf_err_set(err, KVF_E_INVAL, "more than one DIR (%s and %s)", o->dir, a);
            o->dir = a;
            continue;
        }
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s needs a value", a);
        const char *v = argv[++i];
        int64_t x;
        if (strcmp(a, "--seed") == 0) {
            if (kvf_args_int(a, v, 0, INT64_MAX, &x, err) != 0) return -1;
            o->seed = (uint64_t)x;
            continue;
        }
        if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "f32") == 0) o->dtype = KVF_DT_F32;
            else if (strcmp(v, "bf16") == 0) o->dtype = KVF_DT_BF16;
            else return kvf_err_set(err, KVF_E_INVAL, "--dtype: \"%s\" is not f32 or bf16", v);
            continue;
        }
        size_t j = 0;
        while (j < sizeof ints / sizeof ints[0] && strcmp(a, ints[j].flag) != 0) j++;
        if (j == sizeof ints / sizeof ints[0]) return kvf_err_set(err, KVF_E_INVAL, "unknown flag %s", a);
        if (kvf_args_int(a, v, 1, ints[j].max, &x, err) != 0) return -1;
        *ints[j].out = (int32_t)x;
    }
    if (!o->dir) return kvf_err_set(err, KVF_E_INVAL, "no output DIR given");
    if (o->hidden % o->heads != 0)
        return kvf_err_set(err, KVF_E_INVAL, "--hidden %d is not a multiple of --heads %d", o->hidden, o->heads);
    if ((o->hidden / o->heads) % 2 != 0)
        return kvf_err_set(err, KVF_E_INVAL, "head dim %d (--hidden / --heads) must be even for RoPE",
                           o->hidden / o->heads);
    if (o->heads % o->kv_heads != 0)
        return kvf_err_set(err, KVF_E_INVAL, "--heads %d is not a multiple of --kv-heads %d", o->heads, o->kv_heads);
    return 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            s_usage(stdout);
            return 0;
        }
    s_opts_t o;
    kvf_err_t err;
    kvf_err_clear(&err);
    if (s_parse_args(argc, argv, &o, &err) != 0) {
        fprintf(stderr, "kvf-mkmodel: %s\n", err.msg);
        s_usage(stderr);
        return 2;
    }
    if (s_make(&o, &err) != 0) {
        fprintf(stderr, "kvf-mkmodel: %s\n", err.msg);
        return 1;
    }
    return 0;
}
