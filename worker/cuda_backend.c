// worker/cuda_backend.c — see cuda_backend.h: start-up (checks, the memory
// plan, workspace, GEMM picks, graphs), destroy, and the public calls. The
// weights are in cuda_weights.c, a step in cuda_step.c (cuda_internal.h).
#include "worker/cuda_backend.h"

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
#include "kernels/convert.h"
#include "kernels/green.h"
#include "kernels/gemm_qkv_rope.h"
#include "kernels/gemm_swiglu.h"
#include "kernels/gemv.h"
#include "worker/cpu_ops.h"
#include "worker/cuda_internal.h"

static const char *const s_t_names[S_T_N] = {"meta H2D", "embed", "rmsnorm", "qkv gemm", "rope+kv", "attn decode",
                                             "attn prefill", "o gemm", "gate/up gemm", "silu_mul", "down gemm",
                                             "lm_head", "sample", "D2H", "graph", "layers (tbo)"};

static void s_destroy(kvf_backend_t **self_p);
static const kvf_backend_ops_t s_cuda_ops = {"cuda", kvf_cuda_forward, s_destroy, kvf_cuda_forward_sample};

// ---------------------------------------------------------------- allocation

static int s_malloc(kvf_cuda_t *c, void **p, size_t bytes, const char *what, kvf_err_t *err) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return kvf_err_set(err, e == cudaErrorMemoryAllocation ? KVF_E_NOMEM : KVF_E_DEVICE,
                           "cuda backend: cannot allocate %.1f MiB of %s on device %d: %s", MIB(bytes), what,
                           c->device, cudaGetErrorString(e));
    }
    c->n_allocs++;
    return 0;
}

uint64_t kvf_cuda_backend_alloc_count(const kvf_backend_t *be) {
    if (!be || be->ops != &s_cuda_ops) return 0;
    return ((const kvf_cuda_t *)be)->n_allocs;
}

int kvf_cuda_backend_set_graphs(kvf_backend_t *be, int mode) {
    if (!be || be->ops != &s_cuda_ops) return -1;
    if (mode < KVF_CUDA_GRAPHS_OFF || mode > KVF_CUDA_GRAPHS_AUTO) return -1;
    ((kvf_cuda_t *)be)->use_graphs = mode;
    return 0;
}

int kvf_cuda_backend_set_swiglu(kvf_backend_t *be, int min_rows) {
    if (!be || be->ops != &s_cuda_ops || min_rows < 1) return -1;
    if (!((kvf_cuda_t *)be)->swiglu && !((kvf_cuda_t *)be)->qkv_rope) return -1;
    ((kvf_cuda_t *)be)->swiglu_min_rows = min_rows;
    ((kvf_cuda_t *)be)->qkv_rope_min_rows = min_rows;
    return 0;
}

uint64_t kvf_cuda_backend_graph_steps(const kvf_backend_t *be) {
    if (!be || be->ops != &s_cuda_ops) return 0;
    return ((const kvf_cuda_t *)be)->graph_steps;
}

int kvf_cuda_backend_tbo(const kvf_backend_t *be) {
    if (!be || be->ops != &s_cuda_ops) return 0;
    return ((const kvf_cuda_t *)be)->green ? ((const kvf_cuda_t *)be)->tbo_min_rows : 0;
}

uint64_t kvf_cuda_backend_tbo_steps(const kvf_backend_t *be) {
    if (!be || be->ops != &s_cuda_ops) return 0;
    return ((const kvf_cuda_t *)be)->tbo_steps;
}

int kvf_cuda_backend_qkv_rope(const kvf_backend_t *be) {
    return be && be->ops == &s_cuda_ops && ((const kvf_cuda_t *)be)->qkv_rope;
}

int kvf_cuda_backend_resid_gemm(const kvf_backend_t *be) {
    return be && be->ops == &s_cuda_ops && ((const kvf_cuda_t *)be)->resid_gemm;
}

int kvf_cuda_backend_resid_bf16(const kvf_backend_t *be) {
    return be && be->ops == &s_cuda_ops && ((const kvf_cuda_t *)be)->resid_bf16;
}

// ---------------------------------------------------------------- workspace

// Carves the workspace arena (NULL base: only counts bytes).
static size_t s_layout_ws(kvf_cuda_t *c, char *base) {
    const kvf_backend_opts_t *o = &c->base.opts;
    const size_t T = (size_t)o->max_step_tokens, R = (size_t)o->max_logit_rows, B = (size_t)o->max_batch_size;
    const size_t D = (size_t)c->dim, V = (size_t)c->base.cfg.vocab_size, F = (size_t)c->ff;
    size_t off = 0;
#define S_TAKE(ptr, type, n)                                   \
    do {                                                       \
        if (base) (ptr) = (type *)(void *)(base + off);        \
        off += kvf_cuda_up((size_t)(n) * sizeof(type));               \
    } while (0)
    S_TAKE(c->resid, float, T * D);
    S_TAKE(c->h, uint16_t, T * D);
    S_TAKE(c->qkv, float, T * (size_t)c->qkv_dim);
    S_TAKE(c->q, uint16_t, T * (size_t)c->q_dim);
    S_TAKE(c->att, uint16_t, T * (size_t)c->q_dim);
    S_TAKE(c->o, float, T * D);
    S_TAKE(c->gu, float, T * 2 * F);
    S_TAKE(c->act, uint16_t, T * F);
    if (c->w_fp8) {
        S_TAKE(c->x8, uint8_t, T * (D > (size_t)c->q_dim ? D : (size_t)c->q_dim));
        S_TAKE(c->xs, float, T);
    }
    if (c->base.cfg.head_dim == KVF_QKV_ROPE_HEAD_DIM) {
        S_TAKE(c->rope_cs, float, T * KVF_QKV_ROPE_HEAD_DIM);
        S_TAKE(c->rope_slot, int64_t, T);
    }
    S_TAKE(c->rows, uint16_t, R * D);
    S_TAKE(c->logits, float, R * V);
    if (c->tp) {
        const size_t T = (size_t)c->sh.size, S = (size_t)c->sh.v_stride;
        S_TAKE(c->vlog, float, R * S);
        S_TAKE(c->vgath, float, T * R * S);
        S_TAKE(c->d_vmsg, int32_t, (T + 1) * (2 + 2 * R));
    }
    S_TAKE(c->partial, float, kvf_attn_partial_floats(c->max_splits, c->partial_tokens, c->n_heads,
                                                      c->base.cfg.head_dim));
    S_TAKE(c->gemm_ws, char, S_GEMM_WS);
    S_TAKE(c->d_meta, int32_t, c->meta_ints);
    S_TAKE(c->d_ids, int32_t, R);
    S_TAKE(c->d_sp, kvf_sample_params_t, R);
    S_TAKE(c->d_pen, int32_t, 2 * B + 1 + (size_t)c->hist_cap);
    S_TAKE(c->d_hscr, float, c->hist_cap);
#undef S_TAKE
    return off;
}

