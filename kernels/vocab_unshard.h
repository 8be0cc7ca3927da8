// kernels/vocab_unshard.h — a vocab-parallel lm_head's logits, gathered from the
// ranks of a TP group, back in id order (worker/tp_vocab.h's exchange).
#ifndef KVF_KERNELS_VOCAB_UNSHARD_H
#define KVF_KERNELS_VOCAB_UNSHARD_H

#include <cuda_runtime_api.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// The vocabulary split over size ranks as worker/tp_shard.h splits it: rank p
// holds ids [v0_p, v0_p + nv_p), nv_p = vocab / size + (p < vocab % size).
// gathered holds size blocks of rows x stride floats (stride >= every nv_p), rank
// p's starting with its logits (rows, nv_p); logits[r, v0_p + i] = that block's
// [r, i]. Returns 0, or -1 with err set.
int kvf_vocab_unshard(float *logits,          // (rows, vocab) device
                      const float *gathered,  // (size, rows x stride) device
                      int rows, int vocab, int size, int stride, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
