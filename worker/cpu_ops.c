// worker/cpu_ops.c — the CPU reference ops (float32), see cpu_ops.h.
//
// Exactness first: every op follows the float32 arithmetic of Hugging Face
// transformers' Llama modules (rotate_half RoPE, RMSNorm scaled before the
// weight, softmax with max subtraction, silu as x / (1 + exp(-x))). Dot products
// use eight fixed lanes and one fixed reduction order, so each output element is
// computed identically whatever kernel, tile or thread produces it. The file is
// built with -ffp-contract=off (cpu.cmake): no fused multiply-adds, so the
// result does not depend on the instruction set either.
#include "worker/cpu_ops.h"

#include <math.h>
#include <string.h>

// Vector clones (x86-64 with GCC): the AVX2 copy only widens the lanes; without
// FMA its arithmetic is the same as the SSE2 copy's, element for element.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define KVF_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KVF_CLONES
#endif

#define KVF_INLINE static inline __attribute__((always_inline))

typedef float v8f __attribute__((vector_size(32)));

KVF_INLINE v8f s_load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

KVF_INLINE void s_store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

// The one reduction order of the eight lanes.
KVF_INLINE float s_hsum8(v8f a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

// dot(a, b) over n: lane l sums the elements 8i + l, then the lanes are reduced
// (s_hsum8) and the tail (n % 8 elements, in order) is added.
KVF_INLINE float s_dot(const float *a, const float *b, int n) {
    v8f acc = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) acc += s_load8(a + i) * s_load8(b + i);
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    return s_hsum8(acc) + tail;
}

// ---------------------------------------------------------------- elementwise

void kvf_cpu_embed(float *out, const float *table, const int32_t *ids, int n, int dim) {
    for (int t = 0; t < n; t++)
        memcpy(out + (size_t)t * dim, table + (size_t)ids[t] * dim, (size_t)dim * sizeof(float));
}

void kvf_cpu_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * dim;  // (dim)
        float *orow = out + (size_t)t * dim;    // (dim)
        double ss = 0.0;
        for (int i = 0; i < dim; i++) ss += (double)xr[i] * (double)xr[i];
        float var = (float)(ss / dim);
        float scale = 1.0f / sqrtf(var + eps);
        for (int i = 0; i < dim; i++) orow[i] = w[i] * (xr[i] * scale);
    }
}

