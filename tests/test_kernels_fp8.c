// tests/test_kernels_fp8.c — the kernels of FP8 linear layers (--quantization fp8)
// against the host: row quantization, the norms and silu_mul with E4M3 output,
// and cuBLASLt's FP8 GEMM with a scale per row of each operand (GPU: LABELS gpu).
//
// The row format is common/fp8.h's: scale = amax / 448, byte = e4m3(x * 448 / amax).
//   quant_fp8_rows (bf16 in) ............... bytes and scales exact
//   rmsnorm / silu_mul with E4M3 out ........ scales within 1e-5 relative of the host's on the
//       host's f32 values; bytes equal the host's except where the two f32 values
//       straddle an E4M3 rounding boundary (< 1%), each then one step apart (<= 1/8 relative)
//   gemm_fp8 (exact E4M3 operands) .......... f32 out rel L2 <= 3e-4 (H200: 1.1e-4; the tensor cores'
//       FP8 products are summed in a narrower accumulator between promotions to f32), max <= 5e-4
//       max|ref|; bf16 out max <= 8e-3 max|ref|, rel L2 <= 4e-3
//   gemm_fp8, fast accumulation ............. f32 out rel L2 <= 3e-3 (H200: 1.2e-3, below a bf16 output's
//       rounding), max <= 8e-3 max|ref| (4.3e-3)
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp8.h"
#include "common/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/quant_fp8.h"
#include "kernels/rmsnorm.h"
#include "kernels/silu_mul.h"
#include "worker/cpu_ops.h"

#include "kernel_check.h"

// The host's E4M3 rows of ref (n, d): bytes q and scales s.
static void s_host_quant(const float *ref, int n, int d, uint8_t *q, float *s) {
    for (int r = 0; r < n; r++) {
        float amax = 0.0f;
        for (int i = 0; i < d; i++) amax = fmaxf(amax, fabsf(ref[(size_t)r * d + i]));
        s[r] = kvf_fp8_row_scale(amax);
        const float inv = kvf_fp8_row_inv(amax);
        for (int i = 0; i < d; i++) q[(size_t)r * d + i] = kvf_fp8_e4m3_from_float(ref[(size_t)r * d + i] * inv);
    }
}

// GPU rows (bytes gq, scales gs) against the host's quantization of the f32 values ref:
// scales within 1e-5, bytes equal but for < 1% one E4M3 step apart (boundary straddles).
static void s_expect_rows(const char *kernel, const char *cs, const uint8_t *gq, const float *gs, const float *ref,
                          int n, int d) {
    uint8_t *q = malloc((size_t)n * d);
    float *s = malloc((size_t)n * 4);
    s_host_quant(ref, n, d, q, s);
    size_t diff = 0, far = 0, bad_scale = 0;
    for (int r = 0; r < n; r++) {
        if (!(fabsf(gs[r] - s[r]) <= 1e-5f * s[r])) bad_scale++;
        for (int i = 0; i < d; i++) {
            const size_t k = (size_t)r * d + i;
            if (gq[k] == q[k]) continue;
            diff++;
            const float a = kvf_fp8_e4m3_to_float(gq[k]), b = kvf_fp8_e4m3_to_float(q[k]);
            if (!(fabsf(a - b) <= 0.125f * fmaxf(fabsf(a), fabsf(b)) + 0x1p-9f)) far++;
        }
    }
    fprintf(stderr, "KERNEL %-16s %-24s %zu of %zu bytes differ from the host's (%zu more than a step), "
            "%zu scales off\n", kernel, cs, diff, (size_t)n * d, far, bad_scale);
    cr_expect(bad_scale == 0, "%s %s: %zu scales off", kernel, cs, bad_scale);
    cr_expect(far == 0 && diff * 100 <= (size_t)n * d, "%s %s: %zu bytes differ, %zu by more than one step", kernel,
              cs, diff, far);
    free(q), free(s);
}

static uint8_t *s_down_u8(const void *d, size_t n) {
    uint8_t *h = malloc(n + 1);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost));
    return h;
}

