// worker/cuda_internal.h — the cuda backend's state, shared by its three files
// (not a public header; the interface is cuda_backend.h):
//   cuda_backend.c  start-up (memory plan, workspace, checks), destroy, the public calls
//   cuda_weights.c  the weight arena: layout, loading (this TP rank's shard), random weights
//   cuda_step.c     one step: metadata, the layers' kernels, graphs, the TP vocab exchange,
//                   forward() and forward_sample()
#ifndef KVF_WORKER_CUDA_INTERNAL_H
#define KVF_WORKER_CUDA_INTERNAL_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "common/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/sample_rows.h"
#include "worker/backend.h"
#include "worker/cuda_backend.h"
#include "worker/tp.h"
#include "worker/tp_shard.h"

#define MIB(x) ((double)(x) / (1024.0 * 1024.0))
#define S_ALIGN 256
#define S_GEMM_WS (32u << 20)            // cuBLASLt workspace
#define S_PARTIAL_MAX (64ull << 20)      // attention split partials, bytes at most
#define S_MAX_GRAPHS 24
#define S_EV_MAX 640                     // timing events of one step (KVF_CUDA_TIMING)

// Kernel groups timed by KVF_CUDA_TIMING=1 (events between them; eager steps only).
enum { S_T_META, S_T_EMBED, S_T_NORM, S_T_QKV, S_T_ROPE, S_T_ATTN, S_T_ATTN_TC, S_T_O, S_T_GU, S_T_SILU, S_T_DOWN,
       S_T_LMHEAD, S_T_SAMPLE, S_T_D2H, S_T_GRAPH, S_T_TBO, S_T_N };

typedef struct {
    float *attn_norm;   // (dim)
    float *mlp_norm;    // (dim)
    // the linear layers: bf16, or E4M3 bytes with a scale per row (s*) under w_fp8
    void *wqkv;         // (q_dim + 2 kv_dim, dim): q, k, v projections stacked
    float *bqkv;        // (q_dim + 2 kv_dim) or NULL
    void *wo;           // (dim, q_dim)
    void *wgu;          // (2 ff, dim): gate rows, then up rows (interleaved in blocks under swiglu)
    void *wd;           // (dim, ff)
    float *sqkv, *so, *sgu, *sd;  // (rows of each) the row scales, NULL without w_fp8
} kvf_cuda_layer_t;

