// bench/kvf_kbench.c — kvf-kbench: a micro-benchmark of the CUDA kernels on the
// Llama-3-8B shapes (dim 4096, ff 14336, 32 query heads, 8 KV heads, head_dim
// 128, vocab 128256, KV blocks of 64 tokens).
//
// One row per (kernel, variant, shape): the median (and min) of --reps timed
// calls, each between two CUDA events, after --warmup untimed calls, and what
// that median achieves in TFLOP/s and/or TB/s from the kernel's real FLOPs and
// bytes (the formulas are next to each section). Inputs are fresh random data
// filled on the device (zeros run faster). Inputs a call reads that total less
// than S_ROTATE_BYTES are kept in several copies and each call reads the next,
// so that the L2 (50 MB on an H200) does not serve them from one call to the
// next: weights and activations come from HBM in a real step. Everything the
// tool allocates goes through one list (s_alloc) and is freed after each
// section; at most about 1.4 GB is held (gemm gate_up at n 8192, attn-decode at B 512).
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/args.h"
#include "common/log.h"
#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_prefill.h"
#include "kernels/check.h"
#include "kernels/convert.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/repetition_penalty.h"
#include "kernels/rope_kv.h"
#include "kernels/sample.h"
#include "kernels/sample_rows.h"
#include "kernels/silu_mul.h"

// The model shape (Llama-3-8B).
#define S_DIM 4096
#define S_FF 14336
#define S_H 32
#define S_KV 8
#define S_HD 128
#define S_VOCAB 128256
#define S_BS 64
#define S_QKV ((S_H + 2 * S_KV) * S_HD)  // 6144, the fused q/k/v projection's width

#define S_ROTATE_BYTES (120u * 1000u * 1000u)  // inputs below this are rotated over copies
#define S_POOL_PER_SEQ 10                      // KV pool blocks per sequence (contexts <= 640)
#define S_GEMM_WORKSPACE (32u << 20)
#define S_MAX_ALLOCS 64

static const char *s_usage =
    "usage: kvf-kbench [--only SECTION[,SECTION...]]... [--gemm-n N[,N...]] [--no-tune] [--reps N] [--warmup N]\n"
    "                  [--tune-reps N] [--tune-rounds N]\n"
    "                  [--device N] [--seed S] [--json]\n"
    "\n"
    "Times the CUDA kernels on the Llama-3-8B shapes: one row per (kernel, variant, shape) with the median\n"
    "and min ms of N timed calls (CUDA events around each, after the warm-up calls; defaults 20 and 5) and\n"
    "the TFLOP/s and/or TB/s the median achieves. SECTION: gemm, silu, norm, rope, attn-decode,\n"
    "attn-prefill, sample (default: all, in that order). \"rot N\" (JSON \"copies\"): the inputs are N copies, each call\n"
    "reading the next, so that they come from HBM and not the L2. --json prints one JSON array: a device\n"
    "object, then one object a row. --gemm-n: the GEMMs' row counts (default 512,8192; at most 8, each\n"
    "1..16384); --no-tune: only the heuristic's pick; --tune-reps / --tune-rounds: kvf_gemm_ctx_set_tune (defaults 8,\n"
    "1). Needs a CUDA device; this help does not.\n";

enum {
    S_SEC_GEMM = 1 << 0,
    S_SEC_SILU = 1 << 1,
    S_SEC_NORM = 1 << 2,
    S_SEC_ROPE = 1 << 3,
    S_SEC_DECODE = 1 << 4,
    S_SEC_PREFILL = 1 << 5,
    S_SEC_SAMPLE = 1 << 6,
    S_SEC_ALL = (1 << 7) - 1,
};

static const struct {
    const char *name;
    int bit;
} s_sections[] = {
    {"gemm", S_SEC_GEMM}, {"silu", S_SEC_SILU},          {"norm", S_SEC_NORM},
    {"rope", S_SEC_ROPE}, {"attn-decode", S_SEC_DECODE}, {"attn-prefill", S_SEC_PREFILL},
    {"sample", S_SEC_SAMPLE},
};

// ---------------------------------------------------------------- options

typedef struct {
    int only;  // S_SEC_* bits
    int json;
    int device;
    int reps, warmup;
    uint64_t seed;
    int gemm_n[8], n_gemm_n;  // --gemm-n
    int no_tune;              // --no-tune
    int64_t tune_reps, tune_rounds;  // --tune-reps, --tune-rounds
} s_opts_t;

// "N[,N...]" into o->gemm_n.
static int s_parse_gemm_n(const char *a, const char *v, s_opts_t *o, kvf_err_t *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (kvf_args_ids(a, v, &ids, &n, err) != 0) return -1;
    int rc = 0;
    if (n == 0 || n > 8) rc = kvf_err_set(err, KVF_E_INVAL, "%s: give 1 to 8 row counts", a);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (ids[i] < 1 || ids[i] > 16384) rc = kvf_err_set(err, KVF_E_INVAL, "%s: %d is outside [1, 16384]", a, ids[i]);
    for (size_t i = 0; rc == 0 && i < n; i++) o->gemm_n[i] = ids[i];
    if (rc == 0) o->n_gemm_n = (int)n;
    free(ids);
    return rc;
}

static int s_parse_only(const char *v, int *only, kvf_err_t *err) {
    char *copy = strdup(v), *save = NULL;
    if (!copy) return kvf_err_set(err, KVF_E_NOMEM, "--only: out of memory");
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int bit = 0;
        for (size_t i = 0; i < sizeof s_sections / sizeof s_sections[0]; i++)
            if (strcmp(t, s_sections[i].name) == 0) bit = s_sections[i].bit;
        if (!bit) {
            rc = kvf_err_set(err, KVF_E_INVAL,
                             "--only: unknown section '%s' (gemm, silu, norm, rope, attn-decode, attn-prefill, sample)", t);
            break;
        }
        *only |= bit;
    }
    free(copy);
    if (rc == 0 && *only == 0) return kvf_err_set(err, KVF_E_INVAL, "--only: empty value");
    return rc;
}

