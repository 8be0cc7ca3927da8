// tests/test_kernels.c — every CUDA op against the CPU reference op of the same
// name (worker/cpu_ops.h), on fresh random inputs (GPU: LABELS gpu); rope and
// attention (bf16 and FP8 caches) are in test_kernels_attn.c.
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

#include "common/safetensors.h"
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/rmsnorm.h"
#include "kernels/repetition_penalty.h"
#include "kernels/sample.h"
#include "kernels/sample_rows.h"
#include "kernels/silu_mul.h"
#include "kernels/vocab_unshard.h"
#include "worker/cpu_ops.h"
#include "worker/sampler.h"
#include "worker/tp_vocab.h"

#include "kernel_check.h"

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

// The norm tests' inputs: residual ~ U(-3, 3), weight ~ U(0.5, 1.5), x bf16 ~ U(-1, 1) (xf: its f32 values).
static void s_norm_inputs(rng_t *r, float *res, float *w, float *xf, uint16_t *xb, size_t n, int dim) {
    for (size_t i = 0; i < n; i++) res[i] = s_unif(r, -3, 3);
    for (int i = 0; i < dim; i++) w[i] = s_unif(r, 0.5f, 1.5f);
    s_rand_bf16(r, xf, xb, n, -1, 1);
}

Test(kernels, rmsnorm) {
    rng_t r = s_rng("rmsnorm");
    const int cases[][2] = {{1, 64}, {37, 4096}, {5, 333}, {3, 8192}, {130, 896}, {2, 16384}, {3, 4100}};
    for (int c = 0; c < 7; c++) {
        int n = cases[c][0], D = cases[c][1];
        size_t N = (size_t)n * D;
        float *x = malloc(N * 4), *res = malloc(N * 4), *w = malloc(D * 4), *ref = malloc(N * 4);
        float *xf = malloc(N * 4);
        uint16_t *xb = malloc(N * 2);
        s_norm_inputs(&r, res, w, xf, xb, N, D);
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
        // a bf16 residual stream: out = rmsnorm(xb)
        CUDA_OK(cudaMemset(d_out, 0xff, N * 2));
        cr_assert(kvf_rmsnorm_bf16(d_out, d_x, d_w, n, D, 1e-5f, 0, &err) == 0, "%s", err.msg);
        kvf_cpu_rmsnorm(ref, xf, w, n, D, 1e-5f);
        g = s_down_bf16(d_out, N);
        s_expect("rmsnorm_bf16", cs, g, ref, N, 1e-5, 8e-3);
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

// Programmatic dependent launch (kernels/util.cuh): each of K back-to-back rmsnorm_add calls on one
// stream may start before the previous one's writes are flushed, yet must read the residual that one
// wrote. A call that read too early would leave res short of an x: res must be res0 + x + ... + x
// exactly (f32 adds in the same order), over rows enough for several waves of blocks.
Test(kernels, launch_chain) {
    rng_t r = s_rng("launch_chain");
    enum { N_ROWS = 2048, D = 4096, K = 40 };
    const size_t N = (size_t)N_ROWS * D;
    float *res = malloc(N * 4), *w = malloc(D * 4), *xf = malloc(N * 4), *ref = malloc(N * 4);
    uint16_t *xb = malloc(N * 2);
    s_norm_inputs(&r, res, w, xf, xb, N, D);
    float *d_res = s_up(res, N * 4), *d_w = s_up(w, D * 4);
    uint16_t *d_x = s_up(xb, N * 2), *d_out = s_dev(N * 2);
    cudaStream_t st;
    CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    kvf_err_t err;
    for (int k = 0; k < K; k++)
        cr_assert(kvf_rmsnorm_add(d_out, d_res, d_x, d_w, N_ROWS, D, 1e-6f, st, &err) == 0, "%s", err.msg);
    CUDA_OK(cudaStreamSynchronize(st));
    for (size_t i = 0; i < N; i++) {
        float v = res[i];
        for (int k = 0; k < K; k++) v += xf[i];
        res[i] = v;
    }
    float *gres = s_down_f32(d_res, N);
    s_expect("launch_chain.res", "2048 x 4096, 40 calls", gres, res, N, 0, 0);
    kvf_cpu_rmsnorm(ref, res, w, N_ROWS, D, 1e-6f);
    float *g = s_down_bf16(d_out, N);
    s_expect("launch_chain.out", "2048 x 4096, 40 calls", g, ref, N, 1e-5, 8e-3);
    free(g), free(gres), free(res), free(w), free(xf), free(ref), free(xb);
    cudaFree(d_res), cudaFree(d_w), cudaFree(d_x), cudaFree(d_out);
    CUDA_OK(cudaStreamDestroy(st));
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

// kvf_gemm at row counts around and across the buckets of 64 (up to 700 rows of d_x)
// against the host product; ref is scratch of 700 x M.
static void s_check_bucket_picks(kvf_gemm_ctx_t *ctx, const char *what, uint16_t *d_y, const uint16_t *d_x,
                                 const uint16_t *d_w, const float *x, const float *w, float *ref, int K, int M) {
    static const int ns[] = {1, 37, 64, 65, 200, 511, 513, 700, 1024};
    kvf_err_t err;
    for (int i = 0; i < 9; i++) {
        const int n = ns[i];
        CUDA_OK(cudaMemset(d_y, 0xff, (size_t)n * M * 2));
        cr_assert(kvf_gemm(ctx, d_y, KVF_GEMM_OUT_BF16, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        kvf_cpu_matmul(ref, x, w, NULL, n, K, M);
        float *g = s_down_bf16(d_y, (size_t)n * M);
        char cs[64];
        snprintf(cs, sizeof cs, "%s n%d in%d out%d", what, n, K, M);
        s_expect_norm("gemm.bf16", cs, g, ref, (size_t)n * M, 8e-3, 4e-3);
        free(g);
    }
}

// A GEMM context on a fresh workspace of S_GEMM_WS bytes (*ws: cudaFree it after the context).
#define S_GEMM_WS (32u << 20)
static kvf_gemm_ctx_t *s_gemm_ctx(void **ws) {
    *ws = s_dev(S_GEMM_WS);
    kvf_err_t err;
    kvf_gemm_ctx_t *ctx = kvf_gemm_ctx_new(*ws, S_GEMM_WS, &err);
    cr_assert(ctx, "%s", err.msg);
    return ctx;
}

Test(kernels, gemm) {
    rng_t r = s_rng("gemm");
    void *ws;
    kvf_gemm_ctx_t *ctx = s_gemm_ctx(&ws);
    kvf_err_t err;
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
        // accumulate into bf16 (a bf16 residual stream): y = bf16(x w^T) + x w^T, summed in f32, rounded once
        cr_assert(kvf_gemm(ctx, d_yb, KVF_GEMM_OUT_BF16, d_x, d_w, n, K, M, 1.0f, 0, &err) == 0, "%s", err.msg);
        free(g2);
        g2 = s_down_bf16(d_yb, (size_t)n * M);
        s_expect_norm("gemm.bf16+=", cs, g2, ref, (size_t)n * M, 8e-3, 4e-3);
        free(g), free(g2), free(x), free(w), free(ref), free(xb), free(wb);
        cudaFree(d_x), cudaFree(d_w), cudaFree(d_yb), cudaFree(d_yf);
    }
    cr_expect(kvf_gemm(ctx, NULL, KVF_GEMM_OUT_F32, NULL, NULL, 1, 1, 1, 0, 0, &err) == -1 && err.code == KVF_E_INVAL);
    kvf_gemm_ctx_destroy(&ctx);
    cr_expect(ctx == NULL);

    // kvf_gemm_prepare: after it, row counts never seen (bucket picks) query nothing and compute the product
    ctx = kvf_gemm_ctx_new(ws, S_GEMM_WS, &err);
    cr_assert(ctx, "%s", err.msg);
    const int K = 1024, M = 2048, n_max = 1024;
    cr_assert(kvf_gemm_prepare(ctx, KVF_GEMM_OUT_BF16, n_max, K, M, 0, &err) == 0, "%s", err.msg);
    const uint64_t q0 = kvf_gemm_heuristic_calls(ctx);
    cr_expect_eq(q0, 9, "buckets 64..512 and 1024: %llu queries", (unsigned long long)q0);
    float *x = malloc((size_t)n_max * K * 4), *w = malloc((size_t)M * K * 4), *ref = malloc((size_t)n_max * M * 4);
    uint16_t *xb = malloc((size_t)n_max * K * 2), *wb = malloc((size_t)M * K * 2);
    s_rand_bf16(&r, x, xb, (size_t)n_max * K, -1, 1);
    s_rand_bf16(&r, w, wb, (size_t)M * K, -0.1f, 0.1f);
    uint16_t *d_x = s_up(xb, (size_t)n_max * K * 2), *d_w = s_up(wb, (size_t)M * K * 2);
    uint16_t *d_y = s_dev((size_t)n_max * M * 2);
    s_check_bucket_picks(ctx, "bucket pick", d_y, d_x, d_w, x, w, ref, K, M);
    cr_expect_eq(kvf_gemm_heuristic_calls(ctx), q0, "%llu queries after prepare",
                 (unsigned long long)(kvf_gemm_heuristic_calls(ctx) - q0));
    // kvf_gemm_tune_buckets: the buckets of 64..512 and 1024 rows timed over two weight copies (one candidate
    // list query each), the kept picks no slower, and every row count still the same product
    uint16_t *d_w2 = s_up(wb, (size_t)M * K * 2);
    const uint16_t *wl[2] = {d_w, d_w2};
    kvf_gemm_tune_sum_t sum = {0};
    cr_assert(kvf_gemm_ctx_set_tune(ctx, 4, 3, &err) == 0, "%s", err.msg);
    cr_assert(kvf_gemm_tune_buckets(ctx, d_y, KVF_GEMM_OUT_BF16, 0, d_x, wl, 2, n_max, K, M, 6, 0, &sum, &err) == 0,
              "%s", err.msg);
    cr_expect(sum.buckets == 9 && sum.changed >= 0 && sum.changed <= 9, "%d buckets, %d changed", sum.buckets,
              sum.changed);
    cr_expect(sum.heuristic_ms > 0 && sum.kept_ms > 0 && sum.kept_ms <= sum.heuristic_ms, "%.4f -> %.4f ms",
              sum.heuristic_ms, sum.kept_ms);
    cr_expect_eq(kvf_gemm_heuristic_calls(ctx), q0 + 9);
    s_check_bucket_picks(ctx, "tuned bucket pick", d_y, d_x, d_w2, x, w, ref, K, M);
    cr_expect(kvf_gemm_tune_buckets(ctx, d_y, KVF_GEMM_OUT_BF16, 0, d_x, wl, 0, n_max, K, M, 6, 0, NULL, &err) == -1 &&
              err.code == KVF_E_INVAL);
    free(x), free(w), free(ref), free(xb), free(wb);
    cudaFree(d_x), cudaFree(d_w), cudaFree(d_w2), cudaFree(d_y);
    kvf_gemm_ctx_destroy(&ctx);
    cudaFree(ws);
}

// kvf_gemv (a few rows: decode steps of small batches), directly and as kvf_gemm's pick below its
// context's gemv rows: column counts that do not fill a warp's R columns, d_in of one to many chunks.
Test(kernels, gemv) {
    rng_t r = s_rng("gemv");
    void *ws;
    kvf_gemm_ctx_t *ctx = s_gemm_ctx(&ws);
    kvf_err_t err;
    cr_assert(kvf_gemm_ctx_set_gemv_rows(ctx, KVF_GEMV_MAX_ROWS, &err) == 0, "%s", err.msg);
    const int cases[][3] = {{1, 4096, 6144}, {2, 14336, 1024}, {3, 896, 4864}, {5, 64, 1000}, {8, 4104, 37},
                            {8, 4096, 4096}, {4, 8, 9}, {7, 2048, 33000}};
    for (int c = 0; c < 8; c++) {
        const int n = cases[c][0], K = cases[c][1], M = cases[c][2];
        const size_t NY = (size_t)n * M;
        float *x = malloc((size_t)n * K * 4), *w = malloc((size_t)M * K * 4), *ref = malloc(NY * 4);
        uint16_t *xb = malloc((size_t)n * K * 2), *wb = malloc((size_t)M * K * 2);
        s_rand_bf16(&r, x, xb, (size_t)n * K, -1, 1);
        s_rand_bf16(&r, w, wb, (size_t)M * K, -0.1f, 0.1f);
        kvf_cpu_matmul(ref, x, w, NULL, n, K, M);
        uint16_t *d_x = s_up(xb, (size_t)n * K * 2), *d_w = s_up(wb, (size_t)M * K * 2);
        uint16_t *d_yb = s_dev(NY * 2);
        float *d_yf = s_dev(NY * 4);
        char cs[64];
        snprintf(cs, sizeof cs, "n%d in%d out%d", n, K, M);
        cr_assert(kvf_gemv(d_yb, KVF_GEMM_OUT_BF16, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        float *g = s_down_bf16(d_yb, NY);
        s_expect_norm("gemv.bf16", cs, g, ref, NY, 8e-3, 4e-3);
        free(g);
        // bf16 accumulate through kvf_gemm (a bf16 residual): y = bf16(ref) + x w^T, rounded once
        cr_assert(kvf_gemm(ctx, d_yb, KVF_GEMM_OUT_BF16, d_x, d_w, n, K, M, 1.0f, 0, &err) == 0, "%s", err.msg);
        g = s_down_bf16(d_yb, NY);
        float *ref2 = malloc(NY * 4);
        for (size_t i = 0; i < NY; i++) ref2[i] = 2.0f * ref[i];
        s_expect_norm("gemm(gemv).bf16+=", cs, g, ref2, NY, 8e-3, 8e-3);
        free(g), free(ref2);
        cr_assert(kvf_gemv(d_yf, KVF_GEMM_OUT_F32, d_x, d_w, n, K, M, 0.0f, 0, &err) == 0, "%s", err.msg);
        g = s_down_f32(d_yf, NY);
        s_expect_norm("gemv.f32", cs, g, ref, NY, 1e-4, 1e-5);
        free(g);
        // through kvf_gemm, accumulating: y += x w^T (beta 1)
        cr_assert(kvf_gemm(ctx, d_yf, KVF_GEMM_OUT_F32, d_x, d_w, n, K, M, 1.0f, 0, &err) == 0, "%s", err.msg);
        g = s_down_f32(d_yf, NY);
        for (size_t i = 0; i < NY; i++) ref[i] *= 2.0f;
        s_expect_norm("gemm(gemv).f32+=", cs, g, ref, NY, 1e-4, 1e-5);
        free(g), free(x), free(w), free(ref), free(xb), free(wb);
        cudaFree(d_x), cudaFree(d_w), cudaFree(d_yb), cudaFree(d_yf);
    }
    uint16_t *d = s_dev(1u << 20);
    cr_expect(kvf_gemv(d, KVF_GEMM_OUT_F32, d, d, KVF_GEMV_MAX_ROWS + 1, 64, 64, 0, 0, &err) == -1 &&
              err.code == KVF_E_INVAL, "rows past the limit");
    cr_expect(kvf_gemv(d, KVF_GEMM_OUT_F32, d, d, 1, 60, 64, 0, 0, &err) == -1 && err.code == KVF_E_INVAL,
              "d_in not a multiple of 8");
    cr_expect(kvf_gemm_ctx_set_gemv_rows(ctx, KVF_GEMV_MAX_ROWS + 1, &err) == -1 && err.code == KVF_E_INVAL);
    cudaFree(d);
    kvf_gemm_ctx_destroy(&ctx);
    cudaFree(ws);
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