typedef struct {
    kvf_backend_t base;  // first: the engine sees a kvf_backend_t
    int device, n_sms;
    int dim, q_dim, kv_dim, qkv_dim, ff, max_ctx;  // q_dim, kv_dim, ff: this TP rank's share
    int n_heads, n_kv;   // query and KV heads on this rank (all of them for tp_size 1)
    kvf_tp_shard_t sh;   // this rank's share of the model (worker/tp_shard.h)
    kvf_tp_t *tp;        // tp_size > 1: the group's NCCL communicator (not owned); NULL for tp_size 1
    int agreed;          // tp: start-up agreements entered (a failing rank still joins the next one)
    cudaStream_t stream;
    // attn_overlap: in a step with prefill, the decode rows' attention runs on side
    // (forked and joined by ev_fork / ev_join) beside the prefill attention on stream
    cudaStream_t side;
    cudaEvent_t ev_fork, ev_join;
    int attn_overlap;  // KVF_ATTN_OVERLAP: 0 off, 1 on, 2 on with side at the higher priority
    kvf_gemm_ctx_t *gemm;
    uint64_t n_allocs;   // cudaMalloc + cudaMallocHost calls

    // weights (one allocation)
    void *wmem;
    uint16_t *embed;     // (nv, dim): this rank's vocabulary ids [v0, v0 + nv) (all of them for tp_size 1)
    uint16_t *lm_head;   // (nv, dim); == embed when tied
    float *final_norm;   // (dim)
    float *inv_freq;     // (head_dim / 2)
    kvf_cuda_layer_t *layers;   // host array of device pointers

    // workspace (one allocation)
    void *wsmem;
    float *resid;        // (T, dim) the residual stream, f32; bf16 rows (T, dim) in it under resid_bf16
    uint16_t *h;         // (T, dim) normed activations
    float *qkv;          // (T, qkv_dim) f32: rounded to bf16 only after RoPE
    uint16_t *q;         // (T, q_dim) rotated queries
    uint16_t *att;       // (T, q_dim) attention output
    float *o;            // (T, dim) o_proj / down_proj output (bf16 under S_ACT_OD) for the norm to add
                         // (without resid_gemm)
    float *gu;           // (T, 2 ff) f32 into silu_mul
    uint16_t *act;       // (T, ff) bf16, or E4M3 bytes under w_fp8
    float *rope_cs;      // (T, head_dim / 2, 2) under qkv_rope: the step's kvf_rope_table (cos, sin)
    int64_t *rope_slot;  // (T) and cache row offsets; both NULL where head_dim is not 128
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
    void *kv;               // per layer K then V, each (n_blocks, bs, KV, HD) bf16, or E4M3 bytes (kv_fp8)
    size_t kv_layer_elems;  // elements of one layer's K (or V)
    int kv_fp8;             // opts.kv_dtype == KVF_KV_FP8
    int w_fp8;              // opts.quant == KVF_QUANT_FP8: E4M3 linear layers (kvf_gemm_fp8)
    uint8_t *x8;            // (T, max(dim, q_dim)) w_fp8: a GEMM's E4M3 input rows (normed x, attention out)
    float *xs;              // (T) w_fp8: their scales (and silu_mul_fp8's, whose rows go to act)

    // CUDA graphs of decode steps, one per batch-size bucket, captured at start-up
    int n_graphs;
    int graph_bucket[S_MAX_GRAPHS];       // sequences (padded) of graph i
    int graph_splits[S_MAX_GRAPHS], graph_split_len[S_MAX_GRAPHS];
    cudaGraphExec_t graph[S_MAX_GRAPHS];
    int use_graphs;  // KVF_CUDA_GRAPHS_OFF, _ON or _AUTO (cuda_backend.h)
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
    int dec_variant, pre_variant;  // variants of the attention kernels: KVF_ATTN_*_VARIANT, else the defaults
    int pre_variant_fp8;           // the prefill kernel over an FP8 cache (2 and up)
    // decode attention tiles longest first (kvf_attn_order_tiles, with h_order as its scratch);
    // KVF_ATTN_ORDER=0: as built, in batch order (A/B runs)
    int attn_order;
    int32_t *h_order;
    // the fused gate/up GEMM (kvf_gemm_swiglu) for steps of >= swiglu_min_rows rows; with swiglu
    // every layer's wgu is interleaved (KVF_SWIGLU_BLOCK) and smaller steps use kvf_silu_mul_blocked
    int swiglu, swiglu_min_rows, swiglu_variant;  // KVF_SWIGLU_VARIANT: another kernel variant (A/B)
    // the QKV GEMM with RoPE and the cache write fused (kvf_gemm_qkv_rope) in steps of >=
    // qkv_rope_min_rows rows (head_dim 128, bf16 layers and cache; KVF_QKV_ROPE=0: off)
    int qkv_rope, qkv_rope_min_rows;
    int gemv_rows;  // GEMMs of steps of <= gemv_rows rows run kvf_gemv (KVF_GEMV_ROWS)
    // o_proj and down_proj add into the residual themselves (cuBLASLt's beta 1), so the
    // norms after them only read it (tp_size 1, bf16 linear layers; KVF_RESID_GEMM=0|1)
    int resid_gemm;
    // under resid_gemm with bf16 o/down outputs: the residual stream itself is bf16, as
    // transformers (and vLLM, SGLang, TensorRT-LLM) run a bf16 model; KVF_CUDA_RESID=f32|bf16
    int resid_bf16;
    int tp_lost;                   // a step failed on the group (aborted all-reduce may hold the stream)
    // Two-batch overlap of decode steps (KVF_TBO=1; cuda_step.c s_layers_tbo): a step of at least
    // tbo_min_rows sequences runs as two halves, their GEMMs and small kernels on green context 0's
    // stream (KVF_TBO_SMS SMs; gemm_g's picks are told so) and their attention on context 1's, one half's
    // attention beside the other half's GEMMs. tbo_q / tbo_a: a half's q/k/v and attention are done.
    struct kvf_green_s *green;     // NULL: off
    kvf_gemm_ctx_t *gemm_g;
    cudaEvent_t tbo_q[2], tbo_a[2], tbo_fork, tbo_join;
    int tbo_min_rows, tbo_split;   // tbo_split: this step's first row of the second half (0: no overlap)
    uint64_t tbo_steps;
    // KVF_TBO_STAMPS=K: every K-th overlapped step stamps the device's timer (kvf_stamp) after each
    // of its phases on both streams and prints where the step's time went (cuda_step.c s_tbo_report).
    uint64_t *d_stamp, *h_stamp;   // (stamp_cap) device / host
    uint8_t *stamp_tag;            // (stamp_cap) a stamp's stream (bit 4) and phase
    int stamp_every, stamp_cap, n_stamp, stamp_now;
} kvf_cuda_t;

