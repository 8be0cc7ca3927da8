// tests/test_forward.c — the cpu backend's forward pass against golden logits
// from Hugging Face transformers (fixtures), batching, thread independence, a
// synthetic Qwen2-style model (q/k/v bias, tied embeddings, llama3 RoPE, GQA 8)
// against a naive in-test forward, and bad batches / broken weight files.
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/fp8.h"
#include "common/modelcfg.h"
#include "common/safetensors.h"
#include "common/sampling.h"
#include "golden_model.h"
#include "test_util.h"
#include "worker/cpu_backend.h"
#include "worker/cpu_ops.h"

// ---------------------------------------------------------------- fixtures


// ids of a case's array field into a new buffer; *n its length.
static int32_t *s_ids(json_t *cs, const char *field, int *n) {
    json_t *a = json_object_get(cs, field);
    *n = (int)json_array_size(a);
    int32_t *ids = malloc((size_t)(*n > 0 ? *n : 1) * sizeof *ids);
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return ids;
}

static kvf_backend_opts_t s_opts(int block_size, int n_threads) {
    kvf_backend_opts_t o;
    memset(&o, 0, sizeof o);
    o.block_size = block_size;
    o.max_batch_size = 8;
    o.max_step_tokens = 320;
    o.max_logit_rows = 320;
    o.max_blocks_per_seq = (320 + block_size - 1) / block_size;
    o.tp_rank = 0;
    o.tp_size = 1;
    o.n_threads = n_threads;
    o.cache_max_entry_count = 8 * o.max_blocks_per_seq;
    o.memory_budget = 1ull << 30;
    return o;
}

static kvf_backend_t *s_backend(const kvf_golden_model_t *m, int block_size, int n_threads) {
    kvf_backend_opts_t o = s_opts(block_size, n_threads);
    kvf_err_t err;
    kvf_backend_t *be = kvf_cpu_backend_new(&m->cfg, m->st, &o, &err);
    cr_assert_not_null(be, "%s", err.msg);
    cr_assert_eq(be->n_blocks, 8 * o.max_blocks_per_seq);
    return be;
}

// A block table that scatters a sequence over the pool: slot `seq` of 8, blocks
// in reverse order, so that paging is exercised.
static void s_table(const kvf_backend_t *be, int seq, int32_t *table, int max_blocks) {
    for (int i = 0; i < max_blocks; i++) table[i] = be->n_blocks - 1 - (i * 8 + seq);
}

// Feeds ids[0..n) of one sequence in chunks of `chunk` with all_logits; the
// logits of every position go to out (n, vocab).
static void s_teacher_force(kvf_backend_t *be, const int32_t *ids, int n, int chunk, int seq, float *out) {
    int max_blocks = be->opts.max_blocks_per_seq;
    int32_t table[64];
    s_table(be, seq, table, max_blocks);
    kvf_err_t err;
    for (int p = 0; p < n; p += chunk) {
        int32_t nn = n - p < chunk ? n - p : chunk, np = p;
        kvf_batch_t b = {1, nn, ids + p, &nn, &np, table, max_blocks, 1};
        cr_assert_eq(be->ops->forward(be, &b, out + (size_t)p * be->cfg.vocab_size, &err), 0, "%s", err.msg);
    }
}

static double s_max_abs_diff(const float *a, const float *b, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= mx)) mx = d;  // NaN counts as infinitely far
    }
    return mx;
}

static double s_rel_l2(const float *a, const float *ref, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / den);
}

static int s_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

// Teacher-forced logits of every case, compared with the golden rows: f32 every
// logit within 1e-3; bf16 the relative L2 error of every row below row_tol and
// their mean below mean_tol. Returns the largest abs error (f32) or relative L2
// error (bf16) seen.
static double s_check_teacher_forced(const kvf_golden_model_t *m, kvf_backend_t *be, int chunk, int bf16, double row_tol,
                                     double mean_tol) {
    int V = m->vocab, n_rows = 0;
    double worst = 0, sum = 0;
    for (int c = 0; c < kvf_golden_n_cases(m); c++) {
        json_t *cs = kvf_golden_case(m, c);
        int n;
        int32_t *ids = s_ids(cs, "full_ids", &n);
        int p0 = (int)json_integer_value(json_object_get(cs, "first_row_position"));
        int r0 = (int)json_integer_value(json_object_get(cs, "logits_row_offset"));
        int nr = (int)json_integer_value(json_object_get(cs, "n_rows"));
        cr_assert_leq(p0 + nr, n);
        float *out = malloc((size_t)n * V * sizeof(float));
        s_teacher_force(be, ids, n, chunk > 0 ? chunk : n, c % 8, out);
        for (int j = 0; j < nr; j++) {
            const float *mine = out + (size_t)(p0 + j) * V, *gold = m->logits + (size_t)(r0 + j) * V;
            double e;
            if (bf16) {
                e = s_rel_l2(mine, gold, V);
                cr_assert_lt(e, row_tol, "case %d row %d: relative L2 %g", c, j, e);
            } else {
                e = s_max_abs_diff(mine, gold, (size_t)V);
                cr_assert_leq(e, 1e-3, "case %d row %d (chunk %d): max abs error %g", c, j, chunk, e);
            }
            if (e > worst) worst = e;
            sum += e;
            n_rows++;
        }
        free(out);
        free(ids);
    }
    if (bf16) cr_assert_lt(sum / n_rows, mean_tol, "mean relative L2 %g", sum / n_rows);
    if (bf16) fprintf(stderr, "  %d rows, mean relative L2 %.3g\n", n_rows, sum / n_rows);
    return worst;
}

