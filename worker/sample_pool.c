// worker/sample_pool.c — see sample_pool.h.
//
// Same shape as the cpu backend's forward pool: a generation counter under one
// mutex starts a run, jobs are claimed from an atomic counter (rows differ in
// cost: top_p sorts, top_k does not), and the last worker to finish signals
// the caller.
#include "worker/sample_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

typedef struct {
    kvf_sample_pool_t *pool;
    int32_t tid;  // >= 1; 0 is the caller
} s_worker_arg_t;

struct kvf_sample_pool_s {
    int32_t n_threads;        // running jobs, the caller included
    kvf_sampler_t **smp;      // (n_threads) one per thread; [0] is the caller's
    pthread_t *th;            // (n_threads - 1) workers
    s_worker_arg_t *args;     // (n_threads - 1)
    pthread_mutex_t mu;
    pthread_cond_t cv_go, cv_done;
    uint64_t gen;             // bumped for every parallel run
    int stop;
    int32_t n_busy;           // workers not yet done with the current run
    kvf_sample_pool_fn fn;
    void *ctx;
    int32_t n_jobs;
    atomic_int next;          // next unclaimed job
};

static void s_drain(kvf_sample_pool_t *p, int32_t tid) {
    for (;;) {
        int32_t j = atomic_fetch_add(&p->next, 1);
        if (j >= p->n_jobs) break;
        p->fn(p->ctx, j, p->smp[tid]);
    }
}

static void *s_worker_main(void *arg) {
    s_worker_arg_t *a = arg;
    kvf_sample_pool_t *p = a->pool;
    pthread_mutex_lock(&p->mu);
    uint64_t seen = 0;  // a run started before this thread got here is still seen
    for (;;) {
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->cv_go, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        s_drain(p, a->tid);
        pthread_mutex_lock(&p->mu);
        if (--p->n_busy == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

kvf_sample_pool_t *kvf_sample_pool_new(int32_t n_threads, int32_t vocab) {
    if (vocab < 1) return NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > KVF_SAMPLE_POOL_MAX_THREADS) n_threads = KVF_SAMPLE_POOL_MAX_THREADS;
    kvf_sample_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_go, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->next, 0);
    p->n_threads = 1;  // grows as workers start, so destroy joins exactly those
    p->smp = calloc((size_t)n_threads, sizeof *p->smp);
    p->th = calloc((size_t)n_threads, sizeof *p->th);
    p->args = calloc((size_t)n_threads, sizeof *p->args);
    if (!p->smp || !p->th || !p->args || !(p->smp[0] = kvf_sampler_new(vocab))) {
        kvf_sample_pool_destroy(&p);
        return NULL;
    }
    for (int32_t t = 1; t < n_threads; t++) {
        p->smp[t] = kvf_sampler_new(vocab);
        if (!p->smp[t]) {
            kvf_sample_pool_destroy(&p);
            return NULL;
        }
        p->args[t - 1] = (s_worker_arg_t){p, t};
        int rc = pthread_create(&p->th[t - 1], NULL, s_worker_main, &p->args[t - 1]);
        if (rc != 0) {
            kvf_log(KVF_LOG_WARN, "sampling: cannot start thread %d of %d (%s); sampling with %d", t + 1,
                    n_threads, strerror(rc), t);
            kvf_sampler_destroy(&p->smp[t]);
            break;
        }
        p->n_threads = t + 1;
    }
    return p;
}

void kvf_sample_pool_destroy(kvf_sample_pool_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_sample_pool_t *p = *self_p;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    for (int32_t t = 1; t < p->n_threads; t++) pthread_join(p->th[t - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_go);
    pthread_cond_destroy(&p->cv_done);
    if (p->smp)
        for (int32_t t = 0; t < p->n_threads; t++) kvf_sampler_destroy(&p->smp[t]);
    free(p->smp);
    free(p->th);
    free(p->args);
    free(p);
    *self_p = NULL;
}

int32_t kvf_sample_pool_threads(const kvf_sample_pool_t *p) { return p->n_threads; }

void kvf_sample_pool_run(kvf_sample_pool_t *p, int32_t n_jobs, kvf_sample_pool_fn fn, void *ctx) {
    if (n_jobs <= 0) return;
    if (p->n_threads <= 1 || n_jobs < KVF_SAMPLE_POOL_MIN_JOBS) {
        for (int32_t j = 0; j < n_jobs; j++) fn(ctx, j, p->smp[0]);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_jobs = n_jobs;
    atomic_store(&p->next, 0);
    p->n_busy = p->n_threads - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    s_drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->n_busy > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
