// worker/cuda_step.c — one step of the cuda backend: the step's metadata (one
// pinned H2D copy), the layers' kernels on the backend's stream (captured into
// decode graphs as they are), the TP group's vocab exchange, and forward() /
// forward_sample() (backend.h). See cuda_internal.h.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_prefill.h"
#include "kernels/check.h"
#include "kernels/embed.h"
#include "kernels/gemm_qkv_rope.h"
#include "kernels/gemm_swiglu.h"
#include "kernels/green.h"
#include "kernels/quant_fp8.h"
#include "kernels/repetition_penalty.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope_kv.h"
#include "kernels/sample.h"
#include "kernels/silu_mul.h"
#include "kernels/stamp.h"
#include "kernels/vocab_unshard.h"
#include "worker/cuda_internal.h"
#include "worker/sampler.h"
#include "worker/tp_vocab.h"

// ---------------------------------------------------------------- forward

// Checks a batch against the limits fixed at start-up and writes the step's
// metadata into the pinned buffer. Returns the number of attention tiles, or -1.
// Cuts the sequences into attention tiles: those adding one token (decode) or,
// without tensor-core prefill, all of them go to kvf_attention (q_per_tile
// tokens a tile); the others to kvf_attention_prefill (KVF_ATTN_PREFILL_Q). The first
// list goes longest first (kvf_attn_order_tiles): those kernels give out blocks in
// tile order. The prefill kernels run each prompt's tiles last to first themselves.
static int s_tiles(kvf_cuda_t *c, const kvf_batch_t *b, int q_per_tile, int max_ctx, int *n_tiles, int *n_tiles_tc,
                   kvf_err_t *err) {
    int32_t *ta = c->h_meta + c->m_tiles, *tb = c->h_meta + c->m_tiles_tc;
    int na = 0, nb = 0, q0 = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const int nn = b->n_new[s];
        const int tc = c->tensor_core_prefill && nn > 1;
        const int step = tc ? KVF_ATTN_PREFILL_Q : q_per_tile;
        for (int i = 0; i < nn; i += step) {
            int32_t *t = tc ? tb + 3 * nb++ : ta + 3 * na++;
            t[0] = s, t[1] = q0 + i, t[2] = nn - i < step ? nn - i : step;
        }
        q0 += nn;
    }
    *n_tiles = na, *n_tiles_tc = nb;
    // Two-batch overlap: each half's tiles (a decode tile is a sequence) in order on their own.
    const int h = c->tbo_split > 0 && c->tbo_split < na ? c->tbo_split : na;
    if (c->attn_order && (kvf_attn_order_tiles(ta, h, c->h_meta + c->m_pos, max_ctx, c->h_order) != 0 ||
                          kvf_attn_order_tiles(ta + 3 * (size_t)h, na - h, c->h_meta + c->m_pos, max_ctx,
                                               c->h_order) != 0))
        return kvf_err_set(err, KVF_E_INTERNAL, "cuda forward: attention tiles past the step's longest context");
    return 0;
}

static int s_prepare(kvf_cuda_t *c, const kvf_batch_t *b, const void *out, int *q_per_tile, int *max_ctx,
                     int *n_tiles_tc, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &c->base.opts;
    if (!out) return kvf_err_set(err, KVF_E_INVAL, "cuda forward: logits (or tokens) are required");
    if (kvf_batch_validate(&c->base, b, err) != 0) return -1;
    const int MB = o->max_blocks_per_seq;
    int32_t *tok = c->h_meta + c->m_tokens, *pos = c->h_meta + c->m_pos, *seq = c->h_meta + c->m_seq;
    int32_t *bt = c->h_meta + c->m_bt, *ridx = c->h_meta + c->m_rows;
    int64_t sum = 0;
    int decode = 1;
    *max_ctx = 0;
    for (int s = 0; s < b->n_seqs; s++) {  // kvf_batch_validate checked every field
        int32_t nn = b->n_new[s], np = b->n_past[s];
        int64_t len = (int64_t)np + nn;
        int64_t need = (len + o->block_size - 1) / o->block_size;
        const int32_t *row = b->block_table + (size_t)s * b->max_blocks;
        for (int64_t i = 0; i < need; i++) bt[(size_t)s * MB + i] = row[i];
        for (int i = 0; i < nn; i++) {
            pos[sum + i] = np + i;
            seq[sum + i] = s;
        }
        sum += nn;
        ridx[s] = (int32_t)(sum - 1);  // the sequence's last new token
        decode &= nn == 1;
        if (len > *max_ctx) *max_ctx = (int)len;
    }
    for (int t = 0; t < b->n_tokens; t++) tok[t] = b->tokens[t];
    c->tbo_split = c->green && decode && !b->all_logits && b->n_seqs >= c->tbo_min_rows ? b->n_seqs / 2 : 0;
    *q_per_tile = decode || c->tensor_core_prefill ? 1 : kvf_attn_q_per_tile(c->n_heads, c->n_kv);
    int n_tiles = 0;
    if (s_tiles(c, b, *q_per_tile, *max_ctx, &n_tiles, n_tiles_tc, err) != 0) return -1;  // <= n_tokens tiles: fit
    return n_tiles;
}

// KVF_CUDA_TIMING: an event after the kernels of group cat (the group runs from the previous event).
static int s_mark(kvf_cuda_t *c, int cat, kvf_err_t *err) {
    if (c->n_ev >= c->timing) return 0;
    c->ev_cat[c->n_ev] = cat;
    KVF_CUDA_CHECK(cudaEventRecord(c->ev[c->n_ev], c->stream), err);
    c->n_ev++;
    return 0;
}

double kvf_cuda_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// h rows [r0, r0 + n) = rmsnorm(resid's) * w: the residual f32, or bf16 under resid_bf16.
static int s_norm(kvf_cuda_t *c, int r0, const float *w, int n, cudaStream_t st, kvf_err_t *err) {
    const float eps = c->base.cfg.rms_norm_eps;
    const size_t at = (size_t)r0 * c->dim;
    if (c->resid_bf16) return kvf_rmsnorm_bf16(c->h + at, (const uint16_t *)c->resid + at, w, n, c->dim, eps, st, err);
    return kvf_rmsnorm(c->h + at, c->resid + at, w, n, c->dim, eps, st, err);
}

// resid rows [r0, r0 + n) += x @ w^T (cuBLASLt's beta 1, on gemm context g): o_proj, down_proj under resid_gemm.
static int s_gemm_resid(kvf_cuda_t *c, kvf_gemm_ctx_t *g, int r0, const uint16_t *x, const void *w, int n, int d_in,
                        cudaStream_t st, kvf_err_t *err) {
    void *y = c->resid_bf16 ? (void *)((uint16_t *)c->resid + (size_t)r0 * c->dim)
                            : (void *)(c->resid + (size_t)r0 * c->dim);
    return kvf_gemm(g, y, kvf_cuda_resid_out(c), x, w, n, d_in, c->dim, 1.0f, st, err);
}