// ---------------------------------------------------------------- checks

static int s_check_config(const kvf_modelcfg_t *cfg, const kvf_backend_opts_t *o, kvf_err_t *err) {
    if (cfg->hidden_size < 1 || cfg->n_layers < 1 || cfg->n_heads < 1 || cfg->n_kv_heads < 1 || cfg->head_dim < 1 ||
        cfg->intermediate_size < 1 || cfg->vocab_size < 1)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: model config has a size < 1");
    if (cfg->n_heads % cfg->n_kv_heads)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: %d heads are not a multiple of %d KV heads", cfg->n_heads,
                           cfg->n_kv_heads);
    if (cfg->head_dim % 8 || cfg->head_dim > KVF_ATTN_MAX_HEAD_DIM)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cuda backend: head_dim %d must be a multiple of 8 and <= %d",
                           cfg->head_dim, KVF_ATTN_MAX_HEAD_DIM);
    if (kvf_attn_q_per_tile(cfg->n_heads, cfg->n_kv_heads) < 1)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cuda backend: %d query heads per KV head, at most %d",
                           cfg->n_heads / cfg->n_kv_heads, KVF_ATTN_MAX_ROWS);
    if (cfg->hidden_size > 16384)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cuda backend: hidden_size %d > 16384", cfg->hidden_size);
    if (!(cfg->rms_norm_eps >= 0) || !(cfg->rope_theta > 0))
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: rms_norm_eps or rope_theta out of range");
    if (cfg->rope_type != KVF_ROPE_DEFAULT && !(cfg->rope_factor > 0))
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: rope factor %g must be > 0", cfg->rope_factor);
    if (o->block_size < 1 || o->max_batch_size < 1 || o->max_step_tokens < 1 || o->max_blocks_per_seq < 1 ||
        o->max_logit_rows < o->max_batch_size || o->max_step_tokens > 65535)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: block_size %d, max_batch_size %d, max_step_tokens %d "
                           "(<= 65535), max_logit_rows %d (>= max_batch_size), max_blocks_per_seq %d must be >= 1",
                           o->block_size, o->max_batch_size, o->max_step_tokens, o->max_logit_rows,
                           o->max_blocks_per_seq);
    if ((int64_t)o->max_blocks_per_seq * o->block_size > INT32_MAX / 2)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: max_blocks_per_seq x block_size exceeds 2^30 tokens");
    kvf_tp_shard_t sh;  // heads, KV heads and intermediate_size must split over the group
    kvf_err_t serr;
    if (kvf_tp_shard_make(cfg, o->tp_rank, o->tp_size, &sh, &serr) != 0)
        return kvf_err_set(err, serr.code, "cuda backend: %s", serr.msg);
    if (o->tp_size > 1 &&
        (!kvf_tp_nccl_comm(o->tp) || kvf_tp_rank(o->tp) != o->tp_rank || kvf_tp_size(o->tp) != o->tp_size))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cuda backend: tp rank %d of %d needs the group's NCCL communicator "
                           "of that rank and size as opts.tp (kvf_tp_nccl_new_over)", o->tp_rank, o->tp_size);
    if (!(o->cache_max_entry_count > 0))
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: --cache-max-entry-count %g must be > 0",
                           o->cache_max_entry_count);
    if (o->kv_dtype != KVF_KV_AUTO && o->kv_dtype != KVF_KV_FP8)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: kv_dtype %d is neither auto (0) nor fp8 (1)", o->kv_dtype);
    if (o->quant != KVF_QUANT_NONE && o->quant != KVF_QUANT_FP8)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: quant %d is neither none (0) nor fp8 (1)", o->quant);
    if (o->quant == KVF_QUANT_FP8) {  // cuBLASLt's FP8 GEMMs: every dimension a multiple of 16
        const int64_t q = (int64_t)cfg->n_heads / o->tp_size * cfg->head_dim;
        const int64_t kv = (int64_t)cfg->n_kv_heads / o->tp_size * cfg->head_dim;
        const int64_t ff = (int64_t)cfg->intermediate_size / o->tp_size;
        if (cfg->hidden_size % 16 || q % 16 || kv % 16 || ff % 16 || ff > 32768 || cfg->hidden_size > 32768 ||
            q > 32768)
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "cuda backend: --quantization fp8 needs hidden_size (%d), a "
                               "rank's query and KV widths (%lld, %lld) and intermediate_size (%lld) to be multiples "
                               "of 16 and at most 32768", cfg->hidden_size, (long long)q, (long long)kv,
                               (long long)ff);
    }
    return 0;
}

// ---------------------------------------------------------------- start-up

// kvf_gemm_prepare for non-accumulating GEMMs (kvf_gemm_prepare_fp8's signature).
static int s_prepare_bf16(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out,
                          kvf_err_t *err) {
    return kvf_gemm_prepare(ctx, y_type, n_max, d_in, d_out, 0, err);
}

// Picks the fastest cuBLASLt algorithm for each GEMM of a full decode batch
// (max_batch_size rows: the shape most steps of a long run have), timed on
// layer 0's weights and random activations; other shapes keep the heuristic's
// first pick. Start-up only: it synchronizes.
static int s_tune_gemms(kvf_cuda_t *c, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &c->base.opts;
    if (c->w_fp8) {
        kvf_log(KVF_LOG_INFO, "cuda backend: KVF_GEMM_TUNE does not tune FP8 GEMMs; they keep the heuristic's picks");
        return 0;
    }
    const int n = o->max_batch_size < o->max_step_tokens ? o->max_batch_size : o->max_step_tokens;
    const int D = c->dim, F = c->ff, V = c->sh.nv;  // V: this rank's vocabulary
    const kvf_cuda_layer_t *L = &c->layers[0];
    if (kvf_fill_random_bf16(c->h, (size_t)n * D, 11, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->att, (size_t)n * c->q_dim, 12, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->act, (size_t)n * F, 13, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->rows, (size_t)n * D, 14, 0.0f, 1.0f, c->stream, err) != 0)
        return -1;
    float(*t)[2] = c->tune_ms;
    const kvf_gemm_out_t tq = kvf_cuda_out(c, S_ACT_QKV), to = kvf_cuda_out(c, S_ACT_OD);
    const kvf_gemm_out_t tg = kvf_cuda_out(c, S_ACT_GU);
    if (kvf_gemm_tune(c->gemm, c->qkv, tq, c->h, L->wqkv, n, D, c->qkv_dim, c->stream, &t[0][0],
                      &t[0][1], err) != 0 ||
        kvf_gemm_tune(c->gemm, c->o, to, c->att, L->wo, n, c->q_dim, D, c->stream, &t[1][0], &t[1][1],
                      err) != 0 ||
        kvf_gemm_tune(c->gemm, c->gu, tg, c->h, L->wgu, n, D, 2 * F, c->stream, &t[2][0], &t[2][1],
                      err) != 0 ||
        kvf_gemm_tune(c->gemm, c->o, to, c->act, L->wd, n, F, D, c->stream, &t[3][0], &t[3][1],
                      err) != 0 ||
        kvf_gemm_tune(c->gemm, c->tp ? c->vlog : c->logits, KVF_GEMM_OUT_F32, c->rows, c->lm_head, n, D, V,
                      c->stream, &t[4][0], &t[4][1], err) != 0)
        return -1;
    c->tune_n = n;
    kvf_log(KVF_LOG_INFO, "cuda backend: GEMMs of %d rows tuned (ms per call, heuristic -> kept): qkv %.3f -> %.3f, "
            "o %.3f -> %.3f, gate/up %.3f -> %.3f, down %.3f -> %.3f, lm_head %.3f -> %.3f", n, t[0][0], t[0][1],
            t[1][0], t[1][1], t[2][0], t[2][1], t[3][0], t[3][1], t[4][0], t[4][1]);
    return 0;
}

