// worker/backend.c — what every backend checks before it runs a step; the KV dtype names.
#include "backend.h"

#include <string.h>

int kvf_batch_validate(const kvf_backend_t *be, const kvf_batch_t *b, kvf_err_t *err) {
    const kvf_backend_opts_t *o = &be->opts;
    if (!b) return kvf_err_set(err, KVF_E_INVAL, "batch: missing");
    if (b->n_seqs < 1 || b->n_seqs > o->max_batch_size)
        return kvf_err_set(err, KVF_E_INVAL, "batch: %d sequences, allowed 1..%d (max_batch_size)", b->n_seqs,
                           o->max_batch_size);
    if (b->n_tokens < 1 || b->n_tokens > o->max_step_tokens)
        return kvf_err_set(err, KVF_E_INVAL, "batch: %d tokens, allowed 1..%d (max_step_tokens)", b->n_tokens,
                           o->max_step_tokens);
    if (!b->tokens || !b->n_new || !b->n_past || !b->block_table)
        return kvf_err_set(err, KVF_E_INVAL, "batch: tokens, n_new, n_past and block_table are required");
    if (b->max_blocks < 1) return kvf_err_set(err, KVF_E_INVAL, "batch: max_blocks %d < 1", b->max_blocks);
    int64_t rows = b->all_logits ? b->n_tokens : b->n_seqs;
    if (rows > o->max_logit_rows)
        return kvf_err_set(err, KVF_E_INVAL, "batch: %lld logit rows, allowed %d (max_logit_rows)", (long long)rows,
                           o->max_logit_rows);
    const int64_t max_ctx = (int64_t)o->max_blocks_per_seq * o->block_size;
    int64_t sum = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        int32_t nn = b->n_new[s], np = b->n_past[s];
        if (nn < 1) return kvf_err_set(err, KVF_E_INVAL, "batch: sequence %d has n_new %d < 1", s, nn);
        if (np < 0) return kvf_err_set(err, KVF_E_INVAL, "batch: sequence %d has n_past %d < 0", s, np);
        int64_t len = (int64_t)np + nn;
        if (len > max_ctx)
            return kvf_err_set(err, KVF_E_INVAL,
                               "batch: sequence %d reaches %lld tokens, more than %lld (max_blocks_per_seq x block_size)",
                               s, (long long)len, (long long)max_ctx);
        int64_t need = (len + o->block_size - 1) / o->block_size;
        if (need > b->max_blocks)
            return kvf_err_set(err, KVF_E_INVAL, "batch: sequence %d needs %lld blocks, its table holds %d", s,
                               (long long)need, b->max_blocks);
        const int32_t *row = b->block_table + (size_t)s * b->max_blocks;
        for (int64_t i = 0; i < need; i++)
            if (row[i] < 0 || row[i] >= be->n_blocks)
                return kvf_err_set(err, KVF_E_INVAL, "batch: sequence %d block %lld is id %d, outside 0..%d", s,
                                   (long long)i, row[i], be->n_blocks - 1);
        sum += nn;
        if (sum > b->n_tokens) break;
    }
    if (sum != b->n_tokens)
        return kvf_err_set(err, KVF_E_INVAL, "batch: n_new sums to %s%lld, n_tokens is %d",
                           sum > b->n_tokens ? "at least " : "", (long long)sum, b->n_tokens);
    for (int t = 0; t < b->n_tokens; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= be->cfg.vocab_size)
            return kvf_err_set(err, KVF_E_INVAL, "batch: token %d is id %d, outside the vocabulary 0..%d", t,
                               b->tokens[t], be->cfg.vocab_size - 1);
    return 0;
}

int kvf_kv_dtype_parse(const char *flag, const char *s, int32_t *out, kvf_err_t *err) {
    if (s && strcmp(s, "auto") == 0) return *out = KVF_KV_AUTO, 0;
    if (s && (strcmp(s, "fp8") == 0 || strcmp(s, "fp8_e4m3") == 0)) return *out = KVF_KV_FP8, 0;
    return kvf_err_set(err, KVF_E_INVAL, "%s '%s': expected auto or fp8 (fp8_e4m3)", flag, s ? s : "");
}

const char *kvf_kv_dtype_name(int32_t kv_dtype) { return kv_dtype == KVF_KV_FP8 ? "fp8" : "auto"; }

int kvf_quant_parse(const char *flag, const char *s, int32_t *out, kvf_err_t *err) {
    if (s && strcmp(s, "none") == 0) return *out = KVF_QUANT_NONE, 0;
    if (s && strcmp(s, "fp8") == 0) return *out = KVF_QUANT_FP8, 0;
    return kvf_err_set(err, KVF_E_INVAL, "%s '%s': expected none or fp8", flag, s ? s : "");
}

const char *kvf_quant_name(int32_t quant) { return quant == KVF_QUANT_FP8 ? "fp8" : "none"; }