// The step's token embeddings into the residual (one rank: a tp group's runs in s_layers).
static int s_embed(kvf_cuda_t *c, int n, cudaStream_t st, kvf_err_t *err) {
    const int32_t *d_tok = c->d_meta + c->m_tokens;
    const int V = c->base.cfg.vocab_size;
    if (c->resid_bf16) return kvf_gather_rows_bf16((uint16_t *)c->resid, c->embed, d_tok, n, c->dim, V, st, err);
    return kvf_embed_f32(c->resid, c->embed, d_tok, n, c->dim, V, st, err);
}

// h = rmsnorm(resid += o) with o (n, dim) f32, or bf16 under S_ACT_OD; to_fp8:
// into x8 and xs instead (the E4M3 input of an FP8 GEMM).
// Under resid_gemm the GEMMs added o already: h = rmsnorm(resid).
static int s_norm_add(kvf_cuda_t *c, const float *w, int n, int to_fp8, cudaStream_t st, kvf_err_t *err) {
    const float eps = c->base.cfg.rms_norm_eps;
    if (c->resid_gemm) return s_norm(c, 0, w, n, st, err);
    const int od_bf16 = (c->act_mode & S_ACT_OD) != 0;
    if (to_fp8 && od_bf16)
        return kvf_rmsnorm_add_fp8(c->x8, c->xs, c->resid, (const uint16_t *)c->o, w, n, c->dim, eps, st, err);
    if (to_fp8) return kvf_rmsnorm_add_f32_fp8(c->x8, c->xs, c->resid, c->o, w, n, c->dim, eps, st, err);
    if (od_bf16) return kvf_rmsnorm_add(c->h, c->resid, (const uint16_t *)c->o, w, n, c->dim, eps, st, err);
    return kvf_rmsnorm_add_f32(c->h, c->resid, c->o, w, n, c->dim, eps, st, err);
}

// y = x @ w^T for a linear layer: bf16, or under w_fp8 the E4M3 rows x with the
// scales in xs times w's E4M3 rows and w_scale.
static int s_linear(kvf_cuda_t *c, void *y, kvf_gemm_out_t yt, const void *x, const void *w, const float *w_scale,
                    int n, int d_in, int d_out, cudaStream_t st, kvf_err_t *err) {
    if (c->w_fp8) return kvf_gemm_fp8(c->gemm, y, yt, x, c->xs, w, w_scale, n, d_in, d_out, st, err);
    return kvf_gemm(c->gemm, y, yt, x, w, n, d_in, d_out, 0.0f, st, err);
}

// The GEMMs of a step, each over n rows of the buffers s_layers gives it (so that
// kvf_cuda_warm_gemms runs exactly the step's shapes, types and picks).
static int s_gemm_qkv(kvf_cuda_t *c, const kvf_cuda_layer_t *L, int n, cudaStream_t st, kvf_err_t *err) {
    return s_linear(c, c->qkv, kvf_cuda_out(c, S_ACT_QKV), c->w_fp8 ? (void *)c->x8 : c->h, L->wqkv, L->sqkv, n,
                    c->dim, c->qkv_dim, st, err);
}

static int s_gemm_o(kvf_cuda_t *c, const kvf_cuda_layer_t *L, int n, cudaStream_t st, kvf_err_t *err) {
    if (c->resid_gemm) return s_gemm_resid(c, c->gemm, 0, c->att, L->wo, n, c->q_dim, st, err);  // += att @ wo^T
    return s_linear(c, c->o, kvf_cuda_out(c, S_ACT_OD), c->w_fp8 ? (void *)c->x8 : c->att, L->wo, L->so, n, c->q_dim,
                    c->dim, st, err);
}

// gate/up into c->gu: bf16 under S_ACT_GU (always under w_fp8), else f32
static int s_gemm_gate_up(kvf_cuda_t *c, const kvf_cuda_layer_t *L, int n, cudaStream_t st, kvf_err_t *err) {
    if (c->act_mode & S_ACT_GU)
        return s_linear(c, c->gu, KVF_GEMM_OUT_BF16, c->w_fp8 ? (void *)c->x8 : c->h, L->wgu, L->sgu, n, c->dim,
                        2 * c->ff, st, err);
    return kvf_gemm(c->gemm, c->gu, KVF_GEMM_OUT_F32, c->h, L->wgu, n, c->dim, 2 * c->ff, 0.0f, st, err);
}

static int s_gemm_down(kvf_cuda_t *c, const kvf_cuda_layer_t *L, int n, cudaStream_t st, kvf_err_t *err) {
    if (c->resid_gemm) return s_gemm_resid(c, c->gemm, 0, c->act, L->wd, n, c->ff, st, err);  // += act @ wd^T
    return s_linear(c, c->o, kvf_cuda_out(c, S_ACT_OD), c->act, L->wd, L->sd, n, c->ff, c->dim, st, err);
}

// tp: this rank's vocabulary only, into vlog (s_vocab_exchange takes it from there)
static int s_gemm_lm_head(kvf_cuda_t *c, const uint16_t *x, int rows, cudaStream_t st, kvf_err_t *err) {
    return kvf_gemm(c->gemm, c->tp ? c->vlog : c->logits, KVF_GEMM_OUT_F32, x, c->lm_head, rows, c->dim, c->sh.nv,
                    0.0f, st, err);
}

// q = RoPE(q) into c->q, k (rotated) and v into layer l's cache, from c->qkv: bf16 (S_ACT_QKV)
// or f32, into a bf16 or an E4M3 cache; for the step's rows [r0, r0 + n) (r0 > 0: a TBO half).
static int s_rope(kvf_cuda_t *c, const kvf_cuda_layer_t *L, int l, int r0, int n, cudaStream_t st, kvf_err_t *err) {
    const kvf_backend_t *be = &c->base;
    const int H = c->n_heads, KV = c->n_kv, HD = be->cfg.head_dim, bs = be->opts.block_size;
    const int MB = be->opts.max_blocks_per_seq, NB = be->n_blocks;
    const int32_t *d_pos = c->d_meta + c->m_pos + r0, *d_seq = c->d_meta + c->m_seq + r0;
    const int32_t *d_bt = c->d_meta + c->m_bt;
    uint16_t *kc = (uint16_t *)c->kv + (size_t)l * 2 * c->kv_layer_elems, *vc = kc + c->kv_layer_elems;
    uint8_t *k8 = (uint8_t *)c->kv + (size_t)l * 2 * c->kv_layer_elems, *v8 = k8 + c->kv_layer_elems;
    uint16_t *q = c->q + (size_t)r0 * c->q_dim;
    const size_t qkv0 = (size_t)r0 * c->qkv_dim;
    const uint16_t *qb = (const uint16_t *)c->qkv + qkv0;  // bf16 under S_ACT_QKV
    if (c->act_mode & S_ACT_QKV)
        return c->kv_fp8 ? kvf_rope_kv_fp8(q, k8, v8, qb, L->bqkv, c->inv_freq, d_pos, d_seq, d_bt, MB, n, H, KV, HD,
                                           bs, NB, st, err)
                         : kvf_rope_kv(q, kc, vc, qb, L->bqkv, c->inv_freq, d_pos, d_seq, d_bt, MB, n, H, KV, HD, bs,
                                       NB, st, err);
    return c->kv_fp8 ? kvf_rope_kv_f32_fp8(q, k8, v8, c->qkv + qkv0, L->bqkv, c->inv_freq, d_pos, d_seq, d_bt, MB, n,
                                           H, KV, HD, bs, NB, st, err)
                     : kvf_rope_kv_f32(q, kc, vc, c->qkv + qkv0, L->bqkv, c->inv_freq, d_pos, d_seq, d_bt, MB, n, H,
                                       KV, HD, bs, NB, st, err);
}

