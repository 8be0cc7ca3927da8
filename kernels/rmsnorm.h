// kernels/rmsnorm.h — RMSNorm of the residual stream (f32, or bf16) into bf16 activations
// (or, for FP8 GEMMs, E4M3 rows with a scale each).
#ifndef KVF_KERNELS_RMSNORM_H
#define KVF_KERNELS_RMSNORM_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// out = x / sqrt(mean(x^2) + eps) * w per row, accumulated in f32.
// Returns 0, or -1 with err set (bad arguments: KVF_E_INVAL; launch: KVF_E_DEVICE).
int kvf_rmsnorm(uint16_t *out,      // (n, dim) bf16, device
                const float *x,     // (n, dim) device
                const float *w,     // (dim) device
                int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

// The same over a bf16 residual stream (a bf16 model's, as transformers runs it).
int kvf_rmsnorm_bf16(uint16_t *out,      // (n, dim) bf16, device
                     const uint16_t *x,  // (n, dim) bf16, device
                     const float *w,     // (dim) device
                     int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

// Fused with the residual add: residual += x; out = rmsnorm(residual) * w.
int kvf_rmsnorm_add(uint16_t *out,       // (n, dim) bf16, device
                    float *residual,     // (n, dim) device, updated in place
                    const uint16_t *x,   // (n, dim) bf16, device
                    const float *w,      // (dim) device
                    int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

// The same with an f32 x (a GEMM that wrote f32, so the sum sees no bf16 rounding).
int kvf_rmsnorm_add_f32(uint16_t *out,       // (n, dim) bf16, device
                        float *residual,     // (n, dim) device, updated in place
                        const float *x,      // (n, dim) device
                        const float *w,      // (dim) device
                        int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

// FP8 GEMM inputs (--quantization fp8): the normed rows as E4M3 bytes of
// row x 448 / amax, row_scale[t] = the normed row's amax / 448 (common/fp8.h),
// quantized from f32. dim a multiple of 4, pointers 16-byte aligned.
int kvf_rmsnorm_fp8(uint8_t *out,         // (n, dim) E4M3, device
                    float *row_scale,     // (n) device
                    const float *x,       // (n, dim) device
                    const float *w,       // (dim) device
                    int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

int kvf_rmsnorm_add_fp8(uint8_t *out,        // (n, dim) E4M3, device
                        float *row_scale,    // (n) device
                        float *residual,     // (n, dim) device, updated in place
                        const uint16_t *x,   // (n, dim) bf16, device
                        const float *w,      // (dim) device
                        int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

int kvf_rmsnorm_add_f32_fp8(uint8_t *out,        // (n, dim) E4M3, device
                            float *row_scale,    // (n) device
                            float *residual,     // (n, dim) device, updated in place
                            const float *x,      // (n, dim) device
                            const float *w,      // (dim) device
                            int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
