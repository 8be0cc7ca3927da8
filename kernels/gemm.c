// kernels/gemm.c — see gemm.h.
//
// Row-major y (n, d_out) = x (n, d_in) @ W^T is, in cuBLAS's column-major terms,
// Y^T (d_out x n) = op_T(W as a d_in x d_out matrix) * X^T (d_in x n).
#include "kernels/gemm.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/check.h"
#include "kernels/gemv.h"

#define KVF_GEMM_CACHE 128   // descriptor sets, one per exact shape
#define KVF_GEMM_ALGOS 256   // heuristic picks, one per row bucket of a shape

// Descriptors of one exact shape and the algorithm it runs.
typedef struct {
    int valid;
    int n, d_in, d_out, y_type, accumulate;
    int fp8;          // E4M3 operands with a scale per row (kvf_gemm_fp8)
    int pinned;       // picked by kvf_gemm_tune: never evicted
    int from_bucket;  // algo is its row bucket's pick (a refused launch asks for this n's own)
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} s_entry_t;

// The heuristic's pick for a row bucket (s_bucket) of a shape.
typedef struct {
    int valid;
    int nb, d_in, d_out, y_type, accumulate, fp8;
    cublasLtMatmulAlgo_t algo;
} s_algo_t;

struct kvf_gemm_ctx_s {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_bytes;
    s_entry_t cache[KVF_GEMM_CACHE];
    int next;  // round-robin victim
    s_algo_t algos[KVF_GEMM_ALGOS];
    int next_algo;
    uint64_t n_heuristic;  // cublasLtMatmulAlgoGetHeuristic calls
    int tune_reps, tune_rounds;  // kvf_gemm_tune: timed calls a candidate and round, rounds
    int fp8_fast_accum;          // kvf_gemm_ctx_set_fp8_fast_accum
    int sm_count;                // kvf_gemm_ctx_set_sm_count (0: the whole device)
    int gemv_rows;               // kvf_gemm_ctx_set_gemv_rows
};

// A heuristic query costs milliseconds of host time (~3 ms a shape on an H200
// with cuBLASLt 13), which a step whose row count is new would pay before its
// first kernel; so one pick serves a bucket of row counts: multiples of 64 up
// to 512, of 512 above.
static int s_bucket(int n) {
    if (n <= 512) return (n + 63) / 64 * 64;
    return (n + 511) / 512 * 512;
}

int kvf_gemm_bucket(int n) { return s_bucket(n < 1 ? 1 : n); }

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
    ctx->tune_reps = 8, ctx->tune_rounds = 1;
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

// The heuristic's first pick for descriptors (op, a, b, c).
static int s_heuristic(kvf_gemm_ctx_t *ctx, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                       cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, int n, int d_in, int d_out,
                       cublasLtMatmulAlgo_t *algo, kvf_err_t *err) {
    cublasLtMatmulPreference_t pref = NULL;
    KVF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), err);
    size_t ws = ctx->workspace_bytes;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                             sizeof ws);
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    if (st == CUBLAS_STATUS_SUCCESS) {
        st = cublasLtMatmulAlgoGetHeuristic(ctx->handle, op, a, b, c, c, pref, 1, &res, &n_res);
        ctx->n_heuristic++;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS)
        return kvf_check_fail(err, "cublasLtMatmulAlgoGetHeuristic", st, cublasLtGetStatusString(st), __FILE__,
                              __LINE__);
    if (n_res < 1)
        return kvf_err_set(err, KVF_E_DEVICE, "kvf_gemm: cuBLASLt has no algorithm for n=%d d_in=%d d_out=%d", n,
                           d_in, d_out);
    *algo = res.algo;
    return 0;
}

// A device address to stand for the scales while the heuristic is asked (any
// non-NULL one: the workspace, or the context itself when it has none).
static const void *s_scale_hint(const kvf_gemm_ctx_t *ctx) {
    return ctx->workspace ? ctx->workspace : (const void *)ctx;
}