// The GEMM picks of the row buckets of decode-sized steps (64 to 512 rows): each
// bucket's heuristic pick timed against its next best candidates on random
// activations and the first layers' weights in turn (a step streams every
// layer's W from memory), the fastest kept (kvf_gemm_tune_buckets). The
// heuristic's first pick is not always its fastest there: on an H200 its 448-row
// gate/up ran 0.29 ms a call against 0.17 for another, which a 391-row decode
// step (1000-token prompts) pays in every layer. Larger buckets keep the
// heuristic's picks (timed at 8192 rows, none beat them). Small models (a GEMM of
// microseconds) and FP8 linear layers are left alone. Start-up only: it synchronizes.
static int s_tune_buckets(kvf_cuda_t *c, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &c->base.opts;
    const int D = c->dim, F = c->ff, V = c->sh.nv, QD = c->q_dim;
    // Decode steps run up to max_batch_size rows: past 512 the 1024-row bucket too (KVF_GEMM_TUNE_ROWS: another
    // limit, for A/B runs)
    const char *renv = getenv("KVF_GEMM_TUNE_ROWS");
    int lim = o->max_batch_size > 512 ? 1024 : 512;
    if (renv && atoi(renv) > 0) lim = atoi(renv);
    const int nm = (o->max_step_tokens < lim ? o->max_step_tokens : lim) / 64 * 64;
    const int nl = (o->max_logit_rows < nm ? o->max_logit_rows : nm) / 64 * 64;
    if (c->w_fp8 || nm < 64 || (long long)D * c->qkv_dim < (1LL << 22)) return 0;
    enum { NW = 4 };
    const uint16_t *wq[NW], *wo[NW], *wgu[NW], *wd[NW];
    const int nw = c->base.cfg.n_layers < NW ? c->base.cfg.n_layers : NW;
    for (int i = 0; i < nw; i++) {
        const kvf_cuda_layer_t *L = &c->layers[i];
        wq[i] = L->wqkv, wo[i] = L->wo, wgu[i] = L->wgu, wd[i] = L->wd;
    }
    if (kvf_fill_random_bf16(c->h, (size_t)nm * D, 21, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->att, (size_t)nm * QD, 22, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->act, (size_t)nm * F, 23, 0.0f, 1.0f, c->stream, err) != 0 ||
        (nl > 0 && kvf_fill_random_bf16(c->rows, (size_t)nl * D, 24, 0.0f, 1.0f, c->stream, err) != 0) ||
        kvf_gemm_ctx_set_tune(c->gemm, 6, 3, err) != 0)
        return -1;
    const kvf_gemm_out_t tq = kvf_cuda_out(c, S_ACT_QKV), to = kvf_cuda_out(c, S_ACT_OD);
    const kvf_gemm_out_t tg = kvf_cuda_out(c, S_ACT_GU);
    const uint16_t *lm = c->lm_head;
    kvf_gemm_tune_sum_t s[5] = {{0}};
    const double t0 = kvf_cuda_now_ms();
    // o and down under resid_gemm: into the residual, which they also read (zeros here)
    const int acc = c->resid_gemm;
    void *yo = acc ? (void *)c->resid : c->o;
    const kvf_gemm_out_t tr = acc ? kvf_cuda_resid_out(c) : to;
    if (acc) KVF_CUDA_CHECK(cudaMemsetAsync(c->resid, 0, (size_t)nm * D * sizeof(float), c->stream), err);
    if (kvf_gemm_tune_buckets(c->gemm, c->qkv, tq, 0, c->h, wq, nw, nm, D, c->qkv_dim, 12, c->stream, &s[0],
                              err) != 0 ||
        kvf_gemm_tune_buckets(c->gemm, yo, tr, acc, c->att, wo, nw, nm, QD, D, 12, c->stream, &s[1], err) != 0 ||
        kvf_gemm_tune_buckets(c->gemm, c->gu, tg, 0, c->h, wgu, nw, nm, D, 2 * F, 12, c->stream, &s[2], err) != 0 ||
        kvf_gemm_tune_buckets(c->gemm, yo, tr, acc, c->act, wd, nw, nm, F, D, 12, c->stream, &s[3], err) != 0 ||
        (nl > 0 && kvf_gemm_tune_buckets(c->gemm, c->tp ? c->vlog : c->logits, KVF_GEMM_OUT_F32, 0, c->rows, &lm, 1,
                                         nl, D, V, 8, c->stream, &s[4], err) != 0))
        return -1;
    kvf_log(KVF_LOG_INFO, "cuda backend: GEMM picks of the 64-%d row buckets timed in %.1f s; changed (sum of bucket "
            "ms a call, heuristic -> kept): qkv %d (%.3f -> %.3f), o %d (%.3f -> %.3f), gate/up %d (%.3f -> %.3f), "
            "down %d (%.3f -> %.3f), lm_head %d (%.3f -> %.3f)", nm, (kvf_cuda_now_ms() - t0) * 1e-3, s[0].changed,
            s[0].heuristic_ms, s[0].kept_ms, s[1].changed, s[1].heuristic_ms, s[1].kept_ms, s[2].changed,
            s[2].heuristic_ms, s[2].kept_ms, s[3].changed, s[3].heuristic_ms, s[3].kept_ms, s[4].changed,
            s[4].heuristic_ms, s[4].kept_ms);
    return 0;
}

// Every rank of the TP group says whether its start-up `stage` worked and, with
// v, the KV blocks it can hold; *v becomes the group's minimum. A rank that
// failed (ok 0) keeps its own err and returns -1; the others return -1 with
// KVF_E_PEER_LOST naming it (as the cpu backend does).
static int s_group_agree(kvf_tp_t *tp, int ok, int64_t *v, const char *stage, kvf_err_t *err) {
    int64_t mine[2] = {ok, v ? *v : 0}, all[2 * KVF_TP_MAX_SIZE];
    kvf_err_t ignored;
    if (kvf_tp_all_gather(tp, mine, all, sizeof mine, ok ? err : &ignored) != 0) return -1;
    if (!ok) return -1;
    for (int p = 0; p < kvf_tp_size(tp); p++)
        if (!all[2 * p])
            return kvf_err_set(err, KVF_E_PEER_LOST, "cuda backend: tp rank %d failed at %s (see its log)", p, stage);
    if (v)
        for (int p = 0; p < kvf_tp_size(tp); p++)
            if (all[2 * p + 1] < *v) *v = all[2 * p + 1];
    return 0;
}

