// bench/kvf_bench.c — kvf-bench: the offline throughput benchmark on the
// in-process engine (../shared/DESIGN.md, "Performance yardsticks").
//
// N prompts of I random token ids (seeded) are queued at once; the engine runs
// steps until every prompt has produced exactly O tokens (greedy, EOS ignored;
// anything else is a failure). Each step is timed and its composition
// (kvf_engine_last_step) priced by the step roofline; the workload floor is
// computed from the shape alone (bench/roofline.h). The report is a table, or
// one JSON object with --json. Method and past results: bench/RESULTS.md.
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "bench/devmon.h"
#include "bench/roofline.h"
#include "common/alloc.h"
#include "common/args.h"
#include "common/log.h"
#include "worker/backend.h"
#include "worker/engine.h"
#include "worker/sched.h"
#ifdef KVF_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "worker/cuda_backend.h"
#endif

#define MIB(b) ((double)(b) / (1024.0 * 1024.0))

static const char *s_usage =
    "usage: kvf-bench --config CONFIG.json|DIR [--weights dummy|DIR] --num-prompts N --input-len I --output-len O\n"
    "                 [--backend cpu|cuda] [--device N] [--threads N]\n"
    "                 [--max-batch-size N] [--max-prefill-token-num N] [--block-size N]\n"
    "                 [--cache-max-entry-count X] [--memory-budget SIZE] [--session-len N]\n"
    "                 [--kv-cache-dtype auto|fp8] [--quantization none|fp8]\n"
    "                 [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--repetition-penalty R]\n"
    "                 [--peak-flops 789e12] [--peak-bw 4.2e12] [--seed S] [--cuda-graphs off|on|auto] [--json]\n"
    "                 [--sched auto|mixed|prefill-first] [--trace FILE.csv]\n"
    "\n"
    "Offline throughput: N prompts of I random token ids (seeded), O output tokens each (greedy unless\n"
    "--temperature > 0, request i seeded S + i; EOS ignored), all queued at once. --weights dummy (default) builds the model from its config alone with\n"
    "seeded random weights; --weights DIR loads the safetensors in DIR (--config then names DIR or its\n"
    "config.json, or is left out). --session-len defaults to I + O. --max-batch-size defaults to what the\n"
    "KV pool holds of such sequences, at least 128 and at most 1024 (worker/engine.h). Reports throughput, decode step and\n"
    "TTFT percentiles, peak memory, the KV pool, and the step roofline and workload floor with the\n"
    "fraction of each achieved (peaks default to one H200: 789e12 FLOP/s, 4.2e12 B/s). --cuda-graphs: which\n"
    "decode steps replay the cuda backend's CUDA graphs (worker/cuda_backend.h; default auto). --kv-cache-dtype fp8:\n"
    "an E4M3 KV cache (worker/backend.h; the roofline's KV bytes follow it). --quantization fp8: E4M3 linear\n"
    "layers (W8A8, worker/backend.h); the roofline's weight bytes follow the plan, and --peak-flops defaults\n"
    "to the H200's FP8 GEMM ceiling, 1408e12 (bench/RESULTS.md). --sched: the scheduler's policy (worker/sched.h);\n"
    "auto (default) is prefill-first when the batch and the KV pool hold every prompt at once, else mixed.\n"
    "--trace: one CSV row a step (its time and what it ran: sequences, decodes, prefill tokens, KV tokens\n"
    "read, causal pairs), to see where a schedule spends. With --backend cuda the report also gives the SM clock\n"
    "and power draw in the prefill steps and in the decode steps (JSON \"device_power\"; NVML, every 100 ms,\n"
    "where the driver has it): at a board's power limit the clock sets the rate, and cards differ. Its \"energy\"\n"
    "is the board's energy counter read at the run's start and end: joules, mean watts, tokens per joule (the\n"
    "counter moves every ~100 ms on an H200, so a run of a few seconds is uncertain by a few percent).\n";

// ---------------------------------------------------------------- options

// The ceilings an H200 showed (short runs, kvf-kbench / the FP8 probe of bench/RESULTS.md
// session 6): bf16 GEMMs 789e12 FLOP/s, FP8 (E4M3) GEMMs 1408e12.
#define KVF_BENCH_PEAK_FP8 1408e12

typedef struct {
    const char *config;   // --config: a config.json or a model directory
    const char *weights;  // "dummy" or a model directory
    int64_t n_prompts, input_len, output_len;
    uint64_t seed;
    double peak_flops, peak_bw;
    int json;
    const char *cuda_graphs;  // --cuda-graphs off|on|auto (kvf_cuda_backend_set_graphs); NULL: the backend's default
    const char *trace;        // --trace FILE: a CSV row a step; NULL: none
    int sched_auto;           // --sched auto (default): prefill-first when all N run at once, else mixed
    kvf_engine_opts_t eo;
    int session_len_given, peak_flops_given;
    double temperature, top_p;  // sampling of every request (0: greedy; 1: no top-p)
    double min_p, rep_penalty;  // 0: no min-p; 1: no repetition penalty
    int64_t top_k;
} s_opts_t;

