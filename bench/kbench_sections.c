// bench/kbench_sections.c — kvf-kbench's sections (bench/kbench.h): each
// kernel on the Llama-3-8B shapes, with the FLOPs and bytes one call moves
// (the formulas head each section).


#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_prefill.h"
#include "kernels/check.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/gemm_swiglu.h"
#include "kernels/quant_fp8.h"
#include "kernels/rmsnorm.h"
#include "kernels/repetition_penalty.h"
#include "kernels/rope_kv.h"
#include "kernels/gemm_qkv_rope.h"
#include "kernels/sample.h"
#include "kernels/sample_rows.h"
#include "kernels/silu_mul.h"
#include "bench/kbench.h"
#include "bench/kbench_read.h"

// ---------------------------------------------------------------- gemm
// y (n, d_out) = x (n, d_in) @ W^T, W (d_out, d_in) bf16, y f32 or bf16, beta 0.
// FLOPs = 2 n d_in d_out; bytes = 2 d_out d_in (W) + 2 n d_in (x) + {4|2} n d_out (y).

typedef struct {
    kvf_gemm_ctx_t *ctx;
    void *y;
    kvf_gemm_out_t yt;
    const uint16_t *x;  // (n, d_in)
    const uint16_t *w;  // (nw, d_out, d_in): call i reads copy i % nw
    int nw, n, d_in, d_out;
} s_gemm_t;

static int s_gemm_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_gemm_t *g = ud;
    const uint16_t *w = g->w + (size_t)(rep % g->nw) * g->d_out * g->d_in;
    return kvf_gemm(g->ctx, g->y, g->yt, g->x, w, g->n, g->d_in, g->d_out, 0.0f, b->stream, err);
}

// The same product by kvf_gemv (n <= KVF_GEMV_MAX_ROWS), against cuBLASLt's picks.
static int s_gemv_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_gemm_t *g = ud;
    const uint16_t *w = g->w + (size_t)(rep % g->nw) * g->d_out * g->d_in;
    return kvf_gemv(g->y, g->yt, g->x, w, g->n, g->d_in, g->d_out, 0.0f, b->stream, err);
}

// kvf_gemm_fp8 (--quantization fp8): E4M3 x and W with a scale per row, bf16 y.
// bytes = d_out d_in (W) + n d_in (x) + 2 n d_out (y) + 4 (n + d_out) (scales).
typedef struct {
    kvf_gemm_ctx_t *ctx;
    void *y;
    const uint8_t *x;   // (n, d_in)
    const float *sx;    // (n)
    const uint8_t *w;   // (nw, d_out, d_in)
    const float *sw;    // (nw, d_out)
    int nw, n, d_in, d_out;
} s_gemm8_t;

static int s_gemm8_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_gemm8_t *g = ud;
    const size_t c = (size_t)(rep % g->nw);
    return kvf_gemm_fp8(g->ctx, g->y, KVF_GEMM_OUT_BF16, g->x, g->sx, g->w + c * g->d_out * g->d_in,
                        g->sw + c * g->d_out, g->n, g->d_in, g->d_out, b->stream, err);
}

int kvf_kb_bench_gemm(kvf_kb_t *b, kvf_err_t *err) {
    static const struct {
        const char *name;
        int d_in, d_out, max_n;  // max_n 0: every n
    } shapes[] = {
        {"qkv", KB_DIM, KB_QKV, 0},     {"o", KB_H * KB_HD, KB_DIM, 0},       {"gate_up", KB_DIM, 2 * KB_FF, 0},
        {"down", KB_FF, KB_DIM, 0},     {"lm_head", KB_DIM, KB_VOCAB, 512},
    };
    const int *ns = b->o->gemm_n, n_ns = b->o->n_gemm_n;
    int n_max = 0;
    for (int i = 0; i < n_ns; i++) n_max = ns[i] > n_max ? ns[i] : n_max;
    void *ws = NULL, *ws_tune = NULL;
    kvf_gemm_ctx_t *heur = NULL, *tune = NULL, *fast = NULL;  // fast: FP8 with cuBLASLt's fast accumulation
    int rc = -1;
    if (kvf_kb_alloc(b, &ws, KB_GEMM_WORKSPACE, err) != 0 ||
        kvf_kb_alloc(b, &ws_tune, KB_GEMM_WORKSPACE, err) != 0) goto done;
    if (!(heur = kvf_kb_gemm_ctx(b, ws, err))) goto done;
    if (!(fast = kvf_kb_gemm_ctx(b, ws, err)) || kvf_gemm_ctx_set_fp8_fast_accum(fast, 1, err) != 0)
        goto done;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int d_in = shapes[si].d_in, d_out = shapes[si].d_out;
        const size_t w_elems = (size_t)d_in * d_out;
        const int nw = kvf_kb_copies(2 * w_elems);
        const int max_n = shapes[si].max_n && shapes[si].max_n < n_max ? shapes[si].max_n : n_max;
        const int mark = b->n_alloc;  // this shape's buffers are freed below
        void *w = NULL, *x = NULL, *y = NULL;
        if (kvf_kb_alloc(b, &w, 2 * w_elems * nw, err) != 0 || kvf_kb_rand_bf16(b, w, w_elems * nw, 0.05f, err) != 0 ||
            kvf_kb_alloc(b, &x, (size_t)max_n * d_in * 2, err) != 0 ||
            kvf_kb_rand_bf16(b, x, (size_t)max_n * d_in, 1.0f, err) != 0 ||
            kvf_kb_alloc(b, &y, (size_t)max_n * d_out * 4, err) != 0)
            goto done;
        // the same W and x as E4M3 rows with their scales (not for lm_head, which stays bf16)
        void *w8 = NULL, *sw = NULL, *x8 = NULL, *sx = NULL;
        const int fp8 = !shapes[si].max_n;
        if (fp8 && (kvf_kb_alloc(b, &w8, w_elems * nw, err) != 0 ||
                    kvf_kb_alloc(b, &sw, (size_t)d_out * nw * 4, err) != 0 ||
                    kvf_kb_alloc(b, &x8, (size_t)max_n * d_in, err) != 0 ||
                    kvf_kb_alloc(b, &sx, (size_t)max_n * 4, err) != 0 ||
                    kvf_quant_fp8_rows(w8, sw, w, (int64_t)d_out * nw, d_in, b->stream, err) != 0 ||
                    kvf_quant_fp8_rows(x8, sx, x, max_n, d_in, b->stream, err) != 0))
            goto done;
        for (int ni = 0; ni < n_ns; ni++) {
            const int n = ns[ni];
            if (n > max_n) continue;
            if (fp8) {
                s_gemm8_t g8 = {heur, y, x8, sx, w8, sw, nw, n, d_in, d_out};
                kvf_kb_row_t r = {.kernel = "gemm"};
                snprintf(r.shape, sizeof r.shape, "%s %dx%d->%d", shapes[si].name, n, d_in, d_out);
                r.copies = nw;
                r.flops = 2.0 * n * d_in * d_out;
                r.bytes = (double)w_elems + (double)n * d_in + 2.0 * n * d_out + 4.0 * (n + d_out);
                snprintf(r.variant, sizeof r.variant, "fp8 e4m3 heuristic");
                if (kvf_kb_time(b, s_gemm8_op, &g8, &r.t, err) != 0) goto done;
                kvf_kb_emit(b, &r);
                g8.ctx = fast;
                snprintf(r.variant, sizeof r.variant, "fp8 e4m3 fast-accum");
                if (kvf_kb_time(b, s_gemm8_op, &g8, &r.t, err) != 0) goto done;
                kvf_kb_emit(b, &r);
            }
            for (int f32 = 1; f32 >= 0; f32--) {
                s_gemm_t g = {heur, y, f32 ? KVF_GEMM_OUT_F32 : KVF_GEMM_OUT_BF16, x, w, nw, n, d_in, d_out};
                kvf_kb_row_t r = {.kernel = "gemm"};
                snprintf(r.shape, sizeof r.shape, "%s %dx%d->%d", shapes[si].name, n, d_in, d_out);
                r.copies = nw;
                r.flops = 2.0 * n * d_in * d_out;
                r.bytes = 2.0 * w_elems + 2.0 * n * d_in + (f32 ? 4.0 : 2.0) * n * d_out;
                snprintf(r.variant, sizeof r.variant, "%s heuristic", f32 ? "f32" : "bf16");
                if (kvf_kb_time(b, s_gemm_op, &g, &r.t, err) != 0) goto done;
                kvf_kb_emit(b, &r);
                if (n <= KVF_GEMV_MAX_ROWS) {
                    snprintf(r.variant, sizeof r.variant, "%s gemv", f32 ? "f32" : "bf16");
                    if (kvf_kb_time(b, s_gemv_op, &g, &r.t, err) != 0) goto done;
                    kvf_kb_emit(b, &r);
                }
                if (b->o->no_tune) continue;
                // A fresh context, so the tune's pick is for this shape alone; it
                // tunes on copy 0 (its own timings may see W in L2 for small W).
                if (!(tune = kvf_kb_gemm_ctx(b, ws_tune, err)) ||
                    kvf_gemm_ctx_set_tune(tune, (int)b->o->tune_reps, (int)b->o->tune_rounds, err) != 0)
                    goto done;
                if (kvf_gemm_tune(tune, y, g.yt, x, w, n, d_in, d_out, b->stream, &r.tune_heuristic_ms,
                                  &r.tune_best_ms, err) != 0)
                    goto done;
                g.ctx = tune;
                r.tuned = 1;
                snprintf(r.variant, sizeof r.variant, "%s tuned", f32 ? "f32" : "bf16");
                if (kvf_kb_time(b, s_gemm_op, &g, &r.t, err) != 0) goto done;
                kvf_kb_emit(b, &r);
                kvf_gemm_ctx_destroy(&tune);
            }
        }
        if (kvf_kb_free_to(b, mark, err) != 0) goto done;  // this shape's W, x, y
    }
    rc = 0;
