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
// tool allocates goes through one list (kvf_kb_alloc) and is freed after each
// section; at most about 1.4 GB is held (gemm gate_up at n 8192, attn-decode at B 512).
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "common/args.h"
#include "common/log.h"
#include "kernels/check.h"
#include "kernels/convert.h"
#include "kernels/gemm.h"
#include "kernels/green.h"
#include "bench/kbench.h"

static const char *s_usage =
    "usage: kvf-kbench [--only SECTION[,SECTION...]]... [--gemm-n N[,N...]] [--no-tune] [--reps N] [--warmup N]\n"
    "                  [--decode-b B[,B...]] [--decode-ctx LEN] [--tune-reps N] [--tune-rounds N]\n"
    "                  [--device N] [--seed S] [--sms N] [--overlap-gemms N] [--settle-ms MS] [--json]\n"
    "\n"
    "Times the CUDA kernels on the Llama-3-8B shapes: one row per (kernel, variant, shape) with the median\n"
    "and min ms of N timed calls (CUDA events around each, after the warm-up calls; defaults 20 and 5) and\n"
    "the TFLOP/s and/or TB/s the median achieves. SECTION: gemm, silu, norm, rope, attn-decode,\n"
    "attn-prefill, sample, read (the device's read ceilings: a flat buffer and attn-decode's paged\n"
    "pattern), mlp (gate/up GEMM + silu_mul against the fused SwiGLU GEMM), qkv (QKV GEMM + rope_kv against\n"
    "the fused QKV + RoPE GEMM, and that kernel's MMA loop alone: what its epilogue costs), overlap (a\n"
    "1024-row GEMM beside a streaming read: on two streams, and on green contexts splitting the SMs; wall ms,\n"
    "not events) (default: all, in that order).\n"
    "\"rot N\" (JSON \"copies\"): the inputs are N copies, each call reading the next, so that they come\n"
    "from HBM and not the L2. --json prints one JSON array: a device\n"
    "object, then one object a row. --gemm-n: the GEMMs' row counts (default 512,8192; at most 8, each\n"
    "1..16384); --no-tune: only the heuristic's pick; --tune-reps / --tune-rounds: kvf_gemm_ctx_set_tune (defaults 8,\n"
    "1). --decode-b: attn-decode's sequence counts (default 128,512; at most 8, each 1..4096). --decode-ctx:\n"
    "every attn-decode sequence's keys, new token included (1..640; default: each uniform in [512, 640]; one\n"
    "length for all, as in the standard workload's decode steps). --sms N: run\n"
    "the sections on a green context of N SMs (kernels/green.h; the driver may round N up), each call timed\n"
    "by the host's clock between two synchronizations (overlap makes its own contexts). --overlap-gemms N:\n"
    "the GEMM calls of each overlap measurement (default 40; thousands run long enough for the clocks to\n"
    "settle under the power limit). --settle-ms MS: before each row's warm-up, run its op for MS ms (default 0),\n"
    "so that the timed calls run at the clock the power limit settles to (a short burst runs at the boost\n"
    "clock: bench/RESULTS.md, session 17); where the driver has NVML, the note (JSON settle_*) also gives the\n"
    "board's mean power, the SM clock, and its energy per FLOP (or per byte) over those calls, read from its\n"
    "energy counter: at the power limit a kernel is as fast as it is frugal. Needs a CUDA device; this help\n"
    "does not.\n";

static const struct {
    const char *name;
    int bit;
} s_sections[] = {
    {"gemm", KB_SEC_GEMM}, {"silu", KB_SEC_SILU},          {"norm", KB_SEC_NORM},
    {"rope", KB_SEC_ROPE}, {"attn-decode", KB_SEC_DECODE}, {"attn-prefill", KB_SEC_PREFILL},
    {"sample", KB_SEC_SAMPLE}, {"read", KB_SEC_READ},      {"mlp", KB_SEC_MLP},
    {"qkv", KB_SEC_QKV},       {"overlap", KB_SEC_OVERLAP},
};

// ---------------------------------------------------------------- options