// Parses argv into *o. Returns 0, 1 for --help, or -1 with err set.
static int s_parse_args(int argc, char **argv, s_opts_t *o, kvf_err_t *err) {
    memset(o, 0, sizeof *o);
    o->weights = "dummy";
    o->peak_flops = 789e12;
    o->peak_bw = 4.2e12;
    o->eo = kvf_engine_opts_default();
    o->eo.max_batch_size = KVF_ENGINE_BATCH_AUTO;  // from the memory plan unless given
    o->sched_auto = 1;
    o->n_prompts = o->input_len = o->output_len = -1;
    o->top_p = 1.0;
    o->rep_penalty = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return 1;
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) return kvf_err_set(err, KVF_E_INVAL, "unexpected argument '%s'", a);
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", a);
        const char *v = argv[++i];
        int64_t n = 0;
        int rc = 0;
        if (strcmp(a, "--config") == 0) {
            o->config = v;
        } else if (strcmp(a, "--weights") == 0) {
            o->weights = v;
        } else if (strcmp(a, "--num-prompts") == 0) {
            rc = kvf_args_int(a, v, 1, 1 << 24, &o->n_prompts, err);
        } else if (strcmp(a, "--input-len") == 0) {
            rc = kvf_args_int(a, v, 1, 1 << 24, &o->input_len, err);
        } else if (strcmp(a, "--output-len") == 0) {
            rc = kvf_args_int(a, v, 1, 1 << 24, &o->output_len, err);
        } else if (strcmp(a, "--backend") == 0) {
            o->eo.backend = v;
        } else if (strcmp(a, "--device") == 0) {
            rc = kvf_args_int(a, v, 0, 1024, &n, err);
            o->eo.device = (int32_t)n;
        } else if (strcmp(a, "--threads") == 0) {
            rc = kvf_args_int(a, v, 0, 4096, &n, err);
            o->eo.n_threads = (int32_t)n;
        } else if (strcmp(a, "--max-batch-size") == 0) {
            rc = kvf_args_int(a, v, 1, 65536, &n, err);
            o->eo.max_batch_size = (int32_t)n;
        } else if (strcmp(a, "--max-prefill-token-num") == 0) {
            rc = kvf_args_int(a, v, 1, 1 << 24, &n, err);
            o->eo.max_prefill_token_num = (int32_t)n;
        } else if (strcmp(a, "--block-size") == 0) {
            rc = kvf_args_int(a, v, 1, 4096, &n, err);
            o->eo.block_size = (int32_t)n;
        } else if (strcmp(a, "--session-len") == 0) {
            rc = kvf_args_int(a, v, 2, INT32_MAX, &n, err);
            o->eo.session_len = (int32_t)n;
            o->session_len_given = 1;
        } else if (strcmp(a, "--cache-max-entry-count") == 0) {
            rc = kvf_args_double(a, v, 1e-9, 1e12, &o->eo.cache_max_entry_count, err);
        } else if (strcmp(a, "--kv-cache-dtype") == 0) {
            rc = kvf_kv_dtype_parse(a, v, &o->eo.kv_dtype, err);
        } else if (strcmp(a, "--quantization") == 0) {
            rc = kvf_quant_parse(a, v, &o->eo.quant, err);
        } else if (strcmp(a, "--memory-budget") == 0) {
            rc = kvf_args_size(a, v, &o->eo.memory_budget, err);
        } else if (strcmp(a, "--peak-flops") == 0) {
            rc = kvf_args_double(a, v, 1.0, 1e30, &o->peak_flops, err);
            o->peak_flops_given = 1;
        } else if (strcmp(a, "--peak-bw") == 0) {
            rc = kvf_args_double(a, v, 1.0, 1e30, &o->peak_bw, err);
        } else if (strcmp(a, "--seed") == 0) {
            rc = kvf_args_int(a, v, 0, INT64_MAX, &n, err);
            o->seed = (uint64_t)n;
        } else if (strcmp(a, "--temperature") == 0) {
            rc = kvf_args_double(a, v, 0.0, 100.0, &o->temperature, err);
        } else if (strcmp(a, "--top-p") == 0) {
            rc = kvf_args_double(a, v, 1e-6, 1.0, &o->top_p, err);
        } else if (strcmp(a, "--top-k") == 0) {
            rc = kvf_args_int(a, v, 0, INT32_MAX, &o->top_k, err);
        } else if (strcmp(a, "--min-p") == 0) {
            rc = kvf_args_double(a, v, 0.0, 0.999999, &o->min_p, err);
        } else if (strcmp(a, "--cuda-graphs") == 0) {
            if (strcmp(v, "off") != 0 && strcmp(v, "on") != 0 && strcmp(v, "auto") != 0)
                return kvf_err_set(err, KVF_E_INVAL, "--cuda-graphs: '%s' is not off, on or auto", v);
            o->cuda_graphs = v;
        } else if (strcmp(a, "--sched") == 0) {
            o->sched_auto = strcmp(v, "auto") == 0;
            if (!o->sched_auto && kvf_engine_sched_parse(a, v, &o->eo.sched_policy, err) != 0)
                return kvf_err_set(err, KVF_E_INVAL, "--sched: '%s' is not auto, mixed or prefill-first", v);
        } else if (strcmp(a, "--trace") == 0) {
            if (!*v) return kvf_err_set(err, KVF_E_INVAL, "--trace: empty file name");
            o->trace = v;
        } else if (strcmp(a, "--repetition-penalty") == 0) {
            rc = kvf_args_double(a, v, 1e-3, 1e3, &o->rep_penalty, err);
        } else {
            return kvf_err_set(err, KVF_E_INVAL, "unknown option '%s' (see --help)", a);
        }
        if (rc) return -1;
    }
    if (o->n_prompts < 0 || o->input_len < 0 || o->output_len < 0)
        return kvf_err_set(err, KVF_E_INVAL, "--num-prompts, --input-len and --output-len are required");
    if (!o->weights || !*o->weights) return kvf_err_set(err, KVF_E_INVAL, "--weights: empty value");
    if (strcmp(o->weights, "dummy") == 0 && !o->config)
        return kvf_err_set(err, KVF_E_INVAL, "--config is required with --weights dummy");
    if (o->input_len + o->output_len > INT32_MAX)
        return kvf_err_set(err, KVF_E_INVAL, "--input-len + --output-len is too large");
    // Every prompt is queued at once and the engine keeps a copy of each.
    if (o->n_prompts * (o->input_len + o->output_len) > (INT64_C(1) << 28))
        return kvf_err_set(err, KVF_E_INVAL,
                           "--num-prompts x (--input-len + --output-len) = %lld tokens: more than 2^28 would not fit "
                           "in memory at once; run fewer prompts",
                           (long long)(o->n_prompts * (o->input_len + o->output_len)));
    // The bench knows its longest sequence; a shorter session keeps block tables small.
    if (!o->session_len_given) o->eo.session_len = (int32_t)(o->input_len + o->output_len);
    if (!o->peak_flops_given && o->eo.quant == KVF_QUANT_FP8) o->peak_flops = KVF_BENCH_PEAK_FP8;
    if (o->eo.session_len < o->input_len + o->output_len)
        return kvf_err_set(err, KVF_E_INVAL, "--session-len %d is shorter than --input-len + --output-len = %lld",
                           o->eo.session_len, (long long)(o->input_len + o->output_len));
    return 0;
}