// Parses argv into *o. Returns 0, 1 for --help, or -1 with err set.
static int s_parse_args(int argc, char **argv, s_opts_t *o, kvf_err_t *err) {
    memset(o, 0, sizeof *o);
    o->reps = 20;
    o->warmup = 5;
    o->tune_reps = 8, o->tune_rounds = 1;
    o->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return 1;
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strcmp(a, "--no-tune") == 0) {
            o->no_tune = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) return kvf_err_set(err, KVF_E_INVAL, "unexpected argument '%s'", a);
        if (strcmp(a, "--only") != 0 && strcmp(a, "--reps") != 0 && strcmp(a, "--warmup") != 0 &&
            strcmp(a, "--device") != 0 && strcmp(a, "--seed") != 0 && strcmp(a, "--gemm-n") != 0 &&
            strcmp(a, "--tune-reps") != 0 && strcmp(a, "--tune-rounds") != 0)
            return kvf_err_set(err, KVF_E_INVAL, "unknown option '%s' (see --help)", a);
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", a);
        const char *v = argv[++i];
        int64_t n = 0;
        int rc = 0;
        if (strcmp(a, "--only") == 0) {
            rc = s_parse_only(v, &o->only, err);
        } else if (strcmp(a, "--gemm-n") == 0) {
            rc = s_parse_gemm_n(a, v, o, err);
        } else if (strcmp(a, "--reps") == 0) {
            rc = kvf_args_int(a, v, 1, 100000, &n, err);
            o->reps = (int)n;
        } else if (strcmp(a, "--warmup") == 0) {
            rc = kvf_args_int(a, v, 0, 100000, &n, err);
            o->warmup = (int)n;
        } else if (strcmp(a, "--tune-reps") == 0) {
            rc = kvf_args_int(a, v, 1, 100000, &o->tune_reps, err);
        } else if (strcmp(a, "--tune-rounds") == 0) {
            rc = kvf_args_int(a, v, 1, 15, &o->tune_rounds, err);
        } else if (strcmp(a, "--device") == 0) {
            rc = kvf_args_int(a, v, 0, 1024, &n, err);
            o->device = (int)n;
        } else {
            rc = kvf_args_int(a, v, 0, INT64_MAX, &n, err);
            o->seed = (uint64_t)n;
        }
        if (rc) return -1;
    }
    if (!o->only) o->only = S_SEC_ALL;
    if (!o->n_gemm_n) o->gemm_n[0] = 512, o->gemm_n[1] = 8192, o->n_gemm_n = 2;
    return 0;
}

// ---------------------------------------------------------------- device memory, timing, rows

typedef struct {
    const s_opts_t *o;
    cudaStream_t stream;
    cudaEvent_t *ev;  // (2 * reps): start and stop of each timed call
    float *ms;        // (reps) host
    void *dptr[S_MAX_ALLOCS];
    size_t dbytes[S_MAX_ALLOCS];
    int n_alloc;
    size_t held, peak;   // bytes this tool holds on the device now / at most
    uint64_t fill_seed;  // every fill gets the next seed
    uint64_t rng;        // host choices (lengths, block order)
    json_t *rows;        // --json: the output array
} s_bench_t;

// Device memory owned by b until s_free_all. Returns 0, or -1 with err set.
static int s_alloc(s_bench_t *b, void **p, size_t bytes, kvf_err_t *err) {
    *p = NULL;
    if (b->n_alloc == S_MAX_ALLOCS) return kvf_err_set(err, KVF_E_INTERNAL, "more than %d allocations", S_MAX_ALLOCS);
    cudaError_t ce = cudaMalloc(p, bytes);
    if (ce != cudaSuccess)
        return kvf_err_set(err, KVF_E_NOMEM, "cudaMalloc of %.1f MiB (%.1f MiB held by kvf-kbench): %s",
                           bytes / 1048576.0, b->held / 1048576.0, cudaGetErrorString(ce));
    b->dptr[b->n_alloc] = *p;
    b->dbytes[b->n_alloc++] = bytes;
    b->held += bytes;
    if (b->held > b->peak) b->peak = b->held;
    return 0;
}

// Frees the s_alloc buffers allocated after the first `mark` (it synchronizes the
// device). Returns 0, or -1 with err set when a free fails (a sticky error from an
// earlier kernel); frees the rest all the same.
static int s_free_to(s_bench_t *b, int mark, kvf_err_t *err) {
    int rc = 0;
    while (b->n_alloc > mark) {
        b->n_alloc--;
        cudaError_t ce = cudaFree(b->dptr[b->n_alloc]);
        if (ce != cudaSuccess && rc == 0)
            rc = kvf_err_set(err, KVF_E_DEVICE, "cudaFree: %s", cudaGetErrorString(ce));
        b->held -= b->dbytes[b->n_alloc];
    }
    return rc;
}

static int s_free_all(s_bench_t *b, kvf_err_t *err) { return s_free_to(b, 0, err); }

static int s_upload(s_bench_t *b, void **d, const void *h, size_t bytes, kvf_err_t *err) {
    if (s_alloc(b, d, bytes, err) != 0) return -1;
    KVF_CUDA_CHECK(cudaMemcpy(*d, h, bytes, cudaMemcpyHostToDevice), err);
    return 0;
}

static int s_rand_bf16(s_bench_t *b, void *p, size_t n, float scale, kvf_err_t *err) {
    return kvf_fill_random_bf16(p, n, b->fill_seed++, 0.0f, scale, b->stream, err);
}

static int s_rand_f32(s_bench_t *b, void *p, size_t n, float scale, kvf_err_t *err) {
    return kvf_fill_random_f32(p, n, b->fill_seed++, 0.0f, scale, b->stream, err);
}

// How many copies of an input of `bytes` exceed S_ROTATE_BYTES together (1 when one does).
static int s_copies(size_t bytes) { return bytes >= S_ROTATE_BYTES ? 1 : (int)(S_ROTATE_BYTES / bytes) + 1; }

static uint64_t s_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// One call of the op under test; rep counts warm-up and timed calls alike (rotation).
typedef int (*s_op_fn)(s_bench_t *b, const void *ud, int rep, kvf_err_t *err);

typedef struct {
    double median, min;  // ms
} s_time_t;

