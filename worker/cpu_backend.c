// worker/cpu_backend.c — the "cpu" backend, see cpu_backend.h and backend.h.
//
// Weights, workspace and the KV slab are allocated in kvf_cpu_backend_new and
// nothing afterwards. A step computes the matmuls of all tokens of all
// sequences together (each thread streams its share of a weight matrix once per
// token tile) and attention per (sequence, head). Every output element is
// computed by one thread in a fixed order, so results do not depend on the
// number of threads. forward() is not reentrant: one step at a time.
//
// Tensor parallelism (opts.tp, tp_size T > 1; one process per rank, see
// worker/tp.h), sharded at load as Megatron does:
//   q/k/v, gate/up  column-parallel: rank r keeps its n_heads/T query heads, the
//                   KV heads those read, and its intermediate/T slice
//   o_proj, down    row-parallel (the matching input columns), followed by
//                   all_reduce_sum of the partial outputs
//   KV heads        n_kv % T == 0: n_kv/T per rank; T % n_kv == 0: the one KV
//                   head a rank's query heads read is replicated on T/n_kv ranks
//   embedding       vocab-parallel: rank r keeps the rows of its ids
//                   (tp_shard.h); a token's row comes from the rank that holds
//                   it, zeros elsewhere, summed by an all-reduce (exact: one term)
//   lm_head         vocab-parallel: each rank computes its ids' logits; the step
//                   ends with worker/tp_vocab.h's exchange, so a greedy step
//                   (forward_sample) moves each row's best logit per rank, and
//                   forward() gathers the full logits
//   norms           full on every rank. The all-reduces give every rank bitwise
//                   the same residual stream.
// The memory plan takes the group's minimum block count, so block ids agree.
// With seeded random weights (st NULL) each rank draws its own shard: a valid
// benchmark model, but not the same model as tp_size 1.
#include "worker/cpu_backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fp8.h"
#include "common/log.h"
#include "common/pool.h"
#include "worker/cpu_ops.h"
#include "worker/tp.h"
#include "worker/tp_shard.h"
#include "worker/tp_vocab.h"

// ---------------------------------------------------------------- backend state

typedef struct {
    float *attn_norm;  // (dim)
    float *wq;         // (n_heads*head_dim, dim)
    float *bq;         // (n_heads*head_dim) or NULL
    float *wk;         // (n_kv*head_dim, dim)
    float *bk;         // (n_kv*head_dim) or NULL
    float *wv;         // (n_kv*head_dim, dim)
    float *bv;         // (n_kv*head_dim) or NULL
    float *wo;         // (dim, n_heads*head_dim)
    float *ffn_norm;   // (dim)
    float *w_gate;     // (intermediate, dim)
    float *w_up;       // (intermediate, dim)
    float *w_down;     // (dim, intermediate)
} s_layer_t;

typedef struct {
    kvf_backend_t base;  // first: the engine sees a kvf_backend_t
    kvf_pool_t *pool;
    int n_threads;
    kvf_tp_t *tp;        // NULL for tp_size 1; not owned
    kvf_tp_shard_t sh;   // this rank's share (all of the model for tp_size 1)
    // q_dim, kv_dim and inter are this rank's shares (the full sizes for tp_size 1)
    int32_t dim, q_dim, kv_dim, inter, max_ctx;
    int32_t n_heads, n_kv;  // query and KV heads on this rank
    // weights, one arena
    float *weights;      // (n_weight_floats)
    float *embed;        // (nv, dim): this rank's vocabulary ids [v0, v0 + nv)
    s_layer_t *layers;   // (n_layers)
    float *norm;         // (dim)
    float *lm_head;      // (nv, dim); == embed when tied
    float *inv_freq;     // (head_dim / 2)
    // workspace, one arena
    float *ws;
    float *x;            // (max_step_tokens, dim) residual stream
    float *xn;           // (max_step_tokens, dim) normed input / projection output
    float *q;            // (max_step_tokens, q_dim)
    float *k;            // (max_step_tokens, kv_dim)
    float *v;            // (max_step_tokens, kv_dim)
    float *att;          // (max_step_tokens, q_dim)
    float *gate;         // (max_step_tokens, inter)
    float *up;           // (max_step_tokens, inter)
    float *rows;         // (max_logit_rows, dim) final-normed rows that get logits
    float *vlog;         // (max_logit_rows x v_stride) this rank's logits (rows, nv) (tp, or forward_sample)
    void *vscratch;      // kvf_tp_vocab_scratch_bytes(sh, max_logit_rows) (tp only)
    float *scratch;      // (n_threads, max_ctx) attention scores
    int32_t *pos;        // (max_step_tokens) position of each token
    int32_t *seq_start;  // (max_batch_size) index of each sequence's first token
    // KV slab: for each layer K then V, each (n_blocks, block_size, n_kv, head_dim)
    float *kv;
    size_t kv_layer_floats;  // n_blocks * block_size * n_kv * head_dim
} s_cpu_t;

static void s_destroy(kvf_backend_t **self_p) {
    if (!self_p || !*self_p) return;
    s_cpu_t *c = (s_cpu_t *)*self_p;
    kvf_pool_destroy(&c->pool);
    free(c->weights);
    free(c->layers);
    free(c->inv_freq);
    free(c->ws);
    free(c->kv);
    free(c);
    *self_p = NULL;
}

// ---------------------------------------------------------------- parallel matmul

// Up to three matmuls that share the input x, split into row chunks over the pool.
typedef struct {
    const float *x;   // (n, d_in)
    int n, d_in, n_parts, chunk;
    struct {
        float *out;         // (n, d_out)
        const float *w;     // (d_out, d_in)
        const float *bias;  // (d_out) or NULL
        int d_out, n_tasks;
    } part[3];
} s_mm_job_t;