// Layer l's decode attention over tiles [t0, t0 + n_tiles) of the step's list (a tile a sequence).
static int s_attn_decode(kvf_cuda_t *c, int l, int t0, int n_tiles, cudaStream_t st, kvf_err_t *err) {
    const kvf_backend_t *be = &c->base;
    const int H = c->n_heads, KV = c->n_kv, HD = be->cfg.head_dim, bs = be->opts.block_size;
    const int MB = be->opts.max_blocks_per_seq;
    const int32_t *d_tiles = c->d_meta + c->m_tiles + 3 * (size_t)t0, *d_pos = c->d_meta + c->m_pos;
    const int32_t *d_bt = c->d_meta + c->m_bt;
    uint16_t *kc = (uint16_t *)c->kv + (size_t)l * 2 * c->kv_layer_elems, *vc = kc + c->kv_layer_elems;
    uint8_t *k8 = (uint8_t *)c->kv + (size_t)l * 2 * c->kv_layer_elems, *v8 = k8 + c->kv_layer_elems;
    return c->kv_fp8 ? kvf_attention_decode_fp8_variant(c->dec_variant, c->att, c->q, k8, v8, d_tiles, n_tiles, 1,
                                                        d_pos, d_bt, MB, H, KV, HD, bs, st, err)
                     : kvf_attention_decode_variant(c->dec_variant, c->att, c->q, kc, vc, d_tiles, n_tiles, 1, d_pos,
                                                    d_bt, MB, H, KV, HD, bs, st, err);
}

int kvf_cuda_warm_gemms(kvf_cuda_t *c, kvf_err_t *err) {
    const int T = c->base.opts.max_step_tokens, R = c->base.opts.max_logit_rows;
    const kvf_cuda_layer_t *L = &c->layers[0];
    const double t0 = kvf_cuda_now_ms();
    int runs = 0;
    for (int n = 1; n <= c->gemv_rows && n <= T; n++) {  // kvf_gemv's kernel for each row count
        if (s_gemm_qkv(c, L, n, c->stream, err) != 0 || s_gemm_o(c, L, n, c->stream, err) != 0 ||
            s_gemm_gate_up(c, L, n, c->stream, err) != 0 || s_gemm_down(c, L, n, c->stream, err) != 0)
            return -1;
        if (n <= R && s_gemm_lm_head(c, c->rows, n, c->stream, err) != 0) return -1;
    }
    for (int nb = kvf_gemm_bucket(1);; nb = kvf_gemm_bucket(nb + 1)) {
        const int n = nb < T ? nb : T;
        if (s_gemm_qkv(c, L, n, c->stream, err) != 0 || s_gemm_o(c, L, n, c->stream, err) != 0 ||
            s_gemm_gate_up(c, L, n, c->stream, err) != 0 || s_gemm_down(c, L, n, c->stream, err) != 0)
            return -1;
        if (n <= R && s_gemm_lm_head(c, c->rows, n, c->stream, err) != 0) return -1;
        runs++;
        if (n == T) break;
    }
    for (int nb = kvf_gemm_bucket(T + 1); T < R; nb = kvf_gemm_bucket(nb + 1)) {  // lm_head rows past T
        const int n = nb < R ? nb : R;
        if (s_gemm_lm_head(c, c->rows, n, c->stream, err) != 0) return -1;
        if (n == R) break;
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(c->stream), err);
    kvf_log(KVF_LOG_INFO, "cuda backend: every GEMM of a step run once in each of %d row buckets up to %d rows "
            "(%.1f ms), so that no step loads a kernel", runs, T, kvf_cuda_now_ms() - t0);
    return 0;
}