// The fused gate/up GEMM (kernels/gemm_swiglu.h) where it can run: bf16 linear layers with
// bf16 gate/up outputs, ff a multiple of KVF_SWIGLU_BLOCK, dim of 64, an sm_90a build on such
// a device; KVF_SWIGLU=0 keeps it off. Each layer's gate/up rows are interleaved once here,
// through the gate/up workspace. On an H200, at 8192 rows x 4096 -> 2 x 14336 it ran 2.82 ms
// against 2.96 for cuBLASLt's GEMM and silu_mul, at 512 rows 0.199 against 0.165 (bench/RESULTS.md):
// hence a row threshold (kvf_cuda_backend_set_swiglu). Start-up only: it synchronizes.
static int s_swiglu_setup(kvf_cuda_t *c, kvf_err_t *err) {
    const char *env = getenv("KVF_SWIGLU"), *rows = getenv("KVF_SWIGLU_MIN_ROWS");
    c->swiglu_min_rows = rows && atoi(rows) > 0 ? atoi(rows) : KVF_CUDA_SWIGLU_MIN_ROWS;
    const char *venv = getenv("KVF_SWIGLU_VARIANT");
    c->swiglu_variant = venv && kvf_gemm_swiglu_variant_name(atoi(venv)) ? atoi(venv) : KVF_SWIGLU_DEFAULT;
    const size_t wbytes = (size_t)2 * c->ff * c->dim * 2;
    const size_t scratch = (size_t)c->base.opts.max_step_tokens * 2 * c->ff * 4;  // c->gu
    c->swiglu = !(env && !strcmp(env, "0")) && !c->w_fp8 && (c->act_mode & S_ACT_GU) &&
                c->ff % KVF_SWIGLU_BLOCK == 0 && c->dim % 64 == 0 && wbytes <= scratch && kvf_gemm_swiglu_available();
    if (!c->swiglu) return 0;
    for (int l = 0; l < c->base.cfg.n_layers; l++) {
        KVF_CUDA_CHECK(cudaMemcpyAsync(c->gu, c->layers[l].wgu, wbytes, cudaMemcpyDeviceToDevice, c->stream), err);
        if (kvf_swiglu_interleave(c->layers[l].wgu, (const uint16_t *)c->gu, c->ff, c->dim, c->stream, err) != 0)
            return -1;
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(c->stream), err);
    kvf_log(KVF_LOG_INFO, "cuda backend: gate/up GEMM and SwiGLU fused (one kernel) for steps of >= %d rows",
            c->swiglu_min_rows);
    return 0;
}

// KVF_TBO=1: two-batch overlap of decode steps (cuda_internal.h) where it can run: one rank, bf16 linear
// layers and activations, the residual added by the GEMMs, the tensor-core decode attention, and a driver
// with green contexts; otherwise a warning and the plain steps. KVF_TBO_SMS: the GEMMs' share of the SMs
// (default 88 of an H200's 132, the best of 104/96/88/80/72 with the decode attention v13: bench/RESULTS.md
// session 14; 80 with v7, sessions 12-13),
// KVF_TBO_MIN_ROWS: the smallest step (256).
static int s_tbo_setup(kvf_cuda_t *c) {
    const char *env = getenv("KVF_TBO"), *senv = getenv("KVF_TBO_SMS"), *renv = getenv("KVF_TBO_MIN_ROWS");
    if (!env || atoi(env) != 1) return 0;
    if (c->tp || c->w_fp8 || !c->resid_gemm || !c->decode_tc || (c->act_mode & (S_ACT_QKV | S_ACT_GU)) !=
                                                                     (S_ACT_QKV | S_ACT_GU)) {
        kvf_log(KVF_LOG_WARN, "cuda backend: KVF_TBO=1 needs one rank, bf16 layers and activations, the residual "
                "in the GEMMs and the tensor-core decode attention; decode steps run as usual");
        return 0;
    }
    kvf_err_t e = {0};
    const int sms = senv && atoi(senv) > 0 ? atoi(senv) : 88;
    c->tbo_min_rows = renv && atoi(renv) > 1 ? atoi(renv) : 256;
    c->green = kvf_green_new(c->device, sms, &e);
    if (c->green) c->gemm_g = kvf_gemm_ctx_new(c->gemm_ws, S_GEMM_WS, &e);
    int ok = c->green && c->gemm_g && kvf_gemm_ctx_set_sm_count(c->gemm_g, kvf_green_sms(c->green, 0), &e) == 0 &&
             cudaEventCreateWithFlags(&c->tbo_fork, cudaEventDisableTiming) == cudaSuccess;
    for (int i = 0; i < 2 && ok; i++)
        ok = kvf_green_event(c->green, 0, &c->tbo_q[i], &e) == 0 && kvf_green_event(c->green, 1, &c->tbo_a[i], &e) == 0;
    if (ok) ok = kvf_green_event(c->green, 0, &c->tbo_join, &e) == 0;
    if (ok) {  // the events work across the contexts: fork, both parts, join
        cudaStream_t g0 = kvf_green_stream(c->green, 0), g1 = kvf_green_stream(c->green, 1);
        ok = cudaEventRecord(c->tbo_fork, c->stream) == cudaSuccess &&
             cudaStreamWaitEvent(g0, c->tbo_fork, 0) == cudaSuccess &&
             cudaStreamWaitEvent(g1, c->tbo_fork, 0) == cudaSuccess &&
             cudaEventRecord(c->tbo_a[0], g1) == cudaSuccess && cudaStreamWaitEvent(g0, c->tbo_a[0], 0) == cudaSuccess &&
             cudaEventRecord(c->tbo_join, g0) == cudaSuccess &&
             cudaStreamWaitEvent(c->stream, c->tbo_join, 0) == cudaSuccess &&
             cudaStreamSynchronize(c->stream) == cudaSuccess;
        if (!ok) snprintf(e.msg, sizeof e.msg, "events across green contexts: %s", cudaGetErrorString(cudaGetLastError()));
    }
    if (!ok) {
        cudaGetLastError();
        kvf_log(KVF_LOG_WARN, "cuda backend: KVF_TBO=1 but no two-batch overlap: %s", e.msg);
        if (c->tbo_fork) cudaEventDestroy(c->tbo_fork);
        c->tbo_fork = NULL;
        kvf_gemm_ctx_destroy(&c->gemm_g);
        kvf_green_destroy(&c->green);
        c->tbo_min_rows = 0;
        return 0;
    }
    kvf_log(KVF_LOG_INFO, "cuda backend: decode steps of >= %d sequences in two halves: GEMMs on %d SMs, attention "
            "on %d", c->tbo_min_rows, kvf_green_sms(c->green, 0), kvf_green_sms(c->green, 1));
    const char *stenv = getenv("KVF_TBO_STAMPS");
    if (stenv && atoi(stenv) > 0) {  // a diagnosis: without its buffers the steps run unstamped
        c->stamp_cap = 32 * c->base.cfg.n_layers + 16;
        c->h_stamp = malloc((size_t)c->stamp_cap * sizeof(uint64_t));
        c->stamp_tag = malloc((size_t)c->stamp_cap);
        if (c->h_stamp && c->stamp_tag &&
            cudaMalloc((void **)&c->d_stamp, (size_t)c->stamp_cap * sizeof(uint64_t)) == cudaSuccess) {
            c->stamp_every = atoi(stenv);
        } else {
            cudaGetLastError();
            kvf_log(KVF_LOG_WARN, "cuda backend: KVF_TBO_STAMPS: no memory for the stamps; steps run unstamped");
        }
    }
    return 0;
}

