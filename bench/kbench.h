// bench/kbench.h — kvf-kbench's harness, shared by its two files (not a library
// header): kvf_kbench.c (options, device memory, timing, output, main) and
// kbench_sections.c (one function a kernel section: the ops, their shapes and
// the FLOPs and bytes each call moves).
#ifndef KVF_BENCH_KBENCH_H
#define KVF_BENCH_KBENCH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "bench/devmon.h"
#include "common/error.h"
#include "kernels/gemm.h"

// The model shape (Llama-3-8B).
#define KB_DIM 4096
#define KB_FF 14336
#define KB_H 32
#define KB_KV 8
#define KB_HD 128
#define KB_VOCAB 128256
#define KB_BS 64
#define KB_QKV ((KB_H + 2 * KB_KV) * KB_HD)  // 6144, the fused q/k/v projection's width

#define KB_ROTATE_BYTES (120u * 1000u * 1000u)  // inputs below this are rotated over copies
#define KB_POOL_PER_SEQ 10                      // KV pool blocks per sequence (contexts <= 640)
#define KB_GEMM_WORKSPACE (32u << 20)
#define KB_MAX_ALLOCS 64

enum {
    KB_SEC_GEMM = 1 << 0,
    KB_SEC_SILU = 1 << 1,
    KB_SEC_NORM = 1 << 2,
    KB_SEC_ROPE = 1 << 3,
    KB_SEC_DECODE = 1 << 4,
    KB_SEC_PREFILL = 1 << 5,
    KB_SEC_SAMPLE = 1 << 6,
    KB_SEC_READ = 1 << 7,
    KB_SEC_MLP = 1 << 8,
    KB_SEC_QKV = 1 << 9,
    KB_SEC_OVERLAP = 1 << 10,
    KB_SEC_ALL = (1 << 11) - 1,
};

typedef struct {
    int only;  // S_SEC_* bits
    int json;
    int device;
    int reps, warmup;
    uint64_t seed;
    int gemm_n[8], n_gemm_n;  // --gemm-n
    int decode_b[8], n_decode_b;  // --decode-b
    int decode_ctx;           // --decode-ctx: every attn-decode sequence's keys (0: uniform in [512, 640])
    int no_tune;              // --no-tune
    int64_t tune_reps, tune_rounds;  // --tune-reps, --tune-rounds
    int sms;                  // --sms: run on a green context of this many SMs (0: the whole device)
    int overlap_gemms;        // --overlap-gemms: GEMM calls an overlap measurement (default 40)
    int settle_ms;            // --settle-ms: each row's op runs this long before its warm-up (default 0)
} kvf_kb_opts_t;

typedef struct {
    const kvf_kb_opts_t *o;
    cudaStream_t stream;  // the whole device's, or (--sms) the green context's: then timed by the wall clock
    int sms;              // the SMs the stream's kernels run on
    int wall;             // time each call by the host's clock (a green context's stream takes no event)
    cudaEvent_t *ev;  // (2 * reps): start and stop of each timed call
    float *ms;        // (reps) host
    void *dptr[KB_MAX_ALLOCS];
    size_t dbytes[KB_MAX_ALLOCS];
    int n_alloc;
    size_t held, peak;   // bytes this tool holds on the device now / at most
    uint64_t fill_seed;  // every fill gets the next seed
    uint64_t rng;        // host choices (lengths, block order)
    json_t *rows;        // --json: the output array
    kvf_devmon_t *mon;   // --settle-ms: the board's energy counter and clock (NVML), or NULL
} kvf_kb_t;

typedef struct {
    double median, min;  // ms
    // --settle-ms where NVML is: over the settling calls, the board's energy a call (J; 0: not
    // measured), its mean power (W), and the SM clock at their end (MHz)
    double settle_j_per_call, settle_w, settle_mhz;
} kvf_kb_time_t;

typedef struct {
    const char *kernel;
    char variant[48];
    char shape[64];
    kvf_kb_time_t t;
    double flops, bytes;                // per call; 0: not reported
    int copies;                         // input copies rotated over (1: none)
    int tuned;                          // gemm after kvf_gemm_tune: its own timings below
    float tune_heuristic_ms, tune_best_ms;
} kvf_kb_row_t;

// One call of the op under test; rep counts warm-up and timed calls alike (rotation).
typedef int (*kvf_kb_op_fn)(kvf_kb_t *b, const void *ud, int rep, kvf_err_t *err);

// ---------------------------------------------------------------- the harness (kvf_kbench.c)

// A GEMM context on workspace ws (KB_GEMM_WORKSPACE bytes) that picks kernels for
// b's SMs (--sms: the green context's share). Returns it, or NULL with err set.
kvf_gemm_ctx_t *kvf_kb_gemm_ctx(kvf_kb_t *b, void *ws, kvf_err_t *err);
// The host's monotonic clock, ms.
double kvf_kb_now_ms(void);
// Device memory owned by b until kvf_kb_free_all. Returns 0, or -1 with err set.
int kvf_kb_alloc(kvf_kb_t *b, void **p, size_t bytes, kvf_err_t *err);
// Frees the buffers allocated after the first `mark` (synchronizes the device).
int kvf_kb_free_to(kvf_kb_t *b, int mark, kvf_err_t *err);
int kvf_kb_free_all(kvf_kb_t *b, kvf_err_t *err);
// A device copy of h (bytes), owned by b.
int kvf_kb_upload(kvf_kb_t *b, void **d, const void *h, size_t bytes, kvf_err_t *err);
// Fresh random device data (zeros run faster): bf16 / f32, uniform in [-scale, scale].
int kvf_kb_rand_bf16(kvf_kb_t *b, void *p, size_t n, float scale, kvf_err_t *err);
int kvf_kb_rand_f32(kvf_kb_t *b, void *p, size_t n, float scale, kvf_err_t *err);
// How many copies of an input of `bytes` exceed KB_ROTATE_BYTES together (1 when one does).
int kvf_kb_copies(size_t bytes);
uint64_t kvf_kb_splitmix64(uint64_t *state);
// The median and min ms of --reps timed calls of op after --warmup untimed ones (and, with
// --settle-ms, after calls of op for that long: the clock settles where the power limit holds it).
int kvf_kb_time(kvf_kb_t *b, kvf_kb_op_fn op, const void *ud, kvf_kb_time_t *t, kvf_err_t *err);
// One output row (a line, or a JSON object with --json).
void kvf_kb_emit(kvf_kb_t *b, const kvf_kb_row_t *r);

// ---------------------------------------------------------------- the sections (kbench_sections.c)

int kvf_kb_bench_gemm(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_silu(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_norm(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_rope(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_decode(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_prefill(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_sample(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_read(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_mlp(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_qkv(kvf_kb_t *b, kvf_err_t *err);
int kvf_kb_bench_overlap(kvf_kb_t *b, kvf_err_t *err);  // kbench_overlap.c

// A decode step's attention as attn-decode times it: n_seqs sequences of 512-640 keys
// in a shuffled paged pool, one new token each, tiles longest first; device buffers
// owned by b. kvf_kb_decode_run launches kvf_attention_decode (the default variant) on s.
typedef struct {
    uint16_t *out, *q, *k, *v;
    int32_t *tiles, *pos, *bt;
    int n_tiles, max_blocks;
    double bytes;  // K and V read, q and out
} kvf_kb_decode_t;
int kvf_kb_decode_case(kvf_kb_t *b, int n_seqs, kvf_kb_decode_t *d, kvf_err_t *err);
int kvf_kb_decode_run(const kvf_kb_decode_t *d, cudaStream_t s, kvf_err_t *err);

#endif