// The kernels of one step on c->stream, reading the metadata already in d_meta:
// n tokens in n_tiles attention tiles, logits of `rows` rows (all tokens, or the
// rows picked by the row index) into c->logits. Captured into graphs as is.
static int s_layers(kvf_cuda_t *c, int n, int n_tiles, int qpt, int n_tiles_tc, int n_splits, int split_len, int rows,
                    int all_logits, int dec_tc, kvf_err_t *err) {
    const kvf_backend_t *be = &c->base;
    const kvf_modelcfg_t *cfg = &be->cfg;
    const kvf_backend_opts_t *o = &be->opts;
    const int D = c->dim, H = c->n_heads, KV = c->n_kv, HD = cfg->head_dim;  // this rank's heads
    const int F = c->ff, bs = o->block_size, MB = o->max_blocks_per_seq;
    const float eps = cfg->rms_norm_eps;
    cudaStream_t st = c->stream;
    const int32_t *d_tok = c->d_meta + c->m_tokens, *d_pos = c->d_meta + c->m_pos, *d_seq = c->d_meta + c->m_seq;
    const int32_t *d_tiles = c->d_meta + c->m_tiles, *d_bt = c->d_meta + c->m_bt, *d_rows = c->d_meta + c->m_rows;
    const int32_t *d_tiles_tc = c->d_meta + c->m_tiles_tc;
    const int wq8 = c->w_fp8;  // E4M3 linear layers: their inputs go through x8 / act with the scales in xs
#define S_K(call) \
    if ((call) != 0) return -1
#define S_TM(cat) \
    if (c->timing_now) S_K(s_mark(c, (cat), err))
    if (c->tp) {  // vocab-parallel: the rank that holds a token's row adds it, the others zeros
        S_K(kvf_embed_shard_f32(c->resid, c->embed, d_tok, n, D, c->sh.v0, c->sh.nv, st, err));
        S_K(kvf_tp_nccl_all_reduce_enqueue(c->tp, c->resid, (size_t)n * D, st, err));
    } else {
        S_K(s_embed(c, n, st, err));
    }
    S_TM(S_T_EMBED);
    const int fq = c->qkv_rope && n >= c->qkv_rope_min_rows;  // kvf_gemm_qkv_rope: the step's angles and slots
    if (fq) S_K(kvf_rope_table(c->rope_cs, c->rope_slot, c->inv_freq, d_pos, d_seq, d_bt, MB, n, HD, KV, bs,
                               be->n_blocks, st, err));
    for (int l = 0; l < cfg->n_layers; l++) {
        const kvf_cuda_layer_t *L = &c->layers[l];
        // (n_blocks, bs, KV, HD) each: bf16, or E4M3 bytes (k8, v8) with kv_fp8
        uint16_t *kc = (uint16_t *)c->kv + (size_t)l * 2 * c->kv_layer_elems, *vc = kc + c->kv_layer_elems;
        uint8_t *k8 = (uint8_t *)c->kv + (size_t)l * 2 * c->kv_layer_elems, *v8 = k8 + c->kv_layer_elems;
        if (l == 0) {
            S_K(wq8 ? kvf_rmsnorm_fp8(c->x8, c->xs, c->resid, L->attn_norm, n, D, eps, st, err)
                    : s_norm(c, 0, L->attn_norm, n, st, err));
        } else {
            S_K(s_norm_add(c, L->attn_norm, n, wq8, st, err));
        }
        S_TM(S_T_NORM);
        if (fq) {  // q rotated into c->q, k and v into the cache
            S_K(kvf_gemm_qkv_rope(c->q, kc, vc, c->h, L->wqkv, c->rope_cs, c->rope_slot, n, D, H, KV, HD, st, err));
            S_TM(S_T_QKV);
        } else {
            S_K(s_gemm_qkv(c, L, n, st, err));
            S_TM(S_T_QKV);
            S_K(s_rope(c, L, l, 0, n, st, err));
            S_TM(S_T_ROPE);
        }
        const int fp8 = c->kv_fp8;
        // the decode rows' attention (memory-bound) beside the prefill rows' (tensor cores): other rows of att
        const int side = c->attn_overlap && n_tiles > 0 && dec_tc && n_tiles_tc > 0;
        if (side) {
            KVF_CUDA_CHECK(cudaEventRecord(c->ev_fork, st), err);
            KVF_CUDA_CHECK(cudaStreamWaitEvent(c->side, c->ev_fork, 0), err);
        }
        if (n_tiles > 0 && dec_tc) {
            S_K(s_attn_decode(c, l, 0, n_tiles, side ? c->side : st, err));
            if (side) {
                KVF_CUDA_CHECK(cudaEventRecord(c->ev_join, c->side), err);
            } else {
                S_TM(S_T_ATTN);
            }
        } else if (n_tiles > 0) {
            S_K(fp8 ? kvf_attention_fp8(c->att, c->partial, c->q, k8, v8, d_tiles, n_tiles, qpt, d_pos, d_bt, MB, n, H,
                                        KV, HD, bs, n_splits, split_len, st, err)
                    : kvf_attention(c->att, c->partial, c->q, kc, vc, d_tiles, n_tiles, qpt, d_pos, d_bt, MB, n, H, KV,
                                    HD, bs, n_splits, split_len, st, err));
            S_TM(S_T_ATTN);
        }
        if (n_tiles_tc > 0) {
            S_K(fp8 ? kvf_attention_prefill_fp8_variant(c->pre_variant_fp8, c->att, c->q, k8, v8, d_tiles_tc,
                                                        n_tiles_tc, d_pos, d_bt, MB, H, KV, HD, bs, st, err)
                    : kvf_attention_prefill_variant(c->pre_variant, c->att, c->q, kc, vc, d_tiles_tc, n_tiles_tc,
                                                    d_pos, d_bt, MB, H, KV, HD, bs, st, err));
            if (side) KVF_CUDA_CHECK(cudaStreamWaitEvent(st, c->ev_join, 0), err);
            S_TM(S_T_ATTN_TC);  // with side: both
        }
        if (wq8) S_K(kvf_quant_fp8_rows(c->x8, c->xs, c->att, n, c->q_dim, st, err));
        S_K(s_gemm_o(c, L, n, st, err));
        if (c->tp) S_K(kvf_tp_nccl_all_reduce_enqueue(c->tp, c->o, (size_t)n * D, st, err));  // row-parallel o_proj
        S_TM(S_T_O);
        S_K(s_norm_add(c, L->mlp_norm, n, wq8, st, err));
        S_TM(S_T_NORM);
        if (c->swiglu && n >= c->swiglu_min_rows) {  // gate/up and SwiGLU as one kernel
            S_K(kvf_gemm_swiglu_variant(c->swiglu_variant, c->act, c->h, L->wgu, n, D, F, st, err));
            S_TM(S_T_GU);
        } else {
            S_K(s_gemm_gate_up(c, L, n, st, err));
            S_TM(S_T_GU);
            const uint16_t *gu = (const uint16_t *)c->gu;  // (n, 2 F) bf16 in the f32 buffer under S_ACT_GU
            uint8_t *a8 = (uint8_t *)c->act;
            S_K(c->swiglu                 ? kvf_silu_mul_blocked(c->act, gu, n, F, KVF_SWIGLU_BLOCK, st, err)
                : wq8                     ? kvf_silu_mul_fp8(a8, c->xs, gu, gu + F, n, F, 2 * F, st, err)
                : c->act_mode & S_ACT_GU ? kvf_silu_mul(c->act, gu, gu + F, n, F, 2 * F, st, err)
                                          : kvf_silu_mul_f32(c->act, c->gu, c->gu + F, n, F, 2 * F, st, err));
            S_TM(S_T_SILU);
        }
        S_K(s_gemm_down(c, L, n, st, err));
        if (c->tp) S_K(kvf_tp_nccl_all_reduce_enqueue(c->tp, c->o, (size_t)n * D, st, err));  // row-parallel down_proj
        S_TM(S_T_DOWN);
    }
    S_K(s_norm_add(c, c->final_norm, n, 0, st, err));  // lm_head stays bf16
    S_TM(S_T_NORM);
    const uint16_t *x = c->h;
    if (!all_logits) {
        S_K(kvf_gather_rows_bf16(c->rows, c->h, d_rows, rows, D, n, st, err));
        x = c->rows;
    }
    S_K(s_gemm_lm_head(c, x, rows, st, err));
    S_TM(S_T_LMHEAD);
#undef S_TM
#undef S_K
    return 0;
}

// ---------------------------------------------------------------- two-batch overlap

// KVF_TBO (cuda_internal.h): a decode step's sequences in halves, rows [0, h) and
// [h, n), each through the layers as s_layers runs them (the residual in the
// GEMMs, cuBLASLt's QKV GEMM + rope_kv, the decode attention). Both halves' GEMMs
// and small kernels go on green context 0's stream g0, their attention on context
// 1's stream g1, so that one half's attention runs beside the other's GEMMs:
//   g0: A.pre(0) B.pre(0) | A.post(0) A.pre(1) | B.post(0) B.pre(1) | A.post(1) ...
//   g1:        A.attn(0)    B.attn(0)            A.attn(1)            B.attn(1) ...
// pre = norm, QKV, RoPE and the cache write; post = o_proj, norm, gate/up,
// SwiGLU, down_proj. A decode tile is a sequence, so a half's tiles are the
// first h (or the other n - h) of the step's list (s_tiles orders each half).
#define S_K(call) \
    if ((call) != 0) return -1

