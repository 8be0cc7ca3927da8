// worker/sampler.h — turns one row of logits into a token id.
//
// Logits are processed in the order of Hugging Face's default logits processors:
// repetition_penalty (over prompt + generated ids), temperature, top_k, top_p,
// min_p, then the draw. temperature == 0 is greedy: argmax after the repetition
// penalty, the lowest id on ties.
//
// The random draw of generated token number `step` uses a PRNG seeded from a hash
// of (seed, step) only, so a request re-run from any point (a re-dispatched
// request resuming from the tokens already delivered) continues identically.
#ifndef KVF_SAMPLER_H
#define KVF_SAMPLER_H

#include <stdint.h>

#include "common/modelcfg.h"
#include "common/sampling.h"

// Scratch space sized for one vocabulary; one per thread that samples.
typedef struct kvf_sampler_s kvf_sampler_t;

// A new sampler for vocabularies of up to vocab ids, owned by the caller.
// Returns NULL when vocab < 1.
kvf_sampler_t *kvf_sampler_new(int32_t vocab);

// Frees the sampler; accepts NULL; nulls *self_p.
void kvf_sampler_destroy(kvf_sampler_t **self_p);

// Samples the next token. logits (vocab) are modified in place (penalised,
// scaled, filtered). history (n_history ids: prompt + generated so far) feeds
// the repetition penalty; ids outside [0, vocab) in it are ignored. step is the
// 0-based index of the token being generated. s should have passed
// kvf_sampling_validate. Returns the id in [0, vocab), or -1 when vocab is < 1 or
// larger than the sampler was made for, or logits/s is NULL. Allocates nothing.
int32_t kvf_sampler_sample(kvf_sampler_t *smp,
                           float *logits,            // (vocab), modified
                           int32_t vocab, const kvf_sampling_t *s,
                           const int32_t *history,   // (n_history)
                           int32_t n_history, int32_t step);

// The uniform number in [0, 1) of the draw of generated token `step` under seed
// (a hash of the two only). The draw takes the first kept token, in id order,
// whose cumulative probability exceeds it.
double kvf_sampler_uniform(uint64_t seed, int32_t step);

// 1 when id ends generation: one of the model's EOS ids (unless s->ignore_eos)
// or one of s->stop_ids; else 0.
int kvf_sampler_is_stop(const kvf_modelcfg_t *cfg, const kvf_sampling_t *s, int32_t id);

#endif
