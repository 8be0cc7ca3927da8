// kernels/convert.cu — see convert.h.
#include "kernels/check.h"
#include "kernels/convert.h"
#include "kernels/util.cuh"

template <typename TOut, typename TIn>
static __global__ void s_convert(TOut *out, const TIn *in, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        kvf_st(out + i, kvf_ld(in + i));
}

template <typename TOut>
static __global__ void s_fill_random(TOut *out, size_t n, uint64_t seed, float offset, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        kvf_st(out + i, offset + scale * (2.0f * kvf_uniform01(seed, i) - 1.0f));
}

static unsigned s_grid(size_t n) {
    size_t g = (n + 255) / 256;
    return (unsigned)(g > 65536 ? 65536 : (g ? g : 1));
}

extern "C" int kvf_convert_f32_to_bf16(uint16_t *out, const float *in, size_t n, cudaStream_t stream,
                                       kvf_err_t *err) {
    KVF_REQUIRE(out && in, err);
    if (n == 0) return 0;
    s_convert<bf16, float><<<s_grid(n), 256, 0, stream>>>((bf16 *)out, in, n);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_convert_bf16_to_f32(float *out, const uint16_t *in, size_t n, cudaStream_t stream,
                                       kvf_err_t *err) {
    KVF_REQUIRE(out && in, err);
    if (n == 0) return 0;
    s_convert<float, bf16><<<s_grid(n), 256, 0, stream>>>(out, (const bf16 *)in, n);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_fill_random_bf16(uint16_t *out, size_t n, uint64_t seed, float offset, float scale,
                                    cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out, err);
    if (n == 0) return 0;
    s_fill_random<bf16><<<s_grid(n), 256, 0, stream>>>((bf16 *)out, n, seed, offset, scale);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_fill_random_f32(float *out, size_t n, uint64_t seed, float offset, float scale,
                                   cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out, err);
    if (n == 0) return 0;
    s_fill_random<float><<<s_grid(n), 256, 0, stream>>>(out, n, seed, offset, scale);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
