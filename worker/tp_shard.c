// worker/tp_shard.c — a rank's share of the model, see tp_shard.h.
#include "worker/tp_shard.h"

#include <string.h>

#include "worker/tp.h"

int kvf_tp_shard_make(const kvf_modelcfg_t *cfg, int32_t rank, int32_t size, kvf_tp_shard_t *sh, kvf_err_t *err) {
    if (!cfg || !sh) return kvf_err_set(err, KVF_E_INVAL, "tp shard: config and shard are required");
    memset(sh, 0, sizeof *sh);
    if (size < 1 || size > KVF_TP_MAX_SIZE || rank < 0 || rank >= size)
        return kvf_err_set(err, KVF_E_INVAL, "tp rank %d of size %d: need 0 <= rank < size <= %d", rank, size,
                           KVF_TP_MAX_SIZE);
    const int32_t H = cfg->n_heads, KV = cfg->n_kv_heads, I = cfg->intermediate_size;
    if (H < 1 || KV < 1 || I < 1 || H % KV != 0)
        return kvf_err_set(err, KVF_E_INVAL, "tp shard: %d heads, %d KV heads, intermediate_size %d: need sizes >= 1 "
                                             "and heads a multiple of KV heads",
                           H, KV, I);
    if (H % size != 0)
        return kvf_err_set(err, KVF_E_INVAL, "%d attention heads do not split over tp_size %d", H, size);
    if (I % size != 0)
        return kvf_err_set(err, KVF_E_INVAL, "intermediate_size %d does not split over tp_size %d", I, size);
    if (cfg->vocab_size < size)
        return kvf_err_set(err, KVF_E_INVAL, "a vocabulary of %d ids does not split over tp_size %d", cfg->vocab_size,
                           size);
    if (KV % size != 0 && size % KV != 0)
        return kvf_err_set(err, KVF_E_INVAL, "%d KV heads and tp_size %d: one must divide the other "
                                             "(split the KV heads or replicate them)",
                           KV, size);
    sh->rank = rank;
    sh->size = size;
    sh->nq = H / size;
    sh->q0 = rank * sh->nq;
    if (KV % size == 0) {
        sh->nkv = KV / size;
        sh->kv0 = rank * sh->nkv;
        sh->kv_replicas = 1;
    } else {  // size % KV == 0, size > KV: the one KV head this rank's query heads read
        sh->nkv = 1;
        sh->kv0 = sh->q0 / (H / KV);
        sh->kv_replicas = size / KV;
    }
    sh->ni = I / size;
    sh->i0 = rank * sh->ni;
    const int32_t vb = cfg->vocab_size / size, vr = cfg->vocab_size % size;
    sh->nv = vb + (rank < vr);
    sh->v0 = rank * vb + (rank < vr ? rank : vr);
    sh->v_stride = vb + (vr > 0);
    return 0;
}

kvf_tp_part_t kvf_tp_shard_part(const kvf_modelcfg_t *cfg, const kvf_tp_shard_t *sh, kvf_tp_tensor_t t) {
    const int64_t D = cfg->hidden_size, hd = cfg->head_dim, I = cfg->intermediate_size;
    const int64_t Q = (int64_t)cfg->n_heads * hd, KV = (int64_t)cfg->n_kv_heads * hd;
    const int64_t q0 = (int64_t)sh->q0 * hd, nq = (int64_t)sh->nq * hd;
    const int64_t k0 = (int64_t)sh->kv0 * hd, nk = (int64_t)sh->nkv * hd;
    kvf_tp_part_t p = {0, 0, 0, 0, 0, 1};
    switch (t) {
    case KVF_TP_WQ: p = (kvf_tp_part_t){Q, D, q0, nq, 0, D}; break;
    case KVF_TP_WK:
    case KVF_TP_WV: p = (kvf_tp_part_t){KV, D, k0, nk, 0, D}; break;
    case KVF_TP_WO: p = (kvf_tp_part_t){D, Q, 0, D, q0, nq}; break;
    case KVF_TP_BQ: p = (kvf_tp_part_t){Q, 0, q0, nq, 0, 1}; break;
    case KVF_TP_BK:
    case KVF_TP_BV: p = (kvf_tp_part_t){KV, 0, k0, nk, 0, 1}; break;
    case KVF_TP_WGATE:
    case KVF_TP_WUP: p = (kvf_tp_part_t){I, D, sh->i0, sh->ni, 0, D}; break;
    case KVF_TP_WDOWN: p = (kvf_tp_part_t){D, I, 0, D, sh->i0, sh->ni}; break;
    case KVF_TP_EMBED:
    case KVF_TP_LMHEAD: p = (kvf_tp_part_t){cfg->vocab_size, D, sh->v0, sh->nv, 0, D}; break;
    }
    return p;
}

int kvf_tp_part_is_full(const kvf_tp_part_t *p) {
    return p->r0 == 0 && p->nr == p->d0 && p->c0 == 0 && (p->d1 == 0 || p->nc == p->d1);
}