static int s_cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int s_time(s_bench_t *b, s_op_fn op, const void *ud, s_time_t *t, kvf_err_t *err) {
    const int W = b->o->warmup, R = b->o->reps;
    for (int i = 0; i < W; i++)
        if (op(b, ud, i, err) != 0) return -1;
    for (int i = 0; i < R; i++) {
        KVF_CUDA_CHECK(cudaEventRecord(b->ev[2 * i], b->stream), err);
        if (op(b, ud, W + i, err) != 0) return -1;
        KVF_CUDA_CHECK(cudaEventRecord(b->ev[2 * i + 1], b->stream), err);
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
    for (int i = 0; i < R; i++) KVF_CUDA_CHECK(cudaEventElapsedTime(&b->ms[i], b->ev[2 * i], b->ev[2 * i + 1]), err);
    qsort(b->ms, (size_t)R, sizeof *b->ms, s_cmp_float);
    t->median = R % 2 ? b->ms[R / 2] : 0.5 * ((double)b->ms[R / 2 - 1] + b->ms[R / 2]);
    t->min = b->ms[0];
    return 0;
}

typedef struct {
    const char *kernel;
    char variant[48];
    char shape[64];
    s_time_t t;
    double flops, bytes;                // per call; 0: not reported
    int copies;                         // input copies rotated over (1: none)
    int tuned;                          // gemm after kvf_gemm_tune: its own timings below
    float tune_heuristic_ms, tune_best_ms;
} s_row_t;

static void s_emit(s_bench_t *b, const s_row_t *r) {
    const double s = r->t.median * 1e-3;
    const double tflops = r->flops > 0 ? r->flops / s * 1e-12 : 0, tbps = r->bytes > 0 ? r->bytes / s * 1e-12 : 0;
    if (b->o->json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:f, s:f}", "kernel", r->kernel, "variant", r->variant, "shape",
                              r->shape, "median_ms", r->t.median, "min_ms", r->t.min);
        // Counts are whole numbers (exact as integers); null where not reported.
        json_object_set_new(j, "flops", r->flops > 0 ? json_integer((json_int_t)llround(r->flops)) : json_null());
        json_object_set_new(j, "bytes", r->bytes > 0 ? json_integer((json_int_t)llround(r->bytes)) : json_null());
        json_object_set_new(j, "tflops", r->flops > 0 ? json_real(tflops) : json_null());
        json_object_set_new(j, "tbps", r->bytes > 0 ? json_real(tbps) : json_null());
        json_object_set_new(j, "copies", json_integer(r->copies > 1 ? r->copies : 1));
        if (r->tuned) {
            json_object_set_new(j, "tune_heuristic_ms", json_real(r->tune_heuristic_ms));
            json_object_set_new(j, "tune_best_ms", json_real(r->tune_best_ms));
        }
        json_array_append_new(b->rows, j);
        return;
    }
    char fl[16] = "-", by[16] = "-", note[96] = "", rot[16] = "";
    if (r->flops > 0) snprintf(fl, sizeof fl, "%.1f", tflops);
    if (r->bytes > 0) snprintf(by, sizeof by, "%.3f", tbps);
    if (r->copies > 1) snprintf(rot, sizeof rot, "rot %d", r->copies);
    if (r->tuned)
        snprintf(note, sizeof note, "%s%stune: heuristic %.4f ms, best %.4f ms", rot, *rot ? ", " : "",
                 r->tune_heuristic_ms, r->tune_best_ms);
    else
        snprintf(note, sizeof note, "%s", rot);
    printf("%-12s %-16s %-34s %9.4f %9.4f %8s %7s  %s\n", r->kernel, r->variant, r->shape, r->t.median, r->t.min, fl,
           by, note);
    fflush(stdout);
}

// ---------------------------------------------------------------- gemm
// y (n, d_out) = x (n, d_in) @ W^T, W (d_out, d_in) bf16, y f32 or bf16, beta 0.
// FLOPs = 2 n d_in d_out; bytes = 2 d_out d_in (W) + 2 n d_in (x) + {4|2} n d_out (y).

typedef struct {
    kvf_gemm_ctx_t *ctx;
    void *y;
    kvf_gemm_out_t yt;
    const uint16_t *x;  // (n, d_in)
    const uint16_t *w;  // (nw, d_out, d_in): call i reads copy i % nw
    int nw, n, d_in, d_out;
} s_gemm_t;

static int s_gemm_op(s_bench_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_gemm_t *g = ud;
    const uint16_t *w = g->w + (size_t)(rep % g->nw) * g->d_out * g->d_in;
    return kvf_gemm(g->ctx, g->y, g->yt, g->x, w, g->n, g->d_in, g->d_out, 0.0f, b->stream, err);
}

static int s_bench_gemm(s_bench_t *b, kvf_err_t *err) {
    static const struct {
        const char *name;
        int d_in, d_out, max_n;  // max_n 0: every n
    } shapes[] = {
        {"qkv", S_DIM, S_QKV, 0},     {"o", S_H * S_HD, S_DIM, 0},       {"gate_up", S_DIM, 2 * S_FF, 0},
        {"down", S_FF, S_DIM, 0},     {"lm_head", S_DIM, S_VOCAB, 512},
    };
    const int *ns = b->o->gemm_n, n_ns = b->o->n_gemm_n;
    int n_max = 0;
    for (int i = 0; i < n_ns; i++) n_max = ns[i] > n_max ? ns[i] : n_max;
    void *ws = NULL, *ws_tune = NULL;
    kvf_gemm_ctx_t *heur = NULL, *tune = NULL;
    int rc = -1;
    if (s_alloc(b, &ws, S_GEMM_WORKSPACE, err) != 0 || s_alloc(b, &ws_tune, S_GEMM_WORKSPACE, err) != 0) goto done;
    if (!(heur = kvf_gemm_ctx_new(ws, S_GEMM_WORKSPACE, err))) goto done;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int d_in = shapes[si].d_in, d_out = shapes[si].d_out;
        const size_t w_elems = (size_t)d_in * d_out;
        const int nw = s_copies(2 * w_elems);
        const int max_n = shapes[si].max_n && shapes[si].max_n < n_max ? shapes[si].max_n : n_max;
        const int mark = b->n_alloc;  // this shape's buffers are freed below
        void *w = NULL, *x = NULL, *y = NULL;
        if (s_alloc(b, &w, 2 * w_elems * nw, err) != 0 || s_rand_bf16(b, w, w_elems * nw, 0.05f, err) != 0 ||
            s_alloc(b, &x, (size_t)max_n * d_in * 2, err) != 0 ||
            s_rand_bf16(b, x, (size_t)max_n * d_in, 1.0f, err) != 0 ||
            s_alloc(b, &y, (size_t)max_n * d_out * 4, err) != 0)
            goto done;
        for (int ni = 0; ni < n_ns; ni++) {
            const int n = ns[ni];
            if (n > max_n) continue;
            for (int f32 = 1; f32 >= 0; f32--) {
                s_gemm_t g = {heur, y, f32 ? KVF_GEMM_OUT_F32 : KVF_GEMM_OUT_BF16, x, w, nw, n, d_in, d_out};
                s_row_t r = {.kernel = "gemm"};
                snprintf(r.shape, sizeof r.shape, "%s %dx%d->%d", shapes[si].name, n, d_in, d_out);
                r.copies = nw;
                r.flops = 2.0 * n * d_in * d_out;
                r.bytes = 2.0 * w_elems + 2.0 * n * d_in + (f32 ? 4.0 : 2.0) * n * d_out;
                snprintf(r.variant, sizeof r.variant, "%s heuristic", f32 ? "f32" : "bf16");
                if (s_time(b, s_gemm_op, &g, &r.t, err) != 0) goto done;
                s_emit(b, &r);
                if (b->o->no_tune) continue;
                // A fresh context, so the tune's pick is for this shape alone; it
                // tunes on copy 0 (its own timings may see W in L2 for small W).
                if (!(tune = kvf_gemm_ctx_new(ws_tune, S_GEMM_WORKSPACE, err)) ||
                    kvf_gemm_ctx_set_tune(tune, (int)b->o->tune_reps, (int)b->o->tune_rounds, err) != 0)
                    goto done;
                if (kvf_gemm_tune(tune, y, g.yt, x, w, n, d_in, d_out, b->stream, &r.tune_heuristic_ms,
                                  &r.tune_best_ms, err) != 0)
                    goto done;
                g.ctx = tune;
                r.tuned = 1;
                snprintf(r.variant, sizeof r.variant, "%s tuned", f32 ? "f32" : "bf16");
                if (s_time(b, s_gemm_op, &g, &r.t, err) != 0) goto done;
                s_emit(b, &r);
                kvf_gemm_ctx_destroy(&tune);
            }
        }
        if (s_free_to(b, mark, err) != 0) goto done;  // this shape's W, x, y
    }
    rc = 0;
