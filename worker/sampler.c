// worker/sampler.c — see sampler.h.
//
// The filters follow transformers' RepetitionPenaltyLogitsProcessor,
// TemperatureLogitsWarper, TopKLogitsWarper (ties with the k-th score are kept),
// TopPLogitsWarper (drop the least likely tokens while their cumulative
// probability stays <= 1 - top_p, keep at least one) and MinPLogitsWarper
// (drop p < min_p * p_max). Only finite candidates are carried from one filter
// to the next, and nothing is sorted unless top_p needs it, so a step costs
// O(vocab) for the common settings. Probabilities are counted in
// common/sample_mass.h's integer masses, as kernels/sample_rows.cu counts them,
// so the GPU and this code pick the same token.
#include "worker/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/sample_mass.h"

typedef struct {
    float v;      // processed logit
    int32_t id;
} s_cand_t;

struct kvf_sampler_s {
    int32_t vocab;
    s_cand_t *cand;   // (vocab) candidates still in play
    uint8_t *seen;    // (vocab) repetition-penalty marks, all 0 between calls
};

kvf_sampler_t *kvf_sampler_new(int32_t vocab) {
    if (vocab < 1) return NULL;
    kvf_sampler_t *smp = calloc(1, sizeof *smp);
    if (!smp) return NULL;
    smp->vocab = vocab;
    smp->cand = malloc((size_t)vocab * sizeof *smp->cand);
    smp->seen = calloc((size_t)vocab, 1);
    if (!smp->cand || !smp->seen) {
        kvf_sampler_destroy(&smp);
        return NULL;
    }
    return smp;
}

void kvf_sampler_destroy(kvf_sampler_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_sampler_t *smp = *self_p;
    free(smp->cand);
    free(smp->seen);
    free(smp);
    *self_p = NULL;
}

// ---------------------------------------------------------------- helpers

static uint64_t s_splitmix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double kvf_sampler_uniform(uint64_t seed, int32_t step) {
    uint64_t h = s_splitmix(s_splitmix(seed) ^ s_splitmix(0x5851f42d4c957f2dull + (uint64_t)(uint32_t)step));
    return (double)(h >> 11) * 0x1.0p-53;
}

// Argmax with the lowest id on ties; NaN never wins.
static int32_t s_argmax(const float *logits, int32_t vocab) {
    int32_t best = 0;
    float bv = -INFINITY;
    int found = 0;
    for (int32_t i = 0; i < vocab; i++) {
        float v = logits[i];
        if (isnan(v)) continue;
        if (!found || v > bv) {
            best = i;
            bv = v;
            found = 1;
        }
    }
    return best;
}

// Order of candidates: higher logit first, then lower id.
static int s_before(const s_cand_t *a, const s_cand_t *b) {
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

static int s_cmp_desc(const void *pa, const void *pb) {
    const s_cand_t *a = pa, *b = pb;
    if (s_before(a, b)) return -1;
    if (s_before(b, a)) return 1;
    return 0;
}

// Rearranges c so that c[k] is the element that a full sort would put there
// (everything before it comes first in the order). Deterministic pivots.
static void s_select(s_cand_t *c, int32_t m, int32_t k) {
    int32_t lo = 0, hi = m - 1;
    while (lo < hi) {
        s_cand_t piv = c[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (s_before(&c[i], &piv)) i++;
            while (s_before(&piv, &c[j])) j--;
            if (i <= j) {
                s_cand_t t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return;
    }
}

static float s_max_v(const s_cand_t *c, int32_t m) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < m; i++)
        if (c[i].v > mx) mx = c[i].v;
    return mx;
}

// Keeps the candidates with v >= thr (order preserved); returns the new count.
static int32_t s_keep_at_least(s_cand_t *c, int32_t m, float thr) {
    int32_t w = 0;
    for (int32_t i = 0; i < m; i++)
        if (c[i].v >= thr) c[w++] = c[i];
    return w;
}

// ---------------------------------------------------------------- filters

static void s_repetition_penalty(kvf_sampler_t *smp, float *logits, int32_t vocab, float penalty,
                                 const int32_t *history, int32_t n_history) {
    if (!history || n_history <= 0 || penalty == 1.0f) return;
    // Each distinct id is penalised once, as HF's gather/scatter does.
    for (int32_t i = 0; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= vocab || smp->seen[id]) continue;
        smp->seen[id] = 1;
        float v = logits[id];
        logits[id] = v < 0 ? v * penalty : v / penalty;
    }
    for (int32_t i = 0; i < n_history; i++)
        if (history[i] >= 0 && history[i] < vocab) smp->seen[history[i]] = 0;
}

static int32_t s_top_k(s_cand_t *c, int32_t m, int32_t k) {
    if (k <= 0 || k >= m) return m;
    s_select(c, m, k - 1);
    return s_keep_at_least(c, m, c[k - 1].v);
}

