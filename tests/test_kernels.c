// tests/test_kernels.c — every CUDA op against the CPU reference op of the same
// name (worker/cpu_ops.h), on fresh random inputs (GPU: LABELS gpu).
//
// Inputs are drawn in f32, rounded to bf16 once, and the CPU reference gets the
// same rounded values, so the only differences are the GPU's own: its bf16
// outputs (half an ulp = 2^-9 relative), bf16 intermediates where the kernel
// stores one, and f32 summation order. Tolerances (|gpu - cpu|):
//   embed, gather, kv-cache V, argmax ........ exact
//   rmsnorm, silu_mul, rope (bf16 out) ....... <= 8e-3 |ref| + 1e-5 (a bf16 ulp plus order)
//   attention (bf16 out, f32 softmax) ........ max <= 8e-3 max|ref|, rel L2 <= 4e-3
//   gemm bf16 out ............................ max <= 8e-3 max|ref|, rel L2 <= 4e-3
//   gemm f32 out ............................. rel L2 <= 1e-5 (only the order of f32 sums)
// Every output buffer is poisoned (NaN) first, so an element never written fails.
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/fp8.h"
#include "common/safetensors.h"
#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_prefill.h"
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope_kv.h"
#include "kernels/repetition_penalty.h"
#include "kernels/sample.h"
#include "kernels/sample_rows.h"
#include "kernels/silu_mul.h"
#include "kernels/vocab_unshard.h"
#include "worker/cpu_ops.h"
#include "worker/sampler.h"
#include "worker/tp_vocab.h"

// ---------------------------------------------------------------- helpers

#define CUDA_OK(expr)                                                                       \
    do {                                                                                    \
        cudaError_t e_ = (expr);                                                            \
        cr_assert(e_ == cudaSuccess, "%s: %s", #expr, cudaGetErrorString(e_));              \
    } while (0)

#define KOK(expr)                                                                           \
    do {                                                                                    \
        kvf_err_t er_ = {0};                                                                \
        (void)er_;                                                                          \
        int rc_ = (expr);                                                                   \
        cr_assert(rc_ == 0, "%s failed", #expr);                                            \
    } while (0)

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t s_next(rng_t *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float s_unif(rng_t *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(s_next(r) >> 11) * 0x1.0p-53);
}

static int s_randint(rng_t *r, int n) { return (int)(s_next(r) % (uint64_t)n); }

// A fresh seed per test run (inputs differ from run to run), printed for replay.
static rng_t s_rng(const char *name) {
    uint64_t seed;
    const char *env = getenv("KVF_TEST_SEED");
    if (env && *env)
        seed = strtoull(env, NULL, 0);
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid() << 40;
    }
    fprintf(stderr, "%s: seed 0x%llx\n", name, (unsigned long long)seed);
    rng_t r = {seed};
    return r;
}

// Fills f with uniform values rounded to bf16; b gets the bf16 bits.
static void s_rand_bf16(rng_t *r, float *f, uint16_t *b, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        b[i] = kvf_f32_to_bf16(s_unif(r, lo, hi));
        f[i] = kvf_bf16_to_f32(b[i]);
    }
}

static void *s_dev(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    cr_assert(e == cudaSuccess, "cudaMalloc(%zu): %s", bytes, cudaGetErrorString(e));
    CUDA_OK(cudaMemset(p, 0xff, bytes ? bytes : 1));  // poison: bf16/f32 NaN
    return p;
}

static void *s_up(const void *h, size_t bytes) {
    void *d = s_dev(bytes);
    CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

static float *s_down_bf16(const void *d, size_t n) {
    uint16_t *b = malloc(n * 2 + 2);
    float *f = malloc(n * 4 + 4);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(b, d, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) f[i] = kvf_bf16_to_f32(b[i]);
    free(b);
    return f;
}

// E4M3 bytes from the device, as floats (0xff, the poison, is NaN).
static float *s_down_fp8(const void *d, size_t n) {
    uint8_t *b = malloc(n + 1);
    float *f = malloc(n * 4 + 4);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(b, d, n, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) f[i] = kvf_fp8_e4m3_to_float(b[i]);
    free(b);
    return f;
}

// Rounds f to E4M3 in place (what an FP8 cache keeps) and returns the bytes.
static uint8_t *s_to_fp8(float *f, size_t n) {
    uint8_t *b = malloc(n + 1);
    for (size_t i = 0; i < n; i++) b[i] = kvf_fp8_e4m3_from_float(f[i]), f[i] = kvf_fp8_e4m3_to_float(b[i]);
    return b;
}

// An FP8 cache written from the GPU's f32 against the host's E4M3 rounding of its
// own f32 (cpu): the two f32 differ in the last bits (sincosf, summation order),
// so a value next to a rounding tie may land on the other neighbour. Each element
// must be the host's byte or its neighbour, and at most 1 in 100 the neighbour.
static void s_expect_fp8(const char *what, const char *cs, const float *gpu, const float *cpu_f32, size_t n) {
    size_t n_neigh = 0, n_bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        const float want = kvf_fp8_e4m3_round(cpu_f32[i]);
        if (gpu[i] == want || (isnan(gpu[i]) && isnan(cpu_f32[i]))) continue;
        const float ulp = fabsf(want) >= 0x1p-6f ? ldexpf(1.0f, ilogbf(want) - 3) : 0x1p-9f;
        if (fabsf(gpu[i] - cpu_f32[i]) <= ulp * 0.5f + fabsf(cpu_f32[i]) * 1e-5f) n_neigh++;
        else if (n_bad++ == 0) first = i;
    }
    cr_expect(n_bad == 0, "%s %s: %zu of %zu elements are not the nearest E4M3 value (first [%zu]: gpu %g, cpu %g)",
              what, cs, n_bad, n, first, n_bad ? gpu[first] : 0.0, n_bad ? cpu_f32[first] : 0.0);
    cr_expect(n_neigh * 100 <= n, "%s %s: %zu of %zu elements on the other side of a tie", what, cs, n_neigh, n);
    printf("%-22s %-40s fp8: %zu of %zu next to a tie, %zu wrong\n", what, cs, n_neigh, n, n_bad);
}

static float *s_down_f32(const void *d, size_t n) {
    float *f = malloc(n * 4 + 4);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(f, d, n * 4, cudaMemcpyDeviceToHost));
    return f;
}

typedef struct {
    double max_abs, max_ref, rel_l2, max_rel_elem;  // max_rel_elem: max |a-b| / (|b| + atol)
    size_t n_bad, first_bad;
} cmp_t;

// Compares a (gpu) with b (cpu): element i fails when |a-b| > atol + rtol |b| or a is NaN.
static cmp_t s_cmp(const float *a, const float *b, size_t n, double atol, double rtol) {
    cmp_t c = {0};
    double num = 0, den = 0;
    c.first_bad = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(a[i]) || isnan(b[i])) d = INFINITY;
        if (d > c.max_abs) c.max_abs = d;
        if (fabs(b[i]) > c.max_ref) c.max_ref = fabs(b[i]);
        double rel = d / (fabs(b[i]) + atol + 1e-30);
        if (rel > c.max_rel_elem) c.max_rel_elem = rel;
        num += d * d;
        den += (double)b[i] * b[i];
        if (!(d <= atol + rtol * fabs(b[i]))) {
            if (!c.n_bad) c.first_bad = i;
            c.n_bad++;
        }
    }
    c.rel_l2 = den > 0 ? sqrt(num / den) : sqrt(num);
    return c;
}

static void s_report(const char *kernel, const char *cs, cmp_t c) {
    fprintf(stderr, "KERNEL %-14s %-34s max_abs %.3e max_ref %.3e max_rel %.3e rel_l2 %.3e bad %zu\n", kernel, cs,
            c.max_abs, c.max_ref, c.max_rel_elem, c.rel_l2, c.n_bad);
}

// Element-wise check with its own tolerance; reports and asserts.
static void s_expect(const char *kernel, const char *cs, const float *gpu, const float *cpu, size_t n, double atol,
                     double rtol) {
    cmp_t c = s_cmp(gpu, cpu, n, atol, rtol);
    s_report(kernel, cs, c);
    cr_expect(c.n_bad == 0, "%s %s: %zu of %zu elements off (first %zu: gpu %g cpu %g)", kernel, cs, c.n_bad, n,
              c.first_bad, c.n_bad ? gpu[c.first_bad] : 0.0, c.n_bad ? cpu[c.first_bad] : 0.0);
}

// Norm-wise check for outputs whose elements are sums (attention, gemm).
static void s_expect_norm(const char *kernel, const char *cs, const float *gpu, const float *cpu, size_t n,
                          double max_frac, double rel_l2) {
    cmp_t c = s_cmp(gpu, cpu, n, INFINITY, 0);
    cmp_t e = s_cmp(gpu, cpu, n, max_frac * c.max_ref, 0);  // NaN counts as bad
    c.n_bad = e.n_bad;
    s_report(kernel, cs, c);
    cr_expect(e.n_bad == 0 && c.rel_l2 <= rel_l2, "%s %s: max_abs %g (allowed %g), rel_l2 %g (allowed %g), %zu bad",
              kernel, cs, c.max_abs, max_frac * c.max_ref, c.rel_l2, rel_l2, e.n_bad);
}

