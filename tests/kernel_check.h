// tests/kernel_check.h — what the kernel tests share (test_kernels.c,
// test_kernels_attn.c): CUDA_OK, a seeded generator (KVF_TEST_SEED replays a
// run), device buffers poisoned with NaN, and the element-wise and norm-wise
// comparisons against the CPU reference (see test_kernels.c for the tolerances).
#ifndef KVF_TESTS_KERNEL_CHECK_H
#define KVF_TESTS_KERNEL_CHECK_H

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/safetensors.h"

#define CUDA_OK(expr)                                                          \
    do {                                                                       \
        cudaError_t e_ = (expr);                                               \
        cr_assert(e_ == cudaSuccess, "%s: %s", #expr, cudaGetErrorString(e_)); \
    } while (0)

#define KOK(expr)                                \
    do {                                         \
        kvf_err_t er_ = {0};                     \
        (void)er_;                               \
        int rc_ = (expr);                        \
        cr_assert(rc_ == 0, "%s failed", #expr); \
    } while (0)

typedef struct {
    uint64_t s;
} rng_t;

static inline uint64_t s_next(rng_t *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline float s_unif(rng_t *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(s_next(r) >> 11) * 0x1.0p-53);
}

static inline int s_randint(rng_t *r, int n) { return (int)(s_next(r) % (uint64_t)n); }

// A fresh seed per test run (inputs differ from run to run), printed for replay.
static inline rng_t s_rng(const char *name) {
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
static inline void s_rand_bf16(rng_t *r, float *f, uint16_t *b, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        b[i] = kvf_f32_to_bf16(s_unif(r, lo, hi));
        f[i] = kvf_bf16_to_f32(b[i]);
    }
}

static inline void *s_dev(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    cr_assert(e == cudaSuccess, "cudaMalloc(%zu): %s", bytes, cudaGetErrorString(e));
    CUDA_OK(cudaMemset(p, 0xff, bytes ? bytes : 1));  // poison: bf16/f32 NaN
    return p;
}

static inline void *s_up(const void *h, size_t bytes) {
    void *d = s_dev(bytes);
    CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

static inline float *s_down_bf16(const void *d, size_t n) {
    uint16_t *b = malloc(n * 2 + 2);
    float *f = malloc(n * 4 + 4);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(b, d, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) f[i] = kvf_bf16_to_f32(b[i]);
    free(b);
    return f;
}

static inline float *s_down_f32(const void *d, size_t n) {
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
static inline cmp_t s_cmp(const float *a, const float *b, size_t n, double atol, double rtol) {
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

static inline void s_report(const char *kernel, const char *cs, cmp_t c) {
    fprintf(stderr, "KERNEL %-14s %-34s max_abs %.3e max_ref %.3e max_rel %.3e rel_l2 %.3e bad %zu\n", kernel, cs,
            c.max_abs, c.max_ref, c.max_rel_elem, c.rel_l2, c.n_bad);
}

// Element-wise check with its own tolerance; reports and asserts.
static inline void s_expect(const char *kernel, const char *cs, const float *gpu, const float *cpu, size_t n,
                            double atol, double rtol) {
    cmp_t c = s_cmp(gpu, cpu, n, atol, rtol);
    s_report(kernel, cs, c);
    cr_expect(c.n_bad == 0, "%s %s: %zu of %zu elements off (first %zu: gpu %g cpu %g)", kernel, cs, c.n_bad, n,
              c.first_bad, c.n_bad ? gpu[c.first_bad] : 0.0, c.n_bad ? cpu[c.first_bad] : 0.0);
}

// Norm-wise check for outputs whose elements are sums (attention, gemm).
static inline void s_expect_norm(const char *kernel, const char *cs, const float *gpu, const float *cpu, size_t n,
                                 double max_frac, double rel_l2) {
    cmp_t c = s_cmp(gpu, cpu, n, INFINITY, 0);
    cmp_t e = s_cmp(gpu, cpu, n, max_frac * c.max_ref, 0);  // NaN counts as bad
    c.n_bad = e.n_bad;
    s_report(kernel, cs, c);
    cr_expect(e.n_bad == 0 && c.rel_l2 <= rel_l2, "%s %s: max_abs %g (allowed %g), rel_l2 %g (allowed %g), %zu bad",
              kernel, cs, c.max_abs, max_frac * c.max_ref, c.rel_l2, rel_l2, e.n_bad);
}

#endif
