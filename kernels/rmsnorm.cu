// kernels/rmsnorm.cu — see rmsnorm.h. One block per row; the row is read once
// from global memory and kept in registers (dim <= KVF_RMS_MAX_PER_THREAD * threads).
#include "kernels/check.h"
#include "kernels/rmsnorm.h"
#include "kernels/util.cuh"

#define KVF_RMS_THREADS 256
#define KVF_RMS_PER_THREAD 64  // dim up to 16384

template <bool ADD, typename TX>
static __global__ void __launch_bounds__(KVF_RMS_THREADS)
s_rmsnorm(bf16 *out,          // (n, dim)
          float *res,         // (n, dim): the input; with ADD updated to res + x
          const TX *x,        // (n, dim) or NULL without ADD
          const float *w,     // (dim)
          int dim, float eps) {
    __shared__ float scratch[32];
    const size_t row = (size_t)blockIdx.x * dim;
    float v[KVF_RMS_PER_THREAD];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < KVF_RMS_PER_THREAD; i++) {
        int d = threadIdx.x + i * blockDim.x;
        v[i] = 0.0f;
        if (d < dim) {
            float r = res[row + d];
            if (ADD) {
                r += kvf_ld(x + row + d);
                res[row + d] = r;
            }
            v[i] = r;
            ss += r * r;
        }
    }
    ss = kvf_block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma unroll
    for (int i = 0; i < KVF_RMS_PER_THREAD; i++) {
        int d = threadIdx.x + i * blockDim.x;
        if (d < dim) out[row + d] = __float2bfloat16_rn(v[i] * scale * w[d]);
    }
}

static int s_threads(int dim) {
    int t = ((dim + 31) / 32) * 32;
    return t > KVF_RMS_THREADS ? KVF_RMS_THREADS : t;
}

extern "C" int kvf_rmsnorm(uint16_t *out, const float *x, const float *w, int n, int dim, float eps,
                           cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    s_rmsnorm<false, float><<<n, s_threads(dim), 0, stream>>>((bf16 *)out, (float *)x, NULL, w, dim, eps);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_rmsnorm_add(uint16_t *out, float *residual, const uint16_t *x, const float *w, int n,
                               int dim, float eps, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && residual && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    s_rmsnorm<true, bf16><<<n, s_threads(dim), 0, stream>>>((bf16 *)out, residual, (const bf16 *)x, w, dim, eps);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_rmsnorm_add_f32(uint16_t *out, float *residual, const float *x, const float *w, int n, int dim,
                                   float eps, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && residual && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    s_rmsnorm<true, float><<<n, s_threads(dim), 0, stream>>>((bf16 *)out, residual, x, w, dim, eps);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