// ---------------------------------------------------------------- embed, gather

Test(kernels, embed_and_gather) {
    rng_t r = s_rng("embed");
    const int cases[][3] = {{1000, 96, 37}, {513, 4096, 5}, {7, 33, 11}};  // vocab, dim, n
    for (int c = 0; c < 3; c++) {
        int V = cases[c][0], D = cases[c][1], n = cases[c][2];
        float *tf = malloc((size_t)V * D * 4);
        uint16_t *tb = malloc((size_t)V * D * 2);
        s_rand_bf16(&r, tf, tb, (size_t)V * D, -2, 2);
        int32_t *ids = malloc(n * 4);
        for (int i = 0; i < n; i++) ids[i] = s_randint(&r, V);
        uint16_t *d_t = s_up(tb, (size_t)V * D * 2);
        int32_t *d_ids = s_up(ids, n * 4);
        float *d_out = s_dev((size_t)n * D * 4);
        uint16_t *d_rows = s_dev((size_t)n * D * 2);
        kvf_err_t err;
        cr_assert(kvf_embed_f32(d_out, d_t, d_ids, n, D, V, 0, &err) == 0, "%s", err.msg);
        cr_assert(kvf_gather_rows_bf16(d_rows, d_t, d_ids, n, D, V, 0, &err) == 0, "%s", err.msg);
        float *ref = malloc((size_t)n * D * 4);
        kvf_cpu_embed(ref, tf, ids, n, D);
        float *g = s_down_f32(d_out, (size_t)n * D);
        float *g2 = s_down_bf16(d_rows, (size_t)n * D);
        char cs[64];
        snprintf(cs, sizeof cs, "V%d D%d n%d", V, D, n);
        s_expect("embed", cs, g, ref, (size_t)n * D, 0, 0);
        s_expect("gather_rows", cs, g2, ref, (size_t)n * D, 0, 0);
        free(tf), free(tb), free(ids), free(ref), free(g), free(g2);
        cudaFree(d_t), cudaFree(d_ids), cudaFree(d_out), cudaFree(d_rows);
    }
    // an id out of range gives zeros, never a fault
    int32_t bad[2] = {-1, 1 << 30};
    uint16_t tb[8] = {0};
    uint16_t *d_t = s_up(tb, sizeof tb);
    int32_t *d_ids = s_up(bad, sizeof bad);
    float *d_out = s_dev(2 * 4 * 4);
    kvf_err_t err;
    cr_assert(kvf_embed_f32(d_out, d_t, d_ids, 2, 4, 2, 0, &err) == 0);
    float *g = s_down_f32(d_out, 8);
    for (int i = 0; i < 8; i++) cr_expect(g[i] == 0.0f);
    cr_expect(kvf_embed_f32(NULL, d_t, d_ids, 2, 4, 2, 0, &err) == -1 && err.code == KVF_E_INVAL);
    free(g);
}

// A vocab-parallel rank's embedding (kvf_embed_shard_f32): rows of ids in
// [id0, id0 + n_rows) from its shard, zeros for every other id; the ranks' rows
// summed are the whole table's.
Test(kernels, embed_shard) {
    rng_t r = s_rng("embed_shard");
    const int V = 1001, D = 96, n = 41;
    float *tf = malloc((size_t)V * D * 4);
    uint16_t *tb = malloc((size_t)V * D * 2);
    s_rand_bf16(&r, tf, tb, (size_t)V * D, -2, 2);
    int32_t ids[41];
    for (int i = 0; i < n; i++) ids[i] = s_randint(&r, V);
    ids[0] = 0, ids[1] = V - 1, ids[2] = 334, ids[3] = 333;  // shard edges
    int32_t *d_ids = s_up(ids, sizeof ids);
    float *d_out = s_dev((size_t)n * D * 4);
    float *sum = calloc((size_t)n * D, 4), *ref = malloc((size_t)n * D * 4);
    kvf_cpu_embed(ref, tf, ids, n, D);
    const int T = 3, shard0[3] = {0, 334, 668}, shard_n[3] = {334, 334, 333};  // 1001 over 3 ranks
    kvf_err_t err;
    for (int p = 0; p < T; p++) {
        uint16_t *d_t = s_up(tb + (size_t)shard0[p] * D, (size_t)shard_n[p] * D * 2);
        cr_assert(kvf_embed_shard_f32(d_out, d_t, d_ids, n, D, shard0[p], shard_n[p], 0, &err) == 0, "%s", err.msg);
        float *g = s_down_f32(d_out, (size_t)n * D);
        for (int t = 0; t < n; t++) {
            const int mine = ids[t] >= shard0[p] && ids[t] < shard0[p] + shard_n[p];
            for (int d = 0; d < D; d++) {
                const float want = mine ? ref[(size_t)t * D + d] : 0.0f;
                cr_assert(g[(size_t)t * D + d] == want, "rank %d token %d (id %d) dim %d: %g, want %g", p, t, ids[t],
                          d, g[(size_t)t * D + d], want);
                sum[(size_t)t * D + d] += g[(size_t)t * D + d];
            }
        }
        free(g);
        cudaFree(d_t);
    }
    s_expect("embed_shard", "V1001 over 3 D96 n41", sum, ref, (size_t)n * D, 0, 0);
    cr_expect(kvf_embed_shard_f32(d_out, (const uint16_t *)d_out, d_ids, n, D, -1, 5, 0, &err) == -1);
    free(tf), free(tb), free(sum), free(ref);
    cudaFree(d_ids), cudaFree(d_out);
}

// ---------------------------------------------------------------- rmsnorm

