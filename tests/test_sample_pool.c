// tests/test_sample_pool.c — the engine's sampling pool: every job exactly once
// for several pool sizes and job counts, small runs on the caller, no sampler
// shared by two jobs at once, clean destroy; the same tokens as one sampler on
// a 128k-vocabulary batch (and the wall time of 1 vs 4 threads in the log).
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "worker/sample_pool.h"

// ---------------------------------------------------------------- job bookkeeping

#define MAX_JOBS 1000

typedef struct {
    atomic_int runs[MAX_JOBS];   // times each job ran
    pthread_t who[MAX_JOBS];     // the thread that ran it
    kvf_sampler_t *smp[KVF_SAMPLE_POOL_MAX_THREADS + 1];  // samplers seen so far
    atomic_int busy[KVF_SAMPLE_POOL_MAX_THREADS + 1];     // jobs running on each of them now
    int n_smp;
    pthread_mutex_t mu;
    atomic_int overlap;          // a sampler was used by two jobs at once
    atomic_int too_many;         // more distinct samplers than the pool has threads
    int sleep_us;
} s_log_t;

static int s_smp_slot(s_log_t *l, kvf_sampler_t *smp) {
    pthread_mutex_lock(&l->mu);
    int k = 0;
    while (k < l->n_smp && l->smp[k] != smp) k++;
    if (k == l->n_smp) {
        if (l->n_smp == KVF_SAMPLE_POOL_MAX_THREADS + 1) {
            atomic_store(&l->too_many, 1);
            k = 0;
        } else {
            l->smp[l->n_smp++] = smp;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return k;
}

static void s_job(void *ctx, int32_t job, kvf_sampler_t *smp) {
    s_log_t *l = ctx;
    int k = s_smp_slot(l, smp);
    if (atomic_fetch_add(&l->busy[k], 1) != 0) atomic_store(&l->overlap, 1);
    atomic_fetch_add(&l->runs[job], 1);
    l->who[job] = pthread_self();
    if (l->sleep_us) usleep((useconds_t)l->sleep_us);
    atomic_fetch_sub(&l->busy[k], 1);
}

static void s_log_init(s_log_t *l) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
}

static int s_distinct_threads(const s_log_t *l, int n_jobs) {
    pthread_t seen[64];
    int n = 0;
    for (int j = 0; j < n_jobs; j++) {
        int k = 0;
        while (k < n && !pthread_equal(seen[k], l->who[j])) k++;
        if (k == n && n < 64) seen[n++] = l->who[j];
    }
    return n;
}

// ---------------------------------------------------------------- tests

Test(sample_pool, every_job_runs_exactly_once) {
    const int32_t sizes[] = {1, 2, 3, 4, 8, 16};
    const int32_t jobs[] = {0, 1, 3, 4, 5, 17, 64, MAX_JOBS};
    static s_log_t l;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++) {
        kvf_sample_pool_t *p = kvf_sample_pool_new(sizes[a], 100);
        cr_assert_not_null(p);
        cr_assert_eq(kvf_sample_pool_threads(p), sizes[a]);
        // several runs on one pool: workers must see each new run once
        for (int rep = 0; rep < 3; rep++) {
            for (size_t b = 0; b < sizeof jobs / sizeof *jobs; b++) {
                s_log_init(&l);
                kvf_sample_pool_run(p, jobs[b], s_job, &l);
                for (int32_t j = 0; j < MAX_JOBS; j++)
                    cr_assert_eq(atomic_load(&l.runs[j]), j < jobs[b] ? 1 : 0,
                                 "pool of %d, %d jobs: job %d ran %d times", sizes[a], jobs[b], j,
                                 atomic_load(&l.runs[j]));
                cr_assert_eq(atomic_load(&l.overlap), 0, "a sampler was shared by two running jobs");
                cr_assert_eq(atomic_load(&l.too_many), 0);
                cr_assert_leq(l.n_smp, sizes[a], "pool of %d used %d samplers", sizes[a], l.n_smp);
                pthread_mutex_destroy(&l.mu);
            }
        }
        kvf_sample_pool_destroy(&p);
        cr_assert_null(p);
    }
}

Test(sample_pool, small_runs_stay_on_the_caller_and_big_ones_spread) {
    static s_log_t l;
    kvf_sample_pool_t *p = kvf_sample_pool_new(4, 10);
    cr_assert_not_null(p);
    s_log_init(&l);
    kvf_sample_pool_run(p, KVF_SAMPLE_POOL_MIN_JOBS - 1, s_job, &l);
    for (int j = 0; j < KVF_SAMPLE_POOL_MIN_JOBS - 1; j++)
        cr_assert(pthread_equal(l.who[j], pthread_self()), "job %d of a small run left the caller", j);
    pthread_mutex_destroy(&l.mu);
    // 100 jobs of 2 ms: 200 ms on the caller alone, so the workers take some
    s_log_init(&l);
    l.sleep_us = 2000;
    kvf_sample_pool_run(p, 100, s_job, &l);
    cr_assert_geq(s_distinct_threads(&l, 100), 2, "a 4-thread pool ran 100 slow jobs on one thread");
    cr_assert_eq(atomic_load(&l.overlap), 0);
    pthread_mutex_destroy(&l.mu);
    kvf_sample_pool_destroy(&p);
}

