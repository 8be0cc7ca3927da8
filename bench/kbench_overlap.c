// bench/kbench_overlap.c — kvf-kbench's "overlap" section: can a decode step's
// compute-bound GEMMs and its memory-bound attention share the device?
//
// A decode step of 1024 sequences (prefill-first, bench/RESULTS.md session 12)
// spends ~23 ms in GEMMs at ~620 TFLOP/s and ~20 ms in attention at ~3.9 TB/s,
// one after the other. Splitting the batch in two and running one half's GEMMs
// beside the other half's attention could hide most of the shorter of the two,
// if the two kernels ran side by side. On two plain streams they do not: each
// fills every SM (a GEMM CTA takes an SM's shared memory), so they only meet in
// their tails. A green context (CUDA driver API) holds a fixed share of the SMs;
// kernels on its streams run there only. This section times, on the gate/up
// GEMM of 1024 rows (4096 -> 2 x 14336, bf16) and a 2 GiB streaming read
// (kvf_kb_read_stream):
//   - each alone on the whole device, and both on two plain streams;
//   - for SM splits G / R: the GEMM alone on G SMs (cuBLASLt told so:
//     kvf_gemm_ctx_set_sm_count), the read alone on R, and both at once.
// "both" rows report the pair's wall time for k1 GEMMs and k2 reads (k2 chosen
// so that each side alone takes about as long), and in the variant the time the
// whole device takes for the same work one after the other.
//
// The driver API is reached through cudaGetDriverEntryPointByVersion, so that
// kvf-kbench does not link libcuda (the CI machine has none); a driver without
// green contexts skips the section with a line saying so.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bench/kbench.h"
#include "bench/kbench_read.h"
#include "kernels/check.h"
#include "kernels/gemm.h"

#define S_ROWS 1024
#define S_READ_BYTES ((size_t)2 << 30)
#define S_GEMM_CALLS 40

typedef struct {
    PFN_cuDeviceGet_v2000 device_get;
    PFN_cuDeviceGetDevResource_v12040 get_resource;
    PFN_cuDevSmResourceSplitByCount_v12040 split;
    PFN_cuDevResourceGenerateDesc_v12040 gen_desc;
    PFN_cuGreenCtxCreate_v12040 ctx_create;
    PFN_cuGreenCtxDestroy_v12040 ctx_destroy;
    PFN_cuGreenCtxStreamCreate_v12050 stream_create;
    PFN_cuStreamDestroy_v4000 stream_destroy;
} s_drv_t;

static int s_sym(const char *name, void **fn, unsigned version) {
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion(name, fn, version, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !*fn) {
        cudaGetLastError();
        return -1;
    }
    return 0;
}

static int s_drv_load(s_drv_t *d) {
    memset(d, 0, sizeof *d);
    return s_sym("cuDeviceGet", (void **)&d->device_get, 2000) ||
           s_sym("cuDeviceGetDevResource", (void **)&d->get_resource, 12040) ||
           s_sym("cuDevSmResourceSplitByCount", (void **)&d->split, 12040) ||
           s_sym("cuDevResourceGenerateDesc", (void **)&d->gen_desc, 12040) ||
           s_sym("cuGreenCtxCreate", (void **)&d->ctx_create, 12040) ||
           s_sym("cuGreenCtxDestroy", (void **)&d->ctx_destroy, 12040) ||
           s_sym("cuGreenCtxStreamCreate", (void **)&d->stream_create, 12050) ||
           s_sym("cuStreamDestroy", (void **)&d->stream_destroy, 4000);
}

static double s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

typedef struct {
    kvf_gemm_ctx_t *gemm;
    const uint16_t *x, *w;  // (S_ROWS, KB_DIM), (2 KB_FF, KB_DIM) bf16
    uint16_t *y;            // (S_ROWS, 2 KB_FF) bf16
    const void *buf;        // S_READ_BYTES
    uint32_t *out;          // a word a read block
} s_work_t;

// k1 GEMMs on s1 and k2 reads of `blocks` blocks on s2, launched interleaved in
// proportion; the wall ms until both streams are done.
static int s_both(const s_work_t *wk, kvf_gemm_ctx_t *g, cudaStream_t s1, int k1, cudaStream_t s2, int k2, int blocks,
                  double *ms, kvf_err_t *err) {
    KVF_CUDA_CHECK(cudaStreamSynchronize(s1), err);
    KVF_CUDA_CHECK(cudaStreamSynchronize(s2), err);
    const double t0 = s_now_ms();
    for (int i = 0, j = 0; i < k1 || j < k2;) {
        if (i < k1) {
            if (kvf_gemm(g, wk->y, KVF_GEMM_OUT_BF16, wk->x, wk->w, S_ROWS, KB_DIM, 2 * KB_FF, 0.0f, s1, err) != 0)
                return -1;
            i++;
        }
        if (j < k2 && ((long)j * k1 <= (long)i * k2 || i >= k1)) {
            if (kvf_kb_read_stream(wk->out, wk->buf, S_READ_BYTES, blocks, 8, s2) != 0)
                return kvf_err_set(err, KVF_E_DEVICE, "overlap: the read kernel did not launch");
            j++;
        }
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(s1), err);
    KVF_CUDA_CHECK(cudaStreamSynchronize(s2), err);
    *ms = s_now_ms() - t0;
    return 0;
}