// "N[,N...]" (1 to 8 counts, each in [1, max]) into out[], *n_out.
static int s_parse_counts(const char *a, const char *v, int max, int *out, int *n_out, kvf_err_t *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (kvf_args_ids(a, v, &ids, &n, err) != 0) return -1;
    int rc = 0;
    if (n == 0 || n > 8) rc = kvf_err_set(err, KVF_E_INVAL, "%s: give 1 to 8 counts", a);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (ids[i] < 1 || ids[i] > max) rc = kvf_err_set(err, KVF_E_INVAL, "%s: %d is outside [1, %d]", a, ids[i], max);
    for (size_t i = 0; rc == 0 && i < n; i++) out[i] = ids[i];
    if (rc == 0) *n_out = (int)n;
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
                             "--only: unknown section '%s' (gemm, silu, norm, rope, attn-decode, attn-prefill, "
                             "sample, read, mlp, qkv, overlap)",
                             t);
            break;
        }
        *only |= bit;
    }
    free(copy);
    if (rc == 0 && *only == 0) return kvf_err_set(err, KVF_E_INVAL, "--only: empty value");
    return rc;
}

// Parses argv into *o. Returns 0, 1 for --help, or -1 with err set.
static int s_parse_args(int argc, char **argv, kvf_kb_opts_t *o, kvf_err_t *err) {
    memset(o, 0, sizeof *o);
    o->reps = 20;
    o->warmup = 5;
    o->tune_reps = 8, o->tune_rounds = 1;
    o->seed = 1;
    o->overlap_gemms = 40;
    // the options that take one whole number in [lo, hi] into an int
    const struct {
        const char *name;
        int64_t lo, hi;
        int *dst;
    } ints[] = {
        {"--reps", 1, 100000, &o->reps},
        {"--warmup", 0, 100000, &o->warmup},
        {"--device", 0, 1024, &o->device},
        {"--sms", 1, 4096, &o->sms},
        {"--overlap-gemms", 1, 100000, &o->overlap_gemms},
        {"--settle-ms", 0, 600000, &o->settle_ms},
        {"--decode-ctx", 1, 640, &o->decode_ctx},
    };
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
        int in = -1;  // which of ints[], if any
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
            if (strcmp(a, ints[k].name) == 0) in = (int)k;
        if (in < 0 && strcmp(a, "--only") != 0 && strcmp(a, "--seed") != 0 && strcmp(a, "--gemm-n") != 0 &&
            strcmp(a, "--decode-b") != 0 && strcmp(a, "--tune-reps") != 0 && strcmp(a, "--tune-rounds") != 0)
            return kvf_err_set(err, KVF_E_INVAL, "unknown option '%s' (see --help)", a);
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", a);
        const char *v = argv[++i];
        int64_t n = 0;
        int rc = 0;
        if (in >= 0) {
            rc = kvf_args_int(a, v, ints[in].lo, ints[in].hi, &n, err);
            *ints[in].dst = (int)n;
        } else if (strcmp(a, "--only") == 0) {
            rc = s_parse_only(v, &o->only, err);
        } else if (strcmp(a, "--gemm-n") == 0) {
            rc = s_parse_counts(a, v, 16384, o->gemm_n, &o->n_gemm_n, err);
        } else if (strcmp(a, "--decode-b") == 0) {
            rc = s_parse_counts(a, v, 4096, o->decode_b, &o->n_decode_b, err);
        } else if (strcmp(a, "--tune-reps") == 0) {
            rc = kvf_args_int(a, v, 1, 100000, &o->tune_reps, err);
        } else if (strcmp(a, "--tune-rounds") == 0) {
            rc = kvf_args_int(a, v, 1, 15, &o->tune_rounds, err);
        } else {
            rc = kvf_args_int(a, v, 0, INT64_MAX, &n, err);
            o->seed = (uint64_t)n;
        }
        if (rc) return -1;
    }
    if (!o->only) o->only = KB_SEC_ALL;
    if (!o->n_gemm_n) o->gemm_n[0] = 512, o->gemm_n[1] = 8192, o->n_gemm_n = 2;
    if (!o->n_decode_b) o->decode_b[0] = 128, o->decode_b[1] = 512, o->n_decode_b = 2;
    return 0;
}