// KVF_TBO_STAMPS: a stamp's phase, the time from the previous stamp on its stream
enum { S_ST_START, S_ST_WAIT, S_ST_NORM, S_ST_QKV, S_ST_ROPE, S_ST_O, S_ST_NORM2, S_ST_GU, S_ST_DOWN, S_ST_N };
static const char *const s_st_names[S_ST_N] = {"start", "wait", "norm", "qkv", "rope", "o", "norm2", "gate/up", "down"};

static int s_stamp(kvf_cuda_t *c, int part, int phase, cudaStream_t st, kvf_err_t *err) {
    if (!c->stamp_now || c->n_stamp >= c->stamp_cap) return 0;
    c->stamp_tag[c->n_stamp] = (uint8_t)(part << 4 | phase);
    return kvf_stamp(c->d_stamp + c->n_stamp++, st, err);
}

// One line a stamped step on stderr: its span, and per stream the ms of each phase
// (on part 1 "qkv" is the attention's wait for its half's q/k/v, "o" the attention).
static int s_tbo_report(kvf_cuda_t *c, int n, kvf_err_t *err) {
    c->stamp_now = 0;
    KVF_CUDA_CHECK(cudaMemcpy(c->h_stamp, c->d_stamp, (size_t)c->n_stamp * sizeof(uint64_t), cudaMemcpyDeviceToHost),
                   err);
    double ms[2][S_ST_N] = {{0}};
    uint64_t prev[2] = {0, 0}, lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < c->n_stamp; i++) {
        const int part = c->stamp_tag[i] >> 4, ph = c->stamp_tag[i] & 15;
        const uint64_t t = c->h_stamp[i];
        if (prev[part]) ms[part][ph] += (double)(t - prev[part]) * 1e-6;
        prev[part] = t;
        lo = t < lo ? t : lo, hi = t > hi ? t : hi;
    }
    char line[512];
    int k = snprintf(line, sizeof line, "KVF_TBO_STAMPS step %llu: %d rows, %.3f ms |",
                     (unsigned long long)c->tbo_steps, n, (double)(hi - lo) * 1e-6);
    for (int part = 0; part < 2 && k < (int)sizeof line; part++) {
        k += snprintf(line + k, sizeof line - (size_t)k, " %s:", part ? " attention" : "GEMMs");
        for (int ph = 1; ph < S_ST_N && k < (int)sizeof line; ph++)
            if (ms[part][ph] > 0)
                k += snprintf(line + k, sizeof line - (size_t)k, " %s %.3f", part && ph == S_ST_QKV ? "wait-q"
                              : part && ph == S_ST_O ? "attn" : s_st_names[ph], ms[part][ph]);
    }
    fprintf(stderr, "%s\n", line);
    return 0;
}

static int s_tbo_pre(kvf_cuda_t *c, int l, int r0, int nh, cudaStream_t st, kvf_err_t *err) {
    const kvf_cuda_layer_t *L = &c->layers[l];
    const int D = c->dim;
    uint16_t *h = c->h + (size_t)r0 * D;
    uint16_t *qkv = (uint16_t *)c->qkv + (size_t)r0 * c->qkv_dim;  // bf16 (S_ACT_QKV)
    S_K(s_norm(c, r0, L->attn_norm, nh, st, err));
    S_K(s_stamp(c, 0, S_ST_NORM, st, err));
    S_K(kvf_gemm(c->gemm_g, qkv, KVF_GEMM_OUT_BF16, h, L->wqkv, nh, D, c->qkv_dim, 0.0f, st, err));
    S_K(s_stamp(c, 0, S_ST_QKV, st, err));
    S_K(s_rope(c, L, l, r0, nh, st, err));
    return s_stamp(c, 0, S_ST_ROPE, st, err);
}

static int s_tbo_post(kvf_cuda_t *c, int l, int r0, int nh, cudaStream_t st, kvf_err_t *err) {
    const kvf_cuda_layer_t *L = &c->layers[l];
    const int D = c->dim, F = c->ff;
    uint16_t *h = c->h + (size_t)r0 * D, *act = c->act + (size_t)r0 * F;
    uint16_t *gu = (uint16_t *)c->gu + (size_t)r0 * 2 * F;  // bf16 (S_ACT_GU)
    S_K(s_gemm_resid(c, c->gemm_g, r0, c->att + (size_t)r0 * c->q_dim, L->wo, nh, c->q_dim, st, err));
    S_K(s_stamp(c, 0, S_ST_O, st, err));
    S_K(s_norm(c, r0, L->mlp_norm, nh, st, err));
    S_K(s_stamp(c, 0, S_ST_NORM2, st, err));
    if (c->swiglu && nh >= c->swiglu_min_rows) {
        S_K(kvf_gemm_swiglu_variant(c->swiglu_variant, act, h, L->wgu, nh, D, F, st, err));
    } else {
        S_K(kvf_gemm(c->gemm_g, gu, KVF_GEMM_OUT_BF16, h, L->wgu, nh, D, 2 * F, 0.0f, st, err));
        S_K(c->swiglu ? kvf_silu_mul_blocked(act, gu, nh, F, KVF_SWIGLU_BLOCK, st, err)
                      : kvf_silu_mul(act, gu, gu + F, nh, F, 2 * F, st, err));
    }
    S_K(s_stamp(c, 0, S_ST_GU, st, err));
    S_K(s_gemm_resid(c, c->gemm_g, r0, act, L->wd, nh, F, st, err));
    return s_stamp(c, 0, S_ST_DOWN, st, err);
}