static int s_is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

// With real weights the engine reads DIR/config.json; --config, when given, must
// be that same file (or DIR itself), so the report cannot name another model.
static int s_check_config_matches(const s_opts_t *o, kvf_err_t *err) {
    if (!o->config) return 0;
    char want[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
    snprintf(want, sizeof want, "%s/config.json", o->weights);
    const char *given = o->config;
    char given_buf[PATH_MAX];
    if (s_is_dir(given)) {
        snprintf(given_buf, sizeof given_buf, "%s/config.json", given);
        given = given_buf;
    }
    if (!realpath(want, a))
        return kvf_err_set(err, KVF_E_IO, "--weights %s: %s: %s", o->weights, want, strerror(errno));
    if (!realpath(given, b)) return kvf_err_set(err, KVF_E_IO, "--config %s: %s", o->config, strerror(errno));
    if (strcmp(a, b) != 0)
        return kvf_err_set(err, KVF_E_INVAL,
                           "--config %s is not %s: with --weights DIR the model's own config is used (leave --config "
                           "out, or use --weights dummy)",
                           o->config, want);
    return 0;
}

// ---------------------------------------------------------------- the run

static const char *s_sched_name(int32_t policy) {
    return policy == KVF_SCHED_PREFILL_FIRST ? "prefill-first" : "mixed";
}

typedef struct {
    int32_t n_tokens;
    int32_t finished;
    kvf_finish_reason reason;
    double ttft;  // seconds from the start to the first token; -1 before it
} s_req_t;

typedef struct {
    const s_opts_t *o;
    kvf_engine_t *e;
    s_req_t *reqs;     // (n_prompts)
    double t0;
    int bad_rid;       // a token for a request that was never added
    uint64_t output_tokens;

    // per step
    double *decode_ms;  // (cap) durations of steps without prefill
    int64_t n_decode_steps, cap_decode;
    double prefill_step_s;     // time of steps with prefill tokens
    uint64_t prefill_tokens;   // prefill tokens computed (recompute after preemption included)
    uint64_t steps, tokens_computed;
    int32_t peak_blocks;
    kvf_roofline_hw_t hw;
    kvf_roofline_cost_t step_roof;  // summed over the steps run
    double elapsed;
    FILE *trace;  // --trace, or NULL

    // the device's clock and power while the steps ran (cuda backend, where NVML is)
    kvf_devmon_t *mon;
    char mon_why[256];               // why there is no monitor ("" while there is one)
    kvf_devmon_span_t *spans;        // (n_spans): each step's [start, end) and kind (S_PHASE_*)
    size_t n_spans, cap_spans;
    kvf_devmon_phase_t phase[2];     // S_PHASE_PREFILL, S_PHASE_DECODE
    size_t mon_samples;
    uint64_t energy_mj[2];           // the board's energy counter at the run's start and end
    int energy_ok;                   // both readings taken
    char energy_why[256];            // why there is no energy figure ("" while there is one)

    // memory
    const char *mem_source;
    uint64_t peak_mem;
#ifdef KVF_HAVE_CUDA
    size_t cuda_free0, cuda_free_min;
    int cuda_mem;
#endif
} s_run_t;

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t s_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void s_on_token(void *ud, uint64_t rid, int32_t token, int finished, kvf_finish_reason reason) {
    s_run_t *r = ud;
    if (rid >= (uint64_t)r->o->n_prompts) {
        r->bad_rid = 1;
        return;
    }
    s_req_t *q = &r->reqs[rid];
    if (token >= 0) {
        if (q->n_tokens == 0) q->ttft = s_now() - r->t0;
        q->n_tokens++;
        r->output_tokens++;
    }
    if (finished) {
        q->finished = 1;
        q->reason = reason;
    }
}

static void s_mem_sample(s_run_t *r) {
#ifdef KVF_HAVE_CUDA
    if (r->cuda_mem) {
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && fr < r->cuda_free_min) r->cuda_free_min = fr;
    }
#else
    (void)r;
#endif
}

// Reads free device memory before the engine exists (cuda backend only), so
// that the peak is what this process took, context aside.
static int s_mem_start(s_run_t *r, kvf_err_t *err) {
    r->mem_source = "getrusage peak RSS";
    if (strcmp(r->o->eo.backend, "cuda") != 0) return 0;
#ifdef KVF_HAVE_CUDA
    size_t fr = 0, tot = 0;
    cudaError_t ce = cudaSetDevice(r->o->eo.device);
    if (ce == cudaSuccess) ce = cudaMemGetInfo(&fr, &tot);
    if (ce != cudaSuccess)
        return kvf_err_set(err, KVF_E_DEVICE, "cuda device %d: cudaMemGetInfo: %s", r->o->eo.device,
                           cudaGetErrorString(ce));
    r->cuda_free0 = r->cuda_free_min = fr;
    r->cuda_mem = 1;
    r->mem_source = "cudaMemGetInfo (free at start - lowest free)";
    return 0;
#else
    (void)err;
    return 0;  // the engine refuses --backend cuda in this build, with its own message
#endif
}

