// kernels/gemm_swiglu.cu — see gemm_swiglu.h.
//
// The persistent warp-specialized GEMM of kernels/gemm_ws.cuh (sm_90a) over x and W's
// interleaved gate/up rows: a 256-row tile of W is 128 gate + 128 up rows, so a
// thread's accumulator n8 block i (< 16) is gate column 8 i + 2 t (+1) and block
// i + 16 the up value of the same columns (kernels/wgmma.cuh's layout), and the
// epilogue forms silu(g) u in registers and writes the 128 output columns of the tile.
//
// The default (v5, H200, bench/RESULTS.md session 10): clusters of 2 CTAs on two row
// tiles share each W tile by TMA multicast, and the epilogue stages its outputs in
// shared memory for a TMA store. At 8192 x 4096 -> 2 x 14336: 2.82 ms, where cuBLASLt's
// gate/up GEMM alone took 2.80 and with silu_mul 2.96; the same kernel without its
// epilogue 2.72. At 512 rows it is slower than cuBLASLt (0.199 against 0.165 ms: 3.4
// waves of 128 x 256 tiles over 132 SMs), hence the cuda backend's row threshold.
#include <stdint.h>
#include <string.h>

#include "kernels/check.h"
#include "kernels/gemm_swiglu.h"
#include "kernels/gemm_ws.cuh"

#define S_STAGING (2 * 64 * KVF_SWIGLU_BLOCK * 2)  // TS: each consumer's 64 x 128 bf16 outputs, 2 swizzled halves

#if KVF_WG_AVAILABLE
// silu(g) = g / (1 + e^-g), with the fast reciprocal division (an IEEE division took
// most of the epilogue's instructions).
static __device__ __forceinline__ float s_silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

// The SwiGLU epilogue: n8 block i (< 16) of a thread's accumulators is gate column 8 i + 2 t
// (+1) and block i + 16 the up value of the same columns; the tile's 128 outputs go to act
// (NULL: nothing written, kvf_gemm_swiglu_mainloop). TS: staged in shared memory (128-byte
// swizzle, conflict-free) and stored by TMA from one thread, instead of each thread's
// 4-byte global stores.
template <int TS>
struct s_swiglu_epi {
    static constexpr int kStaging = TS ? S_STAGING : 0, kMaxRegs = 0;
    const CUtensorMap *to;  // TS: act (n, ff), boxes of 64 x 64
    bf16 *act;              // (n, ff)
    int n, ff;

    __device__ __forceinline__ void tile(float (&d)[128], int tm, int tn, int c, int tid, uint32_t stg) {
        if (!act) return;
        const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
        if constexpr (TS) {
            const int rl = warp * 16 + g;  // the thread's first row of the warpgroup's 64
            // the previous tile's store has read the staging
            if (tid == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
            asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory");
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const float *gv = d + 4 * i, *uv = d + 64 + 4 * i;
                __nv_bfloat162 lo = __floats2bfloat162_rn(s_silu(gv[0]) * uv[0], s_silu(gv[1]) * uv[1]);
                __nv_bfloat162 hi = __floats2bfloat162_rn(s_silu(gv[2]) * uv[2], s_silu(gv[3]) * uv[3]);
                // half i / 8 (columns 0-63, 64-127), 16-byte chunk i % 8 of the row, swizzled by the row
                const uint32_t at = stg + (uint32_t)(i >> 3) * 8192u + (((uint32_t)(i & 7) ^ (uint32_t)g) << 4) +
                                    4u * (uint32_t)q;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at + rl * 128), "r"(*(uint32_t *)&lo) : "memory");
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at + (rl + 8) * 128), "r"(*(uint32_t *)&hi)
                             : "memory");
            }
            kvf_fence_proxy_async();  // the stores above, visible to the TMA engine
            asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory");
            if (tid == 0) {  // rows past n: clipped by the TMA
                const int row = tm * KVF_WS_BM + c * 64, col = tn * KVF_SWIGLU_BLOCK;
                kvf_tma_store_2d(to, stg, col, row);
                kvf_tma_store_2d(to, stg + 8192, col + 64, row);
                asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
            }
            return;
        }
        const int r0 = tm * KVF_WS_BM + c * 64 + warp * 16 + g;
        bf16 *o = act + (size_t)r0 * ff + (size_t)tn * KVF_SWIGLU_BLOCK + 2 * q;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const float *gv = d + 4 * i, *uv = d + 64 + 4 * i;
            if (r0 < n)
                *(__nv_bfloat162 *)(o + 8 * i) = __floats2bfloat162_rn(s_silu(gv[0]) * uv[0], s_silu(gv[1]) * uv[1]);
            if (r0 + 8 < n)
                *(__nv_bfloat162 *)(o + (size_t)8 * ff + 8 * i) =
                    __floats2bfloat162_rn(s_silu(gv[2]) * uv[2], s_silu(gv[3]) * uv[3]);
        }
    }
    __device__ __forceinline__ void done(int, int tid) {
        if (TS && tid == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    }
};
#endif

