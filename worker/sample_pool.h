// worker/sample_pool.h — a small persistent thread pool that samples the rows of
// a step in parallel, one kvf_sampler_t per thread.
//
// The engine samples every row the backend did not pick on the device; at a
// 128k vocabulary one row costs ~1-9 ms, so a 128-row step of sampled requests
// would spend up to ~1 s on one thread. A row's token is a pure function of its
// logits, its sampling parameters, its history and its step (the sampler only
// holds scratch), so rows can be sampled in any order on any thread and give the
// same bits.
//
// The threads are a common/pool.h pool (the calling thread works too); runs are
// not reentrant: one caller at a time.
// The cpu backend's forward pool (worker/cpu_backend.c) runs before sampling,
// never at the same time, so the two pools do not compete for cores.
#ifndef KVF_SAMPLE_POOL_H
#define KVF_SAMPLE_POOL_H

#include <stdint.h>

#include "worker/sampler.h"

// Fewer jobs than this run on the calling thread: waking workers costs more.
#define KVF_SAMPLE_POOL_MIN_JOBS 4

// Most threads a pool starts (samplers are cheap, the cores are not).
#define KVF_SAMPLE_POOL_MAX_THREADS 16

typedef struct kvf_sample_pool_s kvf_sample_pool_t;

// One job: job in [0, n_jobs), smp the scratch of the thread running it (never
// shared with a job running at the same time).
typedef void (*kvf_sample_pool_fn)(void *ctx, int32_t job, kvf_sampler_t *smp);

// A pool of n_threads (the caller included; clamped to
// [1, KVF_SAMPLE_POOL_MAX_THREADS]) with one sampler each for vocabularies of
// up to vocab ids. A worker that cannot be started is logged as a warning and
// the pool runs with the threads it has (at least the caller). Returns a pool
// owned by the caller, or NULL when vocab < 1 or memory runs out.
kvf_sample_pool_t *kvf_sample_pool_new(int32_t n_threads, int32_t vocab);

// Stops and joins the workers, frees the samplers; accepts NULL; nulls *self_p.
void kvf_sample_pool_destroy(kvf_sample_pool_t **self_p);

// Threads that run jobs, the caller included (>= 1).
int32_t kvf_sample_pool_threads(const kvf_sample_pool_t *p);

// Runs fn(ctx, job, smp) exactly once for every job in [0, n_jobs) and returns
// when all are done. Jobs are handed out in order as threads become free, so
// the thread (and sampler) of a job is not fixed: fn must depend on job only.
// Fewer than KVF_SAMPLE_POOL_MIN_JOBS jobs, or a pool of one thread, run on the
// calling thread. n_jobs <= 0 does nothing.
void kvf_sample_pool_run(kvf_sample_pool_t *p, int32_t n_jobs, kvf_sample_pool_fn fn, void *ctx);

#endif
