// kernels/gemm.h — y = x @ W^T through cuBLASLt: bf16 (or E4M3 with row scales) in,
// f32 accumulation, bf16 or f32 out, W in Hugging Face (out_features, in_features) layout.
//
// The context owns the cuBLASLt handle, a cache of matmul descriptors keyed by
// exact shape, and the heuristic's picks keyed by row bucket (multiples of 64
// rows up to 512, of 512 above): a heuristic query costs milliseconds of host
// time, so a step with a row count not seen before reuses its bucket's pick
// instead of asking again (kvf_gemm_prepare asks for every bucket up front).
// The workspace is the caller's device memory, lent for the context's life.
#ifndef KVF_KERNELS_GEMM_H
#define KVF_KERNELS_GEMM_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KVF_GEMM_OUT_BF16 = 0,
    KVF_GEMM_OUT_F32 = 1,
} kvf_gemm_out_t;

typedef struct kvf_gemm_ctx_s kvf_gemm_ctx_t;

// Creates the handle on the current device. workspace (device, >= 256-byte
// aligned, may be NULL when workspace_bytes is 0) stays owned by the caller and
// must outlive the context. Returns a new context, or NULL with err set.
kvf_gemm_ctx_t *kvf_gemm_ctx_new(void *workspace, size_t workspace_bytes, kvf_err_t *err);

// Destroys the handle and the cached descriptors; accepts NULL; nulls *self_p.
void kvf_gemm_ctx_destroy(kvf_gemm_ctx_t **self_p);

// y = x @ w^T + beta * y (beta 0: y is only written). Pointers 16-byte aligned.
// Returns 0, or -1 with err set (bad arguments KVF_E_INVAL, cuBLASLt KVF_E_DEVICE).
int kvf_gemm(kvf_gemm_ctx_t *ctx,
             void *y,               // (n, d_out) bf16 or f32 per y_type, device
             kvf_gemm_out_t y_type,
             const uint16_t *x,     // (n, d_in) bf16, device
             const uint16_t *w,     // (d_out, d_in) bf16, device
             int n, int d_in, int d_out, float beta, cudaStream_t stream, kvf_err_t *err);

// Start-up: asks the heuristic for every row bucket of this shape up to n_max
// rows (beta 0, or beta != 0 when accumulate), so later kvf_gemm calls of any
// n <= n_max query nothing. Returns 0, or -1 with err set.
int kvf_gemm_prepare(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out, int accumulate,
                     kvf_err_t *err);

// y = (x_scale[r] * w_scale[o]) * sum_k x8[r, k] w8[o, k]: FP8 GEMMs (--quantization
// fp8), E4M3 operands with one f32 scale per row of each (common/fp8.h's row format;
// cuBLASLt's outer-vector scaling). d_in and d_out multiples of 16, pointers 16-byte
// aligned. Returns 0, or -1 with err set.
int kvf_gemm_fp8(kvf_gemm_ctx_t *ctx,
                 void *y,               // (n, d_out) bf16 or f32 per y_type, device
                 kvf_gemm_out_t y_type,
                 const uint8_t *x,      // (n, d_in) E4M3, device
                 const float *x_scale,  // (n) device
                 const uint8_t *w,      // (d_out, d_in) E4M3, device
                 const float *w_scale,  // (d_out) device
                 int n, int d_in, int d_out, cudaStream_t stream, kvf_err_t *err);

// FP8 GEMMs without the periodic promotion of partial sums to f32 (cuBLASLt's fast
// accumulation: faster, less accurate). Off by default; set before the first
// kvf_gemm_fp8 / kvf_gemm_prepare_fp8 of the context. Returns 0, or -1 with err set.
int kvf_gemm_ctx_set_fp8_fast_accum(kvf_gemm_ctx_t *ctx, int on, kvf_err_t *err);

// Before the first GEMM: picks for kernels that will run on sms SMs (cuBLASLt's
// SM_COUNT_TARGET), e.g. on the streams of a green context holding that many, so
// that a persistent kernel does not launch a grid for the whole device; 0 (the
// default): the whole device. Returns 0, or -1 with err set.
int kvf_gemm_ctx_set_sm_count(kvf_gemm_ctx_t *ctx, int sms, kvf_err_t *err);

