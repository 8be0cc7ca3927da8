// worker/cuda_backend.h — the "cuda" backend: bf16 weights and activations, fp32
// accumulation, kernels/ + cuBLASLt. Built only when KVF_HAVE_CUDA.
//
// Memory plan (all at start-up, three device allocations and one pinned host
// buffer): the weights (bf16; norms, biases and RoPE frequencies f32), the
// workspace for the largest step (max_step_tokens tokens, max_batch_size
// sequences, max_logit_rows rows of f32 logits, attention split partials, the
// cuBLASLt workspace, the step's metadata and sampling settings, the repetition
// penalty's histories), then the KV slab. forward() copies
// the step's metadata with one async H2D copy, runs the layers on the
// backend's stream (decode steps optionally from a CUDA graph per batch-size
// bucket, captured at start-up) and copies the logits back; it allocates nothing.
// forward_sample (backend.h) runs the same step and picks every row's token on
// the device (repetition penalty, then argmax or temperature / top-k / top-p /
// min-p and the draw: kernels/repetition_penalty.h, kernels/sample_rows.h), so
// only the ids come back; a step whose penalised rows carry more history than
// the workspace holds (max_batch_size x the longest context, at most 4 Mi ids)
// is KVF_E_UNSUPPORTED and goes to the host sampler. Decode rows of
// many sequences go to the tensor-core kernels/attention_decode.h, those of few
// long sequences to kvf_attention's key splits.
//
// Environment (diagnostics, read at start-up): KVF_CUDA_TIMING=1 records events
// between kernel groups of eager steps and prints per-group device time per
// step at destroy; KVF_GEMM_TUNE=1 times cuBLASLt's candidates for the
// max_batch_size-row GEMMs and keeps the fastest (kernels/gemm.h).
//
// Tensor parallelism (tp_size T > 1; opts->tp is the group's NCCL communicator,
// kvf_tp_nccl_new_over; one GPU per rank): the weights are sharded at load as
// worker/tp_shard.h says (q/k/v, gate/up column-parallel; o_proj, down_proj
// row-parallel; embedding and lm_head vocab-parallel; norms whole on every rank),
// the KV slab holds the rank's KV heads (block ids agree: the group takes its
// smallest block count), and the partial o_proj and down_proj outputs are summed
// in f32 by ncclAllReduce on the backend's stream between the kernels (f32: the
// residual stream and the GEMM outputs are f32, so no conversion kernel and the
// sum rounds once, as on the cpu backend; 2x the bytes of bf16, about 2 MiB per
// all-reduce for 128 decode rows of a 4096-wide model). The embedding's rows are
// summed the same way (the rank holding a token's id adds its row, the others
// zeros). Each rank computes the logits of its vocabulary ids; a step ends with
// worker/tp_vocab.h's exchange: each row's best logit per rank goes round (a
// greedy step picks its tokens from those), and only when the leader needs every
// logit (forward(), sampled or penalised rows) are the ranks' logits gathered on
// the device. No CUDA graphs for T > 1 (collectives are not captured):
// kvf_cuda_backend_set_graphs has no graph to replay. The exchange and a step's
// end wait through kvf_tp_nccl_wait, so a dead or stuck rank fails the step with
// KVF_E_PEER_LOST within the communicator's timeout instead of hanging.
#ifndef KVF_CUDA_BACKEND_H
#define KVF_CUDA_BACKEND_H

#include <stdint.h>

#include "common/safetensors.h"
#include "worker/backend.h"

// As kvf_cpu_backend_new, on device opts->device: weights converted to bf16 at
// load, workspace, then the KV slab = cache_max_entry_count x cudaMemGetInfo free
// (a value >= 1 is a number of blocks). st may be NULL: seeded random weights
// generated on the device. Returns a new backend owned by the caller
// (be->ops->destroy), or NULL with err set: KVF_E_INVAL / KVF_E_UNSUPPORTED for a
// config or options it cannot run (a TP split tp_shard.h refuses, tp_size > 1
// without an NCCL communicator, head_dim > 128, a query group
// > 16), a missing or misshaped tensor named, KVF_E_NOMEM when the slab cannot
// hold one max_blocks_per_seq sequence (with the knob to turn), KVF_E_DEVICE with
// the failing call.
kvf_backend_t *kvf_cuda_backend_new(const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                    const kvf_backend_opts_t *opts, kvf_err_t *err);

// Device (and pinned host) allocations made by this backend so far: fixed once
// kvf_cuda_backend_new returns; forward() must never change it. 0 for NULL or a
// backend that is not "cuda".
uint64_t kvf_cuda_backend_alloc_count(const kvf_backend_t *be);

