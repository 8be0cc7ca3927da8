// tests/test_kernels_qkv_rope.c — kvf_gemm_qkv_rope (the QKV projection with RoPE and
// the paged-cache write in its epilogue) and its step table (kvf_rope_table) against
// the host on fresh random inputs (GPU: LABELS gpu; the cases skip where the kernel is
// not available, e.g. not built for sm_90a).
//
//   qkv = x W^T summed in double from the same bf16 inputs; q and k rotated
//   with HF's rotate_half pairs at the f32 angle pos * inv_freq[i]; q to q_out, k and v
//   to the token's cache slot. Bounds: one bf16 rounding (2^-9 relative) plus f32
//   accumulation: element |gpu - host| <= 8e-3 |host| + 2e-3 max|host|, rel L2 <= 4e-3.
//   Tokens whose block id is out of range write nothing; every cache row that no token
//   owns keeps its poison (NaN), and so do q_out's rows past n.
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "kernels/gemm_qkv_rope.h"

#include "kernel_check.h"

#define HD KVF_QKV_ROPE_HEAD_DIM

typedef struct {
    size_t bad, n;
    double num, den;
} s_acc_t;

static void s_acc(s_acc_t *a, float got, double ref, double max_ref) {
    const double e = isnan(got) ? INFINITY : fabs((double)got - ref);
    a->num += e * e, a->den += ref * ref, a->n++;
    a->bad += !(e <= 8e-3 * fabs(ref) + 2e-3 * max_ref);
}