// Greedy decoding: prefill the prompt in one step, then one token per step.
static void s_check_greedy(const kvf_golden_model_t *m, kvf_backend_t *be, int bf16) {
    int V = m->vocab;
    float *logits = malloc((size_t)V * be->opts.max_step_tokens * sizeof(float));
    for (int c = 0; c < kvf_golden_n_cases(m); c++) {
        json_t *cs = kvf_golden_case(m, c);
        int np_, ng;
        int32_t *prompt = s_ids(cs, "prompt_ids", &np_);
        int32_t *greedy = s_ids(cs, "greedy_ids", &ng);
        json_t *margin = json_object_get(cs, "top1_minus_top2");
        int32_t table[64];
        int max_blocks = be->opts.max_blocks_per_seq;
        s_table(be, c % 8, table, max_blocks);
        kvf_err_t err;
        int32_t nn = np_, past = 0;
        kvf_batch_t b = {1, nn, prompt, &nn, &past, table, max_blocks, 0};
        cr_assert_eq(be->ops->forward(be, &b, logits, &err), 0, "%s", err.msg);
        for (int j = 0; j < ng; j++) {
            if (bf16 && json_real_value(json_array_get(margin, j)) < 0.1) break;
            int32_t id = s_argmax(logits, V);
            cr_assert_eq(id, greedy[j], "case %d step %d: %d, golden %d", c, j, id, greedy[j]);
            if (j + 1 == ng) break;
            nn = 1;
            past = np_ + j;
            kvf_batch_t d = {1, 1, &id, &nn, &past, table, max_blocks, 0};
            cr_assert_eq(be->ops->forward(be, &d, logits, &err), 0, "%s", err.msg);
        }
        free(prompt);
        free(greedy);
    }
    free(logits);
}

// bf16 tolerances: the fixtures' 2e-2 per row holds for tiny-llama. stories260K
// is a trained model whose logits move by up to 0.21 (mean 0.027) when its
// weights are rounded to bf16, computed in float32 here (the conversion itself
// is exact to 2^-8, and the f32 run matches golden to 1e-4): its bound is looser.
static void s_golden_tol(const char *name, int bf16, int block_size, double row_tol, double mean_tol) {
    kvf_golden_model_t m;
    kvf_golden_open(&m, name, bf16);
    kvf_backend_t *be = s_backend(&m, block_size, 2);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double e_one = s_check_teacher_forced(&m, be, 0, bf16, row_tol, mean_tol);
    double e_7 = s_check_teacher_forced(&m, be, 7, bf16, row_tol, mean_tol);
    double e_16 = s_check_teacher_forced(&m, be, 16, bf16, row_tol, mean_tol);
    s_check_greedy(&m, be, bf16);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "%s%s block %d: %s one-shot %.3g, chunk 7 %.3g, chunk 16 %.3g (%.2f s)\n", name,
            bf16 ? "/bf16" : "", block_size, bf16 ? "max rel L2" : "max abs err", e_one, e_7, e_16,
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    be->ops->destroy(&be);
    cr_assert_null(be);
    kvf_golden_close(&m);
}

static void s_golden(const char *name, int bf16, int block_size) { s_golden_tol(name, bf16, block_size, 2e-2, 2e-2); }

// --kv-cache-dtype fp8 against the golden logits of transformers (f32 weights and
// cache there): what rounding K and V to E4M3 (3 mantissa bits) costs on real
// models. Measured here (rows teacher-forced in chunks of 7): tiny-llama max row
// rel L2 0.10, mean 0.053, greedy ids kept up to the first golden margin < 0.1;
// stories260K (head_dim 8: a score is a sum of 8 rounded products, and its
// attention is sharp) mean 0.16 over 512 rows, single rows up to 1.16, and its
// greedy ids part at step 1 of case 0: only its mean is bounded.
// The bounds keep those numbers from growing unnoticed; they are why fp8 is
// opt-in. Against the f32 cache the same rows are within 1e-3 (s_golden).
static void s_golden_fp8_as(const char *name, int32_t kv_dtype, int32_t quant, double row_tol, double mean_tol,
                            int greedy) {
    kvf_golden_model_t m;
    kvf_golden_open(&m, name, 0);
    kvf_backend_opts_t o = s_opts(16, 2);
    o.kv_dtype = kv_dtype;
    o.quant = quant;
    kvf_err_t err;
    kvf_backend_t *be = kvf_cpu_backend_new(&m.cfg, m.st, &o, &err);
    cr_assert_not_null(be, "%s", err.msg);
    const double worst = s_check_teacher_forced(&m, be, 7, 1, row_tol, mean_tol);
    if (greedy) s_check_greedy(&m, be, 1);
    fprintf(stderr, "%s, fp8 %s: max row rel L2 vs transformers %.3g (%s %.2g)\n", name,
            quant ? (kv_dtype ? "linear layers and KV cache" : "linear layers") : "KV cache", worst,
            row_tol < 1e6 ? "tol" : "unbounded; mean tol", row_tol < 1e6 ? row_tol : mean_tol);
    be->ops->destroy(&be);
    kvf_golden_close(&m);
}

static void s_golden_fp8(const char *name, double row_tol, double mean_tol, int greedy) {
    s_golden_fp8_as(name, KVF_KV_FP8, KVF_QUANT_NONE, row_tol, mean_tol, greedy);
}