// The layers of a decode step of n sequences in two overlapped halves, then the
// final norm and the lm_head of `rows` gathered rows on c->stream.
static int s_layers_tbo(kvf_cuda_t *c, int n, int rows, kvf_err_t *err) {
    const kvf_backend_t *be = &c->base;
    const int D = c->dim, Lc = be->cfg.n_layers, h = c->tbo_split;
    const int r0[2] = {0, h}, nh[2] = {h, n - h};
    cudaStream_t st = c->stream, g0 = kvf_green_stream(c->green, 0), g1 = kvf_green_stream(c->green, 1);
    S_K(s_embed(c, n, st, err));
    KVF_CUDA_CHECK(cudaEventRecord(c->tbo_fork, st), err);
    KVF_CUDA_CHECK(cudaStreamWaitEvent(g0, c->tbo_fork, 0), err);
    KVF_CUDA_CHECK(cudaStreamWaitEvent(g1, c->tbo_fork, 0), err);
    c->stamp_now = c->stamp_every > 0 && c->tbo_steps % (uint64_t)c->stamp_every == (uint64_t)c->stamp_every - 1;
    c->n_stamp = 0;
    S_K(s_stamp(c, 0, S_ST_START, g0, err));
    S_K(s_stamp(c, 1, S_ST_START, g1, err));
    for (int x = 0; x < 2; x++) {  // layer 0's q/k/v of both halves, A's attention beside B's
        S_K(s_tbo_pre(c, 0, r0[x], nh[x], g0, err));
        KVF_CUDA_CHECK(cudaEventRecord(c->tbo_q[x], g0), err);
        KVF_CUDA_CHECK(cudaStreamWaitEvent(g1, c->tbo_q[x], 0), err);
        S_K(s_stamp(c, 1, S_ST_QKV, g1, err));
        S_K(s_attn_decode(c, 0, r0[x], nh[x], g1, err));
        S_K(s_stamp(c, 1, S_ST_O, g1, err));
        KVF_CUDA_CHECK(cudaEventRecord(c->tbo_a[x], g1), err);
    }
    for (int l = 0; l < Lc; l++) {
        for (int x = 0; x < 2; x++) {  // half x's rest of layer l and its q/k/v of l + 1, beside the other's attention
            KVF_CUDA_CHECK(cudaStreamWaitEvent(g0, c->tbo_a[x], 0), err);
            S_K(s_stamp(c, 0, S_ST_WAIT, g0, err));
            S_K(s_tbo_post(c, l, r0[x], nh[x], g0, err));
            if (l + 1 == Lc) continue;
            S_K(s_tbo_pre(c, l + 1, r0[x], nh[x], g0, err));
            KVF_CUDA_CHECK(cudaEventRecord(c->tbo_q[x], g0), err);
            KVF_CUDA_CHECK(cudaStreamWaitEvent(g1, c->tbo_q[x], 0), err);
            S_K(s_stamp(c, 1, S_ST_QKV, g1, err));
            S_K(s_attn_decode(c, l + 1, r0[x], nh[x], g1, err));
            S_K(s_stamp(c, 1, S_ST_O, g1, err));
            KVF_CUDA_CHECK(cudaEventRecord(c->tbo_a[x], g1), err);
        }
    }
    KVF_CUDA_CHECK(cudaEventRecord(c->tbo_join, g0), err);  // g0 waited for g1's last attention
    KVF_CUDA_CHECK(cudaStreamWaitEvent(st, c->tbo_join, 0), err);
    if (c->timing_now) S_K(s_mark(c, S_T_TBO, err));
    S_K(s_norm(c, 0, c->final_norm, n, st, err));
    S_K(kvf_gather_rows_bf16(c->rows, c->h, c->d_meta + c->m_rows, rows, D, n, st, err));
    S_K(s_gemm_lm_head(c, c->rows, rows, st, err));
    if (c->timing_now) S_K(s_mark(c, S_T_LMHEAD, err));
    c->tbo_steps++;
    return 0;
}
#undef S_K

// Decode steps (one token per sequence, last logits) replay a graph captured at
// start-up for the smallest bucket that holds the batch: powers of two up to
// max_batch_size. The key range is split for the longest context the backend
// allows (splits beyond a sequence's keys exit at once), so one graph serves
// every context length.
int kvf_cuda_capture_graphs(kvf_cuda_t *c, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &c->base.opts;
    int max_b = o->max_batch_size < o->max_step_tokens ? o->max_batch_size : o->max_step_tokens;
    // buckets: powers of two up to 64, then every 64 rows up to 512, then every 128
    for (int bucket = 1;; bucket = kvf_cuda_next_bucket(bucket) < max_b ? kvf_cuda_next_bucket(bucket) : max_b) {
        if (c->n_graphs == S_MAX_GRAPHS) break;
        int i = c->n_graphs, split_len = 1 << 30, n_splits = 1;
        if (bucket <= c->partial_tokens)
            n_splits = kvf_attn_choose_splits(bucket, c->n_kv, c->max_ctx, c->max_splits, c->n_sms,
                                              &split_len);
        cudaGraph_t g = NULL;
        KVF_CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed), err);
        int rc = s_layers(c, bucket, bucket, 1, 0, n_splits, split_len, bucket, 0, c->decode_tc && n_splits == 1, err);
        cudaError_t e = cudaStreamEndCapture(c->stream, &g);
        if (rc != 0) {
            if (g) cudaGraphDestroy(g);
            return -1;
        }
        KVF_CUDA_CHECK(e, err);
        e = cudaGraphInstantiate(&c->graph[i], g, 0);
        cudaGraphDestroy(g);
        KVF_CUDA_CHECK(e, err);
        c->graph_bucket[i] = bucket;
        c->graph_splits[i] = n_splits;
        c->graph_split_len[i] = split_len;
        c->n_graphs++;
        KVF_CUDA_CHECK(cudaGraphUpload(c->graph[i], c->stream), err);
        if (bucket == max_b) break;
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(c->stream), err);
    return 0;
}

// Pads a decode batch of n_seqs sequences to `bucket` with copies of its last
// sequence (same token, position and block table: the copies write the same K
// and V to the same slot and their logits rows are dropped).
static void s_pad_decode(kvf_cuda_t *c, int n_seqs, int bucket) {
    int32_t *tok = c->h_meta + c->m_tokens, *pos = c->h_meta + c->m_pos, *seq = c->h_meta + c->m_seq;
    int32_t *tiles = c->h_meta + c->m_tiles, *ridx = c->h_meta + c->m_rows;
    const int L = n_seqs - 1;
    for (int s = n_seqs; s < bucket; s++) {
        tok[s] = tok[L], pos[s] = pos[L], seq[s] = L;
        tiles[3 * s] = L, tiles[3 * s + 1] = s, tiles[3 * s + 2] = 1;
        ridx[s] = s;
    }
}

