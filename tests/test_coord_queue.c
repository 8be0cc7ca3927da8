// tests/test_coord_queue.c — the coordinator's FIFO: bounds (busy), front
// insertion for taken-back work, order, filtering.
#include <criterion/criterion.h>

#include "coordinator/queue.h"

Test(queue, cap_refuses_at_the_back_only) {
    kvf_queue_t *q = kvf_queue_new(3);
    cr_assert_eq(kvf_queue_push_back(q, 1, 10), 0);
    cr_assert_eq(kvf_queue_push_back(q, 2, 10), 0);
    cr_assert_eq(kvf_queue_push_back(q, 3, 10), 0);
    cr_assert_eq(kvf_queue_push_back(q, 4, 10), -1, "full: busy");
    cr_assert_eq(q->len, 3);
    kvf_queue_push_front(q, 9, 10);  // taken back from a dead worker: always accepted
    cr_assert_eq(q->len, 4);
    cr_assert_eq(kvf_queue_at(q, 0), 9);
    cr_assert_eq(kvf_queue_at(q, 3), 3);
    cr_assert_eq(kvf_queue_push_back(q, 5, 10), -1);
    kvf_queue_destroy(&q);
    cr_assert_null(q);
}

Test(queue, zero_cap_refuses_everything_new) {
    kvf_queue_t *q = kvf_queue_new(0);
    cr_assert_eq(kvf_queue_push_back(q, 1, 10), -1);
    kvf_queue_destroy(&q);
}

static int s_drop_even(const kvf_qentry_t *e, void *ctx) {
    (void)ctx;
    cr_assert_eq(e->tokens, 10);
    return e->rid % 2 == 0;
}

static int s_stop_at_50(const kvf_qentry_t *e, void *ctx) {
    int *seen = ctx;
    (*seen)++;
    if (e->rid == 50) return -1;
    return e->rid % 10 == 0;
}

Test(queue, grows_wraps_and_filters_in_order) {
    kvf_queue_t *q = kvf_queue_new(1000);
    // Wrap the ring: fronts and backs mixed past the initial capacity.
    for (uint64_t i = 1; i <= 100; i++) cr_assert_eq(kvf_queue_push_back(q, i + 100, 10), 0);
    for (uint64_t i = 100; i >= 1; i--) kvf_queue_push_front(q, i, 10);
    cr_assert_eq(q->len, 200);
    for (uint32_t i = 0; i < 200; i++) cr_assert_eq(kvf_queue_at(q, i), i + 1);
    cr_assert_eq(kvf_queue_filter(q, s_drop_even, NULL), 100);
    cr_assert_eq(q->len, 100);
    for (uint32_t i = 0; i < 100; i++) cr_assert_eq(kvf_queue_at(q, i), 2 * i + 1);
    kvf_queue_destroy(&q);

    q = kvf_queue_new(1000);
    for (uint64_t i = 1; i <= 100; i++) kvf_queue_push_back(q, i, 10);
    int seen = 0;
    // Removes 10..40 (4 rids), stops at 50 and keeps the rest untouched.
    cr_assert_eq(kvf_queue_filter(q, s_stop_at_50, &seen), 4);
    cr_assert_eq(seen, 50);
    cr_assert_eq(q->len, 96);
    cr_assert_eq(kvf_queue_at(q, 8), 9);
    cr_assert_eq(kvf_queue_at(q, 9), 11);
    cr_assert_eq(kvf_queue_at(q, 95), 100);
    kvf_queue_destroy(&q);
}
