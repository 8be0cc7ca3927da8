// kernels/gemm_qkv_rope.cu — see gemm_qkv_rope.h.
//
// The persistent warp-specialized GEMM of kernels/gemm_ws.cuh (sm_90a; clusters of 2
// CTAs sharing each W tile by multicast, as gemm_swiglu's default) over x and the
// fused q/k/v rows. A 256-column tile is two whole heads; a thread's accumulator n8
// block j holds columns 8 j + 2 t (+1) of rows g and g + 8 (kernels/wgmma.cuh), so
// the rotation pair (i, i + 64) of a head is blocks j and j + 8 of the same thread
// and RoPE runs in registers. Each head of the tile is then staged in shared memory
// (64 rows x 256 bytes a consumer warpgroup, 16-byte chunks swizzled by the row:
// conflict-free both ways) and copied out in 16-byte stores, a head row (256 bytes)
// to every 16 lanes: q rows to q_out, k and v rows to their cache slots.
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/gemm_qkv_rope.h"
#include "kernels/gemm_ws.cuh"

#define S_HD KVF_QKV_ROPE_HEAD_DIM
#define S_STAGING (2 * 64 * S_HD * 2)  // each consumer's 64 rows of one head, bf16

#if KVF_WG_AVAILABLE
// Columns 8 j + 2 t, + 1 of rows rl (y[0], y[1]) and rl + 8 (y[2], y[3]) into the staging:
// 256-byte rows, 16-byte chunk j of a row at chunk j ^ (row % 8) (rl % 8 = g).
static __device__ __forceinline__ void s_stage(uint32_t stg, int j, int rl, int g, int t, const float y[4]) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(y[0], y[1]), hi = __floats2bfloat162_rn(y[2], y[3]);
    const uint32_t at = stg + (((uint32_t)j ^ (uint32_t)g) << 4) + 4u * (uint32_t)t;
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at + rl * 256), "r"(*(uint32_t *)&lo) : "memory");
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at + (rl + 8) * 256), "r"(*(uint32_t *)&hi) : "memory");
}

struct s_qkv_epi {
    static constexpr int kStaging = S_STAGING, kMaxRegs = 1;  // 128 accumulators + the tile's angles
    bf16 *q, *kc, *vc;     // q_out, this layer's K and V caches
    const float4 *cs;      // (n, 32): (cos, sin) of rotation pairs 2 p and 2 p + 1
    const int64_t *slot;   // (n)
    int n, H, KV;

    __device__ __forceinline__ void tile(float (&d)[128], int tm, int tn, int c, int tid, uint32_t stg) {
        const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
        const int rl = warp * 16 + g, row0 = tm * KVF_WS_BM + c * 64;  // rows rl and rl + 8 of the 64
        const int r0 = row0 + rl, r1 = r0 + 8;
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int h = 2 * tn + hh;
            const float *dh = d + 64 * hh;  // n8 blocks 16 hh .. 16 hh + 15: this head's 128 columns
            // the previous copy-out (of this warpgroup) has read the staging
            asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory");
            if (h < H + KV) {  // q or k: rotate the pairs (8 j + 2 t + e, + 64), staged as they are made
                // (cos, sin) of pairs 8 j + 2 t, + 1 in rows r0 (a) and r1 (b), all loaded at once (one
                // after another they were as many L2 latencies in a row; the second head finds them in L1)
                float4 a[8], b[8];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    a[j] = r0 < n ? __ldg(cs + (size_t)r0 * 32 + 4 * j + t) : make_float4(1.f, 0.f, 1.f, 0.f);
                    b[j] = r1 < n ? __ldg(cs + (size_t)r1 * 32 + 4 * j + t) : make_float4(1.f, 0.f, 1.f, 0.f);
                }
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const float cc[4] = {a[j].x, a[j].z, b[j].x, b[j].z}, ss[4] = {a[j].y, a[j].w, b[j].y, b[j].w};
                    float y1[4], y2[4];
#pragma unroll
                    for (int e = 0; e < 4; e++) {  // (row g, col), (g, col + 1), (g + 8, col), (g + 8, col + 1)
                        const float x1 = dh[4 * j + e], x2 = dh[4 * (j + 8) + e];
                        y1[e] = x1 * cc[e] - x2 * ss[e];
                        y2[e] = x2 * cc[e] + x1 * ss[e];
                    }
                    s_stage(stg, j, rl, g, t, y1);
                    s_stage(stg, j + 8, rl, g, t, y2);
                }
            } else {  // v: as it is
#pragma unroll
                for (int j = 0; j < 16; j++) s_stage(stg, j, rl, g, t, dh + 4 * j);
            }
            // head h: q head h, k head h - H, or v head h - H - KV
            bf16 *dst = h < H ? q + (size_t)h * S_HD : h < H + KV ? kc + (size_t)(h - H) * S_HD
                                                                 : vc + (size_t)(h - H - KV) * S_HD;
            // the thread's rows (tid / 16 + 8 k): q rows in order, k and v rows at their slots (loaded
            // together, before the stores and the barrier: one after another each was an L2 latency)
            int off[8];  // in head rows (S_HD elements): the slots are whole rows
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int r = row0 + (tid >> 4) + 8 * k;
                off[k] = r >= n ? -1 : h < H ? r * H : (int)(__ldg(slot + r) >> 7);  // -1 >> 7 = -1
            }
            asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory");  // the head is staged
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int row = (tid >> 4) + 8 * k, ch = tid & 15;
                if (off[k] < 0) continue;
                uint4 v;
                const uint32_t src = stg + row * 256 + (((uint32_t)ch ^ (uint32_t)(row & 7)) << 4);
                asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                             : "r"(src));
                *(uint4 *)(dst + (size_t)off[k] * S_HD + ch * 8) = v;
            }
        }
    }
    __device__ __forceinline__ void done(int, int) {}
};
#endif