Test(forward, tiny_llama_fp8_kv_cache) { s_golden_fp8("tiny-llama", 0.15, 0.08, 1); }
Test(forward, stories260K_fp8_kv_cache) { s_golden_fp8("stories260K", 1e9, 0.25, 0); }
Test(forward, tiny_llama_fp8_linear_layers) {
    s_golden_fp8_as("tiny-llama", KVF_KV_AUTO, KVF_QUANT_FP8, 0.3, 0.17, 1);
    s_golden_fp8_as("tiny-llama", KVF_KV_FP8, KVF_QUANT_FP8, 0.3, 0.17, 1);
}

Test(forward, tiny_llama_f32_block16) { s_golden("tiny-llama", 0, 16); }
Test(forward, tiny_llama_f32_block64) { s_golden("tiny-llama", 0, 64); }
Test(forward, tiny_llama_bf16) { s_golden("tiny-llama", 1, 16); }
Test(forward, stories260K_f32_block16) { s_golden("stories260K", 0, 16); }
Test(forward, stories260K_f32_block64) { s_golden("stories260K", 0, 64); }
Test(forward, stories260K_bf16) { s_golden_tol("stories260K", 1, 64, 0.3, 0.04); }

// ---------------------------------------------------------------- batching and threads

// Several sequences of different lengths in one step give what each gives alone,
// also when a decode token and prefill chunks share a step.
Test(forward, batched_equals_one_at_a_time) {
    kvf_golden_model_t m;
    kvf_golden_open(&m, "tiny-llama", 0);
    kvf_backend_t *be = s_backend(&m, 16, 3);
    int V = m.vocab, ns = 4, lens[4], total = 0;
    int32_t *ids[4];
    float *alone[4];
    for (int s = 0; s < ns; s++) {
        ids[s] = s_ids(kvf_golden_case(&m, s), "full_ids", &lens[s]);
        alone[s] = malloc((size_t)lens[s] * V * sizeof(float));
        s_teacher_force(be, ids[s], lens[s], lens[s], s, alone[s]);
    }
    // step 1: the first half of each sequence (different lengths), all together
    int max_blocks = be->opts.max_blocks_per_seq;
    int32_t table[4 * 64], tokens[320], n_new[4], n_past[4];
    for (int s = 0; s < ns; s++) s_table(be, s, table + s * max_blocks, max_blocks);
    for (int s = 0; s < ns; s++) {
        n_new[s] = lens[s] / 2 + s;
        n_past[s] = 0;
        memcpy(tokens + total, ids[s], (size_t)n_new[s] * sizeof(int32_t));
        total += n_new[s];
    }
    float *out = malloc((size_t)320 * V * sizeof(float));
    kvf_err_t err;
    kvf_batch_t b = {ns, total, tokens, n_new, n_past, table, max_blocks, 1};
    cr_assert_eq(be->ops->forward(be, &b, out, &err), 0, "%s", err.msg);
    for (int s = 0, t = 0; s < ns; t += n_new[s], s++)
        cr_assert_leq(s_max_abs_diff(out + (size_t)t * V, alone[s], (size_t)n_new[s] * V), 1e-5, "seq %d", s);
    // step 2: sequence 0 decodes one token, the others prefill the rest; last-token logits only
    total = 0;
    for (int s = 0; s < ns; s++) {
        n_past[s] = n_new[s];
        n_new[s] = s == 0 ? 1 : lens[s] - n_past[s];
        memcpy(tokens + total, ids[s] + n_past[s], (size_t)n_new[s] * sizeof(int32_t));
        total += n_new[s];
    }
    kvf_batch_t b2 = {ns, total, tokens, n_new, n_past, table, max_blocks, 0};
    cr_assert_eq(be->ops->forward(be, &b2, out, &err), 0, "%s", err.msg);
    for (int s = 0; s < ns; s++) {
        int last = n_past[s] + n_new[s] - 1;
        cr_assert_leq(s_max_abs_diff(out + (size_t)s * V, alone[s] + (size_t)last * V, (size_t)V), 1e-5, "seq %d", s);
    }
    for (int s = 0; s < ns; s++) {
        free(ids[s]);
        free(alone[s]);
    }
    free(out);
    be->ops->destroy(&be);
    kvf_golden_close(&m);
}

