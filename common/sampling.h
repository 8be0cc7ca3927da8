// common/sampling.h — per-request sampling parameters, shared by the wire
// protocol, the engine and the tools.
#ifndef KVF_SAMPLING_H
#define KVF_SAMPLING_H

#include <stdint.h>

#include "error.h"

#define KVF_MAX_STOP_IDS 16

typedef struct {
    float temperature;         // 0 = greedy (argmax); > 0 samples
    int32_t top_k;             // 0 = off
    float top_p;               // 1 = off; (0, 1]
    float min_p;               // 0 = off; [0, 1)
    float repetition_penalty;  // 1 = off; > 0 (HF semantics: logits of seen tokens /= p if > 0 else *= p)
    uint64_t seed;             // same seed, same output
    int32_t max_new_tokens;    // >= 1
    int32_t ignore_eos;        // 1: EOS does not stop
    int32_t n_stop_ids;        // extra stop token ids besides the model's EOS ids
    int32_t stop_ids[KVF_MAX_STOP_IDS];
} kvf_sampling_t;

// Greedy, 256 new tokens, seed 0, stop at EOS.
kvf_sampling_t kvf_sampling_default(void);

// 0 when every field is in range; -1 with err naming the field otherwise.
int kvf_sampling_validate(const kvf_sampling_t *s, kvf_err_t *err);

#endif
