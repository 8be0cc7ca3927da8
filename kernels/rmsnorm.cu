// kernels/rmsnorm.cu — see rmsnorm.h. One block per row; the row is read once
// from global memory and kept in registers (dim <= KVF_RMS_MAX_PER_THREAD * threads).
// When dim is a multiple of 4 and the pointers 16-byte aligned, s_rmsnorm4 moves
// 16-byte vectors and issues all of a thread's loads before the first use (the
// scalar loop stored each residual before loading the next, one memory latency
// per element: measured 49.7 ms per 8192-token step for 65 calls, ~7x its bytes).
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/rmsnorm.h"
#include "kernels/util.cuh"

#define KVF_RMS_THREADS 256
#define KVF_RMS_PER_THREAD 64  // dim up to 16384

template <bool ADD, typename TX, typename TR = float>
static __global__ void __launch_bounds__(KVF_RMS_THREADS)
s_rmsnorm(bf16 *out,          // (n, dim)
          TR *res,            // (n, dim): the input (f32 or bf16); with ADD updated to res + x
          const TX *x,        // (n, dim) or NULL without ADD
          const float *w,     // (dim)
          int dim, float eps) {
    kvf_pdl_wait();
    __shared__ float scratch[32];
    const size_t row = (size_t)blockIdx.x * dim;
    float v[KVF_RMS_PER_THREAD];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < KVF_RMS_PER_THREAD; i++) {
        int d = threadIdx.x + i * blockDim.x;
        v[i] = 0.0f;
        if (d < dim) {
            float r = kvf_ld(res + row + d);
            if (ADD) {
                r += kvf_ld(x + row + d);
                kvf_st(res + row + d, r);
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

static __device__ __forceinline__ void s_st4(float *p, float4 y, float) { *(float4 *)p = y; }
static __device__ __forceinline__ void s_st4(bf16 *p, float4 y, float) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(y.x, y.y), hi = __floats2bfloat162_rn(y.z, y.w);
    uint2 u;
    u.x = *(uint32_t *)&lo, u.y = *(uint32_t *)&hi;
    *(uint2 *)p = u;
}
static __device__ __forceinline__ void s_st4(kvf_fp8_t *p, float4 y, float inv) {
    const uint32_t lo = kvf_fp8x2_from_float2(y.x * inv, y.y * inv), hi = kvf_fp8x2_from_float2(y.z * inv, y.w * inv);
    *(uint32_t *)p = lo | (hi << 16);
}

// VPT float4 chunks per thread: dim / 4 <= VPT * blockDim.x. TO bf16: out is the
// normed row; TO kvf_fp8_t: out is e4m3(normed row x 448 / amax) and
// row_scale[row] = the row's amax / 448 (common/fp8.h's kvf_fp8_row_scale).
template <bool ADD, typename TX, int VPT, typename TO, typename TR>
static __global__ void __launch_bounds__(KVF_RMS_THREADS)
s_rmsnorm4(TO *__restrict__ out,           // (n, dim)
           float *__restrict__ row_scale,  // (n) with TO kvf_fp8_t, else NULL
           TR *__restrict__ res,           // (n, dim): the input (f32 or bf16); with ADD updated to res + x
           const TX *__restrict__ x,       // (n, dim) or NULL without ADD
           const float *__restrict__ w,    // (dim)
           int dim, float eps) {
    kvf_pdl_wait();
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
            if (c < n4) s_st4(res + row + 4 * c, v[i], 1.0f);
        }
        ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    }
    ss = kvf_block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c >= n4) continue;
        const float4 ww = *(const float4 *)(w + 4 * c);
        v[i] = make_float4(v[i].x * scale * ww.x, v[i].y * scale * ww.y, v[i].z * scale * ww.z, v[i].w * scale * ww.w);
        if (sizeof(TO) == 1)
            amax = fmaxf(amax, fmaxf(fmaxf(fabsf(v[i].x), fabsf(v[i].y)), fmaxf(fabsf(v[i].z), fabsf(v[i].w))));
    }
    float inv = 1.0f;
    if (sizeof(TO) == 1) {
        amax = kvf_block_max(amax, scratch);
        inv = kvf_fp8_row_inv(amax);
        if (threadIdx.x == 0) row_scale[blockIdx.x] = kvf_fp8_row_scale(amax);
    }
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < n4) s_st4(out + row + 4 * c, v[i], inv);
    }
}