static void s_mm_task(void *ctx, int task, int thread) {
    (void)thread;
    s_mm_job_t *j = ctx;
    int p = 0;
    while (task >= j->part[p].n_tasks) task -= j->part[p++].n_tasks;
    int o0 = task * j->chunk;
    int o1 = o0 + j->chunk < j->part[p].d_out ? o0 + j->chunk : j->part[p].d_out;
    kvf_cpu_matmul_slice(j->part[p].out, j->x, j->part[p].w, j->part[p].bias, j->n, j->d_in, j->part[p].d_out,
                         o0, o1);
}

static void s_mm_add(s_mm_job_t *j, float *out, const float *w, const float *bias, int d_out) {
    j->part[j->n_parts].out = out;
    j->part[j->n_parts].w = w;
    j->part[j->n_parts].bias = bias;
    j->part[j->n_parts].d_out = d_out;
    j->n_parts++;
}

static void s_mm_run(s_cpu_t *c, s_mm_job_t *j) {
    int rows = 0;
    for (int p = 0; p < j->n_parts; p++) rows += j->part[p].d_out;
    // About four chunks per thread (dynamic balance), a multiple of 4 rows.
    int chunk = (rows + 4 * c->n_threads - 1) / (4 * c->n_threads);
    chunk = (chunk + 3) & ~3;
    if (chunk < 8) chunk = 8;
    j->chunk = chunk;
    int n_tasks = 0;
    for (int p = 0; p < j->n_parts; p++) {
        j->part[p].n_tasks = (j->part[p].d_out + chunk - 1) / chunk;
        n_tasks += j->part[p].n_tasks;
    }
    kvf_pool_run(c->pool, n_tasks, s_mm_task, j);
}

static void s_matmul(s_cpu_t *c, float *out, const float *x, const float *w, const float *bias, int n, int d_in,
                     int d_out) {
    s_mm_job_t j = {.x = x, .n = n, .d_in = d_in};
    s_mm_add(&j, out, w, bias, d_out);
    s_mm_run(c, &j);
}

// ---------------------------------------------------------------- parallel attention

typedef struct {
    s_cpu_t *c;
    const kvf_batch_t *b;
    const float *k_cache, *v_cache;  // this layer's (n_blocks, block_size, n_kv, head_dim)
} s_att_job_t;

static void s_att_task(void *ctx, int task, int thread) {
    s_att_job_t *j = ctx;
    s_cpu_t *c = j->c;
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    int s = task / c->n_heads, h = task % c->n_heads;
    size_t t0 = (size_t)c->seq_start[s];
    kvf_cpu_attention_heads(c->att + t0 * c->q_dim, c->q + t0 * c->q_dim, j->k_cache, j->v_cache,
                            j->b->block_table + (size_t)s * j->b->max_blocks, j->b->n_new[s], j->b->n_past[s],
                            c->n_heads, c->n_kv, cfg->head_dim, c->base.opts.block_size, h, h + 1,
                            c->scratch + (size_t)thread * c->max_ctx);
}

// ---------------------------------------------------------------- forward

// --quantization fp8: rows [task x per, +per) of the job's (rows, cols) replaced by
// what their E4M3 rows with a scale each keep (common/fp8.h), as the cuda backend's
// FP8 GEMMs see them.
typedef struct {
    float *x;
    int64_t rows, cols, per;
} s_quant_job_t;

static void s_quant_task(void *ctx, int task, int thread) {
    (void)thread;
    const s_quant_job_t *j = ctx;
    const int64_t r1 = (task + 1) * j->per < j->rows ? (task + 1) * j->per : j->rows;
    for (int64_t r = task * j->per; r < r1; r++) kvf_fp8_quant_row(j->x + r * j->cols, j->cols);
}

// The rows of x (rows, cols) rounded so, over the pool (4 chunks a thread).
static void s_quant_rows(s_cpu_t *c, float *x, int64_t rows, int64_t cols) {
    const int64_t chunks = 4 * (int64_t)c->n_threads;
    s_quant_job_t j = {x, rows, cols, (rows + chunks - 1) / chunks};
    if (j.per < 1) j.per = 1;
    kvf_pool_run(c->pool, (int)((rows + j.per - 1) / j.per), s_quant_task, &j);
}

// The linear layers as their E4M3 rows keep them (one scale per output channel).
static void s_quant_weights(s_cpu_t *c) {
    for (int l = 0; l < c->base.cfg.n_layers; l++) {
        const s_layer_t *L = &c->layers[l];
        s_quant_rows(c, L->wq, c->q_dim, c->dim);
        s_quant_rows(c, L->wk, c->kv_dim, c->dim);
        s_quant_rows(c, L->wv, c->kv_dim, c->dim);
        s_quant_rows(c, L->wo, c->dim, c->q_dim);
        s_quant_rows(c, L->w_gate, c->inter, c->dim);
        s_quant_rows(c, L->w_up, c->inter, c->dim);
        s_quant_rows(c, L->w_down, c->dim, c->inter);
    }
}

// Checks a batch against the limits fixed at start-up; fills seq_start.
static int s_validate(s_cpu_t *c, const kvf_batch_t *b, kvf_err_t *err) {
    if (kvf_batch_validate(&c->base, b, err) != 0) return -1;
    int32_t sum = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        c->seq_start[s] = sum;
        sum += b->n_new[s];
    }
    return 0;
}

static void s_add(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] + y[i];
}

