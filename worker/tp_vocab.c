// worker/tp_vocab.c — the vocab-parallel lm_head's exchange, see tp_vocab.h.
#include "worker/tp_vocab.h"

#include <math.h>
#include <string.h>

size_t kvf_tp_vocab_msg_bytes(int32_t rows) {
    return sizeof(kvf_tp_vocab_hdr_t) + (size_t)(rows > 0 ? rows : 0) * sizeof(kvf_tp_best_t);
}

kvf_tp_best_t kvf_tp_best_of(const float *row, int32_t n, int32_t id0) {
    kvf_tp_best_t b = {-INFINITY, -1};
    for (int32_t i = 0; i < n; i++) {
        const float v = row[i];
        if (isnan(v)) continue;
        if (b.id < 0 || v > b.val) b = (kvf_tp_best_t){v, id0 + i};
    }
    return b;
}

int32_t kvf_tp_best_merge(const void *gathered, int32_t size, int32_t rows, int32_t r) {
    const size_t msg = kvf_tp_vocab_msg_bytes(rows);
    kvf_tp_best_t best = {-INFINITY, -1};
    for (int32_t p = 0; p < size; p++) {  // rank order is id order: a tie keeps the earlier rank's id
        kvf_tp_best_t b;
        memcpy(&b, (const uint8_t *)gathered + (size_t)p * msg + sizeof(kvf_tp_vocab_hdr_t) + (size_t)r * sizeof b,
               sizeof b);
        if (b.id >= 0 && (best.id < 0 || b.val > best.val)) best = b;
    }
    return best.id < 0 ? 0 : best.id;
}

void kvf_tp_vocab_unshard(float *logits, const float *gathered, int32_t rows, int32_t vocab,
                          const kvf_tp_shard_t *sh) {
    const int32_t T = sh->size, vb = vocab / T, vr = vocab % T, S = sh->v_stride;
    for (int32_t p = 0; p < T; p++) {
        const int32_t v0 = p * vb + (p < vr ? p : vr), nv = vb + (p < vr);
        const float *src = gathered + (size_t)p * rows * S;  // (rows, nv) first
        for (int32_t r = 0; r < rows; r++)
            memcpy(logits + (size_t)r * vocab + v0, src + (size_t)r * nv, (size_t)nv * sizeof(float));
    }
}

size_t kvf_tp_vocab_scratch_bytes(const kvf_tp_shard_t *sh, int32_t rows) {
    const size_t T = (size_t)sh->size, R = (size_t)(rows > 0 ? rows : 0), S = (size_t)sh->v_stride;
    return (T + 1) * kvf_tp_vocab_msg_bytes(rows) + T * R * S * sizeof(float);
}

int kvf_tp_vocab_exchange(kvf_tp_t *tp, const kvf_tp_shard_t *sh, int32_t vocab, float *slice, int32_t rows,
                          int want_full, void *scratch, float *logits, int32_t *ids, int *full, kvf_err_t *err) {
    const int32_t T = kvf_tp_size(tp), nv = sh->nv, S = sh->v_stride;
    if (T != sh->size) return kvf_err_set(err, KVF_E_INTERNAL, "tp vocab: a shard of %d ranks in a group of %d",
                                          sh->size, T);
    if (full) *full = want_full != 0;
    if (T == 1) {  // the whole vocabulary is here
        if (want_full && logits) memcpy(logits, slice, (size_t)rows * nv * sizeof(float));
        if (!want_full && ids)
            for (int32_t r = 0; r < rows; r++) {
                kvf_tp_best_t b = kvf_tp_best_of(slice + (size_t)r * nv, nv, 0);
                ids[r] = b.id < 0 ? 0 : b.id;
            }
        return 0;
    }
    const size_t msg = kvf_tp_vocab_msg_bytes(rows);
    uint8_t *mine = scratch, *all = mine + msg;  // (msg), (T, msg)
    float *recv = (float *)(void *)(all + (size_t)T * msg);  // (T, rows x S)
    kvf_tp_vocab_hdr_t h = {want_full != 0, rows};
    memcpy(mine, &h, sizeof h);
    for (int32_t r = 0; r < rows; r++) {
        kvf_tp_best_t b = kvf_tp_best_of(slice + (size_t)r * nv, nv, sh->v0);
        memcpy(mine + sizeof h + (size_t)r * sizeof b, &b, sizeof b);
    }
    if (kvf_tp_all_gather(tp, mine, all, msg, err) != 0) return -1;
    for (int32_t p = 0; p < T; p++) {
        kvf_tp_vocab_hdr_t hp;
        memcpy(&hp, all + (size_t)p * msg, sizeof hp);
        if (hp.rows != rows)
            return kvf_err_set(err, KVF_E_INTERNAL, "tp vocab: rank %d has %d logit rows, rank %d has %d", p, hp.rows,
                               sh->rank, rows);
    }
    kvf_tp_vocab_hdr_t h0;
    memcpy(&h0, all, sizeof h0);
    if (full) *full = h0.want_full;
    if (!h0.want_full) {
        if (ids)
            for (int32_t r = 0; r < rows; r++) ids[r] = kvf_tp_best_merge(all, T, rows, r);
        return 0;
    }
    memset(slice + (size_t)rows * nv, 0, (size_t)rows * (S - nv) * sizeof(float));  // the padding
    if (kvf_tp_all_gather(tp, slice, recv, (size_t)rows * S * sizeof(float), err) != 0) return -1;
    if (logits) kvf_tp_vocab_unshard(logits, recv, rows, vocab, sh);
    return 0;
}
