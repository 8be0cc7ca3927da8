// kernels/convert.h — element conversions and fills used when weights are loaded.
#ifndef KVF_KERNELS_CONVERT_H
#define KVF_KERNELS_CONVERT_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// out[i] = bf16(in[i]) (round to nearest even). Returns 0, or -1 with err set.
int kvf_convert_f32_to_bf16(uint16_t *out,   // (n) device
                            const float *in, // (n) device
                            size_t n, cudaStream_t stream, kvf_err_t *err);

// out[i] = float(in[i]).
int kvf_convert_bf16_to_f32(float *out,         // (n) device
                            const uint16_t *in, // (n) device
                            size_t n, cudaStream_t stream, kvf_err_t *err);

// out[i] = offset + scale * u, u uniform in (-1, 1), keyed by (seed, i) alone, so
// that the same seed gives the same tensor on any device or launch shape.
int kvf_fill_random_bf16(uint16_t *out,  // (n) device
                         size_t n, uint64_t seed, float offset, float scale,
                         cudaStream_t stream, kvf_err_t *err);
int kvf_fill_random_f32(float *out,      // (n) device
                        size_t n, uint64_t seed, float offset, float scale,
                        cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
