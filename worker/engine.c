// worker/engine.c — see engine.h.
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "worker/backend.h"
#include "worker/blockmgr.h"
#include "worker/cpu_backend.h"
#include "worker/sample_pool.h"
#include "worker/sampler.h"
#include "worker/sched.h"
#include "worker/tp.h"
#include "worker/tp_group.h"
#ifdef KVF_HAVE_CUDA
#include "worker/cuda_backend.h"
#endif

// Per-request state, hung on its sequence (seq->user).
typedef struct {
    uint64_t rid;
    kvf_sampling_t sampling;
    int32_t n_generated;   // sampled so far, resume tokens included (the sampler's step index)
} s_req_t;

// A finish decided outside a step (a resumed request that was already done).
typedef struct {
    uint64_t rid;
    kvf_finish_reason reason;
} s_pending_t;

// One report of a step, delivered after the engine's state is consistent.
typedef struct {
    uint64_t rid;
    int32_t token;
    int32_t finished;
    kvf_finish_reason reason;
} s_event_t;

struct kvf_engine_s {
    kvf_engine_opts_t o;
    kvf_modelcfg_t cfg;
    kvf_tokenizer_t *tok;        // NULL without tokenizer.json
    kvf_backend_t *be;
    struct kvf_tp_s *tp_nccl;    // cuda TP: the NCCL communicator the backend shards over (owned); else NULL
    kvf_blockmgr_t *bm;
    kvf_sched_t *sched;
    kvf_sample_pool_t *spool;    // samples the host rows of a step, one sampler per thread
    char backend_name[16];
    int32_t max_blocks_per_seq;

    // step buffers, sized once
    float *logits;               // (max_logit_rows, vocab)
    int32_t *b_tokens;           // (max_step_tokens)
    int32_t *b_n_new;            // (max_batch_size)
    int32_t *b_n_past;           // (max_batch_size)
    int32_t *b_table;            // (max_batch_size, max_blocks_per_seq)
    s_event_t *events;           // (max_batch_size)
    const kvf_sampling_t **b_smp;// (max_batch_size) forward_sample: each row's sampling, NULL when not sampled
    int32_t *b_step;             // (max_batch_size) forward_sample: each row's step index
    const int32_t **b_hist;      // (max_batch_size) forward_sample: each row's ids so far (repetition penalty)
    int32_t *b_nhist;            // (max_batch_size) their counts
    int32_t *b_ids;              // (max_batch_size) each row's token: picked by forward_sample or on the host
    int32_t *b_rows;             // (max_batch_size) the rows sampled on the host this step

    s_pending_t *pending;
    int32_t n_pending, cap_pending;

    uint64_t tokens_generated, tokens_computed, steps;
    kvf_step_info_t last;        // the last step's composition, for kvf-bench (kvf_engine_last_step)
};

kvf_engine_opts_t kvf_engine_opts_default(void) {
    kvf_engine_opts_t o;
    memset(&o, 0, sizeof o);
    o.backend = "cpu";
    o.device = 0;
    o.n_threads = 0;
    o.block_size = 64;
    o.max_batch_size = 128;
    o.max_prefill_token_num = 8192;
    o.session_len = 0;
    o.cache_max_entry_count = 0.8;
    o.memory_budget = 0;
    o.enable_prefix_caching = 0;
    return o;
}

int kvf_engine_sched_parse(const char *flag, const char *v, int32_t *policy, kvf_err_t *err) {
    if (v && strcmp(v, "mixed") == 0) {
        *policy = KVF_SCHED_MIXED;
    } else if (v && strcmp(v, "prefill-first") == 0) {
        *policy = KVF_SCHED_PREFILL_FIRST;
    } else {
        return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is not mixed or prefill-first", flag, v ? v : "");
    }
    return 0;
}

#define MIB(b) ((double)(b) / (1024.0 * 1024.0))

// ---------------------------------------------------------------- construction

