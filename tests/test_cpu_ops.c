// tests/test_cpu_ops.c — each CPU reference op against a naive double-precision
// reference written from the formula, on random inputs with odd sizes.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cpu_ops.h"

static float s_rnd(uint64_t *st) {
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*st >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static float *s_rand_buf(size_t n, uint64_t seed) {
    float *b = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) b[i] = s_rnd(&seed);
    return b;
}

// |a - b| <= tol * (1 + |b|) for every element; returns the worst ratio.
static void s_assert_close(const float *a, const double *b, size_t n, double tol, const char *what) {
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (1.0 + fabs(b[i]));
        cr_assert_leq(e, tol, "%s[%zu]: %.9g vs %.9g", what, i, a[i], b[i]);
    }
}

Test(cpu_ops, embed_and_silu_mul) {
    float *table = s_rand_buf(11 * 7, 1);
    int32_t ids[3] = {10, 0, 4};
    float out[3 * 7];
    kvf_cpu_embed(out, table, ids, 3, 7);
    for (int t = 0; t < 3; t++) cr_assert_eq(memcmp(out + t * 7, table + ids[t] * 7, 7 * sizeof(float)), 0);
    free(table);

    float *g = s_rand_buf(131, 2), *u = s_rand_buf(131, 3), o[131];
    for (int i = 0; i < 131; i++) g[i] *= 8;
    kvf_cpu_silu_mul(o, g, u, 131);
    double ref[131];
    for (int i = 0; i < 131; i++) ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    s_assert_close(o, ref, 131, 1e-6, "silu_mul");
    free(g);
    free(u);
}

Test(cpu_ops, rmsnorm) {
    int n = 5, dim = 67;
    float *x = s_rand_buf((size_t)n * dim, 4), *w = s_rand_buf(dim, 5), *out = malloc((size_t)n * dim * 4);
    for (int i = 0; i < n * dim; i++) x[i] *= 30;  // large values: the sum of squares must not lose them
    kvf_cpu_rmsnorm(out, x, w, n, dim, 1e-5f);
    double *ref = malloc((size_t)n * dim * sizeof(double));
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)x[t * dim + i] * x[t * dim + i];
        double r = 1.0 / sqrt(ss / dim + 1e-5);
        for (int i = 0; i < dim; i++) ref[t * dim + i] = x[t * dim + i] * r * w[i];
    }
    s_assert_close(out, ref, (size_t)n * dim, 1e-6, "rmsnorm");
    free(x), free(w), free(out), free(ref);
}

static void s_check_matmul(int n, int d_in, int d_out, int with_bias) {
    float *x = s_rand_buf((size_t)n * d_in, 6), *w = s_rand_buf((size_t)d_out * d_in, 7);
    float *b = with_bias ? s_rand_buf(d_out, 8) : NULL;
    float *out = malloc((size_t)n * d_out * 4), *sliced = malloc((size_t)n * d_out * 4);
    double *ref = malloc((size_t)n * d_out * sizeof(double));
    kvf_cpu_matmul(out, x, w, b, n, d_in, d_out);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < d_out; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < d_in; i++) acc += (double)x[t * d_in + i] * w[(size_t)o * d_in + i];
            ref[(size_t)t * d_out + o] = acc;
        }
    s_assert_close(out, ref, (size_t)n * d_out, 2e-6 * sqrt(d_in), "matmul");
    // Any slicing gives the same bits (what makes threads not matter).
    for (int o0 = 0; o0 < d_out;) {
        int o1 = o0 + 1 + (o0 * 7) % 9;
        if (o1 > d_out) o1 = d_out;
        kvf_cpu_matmul_slice(sliced, x, w, b, n, d_in, d_out, o0, o1);
        o0 = o1;
    }
    cr_assert_eq(memcmp(out, sliced, (size_t)n * d_out * 4), 0);
    // A row alone gives the same bits as inside a batch.
    kvf_cpu_matmul(sliced, x + (size_t)(n - 1) * d_in, w, b, 1, d_in, d_out);
    cr_assert_eq(memcmp(out + (size_t)(n - 1) * d_out, sliced, (size_t)d_out * 4), 0);
    free(x), free(w), free(b), free(out), free(sliced), free(ref);
}

Test(cpu_ops, matmul_without_bias) {
    s_check_matmul(1, 64, 32, 0);
    s_check_matmul(7, 67, 37, 0);
    s_check_matmul(70, 203, 19, 0);  // more than a token tile
}

Test(cpu_ops, matmul_with_bias) {
    s_check_matmul(3, 5, 3, 1);
    s_check_matmul(9, 131, 45, 1);
}

