// worker/engine.h — the in-process engine: memory plan, block manager, scheduler,
// backend and sampler behind one object. Used by kvf-generate, kvf-bench and
// kvf-worker. Not thread-safe: one thread drives an engine.
//
// Memory plan (../shared/DESIGN.md): kvf_engine_new loads the weights, sizes the
// backend's workspace for the largest step and gives the KV pool
// cache_max_entry_count x the memory left (a value >= 1 is a number of blocks).
// After that nothing is allocated per step. If the pool cannot hold one sequence
// of session_len tokens the engine refuses to start and names the knobs.
//
// Step size: decodes and prefill chunks share one budget of
// max_prefill_token_num tokens per step (each decode takes 1), so the backend is
// sized for max_step_tokens = max_prefill_token_num; max_batch_size is clamped
// to max_prefill_token_num so that every running sequence can always decode.
// One logit row per sequence: max_logit_rows = max_batch_size.
#ifndef KVF_ENGINE_H
#define KVF_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/modelcfg.h"
#include "common/sampling.h"
#include "common/tokenizer.h"
#include "proto/msg.h"

// max_batch_size = KVF_ENGINE_BATCH_AUTO: the backend is sized for
// KVF_ENGINE_BATCH_AUTO_MAX sequences, and once the KV pool is known the engine
// runs min(max_prefill_token_num, clamp(sequences of session_len tokens the pool
// holds, KVF_ENGINE_BATCH_AUTO_MIN, KVF_ENGINE_BATCH_AUTO_MAX)) at once
// (kvf_engine_opts() gives the choice). Why these bounds (bench/RESULTS.md,
// Llama-3-8B on one H200, 1024 x 512 + 128): 128 sequences leave the decode
// GEMMs bandwidth-bound (22.5 s) where 512 make them compute-bound (19.9 s).
// Under KVF_SCHED_MIXED 1024 is no faster than 512 (its decode batch only
// grows and drains); under KVF_SCHED_PREFILL_FIRST the whole 1024 decode
// together, 0.2-0.3 s faster (session 12), hence 1024. More than the pool
// holds only preempts. The minimum is the old default, so a small pool runs
// as before. One TP rank cannot see the others' pools: with opts.tp the choice
// is the minimum.
#define KVF_ENGINE_BATCH_AUTO 0
#define KVF_ENGINE_BATCH_AUTO_MIN 128
#define KVF_ENGINE_BATCH_AUTO_MAX 1024

typedef struct {
    const char *backend;            // "cpu" (default) or "cuda"
    int32_t device;                 // cuda device index (default 0)
    int32_t n_threads;              // cpu threads; 0 = all cores. Also the threads that sample a step's rows on
                                    // the host (at most 16 and max_batch_size; worker/sample_pool.h)
    int32_t block_size;             // tokens per KV block (default 64)
    int32_t max_batch_size;         // sequences per step (default 128); KVF_ENGINE_BATCH_AUTO (0): chosen
                                    // from the memory plan, see KVF_ENGINE_BATCH_AUTO_MAX
    int32_t max_prefill_token_num;  // tokens per step (default 8192)
    int32_t sched_policy;           // kvf_sched_policy (worker/sched.h): KVF_SCHED_MIXED (default) or
                                    // KVF_SCHED_PREFILL_FIRST (offline throughput; kvf_engine_sched_parse)
    int32_t session_len;            // longest sequence, prompt + output; 0 = the model's max_position
    double cache_max_entry_count;   // KV pool: fraction (< 1) of the memory left, or blocks (>= 1); default 0.8
    uint64_t memory_budget;         // cpu: bytes for weights + workspace + KV; 0 = available RAM
    int enable_prefix_caching;      // 1: share full prompt blocks between requests (default 0)
    int32_t kv_dtype;               // kvf_kv_dtype_t (worker/backend.h): KVF_KV_AUTO (default) or KVF_KV_FP8
    int32_t quant;                  // kvf_quant_t (worker/backend.h): KVF_QUANT_NONE (default) or KVF_QUANT_FP8
    int no_tokenizer;               // 1: do not load tokenizer.json (the caller has its own; default 0)
    // Added for kvf-bench (benchmarks of a model shape without its files): 1 =
    // model_dir may name a config.json file (or a directory holding one); no
    // safetensors and no tokenizer are read and the backend seeds random weights
    // (st == NULL, see cpu_backend.h / cuda_backend.h). Default 0.
    int dummy_weights;
    // Added for tensor parallelism (worker/tp.h, worker/tp_group.h): the TP
    // group's communicator, not owned; NULL (default) for one rank. The backend
    // shards over it; on rank 0 it is wrapped so that every step is also sent
    // to the other ranks, which run kvf_tp_follower_run on kvf_engine_backend().
    // Every rank must be given the same options.
    struct kvf_tp_s *tp;
} kvf_engine_opts_t;

// The defaults listed above.
kvf_engine_opts_t kvf_engine_opts_default(void);

// Parses a --sched value, "mixed" or "prefill-first", into *policy. Returns 0,
// or -1 with err set (KVF_E_INVAL) naming flag and value.
int kvf_engine_sched_parse(const char *flag, const char *v, int32_t *policy, kvf_err_t *err);

typedef struct {
    int32_t total_blocks, free_blocks;  // free includes cached-but-evictable blocks
    int32_t running, waiting;
    uint64_t preemptions;
    uint64_t prefix_hits, prefix_misses;  // in blocks
    uint64_t tokens_generated;            // sampled tokens since start
    uint64_t tokens_computed;             // tokens run through the model (prefill + decode + recompute)
    uint64_t steps;
} kvf_engine_stats_t;

