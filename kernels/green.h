// kernels/green.h — two green contexts that split a device's SMs, a stream each.
//
// A kernel launched on a green context's stream runs only on that context's SMs,
// so a compute-bound kernel on one share and a memory-bound one on the other run
// side by side instead of each filling the device in turn (bench/RESULTS.md
// session 12: kvf-kbench --only overlap). The CUDA driver API is reached through
// cudaGetDriverEntryPointByVersion: nothing links libcuda, and a driver without
// green contexts is an error at kvf_green_new, not at load time.
#ifndef KVF_KERNELS_GREEN_H
#define KVF_KERNELS_GREEN_H

#include <cuda_runtime_api.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvf_green_s kvf_green_t;

// Part 0: `sms` of device's SMs (the driver's granularity may round it up; see
// kvf_green_sms), part 1: the rest; each a green context with a non-blocking
// stream. The device's primary context must be current (cudaSetDevice). Returns
// the pair, or NULL with err set (KVF_E_DEVICE: no green contexts here, or too
// few SMs; KVF_E_INVAL: sms < 1).
kvf_green_t *kvf_green_new(int device, int sms, kvf_err_t *err);

// Destroys streams, events and contexts (synchronizes them first); accepts
// NULL; nulls *self_p.
void kvf_green_destroy(kvf_green_t **self_p);

// Part 0's or 1's stream and SM count.
cudaStream_t kvf_green_stream(const kvf_green_t *g, int part);
int kvf_green_sms(const kvf_green_t *g, int part);

// An event (no timing) to record on part's stream and wait for from any stream;
// made in that part's context, owned by g (at most 8 a part). Returns 0, or -1
// with err set.
int kvf_green_event(kvf_green_t *g, int part, cudaEvent_t *ev, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
