// common/modelcfg.h — a Hugging Face config.json of a Llama-family decoder.
//
// LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM (no sliding window).
// Both forms of RoPE settings load: top-level "rope_theta"/"rope_scaling" and
// transformers 5's "rope_parameters".
#ifndef KVF_MODELCFG_H
#define KVF_MODELCFG_H

#include <stdint.h>

#include "error.h"

#define KVF_MAX_EOS 8

typedef enum {
    KVF_ROPE_DEFAULT = 0,
    KVF_ROPE_LINEAR = 1,
    KVF_ROPE_LLAMA3 = 2,
} kvf_rope_type;

typedef struct {
    char architecture[64];      // "LlamaForCausalLM", ...
    int32_t hidden_size;        // dim
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;         // == n_heads when the file has none
    int32_t head_dim;           // explicit "head_dim", else hidden_size / n_heads
    int32_t intermediate_size;
    int32_t vocab_size;
    int32_t max_position;       // max_position_embeddings
    float rms_norm_eps;
    int32_t tie_word_embeddings;
    int32_t attention_bias;     // q/k/v bias present (Qwen2: always; Llama: "attention_bias")
    // RoPE
    double rope_theta;
    kvf_rope_type rope_type;
    double rope_factor;              // linear and llama3
    double rope_low_freq_factor;     // llama3
    double rope_high_freq_factor;    // llama3
    int32_t rope_original_max_position;  // llama3 "original_max_position_embeddings"
    // special tokens (-1 when absent)
    int32_t bos_id;
    int32_t n_eos;
    int32_t eos_ids[KVF_MAX_EOS];
    char torch_dtype[16];       // as written ("float32", "bfloat16"...), may be empty
} kvf_modelcfg_t;

// Parses dir/config.json. Returns 0, or -1 with err naming the file and the
// field (a missing or out-of-range field, an unknown architecture, an
// unsupported rope type, a sliding window in use).
int kvf_modelcfg_load(const char *dir, kvf_modelcfg_t *cfg, kvf_err_t *err);

// Same from JSON text already in memory (name is used in messages).
int kvf_modelcfg_parse(const char *json_text, const char *name, kvf_modelcfg_t *cfg, kvf_err_t *err);

// Number of parameters implied by the config (embeddings, layers, norm, lm_head).
uint64_t kvf_modelcfg_n_params(const kvf_modelcfg_t *cfg);

#endif