// resid_gemm's, resid_bf16's and attn_overlap's defaults where KVF_RESID_GEMM / KVF_CUDA_RESID /
// KVF_ATTN_OVERLAP are unset
#define KVF_CUDA_RESID_GEMM 1
#define KVF_CUDA_RESID_BF16 1
#define KVF_CUDA_ATTN_OVERLAP 2

#define S_ACT_GU 1
#define S_ACT_QKV 2
#define S_ACT_OD 4

// The output type of the GEMMs that act-mode bit `bit` covers.
static inline kvf_gemm_out_t kvf_cuda_out(const kvf_cuda_t *c, int bit) {
    return (c->act_mode & bit) ? KVF_GEMM_OUT_BF16 : KVF_GEMM_OUT_F32;
}

// The residual stream's type: what o_proj and down_proj add into under resid_gemm.
static inline kvf_gemm_out_t kvf_cuda_resid_out(const kvf_cuda_t *c) {
    return c->resid_bf16 ? KVF_GEMM_OUT_BF16 : KVF_GEMM_OUT_F32;
}

static inline size_t kvf_cuda_up(size_t x) { return (x + S_ALIGN - 1) / S_ALIGN * S_ALIGN; }

// The decode-graph bucket after b: powers of two up to 64, then every 64 rows up
// to 512, then every 128.
static inline int kvf_cuda_next_bucket(int b) { return b < 64 ? 2 * b : b < 512 ? b + 64 : b + 128; }

// ---------------------------------------------------------------- cuda_weights.c

// Carves the weight arena at base (NULL: only counts bytes); returns its bytes.
size_t kvf_cuda_weights_layout(kvf_cuda_t *c, char *base);
// The weights of st (this TP rank's shard, tp_shard.h) into the arena, checked by
// name and exact shape. Returns 0, or -1 with err.
int kvf_cuda_weights_load(kvf_cuda_t *c, const kvf_safetensors_t *st, kvf_err_t *err);
// Seeded random weights, generated on the device. Returns 0, or -1 with err.
int kvf_cuda_weights_random(kvf_cuda_t *c, kvf_err_t *err);

// ---------------------------------------------------------------- cuda_step.c

// backend.h's forward() and forward_sample() for the cuda backend.
int kvf_cuda_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err);
int kvf_cuda_forward_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                            const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                            int32_t *out_tokens, kvf_err_t *err);
// Captures a decode graph per batch-size bucket (start-up). Returns 0, or -1 with err.
int kvf_cuda_capture_graphs(kvf_cuda_t *c, kvf_err_t *err);
// Start-up (it synchronizes): every GEMM of a step (layer 0's weights, the buffers'
// contents whatever they are) once per cuBLASLt row bucket up to max_step_tokens, and
// the lm_head's up to max_logit_rows, so that each bucket's pick has its kernels
// loaded. cuBLASLt loads a kernel's library at its first launch (cuLibraryLoadData),
// and that waits for the device; in a TP group whose peer died, an NCCL kernel of this
// rank spins there until our bounded wait aborts it, which a host stuck inside the
// load never reaches (2 x H200: the dead-rank test's survivor blocked in the first
// cublasLtMatmul of its step). CUDA_MODULE_LOADING=EAGER does not cover these loads.
// Returns 0, or -1 with err.
int kvf_cuda_warm_gemms(kvf_cuda_t *c, kvf_err_t *err);
// CLOCK_MONOTONIC in ms.
double kvf_cuda_now_ms(void);

#endif