done:
    kvf_gemm_ctx_destroy(&tune);
    kvf_gemm_ctx_destroy(&fast);
    kvf_gemm_ctx_destroy(&heur);
    return rc;  // the workspaces go with the section's kvf_kb_free_all
}

// ---------------------------------------------------------------- silu
// out (n, ff) bf16 = silu(gate) * up, gate/up the two halves of one (n, 2 ff) row (ld 2 ff).
// bytes = n ff (2 e + 2), e = 4 (f32 in) or 2 (bf16 in): gate and up read, out written.

typedef struct {
    uint16_t *out;
    const void *in;  // (copies, n, 2 ff) f32 or bf16
    int copies, n, f32;
    int fp8;         // 1 + kvf_silu_mul_fp8_variant's variant: E4M3 rows out (scales after them); 0: bf16 out
} s_silu_t;

static int s_silu_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_silu_t *s = ud;
    const size_t off = (size_t)(rep % s->copies) * s->n * 2 * KB_FF;
    if (s->f32) {
        const float *g = (const float *)s->in + off;
        return kvf_silu_mul_f32(s->out, g, g + KB_FF, s->n, KB_FF, 2 * KB_FF, b->stream, err);
    }
    const uint16_t *g = (const uint16_t *)s->in + off;
    if (s->fp8) {
        uint8_t *q = (uint8_t *)s->out;
        float *scale = (float *)(void *)(q + (size_t)s->n * KB_FF);
        return kvf_silu_mul_fp8_variant(s->fp8 - 1, q, scale, g, g + KB_FF, s->n, KB_FF, 2 * KB_FF, b->stream, err);
    }
    return kvf_silu_mul(s->out, g, g + KB_FF, s->n, KB_FF, 2 * KB_FF, b->stream, err);
}

int kvf_kb_bench_silu(kvf_kb_t *b, kvf_err_t *err) {
    static const int ns[] = {512, 8192};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int n = ns[ni];
        for (int m = 0; m < 2 + KVF_SILU_FP8_VARIANTS; m++) {  // f32 in, bf16 in, then bf16 in E4M3 out
            const int f32 = m == 0, fp8 = m >= 2 ? m - 1 : 0;
            const size_t e = f32 ? 4 : 2, in_elems = (size_t)n * 2 * KB_FF;
            s_silu_t s = {NULL, NULL, kvf_kb_copies(in_elems * e), n, f32, fp8};
            void *out = NULL, *in = NULL;
            if (kvf_kb_alloc(b, &out, (size_t)n * KB_FF * 2, err) != 0 ||
                kvf_kb_alloc(b, &in, in_elems * e * s.copies, err) != 0)
                return -1;
            if ((f32 ? kvf_kb_rand_f32(b, in, in_elems * s.copies, 4.0f, err)
                     : kvf_kb_rand_bf16(b, in, in_elems * s.copies, 4.0f, err)) != 0)
                return -1;
            s.out = out, s.in = in;
            kvf_kb_row_t r = {.kernel = "silu_mul"};
            if (fp8)
                snprintf(r.variant, sizeof r.variant, "bf16 in fp8 out v%d", fp8 - 1);
            else
                snprintf(r.variant, sizeof r.variant, "%s", f32 ? "f32 in" : "bf16 in");
            snprintf(r.shape, sizeof r.shape, "n=%d ff=%d ld=%d", n, KB_FF, 2 * KB_FF);
            r.copies = s.copies;
            r.bytes = (double)n * KB_FF * (2.0 * e + (fp8 ? 1.0 : 2.0)) + (fp8 ? 4.0 * n : 0.0);
            if (kvf_kb_time(b, s_silu_op, &s, &r.t, err) != 0) return -1;
            kvf_kb_emit(b, &r);
            if (kvf_kb_free_all(b, err) != 0) return -1;
        }
    }
    return 0;
}

// ---------------------------------------------------------------- norm
// rmsnorm_add: residual (n, dim) f32 += x; out (n, dim) bf16 = rmsnorm(residual) * w; bytes
// = n dim (4 + 4 + e + 2) + 4 dim: residual read and written, x read (e = 4 f32, 2 bf16), out
// written, w read. rmsnorm: what the cuda backend runs where o_proj and down_proj add into the
// stream themselves: out = rmsnorm(stream) * w over an f32 or a bf16 stream (bf16 models);
// bytes = n dim (e + 2) + 4 dim.

enum { S_NORM_ADD_F32, S_NORM_ADD_BF16, S_NORM_F32, S_NORM_BF16 };

typedef struct {
    uint16_t *out;
    float *residual;
    const void *x;  // (copies, n, dim): the added rows, or the stream itself for the plain forms
    const float *w;
    int copies, n, kind;
} s_norm_t;

static int s_norm_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_norm_t *s = ud;
    const size_t off = (size_t)(rep % s->copies) * s->n * KB_DIM;
    const float *xf = (const float *)s->x + off;
    const uint16_t *xb = (const uint16_t *)s->x + off;
    switch (s->kind) {
    case S_NORM_ADD_F32:
        return kvf_rmsnorm_add_f32(s->out, s->residual, xf, s->w, s->n, KB_DIM, 1e-5f, b->stream, err);
    case S_NORM_ADD_BF16:
        return kvf_rmsnorm_add(s->out, s->residual, xb, s->w, s->n, KB_DIM, 1e-5f, b->stream, err);
    case S_NORM_F32: return kvf_rmsnorm(s->out, xf, s->w, s->n, KB_DIM, 1e-5f, b->stream, err);
    default: return kvf_rmsnorm_bf16(s->out, xb, s->w, s->n, KB_DIM, 1e-5f, b->stream, err);
    }
}