// ---------------------------------------------------------------- device memory, timing, rows

// Device memory owned by b until kvf_kb_free_all. Returns 0, or -1 with err set.
int kvf_kb_alloc(kvf_kb_t *b, void **p, size_t bytes, kvf_err_t *err) {
    *p = NULL;
    if (b->n_alloc == KB_MAX_ALLOCS) return kvf_err_set(err, KVF_E_INTERNAL, "more than %d allocations", KB_MAX_ALLOCS);
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

// Frees the kvf_kb_alloc buffers allocated after the first `mark` (it synchronizes the
// device). Returns 0, or -1 with err set when a free fails (a sticky error from an
// earlier kernel); frees the rest all the same.
int kvf_kb_free_to(kvf_kb_t *b, int mark, kvf_err_t *err) {
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

int kvf_kb_free_all(kvf_kb_t *b, kvf_err_t *err) { return kvf_kb_free_to(b, 0, err); }

int kvf_kb_upload(kvf_kb_t *b, void **d, const void *h, size_t bytes, kvf_err_t *err) {
    if (kvf_kb_alloc(b, d, bytes, err) != 0) return -1;
    KVF_CUDA_CHECK(cudaMemcpy(*d, h, bytes, cudaMemcpyHostToDevice), err);
    return 0;
}

int kvf_kb_rand_bf16(kvf_kb_t *b, void *p, size_t n, float scale, kvf_err_t *err) {
    return kvf_fill_random_bf16(p, n, b->fill_seed++, 0.0f, scale, b->stream, err);
}

int kvf_kb_rand_f32(kvf_kb_t *b, void *p, size_t n, float scale, kvf_err_t *err) {
    return kvf_fill_random_f32(p, n, b->fill_seed++, 0.0f, scale, b->stream, err);
}

// How many copies of an input of `bytes` exceed KB_ROTATE_BYTES together (1 when one does).
int kvf_kb_copies(size_t bytes) { return bytes >= KB_ROTATE_BYTES ? 1 : (int)(KB_ROTATE_BYTES / bytes) + 1; }

uint64_t kvf_kb_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int s_cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

kvf_gemm_ctx_t *kvf_kb_gemm_ctx(kvf_kb_t *b, void *ws, kvf_err_t *err) {
    kvf_gemm_ctx_t *g = kvf_gemm_ctx_new(ws, KB_GEMM_WORKSPACE, err);
    if (g && b->wall && kvf_gemm_ctx_set_sm_count(g, b->sms, err) != 0) kvf_gemm_ctx_destroy(&g);
    return g;
}

double kvf_kb_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// The settling calls (--settle-ms) and, where NVML is, the board's energy over them. NVML's
// energy counter moves every ~100 ms (an H200, session 18), so the window runs from one of its
// moves to another: the calls start right after a move and go on past settle_ms until the next.
// The host reads the counter while the device works through the queued calls (the host waits on
// the batch before the last, by event): host stalls between calls, NVML's calls among them,
// would cool the last ~100 ms and the clock the timed calls then get. A green context's stream
// (--sms) takes no events: it waits on each batch.
static int s_settle(kvf_kb_t *b, kvf_kb_op_fn op, const void *ud, kvf_kb_time_t *t, kvf_err_t *err) {
    enum { BATCH = 8 };
    uint64_t e0 = 0, e = 0, e_mark = 0;
    KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
    int energy = b->mon && kvf_devmon_energy_mj(b->mon, &e0, NULL) == 0;
    e = e0;
    for (const double w = kvf_kb_now_ms(); energy && e == e0 && kvf_kb_now_ms() - w < 1000;)  // to its next move
        if (kvf_devmon_energy_mj(b->mon, &e, NULL) != 0) energy = 0;
    if (e == e0) energy = 0;  // it did not move in a second, or stopped answering
    e0 = e;
    const double t0 = kvf_kb_now_ms();
    double t1 = t0;
    long calls = 0;
    for (int i = 0, batch = 0, marked = 0, done = 0; !done; i++) {
        if (op(b, ud, i, err) != 0) return -1;
        calls++;
        if (i % BATCH != BATCH - 1) continue;
        t1 = kvf_kb_now_ms();
        if (t1 - t0 >= b->o->settle_ms) {
            if (!energy || t1 - t0 > b->o->settle_ms + 1000.0) {  // no move for a second: give up on it
                energy = 0;
                done = 1;
            } else if (kvf_devmon_energy_mj(b->mon, &e, NULL) != 0) {
                energy = 0;
                done = 1;
            } else if (!marked) {  // the counter as settle_ms ends; then wait for it to move
                e_mark = e, marked = 1;
            } else if (e != e_mark) {
                done = 1;
            }
        }
        if (b->wall) {
            KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
        } else {  // the host keeps the device's pace, one batch behind
            KVF_CUDA_CHECK(cudaEventRecord(b->ev[batch & 1], b->stream), err);
            if (batch > 0) KVF_CUDA_CHECK(cudaEventSynchronize(b->ev[(batch - 1) & 1]), err);
            batch++;
        }
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
    if (energy && e > e0) {  // the calls still queued at the move (<= 2 batches) count without their energy
        uint32_t mhz = 0;
        t->settle_j_per_call = 1e-3 * (double)(e - e0) / (double)calls;
        t->settle_w = (double)(e - e0) / (t1 - t0);  // mJ / ms
        if (kvf_devmon_sm_mhz(b->mon, &mhz, NULL) == 0) t->settle_mhz = mhz;
    }
    return 0;
}

int kvf_kb_time(kvf_kb_t *b, kvf_kb_op_fn op, const void *ud, kvf_kb_time_t *t, kvf_err_t *err) {
    const int W = b->o->warmup, R = b->o->reps;
    t->settle_j_per_call = t->settle_w = t->settle_mhz = 0;
    if (b->o->settle_ms > 0 && s_settle(b, op, ud, t, err) != 0) return -1;
    for (int i = 0; i < W; i++)
        if (op(b, ud, i, err) != 0) return -1;
    for (int i = 0; b->wall && i < R; i++) {
        KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
        const double t0 = kvf_kb_now_ms();
        if (op(b, ud, W + i, err) != 0) return -1;
        KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
        b->ms[i] = (float)(kvf_kb_now_ms() - t0);
    }
    for (int i = 0; !b->wall && i < R; i++) {
        KVF_CUDA_CHECK(cudaEventRecord(b->ev[2 * i], b->stream), err);
        if (op(b, ud, W + i, err) != 0) return -1;
        KVF_CUDA_CHECK(cudaEventRecord(b->ev[2 * i + 1], b->stream), err);
    }
    KVF_CUDA_CHECK(cudaStreamSynchronize(b->stream), err);
    for (int i = 0; !b->wall && i < R; i++)
        KVF_CUDA_CHECK(cudaEventElapsedTime(&b->ms[i], b->ev[2 * i], b->ev[2 * i + 1]), err);
    qsort(b->ms, (size_t)R, sizeof *b->ms, s_cmp_float);
    t->median = R % 2 ? b->ms[R / 2] : 0.5 * ((double)b->ms[R / 2 - 1] + b->ms[R / 2]);
    t->min = b->ms[0];
    return 0;
}

void kvf_kb_emit(kvf_kb_t *b, const kvf_kb_row_t *r) {
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
        const int en = r->t.settle_j_per_call > 0;  // the settling calls' energy (null: not measured)
        json_object_set_new(j, "settle_joules_per_call", en ? json_real(r->t.settle_j_per_call) : json_null());
        json_object_set_new(j, "settle_power_w", en ? json_real(r->t.settle_w) : json_null());
        json_object_set_new(j, "settle_sm_clock_mhz", en && r->t.settle_mhz > 0 ? json_real(r->t.settle_mhz)
                                                                                 : json_null());
        if (r->tuned) {
            json_object_set_new(j, "tune_heuristic_ms", json_real(r->tune_heuristic_ms));
            json_object_set_new(j, "tune_best_ms", json_real(r->tune_best_ms));
        }
        json_array_append_new(b->rows, j);
        return;
    }
    char fl[16] = "-", by[16] = "-", note[192] = "", rot[16] = "";
    if (r->flops > 0) snprintf(fl, sizeof fl, "%.1f", tflops);
    if (r->bytes > 0) snprintf(by, sizeof by, "%.3f", tbps);
    if (r->copies > 1) snprintf(rot, sizeof rot, "rot %d", r->copies);
    if (r->tuned)
        snprintf(note, sizeof note, "%s%stune: heuristic %.4f ms, best %.4f ms", rot, *rot ? ", " : "",
                 r->tune_heuristic_ms, r->tune_best_ms);
    else
        snprintf(note, sizeof note, "%s", rot);
    if (r->t.settle_j_per_call > 0) {  // the settling calls' energy: per FLOP where counted, else per byte
        const size_t k = strlen(note);
        const double per = r->flops > 0 ? r->flops : r->bytes;
        snprintf(note + k, sizeof note - k, "%ssettled %.0f W %.0f MHz", k ? ", " : "", r->t.settle_w,
                 r->t.settle_mhz);
        if (per > 0) {
            const size_t k2 = strlen(note);
            snprintf(note + k2, sizeof note - k2, " %.3g pJ/%s", r->t.settle_j_per_call / per * 1e12,
                     r->flops > 0 ? "FLOP" : "B");
        }
    }
    printf("%-12s %-16s %-34s %9.4f %9.4f %8s %7s  %s\n", r->kernel, r->variant, r->shape, r->t.median, r->t.min, fl,
           by, note);
    fflush(stdout);
}

// ---------------------------------------------------------------- main

// Prints the device line (or adds the device object to the JSON array). Returns 0, or -1 with err set.
static int s_device(kvf_kb_t *b, kvf_err_t *err) {
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
            b->rows, json_pack("{s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:i, s:i, s:i, s:i, s:i, s:i}", "device",
                               dev, "name", pr.name, "cc_major", pr.major, "cc_minor", pr.minor, "sms",
                               pr.multiProcessorCount, "sm_clock_mhz", sm_khz / 1000, "mem_clock_mhz", mem_khz / 1000,
                               "l2_bytes", (json_int_t)pr.l2CacheSize, "mem_bytes", (json_int_t)pr.totalGlobalMem,
                               "mem_bus_bits", pr.memoryBusWidth, "runtime", rt, "driver", drv, "reps", b->o->reps,
                               "warmup", b->o->warmup, "settle_ms", b->o->settle_ms));
        return 0;
    }
    printf("device %d: %s (sm_%d%d), %d SMs, SM clock %d MHz, memory clock %d MHz x %d bits, L2 %.0f MiB, "
           "%.1f GiB; runtime %d, driver %d; median of %d reps after %d warm-up (and %d ms of settling)\n",
           dev, pr.name, pr.major, pr.minor, pr.multiProcessorCount, sm_khz / 1000, mem_khz / 1000, pr.memoryBusWidth,
           pr.l2CacheSize / 1048576.0, pr.totalGlobalMem / 1073741824.0, rt, drv, b->o->reps, b->o->warmup,
           b->o->settle_ms);
    printf("%-12s %-16s %-34s %9s %9s %8s %7s  %s\n", "kernel", "variant", "shape", "median_ms", "min_ms", "TFLOP/s",
           "TB/s", "note");
    return 0;
}