done:
    kvf_gemm_ctx_destroy(&tune);
    kvf_gemm_ctx_destroy(&heur);
    return rc;  // the workspaces go with the section's s_free_all
}

// ---------------------------------------------------------------- silu
// out (n, ff) bf16 = silu(gate) * up, gate/up the two halves of one (n, 2 ff) row (ld 2 ff).
// bytes = n ff (2 e + 2), e = 4 (f32 in) or 2 (bf16 in): gate and up read, out written.

typedef struct {
    uint16_t *out;
    const void *in;  // (copies, n, 2 ff) f32 or bf16
    int copies, n, f32;
} s_silu_t;

static int s_silu_op(s_bench_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_silu_t *s = ud;
    const size_t off = (size_t)(rep % s->copies) * s->n * 2 * S_FF;
    if (s->f32) {
        const float *g = (const float *)s->in + off;
        return kvf_silu_mul_f32(s->out, g, g + S_FF, s->n, S_FF, 2 * S_FF, b->stream, err);
    }
    const uint16_t *g = (const uint16_t *)s->in + off;
    return kvf_silu_mul(s->out, g, g + S_FF, s->n, S_FF, 2 * S_FF, b->stream, err);
}

static int s_bench_silu(s_bench_t *b, kvf_err_t *err) {
    static const int ns[] = {512, 8192};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int n = ns[ni];
        for (int f32 = 1; f32 >= 0; f32--) {
            const size_t e = f32 ? 4 : 2, in_elems = (size_t)n * 2 * S_FF;
            s_silu_t s = {NULL, NULL, s_copies(in_elems * e), n, f32};
            void *out = NULL, *in = NULL;
            if (s_alloc(b, &out, (size_t)n * S_FF * 2, err) != 0 || s_alloc(b, &in, in_elems * e * s.copies, err) != 0)
                return -1;
            if ((f32 ? s_rand_f32(b, in, in_elems * s.copies, 4.0f, err)
                     : s_rand_bf16(b, in, in_elems * s.copies, 4.0f, err)) != 0)
                return -1;
            s.out = out, s.in = in;
            s_row_t r = {.kernel = "silu_mul"};
            snprintf(r.variant, sizeof r.variant, "%s", f32 ? "f32 in" : "bf16 in");
            snprintf(r.shape, sizeof r.shape, "n=%d ff=%d ld=%d", n, S_FF, 2 * S_FF);
            r.copies = s.copies;
            r.bytes = (double)n * S_FF * (2.0 * e + 2.0);
            if (s_time(b, s_silu_op, &s, &r.t, err) != 0) return -1;
            s_emit(b, &r);
            if (s_free_all(b, err) != 0) return -1;
        }
    }
    return 0;
}

// ---------------------------------------------------------------- norm
// residual (n, dim) f32 += x; out (n, dim) bf16 = rmsnorm(residual) * w.
// bytes = n dim (4 + 4 + e + 2) + 4 dim: residual read and written, x read (e = 4 f32,
// 2 bf16), out written, w read.

typedef struct {
    uint16_t *out;
    float *residual;
    const void *x;  // (copies, n, dim)
    const float *w;
    int copies, n, f32;
} s_norm_t;

static int s_norm_op(s_bench_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_norm_t *s = ud;
    const size_t off = (size_t)(rep % s->copies) * s->n * S_DIM;
    if (s->f32)
        return kvf_rmsnorm_add_f32(s->out, s->residual, (const float *)s->x + off, s->w, s->n, S_DIM, 1e-5f,
                                   b->stream, err);
    return kvf_rmsnorm_add(s->out, s->residual, (const uint16_t *)s->x + off, s->w, s->n, S_DIM, 1e-5f, b->stream,
                           err);
}

static int s_bench_norm(s_bench_t *b, kvf_err_t *err) {
    const int n = 8192;
    for (int f32 = 1; f32 >= 0; f32--) {
        const size_t e = f32 ? 4 : 2, elems = (size_t)n * S_DIM;
        s_norm_t s = {NULL, NULL, NULL, NULL, s_copies(elems * e), n, f32};
        void *out = NULL, *res = NULL, *x = NULL, *w = NULL;
        if (s_alloc(b, &out, elems * 2, err) != 0 || s_alloc(b, &res, elems * 4, err) != 0 ||
            s_alloc(b, &x, elems * e * s.copies, err) != 0 || s_alloc(b, &w, S_DIM * 4, err) != 0)
            return -1;
        // The residual grows by x each call: small x keeps it far from overflow.
        if (s_rand_f32(b, res, elems, 1.0f, err) != 0 || s_rand_f32(b, w, S_DIM, 1.0f, err) != 0 ||
            (f32 ? s_rand_f32(b, x, elems * s.copies, 0.1f, err) : s_rand_bf16(b, x, elems * s.copies, 0.1f, err)) != 0)
            return -1;
        s.out = out, s.residual = res, s.x = x, s.w = w;
        s_row_t r = {.kernel = "rmsnorm_add"};
        snprintf(r.variant, sizeof r.variant, "%s x", f32 ? "f32" : "bf16");
        snprintf(r.shape, sizeof r.shape, "n=%d dim=%d", n, S_DIM);
        r.copies = s.copies;
        r.bytes = (double)elems * (4 + 4 + e + 2) + 4.0 * S_DIM;
        if (s_time(b, s_norm_op, &s, &r.t, err) != 0) return -1;
        s_emit(b, &r);
        if (s_free_all(b, err) != 0) return -1;
    }
    return 0;
}

// ---------------------------------------------------------------- paged KV layout

typedef struct {
    int n_seqs, n_blocks, max_blocks;
    int32_t *block_table;  // (n_seqs, max_blocks) host, unused entries -1
} s_paged_t;