// forward_sample on the cpu backend: greedy rows get forward()'s argmax (the
// same step run twice writes the same K and V); a sampled or penalised row is
// KVF_E_UNSUPPORTED before anything runs (the engine then samples on the host);
// a bad batch or all_logits is KVF_E_INVAL.
Test(forward, forward_sample_greedy_and_refusals) {
    kvf_golden_model_t m;
    kvf_golden_open(&m, "tiny-llama", 0);
    kvf_backend_t *be = s_backend(&m, 16, 2);
    const int V = m.vocab, max_blocks = be->opts.max_blocks_per_seq;
    int lens[2];
    int32_t *ids[2], table[2 * 64], tokens[320], n_new[2], n_past[2] = {0, 0};
    int total = 0;
    for (int s = 0; s < 2; s++) {
        ids[s] = s_ids(kvf_golden_case(&m, s), "prompt_ids", &lens[s]);
        s_table(be, s, table + s * max_blocks, max_blocks);
        n_new[s] = lens[s];
        memcpy(tokens + total, ids[s], (size_t)lens[s] * sizeof(int32_t));
        total += lens[s];
    }
    kvf_batch_t b = {2, total, tokens, n_new, n_past, table, max_blocks, 0};
    float *out = malloc((size_t)2 * V * sizeof(float));
    kvf_err_t err;
    cr_assert_eq(be->ops->forward(be, &b, out, &err), 0, "%s", err.msg);
    kvf_sampling_t greedy = kvf_sampling_default(), warm = kvf_sampling_default(), pen = kvf_sampling_default();
    greedy.temperature = 0.0f;
    warm.temperature = 0.8f;
    pen.temperature = 0.0f;
    pen.repetition_penalty = 1.2f;
    const kvf_sampling_t *ps[2] = {&greedy, NULL};
    int32_t steps[2] = {0, 0}, got[2] = {-1, -1};
    cr_assert_eq(be->ops->forward_sample(be, &b, ps, steps, NULL, NULL, got, &err), 0, "%s", err.msg);
    cr_assert_eq(got[0], s_argmax(out, V), "row 0: %d, forward's argmax %d", got[0], s_argmax(out, V));
    cr_assert_eq(got[1], s_argmax(out + V, V), "a row with no sampling gets the argmax too");
    const kvf_sampling_t *sampled[2] = {&greedy, &warm}, *penalised[2] = {&pen, &greedy};
    cr_assert_eq(be->ops->forward_sample(be, &b, sampled, steps, NULL, NULL, got, &err), -1);
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED, "%s", err.msg);
    cr_assert_eq(be->ops->forward_sample(be, &b, penalised, steps, NULL, NULL, got, &err), -1);
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED, "%s", err.msg);
    kvf_batch_t all = b;
    all.all_logits = 1;
    cr_assert_eq(be->ops->forward_sample(be, &all, ps, steps, NULL, NULL, got, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL, "%s", err.msg);
    kvf_batch_t over = b;
    over.n_seqs = be->opts.max_batch_size + 1;  // refused before per_seq (2 entries) is read past its end
    cr_assert_eq(be->ops->forward_sample(be, &over, ps, steps, NULL, NULL, got, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL, "%s", err.msg);
    cr_assert_eq(be->ops->forward_sample(be, &b, NULL, steps, NULL, NULL, got, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL, "%s", err.msg);
    free(out);
    free(ids[0]), free(ids[1]);
    be->ops->destroy(&be);
    kvf_golden_close(&m);
}

// The same step on 1 and 3 threads gives the same bits.
Test(forward, thread_count_does_not_change_bits) {
    kvf_golden_model_t m;
    kvf_golden_open(&m, "stories260K", 0);
    int n;
    int32_t *ids = s_ids(kvf_golden_case(&m, 1), "full_ids", &n);
    float *a = malloc((size_t)n * m.vocab * sizeof(float)), *b = malloc((size_t)n * m.vocab * sizeof(float));
    kvf_backend_t *be1 = s_backend(&m, 16, 1), *be3 = s_backend(&m, 16, 3);
    s_teacher_force(be1, ids, n, 37, 0, a);
    s_teacher_force(be3, ids, n, 37, 0, b);
    cr_assert_eq(memcmp(a, b, (size_t)n * m.vocab * sizeof(float)), 0);
    be1->ops->destroy(&be1);
    be3->ops->destroy(&be3);
    free(a);
    free(b);
    free(ids);
    kvf_golden_close(&m);
}

// ---------------------------------------------------------------- synthetic model vs naive forward

// A Qwen2-flavoured config: q/k/v bias, tied embeddings, llama3 RoPE, GQA 8:1,
// odd vocabulary and intermediate sizes.
static kvf_modelcfg_t s_synth_cfg(void) {
    kvf_modelcfg_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "Qwen2ForCausalLM");
    c.hidden_size = 64;
    c.n_layers = 2;
    c.n_heads = 8;
    c.n_kv_heads = 1;
    c.head_dim = 16;
    c.intermediate_size = 97;
    c.vocab_size = 203;
    c.max_position = 4096;
    c.rms_norm_eps = 1e-6f;
    c.tie_word_embeddings = 1;
    c.attention_bias = 1;
    c.rope_theta = 500000.0;
    c.rope_type = KVF_ROPE_LLAMA3;
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_position = 64;
    c.bos_id = 1;
    c.n_eos = 1;
    c.eos_ids[0] = 2;
    return c;
}

#define SYN_MAX 48

typedef struct {
    char names[SYN_MAX][96];
    int n_dims[SYN_MAX];
    int64_t shapes[SYN_MAX][KVF_ST_MAX_DIMS];
    float *data[SYN_MAX];
    int n;
} s_synth_t;

static float s_rand(uint64_t *st) {
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)(*st >> 40) / (float)(1 << 24) - 0.5f) * 0.2f;
}

static float *s_syn_add(s_synth_t *s, uint64_t *rng, const char *name, int64_t d0, int64_t d1, int norm) {
    int i = s->n++;
    snprintf(s->names[i], sizeof s->names[i], "%s", name);
    s->n_dims[i] = d1 ? 2 : 1;
    s->shapes[i][0] = d0;
    s->shapes[i][1] = d1;
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    s->data[i] = malloc(n * sizeof(float));
    for (size_t e = 0; e < n; e++) s->data[i][e] = norm ? 1.0f + s_rand(rng) : s_rand(rng);
    return s->data[i];
}

static float *s_syn_get(const s_synth_t *s, const char *fmt, int l) {
    char name[96];
    snprintf(name, sizeof name, fmt, l);
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) return s->data[i];
    cr_assert_fail("no tensor %s", name);
    return NULL;
}