// ---------------------------------------------------------------- rope

static kvf_modelcfg_t s_rope_cfg(kvf_rope_type type, int head_dim) {
    kvf_modelcfg_t c;
    memset(&c, 0, sizeof c);
    c.head_dim = head_dim;
    c.rope_theta = 500000.0;
    c.rope_type = type;
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_position = 8192;
    return c;
}

// inv_freq straight from the papers / transformers' formulas, in double.
static double s_ref_inv_freq(const kvf_modelcfg_t *c, int i) {
    double f = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
    if (c->rope_type == KVF_ROPE_LINEAR) return f / c->rope_factor;
    if (c->rope_type == KVF_ROPE_LLAMA3) {
        double wavelen = 2 * M_PI / f;
        double low_wl = c->rope_original_max_position / c->rope_low_freq_factor;
        double high_wl = c->rope_original_max_position / c->rope_high_freq_factor;
        if (wavelen < high_wl) return f;
        if (wavelen > low_wl) return f / c->rope_factor;
        double s = (c->rope_original_max_position / wavelen - c->rope_low_freq_factor) /
                   (c->rope_high_freq_factor - c->rope_low_freq_factor);
        return (1 - s) * f / c->rope_factor + s * f;
    }
    return f;
}

Test(cpu_ops, rope_inv_freq_default_linear_llama3) {
    kvf_rope_type types[3] = {KVF_ROPE_DEFAULT, KVF_ROPE_LINEAR, KVF_ROPE_LLAMA3};
    for (int ti = 0; ti < 3; ti++) {
        kvf_modelcfg_t c = s_rope_cfg(types[ti], 128);
        float f[64];
        kvf_cpu_rope_inv_freq(f, &c);
        for (int i = 0; i < 64; i++) {
            double r = s_ref_inv_freq(&c, i);
            cr_assert_leq(fabs(f[i] - r) / r, 2e-6, "type %d i %d: %g vs %g", ti, i, f[i], r);
        }
    }
    // llama3 leaves high frequencies alone, divides low ones by the factor and
    // smooths in between.
    kvf_modelcfg_t d = s_rope_cfg(KVF_ROPE_DEFAULT, 128), l3 = s_rope_cfg(KVF_ROPE_LLAMA3, 128);
    float fd[64], fl[64];
    kvf_cpu_rope_inv_freq(fd, &d);
    kvf_cpu_rope_inv_freq(fl, &l3);
    cr_assert_eq(fl[0], fd[0]);
    cr_assert_float_eq(fl[63], fd[63] / 8, fd[63] * 1e-6);
    int medium = 0;
    for (int i = 0; i < 64; i++)
        if (fl[i] < fd[i] && fl[i] > fd[i] / 8 * 1.0001f) medium++;
    cr_assert_gt(medium, 0);
}

Test(cpu_ops, rope_rotate_half) {
    int n = 3, H = 5, hd = 64;
    float *x = s_rand_buf((size_t)n * H * hd, 9);
    float *orig = malloc((size_t)n * H * hd * 4);
    memcpy(orig, x, (size_t)n * H * hd * 4);
    int32_t pos[3] = {0, 17, 4999};
    kvf_modelcfg_t c = s_rope_cfg(KVF_ROPE_LLAMA3, hd);
    c.rope_theta = 10000.0;
    c.rope_original_max_position = 256;
    float f[32];
    kvf_cpu_rope_inv_freq(f, &c);
    kvf_cpu_rope(x, pos, f, n, H, hd);
    double *ref = malloc((size_t)n * H * hd * sizeof(double));
    for (int t = 0; t < n; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < hd / 2; i++) {
                size_t b = ((size_t)t * H + h) * hd;
                double a = (double)(float)(f[i] * (float)pos[t]);  // the angle as HF forms it in float
                ref[b + i] = orig[b + i] * cos(a) - orig[b + i + hd / 2] * sin(a);
                ref[b + i + hd / 2] = orig[b + i + hd / 2] * cos(a) + orig[b + i] * sin(a);
            }
    s_assert_close(x, ref, (size_t)n * H * hd, 1e-6, "rope");
    // position 0 is the identity
    cr_assert_eq(memcmp(x, orig, (size_t)H * hd * 4), 0);
    free(x), free(orig), free(ref);
}

// ---------------------------------------------------------------- kv cache + attention