// Host: sequence s holds len[s] tokens in blocks handed out from a pool of
// n_seqs * S_POOL_PER_SEQ blocks in a shuffled order, as from a pool that has
// served many requests. Returns 0, or -1 with err set (len[s] too long).
static int s_paged_init(s_bench_t *b, s_paged_t *p, const int *len, int n_seqs, kvf_err_t *err) {
    p->n_seqs = n_seqs;
    p->max_blocks = S_POOL_PER_SEQ;
    p->n_blocks = n_seqs * S_POOL_PER_SEQ;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)p->n_blocks);
    p->block_table = malloc(sizeof(int32_t) * (size_t)p->n_blocks);
    if (!perm || !p->block_table) {
        free(perm);
        return kvf_err_set(err, KVF_E_NOMEM, "block table: out of memory");
    }
    for (int i = 0; i < p->n_blocks; i++) perm[i] = i;
    for (int i = p->n_blocks - 1; i > 0; i--) {
        int j = (int)(s_splitmix64(&b->rng) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int next = 0;
    for (int s = 0; s < n_seqs; s++) {
        const int need = (len[s] + S_BS - 1) / S_BS;
        if (need > p->max_blocks) {
            free(perm);
            return kvf_err_set(err, KVF_E_INTERNAL, "sequence of %d tokens: more than %d blocks", len[s], p->max_blocks);
        }
        for (int i = 0; i < p->max_blocks; i++) p->block_table[s * p->max_blocks + i] = i < need ? perm[next++] : -1;
    }
    free(perm);
    return 0;
}

static void s_paged_fini(s_paged_t *p) {
    free(p->block_table);
    p->block_table = NULL;
}

// Device K and V caches (n_blocks, block_size, n_kv, head_dim) bf16, random, and the block table.
static int s_paged_upload(s_bench_t *b, const s_paged_t *p, uint16_t **k, uint16_t **v, int32_t **bt,
                          kvf_err_t *err) {
    const size_t elems = (size_t)p->n_blocks * S_BS * S_KV * S_HD;
    if (s_alloc(b, (void **)k, elems * 2, err) != 0 || s_alloc(b, (void **)v, elems * 2, err) != 0 ||
        s_rand_bf16(b, *k, elems, 1.0f, err) != 0 || s_rand_bf16(b, *v, elems, 1.0f, err) != 0)
        return -1;
    return s_upload(b, (void **)bt, p->block_table, sizeof(int32_t) * (size_t)p->n_seqs * p->max_blocks, err);
}

// ---------------------------------------------------------------- rope
// Per token: the q and k heads of its qkv row (n, (H + 2 KV) HD) rotated, q to q_out,
// k and v into the paged cache. bytes = n (H + 2 KV) HD e (qkv read, e = 4 f32, 2 bf16)
// + 2 n H HD (q written) + 2 * 2 n KV HD (k, v written) + 8 n (pos, tok_seq)
// + 4 HD/2 (inv_freq) + 4 n_seqs max_blocks (block table).

typedef struct {
    uint16_t *q_out, *k, *v;
    const void *qkv;  // (copies, n, S_QKV)
    const float *inv_freq;
    const int32_t *pos, *tok_seq, *bt;
    int copies, n, f32, max_blocks, n_blocks;
} s_rope_t;

static int s_rope_op(s_bench_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_rope_t *s = ud;
    const size_t off = (size_t)(rep % s->copies) * s->n * S_QKV;
    if (s->f32)
        return kvf_rope_kv_f32(s->q_out, s->k, s->v, (const float *)s->qkv + off, NULL, s->inv_freq, s->pos,
                               s->tok_seq, s->bt, s->max_blocks, s->n, S_H, S_KV, S_HD, S_BS, s->n_blocks, b->stream,
                               err);
    return kvf_rope_kv(s->q_out, s->k, s->v, (const uint16_t *)s->qkv + off, NULL, s->inv_freq, s->pos, s->tok_seq,
                       s->bt, s->max_blocks, s->n, S_H, S_KV, S_HD, S_BS, s->n_blocks, b->stream, err);
}

static int s_bench_rope(s_bench_t *b, kvf_err_t *err) {
    enum { NS = 16, L = 512, N = NS * L };
    int len[NS];
    int32_t *pos = malloc(sizeof(int32_t) * N), *seq = malloc(sizeof(int32_t) * N);
    float inv_freq[S_HD / 2];
    s_paged_t p = {0};
    int rc = -1;
    if (!pos || !seq) {
        kvf_err_set(err, KVF_E_NOMEM, "rope: out of memory");
        goto done;
    }
    for (int s = 0; s < NS; s++) len[s] = L;
    for (int t = 0; t < N; t++) pos[t] = t % L, seq[t] = t / L;
    for (int i = 0; i < S_HD / 2; i++) inv_freq[i] = (float)pow(500000.0, -2.0 * i / S_HD);
    if (s_paged_init(b, &p, len, NS, err) != 0) goto done;
    for (int f32 = 1; f32 >= 0; f32--) {
        const size_t e = f32 ? 4 : 2, elems = (size_t)N * S_QKV;
        s_rope_t s = {.copies = s_copies(elems * e), .n = N, .f32 = f32, .max_blocks = p.max_blocks,
                      .n_blocks = p.n_blocks};
        void *q_out = NULL, *qkv = NULL, *d_if = NULL, *d_pos = NULL, *d_seq = NULL;
        int32_t *bt = NULL;
        if (s_alloc(b, &q_out, (size_t)N * S_H * S_HD * 2, err) != 0 ||
            s_alloc(b, &qkv, elems * e * s.copies, err) != 0 ||
            (f32 ? s_rand_f32(b, qkv, elems * s.copies, 1.0f, err) : s_rand_bf16(b, qkv, elems * s.copies, 1.0f, err)) ||
            s_upload(b, &d_if, inv_freq, sizeof inv_freq, err) != 0 ||
            s_upload(b, &d_pos, pos, sizeof(int32_t) * N, err) != 0 ||
            s_upload(b, &d_seq, seq, sizeof(int32_t) * N, err) != 0 || s_paged_upload(b, &p, &s.k, &s.v, &bt, err) != 0)
            goto done;
        s.q_out = q_out, s.qkv = qkv, s.inv_freq = d_if, s.pos = d_pos, s.tok_seq = d_seq, s.bt = bt;
        s_row_t r = {.kernel = "rope_kv"};
        snprintf(r.variant, sizeof r.variant, "%s qkv", f32 ? "f32" : "bf16");
        snprintf(r.shape, sizeof r.shape, "%dx%d tokens, %d blocks", NS, L, p.n_blocks);
        r.copies = s.copies;
        r.bytes = (double)N * S_QKV * e + 2.0 * N * S_H * S_HD + 4.0 * N * S_KV * S_HD + 8.0 * N + 2.0 * S_HD +
                  4.0 * NS * p.max_blocks;
        if (s_time(b, s_rope_op, &s, &r.t, err) != 0) goto done;
        s_emit(b, &r);
        if (s_free_all(b, err) != 0) goto done;
    }
    rc = 0;
done:
    s_paged_fini(&p);
    free(pos);
    free(seq);
    return rc;
}

// ---------------------------------------------------------------- attention variants
// The variant entry points are benchmarked when kernels/attention_{decode,prefill}.h
// declare them (bench/CMakeLists.txt looks); otherwise the one kernel alone, as "default".

#ifndef KVF_KBENCH_DECODE_VARIANTS
#define KVF_KBENCH_DECODE_VARIANTS 0
#endif
#ifndef KVF_KBENCH_PREFILL_VARIANTS
#define KVF_KBENCH_PREFILL_VARIANTS 0
#endif

static int s_n_variants(int decode) {
    int n = 1;
    (void)decode;  // unused when neither header has variants
#if KVF_KBENCH_DECODE_VARIANTS
    if (decode) n = kvf_attention_decode_n_variants();
#endif
#if KVF_KBENCH_PREFILL_VARIANTS
    if (!decode) n = kvf_attention_prefill_n_variants();
#endif
    return n;
}

static void s_variant_name(int decode, int v, char *buf, size_t cap) {
    const char *name = NULL;
#if KVF_KBENCH_DECODE_NAMES
    if (decode) name = kvf_attention_decode_variant_name(v);
#endif
#if KVF_KBENCH_PREFILL_NAMES
    if (!decode) name = kvf_attention_prefill_variant_name(v);
#endif
    if (name)
        snprintf(buf, cap, "%s", name);
    else if (decode ? KVF_KBENCH_DECODE_VARIANTS : KVF_KBENCH_PREFILL_VARIANTS)
        snprintf(buf, cap, "v%d", v);
    else
        snprintf(buf, cap, "default");
}

typedef struct {
    int variant, decode;
    uint16_t *out;
    const uint16_t *q, *k, *v;
    const int32_t *tiles, *pos, *bt;
    int n_tiles, max_blocks;
} s_attn_t;

static int s_attn_op(s_bench_t *b, const void *ud, int rep, kvf_err_t *err) {
    const s_attn_t *a = ud;
    (void)rep;
    if (a->decode) {
#if KVF_KBENCH_DECODE_VARIANTS
        return kvf_attention_decode_variant(a->variant, a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, a->pos, a->bt,
                                            a->max_blocks, S_H, S_KV, S_HD, S_BS, b->stream, err);
#else
        return kvf_attention_decode(a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, a->pos, a->bt, a->max_blocks, S_H,
                                    S_KV, S_HD, S_BS, b->stream, err);
#endif
    }
#if KVF_KBENCH_PREFILL_VARIANTS
    return kvf_attention_prefill_variant(a->variant, a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, a->pos, a->bt,
                                         a->max_blocks, S_H, S_KV, S_HD, S_BS, b->stream, err);
#else
    return kvf_attention_prefill(a->out, a->q, a->k, a->v, a->tiles, a->n_tiles, a->pos, a->bt, a->max_blocks, S_H,
                                 S_KV, S_HD, S_BS, b->stream, err);
#endif
}

// One attention case: n_seqs sequences adding n_new[s] tokens at positions
// len[s] - n_new[s] .. len[s] - 1 (keys 0 .. len[s] - 1 already in the cache),
// tiles of q_per_tile tokens; times every variant. FLOPs and bytes are per call.
static int s_attn_case(s_bench_t *b, int decode, const int *len, const int32_t *n_new, int n_seqs, int q_per_tile,
                       const char *shape, kvf_err_t *err) {
    s_paged_t p = {0};
    int32_t *pos = NULL, *tiles = NULL;
    int rc = -1, n = 0;
    for (int s = 0; s < n_seqs; s++) n += n_new[s];
    if (!(pos = malloc(sizeof(int32_t) * (size_t)n)) || !(tiles = malloc(sizeof(int32_t) * 3 * (size_t)n))) {
        kvf_err_set(err, KVF_E_NOMEM, "attention: out of memory");
        goto done;
    }
    // decode: K + V bytes of every context, q and out (bf16).
    // prefill: causal FLOPs, 4 HD per (query head, key it sees): QK^T and PV.
    double kv_bytes = 0, flops = 0;
    for (int s = 0, t = 0; s < n_seqs; s++) {
        kv_bytes += 2.0 * 2.0 * len[s] * S_KV * S_HD;
        for (int i = 0; i < n_new[s]; i++, t++) {
            pos[t] = len[s] - n_new[s] + i;
            flops += 4.0 * S_HD * S_H * (pos[t] + 1);
        }
    }
    const int n_tiles = kvf_attn_build_tiles(tiles, n, n_new, n_seqs, q_per_tile);
    if (n_tiles < 0) {
        kvf_err_set(err, KVF_E_INTERNAL, "kvf_attn_build_tiles: more than %d tiles", n);
        goto done;
    }
    if (s_paged_init(b, &p, len, n_seqs, err) != 0) goto done;
    s_attn_t a = {.decode = decode, .n_tiles = n_tiles, .max_blocks = p.max_blocks};
    void *out = NULL, *q = NULL, *d_pos = NULL, *d_tiles = NULL;
    uint16_t *k = NULL, *v = NULL;
    int32_t *bt = NULL;
    const size_t qe = (size_t)n * S_H * S_HD;
    if (s_alloc(b, &out, qe * 2, err) != 0 || s_alloc(b, &q, qe * 2, err) != 0 ||
        s_rand_bf16(b, q, qe, 1.0f, err) != 0 || s_upload(b, &d_pos, pos, sizeof(int32_t) * (size_t)n, err) != 0 ||
        s_upload(b, &d_tiles, tiles, sizeof(int32_t) * 3 * (size_t)n_tiles, err) != 0 ||
        s_paged_upload(b, &p, &k, &v, &bt, err) != 0)
        goto done;
    a.out = out, a.q = q, a.k = k, a.v = v, a.pos = d_pos, a.tiles = d_tiles, a.bt = bt;
    const int nv = s_n_variants(decode);
    for (int vi = 0; vi < nv; vi++) {
        s_row_t r = {.kernel = decode ? "attn_decode" : "attn_prefill"};
        a.variant = vi;
        s_variant_name(decode, vi, r.variant, sizeof r.variant);
        snprintf(r.shape, sizeof r.shape, "%s", shape);
        if (decode)
            r.bytes = kv_bytes + 2.0 * 2.0 * qe;
        else
            r.flops = flops;
        if (s_time(b, s_attn_op, &a, &r.t, err) != 0) goto done;
        s_emit(b, &r);
    }
    rc = s_free_all(b, err);
done:
    s_paged_fini(&p);
    free(pos);
    free(tiles);
    return rc;
}

static int s_bench_decode(s_bench_t *b, kvf_err_t *err) {
#if !KVF_KBENCH_DECODE_VARIANTS
    kvf_log(KVF_LOG_WARN, "kernels/attention_decode.h has no kvf_attention_decode_variant in this build: "
                          "timing kvf_attention_decode alone");
#endif
    if (!kvf_attention_decode_supports(S_H, S_KV, S_HD))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "kvf_attention_decode does not run H %d KV %d HD %d", S_H, S_KV,
                           S_HD);
    static const int bs[] = {128, 512};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++) {
        const int B = bs[i];
        int *len = malloc(sizeof(int) * (size_t)B);
        int32_t *n_new = malloc(sizeof(int32_t) * (size_t)B);
        if (!len || !n_new) {
            free(len);
            free(n_new);
            return kvf_err_set(err, KVF_E_NOMEM, "attn-decode: out of memory");
        }
        long long sum = 0;
        for (int s = 0; s < B; s++) {
            len[s] = 512 + (int)(s_splitmix64(&b->rng) % 129);  // uniform in [512, 640], new token included
            n_new[s] = 1;
            sum += len[s];
        }
        char shape[64];
        snprintf(shape, sizeof shape, "B=%d ctx 512-640 (mean %.0f)", B, (double)sum / B);
        // Decode tiles as the backend builds them: one new token a sequence, so one
        // tile a sequence whatever q_per_tile (the rows a tile could hold).
        int rc = s_attn_case(b, 1, len, n_new, B, KVF_ATTN_DECODE_ROWS / (S_H / S_KV), shape, err);
        free(len);
        free(n_new);
        if (rc != 0) return -1;
    }
    return 0;
}

