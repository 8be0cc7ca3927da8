// worker/cuda_backend.c — see cuda_backend.h.
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
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope_kv.h"
#include "kernels/sample.h"
#include "kernels/repetition_penalty.h"
#include "kernels/sample_rows.h"
#include "kernels/silu_mul.h"
#include "worker/cpu_ops.h"
#include "worker/sampler.h"
#include "worker/tp.h"
#include "worker/tp_shard.h"
#include "worker/tp_vocab.h"

#define MIB(x) ((double)(x) / (1024.0 * 1024.0))
#define S_ALIGN 256
#define S_GEMM_WS (32u << 20)            // cuBLASLt workspace
#define S_PARTIAL_MAX (64ull << 20)      // attention split partials, bytes at most
#define S_MAX_GRAPHS 16
#define S_EV_MAX 640                     // timing events of one step (KVF_CUDA_TIMING)

// Kernel groups timed by KVF_CUDA_TIMING=1 (events between them; eager steps only).
enum { S_T_META, S_T_EMBED, S_T_NORM, S_T_QKV, S_T_ROPE, S_T_ATTN, S_T_ATTN_TC, S_T_O, S_T_GU, S_T_SILU, S_T_DOWN,
       S_T_LMHEAD, S_T_SAMPLE, S_T_D2H, S_T_GRAPH, S_T_N };
static const char *const s_t_names[S_T_N] = {"meta H2D", "embed", "rmsnorm", "qkv gemm", "rope+kv", "attn decode",
                                             "attn prefill", "o gemm", "gate/up gemm", "silu_mul", "down gemm",
                                             "lm_head", "sample", "D2H", "graph"};

typedef struct {
    float *attn_norm;   // (dim)
    float *mlp_norm;    // (dim)
    uint16_t *wqkv;     // (q_dim + 2 kv_dim, dim): q, k, v projections stacked
    float *bqkv;        // (q_dim + 2 kv_dim) or NULL
    uint16_t *wo;       // (dim, q_dim)
    uint16_t *wgu;      // (2 ff, dim): gate rows, then up rows
    uint16_t *wd;       // (dim, ff)
} s_layer_t;

typedef struct {
    kvf_backend_t base;  // first: the engine sees a kvf_backend_t
    int device, n_sms;
    int dim, q_dim, kv_dim, qkv_dim, ff, max_ctx;  // q_dim, kv_dim, ff: this TP rank's share
    int n_heads, n_kv;   // query and KV heads on this rank (all of them for tp_size 1)
    kvf_tp_shard_t sh;   // this rank's share of the model (worker/tp_shard.h)
    kvf_tp_t *tp;        // tp_size > 1: the group's NCCL communicator (not owned); NULL for tp_size 1
    int agreed;          // tp: start-up agreements entered (a failing rank still joins the next one)
    cudaStream_t stream;
    kvf_gemm_ctx_t *gemm;
    uint64_t n_allocs;   // cudaMalloc + cudaMallocHost calls

    // weights (one allocation)
    void *wmem;
    uint16_t *embed;     // (nv, dim): this rank's vocabulary ids [v0, v0 + nv) (all of them for tp_size 1)
    uint16_t *lm_head;   // (nv, dim); == embed when tied
    float *final_norm;   // (dim)
    float *inv_freq;     // (head_dim / 2)
    s_layer_t *layers;   // host array of device pointers

    // workspace (one allocation)
    void *wsmem;
    float *resid;        // (T, dim) the residual stream, f32
    uint16_t *h;         // (T, dim) normed activations
    float *qkv;          // (T, qkv_dim) f32: rounded to bf16 only after RoPE
    uint16_t *q;         // (T, q_dim) rotated queries
    uint16_t *att;       // (T, q_dim) attention output
    float *o;            // (T, dim) o_proj / down_proj output, f32 into the f32 residual
    float *gu;           // (T, 2 ff) f32 into silu_mul
    uint16_t *act;       // (T, ff)
    uint16_t *rows;      // (R, dim) rows picked for lm_head
    float *logits;       // (R, vocab)
    // tp (vocab-parallel lm_head, worker/tp_vocab.h): this rank's logits, the ranks' logits
    // gathered when a step needs them all, and the exchange messages (this rank's, then the group's)
    float *vlog;         // (R, v_stride): rows x nv written, padding after
    float *vgath;        // (T, R, v_stride)
    int32_t *d_vmsg;     // (T + 1, 2 + 2 R)
    int32_t *h_vmsg;     // (T, 2 + 2 R) pinned: the group's messages copied back; then 2 ints of header staging
    float *partial;      // attention split partials
    int partial_tokens, max_splits;
    void *gemm_ws;
    int32_t *d_meta;     // device copy of the step metadata
    int32_t *d_ids;      // (R) tokens picked on the device (forward_sample)
    kvf_sample_params_t *d_sp;  // (R) each row's sampling settings (forward_sample with sampled rows)
    int32_t *d_pen;      // (B floats, B + 1 offsets, hist_cap ids) the repetition penalty's rows, as h_pen
    float *d_hscr;       // (hist_cap) its scratch

    // step metadata: pinned host buffer, copied to d_meta in one H2D copy
    int32_t *h_meta;     // (meta_ints + R + params): the metadata, then h_ids, then h_sp
    int32_t *h_ids;      // (R) pinned: the picked tokens copied back
    kvf_sample_params_t *h_sp;  // (R) pinned: the rows' sampling settings, copied to d_sp
    size_t pinned_ints;  // int32 slots of the pinned buffer
    int sampled;         // this forward_sample has a row with temperature > 0: h_sp holds the settings
    // forward_sample rows with a repetition penalty: per row (B = max_batch_size) the
    // penalty (1: none), the offsets of its history in the ids that follow, then the ids
    int32_t *h_pen;      // pinned, copied to d_pen in one H2D copy
    int hist_cap;        // history ids a step can carry (more: the host samples that step)
    int64_t pen_ints;    // int32 slots of h_pen to copy for this step (0: no penalty this step)
    size_t meta_ints, m_tokens, m_pos, m_seq, m_tiles, m_tiles_tc, m_bt, m_rows;
    int tensor_core_prefill;  // head_dim that kvf_attention_prefill runs
    int decode_tc;            // shape that kvf_attention_decode runs (single-token tiles without key splits)

    // KV slab: for each layer K then V, each (n_blocks, block_size, n_kv, head_dim) bf16
    uint16_t *kv;
    size_t kv_layer_elems;

    // CUDA graphs of decode steps, one per batch-size bucket, captured at start-up
    int n_graphs;
    int graph_bucket[S_MAX_GRAPHS];       // sequences (padded) of graph i
    int graph_splits[S_MAX_GRAPHS], graph_split_len[S_MAX_GRAPHS];
    cudaGraphExec_t graph[S_MAX_GRAPHS];
    int use_graphs;
    uint64_t graph_steps;

    // KVF_CUDA_TIMING=1: per-group device time, decode-only steps [0] and steps with prefill [1],
    // printed at destroy. Events made at start-up; recorded only on eager steps.
    int timing, timing_now, n_ev;
    cudaEvent_t ev[S_EV_MAX];
    int ev_cat[S_EV_MAX];
    double t_ms[2][S_T_N], t_host_ms[2], t_gpu_ms[2];
    uint64_t t_steps[2], t_rows[2];
    // kvf_gemm_tune at start-up for full decode batches (KVF_GEMM_TUNE=1: on): rows, and per GEMM
    // (qkv, o, gate/up, down, lm_head) the heuristic's first pick and the kept pick, ms per call
    int tune_n;
    float tune_ms[5][2];
    // GEMM outputs kept in bf16 (as transformers does for a bf16 model) instead of f32:
    // S_ACT_GU gate/up into silu_mul, S_ACT_QKV q/k/v into RoPE, S_ACT_OD o/down into the
    // residual (tp_size 1 only: the all-reduce stays f32)
    int act_mode;
    int dec_variant, pre_variant;  // kernel variants of the attention kernels, -1: their default
    int tp_lost;                   // a step failed on the group (aborted all-reduce may hold the stream)
} s_cuda_t;

