// bench/devmon.c — see devmon.h.
#include "bench/devmon.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"

// The few NVML entry points used, declared here (the toolkit ships no nvml.h on every
// machine; these signatures are NVML's stable C ABI). nvmlReturn_t 0 is success.
typedef void *s_nvml_dev_t;
typedef int (*s_init_fn)(void);
typedef int (*s_shutdown_fn)(void);
typedef int (*s_by_pci_fn)(const char *, s_nvml_dev_t *);
typedef int (*s_clock_fn)(s_nvml_dev_t, int, unsigned int *);
typedef int (*s_power_fn)(s_nvml_dev_t, unsigned int *);
typedef int (*s_energy_fn)(s_nvml_dev_t, unsigned long long *);
#define S_NVML_CLOCK_SM 1

struct kvf_devmon_s {
    void *lib;  // dlopen handle of libnvidia-ml.so.1
    s_shutdown_fn shutdown;
    s_clock_fn clock;
    s_power_fn power;
    s_energy_fn energy;  // NULL where this NVML has no energy counter
    s_nvml_dev_t dev;
    uint32_t limit_mw;
    int period_ms;
    pthread_t thread;
    int running;     // the thread was started and not yet joined
    atomic_int stop;
    kvf_devmon_sample_t *samples;  // (cap), written by the thread until it is joined
    size_t n, cap;
};

static void *s_loop(void *arg) {
    kvf_devmon_t *m = arg;
    const struct timespec nap = {m->period_ms / 1000, (long)(m->period_ms % 1000) * 1000000L};
    while (!atomic_load(&m->stop)) {
        unsigned int mhz = 0, mw = 0;
        if (m->clock(m->dev, S_NVML_CLOCK_SM, &mhz) == 0 && m->power(m->dev, &mw) == 0) {
            if (m->n == m->cap) {
                size_t cap = m->cap ? 2 * m->cap : 1024;
                kvf_devmon_sample_t *s = realloc(m->samples, cap * sizeof *s);
                if (!s) break;  // out of memory: keep what was sampled
                m->samples = s, m->cap = cap;
            }
            m->samples[m->n++] = (kvf_devmon_sample_t){1e-3 * (double)kvf_clock_ms(), mhz, mw};
        }
        nanosleep(&nap, NULL);
    }
    return NULL;
}

kvf_devmon_t *kvf_devmon_new(const char *pci_bus_id, int period_ms, kvf_err_t *err) {
    if (!pci_bus_id || !*pci_bus_id || period_ms < 0 || period_ms > 10000) {
        kvf_err_set(err, KVF_E_INVAL, "kvf_devmon_new: give a PCI bus id and a period of 0..10000 ms");
        return NULL;
    }
    kvf_devmon_t *m = calloc(1, sizeof *m);
    if (!m) {
        kvf_err_set(err, KVF_E_NOMEM, "kvf_devmon_new: out of host memory");
        return NULL;
    }
    m->period_ms = period_ms;
    m->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!m->lib) {
        kvf_err_set(err, KVF_E_UNSUPPORTED, "no NVML on this machine (libnvidia-ml.so.1: %s)", dlerror());
        free(m);
        return NULL;
    }
    s_init_fn init = (s_init_fn)dlsym(m->lib, "nvmlInit_v2");
    s_by_pci_fn by_pci = (s_by_pci_fn)dlsym(m->lib, "nvmlDeviceGetHandleByPciBusId_v2");
    s_power_fn limit = (s_power_fn)dlsym(m->lib, "nvmlDeviceGetEnforcedPowerLimit");
    m->shutdown = (s_shutdown_fn)dlsym(m->lib, "nvmlShutdown");
    m->clock = (s_clock_fn)dlsym(m->lib, "nvmlDeviceGetClockInfo");
    m->power = (s_power_fn)dlsym(m->lib, "nvmlDeviceGetPowerUsage");
    m->energy = (s_energy_fn)dlsym(m->lib, "nvmlDeviceGetTotalEnergyConsumption");
    int rc = -1;
    if (!init || !by_pci || !limit || !m->shutdown || !m->clock || !m->power) {
        kvf_err_set(err, KVF_E_UNSUPPORTED, "NVML lacks an entry point this monitor uses");
    } else if ((rc = init()) != 0) {
        kvf_err_set(err, KVF_E_UNSUPPORTED, "nvmlInit_v2: error %d", rc);
    } else if ((rc = by_pci(pci_bus_id, &m->dev)) != 0) {
        kvf_err_set(err, KVF_E_UNSUPPORTED, "NVML knows no device at PCI %s (error %d)", pci_bus_id, rc);
        m->shutdown();
    } else {
        unsigned int mw = 0;
        if (limit(m->dev, &mw) == 0) m->limit_mw = mw;
        atomic_init(&m->stop, 0);
        if (period_ms == 0) return m;  // readings only
        if (pthread_create(&m->thread, NULL, s_loop, m) != 0) {
            kvf_err_set(err, KVF_E_INTERNAL, "kvf_devmon_new: no sampling thread");
            m->shutdown();
        } else {
            m->running = 1;
            return m;
        }
    }
    dlclose(m->lib);
    free(m);
    return NULL;
}