static int s_bench_prefill(s_bench_t *b, kvf_err_t *err) {
#if !KVF_KBENCH_PREFILL_VARIANTS
    kvf_log(KVF_LOG_WARN, "kernels/attention_prefill.h has no kvf_attention_prefill_variant in this build: "
                          "timing kvf_attention_prefill alone");
#endif
    if (!kvf_attention_prefill_supports(S_HD))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "kvf_attention_prefill does not run HD %d", S_HD);
    enum { NS = 16, L = 512 };
    int len[NS];
    int32_t n_new[NS];
    for (int s = 0; s < NS; s++) len[s] = n_new[s] = L;  // from position 0
    return s_attn_case(b, 0, len, n_new, NS, KVF_ATTN_PREFILL_Q, "16x512 new tokens from pos 0", err);
}

// ---------------------------------------------------------------- sample
// Each row's token from f32 logits (rows, vocab): kvf_argmax, or the repetition
// penalty (640 history ids a row) and/or kvf_sample_rows with the settings of the
// variant. Flat rows (uniform in +-0.5: top-p keeps most of the vocabulary) and
// peaked ones (+-12). bytes = the logits read once (the kernels read them several times).

typedef struct {
    int32_t *ids;
    float *logits;
    const kvf_sample_params_t *params;
    const int32_t *hist, *hist_off;
    const float *pen;
    float *scratch;
    int n, mode;  // 0 argmax, 1 sample_rows, 2 penalty + argmax
} s_sample_t;