static int s_check_opts(const kvf_engine_opts_t *o, kvf_err_t *err) {
    if (o->block_size < 1 || o->block_size > 4096)
        return kvf_err_set(err, KVF_E_INVAL, "--block-size %d must be in [1, 4096]", o->block_size);
    if (o->max_batch_size != KVF_ENGINE_BATCH_AUTO && (o->max_batch_size < 1 || o->max_batch_size > 65536))
        return kvf_err_set(err, KVF_E_INVAL, "--max-batch-size %d must be in [1, 65536]", o->max_batch_size);
    if (o->max_prefill_token_num < 1 || o->max_prefill_token_num > (1 << 24))
        return kvf_err_set(err, KVF_E_INVAL, "--max-prefill-token-num %d must be in [1, %d]",
                           o->max_prefill_token_num, 1 << 24);
    if (o->session_len < 0 || o->session_len == 1)
        return kvf_err_set(err, KVF_E_INVAL, "--session-len %d must be >= 2 (or 0 for the model's length)",
                           o->session_len);
    if (!(o->cache_max_entry_count > 0) || !isfinite(o->cache_max_entry_count))
        return kvf_err_set(err, KVF_E_INVAL, "--cache-max-entry-count %g must be > 0 (a fraction < 1, or blocks)",
                           o->cache_max_entry_count);
    if (o->sched_policy != KVF_SCHED_MIXED && o->sched_policy != KVF_SCHED_PREFILL_FIRST)
        return kvf_err_set(err, KVF_E_INVAL, "sched_policy %d is not mixed (0) or prefill-first (1)", o->sched_policy);
    if (o->n_threads < 0) return kvf_err_set(err, KVF_E_INVAL, "--threads %d must be >= 0", o->n_threads);
    if (o->device < 0) return kvf_err_set(err, KVF_E_INVAL, "--device %d must be >= 0", o->device);
    return 0;
}

static int s_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// dummy_weights (kvf-bench): the config may be a file of any name, e.g.
// fixtures/configs/llama3-8b.json, or a directory holding config.json.
static int s_cfg_load_any(const char *path, kvf_modelcfg_t *cfg, kvf_err_t *err) {
    if (!s_file_exists(path)) return kvf_modelcfg_load(path, cfg, err);
    FILE *f = fopen(path, "rb");
    if (!f) return kvf_err_set(err, KVF_E_IO, "%s: %s", path, strerror(errno));
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n <= (1L << 24) && fseek(f, 0, SEEK_SET) == 0) {
        text = kvf_xmalloc((size_t)n + 1);
        if (fread(text, 1, (size_t)n, f) != (size_t)n) n = -1;
    }
    fclose(f);
    if (!text || n < 0) {
        free(text);
        return kvf_err_set(err, KVF_E_IO, "%s: cannot read the config (not a file of at most 16 MiB?)", path);
    }
    text[n] = 0;
    int rc = kvf_modelcfg_parse(text, path, cfg, err);
    free(text);
    return rc;
}

static kvf_backend_t *s_backend_new(const char *name, const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                    const kvf_backend_opts_t *bo, kvf_err_t *err) {
    if (strcmp(name, "cpu") == 0) return kvf_cpu_backend_new(cfg, st, bo, err);
    if (strcmp(name, "cuda") == 0) {
#ifdef KVF_HAVE_CUDA
        return kvf_cuda_backend_new(cfg, st, bo, err);
#else
        kvf_err_set(err, KVF_E_UNSUPPORTED, "--backend cuda: this build has no CUDA backend");
        return NULL;
#endif
    }
    kvf_err_set(err, KVF_E_INVAL, "--backend '%s': expected cpu or cuda", name);
    return NULL;
}

// Threads that sample a step's host rows: --threads (0 = every online core),
// at most KVF_SAMPLE_POOL_MAX_THREADS and no more than rows in a step. With the
// cpu backend they share the cores with its forward pool, which is done before
// sampling starts.
static int32_t s_sample_threads(const kvf_engine_opts_t *o) {
    long n = o->n_threads;
    if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > KVF_SAMPLE_POOL_MAX_THREADS) n = KVF_SAMPLE_POOL_MAX_THREADS;
    if (n > o->max_batch_size) n = o->max_batch_size;
    return (int32_t)n;
}

