// kernels/gemm_swiglu.cu — see gemm_swiglu.h.
//
// A persistent warp-specialized GEMM (sm_90a), one block an SM, 384 threads:
// warpgroup 0's first thread loads (TMA, 128-byte swizzle) a ring of S_ST stages,
// each the 128 x 64 tile of x and the 256 x 64 tile of W (128 gate + 128 up rows)
// of one k step, published by an mbarrier ("full") that counts the bytes; the two
// consumer warpgroups take 64 rows of the 128 each and run m64n256k16 wgmma over
// the stage, keeping one stage's MMA in flight, and hand the stage back ("empty",
// one arrival a consumer warp) when the MMA that read it is done. A thread's
// accumulator n8 block i (< 16) is gate column 8 i + 2 t (+1) and block i + 16 the
// up value of the same columns (kernels/wgmma.cuh's layout), so the epilogue forms
// silu(g) u in registers and writes the 128 output columns of the tile. Tiles go
// in groups of GM row tiles (the blocks at work at once share x and W in the L2).
//
// The default (v5, H200, bench/RESULTS.md session 10): clusters of 2 CTAs on two row
// tiles share each W tile by TMA multicast, and the epilogue stages its outputs in
// shared memory for a TMA store. At 8192 x 4096 -> 2 x 14336: 2.82 ms, where cuBLASLt's
// gate/up GEMM alone took 2.80 and with silu_mul 2.96; the same kernel without its
// epilogue 2.72. At 512 rows it is slower than cuBLASLt (0.199 against 0.165 ms: 3.4
// waves of 128 x 256 tiles over 132 SMs), hence the cuda backend's row threshold.
#include <cuda.h>
#include <stdint.h>
#include <string.h>

#include "kernels/check.h"
#include "kernels/gemm_swiglu.h"
#include "kernels/util.cuh"
#include "kernels/wgmma.cuh"

#define S_BM 128                        // rows of x a tile
#define S_BN 256                        // rows of W a tile: KVF_SWIGLU_BLOCK gate + as many up
#define S_BK 64                         // k a stage (128 bytes of bf16: one swizzle row)
#define S_ST 4                          // stages in the ring
#define S_A_BYTES (S_BM * S_BK * 2)     // 16 KB
#define S_B_BYTES (S_BN * S_BK * 2)     // 32 KB
#define S_STAGE (S_A_BYTES + S_B_BYTES)
#define S_STAGING (2 * 64 * KVF_SWIGLU_BLOCK * 2)  // TS: each consumer's 64 x 128 bf16 outputs, 2 swizzled halves
// stages (1024-aligned), TS's staging, then full[] and empty[]
#define S_SMEM(TS) (S_ST * S_STAGE + ((TS) ? S_STAGING : 0) + 1024 + 2 * S_ST * 8)

#if KVF_WG_AVAILABLE
static __device__ __forceinline__ void s_mb_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void s_mb_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void s_mb_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void s_mb_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred p;\nS_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra S_WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// A box of the tensor map at coordinates (c0 innermost, c1) into shared dst, counted on bar.
static __device__ __forceinline__ void s_tma_2d(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::
            "r"(dst),
        "l"((uint64_t)map), "r"(bar), "r"(c0), "r"(c1)
        : "memory");
}

// A box into dst of every CTA in mask (same offset), counted on each one's bar.
static __device__ __forceinline__ void s_tma_2d_mc(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0, int c1,
                                                   uint16_t mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
        "l"((uint64_t)map), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
        : "memory");
}

// A box of the tensor map at (c0 innermost, c1) from shared src (TMA store, this thread's bulk group).
static __device__ __forceinline__ void s_tma_store_2d(const CUtensorMap *map, uint32_t src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"((uint64_t)map),
                 "r"(src), "r"(c0), "r"(c1)
                 : "memory");
}

// Every thread of the CTA (CL 1) or of the cluster.
template <int CL>
static __device__ __forceinline__ void s_sync(void) {
    if constexpr (CL == 1) {
        __syncthreads();
    } else {
        asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
        asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
    }
}

// One arrival on the mbarrier at bar in every CTA of the cluster: lane r of the calling
// warp signals CTA r (the remote arrivals go out side by side).
template <int CL>
static __device__ __forceinline__ void s_release(uint32_t bar, int lane) {
    if constexpr (CL == 1) {
        if (lane == 0) s_mb_arrive(bar);
    } else {
        if (lane < CL) {
            uint32_t remote;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(bar), "r"(lane));
            asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
        }
    }
}

