// kernels/gemm_swiglu.h — the MLP's gate/up GEMM with SwiGLU in its epilogue:
// act = silu(x Wg^T) * (x Wu^T) in one kernel (sm_90a: TMA loads, warpgroup MMA),
// so the (n, 2 ff) gate/up product never goes to memory and no silu_mul runs.
//
// W is the gate and up rows interleaved in blocks of KVF_SWIGLU_BLOCK rows (block j:
// gate rows j B .. j B + B - 1, then the same up rows; kvf_swiglu_interleave makes it
// from Hugging Face's order), so one 256-row tile of W gives a thread both the gate
// and the up value of each of its output columns.
#ifndef KVF_KERNELS_GEMM_SWIGLU_H
#define KVF_KERNELS_GEMM_SWIGLU_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVF_SWIGLU_BLOCK 128

// 1 when kernels/ was built for sm_90a and the current device is compute capability 9.0.
int kvf_gemm_swiglu_available(void);

// act = silu(x @ Wg^T) * (x @ Wu^T), f32 accumulation, silu and the product in f32,
// one bf16 rounding. d_in a multiple of 64, ff of KVF_SWIGLU_BLOCK, pointers 16-byte
// aligned. Returns 0, or -1 with err set (KVF_E_INVAL: arguments; KVF_E_UNSUPPORTED: not available).
int kvf_gemm_swiglu(uint16_t *act,          // (n, ff) bf16, device
                    const uint16_t *x,      // (n, d_in) bf16, device
                    const uint16_t *w_gu,   // (2 ff, d_in) bf16, interleaved, device
                    int n, int d_in, int ff, cudaStream_t stream, kvf_err_t *err);

// Variants (kvf-kbench --only mlp, the tests; kvf_gemm_swiglu_variant_name): one CTA a
// 128 x 256 tile, or clusters of 2 CTAs sharing each W tile by multicast; the tile
// order's group size; the epilogue's stores from registers, or staged for a TMA store.
// kvf_gemm_swiglu runs KVF_SWIGLU_DEFAULT (v5: clusters, TMA store).
#define KVF_SWIGLU_VARIANTS 6
#define KVF_SWIGLU_DEFAULT 4
const char *kvf_gemm_swiglu_variant_name(int v);  // NULL when out of range
int kvf_gemm_swiglu_grid(int v, int n, int ff);    // the CTAs variant v launches (0: not available)
int kvf_gemm_swiglu_variant(int v, uint16_t *act, const uint16_t *x, const uint16_t *w_gu, int n, int d_in, int ff,
                            cudaStream_t stream, kvf_err_t *err);

// kvf-kbench: variant v without its epilogue (nothing written): what its MMA loop takes.
int kvf_gemm_swiglu_mainloop(int v, const uint16_t *x, const uint16_t *w_gu, int n, int d_in, int ff,
                             cudaStream_t stream, kvf_err_t *err);

// dst = src's rows in the interleaved order: src (2 ff, d_in) is the gate rows, then
// the up rows (a fused gate_up_proj). dst != src. Returns 0, or -1 with err set.
int kvf_swiglu_interleave(uint16_t *dst,        // (2 ff, d_in) bf16, device
                          const uint16_t *src,  // (2 ff, d_in) bf16, device
                          int ff, int d_in, cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