int kvf_kb_bench_norm(kvf_kb_t *b, kvf_err_t *err) {
    const int n = 8192;
    for (int kind = S_NORM_ADD_F32; kind <= S_NORM_BF16; kind++) {
        const int add = kind == S_NORM_ADD_F32 || kind == S_NORM_ADD_BF16;
        const int f32 = kind == S_NORM_ADD_F32 || kind == S_NORM_F32;
        const size_t e = f32 ? 4 : 2, elems = (size_t)n * KB_DIM;
        s_norm_t s = {NULL, NULL, NULL, NULL, kvf_kb_copies(elems * e), n, kind};
        void *out = NULL, *res = NULL, *x = NULL, *w = NULL;
        if (kvf_kb_alloc(b, &out, elems * 2, err) != 0 || (add && kvf_kb_alloc(b, &res, elems * 4, err) != 0) ||
            kvf_kb_alloc(b, &x, elems * e * s.copies, err) != 0 || kvf_kb_alloc(b, &w, KB_DIM * 4, err) != 0)
            return -1;
        // The residual grows by x each call: small x keeps it far from overflow.
        const float xs = add ? 0.1f : 1.0f;
        if ((add && kvf_kb_rand_f32(b, res, elems, 1.0f, err) != 0) || kvf_kb_rand_f32(b, w, KB_DIM, 1.0f, err) != 0 ||
            (f32 ? kvf_kb_rand_f32(b, x, elems * s.copies, xs, err) : kvf_kb_rand_bf16(b, x, elems * s.copies, xs,
                err)) != 0)
            return -1;
        s.out = out, s.residual = res, s.x = x, s.w = w;
        kvf_kb_row_t r = {.kernel = add ? "rmsnorm_add" : "rmsnorm"};
        snprintf(r.variant, sizeof r.variant, add ? "%s x" : "%s stream", f32 ? "f32" : "bf16");
        snprintf(r.shape, sizeof r.shape, "n=%d dim=%d", n, KB_DIM);
        r.copies = s.copies;
        r.bytes = (double)elems * (add ? 4 + 4 + e + 2 : e + 2) + 4.0 * KB_DIM;
        if (kvf_kb_time(b, s_norm_op, &s, &r.t, err) != 0) return -1;
        kvf_kb_emit(b, &r);
        if (kvf_kb_free_all(b, err) != 0) return -1;
    }
    return 0;
}

// ---------------------------------------------------------------- paged KV layout

typedef struct {
    int n_seqs, n_blocks, max_blocks;
    int32_t *block_table;  // (n_seqs, max_blocks) host, unused entries -1
} s_paged_t;

// Host: sequence s holds len[s] tokens in blocks handed out from a pool of
// n_seqs * KB_POOL_PER_SEQ blocks in a shuffled order, as from a pool that has
// served many requests. Returns 0, or -1 with err set (len[s] too long).
static int s_paged_init(kvf_kb_t *b, s_paged_t *p, const int *len, int n_seqs, kvf_err_t *err) {
    p->n_seqs = n_seqs;
    p->max_blocks = KB_POOL_PER_SEQ;
    p->n_blocks = n_seqs * KB_POOL_PER_SEQ;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)p->n_blocks);
    p->block_table = malloc(sizeof(int32_t) * (size_t)p->n_blocks);
    if (!perm || !p->block_table) {
        free(perm);
        return kvf_err_set(err, KVF_E_NOMEM, "block table: out of memory");
    }
    for (int i = 0; i < p->n_blocks; i++) perm[i] = i;
    for (int i = p->n_blocks - 1; i > 0; i--) {
        int j = (int)(kvf_kb_splitmix64(&b->rng) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int next = 0;
    for (int s = 0; s < n_seqs; s++) {
        const int need = (len[s] + KB_BS - 1) / KB_BS;
        if (need > p->max_blocks) {
            free(perm);
            return kvf_err_set(err, KVF_E_INTERNAL, "sequence of %d tokens: more than %d blocks", len[s],
                p->max_blocks);
        }
        for (int i = 0; i < p->max_blocks; i++) p->block_table[s * p->max_blocks + i] = i < need ? perm[next++] : -1;
    }
    free(perm);
    return 0;
}

static void s_paged_fini(s_paged_t *p) {
    free(p->block_table);
    p->block_table = NULL;
}

// Device K and V caches (n_blocks, block_size, n_kv, head_dim) bf16, random, and the block table.
static int s_paged_upload(kvf_kb_t *b, const s_paged_t *p, uint16_t **k, uint16_t **v, int32_t **bt,
                          kvf_err_t *err) {
    const size_t elems = (size_t)p->n_blocks * KB_BS * KB_KV * KB_HD;
    if (kvf_kb_alloc(b, (void **)k, elems * 2, err) != 0 || kvf_kb_alloc(b, (void **)v, elems * 2, err) != 0 ||
        kvf_kb_rand_bf16(b, *k, elems, 1.0f, err) != 0 || kvf_kb_rand_bf16(b, *v, elems, 1.0f, err) != 0)
        return -1;
    return kvf_kb_upload(b, (void **)bt, p->block_table, sizeof(int32_t) * (size_t)p->n_seqs * p->max_blocks, err);
}

// The prefill batch the rope and qkv sections run: S_PF_NS prompts of S_PF_L tokens from
// position 0 (*pos, *seq: (S_PF_N) host, the caller frees them), Llama-3's RoPE frequencies
// and a paged pool that holds the prompts. Returns 0, or -1 with err set.
enum { S_PF_NS = 16, S_PF_L = 512, S_PF_N = S_PF_NS * S_PF_L };
static int s_prefill_batch(kvf_kb_t *b, s_paged_t *p, int32_t **pos, int32_t **seq, float inv_freq[KB_HD / 2],
                           const char *who, kvf_err_t *err) {
    int len[S_PF_NS];
    *pos = malloc(sizeof(int32_t) * S_PF_N), *seq = malloc(sizeof(int32_t) * S_PF_N);
    if (!*pos || !*seq) return kvf_err_set(err, KVF_E_NOMEM, "%s: out of memory", who);
    for (int s = 0; s < S_PF_NS; s++) len[s] = S_PF_L;
    for (int t = 0; t < S_PF_N; t++) (*pos)[t] = t % S_PF_L, (*seq)[t] = t / S_PF_L;
    for (int i = 0; i < KB_HD / 2; i++) inv_freq[i] = (float)pow(500000.0, -2.0 * i / KB_HD);
    return s_paged_init(b, p, len, S_PF_NS, err);
}

// ---------------------------------------------------------------- rope
// Per token: the q and k heads of its qkv row (n, (H + 2 KV) HD) rotated, q to q_out,
// k and v into the paged cache. bytes = n (H + 2 KV) HD e (qkv read, e = 4 f32, 2 bf16)
// + 2 n H HD (q written) + 2 * 2 n KV HD (k, v written) + 8 n (pos, tok_seq)
// + 4 HD/2 (inv_freq) + 4 n_seqs max_blocks (block table).

typedef struct {
    uint16_t *q_out, *k, *v;
    const void *qkv;  // (copies, n, KB_QKV)
    const float *inv_freq;
    const int32_t *pos, *tok_seq, *bt;
    int copies, n, f32, max_blocks, n_blocks;
} s_rope_t;

static int s_rope_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_rope_t *s = ud;
    const size_t off = (size_t)(rep % s->copies) * s->n * KB_QKV;
    if (s->f32)
        return kvf_rope_kv_f32(s->q_out, s->k, s->v, (const float *)s->qkv + off, NULL, s->inv_freq, s->pos,
                               s->tok_seq, s->bt, s->max_blocks, s->n, KB_H, KB_KV, KB_HD, KB_BS, s->n_blocks,
                                   b->stream,
                               err);
    return kvf_rope_kv(s->q_out, s->k, s->v, (const uint16_t *)s->qkv + off, NULL, s->inv_freq, s->pos, s->tok_seq,
                       s->bt, s->max_blocks, s->n, KB_H, KB_KV, KB_HD, KB_BS, s->n_blocks, b->stream, err);
}

