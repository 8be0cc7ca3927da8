// worker/cuda_weights.c — the cuda backend's weight arena: layout, loading of
// this TP rank's shard from safetensors (converted to bf16 / f32 on the host, a
// chunk at a time), seeded random weights on the device. See cuda_internal.h.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/check.h"
#include "kernels/convert.h"
#include "kernels/quant_fp8.h"
#include "worker/cuda_internal.h"

// ---------------------------------------------------------------- weights

// Carves the weight arena (NULL base: only counts bytes).
size_t kvf_cuda_weights_layout(kvf_cuda_t *c, char *base) {
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    const size_t D = (size_t)c->dim, V = (size_t)c->sh.nv, F = (size_t)c->ff;  // V: this rank's vocabulary rows
    size_t off = 0;
#define S_TAKE(ptr, type, n)                                   \
    do {                                                       \
        if (base) (ptr) = (type *)(base + off);                \
        off += kvf_cuda_up((size_t)(n) * sizeof(type));               \
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
        kvf_cuda_layer_t tmp, *L = base ? &c->layers[l] : &tmp;
        S_TAKE(L->attn_norm, float, D);
        S_TAKE(L->mlp_norm, float, D);
        L->bqkv = NULL;
        if (cfg->attention_bias) S_TAKE(L->bqkv, float, c->qkv_dim);
        L->sqkv = L->so = L->sgu = L->sd = NULL;
        if (c->w_fp8) {  // E4M3 bytes and a scale per row
            S_TAKE(L->wqkv, uint8_t, (size_t)c->qkv_dim * D);
            S_TAKE(L->wo, uint8_t, D * (size_t)c->q_dim);
            S_TAKE(L->wgu, uint8_t, 2 * F * D);
            S_TAKE(L->wd, uint8_t, D * F);
            S_TAKE(L->sqkv, float, c->qkv_dim);
            S_TAKE(L->so, float, D);
            S_TAKE(L->sgu, float, 2 * F);
            S_TAKE(L->sd, float, D);
        } else {
            S_TAKE(L->wqkv, uint16_t, (size_t)c->qkv_dim * D);
            S_TAKE(L->wo, uint16_t, D * (size_t)c->q_dim);
            S_TAKE(L->wgu, uint16_t, 2 * F * D);
            S_TAKE(L->wd, uint16_t, D * F);
        }
    }
#undef S_TAKE
    return off;
}

#define S_CHUNK ((size_t)8 << 20)  // elements converted per host chunk

