// tests/test_kernels_attn.c — rope + the KV-cache write and the attention
// kernels (prefill, decode, split-K; every variant; bf16 and FP8 E4M3 caches)
// against the CPU reference ops (worker/cpu_ops.h) on fresh random inputs, over
// paged batches whose block tables scatter each sequence (GPU: LABELS gpu).
// Tolerances as test_kernels.c's: rope (bf16 out) <= 8e-3 |ref| + 1e-5;
// attention max <= 8e-3 max|ref|, rel L2 <= 4e-3; an FP8 cache holds the host
// codec's E4M3 value of each element (a neighbour next to a tie, at most 1 in 100).
#include "common/fp8.h"
#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_prefill.h"
#include "kernels/rope_kv.h"
#include "worker/cpu_ops.h"

#include "kernel_check.h"

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
    // the kernel's narrower form: one pair a thread (head_dim % 4 != 0); HD 12 takes two pairs
    kvf_modelcfg_t c5 = s_cfg(6, 2, 12, KVF_ROPE_DEFAULT), c6 = s_cfg(4, 2, 6, KVF_ROPE_DEFAULT);
    c5.rope_theta = c6.rope_theta = 10000.0;
    s_rope_case(&r, &c5, 16, 2, np4, nn4, 1, 0, 0, "default+bias H6 KV2 HD12 bs16");
    s_rope_case(&r, &c5, 16, 2, np4, nn4, 0, 1, 1, "fp8 f32 in, H6 KV2 HD12 bs16");
    s_rope_case(&r, &c6, 16, 2, np4, nn4, 1, 1, 0, "f32 in+bias H4 KV2 HD6 bs16");
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
    if (tensor_cores != 1) {  // kvf_attention's and the decode kernels' tiles longest first, as the backend runs them
        int32_t *order_scratch = malloc(kvf_attn_order_scratch_ints(n_tiles, max_ctx) * 4);
        cr_assert(kvf_attn_order_tiles(tiles, n_tiles, b.pos, max_ctx, order_scratch) == 0);
        free(order_scratch);
    }
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
        int tt = 1;  // the most tokens a tile holds: the "t" / "f8t" variants need tt x G <= 8 rows
        for (int i = 0; i < n_tiles; i++)
            if (tiles[3 * i + 2] > tt) tt = tiles[3 * i + 2];
        for (int v = 0; v < nv; v++) {
            const char *vn = fp8 ? kvf_attention_decode_fp8_variant_name(v) : kvf_attention_decode_variant_name(v);
            cr_assert(vn, "variant %d has no name", v);
            CUDA_OK(cudaMemset(d_out, 0xff, qn * 2));
            const int rc = fp8 ? kvf_attention_decode_fp8_variant(v, d_out, d_q, d_k8, d_v8, d_tiles, n_tiles, tt,
                                                                  d_pos, d_bt, b.max_blocks, H, KV, HD, bs, 0, &err)
                               : kvf_attention_decode_variant(v, d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, tt, d_pos,
                                                              d_bt, b.max_blocks, H, KV, HD, bs, 0, &err);
            if (tt * (H / KV) > kvf_attention_decode_variant_max_rows(fp8, v)) {  // refused, as documented
                cr_expect(rc == -1 && err.code == KVF_E_INVAL && strstr(err.msg, "at most 8 rows"), "%s: %s", vn,
                          err.msg);
                continue;
            }
            if (!fp8 && !kvf_attention_decode_variant_available(v)) {  // no sm_90 code or device: refused
                cr_expect(rc == -1 && err.code == KVF_E_UNSUPPORTED, "%s: %s", vn, err.msg);
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
                           : kvf_attention_decode(d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, tt, d_pos, d_bt,
                                                  b.max_blocks, H, KV, HD, bs, 0, &err);
        cr_assert(rc == 0, "%s", err.msg);
        snprintf(full, sizeof full, "%s", cs);
    } else if (fp8 && tensor_cores) {
        // every variant with an FP8 form (2 and up) that this build and GPU run; 0 and 1 are refused
        for (int v = 0; v < kvf_attention_prefill_n_variants(); v++) {
            const int rc = kvf_attention_prefill_fp8_variant(v, d_out, d_q, d_k8, d_v8, d_tiles, n_tiles, d_pos, d_bt,
                                                             b.max_blocks, H, KV, HD, bs, 0, &err);
            if (v < 2 || !kvf_attention_prefill_variant_available(v)) {
                cr_expect(rc == -1 && err.code == KVF_E_INVAL, "fp8 variant %d: %d", v, rc);
                continue;
            }
            cr_assert(rc == 0, "%s", err.msg);
            float *gv = s_down_bf16(d_out, qn);
            snprintf(full, sizeof full, "%s [%s]", cs, kvf_attention_prefill_variant_name(v));
            s_expect_norm("attention_tc_fp8", full, gv, ref, qn, 8e-3, 4e-3);
            free(gv);
            CUDA_OK(cudaMemset(d_out, 0xff, qn * 2));
        }
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
            const int rc = kvf_attention_prefill_variant(v, d_out, d_q, d_kc, d_vc, d_tiles, n_tiles, d_pos, d_bt,
                                                         b.max_blocks, H, KV, HD, bs, 0, &err);
            if (!kvf_attention_prefill_variant_available(v)) {  // not built for this GPU: refused, by name
                cr_expect(rc == -1 && err.code == KVF_E_INVAL && strstr(err.msg, "sm_90a"), "variant %d", v);
                continue;
            }
            cr_assert(rc == 0, "%s", err.msg);
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
    // every default takes the rows it is picked for; the transposed variants take 8
    const int b16 = kvf_attention_decode_default_variant(0, 16);
    cr_expect(kvf_attention_decode_variant_max_rows(0, d0) >= 4 &&
              kvf_attention_decode_variant_max_rows(0, b16) == 16 &&
              kvf_attention_decode_variant_max_rows(1, d8) >= 4 &&
              kvf_attention_decode_variant_max_rows(1, d16) == 16);
    cr_expect(kvf_attention_decode_variant_max_rows(0, nv) == 0 && kvf_attention_decode_variant_max_rows(1, -1) == 0);
    for (int v = 0; v < nv; v++)
        cr_expect(kvf_attention_decode_variant_max_rows(0, v) == (strstr(kvf_attention_decode_variant_name(v), " t ")
                                                                      ? 8 : KVF_ATTN_DECODE_ROWS),
                  "%s", kvf_attention_decode_variant_name(v));
    kvf_err_t err;
    uint16_t dummy[8];
    const int32_t idummy[3] = {0, 0, 1};
    cr_expect(kvf_attention_decode_variant(nv, dummy, dummy, dummy, dummy, idummy, 1, 1, idummy, idummy, 1, 32, 8,
                                           128, 64, 0, &err) == -1 &&
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