size_t kvf_devmon_stop(kvf_devmon_t *m, const kvf_devmon_sample_t **samples) {
    if (m->running) {
        atomic_store(&m->stop, 1);
        pthread_join(m->thread, NULL);
        m->running = 0;
    }
    if (samples) *samples = m->samples;
    return m->n;
}

uint32_t kvf_devmon_power_limit_mw(const kvf_devmon_t *m) { return m->limit_mw; }

int kvf_devmon_energy_mj(const kvf_devmon_t *m, uint64_t *mj, kvf_err_t *err) {
    if (!m || !mj) return kvf_err_set(err, KVF_E_INVAL, "kvf_devmon_energy_mj: NULL argument");
    if (!m->energy) return kvf_err_set(err, KVF_E_UNSUPPORTED, "this NVML has no energy counter");
    unsigned long long v = 0;
    const int rc = m->energy(m->dev, &v);
    if (rc != 0)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "nvmlDeviceGetTotalEnergyConsumption: error %d (no counter on "
                           "this board?)", rc);
    *mj = (uint64_t)v;
    return 0;
}

int kvf_devmon_sm_mhz(const kvf_devmon_t *m, uint32_t *mhz, kvf_err_t *err) {
    if (!m || !mhz) return kvf_err_set(err, KVF_E_INVAL, "kvf_devmon_sm_mhz: NULL argument");
    unsigned int v = 0;
    const int rc = m->clock(m->dev, S_NVML_CLOCK_SM, &v);
    if (rc != 0) return kvf_err_set(err, KVF_E_UNSUPPORTED, "nvmlDeviceGetClockInfo: error %d", rc);
    *mhz = v;
    return 0;
}

void kvf_devmon_destroy(kvf_devmon_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_devmon_t *m = *self_p;
    kvf_devmon_stop(m, NULL);
    m->shutdown();
    dlclose(m->lib);
    free(m->samples);
    free(m);
    *self_p = NULL;
}

void kvf_devmon_attribute(const kvf_devmon_sample_t *samples, size_t n_samples, const kvf_devmon_span_t *spans,
                          size_t n_spans, kvf_devmon_phase_t *out, int n_kinds) {
    for (int k = 0; k < n_kinds; k++) out[k] = (kvf_devmon_phase_t){0};
    for (size_t i = 0; i < n_samples; i++) {  // sums first, then the means
        const double t = samples[i].t;
        size_t lo = 0, hi = n_spans;  // the first span with t1 > t
        while (lo < hi) {
            const size_t mid = lo + (hi - lo) / 2;
            if (spans[mid].t1 <= t) lo = mid + 1;
            else hi = mid;
        }
        if (lo == n_spans || spans[lo].t0 > t) continue;  // between spans, or past the last
        const int k = spans[lo].kind;
        if (k < 0 || k >= n_kinds) continue;
        out[k].samples++;
        out[k].sm_mhz += samples[i].sm_mhz;
        out[k].power_w += samples[i].power_mw * 1e-3;
    }
    for (int k = 0; k < n_kinds; k++)
        if (out[k].samples) {
            out[k].sm_mhz /= (double)out[k].samples;
            out[k].power_w /= (double)out[k].samples;
        }
}