// Builds the descriptors of one shape (no algorithm yet).
static int s_entry_build(s_entry_t *e, int n, int d_in, int d_out, int y_type, int accumulate, int fp8,
                         const void *scale_hint, int8_t fast_accum, int sm_count, kvf_err_t *err) {
    e->n = n, e->d_in = d_in, e->d_out = d_out, e->y_type = y_type, e->accumulate = accumulate, e->fp8 = fp8;
    const cudaDataType_t it = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cudaDataType_t ct = y_type == KVF_GEMM_OUT_F32 ? CUDA_R_32F : CUDA_R_16BF;
    KVF_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), err);
    KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), err);
    KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), err);
    if (sm_count > 0) {
        const int32_t sms = sm_count;
        KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms, sizeof sms),
                         err);
    }
    if (fp8) {  // a scale per row of W (A's columns here) and per row of x (B's columns)
        const int32_t m = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &m, sizeof m), err);
        KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &m, sizeof m), err);
        // The heuristic refuses outer-vector scaling without scale pointers (cuBLASLt 13,
        // status 7); it does not read them. kvf_gemm_fp8 sets the real ones before each launch.
        KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scale_hint,
                                                        sizeof scale_hint), err);
        KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &scale_hint,
                                                        sizeof scale_hint), err);
        KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum,
                                                        sizeof fast_accum), err);
    }
    KVF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->a, it, (uint64_t)d_in, (uint64_t)d_out, d_in), err);
    KVF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->b, it, (uint64_t)d_in, (uint64_t)n, d_in), err);
    KVF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->c, ct, (uint64_t)d_out, (uint64_t)n, d_out), err);
    return 0;
}

// The pick for the bucket of e's row count: cached, or asked for with the
// bucket's own row count and kept.
static int s_bucket_algo(kvf_gemm_ctx_t *ctx, const s_entry_t *e, cublasLtMatmulAlgo_t *algo, kvf_err_t *err) {
    const int nb = s_bucket(e->n);
    for (int i = 0; i < KVF_GEMM_ALGOS; i++) {
        const s_algo_t *a = &ctx->algos[i];
        if (a->valid && a->nb == nb && a->d_in == e->d_in && a->d_out == e->d_out && a->y_type == e->y_type &&
            a->accumulate == e->accumulate && a->fp8 == e->fp8) {
            *algo = a->algo;
            return 0;
        }
    }
    s_entry_t be;  // descriptors of the bucket's row count
    memset(&be, 0, sizeof be);
    int rc = s_entry_build(&be, nb, e->d_in, e->d_out, e->y_type, e->accumulate, e->fp8, s_scale_hint(ctx),
                           (int8_t)ctx->fp8_fast_accum, ctx->sm_count, err);
    if (rc == 0) rc = s_heuristic(ctx, be.op, be.a, be.b, be.c, nb, e->d_in, e->d_out, algo, err);
    s_entry_clear(&be);
    if (rc != 0) return -1;
    s_algo_t *a = &ctx->algos[ctx->next_algo];
    ctx->next_algo = (ctx->next_algo + 1) % KVF_GEMM_ALGOS;
    *a = (s_algo_t){1, nb, e->d_in, e->d_out, e->y_type, e->accumulate, e->fp8, *algo};
    return 0;
}

