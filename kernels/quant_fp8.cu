// kernels/quant_fp8.cu — see quant_fp8.h. A block per row of up to 1024 threads; a
// thread keeps VPT 8-value chunks (one 16-byte load each) in registers until the
// row's amax is known, then writes 8 bytes a chunk.
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/quant_fp8.h"
#include "kernels/util.cuh"

#define KVF_QUANT_THREADS 1024  // a block a row: many threads, few chunks each (latency hiding)

// The two bf16 values of a 32-bit word as floats (a bf16 is a float's high half).
static __device__ __forceinline__ float s_lo(uint32_t u) { return __uint_as_float(u << 16); }
static __device__ __forceinline__ float s_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

template <int VPT>
static __global__ void __launch_bounds__(KVF_QUANT_THREADS)
s_quant_rows(kvf_fp8_t *__restrict__ out,     // (n, d)
             float *__restrict__ row_scale,   // (n)
             const bf16 *__restrict__ x,      // (n, d)
             int d) {
    kvf_pdl_wait();
    __shared__ float scratch[32];
    const size_t row = (size_t)blockIdx.x * d;
    const int n8 = d >> 3;
    uint4 v[VPT];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        v[i] = make_uint4(0, 0, 0, 0);
        if (c < n8) v[i] = *(const uint4 *)(x + row + 8 * c);
        const uint32_t u[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
        for (int j = 0; j < 4; j++) amax = fmaxf(amax, fmaxf(fabsf(s_lo(u[j])), fabsf(s_hi(u[j]))));
    }
    amax = kvf_block_max(amax, scratch);
    const float s = kvf_fp8_row_inv(amax);  // the inverse scale
    if (threadIdx.x == 0) row_scale[blockIdx.x] = kvf_fp8_row_scale(amax);
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c >= n8) continue;
        const uint32_t u[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
        uint32_t w[2];
#pragma unroll
        for (int j = 0; j < 2; j++)
            w[j] = kvf_fp8x2_from_float2(s_lo(u[2 * j]) * s, s_hi(u[2 * j]) * s) |
                   (uint32_t)kvf_fp8x2_from_float2(s_lo(u[2 * j + 1]) * s, s_hi(u[2 * j + 1]) * s) << 16;
        *(uint2 *)(out + row + 8 * c) = make_uint2(w[0], w[1]);
    }
}

extern "C" int kvf_quant_fp8_rows(uint8_t *out, float *row_scale, const uint16_t *x, int64_t n, int d,
                                  cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && row_scale && x, err);
    KVF_REQUIRE(n >= 0 && n <= INT32_MAX && d > 0, err);
    const uintptr_t al = (uintptr_t)out | (uintptr_t)x;
    KVF_REQUIRE(d % 8 == 0 && d <= 4 * 8 * KVF_QUANT_THREADS && al % 16 == 0, err);
    if (n == 0) return 0;
    const int n8 = d / 8, threads = n8 >= KVF_QUANT_THREADS ? KVF_QUANT_THREADS : (n8 + 31) / 32 * 32;
    const int vpt = (n8 + threads - 1) / threads;
    const unsigned grid = (unsigned)n;
#define S_V(V) \
    else if (vpt <= V) kvf_launch(s_quant_rows<V>, grid, threads, 0, stream, out, row_scale, (const bf16 *)x, d);
    if (0) {
    }
    S_V(1) S_V(2) S_V(4)
#undef S_V
    KVF_LAUNCH_CHECK(err);
    return 0;
}
