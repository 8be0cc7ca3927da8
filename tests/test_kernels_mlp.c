// tests/test_kernels_mlp.c — kvf_gemm_swiglu (the gate/up GEMM with SwiGLU in its
// epilogue) and kvf_silu_mul_blocked (SwiGLU over its interleaved order) against the
// host on fresh random inputs (GPU: LABELS gpu; the fused kernel's cases skip where it
// is not available, e.g. not built for sm_90a).
//
//   act = silu(x Wg^T) * (x Wu^T), W uploaded in Hugging Face's order and interleaved on
//   the device (kvf_swiglu_interleave); the host sums in double from the same bf16 inputs.
//   Bounds: one bf16 rounding of the output (2^-9 relative) plus f32 accumulation:
//   element |gpu - host| <= 8e-3 |host| + 2e-3 max|host|, rel L2 <= 4e-3.
//   Rows past n stay untouched (the buffer's poison survives).
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/safetensors.h"
#include "kernels/gemm_swiglu.h"
#include "kernels/silu_mul.h"

#include "kernel_check.h"

static void s_case(rng_t *r, int v, int n, int d_in, int ff) {
    const size_t nx = (size_t)n * d_in, nw = (size_t)2 * ff * d_in, no = (size_t)n * ff;
    float *xf = malloc(nx * 4), *wf = malloc(nw * 4), *ref = malloc(no * 4);
    uint16_t *xb = malloc(nx * 2), *wb = malloc(nw * 2);
    const float ws = 2.0f / sqrtf((float)d_in);
    s_rand_bf16(r, xf, xb, nx, -1.0f, 1.0f);
    s_rand_bf16(r, wf, wb, nw, -ws, ws);
    double max_ref = 0;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < ff; j++) {
            double g = 0, u = 0;
            const float *xr = xf + (size_t)t * d_in, *wg = wf + (size_t)j * d_in, *wu = wf + (size_t)(ff + j) * d_in;
            for (int k = 0; k < d_in; k++) g += (double)xr[k] * wg[k], u += (double)xr[k] * wu[k];
            ref[(size_t)t * ff + j] = (float)(g / (1.0 + exp(-g)) * u);
            max_ref = fmax(max_ref, fabs(ref[(size_t)t * ff + j]));
        }
    void *dx = s_up(xb, nx * 2), *dw = s_up(wb, nw * 2), *dwi = s_dev(nw * 2), *dact = s_dev((no + (size_t)8 * ff) * 2);
    kvf_err_t err = {0};
    cr_assert(kvf_swiglu_interleave(dwi, dw, ff, d_in, 0, &err) == 0, "interleave: %s", err.msg);
    cr_assert(kvf_gemm_swiglu_variant(v, dact, dx, dwi, n, d_in, ff, 0, &err) == 0, "gemm_swiglu: %s", err.msg);
    float *got = s_down_bf16(dact, no + (size_t)8 * ff);
    size_t bad = 0, first = (size_t)-1, past = 0;
    double num = 0, den = 0;
    for (size_t i = 0; i < no; i++) {
        const double e = fabs((double)got[i] - ref[i]);
        num += e * e, den += (double)ref[i] * ref[i];
        if (!(e <= 8e-3 * fabs(ref[i]) + 2e-3 * max_ref)) {
            if (first == (size_t)-1) first = i;
            bad++;
        }
    }
    for (size_t i = no; i < no + (size_t)8 * ff; i++) past += !isnan(got[i]);
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    fprintf(stderr, "KERNEL gemm_swiglu %s n=%d d_in=%d ff=%d: rel L2 %.3e, %zu of %zu outside, %zu written past n\n",
            kvf_gemm_swiglu_variant_name(v), n, d_in, ff, rel, bad, no, past);
    cr_expect(bad == 0, "n=%d d_in=%d ff=%d: %zu elements outside, first %zu: %g vs %g", n, d_in, ff, bad, first,
              bad ? got[first] : 0.0, bad ? ref[first] : 0.0);
    cr_expect(rel <= 4e-3, "n=%d d_in=%d ff=%d: rel L2 %.3e", n, d_in, ff, rel);
    cr_expect(past == 0, "n=%d d_in=%d ff=%d: %zu elements written past row n", n, d_in, ff, past);
    cudaFree(dx), cudaFree(dw), cudaFree(dwi), cudaFree(dact);
    free(xf), free(wf), free(ref), free(xb), free(wb), free(got);
}