// Calls of kvf_gemm with at most rows rows (0..KVF_GEMV_MAX_ROWS of kernels/gemv.h; 0, the
// default: none) run kvf_gemv instead of cuBLASLt when it takes them (d_in a multiple of 8,
// x and w 16-byte aligned): on an H200 cuBLASLt's picks read W for a few
// rows well below the memory's bandwidth. Returns 0, or -1 with err set.
int kvf_gemm_ctx_set_gemv_rows(kvf_gemm_ctx_t *ctx, int rows, kvf_err_t *err);

// kvf_gemm_prepare for kvf_gemm_fp8's shapes.
int kvf_gemm_prepare_fp8(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out, kvf_err_t *err);

// The row bucket of n rows (n >= 1): the row count whose pick serves n (64, 128, ...,
// 512, then multiples of 512). kvf_gemm_bucket(b + 1) is the bucket after bucket b.
int kvf_gemm_bucket(int n);

// Heuristic queries this context has made (for tests and diagnostics).
uint64_t kvf_gemm_heuristic_calls(const kvf_gemm_ctx_t *ctx);

// How kvf_gemm_tune times candidates: reps calls a candidate (default 8) in each
// of rounds rounds (default 1, at most 15) that take the candidates in turn; a
// candidate's time is its median round. Long reps and several rounds rank the
// candidates at the clock a card holds under sustained load (an H200 at its power
// limit), not at a cool card's boost. Returns 0, or -1 with err set.
int kvf_gemm_ctx_set_tune(kvf_gemm_ctx_t *ctx, int reps, int rounds, kvf_err_t *err);

// Start-up only (it synchronizes the stream): times cuBLASLt's heuristic
// candidates for this shape (beta 0) on the given buffers (x should hold
// non-zero data: zeros run faster) and keeps the fastest for later kvf_gemm
// calls of the shape, pinned in the context's cache. y is overwritten. Sets
// *heuristic_ms / *best_ms (either may be NULL) to the heuristic's first pick
// and the pick kept, per call. Returns 0, or -1 with err set.
int kvf_gemm_tune(kvf_gemm_ctx_t *ctx,
                  void *y,               // (n, d_out) bf16 or f32 per y_type, device
                  kvf_gemm_out_t y_type,
                  const uint16_t *x,     // (n, d_in) bf16, device
                  const uint16_t *w,     // (d_out, d_in) bf16, device
                  int n, int d_in, int d_out, cudaStream_t stream, float *heuristic_ms, float *best_ms,
                  kvf_err_t *err);

// What kvf_gemm_tune_buckets did: buckets timed, buckets whose pick changed, and
// the sums over the buckets of the heuristic's pick's and the kept pick's ms a call.
typedef struct {
    int buckets, changed;
    double heuristic_ms, kept_ms;
} kvf_gemm_tune_sum_t;

// Start-up only (it synchronizes the stream): for every row bucket (64, 128, ...,
// 512, then 1024) up to min(n_max, 1024) of this shape (beta 0, or beta 1 when accumulate: y is
// then read too), times the heuristic's bucket pick against
// its max_cand best candidates (kvf_gemm_ctx_set_tune's reps and rounds), each
// call reading the next of the nw weight matrices w[i] (so that a small W comes
// from memory, not the L2, as in a step), and keeps the fastest as the bucket's
// pick when it is at least 2% faster. The heuristic's pick for a bucket is its
// first choice, not always its fastest: at 448 rows x 4096 -> 28672 on an H200 it
// ran 0.29 ms a call where another took 0.17. x should hold non-zero data (zeros
// run faster); y is overwritten. Adds to *sum (may be NULL). Returns 0, or -1 with err set.
int kvf_gemm_tune_buckets(kvf_gemm_ctx_t *ctx,
                          void *y,                   // (n_max, d_out) bf16 or f32 per y_type, device
                          kvf_gemm_out_t y_type, int accumulate,
                          const uint16_t *x,         // (n_max, d_in) bf16, device
                          const uint16_t *const *w,  // nw x (d_out, d_in) bf16, device
                          int nw, int n_max, int d_in, int d_out, int max_cand, cudaStream_t stream,
                          kvf_gemm_tune_sum_t *sum, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