kvf_engine_t *kvf_engine_new(const char *model_dir, const kvf_engine_opts_t *opts, kvf_err_t *err) {
    kvf_engine_opts_t o = opts ? *opts : kvf_engine_opts_default();
    if (!o.backend) o.backend = "cpu";
    if (!model_dir || !*model_dir) {
        kvf_err_set(err, KVF_E_INVAL, "no model directory given (--model DIR)");
        return NULL;
    }
    if (s_check_opts(&o, err)) return NULL;
    if (strcmp(o.backend, "cpu") != 0 && strcmp(o.backend, "cuda") != 0) {
        kvf_err_set(err, KVF_E_INVAL, "--backend '%s': expected cpu or cuda", o.backend);
        return NULL;
    }

    kvf_engine_t *e = kvf_xcalloc(1, sizeof *e);
    kvf_safetensors_t *st = NULL;
    snprintf(e->backend_name, sizeof e->backend_name, "%s", o.backend);
    o.backend = e->backend_name;

    if (o.dummy_weights) o.no_tokenizer = 1;  // a shape benchmark: token ids only
    if ((o.dummy_weights ? s_cfg_load_any(model_dir, &e->cfg, err) : kvf_modelcfg_load(model_dir, &e->cfg, err)))
        goto fail;
    const kvf_modelcfg_t *cfg = &e->cfg;
    if (o.session_len == 0) o.session_len = cfg->max_position;
    if (o.session_len < 2 || o.session_len > cfg->max_position) {
        kvf_err_set(err, KVF_E_INVAL, "--session-len %d must be in [2, %d] (the model's max_position_embeddings)",
                    o.session_len, cfg->max_position);
        goto fail;
    }
    // KVF_ENGINE_BATCH_AUTO: size the backend for the most, choose once the pool is known
    const int auto_batch = o.max_batch_size == KVF_ENGINE_BATCH_AUTO;
    if (auto_batch) o.max_batch_size = o.tp ? KVF_ENGINE_BATCH_AUTO_MIN : KVF_ENGINE_BATCH_AUTO_MAX;
    if (auto_batch && o.max_batch_size > o.max_prefill_token_num) o.max_batch_size = o.max_prefill_token_num;
    if (o.max_batch_size > o.max_prefill_token_num) {
        kvf_log(KVF_LOG_WARN, "max_batch_size %d lowered to max_prefill_token_num %d (each decode takes a token)",
                o.max_batch_size, o.max_prefill_token_num);
        o.max_batch_size = o.max_prefill_token_num;
    }
    e->max_blocks_per_seq = (o.session_len + o.block_size - 1) / o.block_size;

    // tokenizer: optional, but a broken one is an error
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if (!o.no_tokenizer && s_file_exists(path)) {
        e->tok = kvf_tokenizer_load(path, err);
        if (!e->tok) goto fail;
    }

    if (!o.dummy_weights) {  // else st stays NULL: the backend seeds random weights
        st = kvf_safetensors_open_dir(model_dir, err);
        if (!st) goto fail;
    }

    kvf_backend_opts_t bo;
    memset(&bo, 0, sizeof bo);
    bo.block_size = o.block_size;
    bo.max_batch_size = o.max_batch_size;
    bo.max_step_tokens = o.max_prefill_token_num;
    bo.max_logit_rows = o.max_batch_size;
    bo.max_blocks_per_seq = e->max_blocks_per_seq;
    bo.tp_rank = 0;
    bo.tp_size = 1;
    if (o.tp) {  // tensor parallelism: this rank's shard
        bo.tp_rank = kvf_tp_rank(o.tp);
        bo.tp_size = kvf_tp_size(o.tp);
        bo.tp = o.tp;
#ifdef KVF_HAVE_CUDA
        // On GPUs the backend all-reduces over NCCL; the unique id travels over o.tp.
        if (kvf_tp_size(o.tp) > 1 && strcmp(o.backend, "cuda") == 0) {
            e->tp_nccl = kvf_tp_nccl_new_over(o.tp, o.device, o.tp->timeout_ms, err);
            if (!e->tp_nccl) goto fail;
            bo.tp = e->tp_nccl;
        }
#endif
    }
    bo.n_threads = o.n_threads;
    bo.device = o.device;
    bo.cache_max_entry_count = o.cache_max_entry_count;
    bo.memory_budget = o.memory_budget;
    bo.kv_dtype = o.kv_dtype;
    bo.quant = o.quant;
    e->be = s_backend_new(o.backend, cfg, st, &bo, err);
    kvf_safetensors_destroy(&st);  // the backend holds its own copy of the weights
    if (!e->be) goto fail;

    // The strict half of the plan: one full-length sequence must fit.
    int64_t tokens_fit = (int64_t)e->be->n_blocks * o.block_size;
    if (e->be->n_blocks < e->max_blocks_per_seq) {
        kvf_err_set(err, KVF_E_NOMEM,
                    "memory plan: the KV pool holds %d blocks x %d tokens = %lld tokens (%.1f MiB), less than one "
                    "sequence of --session-len %d (%d blocks): raise --cache-max-entry-count or --memory-budget, or "
                    "lower --session-len",
                    e->be->n_blocks, o.block_size, (long long)tokens_fit, MIB(e->be->kv_bytes), o.session_len,
                    e->max_blocks_per_seq);
        goto fail;
    }

    if (auto_batch && !o.tp) {  // within what the backend was sized for
        const int32_t fit = e->be->n_blocks / e->max_blocks_per_seq;
        int32_t b = fit < KVF_ENGINE_BATCH_AUTO_MIN ? KVF_ENGINE_BATCH_AUTO_MIN : fit;
        if (b > o.max_batch_size) b = o.max_batch_size;
        kvf_log(KVF_LOG_INFO, "max_batch_size %d (auto: the pool holds %d sequences of %d tokens)", b, fit,
                o.session_len);
        o.max_batch_size = b;
    }

    // TP rank 0 sends every step to the other ranks (worker/tp_group.h).
    if (o.tp && kvf_tp_size(o.tp) > 1 && kvf_tp_rank(o.tp) == 0) {
        e->be = kvf_tp_leader_new(&e->be, o.tp, 0, err);
        if (!e->be) goto fail;
    }

    e->bm = kvf_blockmgr_new(e->be->n_blocks, o.block_size, o.enable_prefix_caching);
    kvf_sched_opts_t so = {.block_size = o.block_size,
                           .policy = o.sched_policy,
                           .max_batch_size = o.max_batch_size,
                           .max_prefill_token_num = o.max_prefill_token_num,
                           .max_blocks_per_seq = e->max_blocks_per_seq};
    e->sched = kvf_sched_new(&so, e->bm, err);
    if (!e->sched) goto fail;
    if (cfg->vocab_size < 1) {
        kvf_err_set(err, KVF_E_INVAL, "model vocab_size %d is invalid", cfg->vocab_size);
        goto fail;
    }
    e->spool = kvf_sample_pool_new(s_sample_threads(&o), cfg->vocab_size);
    if (!e->spool) {
        kvf_err_set(err, KVF_E_NOMEM, "cannot allocate the samplers for a vocabulary of %d", cfg->vocab_size);
        goto fail;
    }
    size_t logit_floats = (size_t)o.max_batch_size * (size_t)cfg->vocab_size;
    e->logits = malloc(logit_floats * sizeof(float));
    if (!e->logits) {
        kvf_err_set(err, KVF_E_NOMEM, "cannot allocate %.1f MiB for logits: lower --max-batch-size",
                    MIB(logit_floats * sizeof(float)));
        goto fail;
    }
    e->b_tokens = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_prefill_token_num);
    e->b_n_new = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size);
    e->b_n_past = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size);
    e->b_table = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size * (size_t)e->max_blocks_per_seq);
    e->events = kvf_xmalloc(sizeof(s_event_t) * (size_t)o.max_batch_size);
    e->b_smp = kvf_xmalloc(sizeof(*e->b_smp) * (size_t)o.max_batch_size);
    e->b_step = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size);
    e->b_hist = kvf_xmalloc(sizeof(*e->b_hist) * (size_t)o.max_batch_size);
    e->b_nhist = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size);
    e->b_ids = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size);
    e->b_rows = kvf_xmalloc(sizeof(int32_t) * (size_t)o.max_batch_size);
    e->o = o;
    return e;