static void s_mem_end(s_run_t *r) {
#ifdef KVF_HAVE_CUDA
    if (r->cuda_mem) {
        s_mem_sample(r);
        r->peak_mem = r->cuda_free0 - r->cuda_free_min;
        return;
    }
#endif
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) r->peak_mem = (uint64_t)ru.ru_maxrss * 1024u;  // KiB on Linux
}

enum { S_PHASE_PREFILL = 0, S_PHASE_DECODE = 1 };  // a step with prefill tokens, a step of decodes only
#define S_MON_PERIOD_MS 100  // as the nvidia-smi -lms 100 sampling of sessions 14-17, which moved no result

// Starts sampling the device's SM clock and power (cuda backend); without NVML the report
// says why and the run goes on.
static void s_mon_start(s_run_t *r) {
    snprintf(r->mon_why, sizeof r->mon_why, "the %s backend", r->o->eo.backend);
    if (strcmp(r->o->eo.backend, "cuda") != 0) return;
#ifdef KVF_HAVE_CUDA
    char pci[32];
    if (cudaDeviceGetPCIBusId(pci, (int)sizeof pci, r->o->eo.device) != cudaSuccess) {
        snprintf(r->mon_why, sizeof r->mon_why, "no PCI bus id for cuda device %d", r->o->eo.device);
        return;
    }
    kvf_err_t err;
    kvf_err_clear(&err);
    r->mon = kvf_devmon_new(pci, S_MON_PERIOD_MS, &err);
    snprintf(r->mon_why, sizeof r->mon_why, "%.200s", r->mon ? "" : err.msg);
#endif
}

static void s_mon_end(s_run_t *r) {
    if (!r->mon) return;
    const kvf_devmon_sample_t *sm = NULL;
    r->mon_samples = kvf_devmon_stop(r->mon, &sm);
    kvf_devmon_attribute(sm, r->mon_samples, r->spans, r->n_spans, r->phase, 2);
}

// Reads the energy counter at the run's start (i 0) or end (1); without it the report says why.
static void s_energy_mark(s_run_t *r, int i) {
    if (!r->mon) {
        snprintf(r->energy_why, sizeof r->energy_why, "%s", r->mon_why);
        r->energy_ok = 0;
        return;
    }
    kvf_err_t err = {0};
    if (i == 0) r->energy_ok = 1;
    if (r->energy_ok && kvf_devmon_energy_mj(r->mon, &r->energy_mj[i], &err) != 0) {
        snprintf(r->energy_why, sizeof r->energy_why, "%.200s", err.msg);
        r->energy_ok = 0;
    }
    if (r->energy_ok && i == 1 && r->energy_mj[1] < r->energy_mj[0]) {
        snprintf(r->energy_why, sizeof r->energy_why, "the energy counter went backwards (driver reloaded?)");
        r->energy_ok = 0;
    }
}

static void s_push_span(s_run_t *r, double t0, double t1, int kind) {
    if (!r->mon) return;
    if (r->n_spans == r->cap_spans) {
        r->cap_spans = r->cap_spans ? 2 * r->cap_spans : 1024;
        r->spans = kvf_xrealloc(r->spans, sizeof *r->spans * r->cap_spans);
    }
    r->spans[r->n_spans++] = (kvf_devmon_span_t){t0, t1, kind};
}

static void s_push_decode(s_run_t *r, double ms) {
    if (r->n_decode_steps == r->cap_decode) {
        r->cap_decode = r->cap_decode ? 2 * r->cap_decode : 1024;
        r->decode_ms = kvf_xrealloc(r->decode_ms, sizeof(double) * (size_t)r->cap_decode);
    }
    r->decode_ms[r->n_decode_steps++] = ms;
}

