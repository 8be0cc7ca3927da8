// common/sampling.c — see sampling.h.
#include "sampling.h"

#include <math.h>
#include <string.h>

kvf_sampling_t kvf_sampling_default(void) {
    kvf_sampling_t s;
    memset(&s, 0, sizeof s);
    s.temperature = 0.0f;
    s.top_k = 0;
    s.top_p = 1.0f;
    s.min_p = 0.0f;
    s.repetition_penalty = 1.0f;
    s.seed = 0;
    s.max_new_tokens = 256;
    return s;
}

int kvf_sampling_validate(const kvf_sampling_t *s, kvf_err_t *err) {
    if (!isfinite(s->temperature) || s->temperature < 0 || s->temperature > 100)
        return kvf_err_set(err, KVF_E_INVAL, "temperature %g must be in [0, 100]", s->temperature);
    if (s->top_k < 0) return kvf_err_set(err, KVF_E_INVAL, "top_k %d must be >= 0", s->top_k);
    if (!isfinite(s->top_p) || s->top_p <= 0 || s->top_p > 1)
        return kvf_err_set(err, KVF_E_INVAL, "top_p %g must be in (0, 1]", s->top_p);
    if (!isfinite(s->min_p) || s->min_p < 0 || s->min_p >= 1)
        return kvf_err_set(err, KVF_E_INVAL, "min_p %g must be in [0, 1)", s->min_p);
    if (!isfinite(s->repetition_penalty) || s->repetition_penalty <= 0 || s->repetition_penalty > 100)
        return kvf_err_set(err, KVF_E_INVAL, "repetition_penalty %g must be in (0, 100]", s->repetition_penalty);
    if (s->max_new_tokens < 1)
        return kvf_err_set(err, KVF_E_INVAL, "max_new_tokens %d must be >= 1", s->max_new_tokens);
    if (s->n_stop_ids < 0 || s->n_stop_ids > KVF_MAX_STOP_IDS)
        return kvf_err_set(err, KVF_E_INVAL, "at most %d stop token ids", KVF_MAX_STOP_IDS);
    for (int i = 0; i < s->n_stop_ids; i++)
        if (s->stop_ids[i] < 0) return kvf_err_set(err, KVF_E_INVAL, "stop token id %d is negative", s->stop_ids[i]);
    return 0;
}