Test(kernels_fp8, quant_rows_exact) {
    rng_t r = s_rng("quant_fp8_rows");
    const int cases[][2] = {{1, 8}, {37, 4096}, {5, 14336}, {300, 1000}, {3, 32768}, {64, 128}};
    for (int c = 0; c < 6; c++) {
        const int n = cases[c][0], d = cases[c][1];
        const size_t N = (size_t)n * d;
        float *f = malloc(N * 4), *s = malloc((size_t)n * 4);
        uint16_t *b = malloc(N * 2);
        uint8_t *q = malloc(N);
        for (int row = 0; row < n; row++) {  // magnitudes from 1e-6 to 1e4; row 1 all zeros
            const float mag = row == 1 ? 0.0f : powf(10.0f, s_unif(&r, -6, 4));
            s_rand_bf16(&r, f + (size_t)row * d, b + (size_t)row * d, (size_t)d, -mag, mag);
        }
        s_host_quant(f, n, d, q, s);
        uint16_t *d_x = s_up(b, N * 2);
        uint8_t *d_q = s_dev(N);
        float *d_s = s_dev((size_t)n * 4);
        kvf_err_t err;
        cr_assert(kvf_quant_fp8_rows(d_q, d_s, d_x, n, d, 0, &err) == 0, "%s", err.msg);
        uint8_t *gq = s_down_u8(d_q, N);
        float *gs = s_down_f32(d_s, (size_t)n);
        size_t bad = 0, bad_s = 0;
        for (size_t i = 0; i < N; i++) bad += gq[i] != q[i];
        for (int i = 0; i < n; i++) bad_s += memcmp(&gs[i], &s[i], 4) != 0;
        fprintf(stderr, "KERNEL quant_fp8_rows  n%d d%d: %zu of %zu bytes and %zu of %d scales differ\n", n, d, bad, N,
                bad_s, n);
        cr_expect(bad == 0 && bad_s == 0, "n%d d%d: %zu bytes, %zu scales differ", n, d, bad, bad_s);
        if (n > 1) cr_expect(gs[1] == 1.0f, "a zero row's scale is %g", gs[1]);
        free(f), free(s), free(b), free(q), free(gq), free(gs);
        cudaFree(d_x), cudaFree(d_q), cudaFree(d_s);
    }
    kvf_err_t err;
    uint8_t *d_q = s_dev(64);
    float *d_s = s_dev(64);
    uint16_t *d_x = s_dev(128);
    cr_expect(kvf_quant_fp8_rows(d_q, d_s, d_x, 1, 12, 0, &err) == -1 && err.code == KVF_E_INVAL, "d 12 accepted");
    cudaFree(d_q), cudaFree(d_s), cudaFree(d_x);
}

Test(kernels_fp8, rmsnorm_fp8) {
    rng_t r = s_rng("rmsnorm_fp8");
    const int cases[][2] = {{1, 64}, {37, 4096}, {3, 8192}, {130, 896}, {2, 16384}, {5, 4100}};
    for (int c = 0; c < 6; c++) {
        const int n = cases[c][0], D = cases[c][1];
        const size_t N = (size_t)n * D;
        float *res = malloc(N * 4), *w = malloc(D * 4), *ref = malloc(N * 4), *x = malloc(N * 4), *xf = malloc(N * 4);
        uint16_t *xb = malloc(N * 2);
        for (size_t i = 0; i < N; i++) res[i] = s_unif(&r, -3, 3);
        for (int i = 0; i < D; i++) w[i] = s_unif(&r, 0.5f, 1.5f);
        s_rand_bf16(&r, xf, xb, N, -1, 1);
        float *d_res = s_up(res, N * 4), *d_w = s_up(w, D * 4), *d_s = s_dev((size_t)n * 4);
        uint16_t *d_x = s_up(xb, N * 2);
        uint8_t *d_q = s_dev(N);
        kvf_err_t err;
        char cs[64];
        snprintf(cs, sizeof cs, "n%d D%d", n, D);
        cr_assert(kvf_rmsnorm_fp8(d_q, d_s, d_res, d_w, n, D, 1e-5f, 0, &err) == 0, "%s", err.msg);
        kvf_cpu_rmsnorm(ref, res, w, n, D, 1e-5f);
        uint8_t *gq = s_down_u8(d_q, N);
        float *gs = s_down_f32(d_s, (size_t)n);
        s_expect_rows("rmsnorm_fp8", cs, gq, gs, ref, n, D);
        free(gq), free(gs);
        // fused with a bf16 x, then with an f32 x: res += x; out = rmsnorm(res)
        for (int f32 = 0; f32 < 2; f32++) {
            CUDA_OK(cudaMemcpy(d_res, res, N * 4, cudaMemcpyHostToDevice));
            float *d_xf = f32 ? s_up(xf, N * 4) : NULL;
            cr_assert((f32 ? kvf_rmsnorm_add_f32_fp8(d_q, d_s, d_res, d_xf, d_w, n, D, 1e-6f, 0, &err)
                           : kvf_rmsnorm_add_fp8(d_q, d_s, d_res, d_x, d_w, n, D, 1e-6f, 0, &err)) == 0,
                      "%s", err.msg);
            for (size_t i = 0; i < N; i++) x[i] = res[i] + xf[i];
            kvf_cpu_rmsnorm(ref, x, w, n, D, 1e-6f);
            gq = s_down_u8(d_q, N);
            gs = s_down_f32(d_s, (size_t)n);
            float *gres = s_down_f32(d_res, N);
            s_expect_rows(f32 ? "rmsnorm_add_f32_fp8" : "rmsnorm_add_fp8", cs, gq, gs, ref, n, D);
            s_expect(f32 ? "rmsnorm_add_f32_fp8.res" : "rmsnorm_add_fp8.res", cs, gres, x, N, 0, 0);
            free(gq), free(gs), free(gres);
            if (d_xf) cudaFree(d_xf);
        }
        free(res), free(w), free(ref), free(x), free(xf), free(xb);
        cudaFree(d_res), cudaFree(d_w), cudaFree(d_s), cudaFree(d_x), cudaFree(d_q);
    }
}