int kvf_kb_bench_rope(kvf_kb_t *b, kvf_err_t *err) {
    enum { NS = S_PF_NS, L = S_PF_L, N = S_PF_N };
    int32_t *pos = NULL, *seq = NULL;
    float inv_freq[KB_HD / 2];
    s_paged_t p = {0};
    int rc = -1;
    if (s_prefill_batch(b, &p, &pos, &seq, inv_freq, "rope", err) != 0) goto done;
    for (int f32 = 1; f32 >= 0; f32--) {
        const size_t e = f32 ? 4 : 2, elems = (size_t)N * KB_QKV;
        s_rope_t s = {.copies = kvf_kb_copies(elems * e), .n = N, .f32 = f32, .max_blocks = p.max_blocks,
                      .n_blocks = p.n_blocks};
        void *q_out = NULL, *qkv = NULL, *d_if = NULL, *d_pos = NULL, *d_seq = NULL;
        int32_t *bt = NULL;
        if (kvf_kb_alloc(b, &q_out, (size_t)N * KB_H * KB_HD * 2, err) != 0 ||
            kvf_kb_alloc(b, &qkv, elems * e * s.copies, err) != 0 ||
            (f32 ? kvf_kb_rand_f32(b, qkv, elems * s.copies, 1.0f, err) : kvf_kb_rand_bf16(b, qkv, elems * s.copies,
                1.0f, err)) ||
            kvf_kb_upload(b, &d_if, inv_freq, sizeof inv_freq, err) != 0 ||
            kvf_kb_upload(b, &d_pos, pos, sizeof(int32_t) * N, err) != 0 ||
            kvf_kb_upload(b, &d_seq, seq, sizeof(int32_t) * N, err) != 0 ||
            s_paged_upload(b, &p, &s.k, &s.v, &bt, err) != 0)
            goto done;
        s.q_out = q_out, s.qkv = qkv, s.inv_freq = d_if, s.pos = d_pos, s.tok_seq = d_seq, s.bt = bt;
        kvf_kb_row_t r = {.kernel = "rope_kv"};
        snprintf(r.variant, sizeof r.variant, "%s qkv", f32 ? "f32" : "bf16");
        snprintf(r.shape, sizeof r.shape, "%dx%d tokens, %d blocks", NS, L, p.n_blocks);
        r.copies = s.copies;
        r.bytes = (double)N * KB_QKV * e + 2.0 * N * KB_H * KB_HD + 4.0 * N * KB_KV * KB_HD + 8.0 * N + 2.0 * KB_HD +
                  4.0 * NS * p.max_blocks;
        if (kvf_kb_time(b, s_rope_op, &s, &r.t, err) != 0) goto done;
        kvf_kb_emit(b, &r);
        if (kvf_kb_free_all(b, err) != 0) goto done;
    }
    rc = 0;
done:
    s_paged_fini(&p);
    free(pos);
    free(seq);
    return rc;
}

// ---------------------------------------------------------------- attention variants
// The variant entry points are benchmarked when kernels/attention_{decode,prefill}.h
// declare them (bench/CMakeLists.txt looks); otherwise the one kernel alone, as "default".

#ifndef KVF_KBENCH_DECODE_VARIANTS
#define KVF_KBENCH_DECODE_VARIANTS 0
#endif
#ifndef KVF_KBENCH_PREFILL_VARIANTS
#define KVF_KBENCH_PREFILL_VARIANTS 0
#endif

static int s_n_variants(int decode) {
    int n = 1;
    (void)decode;  // unused when neither header has variants
#if KVF_KBENCH_DECODE_VARIANTS
    if (decode) n = kvf_attention_decode_n_variants();
#endif
#if KVF_KBENCH_PREFILL_VARIANTS
    if (!decode) n = kvf_attention_prefill_n_variants();
#endif
    return n;
}

static void s_variant_name(int decode, int v, char *buf, size_t cap) {
    const char *name = NULL;
#if KVF_KBENCH_DECODE_NAMES
    if (decode) name = kvf_attention_decode_variant_name(v);
#endif
#if KVF_KBENCH_PREFILL_NAMES
    if (!decode) name = kvf_attention_prefill_variant_name(v);
#endif
    if (name)
        snprintf(buf, cap, "%s", name);
    else if (decode ? KVF_KBENCH_DECODE_VARIANTS : KVF_KBENCH_PREFILL_VARIANTS)
        snprintf(buf, cap, "v%d", v);
    else
        snprintf(buf, cap, "default");
}

typedef struct {
    int variant, decode, fp8;  // fp8: the E4M3 cache (k8, v8) and the fp8 kernels
    uint16_t *out;
    const uint16_t *q, *k, *v;
    const uint8_t *k8, *v8;
    const int32_t *tiles, *pos, *bt;
    int n_tiles, max_blocks;
} s_attn_t;

static int s_attn_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_attn_t *a = ud;
    (void)rep;
    if (a->fp8 && a->decode)
        return kvf_attention_decode_fp8_variant(a->variant, a->out, a->q, a->k8, a->v8, a->tiles, a->n_tiles, 1,
                                                a->pos, a->bt, a->max_blocks, KB_H, KB_KV, KB_HD, KB_BS, b->stream,
                                                err);
    if (a->fp8)
        return kvf_attention_prefill_fp8_variant(a->variant, a->out, a->q, a->k8, a->v8, a->tiles, a->n_tiles, a->pos,
                                                 a->bt, a->max_blocks, KB_H, KB_KV, KB_HD, KB_BS, b->stream, err);
    if (a->decode) {
#if KVF_KBENCH_DECODE_VARIANTS
        return kvf_attention_decode_variant(a->variant, a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, 1, a->pos,
                                            a->bt, a->max_blocks, KB_H, KB_KV, KB_HD, KB_BS, b->stream, err);
#else
        return kvf_attention_decode(a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, 1, a->pos, a->bt, a->max_blocks,
                                    KB_H, KB_KV, KB_HD, KB_BS, b->stream, err);
#endif
    }
#if KVF_KBENCH_PREFILL_VARIANTS
    return kvf_attention_prefill_variant(a->variant, a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, a->pos, a->bt,
                                         a->max_blocks, KB_H, KB_KV, KB_HD, KB_BS, b->stream, err);
#else
    return kvf_attention_prefill(a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, a->pos, a->bt, a->max_blocks, KB_H,
                                 KB_KV, KB_HD, KB_BS, b->stream, err);
#endif
}

