// common/fp8.c — see fp8.h.
#include "common/fp8.h"

#include <math.h>
#include <string.h>

// Bit arithmetic on the float: the cpu backend rounds every weight and activation of
// --quantization fp8 with it (frexp and rounding in double took 8.2 ns a value, this
// 3.4, on this machine at -O2; tests/test_fp8.c compares the two on 3.3M floats).
uint8_t kvf_fp8_e4m3_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7f;           // NaN
    if (a >= 0x43e00000u) return sign | 0x7e;   // |x| >= 448, infinities: saturate (464 and up round past 448)
    if (a < 0x3c800000u) {                      // |x| < 2^-6: subnormal, m x 2^-9 with m = 0..8
        float f;                                // (m = 8 is the smallest normal, 0x08: the same bits)
        memcpy(&f, &a, sizeof f);
        return sign | (uint8_t)nearbyintf(f * 512.0f);  // exact product; default rounding: ties to even
    }
    // normal: keep 3 of the 23 mantissa bits, rounding the 20 dropped to nearest even
    // (a carry moves into the exponent, as it should)
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    const uint32_t code = (((r >> 23) - 127u + 7u) << 3) | ((r >> 20) & 7u);
    return sign | (uint8_t)(code > 0x7eu ? 0x7eu : code);
}

float kvf_fp8_e4m3_to_float(uint8_t b) {
    const uint32_t e = (b >> 3) & 0xfu, m = b & 7u;
    if (e == 0xf && m == 7) return NAN;
    float v;
    if (e == 0) {
        v = (float)m * 0x1p-9f;
    } else {
        const uint32_t bits = ((e - 7u + 127u) << 23) | (m << 20);
        memcpy(&v, &bits, sizeof v);
    }
    return (b & 0x80) ? -v : v;
}

float kvf_fp8_quant_row(float *x, int64_t d) {
    float amax = 0.0f;
    for (int64_t i = 0; i < d; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float s = kvf_fp8_row_scale(amax), inv = kvf_fp8_row_inv(amax);
    for (int64_t i = 0; i < d; i++) x[i] = kvf_fp8_e4m3_to_float(kvf_fp8_e4m3_from_float(x[i] * inv)) * s;
    return s;
}
