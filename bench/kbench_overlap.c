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
// Green contexts come from kernels/green.h; a driver without them skips the
// section with a line saying so.
#include <stdio.h>
#include <string.h>

#include "bench/kbench.h"
#include "bench/kbench_read.h"
#include "kernels/check.h"
#include "kernels/gemm.h"
#include "kernels/green.h"

#define S_ROWS 1024
#define S_READ_BYTES ((size_t)2 << 30)

typedef struct {
    kvf_gemm_ctx_t *gemm;
    const uint16_t *x, *w;  // (S_ROWS, KB_DIM), (2 KB_FF, KB_DIM) bf16
    uint16_t *y;            // (S_ROWS, 2 KB_FF) bf16
    const void *buf;        // S_READ_BYTES
    uint32_t *out;          // a word a read block
    const kvf_kb_decode_t *att;  // the second kernel: this decode attention, or (NULL) the streaming read
} s_work_t;

// k1 GEMMs on s1 and k2 reads of `blocks` blocks (or k2 decode attentions) on s2,
// launched interleaved in proportion; the wall ms until both streams are done.
static int s_both(const s_work_t *wk, kvf_gemm_ctx_t *g, cudaStream_t s1, int k1, cudaStream_t s2, int k2, int blocks,
                  double *ms, kvf_err_t *err) {
    KVF_CUDA_CHECK(cudaStreamSynchronize(s1), err);
    KVF_CUDA_CHECK(cudaStreamSynchronize(s2), err);
    const double t0 = kvf_kb_now_ms();
    for (int i = 0, j = 0; i < k1 || j < k2;) {
        if (i < k1) {
            if (kvf_gemm(g, wk->y, KVF_GEMM_OUT_BF16, wk->x, wk->w, S_ROWS, KB_DIM, 2 * KB_FF, 0.0f, s1, err) != 0)
                return -1;
            i++;
        }
        if (j < k2 && ((long)j * k1 <= (long)i * k2 || i >= k1)) {
            if (wk->att) {
                if (kvf_kb_decode_run(wk->att, s2, err) != 0) return -1;
            } else if (kvf_kb_read_stream(wk->out, wk->buf, S_READ_BYTES, blocks, 8, s2) != 0) {
                return kvf_err_set(err, KVF_E_DEVICE, "overlap: the read kernel did not launch");
            }
            j++;
        }
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(s1), err);
    KVF_CUDA_CHECK(cudaStreamSynchronize(s2), err);
    *ms = kvf_kb_now_ms() - t0;
    return 0;
}

static void s_row(kvf_kb_t *b, const s_work_t *wk, const char *variant, double ms, double flops, double bytes) {
    kvf_kb_row_t r;
    memset(&r, 0, sizeof r);
    r.kernel = "overlap";
    snprintf(r.variant, sizeof r.variant, "%s", variant);
    if (wk->att)
        snprintf(r.shape, sizeof r.shape, "%dx%d->2x%d + decode attn %d seqs", S_ROWS, KB_DIM, KB_FF,
                 wk->att->n_tiles);
    else
        snprintf(r.shape, sizeof r.shape, "%dx%d->2x%d + %zu MiB read", S_ROWS, KB_DIM, KB_FF, S_READ_BYTES >> 20);
    r.t.median = r.t.min = ms;
    r.flops = flops, r.bytes = bytes;
    r.copies = 1;
    kvf_kb_emit(b, &r);
}

// One split: a green context of g SMs for the GEMM and one of the rest for the
// read (kernels/green.h). The best read grid of 1..16 blocks an SM is kept.
static int s_split(kvf_kb_t *b, const s_work_t *wk, void *ws, int g, double t_gemm, double t_read, kvf_err_t *err) {
    kvf_green_t *gr = kvf_green_new(b->o->device, g, err);
    if (!gr) return -1;
    const cudaStream_t sg = kvf_green_stream(gr, 0), sr = kvf_green_stream(gr, 1);
    const int ng = kvf_green_sms(gr, 0), nr = kvf_green_sms(gr, 1);
    const double flops = 2.0 * S_ROWS * KB_DIM * 2.0 * KB_FF, bytes = wk->att ? wk->att->bytes : (double)S_READ_BYTES;
    double tg = 0, tr = 1e30, t = 0, tb = 0;
    int blocks = nr, rc = -1;
    kvf_gemm_ctx_t *gc = kvf_gemm_ctx_new(ws, KB_GEMM_WORKSPACE, err);
    if (!gc || kvf_gemm_ctx_set_sm_count(gc, ng, err) != 0) goto done;
    if (s_both(wk, gc, sg, 4, sr, 0, 0, &t, err) != 0 ||  // warm-up, picks
        s_both(wk, gc, sg, b->o->overlap_gemms, sr, 0, 0, &tg, err) != 0)
        goto done;
    tg /= b->o->overlap_gemms;
    for (int per = 1; per <= (wk->att ? 1 : 16); per *= 2) {  // the attention's grid is its own
        if (s_both(wk, gc, sg, 0, sr, 4, nr * per, &t, err) != 0) goto done;
        if (t / 4 < tr) tr = t / 4, blocks = nr * per;
    }
    int k2 = (int)(b->o->overlap_gemms * tg / tr + 0.5);
    if (k2 < 1) k2 = 1;
    if (s_both(wk, gc, sg, b->o->overlap_gemms, sr, k2, blocks, &tb, err) != 0) goto done;
    // the same work one after the other on the whole device, measured (GEMMs and reads interleaved on one
    // stream): over many calls the clocks settle where the power limit puts them for that mix
    double ts = 0;
    if (s_both(wk, wk->gemm, b->stream, b->o->overlap_gemms, b->stream, k2, 8 * (ng + nr), &ts, err) != 0) goto done;
    char v[48];
    snprintf(v, sizeof v, "gemm on %d SMs", ng);
    s_row(b, wk, v, tg, flops, 0);
    if (wk->att)
        snprintf(v, sizeof v, "attn on %d SMs", nr);
    else
        snprintf(v, sizeof v, "read on %d SMs (%d blocks)", nr, blocks);
    s_row(b, wk, v, tr, 0, bytes);
    snprintf(v, sizeof v, "both %d/%d: %d+%d (serial %.1f)", ng, nr, b->o->overlap_gemms, k2,
             b->o->overlap_gemms * t_gemm + k2 * t_read);
    s_row(b, wk, v, tb, b->o->overlap_gemms * flops, k2 * bytes);
    snprintf(v, sizeof v, "serial, measured: %d+%d", b->o->overlap_gemms, k2);
    s_row(b, wk, v, ts, b->o->overlap_gemms * flops, k2 * bytes);
    rc = 0;
done:
    kvf_gemm_ctx_destroy(&gc);
    kvf_green_destroy(&gr);
    return rc;
}

