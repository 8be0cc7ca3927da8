// worker/sample_pool.c — see sample_pool.h. A common/pool.h pool and one
// sampler per thread, indexed by the thread that runs a job.
#include "worker/sample_pool.h"

#include <stdlib.h>

#include "common/pool.h"

struct kvf_sample_pool_s {
    kvf_pool_t *pool;
    kvf_sampler_t **smp;  // (kvf_pool_threads) one per thread; [0] is the caller's
    kvf_sample_pool_fn fn;
    void *ctx;
};

kvf_sample_pool_t *kvf_sample_pool_new(int32_t n_threads, int32_t vocab) {
    if (vocab < 1) return NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > KVF_SAMPLE_POOL_MAX_THREADS) n_threads = KVF_SAMPLE_POOL_MAX_THREADS;
    kvf_sample_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->pool = kvf_pool_new(n_threads);
    const int n = kvf_pool_threads(p->pool);
    p->smp = p->pool ? calloc((size_t)n, sizeof *p->smp) : NULL;
    if (!p->smp) {
        kvf_sample_pool_destroy(&p);
        return NULL;
    }
    for (int t = 0; t < n; t++)
        if (!(p->smp[t] = kvf_sampler_new(vocab))) {
            kvf_sample_pool_destroy(&p);
            return NULL;
        }
    return p;
}

void kvf_sample_pool_destroy(kvf_sample_pool_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_sample_pool_t *p = *self_p;
    if (p->smp)
        for (int t = 0; t < kvf_pool_threads(p->pool); t++) kvf_sampler_destroy(&p->smp[t]);
    kvf_pool_destroy(&p->pool);
    free(p->smp);
    free(p);
    *self_p = NULL;
}

int32_t kvf_sample_pool_threads(const kvf_sample_pool_t *p) { return kvf_pool_threads(p->pool); }

static void s_job(void *ctx, int job, int thread) {
    const kvf_sample_pool_t *p = ctx;
    p->fn(p->ctx, job, p->smp[thread]);
}

void kvf_sample_pool_run(kvf_sample_pool_t *p, int32_t n_jobs, kvf_sample_pool_fn fn, void *ctx) {
    if (n_jobs <= 0) return;
    if (n_jobs < KVF_SAMPLE_POOL_MIN_JOBS) {
        for (int32_t j = 0; j < n_jobs; j++) fn(ctx, j, p->smp[0]);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    kvf_pool_run(p->pool, n_jobs, s_job, p);
}
