// common/sample_mass.h — the probability mass that the host sampler
// (worker/sampler.c) and the GPU's (kernels/sample_rows.cu) both count with, so
// that the two pick the same token by construction.
//
// A token of scaled logit v in a row whose largest is mx weighs
//   kvf_sample_exp(v - mx) * 2^40, truncated to an integer,
// where kvf_sample_exp is exp in float from explicit fmaf steps (the same bits
// from any C compiler and from nvcc), and masses are summed as 64-bit integers
// (exact, in any order). The top token weighs 2^40; a vocabulary of 2^23 tokens
// still sums below 2^64. Tokens below ~1e-12 of the top one weigh nothing.
#ifndef KVF_SAMPLE_MASS_H
#define KVF_SAMPLE_MASS_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define KVF_HD static __host__ __device__ __forceinline__
#else
#define KVF_HD static inline
#endif

// e^x for x <= 0 in float, ~1 ulp: x = k ln2 + r with |r| <= ln2 / 2 (ln2 in two
// parts), e^r by its degree-7 Taylor polynomial (error < 2e-8 there), times 2^k.
KVF_HD float kvf_sample_exp(float x) {
    if (!(x > -104.0f)) return 0.0f;  // below the smallest subnormal (and NaN)
    const float k = rintf(x * 1.44269504f);
    float r = fmaf(k, -0.693145752f, x);
    r = fmaf(k, -1.42860677e-06f, r);
    float p = 1.98412698e-04f;  // 1/7!
    p = fmaf(p, r, 1.38888889e-03f);
    p = fmaf(p, r, 8.33333333e-03f);
    p = fmaf(p, r, 4.16666667e-02f);
    p = fmaf(p, r, 1.66666667e-01f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    return ldexpf(p, (int)k);
}

// The mass of a token of scaled logit v (<= mx, both finite) in fixed point.
KVF_HD uint64_t kvf_sample_mass(float v, float mx) {
    return (uint64_t)((double)kvf_sample_exp(v - mx) * 1099511627776.0);  // 2^40
}

#undef KVF_HD
#endif