fail:
    kvf_safetensors_destroy(&st);
    e->o = o;
    kvf_engine_destroy(&e);
    return NULL;
}

void kvf_engine_destroy(kvf_engine_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_engine_t *e = *self_p;
    if (e->sched) {
        // free the per-request state hung on the sequences
        kvf_seq_t *q;
        while ((q = kvf_sched_running_at(e->sched, 0)) || (q = kvf_sched_waiting_at(e->sched, 0))) {
            free(q->user);
            kvf_sched_finish(e->sched, q);
        }
        kvf_sched_destroy(&e->sched);
    }
    kvf_blockmgr_destroy(&e->bm);
    if (e->be) e->be->ops->destroy(&e->be);
    kvf_tp_destroy(&e->tp_nccl);  // after the backend that used it
    kvf_sample_pool_destroy(&e->spool);
    kvf_tokenizer_destroy(&e->tok);
    free(e->logits);
    free(e->b_tokens);
    free(e->b_n_new);
    free(e->b_n_past);
    free(e->b_table);
    free(e->events);
    free(e->b_smp);
    free(e->b_step);
    free(e->b_hist);
    free(e->b_nhist);
    free(e->b_ids);
    free(e->b_rows);
    free(e->pending);
    free(e);
    *self_p = NULL;
}

// ---------------------------------------------------------------- accessors and plan

const kvf_modelcfg_t *kvf_engine_cfg(const kvf_engine_t *e) { return &e->cfg; }
const kvf_tokenizer_t *kvf_engine_tokenizer(const kvf_engine_t *e) { return e->tok; }
const kvf_engine_opts_t *kvf_engine_opts(const kvf_engine_t *e) { return &e->o; }