static int32_t s_top_p(s_cand_t *c, int32_t m, float top_p) {
    if (top_p >= 1.0f || m <= 1) return m;
    const float mx = s_max_v(c, m);
    uint64_t z = 0;
    for (int32_t i = 0; i < m; i++) z += kvf_sample_mass(c[i].v, mx);
    const uint64_t limit = (uint64_t)((1.0 - (double)top_p) * (double)z);
    // The tokens below some value go whatever the others are when they weigh at
    // most the limit in all: the dropped run starts with them (it is a prefix in
    // increasing v, and masses are never negative). Drop them before sorting: with
    // thr where a token weighs about half of limit / m, they weigh about half the
    // limit at most; checked, and nothing is dropped early if they weigh more.
    uint64_t dropped = 0;
    int32_t w = m;
    const uint64_t cut = limit / (uint64_t)m;
    if (cut > 0) {
        const double thr = (double)mx + log((double)cut / 2.0 / 1099511627776.0);
        for (int32_t i = 0; i < m; i++)
            if ((double)c[i].v < thr) dropped += kvf_sample_mass(c[i].v, mx);
        if (dropped <= limit) {
            w = 0;
            for (int32_t i = 0; i < m; i++)
                if (!((double)c[i].v < thr)) c[w++] = c[i];
        } else {
            dropped = 0;
        }
    }
    m = w;
    qsort(c, (size_t)m, sizeof *c, s_cmp_desc);
    // Walk from the least likely; remove while the cumulative mass (counting
    // the tokens dropped above, which come first) stays <= the limit.
    uint64_t cum = dropped;
    int32_t keep = m;
    for (int32_t i = m - 1; i >= 1; i--) {
        const uint64_t e = kvf_sample_mass(c[i].v, mx);
        if (cum + e <= limit) {
            cum += e;
            keep = i;
        } else {
            break;
        }
    }
    return keep;
}

static int32_t s_min_p(s_cand_t *c, int32_t m, float min_p) {
    if (min_p <= 0.0f || m <= 1) return m;
    float mx = s_max_v(c, m);
    int32_t w = 0;
    for (int32_t i = 0; i < m; i++)
        if (c[i].v == mx || kvf_sample_exp(c[i].v - mx) >= min_p) c[w++] = c[i];
    return w;
}

// ---------------------------------------------------------------- sample

int32_t kvf_sampler_sample(kvf_sampler_t *smp, float *logits, int32_t vocab, const kvf_sampling_t *s,
                           const int32_t *history, int32_t n_history, int32_t step) {
    if (!smp || !logits || !s || vocab < 1 || vocab > smp->vocab) return -1;
    s_repetition_penalty(smp, logits, vocab, s->repetition_penalty, history, n_history);
    if (!(s->temperature > 0.0f)) return s_argmax(logits, vocab);

    s_cand_t *c = smp->cand;
    int32_t m = 0;
    for (int32_t i = 0; i < vocab; i++) {
        float v = logits[i] / s->temperature;
        logits[i] = v;
        if (isfinite(v)) c[m++] = (s_cand_t){v, i};
    }
    if (m == 0) return s_argmax(logits, vocab);
    m = s_top_k(c, m, s->top_k);
    m = s_top_p(c, m, s->top_p);
    m = s_min_p(c, m, s->min_p);

    // What the filters removed is -inf in logits, as HF leaves the scores.
    for (int32_t i = 0; i < vocab; i++) logits[i] = -INFINITY;
    for (int32_t i = 0; i < m; i++) logits[c[i].id] = c[i].v;

    // The draw walks the kept tokens in id order (whatever order the filters left
    // them in), as kernels/sample_rows.cu does on the GPU.
    const float mx = s_max_v(c, m);
    uint64_t z = 0;
    for (int32_t i = 0; i < m; i++) z += kvf_sample_mass(c[i].v, mx);
    uint64_t target = (uint64_t)(kvf_sampler_uniform(s->seed, step) * (double)z), cum = 0;
    if (target >= z) target = z - 1;  // z >= 2^40: the top token is kept
    for (int32_t i = 0; i < vocab; i++) {
        if (logits[i] == -INFINITY) continue;
        cum += kvf_sample_mass(logits[i], mx);
        if (cum > target) return i;
    }
    return c[0].id;  // not reached: the kept masses sum to z
}

int kvf_sampler_is_stop(const kvf_modelcfg_t *cfg, const kvf_sampling_t *s, int32_t id) {
    if (cfg && !(s && s->ignore_eos))
        for (int i = 0; i < cfg->n_eos && i < KVF_MAX_EOS; i++)
            if (cfg->eos_ids[i] == id) return 1;
    if (s)
        for (int i = 0; i < s->n_stop_ids && i < KVF_MAX_STOP_IDS; i++)
            if (s->stop_ids[i] == id) return 1;
    return 0;
}
