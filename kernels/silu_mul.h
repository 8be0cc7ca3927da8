// kernels/silu_mul.h — the SwiGLU gate: out = silu(gate) * up.
#ifndef KVF_KERNELS_SILU_MUL_H
#define KVF_KERNELS_SILU_MUL_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// out[t, i] = silu(gate[t*ld + i]) * up[t*ld + i], computed in f32. ld is the row
// stride of gate and up (2*ff when both halves of one fused gate_up GEMM output).
int kvf_silu_mul(uint16_t *out,          // (n, ff) bf16, device
                 const uint16_t *gate,   // (n, ld) bf16, device: columns 0..ff-1 read
                 const uint16_t *up,     // (n, ld) bf16, device
                 int n, int ff, int ld, cudaStream_t stream, kvf_err_t *err);

// The same from f32 gate and up (a GEMM that wrote f32).
int kvf_silu_mul_f32(uint16_t *out,       // (n, ff) bf16, device
                     const float *gate,   // (n, ld) device
                     const float *up,     // (n, ld) device
                     int n, int ff, int ld, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
