// kvf-worker — one engine process (one GPU, or the CPU) serving a coordinator.
//
//   kvf-worker --model DIR --backend cpu|cuda [--device N] --coordinator ENDPOINT
//              [--worker-id ID] [--memory-budget BYTES] [--cache-max-entry-count F]
//              [--max-prefill-token-num N] [--max-batch-size N] [--block-size N]
//              [--session-len N] [--enable-prefix-caching] [--threads N] [--sched mixed|prefill-first]
//              [--tp T --rank R --group G [--tp-timeout-ms MS]]
//              [--curve-secret FILE --coordinator-key FILE]
//
// A TP group is T processes on one host started with the same flags and their
// own --rank (deploy/tp-run.sh); rank 0 needs --coordinator, the others do not.
//
// The memory plan is made (and an impossible one refused) before anything is
// connected; the plan is printed on stdout. Exit status: 0 after SHUTDOWN or
// SIGTERM/SIGINT, 1 on a refused plan or registration, 2 on a bad command line.
#include <czmq.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/args.h"
#include "common/log.h"
#include "worker/backend.h"
#include "worker/worker.h"

#define EXIT_USAGE 2

// The one global: set by SIGTERM / SIGINT, read by the worker's loop.
static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

static void s_usage(FILE *f) {
    fprintf(f, "usage: kvf-worker --model DIR --backend cpu|cuda [--device N] --coordinator ENDPOINT\n"
               "                  [--worker-id ID] [--memory-budget BYTES (K/M/G suffixes)]\n"
               "                  [--cache-max-entry-count F] [--max-prefill-token-num N] [--max-batch-size N]\n"
               "                  [--block-size N] [--session-len N] [--enable-prefix-caching] [--threads N]\n"
               "                  [--sched mixed|prefill-first]  (prefill-first: offline batches; worker/sched.h)\n"
               "                  [--kv-cache-dtype auto|fp8]  (fp8: E4M3 KV cache, half the bytes; worker/backend.h)\n"
               "                  [--quantization none|fp8]  (fp8: E4M3 linear layers, W8A8; worker/backend.h)\n"
               "                  [--tp T --rank R --group G [--tp-timeout-ms MS]]\n"
               "                  [--curve-secret FILE --coordinator-key FILE]  (CURVE: deploy/SECURITY.md)\n"
               "                  [--log-level error|warn|info|debug]\n");
}

