// common/clock.h — time for deadlines and intervals: a monotonic millisecond
// clock, and a condition-variable wait bounded in milliseconds.
#ifndef KVF_CLOCK_H
#define KVF_CLOCK_H

#include <pthread.h>
#include <stdint.h>

// Milliseconds of CLOCK_MONOTONIC (intervals and deadlines; not the wall time).
int64_t kvf_clock_ms(void);

// pthread_cond_timedwait on cv (default attributes: CLOCK_REALTIME) with mu held,
// for at most ms milliseconds from now (ms < 0 counts as 0). Returns its result
// (0, or ETIMEDOUT).
int kvf_clock_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms);

#endif
