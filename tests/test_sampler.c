// tests/test_sampler.c — greedy, seeded draws, the HF filters and stop ids.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/sample_mass.h"
#include "worker/sampler.h"

#define V 50

static void s_logits(float *l, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        l[i] = (float)((double)(seed >> 11) * 0x1.0p-53 * 6.0 - 3.0);
    }
}

static int32_t s_draw(kvf_sampler_t *smp, const float *logits, const kvf_sampling_t *s, int32_t step) {
    float l[V];
    memcpy(l, logits, sizeof l);
    return kvf_sampler_sample(smp, l, V, s, NULL, 0, step);
}

static int s_argmax(const float *l, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

static kvf_sampling_t s_temp(float t, uint64_t seed) {
    kvf_sampling_t s = kvf_sampling_default();
    s.temperature = t;
    s.seed = seed;
    return s;
}

Test(sampler, greedy_is_argmax_lowest_id_on_ties) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    cr_assert_not_null(smp);
    float l[V];
    kvf_sampling_t g = kvf_sampling_default();
    for (int k = 0; k < 20; k++) {
        s_logits(l, V, 100 + k);
        cr_assert_eq(s_draw(smp, l, &g, k), s_argmax(l, V));
    }
    for (int i = 0; i < V; i++) l[i] = 0;
    l[7] = l[31] = 2;
    l[3] = NAN;
    cr_assert_eq(s_draw(smp, l, &g, 0), 7);
    cr_assert_eq(kvf_sampler_sample(smp, l, V + 1, &g, NULL, 0, 0), -1);  // larger than the sampler
    cr_assert_eq(kvf_sampler_sample(smp, l, 0, &g, NULL, 0, 0), -1);
    cr_assert_null(kvf_sampler_new(0));
    kvf_sampler_destroy(&smp);
    cr_assert_null(smp);
    kvf_sampler_destroy(&smp);
}

Test(sampler, same_seed_same_tokens_different_seeds_differ) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    float l[V];
    s_logits(l, V, 7);
    for (int i = 0; i < V; i++) l[i] *= 0.3f;  // flat: many tokens likely
    kvf_sampling_t a = s_temp(1.0f, 1234), b = s_temp(1.0f, 1235);
    int32_t ra[64], rb[64], ra2[64];
    int differ = 0;
    for (int step = 0; step < 64; step++) {
        ra[step] = s_draw(smp, l, &a, step);
        rb[step] = s_draw(smp, l, &b, step);
        differ += ra[step] != rb[step];
    }
    // Re-run from step 40 onwards (a resumed request): the same tokens.
    for (int step = 40; step < 64; step++) ra2[step] = s_draw(smp, l, &a, step);
    cr_assert_eq(memcmp(ra + 40, ra2 + 40, 24 * sizeof(int32_t)), 0);
    // With ~50 near-equal choices, two seeds agree on about 1 step in 30.
    cr_assert_gt(differ, 48, "seeds 1234 and 1235 agree on %d of 64 steps", 64 - differ);
    // The draws of one seed vary over steps too.
    int distinct = 0;
    for (int i = 0; i < 64; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= ra[j] == ra[i];
        distinct += !seen;
    }
    cr_assert_gt(distinct, 20);
    kvf_sampler_destroy(&smp);
}

Test(sampler, top_k_1_and_tiny_top_p_are_greedy) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    float l[V];
    for (int k = 0; k < 30; k++) {
        s_logits(l, V, 500 + k);
        kvf_sampling_t s = s_temp(1.5f, (uint64_t)k);
        s.top_k = 1;
        cr_assert_eq(s_draw(smp, l, &s, k), s_argmax(l, V));
        s.top_k = 0;
        s.top_p = 1e-6f;
        cr_assert_eq(s_draw(smp, l, &s, k), s_argmax(l, V));
    }
    kvf_sampler_destroy(&smp);
}