#define S_ACT_GU 1
#define S_ACT_QKV 2
#define S_ACT_OD 4

// The output type of the GEMMs that act-mode bit `bit` covers.
static kvf_gemm_out_t s_out(const s_cuda_t *c, int bit) {
    return (c->act_mode & bit) ? KVF_GEMM_OUT_BF16 : KVF_GEMM_OUT_F32;
}

static void s_destroy(kvf_backend_t **self_p);
static int s_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err);
static int s_forward_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                            const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                            int32_t *out_tokens, kvf_err_t *err);
static const kvf_backend_ops_t s_cuda_ops = {"cuda", s_forward, s_destroy, s_forward_sample};
static int s_capture_graphs(s_cuda_t *c, kvf_err_t *err);
static double s_now_ms(void);

static size_t s_up(size_t x) { return (x + S_ALIGN - 1) / S_ALIGN * S_ALIGN; }

// ---------------------------------------------------------------- allocation

static int s_malloc(s_cuda_t *c, void **p, size_t bytes, const char *what, kvf_err_t *err) {
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
    return ((const s_cuda_t *)be)->n_allocs;
}

int kvf_cuda_backend_set_graphs(kvf_backend_t *be, int on) {
    if (!be || be->ops != &s_cuda_ops) return -1;
    ((s_cuda_t *)be)->use_graphs = on != 0;
    return 0;
}

uint64_t kvf_cuda_backend_graph_steps(const kvf_backend_t *be) {
    if (!be || be->ops != &s_cuda_ops) return 0;
    return ((const s_cuda_t *)be)->graph_steps;
}

// ---------------------------------------------------------------- weights

// Carves the weight arena (NULL base: only counts bytes).
static size_t s_layout_weights(s_cuda_t *c, char *base) {
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    const size_t D = (size_t)c->dim, V = (size_t)c->sh.nv, F = (size_t)c->ff;  // V: this rank's vocabulary rows
    size_t off = 0;
#define S_TAKE(ptr, type, n)                                   \
    do {                                                       \
        if (base) (ptr) = (type *)(base + off);                \
        off += s_up((size_t)(n) * sizeof(type));               \
    } while (0)
    uint16_t *u16;
    float *f32;
    S_TAKE(u16, uint16_t, V * D);
    if (base) c->embed = u16;
    if (cfg->tie_word_embeddings) {
        if (base) c->lm_head = c->embed;
    } else {
        S_TAKE(u16, uint16_t, V * D);
        if (base) c->lm_head = u16;
    }
    S_TAKE(f32, float, D);
    if (base) c->final_norm = f32;
    S_TAKE(f32, float, cfg->head_dim / 2);
    if (base) c->inv_freq = f32;
    for (int l = 0; l < cfg->n_layers; l++) {
        s_layer_t tmp, *L = base ? &c->layers[l] : &tmp;
        S_TAKE(L->attn_norm, float, D);
        S_TAKE(L->mlp_norm, float, D);
        S_TAKE(L->wqkv, uint16_t, (size_t)c->qkv_dim * D);
        L->bqkv = NULL;
        if (cfg->attention_bias) S_TAKE(L->bqkv, float, c->qkv_dim);
        S_TAKE(L->wo, uint16_t, D * (size_t)c->q_dim);
        S_TAKE(L->wgu, uint16_t, 2 * F * D);
        S_TAKE(L->wd, uint16_t, D * F);
    }
#undef S_TAKE
    return off;
}

