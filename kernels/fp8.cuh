// kernels/fp8.cuh — FP8 E4M3 on the device, for the optional FP8 KV cache and FP8 GEMMs
// (internal, device-only, not a C header). The format, rounding and saturation
// are common/fp8.h's: round to nearest even, +-448 for anything larger, NaN
// 0x7f; every E4M3 value is exact in f16 and in bf16, so the widenings are exact.
#ifndef KVF_KERNELS_FP8_CUH
#define KVF_KERNELS_FP8_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

typedef uint8_t kvf_fp8_t;  // one E4M3 byte

#define KVF_FP8_E4M3_MAX_D 448.0f  // common/fp8.h's KVF_FP8_E4M3_MAX

// Two floats to two E4M3 bytes (lo in the low byte).
static __device__ __forceinline__ uint16_t kvf_fp8x2_from_float2(float lo, float hi) {
    return (uint16_t)__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}

// The scale of a row quantized to E4M3 (FP8 weights and activations, common/fp8.h's
// kvf_fp8_row_scale / kvf_fp8_row_inv): scale = amax / 448 (1 for a zero row), and the
// row is stored as e4m3(x * inv), inv = 448 / amax (1 for a zero row).
static __device__ __forceinline__ float kvf_fp8_row_scale(float amax) {
    return amax > 0.0f ? amax / KVF_FP8_E4M3_MAX_D : 1.0f;
}
static __device__ __forceinline__ float kvf_fp8_row_inv(float amax) {
    return amax > 0.0f ? KVF_FP8_E4M3_MAX_D / amax : 1.0f;
}

// Two E4M3 bytes to an f16x2 word (one instruction on sm_89+).
static __device__ __forceinline__ uint32_t kvf_fp8x2_to_f16x2(uint16_t v) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v, __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

// Two E4M3 bytes to a bf16x2 word (through f16 and f32, exact).
static __device__ __forceinline__ uint32_t kvf_fp8x2_to_bf16x2(uint16_t v) {
    const uint32_t h = kvf_fp8x2_to_f16x2(v);
    const float2 f = __half22float2(*(const __half2 *)&h);
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
    return *(const uint32_t *)&b;
}

// 16 E4M3 bytes (one 16-byte chunk of a cache row) to 16 bf16 values in two
// 16-byte chunks: out[0] the first 8, out[1] the last 8.
static __device__ __forceinline__ void kvf_fp8x16_to_bf16(uint4 in, uint4 out[2]) {
    const uint32_t w[4] = {in.x, in.y, in.z, in.w};
    uint32_t r[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        r[2 * i] = kvf_fp8x2_to_bf16x2((uint16_t)(w[i] & 0xffffu));
        r[2 * i + 1] = kvf_fp8x2_to_bf16x2((uint16_t)(w[i] >> 16));
    }
    out[0] = make_uint4(r[0], r[1], r[2], r[3]);
    out[1] = make_uint4(r[4], r[5], r[6], r[7]);
}

// A bf16x2 word as an f16x2 word, saturated to +-65504 (f16's largest finite).
static __device__ __forceinline__ uint32_t kvf_bf16x2_to_f16x2_sat(uint32_t w) {
    float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)&w);
    f.x = fminf(fmaxf(f.x, -65504.0f), 65504.0f);
    f.y = fminf(fmaxf(f.y, -65504.0f), 65504.0f);
    const __half2 h = __floats2half2_rn(f.x, f.y);
    return *(const uint32_t *)&h;
}

#endif
