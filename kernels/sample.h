// kernels/sample.h — greedy token choice on the GPU from f32 logits (sampled
// rows: kernels/sample_rows.h).
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

// A vocab-parallel rank's best logit of each row (worker/tp_vocab.h's
// kvf_tp_best_t): best[2 r] = the bits of the row's highest non-NaN logit,
// best[2 r + 1] = id0 + its column (the lowest on ties); -inf and -1 for a row
// of NaN. Returns 0, or -1 with err set.
int kvf_argmax_best(int32_t *best,         // (n, 2) device
                    const float *logits,   // (n, vocab) device: ids [id0, id0 + vocab)
                    int n, int vocab, int id0, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