// --settle-ms: the board's energy counter (NVML) for each row's settling calls; without it the
// rows go on and say nothing of energy (why, on stderr).
static void s_energy_start(kvf_kb_t *b) {
    char pci[32];
    kvf_err_t err = {0};
    cudaError_t ce = cudaDeviceGetPCIBusId(pci, sizeof pci, b->o->device);
    if (ce == cudaSuccess) b->mon = kvf_devmon_new(pci, 0, &err);
    if (!b->mon)
        fprintf(stderr, "kvf-kbench: no energy figures for the settling calls: %s\n",
                ce != cudaSuccess ? cudaGetErrorString(ce) : err.msg);
}

// The SM count of b's stream; with --sms, a green context of that many SMs whose stream
// replaces b's (timed by the host's clock). Returns 0, or -1 with err set.
static int s_green(kvf_kb_t *b, kvf_green_t **green, kvf_err_t *err) {
    KVF_CUDA_CHECK(cudaDeviceGetAttribute(&b->sms, cudaDevAttrMultiProcessorCount, b->o->device), err);
    if (b->o->sms <= 0) return 0;
    if (b->o->sms >= b->sms)
        return kvf_err_set(err, KVF_E_INVAL, "--sms %d: the device has %d SMs (leave one for the rest)", b->o->sms,
                           b->sms);
    *green = kvf_green_new(b->o->device, b->o->sms, err);
    if (!*green) return -1;
    b->stream = kvf_green_stream(*green, 0);
    b->sms = kvf_green_sms(*green, 0);
    b->wall = 1;
    if (b->o->json)
        json_array_append_new(b->rows,
                              json_pack("{s:i, s:i}", "green_sms", b->sms, "rest_sms", kvf_green_sms(*green, 1)));
    else
        printf("on a green context of %d SMs (the other %d idle); each call timed by the host's clock\n", b->sms,
               kvf_green_sms(*green, 1));
    return 0;
}