Test(sample_pool, sizes_are_clamped_and_destroy_is_clean) {
    kvf_sample_pool_t *p = kvf_sample_pool_new(0, 10);
    cr_assert_not_null(p);
    cr_assert_eq(kvf_sample_pool_threads(p), 1);
    kvf_sample_pool_destroy(&p);
    p = kvf_sample_pool_new(KVF_SAMPLE_POOL_MAX_THREADS + 5, 10);
    cr_assert_not_null(p);
    cr_assert_eq(kvf_sample_pool_threads(p), KVF_SAMPLE_POOL_MAX_THREADS);
    kvf_sample_pool_destroy(&p);  // workers never ran a job
    cr_assert_null(p);
    kvf_sample_pool_destroy(&p);  // NULL is fine
    kvf_sample_pool_destroy(NULL);
    cr_assert_null(kvf_sample_pool_new(4, 0));
}

// ---------------------------------------------------------------- a 128k-vocabulary batch

#define BIG_VOCAB 128256
#define BIG_ROWS 64
#define HIST 200

typedef struct {
    const float *src;            // (BIG_ROWS, BIG_VOCAB) the step's logits
    float *work;                 // (BIG_ROWS, BIG_VOCAB) a copy the sampler may modify
    kvf_sampling_t s[BIG_ROWS];
    int32_t hist[BIG_ROWS][HIST];
    int32_t step[BIG_ROWS];
    int32_t out[BIG_ROWS];
} s_batch_t;

static void s_sample_job(void *ctx, int32_t job, kvf_sampler_t *smp) {
    s_batch_t *b = ctx;
    float *row = b->work + (size_t)job * BIG_VOCAB;
    b->out[job] = kvf_sampler_sample(smp, row, BIG_VOCAB, &b->s[job], b->hist[job], HIST, b->step[job]);
}

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// Samples the batch on a pool of n_threads; returns the best wall time of reps.
static double s_sample_batch(s_batch_t *b, int32_t n_threads, int reps) {
    kvf_sample_pool_t *p = kvf_sample_pool_new(n_threads, BIG_VOCAB);
    cr_assert_not_null(p);
    cr_assert_eq(kvf_sample_pool_threads(p), n_threads);
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        memcpy(b->work, b->src, sizeof(float) * (size_t)BIG_ROWS * BIG_VOCAB);
        double t0 = s_now();
        kvf_sample_pool_run(p, BIG_ROWS, s_sample_job, b);
        double t = s_now() - t0;
        if (t < best) best = t;
    }
    kvf_sample_pool_destroy(&p);
    return best;
}

Test(sample_pool, big_vocab_batch_same_tokens_as_one_sampler, .timeout = 120) {
    static s_batch_t b;
    float *src = malloc(sizeof(float) * (size_t)BIG_ROWS * BIG_VOCAB);
    b.work = malloc(sizeof(float) * (size_t)BIG_ROWS * BIG_VOCAB);
    cr_assert(src && b.work);
    uint64_t x = 42;
    for (size_t i = 0; i < (size_t)BIG_ROWS * BIG_VOCAB; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = (float)((double)(x >> 11) * 0x1.0p-53 * 8.0 - 4.0);
    }
    b.src = src;
    // the three settings measured in the brief, some with a repetition penalty
    for (int r = 0; r < BIG_ROWS; r++) {
        kvf_sampling_t s = kvf_sampling_default();
        s.temperature = r % 3 == 2 ? 1.0f : 0.7f;
        if (r % 3 == 0) s.top_p = 0.9f;
        if (r % 3 == 1) s.top_k = 50;
        if (r % 4 == 0) s.repetition_penalty = 1.3f;
        s.seed = 1000u + (uint64_t)r * 7919u;
        b.s[r] = s;
        b.step[r] = r % 11;
        for (int h = 0; h < HIST; h++) b.hist[r][h] = (int32_t)((r * 104729 + h * 7907) % BIG_VOCAB);
    }

    // reference: one sampler, one row after the other
    int32_t ref[BIG_ROWS];
    kvf_sampler_t *smp = kvf_sampler_new(BIG_VOCAB);
    cr_assert_not_null(smp);
    memcpy(b.work, src, sizeof(float) * (size_t)BIG_ROWS * BIG_VOCAB);
    for (int r = 0; r < BIG_ROWS; r++)
        ref[r] = kvf_sampler_sample(smp, b.work + (size_t)r * BIG_VOCAB, BIG_VOCAB, &b.s[r], b.hist[r], HIST,
                                    b.step[r]);
    kvf_sampler_destroy(&smp);
    int distinct = 0;
    for (int r = 0; r < BIG_ROWS; r++) {
        cr_assert(ref[r] >= 0 && ref[r] < BIG_VOCAB);
        distinct += r == 0 || ref[r] != ref[r - 1];
    }
    cr_assert_gt(distinct, BIG_ROWS / 2, "the rows should draw different tokens");

    double t1 = s_sample_batch(&b, 1, 2);
    cr_assert_arr_eq(b.out, ref, sizeof ref, "1 thread differs from one sampler");
    memset(b.out, 0xff, sizeof b.out);
    double t4 = s_sample_batch(&b, 4, 2);
    cr_assert_arr_eq(b.out, ref, sizeof ref, "4 threads differ from one sampler");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);  // the log line, not an assertion: the speed-up is the cores
    fprintf(stderr, "sample_pool: %d rows x %d vocab: 1 thread %.1f ms, 4 threads %.1f ms (%.2fx, %ld cores)\n",
            BIG_ROWS, BIG_VOCAB, t1 * 1e3, t4 * 1e3, t1 / t4, cores);
    free(src);
    free(b.work);
}