// The persistent GEMM of kernels/gemm_ws.cuh over x and the interleaved W (2 ff rows)
// with the SwiGLU epilogue. CL: CTAs a cluster; GM: units (CL row tiles each) a group
// of the tile order; TS: the epilogue's TMA store.
template <int CL, int GM, int TS>
static __global__ void __launch_bounds__(384, 1)
    s_gemm_swiglu(const __grid_constant__ CUtensorMap tx,  // x (n, d_in), boxes of 128 x 64
                  const __grid_constant__ CUtensorMap tw,  // W (2 ff, d_in) interleaved, boxes of 256 / CL x 64
                  const __grid_constant__ CUtensorMap to,  // TS: act (n, ff), boxes of 64 x 64
                  bf16 *__restrict__ act,                  // (n, ff); NULL: no epilogue (kvf_gemm_swiglu_mainloop)
                  int n, int d_in, int ff) {
#if KVF_WG_AVAILABLE
    extern __shared__ uint8_t s_raw[];
    s_swiglu_epi<TS> epi{&to, act, n, ff};
    kvf_ws_gemm<CL, GM>(&tx, &tw, n, d_in, 2 * ff, s_raw, epi);
#endif
}

// dst row r of block j = r / 256: gate row j 128 + r % 256, or (r % 256 >= 128) up row.
static __global__ void s_interleave(uint4 *dst, const uint4 *src, int ff, int row16) {
    const int r = blockIdx.x, j = r / (2 * KVF_SWIGLU_BLOCK), w = r % (2 * KVF_SWIGLU_BLOCK);
    const int from = w < KVF_SWIGLU_BLOCK ? j * KVF_SWIGLU_BLOCK + w : ff + j * KVF_SWIGLU_BLOCK + w - KVF_SWIGLU_BLOCK;
    for (int i = threadIdx.x; i < row16; i += blockDim.x) dst[(size_t)r * row16 + i] = src[(size_t)from * row16 + i];
}