// Queues the prompts, runs the engine dry, and checks every request produced
// exactly O tokens and ended by length. Returns 0 or -1 with err set.
static int s_run(s_run_t *r, kvf_err_t *err) {
    const s_opts_t *o = r->o;
    const kvf_modelcfg_t *cfg = kvf_engine_cfg(r->e);
    kvf_sampling_t sp = kvf_sampling_default();
    sp.temperature = (float)o->temperature;
    sp.top_p = (float)o->top_p;
    sp.top_k = (int32_t)o->top_k;
    sp.min_p = (float)o->min_p;
    sp.repetition_penalty = (float)o->rep_penalty;
    sp.ignore_eos = 1;
    sp.max_new_tokens = (int32_t)o->output_len;
    sp.seed = o->seed;

    int32_t *prompt = kvf_xmalloc(sizeof(int32_t) * (size_t)o->input_len);
    uint64_t rng = o->seed;
    s_energy_mark(r, 0);
    r->t0 = s_now();
    for (int64_t i = 0; i < o->n_prompts; i++) {
        for (int64_t t = 0; t < o->input_len; t++)
            prompt[t] = (int32_t)(s_splitmix64(&rng) % (uint64_t)cfg->vocab_size);
        r->reqs[i].ttft = -1;
        sp.seed = o->seed + (uint64_t)i;  // each request its own stream when sampling
        if (kvf_engine_add(r->e, (uint64_t)i, prompt, (int32_t)o->input_len, NULL, 0, &sp, err) != 0) {
            free(prompt);
            return -1;
        }
    }
    free(prompt);

    int64_t idle = 0;  // steps in a row that ran nothing while work remains
    for (;;) {
        if (!kvf_engine_has_work(r->e)) break;
        double ts = s_now();
        int n = kvf_engine_step(r->e, s_on_token, r, err);
        double dt = s_now() - ts;
        if (n < 0) return -1;
        s_mem_sample(r);
        if (n == 0) {
            // Only finishes decided at admission run nothing; there are at most N.
            if (++idle > o->n_prompts + 1)
                return kvf_err_set(err, KVF_E_INTERNAL, "the engine has work but ran nothing for %lld steps",
                                   (long long)idle);
            continue;
        }
        idle = 0;
        kvf_step_info_t si;
        kvf_engine_last_step(r->e, &si);
        r->steps++;
        r->tokens_computed += (uint64_t)si.n_tokens;
        if (si.blocks_used > r->peak_blocks) r->peak_blocks = si.blocks_used;
        if (r->trace)
            fprintf(r->trace, "%llu,%.4f,%d,%d,%d,%lld,%lld\n", (unsigned long long)r->steps, dt * 1e3, si.n_seqs,
                    si.n_decode, si.n_prefill_tokens, (long long)si.kv_tokens_read, (long long)si.attn_qk_pairs);
        s_push_span(r, ts, ts + dt, si.n_prefill_tokens > 0 ? S_PHASE_PREFILL : S_PHASE_DECODE);
        if (si.n_prefill_tokens > 0) {
            r->prefill_tokens += (uint64_t)si.n_prefill_tokens;
            r->prefill_step_s += dt;
        } else {
            s_push_decode(r, dt * 1e3);
        }
        kvf_roofline_step_t rs = {.n_tokens = si.n_tokens,
                                  .n_logit_rows = si.n_seqs,  // one lm_head row per sequence
                                  .kv_tokens_read = si.kv_tokens_read,
                                  .kv_tokens_written = si.n_tokens,
                                  .qk_pairs = si.attn_qk_pairs};
        kvf_roofline_cost_t c;
        if (kvf_roofline_step(cfg, &r->hw, &rs, &c, err) != 0) return -1;
        r->step_roof.flops += c.flops;
        r->step_roof.bytes += c.bytes;
        r->step_roof.seconds += c.seconds;
    }
    r->elapsed = s_now() - r->t0;
    s_energy_mark(r, 1);

    if (r->bad_rid) return kvf_err_set(err, KVF_E_INTERNAL, "the engine reported a token for an unknown request");
    for (int64_t i = 0; i < o->n_prompts; i++) {
        const s_req_t *q = &r->reqs[i];
        if (!q->finished || q->n_tokens != o->output_len || q->reason != KVF_FINISH_LENGTH)
            return kvf_err_set(err, KVF_E_INTERNAL,
                               "request %lld produced %d tokens (%s, finish reason %d) instead of exactly --output-len "
                               "%lld: the benchmark's token counts would be wrong",
                               (long long)i, q->n_tokens, q->finished ? "finished" : "never finished", (int)q->reason,
                               (long long)o->output_len);
    }
    if (r->output_tokens != (uint64_t)(o->n_prompts * o->output_len))
        return kvf_err_set(err, KVF_E_INTERNAL, "%llu output tokens instead of N x O = %lld",
                           (unsigned long long)r->output_tokens, (long long)(o->n_prompts * o->output_len));
    return 0;
}

// ---------------------------------------------------------------- the report

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Nearest-rank percentile of v[0..n) (sorts v); 0 when n == 0.
static double s_pct(double *v, int64_t n, double p) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    int64_t k = (int64_t)ceil(p / 100.0 * (double)n);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return v[k - 1];
}

typedef struct {
    double total_tps, output_tps, prefill_tps;
    double decode_p50, decode_p99;  // ms
    double ttft_p50, ttft_p99;      // s
    kvf_roofline_floor_t floor;
    int64_t floor_batch;
    double streamed_weights;
    kvf_plan_t plan;
    kvf_engine_stats_t stats;
    double energy_j;                          // the board's energy over the run (< 0: not measured)
    double mean_w, total_tpj, output_tpj;     // energy_j / elapsed, tokens per joule
} s_summary_t;

static int s_summarize(s_run_t *r, s_summary_t *s, kvf_err_t *err) {
    const s_opts_t *o = r->o;
    const kvf_modelcfg_t *cfg = kvf_engine_cfg(r->e);
    memset(s, 0, sizeof *s);
    kvf_engine_plan(r->e, &s->plan);
    kvf_engine_stats(r->e, &s->stats);
    double el = r->elapsed > 0 ? r->elapsed : 1e-9;
    s->total_tps = (double)(o->n_prompts * (o->input_len + o->output_len)) / el;
    s->output_tps = (double)r->output_tokens / el;
    s->prefill_tps = r->prefill_step_s > 0 ? (double)r->prefill_tokens / r->prefill_step_s : 0;
    s->energy_j = -1;
    if (r->energy_ok) {
        s->energy_j = 1e-3 * (double)(r->energy_mj[1] - r->energy_mj[0]);
        s->mean_w = s->energy_j / el;
        const double e = s->energy_j > 0 ? s->energy_j : 1e-9;
        s->total_tpj = (double)(o->n_prompts * (o->input_len + o->output_len)) / e;
        s->output_tpj = (double)r->output_tokens / e;
    }
    s->decode_p50 = s_pct(r->decode_ms, r->n_decode_steps, 50);
    s->decode_p99 = s_pct(r->decode_ms, r->n_decode_steps, 99);
    double *tt = kvf_xmalloc(sizeof(double) * (size_t)o->n_prompts);
    for (int64_t i = 0; i < o->n_prompts; i++) tt[i] = r->reqs[i].ttft;
    s->ttft_p50 = s_pct(tt, o->n_prompts, 50);
    s->ttft_p99 = s_pct(tt, o->n_prompts, 99);
    free(tt);
    s->streamed_weights = r->hw.weight_bytes;
    // The floor is schedule-independent (issue 7): B is what the KV pool holds,
    // not the --max-batch-size this run chose, so a small batch size cannot make
    // the floor easier to reach.
    s->floor_batch = kvf_roofline_batch(s->plan.kv_blocks, s->plan.block_size, o->n_prompts, o->n_prompts,
                                        o->input_len, o->output_len, err);
    if (s->floor_batch < 0) return -1;
    kvf_roofline_workload_t w = {o->n_prompts, o->input_len, o->output_len, s->floor_batch};
    return kvf_roofline_floor(cfg, &r->hw, &w, &s->floor, err);
}