int kvf_engine_set_sched_policy(kvf_engine_t *e, int32_t policy, kvf_err_t *err) {
    if (kvf_sched_set_policy(e->sched, policy, err) != 0) return -1;
    e->o.sched_policy = policy;
    return 0;
}
struct kvf_backend_s *kvf_engine_backend(kvf_engine_t *e) { return e->be; }

void kvf_engine_plan(const kvf_engine_t *e, kvf_plan_t *out) {
    memset(out, 0, sizeof *out);
    out->weights_bytes = e->be->weights_bytes;
    out->workspace_bytes = e->be->workspace_bytes;
    out->kv_bytes = e->be->kv_bytes;
    out->free_bytes_at_start = e->be->free_bytes_at_start;
    out->kv_blocks = (uint32_t)e->be->n_blocks;
    out->block_size = (uint32_t)e->o.block_size;
    out->tokens_fit = (uint64_t)e->be->n_blocks * (uint64_t)e->o.block_size;
    out->full_sequences = (uint32_t)(e->be->n_blocks / e->max_blocks_per_seq);
    out->kv_dtype = (uint32_t)e->o.kv_dtype;
    out->quant = (uint32_t)e->o.quant;
}

void kvf_engine_plan_text(const kvf_engine_t *e, char *buf, size_t size) {
    kvf_plan_t p;
    kvf_engine_plan(e, &p);
    snprintf(buf, size,
             "memory plan (%s backend, %s, %d layers, vocab %d): weights %.1f MiB (quantization %s), workspace %.1f MiB for steps of "
             "%d tokens / %d sequences; %.1f MiB free before the KV pool; KV cache (%s) %.1f MiB = %u blocks x %u "
             "tokens (%.1f KiB per block) = %llu tokens, enough for %u sequences of the full --session-len %d at "
             "once; prefix caching %s; steps %s",
             e->o.backend, e->cfg.architecture, e->cfg.n_layers, e->cfg.vocab_size, MIB(p.weights_bytes),
             kvf_quant_name(e->o.quant),
             MIB(p.workspace_bytes), e->o.max_prefill_token_num, e->o.max_batch_size, MIB(p.free_bytes_at_start),
             kvf_kv_dtype_name(e->o.kv_dtype), MIB(p.kv_bytes), p.kv_blocks, p.block_size,
             p.kv_blocks ? (double)p.kv_bytes / p.kv_blocks / 1024.0 : 0.0, (unsigned long long)p.tokens_fit,
             p.full_sequences, e->o.session_len, e->o.enable_prefix_caching ? "on" : "off",
             e->o.sched_policy == KVF_SCHED_PREFILL_FIRST ? "prefill-first" : "mixed");
}

void kvf_engine_stats(const kvf_engine_t *e, kvf_engine_stats_t *out) {
    kvf_blockmgr_stats_t bs;
    kvf_blockmgr_stats(e->bm, &bs);
    memset(out, 0, sizeof *out);
    out->total_blocks = bs.n_blocks;
    out->free_blocks = bs.n_free;
    out->running = kvf_sched_n_running(e->sched);
    out->waiting = kvf_sched_n_waiting(e->sched);
    out->preemptions = kvf_sched_n_preemptions(e->sched);
    out->prefix_hits = bs.prefix_hits;
    out->prefix_misses = bs.prefix_misses;
    out->tokens_generated = e->tokens_generated;
    out->tokens_computed = e->tokens_computed;
    out->steps = e->steps;
}

// ---------------------------------------------------------------- requests

static int s_pending_has(const kvf_engine_t *e, uint64_t rid) {
    for (int32_t i = 0; i < e->n_pending; i++)
        if (e->pending[i].rid == rid) return 1;
    return 0;
}

static int s_check_ids(const kvf_engine_t *e, const char *what, const int32_t *ids, int32_t n, kvf_err_t *err) {
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->cfg.vocab_size)
            return kvf_err_set(err, KVF_E_INVAL, "%s id %d at position %d is outside the vocabulary [0, %d)", what,
                               ids[i], i, e->cfg.vocab_size);
    return 0;
}