extern "C" int kvf_swiglu_interleave(uint16_t *dst, const uint16_t *src, int ff, int d_in, cudaStream_t stream,
                                     kvf_err_t *err) {
    KVF_REQUIRE(dst && src && dst != src && ff > 0 && ff % KVF_SWIGLU_BLOCK == 0 && d_in > 0 && d_in % 8 == 0, err);
    KVF_REQUIRE(((uintptr_t)dst | (uintptr_t)src) % 16 == 0, err);
    s_interleave<<<2 * ff, 128, 0, stream>>>((uint4 *)dst, (const uint4 *)src, ff, d_in / 8);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_gemm_swiglu_available(void) { return kvf_ws_available(); }

static const char *const s_names[KVF_SWIGLU_VARIANTS] = {
    "v1 128x256 ws g16",      // one CTA a tile, groups of 16 row tiles
    "v2 128x256 ws cl2 g8",   // clusters of 2 row tiles (W multicast), groups of 8 pairs
    "v3 128x256 ws cl2 g16",  // the same, groups of 16 pairs
    "v4 128x256 ws g8",       // v1 with groups of 8 row tiles
    "v5 cl2 g8 tma-store",    // v2 with the outputs staged in shared memory and stored by TMA
    "v6 cl2 g16 tma-store",   // v3 so
};

extern "C" const char *kvf_gemm_swiglu_variant_name(int v) {
    return v >= 0 && v < KVF_SWIGLU_VARIANTS ? s_names[v] : NULL;
}

// The grid of s_gemm_swiglu<CL, GM, TS> over n rows (kvf_ws_config).
template <int CL, int GM, int TS>
static int s_config(cudaLaunchConfig_t *lc, cudaLaunchAttribute *at, int n, int ff, kvf_err_t *err) {
    const int units = (int)kvf_cdiv(kvf_cdiv(n, KVF_WS_BM), CL) * (ff / KVF_SWIGLU_BLOCK);
    return kvf_ws_config(s_gemm_swiglu<CL, GM, TS>, CL, units, KVF_WS_SMEM(TS ? S_STAGING : 0), lc, at, "gemm_swiglu",
                         err);
}

template <int CL, int GM, int TS>
static int s_launch(const CUtensorMap &tx, const CUtensorMap &tw, const CUtensorMap &to, bf16 *act, int n, int d_in,
                    int ff, cudaStream_t stream, kvf_err_t *err) {
    cudaLaunchConfig_t lc;
    cudaLaunchAttribute at[2];
    if (s_config<CL, GM, TS>(&lc, at, n, ff, err) != 0) return -1;
    lc.stream = stream;
    KVF_CUDA_CHECK(cudaLaunchKernelEx(&lc, s_gemm_swiglu<CL, GM, TS>, tx, tw, to, act, n, d_in, ff), err);
    return 0;
}

extern "C" int kvf_gemm_swiglu_grid(int v, int n, int ff) {
    cudaLaunchConfig_t lc;
    cudaLaunchAttribute at[2];
    kvf_err_t err;
    if (v < 0 || v >= KVF_SWIGLU_VARIANTS || n < 1 || ff < KVF_SWIGLU_BLOCK || !kvf_gemm_swiglu_available()) return 0;
    int rc = v == 0 ? s_config<1, 16, 0>(&lc, at, n, ff, &err)
           : v == 1 ? s_config<2, 8, 0>(&lc, at, n, ff, &err)
           : v == 2 ? s_config<2, 16, 0>(&lc, at, n, ff, &err)
           : v == 3 ? s_config<1, 8, 0>(&lc, at, n, ff, &err)
           : v == 4 ? s_config<2, 8, 1>(&lc, at, n, ff, &err)
                    : s_config<2, 16, 1>(&lc, at, n, ff, &err);
    return rc == 0 ? (int)lc.gridDim.x : 0;
}

static int s_run(int v, uint16_t *act, const uint16_t *x, const uint16_t *w_gu, int n, int d_in, int ff,
                 cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(v >= 0 && v < KVF_SWIGLU_VARIANTS, err);
    KVF_REQUIRE(x && w_gu && n >= 0 && d_in > 0 && d_in % KVF_WS_BK == 0 && ff > 0 && ff % KVF_SWIGLU_BLOCK == 0,
                err);
    KVF_REQUIRE(((uintptr_t)act | (uintptr_t)x | (uintptr_t)w_gu) % 16 == 0, err);
    if (!kvf_gemm_swiglu_available())
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "gemm_swiglu: needs kernels/ built for sm_90a and a 9.0 device");
    if (n == 0) return 0;
    const int cl = v == 0 || v == 3 ? 1 : 2;
    kvf_tmap_encode_fn enc = kvf_ws_encoder("gemm_swiglu", err);
    if (!enc) return -1;
    CUtensorMap tx, tw, to;
    memset(&to, 0, sizeof to);  // no epilogue (kvf_gemm_swiglu_mainloop): never read
    if (kvf_ws_map(enc, &tx, x, n, d_in, KVF_WS_BM, "gemm_swiglu", err) != 0 ||
        kvf_ws_map(enc, &tw, w_gu, 2 * ff, d_in, KVF_WS_BN / cl, "gemm_swiglu", err) != 0 ||
        (act && kvf_ws_map(enc, &to, act, n, ff, 64, "gemm_swiglu", err) != 0))
        return -1;
    bf16 *o = (bf16 *)act;
    switch (v) {
    case 0: return s_launch<1, 16, 0>(tx, tw, to, o, n, d_in, ff, stream, err);
    case 1: return s_launch<2, 8, 0>(tx, tw, to, o, n, d_in, ff, stream, err);
    case 2: return s_launch<2, 16, 0>(tx, tw, to, o, n, d_in, ff, stream, err);
    case 3: return s_launch<1, 8, 0>(tx, tw, to, o, n, d_in, ff, stream, err);
    case 4: return s_launch<2, 8, 1>(tx, tw, to, o, n, d_in, ff, stream, err);
    default: return s_launch<2, 16, 1>(tx, tw, to, o, n, d_in, ff, stream, err);
    }
}

extern "C" int kvf_gemm_swiglu_variant(int v, uint16_t *act, const uint16_t *x, const uint16_t *w_gu, int n, int d_in,
                                       int ff, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(act, err);
    return s_run(v, act, x, w_gu, n, d_in, ff, stream, err);
}

extern "C" int kvf_gemm_swiglu_mainloop(int v, const uint16_t *x, const uint16_t *w_gu, int n, int d_in, int ff,
                                        cudaStream_t stream, kvf_err_t *err) {
    return s_run(v, NULL, x, w_gu, n, d_in, ff, stream, err);
}

extern "C" int kvf_gemm_swiglu(uint16_t *act, const uint16_t *x, const uint16_t *w_gu, int n, int d_in, int ff,
                               cudaStream_t stream, kvf_err_t *err) {
    return kvf_gemm_swiglu_variant(KVF_SWIGLU_DEFAULT, act, x, w_gu, n, d_in, ff, stream, err);
}
