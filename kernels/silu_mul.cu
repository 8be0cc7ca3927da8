// kernels/silu_mul.cu — see silu_mul.h. When ff and ld are multiples of 8 and
// the pointers 16-byte aligned, each thread does 8 columns with 16-byte (bf16)
// or 2 x 16-byte (f32) loads (the scalar loop moved ~2.1 TB/s on an H200).
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/silu_mul.h"
#include "kernels/util.cuh"

template <typename TIn>
static __global__ void s_silu_mul(bf16 *out,       // (n, ff)
                                  const TIn *gate, // (n, ld)
                                  const TIn *up,   // (n, ld)
                                  int ff, int ld) {
    kvf_pdl_wait();
    const size_t t = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < ff; i += gridDim.x * blockDim.x) {
        float g = kvf_ld(gate + t * ld + i);
        float u = kvf_ld(up + t * ld + i);
        out[t * ff + i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);
    }
}

static __device__ __forceinline__ void s_ld8(float v[8], const float *p) {
    const float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
static __device__ __forceinline__ void s_ld8(float v[8], const bf16 *p) {
    const uint4 u = *(const uint4 *)p;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(h[i]);
        v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
}

// blk > 0: gate and up columns in blocks of blk (kvf_silu_mul_blocked), up = gate + blk.
template <typename TIn>
static __global__ void s_silu_mul8(bf16 *out,       // (n, ff)
                                   const TIn *gate, // (n, ld)
                                   const TIn *up,   // (n, ld)
                                   int ff, int ld, int blk) {
    kvf_pdl_wait();
    const size_t t = blockIdx.y;
    const int n8 = ff >> 3;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < n8; c += gridDim.x * blockDim.x) {
        float g[8], u[8];
        const int col = blk ? 8 * c / blk * 2 * blk + 8 * c % blk : 8 * c;
        s_ld8(g, gate + t * ld + col);
        s_ld8(u, up + t * ld + col);
        uint4 o;
        uint32_t *ow = (uint32_t *)&o;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float a = g[2 * i] / (1.0f + expf(-g[2 * i])) * u[2 * i];
            const float b = g[2 * i + 1] / (1.0f + expf(-g[2 * i + 1])) * u[2 * i + 1];
            __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
            ow[i] = *(uint32_t *)&h;
        }
        *(uint4 *)(out + t * ff + 8 * c) = o;
    }
}

// The 8-column kernel when shapes and pointers allow it; returns 0 if it did not launch.
template <typename TIn>
static int s_launch8(bf16 *out, const TIn *gate, const TIn *up, int n, int ff, int ld, cudaStream_t stream) {
    const uintptr_t al = (uintptr_t)out | (uintptr_t)gate | (uintptr_t)up;
    if (ff % 8 || ld % 8 || al % 16) return 0;
    unsigned gx = kvf_cdiv(ff / 8, 256);
    if (gx > 64) gx = 64;
    kvf_launch(s_silu_mul8<TIn>, dim3(gx, n), 256, 0, stream, out, gate, up, ff, ld, 0);
    return 1;
}

