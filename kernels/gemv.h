// kernels/gemv.h — y = x @ W^T for a few rows of x (decode steps of small batches):
// each weight is read once from memory with 16-byte streaming loads and used for
// every row of x, f32 accumulation; a warp owns R output columns and reduces over
// its lanes. Where a tile GEMM's 64-row tile is mostly empty this reads W faster:
// H200, 1 row x 4096 -> 28672 3.97 TB/s against cuBLASLt's 3.63 (bench/RESULTS.md,
// session 16); from ~8 rows its FMAs (CUDA cores) set the pace and cuBLASLt wins.
// kvf_gemm hands it the calls of up to kvf_gemm_ctx_set_gemv_rows rows.
#ifndef KVF_KERNELS_GEMV_H
#define KVF_KERNELS_GEMV_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"
#include "kernels/gemm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVF_GEMV_MAX_ROWS 8

// y = x @ w^T + beta * y (beta 0: y is only written; a bf16 y is read, summed in f32 and rounded
// once), as kvf_gemm;
// 1 <= n <= KVF_GEMV_MAX_ROWS, d_in a multiple of 8, x and w 16-byte aligned.
// Returns 0, or -1 with err set (bad arguments KVF_E_INVAL; launch KVF_E_DEVICE).
int kvf_gemv(void *y,               // (n, d_out) bf16 or f32 per y_type, device
             kvf_gemm_out_t y_type,
             const uint16_t *x,     // (n, d_in) bf16, device
             const uint16_t *w,     // (d_out, d_in) bf16, device
             int n, int d_in, int d_out, float beta, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