// out (n, dim) = the embedding rows of ids; rows of ids this rank does not hold
// are zeros (the all-reduce that follows adds the holder's row).
static void s_embed(const s_cpu_t *c, float *out, const int32_t *ids, int n) {
    const size_t dim = (size_t)c->dim;
    for (int t = 0; t < n; t++) {
        const int32_t i = ids[t] - c->sh.v0;
        if (i >= 0 && i < c->sh.nv)
            memcpy(out + (size_t)t * dim, c->embed + (size_t)i * dim, dim * sizeof(float));
        else
            memset(out + (size_t)t * dim, 0, dim * sizeof(float));
    }
}

// One step. logits set: every logit of the rows into it (tp: gathered). Else
// (forward_sample) the greedy pick of each row into ids (tp: rank 0 may still
// ask for the full logits, which are then gathered and dropped).
static int s_run(s_cpu_t *c, const kvf_batch_t *b, float *logits, int32_t *ids, kvf_err_t *err) {
    kvf_backend_t *be = &c->base;
    if (s_validate(c, b, err) != 0) return -1;
    const kvf_modelcfg_t *cfg = &be->cfg;
    const int n = b->n_tokens, dim = c->dim, hd = cfg->head_dim, bs = be->opts.block_size;
    const float eps = cfg->rms_norm_eps;
    const int fp8 = be->opts.quant == KVF_QUANT_FP8;  // linear layers' inputs rounded as the E4M3 rows keep them

    for (int s = 0; s < b->n_seqs; s++)
        for (int i = 0; i < b->n_new[s]; i++) c->pos[c->seq_start[s] + i] = b->n_past[s] + i;

    s_embed(c, c->x, b->tokens, n);
    if (c->tp && kvf_tp_all_reduce_sum(c->tp, c->x, (size_t)n * dim, err) != 0) return -1;  // vocab-parallel
    for (int l = 0; l < cfg->n_layers; l++) {
        const s_layer_t *L = &c->layers[l];
        float *k_cache = c->kv + (size_t)l * 2 * c->kv_layer_floats;  // (n_blocks, bs, n_kv, hd)
        float *v_cache = k_cache + c->kv_layer_floats;                 // (n_blocks, bs, n_kv, hd)

        // attention block
        kvf_cpu_rmsnorm(c->xn, c->x, L->attn_norm, n, dim, eps);
        if (fp8) s_quant_rows(c, c->xn, n, dim);
        s_mm_job_t qkv = {.x = c->xn, .n = n, .d_in = dim};
        s_mm_add(&qkv, c->q, L->wq, L->bq, c->q_dim);
        s_mm_add(&qkv, c->k, L->wk, L->bk, c->kv_dim);
        s_mm_add(&qkv, c->v, L->wv, L->bv, c->kv_dim);
        s_mm_run(c, &qkv);
        kvf_cpu_rope(c->q, c->pos, c->inv_freq, n, c->n_heads, hd);
        kvf_cpu_rope(c->k, c->pos, c->inv_freq, n, c->n_kv, hd);
        if (be->opts.kv_dtype == KVF_KV_FP8)  // what an FP8 cache keeps (the cuda backend's bytes)
            for (size_t i = 0; i < (size_t)n * c->kv_dim; i++)
                c->k[i] = kvf_fp8_e4m3_round(c->k[i]), c->v[i] = kvf_fp8_e4m3_round(c->v[i]);
        for (int s = 0; s < b->n_seqs; s++) {
            size_t t0 = (size_t)c->seq_start[s];
            kvf_cpu_kv_write(k_cache, v_cache, c->k + t0 * c->kv_dim, c->v + t0 * c->kv_dim, c->pos + t0,
                             b->block_table + (size_t)s * b->max_blocks, b->n_new[s], c->n_kv, hd, bs);
        }
        s_att_job_t aj = {c, b, k_cache, v_cache};
        kvf_pool_run(c->pool, b->n_seqs * c->n_heads, s_att_task, &aj);
        if (fp8) s_quant_rows(c, c->att, n, c->q_dim);
        s_matmul(c, c->xn, c->att, L->wo, NULL, n, c->q_dim, dim);
        if (c->tp && kvf_tp_all_reduce_sum(c->tp, c->xn, (size_t)n * dim, err) != 0) return -1;
        s_add(c->x, c->xn, (size_t)n * dim);

        // MLP block
        kvf_cpu_rmsnorm(c->xn, c->x, L->ffn_norm, n, dim, eps);
        if (fp8) s_quant_rows(c, c->xn, n, dim);
        s_mm_job_t gu = {.x = c->xn, .n = n, .d_in = dim};
        s_mm_add(&gu, c->gate, L->w_gate, NULL, c->inter);
        s_mm_add(&gu, c->up, L->w_up, NULL, c->inter);
        s_mm_run(c, &gu);
        kvf_cpu_silu_mul(c->gate, c->gate, c->up, n * c->inter);
        if (fp8) s_quant_rows(c, c->gate, n, c->inter);
        s_matmul(c, c->xn, c->gate, L->w_down, NULL, n, c->inter, dim);
        if (c->tp && kvf_tp_all_reduce_sum(c->tp, c->xn, (size_t)n * dim, err) != 0) return -1;
        s_add(c->x, c->xn, (size_t)n * dim);
    }

    int rows = b->all_logits ? n : b->n_seqs;
    for (int r = 0; r < rows; r++) {
        int t = b->all_logits ? r : c->seq_start[r] + b->n_new[r] - 1;
        kvf_cpu_rmsnorm(c->rows + (size_t)r * dim, c->x + (size_t)t * dim, c->norm, 1, dim, eps);
    }
    if (!c->tp && logits) {  // the whole vocabulary, straight into the caller's rows
        s_matmul(c, logits, c->rows, c->lm_head, NULL, rows, dim, cfg->vocab_size);
        return 0;
    }
    s_matmul(c, c->vlog, c->rows, c->lm_head, NULL, rows, dim, c->sh.nv);
    return kvf_tp_vocab_exchange(c->tp, &c->sh, cfg->vocab_size, c->vlog, rows, logits != NULL, c->vscratch, logits,
                                 ids, NULL, err);
}