int kvf_engine_add(kvf_engine_t *e, uint64_t rid, const int32_t *prompt, int32_t n_prompt, const int32_t *resume,
                   int32_t n_resume, const kvf_sampling_t *sampling, kvf_err_t *err) {
    if (!prompt || n_prompt < 1) return kvf_err_set(err, KVF_E_INVAL, "request %llu: empty prompt",
                                                    (unsigned long long)rid);
    if (n_resume < 0 || (n_resume > 0 && !resume))
        return kvf_err_set(err, KVF_E_INVAL, "request %llu: bad resume ids", (unsigned long long)rid);
    if (!sampling) return kvf_err_set(err, KVF_E_INVAL, "request %llu: no sampling parameters",
                                      (unsigned long long)rid);
    if (kvf_sampling_validate(sampling, err)) return -1;
    if (n_prompt > e->o.session_len - 1)
        return kvf_err_set(err, KVF_E_TOO_LONG, "request %llu: prompt of %d tokens is longer than session_len - 1 = %d",
                           (unsigned long long)rid, n_prompt, e->o.session_len - 1);
    if (s_check_ids(e, "prompt token", prompt, n_prompt, err)) return -1;
    if (s_check_ids(e, "resume token", resume, n_resume, err)) return -1;
    if (kvf_sched_find(e->sched, rid) || s_pending_has(e, rid))
        return kvf_err_set(err, KVF_E_INVAL, "request %llu is already in flight", (unsigned long long)rid);

    // A re-dispatched request may already be complete.
    kvf_finish_reason done = KVF_FINISH_NONE;
    if (n_resume > 0 && kvf_sampler_is_stop(&e->cfg, sampling, resume[n_resume - 1]))
        done = KVF_FINISH_STOP;
    else if (n_resume >= sampling->max_new_tokens || (int64_t)n_prompt + n_resume >= e->o.session_len)
        done = KVF_FINISH_LENGTH;
    if (done != KVF_FINISH_NONE) {
        if (e->n_pending == e->cap_pending) {
            e->cap_pending = e->cap_pending ? 2 * e->cap_pending : 8;
            e->pending = kvf_xrealloc(e->pending, sizeof(s_pending_t) * (size_t)e->cap_pending);
        }
        e->pending[e->n_pending++] = (s_pending_t){rid, done};
        return 0;
    }

    int32_t n = n_prompt + n_resume;
    int32_t *toks = kvf_xmalloc(sizeof(int32_t) * (size_t)n);
    memcpy(toks, prompt, sizeof(int32_t) * (size_t)n_prompt);
    if (n_resume) memcpy(toks + n_prompt, resume, sizeof(int32_t) * (size_t)n_resume);
    s_req_t *r = kvf_xcalloc(1, sizeof *r);
    r->rid = rid;
    r->sampling = *sampling;
    r->n_generated = n_resume;
    kvf_seq_t *seq = kvf_sched_add(e->sched, rid, toks, n, r, err);
    free(toks);
    if (!seq) {
        free(r);
        return -1;
    }
    return 0;
}

int kvf_engine_cancel(kvf_engine_t *e, uint64_t rid) {
    kvf_seq_t *seq = kvf_sched_find(e->sched, rid);
    if (seq) {
        free(seq->user);
        kvf_sched_finish(e->sched, seq);
        return 0;
    }
    for (int32_t i = 0; i < e->n_pending; i++) {
        if (e->pending[i].rid != rid) continue;
        memmove(e->pending + i, e->pending + i + 1, sizeof(s_pending_t) * (size_t)(e->n_pending - i - 1));
        e->n_pending--;
        return 0;
    }
    return -1;
}

int kvf_engine_has_work(const kvf_engine_t *e) {
    return e->n_pending > 0 || kvf_sched_n_running(e->sched) > 0 || kvf_sched_n_waiting(e->sched) > 0;
}

// ---------------------------------------------------------------- one step

// Copies the plan into the backend's batch. The block table's row stride is the
// longest table of this step, not of a whole session.
static void s_build_batch(kvf_engine_t *e, const kvf_sched_plan_t *plan, kvf_batch_t *b) {
    int32_t stride = 1;
    for (int32_t i = 0; i < plan->n_seqs; i++)
        if (plan->seqs[i]->n_blocks > stride) stride = plan->seqs[i]->n_blocks;
    int32_t t = 0;
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        const kvf_seq_t *q = plan->seqs[i];
        memcpy(e->b_tokens + t, q->tokens + plan->n_past[i], sizeof(int32_t) * (size_t)plan->n_new[i]);
        t += plan->n_new[i];
        e->b_n_new[i] = plan->n_new[i];
        e->b_n_past[i] = plan->n_past[i];
        int32_t *row = e->b_table + (size_t)i * stride;
        memcpy(row, q->blocks, sizeof(int32_t) * (size_t)q->n_blocks);
        for (int32_t j = q->n_blocks; j < stride; j++) row[j] = -1;
    }
    memset(b, 0, sizeof *b);
    b->n_seqs = plan->n_seqs;
    b->n_tokens = t;
    b->tokens = e->b_tokens;
    b->n_new = e->b_n_new;
    b->n_past = e->b_n_past;
    b->block_table = e->b_table;
    b->max_blocks = stride;
    b->all_logits = 0;
}

