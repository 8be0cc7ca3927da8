// common/pool.c — see pool.h.
#include "common/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

typedef struct {
    kvf_pool_t *pool;
    int tid;  // >= 1; 0 is the caller
} s_worker_arg_t;

struct kvf_pool_s {
    int n_threads;            // running tasks, the caller included
    pthread_t *th;            // (n_threads - 1) workers
    s_worker_arg_t *args;     // (n_threads - 1)
    pthread_mutex_t mu;
    pthread_cond_t cv_go, cv_done;
    uint64_t gen;             // bumped for every parallel run
    int stop;
    int n_busy;               // workers not yet done with the current run
    kvf_pool_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;          // next unclaimed task
};

static void s_drain(kvf_pool_t *p, int tid) {
    for (;;) {
        int t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) break;
        p->fn(p->ctx, t, tid);
    }
}

static void *s_worker_main(void *arg) {
    s_worker_arg_t *a = arg;
    kvf_pool_t *p = a->pool;
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

kvf_pool_t *kvf_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    kvf_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_go, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->next, 0);
    p->n_threads = 1;  // grows as workers start, so destroy joins exactly those
    p->th = calloc((size_t)n_threads, sizeof *p->th);
    p->args = calloc((size_t)n_threads, sizeof *p->args);
    if (!p->th || !p->args) {
        kvf_pool_destroy(&p);
        return NULL;
    }
    for (int t = 1; t < n_threads; t++) {
        p->args[t - 1] = (s_worker_arg_t){p, t};
        int rc = pthread_create(&p->th[t - 1], NULL, s_worker_main, &p->args[t - 1]);
        if (rc != 0) {
            kvf_log(KVF_LOG_WARN, "thread pool: cannot start thread %d of %d (%s); running with %d", t + 1, n_threads,
                    strerror(rc), t);
            break;
        }
        p->n_threads = t + 1;
    }
    return p;
}

void kvf_pool_destroy(kvf_pool_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_pool_t *p = *self_p;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n_threads; t++) pthread_join(p->th[t - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_go);
    pthread_cond_destroy(&p->cv_done);
    free(p->th);
    free(p->args);
    free(p);
    *self_p = NULL;
}

int kvf_pool_threads(const kvf_pool_t *p) { return p ? p->n_threads : 1; }

void kvf_pool_run(kvf_pool_t *p, int n_tasks, kvf_pool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (p->n_threads <= 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
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
