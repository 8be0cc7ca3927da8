// kernels/repetition_penalty.h — Hugging Face's repetition penalty on the GPU, as
// worker/sampler.c applies it on the host: every distinct id in a row's history
// (prompt + generated ids) has its logit v turned into v * p when v < 0, else
// v / p, once however often it occurs; ids outside [0, vocab) are ignored.
#ifndef KVF_KERNELS_REPETITION_PENALTY_H
#define KVF_KERNELS_REPETITION_PENALTY_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// In place on logits. Row r's history is hist[hist_off[r] .. hist_off[r + 1]);
// rows with penalty[r] == 1 are left as they are. scratch holds one float per
// history id (the logits before any change, so that a repeated id is penalised
// once). Returns 0, or -1 with err set.
int kvf_repetition_penalty(float *logits,            // (n, vocab) device
                           const int32_t *hist,      // (hist_off[n]) device
                           const int32_t *hist_off,  // (n + 1) device
                           const float *penalty,     // (n) device
                           float *scratch,           // (hist_off[n]) device
                           int n, int vocab, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
