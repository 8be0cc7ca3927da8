// kernels/stamp.h — a device timestamp in stream order: where a step's time goes
// across several streams (KVF_TBO_STAMPS; this project's GPU machine has no nsys).
#ifndef KVF_KERNELS_STAMP_H
#define KVF_KERNELS_STAMP_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// *slot = the device's global timer (ns) when the kernel runs: after the work queued
// before it on `stream`. One thread; a few microseconds of the stream's time.
int kvf_stamp(uint64_t *slot,  // (1) device
              cudaStream_t stream, kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