#define S_CHUNK ((size_t)8 << 20)  // elements converted per host chunk

// Copies tensor t into dst as bf16 (or f32), converting on the host chunk by chunk.
static int s_upload(s_cuda_t *c, void *dst, int to_f32, const kvf_tensor_t *t, void *stage, kvf_err_t *err) {
    (void)c;
    size_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= (size_t)t->shape[i];
    const size_t esz = to_f32 ? 4 : 2;
    for (size_t i0 = 0; i0 < n; i0 += S_CHUNK) {
        size_t m = n - i0 < S_CHUNK ? n - i0 : S_CHUNK;
        const void *src = NULL;
        if (!to_f32 && t->dtype == KVF_DT_BF16) {
            src = (const uint16_t *)t->data + i0;
        } else if (to_f32 && t->dtype == KVF_DT_F32) {
            src = (const float *)t->data + i0;
        } else {
            for (size_t i = 0; i < m; i++) {
                float f;
                if (t->dtype == KVF_DT_F32) {
                    memcpy(&f, (const char *)t->data + (i0 + i) * 4, 4);
                } else {
                    uint16_t h;
                    memcpy(&h, (const char *)t->data + (i0 + i) * 2, 2);
                    f = t->dtype == KVF_DT_F16 ? kvf_f16_to_f32(h) : kvf_bf16_to_f32(h);
                }
                if (to_f32)
                    ((float *)stage)[i] = f;
                else
                    ((uint16_t *)stage)[i] = kvf_f32_to_bf16(f);
            }
            src = stage;
        }
        KVF_CUDA_CHECK(cudaMemcpy((char *)dst + i0 * esz, src, m * esz, cudaMemcpyHostToDevice), err);
    }
    return 0;
}

// The block p (tp_shard.h) of tensor t into dst as bf16 (or f32): the rows that
// fit the stage are converted on the host, then copied in one piece.
static int s_upload_part(void *dst, int to_f32, const kvf_tensor_t *t, const kvf_tp_part_t *p, void *stage,
                         kvf_err_t *err) {
    const size_t esz = to_f32 ? 4 : 2, src_esz = t->dtype == KVF_DT_F32 ? 4 : 2;
    const size_t cols = p->d1 ? (size_t)p->d1 : 1, nc = (size_t)p->nc;
    const size_t per = S_CHUNK / nc > 0 ? S_CHUNK / nc : 1;  // rows per stage
    for (size_t r0 = 0; r0 < (size_t)p->nr; r0 += per) {
        size_t m = (size_t)p->nr - r0 < per ? (size_t)p->nr - r0 : per;
        for (size_t r = 0; r < m; r++) {
            const char *src = (const char *)t->data + (((size_t)p->r0 + r0 + r) * cols + (size_t)p->c0) * src_esz;
            for (size_t i = 0; i < nc; i++) {
                float f;
                if (t->dtype == KVF_DT_F32) {
                    memcpy(&f, src + i * 4, 4);
                } else {
                    uint16_t h;
                    memcpy(&h, src + i * 2, 2);
                    f = t->dtype == KVF_DT_F16 ? kvf_f16_to_f32(h) : kvf_bf16_to_f32(h);
                }
                if (to_f32)
                    ((float *)stage)[r * nc + i] = f;
                else
                    ((uint16_t *)stage)[r * nc + i] = kvf_f32_to_bf16(f);
            }
        }
        KVF_CUDA_CHECK(cudaMemcpy((char *)dst + r0 * nc * esz, stage, m * nc * esz, cudaMemcpyHostToDevice), err);
    }
    return 0;
}

// This rank's block of sharded tensor `which`; the whole tensor (s_upload) when
// the block is all of it, as with tp_size 1.
static int s_load_part(s_cuda_t *c, const kvf_safetensors_t *st, void *dst, int to_f32, void *stage,
                       const char *name, kvf_tp_tensor_t which, kvf_err_t *err) {
    const kvf_tp_part_t p = kvf_tp_shard_part(&c->base.cfg, &c->sh, which);
    int64_t shape[2] = {p.d0, p.d1};
    const kvf_tensor_t *t = kvf_safetensors_expect(st, name, p.d1 ? 2 : 1, shape, err);
    if (!t) return -1;
    if (t->dtype != KVF_DT_F32 && t->dtype != KVF_DT_F16 && t->dtype != KVF_DT_BF16)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: dtype %d is not F32, F16 or BF16", name, (int)t->dtype);
    if (kvf_tp_part_is_full(&p)) return s_upload(c, dst, to_f32, t, stage, err);
    return s_upload_part(dst, to_f32, t, &p, stage, err);
}

// One tensor by name and exact shape; copied to dst.
static int s_load(s_cuda_t *c, const kvf_safetensors_t *st, void *dst, int to_f32, void *stage, const char *name,
                  int n_dims, int64_t d0, int64_t d1, kvf_err_t *err) {
    int64_t shape[2] = {d0, d1};
    const kvf_tensor_t *t = kvf_safetensors_expect(st, name, n_dims, shape, err);
    if (!t) return -1;
    if (t->dtype != KVF_DT_F32 && t->dtype != KVF_DT_F16 && t->dtype != KVF_DT_BF16)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: dtype %d is not F32, F16 or BF16", name, (int)t->dtype);
    return s_upload(c, dst, to_f32, t, stage, err);
}