static s_entry_t *s_lookup(kvf_gemm_ctx_t *ctx, int n, int d_in, int d_out, int y_type, int accumulate, int fp8,
                           kvf_err_t *err) {
    for (int i = 0; i < KVF_GEMM_CACHE; i++) {
        s_entry_t *e = &ctx->cache[i];
        if (e->valid && e->n == n && e->d_in == d_in && e->d_out == d_out && e->y_type == y_type &&
            e->accumulate == accumulate && e->fp8 == fp8)
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
    if (s_entry_build(e, n, d_in, d_out, y_type, accumulate, fp8, s_scale_hint(ctx), (int8_t)ctx->fp8_fast_accum,
                      ctx->sm_count, err) != 0 ||
        s_bucket_algo(ctx, e, &e->algo, err) != 0) {
        s_entry_clear(e);
        return NULL;
    }
    e->from_bucket = 1;
    e->valid = 1;
    return e;
}

static int s_run(kvf_gemm_ctx_t *ctx, s_entry_t *e, void *y, const void *x, const void *w, float beta,
                 cudaStream_t stream, kvf_err_t *err);

int kvf_gemm(kvf_gemm_ctx_t *ctx, void *y, kvf_gemm_out_t y_type, const uint16_t *x, const uint16_t *w, int n,
             int d_in, int d_out, float beta, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(ctx && y && x && w, err);
    KVF_REQUIRE(n >= 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    if (n == 0) return 0;
    if (n <= ctx->gemv_rows && d_in % 8 == 0 && ((uintptr_t)x | (uintptr_t)w) % 16 == 0)
        return kvf_gemv(y, y_type, x, w, n, d_in, d_out, beta, stream, err);
    s_entry_t *e = s_lookup(ctx, n, d_in, d_out, (int)y_type, beta != 0.0f, 0, err);
    if (!e) return -1;
    return s_run(ctx, e, y, x, w, beta, stream, err);
}

int kvf_gemm_fp8(kvf_gemm_ctx_t *ctx, void *y, kvf_gemm_out_t y_type, const uint8_t *x, const float *x_scale,
                 const uint8_t *w, const float *w_scale, int n, int d_in, int d_out, cudaStream_t stream,
                 kvf_err_t *err) {
    KVF_REQUIRE(ctx && y && x && x_scale && w && w_scale, err);
    KVF_REQUIRE(n >= 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    if (d_in % 16 || d_out % 16)
        return kvf_err_set(err, KVF_E_INVAL, "kvf_gemm_fp8: d_in %d and d_out %d must be multiples of 16", d_in, d_out);
    if (n == 0) return 0;
    s_entry_t *e = s_lookup(ctx, n, d_in, d_out, (int)y_type, 0, 1, err);
    if (!e) return -1;
    KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                                    sizeof w_scale), err);
    KVF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale,
                                                    sizeof x_scale), err);
    return s_run(ctx, e, y, x, w, 0.0f, stream, err);
}

// One launch of entry e's GEMM with its algorithm; when the bucket's pick refuses
// e's row count, asks the heuristic for that count's own.
static int s_run(kvf_gemm_ctx_t *ctx, s_entry_t *e, void *y, const void *x, const void *w, float beta,
                 cudaStream_t stream, kvf_err_t *err) {
    const int n = e->n, d_in = e->d_in, d_out = e->d_out;
    const float alpha = 1.0f;
    cublasStatus_t st = cublasLtMatmul(ctx->handle, e->op, &alpha, w, e->a, x, e->b, &beta, y, e->c, y, e->c,
                                       &e->algo, ctx->workspace, ctx->workspace_bytes, stream);
    if (st != CUBLAS_STATUS_SUCCESS && e->from_bucket) {  // the bucket's pick refuses this n: ask for its own
        if (s_heuristic(ctx, e->op, e->a, e->b, e->c, n, d_in, d_out, &e->algo, err) != 0) return -1;
        e->from_bucket = 0;
        st = cublasLtMatmul(ctx->handle, e->op, &alpha, w, e->a, x, e->b, &beta, y, e->c, y, e->c, &e->algo,
                            ctx->workspace, ctx->workspace_bytes, stream);
    }
    if (st != CUBLAS_STATUS_SUCCESS)
        return kvf_check_fail(err, "cublasLtMatmul", st, cublasLtGetStatusString(st), __FILE__, __LINE__);
    return 0;
}

static int s_prepare(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out, int accumulate,
                     int fp8, kvf_err_t *err);

int kvf_gemm_prepare(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out, int accumulate,
                     kvf_err_t *err) {
    return s_prepare(ctx, y_type, n_max, d_in, d_out, accumulate, 0, err);
}

int kvf_gemm_prepare_fp8(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out, kvf_err_t *err) {
    return s_prepare(ctx, y_type, n_max, d_in, d_out, 0, 1, err);
}

