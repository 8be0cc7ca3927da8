// kernels/sample.h — token choice on the GPU from f32 logits.
#ifndef KVF_KERNELS_SAMPLE_H
#define KVF_KERNELS_SAMPLE_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// ids[r] = argmax_v logits[r, v]; ties go to the lowest id, NaN never wins
// (a row of NaN gives 0). Returns 0, or -1 with err set.
int kvf_argmax(int32_t *ids,          // (n) device
               const float *logits,   // (n, vocab) device
               int n, int vocab, cudaStream_t stream, kvf_err_t *err);

// Samples ids[r] from softmax(logits[r] / temperature[r]) by the Gumbel-max
// trick with noise keyed by (seeds[r], v) alone, so the same seed gives the same
// draw on any launch; temperature[r] <= 0 means greedy (argmax).
int kvf_sample_gumbel(int32_t *ids,            // (n) device
                      const float *logits,     // (n, vocab) device
                      const float *temperature,// (n) device
                      const uint64_t *seeds,   // (n) device
                      int n, int vocab, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
