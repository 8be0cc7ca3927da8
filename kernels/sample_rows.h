// kernels/sample_rows.h — sampled token choice on the GPU: temperature, top-k,
// top-p, min-p and the draw, as worker/sampler.c does them on the host, so a
// sampled step copies back one id a row instead of its vocab-wide logits.
//
// Per row, with v = logit / temperature (IEEE division, as the host):
//   candidates  the finite v;
//   top_k       (0 < k < candidates) keep v >= the k-th largest v (ties kept);
//   top_p       (p < 1, > 1 candidate) in increasing (v, then decreasing id)
//               order, drop the longest run of candidates whose probability mass
//               stays <= (1 - p) of the total, so at least the top one stays;
//   min_p       (> 0, > 1 candidate) keep v == max or kvf_sample_exp(v - max) >= min_p;
//   draw        the first id, in increasing id order over what is kept, whose
//               cumulative mass exceeds u times the total.
// Masses are common/sample_mass.h's (float exp from explicit fma steps, in
// fixed point, summed as integers), as worker/sampler.c counts them: a row's
// choice is the host sampler's, bit for bit, and the same on every launch.
// temperature <= 0 is greedy: the argmax of the logits, lowest id on ties, NaN
// never winning (kvf_argmax's rule). The repetition penalty goes before, in
// kernels/repetition_penalty.h.
#ifndef KVF_KERNELS_SAMPLE_ROWS_H
#define KVF_KERNELS_SAMPLE_ROWS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// One row's settings (24 bytes, 8-byte aligned in arrays).
typedef struct {
    float temperature;  // <= 0: greedy
    int32_t top_k;      // <= 0: off
    float top_p;        // >= 1: off; else in (0, 1)
    float min_p;        // <= 0: off
    double u;           // the draw's uniform number in [0, 1) (worker/sampler.h's kvf_sampler_uniform)
} kvf_sample_params_t;

// ids[r] = the token of row r. logits are read only. Returns 0, or -1 with err set.
int kvf_sample_rows(int32_t *ids,                        // (n) device
                    const float *logits,                 // (n, vocab) device
                    const kvf_sample_params_t *params,   // (n) device
                    int n, int vocab, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
