// tests/test_fp8.c — the host E4M3 codec (common/fp8.h) of the FP8 KV cache and
// the FP8 linear layers: every byte's value, round trips, ties to even,
// saturation, the nearest value against a brute-force search over all 254 finite
// codes, and the bit codec against the straightforward one it replaced.
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/fp8.h"

Test(fp8, every_byte_has_the_formats_value) {
    for (int b = 0; b < 256; b++) {
        const float v = kvf_fp8_e4m3_to_float((uint8_t)b);
        const int e = (b >> 3) & 15, m = b & 7;
        if ((b & 0x7f) == 0x7f) {
            cr_assert(isnan(v), "byte 0x%02x must be NaN", b);
            continue;
        }
        const double want = (e == 0 ? m / 8.0 * pow(2, -6) : (1.0 + m / 8.0) * pow(2, e - 7)) * (b & 0x80 ? -1 : 1);
        cr_assert_eq((double)v, want, "byte 0x%02x: %g, want %g", b, v, want);
    }
    cr_assert_eq(kvf_fp8_e4m3_to_float(0x7e), 448.0f);
    cr_assert_eq(kvf_fp8_e4m3_to_float(0x01), 0x1p-9f);
    cr_assert_eq(kvf_fp8_e4m3_to_float(0x08), 0x1p-6f);
}

Test(fp8, every_finite_byte_round_trips) {
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f) continue;
        const uint8_t back = kvf_fp8_e4m3_from_float(kvf_fp8_e4m3_to_float((uint8_t)b));
        cr_assert_eq(back, b, "byte 0x%02x came back as 0x%02x", b, back);
    }
}

Test(fp8, ties_go_to_the_even_code) {
    for (int b = 0; b < 0x7e; b++) {  // positive neighbours b, b + 1
        const float lo = kvf_fp8_e4m3_to_float((uint8_t)b), hi = kvf_fp8_e4m3_to_float((uint8_t)(b + 1));
        const float mid = (float)(((double)lo + hi) / 2);  // exact: a few bits past E4M3's
        const int even = (b & 1) ? b + 1 : b;
        cr_assert_eq(kvf_fp8_e4m3_from_float(mid), even, "tie between 0x%02x and 0x%02x", b, b + 1);
        cr_assert_eq(kvf_fp8_e4m3_from_float(-mid), 0x80 | even);
        cr_assert_eq(kvf_fp8_e4m3_from_float(nextafterf(mid, 0.0f)), b);
        cr_assert_eq(kvf_fp8_e4m3_from_float(nextafterf(mid, 1e9f)), b + 1);
    }
}

Test(fp8, saturates_and_keeps_nan) {
    cr_assert_eq(kvf_fp8_e4m3_from_float(448.0f), 0x7e);
    cr_assert_eq(kvf_fp8_e4m3_from_float(460.0f), 0x7e);
    cr_assert_eq(kvf_fp8_e4m3_from_float(1e30f), 0x7e);
    cr_assert_eq(kvf_fp8_e4m3_from_float(INFINITY), 0x7e);
    cr_assert_eq(kvf_fp8_e4m3_from_float(-INFINITY), 0xfe);
    cr_assert_eq(kvf_fp8_e4m3_from_float(NAN), 0x7f);
    cr_assert_eq(kvf_fp8_e4m3_from_float(-0.0f), 0x80);
    cr_assert_eq(kvf_fp8_e4m3_from_float(0x1p-11f), 0x00);  // below half the smallest subnormal
    cr_assert_eq(kvf_fp8_e4m3_from_float(0x1p-10f), 0x00);  // the tie with 0 goes to 0 (even)
    cr_assert_eq(kvf_fp8_e4m3_round(1.0f / 3.0f), 0.34375f);
}

Test(fp8, is_the_nearest_value) {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 200000; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        // magnitudes from 2^-12 to 2^9: subnormals, normals and the saturated range
        const double mag = pow(2.0, -12.0 + 21.0 * (double)(s >> 11) / 9007199254740992.0);
        const float x = (float)((s & 1) ? -mag : mag);
        const float got = kvf_fp8_e4m3_round(x);
        double best = INFINITY;
        for (int b = 0; b < 256; b++) {
            if ((b & 0x7f) == 0x7f) continue;
            const double d = fabs((double)kvf_fp8_e4m3_to_float((uint8_t)b) - x);
            if (d < best) best = d;
        }
        if (fabs(x) <= 448.0f) cr_assert_eq(fabs((double)got - x), best, "x %a: got %a", x, got);
        else cr_assert_eq(fabsf(got), 448.0f, "x %a saturates", x);
    }
}

// The codec against the straightforward one it replaced (frexp, rounding in double):
// every float from 2^-14 to 2^10 at a stride of 61 ulps, both signs, and the
// midpoints between neighbouring codes with the floats next to them.
static uint8_t s_ref_from_float(float x) {
    if (isnan(x)) return 0x7f;
    const uint8_t sign = signbit(x) ? 0x80 : 0x00;
    const double a = fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;
    if (a < 0x1p-6) return sign | (uint8_t)nearbyint(a * 0x1p9);
    int e;
    const double f = frexp(a, &e);
    e -= 1;
    int q = (int)nearbyint((2.0 * f - 1.0) * 8.0);
    if (q == 8) q = 0, e += 1;
    const int code = ((e + 7) << 3) | q;
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

Test(fp8, bit_codec_equals_the_reference) {
    size_t n = 0;
    for (float x = 0x1p-14f; x < 0x1p10f; n++) {
        cr_assert_eq(kvf_fp8_e4m3_from_float(x), s_ref_from_float(x), "x %a", x);
        cr_assert_eq(kvf_fp8_e4m3_from_float(-x), s_ref_from_float(-x), "x %a", -x);
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        u += 61;
        memcpy(&x, &u, sizeof x);
    }
    for (int b = 0; b < 0x7e; b++) {
        const double lo = kvf_fp8_e4m3_to_float((uint8_t)b), hi = kvf_fp8_e4m3_to_float((uint8_t)(b + 1));
        const float mid = (float)((lo + hi) / 2);
        const float xs[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, 1e9f)};
        for (int i = 0; i < 3; i++)
            cr_assert_eq(kvf_fp8_e4m3_from_float(xs[i]), s_ref_from_float(xs[i]), "x %a", xs[i]);
    }
    cr_assert_gt(n, 2000000u, "%zu floats compared", n);
}
