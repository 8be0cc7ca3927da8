// worker/cuda_backend.h — the "cuda" backend: bf16 weights and activations, fp32
// accumulation, kernels/ + cuBLASLt. Built only when KVF_HAVE_CUDA.
#ifndef KVF_CUDA_BACKEND_H
#define KVF_CUDA_BACKEND_H

#include "common/safetensors.h"
#include "worker/backend.h"

// As kvf_cpu_backend_new, on device opts->device: weights converted to bf16 at
// load, workspace, then the KV slab = cache_max_entry_count x cudaMemGetInfo free.
// st may be NULL: seeded random weights generated on the device.
kvf_backend_t *kvf_cuda_backend_new(const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                    const kvf_backend_opts_t *opts, kvf_err_t *err);

#endif