int kvf_kb_bench_overlap(kvf_kb_t *b, kvf_err_t *err) {
    kvf_err_t gerr;
    kvf_green_t *probe = kvf_green_new(b->o->device, 8, &gerr);
    if (!probe) {
        fprintf(stderr, "kvf-kbench: overlap: skipped (%s)\n", gerr.msg);
        return 0;
    }
    const int n_sms = kvf_green_sms(probe, 0) + kvf_green_sms(probe, 1);
    kvf_green_destroy(&probe);
    const int mark = b->n_alloc;
    s_work_t wk;
    void *x = NULL, *w = NULL, *y = NULL, *buf = NULL, *out = NULL, *ws = NULL, *ws2 = NULL;
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
        s_both(&wk, wk.gemm, b->stream, b->o->overlap_gemms, s2, 0, 0, &tg, err) != 0 ||
        s_both(&wk, wk.gemm, b->stream, 0, s2, 10, n_sms * 8, &tr, err) != 0)
        goto done;
    tg /= b->o->overlap_gemms, tr /= 10;
    int k2 = (int)(b->o->overlap_gemms * tg / tr + 0.5);
    if (k2 < 1) k2 = 1;
    if (s_both(&wk, wk.gemm, b->stream, b->o->overlap_gemms, s2, k2, n_sms * 8, &tb, err) != 0) goto done;
    char v[48];
    snprintf(v, sizeof v, "gemm, all %d SMs", n_sms);
    s_row(b, &wk, v, tg, flops, 0);
    snprintf(v, sizeof v, "read, all %d SMs", n_sms);
    s_row(b, &wk, v, tr, 0, bytes);
    snprintf(v, sizeof v, "both, 2 streams: %d+%d (serial %.1f)", b->o->overlap_gemms, k2, b->o->overlap_gemms * tg + k2 * tr);
    s_row(b, &wk, v, tb, b->o->overlap_gemms * flops, k2 * bytes);
    static const int splits[] = {112, 104, 96, 88};
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++)
        if (splits[i] < n_sms && s_split(b, &wk, ws2, splits[i], tg, tr, err) != 0) goto done;
    // the same with a decode step's attention (512 sequences, the default kernel) in place of the read:
    // what two-batch overlap puts beside a GEMM
    kvf_kb_decode_t att;
    if (kvf_kb_decode_case(b, 512, &att, err) != 0) goto done;
    wk.att = &att;
    double ta = 0;
    if (s_both(&wk, wk.gemm, b->stream, 0, b->stream, 2, 0, &t, err) != 0 ||  // warm-up
        s_both(&wk, wk.gemm, b->stream, 0, b->stream, 10, 0, &ta, err) != 0)
        goto done;
    ta /= 10;
    snprintf(v, sizeof v, "attn, all %d SMs", n_sms);
    s_row(b, &wk, v, ta, 0, att.bytes);
    static const int att_splits[] = {104, 88, 80};
    for (size_t i = 0; i < sizeof att_splits / sizeof att_splits[0]; i++)
        if (att_splits[i] < n_sms && s_split(b, &wk, ws2, att_splits[i], tg, ta, err) != 0) goto done;
    rc = 0;
done:
    if (s2) cudaStreamDestroy(s2);
    kvf_gemm_ctx_destroy(&wk.gemm);
    if (kvf_kb_free_to(b, mark, rc == 0 ? err : NULL) != 0) rc = -1;
    return rc;
}