static void s_report_json(const s_run_t *r, const s_summary_t *s) {
    const s_opts_t *o = r->o;
    const kvf_modelcfg_t *cfg = kvf_engine_cfg(r->e);
    const kvf_engine_opts_t *eo = kvf_engine_opts(r->e);
    double el = r->elapsed > 0 ? r->elapsed : 1e-9;
    json_t *j = json_object();
    json_object_set_new(j, "model",
                        json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:I}", "config", o->config ? o->config : o->weights,
                                  "weights", o->weights, "architecture", cfg->architecture, "n_layers", cfg->n_layers,
                                  "hidden_size", cfg->hidden_size, "vocab_size", (json_int_t)cfg->vocab_size,
                                  "params", (json_int_t)kvf_modelcfg_n_params(cfg)));
    json_object_set_new(j, "backend", json_string(eo->backend));
    json_object_set_new(j, "workload", json_pack("{s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:f, s:f}", "num_prompts",
                                                 (json_int_t)o->n_prompts, "input_len", (json_int_t)o->input_len,
                                                 "output_len", (json_int_t)o->output_len, "seed", (json_int_t)o->seed,
                                                 "temperature", o->temperature, "top_p", o->top_p, "top_k",
                                                 (json_int_t)o->top_k, "min_p", o->min_p, "repetition_penalty",
                                                 o->rep_penalty));
    json_object_set_new(j, "engine",
                        json_pack("{s:i, s:i, s:i, s:i, s:f, s:I, s:i, s:s, s:s, s:s}", "max_batch_size",
                                  eo->max_batch_size,
                                  "max_prefill_token_num", eo->max_prefill_token_num, "block_size", eo->block_size,
                                  "session_len", eo->session_len, "cache_max_entry_count", eo->cache_max_entry_count,
                                  "memory_budget", (json_int_t)eo->memory_budget, "threads", eo->n_threads,
                                  "kv_cache_dtype", kvf_kv_dtype_name(eo->kv_dtype), "quantization",
                                  kvf_quant_name(eo->quant), "sched", s_sched_name(eo->sched_policy)));
    json_object_set_new(j, "elapsed_s", json_real(r->elapsed));
    json_object_set_new(j, "steps", json_integer((json_int_t)r->steps));
    json_object_set_new(j, "prompt_tokens", json_integer((json_int_t)(o->n_prompts * o->input_len)));
    json_object_set_new(j, "output_tokens", json_integer((json_int_t)r->output_tokens));
    json_object_set_new(j, "tokens_computed", json_integer((json_int_t)r->tokens_computed));
    json_object_set_new(j, "total_tokens_per_s", json_real(s->total_tps));
    json_object_set_new(j, "output_tokens_per_s", json_real(s->output_tps));
    json_object_set_new(j, "prefill_tokens_per_s", json_real(s->prefill_tps));
    json_object_set_new(j, "decode_step_ms", json_pack("{s:f, s:f, s:I}", "p50", s->decode_p50, "p99", s->decode_p99,
                                                       "steps", (json_int_t)r->n_decode_steps));
    json_object_set_new(j, "ttft_s", json_pack("{s:f, s:f}", "p50", s->ttft_p50, "p99", s->ttft_p99));
    json_object_set_new(j, "memory", json_pack("{s:I, s:s, s:I, s:I, s:I}", "peak_bytes", (json_int_t)r->peak_mem,
                                               "source", r->mem_source, "weights_bytes",
                                               (json_int_t)s->plan.weights_bytes, "workspace_bytes",
                                               (json_int_t)s->plan.workspace_bytes, "kv_bytes",
                                               (json_int_t)s->plan.kv_bytes));
    json_object_set_new(j, "kv", json_pack("{s:I, s:I, s:I, s:i, s:f}", "blocks", (json_int_t)s->plan.kv_blocks,
                                           "block_size", (json_int_t)s->plan.block_size, "tokens_fit",
                                           (json_int_t)s->plan.tokens_fit, "peak_blocks_used", r->peak_blocks,
                                           "peak_usage",
                                           s->plan.kv_blocks ? (double)r->peak_blocks / s->plan.kv_blocks : 0.0));
    json_object_set_new(j, "preemptions", json_integer((json_int_t)s->stats.preemptions));
    json_t *dev = json_null();
    if (r->mon) {
        dev = json_pack("{s:s, s:i, s:f, s:I}", "source", "nvml", "period_ms", S_MON_PERIOD_MS, "power_limit_w",
                        kvf_devmon_power_limit_mw(r->mon) * 1e-3, "samples", (json_int_t)r->mon_samples);
        const char *names[2] = {"prefill_steps", "decode_steps"};
        for (int k = 0; k < 2; k++)
            json_object_set_new(dev, names[k],
                                r->phase[k].samples ? json_pack("{s:I, s:f, s:f}", "samples",
                                                                (json_int_t)r->phase[k].samples, "sm_clock_mhz",
                                                                r->phase[k].sm_mhz, "power_w", r->phase[k].power_w)
                                                    : json_null());
        json_object_set_new(dev, "energy",
                            s->energy_j >= 0 ? json_pack("{s:f, s:f, s:f, s:f}", "joules", s->energy_j,
                                                         "mean_power_w", s->mean_w, "total_tokens_per_j",
                                                         s->total_tpj, "output_tokens_per_j", s->output_tpj)
                                             : json_null());
    }
    json_object_set_new(j, "device_power", dev);
    json_t *roof = json_pack("{s:f, s:f, s:f, s:f}", "peak_flops", o->peak_flops, "peak_bw", o->peak_bw,
                             "weights_streamed_bytes", s->streamed_weights, "kv_elem_bytes", r->hw.kv_elem_bytes);
    json_object_set_new(roof, "step", json_pack("{s:f, s:f, s:f, s:f}", "seconds", r->step_roof.seconds, "flops",
                                                r->step_roof.flops, "bytes", r->step_roof.bytes, "achieved",
                                                r->step_roof.seconds / el));
    json_object_set_new(roof, "floor",
                        json_pack("{s:f, s:f, s:f, s:I, s:I, s:I, s:f}", "seconds", s->floor.seconds,
                                  "prefill_seconds", s->floor.prefill_seconds, "decode_seconds",
                                  s->floor.decode_seconds, "batch", (json_int_t)s->floor_batch, "waves",
                                  (json_int_t)s->floor.waves, "decode_steps", (json_int_t)s->floor.decode_steps,
                                  "achieved", s->floor.seconds / el));
    json_object_set_new(j, "roofline", roof);
    char *txt = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (txt) printf("%s\n", txt);
    free(txt);
    json_decref(j);
}

