// bench/roofline.c — see roofline.h.
#include "bench/roofline.h"

#include <math.h>
#include <string.h>

uint64_t kvf_roofline_layer_params(const kvf_modelcfg_t *cfg) {
    uint64_t h = (uint64_t)cfg->hidden_size, im = (uint64_t)cfg->intermediate_size;
    uint64_t q = (uint64_t)cfg->n_heads * (uint64_t)cfg->head_dim;
    uint64_t kv = (uint64_t)cfg->n_kv_heads * (uint64_t)cfg->head_dim;
    uint64_t layer = h * q + 2 * h * kv + q * h  // q, k, v, o
                     + 3 * h * im;               // gate, up, down
    return (uint64_t)cfg->n_layers * layer;
}

uint64_t kvf_roofline_lm_head_params(const kvf_modelcfg_t *cfg) {
    return (uint64_t)cfg->vocab_size * (uint64_t)cfg->hidden_size;
}

double kvf_roofline_kv_bytes_per_token(const kvf_modelcfg_t *cfg, double kv_elem_bytes) {
    return 2.0 * cfg->n_layers * cfg->n_kv_heads * cfg->head_dim * kv_elem_bytes;
}

int64_t kvf_roofline_qk_pairs(int64_t n_past, int64_t n_new) {
    if (n_past < 0 || n_new < 0) return 0;
    return n_new * n_past + n_new * (n_new + 1) / 2;
}

double kvf_roofline_streamed_weights(const kvf_modelcfg_t *cfg, double held_bytes, double weight_elem_bytes) {
    double b = held_bytes;
    if (!cfg->tie_word_embeddings) b -= (double)kvf_roofline_lm_head_params(cfg) * weight_elem_bytes;
    return b > 0 ? b : 0;
}

// ---------------------------------------------------------------- checks

static int s_check_cfg(const kvf_modelcfg_t *cfg, kvf_err_t *err) {
    if (!cfg || cfg->hidden_size < 1 || cfg->n_layers < 1 || cfg->n_heads < 1 || cfg->n_kv_heads < 1 ||
        cfg->head_dim < 1 || cfg->intermediate_size < 1 || cfg->vocab_size < 1)
        return kvf_err_set(err, KVF_E_INVAL, "roofline: the model config has a non-positive size");
    return 0;
}

static int s_check_hw(const kvf_roofline_hw_t *hw, kvf_err_t *err) {
    if (!hw) return kvf_err_set(err, KVF_E_INVAL, "roofline: no machine given");
    if (!(hw->peak_flops > 0) || !isfinite(hw->peak_flops))
        return kvf_err_set(err, KVF_E_INVAL, "roofline: peak FLOP/s %g must be > 0", hw->peak_flops);
    if (!(hw->peak_bw > 0) || !isfinite(hw->peak_bw))
        return kvf_err_set(err, KVF_E_INVAL, "roofline: peak bandwidth %g must be > 0", hw->peak_bw);
    if (!(hw->weight_bytes >= 0) || !isfinite(hw->weight_bytes))
        return kvf_err_set(err, KVF_E_INVAL, "roofline: weight bytes %g must be >= 0", hw->weight_bytes);
    if (!(hw->kv_elem_bytes > 0) || !isfinite(hw->kv_elem_bytes))
        return kvf_err_set(err, KVF_E_INVAL, "roofline: KV element bytes %g must be > 0", hw->kv_elem_bytes);
    return 0;
}

// FLOPs of attention per (query, key) pair, all layers and heads: QK^T and PV,
// one multiply-add (2 FLOPs) per head_dim element each.
static double s_attn_flops_per_pair(const kvf_modelcfg_t *cfg) {
    return 4.0 * cfg->n_layers * cfg->n_heads * cfg->head_dim;
}

// ---------------------------------------------------------------- one step

int kvf_roofline_step(const kvf_modelcfg_t *cfg, const kvf_roofline_hw_t *hw, const kvf_roofline_step_t *step,
                      kvf_roofline_cost_t *out, kvf_err_t *err) {
    if (s_check_cfg(cfg, err) || s_check_hw(hw, err)) return -1;
    if (!step || !out) return kvf_err_set(err, KVF_E_INVAL, "roofline: no step given");
    if (step->n_tokens < 0 || step->n_logit_rows < 0 || step->kv_tokens_read < 0 || step->kv_tokens_written < 0 ||
        step->qk_pairs < 0)
        return kvf_err_set(err, KVF_E_INVAL, "roofline: a step count is negative");
    if (step->n_logit_rows > step->n_tokens || step->kv_tokens_written > step->kv_tokens_read ||
        step->qk_pairs < step->n_tokens)
        return kvf_err_set(err, KVF_E_INVAL,
                           "roofline: inconsistent step (%lld tokens, %lld logit rows, %lld KV read, %lld written, "
                           "%lld qk pairs)",
                           (long long)step->n_tokens, (long long)step->n_logit_rows, (long long)step->kv_tokens_read,
                           (long long)step->kv_tokens_written, (long long)step->qk_pairs);
    double flops = 2.0 * (double)kvf_roofline_layer_params(cfg) * (double)step->n_tokens +
                   s_attn_flops_per_pair(cfg) * (double)step->qk_pairs +
                   2.0 * (double)kvf_roofline_lm_head_params(cfg) * (double)step->n_logit_rows;
    double kvt = kvf_roofline_kv_bytes_per_token(cfg, hw->kv_elem_bytes);
    double bytes = step->n_tokens > 0
                       ? hw->weight_bytes + kvt * (double)(step->kv_tokens_read + step->kv_tokens_written)
                       : 0.0;
    out->flops = flops;
    out->bytes = bytes;
    out->seconds = fmax(flops / hw->peak_flops, bytes / hw->peak_bw);
    return 0;
}

