// kernels/gemv.cu — see gemv.h. Grid: one warp per R output columns (4 warps a
// block). A lane walks its columns' W rows in 16-byte chunks, 32 chunks apart, U
// chunks a row at a time in flight (ld.global.nc.L1::no_allocate: W is read once,
// x stays in L1 for the other warps), and multiplies each by the same chunk of
// every row of x. R = 4 where that leaves a few warps an SM, else 2 (o, down: 4096
// columns).
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/gemv.h"
#include "kernels/util.cuh"

#define GV_WARPS 4
#define GV_U 2

static __device__ __forceinline__ uint4 s_ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// The 8 bf16 of v as f32 (a bf16 is the top half of its f32).
static __device__ __forceinline__ void s_unpack(uint4 v, float f[8]) {
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

template <int M, int R>
static __device__ __forceinline__ void s_fma_chunk(float (&acc)[R][M], const uint4 (&wv)[R], const bf16 *__restrict__ x,
                                                   int d_in, int c) {
#pragma unroll
    for (int m = 0; m < M; m++) {
        float xf[8];
        s_unpack(__ldg((const uint4 *)(x + (size_t)m * d_in) + c), xf);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float wf[8];
            s_unpack(wv[r], wf);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[r][m] = fmaf(wf[i], xf[i], acc[r][m]);
        }
    }
}

template <int M, int R, bool F32>
static __global__ void __launch_bounds__(32 * GV_WARPS)
s_gemv(void *__restrict__ y,          // (M, d_out) f32 (F32) or bf16
       const bf16 *__restrict__ x,    // (M, d_in)
       const bf16 *__restrict__ w,    // (d_out, d_in)
       int d_in, int d_out, float beta) {
    kvf_pdl_wait();
    const int lane = threadIdx.x & 31;
    const int o0 = (blockIdx.x * GV_WARPS + (threadIdx.x >> 5)) * R;  // this warp's first column
    if (o0 >= d_out) return;
    const int k8 = d_in / 8;
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) wr[r] = (const uint4 *)(w + (size_t)(o0 + r < d_out ? o0 + r : d_out - 1) * d_in);
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[r][m] = 0.0f;
    int c = lane;
    for (; c + 32 * (GV_U - 1) < k8; c += 32 * GV_U) {  // GV_U chunks of each row in flight
        uint4 wv[GV_U][R];
#pragma unroll
        for (int u = 0; u < GV_U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) wv[u][r] = s_ld_stream(wr[r] + c + 32 * u);
#pragma unroll
        for (int u = 0; u < GV_U; u++) s_fma_chunk<M, R>(acc, wv[u], x, d_in, c + 32 * u);
    }
    for (; c < k8; c += 32) {
        uint4 wv[R];
#pragma unroll
        for (int r = 0; r < R; r++) wv[r] = s_ld_stream(wr[r] + c);
        s_fma_chunk<M, R>(acc, wv, x, d_in, c);
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[r][m] = kvf_warp_sum(acc[r][m]);
    // lane r M + m stores column o0 + r of row m (R M <= 32)
    float v = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < M; m++)
            if (lane == r * M + m) v = acc[r][m];
    const int r = lane / M, m = lane % M;
    if (lane >= R * M || o0 + r >= d_out) return;
    const size_t i = (size_t)m * d_out + o0 + r;
    if (F32) {
        float *yf = (float *)y;
        yf[i] = beta != 0.0f ? v + beta * yf[i] : v;
    } else {
        bf16 *yb = (bf16 *)y;
        yb[i] = __float2bfloat16_rn(beta != 0.0f ? v + beta * __bfloat162float(yb[i]) : v);
    }
}

template <int M>
static void s_launch(void *y, int f32, const bf16 *x, const bf16 *w, int d_in, int d_out, float beta,
                     cudaStream_t stream) {
    int sms = 132, dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int r4 = d_out / 4 >= 8 * sms;  // R 4 leaves >= 8 warps an SM
    const unsigned blocks = kvf_cdiv(d_out, (long long)GV_WARPS * (r4 ? 4 : 2));
    if (r4 && f32) kvf_launch(s_gemv<M, 4, true>, blocks, 32 * GV_WARPS, 0, stream, y, x, w, d_in, d_out, beta);
    if (r4 && !f32) kvf_launch(s_gemv<M, 4, false>, blocks, 32 * GV_WARPS, 0, stream, y, x, w, d_in, d_out, beta);
    if (!r4 && f32) kvf_launch(s_gemv<M, 2, true>, blocks, 32 * GV_WARPS, 0, stream, y, x, w, d_in, d_out, beta);
    if (!r4 && !f32) kvf_launch(s_gemv<M, 2, false>, blocks, 32 * GV_WARPS, 0, stream, y, x, w, d_in, d_out, beta);
}

extern "C" int kvf_gemv(void *y, kvf_gemm_out_t y_type, const uint16_t *x, const uint16_t *w, int n, int d_in,
                        int d_out, float beta, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(y && x && w, err);
    KVF_REQUIRE(n >= 1 && n <= KVF_GEMV_MAX_ROWS && d_in > 0 && d_in % 8 == 0 && d_out > 0, err);
    KVF_REQUIRE(y_type == KVF_GEMM_OUT_BF16 || y_type == KVF_GEMM_OUT_F32, err);
    KVF_REQUIRE(((uintptr_t)x | (uintptr_t)w) % 16 == 0, err);
    const int f32 = y_type == KVF_GEMM_OUT_F32;
    const bf16 *xb = (const bf16 *)x, *wb = (const bf16 *)w;
    switch (n) {
    case 1: s_launch<1>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    case 2: s_launch<2>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    case 3: s_launch<3>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    case 4: s_launch<4>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    case 5: s_launch<5>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    case 6: s_launch<6>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    case 7: s_launch<7>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    default: s_launch<8>(y, f32, xb, wb, d_in, d_out, beta, stream); break;
    }
    KVF_LAUNCH_CHECK(err);
    return 0;
}
