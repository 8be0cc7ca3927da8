// worker/cpu_backend.h — the "cpu" backend: float32, plain C, threads on all cores.
#ifndef KVF_CPU_BACKEND_H
#define KVF_CPU_BACKEND_H

#include "common/safetensors.h"
#include "worker/backend.h"

// Loads the weights of cfg from st (converted to float32), allocates the
// workspace for the largest step and then the KV slab per opts (memory plan).
// st may be NULL: then the weights are seeded random values (benchmarks).
// Returns a new backend owned by the caller (be->ops->destroy), or NULL with err
// set (a missing or misshaped tensor is named; KVF_E_NOMEM when the budget
// cannot hold weights + workspace).
kvf_backend_t *kvf_cpu_backend_new(const kvf_modelcfg_t *cfg, const kvf_safetensors_t *st,
                                   const kvf_backend_opts_t *opts, kvf_err_t *err);

#endif