static int s_parse(int argc, char **argv, kvf_worker_opts_t *o, kvf_log_level_t *level, kvf_err_t *err) {
    memset(o, 0, sizeof *o);
    o->engine = kvf_engine_opts_default();
    o->engine.backend = NULL;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--enable-prefix-caching")) {
            o->engine.enable_prefix_caching = 1;
            continue;
        }
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            s_usage(stdout);
            return 1;
        }
        if (strncmp(f, "--", 2) != 0) return kvf_err_set(err, KVF_E_INVAL, "unexpected argument '%s'", f);
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: unknown flag or missing value", f);
        const char *v = argv[++i];
        int64_t iv;
        if (!strcmp(f, "--model")) {
            o->model = v;
        } else if (!strcmp(f, "--backend")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda"))
                return kvf_err_set(err, KVF_E_INVAL, "--backend '%s': expected cpu or cuda", v);
            o->engine.backend = v;
        } else if (!strcmp(f, "--coordinator")) {
            o->coordinator = v;
        } else if (!strcmp(f, "--worker-id")) {
            if (!*v || strlen(v) > 200) return kvf_err_set(err, KVF_E_INVAL, "--worker-id: 1..200 characters");
            o->worker_id = v;
        } else if (!strcmp(f, "--device")) {
            if (kvf_args_int(f, v, 0, 1023, &iv, err)) return -1;
            o->engine.device = (int32_t)iv;
        } else if (!strcmp(f, "--memory-budget")) {
            if (kvf_args_size(f, v, &o->engine.memory_budget, err)) return -1;
        } else if (!strcmp(f, "--cache-max-entry-count")) {
            if (kvf_args_double(f, v, 1e-6, 1e12, &o->engine.cache_max_entry_count, err)) return -1;
        } else if (!strcmp(f, "--max-prefill-token-num")) {
            if (kvf_args_int(f, v, 1, 1 << 24, &iv, err)) return -1;
            o->engine.max_prefill_token_num = (int32_t)iv;
        } else if (!strcmp(f, "--max-batch-size")) {
            if (kvf_args_int(f, v, 1, 65536, &iv, err)) return -1;
            o->engine.max_batch_size = (int32_t)iv;
        } else if (!strcmp(f, "--sched")) {
            if (kvf_engine_sched_parse(f, v, &o->engine.sched_policy, err)) return -1;
        } else if (!strcmp(f, "--kv-cache-dtype")) {
            if (kvf_kv_dtype_parse(f, v, &o->engine.kv_dtype, err)) return -1;
        } else if (!strcmp(f, "--quantization")) {
            if (kvf_quant_parse(f, v, &o->engine.quant, err)) return -1;
        } else if (!strcmp(f, "--block-size")) {
            if (kvf_args_int(f, v, 1, 4096, &iv, err)) return -1;
            o->engine.block_size = (int32_t)iv;
        } else if (!strcmp(f, "--session-len")) {
            if (kvf_args_int(f, v, 2, INT32_MAX, &iv, err)) return -1;
            o->engine.session_len = (int32_t)iv;
        } else if (!strcmp(f, "--threads")) {
            if (kvf_args_int(f, v, 0, 1024, &iv, err)) return -1;
            o->engine.n_threads = (int32_t)iv;
        } else if (!strcmp(f, "--tp")) {
            if (kvf_args_int(f, v, 1, 64, &iv, err)) return -1;
            o->tp_size = (int32_t)iv;
        } else if (!strcmp(f, "--rank")) {
            if (kvf_args_int(f, v, 0, 63, &iv, err)) return -1;
            o->tp_rank = (int32_t)iv;
        } else if (!strcmp(f, "--group")) {
            o->tp_group = v;
        } else if (!strcmp(f, "--tp-timeout-ms")) {
            if (kvf_args_int(f, v, 1, 3600000, &iv, err)) return -1;
            o->tp_timeout_ms = (int32_t)iv;
        } else if (!strcmp(f, "--curve-secret")) {
            o->curve_secret = v;
        } else if (!strcmp(f, "--coordinator-key")) {
            o->coordinator_key = v;
        } else if (!strcmp(f, "--log-level")) {
            if (kvf_log_parse_level(v, level))
                return kvf_err_set(err, KVF_E_INVAL, "--log-level '%s': expected error, warn, info or debug", v);
        } else {
            return kvf_err_set(err, KVF_E_INVAL, "unknown flag %s", f);
        }
    }
    if (!o->model) return kvf_err_set(err, KVF_E_INVAL, "--model DIR is required");
    if (!o->engine.backend) return kvf_err_set(err, KVF_E_INVAL, "--backend cpu|cuda is required");
    if (o->tp_size > 1 && (!o->tp_group || o->tp_rank >= o->tp_size))
        return kvf_err_set(err, KVF_E_INVAL, "--tp %d needs --group ID and --rank in [0, %d)", o->tp_size, o->tp_size);
    if (o->tp_size <= 1 && o->tp_rank != 0) return kvf_err_set(err, KVF_E_INVAL, "--rank needs --tp > 1");
    if (!o->coordinator && !(o->tp_size > 1 && o->tp_rank > 0))
        return kvf_err_set(err, KVF_E_INVAL, "--coordinator ENDPOINT is required");
    return 0;
}

int main(int argc, char **argv) {
    kvf_worker_opts_t o;
    kvf_log_level_t level = KVF_LOG_INFO;
    kvf_err_t err;
    kvf_err_clear(&err);
    int prc = s_parse(argc, argv, &o, &level, &err);
    if (prc > 0) return 0;
    if (prc < 0) {
        fprintf(stderr, "kvf-worker: %s\n", err.msg);
        s_usage(stderr);
        return EXIT_USAGE;
    }
    kvf_log_setup("kvf-worker", o.tp_size > 1 ? o.tp_rank : -1, level);
    // A TP rank loads every CUDA kernel up front (worker/tp_nccl.c says why); before any CUDA call.
    if (o.tp_size > 1) setenv("CUDA_MODULE_LOADING", "EAGER", 0);

    // Our own SIGTERM/SIGINT handling (czmq's would only set its own flag).
    zsys_handler_set(NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    // The plan first: refuse before connecting anywhere.
    kvf_worker_t *w = kvf_worker_new(&o, &err);
    if (!w) {
        fprintf(stderr, "kvf-worker: error: %s\n", err.msg);
        // A TP group that did not form may leave an NCCL init blocked on its own thread
        // (worker/tp_nccl.c, s_blocking_comm): leave without exit()'s teardown, as below.
        if (err.code == KVF_E_PEER_LOST) _exit(1);
        return 1;
    }
    printf("kvf-worker %s: %s\n", kvf_worker_id(w), kvf_worker_plan_text(w));
    fflush(stdout);

    int rc = kvf_worker_run(w, &s_stop, &err);
    if (rc != 0) fprintf(stderr, "kvf-worker: error: %s\n", err.msg);
    if (rc != 0 && err.code == KVF_E_PEER_LOST) {
        // The TP group is gone and its NCCL communicator is being aborted on a detached thread
        // (worker/tp_nccl.c), which the destructors and exit()'s teardown of the CUDA runtime
        // would race (2 x H200: a survivor segfaulted after logging this error). Nothing is left
        // to hand back: the coordinator takes the requests back when the heartbeats stop.
        fflush(stdout);
        _exit(1);
    }
    kvf_worker_destroy(&w);
    return rc == 0 ? 0 : 1;
}