static void s_syn_build(s_synth_t *s, const kvf_modelcfg_t *c) {
    memset(s, 0, sizeof *s);
    uint64_t rng = 42;
    int64_t D = c->hidden_size, Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim, I = c->intermediate_size;
    s_syn_add(s, &rng, "model.embed_tokens.weight", c->vocab_size, D, 0);
    for (int l = 0; l < c->n_layers; l++) {
        char n[96];
#define SYN(leaf, d0, d1, norm)                                              \
    snprintf(n, sizeof n, "model.layers.%d.%s", l, leaf);                    \
    s_syn_add(s, &rng, n, d0, d1, norm)
        SYN("input_layernorm.weight", D, 0, 1);
        SYN("self_attn.q_proj.weight", Q, D, 0);
        SYN("self_attn.q_proj.bias", Q, 0, 0);
        SYN("self_attn.k_proj.weight", KV, D, 0);
        SYN("self_attn.k_proj.bias", KV, 0, 0);
        SYN("self_attn.v_proj.weight", KV, D, 0);
        SYN("self_attn.v_proj.bias", KV, 0, 0);
        SYN("self_attn.o_proj.weight", D, Q, 0);
        SYN("post_attention_layernorm.weight", D, 0, 1);
        SYN("mlp.gate_proj.weight", I, D, 0);
        SYN("mlp.up_proj.weight", I, D, 0);
        SYN("mlp.down_proj.weight", D, I, 0);
#undef SYN
    }
    s_syn_add(s, &rng, "model.norm.weight", D, 0, 1);
}

// Writes all tensors but `skip` (NULL: none); `bad_shape` gets one extra row.
static void s_syn_write(const s_synth_t *s, const char *path, const char *skip, const char *bad_shape) {
    const char *names[SYN_MAX];
    kvf_dtype dt[SYN_MAX];
    int nd[SYN_MAX];
    int64_t shapes[SYN_MAX][KVF_ST_MAX_DIMS];
    const void *data[SYN_MAX];
    float *extra = NULL;
    int n = 0;
    for (int i = 0; i < s->n; i++) {
        if (skip && !strcmp(skip, s->names[i])) continue;
        names[n] = s->names[i];
        dt[n] = KVF_DT_F32;
        nd[n] = s->n_dims[i];
        memcpy(shapes[n], s->shapes[i], sizeof shapes[n]);
        data[n] = s->data[i];
        if (bad_shape && !strcmp(bad_shape, s->names[i])) {
            size_t row = s->n_dims[i] == 2 ? (size_t)s->shapes[i][1] : 1;
            size_t cnt = (size_t)s->shapes[i][0] * row;
            extra = calloc(cnt + row, sizeof(float));
            memcpy(extra, s->data[i], cnt * sizeof(float));
            shapes[n][0] += 1;
            data[n] = extra;
        }
        n++;
    }
    kvf_err_t err;
    cr_assert_eq(kvf_safetensors_write(path, n, names, dt, nd, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes, data, &err), 0,
                 "%s", err.msg);
    free(extra);
}

static void s_syn_free(s_synth_t *s) {
    for (int i = 0; i < s->n; i++) free(s->data[i]);
}

// w_fp8: the rows (rows, cols) of w as --quantization fp8 keeps them (E4M3 with a
// scale per row, common/fp8.h), in *buf (replaced); else w itself.
static const float *s_wq(const float *w, int rows, int cols, int w_fp8, float **buf) {
    if (!w_fp8) return w;
    free(*buf);
    *buf = malloc((size_t)rows * cols * sizeof(float));
    memcpy(*buf, w, (size_t)rows * cols * sizeof(float));
    for (int r = 0; r < rows; r++) kvf_fp8_quant_row(*buf + (size_t)r * cols, cols);
    return *buf;
}

