// kernels/quant_fp8.h — rows of bf16 values to E4M3 bytes and one f32 scale a row,
// the operand format of FP8 GEMMs (--quantization fp8; common/fp8.h gives the
// format and the scale rule). It quantizes the weights at load (one scale per
// output channel) and the attention output before o_proj (one scale per token).
#ifndef KVF_KERNELS_QUANT_FP8_H
#define KVF_KERNELS_QUANT_FP8_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// out[r, :] = e4m3(x[r, :] x 448 / amax), row_scale[r] = amax(|x[r, :]|) / 448
// (1 for a row of zeros). d a multiple of 8 and at most 32768, pointers 16-byte
// aligned. Returns 0, or -1 with err set (bad arguments KVF_E_INVAL, launch KVF_E_DEVICE).
int kvf_quant_fp8_rows(uint8_t *out,         // (n, d) E4M3, device
                       float *row_scale,     // (n) device
                       const uint16_t *x,    // (n, d) bf16, device
                       int64_t n, int d, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