// One attention case: n_seqs sequences adding n_new[s] tokens at positions
// len[s] - n_new[s] .. len[s] - 1 (keys 0 .. len[s] - 1 already in the cache),
// tiles of q_per_tile tokens; times every variant. FLOPs and bytes are per call.
static int s_attn_case(kvf_kb_t *b, int decode, const int *len, const int32_t *n_new, int n_seqs, int q_per_tile,
                       const char *shape, kvf_err_t *err) {
    s_paged_t p = {0};
    int32_t *pos = NULL, *tiles = NULL, *old = NULL, *scratch = NULL;
    int rc = -1, n = 0;
    for (int s = 0; s < n_seqs; s++) n += n_new[s];
    if (!(pos = malloc(sizeof(int32_t) * (size_t)n)) || !(tiles = malloc(sizeof(int32_t) * 3 * (size_t)n))) {
        kvf_err_set(err, KVF_E_NOMEM, "attention: out of memory");
        goto done;
    }
    // decode: K + V bytes of every context, q and out (bf16).
    // prefill: causal FLOPs, 4 HD per (query head, key it sees): QK^T and PV.
    double kv_bytes = 0, flops = 0;
    for (int s = 0, t = 0; s < n_seqs; s++) {
        kv_bytes += 2.0 * 2.0 * len[s] * KB_KV * KB_HD;
        for (int i = 0; i < n_new[s]; i++, t++) {
            pos[t] = len[s] - n_new[s] + i;
            flops += 4.0 * KB_HD * KB_H * (pos[t] + 1);
        }
    }
    const int n_tiles = kvf_attn_build_tiles(tiles, n, n_new, n_seqs, q_per_tile);
    if (n_tiles < 0) {
        kvf_err_set(err, KVF_E_INTERNAL, "kvf_attn_build_tiles: more than %d tiles", n);
        goto done;
    }
    // decode: the tiles as the cuda backend gives them (longest first); old: as built, timed once more with
    // the default kernel. Prefill tiles stay as built (the kernels run each prompt's tiles last to first).
    int max_len = 0;
    for (int s = 0; s < n_seqs; s++) max_len = len[s] > max_len ? len[s] : max_len;
    if (!(old = malloc(sizeof(int32_t) * 3 * (size_t)n_tiles)) ||
        !(scratch = malloc(sizeof(int32_t) * kvf_attn_order_scratch_ints(n_tiles, max_len)))) {
        kvf_err_set(err, KVF_E_NOMEM, "attention: out of memory");
        goto done;
    }
    memcpy(old, tiles, sizeof(int32_t) * 3 * (size_t)n_tiles);
    if (decode && kvf_attn_order_tiles(tiles, n_tiles, pos, max_len, scratch) != 0) {
        kvf_err_set(err, KVF_E_INTERNAL, "kvf_attn_order_tiles failed");
        goto done;
    }
    if (s_paged_init(b, &p, len, n_seqs, err) != 0) goto done;
    s_attn_t a = {.decode = decode, .n_tiles = n_tiles, .max_blocks = p.max_blocks};
    void *out = NULL, *q = NULL, *d_pos = NULL, *d_tiles = NULL;
    uint16_t *k = NULL, *v = NULL;
    int32_t *bt = NULL;
    const size_t qe = (size_t)n * KB_H * KB_HD;
    if (kvf_kb_alloc(b, &out, qe * 2, err) != 0 || kvf_kb_alloc(b, &q, qe * 2, err) != 0 ||
        kvf_kb_rand_bf16(b, q, qe, 1.0f, err) != 0 ||
            kvf_kb_upload(b, &d_pos, pos, sizeof(int32_t) * (size_t)n, err) != 0 ||
        kvf_kb_upload(b, &d_tiles, tiles, sizeof(int32_t) * 3 * (size_t)n_tiles, err) != 0 ||
        s_paged_upload(b, &p, &k, &v, &bt, err) != 0)
        goto done;
    a.out = out, a.q = q, a.k = k, a.v = v, a.pos = d_pos, a.tiles = d_tiles, a.bt = bt;
    const int nv = s_n_variants(decode);
    for (int vi = 0; vi < nv; vi++) {
        kvf_kb_row_t r = {.kernel = decode ? "attn_decode" : "attn_prefill"};
#if KVF_KBENCH_PREFILL_VARIANTS
        if (!decode && !kvf_attention_prefill_variant_available(vi)) continue;  // not built for this GPU
#endif
        a.variant = vi;
        s_variant_name(decode, vi, r.variant, sizeof r.variant);
        snprintf(r.shape, sizeof r.shape, "%s", shape);
        if (decode)
            r.bytes = kv_bytes + 2.0 * 2.0 * qe;
        else
            r.flops = flops;
        if (kvf_kb_time(b, s_attn_op, &a, &r.t, err) != 0) goto done;
        kvf_kb_emit(b, &r);
    }
    if (decode) {  // the default kernel on the tiles as built
        kvf_kb_row_t r = {.kernel = decode ? "attn_decode" : "attn_prefill"};
        void *d_old = NULL;
        if (kvf_kb_upload(b, &d_old, old, sizeof(int32_t) * 3 * (size_t)n_tiles, err) != 0) goto done;
        a.tiles = d_old;
        a.variant = kvf_attention_decode_default_variant(0, KB_H / KB_KV);
        char name[sizeof r.variant - 16];
        s_variant_name(decode, a.variant, name, sizeof name);
        snprintf(r.variant, sizeof r.variant, "%s as built", name);
        snprintf(r.shape, sizeof r.shape, "%s", shape);
        r.bytes = kv_bytes + 2.0 * 2.0 * qe;
        if (kvf_kb_time(b, s_attn_op, &a, &r.t, err) != 0) goto done;
        kvf_kb_emit(b, &r);
        a.tiles = d_tiles;
    }
    // the FP8 cache (--kv-cache-dtype fp8): random finite E4M3 bytes, every fp8 decode
    // variant or the fp8 prefill kernel; decode reads half the cache bytes
    const size_t elems = (size_t)p.n_blocks * KB_BS * KB_KV * KB_HD;
    uint8_t *h8 = malloc(elems);
    if (!h8) {
        kvf_err_set(err, KVF_E_NOMEM, "attention: out of memory");
        goto done;
    }
    void *k8 = NULL, *v8 = NULL;
    for (size_t i = 0; i < elems; i++) {
        const uint64_t x = kvf_kb_splitmix64(&b->rng);
        h8[i] = (uint8_t)((x % 0x7f) | (x >> 63 ? 0x80 : 0));  // 0x00..0x7e either sign: no NaN
    }
    int up = kvf_kb_upload(b, &k8, h8, elems, err) == 0 && kvf_kb_upload(b, &v8, h8, elems, err) == 0;
    free(h8);
    if (!up) goto done;
    a.fp8 = 1, a.k8 = k8, a.v8 = v8;
    // prefill: the variants with an FP8 form (2 and up) that run here
    const int nv8 = decode ? kvf_attention_decode_fp8_n_variants() : kvf_attention_prefill_n_variants();
    for (int vi = decode ? 0 : 2; vi < nv8; vi++) {
        kvf_kb_row_t r = {.kernel = decode ? "attn_decode" : "attn_prefill"};
        if (!decode && !kvf_attention_prefill_variant_available(vi)) continue;
        a.variant = vi;
        snprintf(r.variant, sizeof r.variant, "%s%s", decode ? "" : "f8 ",
                 decode ? kvf_attention_decode_fp8_variant_name(vi) : kvf_attention_prefill_variant_name(vi));
        snprintf(r.shape, sizeof r.shape, "%s", shape);
        if (decode)
            r.bytes = kv_bytes / 2 + 2.0 * 2.0 * qe;
        else
            r.flops = flops;
        if (kvf_kb_time(b, s_attn_op, &a, &r.t, err) != 0) goto done;
        kvf_kb_emit(b, &r);
    }
    rc = kvf_kb_free_all(b, err);
done:
    s_paged_fini(&p);
    free(pos);
    free(tiles);
    free(old);
    free(scratch);
    return rc;
}

int kvf_kb_bench_decode(kvf_kb_t *b, kvf_err_t *err) {
#if !KVF_KBENCH_DECODE_VARIANTS
    kvf_log(KVF_LOG_WARN, "kernels/attention_decode.h has no kvf_attention_decode_variant in this build: "
                          "timing kvf_attention_decode alone");
#endif
    if (!kvf_attention_decode_supports(KB_H, KB_KV, KB_HD))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "kvf_attention_decode does not run H %d KV %d HD %d", KB_H, KB_KV,
                           KB_HD);
    for (int i = 0; i < b->o->n_decode_b; i++) {
        const int B = b->o->decode_b[i];
        int *len = malloc(sizeof(int) * (size_t)B);
        int32_t *n_new = malloc(sizeof(int32_t) * (size_t)B);
        if (!len || !n_new) {
            free(len);
            free(n_new);
            return kvf_err_set(err, KVF_E_NOMEM, "attn-decode: out of memory");
        }
        long long sum = 0;
        const int ctx = b->o->decode_ctx;  // 0: uniform in [512, 640], new token included
        for (int s = 0; s < B; s++) {
            len[s] = ctx ? ctx : 512 + (int)(kvf_kb_splitmix64(&b->rng) % 129);
            n_new[s] = 1;
            sum += len[s];
        }
        char shape[64];
        if (ctx)
            snprintf(shape, sizeof shape, "B=%d ctx %d", B, ctx);
        else
            snprintf(shape, sizeof shape, "B=%d ctx 512-640 (mean %.0f)", B, (double)sum / B);
        // Decode tiles as the backend builds them: one new token a sequence, so one
        // tile a sequence whatever q_per_tile (the rows a tile could hold).
        int rc = s_attn_case(b, 1, len, n_new, B, KVF_ATTN_DECODE_ROWS / (KB_H / KB_KV), shape, err);
        free(len);
        free(n_new);
        if (rc != 0) return -1;
    }
    return 0;
}