static void s_report_text(const s_run_t *r, const s_summary_t *s) {
    const s_opts_t *o = r->o;
    const kvf_modelcfg_t *cfg = kvf_engine_cfg(r->e);
    const kvf_engine_opts_t *eo = kvf_engine_opts(r->e);
    double el = r->elapsed > 0 ? r->elapsed : 1e-9;
    char plan[1024];
    kvf_engine_plan_text(r->e, plan, sizeof plan);
    printf("%s\n\n", plan);
    printf("model            %s (%s, %d layers, %.3g params), %s weights\n", o->config ? o->config : o->weights,
           cfg->architecture, cfg->n_layers, (double)kvf_modelcfg_n_params(cfg),
           strcmp(o->weights, "dummy") == 0 ? "dummy" : "real");
    printf("workload         %lld prompts x %lld input + %lld output tokens, seed %llu; backend %s\n",
           (long long)o->n_prompts, (long long)o->input_len, (long long)o->output_len, (unsigned long long)o->seed,
           eo->backend);
    printf("engine           max batch %d, max prefill tokens %d, block size %d, session len %d, sched %s\n",
           eo->max_batch_size, eo->max_prefill_token_num, eo->block_size, eo->session_len,
           s_sched_name(eo->sched_policy));
    printf("elapsed          %.3f s (%llu steps, %llu tokens computed)\n", r->elapsed, (unsigned long long)r->steps,
           (unsigned long long)r->tokens_computed);
    printf("throughput       %.1f total tok/s, %.1f output tok/s, %.1f prefill tok/s\n", s->total_tps,
           s->output_tps, s->prefill_tps);
    printf("decode step      p50 %.3f ms, p99 %.3f ms (%lld steps without prefill)\n", s->decode_p50,
           s->decode_p99, (long long)r->n_decode_steps);
    printf("TTFT             p50 %.3f s, p99 %.3f s\n", s->ttft_p50, s->ttft_p99);
    printf("peak memory      %.1f MiB (%s)\n", MIB(r->peak_mem), r->mem_source);
    printf("KV pool          %u blocks x %u tokens, peak %d used (%.1f%%); %llu preemptions\n", s->plan.kv_blocks,
           s->plan.block_size, r->peak_blocks,
           s->plan.kv_blocks ? 100.0 * r->peak_blocks / s->plan.kv_blocks : 0.0,
           (unsigned long long)s->stats.preemptions);
    if (r->mon) {
        printf("device power     limit %.0f W; sampled every %d ms (NVML):", kvf_devmon_power_limit_mw(r->mon) * 1e-3,
               S_MON_PERIOD_MS);
        const char *names[2] = {"prefill steps", "decode steps"};
        for (int k = 0; k < 2; k++)
            if (r->phase[k].samples)
                printf("%s %s SM %.0f MHz, %.0f W (%zu samples)", k && r->phase[0].samples ? ";" : "", names[k],
                       r->phase[k].sm_mhz, r->phase[k].power_w, r->phase[k].samples);
        printf("\n");
    } else {
        printf("device power     not sampled (%s)\n", r->mon_why);
    }
    if (s->energy_j >= 0)
        printf("energy           %.1f J over the run (mean %.0f W): %.2f total tok/J, %.2f output tok/J\n",
               s->energy_j, s->mean_w, s->total_tpj, s->output_tpj);
    else
        printf("energy           not measured (%s)\n", r->energy_why);
    printf("roofline         at %.4g FLOP/s, %.4g B/s; weights streamed %.1f MiB per step\n", o->peak_flops,
           o->peak_bw, MIB(s->streamed_weights));
    printf("  step roofline  %.4g s (%.4g FLOP, %.4g B)   achieved %.3g%%\n", r->step_roof.seconds,
           r->step_roof.flops, r->step_roof.bytes, 100.0 * r->step_roof.seconds / el);
    printf("  workload floor %.4g s (prefill %.4g s + decode %.4g s; B = %lld, %lld wave(s))   achieved %.3g%%\n",
           s->floor.seconds, s->floor.prefill_seconds, s->floor.decode_seconds, (long long)s->floor_batch,
           (long long)s->floor.waves, 100.0 * s->floor.seconds / el);
}