void kvf_cpu_silu_mul(float *out, const float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

// ---------------------------------------------------------------- matmul

// out[t, o..o+3] for tokens t and t+1 (two rows of x) against four rows of w.
KVF_INLINE void s_kernel_2x4(float *out, const float *x, const float *w, const float *bias, int d_in,
                             int d_out, int t, int o) {
    const float *x0 = x + (size_t)t * d_in, *x1 = x0 + d_in;
    const float *w0 = w + (size_t)o * d_in, *w1 = w0 + d_in, *w2 = w1 + d_in, *w3 = w2 + d_in;
    v8f a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    int i = 0;
    for (; i + 8 <= d_in; i += 8) {
        v8f xv0 = s_load8(x0 + i), xv1 = s_load8(x1 + i);
        v8f wv0 = s_load8(w0 + i), wv1 = s_load8(w1 + i), wv2 = s_load8(w2 + i), wv3 = s_load8(w3 + i);
        a00 += xv0 * wv0;
        a01 += xv0 * wv1;
        a02 += xv0 * wv2;
        a03 += xv0 * wv3;
        a10 += xv1 * wv0;
        a11 += xv1 * wv1;
        a12 += xv1 * wv2;
        a13 += xv1 * wv3;
    }
    float t00 = 0, t01 = 0, t02 = 0, t03 = 0, t10 = 0, t11 = 0, t12 = 0, t13 = 0;
    for (; i < d_in; i++) {
        t00 += x0[i] * w0[i];
        t01 += x0[i] * w1[i];
        t02 += x0[i] * w2[i];
        t03 += x0[i] * w3[i];
        t10 += x1[i] * w0[i];
        t11 += x1[i] * w1[i];
        t12 += x1[i] * w2[i];
        t13 += x1[i] * w3[i];
    }
    float r[8] = {s_hsum8(a00) + t00, s_hsum8(a01) + t01, s_hsum8(a02) + t02, s_hsum8(a03) + t03,
                  s_hsum8(a10) + t10, s_hsum8(a11) + t11, s_hsum8(a12) + t12, s_hsum8(a13) + t13};
    if (bias)
        for (int j = 0; j < 4; j++) {
            r[j] += bias[o + j];
            r[4 + j] += bias[o + j];
        }
    memcpy(out + (size_t)t * d_out + o, r, 4 * sizeof(float));
    memcpy(out + (size_t)(t + 1) * d_out + o, r + 4, 4 * sizeof(float));
}

// out[t, o..o+3] for one token against four rows of w.
KVF_INLINE void s_kernel_1x4(float *out, const float *x, const float *w, const float *bias, int d_in,
                             int d_out, int t, int o) {
    const float *x0 = x + (size_t)t * d_in;
    const float *w0 = w + (size_t)o * d_in, *w1 = w0 + d_in, *w2 = w1 + d_in, *w3 = w2 + d_in;
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int i = 0;
    for (; i + 8 <= d_in; i += 8) {
        v8f xv = s_load8(x0 + i);
        a0 += xv * s_load8(w0 + i);
        a1 += xv * s_load8(w1 + i);
        a2 += xv * s_load8(w2 + i);
        a3 += xv * s_load8(w3 + i);
    }
    float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (; i < d_in; i++) {
        t0 += x0[i] * w0[i];
        t1 += x0[i] * w1[i];
        t2 += x0[i] * w2[i];
        t3 += x0[i] * w3[i];
    }
    float r[4] = {s_hsum8(a0) + t0, s_hsum8(a1) + t1, s_hsum8(a2) + t2, s_hsum8(a3) + t3};
    if (bias)
        for (int j = 0; j < 4; j++) r[j] += bias[o + j];
    memcpy(out + (size_t)t * d_out + o, r, 4 * sizeof(float));
}

// Tokens per tile: a tile of x stays in cache while a thread's rows of w pass it.
#define KVF_MM_TOKEN_TILE 64

KVF_CLONES
void kvf_cpu_matmul_slice(float *out, const float *x, const float *w, const float *bias, int n, int d_in,
                          int d_out, int o_begin, int o_end) {
    for (int t0 = 0; t0 < n; t0 += KVF_MM_TOKEN_TILE) {
        int t1 = t0 + KVF_MM_TOKEN_TILE < n ? t0 + KVF_MM_TOKEN_TILE : n;
        int o = o_begin;
        for (; o + 4 <= o_end; o += 4) {
            int t = t0;
            for (; t + 2 <= t1; t += 2) s_kernel_2x4(out, x, w, bias, d_in, d_out, t, o);
            for (; t < t1; t++) s_kernel_1x4(out, x, w, bias, d_in, d_out, t, o);
        }
        for (; o < o_end; o++)
            for (int t = t0; t < t1; t++) {
                float r = s_dot(x + (size_t)t * d_in, w + (size_t)o * d_in, d_in);
                if (bias) r += bias[o];
                out[(size_t)t * d_out + o] = r;
            }
    }
}

void kvf_cpu_matmul(float *out, const float *x, const float *w, const float *bias, int n, int d_in, int d_out) {
    kvf_cpu_matmul_slice(out, x, w, bias, n, d_in, d_out, 0, d_out);
}

// ---------------------------------------------------------------- rope

// transformers' _compute_default_rope_parameters, linear scaling (inv_freq /
// factor) and _compute_llama3_parameters, in float32 as torch evaluates them
// (a python scalar meets a float32 tensor as a float32; `c / t` is
// `t.reciprocal() * c`).
void kvf_cpu_rope_inv_freq(float *inv_freq, const kvf_modelcfg_t *cfg) {
    int half = cfg->head_dim / 2;
    float base = (float)cfg->rope_theta;
    float dimf = (float)cfg->head_dim;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / dimf;
        inv_freq[i] = 1.0f / powf(base, e);
    }
    if (cfg->rope_type == KVF_ROPE_LINEAR) {
        float factor = (float)cfg->rope_factor;
        for (int i = 0; i < half; i++) inv_freq[i] = inv_freq[i] / factor;
    } else if (cfg->rope_type == KVF_ROPE_LLAMA3) {
        float factor = (float)cfg->rope_factor;
        double old_ctx = (double)cfg->rope_original_max_position;
        float low = (float)cfg->rope_low_freq_factor;
        float low_freq_wavelen = (float)(old_ctx / cfg->rope_low_freq_factor);
        float high_freq_wavelen = (float)(old_ctx / cfg->rope_high_freq_factor);
        float two_pi = (float)(2.0 * M_PI);
        float span = (float)(cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i];
            float wavelen = two_pi / f;  // the order of transformers' float32 ops, for the same bits
            float f_llama = wavelen > low_freq_wavelen ? f / factor : f;
            float smooth = ((float)old_ctx / wavelen - low) / span;
            float smoothed = (1.0f - smooth) * f_llama / factor + smooth * f_llama;
            int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            inv_freq[i] = medium ? smoothed : f_llama;
        }
    }
}

