// kernels/gemm_ws.cuh — the persistent warp-specialized GEMM (sm_90a) that the fused
// GEMMs share (gemm_swiglu.cu, gemm_qkv_rope.cu): y = x W^T over 128 x 256 tiles,
// handed tile by tile to the caller's epilogue (internal, not a C header).
//
// One block an SM, 384 threads: warpgroup 0's first thread loads (TMA, 128-byte
// swizzle) a ring of KVF_WS_ST stages, each the 128 x 64 tile of x and the 256 x 64
// tile of W of one k step, published by an mbarrier ("full") that counts the bytes;
// the two consumer warpgroups take 64 rows of the 128 each and run m64n256k16 wgmma
// over the stage, keeping one stage's MMA in flight, and hand the stage back
// ("empty", one arrival a consumer warp) when the MMA that read it is done. Then
// each consumer warpgroup gives its 64 x 256 accumulators (kernels/wgmma.cuh's
// layout: n8 block i of a thread is columns 8 i + 2 t, + 1 of rows g and g + 8) to
// the epilogue. Tiles go in groups of GM row tiles (the blocks at work at once share
// x and W in the L2). CL CTAs a cluster (1 or 2) take CL row tiles of one column
// tile: each loads its own x tile and 256 / CL rows of the W tile, multicast to every
// CTA of the cluster, so the L2 serves W once a cluster; a stage is refilled only
// when the consumers of every CTA of the cluster have released it.
#ifndef KVF_KERNELS_GEMM_WS_CUH
#define KVF_KERNELS_GEMM_WS_CUH

#include <cuda.h>
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/mbarrier.cuh"
#include "kernels/util.cuh"
#include "kernels/wgmma.cuh"

#define KVF_WS_BM 128                           // rows of x a tile
#define KVF_WS_BN 256                           // rows of W a tile
#define KVF_WS_BK 64                            // k a stage (128 bytes of bf16: one swizzle row)
#define KVF_WS_ST 4                             // stages in the ring
#define KVF_WS_A_BYTES (KVF_WS_BM * KVF_WS_BK * 2)  // 16 KB
#define KVF_WS_B_BYTES (KVF_WS_BN * KVF_WS_BK * 2)  // 32 KB
#define KVF_WS_STAGE (KVF_WS_A_BYTES + KVF_WS_B_BYTES)
// Dynamic shared memory of a kernel whose epilogue stages `staging` bytes: the ring
// (1024-aligned), the staging, then full[] and empty[].
#define KVF_WS_SMEM(staging) (KVF_WS_ST * KVF_WS_STAGE + (staging) + 1024 + 2 * KVF_WS_ST * 8)

#if KVF_WG_AVAILABLE
// A box of the tensor map at coordinates (c0 innermost, c1) into shared dst, counted on bar.
static __device__ __forceinline__ void kvf_tma_2d(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0,
                                                  int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::
            "r"(dst),
        "l"((uint64_t)map), "r"(bar), "r"(c0), "r"(c1)
        : "memory");
}
// A box into dst of every CTA in mask (same offset), counted on each one's bar.
static __device__ __forceinline__ void kvf_tma_2d_mc(uint32_t dst, const CUtensorMap *map, uint32_t bar, int c0,
                                                     int c1, uint16_t mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
        "l"((uint64_t)map), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
        : "memory");
}
// A box of the tensor map at (c0 innermost, c1) from shared src (TMA store, this thread's bulk group).
static __device__ __forceinline__ void kvf_tma_store_2d(const CUtensorMap *map, uint32_t src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"((uint64_t)map),
                 "r"(src), "r"(c0), "r"(c1)
                 : "memory");
}

// Every thread of the CTA (CL 1) or of the cluster.
template <int CL>
static __device__ __forceinline__ void kvf_ws_sync(void) {
    if constexpr (CL == 1) {
        __syncthreads();
    } else {
        asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
        asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
    }
}

// One arrival on the mbarrier at bar in every CTA of the cluster: lane r of the calling
// warp signals CTA r (the remote arrivals go out side by side; a cluster-scope release
// on each, one after the other, made clusters 45% slower).
template <int CL>
static __device__ __forceinline__ void kvf_ws_release(uint32_t bar, int lane) {
    if constexpr (CL == 1) {
        if (lane == 0) kvf_mb_arrive(bar);
    } else {
        if (lane < CL) {
            uint32_t remote;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(bar), "r"(lane));
            asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
        }
    }
}

// Tile t of the persistent order: groups of GM row tiles, each group column by column.
template <int GM>
static __device__ __forceinline__ void kvf_ws_tile(int t, int tiles_m, int tiles_n, int *tm, int *tn) {
    const int per = GM * tiles_n, grp = t / per, first = grp * GM, r = t - grp * per;
    const int gm = tiles_m - first < GM ? tiles_m - first : GM;
    *tm = first + r % gm;
    *tn = r / gm;
}