static int s_forward(kvf_backend_t *be, const kvf_batch_t *b, float *logits, kvf_err_t *err) {
    if (!be) return kvf_err_set(err, KVF_E_INVAL, "cpu forward: no backend");
    if (!logits) return kvf_err_set(err, KVF_E_INVAL, "cpu forward: logits are required");
    return s_run((s_cpu_t *)be, b, logits, NULL, err);
}

// Greedy steps only: each row's argmax (tp: over the ranks' best logits, with no
// gather of the logits). A row with temperature > 0 or a repetition penalty is
// KVF_E_UNSUPPORTED before anything runs: the engine then calls forward() and
// samples on the host (its thread pool).
static int s_forward_sample(kvf_backend_t *be, const kvf_batch_t *b, const kvf_sampling_t *const *per_seq,
                            const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                            int32_t *out_tokens, kvf_err_t *err) {
    (void)steps, (void)history, (void)n_history;
    if (!be || !b || !per_seq || !out_tokens)
        return kvf_err_set(err, KVF_E_INVAL, "cpu forward_sample: backend, batch, per_seq and out_tokens are required");
    if (b->all_logits) return kvf_err_set(err, KVF_E_INVAL, "cpu forward_sample: all_logits must be 0");
    s_cpu_t *c = (s_cpu_t *)be;
    // a batch over the limits fails in s_run's checks (per_seq is read only for a batch that fits)
    if (b->n_seqs < 1 || b->n_seqs > be->opts.max_batch_size) return s_run(c, b, NULL, out_tokens, err);
    for (int i = 0; i < b->n_seqs; i++) {
        const kvf_sampling_t *s = per_seq[i];
        if (s && (s->temperature > 0.0f || s->repetition_penalty != 1.0f))
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "cpu forward_sample: sequence %d is sampled or penalised: the "
                               "host samples this step", i);
    }
    return s_run(c, b, NULL, out_tokens, err);
}

static const kvf_backend_ops_t s_cpu_ops = {"cpu", s_forward, s_destroy, s_forward_sample};

// ---------------------------------------------------------------- weights

// This rank's share of the model (tp_size 1: all of it), worker/tp_shard.h.
typedef kvf_tp_shard_t s_shard_t;

// Assumes the split was accepted (s_check_config).
static s_shard_t s_shard(const kvf_modelcfg_t *cfg, int32_t rank, int32_t size) {
    s_shard_t sh;
    kvf_tp_shard_make(cfg, rank, size, &sh, NULL);
    return sh;
}

// One weight tensor: its HF name, its full shape, the part of it this rank
// keeps (rows [r0, r0 + nr) x columns [c0, c0 + nc); 1-D: elements [r0, r0 + nr))
// and where that goes in the arena.
typedef struct {
    char name[96];
    int n_dims;
    int64_t shape[2];
    int64_t r0, nr, c0, nc;
    float *dst;               // (nr, nc)
    const kvf_tensor_t *src;  // when loading from safetensors
    int is_norm;              // random init: ones
} s_wspec_t;

typedef struct {
    s_wspec_t *specs;
    int n;
} s_wlist_t;

// Adds rows [r0, r0 + nr) x columns [c0, c0 + nc) of a (d0, d1) tensor (d1 0: 1-D).
static float *s_wadd_part(s_wlist_t *wl, float **cursor, int is_norm, int64_t d0, int64_t d1, int64_t r0, int64_t nr,
                          int64_t c0, int64_t nc, const char *fmt, int l, const char *leaf) {
    s_wspec_t *w = &wl->specs[wl->n++];
    if (l >= 0)
        snprintf(w->name, sizeof w->name, fmt, l, leaf);
    else
        snprintf(w->name, sizeof w->name, "%s", fmt);
    w->n_dims = d1 > 0 ? 2 : 1;
    w->shape[0] = d0;
    w->shape[1] = d1;
    w->r0 = r0;
    w->nr = nr;
    w->c0 = d1 > 0 ? c0 : 0;
    w->nc = d1 > 0 ? nc : 1;
    w->dst = *cursor;
    w->src = NULL;
    w->is_norm = is_norm;
    *cursor += (size_t)w->nr * (size_t)w->nc;
    return w->dst;
}

static float *s_wadd(s_wlist_t *wl, float **cursor, int is_norm, int64_t d0, int64_t d1, const char *fmt, int l,
                     const char *leaf) {
    return s_wadd_part(wl, cursor, is_norm, d0, d1, 0, d0, 0, d1, fmt, l, leaf);
}

// Adds this rank's block of sharded tensor t (tp_shard.h) of layer l.
static float *s_wadd_shard(s_wlist_t *wl, float **cursor, const kvf_modelcfg_t *cfg, const s_shard_t *sh,
                           kvf_tp_tensor_t t, int l, const char *leaf) {
    kvf_tp_part_t p = kvf_tp_shard_part(cfg, sh, t);
    return s_wadd_part(wl, cursor, 0, p.d0, p.d1, p.r0, p.nr, p.c0, p.nc, "model.layers.%d.%s", l, leaf);
}