// silu(g) = g / (1 + e^-g), with the fast reciprocal division (an IEEE division took
// most of the epilogue's instructions).
static __device__ __forceinline__ float s_silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

// Tile t of the persistent order: groups of GM row tiles, each group column by column.
template <int GM>
static __device__ __forceinline__ void s_tile(int t, int tiles_m, int tiles_n, int *tm, int *tn) {
    const int per = GM * tiles_n, grp = t / per, first = grp * GM, r = t - grp * per;
    const int gm = tiles_m - first < GM ? tiles_m - first : GM;
    *tm = first + r % gm;
    *tn = r / gm;
}
#endif

// CL CTAs a cluster (1 or 2) take CL row tiles of one column tile: each loads its own
// x tile and 256 / CL rows of the W tile, multicast to every CTA of the cluster, so
// the L2 serves W once a cluster; a stage is refilled only when the consumers of
// every CTA of the cluster have released it (remote arrivals on each empty[]).
// GM: units (CL row tiles each) a group of the tile order. TS: the epilogue writes its
// outputs into shared memory (128-byte swizzle, conflict-free) and one thread stores them
// by TMA, instead of each thread's 4-byte global stores.
template <int CL, int GM, int TS>
static __global__ void __launch_bounds__(384, 1)
    s_gemm_swiglu(const __grid_constant__ CUtensorMap tx,  // x (n, d_in), boxes of 128 x 64
                  const __grid_constant__ CUtensorMap tw,  // W (2 ff, d_in) interleaved, boxes of 256 / CL x 64
                  const __grid_constant__ CUtensorMap to,  // TS: act (n, ff), boxes of 64 x 64
                  bf16 *__restrict__ act,                  // (n, ff); NULL: no epilogue (kvf_gemm_swiglu_mainloop)
                  int n, int d_in, int ff) {
#if KVF_WG_AVAILABLE
    extern __shared__ uint8_t s_raw[];
    const uint32_t base = ((uint32_t)__cvta_generic_to_shared(s_raw) + 1023u) & ~1023u;
    const uint32_t full = base + S_ST * S_STAGE + (TS ? S_STAGING : 0), empty = full + S_ST * 8;
    const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
    const int tiles_m = (n + S_BM - 1) / S_BM, tiles_n = ff / KVF_SWIGLU_BLOCK;
    const int units = (tiles_m + CL - 1) / CL * tiles_n, unit0 = blockIdx.x / CL, n_cl = gridDim.x / CL;
    const int kt = d_in / S_BK;
    uint32_t rank = 0;
    if (CL > 1) asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
    if (threadIdx.x == 0) {
        for (int s = 0; s < S_ST; s++) {
            s_mb_init(full + 8 * s, 1);
            s_mb_init(empty + 8 * s, 8 * CL);  // one arrival a consumer warp of each CTA
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    s_sync<CL>();
    if (wg == 0) {  // producer
        if (tid == 0) {
            int s = 0;
            uint32_t ph = 0;
            for (int u = unit0; u < units; u += n_cl) {
                int tm, tn;
                s_tile<GM>(u, (tiles_m + CL - 1) / CL, tiles_n, &tm, &tn);
                tm = tm * CL + (int)rank;  // past the last row tile: zeros (TMA's out-of-bounds fill), not stored
                for (int k = 0; k < kt; k++) {
                    s_mb_wait(empty + 8 * s, ph ^ 1);  // the first lap passes: the barrier's phase -1 is done
                    const uint32_t a = base + s * S_STAGE;
                    s_mb_expect_tx(full + 8 * s, S_STAGE);
                    s_tma_2d(a, &tx, full + 8 * s, k * S_BK, tm * S_BM);
                    if (CL == 1)
                        s_tma_2d(a + S_A_BYTES, &tw, full + 8 * s, k * S_BK, tn * S_BN);
                    else
                        s_tma_2d_mc(a + S_A_BYTES + rank * (S_B_BYTES / CL), &tw, full + 8 * s, k * S_BK,
                                    tn * S_BN + (int)rank * (S_BN / CL), (uint16_t)((1u << CL) - 1));
                    if (++s == S_ST) s = 0, ph ^= 1;
                }
            }
        }
    } else {
        const int c = wg - 1, warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
        int s = 0;
        uint32_t ph = 0;
        float d[128];  // this warpgroup's 64 x 256: n8 blocks 0-15 gate, 16-31 up
        for (int u = unit0; u < units; u += n_cl) {
            int tm, tn;
            s_tile<GM>(u, (tiles_m + CL - 1) / CL, tiles_n, &tm, &tn);
            tm = tm * CL + (int)rank;
            int prev = -1;
            for (int k = 0; k < kt; k++) {
                s_mb_wait(full + 8 * s, ph);
                const uint32_t a = base + s * S_STAGE + c * (64 * 128), b = base + s * S_STAGE + S_A_BYTES;
                kvf_wg_fence();
#pragma unroll
                for (int kk = 0; kk < S_BK / 16; kk++)
                    kvf_wg_m64n256k16_ss(d, kvf_wg_desc(a + 32 * kk, 16, 1024), kvf_wg_desc(b + 32 * kk, 16, 1024),
                                         k > 0 || kk > 0);
                kvf_wg_commit();
                kvf_wg_wait<1>();  // the previous stage's MMA is done: hand its stage back
                if (prev >= 0) s_release<CL>(empty + 8 * prev, lane);
                prev = s;
                if (++s == S_ST) s = 0, ph ^= 1;
            }
            kvf_wg_wait<0>();
            s_release<CL>(empty + 8 * prev, lane);
#pragma unroll
            for (int i = 0; i < 128; i++) kvf_wg_hold(d[i]);
            if (!act) continue;
            if constexpr (TS) {
                const uint32_t stg = base + S_ST * S_STAGE + c * (S_STAGING / 2);
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
                    const int row = tm * S_BM + c * 64, col = tn * KVF_SWIGLU_BLOCK;
                    s_tma_store_2d(&to, stg, col, row);
                    s_tma_store_2d(&to, stg + 8192, col + 64, row);
                    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
                }
                continue;
            }
            const int r0 = tm * S_BM + c * 64 + warp * 16 + g;
            bf16 *o = act + (size_t)r0 * ff + (size_t)tn * KVF_SWIGLU_BLOCK + 2 * q;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const float *gv = d + 4 * i, *uv = d + 64 + 4 * i;
                if (r0 < n)
                    *(__nv_bfloat162 *)(o + 8 * i) =
                        __floats2bfloat162_rn(s_silu(gv[0]) * uv[0], s_silu(gv[1]) * uv[1]);
                if (r0 + 8 < n)
                    *(__nv_bfloat162 *)(o + (size_t)8 * ff + 8 * i) =
                        __floats2bfloat162_rn(s_silu(gv[2]) * uv[2], s_silu(gv[3]) * uv[3]);
            }
        }
        if (TS && tid == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    }
    s_sync<CL>();  // a CTA's shared memory and barriers stay until its peers are done with them
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

typedef CUresult (*s_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, through the runtime (no link to libcuda).
static s_encode_fn s_encoder(kvf_err_t *err) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    cudaError_t rc = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
    if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess || !fn) {
        kvf_err_set(err, KVF_E_DEVICE, "gemm_swiglu: no cuTensorMapEncodeTiled in the driver (%s)",
                    cudaGetErrorString(rc));
        return NULL;
    }
    return (s_encode_fn)fn;
}

// A 2-D bf16 row-major (rows, cols) map with boxes of box_rows x 64 and the 128-byte swizzle.
static int s_map(s_encode_fn enc, CUtensorMap *m, const void *p, int rows, int cols, int box_rows, kvf_err_t *err) {
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * 2};
    const cuuint32_t box[2] = {S_BK, (cuuint32_t)box_rows}, one[2] = {1, 1};
    CUresult r = enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)p, dims, strides, box, one,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) return kvf_err_set(err, KVF_E_DEVICE, "gemm_swiglu: cuTensorMapEncodeTiled: error %d", r);
    return 0;
}