// Launches s_rmsnorm4 when dim % 4 == 0 and every pointer is 16-byte aligned; returns 0 if it did not.
template <bool ADD, typename TX, typename TO = bf16, typename TR = float>
static int s_launch4(TO *out, TR *res, const TX *x, const float *w, int n, int dim, float eps,
                     cudaStream_t stream, float *row_scale = NULL) {
    const uintptr_t al = (uintptr_t)out | (uintptr_t)res | (uintptr_t)x | (uintptr_t)w;
    if (dim % 4 || al % 16) return 0;
    const int n4 = dim / 4;
    const int threads = n4 >= KVF_RMS_THREADS ? KVF_RMS_THREADS : (n4 + 31) / 32 * 32;
    const int vpt = (n4 + threads - 1) / threads;
#define S_V(V)                                                                                              \
    if (vpt <= V) {                                                                                         \
        kvf_launch(s_rmsnorm4<ADD, TX, V, TO, TR>, n, threads, 0, stream, out, row_scale, res, x, w, dim, eps); \
        return 1;                                                                                           \
    }
    S_V(1) S_V(2) S_V(4) S_V(8) S_V(16)
#undef S_V
    return 0;
}

static int s_threads(int dim) {
    int t = ((dim + 31) / 32) * 32;
    return t > KVF_RMS_THREADS ? KVF_RMS_THREADS : t;
}

// out = rmsnorm(x) * w over a stream of TR (f32 or bf16); x is not written without ADD.
template <typename TR>
static int s_rmsnorm_plain(uint16_t *out, const TR *x, const float *w, int n, int dim, float eps,
                           cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    TR *xr = (TR *)x;
    if (!s_launch4<false, TR, bf16, TR>((bf16 *)out, xr, (const TR *)NULL, w, n, dim, eps, stream))
        kvf_launch(s_rmsnorm<false, TR, TR>, n, s_threads(dim), 0, stream, (bf16 *)out, xr, (const TR *)NULL, w, dim,
                   eps);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_rmsnorm(uint16_t *out, const float *x, const float *w, int n, int dim, float eps,
                           cudaStream_t stream, kvf_err_t *err) {
    return s_rmsnorm_plain<float>(out, x, w, n, dim, eps, stream, err);
}

extern "C" int kvf_rmsnorm_bf16(uint16_t *out, const uint16_t *x, const float *w, int n, int dim, float eps,
                                cudaStream_t stream, kvf_err_t *err) {
    return s_rmsnorm_plain<bf16>(out, (const bf16 *)x, w, n, dim, eps, stream, err);
}

extern "C" int kvf_rmsnorm_add(uint16_t *out, float *residual, const uint16_t *x, const float *w, int n,
                               int dim, float eps, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && residual && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    if (!s_launch4<true, bf16>((bf16 *)out, residual, (const bf16 *)x, w, n, dim, eps, stream))
        kvf_launch(s_rmsnorm<true, bf16>, n, s_threads(dim), 0, stream, (bf16 *)out, residual, (const bf16 *)x, w, dim,
                   eps);
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
        kvf_launch(s_rmsnorm<true, float>, n, s_threads(dim), 0, stream, (bf16 *)out, residual, x, w, dim, eps);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

// The FP8 forms need the vector kernel: dim a multiple of 4, pointers 16-byte aligned.
extern "C" int kvf_rmsnorm_fp8(uint8_t *out, float *row_scale, const float *x, const float *w, int n, int dim,
                               float eps, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && row_scale && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim % 4 == 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    KVF_REQUIRE(((uintptr_t)out | (uintptr_t)x | (uintptr_t)w) % 16 == 0, err);
    s_launch4<false, float, kvf_fp8_t>(out, (float *)x, (const float *)NULL, w, n, dim, eps, stream, row_scale);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

template <typename TX>
static int s_rmsnorm_add_fp8(uint8_t *out, float *row_scale, float *residual, const TX *x, const float *w, int n,
                             int dim, float eps, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && row_scale && residual && x && w, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && dim % 4 == 0 && dim <= KVF_RMS_THREADS * KVF_RMS_PER_THREAD, err);
    KVF_REQUIRE(eps >= 0.0f, err);
    if (n == 0) return 0;
    KVF_REQUIRE(((uintptr_t)out | (uintptr_t)residual | (uintptr_t)x | (uintptr_t)w) % 16 == 0, err);
    s_launch4<true, TX, kvf_fp8_t>(out, residual, x, w, n, dim, eps, stream, row_scale);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_rmsnorm_add_fp8(uint8_t *out, float *row_scale, float *residual, const uint16_t *x,
                                   const float *w, int n, int dim, float eps, cudaStream_t stream, kvf_err_t *err) {
    return s_rmsnorm_add_fp8<bf16>(out, row_scale, residual, (const bf16 *)x, w, n, dim, eps, stream, err);
}

extern "C" int kvf_rmsnorm_add_f32_fp8(uint8_t *out, float *row_scale, float *residual, const float *x,
                                       const float *w, int n, int dim, float eps, cudaStream_t stream,
                                       kvf_err_t *err) {
    return s_rmsnorm_add_fp8<float>(out, row_scale, residual, x, w, n, dim, eps, stream, err);
}