// Lays this rank's share of the tensors of cfg out in the arena (NULL c: only
// counts floats).
static uint64_t s_layout(s_cpu_t *c, const kvf_modelcfg_t *cfg, const s_shard_t *sh, s_wlist_t *wl) {
    const int64_t D = cfg->hidden_size, V = cfg->vocab_size, hd = cfg->head_dim;
    const int64_t nq = sh->nq * hd, nk = sh->nkv * hd;
    uint64_t per_layer = (uint64_t)(2 * D + nq * D + 2 * nk * D + D * nq + 3 * sh->ni * D);
    if (cfg->attention_bias) per_layer += (uint64_t)(nq + 2 * nk);
    const int64_t nv = sh->nv;
    uint64_t total = (uint64_t)(nv * D) + (uint64_t)cfg->n_layers * per_layer + (uint64_t)D;
    if (!cfg->tie_word_embeddings) total += (uint64_t)(nv * D);
    if (!c) return total;

    float *cur = c->weights;
    const char *lf = "model.layers.%d.%s";
    c->embed = s_wadd_part(wl, &cur, 0, V, D, sh->v0, nv, 0, D, "model.embed_tokens.weight", -1, NULL);
    for (int l = 0; l < cfg->n_layers; l++) {
        s_layer_t *L = &c->layers[l];
        L->attn_norm = s_wadd(wl, &cur, 1, D, 0, lf, l, "input_layernorm.weight");
        L->wq = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WQ, l, "self_attn.q_proj.weight");
        L->wk = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WK, l, "self_attn.k_proj.weight");
        L->wv = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WV, l, "self_attn.v_proj.weight");
        if (cfg->attention_bias) {
            L->bq = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_BQ, l, "self_attn.q_proj.bias");
            L->bk = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_BK, l, "self_attn.k_proj.bias");
            L->bv = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_BV, l, "self_attn.v_proj.bias");
        }
        L->wo = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WO, l, "self_attn.o_proj.weight");
        L->ffn_norm = s_wadd(wl, &cur, 1, D, 0, lf, l, "post_attention_layernorm.weight");
        L->w_gate = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WGATE, l, "mlp.gate_proj.weight");
        L->w_up = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WUP, l, "mlp.up_proj.weight");
        L->w_down = s_wadd_shard(wl, &cur, cfg, sh, KVF_TP_WDOWN, l, "mlp.down_proj.weight");
    }
    c->norm = s_wadd(wl, &cur, 1, D, 0, "model.norm.weight", -1, NULL);
    if (cfg->tie_word_embeddings)
        c->lm_head = c->embed;
    else
        c->lm_head = s_wadd_part(wl, &cur, 0, V, D, sh->v0, nv, 0, D, "lm_head.weight", -1, NULL);
    return total;
}

static uint64_t s_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define KVF_INIT_CHUNK (1 << 20)  // floats per random-init task

typedef struct {
    float *arena;
    uint64_t n_floats;
} s_init_job_t;

// Random init of one chunk of the arena from a stream seeded by the chunk index
// only, so the weights do not depend on the number of threads. Each value is
// the Irwin-Hall sum of four 16-bit uniforms, rescaled to mean 0 and standard
// deviation 0.02: close enough to N(0, 0.02) for benchmarks, and about 50x
// cheaper than Box-Muller (an 8B model initialises in seconds).
static void s_init_task(void *ctx, int task, int thread) {
    (void)thread;
    s_init_job_t *j = ctx;
    uint64_t i0 = (uint64_t)task * KVF_INIT_CHUNK;
    uint64_t i1 = i0 + KVF_INIT_CHUNK < j->n_floats ? i0 + KVF_INIT_CHUNK : j->n_floats;
    uint64_t state = s_mix64(0x6b7666ull ^ s_mix64((uint64_t)task));
    const float scale = 0.02f * 1.7320508f / 65536.0f;  // sqrt(3): the sum of 4 uniforms has variance 1/3
    for (uint64_t i = i0; i < i1; i++) {
        state = s_mix64(state);
        uint32_t sum = (uint32_t)(state & 0xffff) + (uint32_t)((state >> 16) & 0xffff) +
                       (uint32_t)((state >> 32) & 0xffff) + (uint32_t)(state >> 48);
        j->arena[i] = ((float)sum + 2.0f - 131072.0f) * scale;
    }
}

// Converts the part of w->src that w keeps into w->dst, row by row.
static void s_part_to_f32(const s_wspec_t *w) {
    const kvf_tensor_t *t = w->src;
    const int64_t cols = w->n_dims == 2 ? w->shape[1] : 1;
    const size_t es = t->dtype == KVF_DT_F32 ? 4 : 2;
    for (int64_t r = 0; r < w->nr; r++) {
        const uint8_t *src = (const uint8_t *)t->data + ((size_t)(w->r0 + r) * (size_t)cols + (size_t)w->c0) * es;
        float *out = w->dst + (size_t)r * (size_t)w->nc;  // (nc)
        if (t->dtype == KVF_DT_F32) {
            memcpy(out, src, (size_t)w->nc * sizeof(float));
            continue;
        }
        for (int64_t i = 0; i < w->nc; i++) {
            uint16_t h;
            memcpy(&h, src + (size_t)i * 2, 2);
            out[i] = t->dtype == KVF_DT_BF16 ? kvf_bf16_to_f32(h) : kvf_f16_to_f32(h);
        }
    }
}

static void s_load_task(void *ctx, int task, int thread) {
    (void)thread;
    const s_wlist_t *wl = ctx;
    const s_wspec_t *w = &wl->specs[task];
    if (w->r0 == 0 && w->nr == w->shape[0] && w->c0 == 0 && (w->n_dims == 1 || w->nc == w->shape[1]))
        kvf_tensor_to_f32(w->src, w->dst);
    else
        s_part_to_f32(w);
}