Test(kernels_fp8, silu_mul_fp8) {
    rng_t r = s_rng("silu_mul_fp8");
    const int cases[][2] = {{1, 14336}, {19, 1000}, {64, 4864}, {3, 28672}, {7, 8}};
    for (int c = 0; c < 5; c++) {
        const int n = cases[c][0], F = cases[c][1];
        const size_t N = (size_t)n * 2 * F;
        float *gu = malloc(N * 4), *ref = malloc((size_t)n * F * 4);
        uint16_t *gub = malloc(N * 2);
        s_rand_bf16(&r, gu, gub, N, -6, 6);
        for (int t = 0; t < n; t++)
            kvf_cpu_silu_mul(ref + (size_t)t * F, gu + (size_t)t * 2 * F, gu + (size_t)t * 2 * F + F, F);
        uint16_t *d_gu = s_up(gub, N * 2);
        uint8_t *d_q = s_dev((size_t)n * F);
        float *d_s = s_dev((size_t)n * 4);
        kvf_err_t err;
        for (int v = 0; v < KVF_SILU_FP8_VARIANTS; v++) {
            CUDA_OK(cudaMemset(d_q, 0xff, (size_t)n * F));
            cr_assert(kvf_silu_mul_fp8_variant(v, d_q, d_s, d_gu, d_gu + F, n, F, 2 * F, 0, &err) == 0, "%s", err.msg);
            uint8_t *gq = s_down_u8(d_q, (size_t)n * F);
            float *gs = s_down_f32(d_s, (size_t)n);
            char cs[64];
            snprintf(cs, sizeof cs, "v%d n%d ff%d", v, n, F);
            s_expect_rows("silu_mul_fp8", cs, gq, gs, ref, n, F);
            free(gq), free(gs);
        }
        free(gu), free(ref), free(gub);
        cudaFree(d_gu), cudaFree(d_q), cudaFree(d_s);
    }
}