extern "C" int kvf_gemm_swiglu_available(void) {
#if defined(KVF_CUDA_SM90A)
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
        return 0;
    return major == 9 && minor == 0;
#else
    return 0;
#endif
}

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

// The grid of s_gemm_swiglu<CL, GM, TS> over n rows: one CTA an SM (units permitting), in
// clusters of CL that fit at once. Sets *lc's grid, block, shared memory and cluster.
template <int CL, int GM, int TS>
static int s_config(cudaLaunchConfig_t *lc, cudaLaunchAttribute *at, int n, int ff, kvf_err_t *err) {
    int dev = 0, sms = 0;
    KVF_CUDA_CHECK(cudaGetDevice(&dev), err);
    KVF_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), err);
    KVF_CUDA_CHECK(
        cudaFuncSetAttribute(s_gemm_swiglu<CL, GM, TS>, cudaFuncAttributeMaxDynamicSharedMemorySize, S_SMEM(TS)), err);
    const int units = (int)kvf_cdiv(kvf_cdiv(n, S_BM), CL) * (ff / KVF_SWIGLU_BLOCK);
    at->id = cudaLaunchAttributeClusterDimension;
    at->val.clusterDim.x = CL, at->val.clusterDim.y = 1, at->val.clusterDim.z = 1;
    *lc = cudaLaunchConfig_t{};
    lc->gridDim = dim3(CL * (units < sms / CL ? units : sms / CL)), lc->blockDim = dim3(384);
    lc->dynamicSmemBytes = S_SMEM(TS), lc->attrs = at, lc->numAttrs = 1;
    if (CL > 1) {
        int max_cl = 0;  // clusters that fit at once (a GPC with an odd SM count leaves one out)
        KVF_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&max_cl, s_gemm_swiglu<CL, GM, TS>, lc), err);
        if (max_cl < 1) return kvf_err_set(err, KVF_E_DEVICE, "gemm_swiglu: no cluster of %d CTAs fits the device", CL);
        if ((int)lc->gridDim.x > CL * max_cl) lc->gridDim = dim3(CL * max_cl);
    }
    return 0;
}