// Fills the arena from st (every tensor checked by name and exact shape first),
// or with seeded random values when st is NULL.
static int s_load_weights(s_cpu_t *c, const kvf_safetensors_t *st, s_wlist_t *wl, uint64_t n_floats,
                          kvf_err_t *err) {
    if (!st) {
        s_init_job_t j = {c->weights, n_floats};
        kvf_pool_run(c->pool, (int)((n_floats + KVF_INIT_CHUNK - 1) / KVF_INIT_CHUNK), s_init_task, &j);
        for (int i = 0; i < wl->n; i++)
            if (wl->specs[i].is_norm)
                for (int64_t e = 0; e < wl->specs[i].shape[0]; e++) wl->specs[i].dst[e] = 1.0f;
        return 0;
    }
    for (int i = 0; i < wl->n; i++) {
        s_wspec_t *w = &wl->specs[i];
        w->src = kvf_safetensors_expect(st, w->name, w->n_dims, w->shape, err);
        if (!w->src) return -1;
        if (w->src->dtype != KVF_DT_F32 && w->src->dtype != KVF_DT_F16 && w->src->dtype != KVF_DT_BF16)
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: dtype %d is not F32, F16 or BF16", w->name,
                               (int)w->src->dtype);
    }
    kvf_pool_run(c->pool, wl->n, s_load_task, wl);
    return 0;
}

// ---------------------------------------------------------------- memory plan

// MemAvailable of /proc/meminfo in bytes; 0 when it cannot be read.
static uint64_t s_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lu kB", &kb) == 1) break;
    fclose(f);
    return kb * 1024;
}

static int s_check_config(const kvf_modelcfg_t *cfg, const kvf_backend_opts_t *o, kvf_err_t *err) {
    if (cfg->hidden_size < 1 || cfg->n_layers < 1 || cfg->n_heads < 1 || cfg->n_kv_heads < 1 ||
        cfg->intermediate_size < 1 || cfg->vocab_size < 1 || cfg->head_dim < 2)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: model config has a size < 1");
    if (cfg->head_dim % 2 != 0 || cfg->head_dim > 4096)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cpu backend: head_dim %d must be even and <= 4096", cfg->head_dim);
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: %d heads are not a multiple of %d KV heads", cfg->n_heads,
                           cfg->n_kv_heads);
    if (!(cfg->rms_norm_eps >= 0) || !(cfg->rope_theta > 0))
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: rms_norm_eps or rope_theta out of range");
    if ((cfg->rope_type == KVF_ROPE_LINEAR || cfg->rope_type == KVF_ROPE_LLAMA3) && !(cfg->rope_factor > 0))
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: rope factor %g must be > 0", cfg->rope_factor);
    if (cfg->rope_type == KVF_ROPE_LLAMA3 &&
        (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) || !(cfg->rope_low_freq_factor > 0) ||
         cfg->rope_original_max_position < 1))
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: llama3 rope needs 0 < low_freq_factor < high_freq_factor "
                                             "and original_max_position_embeddings >= 1");
    if (o->block_size < 1 || o->max_batch_size < 1 || o->max_step_tokens < 1 || o->max_logit_rows < 1 ||
        o->max_blocks_per_seq < 1)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: block_size %d, max_batch_size %d, max_step_tokens %d, "
                                             "max_logit_rows %d and max_blocks_per_seq %d must all be >= 1",
                           o->block_size, o->max_batch_size, o->max_step_tokens, o->max_logit_rows,
                           o->max_blocks_per_seq);
    if ((int64_t)o->max_blocks_per_seq * o->block_size > INT32_MAX)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: max_blocks_per_seq x block_size exceeds 2^31 tokens");
    if (o->n_threads < 0) return kvf_err_set(err, KVF_E_INVAL, "cpu backend: n_threads %d < 0", o->n_threads);
    if (o->tp_size < 1 || o->tp_size > KVF_TP_MAX_SIZE || o->tp_rank < 0 || o->tp_rank >= o->tp_size)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: tp rank %d of size %d: need 0 <= rank < size <= %d",
                           o->tp_rank, o->tp_size, KVF_TP_MAX_SIZE);
    if (o->tp_size > 1 && !o->tp)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cpu backend: tp_size %d needs a TP communicator "
                                                   "(kvf_backend_opts_t.tp, worker/tp.h)", o->tp_size);
    if (o->tp && (kvf_tp_size(o->tp) != o->tp_size || kvf_tp_rank(o->tp) != o->tp_rank))
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: options say rank %d of %d, the communicator rank %d of %d",
                           o->tp_rank, o->tp_size, kvf_tp_rank(o->tp), kvf_tp_size(o->tp));
    kvf_tp_shard_t sh;  // heads, KV heads and intermediate_size must split over the group
    kvf_err_t serr;
    if (kvf_tp_shard_make(cfg, o->tp_rank, o->tp_size, &sh, &serr) != 0)
        return kvf_err_set(err, serr.code, "cpu backend: %s", serr.msg);
    if (o->max_logit_rows < o->max_batch_size)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: max_logit_rows %d < max_batch_size %d",
                           o->max_logit_rows, o->max_batch_size);
    if (!(o->cache_max_entry_count > 0) || !(o->cache_max_entry_count <= (double)INT32_MAX))
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: --cache-max-entry-count %g must be in (0, 2^31)",
                           o->cache_max_entry_count);
    if (o->kv_dtype != KVF_KV_AUTO && o->kv_dtype != KVF_KV_FP8)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: kv_dtype %d is neither auto (0) nor fp8 (1)", o->kv_dtype);
    if (o->quant != KVF_QUANT_NONE && o->quant != KVF_QUANT_FP8)
        return kvf_err_set(err, KVF_E_INVAL, "cpu backend: quant %d is neither none (0) nor fp8 (1)", o->quant);
    return 0;
}

#define MIB(b) ((double)(b) / (1024.0 * 1024.0))