int kvf_kb_decode_case(kvf_kb_t *b, int n_seqs, kvf_kb_decode_t *d, kvf_err_t *err) {
    memset(d, 0, sizeof *d);
    int *len = malloc(sizeof(int) * (size_t)n_seqs);
    int32_t *n_new = malloc(sizeof(int32_t) * (size_t)n_seqs), *pos = malloc(sizeof(int32_t) * (size_t)n_seqs);
    int32_t *tiles = malloc(sizeof(int32_t) * 3 * (size_t)n_seqs);
    int32_t *scratch = malloc(sizeof(int32_t) * kvf_attn_order_scratch_ints(n_seqs, 640));
    s_paged_t p = {0};
    int rc = -1;
    if (!len || !n_new || !pos || !tiles || !scratch) {
        kvf_err_set(err, KVF_E_NOMEM, "decode case: out of memory");
        goto done;
    }
    for (int s = 0; s < n_seqs; s++) {
        len[s] = 512 + (int)(kvf_kb_splitmix64(&b->rng) % 129);  // attn-decode's contexts, new token included
        n_new[s] = 1, pos[s] = len[s] - 1;
        d->bytes += 2.0 * 2.0 * len[s] * KB_KV * KB_HD + 2.0 * 2.0 * KB_H * KB_HD;
    }
    d->n_tiles = kvf_attn_build_tiles(tiles, n_seqs, n_new, n_seqs, 1);
    if (d->n_tiles < 0 || kvf_attn_order_tiles(tiles, d->n_tiles, pos, 640, scratch) != 0) {
        kvf_err_set(err, KVF_E_INTERNAL, "decode case: the tiles");
        goto done;
    }
    const size_t qe = (size_t)n_seqs * KB_H * KB_HD;
    if (s_paged_init(b, &p, len, n_seqs, err) != 0 || kvf_kb_alloc(b, (void **)&d->out, qe * 2, err) != 0 ||
        kvf_kb_alloc(b, (void **)&d->q, qe * 2, err) != 0 || kvf_kb_rand_bf16(b, d->q, qe, 1.0f, err) != 0 ||
        kvf_kb_upload(b, (void **)&d->pos, pos, sizeof(int32_t) * (size_t)n_seqs, err) != 0 ||
        kvf_kb_upload(b, (void **)&d->tiles, tiles, sizeof(int32_t) * 3 * (size_t)d->n_tiles, err) != 0 ||
        s_paged_upload(b, &p, &d->k, &d->v, &d->bt, err) != 0)
        goto done;
    d->max_blocks = p.max_blocks;
    rc = 0;
done:
    s_paged_fini(&p);
    free(len), free(n_new), free(pos), free(tiles), free(scratch);
    return rc;
}

int kvf_kb_decode_run(const kvf_kb_decode_t *d, cudaStream_t s, kvf_err_t *err) {
    return kvf_attention_decode(d->out, d->q, d->k, d->v, d->tiles, d->n_tiles, 1, d->pos, d->bt, d->max_blocks, KB_H,
                                KB_KV, KB_HD, KB_BS, s, err);
}

int kvf_kb_bench_prefill(kvf_kb_t *b, kvf_err_t *err) {
#if !KVF_KBENCH_PREFILL_VARIANTS
    kvf_log(KVF_LOG_WARN, "kernels/attention_prefill.h has no kvf_attention_prefill_variant in this build: "
                          "timing kvf_attention_prefill alone");
#endif
    if (!kvf_attention_prefill_supports(KB_HD))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "kvf_attention_prefill does not run HD %d", KB_HD);
    enum { NS = 16, L = 512 };
    int len[NS];
    int32_t n_new[NS];
    for (int s = 0; s < NS; s++) len[s] = n_new[s] = L;  // from position 0
    return s_attn_case(b, 0, len, n_new, NS, KVF_ATTN_PREFILL_Q, "16x512 new tokens from pos 0", err);
}

// ---------------------------------------------------------------- read ceilings
// How fast the device reads its memory with nothing done to the bytes (bench/kbench_read.cu):
// a flat 2 GiB buffer, and decode attention's paged pattern (the K and V rows of each
// sequence's keys, as attn-decode's case B lays them out). bytes = what is read.

typedef struct {
    uint32_t *out;
    const void *p, *k, *v;
    const int32_t *len, *bt;
    size_t bytes;
    int paged, blocks, unroll, n_seqs, max_blocks;
} s_read_t;

static int s_read_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_read_t *r = ud;
    (void)rep;
    const int rc = r->paged ? kvf_kb_read_paged(r->out, r->k, r->v, r->len, r->bt, r->n_seqs, r->max_blocks, KB_KV,
                                                KB_HD, KB_BS, r->unroll, b->stream)
                            : kvf_kb_read_stream(r->out, r->p, r->bytes, r->blocks, r->unroll, b->stream);
    return rc == 0 ? 0 : kvf_err_set(err, KVF_E_DEVICE, "read ceiling: launch failed (%s)",
                                     cudaGetErrorString(cudaGetLastError()));
}

int kvf_kb_bench_read(kvf_kb_t *b, kvf_err_t *err) {
    const int sms = b->sms;  // the stream's share (--sms) or the device's
    s_read_t a = {.bytes = (size_t)2 << 30};
    void *p = NULL, *out = NULL;
    if (kvf_kb_alloc(b, &out, sizeof(uint32_t) * 65536, err) != 0 || kvf_kb_alloc(b, &p, a.bytes, err) != 0 ||
        kvf_kb_rand_bf16(b, p, a.bytes / 2, 1.0f, err) != 0)
        return -1;
    a.out = out, a.p = p;
    static const int per_sm[] = {4, 8, 16}, unroll[] = {1, 4, 8};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            kvf_kb_row_t r = {.kernel = "read_stream", .bytes = (double)a.bytes};
            a.blocks = per_sm[i] * sms, a.unroll = unroll[j];
            snprintf(r.variant, sizeof r.variant, "%d blk/SM u%d", per_sm[i], unroll[j]);
            snprintf(r.shape, sizeof r.shape, "2 GiB flat");
            if (kvf_kb_time(b, s_read_op, &a, &r.t, err) != 0) return -1;
            kvf_kb_emit(b, &r);
        }
    if (kvf_kb_free_all(b, err) != 0) return -1;
    for (int i = 0; i < b->o->n_decode_b; i++) {
        const int B = b->o->decode_b[i];
        int32_t *len = malloc(sizeof(int32_t) * (size_t)B);
        if (!len) return kvf_err_set(err, KVF_E_NOMEM, "read: out of memory");
        double kv = 0;
        for (int s = 0; s < B; s++) {
            len[s] = 512 + (int)(kvf_kb_splitmix64(&b->rng) % 129);  // attn-decode's contexts
            kv += 2.0 * 2.0 * len[s] * KB_KV * KB_HD;
        }
        s_paged_t pg = {0};
        uint16_t *k = NULL, *v = NULL;
        int32_t *bt = NULL;
        void *d_len = NULL;
        int rc = s_paged_init(b, &pg, len, B, err);
        if (rc == 0 && (kvf_kb_alloc(b, &out, sizeof(uint32_t) * (size_t)B * KB_KV, err) != 0 ||
                        kvf_kb_upload(b, &d_len, len, sizeof(int32_t) * (size_t)B, err) != 0 ||
                        s_paged_upload(b, &pg, &k, &v, &bt, err) != 0))
            rc = -1;
        a = (s_read_t){.out = out, .k = k, .v = v, .len = d_len, .bt = bt, .paged = 1, .n_seqs = B,
                       .max_blocks = pg.max_blocks};
        static const int pu[] = {4, 8, 16};
        for (int j = 0; rc == 0 && j < 3; j++) {
            kvf_kb_row_t r = {.kernel = "read_paged", .bytes = kv};
            a.unroll = pu[j];
            snprintf(r.variant, sizeof r.variant, "4h u%d", pu[j]);
            snprintf(r.shape, sizeof r.shape, "B=%d ctx 512-640 K+V", B);
            rc = kvf_kb_time(b, s_read_op, &a, &r.t, err);
            if (rc == 0) kvf_kb_emit(b, &r);
        }
        s_paged_fini(&pg);
        free(len);
        if (rc != 0 || kvf_kb_free_all(b, err) != 0) return -1;
    }
    return 0;
}

// ---------------------------------------------------------------- sample
// Each row's token from f32 logits (rows, vocab): kvf_argmax, or the repetition
// penalty (640 history ids a row) and/or kvf_sample_rows with the settings of the
// variant. Flat rows (uniform in +-0.5: top-p keeps most of the vocabulary) and
// peaked ones (+-12). bytes = the logits read once (the kernels read them several times).

typedef struct {
    int32_t *ids;
    float *logits;
    const kvf_sample_params_t *params;
    const int32_t *hist, *hist_off;
    const float *pen;
    float *scratch;
    int n, mode;  // 0 argmax, 1 sample_rows, 2 penalty + argmax
} s_sample_t;

static int s_sample_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    (void)rep;
    const s_sample_t *s = ud;
    if (s->mode == 1) return kvf_sample_rows(s->ids, s->logits, s->params, s->n, KB_VOCAB, b->stream, err);
    if (s->mode == 2 && kvf_repetition_penalty(s->logits, s->hist, s->hist_off, s->pen, s->scratch, s->n, KB_VOCAB,
                                               b->stream, err) != 0)
        return -1;  // the penalty is idempotent enough for timing: each call penalises the row again
    return kvf_argmax(s->ids, s->logits, s->n, KB_VOCAB, b->stream, err);
}