// n tokens of n_seqs sequences (token t: sequence t % n_seqs at position base + t / n_seqs), blocks of bs
// rows handed out in a shuffled order; sequence n_seqs - 1 (when more than one) gets an out-of-range id.
static void s_case(rng_t *r, int n, int d_in, int H, int KV, int bs, int n_seqs) {
    const int QKV = (H + 2 * KV) * HD, MB = 8;
    const size_t nx = (size_t)n * d_in, nw = (size_t)QKV * d_in;
    float *xf = malloc(nx * 4), *wf = malloc(nw * 4);
    uint16_t *xb = malloc(nx * 2), *wb = malloc(nw * 2);
    const float ws = 2.0f / sqrtf((float)d_in);
    s_rand_bf16(r, xf, xb, nx, -1.0f, 1.0f);
    s_rand_bf16(r, wf, wb, nw, -ws, ws);
    float inv_freq[HD / 2];
    for (int i = 0; i < HD / 2; i++) inv_freq[i] = (float)pow(500000.0, -2.0 * i / HD);
    // positions, sequences, the block table
    int32_t *pos = malloc((size_t)n * 4), *seq = malloc((size_t)n * 4), *bt = malloc((size_t)n_seqs * MB * 4);
    const int base = s_randint(r, 3 * bs);
    const int n_blocks = n_seqs * MB;
    int *perm = malloc((size_t)n_blocks * sizeof(int));
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = s_randint(r, i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int s = 0; s < n_seqs; s++)
        for (int b = 0; b < MB; b++) bt[s * MB + b] = n_seqs > 1 && s == n_seqs - 1 ? n_blocks + 3 : perm[s * MB + b];
    for (int t = 0; t < n; t++) seq[t] = t % n_seqs, pos[t] = base + t / n_seqs;
    cr_assert((base + (n - 1) / n_seqs) / bs < MB, "case too long for the block table");
    // host reference
    float *ref = malloc((size_t)n * QKV * 4);
    double max_ref = 0;
    for (int t = 0; t < n; t++) {
        float *row = ref + (size_t)t * QKV;
        for (int c = 0; c < QKV; c++) {
            double a = 0.0;
            for (int k = 0; k < d_in; k++) a += (double)xf[(size_t)t * d_in + k] * wf[(size_t)c * d_in + k];
            row[c] = (float)a;
        }
        for (int h = 0; h < H + KV; h++)
            for (int i = 0; i < HD / 2; i++) {
                const double ang = (double)(inv_freq[i] * (float)pos[t]);
                const double x1 = row[h * HD + i], x2 = row[h * HD + i + HD / 2];
                row[h * HD + i] = (float)(x1 * cos(ang) - x2 * sin(ang));
                row[h * HD + i + HD / 2] = (float)(x2 * cos(ang) + x1 * sin(ang));
            }
        for (int c = 0; c < QKV; c++) max_ref = fmax(max_ref, fabs(row[c]));
    }
    // device
    const size_t cache = (size_t)n_blocks * bs * KV * HD, nq = (size_t)(n + 8) * H * HD;
    void *dx = s_up(xb, nx * 2), *dw = s_up(wb, nw * 2);
    void *dq = s_dev(nq * 2), *dk = s_dev(cache * 2), *dv = s_dev(cache * 2);
    void *dif = s_up(inv_freq, sizeof inv_freq), *dpos = s_up(pos, (size_t)n * 4), *dseq = s_up(seq, (size_t)n * 4);
    void *dbt = s_up(bt, (size_t)n_seqs * MB * 4), *dcs = s_dev((size_t)n * HD * 4), *dslot = s_dev((size_t)n * 8);
    kvf_err_t err = {0};
    cr_assert(kvf_rope_table(dcs, dslot, dif, dpos, dseq, dbt, MB, n, HD, KV, bs, n_blocks, 0, &err) == 0, "%s",
              err.msg);
    cr_assert(kvf_gemm_qkv_rope(dq, dk, dv, dx, dw, dcs, dslot, n, d_in, H, KV, HD, 0, &err) == 0, "gemm_qkv_rope: %s",
              err.msg);
    float *q = s_down_bf16(dq, nq), *k = s_down_bf16(dk, cache), *v = s_down_bf16(dv, cache);
    float *cs = s_down_f32(dcs, (size_t)n * HD);
    int64_t *slot = malloc((size_t)n * 8);
    CUDA_OK(cudaMemcpy(slot, dslot, (size_t)n * 8, cudaMemcpyDeviceToHost));
    // the table: the slots exactly, the angles' cos and sin to f32 accuracy
    size_t slot_bad = 0, cs_bad = 0;
    for (int t = 0; t < n; t++) {
        const int b = bt[seq[t] * MB + pos[t] / bs];
        const int64_t want = b >= 0 && b < n_blocks ? ((int64_t)b * bs + pos[t] % bs) * KV * HD : -1;
        slot_bad += slot[t] != want;
        for (int i = 0; i < HD / 2; i++) {
            const double ang = (double)(inv_freq[i] * (float)pos[t]);
            cs_bad += !(fabs(cs[(size_t)t * HD + 2 * i] - cos(ang)) <= 2e-6 &&
                        fabs(cs[(size_t)t * HD + 2 * i + 1] - sin(ang)) <= 2e-6);
        }
    }
    // outputs
    s_acc_t aq = {0}, akv = {0};
    char *owned = calloc(cache / HD, 1);  // cache rows (block slot, kv head) written
    size_t skipped = 0;
    for (int t = 0; t < n; t++) {
        const float *row = ref + (size_t)t * QKV;
        for (int i = 0; i < H * HD; i++) s_acc(&aq, q[(size_t)t * H * HD + i], row[i], max_ref);
        if (slot[t] < 0) {
            skipped++;
            continue;
        }
        for (int h = 0; h < KV; h++) {
            owned[(size_t)slot[t] / HD + h] = 1;
            for (int i = 0; i < HD; i++) {
                s_acc(&akv, k[(size_t)slot[t] + (size_t)h * HD + i], row[(H + h) * HD + i], max_ref);
                s_acc(&akv, v[(size_t)slot[t] + (size_t)h * HD + i], row[(H + KV + h) * HD + i], max_ref);
            }
        }
    }
    size_t stray = 0;
    for (size_t i = 0; i < cache; i++)
        if (!owned[i / HD]) stray += !isnan(k[i]) + !isnan(v[i]);
    for (size_t i = (size_t)n * H * HD; i < nq; i++) stray += !isnan(q[i]);
    const double rq = sqrt(aq.num / aq.den), rkv = akv.den > 0 ? sqrt(akv.num / akv.den) : 0.0;
    fprintf(stderr,
            "KERNEL gemm_qkv_rope n=%d d_in=%d H=%d KV=%d bs=%d seqs=%d: q rel L2 %.3e (%zu of %zu outside), "
            "k/v rel L2 %.3e (%zu of %zu outside), %zu tokens without a slot, %zu stray writes, table %zu/%zu off\n",
            n, d_in, H, KV, bs, n_seqs, rq, aq.bad, aq.n, rkv, akv.bad, akv.n, skipped, stray, slot_bad,
            cs_bad);
    cr_expect(slot_bad == 0 && cs_bad == 0, "table: %zu slots, %zu angles off", slot_bad, cs_bad);
    cr_expect(aq.bad == 0 && rq <= 4e-3, "q: %zu outside, rel L2 %.3e", aq.bad, rq);
    cr_expect(akv.bad == 0 && rkv <= 4e-3, "k/v: %zu outside, rel L2 %.3e", akv.bad, rkv);
    cr_expect(stray == 0, "%zu elements written outside the tokens' rows", stray);
    cr_expect(n_seqs == 1 || skipped > 0 || n < n_seqs, "the out-of-range sequence had no token");
    cudaFree(dx), cudaFree(dw), cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dif);
    cudaFree(dpos), cudaFree(dseq), cudaFree(dbt), cudaFree(dcs), cudaFree(dslot);
    free(xf), free(wf), free(xb), free(wb), free(pos), free(seq), free(bt), free(perm), free(ref);
    free(q), free(k), free(v), free(cs), free(slot), free(owned);
}

