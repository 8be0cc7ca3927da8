// common/fp8.c — see fp8.h.
#include "common/fp8.h"

#include <math.h>

uint8_t kvf_fp8_e4m3_from_float(float x) {
    if (isnan(x)) return 0x7f;
    const uint8_t sign = signbit(x) ? 0x80 : 0x00;
    const double a = fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;  // saturate (464 and up would round past 448 anyway)
    if (a < 0x1p-6) {
        // subnormal: m x 2^-9, m = 0..7; m = 8 is the smallest normal (0x08): the same bits
        return sign | (uint8_t)nearbyint(a * 0x1p9);  // default rounding mode: ties to even
    }
    int e;
    const double f = frexp(a, &e);  // a = f x 2^e, f in [0.5, 1)
    e -= 1;                         // a = (2f) x 2^e, 2f in [1, 2), e in [-6, 8]
    int q = (int)nearbyint((2.0 * f - 1.0) * 8.0);  // 3 mantissa bits, ties to even
    if (q == 8) q = 0, e += 1;
    const int code = ((e + 7) << 3) | q;
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

float kvf_fp8_e4m3_to_float(uint8_t b) {
    const int e = (b >> 3) & 0xf, m = b & 7;
    if (e == 0xf && m == 7) return NAN;
    const float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    return (b & 0x80) ? -v : v;
}

float kvf_fp8_quant_row(float *x, int64_t d) {
    float amax = 0.0f;
    for (int64_t i = 0; i < d; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float s = kvf_fp8_row_scale(amax), inv = kvf_fp8_row_inv(amax);
    for (int64_t i = 0; i < d; i++) x[i] = kvf_fp8_e4m3_to_float(kvf_fp8_e4m3_from_float(x[i] * inv)) * s;
    return s;
}