int kvf_kb_bench_sample(kvf_kb_t *b, kvf_err_t *err) {
    static const struct {
        const char *name;
        int mode;
        kvf_sample_params_t p;
    } vs[] = {
        {"argmax", 0, {0.0f, 0, 1.0f, 0.0f, 0.5}},
        {"T1", 1, {1.0f, 0, 1.0f, 0.0f, 0.5}},
        {"T0.7 top-p0.9", 1, {0.7f, 0, 0.9f, 0.0f, 0.5}},
        {"T1 top-k50", 1, {1.0f, 50, 1.0f, 0.0f, 0.5}},
        {"T1 min-p0.05", 1, {1.0f, 0, 1.0f, 0.05f, 0.5}},
        {"penalty+argmax", 2, {0.0f, 0, 1.0f, 0.0f, 0.5}},
    };
    enum { NH = 640 };
    static const int ns[] = {256, 512};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int n = ns[ni];
        for (int peaked = 0; peaked < 2; peaked++) {
            void *lg = NULL, *ids = NULL, *params = NULL, *hist = NULL, *hoff = NULL, *pen = NULL, *scr = NULL;
            int32_t *h_hist = malloc((size_t)n * NH * 4), *h_off = malloc((size_t)(n + 1) * 4);
            float *h_pen = malloc((size_t)n * 4);
            kvf_sample_params_t *h_p = malloc((size_t)n * sizeof *h_p);
            if (!h_hist || !h_off || !h_pen || !h_p) {
                free(h_hist), free(h_off), free(h_pen), free(h_p);
                return kvf_err_set(err, KVF_E_NOMEM, "kvf-kbench: out of host memory");
            }
            for (int i = 0; i < n; i++) {
                h_off[i] = i * NH, h_pen[i] = 1.1f;
                for (int j = 0; j < NH; j++) h_hist[i * NH + j] = (int32_t)((i * 7919u + j * 104729u) % KB_VOCAB);
            }
            h_off[n] = n * NH;
            int rc = kvf_kb_alloc(b, &lg, (size_t)n * KB_VOCAB * 4, err) != 0 ||
                     kvf_kb_rand_f32(b, lg, (size_t)n * KB_VOCAB, peaked ? 12.0f : 0.5f, err) != 0 ||
                     kvf_kb_alloc(b, &ids, (size_t)n * 4, err) != 0 ||
                         kvf_kb_alloc(b, &scr, (size_t)n * NH * 4, err) != 0 ||
                     kvf_kb_upload(b, &hist, h_hist, (size_t)n * NH * 4, err) != 0 ||
                     kvf_kb_upload(b, &hoff, h_off, (size_t)(n + 1) * 4, err) != 0 ||
                     kvf_kb_upload(b, &pen, h_pen, (size_t)n * 4, err) != 0;
            for (size_t vi = 0; rc == 0 && vi < sizeof vs / sizeof vs[0]; vi++) {
                for (int i = 0; i < n; i++) h_p[i] = vs[vi].p, h_p[i].u = (i + 0.5) / n;
                if (params) rc = kvf_kb_free_to(b, b->n_alloc - 1, err);  // the previous variant's params (last)
                params = NULL;
                if (rc == 0) rc = kvf_kb_upload(b, &params, h_p, (size_t)n * sizeof *h_p, err);
                if (rc != 0) break;
                s_sample_t s = {ids, lg, params, hist, hoff, pen, scr, n, vs[vi].mode};
                kvf_kb_row_t r = {.kernel = "sample"};
                snprintf(r.variant, sizeof r.variant, "%s", vs[vi].name);
                snprintf(r.shape, sizeof r.shape, "%d x %d %s", n, KB_VOCAB, peaked ? "peaked" : "flat");
                r.bytes = (double)n * KB_VOCAB * 4;
                rc = kvf_kb_time(b, s_sample_op, &s, &r.t, err);
                if (rc == 0) kvf_kb_emit(b, &r);
            }
            free(h_hist), free(h_off), free(h_pen), free(h_p);
            if (rc != 0 || kvf_kb_free_all(b, err) != 0) return -1;
        }
    }
    return 0;
}

// ---------------------------------------------------------------- mlp
// The MLP's first half, act (n, ff) = silu(x Wg^T) * (x Wu^T): cuBLASLt's gate/up GEMM
// (bf16 out) then silu_mul, against kvf_gemm_swiglu (one kernel, W interleaved).
// FLOPs 2 n dim 2 ff; bytes W + x + act (the unfused pair also moves 3 n ff x 2 more).

typedef struct {
    kvf_gemm_ctx_t *ctx;
    uint16_t *act, *gu;
    const uint16_t *x, *w;  // w: (copies, 2 ff, dim)
    int copies, n, fused;   // fused: 0 GEMM + silu_mul, 1 kvf_gemm_swiglu_variant(v), 2 the GEMM alone,
                            // 3 variant v's MMA loop alone (kvf_gemm_swiglu_mainloop)
    int v;
} s_mlp_t;

static int s_mlp_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_mlp_t *m = ud;
    const uint16_t *w = m->w + (size_t)(rep % m->copies) * 2 * KB_FF * KB_DIM;
    if (m->fused == 1) return kvf_gemm_swiglu_variant(m->v, m->act, m->x, w, m->n, KB_DIM, KB_FF, b->stream, err);
    if (m->fused == 3) return kvf_gemm_swiglu_mainloop(m->v, m->x, w, m->n, KB_DIM, KB_FF, b->stream, err);
    if (kvf_gemm(m->ctx, m->gu, KVF_GEMM_OUT_BF16, m->x, w, m->n, KB_DIM, 2 * KB_FF, 0.0f, b->stream, err) != 0)
        return -1;
    if (m->fused == 2) return 0;
    return kvf_silu_mul(m->act, m->gu, m->gu + KB_FF, m->n, KB_FF, 2 * KB_FF, b->stream, err);
}

int kvf_kb_bench_mlp(kvf_kb_t *b, kvf_err_t *err) {
    const int *ns = b->o->gemm_n, n_ns = b->o->n_gemm_n;
    int n_max = 0;
    for (int i = 0; i < n_ns; i++) n_max = ns[i] > n_max ? ns[i] : n_max;
    const size_t w_elems = (size_t)2 * KB_FF * KB_DIM;
    const int nw = kvf_kb_copies(2 * w_elems);
    void *ws = NULL, *w = NULL, *x = NULL, *gu = NULL, *act = NULL;
    kvf_gemm_ctx_t *ctx = NULL;
    int rc = -1;
    if (kvf_kb_alloc(b, &ws, KB_GEMM_WORKSPACE, err) != 0 || !(ctx = kvf_kb_gemm_ctx(b, ws, err)) ||
        kvf_kb_alloc(b, &w, 2 * w_elems * nw, err) != 0 || kvf_kb_rand_bf16(b, w, w_elems * nw, 0.05f, err) != 0 ||
        kvf_kb_alloc(b, &x, (size_t)n_max * KB_DIM * 2, err) != 0 ||
        kvf_kb_rand_bf16(b, x, (size_t)n_max * KB_DIM, 1.0f, err) != 0 ||
        kvf_kb_alloc(b, &gu, (size_t)n_max * 2 * KB_FF * 2, err) != 0 ||
        kvf_kb_alloc(b, &act, (size_t)n_max * KB_FF * 2, err) != 0)
        goto done;
    // (the random W serves as interleaved rows as well: the timing does not depend on the order)
    const int fused_ok = kvf_gemm_swiglu_available();
    for (int ni = 0; ni < n_ns; ni++) {
        // unfused, the GEMM alone, each fused variant, each variant's MMA loop alone
        for (int f = 0; f < 2 + 2 * KVF_SWIGLU_VARIANTS; f++) {
            const int fused = f < 2 ? 2 * f : f < 2 + KVF_SWIGLU_VARIANTS ? 1 : 3;
            const int v = (f - 2) % KVF_SWIGLU_VARIANTS;
            if (fused % 2 == 1 && !fused_ok) continue;
            s_mlp_t m = {ctx, act, gu, x, w, nw, ns[ni], fused, v};
            kvf_kb_row_t r = {.kernel = "mlp_gate_up"};
            snprintf(r.variant, sizeof r.variant, "%s",
                     fused == 0 ? "cublaslt gate/up + silu_mul" : fused == 2 ? "gate/up gemm alone"
                                                                             : kvf_gemm_swiglu_variant_name(v));
            if (fused == 3)
                snprintf(r.variant, sizeof r.variant, "v%d mma loop only", v + 1);
            if (fused == 1)
                snprintf(r.variant + strlen(r.variant), sizeof r.variant - strlen(r.variant), " %d ctas",
                         kvf_gemm_swiglu_grid(v, ns[ni], KB_FF));
            snprintf(r.shape, sizeof r.shape, "%dx%d->2x%d", ns[ni], KB_DIM, KB_FF);
            r.copies = nw;
            r.flops = 2.0 * ns[ni] * KB_DIM * 2.0 * KB_FF;
            r.bytes = 2.0 * w_elems + 2.0 * ns[ni] * KB_DIM + 2.0 * ns[ni] * KB_FF;
            if (kvf_kb_time(b, s_mlp_op, &m, &r.t, err) != 0) goto done;
            kvf_kb_emit(b, &r);
        }
    }
    rc = 0;
done:
    kvf_gemm_ctx_destroy(&ctx);
    return rc;
}