Test(kernels_qkv_rope, matches_host) {
    if (!kvf_gemm_qkv_rope_available()) cr_skip_test("kvf_gemm_qkv_rope: not built for sm_90a or not a 9.0 device");
    rng_t r = s_rng("gemm_qkv_rope");
    // rows: one, a partial tile, whole tiles, more tiles than SMs (the persistent loop); heads: Llama-3's
    // 32 + 2 x 8 and small groups; k: one stage, many laps of the ring
    s_case(&r, 1, 64, 2, 1, 16, 1);
    s_case(&r, 37, 256, 4, 2, 16, 3);
    s_case(&r, 128, 512, 8, 2, 64, 4);
    s_case(&r, 300, 1024, 4, 4, 16, 5);
    s_case(&r, 2100, 256, 32, 8, 64, 7);
    s_case(&r, 129, 4096, 32, 8, 16, 2);
}

// The arguments are checked before any CUDA call: these pointers are never dereferenced.
Test(kernels_qkv_rope, refuses_bad_shapes) {
    static _Alignas(16) uint16_t buf[1 << 16];
    static _Alignas(16) float fb[1024];
    static int64_t sl[16];
    uint16_t *b = buf;
    kvf_err_t err = {0};
    cr_expect(kvf_gemm_qkv_rope(b, b, b, b, b, fb, sl, 4, 100, 2, 1, HD, 0, &err) == -1, "d_in 100");
    cr_expect(kvf_gemm_qkv_rope(b, b, b, b, b, fb, sl, 4, 64, 3, 1, HD, 0, &err) == -1, "3 q heads");
    cr_expect(kvf_gemm_qkv_rope(b, b, b, b, b, fb, sl, 4, 64, 2, 1, 64, 0, &err) == -1, "head_dim 64");
    cr_expect(kvf_gemm_qkv_rope(b, b, b, b + 1, b, fb, sl, 4, 64, 2, 1, HD, 0, &err) == -1, "x unaligned");
    cr_expect(kvf_gemm_qkv_rope(NULL, b, b, b, b, fb, sl, 4, 64, 2, 1, HD, 0, &err) == -1, "no q_out");
    cr_expect(err.code == KVF_E_INVAL, "%s", err.msg);
    cr_expect(kvf_rope_table(fb, sl, fb, NULL, NULL, NULL, 8, 4, HD, 1, 16, 8, 0, &err) == -1, "no positions");
}