void kvf_cpu_rope(float *x, const int32_t *pos, const float *inv_freq, int n, int n_heads, int head_dim) {
    int half = head_dim / 2;
    for (int t = 0; t < n; t++) {
        float p = (float)pos[t];
        float *xt = x + (size_t)t * n_heads * head_dim;  // (n_heads, head_dim)
        for (int i = 0; i < half; i++) {
            float freq = inv_freq[i] * p;
            float c = cosf(freq), s = sinf(freq);
            for (int h = 0; h < n_heads; h++) {
                float *xh = xt + (size_t)h * head_dim;
                float x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c + (-x2) * s;
                xh[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

// ---------------------------------------------------------------- kv cache + attention

void kvf_cpu_kv_write(float *k_cache, float *v_cache, const float *k, const float *v, const int32_t *pos,
                      const int32_t *block_table, int n, int n_kv, int head_dim, int block_size) {
    size_t row = (size_t)n_kv * head_dim;
    for (int t = 0; t < n; t++) {
        int32_t p = pos[t];
        size_t slot = (size_t)block_table[p / block_size] * block_size + (size_t)(p % block_size);
        memcpy(k_cache + slot * row, k + (size_t)t * row, row * sizeof(float));
        memcpy(v_cache + slot * row, v + (size_t)t * row, row * sizeof(float));
    }
}

KVF_CLONES
void kvf_cpu_attention_heads(float *out, const float *q, const float *k_cache, const float *v_cache,
                             const int32_t *block_table, int n, int n_past, int n_heads, int n_kv,
                             int head_dim, int block_size, int h_begin, int h_end, float *scratch) {
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    const int group = n_heads / n_kv;
    const size_t row = (size_t)n_kv * head_dim;  // floats per cached token
    for (int h = h_begin; h < h_end; h++) {
        const int kvh = h / group;
        for (int i = 0; i < n; i++) {
            const int n_ctx = n_past + i + 1;  // keys 0 .. n_past + i (causal)
            const float *qh = q + ((size_t)i * n_heads + h) * head_dim;  // (head_dim)
            float *oh = out + ((size_t)i * n_heads + h) * head_dim;      // (head_dim)
            float mx = -INFINITY;
            for (int j = 0; j < n_ctx; j++) {
                size_t slot = (size_t)block_table[j / block_size] * block_size + (size_t)(j % block_size);
                const float *kj = k_cache + slot * row + (size_t)kvh * head_dim;  // (head_dim)
                float s = s_dot(qh, kj, head_dim) * scale;
                scratch[j] = s;
                if (s > mx) mx = s;
            }
            double sum = 0.0;
            for (int j = 0; j < n_ctx; j++) {
                float e = expf(scratch[j] - mx);
                scratch[j] = e;
                sum += e;
            }
            const float total = (float)sum;
            memset(oh, 0, (size_t)head_dim * sizeof(float));
            for (int j = 0; j < n_ctx; j++) {
                size_t slot = (size_t)block_table[j / block_size] * block_size + (size_t)(j % block_size);
                const float *vj = v_cache + slot * row + (size_t)kvh * head_dim;  // (head_dim)
                const float pj = scratch[j] / total;
                int d = 0;
                for (; d + 8 <= head_dim; d += 8) s_store8(oh + d, s_load8(oh + d) + pj * s_load8(vj + d));
                for (; d < head_dim; d++) oh[d] += pj * vj[d];
            }
        }
    }
}

void kvf_cpu_attention(float *out, const float *q, const float *k_cache, const float *v_cache,
                       const int32_t *block_table, int n, int n_past, int n_heads, int n_kv, int head_dim,
                       int block_size, float *scratch) {
    kvf_cpu_attention_heads(out, q, k_cache, v_cache, block_table, n, n_past, n_heads, n_kv, head_dim,
                            block_size, 0, n_heads, scratch);
}