static int s_load_weights(s_cuda_t *c, const kvf_safetensors_t *st, kvf_err_t *err) {
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    const int64_t D = c->dim, F = c->ff, Q = c->q_dim, KV = c->kv_dim;  // F, Q, KV: this rank's
    void *stage = malloc(S_CHUNK * 4);
    if (!stage) return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory for the load buffer");
    int rc = -1;
    char nm[160];
#define S_L(dst, f32, name, nd, a, b) \
    if (s_load(c, st, (dst), (f32), stage, (name), (nd), (a), (b), err) != 0) goto out
#define S_P(dst, f32, name, which) \
    if (s_load_part(c, st, (dst), (f32), stage, (name), (which), err) != 0) goto out
    // vocab-parallel: this rank's rows of the embedding and lm_head
    S_P(c->embed, 0, "model.embed_tokens.weight", KVF_TP_EMBED);
    if (!cfg->tie_word_embeddings) S_P(c->lm_head, 0, "lm_head.weight", KVF_TP_LMHEAD);
    S_L(c->final_norm, 1, "model.norm.weight", 1, D, 0);
    for (int l = 0; l < cfg->n_layers; l++) {
        s_layer_t *L = &c->layers[l];
#define S_NAME(leaf) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, (leaf)), nm)
        S_L(L->attn_norm, 1, S_NAME("input_layernorm.weight"), 1, D, 0);
        S_L(L->mlp_norm, 1, S_NAME("post_attention_layernorm.weight"), 1, D, 0);
        // column-parallel q/k/v and gate/up, row-parallel o and down (tp_shard.h)
        S_P(L->wqkv, 0, S_NAME("self_attn.q_proj.weight"), KVF_TP_WQ);
        S_P(L->wqkv + Q * D, 0, S_NAME("self_attn.k_proj.weight"), KVF_TP_WK);
        S_P(L->wqkv + (Q + KV) * D, 0, S_NAME("self_attn.v_proj.weight"), KVF_TP_WV);
        if (L->bqkv) {
            S_P(L->bqkv, 1, S_NAME("self_attn.q_proj.bias"), KVF_TP_BQ);
            S_P(L->bqkv + Q, 1, S_NAME("self_attn.k_proj.bias"), KVF_TP_BK);
            S_P(L->bqkv + Q + KV, 1, S_NAME("self_attn.v_proj.bias"), KVF_TP_BV);
        }
        S_P(L->wo, 0, S_NAME("self_attn.o_proj.weight"), KVF_TP_WO);
        S_P(L->wgu, 0, S_NAME("mlp.gate_proj.weight"), KVF_TP_WGATE);
        S_P(L->wgu + F * D, 0, S_NAME("mlp.up_proj.weight"), KVF_TP_WUP);
        S_P(L->wd, 0, S_NAME("mlp.down_proj.weight"), KVF_TP_WDOWN);
#undef S_NAME
    }
#undef S_L
#undef S_P
    rc = 0;
out:
    free(stage);
    return rc;
}

// Seeded random weights, generated on the device: N(0, 0.02)-like uniform
// matrices (std 0.02), norms of ones, small biases.
static int s_random_weights(s_cuda_t *c, kvf_err_t *err) {
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    const size_t D = (size_t)c->dim, V = (size_t)c->sh.nv, F = (size_t)c->ff;  // V: this rank's vocabulary rows
    const float a = 0.02f * sqrtf(3.0f);
    uint64_t seed = 0x6b7666ull;
    cudaStream_t s = c->stream;
#define S_RB(p, n) if (kvf_fill_random_bf16((p), (n), seed++, 0.0f, a, s, err) != 0) return -1
#define S_ONES(p, n) if (kvf_fill_random_f32((p), (n), seed++, 1.0f, 0.0f, s, err) != 0) return -1
    S_RB(c->embed, V * D);
    if (c->lm_head != c->embed) S_RB(c->lm_head, V * D);
    S_ONES(c->final_norm, D);
    for (int l = 0; l < cfg->n_layers; l++) {
        s_layer_t *L = &c->layers[l];
        S_ONES(L->attn_norm, D);
        S_ONES(L->mlp_norm, D);
        S_RB(L->wqkv, (size_t)c->qkv_dim * D);
        if (L->bqkv && kvf_fill_random_f32(L->bqkv, (size_t)c->qkv_dim, seed++, 0.0f, a, s, err) != 0) return -1;
        S_RB(L->wo, D * (size_t)c->q_dim);
        S_RB(L->wgu, 2 * F * D);
        S_RB(L->wd, D * F);
    }
#undef S_RB
#undef S_ONES
    KVF_CUDA_CHECK(cudaStreamSynchronize(s), err);
    return 0;
}

// ---------------------------------------------------------------- workspace

// Carves the workspace arena (NULL base: only counts bytes).
static size_t s_layout_ws(s_cuda_t *c, char *base) {
    const kvf_backend_opts_t *o = &c->base.opts;
    const size_t T = (size_t)o->max_step_tokens, R = (size_t)o->max_logit_rows, B = (size_t)o->max_batch_size;
    const size_t D = (size_t)c->dim, V = (size_t)c->base.cfg.vocab_size, F = (size_t)c->ff;
    size_t off = 0;
#define S_TAKE(ptr, type, n)                                   \
    do {                                                       \
        if (base) (ptr) = (type *)(void *)(base + off);        \
        off += s_up((size_t)(n) * sizeof(type));               \
    } while (0)
    S_TAKE(c->resid, float, T * D);
    S_TAKE(c->h, uint16_t, T * D);
    S_TAKE(c->qkv, float, T * (size_t)c->qkv_dim);
    S_TAKE(c->q, uint16_t, T * (size_t)c->q_dim);
    S_TAKE(c->att, uint16_t, T * (size_t)c->q_dim);
    S_TAKE(c->o, float, T * D);
    S_TAKE(c->gu, float, T * 2 * F);
    S_TAKE(c->act, uint16_t, T * F);
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
    return 0;
}