static int s_sample_op(s_bench_t *b, const void *ud, int rep, kvf_err_t *err) {
    (void)rep;
    const s_sample_t *s = ud;
    if (s->mode == 1) return kvf_sample_rows(s->ids, s->logits, s->params, s->n, S_VOCAB, b->stream, err);
    if (s->mode == 2 && kvf_repetition_penalty(s->logits, s->hist, s->hist_off, s->pen, s->scratch, s->n, S_VOCAB,
                                               b->stream, err) != 0)
        return -1;  // the penalty is idempotent enough for timing: each call penalises the row again
    return kvf_argmax(s->ids, s->logits, s->n, S_VOCAB, b->stream, err);
}

static int s_bench_sample(s_bench_t *b, kvf_err_t *err) {
    static const struct {
        const char *name;
        int mode;
        kvf_sample_params_t p;
    } vs[] = {
        {"argmax", 0, {0.0f, 0, 1.0f, 0.0f, 0.5}},
        {"T1", 1, {1.0f, 0, 1.0f, 0.0f, 0.5}},
        {"T0.7 top-p0.9", 1, {0.7f, 0, 0.9f, 0.0f, 0.5}},
        {"T1 top-k50", 1, {1.0f, 50, 1.0f, 0.0f, 0.5}},
        {"T1 min-p0.05", 1, {1.0f, 0, 1.0f, 0.05f, 0.5}},
        {"penalty+argmax", 2, {0.0f, 0, 1.0f, 0.0f, 0.5}},
    };
    enum { NH = 640 };
    static const int ns[] = {256, 512};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int n = ns[ni];
        for (int peaked = 0; peaked < 2; peaked++) {
            void *lg = NULL, *ids = NULL, *params = NULL, *hist = NULL, *hoff = NULL, *pen = NULL, *scr = NULL;
            int32_t *h_hist = malloc((size_t)n * NH * 4), *h_off = malloc((size_t)(n + 1) * 4);
            float *h_pen = malloc((size_t)n * 4);
            kvf_sample_params_t *h_p = malloc((size_t)n * sizeof *h_p);
            if (!h_hist || !h_off || !h_pen || !h_p) {
                free(h_hist), free(h_off), free(h_pen), free(h_p);
                return kvf_err_set(err, KVF_E_NOMEM, "kvf-kbench: out of host memory");
            }
            for (int i = 0; i < n; i++) {
                h_off[i] = i * NH, h_pen[i] = 1.1f;
                for (int j = 0; j < NH; j++) h_hist[i * NH + j] = (int32_t)((i * 7919u + j * 104729u) % S_VOCAB);
            }
            h_off[n] = n * NH;
            int rc = s_alloc(b, &lg, (size_t)n * S_VOCAB * 4, err) != 0 ||
                     s_rand_f32(b, lg, (size_t)n * S_VOCAB, peaked ? 12.0f : 0.5f, err) != 0 ||
                     s_alloc(b, &ids, (size_t)n * 4, err) != 0 || s_alloc(b, &scr, (size_t)n * NH * 4, err) != 0 ||
                     s_upload(b, &hist, h_hist, (size_t)n * NH * 4, err) != 0 ||
                     s_upload(b, &hoff, h_off, (size_t)(n + 1) * 4, err) != 0 ||
                     s_upload(b, &pen, h_pen, (size_t)n * 4, err) != 0;
            for (size_t vi = 0; rc == 0 && vi < sizeof vs / sizeof vs[0]; vi++) {
                for (int i = 0; i < n; i++) h_p[i] = vs[vi].p, h_p[i].u = (i + 0.5) / n;
                if (params) rc = s_free_to(b, b->n_alloc - 1, err);  // the previous variant's params (last)
                params = NULL;
                if (rc == 0) rc = s_upload(b, &params, h_p, (size_t)n * sizeof *h_p, err);
                if (rc != 0) break;
                s_sample_t s = {ids, lg, params, hist, hoff, pen, scr, n, vs[vi].mode};
                s_row_t r = {.kernel = "sample"};
                snprintf(r.variant, sizeof r.variant, "%s", vs[vi].name);
                snprintf(r.shape, sizeof r.shape, "%d x %d %s", n, S_VOCAB, peaked ? "peaked" : "flat");
                r.bytes = (double)n * S_VOCAB * 4;
                rc = s_time(b, s_sample_op, &s, &r.t, err);
                if (rc == 0) s_emit(b, &r);
            }
            free(h_hist), free(h_off), free(h_pen), free(h_p);
            if (rc != 0 || s_free_all(b, err) != 0) return -1;
        }
    }
    return 0;
}