// tp: the end of every step on every rank (worker/tp_vocab.h). Each rank's best
// logit of each row and rank 0's say (want_full) go round in one all-gather;
// *full is rank 0's say, and when it is 1 the ranks' logits are gathered too and
// put back in id order into c->logits (rows, vocab). Waits (bounded) for the
// step's collectives so far.
static int s_vocab_exchange(kvf_cuda_t *c, int rows, int want_full, int *full, kvf_err_t *err) {
    const int T = c->sh.size, S = c->sh.v_stride, V = c->base.cfg.vocab_size, R = c->base.opts.max_logit_rows;
    const size_t msg = kvf_tp_vocab_msg_bytes(rows);
    cudaStream_t st = c->stream;
    int32_t *mine = c->d_vmsg, *all = c->d_vmsg + 2 + 2 * (size_t)R;  // (2 + 2 rows), (T, msg bytes)
    int32_t *h_hdr = c->h_vmsg + (size_t)T * (2 + 2 * R);
    const kvf_tp_vocab_hdr_t h = {want_full != 0, rows};
    memcpy(h_hdr, &h, sizeof h);
    KVF_CUDA_CHECK(cudaMemcpyAsync(mine, h_hdr, sizeof h, cudaMemcpyHostToDevice, st), err);
    if (kvf_argmax_best(mine + 2, c->vlog, rows, c->sh.nv, c->sh.v0, st, err) != 0) return -1;
    if (kvf_tp_nccl_all_gather_enqueue(c->tp, mine, all, msg, st, err) != 0) return -1;
    KVF_CUDA_CHECK(cudaMemcpyAsync(c->h_vmsg, all, (size_t)T * msg, cudaMemcpyDeviceToHost, st), err);
    if (kvf_tp_nccl_wait(c->tp, st, err) != 0) return -1;
    for (int p = 0; p < T; p++) {
        kvf_tp_vocab_hdr_t hp;
        memcpy(&hp, (const uint8_t *)c->h_vmsg + (size_t)p * msg, sizeof hp);
        if (hp.rows != rows)
            return kvf_err_set(err, KVF_E_INTERNAL, "cuda tp vocab: rank %d has %d logit rows, rank %d has %d", p,
                               hp.rows, c->sh.rank, rows);
        if (p == 0) *full = hp.want_full;
    }
    if (!*full) return 0;
    if (kvf_tp_nccl_all_gather_enqueue(c->tp, c->vlog, c->vgath, (size_t)rows * S * sizeof(float), st, err) != 0)
        return -1;
    return kvf_vocab_unshard(c->logits, c->vgath, rows, V, T, S, st, err);  // rank p's ids -> [v0_p, v0_p + nv_p)
}

// One step: logits (host, rows x vocab) copied back when logits is set; else
// the argmax of each sequence's row into ids (host, n_seqs) and only those.
static int s_step(kvf_cuda_t *c, const kvf_batch_t *b, float *logits, int32_t *ids, kvf_err_t *err) {
    kvf_backend_t *be = &c->base;
    int qpt = 1, max_ctx = 0, n_tiles_tc = 0;
    const int n_tiles = s_prepare(c, b, logits ? (const void *)logits : (const void *)ids, &qpt, &max_ctx,
                                  &n_tiles_tc, err);
    if (n_tiles < 0) return -1;
    if (ids && b->all_logits) return kvf_err_set(err, KVF_E_INVAL, "cuda forward_sample: all_logits must be 0");
    const int n = b->n_tokens, V = be->cfg.vocab_size;
    const int rows = b->all_logits ? n : b->n_seqs;
    cudaStream_t st = c->stream;
    KVF_CUDA_CHECK(cudaSetDevice(c->device), err);
    const double h0 = c->timing ? kvf_cuda_now_ms() : 0.0;
    c->timing_now = c->timing > 0;
    c->stamp_now = 0;  // s_layers_tbo sets it for a stamped step (a failed one must not leave it set)
    c->n_ev = 0;
    if (c->timing_now && s_mark(c, S_T_META, err) != 0) return -1;

    // A decode step replays the graph of the smallest bucket that holds it: any
    // bucket when graphs are on; when auto, only a graph without key splits (those
    // are fixed for the longest context) and with at most n/16 padded rows (each
    // runs the whole model).
    int gi = -1;
    if (c->use_graphs && !b->all_logits && n == b->n_seqs && !c->tbo_split)
        for (int i = 0; i < c->n_graphs && gi < 0; i++)
            if (c->graph_bucket[i] >= n) gi = i;
    if (gi >= 0 && c->use_graphs == KVF_CUDA_GRAPHS_AUTO &&
        (c->graph_splits[gi] != 1 || (c->graph_bucket[gi] - n) * 16 > n))
        gi = -1;
    if (gi >= 0) {
        s_pad_decode(c, b->n_seqs, c->graph_bucket[gi]);
        KVF_CUDA_CHECK(cudaMemcpyAsync(c->d_meta, c->h_meta, c->meta_ints * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       st), err);
        if (c->timing_now && s_mark(c, S_T_META, err) != 0) return -1;
        KVF_CUDA_CHECK(cudaGraphLaunch(c->graph[gi], st), err);
        if (c->timing_now && s_mark(c, S_T_GRAPH, err) != 0) return -1;
        c->graph_steps++;
    } else {
        // Splits only when kvf_attention writes every row (its reduce covers all tokens).
        int split_len = 1 << 30, n_splits = 1;
        if (n <= c->partial_tokens && n_tiles_tc == 0)
            n_splits = kvf_attn_choose_splits(n_tiles, c->n_kv, max_ctx, c->max_splits, c->n_sms,
                                              &split_len);
        KVF_CUDA_CHECK(cudaMemcpyAsync(c->d_meta, c->h_meta, c->meta_ints * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       st), err);
        if (c->timing_now && s_mark(c, S_T_META, err) != 0) return -1;
        // Single-token tiles without key splits (many sequences, or beside a prefill)
        // go to the tensor-core decode kernel; few long ones keep kvf_attention's splits.
        const int dec_tc = c->decode_tc && qpt == 1 && n_splits == 1;
        if (c->tbo_split && dec_tc && n_tiles == n) {
            if (s_layers_tbo(c, n, rows, err) != 0) return -1;
        } else if (s_layers(c, n, n_tiles, qpt, n_tiles_tc, n_splits, split_len, rows, b->all_logits, dec_tc,
                            err) != 0) {
            return -1;
        }
    }
    // tp: the vocab-parallel lm_head's exchange. Rank 0 (the leader) asks for every
    // logit when the host or the sample kernels need them; a greedy-only step moves
    // each row's best logit per rank instead.
    int full = 1;
    if (c->tp && s_vocab_exchange(c, rows, logits || c->sampled || c->pen_ints > 0, &full, err) != 0) return -1;
    if (!full) {  // ids: the group's greedy pick of each row
        for (int r = 0; r < rows; r++) c->h_ids[r] = kvf_tp_best_merge(c->h_vmsg, c->sh.size, rows, r);
        if (c->timing_now && s_mark(c, S_T_SAMPLE, err) != 0) return -1;
    } else if (logits) {
        // logits is the caller's pageable memory: that copy blocks the host until the
        // stream reaches it, so with TP first wait (bounded) for the all-reduces, or a
        // dead peer would hang the copy instead of failing the step.
        if (c->tp && kvf_tp_nccl_wait(c->tp, st, err) != 0) return -1;
        KVF_CUDA_CHECK(cudaMemcpyAsync(logits, c->logits, (size_t)rows * V * sizeof(float), cudaMemcpyDeviceToHost,
                                       st), err);
        if (c->timing_now && s_mark(c, S_T_D2H, err) != 0) return -1;
    } else {
        if (c->pen_ints > 0) {  // [penalty (B floats), offsets (B + 1), ids]
            const int B = be->opts.max_batch_size;
            KVF_CUDA_CHECK(cudaMemcpyAsync(c->d_pen, c->h_pen, (size_t)c->pen_ints * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, st), err);
            if (kvf_repetition_penalty(c->logits, c->d_pen + 2 * B + 1, c->d_pen + B, (const float *)c->d_pen,
                                       c->d_hscr, b->n_seqs, V, st, err) != 0)
                return -1;
        }
        if (c->sampled) {
            KVF_CUDA_CHECK(cudaMemcpyAsync(c->d_sp, c->h_sp, (size_t)b->n_seqs * sizeof(kvf_sample_params_t),
                                           cudaMemcpyHostToDevice, st), err);
            if (kvf_sample_rows(c->d_ids, c->logits, c->d_sp, b->n_seqs, V, st, err) != 0) return -1;
        } else if (kvf_argmax(c->d_ids, c->logits, b->n_seqs, V, st, err) != 0) {
            return -1;
        }
        if (c->timing_now && s_mark(c, S_T_SAMPLE, err) != 0) return -1;
        KVF_CUDA_CHECK(cudaMemcpyAsync(c->h_ids, c->d_ids, (size_t)b->n_seqs * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, st), err);
        if (c->timing_now && s_mark(c, S_T_D2H, err) != 0) return -1;
    }
    if (c->tp) {  // a dead or stuck peer must not block forever: bounded, aborts the group
        if (kvf_tp_nccl_wait(c->tp, st, err) != 0) return -1;
    } else {
        KVF_CUDA_CHECK(cudaStreamSynchronize(st), err);
    }
    if (ids) memcpy(ids, c->h_ids, (size_t)b->n_seqs * sizeof(int32_t));
    if (c->stamp_now && s_tbo_report(c, b->n_seqs, err) != 0) return -1;
    if (c->timing_now) {
        const int k = n == b->n_seqs ? 0 : 1;
        for (int i = 1; i < c->n_ev; i++) {
            float ms = 0.0f;
            KVF_CUDA_CHECK(cudaEventElapsedTime(&ms, c->ev[i - 1], c->ev[i]), err);
            c->t_ms[k][c->ev_cat[i]] += ms;
            c->t_gpu_ms[k] += ms;
        }
        c->t_steps[k]++;
        c->t_rows[k] += (uint64_t)b->n_seqs;
        c->t_host_ms[k] += kvf_cuda_now_ms() - h0;
        c->timing_now = 0;
    }
    return 0;
}