// ---------------------------------------------------------------- start-up

// Picks the fastest cuBLASLt algorithm for each GEMM of a full decode batch
// (max_batch_size rows: the shape most steps of a long run have), timed on
// layer 0's weights and random activations; other shapes keep the heuristic's
// first pick. Start-up only: it synchronizes.
static int s_tune_gemms(s_cuda_t *c, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &c->base.opts;
    const int n = o->max_batch_size < o->max_step_tokens ? o->max_batch_size : o->max_step_tokens;
    const int D = c->dim, F = c->ff, V = c->sh.nv;  // V: this rank's vocabulary
    const s_layer_t *L = &c->layers[0];
    if (kvf_fill_random_bf16(c->h, (size_t)n * D, 11, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->att, (size_t)n * c->q_dim, 12, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->act, (size_t)n * F, 13, 0.0f, 1.0f, c->stream, err) != 0 ||
        kvf_fill_random_bf16(c->rows, (size_t)n * D, 14, 0.0f, 1.0f, c->stream, err) != 0)
        return -1;
    float(*t)[2] = c->tune_ms;
    const kvf_gemm_out_t tq = s_out(c, S_ACT_QKV), to = s_out(c, S_ACT_OD), tg = s_out(c, S_ACT_GU);
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

static int s_start(s_cuda_t *c, const kvf_safetensors_t *st, kvf_err_t *err) {
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

    // weights
    c->layers = calloc((size_t)cfg->n_layers, sizeof *c->layers);
    if (!c->layers) return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory");
    be->weights_bytes = s_layout_weights(c, NULL);
    if (s_malloc(c, &c->wmem, be->weights_bytes, "weights", err) != 0) return -1;
    s_layout_weights(c, c->wmem);
    if (st ? s_load_weights(c, st, err) : s_random_weights(c, err)) return -1;
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
    // Activations between the GEMMs in the checkpoint's dtype, as transformers runs
    // a model (bf16 weights: bf16 q/k/v, gate/up and o/down outputs; the residual and
    // every reduction stay f32); an f32 or f16 checkpoint keeps f32 outputs. Dummy
    // weights are bf16. KVF_CUDA_ACT=f32|bf16 overrides (diagnostics, A/B runs).
    const kvf_tensor_t *t0 = st ? kvf_safetensors_find(st, "model.embed_tokens.weight") : NULL;
    int act_bf16 = !st || (t0 && t0->dtype == KVF_DT_BF16);
    const char *aenv = getenv("KVF_CUDA_ACT");
    if (aenv && (!strcmp(aenv, "f32") || !strcmp(aenv, "bf16"))) act_bf16 = !strcmp(aenv, "bf16");
    c->act_mode = act_bf16 ? S_ACT_GU | S_ACT_QKV | (c->tp ? 0 : S_ACT_OD) : 0;
    // KVF_ATTN_DECODE_VARIANT / KVF_ATTN_PREFILL_VARIANT: another kernel variant (A/B runs)
    const char *venv = getenv("KVF_ATTN_DECODE_VARIANT");
    c->dec_variant = venv ? atoi(venv) : -1;
    venv = getenv("KVF_ATTN_PREFILL_VARIANT");
    c->pre_variant = venv ? atoi(venv) : -1;
    if (c->dec_variant >= kvf_attention_decode_n_variants()) c->dec_variant = -1;
    if (c->pre_variant >= kvf_attention_prefill_n_variants()) c->pre_variant = -1;
    const char *tenv = getenv("KVF_CUDA_TIMING");
    if (tenv && atoi(tenv) > 0) {
        for (int i = 0; i < S_EV_MAX; i++) {
            KVF_CUDA_CHECK(cudaEventCreate(&c->ev[i]), err);
            c->timing = i + 1;  // events made so far (destroy frees them)
        }
    }
    c->gemm = kvf_gemm_ctx_new(c->gemm_ws, S_GEMM_WS, err);
    if (!c->gemm) return -1;
    // every row bucket of every GEMM now, not a multi-millisecond heuristic query in
    // front of the first step of each new batch size (an H200's decode tail: 22.5 ms
    // steps of ~120 rows, of which ~12 ms were the four queries of each step)
    {
        const kvf_gemm_out_t tq = s_out(c, S_ACT_QKV), to = s_out(c, S_ACT_OD), tg = s_out(c, S_ACT_GU);
        const int T = o->max_step_tokens, D = c->dim;
        if (kvf_gemm_prepare(c->gemm, tq, T, D, c->qkv_dim, 0, err) != 0 ||
            kvf_gemm_prepare(c->gemm, to, T, c->q_dim, D, 0, err) != 0 ||
            kvf_gemm_prepare(c->gemm, tg, T, D, 2 * c->ff, 0, err) != 0 ||
            kvf_gemm_prepare(c->gemm, to, T, c->ff, D, 0, err) != 0 ||
            kvf_gemm_prepare(c->gemm, KVF_GEMM_OUT_F32, o->max_logit_rows, D, c->sh.nv, 0, err) != 0)
            return -1;
    }

    // the KV slab
    size_t free_b = 0, total_b = 0;
    KVF_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b), err);
    be->free_bytes_at_start = free_b;
    const uint64_t block_bytes = 2ull * (uint64_t)cfg->n_layers * (uint64_t)o->block_size *
                                 (uint64_t)c->n_kv * (uint64_t)cfg->head_dim * 2ull;
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
    // Opt-in (KVF_GEMM_TUNE=1): on an H200 it moved a 128-row decode step by 1.4% (9.42 -> 9.29 ms p50),
    // within noise, and its timings loop over one layer's weights, which for qkv and o fit the 60 MB L2:
    // the picks are made on cache-resident data, not what a step streams from memory.
    const char *tune = getenv("KVF_GEMM_TUNE");
    if (tune && strcmp(tune, "1") == 0 && s_tune_gemms(c, err) != 0) return -1;
    // Graphs only save launch time: a device that cannot capture them runs eagerly.
    // TP > 1: no graphs (the all-reduces are not captured): every step runs eagerly.
    kvf_err_t gerr = {0};
    if (!c->tp && s_capture_graphs(c, &gerr) != 0) {
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
    // Off by default: a graph's attention splits are fixed for the longest context,
    // which on an H200 made 16-sequence decode at 512 tokens 14% slower than eager
    // steps (9.47 vs 8.33 ms, Llama-3-8B shape); kvf_cuda_backend_set_graphs turns them on.
    c->use_graphs = 0;
    if (c->tp) {
        c->agreed++;
        if (s_group_agree(c->tp, 1, NULL, "start-up", err) != 0) return c->agreed = 2, -1;
    }

    kvf_log(KVF_LOG_INFO,
            "cuda plan (device %d): weights %.1f MiB, workspace %.1f MiB, free %.1f MiB of %.1f, KV %d blocks of %d "
            "tokens (%.1f MiB, %lld tokens), %d device allocations, %d decode graphs",
            c->device, MIB(be->weights_bytes), MIB(be->workspace_bytes), MIB(free_b), MIB(total_b), be->n_blocks,
            o->block_size, MIB(be->kv_bytes), (long long)n_blocks * o->block_size, (int)c->n_allocs, c->n_graphs);
    return 0;
}