// ---------------------------------------------------------------- main

// Prints the device line (or adds the device object to the JSON array). Returns 0, or -1 with err set.
static int s_device(s_bench_t *b, kvf_err_t *err) {
    const int dev = b->o->device;
    int count = 0, sm_khz = 0, mem_khz = 0, rt = 0, drv = 0;
    cudaError_t ce = cudaGetDeviceCount(&count);
    if (ce != cudaSuccess) return kvf_err_set(err, KVF_E_DEVICE, "no CUDA device: %s", cudaGetErrorString(ce));
    if (dev >= count) return kvf_err_set(err, KVF_E_INVAL, "--device %d: there are %d CUDA devices", dev, count);
    KVF_CUDA_CHECK(cudaSetDevice(dev), err);
    struct cudaDeviceProp pr;
    KVF_CUDA_CHECK(cudaGetDeviceProperties(&pr, dev), err);
    KVF_CUDA_CHECK(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, dev), err);
    KVF_CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, dev), err);
    KVF_CUDA_CHECK(cudaRuntimeGetVersion(&rt), err);
    KVF_CUDA_CHECK(cudaDriverGetVersion(&drv), err);
    if (b->o->json) {
        json_array_append_new(
            b->rows, json_pack("{s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:i, s:i, s:i, s:i}", "device", dev,
                               "name", pr.name, "cc_major", pr.major, "cc_minor", pr.minor, "sms",
                               pr.multiProcessorCount, "sm_clock_mhz", sm_khz / 1000, "mem_clock_mhz", mem_khz / 1000,
                               "l2_bytes", (json_int_t)pr.l2CacheSize, "mem_bytes", (json_int_t)pr.totalGlobalMem,
                               "mem_bus_bits", pr.memoryBusWidth, "runtime", rt, "driver", drv, "reps", b->o->reps));
        return 0;
    }
    printf("device %d: %s (sm_%d%d), %d SMs, SM clock %d MHz, memory clock %d MHz x %d bits, L2 %.0f MiB, "
           "%.1f GiB; runtime %d, driver %d; median of %d reps after %d warm-up\n",
           dev, pr.name, pr.major, pr.minor, pr.multiProcessorCount, sm_khz / 1000, mem_khz / 1000, pr.memoryBusWidth,
           pr.l2CacheSize / 1048576.0, pr.totalGlobalMem / 1073741824.0, rt, drv, b->o->reps, b->o->warmup);
    printf("%-12s %-16s %-34s %9s %9s %8s %7s  %s\n", "kernel", "variant", "shape", "median_ms", "min_ms", "TFLOP/s",
           "TB/s", "note");
    return 0;
}

int main(int argc, char **argv) {
    kvf_log_setup("kvf-kbench", -1, KVF_LOG_WARN);
    s_opts_t o;
    kvf_err_t err;
    kvf_err_clear(&err);
    int rc = s_parse_args(argc, argv, &o, &err);
    if (rc == 1) {
        fputs(s_usage, stdout);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "kvf-kbench: %s\n%s", err.msg, s_usage);
        return 2;
    }
    s_bench_t b;
    memset(&b, 0, sizeof b);
    b.o = &o;
    b.fill_seed = o.seed * 1000003u;
    b.rng = o.seed;
    b.rows = json_array();
    b.ev = calloc(2 * (size_t)o.reps, sizeof *b.ev);
    b.ms = calloc((size_t)o.reps, sizeof *b.ms);
    int n_ev = 0;
    rc = b.rows && b.ev && b.ms ? 0 : kvf_err_set(&err, KVF_E_NOMEM, "out of memory");
    if (rc == 0) rc = s_device(&b, &err);
    if (rc == 0) {
        cudaError_t ce = cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking);
        for (; ce == cudaSuccess && n_ev < 2 * o.reps; n_ev++) ce = cudaEventCreate(&b.ev[n_ev]);
        if (ce != cudaSuccess) rc = kvf_err_set(&err, KVF_E_DEVICE, "stream/events: %s", cudaGetErrorString(ce));
    }
    static const struct {
        int bit;
        int (*fn)(s_bench_t *, kvf_err_t *);
    } secs[] = {{S_SEC_GEMM, s_bench_gemm},  {S_SEC_SILU, s_bench_silu},     {S_SEC_NORM, s_bench_norm},
                {S_SEC_ROPE, s_bench_rope},  {S_SEC_DECODE, s_bench_decode}, {S_SEC_PREFILL, s_bench_prefill},
                {S_SEC_SAMPLE, s_bench_sample}};
    for (size_t i = 0; rc == 0 && i < sizeof secs / sizeof secs[0]; i++) {
        if (!(o.only & secs[i].bit)) continue;
        rc = secs[i].fn(&b, &err);
        kvf_err_t ferr;
        if (s_free_all(&b, &ferr) != 0 && rc == 0) rc = -1, err = ferr;
    }
    for (int i = 0; i < n_ev; i++) cudaEventDestroy(b.ev[i]);
    if (b.stream) cudaStreamDestroy(b.stream);
    if (o.json && b.rows) {
        // What was measured before a failure is still valid; the exit status says it stopped.
        char *txt = json_dumps(b.rows, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        if (txt) printf("%s\n", txt);
        free(txt);
    } else if (rc == 0) {
        printf("peak device memory held by kvf-kbench: %.2f GiB\n", b.peak / 1073741824.0);
    }
    json_decref(b.rows);
    free(b.ev);
    free(b.ms);
    if (rc != 0) {
        fprintf(stderr, "kvf-kbench: %s\n", err.msg);
        return 1;
    }
    return 0;
}