typedef struct kvf_engine_s kvf_engine_t;

// Called once per sampled token, in the order of the step. token is -1 when a
// request ends without a new token (finished is then 1). reason is
// KVF_FINISH_NONE unless finished. The callback may call kvf_engine_cancel.
typedef void (*kvf_engine_token_fn)(void *ud, uint64_t rid, int32_t token, int finished,
                                    kvf_finish_reason reason);

// Opens the model in model_dir (config.json, *.safetensors, and tokenizer.json
// when present), creates the backend and the memory plan. Returns a new engine
// owned by the caller, or NULL with err set: a missing or corrupt model file,
// an unsupported architecture, bad options (KVF_E_INVAL), or a pool that cannot
// hold one full-length sequence (KVF_E_NOMEM, naming --cache-max-entry-count,
// --memory-budget and --session-len).
kvf_engine_t *kvf_engine_new(const char *model_dir, const kvf_engine_opts_t *opts, kvf_err_t *err);

// Frees everything (requests in flight are dropped); accepts NULL; nulls *self_p.
void kvf_engine_destroy(kvf_engine_t **self_p);

// The model's config, the tokenizer (NULL when the model has no tokenizer.json;
// owned by the engine) and the effective options (defaults resolved).
const kvf_modelcfg_t *kvf_engine_cfg(const kvf_engine_t *e);
const kvf_tokenizer_t *kvf_engine_tokenizer(const kvf_engine_t *e);
const kvf_engine_opts_t *kvf_engine_opts(const kvf_engine_t *e);

// Switches the scheduler's policy (kvf_sched_policy) from the next step on, e.g.
// once the chosen max_batch_size is known. Returns 0, or -1 with err set.
int kvf_engine_set_sched_policy(kvf_engine_t *e, int32_t policy, kvf_err_t *err);

// The backend, owned by the engine (a TP follower runs the leader's steps on it).
struct kvf_backend_s *kvf_engine_backend(kvf_engine_t *e);

// The memory plan as reported to the coordinator.
void kvf_engine_plan(const kvf_engine_t *e, kvf_plan_t *out);

// The plan as one printable paragraph (weights, workspace, KV bytes and blocks,
// tokens that fit, full-length sequences) into buf (always NUL-terminated).
void kvf_engine_plan_text(const kvf_engine_t *e, char *buf, size_t size);

// Queues request rid. prompt (n_prompt >= 1 ids, each < vocab) is used as given;
// resume (n_resume ids, may be 0) are tokens already delivered for this request
// (a re-dispatch): generation continues after them, they count towards
// max_new_tokens and the sampler's step index, and they are not emitted again.
// Copies everything. Returns 0, or -1 with err set: KVF_E_INVAL (empty prompt,
// an id outside the vocabulary, invalid sampling, a rid already in flight) or
// KVF_E_TOO_LONG (prompt longer than session_len - 1).
int kvf_engine_add(kvf_engine_t *e, uint64_t rid, const int32_t *prompt, int32_t n_prompt, const int32_t *resume,
                   int32_t n_resume, const kvf_sampling_t *sampling, kvf_err_t *err);

// Drops request rid (waiting or running) and frees its blocks; nothing more is
// reported for it. Returns 0, or -1 when no such request is in flight.
int kvf_engine_cancel(kvf_engine_t *e, uint64_t rid);

// 1 while any request is waiting, running or has an unreported finish.
int kvf_engine_has_work(const kvf_engine_t *e);

// Runs one scheduled step: plans it, runs the backend, samples one token for
// every sequence whose step reached its last known token, reports each through
// fn, and retires finished requests (EOS / stop ids unless ignore_eos,
// max_new_tokens, or session_len reached). Returns the number of sequences in
// the step (0 when idle), or -1 with err set when the backend failed: then every
// request of that step is reported finished with KVF_FINISH_ERROR.
int kvf_engine_step(kvf_engine_t *e, kvf_engine_token_fn fn, void *ud, kvf_err_t *err);

// Teacher-forced scoring: runs ids[0..n) through the model and writes the logits
// of every position (n, vocab) float32 to logits. Needs an idle engine
// (KVF_E_BUSY otherwise); n in [1, session_len]; ids < vocab. Returns 0 or -1
// with err set.
int kvf_engine_score(kvf_engine_t *e, const int32_t *ids, int32_t n, float *logits, kvf_err_t *err);

// Counters and occupancy now.
void kvf_engine_stats(const kvf_engine_t *e, kvf_engine_stats_t *out);

// What the last kvf_engine_step ran. Added for kvf-bench, which prices every
// step with the roofline (bench/roofline.h): weights + KV bytes moved and FLOPs
// follow exactly from these sums. All zero before the first step and after a
// step that ran nothing (idle, or a finish decided at admission).
typedef struct {
    int32_t n_seqs;            // sequences in the step (= lm_head rows computed: one per sequence)
    int32_t n_tokens;          // new tokens run through the model (decodes + prefill chunks)
    int32_t n_decode;          // sequences that decoded one token
    int32_t n_prefill_tokens;  // n_tokens - n_decode (prompt chunks and recompute)
    int32_t n_sampled;         // sequences whose logits were sampled
    int32_t n_preempted;       // sequences preempted while planning the step
    int32_t blocks_used;       // KV blocks in use while the step ran
    int64_t kv_tokens_read;    // sum over sequences of the context after the step (n_past + n_new)
    int64_t attn_qk_pairs;     // sum over sequences of causal (query, key) pairs: n_new x n_past + n_new (n_new + 1) / 2
} kvf_step_info_t;

void kvf_engine_last_step(const kvf_engine_t *e, kvf_step_info_t *out);

#endif