static void s_deliver(kvf_engine_t *e, int32_t n_events, kvf_engine_token_fn fn, void *ud) {
    if (!fn) return;
    for (int32_t i = 0; i < n_events; i++)
        fn(ud, e->events[i].rid, e->events[i].token, e->events[i].finished, e->events[i].reason);
}

// The step's composition for kvf_engine_last_step (kvf-bench's roofline).
static void s_note_step(kvf_engine_t *e, const kvf_sched_plan_t *plan) {
    kvf_step_info_t *si = &e->last;
    kvf_blockmgr_stats_t bs;
    kvf_blockmgr_stats(e->bm, &bs);
    si->n_seqs = plan->n_seqs;
    si->n_tokens = plan->n_tokens;
    si->n_decode = plan->n_decode;
    si->n_prefill_tokens = plan->n_tokens - plan->n_decode;
    si->n_preempted = plan->n_preempted;
    si->blocks_used = bs.n_blocks - bs.n_free;
    for (int32_t i = 0; i < plan->n_seqs; i++) {
        int64_t p = plan->n_past[i], n = plan->n_new[i];
        si->n_sampled += plan->sample[i] != 0;
        si->kv_tokens_read += p + n;
        si->attn_qk_pairs += n * p + n * (n + 1) / 2;
    }
}

void kvf_engine_last_step(const kvf_engine_t *e, kvf_step_info_t *out) { *out = e->last; }

// One host-sampled row (a kvf_sample_pool job): reads only that row's logits,
// sequence and request, writes only b_ids[row], so rows may run on any thread.
typedef struct {
    kvf_engine_t *e;
    const kvf_sched_plan_t *plan;
} s_sample_ctx_t;

static void s_sample_row(void *ctx, int32_t job, kvf_sampler_t *smp) {
    const s_sample_ctx_t *c = ctx;
    kvf_engine_t *e = c->e;
    const int32_t i = e->b_rows[job], vocab = e->cfg.vocab_size;
    const kvf_seq_t *q = c->plan->seqs[i];
    const s_req_t *r = q->user;
    e->b_ids[i] = kvf_sampler_sample(smp, e->logits + (size_t)i * vocab, vocab, &r->sampling, q->tokens,
                                     q->n_tokens, r->n_generated);
}