static int s_start(kvf_cuda_t *c, const kvf_safetensors_t *st, kvf_err_t *err) {
    kvf_backend_t *be = &c->base;
    const kvf_modelcfg_t *cfg = &be->cfg;
    const kvf_backend_opts_t *o = &be->opts;
    int n_dev = 0;
    KVF_CUDA_CHECK(cudaGetDeviceCount(&n_dev), err);
    if (o->device < 0 || o->device >= n_dev)
        return kvf_err_set(err, KVF_E_INVAL, "cuda backend: device %d, this machine has %d", o->device, n_dev);
    c->device = o->device;
    KVF_CUDA_CHECK(cudaSetDevice(c->device), err);
    KVF_CUDA_CHECK(cudaDeviceGetAttribute(&c->n_sms, cudaDevAttrMultiProcessorCount, c->device), err);
    KVF_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), err);
    const char *ovenv = getenv("KVF_ATTN_OVERLAP");
    c->attn_overlap = ovenv ? atoi(ovenv) : KVF_CUDA_ATTN_OVERLAP;
    if (c->attn_overlap) {  // priorities: lower numbers run first; 0 is the default
        int lo = 0, hi = 0;
        KVF_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi), err);
        KVF_CUDA_CHECK(cudaStreamCreateWithPriority(&c->side, cudaStreamNonBlocking, c->attn_overlap == 2 ? hi : lo),
                       err);
        KVF_CUDA_CHECK(cudaEventCreateWithFlags(&c->ev_fork, cudaEventDisableTiming), err);
        KVF_CUDA_CHECK(cudaEventCreateWithFlags(&c->ev_join, cudaEventDisableTiming), err);
    }

    // weights
    c->w_fp8 = o->quant == KVF_QUANT_FP8;
    c->layers = calloc((size_t)cfg->n_layers, sizeof *c->layers);
    if (!c->layers) return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory");
    be->weights_bytes = kvf_cuda_weights_layout(c, NULL);
    if (s_malloc(c, &c->wmem, be->weights_bytes, "weights", err) != 0) return -1;
    kvf_cuda_weights_layout(c, c->wmem);
    if (st ? kvf_cuda_weights_load(c, st, err) : kvf_cuda_weights_random(c, err)) return -1;
    float *inv_freq = malloc((size_t)cfg->head_dim / 2 * sizeof(float));
    if (!inv_freq) return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory");
    kvf_cpu_rope_inv_freq(inv_freq, cfg);
    cudaError_t e = cudaMemcpy(c->inv_freq, inv_freq, (size_t)cfg->head_dim / 2 * sizeof(float), cudaMemcpyHostToDevice);
    free(inv_freq);
    KVF_CUDA_CHECK(e, err);

    // workspace: sized for the largest step
    const size_t T = (size_t)o->max_step_tokens, B = (size_t)o->max_batch_size, R = (size_t)o->max_logit_rows;
    c->m_tokens = 0;
    c->m_pos = c->m_tokens + T;
    c->m_seq = c->m_pos + T;
    c->m_tiles = c->m_seq + T;
    c->m_tiles_tc = c->m_tiles + 3 * T;
    c->m_bt = c->m_tiles_tc + 3 * T;
    c->tensor_core_prefill = kvf_attention_prefill_supports(cfg->head_dim);
    c->decode_tc = kvf_attention_decode_supports(c->n_heads, c->n_kv, cfg->head_dim);
    c->m_rows = c->m_bt + B * (size_t)o->max_blocks_per_seq;
    c->meta_ints = c->m_rows + R;
    // Splits pay only while tiles x KV heads leave SMs idle: at most 2 SMs' worth of tokens.
    int pt = (2 * c->n_sms + c->n_kv - 1) / c->n_kv;
    c->partial_tokens = pt < o->max_step_tokens ? pt : o->max_step_tokens;
    size_t per_split = kvf_attn_partial_floats(1, c->partial_tokens, c->n_heads, cfg->head_dim) * sizeof(float);
    size_t ms = S_PARTIAL_MAX / per_split;
    c->max_splits = ms > KVF_ATTN_MAX_SPLITS ? KVF_ATTN_MAX_SPLITS : (int)(ms < 1 ? 1 : ms);
    // repetition-penalty histories: every row's whole context, up to 4 Mi ids (16 MiB)
    const int64_t hc = (int64_t)o->max_batch_size * c->max_ctx;
    c->hist_cap = hc < (1 << 22) ? (int)hc : 1 << 22;
    be->workspace_bytes = s_layout_ws(c, NULL);
    if (s_malloc(c, &c->wsmem, be->workspace_bytes, "workspace", err) != 0) return -1;
    s_layout_ws(c, c->wsmem);
    const size_t sp_at = (c->meta_ints + R + 1) / 2 * 2;  // 8-byte aligned for the params' double
    const size_t pen_at = sp_at + R * (sizeof(kvf_sample_params_t) / sizeof(int32_t));
    const size_t vmsg_at = pen_at + 2 * B + 1 + (size_t)c->hist_cap;
    c->pinned_ints = vmsg_at + (c->tp ? (size_t)c->sh.size * (2 + 2 * R) + 2 : 0);
    KVF_CUDA_CHECK(cudaMallocHost((void **)&c->h_meta, c->pinned_ints * sizeof(int32_t)), err);
    c->n_allocs++;
    memset(c->h_meta, 0, c->pinned_ints * sizeof(int32_t));
    c->h_ids = c->h_meta + c->meta_ints;
    c->h_sp = (kvf_sample_params_t *)(void *)(c->h_meta + sp_at);
    c->h_pen = c->h_meta + pen_at;
    c->h_vmsg = c->tp ? c->h_meta + vmsg_at : NULL;
    c->h_order = malloc(kvf_attn_order_scratch_ints((int)T, c->max_ctx) * sizeof(int32_t));
    if (!c->h_order) return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory");
    const char *oenv = getenv("KVF_ATTN_ORDER");
    c->attn_order = oenv ? atoi(oenv) != 0 : 1;
    // Activations between the GEMMs in the checkpoint's dtype, as transformers runs
    // a model (bf16 weights: bf16 q/k/v, gate/up and o/down outputs; the residual and
    // every reduction stay f32); an f32 or f16 checkpoint keeps f32 outputs. Dummy
    // weights are bf16. KVF_CUDA_ACT=f32|bf16 overrides (diagnostics, A/B runs).
    const kvf_tensor_t *t0 = st ? kvf_safetensors_find(st, "model.embed_tokens.weight") : NULL;
    int act_bf16 = !st || (t0 && t0->dtype == KVF_DT_BF16);
    const char *aenv = getenv("KVF_CUDA_ACT");
    if (aenv && (!strcmp(aenv, "f32") || !strcmp(aenv, "bf16"))) act_bf16 = !strcmp(aenv, "bf16");
    c->act_mode = act_bf16 ? S_ACT_GU | S_ACT_QKV | (c->tp ? 0 : S_ACT_OD) : 0;
    if (c->w_fp8) c->act_mode |= S_ACT_GU;  // kvf_silu_mul_fp8 reads bf16 gate/up
    if (s_swiglu_setup(c, err) != 0) return -1;
    // the QKV GEMM with RoPE and the cache write in its epilogue: rope_kv's read of the
    // (n, qkv_dim) product and its write go; on an H200 ~2.3 ms a prefill step of 8192 rows
    const char *qenv = getenv("KVF_QKV_ROPE");
    c->qkv_rope = !(qenv && !strcmp(qenv, "0")) && c->rope_cs && !cfg->attention_bias && !c->w_fp8 &&
                  (c->act_mode & S_ACT_QKV) &&
                  o->kv_dtype != KVF_KV_FP8 && c->n_heads % 2 == 0 && c->dim % 64 == 0 && kvf_gemm_qkv_rope_available();
    const char *qrows = getenv("KVF_QKV_ROPE_MIN_ROWS");
    c->qkv_rope_min_rows = qrows && atoi(qrows) > 0 ? atoi(qrows) : KVF_CUDA_QKV_ROPE_MIN_ROWS;
    if (c->qkv_rope)
        kvf_log(KVF_LOG_INFO, "cuda backend: QKV GEMM, RoPE and the cache write fused (one kernel) for steps of >= %d "
                "rows", c->qkv_rope_min_rows);
    // o_proj and down_proj add into the residual (beta 1) instead of writing o for the norm
    // to add: with an f32 residual the norms then read 4 bytes an element instead of 6 and write 2
    // instead of 6.
    const char *renv = getenv("KVF_RESID_GEMM");
    c->resid_gemm = !c->tp && !c->w_fp8 && (renv ? atoi(renv) != 0 : KVF_CUDA_RESID_GEMM);
    // With bf16 o/down outputs the residual stream is bf16 too, as transformers runs a bf16 model: the
    // GEMMs add in f32 and round once, and every GEMM's C and every norm's input is half the bytes.
    // H200, standard workload: 17.09 -> 16.90 s; tiny-llama's bf16 golden rows: worst rel L2 1.65e-2 ->
    // 1.94e-2 (the bound is 2e-2; bench/RESULTS.md session 20). KVF_CUDA_RESID=f32|bf16 overrides (bf16
    // only where the GEMMs add into it: resid_gemm with bf16 outputs).
    const char *rtenv = getenv("KVF_CUDA_RESID");
    if (rtenv && strcmp(rtenv, "f32") && strcmp(rtenv, "bf16"))
        return kvf_err_set(err, KVF_E_INVAL, "KVF_CUDA_RESID=%s: want f32 or bf16", rtenv);
    c->resid_bf16 = c->resid_gemm && (c->act_mode & S_ACT_OD) && (rtenv ? !strcmp(rtenv, "bf16") : KVF_CUDA_RESID_BF16);
    kvf_log(KVF_LOG_INFO, "cuda backend: residual stream %s%s", c->resid_bf16 ? "bf16" : "f32",
            c->resid_gemm ? ", o_proj and down_proj add into it" : "");
    // KVF_ATTN_DECODE_VARIANT / KVF_ATTN_PREFILL_VARIANT: another kernel variant (A/B runs;
    // with an FP8 cache the decode one numbers kvf_attention_decode_fp8_variant's, the prefill one
    // kvf_attention_prefill_fp8_variant's, 2 and up)
    const char *venv = getenv("KVF_ATTN_DECODE_VARIANT");
    c->dec_variant = venv ? atoi(venv) : -1;
    venv = getenv("KVF_ATTN_PREFILL_VARIANT");
    c->pre_variant = venv ? atoi(venv) : -1;
    const int fp8 = o->kv_dtype == KVF_KV_FP8;
    if (c->dec_variant < 0 ||
        c->dec_variant >= (fp8 ? kvf_attention_decode_fp8_n_variants() : kvf_attention_decode_n_variants()))
        c->dec_variant = kvf_attention_decode_default_variant(fp8, c->n_heads / c->n_kv);  // decode tiles: 1 token
    if (!kvf_attention_prefill_variant_available(c->pre_variant))
        c->pre_variant = kvf_attention_prefill_default_variant();
    // the FP8-cache kernels: variants 2 and up (0 and 1 have no FP8 form)
    c->pre_variant_fp8 = c->pre_variant >= 2 ? c->pre_variant : kvf_attention_prefill_default_variant();
    const char *tenv = getenv("KVF_CUDA_TIMING");
    if (tenv && atoi(tenv) > 0) {
        for (int i = 0; i < S_EV_MAX; i++) {
            KVF_CUDA_CHECK(cudaEventCreate(&c->ev[i]), err);
            c->timing = i + 1;  // events made so far (destroy frees them)
        }
    }
    c->gemm = kvf_gemm_ctx_new(c->gemm_ws, S_GEMM_WS, err);
    if (!c->gemm) return -1;
    // FP8 GEMMs with cuBLASLt's fast accumulation (H200: -7% on the standard workload; its error, ~1e-3
    // relative, is below the bf16 rounding of the GEMMs' outputs). KVF_FP8_FAST_ACCUM=0: off (A/B runs).
    const char *fenv = getenv("KVF_FP8_FAST_ACCUM");
    if (kvf_gemm_ctx_set_fp8_fast_accum(c->gemm, fenv ? atoi(fenv) > 0 : 1, err) != 0) return -1;
    const char *genv = getenv("KVF_GEMV_ROWS");
    c->gemv_rows = KVF_CUDA_GEMV_ROWS;
    if (genv) {
        char *end = NULL;
        const long v = strtol(genv, &end, 10);
        if (end == genv || *end || v < 0 || v > KVF_GEMV_MAX_ROWS)
            return kvf_err_set(err, KVF_E_INVAL, "KVF_GEMV_ROWS=%s: want a row count 0..%d", genv, KVF_GEMV_MAX_ROWS);
        c->gemv_rows = (int)v;
    }
    if (kvf_gemm_ctx_set_gemv_rows(c->gemm, c->gemv_rows, err) != 0) return -1;
    // every row bucket of every GEMM now, not a multi-millisecond heuristic query in
    // front of the first step of each new batch size (an H200's decode tail: 22.5 ms
    // steps of ~120 rows, of which ~12 ms were the four queries of each step)
    {
        const kvf_gemm_out_t tq = kvf_cuda_out(c, S_ACT_QKV), to = kvf_cuda_out(c, S_ACT_OD);
        const kvf_gemm_out_t tg = kvf_cuda_out(c, S_ACT_GU);
        const int T = o->max_step_tokens, D = c->dim;
        int (*prep)(kvf_gemm_ctx_t *, kvf_gemm_out_t, int, int, int, kvf_err_t *) =
            c->w_fp8 ? kvf_gemm_prepare_fp8 : s_prepare_bf16;
        const int acc = c->resid_gemm;  // o and down: into the residual, beta 1
        const kvf_gemm_out_t tr = acc ? kvf_cuda_resid_out(c) : to;
        if (prep(c->gemm, tq, T, D, c->qkv_dim, err) != 0 || prep(c->gemm, tg, T, D, 2 * c->ff, err) != 0 ||
            (acc ? kvf_gemm_prepare(c->gemm, tr, T, c->q_dim, D, 1, err) : prep(c->gemm, tr, T, c->q_dim, D, err)) ||
            (acc ? kvf_gemm_prepare(c->gemm, tr, T, c->ff, D, 1, err) : prep(c->gemm, tr, T, c->ff, D, err)) ||
            kvf_gemm_prepare(c->gemm, KVF_GEMM_OUT_F32, o->max_logit_rows, D, c->sh.nv, 0, err) != 0)
            return -1;
    }

    // the KV slab
    size_t free_b = 0, total_b = 0;
    KVF_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b), err);
    be->free_bytes_at_start = free_b;
    c->kv_fp8 = o->kv_dtype == KVF_KV_FP8;
    const uint64_t block_bytes = 2ull * (uint64_t)cfg->n_layers * (uint64_t)o->block_size *
                                 (uint64_t)c->n_kv * (uint64_t)cfg->head_dim * (c->kv_fp8 ? 1ull : 2ull);
    uint64_t n_blocks;
    if (o->cache_max_entry_count < 1.0)
        n_blocks = (uint64_t)(o->cache_max_entry_count * (double)free_b) / block_bytes;
    else
        n_blocks = (uint64_t)o->cache_max_entry_count;
    if (n_blocks > INT32_MAX) n_blocks = INT32_MAX;
    if (n_blocks * block_bytes > free_b)
        return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: %llu KV blocks (%.1f MiB) do not fit the %.1f MiB free "
                           "after weights and workspace: lower --cache-max-entry-count",
                           (unsigned long long)n_blocks, MIB(n_blocks * block_bytes), MIB(free_b));
    if (n_blocks < (uint64_t)o->max_blocks_per_seq)
        return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: the KV pool of %llu blocks cannot hold one sequence of "
                           "%d blocks (%.1f MiB free after weights and workspace): raise --cache-max-entry-count or "
                           "lower --session-len / --max-prefill-token-num",
                           (unsigned long long)n_blocks, o->max_blocks_per_seq, MIB(free_b));
    if (c->tp) {  // block ids are the group's: every rank takes the smallest pool
        int64_t nb = (int64_t)n_blocks;
        c->agreed++;
        if (s_group_agree(c->tp, 1, &nb, "its memory plan", err) != 0) return c->agreed = 2, -1;  // the group knows
        if ((uint64_t)nb < n_blocks)
            kvf_log(KVF_LOG_INFO, "cuda plan: tp rank %d could hold %llu KV blocks, the group's minimum is %lld",
                    o->tp_rank, (unsigned long long)n_blocks, (long long)nb);
        n_blocks = (uint64_t)nb;
    }
    be->n_blocks = (int32_t)n_blocks;
    be->kv_bytes = n_blocks * block_bytes;
    c->kv_layer_elems = (size_t)n_blocks * o->block_size * c->n_kv * cfg->head_dim;
    if (s_malloc(c, (void **)&c->kv, be->kv_bytes, "KV cache (lower --cache-max-entry-count)", err) != 0) return -1;
    // Zeroed once: attention never reads a slot before it is written, but a
    // slab of zeros keeps any such bug finite.
    KVF_CUDA_CHECK(cudaMemsetAsync(c->kv, 0, be->kv_bytes, c->stream), err);
    KVF_CUDA_CHECK(cudaStreamSynchronize(c->stream), err);
    // KVF_GEMM_TUNE: unset, the decode buckets' picks are timed (s_tune_buckets); 0: the heuristic's
    // picks alone; 1: the old exact-shape tune of max_batch_size rows instead (on an H200 it moved a
    // 128-row decode step by 1.4%, within noise; it times one layer's weights, which the L2 holds for
    // qkv and o).
    const char *tune = getenv("KVF_GEMM_TUNE");
    if (tune && strcmp(tune, "1") == 0) {
        if (s_tune_gemms(c, err) != 0) return -1;
    } else if (!(tune && strcmp(tune, "0") == 0)) {
        kvf_err_t terr = {0};
        if (s_tune_buckets(c, &terr) != 0) {  // a speed-up only: the heuristic's picks still compute the same
            cudaGetLastError();
            kvf_log(KVF_LOG_WARN, "cuda backend: the GEMM bucket tune failed (%s); the heuristic's picks stay",
                    terr.msg);
        }
    }
    // TP: no step may load a GEMM kernel (kvf_cuda_warm_gemms says why). Its cost: layer 0's
    // GEMMs over every bucket's rows, ~3e13 FLOP for Llama-3-8B at 8192 tokens a step (~50 ms
    // on an H200, estimated; 6.4 ms measured for the dead-rank test's small model).
    if (c->tp && kvf_cuda_warm_gemms(c, err) != 0) return -1;
    // Graphs only save launch time: a device that cannot capture them runs eagerly.
    // TP > 1: no graphs (the all-reduces are not captured): every step runs eagerly.
    kvf_err_t gerr = {0};
    if (!c->tp && kvf_cuda_capture_graphs(c, &gerr) != 0) {
        enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(c->stream, &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone) {
            cudaGraph_t g = NULL;
            cudaStreamEndCapture(c->stream, &g);
            if (g) cudaGraphDestroy(g);
        }
        cudaGetLastError();
        for (int i = 0; i < c->n_graphs; i++) cudaGraphExecDestroy(c->graph[i]);
        c->n_graphs = 0;
        kvf_log(KVF_LOG_WARN, "cuda backend: decode steps run without CUDA graphs: %s", gerr.msg);
    }
    // Auto by default (cuda_backend.h); KVF_CUDA_TIMING runs every step eagerly, as
    // a graph hides its kernel groups from the timing events.
    c->use_graphs = c->timing ? KVF_CUDA_GRAPHS_OFF : KVF_CUDA_GRAPHS_AUTO;
    if (s_tbo_setup(c) != 0) return -1;
    if (c->tp) {
        c->agreed++;
        if (s_group_agree(c->tp, 1, NULL, "start-up", err) != 0) return c->agreed = 2, -1;
    }

    kvf_log(KVF_LOG_INFO,
            "cuda plan (device %d): weights %.1f MiB (linear layers %s), workspace %.1f MiB, free %.1f MiB of "
            "%.1f, KV %d blocks of %d tokens (%.1f MiB, %lld tokens, kv %s), %d device allocations, %d decode graphs",
            c->device, MIB(be->weights_bytes), c->w_fp8 ? "fp8" : "bf16", MIB(be->workspace_bytes), MIB(free_b),
            MIB(total_b), be->n_blocks, o->block_size, MIB(be->kv_bytes), (long long)n_blocks * o->block_size, kvf_kv_dtype_name(o->kv_dtype),
            (int)c->n_allocs, c->n_graphs);
    return 0;
}