static void s_row(kvf_kb_t *b, const char *variant, double ms, double flops, double bytes) {
    kvf_kb_row_t r;
    memset(&r, 0, sizeof r);
    r.kernel = "overlap";
    snprintf(r.variant, sizeof r.variant, "%s", variant);
    snprintf(r.shape, sizeof r.shape, "%dx%d->2x%d + %zu MiB read", S_ROWS, KB_DIM, KB_FF, S_READ_BYTES >> 20);
    r.t.median = r.t.min = ms;
    r.flops = flops, r.bytes = bytes;
    r.copies = 1;
    kvf_kb_emit(b, &r);
}

// One split: a green context of g SMs for the GEMM and one of the rest for the
// read. The best read grid of 1..16 blocks an SM is kept.
static int s_split(kvf_kb_t *b, const s_drv_t *d, const CUdevResource *all, const s_work_t *wk, void *ws, int g,
                   double t_gemm, double t_read, kvf_err_t *err) {
    CUdevResource grp, rest;
    unsigned n_grp = 1;
    CUdevResourceDesc dg, dr;
    CUgreenCtx cg = NULL, cr = NULL;
    CUstream sg = NULL, sr = NULL;
    kvf_gemm_ctx_t *gc = NULL;
    int rc = -1;
    if (d->split(&grp, &n_grp, all, &rest, 0, (unsigned)g) != CUDA_SUCCESS || n_grp != 1 ||
        d->gen_desc(&dg, &grp, 1) != CUDA_SUCCESS || d->gen_desc(&dr, &rest, 1) != CUDA_SUCCESS ||
        d->ctx_create(&cg, dg, 0, CU_GREEN_CTX_DEFAULT_STREAM) != CUDA_SUCCESS ||
        d->ctx_create(&cr, dr, 0, CU_GREEN_CTX_DEFAULT_STREAM) != CUDA_SUCCESS ||
        d->stream_create(&sg, cg, CU_STREAM_NON_BLOCKING, 0) != CUDA_SUCCESS ||
        d->stream_create(&sr, cr, CU_STREAM_NON_BLOCKING, 0) != CUDA_SUCCESS) {
        kvf_err_set(err, KVF_E_DEVICE, "overlap: green contexts of %d SMs and the rest could not be made", g);
        goto done;
    }
    const int ng = (int)grp.sm.smCount, nr = (int)rest.sm.smCount;
    gc = kvf_gemm_ctx_new(ws, KB_GEMM_WORKSPACE, err);
    if (!gc || kvf_gemm_ctx_set_sm_count(gc, ng, err) != 0) goto done;
    const double flops = 2.0 * S_ROWS * KB_DIM * 2.0 * KB_FF, bytes = (double)S_READ_BYTES;
    double tg = 0, tr = 1e30, t = 0;
    int blocks = nr;
    if (s_both(wk, gc, (cudaStream_t)sg, 4, (cudaStream_t)sr, 0, 0, &t, err) != 0 ||  // warm-up, picks
        s_both(wk, gc, (cudaStream_t)sg, S_GEMM_CALLS, (cudaStream_t)sr, 0, 0, &tg, err) != 0)
        goto done;
    tg /= S_GEMM_CALLS;
    for (int per = 1; per <= 16; per *= 2) {
        if (s_both(wk, gc, (cudaStream_t)sg, 0, (cudaStream_t)sr, 4, nr * per, &t, err) != 0) goto done;
        if (t / 4 < tr) tr = t / 4, blocks = nr * per;
    }
    int k2 = (int)(S_GEMM_CALLS * tg / tr + 0.5);
    if (k2 < 1) k2 = 1;
    double tb = 0;
    if (s_both(wk, gc, (cudaStream_t)sg, S_GEMM_CALLS, (cudaStream_t)sr, k2, blocks, &tb, err) != 0) goto done;
    char v[48];
    snprintf(v, sizeof v, "gemm on %d SMs", ng);
    s_row(b, v, tg, flops, 0);
    snprintf(v, sizeof v, "read on %d SMs (%d blocks)", nr, blocks);
    s_row(b, v, tr, 0, bytes);
    snprintf(v, sizeof v, "both %d/%d: %d+%d (serial %.1f)", ng, nr, S_GEMM_CALLS, k2,
             S_GEMM_CALLS * t_gemm + k2 * t_read);
    s_row(b, v, tb, S_GEMM_CALLS * flops, k2 * bytes);
    rc = 0;
done:
    kvf_gemm_ctx_destroy(&gc);
    if (sg) d->stream_destroy(sg);
    if (sr) d->stream_destroy(sr);
    if (cg) d->ctx_destroy(cg);
    if (cr) d->ctx_destroy(cr);
    return rc;
}

