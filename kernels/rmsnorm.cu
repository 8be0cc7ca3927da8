// kernels/rmsnorm.cu — see rmsnorm.h. One block per row; the row is read once
// from global memory and kept in registers (dim <= KVF_RMS_MAX_PER_THREAD * threads).
// When dim is a multiple of 4 and the pointers 16-byte aligned, s_rmsnorm4 moves
// 16-byte vectors and issues all of a thread's loads before the first use (the
// scalar loop stored each residual before loading the next, one memory latency
// per element: measured 49.7 ms per 8192-token step for 65 calls, ~7x its bytes).
#include <stdint.h>

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

static __device__ __forceinline__ float4 s_ld4(const float *p) { return *(const float4 *)p; }
static __device__ __forceinline__ float4 s_ld4(const bf16 *p) {
    const uint2 u = *(const uint2 *)p;
    const float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&u.x), b = __bfloat1622float2(*(const __nv_bfloat162 *)&u.y);
    return make_float4(a.x, a.y, b.x, b.y);
}

// VPT float4 chunks per thread: dim / 4 <= VPT * blockDim.x.
template <bool ADD, typename TX, int VPT>
static __global__ void __launch_bounds__(KVF_RMS_THREADS)
s_rmsnorm4(bf16 *__restrict__ out,         // (n, dim)
           float *__restrict__ res,        // (n, dim): the input; with ADD updated to res + x
           const TX *__restrict__ x,       // (n, dim) or NULL without ADD
           const float *__restrict__ w,    // (dim)
           int dim, float eps) {
    __shared__ float scratch[32];
    const size_t row = (size_t)blockIdx.x * dim;
    const int n4 = dim >> 2;
    float4 v[VPT], a[VPT];
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        v[i] = a[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (c < n4) {
            v[i] = s_ld4(res + row + 4 * c);
            if (ADD) a[i] = s_ld4(x + row + 4 * c);
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (ADD) {
            v[i].x += a[i].x, v[i].y += a[i].y, v[i].z += a[i].z, v[i].w += a[i].w;
            if (c < n4) *(float4 *)(res + row + 4 * c) = v[i];
        }
        ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    }
    ss = kvf_block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c >= n4) continue;
        const float4 ww = *(const float4 *)(w + 4 * c);
        __nv_bfloat162 lo = __floats2bfloat162_rn(v[i].x * scale * ww.x, v[i].y * scale * ww.y);
        __nv_bfloat162 hi = __floats2bfloat162_rn(v[i].z * scale * ww.z, v[i].w * scale * ww.w);
        uint2 u;
        u.x = *(uint32_t *)&lo, u.y = *(uint32_t *)&hi;
        *(uint2 *)(out + row + 4 * c) = u;
    }
}

// Launches s_rmsnorm4 when dim % 4 == 0 and every pointer is 16-byte aligned; returns 0 if it did not.
template <bool ADD, typename TX>
static int s_launch4(bf16 *out, float *res, const TX *x, const float *w, int n, int dim, float eps,
                     cudaStream_t stream) {
    const uintptr_t al = (uintptr_t)out | (uintptr_t)res | (uintptr_t)x | (uintptr_t)w;
    if (dim % 4 || al % 16) return 0;
    const int n4 = dim / 4;
    const int threads = n4 >= KVF_RMS_THREADS ? KVF_RMS_THREADS : (n4 + 31) / 32 * 32;
    const int vpt = (n4 + threads - 1) / threads;
#define S_V(V)                                                                                        \
    if (vpt <= V) {                                                                                   \
        s_rmsnorm4<ADD, TX, V><<<n, threads, 0, stream>>>(out, res, x, w, dim, eps);                  \
        return 1;                                                                                     \
    }
    S_V(1) S_V(2) S_V(4) S_V(8) S_V(16)
#undef S_V
    return 0;
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
    if (!s_launch4<false, float>((bf16 *)out, (float *)x, (const float *)NULL, w, n, dim, eps, stream))
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
    if (!s_launch4<true, bf16>((bf16 *)out, residual, (const bf16 *)x, w, n, dim, eps, stream))
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
    if (!s_launch4<true, float>((bf16 *)out, residual, x, w, n, dim, eps, stream))
        s_rmsnorm<true, float><<<n, s_threads(dim), 0, stream>>>((bf16 *)out, residual, x, w, dim, eps);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