kvf_backend_t *kvf_cuda_backend_new(const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                    const kvf_backend_opts_t *opts, kvf_err_t *err) {
    if (!cfg || !opts) {
        kvf_err_set(err, KVF_E_INVAL, "cuda backend: config and options are required");
        return NULL;
    }
    if (s_check_config(cfg, opts, err) != 0) return NULL;
    kvf_cuda_t *c = calloc(1, sizeof *c);
    if (!c) {
        kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory");
        return NULL;
    }
    kvf_backend_t *be = &c->base;
    be->ops = &s_cuda_ops;
    be->cfg = *cfg;
    be->opts = *opts;
    c->device = opts->device;
    c->dim = cfg->hidden_size;
    kvf_tp_shard_make(cfg, opts->tp_rank, opts->tp_size, &c->sh, NULL);  // accepted by s_check_config
    c->tp = opts->tp_size > 1 ? opts->tp : NULL;
    c->n_heads = c->sh.nq;
    c->n_kv = c->sh.nkv;
    c->q_dim = c->n_heads * cfg->head_dim;
    c->kv_dim = c->n_kv * cfg->head_dim;
    c->qkv_dim = c->q_dim + 2 * c->kv_dim;
    c->ff = c->sh.ni;
    c->max_ctx = opts->max_blocks_per_seq * opts->block_size;
    if (s_start(c, st, err) != 0) {
        // A TP rank that failed before the group's next agreement still joins it
        // (ok 0), so that the others fail now instead of at their timeout.
        if (c->tp && c->agreed < 2) s_group_agree(c->tp, 0, NULL, c->agreed ? "start-up" : "its memory plan", err);
        s_destroy(&be);
        return NULL;
    }
    return be;
}