int kvf_kb_bench_overlap(kvf_kb_t *b, kvf_err_t *err) {
    s_drv_t d;
    if (s_drv_load(&d) != 0) {
        fprintf(stderr, "kvf-kbench: overlap: skipped (this driver has no green contexts)\n");
        return 0;
    }
    CUdevice dev;
    CUdevResource all;
    if (d.device_get(&dev, b->o->device) != CUDA_SUCCESS ||
        d.get_resource(dev, &all, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS) {
        fprintf(stderr, "kvf-kbench: overlap: skipped (the device's SMs cannot be partitioned)\n");
        return 0;
    }
    const int mark = b->n_alloc;
    s_work_t wk;
    void *x = NULL, *w = NULL, *y = NULL, *buf = NULL, *out = NULL, *ws = NULL, *ws2 = NULL;
    const int n_sms = (int)all.sm.smCount;
    int rc = -1;
    cudaStream_t s2 = NULL;
    memset(&wk, 0, sizeof wk);
    if (kvf_kb_alloc(b, &x, (size_t)S_ROWS * KB_DIM * 2, err) ||
        kvf_kb_alloc(b, &w, (size_t)2 * KB_FF * KB_DIM * 2, err) ||
        kvf_kb_alloc(b, &y, (size_t)S_ROWS * 2 * KB_FF * 2, err) || kvf_kb_alloc(b, &buf, S_READ_BYTES, err) ||
        kvf_kb_alloc(b, &out, (size_t)n_sms * 16 * sizeof(uint32_t), err) ||
        kvf_kb_alloc(b, &ws, KB_GEMM_WORKSPACE, err) || kvf_kb_alloc(b, &ws2, KB_GEMM_WORKSPACE, err) ||
        kvf_kb_rand_bf16(b, x, (size_t)S_ROWS * KB_DIM, 1.0f, err) ||
        kvf_kb_rand_bf16(b, w, (size_t)2 * KB_FF * KB_DIM, 0.05f, err) ||
        kvf_kb_rand_bf16(b, buf, S_READ_BYTES / 2, 1.0f, err))
        return -1;
    wk.x = x, wk.w = w, wk.y = y, wk.buf = buf, wk.out = out;
    wk.gemm = kvf_gemm_ctx_new(ws, KB_GEMM_WORKSPACE, err);
    if (!wk.gemm) return -1;
    if (cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) != cudaSuccess) {
        kvf_err_set(err, KVF_E_DEVICE, "overlap: cudaStreamCreate failed");
        goto done;
    }
    const double flops = 2.0 * S_ROWS * KB_DIM * 2.0 * KB_FF, bytes = (double)S_READ_BYTES;
    double tg = 0, tr = 0, tb = 0, t = 0;
    if (s_both(&wk, wk.gemm, b->stream, 4, s2, 2, n_sms * 8, &t, err) != 0 ||  // warm-up
        s_both(&wk, wk.gemm, b->stream, S_GEMM_CALLS, s2, 0, 0, &tg, err) != 0 ||
        s_both(&wk, wk.gemm, b->stream, 0, s2, 10, n_sms * 8, &tr, err) != 0)
        goto done;
    tg /= S_GEMM_CALLS, tr /= 10;
    int k2 = (int)(S_GEMM_CALLS * tg / tr + 0.5);
    if (k2 < 1) k2 = 1;
    if (s_both(&wk, wk.gemm, b->stream, S_GEMM_CALLS, s2, k2, n_sms * 8, &tb, err) != 0) goto done;
    char v[48];
    snprintf(v, sizeof v, "gemm, all %d SMs", n_sms);
    s_row(b, v, tg, flops, 0);
    snprintf(v, sizeof v, "read, all %d SMs", n_sms);
    s_row(b, v, tr, 0, bytes);
    snprintf(v, sizeof v, "both, 2 streams: %d+%d (serial %.1f)", S_GEMM_CALLS, k2, S_GEMM_CALLS * tg + k2 * tr);
    s_row(b, v, tb, S_GEMM_CALLS * flops, k2 * bytes);
    static const int splits[] = {112, 104, 96, 88};
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++)
        if (splits[i] < n_sms && s_split(b, &d, &all, &wk, ws2, splits[i], tg, tr, err) != 0) goto done;
    rc = 0;
done:
    if (s2) cudaStreamDestroy(s2);
    kvf_gemm_ctx_destroy(&wk.gemm);
    if (kvf_kb_free_to(b, mark, rc == 0 ? err : NULL) != 0) rc = -1;
    return rc;
}