Test(kernels_fp8, gemm_fp8) {
    rng_t r = s_rng("gemm_fp8");
    void *ws = s_dev(32u << 20);
    kvf_err_t err;
    kvf_gemm_ctx_t *ctx = kvf_gemm_ctx_new(ws, 32u << 20, &err), *fast = kvf_gemm_ctx_new(ws, 32u << 20, &err);
    cr_assert(ctx && fast, "%s", err.msg);
    cr_assert(kvf_gemm_ctx_set_fp8_fast_accum(fast, 1, &err) == 0, "%s", err.msg);
    const int cases[][3] = {{1, 4096, 1024}, {37, 512, 1008}, {300, 896, 4864}, {391, 4096, 1536}, {64, 14336, 256}};
    for (int c = 0; c < 5; c++) {
        const int n = cases[c][0], K = cases[c][1], M = cases[c][2];
        float *x = malloc((size_t)n * K * 4), *w = malloc((size_t)M * K * 4), *ref = malloc((size_t)n * M * 4);
        float *sx = malloc((size_t)n * 4), *sw = malloc((size_t)M * 4);
        uint8_t *xq = malloc((size_t)n * K), *wq = malloc((size_t)M * K);
        for (size_t i = 0; i < (size_t)n * K; i++) x[i] = s_unif(&r, -1, 1);
        for (size_t i = 0; i < (size_t)M * K; i++) w[i] = s_unif(&r, -0.1f, 0.1f);
        s_host_quant(x, n, K, xq, sx);
        s_host_quant(w, M, K, wq, sw);
        for (size_t i = 0; i < (size_t)n * K; i++) x[i] = kvf_fp8_e4m3_to_float(xq[i]);  // the E4M3 values
        for (size_t i = 0; i < (size_t)M * K; i++) w[i] = kvf_fp8_e4m3_to_float(wq[i]);
        for (int t = 0; t < n; t++)  // their exact product, in double
            for (int o = 0; o < M; o++) {
                double acc = 0;
                const float *xr = x + (size_t)t * K, *wr = w + (size_t)o * K;
                for (int k = 0; k < K; k++) acc += (double)xr[k] * wr[k];
                ref[(size_t)t * M + o] = (float)(acc * sx[t] * sw[o]);
            }
        uint8_t *d_x = s_up(xq, (size_t)n * K), *d_w = s_up(wq, (size_t)M * K);
        float *d_sx = s_up(sx, (size_t)n * 4), *d_sw = s_up(sw, (size_t)M * 4);
        uint16_t *d_yb = s_dev((size_t)n * M * 2);
        float *d_yf = s_dev((size_t)n * M * 4);
        cr_assert(kvf_gemm_fp8(ctx, d_yb, KVF_GEMM_OUT_BF16, d_x, d_sx, d_w, d_sw, n, K, M, 0, &err) == 0, "%s",
                  err.msg);
        cr_assert(kvf_gemm_fp8(ctx, d_yf, KVF_GEMM_OUT_F32, d_x, d_sx, d_w, d_sw, n, K, M, 0, &err) == 0, "%s",
                  err.msg);
        char cs[64];
        snprintf(cs, sizeof cs, "n%d in%d out%d", n, K, M);
        float *g = s_down_bf16(d_yb, (size_t)n * M);
        s_expect_norm("gemm_fp8.bf16", cs, g, ref, (size_t)n * M, 8e-3, 4e-3);
        free(g);
        g = s_down_f32(d_yf, (size_t)n * M);
        s_expect_norm("gemm_fp8.f32", cs, g, ref, (size_t)n * M, 5e-4, 3e-4);
        free(g);
        // with cuBLASLt's fast accumulation (no periodic promotion to f32): the same product, less exactly. The
        // narrow accumulator's rounding adds up along K like a random walk, so the bounds grow as sqrt(K / 4096):
        // at K 14336 one H200 draw reached rel L2 2.7e-3 and a largest error of 0.98% of the largest output
        // (bounds 5.6e-3 and 1.5%; at K <= 4096 they stay 3e-3 and 0.8%, measured up to 1.2e-3 and 0.3%).
        cr_assert(kvf_gemm_fp8(fast, d_yf, KVF_GEMM_OUT_F32, d_x, d_sx, d_w, d_sw, n, K, M, 0, &err) == 0, "%s",
                  err.msg);
        g = s_down_f32(d_yf, (size_t)n * M);
        const double growth = K > 4096 ? sqrt(K / 4096.0) : 1.0;
        s_expect_norm("gemm_fp8.f32.fast", cs, g, ref, (size_t)n * M, 8e-3 * growth, 3e-3 * growth);
        free(g), free(x), free(w), free(ref), free(sx), free(sw), free(xq), free(wq);
        cudaFree(d_x), cudaFree(d_w), cudaFree(d_sx), cudaFree(d_sw), cudaFree(d_yb), cudaFree(d_yf);
    }
    // prepared buckets serve the FP8 shapes too; a d_in that is not a multiple of 16 is refused
    cr_assert(kvf_gemm_prepare_fp8(ctx, KVF_GEMM_OUT_BF16, 600, 1024, 2048, &err) == 0, "%s", err.msg);
    const uint64_t q0 = kvf_gemm_heuristic_calls(ctx);
    uint8_t *d_x = s_dev(600 * 1024), *d_w = s_dev(2048 * 1024);
    float *d_sx = s_dev(600 * 4), *d_sw = s_dev(2048 * 4);
    uint16_t *d_y = s_dev((size_t)600 * 2048 * 2);
    CUDA_OK(cudaMemset(d_x, 0x30, 600 * 1024));
    CUDA_OK(cudaMemset(d_w, 0x30, 2048 * 1024));
    CUDA_OK(cudaMemset(d_sx, 0, 600 * 4));
    CUDA_OK(cudaMemset(d_sw, 0, 2048 * 4));
    cr_expect(kvf_gemm_fp8(ctx, d_y, KVF_GEMM_OUT_BF16, d_x, d_sx, d_w, d_sw, 517, 1024, 2048, 0, &err) == 0, "%s",
              err.msg);
    cr_expect_eq(kvf_gemm_heuristic_calls(ctx), q0, "a prepared bucket queried the heuristic again");
    cr_expect(kvf_gemm_fp8(ctx, d_y, KVF_GEMM_OUT_BF16, d_x, d_sx, d_w, d_sw, 5, 1000, 2048, 0, &err) == -1 &&
                  err.code == KVF_E_INVAL,
              "d_in 1000 accepted");
    CUDA_OK(cudaDeviceSynchronize());
    cudaFree(d_x), cudaFree(d_w), cudaFree(d_sx), cudaFree(d_sw), cudaFree(d_y);
    cr_expect(kvf_gemm_ctx_set_fp8_fast_accum(ctx, 1, &err) == -1, "fast accumulation switched after FP8 GEMMs ran");
    kvf_gemm_ctx_destroy(&fast);
    kvf_gemm_ctx_destroy(&ctx);
    cudaFree(ws);
}