int kvf_engine_step(kvf_engine_t *e, kvf_engine_token_fn fn, void *ud, kvf_err_t *err) {
    memset(&e->last, 0, sizeof e->last);
    // Finishes decided at admission go first (and alone: they take no compute).
    if (e->n_pending > 0) {
        s_pending_t p = e->pending[0];
        memmove(e->pending, e->pending + 1, sizeof(s_pending_t) * (size_t)(e->n_pending - 1));
        e->n_pending--;
        if (fn) fn(ud, p.rid, -1, 1, p.reason);
        return 0;
    }

    kvf_sched_plan_t plan;
    int n = kvf_sched_schedule(e->sched, &plan, err);
    if (n <= 0) return n;

    kvf_batch_t batch;
    s_build_batch(e, &plan, &batch);
    // The backend picks the tokens itself when it can for every sampled row (only
    // the ids come back); otherwise (KVF_E_UNSUPPORTED, nothing run) the logits path.
    int on_device = 0, rc = 1;  // 1: not run yet
    if (e->be->ops->forward_sample) {
        for (int32_t i = 0; i < plan.n_seqs; i++) {
            const s_req_t *r = plan.seqs[i]->user;
            e->b_smp[i] = plan.sample[i] ? &r->sampling : NULL;
            e->b_step[i] = r->n_generated;
            e->b_hist[i] = plan.seqs[i]->tokens;
            e->b_nhist[i] = plan.seqs[i]->n_tokens;
        }
        kvf_err_t serr = {0};
        rc = e->be->ops->forward_sample(e->be, &batch, e->b_smp, e->b_step, e->b_hist, e->b_nhist, e->b_ids, &serr);
        on_device = rc == 0;
        if (rc != 0 && serr.code == KVF_E_UNSUPPORTED)
            rc = 1;
        else if (rc != 0 && err)
            *err = serr;
    }
    if (rc == 1) rc = e->be->ops->forward(e->be, &batch, e->logits, err);
    if (rc != 0) {
        kvf_log(KVF_LOG_ERROR, "step of %d sequences failed: %s", plan.n_seqs, err ? err->msg : "");
        int32_t ne = 0;
        for (int32_t i = 0; i < plan.n_seqs; i++) {
            kvf_seq_t *q = plan.seqs[i];
            e->events[ne++] = (s_event_t){q->rid, -1, 1, KVF_FINISH_ERROR};
            free(q->user);
            kvf_sched_finish(e->sched, q);
        }
        s_deliver(e, ne, fn, ud);
        return -1;
    }
    s_note_step(e, &plan);
    kvf_sched_complete(e->sched, &plan);
    e->steps++;
    e->tokens_computed += (uint64_t)plan.n_tokens;

    // Phase 1: every sampled row's token into b_ids (the backend's ids as they
    // are). Nothing below changes a row's history or step before it is sampled,
    // so this gives the bits the old one-row-at-a-time loop gave.
    if (!on_device) {
        int32_t n_rows = 0;
        for (int32_t i = 0; i < plan.n_seqs; i++)
            if (plan.sample[i]) e->b_rows[n_rows++] = i;
        s_sample_ctx_t sc = {e, &plan};
        kvf_sample_pool_run(e->spool, n_rows, s_sample_row, &sc);
    }

    // Phase 2: stop checks, appends and events, in row order.
    int32_t ne = 0;
    for (int32_t i = 0; i < plan.n_seqs; i++) {
        if (!plan.sample[i]) continue;
        kvf_seq_t *q = plan.seqs[i];
        s_req_t *r = q->user;
        int32_t tok = e->b_ids[i];
        kvf_finish_reason reason = KVF_FINISH_NONE;
        if (tok < 0) {
            kvf_log(KVF_LOG_ERROR, "request %llu: the sampler failed", (unsigned long long)r->rid);
            reason = KVF_FINISH_ERROR;
        } else {
            r->n_generated++;
            e->tokens_generated++;
            if (kvf_sampler_is_stop(&e->cfg, &r->sampling, tok))
                reason = KVF_FINISH_STOP;
            else if (r->n_generated >= r->sampling.max_new_tokens || q->n_tokens + 1 >= e->o.session_len)
                reason = KVF_FINISH_LENGTH;
            else if (kvf_sched_append(e->sched, q, tok, NULL) != 0)
                reason = KVF_FINISH_LENGTH;  // cannot happen: session_len bounds the sequence
        }
        e->events[ne++] = (s_event_t){r->rid, tok, reason != KVF_FINISH_NONE, reason};
        if (reason != KVF_FINISH_NONE) {
            free(r);
            kvf_sched_finish(e->sched, q);
        }
    }
    s_deliver(e, ne, fn, ud);
    return n;
}

// ---------------------------------------------------------------- scoring

int kvf_engine_score(kvf_engine_t *e, const int32_t *ids, int32_t n, float *logits, kvf_err_t *err) {
    if (kvf_engine_has_work(e))
        return kvf_err_set(err, KVF_E_BUSY, "scoring needs an idle engine");
    if (!ids || !logits || n < 1 || n > e->o.session_len)
        return kvf_err_set(err, KVF_E_TOO_LONG, "scoring needs 1..%d ids (session_len), got %d", e->o.session_len,
                           n);
    if (s_check_ids(e, "score", ids, n, err)) return -1;
    const int32_t bs = e->o.block_size, vocab = e->cfg.vocab_size;
    int32_t nb = (n + bs - 1) / bs;
    for (int32_t i = 0; i < nb; i++) {
        e->b_table[i] = kvf_blockmgr_alloc(e->bm, err);
        if (e->b_table[i] < 0) {
            for (int32_t j = 0; j < i; j++) kvf_blockmgr_free(e->bm, e->b_table[j], NULL);
            return -1;
        }
    }
    // rows per chunk: all logits of a chunk must fit the logits buffer
    int32_t chunk_max = e->o.max_batch_size < e->o.max_prefill_token_num ? e->o.max_batch_size
                                                                         : e->o.max_prefill_token_num;
    int rc = 0;
    for (int32_t done = 0; done < n && rc == 0;) {
        int32_t c = n - done < chunk_max ? n - done : chunk_max;
        int32_t n_new = c, n_past = done;
        kvf_batch_t b = {.n_seqs = 1, .n_tokens = c, .tokens = ids + done, .n_new = &n_new, .n_past = &n_past,
                         .block_table = e->b_table, .max_blocks = nb, .all_logits = 1};
        rc = e->be->ops->forward(e->be, &b, e->logits, err);
        if (rc == 0) memcpy(logits + (size_t)done * vocab, e->logits, sizeof(float) * (size_t)c * vocab);
        done += c;
    }
    for (int32_t i = 0; i < nb; i++) kvf_blockmgr_free(e->bm, e->b_table[i], NULL);
    return rc;
}