static int s_prepare(kvf_gemm_ctx_t *ctx, kvf_gemm_out_t y_type, int n_max, int d_in, int d_out, int accumulate,
                     int fp8, kvf_err_t *err) {
    KVF_REQUIRE(ctx && n_max > 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    for (int nb = 64; nb <= s_bucket(n_max); nb = s_bucket(nb + 1)) {
        s_entry_t e;
        memset(&e, 0, sizeof e);
        e.n = nb, e.d_in = d_in, e.d_out = d_out, e.y_type = (int)y_type, e.accumulate = accumulate != 0;
        e.fp8 = fp8 != 0;
        cublasLtMatmulAlgo_t algo;
        if (s_bucket_algo(ctx, &e, &algo, err) != 0) return -1;
    }
    return 0;
}

uint64_t kvf_gemm_heuristic_calls(const kvf_gemm_ctx_t *ctx) { return ctx ? ctx->n_heuristic : 0; }

int kvf_gemm_ctx_set_fp8_fast_accum(kvf_gemm_ctx_t *ctx, int on, kvf_err_t *err) {
    KVF_REQUIRE(ctx, err);
    for (int i = 0; i < KVF_GEMM_CACHE; i++)
        KVF_REQUIRE(!ctx->cache[i].valid || !ctx->cache[i].fp8, err);  // before the first FP8 GEMM
    for (int i = 0; i < KVF_GEMM_ALGOS; i++) KVF_REQUIRE(!ctx->algos[i].valid || !ctx->algos[i].fp8, err);
    ctx->fp8_fast_accum = on != 0;
    return 0;
}

int kvf_gemm_ctx_set_sm_count(kvf_gemm_ctx_t *ctx, int sms, kvf_err_t *err) {
    KVF_REQUIRE(ctx && sms >= 0, err);
    for (int i = 0; i < KVF_GEMM_CACHE; i++) KVF_REQUIRE(!ctx->cache[i].valid, err);  // before the first GEMM
    for (int i = 0; i < KVF_GEMM_ALGOS; i++) KVF_REQUIRE(!ctx->algos[i].valid, err);
    ctx->sm_count = sms;
    return 0;
}

int kvf_gemm_ctx_set_gemv_rows(kvf_gemm_ctx_t *ctx, int rows, kvf_err_t *err) {
    KVF_REQUIRE(ctx, err);
    if (rows < 0 || rows > KVF_GEMV_MAX_ROWS)
        return kvf_err_set(err, KVF_E_INVAL, "kvf_gemm: gemv rows %d out of 0..%d", rows, KVF_GEMV_MAX_ROWS);
    ctx->gemv_rows = rows;
    return 0;
}

// ---------------------------------------------------------------- tuning

#define KVF_GEMM_TUNE_MAX 24
#define KVF_GEMM_TUNE_ROUNDS_MAX 15
#define KVF_GEMM_TUNE_BUCKET_MAX 1024  // kvf_gemm_tune_buckets: the buckets of 64 rows, then 1024

int kvf_gemm_ctx_set_tune(kvf_gemm_ctx_t *ctx, int reps, int rounds, kvf_err_t *err) {
    KVF_REQUIRE(ctx && reps >= 1 && reps <= 100000 && rounds >= 1 && rounds <= KVF_GEMM_TUNE_ROUNDS_MAX, err);
    ctx->tune_reps = reps, ctx->tune_rounds = rounds;
    return 0;
}

static int s_cmp_ms(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// Times tune_reps launches of algo on the stream (after two warm-up launches), ms a
// launch; -1 when cuBLASLt refuses it. Launch r reads w[r % nw] (and y when e accumulates).
static float s_time_algo(kvf_gemm_ctx_t *ctx, s_entry_t *e, const cublasLtMatmulAlgo_t *algo, void *y,
                         const uint16_t *x, const uint16_t *const *w, int nw, cudaEvent_t ev0, cudaEvent_t ev1,
                         cudaStream_t stream) {
    const float alpha = 1.0f, beta = e->accumulate ? 1.0f : 0.0f;
    for (int r = 0; r < 2; r++)  // warm-up
        if (cublasLtMatmul(ctx->handle, e->op, &alpha, w[r % nw], e->a, x, e->b, &beta, y, e->c, y, e->c, algo,
                           ctx->workspace, ctx->workspace_bytes, stream) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    if (cudaEventRecord(ev0, stream) != cudaSuccess) return -1.0f;
    for (int r = 0; r < ctx->tune_reps; r++)
        if (cublasLtMatmul(ctx->handle, e->op, &alpha, w[r % nw], e->a, x, e->b, &beta, y, e->c, y, e->c, algo,
                           ctx->workspace, ctx->workspace_bytes, stream) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    float ms = -1.0f;
    if (cudaEventRecord(ev1, stream) != cudaSuccess || cudaEventSynchronize(ev1) != cudaSuccess ||
        cudaEventElapsedTime(&ms, ev0, ev1) != cudaSuccess)
        return -1.0f;
    return ms / ctx->tune_reps;
}

// Times cuBLASLt's heuristic candidates (at most max_cand) for entry e against
// `first` (candidate 0) on x, w[0..nw) and y, in tune_rounds rounds that take the
// candidates in turn (so a card that heats or cools as it goes favours none); a
// candidate's time is its median round. Sets *best to the fastest, *first_ms and
// *best_ms to their times per call. Start-up only: it synchronizes the stream.
static int s_tune_entry(kvf_gemm_ctx_t *ctx, s_entry_t *e, const cublasLtMatmulAlgo_t *first, int max_cand, void *y,
                        const uint16_t *x, const uint16_t *const *w, int nw, cudaStream_t stream,
                        cublasLtMatmulAlgo_t *best, float *first_ms, float *best_ms, kvf_err_t *err) {
    cublasLtMatmulPreference_t pref = NULL;
    KVF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), err);
    size_t ws = ctx->workspace_bytes;
    cublasLtMatmulHeuristicResult_t res[KVF_GEMM_TUNE_MAX];
    int n_res = 0;
    if (max_cand > KVF_GEMM_TUNE_MAX) max_cand = KVF_GEMM_TUNE_MAX;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                             sizeof ws);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(ctx->handle, e->op, e->a, e->b, e->c, e->c, pref, max_cand, res, &n_res);
    ctx->n_heuristic++;
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
    cublasLtMatmulAlgo_t cand[KVF_GEMM_TUNE_MAX + 1];
    int n_cand = 0;
    cand[n_cand++] = *first;
    for (int i = 0; i < n_res; i++)
        if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= ws) cand[n_cand++] = res[i].algo;
    float ms[KVF_GEMM_TUNE_MAX + 1][KVF_GEMM_TUNE_ROUNDS_MAX];
    const int R = ctx->tune_rounds;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < n_cand; c++) ms[c][r] = s_time_algo(ctx, e, &cand[c], y, x, w, nw, ev0, ev1, stream);
    float h_ms = -1.0f, b_ms = -1.0f;
    for (int c = 0; c < n_cand; c++) {
        qsort(ms[c], (size_t)R, sizeof ms[c][0], s_cmp_ms);
        const float m = ms[c][0] < 0.0f ? -1.0f : ms[c][R / 2];  // refused in any round: out
        if (c == 0) h_ms = m;
        if (m > 0.0f && (b_ms <= 0.0f || m < b_ms)) b_ms = m, *best = cand[c];
    }
    cudaGetLastError();  // a refused candidate may leave a sticky-free launch error behind
    const cudaError_t se = cudaStreamSynchronize(stream);
    cudaEventDestroy(ev0);
    cudaEventDestroy(ev1);
    KVF_CUDA_CHECK(se, err);
    if (b_ms <= 0.0f)
        return kvf_err_set(err, KVF_E_DEVICE, "kvf_gemm_tune: no candidate ran for n=%d %dx%d", e->n, e->d_in,
                           e->d_out);
    *first_ms = h_ms, *best_ms = b_ms;
    return 0;
}