// The memory plan of this rank: sizes only, nothing allocated.
typedef struct {
    s_shard_t sh;
    int n_threads;
    uint64_t n_weight_floats, weights_bytes, ws_bytes, vscratch_bytes, free_bytes, block_bytes, n_blocks;
} s_plan_t;

static int s_plan(const kvf_modelcfg_t *cfg, const kvf_backend_opts_t *opts, s_plan_t *p, kvf_err_t *err) {
    const int64_t T = opts->max_step_tokens, R = opts->max_logit_rows, B = opts->max_batch_size;
    const int64_t D = cfg->hidden_size, hd = cfg->head_dim;
    const int64_t C = (int64_t)opts->max_blocks_per_seq * opts->block_size;
    p->sh = s_shard(cfg, opts->tp_rank, opts->tp_size);
    const int64_t Q = p->sh.nq * hd, KV = p->sh.nkv * hd, I = p->sh.ni;
    p->n_threads = opts->n_threads;
    if (p->n_threads == 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        p->n_threads = nc < 1 ? 1 : nc > 256 ? 256 : (int)nc;
    }
    p->n_weight_floats = s_layout(NULL, cfg, &p->sh, NULL);
    p->weights_bytes = p->n_weight_floats * sizeof(float);
    const uint64_t ws_floats = (uint64_t)(T * D * 2 + T * Q * 2 + T * KV * 2 + T * I * 2 + R * D + R * p->sh.v_stride) +
                               (uint64_t)p->n_threads * (uint64_t)C;
    const uint64_t ws_ints = (uint64_t)(T + B);
    p->vscratch_bytes = opts->tp_size > 1 ? kvf_tp_vocab_scratch_bytes(&p->sh, (int32_t)R) : 0;
    p->ws_bytes = ws_floats * sizeof(float) + ws_ints * sizeof(int32_t) + p->vscratch_bytes;
    const uint64_t avail = opts->memory_budget ? opts->memory_budget : s_mem_available();
    if (avail == 0)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "cpu backend: cannot read MemAvailable from /proc/meminfo; "
                                                   "give --memory-budget");
    if (p->weights_bytes + p->ws_bytes > avail)
        return kvf_err_set(err, KVF_E_NOMEM, "cpu backend: weights (%.1f MiB) + workspace (%.1f MiB) exceed the %.1f "
                                             "MiB available: raise --memory-budget or lower --max-prefill-token-num / "
                                             "--max-batch-size",
                           MIB(p->weights_bytes), MIB(p->ws_bytes), MIB(avail));
    p->free_bytes = avail - p->weights_bytes - p->ws_bytes;
    p->block_bytes = 2ull * (uint64_t)cfg->n_layers * (uint64_t)opts->block_size * (uint64_t)KV * 4ull;
    if (opts->cache_max_entry_count < 1.0) {
        p->n_blocks = (uint64_t)(opts->cache_max_entry_count * (double)p->free_bytes) / p->block_bytes;
    } else {
        p->n_blocks = (uint64_t)opts->cache_max_entry_count;
        if (p->n_blocks > p->free_bytes / p->block_bytes)
            return kvf_err_set(err, KVF_E_NOMEM, "cpu backend: %llu KV blocks (%.1f MiB) do not fit the %.1f MiB left "
                                                 "after weights and workspace: lower --cache-max-entry-count or raise "
                                                 "--memory-budget",
                               (unsigned long long)p->n_blocks, MIB(p->n_blocks * p->block_bytes), MIB(p->free_bytes));
    }
    if (p->n_blocks > INT32_MAX) p->n_blocks = INT32_MAX;
    return 0;
}

// Every rank of the TP group says whether its start-up `stage` worked and, with
// v, the KV blocks it can hold; *v becomes the group's minimum. A rank that
// failed (ok 0) keeps its own err and returns -1; the others return -1 with
// KVF_E_PEER_LOST naming it, so the group fails as one instead of a rank
// waiting for a peer that already gave up. Without tp: returns ok ? 0 : -1.
static int s_group_agree(kvf_tp_t *tp, int ok, int64_t *v, const char *stage, kvf_err_t *err) {
    if (!tp) return ok ? 0 : -1;
    int64_t mine[2] = {ok, v ? *v : 0}, all[2 * KVF_TP_MAX_SIZE];
    kvf_err_t ignored;
    if (kvf_tp_all_gather(tp, mine, all, sizeof mine, ok ? err : &ignored) != 0) return -1;
    if (!ok) return -1;
    for (int p = 0; p < kvf_tp_size(tp); p++)
        if (!all[2 * p])
            return kvf_err_set(err, KVF_E_PEER_LOST, "cpu backend: tp rank %d failed at %s (see its log)", p, stage);
    if (v)
        for (int p = 0; p < kvf_tp_size(tp); p++)
            if (all[2 * p + 1] < *v) *v = all[2 * p + 1];
    return 0;
}