template <int CL, int GM, int TS>
static int s_launch(const CUtensorMap &tx, const CUtensorMap &tw, const CUtensorMap &to, bf16 *act, int n, int d_in,
                    int ff, cudaStream_t stream, kvf_err_t *err) {
    cudaLaunchConfig_t lc;
    cudaLaunchAttribute at;
    if (s_config<CL, GM, TS>(&lc, &at, n, ff, err) != 0) return -1;
    lc.stream = stream;
    KVF_CUDA_CHECK(cudaLaunchKernelEx(&lc, s_gemm_swiglu<CL, GM, TS>, tx, tw, to, act, n, d_in, ff), err);
    return 0;
}

extern "C" int kvf_gemm_swiglu_grid(int v, int n, int ff) {
    cudaLaunchConfig_t lc;
    cudaLaunchAttribute at;
    kvf_err_t err;
    if (v < 0 || v >= KVF_SWIGLU_VARIANTS || n < 1 || ff < KVF_SWIGLU_BLOCK || !kvf_gemm_swiglu_available()) return 0;
    int rc = v == 0 ? s_config<1, 16, 0>(&lc, &at, n, ff, &err)
           : v == 1 ? s_config<2, 8, 0>(&lc, &at, n, ff, &err)
           : v == 2 ? s_config<2, 16, 0>(&lc, &at, n, ff, &err)
           : v == 3 ? s_config<1, 8, 0>(&lc, &at, n, ff, &err)
           : v == 4 ? s_config<2, 8, 1>(&lc, &at, n, ff, &err)
                    : s_config<2, 16, 1>(&lc, &at, n, ff, &err);
    return rc == 0 ? (int)lc.gridDim.x : 0;
}

static int s_run(int v, uint16_t *act, const uint16_t *x, const uint16_t *w_gu, int n, int d_in, int ff,
                 cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(v >= 0 && v < KVF_SWIGLU_VARIANTS, err);
    KVF_REQUIRE(x && w_gu && n >= 0 && d_in > 0 && d_in % S_BK == 0 && ff > 0 && ff % KVF_SWIGLU_BLOCK == 0,
                err);
    KVF_REQUIRE(((uintptr_t)act | (uintptr_t)x | (uintptr_t)w_gu) % 16 == 0, err);
    if (!kvf_gemm_swiglu_available())
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "gemm_swiglu: needs kernels/ built for sm_90a and a 9.0 device");
    if (n == 0) return 0;
    const int cl = v == 0 || v == 3 ? 1 : 2;
    s_encode_fn enc = s_encoder(err);
    if (!enc) return -1;
    CUtensorMap tx, tw, to;
    memset(&to, 0, sizeof to);  // no epilogue (kvf_gemm_swiglu_mainloop): never read
    if (s_map(enc, &tx, x, n, d_in, S_BM, err) != 0 || s_map(enc, &tw, w_gu, 2 * ff, d_in, S_BN / cl, err) != 0 ||
        (act && s_map(enc, &to, act, n, ff, 64, err) != 0))
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
