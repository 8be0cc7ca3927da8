// kernels/gemm.c — see gemm.h.
//
// Row-major y (n, d_out) = x (n, d_in) @ W^T is, in cuBLAS's column-major terms,
// Y^T (d_out x n) = op_T(W as a d_in x d_out matrix) * X^T (d_in x n).
#include "kernels/gemm.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/check.h"

#define KVF_GEMM_CACHE 32

typedef struct {
    int valid;
    int n, d_in, d_out, y_type, accumulate;
    int pinned;  // picked by kvf_gemm_tune: never evicted
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} s_entry_t;

struct kvf_gemm_ctx_s {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_bytes;
    s_entry_t cache[KVF_GEMM_CACHE];
    int next;  // round-robin victim
};

static void s_entry_clear(s_entry_t *e) {
    if (e->op) cublasLtMatmulDescDestroy(e->op);
    if (e->a) cublasLtMatrixLayoutDestroy(e->a);
    if (e->b) cublasLtMatrixLayoutDestroy(e->b);
    if (e->c) cublasLtMatrixLayoutDestroy(e->c);
    memset(e, 0, sizeof *e);
}

kvf_gemm_ctx_t *kvf_gemm_ctx_new(void *workspace, size_t workspace_bytes, kvf_err_t *err) {
    if (workspace_bytes && !workspace) {
        kvf_err_set(err, KVF_E_INVAL, "kvf_gemm_ctx_new: workspace_bytes %zu without a workspace", workspace_bytes);
        return NULL;
    }
    kvf_gemm_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        kvf_err_set(err, KVF_E_NOMEM, "kvf_gemm_ctx_new: out of host memory");
        return NULL;
    }
    cublasStatus_t st = cublasLtCreate(&ctx->handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        kvf_check_fail(err, "cublasLtCreate(&ctx->handle)", st, cublasLtGetStatusString(st), __FILE__, __LINE__);
        free(ctx);
        return NULL;
    }
    ctx->workspace = workspace;
    ctx->workspace_bytes = workspace_bytes;
    return ctx;
}

void kvf_gemm_ctx_destroy(kvf_gemm_ctx_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_gemm_ctx_t *ctx = *self_p;
    for (int i = 0; i < KVF_GEMM_CACHE; i++) s_entry_clear(&ctx->cache[i]);
    cublasLtDestroy(ctx->handle);
    free(ctx);
    *self_p = NULL;
}

// Builds the descriptors of one shape and asks the heuristic for its best algorithm.
static int s_entry_build(kvf_gemm_ctx_t *ctx, s_entry_t *e, int n, int d_in, int d_out, int y_type,
                         int accumulate, kvf_err_t *err) {
    e->n = n, e->d_in = d_in, e->d_out = d_out, e->y_type = y_type, e->accumulate = accumulate;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cudaDataType_t ct = y_type == KVF_GEMM_OUT_F32 ? CUDA_R_32F : CUDA_R_16BF;
    KVF_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), err);
    KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), err);
    KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), err);
    KVF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->a, CUDA_R_16BF, (uint64_t)d_in, (uint64_t)d_out, d_in), err);
    KVF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->b, CUDA_R_16BF, (uint64_t)d_in, (uint64_t)n, d_in), err);
    KVF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->c, ct, (uint64_t)d_out, (uint64_t)n, d_out), err);

    cublasLtMatmulPreference_t pref = NULL;
    KVF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), err);
    size_t ws = ctx->workspace_bytes;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                             sizeof ws);
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(ctx->handle, e->op, e->a, e->b, e->c, e->c, pref, 1, &res, &n_res);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS)
        return kvf_check_fail(err, "cublasLtMatmulAlgoGetHeuristic", st, cublasLtGetStatusString(st), __FILE__,
                              __LINE__);
    if (n_res < 1)
        return kvf_err_set(err, KVF_E_DEVICE, "kvf_gemm: cuBLASLt has no algorithm for n=%d d_in=%d d_out=%d", n,
                           d_in, d_out);
    e->algo = res.algo;
    e->valid = 1;
    return 0;
}

static s_entry_t *s_lookup(kvf_gemm_ctx_t *ctx, int n, int d_in, int d_out, int y_type, int accumulate,
                           kvf_err_t *err) {
    for (int i = 0; i < KVF_GEMM_CACHE; i++) {
        s_entry_t *e = &ctx->cache[i];
        if (e->valid && e->n == n && e->d_in == d_in && e->d_out == d_out && e->y_type == y_type &&
            e->accumulate == accumulate)
            return e;
    }
    s_entry_t *e = NULL;
    for (int tries = 0; tries < KVF_GEMM_CACHE && !e; tries++) {
        if (!ctx->cache[ctx->next].pinned) e = &ctx->cache[ctx->next];
        ctx->next = (ctx->next + 1) % KVF_GEMM_CACHE;
    }
    if (!e) {
        kvf_err_set(err, KVF_E_INVAL, "kvf_gemm: all %d cached shapes are pinned by kvf_gemm_tune", KVF_GEMM_CACHE);
        return NULL;
    }
    s_entry_clear(e);
    if (s_entry_build(ctx, e, n, d_in, d_out, y_type, accumulate, err) != 0) {
        s_entry_clear(e);
        return NULL;
    }
    return e;
}