Test(kernels, rmsnorm) {
    rng_t r = s_rng("rmsnorm");
    const int cases[][2] = {{1, 64}, {37, 4096}, {5, 333}, {3, 8192}, {130, 896}, {2, 16384}, {3, 4100}};
    for (int c = 0; c < 7; c++) {
        int n = cases[c][0], D = cases[c][1];
        size_t N = (size_t)n * D;
        float *x = malloc(N * 4), *res = malloc(N * 4), *w = malloc(D * 4), *ref = malloc(N * 4);
        float *xf = malloc(N * 4);
        uint16_t *xb = malloc(N * 2);
        for (size_t i = 0; i < N; i++) res[i] = s_unif(&r, -3, 3);
        for (int i = 0; i < D; i++) w[i] = s_unif(&r, 0.5f, 1.5f);
        s_rand_bf16(&r, xf, xb, N, -1, 1);
        float *d_res = s_up(res, N * 4), *d_w = s_up(w, D * 4);
        uint16_t *d_x = s_up(xb, N * 2), *d_out = s_dev(N * 2);
        kvf_err_t err;
        // plain: out = rmsnorm(res)
        cr_assert(kvf_rmsnorm(d_out, d_res, d_w, n, D, 1e-5f, 0, &err) == 0, "%s", err.msg);
        kvf_cpu_rmsnorm(ref, res, w, n, D, 1e-5f);
        float *g = s_down_bf16(d_out, N);
        char cs[64];
        snprintf(cs, sizeof cs, "n%d D%d", n, D);
        s_expect("rmsnorm", cs, g, ref, N, 1e-5, 8e-3);
        free(g);
        // fused: res += x; out = rmsnorm(res)
        CUDA_OK(cudaMemset(d_out, 0xff, N * 2));
        cr_assert(kvf_rmsnorm_add(d_out, d_res, d_x, d_w, n, D, 1e-6f, 0, &err) == 0, "%s", err.msg);
        for (size_t i = 0; i < N; i++) x[i] = res[i] + xf[i];
        kvf_cpu_rmsnorm(ref, x, w, n, D, 1e-6f);
        g = s_down_bf16(d_out, N);
        float *gres = s_down_f32(d_res, N);
        s_expect("rmsnorm_add", cs, g, ref, N, 1e-5, 8e-3);
        s_expect("rmsnorm_add.res", cs, gres, x, N, 0, 0);
        free(g), free(gres);
        // fused with an f32 x: res += x; out = rmsnorm(res)
        float *xr = malloc(N * 4);
        for (size_t i = 0; i < N; i++) xr[i] = s_unif(&r, -1, 1);
        float *d_xf = s_up(xr, N * 4);
        CUDA_OK(cudaMemcpy(d_res, res, N * 4, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemset(d_out, 0xff, N * 2));
        cr_assert(kvf_rmsnorm_add_f32(d_out, d_res, d_xf, d_w, n, D, 1e-5f, 0, &err) == 0, "%s", err.msg);
        for (size_t i = 0; i < N; i++) x[i] = res[i] + xr[i];
        kvf_cpu_rmsnorm(ref, x, w, n, D, 1e-5f);
        g = s_down_bf16(d_out, N);
        gres = s_down_f32(d_res, N);
        s_expect("rmsnorm_add_f32", cs, g, ref, N, 1e-5, 8e-3);
        s_expect("rmsnorm_add_f32.res", cs, gres, x, N, 0, 0);
        free(xr);
        cudaFree(d_xf);
        free(g), free(gres), free(x), free(res), free(w), free(ref), free(xf), free(xb);
        cudaFree(d_res), cudaFree(d_w), cudaFree(d_x), cudaFree(d_out);
    }
}

// ---------------------------------------------------------------- silu_mul

Test(kernels, silu_mul) {
    rng_t r = s_rng("silu_mul");
    const int cases[][2] = {{1, 14336}, {19, 1000}, {64, 4864}, {3, 1003}};
    for (int c = 0; c < 4; c++) {
        int n = cases[c][0], F = cases[c][1];
        size_t N = (size_t)n * 2 * F;
        float *gu = malloc(N * 4), *ref = malloc((size_t)F * 4 * n);
        uint16_t *gub = malloc(N * 2);
        s_rand_bf16(&r, gu, gub, N, -6, 6);
        for (int t = 0; t < n; t++)
            kvf_cpu_silu_mul(ref + (size_t)t * F, gu + (size_t)t * 2 * F, gu + (size_t)t * 2 * F + F, F);
        uint16_t *d_gu = s_up(gub, N * 2), *d_out = s_dev((size_t)n * F * 2);
        kvf_err_t err;
        cr_assert(kvf_silu_mul(d_out, d_gu, d_gu + F, n, F, 2 * F, 0, &err) == 0, "%s", err.msg);
        float *g = s_down_bf16(d_out, (size_t)n * F);
        char cs[64];
        snprintf(cs, sizeof cs, "n%d ff%d", n, F);
        s_expect("silu_mul", cs, g, ref, (size_t)n * F, 1e-5, 8e-3);
        free(g);
        for (size_t i = 0; i < N; i++) gu[i] = s_unif(&r, -6, 6);  // f32 inputs, not rounded
        for (int t = 0; t < n; t++)
            kvf_cpu_silu_mul(ref + (size_t)t * F, gu + (size_t)t * 2 * F, gu + (size_t)t * 2 * F + F, F);
        float *d_guf = s_up(gu, N * 4);
        CUDA_OK(cudaMemset(d_out, 0xff, (size_t)n * F * 2));
        cr_assert(kvf_silu_mul_f32(d_out, d_guf, d_guf + F, n, F, 2 * F, 0, &err) == 0, "%s", err.msg);
        g = s_down_bf16(d_out, (size_t)n * F);
        s_expect("silu_mul_f32", cs, g, ref, (size_t)n * F, 1e-5, 8e-3);
        cudaFree(d_guf);
        free(gu), free(ref), free(gub), free(g);
        cudaFree(d_gu), cudaFree(d_out);
    }
}

// ---------------------------------------------------------------- gemm

Test(kernels, gemm) {
    rng_t r = s_rng("gemm");
    void *ws = s_dev(32u << 20);
    kvf_err_t err;
    kvf_gemm_ctx_t *ctx = kvf_gemm_ctx_new(ws, 32u << 20, &err);
    cr_assert(ctx, "%s", err.msg);
    const int cases[][3] = {{1, 4096, 1024}, {37, 512, 1000}, {300, 896, 4864}, {8, 64, 512}, {128, 1024, 2048}};
    for (int c = 0; c < 5; c++) {
        int n = cases[c][0], K = cases[c][1], M = cases[c][2];
        float *x = malloc((size_t)n * K * 4), *w = malloc((size_t)M * K * 4), *ref = malloc((size_t)n * M * 4);
        uint16_t *xb = malloc((size_t)n * K * 2), *wb = malloc((size_t)M * K * 2);
        s_rand_bf16(&r, x, xb, (size_t)n * K, -1, 1);
        s_rand_bf16(&r, w, wb, (size_t)M * K, -0.1f, 0.1f);
        kvf_cpu_matmul(ref, x, w, NULL, n, K, M);
        uint16_t *d_x = s_up(xb, (size_t)n * K * 2), *d_w = s_up(wb, (size_t)M * K * 2);
        uint16_t *d_yb = s_dev((size_t)n * M * 2);
        float *d_yf = s_dev((size_t)n * M * 4);
        cr_assert(kvf_gemm(ctx, d_yb, KVF_GEMM_OUT_BF16, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        cr_assert(kvf_gemm(ctx, d_yf, KVF_GEMM_OUT_F32, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        char cs[64];
        snprintf(cs, sizeof cs, "n%d in%d out%d", n, K, M);
        float *g = s_down_bf16(d_yb, (size_t)n * M);
        s_expect_norm("gemm.bf16", cs, g, ref, (size_t)n * M, 8e-3, 4e-3);
        free(g);
        g = s_down_f32(d_yf, (size_t)n * M);
        s_expect_norm("gemm.f32", cs, g, ref, (size_t)n * M, 1e-4, 1e-5);
        // the algorithm kvf_gemm_tune keeps computes the same product
        float h_ms = 0, b_ms = 0;
        cr_assert(kvf_gemm_tune(ctx, d_yf, KVF_GEMM_OUT_F32, d_x, d_w, n, K, M, 0, &h_ms, &b_ms, &err) == 0, "%s",
                  err.msg);
        cr_expect(b_ms > 0 && b_ms <= h_ms, "%s: tuned %.4f ms, heuristic %.4f ms", cs, b_ms, h_ms);
        CUDA_OK(cudaMemset(d_yf, 0xff, (size_t)n * M * 4));
        cr_assert(kvf_gemm(ctx, d_yf, KVF_GEMM_OUT_F32, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        free(g);
        g = s_down_f32(d_yf, (size_t)n * M);
        s_expect_norm("gemm.f32.tuned", cs, g, ref, (size_t)n * M, 1e-4, 1e-5);
        // accumulate: y += x w^T (beta 1)
        cr_assert(kvf_gemm(ctx, d_yf, KVF_GEMM_OUT_F32, d_x, d_w, n, K, M, 1.0f, 0, &err) == 0, "%s", err.msg);
        float *g2 = s_down_f32(d_yf, (size_t)n * M);
        for (size_t i = 0; i < (size_t)n * M; i++) ref[i] *= 2.0f;
        s_expect_norm("gemm.f32+=", cs, g2, ref, (size_t)n * M, 1e-4, 1e-5);
        free(g), free(g2), free(x), free(w), free(ref), free(xb), free(wb);
        cudaFree(d_x), cudaFree(d_w), cudaFree(d_yb), cudaFree(d_yf);
    }
    cr_expect(kvf_gemm(ctx, NULL, KVF_GEMM_OUT_F32, NULL, NULL, 1, 1, 1, 0, 0, &err) == -1 && err.code == KVF_E_INVAL);
    kvf_gemm_ctx_destroy(&ctx);
    cr_expect(ctx == NULL);

    // kvf_gemm_prepare: after it, row counts never seen (bucket picks) query nothing and compute the product
    ctx = kvf_gemm_ctx_new(ws, 32u << 20, &err);
    cr_assert(ctx, "%s", err.msg);
    const int K = 1024, M = 2048, n_max = 700;
    cr_assert(kvf_gemm_prepare(ctx, KVF_GEMM_OUT_BF16, n_max, K, M, 0, &err) == 0, "%s", err.msg);
    const uint64_t q0 = kvf_gemm_heuristic_calls(ctx);
    cr_expect_eq(q0, 9, "buckets 64..512 and 1024: %llu queries", (unsigned long long)q0);
    float *x = malloc((size_t)n_max * K * 4), *w = malloc((size_t)M * K * 4), *ref = malloc((size_t)n_max * M * 4);
    uint16_t *xb = malloc((size_t)n_max * K * 2), *wb = malloc((size_t)M * K * 2);
    s_rand_bf16(&r, x, xb, (size_t)n_max * K, -1, 1);
    s_rand_bf16(&r, w, wb, (size_t)M * K, -0.1f, 0.1f);
    uint16_t *d_x = s_up(xb, (size_t)n_max * K * 2), *d_w = s_up(wb, (size_t)M * K * 2);
    uint16_t *d_y = s_dev((size_t)n_max * M * 2);
    const int ns[] = {1, 37, 64, 65, 200, 511, 513, 700};
    for (int i = 0; i < 8; i++) {
        const int n = ns[i];
        CUDA_OK(cudaMemset(d_y, 0xff, (size_t)n * M * 2));
        cr_assert(kvf_gemm(ctx, d_y, KVF_GEMM_OUT_BF16, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        kvf_cpu_matmul(ref, x, w, NULL, n, K, M);
        float *g = s_down_bf16(d_y, (size_t)n * M);
        char cs[64];
        snprintf(cs, sizeof cs, "bucket pick n%d in%d out%d", n, K, M);
        s_expect_norm("gemm.bf16", cs, g, ref, (size_t)n * M, 8e-3, 4e-3);
        free(g);
    }
    cr_expect_eq(kvf_gemm_heuristic_calls(ctx), q0, "%llu queries after prepare",
                 (unsigned long long)(kvf_gemm_heuristic_calls(ctx) - q0));
    free(x), free(w), free(ref), free(xb), free(wb);
    cudaFree(d_x), cudaFree(d_w), cudaFree(d_y);
    kvf_gemm_ctx_destroy(&ctx);
    cudaFree(ws);
}

// ---------------------------------------------------------------- a paged batch

// A batch of sequences with random block tables over a pool of n_blocks blocks
// (a random permutation, so blocks of one sequence are scattered).
typedef struct {
    int n_seqs, n_tokens, max_blocks, n_blocks, bs;
    int32_t n_new[16], n_past[16];
    int32_t *bt;       // (n_seqs, max_blocks)
    int32_t *pos;      // (n_tokens)
    int32_t *tok_seq;  // (n_tokens)
} batch_t;

static batch_t s_batch(rng_t *r, int n_seqs, const int *n_past, const int *n_new, int bs) {
    batch_t b = {0};
    b.n_seqs = n_seqs;
    b.bs = bs;
    int maxb = 1;
    for (int s = 0; s < n_seqs; s++) {
        b.n_past[s] = n_past[s], b.n_new[s] = n_new[s];
        b.n_tokens += n_new[s];
        int need = (n_past[s] + n_new[s] + bs - 1) / bs;
        if (need > maxb) maxb = need;
        b.n_blocks += need;
    }
    b.max_blocks = maxb + 1;
    b.n_blocks += 3;  // a few blocks nobody uses
    int32_t *perm = malloc(b.n_blocks * 4);
    for (int i = 0; i < b.n_blocks; i++) perm[i] = i;
    for (int i = b.n_blocks - 1; i > 0; i--) {
        int j = s_randint(r, i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    b.bt = calloc((size_t)n_seqs * b.max_blocks, 4);
    b.pos = malloc(b.n_tokens * 4);
    b.tok_seq = malloc(b.n_tokens * 4);
    int k = 0, t = 0;
    for (int s = 0; s < n_seqs; s++) {
        int need = (n_past[s] + n_new[s] + bs - 1) / bs;
        for (int i = 0; i < need; i++) b.bt[s * b.max_blocks + i] = perm[k++];
        for (int i = 0; i < n_new[s]; i++, t++) b.pos[t] = n_past[s] + i, b.tok_seq[t] = s;
    }
    free(perm);
    return b;
}

static void s_batch_free(batch_t *b) { free(b->bt), free(b->pos), free(b->tok_seq); }

// ---------------------------------------------------------------- rope + kv write

static void s_rope_case(rng_t *r, const kvf_modelcfg_t *cfg, int bs, int n_seqs, const int *n_past,
                        const int *n_new, int with_bias, int f32_in, int fp8, const char *cs) {
    const int H = cfg->n_heads, KV = cfg->n_kv_heads, HD = cfg->head_dim;
    batch_t b = s_batch(r, n_seqs, n_past, n_new, bs);
    const int n = b.n_tokens, W = (H + 2 * KV) * HD;
    const size_t cache_n = (size_t)b.n_blocks * bs * KV * HD;
    float *qkv = malloc((size_t)n * W * 4), *bias = malloc(W * 4);
    uint16_t *qkvb = malloc((size_t)n * W * 2);
    s_rand_bf16(r, qkv, qkvb, (size_t)n * W, -2, 2);
    if (f32_in)
        for (size_t i = 0; i < (size_t)n * W; i++) qkv[i] = s_unif(r, -2, 2);
    for (int i = 0; i < W; i++) bias[i] = with_bias ? s_unif(r, -0.5f, 0.5f) : 0.0f;
    float inv_freq[KVF_ATTN_MAX_HEAD_DIM];
    kvf_cpu_rope_inv_freq(inv_freq, cfg);

    // CPU: split, add bias, rotate q and k, write k and v into a cache that holds
    // the same poison as the GPU's (so a stray write anywhere shows).
    float *q = malloc((size_t)n * H * HD * 4), *k = malloc((size_t)n * KV * HD * 4), *v = malloc((size_t)n * KV * HD * 4);
    for (int t = 0; t < n; t++)
        for (int c = 0; c < W; c++) {
            float x = qkv[(size_t)t * W + c] + bias[c];
            if (c < H * HD) q[(size_t)t * H * HD + c] = x;
            else if (c < (H + KV) * HD) k[(size_t)t * KV * HD + c - H * HD] = x;
            else v[(size_t)t * KV * HD + c - (H + KV) * HD] = x;
        }
    kvf_cpu_rope(q, b.pos, inv_freq, n, H, HD);
    kvf_cpu_rope(k, b.pos, inv_freq, n, KV, HD);
    float *kc = malloc(cache_n * 4), *vc = malloc(cache_n * 4);
    for (size_t i = 0; i < cache_n; i++) kc[i] = vc[i] = NAN;
    for (int s = 0, t0 = 0; s < n_seqs; t0 += b.n_new[s], s++)
        kvf_cpu_kv_write(kc, vc, k + (size_t)t0 * KV * HD, v + (size_t)t0 * KV * HD, b.pos + t0,
                         b.bt + s * b.max_blocks, b.n_new[s], KV, HD, bs);

    void *d_qkv = f32_in ? s_up(qkv, (size_t)n * W * 4) : s_up(qkvb, (size_t)n * W * 2);
    uint16_t *d_q = s_dev((size_t)n * H * HD * 2);
    uint16_t *d_kc = s_dev(cache_n * 2), *d_vc = s_dev(cache_n * 2);  // fp8: the first cache_n bytes
    float *d_bias = s_up(bias, W * 4), *d_if = s_up(inv_freq, HD / 2 * 4);
    int32_t *d_pos = s_up(b.pos, n * 4), *d_ts = s_up(b.tok_seq, n * 4);
    int32_t *d_bt = s_up(b.bt, (size_t)n_seqs * b.max_blocks * 4);
    kvf_err_t err;
    const float *db = with_bias ? d_bias : NULL;
    uint8_t *d_k8 = (uint8_t *)d_kc, *d_v8 = (uint8_t *)d_vc;
    int rc = fp8 && f32_in ? kvf_rope_kv_f32_fp8(d_q, d_k8, d_v8, d_qkv, db, d_if, d_pos, d_ts, d_bt, b.max_blocks, n,
                                                 H, KV, HD, bs, b.n_blocks, 0, &err)
             : fp8    ? kvf_rope_kv_fp8(d_q, d_k8, d_v8, d_qkv, db, d_if, d_pos, d_ts, d_bt, b.max_blocks, n, H, KV, HD,
                                        bs, b.n_blocks, 0, &err)
             : f32_in ? kvf_rope_kv_f32(d_q, d_kc, d_vc, d_qkv, db, d_if, d_pos, d_ts, d_bt, b.max_blocks, n, H, KV, HD,
                                        bs, b.n_blocks, 0, &err)
                      : kvf_rope_kv(d_q, d_kc, d_vc, d_qkv, db, d_if, d_pos, d_ts, d_bt, b.max_blocks, n, H, KV, HD, bs,
                                    b.n_blocks, 0, &err);
    cr_assert(rc == 0, "%s", err.msg);
    float *gq = s_down_bf16(d_q, (size_t)n * H * HD);
    float *gk = fp8 ? s_down_fp8(d_kc, cache_n) : s_down_bf16(d_kc, cache_n);
    float *gv = fp8 ? s_down_fp8(d_vc, cache_n) : s_down_bf16(d_vc, cache_n);
    // NaN == NaN for the untouched slots: compare those by position
    size_t n_off = 0;
    for (size_t i = 0; i < cache_n; i++)
        if (isnan(kc[i]) != isnan(gk[i]) || isnan(vc[i]) != isnan(gv[i])) n_off++;
    cr_expect(n_off == 0, "%s: %zu cache elements written where they should not be, or not written", cs, n_off);
    for (size_t i = 0; i < cache_n; i++)
        if (isnan(kc[i])) kc[i] = gk[i] = vc[i] = gv[i] = 0;
    s_expect("rope.q", cs, gq, q, (size_t)n * H * HD, 1e-5, 8e-3);
    if (fp8) {  // rounded from f32 to E4M3 directly (not through bf16)
        s_expect_fp8("rope.k_cache", cs, gk, kc, cache_n);
        s_expect_fp8("kv.v_cache", cs, gv, vc, cache_n);
    } else {
        s_expect("rope.k_cache", cs, gk, kc, cache_n, 1e-5, 8e-3);
        s_expect("kv.v_cache", cs, gv, vc, cache_n, 1e-5, with_bias || f32_in ? 8e-3 : 0);
    }
    free(qkv), free(bias), free(qkvb), free(q), free(k), free(v), free(kc), free(vc), free(gq), free(gk), free(gv);
    cudaFree(d_qkv), cudaFree(d_q), cudaFree(d_kc), cudaFree(d_vc), cudaFree(d_bias), cudaFree(d_if);
    cudaFree(d_pos), cudaFree(d_ts), cudaFree(d_bt);
    s_batch_free(&b);
}

static kvf_modelcfg_t s_cfg(int H, int KV, int HD, kvf_rope_type rt) {
    kvf_modelcfg_t c;
    memset(&c, 0, sizeof c);
    c.n_heads = H, c.n_kv_heads = KV, c.head_dim = HD;
    c.rope_theta = 500000.0;
    c.rope_type = rt;
    c.rope_factor = rt == KVF_ROPE_LINEAR ? 4.0 : 8.0;
    c.rope_low_freq_factor = 1.0, c.rope_high_freq_factor = 4.0, c.rope_original_max_position = 8192;
    return c;
}

Test(kernels, rope_kv) {
    rng_t r = s_rng("rope_kv");
    kvf_modelcfg_t c1 = s_cfg(32, 8, 128, KVF_ROPE_LLAMA3);
    const int np1[] = {0, 17, 1000}, nn1[] = {23, 1, 77};
    s_rope_case(&r, &c1, 16, 3, np1, nn1, 0, 0, 0, "llama3 H32 KV8 HD128 bs16");
    s_rope_case(&r, &c1, 64, 3, np1, nn1, 1, 1, 0, "f32 in, llama3+bias bs64");
    kvf_modelcfg_t c2 = s_cfg(14, 2, 64, KVF_ROPE_DEFAULT);
    c2.rope_theta = 1000000.0;
    const int np2[] = {5, 63, 8000}, nn2[] = {70, 2, 1};
    s_rope_case(&r, &c2, 64, 3, np2, nn2, 1, 0, 0, "default+bias H14 KV2 HD64 bs64");
    kvf_modelcfg_t c3 = s_cfg(4, 4, 32, KVF_ROPE_LINEAR);
    c3.rope_theta = 10000.0;
    const int np3[] = {3}, nn3[] = {45};
    s_rope_case(&r, &c3, 16, 1, np3, nn3, 0, 0, 0, "linear H4 KV4 HD32 bs16");
    kvf_modelcfg_t c4 = s_cfg(8, 4, 8, KVF_ROPE_DEFAULT);
    c4.rope_theta = 10000.0;
    const int np4[] = {0, 200}, nn4[] = {13, 56};
    s_rope_case(&r, &c4, 16, 2, np4, nn4, 0, 1, 0, "f32 in, H8 KV4 HD8 bs16 (stories)");
    // an FP8 cache: K after the rotation and V rounded to E4M3 (q stays bf16)
    s_rope_case(&r, &c1, 16, 3, np1, nn1, 0, 0, 1, "fp8 llama3 H32 KV8 HD128 bs16");
    s_rope_case(&r, &c1, 64, 3, np1, nn1, 1, 1, 1, "fp8 f32 in, llama3+bias bs64");
    s_rope_case(&r, &c2, 64, 3, np2, nn2, 1, 0, 1, "fp8 default+bias H14 KV2 HD64 bs64");
    s_rope_case(&r, &c3, 16, 1, np3, nn3, 0, 0, 1, "fp8 linear H4 KV4 HD32 bs16");
}

// ---------------------------------------------------------------- attention

// Fills the whole cache with random bf16 K and V, runs the GPU kernel (forced to
// n_splits when > 0, else as kvf_attn_choose_splits picks) and the CPU op per sequence.
// fp8: the cache holds E4M3 (the random values rounded; the CPU reads the rounded
// floats) and the fp8 kernels run.
static void s_attn_case_x(rng_t *r, int H, int KV, int HD, int bs, int n_seqs, const int *n_past, const int *n_new,
                          int force_splits, int tensor_cores, int fp8, const char *cs) {
    batch_t b = s_batch(r, n_seqs, n_past, n_new, bs);
    const int n = b.n_tokens;
    const size_t cache_n = (size_t)b.n_blocks * bs * KV * HD, qn = (size_t)n * H * HD;
    float *kc = malloc(cache_n * 4), *vc = malloc(cache_n * 4), *q = malloc(qn * 4), *ref = malloc(qn * 4);
    uint16_t *kcb = malloc(cache_n * 2), *vcb = malloc(cache_n * 2), *qb = malloc(qn * 2);
    s_rand_bf16(r, kc, kcb, cache_n, -2, 2);
    s_rand_bf16(r, vc, vcb, cache_n, -1, 1);
    s_rand_bf16(r, q, qb, qn, -2, 2);
    uint8_t *k8 = fp8 ? s_to_fp8(kc, cache_n) : NULL, *v8 = fp8 ? s_to_fp8(vc, cache_n) : NULL;
    int max_ctx = 0;
    for (int s = 0; s < n_seqs; s++)
        if (n_past[s] + n_new[s] > max_ctx) max_ctx = n_past[s] + n_new[s];
    float *scratch = malloc((size_t)(max_ctx + 1) * 4);
    for (int s = 0, t0 = 0; s < n_seqs; t0 += n_new[s], s++)
        kvf_cpu_attention(ref + (size_t)t0 * H * HD, q + (size_t)t0 * H * HD, kc, vc, b.bt + s * b.max_blocks, n_new[s],
                          n_past[s], H, KV, HD, bs, scratch);

    int decode = 1;
    for (int s = 0; s < n_seqs; s++) decode &= n_new[s] == 1;
    // tensor_cores 1: kvf_attention_prefill; 2: kvf_attention_decode (tiles of 16 / G tokens)
    const int qpt = tensor_cores == 2 ? KVF_ATTN_DECODE_ROWS / (H / KV)
                    : tensor_cores  ? KVF_ATTN_PREFILL_Q
                    : decode        ? 1
                                    : kvf_attn_q_per_tile(H, KV);
    cr_assert(qpt > 0);
    int32_t *tiles = malloc((size_t)n * 3 * 4);
    int n_tiles = kvf_attn_build_tiles(tiles, n, b.n_new, n_seqs, qpt);
    cr_assert(n_tiles > 0);
    int split_len = 0;
    int n_splits = kvf_attn_choose_splits(n_tiles, KV, max_ctx, KVF_ATTN_MAX_SPLITS, 132, &split_len);
    if (force_splits > 0) {
        split_len = ((max_ctx + force_splits - 1) / force_splits + 31) / 32 * 32;
        n_splits = (max_ctx + split_len - 1) / split_len;
    }
    uint16_t *d_kc = s_up(kcb, cache_n * 2), *d_vc = s_up(vcb, cache_n * 2), *d_q = s_up(qb, qn * 2);
    uint16_t *d_out = s_dev(qn * 2);
    uint8_t *d_k8 = fp8 ? s_up(k8, cache_n) : NULL, *d_v8 = fp8 ? s_up(v8, cache_n) : NULL;
    float *d_part = s_dev(kvf_attn_partial_floats(n_splits, n, H, HD) * 4);
    int32_t *d_tiles = s_up(tiles, (size_t)n_tiles * 3 * 4), *d_pos = s_up(b.pos, n * 4);
    int32_t *d_bt = s_up(b.bt, (size_t)n_seqs * b.max_blocks * 4);
    kvf_err_t err;
    char full[128];
    CUDA_OK(cudaMemset(d_out, 0xff, qn * 2));  // NaN: every row must be written
    if (tensor_cores == 2) {
        // every kernel variant on the same case; the default (kvf_attention_decode[_fp8]) is checked below
        const int nv = fp8 ? kvf_attention_decode_fp8_n_variants() : kvf_attention_decode_n_variants();
        int tt = 1;  // the most tokens a tile holds: the fp8 "f8t" variants need tt x G <= 8 rows
        for (int i = 0; i < n_tiles; i++)
            if (tiles[3 * i + 2] > tt) tt = tiles[3 * i + 2];
        for (int v = 0; v < nv; v++) {
            const char *vn = fp8 ? kvf_attention_decode_fp8_variant_name(v) : kvf_attention_decode_variant_name(v);
            cr_assert(vn, "variant %d has no name", v);
            CUDA_OK(cudaMemset(d_out, 0xff, qn * 2));
            const int rc = fp8 ? kvf_attention_decode_fp8_variant(v, d_out, d_q, d_k8, d_v8, d_tiles, n_tiles, tt,
                                                                  d_pos, d_bt, b.max_blocks, H, KV, HD, bs, 0, &err)
                               : kvf_attention_decode_variant(v, d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, d_pos, d_bt,
                                                              b.max_blocks, H, KV, HD, bs, 0, &err);
            if (fp8 && rc != 0 && strncmp(vn, "f8t", 3) == 0 && tt * (H / KV) > 8) {  // refused, as documented
                cr_expect(err.code == KVF_E_INVAL && strstr(err.msg, "at most 8 rows"), "%s: %s", vn, err.msg);
                continue;
            }
            cr_assert(rc == 0, "%s: %s", vn, err.msg);
            snprintf(full, sizeof full, "%s [%s]", cs, vn);
            float *gv = s_down_bf16(d_out, qn);
            s_expect_norm(fp8 ? "attention_decode_fp8" : "attention_decode_tc", full, gv, ref, qn, 8e-3, 4e-3);
            free(gv);
        }
        CUDA_OK(cudaMemset(d_out, 0xff, qn * 2));
        const int rc = fp8 ? kvf_attention_decode_fp8(d_out, d_q, d_k8, d_v8, d_tiles, n_tiles, tt, d_pos, d_bt,
                                                      b.max_blocks, H, KV, HD, bs, 0, &err)
                           : kvf_attention_decode(d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, d_pos, d_bt, b.max_blocks,
                                                  H, KV, HD, bs, 0, &err);
        cr_assert(rc == 0, "%s", err.msg);
        snprintf(full, sizeof full, "%s", cs);
    } else if (fp8 && tensor_cores) {
        cr_assert(kvf_attention_prefill_fp8(d_out, d_q, d_k8, d_v8, d_tiles, n_tiles, d_pos, d_bt, b.max_blocks, H, KV,
                                            HD, bs, 0, &err) == 0,
                  "%s", err.msg);
        snprintf(full, sizeof full, "%s", cs);
    } else if (fp8) {
        cr_assert(kvf_attention_fp8(d_out, d_part, d_q, d_k8, d_v8, d_tiles, n_tiles, qpt, d_pos, d_bt, b.max_blocks, n,
                                    H, KV, HD, bs, n_splits, split_len, 0, &err) == 0,
                  "%s", err.msg);
        snprintf(full, sizeof full, "%s splits%d", cs, n_splits);
    } else if (tensor_cores) {
        // every kernel variant on the same inputs (out poisoned again before each), then the default below
        for (int v = 0; v < kvf_attention_prefill_n_variants(); v++) {
            cr_assert(kvf_attention_prefill_variant(v, d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, d_pos, d_bt,
                                                    b.max_blocks, H, KV, HD, bs, 0, &err) == 0,
                      "%s", err.msg);
            float *gv = s_down_bf16(d_out, qn);
            snprintf(full, sizeof full, "%s [%s]", cs, kvf_attention_prefill_variant_name(v));
            s_expect_norm("attention_tc", full, gv, ref, qn, 8e-3, 4e-3);
            free(gv);
            CUDA_OK(cudaMemset(d_out, 0xff, qn * 2));
        }
        cr_assert(kvf_attention_prefill(d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, d_pos, d_bt, b.max_blocks, H, KV, HD,
                                        bs, 0, &err) == 0,
                  "%s", err.msg);
        snprintf(full, sizeof full, "%s", cs);
    } else {
        cr_assert(kvf_attention(d_out, d_part, d_q, d_kc, d_vc, d_tiles, n_tiles, qpt, d_pos, d_bt, b.max_blocks, n, H,
                                KV, HD, bs, n_splits, split_len, 0, &err) == 0,
                  "%s", err.msg);
        snprintf(full, sizeof full, "%s splits%d", cs, n_splits);
    }
    float *g = s_down_bf16(d_out, qn);
    s_expect_norm(fp8                 ? (tensor_cores == 2 ? "attention_decode_fp8"
                                         : tensor_cores    ? "attention_tc_fp8"
                                                           : "attention_fp8")
                  : tensor_cores == 2 ? "attention_decode_tc"
                  : tensor_cores      ? "attention_tc"
                                      : "attention",
                  full, g, ref, qn, 8e-3, 4e-3);
    free(kc), free(vc), free(q), free(ref), free(kcb), free(vcb), free(qb), free(scratch), free(tiles), free(g);
    free(k8), free(v8), cudaFree(d_k8), cudaFree(d_v8);
    cudaFree(d_kc), cudaFree(d_vc), cudaFree(d_q), cudaFree(d_out), cudaFree(d_part), cudaFree(d_tiles);
    cudaFree(d_pos), cudaFree(d_bt);
    s_batch_free(&b);
}

static void s_attn_case_k(rng_t *r, int H, int KV, int HD, int bs, int n_seqs, const int *n_past, const int *n_new,
                          int force_splits, int tensor_cores, const char *cs) {
    s_attn_case_x(r, H, KV, HD, bs, n_seqs, n_past, n_new, force_splits, tensor_cores, 0, cs);
}

static void s_attn_case(rng_t *r, int H, int KV, int HD, int bs, int n_seqs, const int *n_past, const int *n_new,
                        int force_splits, const char *cs) {
    s_attn_case_k(r, H, KV, HD, bs, n_seqs, n_past, n_new, force_splits, 0, cs);
}

Test(kernels, attention_prefill_tensor_cores) {
    rng_t r = s_rng("attention_prefill_tc");
    cr_expect(kvf_attention_prefill_supports(128) && kvf_attention_prefill_supports(64));
    cr_expect(!kvf_attention_prefill_supports(32) && !kvf_attention_prefill_supports(96));
    const int nv = kvf_attention_prefill_n_variants();
    cr_expect(nv >= 1 && kvf_attention_prefill_variant_name(0) && kvf_attention_prefill_variant_name(nv - 1));
    cr_expect(kvf_attention_prefill_default_variant() >= 0 && kvf_attention_prefill_default_variant() < nv);
    cr_expect(!kvf_attention_prefill_variant_name(-1) && !kvf_attention_prefill_variant_name(nv));
    kvf_err_t err = {0};
    int32_t dummy = 0;  // never read: the variant is checked first
    cr_expect(kvf_attention_prefill_variant(nv, (uint16_t *)&dummy, (uint16_t *)&dummy, (uint16_t *)&dummy,
                                            (uint16_t *)&dummy, &dummy, 1, &dummy, &dummy, 1, 32, 8, 128, 64, 0,
                                            &err) == -1 &&
              err.code == KVF_E_INVAL);
    const int np1[] = {0, 129, 3}, nn1[] = {77, 64, 200};
    s_attn_case_k(&r, 32, 8, 128, 64, 3, np1, nn1, 0, 1, "G4 HD128 bs64");
    const int np2[] = {0, 0, 40, 7}, nn2[] = {1, 100, 33, 1};
    s_attn_case_k(&r, 8, 8, 64, 16, 4, np2, nn2, 0, 1, "G1 HD64 bs16 + decode rows");
    const int np3[] = {10, 0, 1000}, nn3[] = {50, 5, 130};
    s_attn_case_k(&r, 16, 2, 128, 16, 3, np3, nn3, 0, 1, "G8 HD128 bs16 chunked");
    const int np4[] = {0}, nn4[] = {1000};
    s_attn_case_k(&r, 4, 1, 64, 64, 1, np4, nn4, 0, 1, "G4 HD64 bs64 1000-token prompt");
    const int np5[] = {37, 0}, nn5[] = {90, 64};  // an odd group: one head a block in the GQA variants
    s_attn_case_k(&r, 6, 2, 128, 16, 2, np5, nn5, 0, 1, "G3 HD128 bs16 chunked");
}

Test(kernels, attention_decode_tensor_cores) {
    rng_t r = s_rng("attention_decode_tc");
    cr_expect(kvf_attention_decode_supports(32, 8, 128) && kvf_attention_decode_supports(16, 1, 64));
    cr_expect(!kvf_attention_decode_supports(32, 1, 128) && !kvf_attention_decode_supports(8, 8, 96));
    // variants: named, and an index out of range is a returned KVF_E_INVAL before anything is launched
    const int nv = kvf_attention_decode_n_variants();
    cr_assert(nv >= 1 && kvf_attention_decode_variant_name(0) && !kvf_attention_decode_variant_name(nv) &&
              !kvf_attention_decode_variant_name(-1));
    const int d0 = kvf_attention_decode_default_variant(0, 4), d8 = kvf_attention_decode_default_variant(1, 4);
    const int d16 = kvf_attention_decode_default_variant(1, 16), n8 = kvf_attention_decode_fp8_n_variants();
    cr_expect(d0 >= 0 && d0 < nv && d8 >= 0 && d8 < n8 && d16 >= 0 && d16 < n8);
    cr_expect(strncmp(kvf_attention_decode_fp8_variant_name(d8), "f8t", 3) == 0 &&
              strncmp(kvf_attention_decode_fp8_variant_name(d16), "f8t", 3) != 0);
    kvf_err_t err;
    uint16_t dummy[8];
    const int32_t idummy[3] = {0, 0, 1};
    cr_expect(kvf_attention_decode_variant(nv, dummy, dummy, dummy, dummy, idummy, 1, idummy, idummy, 1, 32, 8, 128,
                                           64, 0, &err) == -1 &&
              err.code == KVF_E_INVAL);
    // decode rows: contexts from 1 key to past a few 64-key stages, ends mid-block
    const int np1[] = {0, 15, 16, 63, 64, 200, 1000, 4095}, nn1[] = {1, 1, 1, 1, 1, 1, 1, 1};
    s_attn_case_k(&r, 32, 8, 128, 64, 8, np1, nn1, 0, 2, "decode G4 HD128 bs64");
    s_attn_case_k(&r, 32, 8, 128, 16, 8, np1, nn1, 0, 2, "decode G4 HD128 bs16");
    s_attn_case_k(&r, 16, 2, 64, 16, 8, np1, nn1, 0, 2, "decode G8 HD64 bs16");
    s_attn_case_k(&r, 12, 12, 128, 64, 8, np1, nn1, 0, 2, "decode G1 HD128 bs64");
    s_attn_case_k(&r, 16, 1, 128, 64, 8, np1, nn1, 0, 2, "decode G16 HD128 bs64");
    // tiles of several tokens (16 / G each): chunks after a cached prefix
    const int np2[] = {0, 129, 3, 77}, nn2[] = {7, 64, 33, 1};
    s_attn_case_k(&r, 32, 8, 128, 64, 4, np2, nn2, 0, 2, "chunks G4 HD128 bs64");
    s_attn_case_k(&r, 14, 2, 64, 16, 4, np2, nn2, 0, 2, "chunks G7 HD64 bs16");
}

Test(kernels, attention_prefill) {
    rng_t r = s_rng("attention_prefill");
    // variable lengths, chunked prefill (n_past > 0), ends mid-block, mixed with decode rows
    const int np1[] = {0, 0, 40, 7}, nn1[] = {1, 100, 33, 1};
    s_attn_case(&r, 8, 8, 64, 16, 4, np1, nn1, 0, "G1 HD64 bs16");
    const int np2[] = {0, 129, 3}, nn2[] = {77, 64, 200};
    s_attn_case(&r, 32, 8, 128, 64, 3, np2, nn2, 0, "G4 HD128 bs64");
    const int np3[] = {10, 0}, nn3[] = {50, 5};
    s_attn_case(&r, 16, 2, 128, 16, 2, np3, nn3, 0, "G8 HD128 bs16");
    const int np4[] = {0, 5}, nn4[] = {31, 9};
    s_attn_case(&r, 4, 2, 32, 16, 2, np4, nn4, 0, "G2 HD32 bs16 (tiny-llama)");
    s_attn_case(&r, 8, 4, 8, 16, 2, np4, nn4, 0, "G2 HD8 bs16 (stories260K)");
    // a prefill split over the key range: exercises the reduce with tiles of several tokens
    const int np5[] = {300, 0}, nn5[] = {20, 45};
    s_attn_case(&r, 32, 8, 128, 64, 2, np5, nn5, 5, "G4 HD128 bs64 forced");
}

Test(kernels, attention_decode) {
    rng_t r = s_rng("attention_decode");
    // long contexts: split-K flash-decoding + reduce
    const int np1[] = {8191, 5000, 17}, nn1[] = {1, 1, 1};
    s_attn_case(&r, 32, 8, 128, 64, 3, np1, nn1, 0, "8k G4 HD128 bs64");
    const int np2[] = {8000, 3333}, nn2[] = {1, 1};
    s_attn_case(&r, 16, 2, 128, 16, 2, np2, nn2, 0, "8k G8 HD128 bs16");
    s_attn_case(&r, 12, 12, 64, 16, 2, np2, nn2, 0, "8k G1 HD64 bs16");
    // short decode: one split
    const int np3[] = {0, 15, 16, 63}, nn3[] = {1, 1, 1, 1};
    s_attn_case(&r, 32, 8, 128, 16, 4, np3, nn3, 0, "short G4 HD128 bs16");
    s_attn_case(&r, 8, 1, 64, 64, 4, np3, nn3, 3, "short G8 HD64 bs64 forced");
}

// The FP8 cache's three attention kernels (decode, prefill, split-K) against the
// CPU on the E4M3-rounded K and V.
Test(kernels, attention_fp8_cache) {
    rng_t r = s_rng("attention_fp8");
    const int nv = kvf_attention_decode_fp8_n_variants();
    cr_assert(nv >= 1 && kvf_attention_decode_fp8_variant_name(nv - 1) && !kvf_attention_decode_fp8_variant_name(nv));
    const int np1[] = {0, 15, 16, 63, 64, 200, 1000, 4095}, nn1[] = {1, 1, 1, 1, 1, 1, 1, 1};
    s_attn_case_x(&r, 32, 8, 128, 64, 8, np1, nn1, 0, 2, 1, "decode G4 HD128 bs64");
    s_attn_case_x(&r, 16, 2, 64, 16, 8, np1, nn1, 0, 2, 1, "decode G8 HD64 bs16");
    s_attn_case_x(&r, 12, 12, 128, 64, 8, np1, nn1, 0, 2, 1, "decode G1 HD128 bs64");
    const int np2[] = {0, 129, 3, 77}, nn2[] = {7, 64, 33, 1};
    s_attn_case_x(&r, 32, 8, 128, 64, 4, np2, nn2, 0, 2, 1, "chunks G4 HD128 bs64");
    const int np3[] = {0, 129, 3}, nn3[] = {77, 64, 200};
    s_attn_case_x(&r, 32, 8, 128, 64, 3, np3, nn3, 0, 1, 1, "prefill G4 HD128 bs64");
    const int np4[] = {10, 0, 1000}, nn4[] = {50, 5, 130};
    s_attn_case_x(&r, 16, 2, 128, 16, 3, np4, nn4, 0, 1, 1, "prefill G8 HD128 bs16 chunked");
    const int np5[] = {37, 0}, nn5[] = {90, 64};
    s_attn_case_x(&r, 6, 2, 64, 16, 2, np5, nn5, 0, 1, 1, "prefill G3 HD64 bs16 (a head a block)");
    const int np6[] = {8191, 5000, 17}, nn6[] = {1, 1, 1};
    s_attn_case_x(&r, 32, 8, 128, 64, 3, np6, nn6, 0, 0, 1, "split-K 8k G4 HD128 bs64");
    const int np7[] = {0, 5}, nn7[] = {31, 9};
    s_attn_case_x(&r, 8, 4, 8, 16, 2, np7, nn7, 0, 0, 1, "G2 HD8 bs16 (stories260K)");
}

// ---------------------------------------------------------------- sampling

static int s_cpu_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

Test(kernels, argmax) {
    rng_t r = s_rng("sample");
    const int n = 67, V = 128256;
    float *lg = malloc((size_t)n * V * 4);
    for (size_t i = 0; i < (size_t)n * V; i++) lg[i] = s_unif(&r, -10, 10);
    // ties go to the lowest id; NaN never wins
    for (int v = 0; v < V; v++) lg[(size_t)1 * V + v] = 1.0f;
    lg[(size_t)2 * V + 5] = NAN;
    lg[(size_t)2 * V + 9] = 50.0f;
    lg[(size_t)2 * V + 7] = 50.0f;
    float *d_lg = s_up(lg, (size_t)n * V * 4);
    int32_t *d_ids = s_dev(n * 4);
    kvf_err_t err;
    cr_assert(kvf_argmax(d_ids, d_lg, n, V, 0, &err) == 0, "%s", err.msg);
    int32_t ids[67];
    CUDA_OK(cudaMemcpy(ids, d_ids, sizeof ids, cudaMemcpyDeviceToHost));
    int n_bad = 0;
    for (int i = 0; i < n; i++) n_bad += ids[i] != s_cpu_argmax(lg + (size_t)i * V, V);
    fprintf(stderr, "KERNEL %-14s %-34s mismatches %d of %d rows\n", "argmax", "V128256", n_bad, n);
    cr_expect(n_bad == 0);
    cr_expect(ids[1] == 0 && ids[2] == 7, "ties: %d, NaN row: %d", ids[1], ids[2]);

    free(lg);
    cudaFree(d_lg), cudaFree(d_ids);
}

// kvf_vocab_unshard against worker/tp_vocab.c's kvf_tp_vocab_unshard: the ranks'
// gathered logit blocks back in id order, for even and uneven splits (1001 and
// 128256 ids over 1..6 ranks), unaligned shard edges included; exact.
Test(kernels, vocab_unshard) {
    rng_t r = s_rng("vocab_unshard");
    const int vocabs[] = {1001, 128256}, R = 5;
    int n_cases = 0;
    for (int vi = 0; vi < 2; vi++)
        for (int T = 1; T <= 6; T++) {
            const int V = vocabs[vi];
            kvf_modelcfg_t cfg;
            memset(&cfg, 0, sizeof cfg);
            cfg.hidden_size = 8, cfg.n_heads = 60, cfg.n_kv_heads = 60, cfg.intermediate_size = 60;
            cfg.vocab_size = V, cfg.head_dim = 2, cfg.n_layers = 1;
            kvf_tp_shard_t sh;
            cr_assert_eq(kvf_tp_shard_make(&cfg, 0, T, &sh, NULL), 0);
            const size_t S = (size_t)sh.v_stride, n_g = (size_t)T * R * S;
            float *g = malloc(n_g * 4), *want = malloc((size_t)R * V * 4);
            for (size_t i = 0; i < n_g; i++) g[i] = s_unif(&r, -5, 5);
            kvf_tp_vocab_unshard(want, g, R, V, &sh);
            float *d_g = s_up(g, n_g * 4), *d_out = s_dev((size_t)R * V * 4);
            kvf_err_t err;
            cr_assert(kvf_vocab_unshard(d_out, d_g, R, V, T, (int)S, 0, &err) == 0, "%s", err.msg);
            float *got = s_down_f32(d_out, (size_t)R * V);
            cr_assert(memcmp(got, want, (size_t)R * V * 4) == 0, "V %d over %d ranks: the device unshard differs", V,
                      T);
            free(g), free(want), free(got);
            cudaFree(d_g), cudaFree(d_out);
            n_cases++;
        }
    kvf_err_t err;
    cr_expect(kvf_vocab_unshard((float *)8, (const float *)8, 1, 1001, 2, 500, 0, &err) == -1, "stride below 501");
    fprintf(stderr, "KERNEL %-14s %-34s %d splits, all exact\n", "vocab_unshard", "V1001,128256 T1..6", n_cases);
}

// kvf_argmax_best (a vocab-parallel rank's best logit of each row) against
// worker/tp_vocab.c's kvf_tp_best_of on the same rows: value bits and id, on a
// shard of an uneven split (id0 > 0, an odd width), with ties, NaN, all-NaN and
// all -inf rows.
Test(kernels, argmax_best) {
    rng_t r = s_rng("argmax_best");
    const int n = 37, V = 64127, id0 = 64129;
    float *lg = malloc((size_t)n * V * 4);
    for (size_t i = 0; i < (size_t)n * V; i++) lg[i] = s_unif(&r, -10, 10);
    for (int v = 0; v < V; v++) {
        lg[(size_t)1 * V + v] = 1.0f;              // all tied
        lg[(size_t)3 * V + v] = NAN;               // all NaN
        lg[(size_t)4 * V + v] = -INFINITY;         // all -inf
        lg[(size_t)5 * V + v] = (float)(v % 7);    // ties at 6, every 7th id
    }
    lg[(size_t)2 * V + 5] = NAN;
    lg[(size_t)2 * V + 9] = 50.0f;
    lg[(size_t)2 * V + 7] = 50.0f;
    lg[(size_t)6 * V + V - 1] = 99.0f;             // the last column
    float *d_lg = s_up(lg, (size_t)n * V * 4);
    int32_t *d_best = s_dev((size_t)n * 8);
    kvf_err_t err;
    cr_assert(kvf_argmax_best(d_best, d_lg, n, V, id0, 0, &err) == 0, "%s", err.msg);
    int32_t got[2 * 37];
    CUDA_OK(cudaMemcpy(got, d_best, sizeof got, cudaMemcpyDeviceToHost));
    int n_bad = 0;
    for (int i = 0; i < n; i++) {
        kvf_tp_best_t want = kvf_tp_best_of(lg + (size_t)i * V, V, id0);
        float gv;
        memcpy(&gv, &got[2 * i], 4);
        const int ok = got[2 * i + 1] == want.id && memcmp(&gv, &want.val, 4) == 0;
        n_bad += !ok;
        cr_expect(ok, "row %d: (%g, %d), the host's (%g, %d)", i, gv, got[2 * i + 1], want.val, want.id);
    }
    fprintf(stderr, "KERNEL %-14s %-34s mismatches %d of %d rows\n", "argmax_best", "V64127 id0 64129", n_bad, n);
    cr_expect(got[2 * 3 + 1] == -1 && got[2 * 1 + 1] == id0 && got[2 * 5 + 1] == id0 + 6, "NaN row %d, tied %d, %d",
              got[2 * 3 + 1], got[2 * 1 + 1], got[2 * 5 + 1]);
    cr_expect(kvf_argmax_best(d_best, d_lg, n, V, -1, 0, &err) == -1 && err.code == KVF_E_INVAL);
    free(lg);
    cudaFree(d_lg), cudaFree(d_best);
}

// kvf_repetition_penalty + kvf_sample_rows against worker/sampler.c on the same
// rows, settings, histories and uniform numbers: every id equal. Every fourth row
// has a penalty (> 1 or < 1) over 60 history ids with repeats and one out of range. Rows: peaked (scale 8), flat (scale 0.05), coarse ties
// (multiples of 0.5), rows with NaN and -inf entries, one all -inf; the settings
// cycle through temperature (incl. greedy), top_k (incl. 1 and > vocab), top_p
// (incl. 1e-6 and 1) and min_p. Small vocabularies for many rows (one whose rows
// the kernel cannot read 4 ids a load), then 128256.
Test(kernels, sample_rows_match_host_sampler) {
    rng_t r = s_rng("sample_rows");
    const float temps[4] = {0.0f, 0.7f, 1.0f, 1.6f}, tps[5] = {1.0f, 0.9f, 0.5f, 0.95f, 1e-6f};
    const int tks[5] = {0, 1, 5, 50, 1 << 20};
    const float mps[3] = {0.0f, 0.05f, 0.3f};
    const struct {
        int rows, vocab;
    } sets[3] = {{1200, 1000}, {300, 1001}, {40, 128256}};  // 1001: rows not 16-byte aligned, one id a load
    kvf_sampler_t *smp = kvf_sampler_new(128256);
    cr_assert_not_null(smp);
    int total = 0, n_bad = 0, n_sampled = 0;
    for (int si = 0; si < 3; si++) {
        const int R = sets[si].rows, V = sets[si].vocab;
        float *lg = malloc((size_t)R * V * 4), *row = malloc((size_t)V * 4);
        kvf_sample_params_t *sp = malloc((size_t)R * sizeof *sp);
        kvf_sampling_t *ss = malloc((size_t)R * sizeof *ss);
        int32_t *steps = malloc((size_t)R * 4), *ids = malloc((size_t)R * 4);
        enum { NH = 60 };
        int32_t *hist = malloc((size_t)R * NH * 4), *hoff = malloc((size_t)(R + 1) * 4);
        float *pen = malloc((size_t)R * 4);
        int n_hist = 0;
        for (int i = 0; i < R; i++) {
            float *x = lg + (size_t)i * V;
            const int kind = i % 5;
            const float scale = kind == 0 ? 8.0f : kind == 1 ? 0.05f : 2.0f;
            for (int v = 0; v < V; v++) {
                float g = s_unif(&r, -1, 1) + s_unif(&r, -1, 1) + s_unif(&r, -1, 1);
                x[v] = kind == 2 ? roundf(g * scale * 2.0f) / 2.0f : g * scale;
            }
            if (kind == 3)
                for (int j = 0; j < V / 50; j++) x[s_randint(&r, V)] = j % 2 ? NAN : -INFINITY;
            if (i == 7)
                for (int v = 0; v < V; v++) x[v] = -INFINITY;
            kvf_sampling_t s = kvf_sampling_default();
            s.temperature = temps[(i / 5) % 4];
            s.top_k = tks[(i / 20) % 5];
            s.top_p = tps[(i / 3) % 5];
            s.min_p = mps[(i / 7) % 3];
            s.seed = s_next(&r);
            s.repetition_penalty = i % 4 ? 1.0f : (i / 4) % 2 ? 1.25f : 0.85f;
            pen[i] = s.repetition_penalty;
            hoff[i] = n_hist;
            if (i % 4 == 0)
                for (int j = 0; j < NH; j++) hist[n_hist++] = j == 9 ? V + 1 : s_randint(&r, j < 30 ? V : 40);
            ss[i] = s;
            steps[i] = s_randint(&r, 1000);
            sp[i] = (kvf_sample_params_t){s.temperature, s.top_k, s.top_p, s.min_p,
                                          kvf_sampler_uniform(s.seed, steps[i])};
            n_sampled += s.temperature > 0.0f;
        }
        hoff[R] = n_hist;
        float *d_lg = s_up(lg, (size_t)R * V * 4), *d_pen = s_up(pen, (size_t)R * 4), *d_scr = s_dev((size_t)n_hist * 4);
        int32_t *d_hist = s_up(hist, (size_t)n_hist * 4), *d_hoff = s_up(hoff, (size_t)(R + 1) * 4);
        kvf_sample_params_t *d_sp = s_up(sp, (size_t)R * sizeof *sp);
        int32_t *d_ids = s_dev((size_t)R * 4);
        kvf_err_t err;
        float *d_lg0 = s_up(lg, (size_t)R * V * 4);  // unpenalised, for the second launch
        cr_assert(kvf_repetition_penalty(d_lg, d_hist, d_hoff, d_pen, d_scr, R, V, 0, &err) == 0, "%s", err.msg);
        cr_assert(kvf_sample_rows(d_ids, d_lg, d_sp, R, V, 0, &err) == 0, "%s", err.msg);
        CUDA_OK(cudaMemcpy(ids, d_ids, (size_t)R * 4, cudaMemcpyDeviceToHost));
        for (int i = 0; i < R; i++) {
            memcpy(row, lg + (size_t)i * V, (size_t)V * 4);
            const int32_t want = kvf_sampler_sample(smp, row, V, &ss[i], hist + hoff[i], hoff[i + 1] - hoff[i],
                                                    steps[i]);
            total++;
            if (ids[i] != want) {
                n_bad++;
                cr_expect_eq(ids[i], want, "V %d row %d (kind %d, T %g, top_k %d, top_p %g, min_p %g): device %d, host %d",
                             V, i, i % 5, ss[i].temperature, ss[i].top_k, ss[i].top_p, ss[i].min_p, ids[i], want);
            }
        }
        // the same rows again: the same ids
        int32_t *again = malloc((size_t)R * 4);
        cr_assert(kvf_repetition_penalty(d_lg0, d_hist, d_hoff, d_pen, d_scr, R, V, 0, &err) == 0, "%s", err.msg);
        cr_assert(kvf_sample_rows(d_ids, d_lg0, d_sp, R, V, 0, &err) == 0, "%s", err.msg);
        CUDA_OK(cudaMemcpy(again, d_ids, (size_t)R * 4, cudaMemcpyDeviceToHost));
        cr_expect(memcmp(ids, again, (size_t)R * 4) == 0, "a second launch drew other ids");
        free(again), free(lg), free(row), free(sp), free(ss), free(steps), free(ids), free(hist), free(hoff), free(pen);
        cudaFree(d_lg), cudaFree(d_lg0), cudaFree(d_sp), cudaFree(d_ids), cudaFree(d_pen), cudaFree(d_scr);
        cudaFree(d_hist), cudaFree(d_hoff);
    }
    fprintf(stderr, "KERNEL %-14s %-34s mismatches %d of %d rows (%d sampled)\n", "sample_rows",
            "V1000 x1200, V1001 x300, V128256 x40", n_bad, total, n_sampled);
    kvf_sampler_destroy(&smp);
}
