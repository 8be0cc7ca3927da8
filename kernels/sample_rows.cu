// kernels/sample_rows.cu — see sample_rows.h. One block of SR_THREADS per row;
// the row's logits are read again on each pass (a 128k-token row is 512 KB, from
// L2 after the first pass), nothing is written but the id:
//   1. max and count of the finite v = logit / T;
//   2. top_k: radix select (4 passes of 8-bit count histograms) of the k-th largest v;
//   3. top_p: the total mass, then a radix select weighted by mass (4 passes) for
//      the group of equal v where the dropped run's mass would pass the limit, and,
//      when that group is partly dropped, a radix select on its ids;
//   4. the draw: per-warp sums over contiguous id ranges, a scan, and one warp
//      walks its range 32 ids at a time.
#include <math.h>

#include "common/sample_mass.h"
#include "kernels/check.h"
#include "kernels/sample_rows.h"
#include "kernels/util.cuh"

#define SR_THREADS 512
#define SR_WARPS (SR_THREADS / 32)

// Float bits in an order that unsigned comparison follows (-0 and +0 are one value
// here: s_v canonicalises -0 to +0, as float comparison sees them equal).
static __device__ __forceinline__ uint32_t s_ord(float v) {
    const uint32_t b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
static __device__ __forceinline__ float s_from_ord(uint32_t o) {
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// Row state shared by the block.
typedef struct {
    float mx;        // the largest finite v
    float tk;        // top_k: keep v >= tk (-inf: off)
    int p_on;        // top_p: keep ord(v) > pw, or ord(v) == pw and id <= pid
    uint32_t pw;
    int pid;
    float minp;      // min_p: > 0 on
} s_keep_t;

static __device__ __forceinline__ float s_v(const float *row, int i, float t) {
    return __fdiv_rn(row[i], t) + 0.0f;  // as the host: logits[i] / temperature
}

static __device__ __forceinline__ uint64_t s_mass(float v, float mx) { return kvf_sample_mass(v, mx); }

// f(i, v) for the ids i in [lo, hi) that this thread takes: thread `me` of `n`
// threads, in steps of 4 ids (16-byte loads, two in flight) when the range and
// the row allow, else one id at a time. For passes that only accumulate (their
// order does not matter): a row streams from memory with a load or two in flight
// a thread otherwise, far from the bandwidth.
template <typename F>
static __device__ __forceinline__ void s_each(const float *row, int lo, int hi, int me, int n, float t, F f) {
    if (((lo | hi) & 3) == 0 && ((uintptr_t)row & 15) == 0) {
        const float4 *r4 = (const float4 *)(row + lo);
        const int n4 = (hi - lo) >> 2;
        int j = me;
        for (; j + n < n4; j += 2 * n) {
            const float4 a = r4[j], b = r4[j + n];
            const int i = lo + 4 * j, k = lo + 4 * (j + n);
            f(i, __fdiv_rn(a.x, t) + 0.0f), f(i + 1, __fdiv_rn(a.y, t) + 0.0f);
            f(i + 2, __fdiv_rn(a.z, t) + 0.0f), f(i + 3, __fdiv_rn(a.w, t) + 0.0f);
            f(k, __fdiv_rn(b.x, t) + 0.0f), f(k + 1, __fdiv_rn(b.y, t) + 0.0f);
            f(k + 2, __fdiv_rn(b.z, t) + 0.0f), f(k + 3, __fdiv_rn(b.w, t) + 0.0f);
        }
        if (j < n4) {
            const float4 a = r4[j];
            const int i = lo + 4 * j;
            f(i, __fdiv_rn(a.x, t) + 0.0f), f(i + 1, __fdiv_rn(a.y, t) + 0.0f);
            f(i + 2, __fdiv_rn(a.z, t) + 0.0f), f(i + 3, __fdiv_rn(a.w, t) + 0.0f);
        }
        return;
    }
    for (int i = lo + me; i < hi; i += n) f(i, s_v(row, i, t));
}

// s_each over the whole row by the whole block.
template <typename F>
static __device__ __forceinline__ void s_each_row(const float *row, int vocab, float t, F f) {
    s_each(row, 0, vocab, threadIdx.x, SR_THREADS, t, f);
}

// After top_k (finite and not below tk).
static __device__ __forceinline__ bool s_cand(float v, const s_keep_t *k) { return isfinite(v) && v >= k->tk; }

// Kept by every filter.
static __device__ __forceinline__ bool s_kept(float v, int i, const s_keep_t *k) {
    if (!s_cand(v, k)) return false;
    if (k->p_on) {
        const uint32_t o = s_ord(v);
        if (o < k->pw || (o == k->pw && i > k->pid)) return false;
    }
    return !(k->minp > 0.0f) || v == k->mx || kvf_sample_exp(v - k->mx) >= k->minp;
}

// A thread's last few histogram bins, added to shared memory only when evicted or
// flushed: a radix pass's first digit puts nearly every value in a handful of
// bins, where a shared atomic per element would serialise the whole block.
typedef struct {
    uint32_t b0, b1, b2, b3;  // 0xFFFFFFFF: empty
    uint64_t s0, s1, s2, s3;
    int next;
} s_bins_t;

static __device__ __forceinline__ void s_bins_init(s_bins_t *c) {
    c->b0 = c->b1 = c->b2 = c->b3 = 0xFFFFFFFFu;
    c->s0 = c->s1 = c->s2 = c->s3 = 0;
    c->next = 0;
}

static __device__ __forceinline__ void s_bins_put(uint64_t *hist, uint32_t *b, uint64_t *s, uint32_t bin, uint64_t x) {
    if (*b != 0xFFFFFFFFu) atomicAdd((unsigned long long *)&hist[*b], (unsigned long long)*s);
    *b = bin, *s = x;
}

static __device__ __forceinline__ void s_bins_add(s_bins_t *c, uint64_t *hist, uint32_t bin, uint64_t x) {
    if (c->b0 == bin) c->s0 += x;
    else if (c->b1 == bin) c->s1 += x;
    else if (c->b2 == bin) c->s2 += x;
    else if (c->b3 == bin) c->s3 += x;
    else {
        switch (c->next) {
        case 0: s_bins_put(hist, &c->b0, &c->s0, bin, x); break;
        case 1: s_bins_put(hist, &c->b1, &c->s1, bin, x); break;
        case 2: s_bins_put(hist, &c->b2, &c->s2, bin, x); break;
        default: s_bins_put(hist, &c->b3, &c->s3, bin, x); break;
        }
        c->next = (c->next + 1) & 3;
    }
}

static __device__ __forceinline__ void s_bins_flush(s_bins_t *c, uint64_t *hist) {
    s_bins_put(hist, &c->b0, &c->s0, 0xFFFFFFFFu, 0);
    s_bins_put(hist, &c->b1, &c->s1, 0xFFFFFFFFu, 0);
    s_bins_put(hist, &c->b2, &c->s2, 0xFFFFFFFFu, 0);
    s_bins_put(hist, &c->b3, &c->s3, 0xFFFFFFFFu, 0);
}

// ---------------------------------------------------------------- block reductions

static __device__ uint64_t s_sum_u64(uint64_t x, uint64_t *scratch /* (SR_WARPS) */) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
    __syncthreads();
    x = (threadIdx.x & 31) < SR_WARPS ? scratch[threadIdx.x & 31] : 0;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

static __device__ float s_max_f(float x, float *scratch /* (SR_WARPS) */) {
    x = kvf_warp_max(x);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
    __syncthreads();
    x = (threadIdx.x & 31) < SR_WARPS ? scratch[threadIdx.x & 31] : -INFINITY;
    return kvf_warp_max(x);
}

// Exclusive prefix sum over the block's threads in thread order; *total gets the sum.
static __device__ uint64_t s_scan_u64(uint64_t x, uint64_t *scratch /* (SR_WARPS) */, uint64_t *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint64_t inc = x;
    for (int o = 1; o < 32; o <<= 1) {
        uint64_t y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += y;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        uint64_t w = lane < SR_WARPS ? scratch[lane] : 0, wi = w;
        for (int o = 1; o < 32; o <<= 1) {
            uint64_t y = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += y;
        }
        if (lane < SR_WARPS) scratch[lane] = wi - w;  // exclusive over warps
        if (lane == 31) scratch[SR_WARPS] = wi;
    }
    __syncthreads();
    *total = scratch[SR_WARPS];
    return scratch[warp] + inc - x;
}

// Argmax of row / t (t 1: the raw logits), lowest id on ties, NaN never wins (0 when all are NaN).
static __device__ int s_argmax(const float *row, int vocab, float t, float *sv, int *si) {
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += SR_THREADS) {
        const float x = t == 1.0f ? row[i] : s_v(row, i, t);
        if (isnan(x)) continue;
        if (x > bv || (x == bv && i < bi) || bi == 0x7fffffff) bv = x, bi = i;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi != 0x7fffffff && (bi == 0x7fffffff || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = bv, si[threadIdx.x >> 5] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < SR_WARPS; w++)
            if (si[w] != 0x7fffffff && (bi == 0x7fffffff || sv[w] > bv || (sv[w] == bv && si[w] < bi)))
                bv = sv[w], bi = si[w];
        si[0] = bi == 0x7fffffff ? 0 : bi;
    }
    __syncthreads();
    return si[0];
}

// The rank-th smallest (1-based) 32-bit key among the ids that key_of(i, v, &key)
// accepts: four 8-bit passes of count histograms, each narrowing the prefix.
// Every thread of the block calls it and gets the key.
template <typename F>
static __device__ uint32_t s_select_rank(F key_of, const float *row, int vocab, float t, uint32_t rank,
                                         uint64_t *hist, uint32_t *sel) {
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += SR_THREADS) hist[b] = 0;
        __syncthreads();
        s_bins_t bc;
        s_bins_init(&bc);
        s_each_row(row, vocab, t, [&](int i, float v) {
            uint32_t key;
            if (key_of(i, v, &key) && (key & mask) == prefix) s_bins_add(&bc, hist, (key >> shift) & 255, 1);
        });
        s_bins_flush(&bc, hist);
        __syncthreads();
        if (threadIdx.x == 0) {
            uint64_t cum = 0;
            int b = 0;
            for (; b < 255 && cum + hist[b] < rank; b++) cum += hist[b];
            sel[0] = prefix | ((uint32_t)b << shift);
            sel[1] = rank - (uint32_t)cum;
        }
        __syncthreads();
        prefix = sel[0], rank = sel[1], mask |= 0xFFu << shift;
        __syncthreads();
    }
    return prefix;
}