// Plain, unpaged, double-accumulating forward of the whole sequence; logits (n, vocab).
// kv_fp8: K (after RoPE) and V rounded to E4M3, what --kv-cache-dtype fp8 keeps.
// w_fp8: the linear layers' weight rows and input rows rounded as --quantization fp8 keeps them.
static void s_naive_forward_q(const s_synth_t *s, const kvf_modelcfg_t *c, const int32_t *ids, int n, int kv_fp8,
                              int w_fp8, float *logits) {
    int D = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim, I = c->intermediate_size;
    int Q = H * hd, KV = KVH * hd;
    float *x = calloc((size_t)n * D, 4), *xn = calloc((size_t)n * D, 4), *q = calloc((size_t)n * Q, 4);
    float *k = calloc((size_t)n * KV, 4), *v = calloc((size_t)n * KV, 4), *att = calloc((size_t)n * Q, 4);
    float *g = calloc((size_t)n * I, 4), *u = calloc((size_t)n * I, 4), *sc = calloc((size_t)n, sizeof(double) * 2);
    float inv_freq[64], *wb = NULL;
    kvf_cpu_rope_inv_freq(inv_freq, c);
#define WQ(leaf, rows, cols) s_wq(s_syn_get(s, "model.layers.%d." leaf, l), (rows), (cols), w_fp8, &wb)
#define XQ(x, rows, cols) \
    if (w_fp8)            \
        for (int t = 0; t < (rows); t++) kvf_fp8_quant_row((x) + (size_t)t * (cols), (cols))
    const float *emb = s_syn_get(s, "model.embed_tokens.weight", 0);
    for (int t = 0; t < n; t++) memcpy(x + (size_t)t * D, emb + (size_t)ids[t] * D, (size_t)D * 4);
#define LIN(out, in, W, B, din, dout)                                                 \
    for (int t = 0; t < n; t++)                                                       \
        for (int o = 0; o < (dout); o++) {                                            \
            double acc = 0;                                                           \
            for (int i = 0; i < (din); i++) acc += (double)(in)[(size_t)t * (din) + i] * (W)[(size_t)o * (din) + i]; \
            (out)[(size_t)t * (dout) + o] = (float)(acc + ((B) ? (B)[o] : 0.0));     \
        }
#define NORM(out, in, W)                                                             \
    for (int t = 0; t < n; t++) {                                                    \
        double ss = 0;                                                               \
        for (int i = 0; i < D; i++) ss += (double)(in)[(size_t)t * D + i] * (in)[(size_t)t * D + i]; \
        double r = 1.0 / sqrt(ss / D + c->rms_norm_eps);                             \
        for (int i = 0; i < D; i++) (out)[(size_t)t * D + i] = (float)((in)[(size_t)t * D + i] * r * (W)[i]); \
    }
    for (int l = 0; l < c->n_layers; l++) {
        NORM(xn, x, s_syn_get(s, "model.layers.%d.input_layernorm.weight", l));
        XQ(xn, n, D);
        const float *w = WQ("self_attn.q_proj.weight", Q, D);  // LIN reads its W argument per element
        LIN(q, xn, w, s_syn_get(s, "model.layers.%d.self_attn.q_proj.bias", l), D, Q);
        w = WQ("self_attn.k_proj.weight", KV, D);
        LIN(k, xn, w, s_syn_get(s, "model.layers.%d.self_attn.k_proj.bias", l), D, KV);
        w = WQ("self_attn.v_proj.weight", KV, D);
        LIN(v, xn, w, s_syn_get(s, "model.layers.%d.self_attn.v_proj.bias", l), D, KV);
        // rotate_half RoPE, straight from the formula
        for (int t = 0; t < n; t++)
            for (int which = 0; which < 2; which++) {
                float *base = which ? k + (size_t)t * KV : q + (size_t)t * Q;
                for (int h = 0; h < (which ? KVH : H); h++)
                    for (int i = 0; i < hd / 2; i++) {
                        double a = (double)inv_freq[i] * t, x1 = base[h * hd + i], x2 = base[h * hd + i + hd / 2];
                        base[h * hd + i] = (float)(x1 * cos(a) - x2 * sin(a));
                        base[h * hd + i + hd / 2] = (float)(x2 * cos(a) + x1 * sin(a));
                    }
            }
        if (kv_fp8)
            for (size_t i = 0; i < (size_t)n * KV; i++)
                k[i] = kvf_fp8_e4m3_round(k[i]), v[i] = kvf_fp8_e4m3_round(v[i]);
        double *p = (double *)sc;
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++) {
                int kh = h / (H / KVH);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)q[(size_t)t * Q + h * hd + e] * k[(size_t)j * KV + kh * hd + e];
                    p[j] = d / sqrt((double)hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += p[j] / sum * v[(size_t)j * KV + kh * hd + e];
                    att[(size_t)t * Q + h * hd + e] = (float)o;
                }
            }
        XQ(att, n, Q);
        w = WQ("self_attn.o_proj.weight", D, Q);
        LIN(xn, att, w, (const float *)NULL, Q, D);
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += xn[i];
        NORM(xn, x, s_syn_get(s, "model.layers.%d.post_attention_layernorm.weight", l));
        XQ(xn, n, D);
        w = WQ("mlp.gate_proj.weight", I, D);
        LIN(g, xn, w, (const float *)NULL, D, I);
        w = WQ("mlp.up_proj.weight", I, D);
        LIN(u, xn, w, (const float *)NULL, D, I);
        for (size_t i = 0; i < (size_t)n * I; i++) g[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
        XQ(g, n, I);
        w = WQ("mlp.down_proj.weight", D, I);
        LIN(xn, g, w, (const float *)NULL, I, D);
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += xn[i];
    }
    NORM(xn, x, s_syn_get(s, "model.norm.weight", 0));
    LIN(logits, xn, emb, (const float *)NULL, D, c->vocab_size);
#undef LIN
#undef NORM
#undef WQ
#undef XQ
    free(wb);
    free(x), free(xn), free(q), free(k), free(v), free(att), free(g), free(u), free(sc);
}

static void s_naive_forward(const s_synth_t *s, const kvf_modelcfg_t *c, const int32_t *ids, int n, int kv_fp8,
                            float *logits) {
    s_naive_forward_q(s, c, ids, n, kv_fp8, 0, logits);
}

static void s_tmp_path(char *buf, size_t cap, const char *leaf) {
    snprintf(buf, cap, "/tmp/kvf_test_forward_%d_%s", (int)getpid(), leaf);
}

// The synthetic model of c built into *s, written to a temporary file and opened.
static kvf_safetensors_t *s_syn_open(s_synth_t *s, const kvf_modelcfg_t *c, const char *leaf) {
    s_syn_build(s, c);
    char path[256];
    s_tmp_path(path, sizeof path, leaf);
    s_syn_write(s, path, NULL, NULL);
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
    cr_assert_not_null(st, "%s", err.msg);
    unlink(path);
    return st;
}