int kvf_gemm(kvf_gemm_ctx_t *ctx, void *y, kvf_gemm_out_t y_type, const uint16_t *x, const uint16_t *w, int n,
             int d_in, int d_out, float beta, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(ctx && y && x && w, err);
    KVF_REQUIRE(n >= 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    if (n == 0) return 0;
    s_entry_t *e = s_lookup(ctx, n, d_in, d_out, (int)y_type, beta != 0.0f, err);
    if (!e) return -1;
    const float alpha = 1.0f;
    KVF_CUBLAS_CHECK(cublasLtMatmul(ctx->handle, e->op, &alpha, w, e->a, x, e->b, &beta, y, e->c, y, e->c, &e->algo,
                                    ctx->workspace, ctx->workspace_bytes, stream),
                     err);
    return 0;
}

// ---------------------------------------------------------------- tuning

#define KVF_GEMM_TUNE_MAX 24
#define KVF_GEMM_TUNE_REPS 8

// Times reps launches of algo on the stream (already warmed up); -1 when cuBLASLt refuses it.
static float s_time_algo(kvf_gemm_ctx_t *ctx, s_entry_t *e, const cublasLtMatmulAlgo_t *algo, void *y,
                         const uint16_t *x, const uint16_t *w, cudaEvent_t ev0, cudaEvent_t ev1, cudaStream_t stream) {
    const float alpha = 1.0f, beta = 0.0f;
    for (int r = 0; r < 2; r++)  // warm-up
        if (cublasLtMatmul(ctx->handle, e->op, &alpha, w, e->a, x, e->b, &beta, y, e->c, y, e->c, algo,
                           ctx->workspace, ctx->workspace_bytes, stream) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    if (cudaEventRecord(ev0, stream) != cudaSuccess) return -1.0f;
    for (int r = 0; r < KVF_GEMM_TUNE_REPS; r++)
        if (cublasLtMatmul(ctx->handle, e->op, &alpha, w, e->a, x, e->b, &beta, y, e->c, y, e->c, algo,
                           ctx->workspace, ctx->workspace_bytes, stream) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    float ms = -1.0f;
    if (cudaEventRecord(ev1, stream) != cudaSuccess || cudaEventSynchronize(ev1) != cudaSuccess ||
        cudaEventElapsedTime(&ms, ev0, ev1) != cudaSuccess)
        return -1.0f;
    return ms / KVF_GEMM_TUNE_REPS;
}

int kvf_gemm_tune(kvf_gemm_ctx_t *ctx, void *y, kvf_gemm_out_t y_type, const uint16_t *x, const uint16_t *w, int n,
                  int d_in, int d_out, cudaStream_t stream, float *heuristic_ms, float *best_ms, kvf_err_t *err) {
    KVF_REQUIRE(ctx && y && x && w, err);
    KVF_REQUIRE(n > 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    s_entry_t *e = s_lookup(ctx, n, d_in, d_out, (int)y_type, 0, err);
    if (!e) return -1;
    cublasLtMatmulPreference_t pref = NULL;
    KVF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), err);
    size_t ws = ctx->workspace_bytes;
    cublasLtMatmulHeuristicResult_t res[KVF_GEMM_TUNE_MAX];
    int n_res = 0;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                             sizeof ws);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(ctx->handle, e->op, e->a, e->b, e->c, e->c, pref, KVF_GEMM_TUNE_MAX, res,
                                            &n_res);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS)
        return kvf_check_fail(err, "cublasLtMatmulAlgoGetHeuristic", st, cublasLtGetStatusString(st), __FILE__,
                              __LINE__);
    cudaEvent_t ev0 = NULL, ev1 = NULL;
    KVF_CUDA_CHECK(cudaEventCreate(&ev0), err);
    if (cudaEventCreate(&ev1) != cudaSuccess) {
        cudaEventDestroy(ev0);
        KVF_CUDA_CHECK(cudaGetLastError(), err);
        return kvf_err_set(err, KVF_E_DEVICE, "kvf_gemm_tune: cudaEventCreate failed");
    }
    const cublasLtMatmulAlgo_t heur = e->algo;
    float h_ms = s_time_algo(ctx, e, &heur, y, x, w, ev0, ev1, stream), b_ms = h_ms;
    for (int i = 0; i < n_res; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > ws) continue;
        float ms = s_time_algo(ctx, e, &res[i].algo, y, x, w, ev0, ev1, stream);
        if (ms > 0.0f && (b_ms <= 0.0f || ms < b_ms)) {
            b_ms = ms;
            e->algo = res[i].algo;
        }
    }
    cudaGetLastError();  // a refused candidate may leave a sticky-free launch error behind
    const cudaError_t se = cudaStreamSynchronize(stream);
    cudaEventDestroy(ev0);
    cudaEventDestroy(ev1);
    KVF_CUDA_CHECK(se, err);
    if (b_ms <= 0.0f) return kvf_err_set(err, KVF_E_DEVICE, "kvf_gemm_tune: no candidate ran for n=%d %dx%d", n,
                                         d_in, d_out);
    e->pinned = 1;
    if (heuristic_ms) *heuristic_ms = h_ms;
    if (best_ms) *best_ms = b_ms;
    return 0;
}