int kvf_gemm_tune(kvf_gemm_ctx_t *ctx, void *y, kvf_gemm_out_t y_type, const uint16_t *x, const uint16_t *w, int n,
                  int d_in, int d_out, cudaStream_t stream, float *heuristic_ms, float *best_ms, kvf_err_t *err) {
    KVF_REQUIRE(ctx && y && x && w, err);
    KVF_REQUIRE(n > 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    s_entry_t *e = s_lookup(ctx, n, d_in, d_out, (int)y_type, 0, 0, err);
    if (!e) return -1;
    float h_ms = 0.0f, b_ms = 0.0f;
    const cublasLtMatmulAlgo_t first = e->algo;
    if (s_tune_entry(ctx, e, &first, KVF_GEMM_TUNE_MAX, y, x, &w, 1, stream, &e->algo, &h_ms, &b_ms, err) != 0)
        return -1;
    e->pinned = 1;
    e->from_bucket = 0;
    if (heuristic_ms) *heuristic_ms = h_ms;
    if (best_ms) *best_ms = b_ms;
    return 0;
}

int kvf_gemm_tune_buckets(kvf_gemm_ctx_t *ctx, void *y, kvf_gemm_out_t y_type, int accumulate, const uint16_t *x,
                          const uint16_t *const *w, int nw, int n_max, int d_in, int d_out, int max_cand,
                          cudaStream_t stream, kvf_gemm_tune_sum_t *sum, kvf_err_t *err) {
    KVF_REQUIRE(ctx && y && x && w && nw >= 1 && max_cand >= 1, err);
    for (int i = 0; i < nw; i++) KVF_REQUIRE(w[i], err);
    KVF_REQUIRE(n_max > 0 && d_in > 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    for (int nb = 64; nb <= n_max && nb <= KVF_GEMM_TUNE_BUCKET_MAX; nb = nb < 512 ? nb + 64 : nb + 512) {
        s_entry_t e;  // descriptors of the bucket's row count, with the heuristic's pick
        memset(&e, 0, sizeof e);
        if (s_entry_build(&e, nb, d_in, d_out, (int)y_type, accumulate != 0, 0, s_scale_hint(ctx), 0, ctx->sm_count,
                          err) != 0 ||
            s_bucket_algo(ctx, &e, &e.algo, err) != 0) {
            s_entry_clear(&e);
            return -1;
        }
        cublasLtMatmulAlgo_t best = e.algo;
        float h_ms = 0.0f, b_ms = 0.0f;
        const int rc = s_tune_entry(ctx, &e, &e.algo, max_cand, y, x, w, nw, stream, &best, &h_ms, &b_ms, err);
        s_entry_clear(&e);
        if (rc != 0) return -1;
        // Keep a candidate only when clearly faster (2%): a tie stays with the heuristic.
        const int take = b_ms < 0.98f * h_ms;
        if (take) {
            for (int i = 0; i < KVF_GEMM_ALGOS; i++) {
                s_algo_t *a = &ctx->algos[i];
                if (a->valid && a->nb == nb && a->d_in == d_in && a->d_out == d_out && a->y_type == (int)y_type &&
                    a->accumulate == (accumulate != 0) && !a->fp8)
                    a->algo = best;
            }
            for (int i = 0; i < KVF_GEMM_CACHE; i++) {  // shapes already made from the bucket's old pick
                s_entry_t *c = &ctx->cache[i];
                if (c->valid && c->from_bucket && s_bucket(c->n) == nb && c->d_in == d_in && c->d_out == d_out &&
                    c->y_type == (int)y_type && c->accumulate == (accumulate != 0) && !c->fp8)
                    c->algo = best;
            }
        }
        if (sum) {
            sum->buckets++;
            sum->changed += take;
            sum->heuristic_ms += h_ms;
            sum->kept_ms += take ? b_ms : h_ms;
        }
    }
    return 0;
}