static int s_run(kvf_cuda_t *c, const kvf_batch_t *b, float *logits, int32_t *ids, kvf_err_t *err) {
    if (c->tp_lost) return kvf_err_set(err, KVF_E_PEER_LOST, "cuda backend: the TP group failed in an earlier step");
    kvf_err_t e2;
    kvf_err_t *e = err ? err : &e2;
    const int rc = s_step(c, b, logits, ids, e);
    if (rc != 0 && c->tp && e->code == KVF_E_PEER_LOST) c->tp_lost = 1;
    return rc;
}

int kvf_cuda_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err) {
    if (!be) return kvf_err_set(err, KVF_E_INVAL, "cuda forward: no backend");
    if (!logits) return kvf_err_set(err, KVF_E_INVAL, "cuda forward: batch and logits are required");
    return s_run((kvf_cuda_t *)be, b, logits, NULL, err);
}

// Each row's token on the device: the repetition penalty over the row's history
// (kernels/repetition_penalty.h), then greedy rows (per_seq NULL or temperature 0)
// by the argmax of the f32 logits the host sampler would see (lowest id on ties,
// NaN never wins) and sampled rows by kernels/sample_rows.h (temperature, top-k,
// top-p, min-p, then the draw with the host's uniform number for (seed, step)),
// which picks the host sampler's token but where a sum lands within ~1e-12 of a
// boundary. Histories longer in all than hist_cap are KVF_E_UNSUPPORTED (nothing
// runs; the host samples that step).
int kvf_cuda_forward_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                            const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                            int32_t *out_tokens, kvf_err_t *err) {
    if (!be || !b || !per_seq || !out_tokens)
        return kvf_err_set(err, KVF_E_INVAL,
                           "cuda forward_sample: backend, batch, per_seq and out_tokens are required");
    kvf_cuda_t *c = (kvf_cuda_t *)be;
    const int B = be->opts.max_batch_size;
    // a batch over the limits fails in s_run's checks (per_seq and the histories are
    // read only for the n_seqs rows of a batch that fits)
    if (b->n_seqs < 1 || b->n_seqs > B || b->n_seqs > be->opts.max_logit_rows)
        return s_run(c, b, NULL, out_tokens, err);
    int sampled = 0;
    int64_t n_hist = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const kvf_sampling_t *s = per_seq[i];
        if (!s) continue;
        sampled |= s->temperature > 0.0f;
        if (s->repetition_penalty == 1.0f) continue;
        if (!history || !n_history || n_history[i] < 0 || (n_history[i] > 0 && !history[i]))
            return kvf_err_set(err, KVF_E_INVAL, "cuda forward_sample: sequence %d has a repetition penalty but no "
                               "history", i);
        n_hist += n_history[i];
    }
    if (n_hist > c->hist_cap)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cuda forward_sample: %lld history ids for the repetition penalty, "
                           "over the %d a step carries: the host samples this step", (long long)n_hist, c->hist_cap);
    if (sampled && !steps)
        return kvf_err_set(err, KVF_E_INVAL, "cuda forward_sample: sampled rows need their steps");
    c->sampled = sampled;
    c->pen_ints = 0;
    if (c->sampled)
        for (int i = 0; i < b->n_seqs; i++) {
            const kvf_sampling_t *s = per_seq[i];
            c->h_sp[i] = s && s->temperature > 0.0f
                             ? (kvf_sample_params_t){s->temperature, s->top_k, s->top_p, s->min_p,
                                                     kvf_sampler_uniform(s->seed, steps[i])}
                             : (kvf_sample_params_t){0.0f, 0, 1.0f, 0.0f, 0.0};
        }
    if (n_hist > 0) {  // [penalty (B floats), offsets (B + 1), ids]
        float *pen = (float *)(void *)c->h_pen;
        int32_t *off = c->h_pen + B, *ids = c->h_pen + 2 * B + 1;
        int32_t at = 0;
        for (int i = 0; i < b->n_seqs; i++) {
            const kvf_sampling_t *s = per_seq[i];
            const int on = s && s->repetition_penalty != 1.0f;
            pen[i] = on ? s->repetition_penalty : 1.0f;
            off[i] = at;
            if (on && n_history[i] > 0) {
                memcpy(ids + at, history[i], (size_t)n_history[i] * sizeof(int32_t));
                at += n_history[i];
            }
        }
        off[b->n_seqs] = at;
        c->pen_ints = 2 * (int64_t)B + 1 + at;
    }
    const int rc = s_run(c, b, NULL, out_tokens, err);
    c->sampled = 0;
    c->pen_ints = 0;
    return rc;
}
