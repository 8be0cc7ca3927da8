// common/pool.h — a small persistent thread pool: run task i of n on whichever
// thread is free, the calling thread included, and return when all are done.
//
// n_threads - 1 workers wait on a condition variable between runs; a run hands
// out tasks from an atomic counter (tasks may differ in cost) and the last
// worker to finish wakes the caller. Runs are not reentrant: one caller at a
// time. Used by the cpu backend's kernels and the engine's host sampling.
#ifndef KVF_POOL_H
#define KVF_POOL_H

#include <stdint.h>

typedef struct kvf_pool_s kvf_pool_t;

// One task: task in [0, n_tasks), thread in [0, kvf_pool_threads) the one running
// it (0 = the caller), so per-thread scratch can be indexed by it.
typedef void (*kvf_pool_fn)(void *ctx, int task, int thread);

// A pool of n_threads (the caller included; < 1 counts as 1). A worker that
// cannot be started is logged as a warning and the pool runs with those it has
// (at least the caller). Returns NULL only when memory runs out.
kvf_pool_t *kvf_pool_new(int n_threads);

// Stops and joins the workers; accepts NULL; nulls *self_p.
void kvf_pool_destroy(kvf_pool_t **self_p);

// Threads that run tasks, the caller included (>= 1).
int kvf_pool_threads(const kvf_pool_t *p);

// Runs fn(ctx, task, thread) exactly once for every task in [0, n_tasks) and
// returns when all are done. One task, or a pool of one thread, runs on the
// calling thread. n_tasks <= 0 does nothing.
void kvf_pool_run(kvf_pool_t *p, int n_tasks, kvf_pool_fn fn, void *ctx);

#endif