Test(sampler, top_k_and_top_p_keep_the_right_set) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    float l[V];
    s_logits(l, V, 77);
    // top_k = 5: only the five best ever come out; the rest are -inf in logits
    kvf_sampling_t s = s_temp(1.0f, 9);
    s.top_k = 5;
    float sorted[V];
    memcpy(sorted, l, sizeof sorted);
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (sorted[j] > sorted[i]) {
                float t = sorted[i];
                sorted[i] = sorted[j];
                sorted[j] = t;
            }
    for (int step = 0; step < 200; step++) {
        int32_t id = s_draw(smp, l, &s, step);
        cr_assert_geq(l[id], sorted[4]);
    }
    float w[V];
    memcpy(w, l, sizeof w);
    kvf_sampler_sample(smp, w, V, &s, NULL, 0, 0);
    int finite = 0;
    for (int i = 0; i < V; i++) finite += isfinite(w[i]);
    cr_assert_eq(finite, 5);

    // top_p over a known distribution: probabilities 0.5, 0.3, 0.15, 0.05.
    float q[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    kvf_sampling_t p = s_temp(1.0f, 3);
    p.top_p = 0.75f;  // keeps 0.5 + 0.3 (the tail 0.15 + 0.05 = 0.2 <= 0.25 goes)
    int hist[4] = {0};
    for (int step = 0; step < 400; step++) {
        float t[4];
        memcpy(t, q, sizeof t);
        hist[kvf_sampler_sample(smp, t, 4, &p, NULL, 0, step)]++;
    }
    cr_assert_eq(hist[2] + hist[3], 0);
    cr_assert_gt(hist[1], 100);  // 0.3/0.8 of 400 = 150
    p.top_p = 0.9f;              // now 0.15 stays (0.05 <= 0.1 goes)
    memset(hist, 0, sizeof hist);
    for (int step = 0; step < 400; step++) {
        float t[4];
        memcpy(t, q, sizeof t);
        hist[kvf_sampler_sample(smp, t, 4, &p, NULL, 0, step)]++;
    }
    cr_assert_eq(hist[3], 0);
    cr_assert_gt(hist[2], 30);  // 0.15/0.95 of 400 = 63

    // A long tail counts: 0.6, 0.2 and 48 tokens of 0.2/48. top_p = 0.65 drops
    // the tail (0.2 <= 0.35) but not token 1 (0.2 + 0.2 > 0.35).
    float tail[V];
    tail[0] = logf(0.6f);
    tail[1] = logf(0.2f);
    for (int i = 2; i < V; i++) tail[i] = logf(0.2f / 48);
    p.top_p = 0.65f;
    int t_hist[3] = {0};
    for (int step = 0; step < 400; step++) {
        int32_t id = s_draw(smp, tail, &p, step);
        t_hist[id < 2 ? id : 2]++;
    }
    cr_assert_eq(t_hist[2], 0);
    cr_assert_gt(t_hist[1], 60);  // 0.2/0.8 of 400 = 100
    kvf_sampler_destroy(&smp);
}

Test(sampler, min_p) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    // probabilities 0.4, 0.3, 0.2, 0.1 (and nothing else)
    float q[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
    kvf_sampling_t s = s_temp(1.0f, 11);
    s.min_p = 0.6f;  // keep p >= 0.24: tokens 0 and 1
    int hist[4] = {0};
    for (int step = 0; step < 300; step++) {
        float t[4];
        memcpy(t, q, sizeof t);
        hist[kvf_sampler_sample(smp, t, 4, &s, NULL, 0, step)]++;
    }
    cr_assert_eq(hist[2] + hist[3], 0);
    cr_assert_gt(hist[0], 0);
    cr_assert_gt(hist[1], 0);
    s.min_p = 0.2f;  // keep p >= 0.08: all four
    memset(hist, 0, sizeof hist);
    for (int step = 0; step < 600; step++) {
        float t[4];
        memcpy(t, q, sizeof t);
        hist[kvf_sampler_sample(smp, t, 4, &s, NULL, 0, step)]++;
    }
    cr_assert_gt(hist[3], 20);  // 0.1 of 600
    kvf_sampler_destroy(&smp);
}

Test(sampler, repetition_penalty_hf_semantics) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -1.0f;
    l[3] = 2.0f;   // the best, but already generated
    l[9] = 1.5f;
    l[12] = -0.5f; // negative and seen: multiplied
    int32_t hist[5] = {3, 12, 3, 3, 60};  // repeats count once; 60 is out of range and ignored
    kvf_sampling_t g = kvf_sampling_default();
    g.repetition_penalty = 1.5f;
    float w[V];
    memcpy(w, l, sizeof w);
    cr_assert_eq(kvf_sampler_sample(smp, w, V, &g, hist, 5, 0), 9);
    cr_assert_float_eq(w[3], 2.0f / 1.5f, 1e-6);
    cr_assert_float_eq(w[12], -0.75f, 1e-6);
    cr_assert_eq(w[9], 1.5f);
    // without the penalty, 3 wins
    g.repetition_penalty = 1.0f;
    memcpy(w, l, sizeof w);
    cr_assert_eq(kvf_sampler_sample(smp, w, V, &g, hist, 5, 0), 3);
    // the marks are cleared between calls: a second penalised call is the same
    g.repetition_penalty = 1.5f;
    memcpy(w, l, sizeof w);
    kvf_sampler_sample(smp, w, V, &g, hist, 5, 0);
    cr_assert_float_eq(w[3], 2.0f / 1.5f, 1e-6);
    kvf_sampler_destroy(&smp);
}

