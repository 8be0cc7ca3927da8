// bench/roofline.h — the roofline of a step and of a workload (pure arithmetic).
//
// The yardstick of ../shared/DESIGN.md ("Performance yardsticks"): a step cannot
// take less than max(FLOPs / peak_flops, bytes / peak_bw), where
//   FLOPs = 2 x matmul params x new tokens            (q, k, v, o, gate, up, down)
//         + 4 x n_layers x n_heads x head_dim x qk_pairs  (QK^T and PV)
//         + 2 x vocab x hidden x logit rows            (lm_head, only rows computed)
//   bytes = weights streamed + KV read + KV written.
// "Weights streamed" is what the backend holds, less an untied embedding table:
// a step gathers only its tokens' rows of it (kvf_roofline_streamed_weights).
// Norms, RoPE, SiLU and sampling are left out: they are a rounding error in
// both FLOPs and bytes for every model this project runs.
//
// The workload floor is schedule-independent: every prompt token at peak FLOPs
// (prefill can always be batched into compute-bound steps), then the decode
// steps that cannot be avoided: the pool holds at most B sequences at once, so
// ceil(N / B) waves of O - 1 decode steps (the first output token comes from the
// prefill's logits), each at max(FLOPs / peak, (weights + KV read + KV written) / bw).
#ifndef KVF_ROOFLINE_H
#define KVF_ROOFLINE_H

#include <stdint.h>

#include "common/error.h"
#include "common/modelcfg.h"

// The machine and the number formats the backend uses.
typedef struct {
    double peak_flops;       // FLOP/s (H200 bf16 GEMM: 789e12)
    double peak_bw;          // bytes/s (H200 device copy: 4.2e12)
    double weight_bytes;     // weights streamed per step (kvf_roofline_streamed_weights)
    double kv_elem_bytes;    // bytes per KV element: 2 (bf16, cuda), 1 (E4M3, cuda fp8), 4 (f32, cpu)
} kvf_roofline_hw_t;

// The composition of one step (sums over its sequences).
typedef struct {
    int64_t n_tokens;           // new tokens (prefill chunks + decodes)
    int64_t n_logit_rows;       // rows the lm_head computes
    int64_t kv_tokens_read;     // tokens of KV the attention reads (context after the step)
    int64_t kv_tokens_written;  // tokens of KV written (= n_tokens)
    int64_t qk_pairs;           // (query, key) pairs attended, causal
} kvf_roofline_step_t;

typedef struct {
    double flops;
    double bytes;
    double seconds;  // max(flops / peak_flops, bytes / peak_bw)
} kvf_roofline_cost_t;

// An offline workload: N prompts of I tokens, O output tokens each, at most B
// sequences at once.
typedef struct {
    int64_t n_prompts;      // N >= 1
    int64_t input_len;      // I >= 1
    int64_t output_len;     // O >= 1
    int64_t batch;          // B >= 1 (kvf_roofline_batch)
} kvf_roofline_workload_t;

typedef struct {
    double prefill_seconds;  // prompt FLOPs at peak
    double decode_seconds;   // the waves of decode steps
    double seconds;          // the sum
    double flops, bytes;     // totals (prefill bytes not counted: it is timed by FLOPs)
    int64_t waves;           // ceil(N / B)
    int64_t decode_steps;    // waves x (O - 1)
} kvf_roofline_floor_t;

// Parameters multiplied per token in the decoder layers: n_layers x (q, k, v, o,
// gate, up, down). Embedding and lm_head excluded.
uint64_t kvf_roofline_layer_params(const kvf_modelcfg_t *cfg);

// Parameters of the lm_head (vocab x hidden; tied or not).
uint64_t kvf_roofline_lm_head_params(const kvf_modelcfg_t *cfg);

// Bytes of KV one token takes in the cache: 2 (K, V) x layers x kv heads x head_dim x elem.
double kvf_roofline_kv_bytes_per_token(const kvf_modelcfg_t *cfg, double kv_elem_bytes);

// Causal (query, key) pairs when n_new tokens follow n_past cached ones:
// n_new x n_past + n_new (n_new + 1) / 2. 0 for a negative argument.
int64_t kvf_roofline_qk_pairs(int64_t n_past, int64_t n_new);

// Weights a step must stream from memory: held_bytes (as the backend holds them)
// less the embedding table when it is not tied to the lm_head (a step only
// gathers its tokens' rows). weight_elem_bytes is the size of the embedding's
// element in the backend (2 bf16, 4 f32). Never below 0.
double kvf_roofline_streamed_weights(const kvf_modelcfg_t *cfg, double held_bytes, double weight_elem_bytes);

// The cost of one step. Returns 0, or -1 with err set (KVF_E_INVAL) for a
// non-positive peak, a negative count or inconsistent counts.
int kvf_roofline_step(const kvf_modelcfg_t *cfg, const kvf_roofline_hw_t *hw, const kvf_roofline_step_t *step,
                      kvf_roofline_cost_t *out, kvf_err_t *err);

// B: the most sequences of I + O tokens the pool holds at once (a sequence
// keeps I + O - 1 tokens of KV, in whole blocks), capped by max_batch_size and
// by N. Returns B >= 1, or -1 with err set when not even one sequence fits or an
// argument is out of range.
int64_t kvf_roofline_batch(int64_t n_blocks, int64_t block_size, int64_t max_batch_size, int64_t n_prompts,
                           int64_t input_len, int64_t output_len, kvf_err_t *err);

// The workload floor (see above). Returns 0, or -1 with err set (KVF_E_INVAL).
int kvf_roofline_floor(const kvf_modelcfg_t *cfg, const kvf_roofline_hw_t *hw, const kvf_roofline_workload_t *w,
                       kvf_roofline_floor_t *out, kvf_err_t *err);

#endif