Test(forward, synthetic_bias_tied_llama3_matches_naive) {
    kvf_modelcfg_t c = s_synth_cfg();
    s_synth_t s;
    kvf_safetensors_t *st = s_syn_open(&s, &c, "ok.safetensors");
    kvf_err_t err;
    int n = 150;  // past original_max_position: the llama3 smoothing matters
    int32_t ids[150];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 37 + 11) % c.vocab_size);
    float *ref = malloc((size_t)n * c.vocab_size * 4), *mine = malloc((size_t)n * c.vocab_size * 4);
    s_naive_forward(&s, &c, ids, n, 0, ref);
    kvf_backend_opts_t o = s_opts(16, 2);
    kvf_backend_t *be = kvf_cpu_backend_new(&c, st, &o, &err);
    cr_assert_not_null(be, "%s", err.msg);
    s_teacher_force(be, ids, n, 23, 3, mine);
    double e = s_max_abs_diff(mine, ref, (size_t)n * c.vocab_size);
    cr_assert_leq(e, 2e-4, "max abs error vs naive forward %g", e);
    be->ops->destroy(&be);
    kvf_safetensors_destroy(&st);
    free(ref);
    free(mine);
    s_syn_free(&s);
}

// An FP8 option of the cpu backend (kv_fp8: --kv-cache-dtype fp8; w_fp8: --quantization
// fp8) against the naive forward that rounds the same values: equal to it (2e-4), moved
// from the naive forward without the rounding by more than min_move (so the rounding is
// really there), and a value of the option that is neither choice refused. ids[i] =
// (i * mul + add) % vocab.
static void s_fp8_matches_naive(const char *what, int kv_fp8, int w_fp8, int mul, int add, double min_move) {
    kvf_modelcfg_t c = s_synth_cfg();
    s_synth_t s;
    kvf_safetensors_t *st = s_syn_open(&s, &c, kv_fp8 ? "fp8.safetensors" : "w8.safetensors");
    kvf_err_t err;
    int n = 100;
    int32_t ids[100];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * mul + add) % c.vocab_size);
    const size_t nl = (size_t)n * c.vocab_size;
    float *ref = malloc(nl * 4), *mine = malloc(nl * 4), *f32 = malloc(nl * 4);
    s_naive_forward_q(&s, &c, ids, n, kv_fp8, w_fp8, ref);
    s_naive_forward_q(&s, &c, ids, n, 0, 0, f32);
    kvf_backend_opts_t o = s_opts(16, 2);
    o.kv_dtype = kv_fp8 ? KVF_KV_FP8 : KVF_KV_AUTO;
    o.quant = w_fp8 ? KVF_QUANT_FP8 : KVF_QUANT_NONE;
    kvf_backend_t *be = kvf_cpu_backend_new(&c, st, &o, &err);
    cr_assert_not_null(be, "%s", err.msg);
    s_teacher_force(be, ids, n, 19, 2, mine);
    be->ops->destroy(&be);
    const double e = s_max_abs_diff(mine, ref, nl), moved = s_max_abs_diff(mine, f32, nl);
    cr_expect_leq(e, 2e-4, "%s: max abs error vs the naive forward that rounds the same values %g", what, e);
    cr_expect_gt(moved, min_move, "%s: logits moved only %g from the unrounded forward's", what, moved);
    fprintf(stderr, "cpu %s: max abs error vs naive-with-rounding %.3g; max move from the unrounded %.3g\n", what, e,
            moved);
    if (kv_fp8) o.kv_dtype = 7;  // neither auto nor fp8
    if (w_fp8) o.quant = 5;      // neither none nor fp8
    cr_expect_null(kvf_cpu_backend_new(&c, st, &o, &err));
    cr_expect_eq(err.code, KVF_E_INVAL, "%s", err.msg);
    kvf_safetensors_destroy(&st);
    free(ref), free(mine), free(f32);
    s_syn_free(&s);
}

// --kv-cache-dtype fp8 on the cpu: its cache holds K and V rounded to E4M3 (as
// the cuda backend's bytes do).
Test(forward, fp8_kv_cache_matches_naive_rounding) { s_fp8_matches_naive("fp8 KV cache", 1, 0, 53, 5, 1e-2); }

// --quantization fp8 on the cpu: weight rows and the linear layers' input rows
// rounded to E4M3 with a scale per row, as the cuda backend's FP8 GEMMs take them.
Test(forward, fp8_linear_layers_match_naive_rounding) {
    s_fp8_matches_naive("fp8 linear layers", 0, 1, 41, 3, 2e-2);
}

Test(forward, missing_or_misshaped_tensor_is_named) {
    kvf_modelcfg_t c = s_synth_cfg();
    s_synth_t s;
    s_syn_build(&s, &c);
    char path[256];
    kvf_err_t err;
    kvf_backend_opts_t o = s_opts(16, 1);
    s_tmp_path(path, sizeof path, "missing.safetensors");
    s_syn_write(&s, path, "model.layers.1.mlp.up_proj.weight", NULL);
    kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
    cr_assert_not_null(st, "%s", err.msg);
    unlink(path);
    cr_assert_null(kvf_cpu_backend_new(&c, st, &o, &err));
    cr_assert(strstr(err.msg, "model.layers.1.mlp.up_proj.weight"), "%s", err.msg);
    kvf_safetensors_destroy(&st);

    s_tmp_path(path, sizeof path, "misshaped.safetensors");
    s_syn_write(&s, path, NULL, "model.layers.0.self_attn.k_proj.bias");
    st = kvf_safetensors_open_file(path, &err);
    cr_assert_not_null(st, "%s", err.msg);
    unlink(path);
    cr_assert_null(kvf_cpu_backend_new(&c, st, &o, &err));
    cr_assert(strstr(err.msg, "model.layers.0.self_attn.k_proj.bias"), "%s", err.msg);
    kvf_safetensors_destroy(&st);
    s_syn_free(&s);
}

