// kernels/silu_mul.cu — see silu_mul.h.
#include "kernels/check.h"
#include "kernels/silu_mul.h"
#include "kernels/util.cuh"

template <typename TIn>
static __global__ void s_silu_mul(bf16 *out,       // (n, ff)
                                  const TIn *gate, // (n, ld)
                                  const TIn *up,   // (n, ld)
                                  int ff, int ld) {
    const size_t t = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < ff; i += gridDim.x * blockDim.x) {
        float g = kvf_ld(gate + t * ld + i);
        float u = kvf_ld(up + t * ld + i);
        out[t * ff + i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);
    }
}

extern "C" int kvf_silu_mul(uint16_t *out, const uint16_t *gate, const uint16_t *up, int n, int ff, int ld,
                            cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && gate && up, err);
    KVF_REQUIRE(n >= 0 && n <= 65535 && ff > 0 && ld >= ff, err);
    if (n == 0) return 0;
    unsigned gx = kvf_cdiv(ff, 256);
    if (gx > 64) gx = 64;
    s_silu_mul<bf16><<<dim3(gx, n), 256, 0, stream>>>((bf16 *)out, (const bf16 *)gate, (const bf16 *)up, ff, ld);
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
    s_silu_mul<float><<<dim3(gx, n), 256, 0, stream>>>((bf16 *)out, gate, up, ff, ld);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