// ---------------------------------------------------------------- main

int main(int argc, char **argv) {
    kvf_log_setup("kvf-bench", -1, KVF_LOG_WARN);
    s_opts_t o;
    kvf_err_t err;
    kvf_err_clear(&err);
    int rc = s_parse_args(argc, argv, &o, &err);
    if (rc == 1) {
        fputs(s_usage, stdout);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "kvf-bench: %s\n%s", err.msg, s_usage);
        return 2;
    }
    const char *model;
    if (strcmp(o.weights, "dummy") == 0) {
        o.eo.dummy_weights = 1;
        model = o.config;
    } else {
        if (s_check_config_matches(&o, &err) != 0) {
            fprintf(stderr, "kvf-bench: %s\n", err.msg);
            return 2;
        }
        model = o.weights;
    }

    s_run_t r;
    memset(&r, 0, sizeof r);
    r.o = &o;
    if (s_mem_start(&r, &err) != 0) {
        fprintf(stderr, "kvf-bench: %s\n", err.msg);
        return 1;
    }
    r.e = kvf_engine_new(model, &o.eo, &err);
    if (!r.e) {
        fprintf(stderr, "kvf-bench: %s\n", err.msg);
        return 1;
    }
    if (o.cuda_graphs) {
#ifdef KVF_HAVE_CUDA
        const int mode = strcmp(o.cuda_graphs, "off") == 0  ? KVF_CUDA_GRAPHS_OFF
                         : strcmp(o.cuda_graphs, "on") == 0 ? KVF_CUDA_GRAPHS_ON
                                                            : KVF_CUDA_GRAPHS_AUTO;
        if (kvf_cuda_backend_set_graphs(kvf_engine_backend(r.e), mode) != 0) {
            fprintf(stderr, "kvf-bench: --cuda-graphs needs --backend cuda\n");
            kvf_engine_destroy(&r.e);
            return 2;
        }
#else
        fprintf(stderr, "kvf-bench: --cuda-graphs: this build has no cuda backend\n");
        kvf_engine_destroy(&r.e);
        return 2;
#endif
    }
    s_mem_sample(&r);
    const kvf_modelcfg_t *cfg = kvf_engine_cfg(r.e);
    kvf_plan_t plan;
    kvf_engine_plan(r.e, &plan);
    // auto: prefill-first pays off when every prompt runs at once (the batch and the
    // KV pool hold them all) and the whole batch then decodes together; with more,
    // its waves would leave the batch part-empty, or prefills would crowd out decodes.
    if (o.sched_auto) {
        const int32_t max_batch = kvf_engine_opts(r.e)->max_batch_size;
        const int64_t at_once = kvf_roofline_batch(plan.kv_blocks, plan.block_size, max_batch, o.n_prompts,
                                                   o.input_len, o.output_len, &err);
        const int32_t policy = at_once >= o.n_prompts ? KVF_SCHED_PREFILL_FIRST : KVF_SCHED_MIXED;
        if (at_once < 0 || kvf_engine_set_sched_policy(r.e, policy, &err) != 0) {
            fprintf(stderr, "kvf-bench: %s\n", err.msg);
            kvf_engine_destroy(&r.e);
            return 1;
        }
    }
    // The backend's number formats: cuda holds bf16 weights and KV (E4M3 KV with
    // --kv-cache-dtype fp8), cpu float32 (its fp8 cache is rounded floats).
    const int cuda = strcmp(kvf_engine_opts(r.e)->backend, "cuda") == 0;
    double elem = cuda ? 2.0 : 4.0;
    r.hw.peak_flops = o.peak_flops;
    r.hw.peak_bw = o.peak_bw;
    r.hw.kv_elem_bytes = cuda && o.eo.kv_dtype == KVF_KV_FP8 ? 1.0 : elem;
    r.hw.weight_bytes = kvf_roofline_streamed_weights(cfg, (double)plan.weights_bytes, elem);
    r.reqs = kvf_xcalloc((size_t)o.n_prompts, sizeof(s_req_t));

    s_summary_t sum;
    rc = 0;
    if (o.trace) {
        r.trace = fopen(o.trace, "w");
        if (!r.trace)
            rc = kvf_err_set(&err, KVF_E_IO, "--trace %s: %s", o.trace, strerror(errno));
        else
            fprintf(r.trace, "step,ms,n_seqs,n_decode,n_prefill_tokens,kv_tokens_read,attn_qk_pairs\n");
    }
    if (rc == 0) {
        s_mon_start(&r);
        rc = s_run(&r, &err);
        s_mon_end(&r);
    }
    if (r.trace && fclose(r.trace) != 0 && rc == 0)
        rc = kvf_err_set(&err, KVF_E_IO, "--trace %s: %s", o.trace, strerror(errno));
    if (rc == 0) {
        s_mem_end(&r);
        rc = s_summarize(&r, &sum, &err);
    }
    if (rc == 0) {
        if (o.json)
            s_report_json(&r, &sum);
        else
            s_report_text(&r, &sum);
    } else {
        fprintf(stderr, "kvf-bench: %s\n", err.msg);
    }
#ifdef KVF_HAVE_CUDA
    if (strcmp(kvf_engine_opts(r.e)->backend, "cuda") == 0)
        fprintf(stderr, "kvf-bench: %llu steps replayed a CUDA graph\n",
                (unsigned long long)kvf_cuda_backend_graph_steps(kvf_engine_backend(r.e)));
#endif
    kvf_devmon_destroy(&r.mon);
    free(r.spans);
    free(r.reqs);
    free(r.decode_ms);
    kvf_engine_destroy(&r.e);
    return rc == 0 ? 0 : 1;
}
