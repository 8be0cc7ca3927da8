// common/fp8.h — the FP8 E4M3 format of the optional FP8 KV cache, on the host:
// 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, 0x7f and
// 0xff are NaN, the largest finite value is 448 (the "E4M3FN" of the OCP FP8
// spec and of CUDA's __nv_fp8_e4m3). Encoding rounds to nearest, ties to even,
// and saturates: finite values and infinities past 448 become +-448 (CUDA's
// __NV_SATFINITE), NaN becomes 0x7f. The kernels (kernels/fp8.cuh) and the cpu
// backend produce the same bytes for the same float.
#ifndef KVF_COMMON_FP8_H
#define KVF_COMMON_FP8_H

#include <stdint.h>

#define KVF_FP8_E4M3_MAX 448.0f

// The nearest E4M3 byte to x (ties to even), saturated to +-448; NaN -> 0x7f.
uint8_t kvf_fp8_e4m3_from_float(float x);

// The value of an E4M3 byte (exact in a float); 0x7f / 0xff -> NaN.
float kvf_fp8_e4m3_to_float(uint8_t b);

// x rounded to the nearest E4M3 value (what an FP8 KV cache keeps of x).
static inline float kvf_fp8_e4m3_round(float x) { return kvf_fp8_e4m3_to_float(kvf_fp8_e4m3_from_float(x)); }

// FP8 GEMMs (--quantization fp8) keep each weight row and each activation row as
// E4M3 bytes times one f32 scale per row: scale = the row's largest |x| / 448 (1 for
// a row of zeros), byte = kvf_fp8_e4m3_from_float(x * inv), inv = 448 / amax (1 for a
// row of zeros; a multiply, not a division, for the kernels' sake). The kernels
// compute the same scale and bytes (kernels/fp8.cuh).
static inline float kvf_fp8_row_scale(float amax) { return amax > 0.0f ? amax / KVF_FP8_E4M3_MAX : 1.0f; }
static inline float kvf_fp8_row_inv(float amax) { return amax > 0.0f ? KVF_FP8_E4M3_MAX / amax : 1.0f; }

// x (d) replaced in place by what its E4M3 row keeps: scale * e4m3(x / scale).
// Returns the scale.
float kvf_fp8_quant_row(float *x, int64_t d);

#endif