// The whole kernel body: x (n, d_in) through tx (boxes of 128 x 64), W (n_w, d_in)
// through tw (boxes of 256 / CL x 64), n_w a multiple of 256, d_in of 64; raw: the
// kernel's dynamic shared memory (KVF_WS_SMEM(Epi::kStaging) bytes); Epi::kMaxRegs != 0:
// the producer warpgroup gives registers to the consumers (setmaxnreg 40 / 232; gemm_swiglu
// measured 6% slower with it, its epilogue needs none). For each tile
// of each consumer warpgroup c (rows tm 128 + 64 c .. + 63, columns tn 256 ..
// + 255) it calls epi.tile(d, tm, tn, c, tid, staging) with tid the thread of the
// warpgroup and staging the warpgroup's kStaging / 2 bytes (shared address); then
// epi.done(c, tid) once. Rows past n load as zeros (TMA's out-of-bounds fill).
template <int CL, int GM, class Epi>
static __device__ __forceinline__ void kvf_ws_gemm(const CUtensorMap *tx, const CUtensorMap *tw, int n, int d_in,
                                                   int n_w, uint8_t *raw, Epi &epi) {
    const uint32_t base = ((uint32_t)__cvta_generic_to_shared(raw) + 1023u) & ~1023u;
    const uint32_t stg0 = base + KVF_WS_ST * KVF_WS_STAGE;
    const uint32_t full = stg0 + Epi::kStaging, empty = full + KVF_WS_ST * 8;
    const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
    const int tiles_m = (n + KVF_WS_BM - 1) / KVF_WS_BM, tiles_n = n_w / KVF_WS_BN;
    const int units = (tiles_m + CL - 1) / CL * tiles_n, unit0 = blockIdx.x / CL, n_cl = gridDim.x / CL;
    const int kt = d_in / KVF_WS_BK;
    uint32_t rank = 0;
    if (CL > 1) asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
    if (threadIdx.x == 0) {
        for (int s = 0; s < KVF_WS_ST; s++) {
            kvf_mb_init(full + 8 * s, 1);
            kvf_mb_init(empty + 8 * s, 8 * CL);  // one arrival a consumer warp of each CTA
        }
        kvf_mb_fence_init();
    }
    kvf_ws_sync<CL>();
    if (wg == 0) {  // producer: one thread (with Epi::kMaxRegs, few registers: the consumers take the rest)
        if constexpr (Epi::kMaxRegs > 0) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (tid == 0) {
            // W's share of stage s for k-block k of column tile tn (multicast to the cluster)
            auto load_w = [&](int s, int k, int tn) {
                const uint32_t b = base + s * KVF_WS_STAGE + KVF_WS_A_BYTES;
                if (CL == 1)
                    kvf_tma_2d(b, tw, full + 8 * s, k * KVF_WS_BK, tn * KVF_WS_BN);
                else
                    kvf_tma_2d_mc(b + rank * (KVF_WS_B_BYTES / CL), tw, full + 8 * s, k * KVF_WS_BK,
                                  tn * KVF_WS_BN + (int)rank * (KVF_WS_BN / CL), (uint16_t)((1u << CL) - 1));
            };
            // The first tile's first stages of W go out before kvf_pdl_wait returns (util.cuh): W is no
            // kernel's output, x is.
            int pre = 0;
            if (unit0 < units) {
                int tm, tn;
                kvf_ws_tile<GM>(unit0, (tiles_m + CL - 1) / CL, tiles_n, &tm, &tn);
                pre = kt < KVF_WS_ST ? kt : KVF_WS_ST;
                for (int k = 0; k < pre; k++) {
                    kvf_mb_expect_tx(full + 8 * k, KVF_WS_STAGE);
                    load_w(k, k, tn);
                }
            }
            kvf_pdl_wait();
            int s = 0;
            uint32_t ph = 0;
            for (int u = unit0; u < units; u += n_cl) {
                int tm, tn;
                kvf_ws_tile<GM>(u, (tiles_m + CL - 1) / CL, tiles_n, &tm, &tn);
                tm = tm * CL + (int)rank;  // past the last row tile: zeros, not stored
                for (int k = 0; k < kt; k++) {
                    if (u != unit0 || k >= pre) {
                        kvf_mb_wait(empty + 8 * s, ph ^ 1);  // the first lap passes: the barrier's phase -1 is done
                        kvf_mb_expect_tx(full + 8 * s, KVF_WS_STAGE);
                        load_w(s, k, tn);
                    }
                    kvf_tma_2d(base + s * KVF_WS_STAGE, tx, full + 8 * s, k * KVF_WS_BK, tm * KVF_WS_BM);
                    if (++s == KVF_WS_ST) s = 0, ph ^= 1;
                }
            }
        }
    } else {
        if constexpr (Epi::kMaxRegs > 0) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
        kvf_pdl_wait();  // the epilogues read and write memory of the kernels before
        const int c = wg - 1, lane = tid & 31;
        const uint32_t stg = stg0 + c * (Epi::kStaging / 2);
        int s = 0;
        uint32_t ph = 0;
        float d[128];  // this warpgroup's 64 x 256
        for (int u = unit0; u < units; u += n_cl) {
            int tm, tn;
            kvf_ws_tile<GM>(u, (tiles_m + CL - 1) / CL, tiles_n, &tm, &tn);
            tm = tm * CL + (int)rank;
            int prev = -1;
            for (int k = 0; k < kt; k++) {
                kvf_mb_wait(full + 8 * s, ph);
                const uint32_t a = base + s * KVF_WS_STAGE + c * (64 * 128), b = base + s * KVF_WS_STAGE +
                                                                                 KVF_WS_A_BYTES;
                kvf_wg_fence();
#pragma unroll
                for (int kk = 0; kk < KVF_WS_BK / 16; kk++)
                    kvf_wg_m64n256k16_ss(d, kvf_wg_desc(a + 32 * kk, 16, 1024), kvf_wg_desc(b + 32 * kk, 16, 1024),
                                         k > 0 || kk > 0);
                kvf_wg_commit();
                kvf_wg_wait<1>();  // the previous stage's MMA is done: hand its stage back
                if (prev >= 0) kvf_ws_release<CL>(empty + 8 * prev, lane);
                prev = s;
                if (++s == KVF_WS_ST) s = 0, ph ^= 1;
            }
            kvf_wg_wait<0>();
            kvf_ws_release<CL>(empty + 8 * prev, lane);
#pragma unroll
            for (int i = 0; i < 128; i++) kvf_wg_hold(d[i]);
            epi.tile(d, tm, tn, c, tid, stg);
        }
        epi.done(c, tid);
    }
    kvf_ws_sync<CL>();  // a CTA's shared memory and barriers stay until its peers are done with them
}
#endif  // KVF_WG_AVAILABLE