// ---------------------------------------------------------------- the workload floor

int64_t kvf_roofline_batch(int64_t n_blocks, int64_t block_size, int64_t max_batch_size, int64_t n_prompts,
                           int64_t input_len, int64_t output_len, kvf_err_t *err) {
    if (n_blocks < 1 || block_size < 1 || max_batch_size < 1 || n_prompts < 1 || input_len < 1 || output_len < 1)
        return kvf_err_set(err, KVF_E_INVAL,
                           "roofline: batch needs positive blocks (%lld), block size (%lld), max batch (%lld), "
                           "prompts (%lld), input (%lld) and output (%lld) lengths",
                           (long long)n_blocks, (long long)block_size, (long long)max_batch_size,
                           (long long)n_prompts, (long long)input_len, (long long)output_len);
    int64_t kv_tokens = input_len + output_len - 1;  // the last sampled token is never run
    int64_t per_seq = (kv_tokens + block_size - 1) / block_size;
    int64_t b = n_blocks / per_seq;
    if (b < 1)
        return kvf_err_set(err, KVF_E_INVAL, "roofline: a pool of %lld blocks cannot hold one sequence of %lld blocks",
                           (long long)n_blocks, (long long)per_seq);
    if (b > max_batch_size) b = max_batch_size;
    if (b > n_prompts) b = n_prompts;
    return b;
}

// The decode steps of one wave of b sequences: steps k = 1 .. O - 1, each adding
// one token per sequence after I + k - 1 cached ones.
static void s_wave(const kvf_modelcfg_t *cfg, const kvf_roofline_hw_t *hw, int64_t b, int64_t in, int64_t out_len,
                   double *seconds, double *flops, double *bytes) {
    double kvt = kvf_roofline_kv_bytes_per_token(cfg, hw->kv_elem_bytes);
    double per_tok = 2.0 * (double)kvf_roofline_layer_params(cfg) + 2.0 * (double)kvf_roofline_lm_head_params(cfg);
    double per_pair = s_attn_flops_per_pair(cfg);
    *seconds = *flops = *bytes = 0;
    for (int64_t k = 1; k < out_len; k++) {
        double ctx = (double)(in + k);  // context after the step, also the pairs of its one query
        double f = (double)b * (per_tok + per_pair * ctx);
        double by = hw->weight_bytes + (double)b * kvt * (ctx + 1.0);
        *seconds += fmax(f / hw->peak_flops, by / hw->peak_bw);
        *flops += f;
        *bytes += by;
    }
}

int kvf_roofline_floor(const kvf_modelcfg_t *cfg, const kvf_roofline_hw_t *hw, const kvf_roofline_workload_t *w,
                       kvf_roofline_floor_t *out, kvf_err_t *err) {
    if (s_check_cfg(cfg, err) || s_check_hw(hw, err)) return -1;
    if (!w || !out) return kvf_err_set(err, KVF_E_INVAL, "roofline: no workload given");
    if (w->n_prompts < 1 || w->input_len < 1 || w->output_len < 1 || w->batch < 1)
        return kvf_err_set(err, KVF_E_INVAL,
                           "roofline: workload needs N, I, O and B >= 1 (got %lld, %lld, %lld, %lld)",
                           (long long)w->n_prompts, (long long)w->input_len, (long long)w->output_len,
                           (long long)w->batch);
    memset(out, 0, sizeof *out);
    const double n = (double)w->n_prompts;
    // prefill: every prompt token through the layers, causal attention over the
    // prompt, and the lm_head for the prompt's last token (the first output)
    double prompt_flops = 2.0 * (double)kvf_roofline_layer_params(cfg) * (double)w->input_len +
                          s_attn_flops_per_pair(cfg) * (double)kvf_roofline_qk_pairs(0, w->input_len) +
                          2.0 * (double)kvf_roofline_lm_head_params(cfg);
    out->prefill_seconds = n * prompt_flops / hw->peak_flops;
    out->flops = n * prompt_flops;

    int64_t b = w->batch < w->n_prompts ? w->batch : w->n_prompts;
    int64_t full = w->n_prompts / b, rest = w->n_prompts % b;
    double s, f, by;
    s_wave(cfg, hw, b, w->input_len, w->output_len, &s, &f, &by);
    out->decode_seconds = (double)full * s;
    out->flops += (double)full * f;
    out->bytes += (double)full * by;
    if (rest > 0) {
        s_wave(cfg, hw, rest, w->input_len, w->output_len, &s, &f, &by);
        out->decode_seconds += s;
        out->flops += f;
        out->bytes += by;
    }
    out->waves = full + (rest > 0);
    out->decode_steps = out->waves * (w->output_len - 1);
    out->seconds = out->prefill_seconds + out->decode_seconds;
    return 0;
}