// The histogram of many draws matches softmax(logits / T) (chi-square bound).
Test(sampler, temperature_histogram_matches_softmax) {
    kvf_sampler_t *smp = kvf_sampler_new(V);
    float l[8] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, 1.5f, -1.0f, 0.2f};
    float temps[2] = {0.7f, 2.0f};
    for (int ti = 0; ti < 2; ti++) {
        double p[8], z = 0;
        for (int i = 0; i < 8; i++) z += (p[i] = exp(l[i] / temps[ti]));
        int hist[8] = {0}, N = 20000;
        kvf_sampling_t s = s_temp(temps[ti], 99);
        for (int step = 0; step < N; step++) {
            float t[8];
            memcpy(t, l, sizeof t);
            int32_t id = kvf_sampler_sample(smp, t, 8, &s, NULL, 0, step);
            cr_assert(id >= 0 && id < 8);
            hist[id]++;
        }
        double chi2 = 0;
        for (int i = 0; i < 8; i++) {
            double e = N * p[i] / z;
            chi2 += (hist[i] - e) * (hist[i] - e) / e;
        }
        // 7 degrees of freedom: P(chi2 > 30) < 1e-4
        cr_assert_lt(chi2, 30.0, "T=%g chi2=%g", temps[ti], chi2);
    }
    // Low temperature concentrates on the argmax.
    kvf_sampling_t cold = s_temp(0.05f, 5);
    for (int step = 0; step < 100; step++) {
        float t[8];
        memcpy(t, l, sizeof t);
        cr_assert_eq(kvf_sampler_sample(smp, t, 8, &cold, NULL, 0, step), 4);
    }
    kvf_sampler_destroy(&smp);
}

Test(sampler, is_stop) {
    kvf_modelcfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_eos = 2;
    cfg.eos_ids[0] = 2;
    cfg.eos_ids[1] = 128009;
    kvf_sampling_t s = kvf_sampling_default();
    cr_assert(kvf_sampler_is_stop(&cfg, &s, 2));
    cr_assert(kvf_sampler_is_stop(&cfg, &s, 128009));
    cr_assert_not(kvf_sampler_is_stop(&cfg, &s, 5));
    s.n_stop_ids = 1;
    s.stop_ids[0] = 5;
    cr_assert(kvf_sampler_is_stop(&cfg, &s, 5));
    s.ignore_eos = 1;
    cr_assert_not(kvf_sampler_is_stop(&cfg, &s, 2));
    cr_assert_not(kvf_sampler_is_stop(&cfg, &s, 128009));
    cr_assert(kvf_sampler_is_stop(&cfg, &s, 5));  // explicit stop ids still stop
}

// The masses the host and the GPU count with: kvf_sample_exp within 1e-7 of exp
// over the normal floats' [-87, 0] (2 million points; below, subnormals round),
// exact at 0, 0 below the float range and for NaN; the top token weighs 2^40.
Test(sampler, sample_mass_exp_is_exp) {
    double worst = 0.0;
    for (int i = 0; i <= 2000000; i++) {
        const float x = -87.0f * (float)i / 2000000.0f;
        const double want = exp((double)x), rel = fabs(kvf_sample_exp(x) - want) / want;
        if (rel > worst) worst = rel;
    }
    cr_expect(worst < 1e-7, "worst relative error %.3g", worst);
    cr_expect_eq(kvf_sample_exp(0.0f), 1.0f);
    cr_expect_eq(kvf_sample_exp(-200.0f), 0.0f);
    cr_expect_eq(kvf_sample_exp(-INFINITY), 0.0f);
    cr_expect_eq(kvf_sample_exp(NAN), 0.0f);
    cr_expect_eq(kvf_sample_mass(3.5f, 3.5f), 1ull << 40);
    cr_expect(kvf_sample_mass(1.0f, 3.5f) < kvf_sample_mass(2.0f, 3.5f));
}