static void s_check_attention(int block_size, int n_heads, int n_kv, int head_dim, int n_past, int n) {
    int ctx = n_past + n, n_seq_blocks = (ctx + block_size - 1) / block_size, n_blocks = n_seq_blocks * 2 + 3;
    size_t row = (size_t)n_kv * head_dim;
    float *kc = calloc((size_t)n_blocks * block_size * row, 4), *vc = calloc((size_t)n_blocks * block_size * row, 4);
    float *k = s_rand_buf((size_t)ctx * row, 10), *v = s_rand_buf((size_t)ctx * row, 11);
    float *q = s_rand_buf((size_t)n * n_heads * head_dim, 12);
    for (size_t i = 0; i < (size_t)n * n_heads * head_dim; i++) q[i] *= 3;  // peaky softmax
    int32_t *table = malloc((size_t)n_seq_blocks * sizeof(int32_t));
    for (int i = 0; i < n_seq_blocks; i++) table[i] = (int32_t)((i * 5 + 2) % n_blocks);  // scattered, distinct
    int32_t *pos = malloc((size_t)ctx * sizeof(int32_t));
    for (int i = 0; i < ctx; i++) pos[i] = i;
    // the past, then the new tokens, as two writes
    kvf_cpu_kv_write(kc, vc, k, v, pos, table, n_past, n_kv, head_dim, block_size);
    kvf_cpu_kv_write(kc, vc, k + (size_t)n_past * row, v + (size_t)n_past * row, pos + n_past, table, n, n_kv,
                     head_dim, block_size);
    for (int t = 0; t < ctx; t++) {
        size_t slot = (size_t)table[t / block_size] * block_size + t % block_size;
        cr_assert_eq(memcmp(kc + slot * row, k + (size_t)t * row, row * 4), 0);
        cr_assert_eq(memcmp(vc + slot * row, v + (size_t)t * row, row * 4), 0);
    }
    float *out = malloc((size_t)n * n_heads * head_dim * 4), *scratch = malloc((size_t)ctx * 4);
    kvf_cpu_attention(out, q, kc, vc, table, n, n_past, n_heads, n_kv, head_dim, block_size, scratch);
    double *ref = malloc((size_t)n * n_heads * head_dim * sizeof(double)), *p = malloc((size_t)ctx * sizeof(double));
    int group = n_heads / n_kv;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + ((size_t)i * n_heads + h) * head_dim;
            int kvh = h / group, last = n_past + i;
            double mx = -1e300, sum = 0;
            for (int j = 0; j <= last; j++) {
                double d = 0;
                for (int e = 0; e < head_dim; e++) d += (double)qh[e] * k[(size_t)j * row + kvh * head_dim + e];
                p[j] = d / sqrt((double)head_dim);
                if (p[j] > mx) mx = p[j];
            }
            for (int j = 0; j <= last; j++) sum += (p[j] = exp(p[j] - mx));
            for (int e = 0; e < head_dim; e++) {
                double o = 0;
                for (int j = 0; j <= last; j++) o += p[j] / sum * v[(size_t)j * row + kvh * head_dim + e];
                ref[((size_t)i * n_heads + h) * head_dim + e] = o;
            }
        }
    s_assert_close(out, ref, (size_t)n * n_heads * head_dim, 2e-6, "attention");
    // heads computed one at a time give the same bits
    float *one = malloc((size_t)n * n_heads * head_dim * 4);
    for (int h = n_heads - 1; h >= 0; h--)
        kvf_cpu_attention_heads(one, q, kc, vc, table, n, n_past, n_heads, n_kv, head_dim, block_size, h, h + 1,
                                scratch);
    cr_assert_eq(memcmp(one, out, (size_t)n * n_heads * head_dim * 4), 0);
    free(kc), free(vc), free(k), free(v), free(q), free(table), free(pos), free(out), free(scratch), free(ref),
        free(p), free(one);
}

Test(cpu_ops, attention_block16_gqa_1_4_8) {
    s_check_attention(16, 8, 8, 64, 21, 6);   // MHA, ends mid-block
    s_check_attention(16, 8, 2, 128, 0, 37);  // GQA 4, prefill from scratch, ends mid-block
    s_check_attention(16, 8, 1, 64, 47, 1);   // GQA 8, one decode token that fills a block
}

Test(cpu_ops, attention_block64_gqa_1_4_8) {
    s_check_attention(64, 4, 4, 128, 100, 3);
    s_check_attention(64, 8, 2, 64, 63, 2);   // crosses a block boundary
    s_check_attention(64, 16, 2, 128, 0, 1);  // GQA 8, a single token
    s_check_attention(64, 8, 1, 64, 5, 70);   // GQA 8, chunk longer than a block
}

Test(cpu_ops, attention_odd_head_dim) {
    s_check_attention(16, 6, 3, 36, 9, 4);  // head_dim not a multiple of 8 (tail path)
}