extern "C" int kvf_silu_mul_blocked(uint16_t *out, const uint16_t *gu, int n, int ff, int block, cudaStream_t stream,
                                    kvf_err_t *err) {
    KVF_REQUIRE(out && gu && n >= 0 && n <= 65535 && block > 0 && block % 8 == 0 && ff > 0 && ff % block == 0, err);
    KVF_REQUIRE(((uintptr_t)out | (uintptr_t)gu) % 16 == 0, err);
    if (n == 0) return 0;
    unsigned gx = kvf_cdiv(ff / 8, 256);
    if (gx > 64) gx = 64;
    kvf_launch(s_silu_mul8<bf16>, dim3(gx, n), 256, 0, stream, (bf16 *)out, (const bf16 *)gu, (const bf16 *)gu + block,
               ff, 2 * ff, block);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_silu_mul(uint16_t *out, const uint16_t *gate, const uint16_t *up, int n, int ff, int ld,
                            cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && gate && up, err);
    KVF_REQUIRE(n >= 0 && n <= 65535 && ff > 0 && ld >= ff, err);
    if (n == 0) return 0;
    unsigned gx = kvf_cdiv(ff, 256);
    if (gx > 64) gx = 64;
    if (!s_launch8<bf16>((bf16 *)out, (const bf16 *)gate, (const bf16 *)up, n, ff, ld, stream))
        kvf_launch(s_silu_mul<bf16>, dim3(gx, n), 256, 0, stream, (bf16 *)out, (const bf16 *)gate, (const bf16 *)up, ff,
                   ld);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_silu_mul_f32(uint16_t *out, const float *gate, const float *up, int n, int ff, int ld,
                                cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && gate && up, err);
    KVF_REQUIRE(n >= 0 && n <= 65535 && ff > 0 && ld >= ff, err);
    if (n == 0) return 0;
    unsigned gx = kvf_cdiv(ff, 256);
    if (gx > 64) gx = 64;
    if (!s_launch8<float>((bf16 *)out, gate, up, n, ff, ld, stream))
        kvf_launch(s_silu_mul<float>, dim3(gx, n), 256, 0, stream, (bf16 *)out, gate, up, ff, ld);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

// FP8 output: a block per row, VPT 8-column chunks a thread kept in registers
// until the row's amax is known; out is e4m3(row x 448 / amax). Up to 1024 threads a
// row, few chunks each: with 256 threads and 7 chunks (ff 14336) the loads of a
// thread waited on each other (13.1 ms a 8192-token step against 5.4 for bf16 out).
template <int VPT, int MINB>
static __global__ void __launch_bounds__(1024, MINB)
s_silu_mul_fp8(kvf_fp8_t *__restrict__ out,       // (n, ff)
               float *__restrict__ row_scale,     // (n)
               const bf16 *__restrict__ gate,     // (n, ld)
               const bf16 *__restrict__ up,       // (n, ld)
               int ff, int ld) {
    kvf_pdl_wait();
    __shared__ float scratch[32];
    const size_t t = blockIdx.x;
    const int n8 = ff >> 3;
    float y[VPT][8];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c >= n8) continue;
        float g[8], u[8];
        s_ld8(g, gate + t * ld + 8 * c);
        s_ld8(u, up + t * ld + 8 * c);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            y[i][j] = g[j] / (1.0f + expf(-g[j])) * u[j];
            amax = fmaxf(amax, fabsf(y[i][j]));
        }
    }
    amax = kvf_block_max(amax, scratch);
    const float s = kvf_fp8_row_inv(amax);  // the inverse scale
    if (threadIdx.x == 0) row_scale[t] = kvf_fp8_row_scale(amax);
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c >= n8) continue;
        uint2 o;
        o.x = kvf_fp8x2_from_float2(y[i][0] * s, y[i][1] * s) |
              (uint32_t)kvf_fp8x2_from_float2(y[i][2] * s, y[i][3] * s) << 16;
        o.y = kvf_fp8x2_from_float2(y[i][4] * s, y[i][5] * s) |
              (uint32_t)kvf_fp8x2_from_float2(y[i][6] * s, y[i][7] * s) << 16;
        *(uint2 *)(out + t * ff + 8 * c) = o;
    }
}

extern "C" int kvf_silu_mul_fp8(uint8_t *out, float *row_scale, const uint16_t *gate, const uint16_t *up, int n,
                                int ff, int ld, cudaStream_t stream, kvf_err_t *err) {
    return kvf_silu_mul_fp8_variant(KVF_SILU_FP8_DEFAULT, out, row_scale, gate, up, n, ff, ld, stream, err);
}

extern "C" int kvf_silu_mul_fp8_variant(int variant, uint8_t *out, float *row_scale, const uint16_t *gate,
                                        const uint16_t *up, int n, int ff, int ld, cudaStream_t stream,
                                        kvf_err_t *err) {
    KVF_REQUIRE(variant == 0 || variant == 1, err);
    KVF_REQUIRE(out && row_scale && gate && up, err);
    KVF_REQUIRE(n >= 0 && ff > 0 && ld >= ff, err);
    const uintptr_t al = (uintptr_t)out | (uintptr_t)gate | (uintptr_t)up;
    KVF_REQUIRE(ff % 8 == 0 && ld % 8 == 0 && al % 16 == 0 && ff <= 4 * 8 * 1024, err);
    if (n == 0) return 0;
    const int n8 = ff / 8, threads = n8 >= 1024 ? 1024 : (n8 + 31) / 32 * 32, vpt = (n8 + threads - 1) / threads;
    const bf16 *g = (const bf16 *)gate, *u = (const bf16 *)up;
    // variant 1: rows of up to 2 chunks a thread capped at 32 registers (a few bytes spill), so that
    // two blocks share an SM and one's loads overlap the other's barrier; variant 0: one block an SM
#define S_V(V, M) \
    else if (vpt <= V) kvf_launch(s_silu_mul_fp8<V, M>, n, threads, 0, stream, out, row_scale, g, u, ff, ld);
    if (variant == 1 && vpt <= 2) {
        if (0) {
        }
        S_V(1, 2) S_V(2, 2)
    } else {
        if (0) {
        }
        S_V(1, 1) S_V(2, 1) S_V(4, 1)
    }
#undef S_V
    KVF_LAUNCH_CHECK(err);
    return 0;
}
