// kernels/sample.cu — see sample.h. One block per row: each thread keeps its
// best (value, id), then a warp-shuffle and shared-memory reduction.
#include <math.h>

#include "kernels/check.h"
#include "kernels/sample.h"
#include "kernels/util.cuh"

#define SAMPLE_THREADS 512

static __device__ __forceinline__ bool s_better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// best NULL: ids[r] = the row's argmax (0 when every logit is NaN). Else best[2 r]
// = the winning value's bits and best[2 r + 1] = id0 + its id (-inf, -1 for a
// row of NaN).
static __global__ void __launch_bounds__(SAMPLE_THREADS) s_pick(int32_t *ids, int32_t *best, const float *logits,
                                                                int vocab, int id0) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const int r = blockIdx.x;
    const float *row = logits + (size_t)r * vocab;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float x = row[v];
        if (isnan(x)) continue;
        if (s_better(x, v, bv, bi)) bv = x, bi = v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (s_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        bv = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
        bi = lane < (int)(blockDim.x >> 5) ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (s_better(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (lane == 0 && !best) ids[r] = bi == 0x7fffffff ? 0 : bi;
        if (lane == 0 && best) {
            best[2 * r] = __float_as_int(bi == 0x7fffffff ? -INFINITY : bv);
            best[2 * r + 1] = bi == 0x7fffffff ? -1 : id0 + bi;
        }
    }
}

extern "C" int kvf_argmax(int32_t *ids, const float *logits, int n, int vocab, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(ids && logits && n >= 0 && vocab > 0, err);
    if (n == 0) return 0;
    s_pick<<<n, SAMPLE_THREADS, 0, stream>>>(ids, NULL, logits, vocab, 0);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_argmax_best(int32_t *best, const float *logits, int n, int vocab, int id0, cudaStream_t stream,
                               kvf_err_t *err) {
    KVF_REQUIRE(best && logits && n >= 0 && vocab > 0 && id0 >= 0, err);
    if (n == 0) return 0;
    s_pick<<<n, SAMPLE_THREADS, 0, stream>>>(NULL, best, logits, vocab, id0);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