// Decode steps (every sequence adds one token, all_logits 0) can replay CUDA
// graphs captured at start-up, one per batch-size bucket (powers of two up to 64,
// then every 64 rows up to 512, then every 128, up to max_batch_size), the batch
// padded to its bucket. KVF_CUDA_GRAPHS_ON: every decode step that a bucket
// holds. KVF_CUDA_GRAPHS_AUTO (the default): only buckets whose graph has no
// key splits (a split graph splits the key range for the longest context the
// backend allows, which cost more than the launches it saves: 16 sequences at
// 512 tokens, Llama-3-8B shape, H200, 9.47 ms graph vs 8.33 ms eager) and that
// pad at most n/16 rows (each padded row runs the whole model). Measured, off ->
// auto, one H200 (bench/RESULTS.md): 64 sequences x 128 + 256 tokens 1.79 -> 1.71
// s (decode p50 6.31 -> 5.97 ms); the standard workload 18.05 -> 18.03 s (199 of its
// 221 decode-only steps from graphs, decode p50 23.29 -> 23.10 ms).
// KVF_CUDA_GRAPHS_OFF: every step eager (also the default under KVF_CUDA_TIMING).
// Returns 0, or -1 for a backend that is not "cuda" or another value of mode.
#define KVF_CUDA_GRAPHS_OFF 0
#define KVF_CUDA_GRAPHS_ON 1
#define KVF_CUDA_GRAPHS_AUTO 2
int kvf_cuda_backend_set_graphs(kvf_backend_t *be, int mode);

// Steps of at least min_rows rows run the MLP's gate/up GEMM and SwiGLU as one kernel
// (kernels/gemm_swiglu.h; default KVF_CUDA_SWIGLU_MIN_ROWS, or KVF_SWIGLU_MIN_ROWS; KVF_SWIGLU=0
// turns the kernel off at start-up), and so the QKV GEMM with RoPE (kernels/gemm_qkv_rope.h,
// KVF_QKV_ROPE=0 off; its own default KVF_CUDA_QKV_ROPE_MIN_ROWS, or KVF_QKV_ROPE_MIN_ROWS, until
// this call sets both). Smaller steps keep cuBLASLt's GEMMs, a silu_mul and rope_kv.
// Returns 0, or -1 where the backend runs without either fused kernel (not built for sm_90a or
// not such a device, FP8 linear layers, f32 activations, ff not a multiple of 128) or min_rows < 1.
// The QKV kernel's own threshold is higher: at 1024 rows (prefill-first decode steps) its 8 x 24
// tiles fill 1.45 waves of an H200's SMs, and cuBLASLt's QKV GEMM with rope_kv ran those decode
// steps 1% faster (44.3 -> 43.9 ms, bench/RESULTS.md session 12); the fused SwiGLU stayed faster.
#define KVF_CUDA_SWIGLU_MIN_ROWS 1024
#define KVF_CUDA_QKV_ROPE_MIN_ROWS 2048
int kvf_cuda_backend_set_swiglu(kvf_backend_t *be, int min_rows);

// Steps of at most this many rows run their bf16 GEMMs as kvf_gemv (kernels/gemv.h) instead of
// cuBLASLt; KVF_GEMV_ROWS=N (0..KVF_GEMV_MAX_ROWS) sets another limit at start-up, 0 none. H200
// (bench/RESULTS.md, session 16): decode steps of 1 sequence 5.89 -> 5.20 ms, of 4 5.73 -> 5.40;
// of 8 7.14 against cuBLASLt's 5.86 (at 8 rows the kernel is bound by its FMAs, not by W's bytes).
#define KVF_CUDA_GEMV_ROWS 4

// Steps run by graph replay so far (0 for NULL or another backend).
uint64_t kvf_cuda_backend_graph_steps(const kvf_backend_t *be);

// Two-batch overlap of decode steps (KVF_TBO=1 at start-up; cuda_internal.h): the smallest
// decode step that runs as two overlapped halves, or 0 when off (or unavailable here); and
// the steps that ran so (eagerly: no graph replays them).
int kvf_cuda_backend_tbo(const kvf_backend_t *be);
uint64_t kvf_cuda_backend_tbo_steps(const kvf_backend_t *be);

// 1 when o_proj and down_proj add into the residual themselves (cuBLASLt's beta 1;
// KVF_RESID_GEMM=0|1 at start-up; tp_size 1 with bf16 linear layers only), else 0.
int kvf_cuda_backend_resid_gemm(const kvf_backend_t *be);

// 1 when the residual stream is bf16 (under resid_gemm with bf16 o/down outputs, as transformers
// runs a bf16 model; KVF_CUDA_RESID=f32|bf16 at start-up), else 0 (f32).
int kvf_cuda_backend_resid_bf16(const kvf_backend_t *be);

// 1 when steps of at least the fused-kernel threshold (kvf_cuda_backend_set_swiglu) run the
// QKV GEMM with RoPE and the cache write as one kernel (kernels/gemm_qkv_rope.h), else 0.
int kvf_cuda_backend_qkv_rope(const kvf_backend_t *be);

#endif