// ---------------------------------------------------------------- bad input, memory plan

Test(forward, bad_batches_are_rejected) {
    kvf_modelcfg_t c = s_synth_cfg();
    kvf_backend_opts_t o = s_opts(16, 2);
    kvf_err_t err;
    kvf_backend_t *be = kvf_cpu_backend_new(&c, NULL, &o, &err);  // random weights
    cr_assert_not_null(be, "%s", err.msg);
    float *out = malloc((size_t)o.max_logit_rows * c.vocab_size * 4);
    int32_t table[64], ids[400];
    for (int i = 0; i < 64; i++) table[i] = i;
    for (int i = 0; i < 400; i++) ids[i] = i % c.vocab_size;
    int32_t nn = 5, np = 0;
    kvf_batch_t ok = {1, 5, ids, &nn, &np, table, o.max_blocks_per_seq, 0};
    cr_assert_eq(be->ops->forward(be, &ok, out, &err), 0, "%s", err.msg);
    for (int i = 0; i < c.vocab_size; i++) cr_assert(isfinite(out[i]));

    ids[2] = c.vocab_size;  // token id out of the vocabulary
    cr_assert_eq(be->ops->forward(be, &ok, out, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert(strstr(err.msg, "vocabulary"), "%s", err.msg);
    ids[2] = -1;
    cr_assert_eq(be->ops->forward(be, &ok, out, &err), -1);
    ids[2] = 2;

    table[0] = be->n_blocks;  // block id out of range
    cr_assert_eq(be->ops->forward(be, &ok, out, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    table[0] = -3;
    cr_assert_eq(be->ops->forward(be, &ok, out, &err), -1);
    table[0] = 0;

    int32_t big = o.max_step_tokens + 1;  // too many tokens in one step
    kvf_batch_t too_many = {1, big, ids, &big, &np, table, o.max_blocks_per_seq, 0};
    cr_assert_eq(be->ops->forward(be, &too_many, out, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);

    int32_t past = o.max_blocks_per_seq * o.block_size - 2;  // runs past the longest sequence
    kvf_batch_t too_long = {1, 5, ids, &nn, &past, table, o.max_blocks_per_seq, 0};
    cr_assert_eq(be->ops->forward(be, &too_long, out, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);

    int32_t bad_sum = 4;  // n_new does not add up to n_tokens
    kvf_batch_t mismatch = {1, 5, ids, &bad_sum, &np, table, o.max_blocks_per_seq, 0};
    cr_assert_eq(be->ops->forward(be, &mismatch, out, &err), -1);

    int32_t zero = 0;
    kvf_batch_t empty = {1, 0, ids, &zero, &np, table, o.max_blocks_per_seq, 0};
    cr_assert_eq(be->ops->forward(be, &empty, out, &err), -1);
    kvf_batch_t short_table = {1, 5, ids, &nn, &np, table, 0, 0};
    cr_assert_eq(be->ops->forward(be, &short_table, out, &err), -1);
    cr_assert_eq(be->ops->forward(be, NULL, out, &err), -1);

    // still works after all that
    cr_assert_eq(be->ops->forward(be, &ok, out, &err), 0, "%s", err.msg);
    be->ops->destroy(&be);
    free(out);
}

Test(forward, memory_plan) {
    kvf_modelcfg_t c = s_synth_cfg();
    kvf_backend_opts_t o = s_opts(16, 1);
    o.memory_budget = 64ull << 20;
    o.cache_max_entry_count = 0.5;
    kvf_err_t err;
    kvf_backend_t *be = kvf_cpu_backend_new(&c, NULL, &o, &err);
    cr_assert_not_null(be, "%s", err.msg);
    uint64_t block_bytes = 2ull * c.n_layers * 16 * c.n_kv_heads * c.head_dim * 4;
    cr_assert_eq(be->free_bytes_at_start, o.memory_budget - be->weights_bytes - be->workspace_bytes);
    cr_assert_eq((uint64_t)be->n_blocks, (be->free_bytes_at_start / 2) / block_bytes);
    cr_assert_eq(be->kv_bytes, (uint64_t)be->n_blocks * block_bytes);
    cr_assert_eq(be->weights_bytes, kvf_modelcfg_n_params(&c) * 4);
    be->ops->destroy(&be);

    o.memory_budget = 0;  // the machine's MemAvailable
    o.cache_max_entry_count = 4;  // a number of blocks
    be = kvf_cpu_backend_new(&c, NULL, &o, &err);
    cr_assert_not_null(be, "%s", err.msg);
    cr_assert_eq(be->n_blocks, 4);
    cr_assert_gt(be->free_bytes_at_start, 0);
    be->ops->destroy(&be);
    o.cache_max_entry_count = 0.5;

    o.memory_budget = 4096;  // cannot even hold the weights
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_NOMEM);
    cr_assert(strstr(err.msg, "--memory-budget"), "%s", err.msg);

    o.memory_budget = 64ull << 20;
    o.cache_max_entry_count = 1e9;  // more blocks than fit
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_NOMEM);

    o.cache_max_entry_count = INFINITY;
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    o.cache_max_entry_count = NAN;
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);

    o.cache_max_entry_count = 0.5;
    o.block_size = 0;
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    o.block_size = 16;
    o.max_blocks_per_seq = 0;
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    o.max_blocks_per_seq = 20;
    o.tp_size = 2;  // the cpu backend is one rank
    cr_assert_null(kvf_cpu_backend_new(&c, NULL, &o, &err));
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED);
}
