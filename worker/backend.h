// worker/backend.h — the interface every compute backend implements ("cpu", "cuda").
//
// A backend owns the model's weights in its own format and memory, a workspace
// sized for the largest step, and the KV-cache slab of n_blocks blocks. All of it
// is allocated in kvf_backend_new; forward() allocates nothing.
//
// KV cache layout (both backends; element type float32 on cpu, bf16 on cuda):
//   for each layer l: K then V, each (n_blocks, block_size, n_kv_heads_local, head_dim)
// Token t of a sequence lives in block block_table[t / block_size] at slot
// t % block_size. Block ids are the same on every TP rank.
#ifndef KVF_BACKEND_H
#define KVF_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/modelcfg.h"
#include "common/sampling.h"

// One forward step over a batch of sequences, each adding n_new[i] >= 1 tokens
// (a prefill chunk or one decode token) after the n_past[i] it already has in
// the cache. The block tables must already cover n_past + n_new tokens.
typedef struct {
    int32_t n_seqs;
    int32_t n_tokens;            // sum of n_new
    const int32_t *tokens;       // (n_tokens) new token ids, sequence after sequence
    const int32_t *n_new;        // (n_seqs)
    const int32_t *n_past;       // (n_seqs) position of each sequence's first new token
    const int32_t *block_table;  // (n_seqs, max_blocks) physical block ids, row-major
    int32_t max_blocks;          // row stride of block_table
    int32_t all_logits;          // 0: logits of each sequence's last new token -> (n_seqs, vocab)
                                 // 1: logits of every new token -> (n_tokens, vocab)
} kvf_batch_t;

// Sizes fixed at start-up; forward() rejects a batch beyond them.
typedef struct {
    int32_t block_size;          // tokens per KV block
    int32_t max_batch_size;      // sequences per step
    int32_t max_step_tokens;     // tokens per step (max_prefill_token_num)
    int32_t max_logit_rows;      // rows of logits one step may return (>= max_batch_size)
    int32_t max_blocks_per_seq;  // ceil(session_len / block_size)
    int32_t tp_rank, tp_size;    // tensor parallel position (1 rank: 0, 1)
    int32_t n_threads;           // cpu: worker threads, 0 = all cores
    int32_t device;              // cuda: device index
    // The memory plan: after weights and workspace, the KV slab takes
    // cache_max_entry_count x the free memory (a value >= 1 is a number of blocks).
    double cache_max_entry_count;
    uint64_t memory_budget;      // cpu: bytes for weights + workspace + KV; 0 = available RAM
    int32_t kv_dtype;            // kvf_kv_dtype_t: what the KV cache keeps
    int32_t quant;               // kvf_quant_t: what the linear layers multiply in
    struct kvf_tp_s *tp;         // the TP group's communicator (worker/tp.h), not owned; NULL for tp_size 1
} kvf_backend_opts_t;

typedef struct kvf_backend_s kvf_backend_t;

// What the KV cache keeps (--kv-cache-dtype). AUTO: the activations' precision
// (bf16 on cuda, f32 on cpu). FP8: E4M3 (common/fp8.h), scale 1, rounded to
// nearest and saturated at +-448 as K and V are written: a block takes half
// the bytes of a bf16 one on cuda, so the pool holds twice the tokens and decode
// attention reads half the bytes; an accuracy change (about 2^-4 relative per
// element), off by default. The cpu backend rounds its f32 cache the same way
// (same numbers, not fewer bytes).
typedef enum { KVF_KV_AUTO = 0, KVF_KV_FP8 = 1 } kvf_kv_dtype_t;

// "auto", "fp8" or "fp8_e4m3" -> *out; -1 with err set (naming the flag) for anything else.
int kvf_kv_dtype_parse(const char *flag, const char *s, int32_t *out, kvf_err_t *err);

// "auto" or "fp8".
const char *kvf_kv_dtype_name(int32_t kv_dtype);

// What the linear layers (q/k/v, o, gate/up, down; not the embedding or lm_head)
// multiply in (--quantization, vLLM's flag). NONE: the checkpoint's weights.
// FP8: W8A8 E4M3 with a scale per row (common/fp8.h): each weight row (output
// channel) quantized once at load, each activation row (token) as it enters a
// GEMM; the products accumulate in f32 and come out scaled back. Half the weight
// bytes, about twice the GEMM throughput of bf16 on an H200; an accuracy change
// (about 2^-4 relative per element of both operands), off by default. The cpu
// backend rounds its f32 weights and activations to the same values (the reference).
typedef enum { KVF_QUANT_NONE = 0, KVF_QUANT_FP8 = 1 } kvf_quant_t;

// "none" or "fp8" -> *out; -1 with err set (naming the flag) for anything else.
int kvf_quant_parse(const char *flag, const char *s, int32_t *out, kvf_err_t *err);

// "none" or "fp8".
const char *kvf_quant_name(int32_t quant);

typedef struct {
    const char *name;
    // Runs one step; writes float32 logits (rows, vocab) into logits (host memory).
    // Returns 0, or -1 with err set (bad batch: KVF_E_INVAL; device failure: KVF_E_DEVICE).
    int (*forward)(kvf_backend_t *be, const kvf_batch_t *batch, float *logits, kvf_err_t *err);
    // Frees everything; accepts NULL; nulls *self_p.
    void (*destroy)(kvf_backend_t **self_p);
    // Optional (NULL where a backend has none): runs one step as forward() with
    // all_logits 0 and picks each sequence's next token on the backend, copying
    // back only the n_seqs ids, so that out_tokens[i] is what kvf_sampler_sample
    // would return for row i with per_seq[i] at step steps[i] and history[i]
    // (n_history[i] ids: prompt + generated, for the repetition penalty; history
    // and n_history may be NULL when no row has a penalty). per_seq[i] NULL: that
    // sequence's token is not wanted (any id is written).
    // Returns 0; or -1 with err KVF_E_UNSUPPORTED, before running anything, when
    // some per_seq[i] needs what the backend cannot do on the device (the caller
    // then uses forward() and the host sampler); or -1 as forward() does.
    int (*forward_sample)(kvf_backend_t *be, const kvf_batch_t *batch, const kvf_sampling_t *const *per_seq,
                          const int32_t *steps, const int32_t *const *history, const int32_t *n_history,
                          int32_t *out_tokens, kvf_err_t *err);
} kvf_backend_ops_t;

struct kvf_backend_s {
    const kvf_backend_ops_t *ops;
    kvf_modelcfg_t cfg;
    kvf_backend_opts_t opts;
    int32_t n_blocks;            // KV blocks in the slab
    uint64_t weights_bytes;      // as held by the backend
    uint64_t workspace_bytes;
    uint64_t kv_bytes;
    uint64_t free_bytes_at_start;// free memory measured after weights + workspace, before the slab
};

// Checks a batch against the limits be was built for (sequence, token and logit
// row counts; every block id in [0, n_blocks); n_past + n_new within
// max_blocks_per_seq x block_size; n_new summing to n_tokens; token ids in the
// vocabulary). Every backend calls it first in forward(). Returns 0, or -1 with
// err set (KVF_E_INVAL) naming the offending field.
int kvf_batch_validate(const kvf_backend_t *be, const kvf_batch_t *b, kvf_err_t *err);

#endif
