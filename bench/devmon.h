// bench/devmon.h — the GPU's SM clock and power draw, sampled on a thread while a
// benchmark runs, and attributed to the kinds of steps that ran at each sample.
//
// Why: at the H200's 700 W limit the clock, not the kernels, sets the GEMMs' rate, and
// cards differ by ~4% in the clock they hold at that power (bench/RESULTS.md, sessions
// 14-17). A benchmark record without the clock cannot tell a slower tree from a slower
// card. NVML (the driver's libnvidia-ml.so.1) is opened at run time, so nothing links to
// the driver and a machine without one gets KVF_E_UNSUPPORTED, not a failure to start.
#ifndef KVF_BENCH_DEVMON_H
#define KVF_BENCH_DEVMON_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double t;           // CLOCK_MONOTONIC seconds (common/clock.h's kvf_clock_ms / 1000)
    uint32_t sm_mhz;    // SM clock
    uint32_t power_mw;  // board power draw
} kvf_devmon_sample_t;

typedef struct kvf_devmon_s kvf_devmon_t;

// Starts sampling the device with this PCI bus id ("0000:3b:00.0", as cudaDeviceGetPCIBusId
// gives it) every period_ms (1..10000; 0: no sampling thread, only the readings below). Returns
// the monitor (owned by the caller), or NULL with err set: KVF_E_UNSUPPORTED when there is no
// NVML or it does not know the device, KVF_E_INVAL for a bad argument.
kvf_devmon_t *kvf_devmon_new(const char *pci_bus_id, int period_ms, kvf_err_t *err);

// Stops the thread (if running), closes NVML and frees the samples; accepts NULL; nulls *self_p.
void kvf_devmon_destroy(kvf_devmon_t **self_p);

// Stops sampling; *samples (owned by m, valid until kvf_devmon_destroy) gets the samples in time
// order. Returns their number.
size_t kvf_devmon_stop(kvf_devmon_t *m, const kvf_devmon_sample_t **samples);

// The board's enforced power limit in mW (0 when NVML did not say).
uint32_t kvf_devmon_power_limit_mw(const kvf_devmon_t *m);

// The board's energy counter in mJ: NVML's total since the driver loaded (Volta and later), read
// now, beside the sampling thread. Two readings around a run give its energy exactly, where the
// 100 ms power samples only estimate it. Returns 0, or -1 with err set: KVF_E_INVAL for a NULL
// argument, KVF_E_UNSUPPORTED where the driver or the board keeps no counter.
int kvf_devmon_energy_mj(const kvf_devmon_t *m, uint64_t *mj, kvf_err_t *err);

// The SM clock now, in MHz. Returns 0, or -1 with err set (KVF_E_INVAL, KVF_E_UNSUPPORTED).
int kvf_devmon_sm_mhz(const kvf_devmon_t *m, uint32_t *mhz, kvf_err_t *err);

// What ran at each moment: spans [t0, t1) in time order, each of a kind in [0, n_kinds).
typedef struct {
    double t0, t1;
    int kind;
} kvf_devmon_span_t;

typedef struct {
    size_t samples;      // samples that fell in a span of this kind
    double sm_mhz;       // their mean SM clock (0 without samples)
    double power_w;      // their mean power draw in W (0 without samples)
} kvf_devmon_phase_t;

// Attributes each sample to the span that holds its time (binary search; samples between spans
// count for none) and fills out[0..n_kinds). Pure: no device, no NVML.
void kvf_devmon_attribute(const kvf_devmon_sample_t *samples, size_t n_samples, const kvf_devmon_span_t *spans,
                          size_t n_spans, kvf_devmon_phase_t *out, int n_kinds);

#ifdef __cplusplus
}
#endif

#endif
