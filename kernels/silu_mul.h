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

// The same from one (n, 2 ff) gate/up product whose columns come in blocks of `block`
// gate columns, then the same up columns (a W interleaved for kvf_gemm_swiglu): out[t,
// j block + w] = silu(gu[t, 2 j block + w]) * gu[t, 2 j block + block + w]. ff a multiple
// of block, block of 8, pointers 16-byte aligned.
int kvf_silu_mul_blocked(uint16_t *out,        // (n, ff) bf16, device
                         const uint16_t *gu,   // (n, 2 ff) bf16, device
                         int n, int ff, int block, cudaStream_t stream, kvf_err_t *err);

// The same from f32 gate and up (a GEMM that wrote f32).
int kvf_silu_mul_f32(uint16_t *out,       // (n, ff) bf16, device
                     const float *gate,   // (n, ld) device
                     const float *up,     // (n, ld) device
                     int n, int ff, int ld, cudaStream_t stream, kvf_err_t *err);

// FP8 GEMM input (--quantization fp8): each row of silu(gate) * up as E4M3 bytes
// of row x 448 / amax, row_scale[t] = the row's amax / 448 (common/fp8.h). ff and
// ld multiples of 8, ff <= 32768, pointers 16-byte aligned.
int kvf_silu_mul_fp8(uint8_t *out,          // (n, ff) E4M3, device
                     float *row_scale,      // (n) device
                     const uint16_t *gate,  // (n, ld) bf16, device
                     const uint16_t *up,    // (n, ld) bf16, device
                     int n, int ff, int ld, cudaStream_t stream, kvf_err_t *err);

// kvf_silu_mul_fp8 by variant (kvf-kbench, test_kernels_fp8): 0 a block of up to 1024 threads a row,
// one block an SM; 1 the same capped at 32 registers a thread, two blocks an SM (ff <= 16384).
#define KVF_SILU_FP8_VARIANTS 2
#define KVF_SILU_FP8_DEFAULT 1
int kvf_silu_mul_fp8_variant(int variant, uint8_t *out, float *row_scale, const uint16_t *gate, const uint16_t *up,
                             int n, int ff, int ld, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