// ---------------------------------------------------------------- the kernel

static __global__ void __launch_bounds__(SR_THREADS, 1)
s_sample_rows(int32_t *ids, const float *logits, const kvf_sample_params_t *params, int vocab) {
    __shared__ uint64_t hist[256];
    __shared__ uint64_t scratch[SR_WARPS + 1];
    __shared__ float fscratch[SR_WARPS];
    __shared__ int iscratch[SR_WARPS];
    __shared__ s_keep_t K;
    __shared__ uint32_t sel[2];  // radix select: the digit prefix and what is left of the rank / mass
    __shared__ uint64_t sel_rem;
    const int r = blockIdx.x;
    const float *row = logits + (size_t)r * vocab;
    const kvf_sample_params_t p = params[r];
    const float t = p.temperature;
    if (!(t > 0.0f)) {  // greedy
        const int id = s_argmax(row, vocab, 1.0f, fscratch, iscratch);
        if (threadIdx.x == 0) ids[r] = id;
        return;
    }

    // 1. the largest finite v and the count of finite ones
    float mx = -INFINITY;
    uint64_t m = 0;
    s_each_row(row, vocab, t, [&](int, float v) {
        if (isfinite(v)) mx = fmaxf(mx, v), m++;
    });
    mx = s_max_f(mx, fscratch);
    m = s_sum_u64(m, scratch);
    if (m == 0) {  // as the host: the argmax of the scaled row
        const int id = s_argmax(row, vocab, t, fscratch, iscratch);
        if (threadIdx.x == 0) ids[r] = id;
        return;
    }
    if (threadIdx.x == 0) K = (s_keep_t){mx, -INFINITY, 0, 0u, 0, p.min_p};
    __syncthreads();

    // 2. top_k: the k-th largest v, by its descending key ~ord(v)
    uint64_t m2 = m;
    if (p.top_k > 0 && (uint64_t)p.top_k < m) {
        const uint32_t key = s_select_rank(
            [&](int, float v, uint32_t *k) {
                *k = ~s_ord(v);
                return isfinite(v);
            },
            row, vocab, t, (uint32_t)p.top_k, hist, sel);
        if (threadIdx.x == 0) K.tk = s_from_ord(~key);
        __syncthreads();
        uint64_t c = 0;
        s_each_row(row, vocab, t, [&](int, float v) { c += s_cand(v, &K); });
        m2 = s_sum_u64(c, scratch);
    }

    // 3. top_p: drop the least likely run (increasing v, then decreasing id) of mass <= (1 - p) of the total
    if (p.top_p < 1.0f && m2 > 1) {
        uint64_t z = 0;
        s_each_row(row, vocab, t, [&](int, float v) {
            if (s_cand(v, &K)) z += s_mass(v, mx);
        });
        z = s_sum_u64(z, scratch);
        uint64_t rem = (uint64_t)((1.0 - (double)p.top_p) * (double)z);
        uint32_t prefix = 0, mask = 0;
        bool crossed = true;
        for (int shift = 24; shift >= 0 && crossed; shift -= 8) {
            for (int b = threadIdx.x; b < 256; b += SR_THREADS) hist[b] = 0;
            __syncthreads();
            s_bins_t bc;
            s_bins_init(&bc);
            s_each_row(row, vocab, t, [&](int, float v) {
                const uint32_t o = s_ord(v);
                if (s_cand(v, &K) && (o & mask) == prefix) s_bins_add(&bc, hist, (o >> shift) & 255, s_mass(v, mx));
            });
            s_bins_flush(&bc, hist);
            __syncthreads();
            if (threadIdx.x == 0) {
                uint64_t cum = 0;
                int b = 0;
                for (; b < 256 && cum + hist[b] <= rem; b++) cum += hist[b];
                sel[0] = prefix | ((uint32_t)(b & 255) << shift);
                sel[1] = b < 256;
                sel_rem = rem - cum;
            }
            __syncthreads();
            prefix = sel[0], crossed = sel[1] != 0, rem = sel_rem, mask |= 0xFFu << shift;
            __syncthreads();
        }
        // crossed: the group of v with ord == prefix holds the crossing; the mass below it
        // is the limit minus rem. Its members go from the largest id while they fit in rem.
        // Not crossed (the limit rounds to the whole mass: top_p < 2^-53): all but the top
        // token go, as on the host, which always keeps one.
        {
            if (!crossed) prefix = s_ord(mx);
            uint64_t g = 0;
            s_each_row(row, vocab, t, [&](int, float v) { g += s_cand(v, &K) && s_ord(v) == prefix; });
            g = s_sum_u64(g, scratch);
            const float vg = s_from_ord(prefix);
            const uint64_t mg = s_mass(vg, mx);
            uint64_t drop = !crossed ? g - 1 : mg > 0 ? rem / mg : 0;
            if (drop > g - 1) drop = g - 1;
            int pid = 0x7fffffff;
            if (drop > 0) {  // keep the (g - drop) smallest ids: the (g - drop)-th smallest id
                pid = (int)s_select_rank(
                    [&](int i, float v, uint32_t *k) {
                        *k = (uint32_t)i;
                        return s_cand(v, &K) && s_ord(v) == prefix;
                    },
                    row, vocab, t, (uint32_t)(g - drop), hist, sel);
            }
            if (threadIdx.x == 0) K.p_on = 1, K.pw = prefix, K.pid = pid;
            __syncthreads();
        }
    }

    // 4. the draw, in increasing id order over what every filter kept (min_p in s_kept):
    // warp w sums the ids [w span, (w + 1) span) with its lanes reading 32 neighbours a
    // step; the warps' sums are scanned; the warp whose range holds the target walks it
    // 32 ids a step (a warp scan of the step's masses, then the first lane past it).
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int span = (vocab + SR_WARPS * 128 - 1) / (SR_WARPS * 128) * 128;
    const int w0 = min(vocab, warp * span), w1 = min(vocab, w0 + span);
    uint64_t s = 0;
    s_each(row, w0, w1, lane, 32, t, [&](int i, float v) {
        if (s_kept(v, i, &K)) s += s_mass(v, mx);
    });
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    uint64_t total = 0;
    // the block scan over threads gives each warp's lane 0 the sum of the warps before it
    const uint64_t pre = s_scan_u64(lane == 0 ? s : 0, scratch, &total);
    uint64_t target = (uint64_t)(p.u * (double)total);
    if (target >= total) target = total - 1;  // total >= 2^40: the top token is always kept
    const uint64_t wpre = __shfl_sync(0xffffffffu, pre, 0);
    if (wpre <= target && target < wpre + s) {  // s: this warp's sum, on every lane
        uint64_t base = wpre;
        for (int i0 = w0; i0 < w1; i0 += 32) {
            const int i = i0 + lane;
            uint64_t m = 0;
            if (i < w1) {
                const float v = s_v(row, i, t);
                if (s_kept(v, i, &K)) m = s_mass(v, mx);
            }
            uint64_t inc = m;
            for (int o = 1; o < 32; o <<= 1) {
                const uint64_t y = __shfl_up_sync(0xffffffffu, inc, o);
                if (lane >= o) inc += y;
            }
            const unsigned past = __ballot_sync(0xffffffffu, m > 0 && base + inc > target);
            if (past) {
                if (lane == __ffs(past) - 1) ids[r] = i;
                break;
            }
            base += __shfl_sync(0xffffffffu, inc, 31);
        }
    }
}

extern "C" int kvf_sample_rows(int32_t *ids, const float *logits, const kvf_sample_params_t *params, int n, int vocab,
                               cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(ids && logits && params && n >= 0 && vocab > 0, err);
    if (n == 0) return 0;
    s_sample_rows<<<n, SR_THREADS, 0, stream>>>(ids, logits, params, vocab);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