// KVF_CUDA_TIMING: one table on stderr (a diagnostic for benchmarks, off by default).
static void s_timing_report(const kvf_cuda_t *c) {
    static const char *const kind[2] = {"decode-only steps", "steps with prefill"};
    static const char *const gemm[5] = {"qkv", "o", "gate/up", "down", "lm_head"};
    if (c->tune_n > 0)
        for (int i = 0; i < 5; i++)
            fprintf(stderr, "KVF_CUDA_TIMING gemm tune n=%d %-8s heuristic %.3f ms, kept %.3f ms\n", c->tune_n, gemm[i],
                    c->tune_ms[i][0], c->tune_ms[i][1]);
    for (int k = 0; k < 2; k++) {
        if (!c->t_steps[k]) continue;
        const double n = (double)c->t_steps[k];
        fprintf(stderr, "KVF_CUDA_TIMING %s: %llu steps, %.1f rows/step, host wall %.3f ms/step, device %.3f ms/step\n",
                kind[k], (unsigned long long)c->t_steps[k], (double)c->t_rows[k] / n, c->t_host_ms[k] / n,
                c->t_gpu_ms[k] / n);
        for (int t = 0; t < S_T_N; t++)
            if (c->t_ms[k][t] > 0)
                fprintf(stderr, "KVF_CUDA_TIMING   %-14s %8.3f ms/step %5.1f%%\n", s_t_names[t], c->t_ms[k][t] / n,
                        100.0 * c->t_ms[k][t] / (c->t_gpu_ms[k] > 0 ? c->t_gpu_ms[k] : 1));
    }
}

