// kernels/embed.h — row gathers: the token embedding and the pick of rows before lm_head.
#ifndef KVF_KERNELS_EMBED_H
#define KVF_KERNELS_EMBED_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// out[t, :] = float(table[ids[t], :]); an id outside [0, vocab) gives a row of zeros
// (the backend rejects such ids on the host first). Returns 0, or -1 with err set.
int kvf_embed_f32(float *out,              // (n, dim) device
                  const uint16_t *table,   // (vocab, dim) bf16, device
                  const int32_t *ids,      // (n) device
                  int n, int dim, int vocab, cudaStream_t stream, kvf_err_t *err);

// A vocab-parallel shard of the table (worker/tp_shard.h): out[t, :] =
// float(table[ids[t] - id0, :]) for ids in [id0, id0 + n_rows), zeros for the
// others (the rank that holds them adds its row in the all-reduce that follows).
int kvf_embed_shard_f32(float *out,             // (n, dim) device
                        const uint16_t *table,  // (n_rows, dim) bf16, device: ids [id0, id0 + n_rows)
                        const int32_t *ids,     // (n) device
                        int n, int dim, int id0, int n_rows, cudaStream_t stream, kvf_err_t *err);

// out[t, :] = src[idx[t], :] (bf16 rows); idx outside [0, n_src) gives zeros.
int kvf_gather_rows_bf16(uint16_t *out,        // (n, dim) bf16, device
                         const uint16_t *src,  // (n_src, dim) bf16, device
                         const int32_t *idx,   // (n) device
                         int n, int dim, int n_src, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