template <int CL, int GM>
static __global__ void __launch_bounds__(384, 1)
    s_gemm_qkv_rope(const __grid_constant__ CUtensorMap tx,  // x (n, d_in), boxes of 128 x 64
                    const __grid_constant__ CUtensorMap tw,  // W ((H + 2 KV) HD, d_in), boxes of 256 / CL x 64
                    bf16 *q, bf16 *kc, bf16 *vc, const float4 *cs, const int64_t *slot, int n,
                    int d_in, int H, int KV) {
#if KVF_WG_AVAILABLE
    extern __shared__ uint8_t s_raw[];
    s_qkv_epi epi{q, kc, vc, cs, slot, n, H, KV};
    kvf_ws_gemm<CL, GM>(&tx, &tw, n, d_in, (H + 2 * KV) * S_HD, s_raw, epi);
#endif
}

// One block a token: its angles (as kvf_rope_kv computes them) and its cache slot.
static __global__ void s_rope_table(float2 *cs, int64_t *slot, const float *inv_freq, const int32_t *pos,
                                    const int32_t *tok_seq, const int32_t *block_table, int max_blocks, int half,
                                    int KV, int bs, int n_blocks) {
    kvf_pdl_wait();
    const int tk = blockIdx.x, p = pos[tk];
    const float fp = (float)p;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf(inv_freq[i] * fp, &s, &c);
        cs[(size_t)tk * half + i] = make_float2(c, s);
    }
    if (threadIdx.x == 0) {
        const int blk = (p >= 0 && p / bs < max_blocks) ? block_table[(size_t)tok_seq[tk] * max_blocks + p / bs] : -1;
        slot[tk] = blk >= 0 && blk < n_blocks ? ((int64_t)blk * bs + p % bs) * KV * (2 * half) : -1;
    }
}

extern "C" int kvf_gemm_qkv_rope_available(void) { return kvf_ws_available(); }

extern "C" int kvf_rope_table(float *cs, int64_t *slot, const float *inv_freq, const int32_t *pos,
                              const int32_t *tok_seq, const int32_t *block_table, int max_blocks, int n, int head_dim,
                              int n_kv, int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(cs && slot && inv_freq && pos && tok_seq && block_table, err);
    KVF_REQUIRE(n >= 0 && head_dim >= 2 && head_dim % 2 == 0 && n_kv > 0 && block_size > 0 && max_blocks > 0, err);
    KVF_REQUIRE((uintptr_t)cs % 8 == 0, err);
    if (n == 0) return 0;
    const int half = head_dim / 2;
    kvf_launch(s_rope_table, n, half < 128 ? half : 128, 0, stream, (float2 *)cs, slot, inv_freq, pos, tok_seq,
               block_table, max_blocks, half, n_kv, block_size, n_blocks);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_gemm_qkv_rope(uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache, const uint16_t *x,
                                 const uint16_t *w_qkv, const float *cs, const int64_t *slot, int n,
                                 int d_in, int n_heads, int n_kv, int head_dim, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(q_out && k_cache && v_cache && x && w_qkv && cs && slot, err);
    KVF_REQUIRE(n >= 0 && d_in > 0 && d_in % KVF_WS_BK == 0 && head_dim == S_HD && n_heads > 0 && n_heads % 2 == 0 &&
                    n_kv > 0,
                err);
    KVF_REQUIRE(((uintptr_t)q_out | (uintptr_t)k_cache | (uintptr_t)v_cache | (uintptr_t)x | (uintptr_t)w_qkv |
                 (uintptr_t)cs) % 16 == 0,
                err);
    if (!kvf_ws_available())
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "gemm_qkv_rope: needs kernels/ built for sm_90a and a 9.0 device");
    if (n == 0) return 0;
    enum { CL = 2, GM = 8 };  // as gemm_swiglu's default
    kvf_tmap_encode_fn enc = kvf_ws_encoder("gemm_qkv_rope", err);
    if (!enc) return -1;
    const int n_w = (n_heads + 2 * n_kv) * S_HD;
    CUtensorMap tx, tw;
    if (kvf_ws_map(enc, &tx, x, n, d_in, KVF_WS_BM, "gemm_qkv_rope", err) != 0 ||
        kvf_ws_map(enc, &tw, w_qkv, n_w, d_in, KVF_WS_BN / CL, "gemm_qkv_rope", err) != 0)
        return -1;
    cudaLaunchConfig_t lc;
    cudaLaunchAttribute at[2];
    const int units = (int)kvf_cdiv(kvf_cdiv(n, KVF_WS_BM), CL) * (n_w / KVF_WS_BN);
    if (kvf_ws_config(s_gemm_qkv_rope<CL, GM>, CL, units, KVF_WS_SMEM(S_STAGING), &lc, at, "gemm_qkv_rope", err) != 0)
        return -1;
    lc.stream = stream;
    KVF_CUDA_CHECK(cudaLaunchKernelEx(&lc, s_gemm_qkv_rope<CL, GM>, tx, tw, (bf16 *)q_out, (bf16 *)k_cache,
                                      (bf16 *)v_cache, (const float4 *)cs, slot, n, d_in, n_heads, n_kv),
                   err);
    return 0;
}