int main(int argc, char **argv) {
    kvf_log_setup("kvf-kbench", -1, KVF_LOG_WARN);
    kvf_kb_opts_t o;
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
    kvf_kb_t b;
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
    if (rc == 0 && o.settle_ms > 0) s_energy_start(&b);
    if (rc == 0) {
        cudaError_t ce = cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking);
        for (; ce == cudaSuccess && n_ev < 2 * o.reps; n_ev++) ce = cudaEventCreate(&b.ev[n_ev]);
        if (ce != cudaSuccess) rc = kvf_err_set(&err, KVF_E_DEVICE, "stream/events: %s", cudaGetErrorString(ce));
    }
    kvf_green_t *green = NULL;
    const cudaStream_t plain = b.stream;
    if (rc == 0) rc = s_green(&b, &green, &err);
    static const struct {
        int bit;
        int (*fn)(kvf_kb_t *, kvf_err_t *);
    } secs[] = {{KB_SEC_GEMM, kvf_kb_bench_gemm},       {KB_SEC_SILU, kvf_kb_bench_silu},
                {KB_SEC_NORM, kvf_kb_bench_norm},       {KB_SEC_ROPE, kvf_kb_bench_rope},
                {KB_SEC_DECODE, kvf_kb_bench_decode},   {KB_SEC_PREFILL, kvf_kb_bench_prefill},
                {KB_SEC_SAMPLE, kvf_kb_bench_sample},   {KB_SEC_READ, kvf_kb_bench_read},
                {KB_SEC_MLP, kvf_kb_bench_mlp},         {KB_SEC_QKV, kvf_kb_bench_qkv},
                {KB_SEC_OVERLAP, kvf_kb_bench_overlap}};
    for (size_t i = 0; rc == 0 && i < sizeof secs / sizeof secs[0]; i++) {
        if (!(o.only & secs[i].bit)) continue;
        rc = secs[i].fn(&b, &err);
        kvf_err_t ferr;
        if (kvf_kb_free_all(&b, &ferr) != 0 && rc == 0) rc = -1, err = ferr;
    }
    for (int i = 0; i < n_ev; i++) cudaEventDestroy(b.ev[i]);
    if (green) b.stream = plain;  // the green context's stream is its own
    kvf_green_destroy(&green);
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
    kvf_devmon_destroy(&b.mon);
    free(b.ev);
    free(b.ms);
    if (rc != 0) {
        fprintf(stderr, "kvf-kbench: %s\n", err.msg);
        return 1;
    }
    return 0;
}