// ---------------------------------------------------------------- host

typedef CUresult (*kvf_tmap_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                       const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                                       CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                       CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, through the runtime (no link to libcuda).
static inline kvf_tmap_encode_fn kvf_ws_encoder(const char *who, kvf_err_t *err) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    cudaError_t rc = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
    if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess || !fn) {
        kvf_err_set(err, KVF_E_DEVICE, "%s: no cuTensorMapEncodeTiled in the driver (%s)", who,
                    cudaGetErrorString(rc));
        return NULL;
    }
    return (kvf_tmap_encode_fn)fn;
}

// A 2-D bf16 row-major (rows, cols) map with boxes of box_rows x 64 and the 128-byte swizzle.
static inline int kvf_ws_map(kvf_tmap_encode_fn enc, CUtensorMap *m, const void *p, int rows, int cols, int box_rows,
                             const char *who, kvf_err_t *err) {
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * 2};
    const cuuint32_t box[2] = {KVF_WS_BK, (cuuint32_t)box_rows}, one[2] = {1, 1};
    CUresult r = enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)p, dims, strides, box, one,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) return kvf_err_set(err, KVF_E_DEVICE, "%s: cuTensorMapEncodeTiled: error %d", who, r);
    return 0;
}

// 1 when kernels/ was built for sm_90a and the current device is compute capability 9.0.
static inline int kvf_ws_available(void) {
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

// The launch of kernel (one CTA an SM, units permitting, in clusters of CL that fit at
// once; 384 threads, smem bytes; programmatic dependent launch as kvf_launch) over `units`
// cluster tiles: sets *lc and at[0..1].
template <class K>
static inline int kvf_ws_config(K kernel, int cl, int units, int smem, cudaLaunchConfig_t *lc,
                                cudaLaunchAttribute at[2], const char *who, kvf_err_t *err) {
    int dev = 0, sms = 0;
    KVF_CUDA_CHECK(cudaGetDevice(&dev), err);
    KVF_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), err);
    KVF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), err);
    at->id = cudaLaunchAttributeClusterDimension;
    at->val.clusterDim.x = cl, at->val.clusterDim.y = 1, at->val.clusterDim.z = 1;
    *lc = cudaLaunchConfig_t{};
    lc->gridDim = dim3(cl * (units < sms / cl ? units : sms / cl)), lc->blockDim = dim3(384);
    lc->dynamicSmemBytes = smem, lc->attrs = at, lc->numAttrs = 1;
    if (cl > 1) {
        int max_cl = 0;  // clusters that fit at once (a GPC with an odd SM count leaves one out)
        KVF_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&max_cl, kernel, lc), err);
        if (max_cl < 1) return kvf_err_set(err, KVF_E_DEVICE, "%s: no cluster of %d CTAs fits the device", who, cl);
        if ((int)lc->gridDim.x > cl * max_cl) lc->gridDim = dim3(cl * max_cl);
    }
    at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;  // as kvf_launch (util.cuh)
    at[1].val.programmaticStreamSerializationAllowed = 1;
    lc->numAttrs = 1 + KVF_PDL;
    return 0;
}

#endif