kvf_backend_t *kvf_cuda_backend_new(const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                    const kvf_backend_opts_t *opts, kvf_err_t *err) {
    if (!cfg || !opts) {
        kvf_err_set(err, KVF_E_INVAL, "cuda backend: config and options are required");
        return NULL;
    }
    if (s_check_config(cfg, opts, err) != 0) return NULL;
    s_cuda_t *c = calloc(1, sizeof *c);
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
static void s_timing_report(const s_cuda_t *c) {
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
    s_cuda_t *c = (s_cuda_t *)*self_p;
    cudaSetDevice(c->device);
    if (c->stream && c->tp_lost) {
        // The aborted all-reduce of a failed step may never finish on this stream, and
        // every freeing call below would wait for it: give it a bounded time, then leave
        // the device memory to the process's exit (a worker whose group died exits).
        const double deadline = s_now_ms() + 5000.0;
        const struct timespec ms1 = {0, 1000000};
        while (cudaStreamQuery(c->stream) == cudaErrorNotReady && s_now_ms() < deadline) nanosleep(&ms1, NULL);
        if (cudaStreamQuery(c->stream) == cudaErrorNotReady) {
            kvf_log(KVF_LOG_WARN, "cuda backend: device %d is still held by the failed TP step; its memory is left "
                                  "to the process's exit", c->device);
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
    free(c->layers);
    free(c);
    *self_p = NULL;
}

// ---------------------------------------------------------------- forward

// Checks a batch against the limits fixed at start-up and writes the step's
// metadata into the pinned buffer. Returns the number of attention tiles, or -1.
// Cuts the sequences into attention tiles: those adding one token (decode) or,
// without tensor-core prefill, all of them go to kvf_attention (q_per_tile
// tokens a tile); the others to kvf_attention_prefill (KVF_ATTN_PREFILL_Q).
static void s_tiles(s_cuda_t *c, const kvf_batch_t *b, int q_per_tile, int *n_tiles, int *n_tiles_tc) {
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
}

static int s_prepare(s_cuda_t *c, const kvf_batch_t *b, const void *out, int *q_per_tile, int *max_ctx,
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
    *q_per_tile = decode || c->tensor_core_prefill ? 1 : kvf_attn_q_per_tile(c->n_heads, c->n_kv);
    int n_tiles = 0;
    s_tiles(c, b, *q_per_tile, &n_tiles, n_tiles_tc);  // at most n_tokens tiles: they fit
    return n_tiles;
}

// KVF_CUDA_TIMING: an event after the kernels of group cat (the group runs from the previous event).
static int s_mark(s_cuda_t *c, int cat, kvf_err_t *err) {
    if (c->n_ev >= c->timing) return 0;
    c->ev_cat[c->n_ev] = cat;
    KVF_CUDA_CHECK(cudaEventRecord(c->ev[c->n_ev], c->stream), err);
    c->n_ev++;
    return 0;
}

static double s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// h = rmsnorm(resid += o) with o (n, dim) f32, or bf16 under S_ACT_OD.
static int s_norm_add(s_cuda_t *c, const float *w, int n, cudaStream_t st, kvf_err_t *err) {
    const float eps = c->base.cfg.rms_norm_eps;
    if (c->act_mode & S_ACT_OD)
        return kvf_rmsnorm_add(c->h, c->resid, (const uint16_t *)c->o, w, n, c->dim, eps, st, err);
    return kvf_rmsnorm_add_f32(c->h, c->resid, c->o, w, n, c->dim, eps, st, err);
}

// The kernels of one step on c->stream, reading the metadata already in d_meta:
// n tokens in n_tiles attention tiles, logits of `rows` rows (all tokens, or the
// rows picked by the row index) into c->logits. Captured into graphs as is.
static int s_layers(s_cuda_t *c, int n, int n_tiles, int qpt, int n_tiles_tc, int n_splits, int split_len, int rows,
                    int all_logits, int dec_tc, kvf_err_t *err) {
    const kvf_backend_t *be = &c->base;
    const kvf_modelcfg_t *cfg = &be->cfg;
    const kvf_backend_opts_t *o = &be->opts;
    const int D = c->dim, H = c->n_heads, KV = c->n_kv, HD = cfg->head_dim;  // this rank's heads
    const int F = c->ff, V = cfg->vocab_size, bs = o->block_size, MB = o->max_blocks_per_seq;
    const float eps = cfg->rms_norm_eps;
    cudaStream_t st = c->stream;
    const int32_t *d_tok = c->d_meta + c->m_tokens, *d_pos = c->d_meta + c->m_pos, *d_seq = c->d_meta + c->m_seq;
    const int32_t *d_tiles = c->d_meta + c->m_tiles, *d_bt = c->d_meta + c->m_bt, *d_rows = c->d_meta + c->m_rows;
    const int32_t *d_tiles_tc = c->d_meta + c->m_tiles_tc;
    const int qkv_bf16 = (c->act_mode & S_ACT_QKV) != 0;
    const kvf_gemm_out_t od_type = s_out(c, S_ACT_OD);
#define S_K(call) \
    if ((call) != 0) return -1
#define S_TM(cat) \
    if (c->timing_now) S_K(s_mark(c, (cat), err))
    if (c->tp) {  // vocab-parallel: the rank that holds a token's row adds it, the others zeros
        S_K(kvf_embed_shard_f32(c->resid, c->embed, d_tok, n, D, c->sh.v0, c->sh.nv, st, err));
        S_K(kvf_tp_nccl_all_reduce_enqueue(c->tp, c->resid, (size_t)n * D, st, err));
    } else {
        S_K(kvf_embed_f32(c->resid, c->embed, d_tok, n, D, V, st, err));
    }
    S_TM(S_T_EMBED);
    for (int l = 0; l < cfg->n_layers; l++) {
        const s_layer_t *L = &c->layers[l];
        uint16_t *kc = c->kv + (size_t)l * 2 * c->kv_layer_elems;  // (n_blocks, bs, KV, HD)
        uint16_t *vc = kc + c->kv_layer_elems;                     // (n_blocks, bs, KV, HD)
        if (l == 0) {
            S_K(kvf_rmsnorm(c->h, c->resid, L->attn_norm, n, D, eps, st, err));
        } else {
            S_K(s_norm_add(c, L->attn_norm, n, st, err));
        }
        S_TM(S_T_NORM);
        S_K(kvf_gemm(c->gemm, c->qkv, qkv_bf16 ? KVF_GEMM_OUT_BF16 : KVF_GEMM_OUT_F32, c->h, L->wqkv, n, D,
                     c->qkv_dim, 0.0f, st, err));
        S_TM(S_T_QKV);
        if (qkv_bf16) {
            S_K(kvf_rope_kv(c->q, kc, vc, (const uint16_t *)c->qkv, L->bqkv, c->inv_freq, d_pos, d_seq, d_bt, MB, n,
                            H, KV, HD, bs, be->n_blocks, st, err));
        } else {
            S_K(kvf_rope_kv_f32(c->q, kc, vc, c->qkv, L->bqkv, c->inv_freq, d_pos, d_seq, d_bt, MB, n, H, KV, HD, bs,
                                be->n_blocks, st, err));
        }
        S_TM(S_T_ROPE);
        if (n_tiles > 0 && dec_tc) {
            if (c->dec_variant >= 0) {
                S_K(kvf_attention_decode_variant(c->dec_variant, c->att, c->q, kc, vc, d_tiles, n_tiles, d_pos, d_bt,
                                                 MB, H, KV, HD, bs, st, err));
            } else {
                S_K(kvf_attention_decode(c->att, c->q, kc, vc, d_tiles, n_tiles, d_pos, d_bt, MB, H, KV, HD, bs, st,
                                         err));
            }
            S_TM(S_T_ATTN);
        } else if (n_tiles > 0) {
            S_K(kvf_attention(c->att, c->partial, c->q, kc, vc, d_tiles, n_tiles, qpt, d_pos, d_bt, MB, n, H, KV, HD,
                              bs, n_splits, split_len, st, err));
            S_TM(S_T_ATTN);
        }
        if (n_tiles_tc > 0) {
            if (c->pre_variant >= 0) {
                S_K(kvf_attention_prefill_variant(c->pre_variant, c->att, c->q, kc, vc, d_tiles_tc, n_tiles_tc, d_pos,
                                                  d_bt, MB, H, KV, HD, bs, st, err));
            } else {
                S_K(kvf_attention_prefill(c->att, c->q, kc, vc, d_tiles_tc, n_tiles_tc, d_pos, d_bt, MB, H, KV, HD, bs,
                                          st, err));
            }
            S_TM(S_T_ATTN_TC);
        }
        S_K(kvf_gemm(c->gemm, c->o, od_type, c->att, L->wo, n, c->q_dim, D, 0.0f, st, err));
        if (c->tp) S_K(kvf_tp_nccl_all_reduce_enqueue(c->tp, c->o, (size_t)n * D, st, err));  // row-parallel o_proj
        S_TM(S_T_O);
        S_K(s_norm_add(c, L->mlp_norm, n, st, err));
        S_TM(S_T_NORM);
        if (c->act_mode & S_ACT_GU) {
            uint16_t *gu = (uint16_t *)c->gu;  // (n, 2 F) bf16 in the f32 buffer
            S_K(kvf_gemm(c->gemm, gu, KVF_GEMM_OUT_BF16, c->h, L->wgu, n, D, 2 * F, 0.0f, st, err));
            S_TM(S_T_GU);
            S_K(kvf_silu_mul(c->act, gu, gu + F, n, F, 2 * F, st, err));
        } else {
            S_K(kvf_gemm(c->gemm, c->gu, KVF_GEMM_OUT_F32, c->h, L->wgu, n, D, 2 * F, 0.0f, st, err));
            S_TM(S_T_GU);
            S_K(kvf_silu_mul_f32(c->act, c->gu, c->gu + F, n, F, 2 * F, st, err));
        }
        S_TM(S_T_SILU);
        S_K(kvf_gemm(c->gemm, c->o, od_type, c->act, L->wd, n, F, D, 0.0f, st, err));
        if (c->tp) S_K(kvf_tp_nccl_all_reduce_enqueue(c->tp, c->o, (size_t)n * D, st, err));  // row-parallel down_proj
        S_TM(S_T_DOWN);
    }
    S_K(s_norm_add(c, c->final_norm, n, st, err));
    S_TM(S_T_NORM);
    const uint16_t *x = c->h;
    if (!all_logits) {
        S_K(kvf_gather_rows_bf16(c->rows, c->h, d_rows, rows, D, n, st, err));
        x = c->rows;
    }
    // tp: this rank's vocabulary only, into vlog (s_vocab_exchange takes it from there)
    S_K(kvf_gemm(c->gemm, c->tp ? c->vlog : c->logits, KVF_GEMM_OUT_F32, x, c->lm_head, rows, D, c->sh.nv, 0.0f, st,
                 err));
    S_TM(S_T_LMHEAD);
#undef S_TM
#undef S_K
    return 0;
}

// Decode steps (one token per sequence, last logits) replay a graph captured at
// start-up for the smallest bucket that holds the batch: powers of two up to
// max_batch_size. The key range is split for the longest context the backend
// allows (splits beyond a sequence's keys exit at once), so one graph serves
// every context length.
static int s_capture_graphs(s_cuda_t *c, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &c->base.opts;
    int max_b = o->max_batch_size < o->max_step_tokens ? o->max_batch_size : o->max_step_tokens;
    for (int bucket = 1;; bucket = bucket * 2 < max_b ? bucket * 2 : max_b) {
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
static void s_pad_decode(s_cuda_t *c, int n_seqs, int bucket) {
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
static int s_vocab_exchange(s_cuda_t *c, int rows, int want_full, int *full, kvf_err_t *err) {
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
    const int vb = V / T, vr = V % T;
    for (int p = 0; p < T; p++) {  // rank p's (rows, nv_p) block -> columns [v0_p, v0_p + nv_p)
        const int v0 = p * vb + (p < vr ? p : vr), nv = vb + (p < vr);
        KVF_CUDA_CHECK(cudaMemcpy2DAsync(c->logits + v0, (size_t)V * sizeof(float), c->vgath + (size_t)p * rows * S,
                                         (size_t)nv * sizeof(float), (size_t)nv * sizeof(float), (size_t)rows,
                                         cudaMemcpyDeviceToDevice, st), err);
    }
    return 0;
}

// One step: logits (host, rows x vocab) copied back when logits is set; else
// the argmax of each sequence's row into ids (host, n_seqs) and only those.
static int s_step(s_cuda_t *c, const kvf_batch_t *b, float *logits, int32_t *ids, kvf_err_t *err) {
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
    const double h0 = c->timing ? s_now_ms() : 0.0;
    c->timing_now = c->timing > 0;
    c->n_ev = 0;
    if (c->timing_now && s_mark(c, S_T_META, err) != 0) return -1;

    int gi = -1;
    if (c->use_graphs && !b->all_logits && n == b->n_seqs)
        for (int i = 0; i < c->n_graphs && gi < 0; i++)
            if (c->graph_bucket[i] >= n) gi = i;
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
        if (s_layers(c, n, n_tiles, qpt, n_tiles_tc, n_splits, split_len, rows, b->all_logits, dec_tc, err) != 0)
            return -1;
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
        c->t_host_ms[k] += s_now_ms() - h0;
        c->timing_now = 0;
    }
    return 0;
}

static int s_run(s_cuda_t *c, const kvf_batch_t *b, float *logits, int32_t *ids, kvf_err_t *err) {
    if (c->tp_lost) return kvf_err_set(err, KVF_E_PEER_LOST, "cuda backend: the TP group failed in an earlier step");
    kvf_err_t e2;
    kvf_err_t *e = err ? err : &e2;
    const int rc = s_step(c, b, logits, ids, e);
    if (rc != 0 && c->tp && e->code == KVF_E_PEER_LOST) c->tp_lost = 1;
    return rc;
}

static int s_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err) {
    if (!be) return kvf_err_set(err, KVF_E_INVAL, "cuda forward: no backend");
    if (!logits) return kvf_err_set(err, KVF_E_INVAL, "cuda forward: batch and logits are required");
    return s_run((s_cuda_t *)be, b, logits, NULL, err);
}

// Each row's token on the device: the repetition penalty over the row's history
// (kernels/repetition_penalty.h), then greedy rows (per_seq NULL or temperature 0)
// by the argmax of the f32 logits the host sampler would see (lowest id on ties,
// NaN never wins) and sampled rows by kernels/sample_rows.h (temperature, top-k,
// top-p, min-p, then the draw with the host's uniform number for (seed, step)),
// which picks the host sampler's token but where a sum lands within ~1e-12 of a
// boundary. Histories longer in all than hist_cap are KVF_E_UNSUPPORTED (nothing
// runs; the host samples that step).
static int s_forward_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                            const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                            int32_t *out_tokens, kvf_err_t *err) {
    if (!be || !b || !per_seq || !out_tokens)
        return kvf_err_set(err, KVF_E_INVAL, "cuda forward_sample: backend, batch, per_seq and out_tokens are required");
    s_cuda_t *c = (s_cuda_t *)be;
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