static void s_destroy(kvf_backend_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_cuda_t *c = (kvf_cuda_t *)*self_p;
    cudaSetDevice(c->device);
    if (c->stream && c->tp_lost) {
        // The aborted all-reduce of a failed step may never finish on this stream, and
        // every freeing call below would wait for it: give it a bounded time, then leave
        // the device memory to the process's exit (a worker whose group died exits).
        const double deadline = kvf_cuda_now_ms() + 5000.0;
        const struct timespec ms1 = {0, 1000000};
        while (cudaStreamQuery(c->stream) == cudaErrorNotReady && kvf_cuda_now_ms() < deadline) nanosleep(&ms1, NULL);
        if (cudaStreamQuery(c->stream) == cudaErrorNotReady) {
            kvf_log(KVF_LOG_WARN, "cuda backend: device %d is still held by the failed TP step; its memory is left "
                                  "to the process's exit", c->device);
            free(c->h_order);
            free(c->layers);
            free(c);
            *self_p = NULL;
            return;
        }
    }
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->timing) s_timing_report(c);
    for (int i = 0; i < c->timing; i++) cudaEventDestroy(c->ev[i]);
    for (int i = 0; i < c->n_graphs; i++) cudaGraphExecDestroy(c->graph[i]);
    kvf_gemm_ctx_destroy(&c->gemm);
    cudaFree(c->kv);
    cudaFree(c->wsmem);
    cudaFree(c->wmem);
    if (c->h_meta) cudaFreeHost(c->h_meta);
    if (c->stream) cudaStreamDestroy(c->stream);
    if (c->side) cudaStreamDestroy(c->side);
    if (c->tbo_fork) cudaEventDestroy(c->tbo_fork);
    if (c->d_stamp) cudaFree(c->d_stamp);
    free(c->h_stamp);
    free(c->stamp_tag);
    kvf_gemm_ctx_destroy(&c->gemm_g);
    kvf_green_destroy(&c->green);  // its events too
    if (c->ev_fork) cudaEventDestroy(c->ev_fork);
    if (c->ev_join) cudaEventDestroy(c->ev_join);
    free(c->h_order);
    free(c->layers);
    free(c);
    *self_p = NULL;
}