// Copies tensor t into dst as bf16 (or f32), converting on the host chunk by chunk.
static int s_upload(kvf_cuda_t *c, void *dst, int to_f32, const kvf_tensor_t *t, void *stage, kvf_err_t *err) {
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
static int s_load_part(kvf_cuda_t *c, const kvf_safetensors_t *st, void *dst, int to_f32, void *stage,
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
static int s_load(kvf_cuda_t *c, const kvf_safetensors_t *st, void *dst, int to_f32, void *stage, const char *name,
                  int n_dims, int64_t d0, int64_t d1, kvf_err_t *err) {
    int64_t shape[2] = {d0, d1};
    const kvf_tensor_t *t = kvf_safetensors_expect(st, name, n_dims, shape, err);
    if (!t) return -1;
    if (t->dtype != KVF_DT_F32 && t->dtype != KVF_DT_F16 && t->dtype != KVF_DT_BF16)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: dtype %d is not F32, F16 or BF16", name, (int)t->dtype);
    return s_upload(c, dst, to_f32, t, stage, err);
}

// The largest linear layer of this rank, elements (w_fp8's bf16 staging buffer).
static size_t s_largest(const kvf_cuda_t *c) {
    const size_t D = (size_t)c->dim, F = (size_t)c->ff;
    size_t m = (size_t)c->qkv_dim * D;
    if (D * (size_t)c->q_dim > m) m = D * (size_t)c->q_dim;
    if (2 * F * D > m) m = 2 * F * D;
    return m;
}

// w_fp8: the bf16 matrix (rows, cols) in stage to E4M3 rows with scales at w, scale.
// The loader's copies into stage go through the legacy default stream, which the
// backend's non-blocking stream does not wait for: the device is synchronized
// before (the copies have landed) and the stream after (stage may be refilled).
static int s_quant(kvf_cuda_t *c, void *w, float *scale, const uint16_t *stage, size_t rows, size_t cols,
                   kvf_err_t *err) {
    KVF_CUDA_CHECK(cudaDeviceSynchronize(), err);
    if (kvf_quant_fp8_rows((uint8_t *)w, scale, stage, (int64_t)rows, (int)cols, c->stream, err) != 0) return -1;
    KVF_CUDA_CHECK(cudaStreamSynchronize(c->stream), err);
    return 0;
}

// w_fp8: a device buffer of bf16 for the largest linear layer, or NULL (allocation counted).
static uint16_t *s_stage_new(kvf_cuda_t *c, kvf_err_t *err) {
    void *p = NULL;
    if (cudaMalloc(&p, s_largest(c) * 2) != cudaSuccess) {
        cudaGetLastError();
        kvf_err_set(err, KVF_E_NOMEM, "cuda backend: no device memory for the %.1f MiB FP8 staging buffer",
                    MIB(s_largest(c) * 2));
        return NULL;
    }
    c->n_allocs++;
    return p;
}

int kvf_cuda_weights_load(kvf_cuda_t *c, const kvf_safetensors_t *st, kvf_err_t *err) {
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    const int64_t D = c->dim, F = c->ff, Q = c->q_dim, KV = c->kv_dim;  // F, Q, KV: this rank's
    void *stage = malloc(S_CHUNK * 4);
    if (!stage) return kvf_err_set(err, KVF_E_NOMEM, "cuda backend: out of host memory for the load buffer");
    uint16_t *d_stage = NULL;  // w_fp8: each linear layer lands here in bf16, then is quantized into place
    if (c->w_fp8 && !(d_stage = s_stage_new(c, err))) {
        free(stage);
        return -1;
    }
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
        kvf_cuda_layer_t *L = &c->layers[l];
#define S_NAME(leaf) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, (leaf)), nm)
        S_L(L->attn_norm, 1, S_NAME("input_layernorm.weight"), 1, D, 0);
        S_L(L->mlp_norm, 1, S_NAME("post_attention_layernorm.weight"), 1, D, 0);
        // column-parallel q/k/v and gate/up, row-parallel o and down (tp_shard.h)
        uint16_t *wqkv = d_stage ? d_stage : L->wqkv;
        S_P(wqkv, 0, S_NAME("self_attn.q_proj.weight"), KVF_TP_WQ);
        S_P(wqkv + Q * D, 0, S_NAME("self_attn.k_proj.weight"), KVF_TP_WK);
        S_P(wqkv + (Q + KV) * D, 0, S_NAME("self_attn.v_proj.weight"), KVF_TP_WV);
        if (d_stage && s_quant(c, L->wqkv, L->sqkv, d_stage, (size_t)c->qkv_dim, (size_t)D, err) != 0) goto out;
        if (L->bqkv) {
            S_P(L->bqkv, 1, S_NAME("self_attn.q_proj.bias"), KVF_TP_BQ);
            S_P(L->bqkv + Q, 1, S_NAME("self_attn.k_proj.bias"), KVF_TP_BK);
            S_P(L->bqkv + Q + KV, 1, S_NAME("self_attn.v_proj.bias"), KVF_TP_BV);
        }
        uint16_t *w = d_stage ? d_stage : L->wo;
        S_P(w, 0, S_NAME("self_attn.o_proj.weight"), KVF_TP_WO);
        if (d_stage && s_quant(c, L->wo, L->so, d_stage, (size_t)D, (size_t)Q, err) != 0) goto out;
        w = d_stage ? d_stage : L->wgu;
        S_P(w, 0, S_NAME("mlp.gate_proj.weight"), KVF_TP_WGATE);
        S_P(w + F * D, 0, S_NAME("mlp.up_proj.weight"), KVF_TP_WUP);
        if (d_stage && s_quant(c, L->wgu, L->sgu, d_stage, (size_t)(2 * F), (size_t)D, err) != 0) goto out;
        w = d_stage ? d_stage : L->wd;
        S_P(w, 0, S_NAME("mlp.down_proj.weight"), KVF_TP_WDOWN);
        if (d_stage && s_quant(c, L->wd, L->sd, d_stage, (size_t)D, (size_t)F, err) != 0) goto out;
#undef S_NAME
    }
#undef S_L
#undef S_P
    rc = 0;
out:
    if (d_stage) {  // the quantizations read it: wait for them
        cudaError_t e = cudaStreamSynchronize(c->stream);
        cudaFree(d_stage);
        if (rc == 0 && e != cudaSuccess) rc = kvf_err_set(err, KVF_E_DEVICE, "cuda backend: quantizing the weights: %s",
                                                          cudaGetErrorString(e));
    }
    free(stage);
    return rc;
}

// Seeded random weights, generated on the device: N(0, 0.02)-like uniform
// matrices (std 0.02), norms of ones, small biases.
int kvf_cuda_weights_random(kvf_cuda_t *c, kvf_err_t *err) {
    const kvf_modelcfg_t *cfg = &c->base.cfg;
    const size_t D = (size_t)c->dim, V = (size_t)c->sh.nv, F = (size_t)c->ff;  // V: this rank's vocabulary rows
    const float a = 0.02f * sqrtf(3.0f);
    uint64_t seed = 0x6b7666ull;
    cudaStream_t s = c->stream;
    uint16_t *d_stage = NULL;  // w_fp8: each linear layer is drawn here in bf16, then quantized into place
    if (c->w_fp8 && !(d_stage = s_stage_new(c, err))) return -1;
    int rc = -1;
#define S_RB(p, n) if (kvf_fill_random_bf16((p), (n), seed++, 0.0f, a, s, err) != 0) goto out
#define S_RQ(p, sc, rows, cols)                                                                       \
    if (d_stage ? kvf_fill_random_bf16(d_stage, (size_t)(rows) * (cols), seed++, 0.0f, a, s, err) != 0 || \
                      s_quant(c, (p), (sc), d_stage, (rows), (cols), err) != 0                          \
                : kvf_fill_random_bf16((p), (size_t)(rows) * (cols), seed++, 0.0f, a, s, err) != 0)     \
    goto out
#define S_ONES(p, n) if (kvf_fill_random_f32((p), (n), seed++, 1.0f, 0.0f, s, err) != 0) goto out
    S_RB(c->embed, V * D);
    if (c->lm_head != c->embed) S_RB(c->lm_head, V * D);
    S_ONES(c->final_norm, D);
    for (int l = 0; l < cfg->n_layers; l++) {
        kvf_cuda_layer_t *L = &c->layers[l];
        S_ONES(L->attn_norm, D);
        S_ONES(L->mlp_norm, D);
        S_RQ(L->wqkv, L->sqkv, (size_t)c->qkv_dim, D);
        if (L->bqkv && kvf_fill_random_f32(L->bqkv, (size_t)c->qkv_dim, seed++, 0.0f, a, s, err) != 0) goto out;
        S_RQ(L->wo, L->so, D, (size_t)c->q_dim);
        S_RQ(L->wgu, L->sgu, 2 * F, D);
        S_RQ(L->wd, L->sd, D, F);
    }
#undef S_RB
#undef S_RQ
#undef S_ONES
    rc = 0;
out:;
    const cudaError_t e = cudaStreamSynchronize(s);
    if (d_stage) cudaFree(d_stage);
    if (rc == 0 && e != cudaSuccess)
        rc = kvf_err_set(err, KVF_E_DEVICE, "cuda backend: random weights: %s", cudaGetErrorString(e));
    return rc;
}