// ---------------------------------------------------------------- qkv
// The attention's input, 16 prompts x 512 tokens (the standard workload's prefill step):
// cuBLASLt's QKV GEMM (bf16 out) then rope_kv, against kvf_gemm_qkv_rope (one kernel:
// RoPE and the cache write in the epilogue; its step table, made once a step for all
// layers, is its own row), and against its MMA loop alone (gemm_ws with no epilogue, as
// kvf_gemm_swiglu_mainloop runs it with ff = qkv / 2: the difference is what RoPE and the
// stores cost). FLOPs 2 n dim qkv; bytes W + x + q, k, v written (the unfused pair also
// writes and reads the (n, qkv) product).

typedef struct {
    kvf_gemm_ctx_t *ctx;
    uint16_t *q_out, *k, *v, *qkv;
    const uint16_t *x, *w;  // w: (copies, qkv, dim)
    const float *inv_freq, *cs;
    const int64_t *slot;
    const int32_t *pos, *tok_seq, *bt;
    int copies, n, max_blocks, n_blocks;
    int what;  // 0 GEMM + rope_kv, 1 kvf_gemm_qkv_rope, 2 the GEMM alone, 3 kvf_rope_table,
               // 4 the fused kernel's MMA loop alone (gemm_ws without an epilogue: what RoPE and the stores cost)
} s_qkv_t;

static int s_qkv_op(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_qkv_t *m = ud;
    const uint16_t *w = m->w + (size_t)(rep % m->copies) * KB_QKV * KB_DIM;
    if (m->what == 3)
        return kvf_rope_table((float *)m->cs, (int64_t *)m->slot, m->inv_freq, m->pos, m->tok_seq, m->bt,
                              m->max_blocks, m->n, KB_HD, KB_KV, KB_BS, m->n_blocks, b->stream, err);
    if (m->what == 4)
        return kvf_gemm_swiglu_mainloop(KVF_SWIGLU_DEFAULT, m->x, w, m->n, KB_DIM, KB_QKV / 2, b->stream, err);
    if (m->what == 1)
        return kvf_gemm_qkv_rope(m->q_out, m->k, m->v, m->x, w, m->cs, m->slot, m->n, KB_DIM, KB_H, KB_KV, KB_HD,
                                 b->stream, err);
    if (kvf_gemm(m->ctx, m->qkv, KVF_GEMM_OUT_BF16, m->x, w, m->n, KB_DIM, KB_QKV, 0.0f, b->stream, err) != 0)
        return -1;
    if (m->what == 2) return 0;
    return kvf_rope_kv(m->q_out, m->k, m->v, m->qkv, NULL, m->inv_freq, m->pos, m->tok_seq, m->bt, m->max_blocks,
                       m->n, KB_H, KB_KV, KB_HD, KB_BS, m->n_blocks, b->stream, err);
}

int kvf_kb_bench_qkv(kvf_kb_t *b, kvf_err_t *err) {
    enum { N = S_PF_N };
    int32_t *pos = NULL, *seq = NULL;
    float inv_freq[KB_HD / 2];
    s_paged_t p = {0};
    kvf_gemm_ctx_t *ctx = NULL;
    int rc = -1;
    if (s_prefill_batch(b, &p, &pos, &seq, inv_freq, "qkv", err) != 0) goto done;
    const size_t w_elems = (size_t)KB_QKV * KB_DIM;
    const int nw = kvf_kb_copies(2 * w_elems);
    void *ws = NULL, *w = NULL, *x = NULL, *qkv = NULL, *q_out = NULL, *cs = NULL, *slot = NULL, *d_if = NULL;
    void *d_pos = NULL, *d_seq = NULL;
    uint16_t *k = NULL, *v = NULL;
    int32_t *bt = NULL;
    if (kvf_kb_alloc(b, &ws, KB_GEMM_WORKSPACE, err) != 0 || !(ctx = kvf_kb_gemm_ctx(b, ws, err)) ||
        kvf_kb_alloc(b, &w, 2 * w_elems * nw, err) != 0 || kvf_kb_rand_bf16(b, w, w_elems * nw, 0.05f, err) != 0 ||
        kvf_kb_alloc(b, &x, (size_t)N * KB_DIM * 2, err) != 0 ||
        kvf_kb_rand_bf16(b, x, (size_t)N * KB_DIM, 1.0f, err) != 0 ||
        kvf_kb_alloc(b, &qkv, (size_t)N * KB_QKV * 2, err) != 0 ||
        kvf_kb_alloc(b, &q_out, (size_t)N * KB_H * KB_HD * 2, err) != 0 ||
        kvf_kb_alloc(b, &cs, (size_t)N * KB_HD * 4, err) != 0 || kvf_kb_alloc(b, &slot, (size_t)N * 8, err) != 0 ||
        kvf_kb_upload(b, &d_if, inv_freq, sizeof inv_freq, err) != 0 ||
        kvf_kb_upload(b, &d_pos, pos, sizeof(int32_t) * N, err) != 0 ||
        kvf_kb_upload(b, &d_seq, seq, sizeof(int32_t) * N, err) != 0 || s_paged_upload(b, &p, &k, &v, &bt, err) != 0)
        goto done;
    const int fused_ok = kvf_gemm_qkv_rope_available();
    static const char *const names[5] = {"cublaslt qkv + rope_kv", "fused qkv+rope cl2 g8", "qkv gemm alone",
                                          "rope table (once a step)", "fused's mma loop alone"};
    static const int order[5] = {3, 1, 4, 0, 2};  // the table first: the fused kernel reads it
    for (int oi = 0; oi < 5; oi++) {
        const int wh = order[oi];
        if ((wh == 1 || wh == 3 || wh == 4) && !fused_ok) continue;
        s_qkv_t m = {ctx, q_out, k, v, qkv, x, w, d_if, cs, slot, d_pos, d_seq, bt, nw, N, p.max_blocks, p.n_blocks,
                     wh};
        kvf_kb_row_t r = {.kernel = "qkv_rope"};
        snprintf(r.variant, sizeof r.variant, "%s", names[wh]);
        snprintf(r.shape, sizeof r.shape, "%dx%d->%d", N, KB_DIM, KB_QKV);
        r.copies = wh == 3 ? 1 : nw;
        r.flops = wh == 3 ? 0.0 : 2.0 * N * KB_DIM * KB_QKV;
        r.bytes = wh == 3 ? N * (KB_HD * 4.0 + 8.0 + 8.0) : 2.0 * w_elems + 2.0 * N * KB_DIM + 2.0 * N * KB_QKV;
        if (kvf_kb_time(b, s_qkv_op, &m, &r.t, err) != 0) goto done;
        kvf_kb_emit(b, &r);
    }
    rc = 0;
done:
    kvf_gemm_ctx_destroy(&ctx);
    s_paged_fini(&p);
    free(pos);
    free(seq);
    return rc;
}