kvf_backend_t *kvf_cpu_backend_new(const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                   const kvf_backend_opts_t *opts, kvf_err_t *err) {
    if (!cfg || !opts) {
        kvf_err_set(err, KVF_E_INVAL, "cpu backend: config and options are required");
        return NULL;
    }
    // Sizes first, so that a plan that cannot fit fails before allocating. In a
    // TP group the ranks agree on the plan (and on failure) before going on.
    s_plan_t p;
    memset(&p, 0, sizeof p);
    int ok = s_check_config(cfg, opts, err) == 0 && s_plan(cfg, opts, &p, err) == 0;
    int64_t n_blocks = (int64_t)p.n_blocks;
    if (s_group_agree(opts->tp, ok, &n_blocks, "its memory plan", err) != 0) return NULL;
    if ((uint64_t)n_blocks < p.n_blocks)
        kvf_log(KVF_LOG_INFO, "cpu plan: tp rank %d could hold %llu KV blocks, the group's minimum is %lld",
                opts->tp_rank, (unsigned long long)p.n_blocks, (long long)n_blocks);

    const int64_t T = opts->max_step_tokens, R = opts->max_logit_rows;
    const int64_t D = cfg->hidden_size, hd = cfg->head_dim;
    const int64_t Q = p.sh.nq * hd, KV = p.sh.nkv * hd, I = p.sh.ni;
    const int64_t C = (int64_t)opts->max_blocks_per_seq * opts->block_size;
    const int n_threads = p.n_threads;

    s_cpu_t *c = calloc(1, sizeof *c);
    if (!c) {
        kvf_err_set(err, KVF_E_NOMEM, "cpu backend: out of memory");
        s_group_agree(opts->tp, 0, NULL, "allocation", err);
        return NULL;
    }
    kvf_backend_t *be = &c->base;
    be->ops = &s_cpu_ops;
    be->cfg = *cfg;
    be->opts = *opts;
    be->n_blocks = (int32_t)n_blocks;
    be->weights_bytes = p.weights_bytes;
    be->workspace_bytes = p.ws_bytes;
    be->kv_bytes = (uint64_t)n_blocks * p.block_bytes;
    be->free_bytes_at_start = p.free_bytes;
    c->n_threads = n_threads;
    c->tp = opts->tp_size > 1 ? opts->tp : NULL;
    c->sh = p.sh;
    c->dim = (int32_t)D;
    c->q_dim = (int32_t)Q;
    c->kv_dim = (int32_t)KV;
    c->inter = (int32_t)I;
    c->n_heads = (int32_t)p.sh.nq;
    c->n_kv = (int32_t)p.sh.nkv;
    c->max_ctx = (int32_t)C;
    c->kv_layer_floats = (size_t)n_blocks * (size_t)opts->block_size * (size_t)KV;

    c->pool = kvf_pool_new(n_threads);
    if (!c->pool) {
        kvf_err_set(err, KVF_E_NOMEM, "cpu backend: out of memory for the thread pool");
        goto fail;
    }

    // weights
    c->weights = malloc(p.weights_bytes ? p.weights_bytes : 1);
    c->layers = calloc((size_t)cfg->n_layers, sizeof *c->layers);
    c->inv_freq = malloc((size_t)cfg->head_dim / 2 * sizeof(float));
    s_wlist_t wl = {calloc((size_t)cfg->n_layers * 12 + 4, sizeof(s_wspec_t)), 0};
    if (!c->weights || !c->layers || !c->inv_freq || !wl.specs) {
        free(wl.specs);
        kvf_err_set(err, KVF_E_NOMEM, "cpu backend: cannot allocate %.1f MiB of weights", MIB(p.weights_bytes));
        goto fail;
    }
    s_layout(c, cfg, &p.sh, &wl);
    int rc = s_load_weights(c, st, &wl, p.n_weight_floats, err);
    free(wl.specs);
    if (rc != 0) goto fail;
    if (opts->quant == KVF_QUANT_FP8) s_quant_weights(c);
    kvf_cpu_rope_inv_freq(c->inv_freq, cfg);

    // workspace
    c->ws = malloc(p.ws_bytes);
    if (!c->ws) {
        kvf_err_set(err, KVF_E_NOMEM, "cpu backend: cannot allocate %.1f MiB of workspace", MIB(p.ws_bytes));
        goto fail;
    }
    float *w = c->ws;
    c->x = w, w += T * D;
    c->xn = w, w += T * D;
    c->q = w, w += T * Q;
    c->att = w, w += T * Q;
    c->k = w, w += T * KV;
    c->v = w, w += T * KV;
    c->gate = w, w += T * I;
    c->up = w, w += T * I;
    c->rows = w, w += R * D;
    c->vlog = w, w += R * p.sh.v_stride;
    c->scratch = w, w += (int64_t)n_threads * C;
    int32_t *wi = (int32_t *)w;
    c->pos = wi, wi += T;
    c->seq_start = wi, wi += opts->max_batch_size;
    c->vscratch = p.vscratch_bytes ? (void *)wi : NULL;  // 4-byte fields only

    // KV slab (zeroed lazily by the kernel)
    c->kv = calloc(1, be->kv_bytes ? be->kv_bytes : 1);
    if (!c->kv) {
        kvf_err_set(err, KVF_E_NOMEM, "cpu backend: cannot allocate %.1f MiB of KV cache: lower "
                                      "--cache-max-entry-count or --memory-budget",
                    MIB(be->kv_bytes));
        goto fail;
    }
    if (s_group_agree(opts->tp, 1, NULL, "loading", err) != 0) {
        s_destroy(&be);
        return NULL;
    }
    kvf_log(KVF_LOG_INFO,
            "cpu plan: weights %.1f MiB, workspace %.1f MiB, free %.1f MiB, KV %d blocks of %d tokens (%.1f MiB, %lld "
            "tokens, kv %s), %d threads, tp rank %d of %d (%lld query / %lld KV heads)",
            MIB(p.weights_bytes), MIB(p.ws_bytes), MIB(p.free_bytes), be->n_blocks, opts->block_size, MIB(be->kv_bytes),
            (long long)n_blocks * opts->block_size, kvf_kv_dtype_name(opts->kv_dtype), n_threads, opts->tp_rank,
            opts->tp_size, (long long)p.sh.nq, (long long)p.sh.nkv);
    return be;

fail:
    s_group_agree(opts->tp, 0, NULL, "loading", err);
    s_destroy(&be);
    return NULL;
}