Test(kernels_mlp, gemm_swiglu_matches_host) {
    if (!kvf_gemm_swiglu_available()) cr_skip_test("kvf_gemm_swiglu: not built for sm_90a or not a 9.0 device");
    rng_t r = s_rng("gemm_swiglu");
    // rows: one, a partial tile, whole tiles, more tiles than SMs (the persistent loop); k: one
    // stage, fewer stages than the ring, many laps of it
    const int cases[][3] = {{1, 64, 128},   {37, 256, 256},   {128, 512, 384},  {300, 1024, 512},
                            {1000, 128, 256}, {129, 4096, 1024}, {2100, 512, 2048}};
    for (int v = 0; v < KVF_SWIGLU_VARIANTS; v++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            s_case(&r, v, cases[c][0], cases[c][1], cases[c][2]);
}

// kvf_silu_mul_blocked over a gate/up product in blocks: each output element once, from its own
// block's gate and up columns (the host computes in f32 from the same bf16 values; one bf16 rounding).
Test(kernels_mlp, silu_mul_blocked_matches_host) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 1) cr_skip_test("no CUDA device");
    rng_t r = s_rng("silu_mul_blocked");
    const int cases[][3] = {{1, 128, 128}, {37, 768, 128}, {300, 14336, 128}, {5, 64, 8}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int n = cases[c][0], ff = cases[c][1], blk = cases[c][2];
        const size_t nin = (size_t)n * 2 * ff, no = (size_t)n * ff;
        float *gf = malloc(nin * 4), *ref = malloc(no * 4);
        uint16_t *gb = malloc(nin * 2);
        s_rand_bf16(&r, gf, gb, nin, -6.0f, 6.0f);
        for (int t = 0; t < n; t++)
            for (int j = 0; j < ff; j++) {
                const float *row = gf + (size_t)t * 2 * ff;
                const float g = row[j / blk * 2 * blk + j % blk], u = row[j / blk * 2 * blk + blk + j % blk];
                ref[(size_t)t * ff + j] = g / (1.0f + expf(-g)) * u;
            }
        void *din = s_up(gb, nin * 2), *dout = s_dev(no * 2);
        kvf_err_t err = {0};
        cr_assert(kvf_silu_mul_blocked(dout, din, n, ff, blk, 0, &err) == 0, "%s", err.msg);
        float *got = s_down_bf16(dout, no);
        size_t bad = 0;
        for (size_t i = 0; i < no; i++) bad += !(fabsf(got[i] - ref[i]) <= 4e-3f * fabsf(ref[i]) + 1e-6f);
        fprintf(stderr, "KERNEL silu_mul_blocked n=%d ff=%d block=%d: %zu of %zu outside\n", n, ff, blk, bad, no);
        cr_expect(bad == 0, "n=%d ff=%d block=%d: %zu elements outside", n, ff, blk, bad);
        cudaFree(din), cudaFree(dout);
        free(gf), free(ref), free(gb), free(got);
    }
}

// The arguments are checked before any CUDA call: these pointers are never dereferenced.
Test(kernels_mlp, gemm_swiglu_refuses_bad_shapes) {
    static _Alignas(16) uint16_t buf[1 << 17];
    kvf_err_t err = {0};
    uint16_t *b = buf;
    cr_expect(kvf_gemm_swiglu(b, b + 4096, b + 8192, 4, 100, 128, 0, &err) == -1, "d_in 100: not a multiple of 64");
    cr_expect(kvf_gemm_swiglu(b, b + 4096, b + 8192, 4, 64, 100, 0, &err) == -1, "ff 100: not a multiple of 128");
    cr_expect(kvf_gemm_swiglu(b, b + 4097, b + 8192, 4, 64, 128, 0, &err) == -1, "x not 16-byte aligned");
    cr_expect(kvf_gemm_swiglu(NULL, b + 4096, b + 8192, 4, 64, 128, 0, &err) == -1, "no output");
    cr_expect(kvf_gemm_swiglu_variant(KVF_SWIGLU_VARIANTS, b, b + 4096, b + 8192, 4, 64, 128, 0, &err) == -1,
              "no such variant");
    cr_expect(kvf_swiglu_interleave(b, b, 128, 64, 0, &err) == -1, "in place");
    cr_expect(kvf_swiglu_interleave(b, b + 65536, 100, 64, 0, &err) == -1, "ff 100");
    cr_expect(kvf_silu_mul_blocked(b, b + 4096, 4, 100, 128, 0, &err) == -1, "ff 100, blocks of 128");
    cr_expect(kvf_silu_mul_blocked(b, b + 4096, 4, 128, 12, 0, &err) == -1, "blocks of 12");
}
