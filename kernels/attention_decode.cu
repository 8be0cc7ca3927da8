// kernels/attention_decode.cu — see attention_decode.h.
//
// One block of 4 warps per (tile, KV head). The tile's rows (its tokens x the G
// query heads of the KV head, at most 16) are one m16 fragment that every warp
// holds. Keys go in tiles of 64 from the paged cache to shared memory by
// cp.async, two stages deep (the next tile is in flight while the current one
// is scored); warp w takes keys [16w, 16w + 16) of each tile: S = Q K^T and
// O += P V by mma.sync m16n8k16 (bf16 in, f32 accumulators), its own online
// softmax (base 2). The four partial states are merged through shared memory.
// Unlike kernels/attention.cu (K and V widened to f32 in shared memory, scalar
// dot products), the bytes move as they are and the arithmetic is on the tensor
// cores, so a step of many sequences runs at the cache's read bandwidth.
#include <math.h>

#include "kernels/attention_decode.h"
#include "kernels/check.h"
#include "kernels/util.cuh"

#define DC_THREADS 128
#define DC_WARPS 4
#define DC_K 64  // keys per stage: 16 per warp

static __device__ __forceinline__ void s_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ uint32_t s_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

static __device__ __forceinline__ void s_cp16(void *smem, const void *gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

template <int HD>
static __global__ void __launch_bounds__(DC_THREADS)
s_attn_decode(bf16 *out,                // (n_tokens, H, HD)
              const bf16 *q,            // (n_tokens, H, HD)
              const bf16 *kc,           // (n_blocks, bs, KV, HD)
              const bf16 *vc,           // (n_blocks, bs, KV, HD)
              const int32_t *tiles,     // (n_tiles, 3)
              const int32_t *pos,       // (n_tokens)
              const int32_t *bt,        // (n_seqs, max_blocks)
              int max_blocks, int H, int KV, int bs, float scale_log2) {
    constexpr int KS = HD + 8;            // row stride (bf16) of a staged K or V tile: 16 bytes of padding
    constexpr int STAGE = 2 * DC_K * KS;  // K then V
    constexpr int CPT = DC_K * (HD / 8) / DC_THREADS;  // 16-byte chunks per thread per tensor
    extern __shared__ float4 dsmem4[];
    bf16 *sm = (bf16 *)dsmem4;            // (2 stages, K|V, DC_K, KS)

    // KV heads fastest: the n_kv blocks of one sequence run side by side and read its
    // cache rows (all heads of a token are contiguous) together, not one head a wave
    const int tile = blockIdx.x / KV, kvh = blockIdx.x % KV;
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int G = H / KV, nr = nq * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int32_t *btab = bt + (size_t)seq * max_blocks;
    const int p0 = pos[q0];
    const int kv_end = p0 + nq;
    const int r0 = g, r1 = g + 8;  // this thread's two rows
    const int pr0 = r0 < nr ? p0 + r0 / G : -1, pr1 = r1 < nr ? p0 + r1 / G : -1;

    auto load = [&](int stage, int kt) {
        bf16 *sK = sm + stage * STAGE, *sV = sK + DC_K * KS;
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const int ch = threadIdx.x + i * DC_THREADS, j = ch / (HD / 8), d = (ch % (HD / 8)) * 8, key = kt + j;
            if (key < kv_end) {
                const size_t off = (((size_t)btab[key / bs] * bs + key % bs) * KV + kvh) * HD + d;
                s_cp16(sK + j * KS + d, kc + off);
                s_cp16(sV + j * KS + d, vc + off);
            } else {  // zeros: a masked key's V row is multiplied by p = 0, which must not meet a NaN
                *(uint4 *)(sK + j * KS + d) = make_uint4(0u, 0u, 0u, 0u);
                *(uint4 *)(sV + j * KS + d) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    const int n_kt = (kv_end + DC_K - 1) / DC_K;
    load(0, 0);

    // Q fragments (A operands), one per 16 dims; rows past the tile are zeros
    uint32_t qf[HD / 16][4];
    {
        const bf16 *q0p = q + ((size_t)(q0 + (r0 < nr ? r0 / G : 0)) * H + kvh * G + (r0 < nr ? r0 % G : 0)) * HD;
        const bf16 *q1p = q + ((size_t)(q0 + (r1 < nr ? r1 / G : 0)) * H + kvh * G + (r1 < nr ? r1 % G : 0)) * HD;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            const int c = ks * 16 + 2 * tq;
            qf[ks][0] = r0 < nr ? *(const uint32_t *)(q0p + c) : 0u;
            qf[ks][1] = r1 < nr ? *(const uint32_t *)(q1p + c) : 0u;
            qf[ks][2] = r0 < nr ? *(const uint32_t *)(q0p + c + 8) : 0u;
            qf[ks][3] = r1 < nr ? *(const uint32_t *)(q1p + c + 8) : 0u;
        }
    }

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int it = 0; it < n_kt; it++) {
        const int stage = it & 1, kt = it * DC_K;
        if (it + 1 < n_kt) {
            load(stage ^ 1, kt + DC_K);  // its buffer was released by the barrier that ended it - 1
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();  // this stage's keys are in shared memory for every thread
        const int kw = kt + 16 * warp;
        if (kw < kv_end) {  // uniform over the warp
            const bf16 *sK = sm + stage * STAGE + 16 * warp * KS, *sV = sK + DC_K * KS;
            float sc[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
                const bf16 *kr = sK + (nt * 8 + g) * KS + 2 * tq;
#pragma unroll
                for (int ks = 0; ks < HD / 16; ks++)
                    s_mma(sc[nt], qf[ks], *(const uint32_t *)(kr + ks * 16), *(const uint32_t *)(kr + ks * 16 + 8));
            }
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kw + nt * 8 + 2 * tq + (e & 1);
                    const int rp = e < 2 ? pr0 : pr1;
                    float v = sc[nt][e] * scale_log2;
                    if (key > rp || key >= kv_end) v = -INFINITY;
                    sc[nt][e] = v;
                    if (e < 2) mx0 = fmaxf(mx0, v);
                    else mx1 = fmaxf(mx1, v);
                }
#pragma unroll
            for (int o_ = 1; o_ <= 2; o_ <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
            }
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float b0 = mn0 == -INFINITY ? 0.0f : mn0, b1 = mn1 == -INFINITY ? 0.0f : mn1;
            const float c0 = exp2f(m0 - b0), c1 = exp2f(m1 - b1);
            m0 = mn0, m1 = mn1;
            float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                sc[nt][0] = exp2f(sc[nt][0] - b0);
                sc[nt][1] = exp2f(sc[nt][1] - b0);
                sc[nt][2] = exp2f(sc[nt][2] - b1);
                sc[nt][3] = exp2f(sc[nt][3] - b1);
                s0 += sc[nt][0] + sc[nt][1];
                s1 += sc[nt][2] + sc[nt][3];
            }
            l0 = l0 * c0 + s0;  // per-thread partial sums; the quad adds them up at the end
            l1 = l1 * c1 + s1;
#pragma unroll
            for (int i = 0; i < HD / 8; i++) {
                o[i][0] *= c0, o[i][1] *= c0;
                o[i][2] *= c1, o[i][3] *= c1;
            }
            uint32_t a[4];
            a[0] = s_pack(sc[0][0], sc[0][1]);
            a[1] = s_pack(sc[0][2], sc[0][3]);
            a[2] = s_pack(sc[1][0], sc[1][1]);
            a[3] = s_pack(sc[1][2], sc[1][3]);
            const bf16 *vrow = sV + (lane & 15) * KS;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                uint32_t v0, v1;
                const unsigned addr = (unsigned)__cvta_generic_to_shared(vrow + dt * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                             : "=r"(v0), "=r"(v1)
                             : "r"(addr));
                s_mma(o[dt], a, v0, v1);
            }
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    // merge the four warps' (m, l, o) through shared memory (the stages are free now)
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float *sO = (float *)dsmem4;                        // (DC_WARPS, 16, HD)
    float *sML = sO + DC_WARPS * 16 * HD;               // (DC_WARPS, 16, 2)
    float *w0 = sO + (warp * 16 + r0) * HD, *w1 = sO + (warp * 16 + r1) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        const int c = dt * 8 + 2 * tq;
        *(float2 *)(w0 + c) = make_float2(o[dt][0], o[dt][1]);
        *(float2 *)(w1 + c) = make_float2(o[dt][2], o[dt][3]);
    }
    if (tq == 0) {
        sML[2 * (warp * 16 + r0)] = m0, sML[2 * (warp * 16 + r0) + 1] = l0;
        sML[2 * (warp * 16 + r1)] = m1, sML[2 * (warp * 16 + r1) + 1] = l1;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nr * HD; idx += DC_THREADS) {
        const int r = idx / HD, d = idx % HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) M = fmaxf(M, sML[2 * (w * 16 + r)]);
        float L = 0.0f, acc = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int w = 0; w < DC_WARPS; w++) {
                const float mw = sML[2 * (w * 16 + r)];
                if (mw == -INFINITY) continue;  // a warp that saw no key of this row
                const float f = exp2f(mw - M);
                L += sML[2 * (w * 16 + r) + 1] * f;
                acc += sO[(w * 16 + r) * HD + d] * f;
            }
        }
        out[((size_t)(q0 + r / G) * H + kvh * G + r % G) * HD + d] = __float2bfloat16_rn(L > 0.0f ? acc / L : 0.0f);
    }
}

extern "C" int kvf_attention_decode_supports(int n_heads, int n_kv, int head_dim) {
    return n_kv > 0 && n_heads > 0 && n_heads % n_kv == 0 && n_heads / n_kv <= KVF_ATTN_DECODE_ROWS &&
           (head_dim == 64 || head_dim == 128);
}

extern "C" size_t kvf_attention_decode_smem(int head_dim) {
    return (size_t)2 * 2 * DC_K * (head_dim + 8) * sizeof(uint16_t);
}

extern "C" int kvf_attention_decode(uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                    const uint16_t *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                    const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim,
                                    int block_size, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && q && k_cache && v_cache && tiles && pos && block_table, err);
    KVF_REQUIRE(kvf_attention_decode_supports(n_heads, n_kv, head_dim) && n_kv <= 65535, err);
    KVF_REQUIRE(block_size > 0 && max_blocks > 0 && n_tiles >= 0, err);
    if (n_tiles == 0) return 0;
    const float scale_log2 = (float)(1.0 / sqrt((double)head_dim) * 1.4426950408889634);
    KVF_REQUIRE((long long)n_tiles * n_kv <= 0x7fffffffLL, err);
    const dim3 grid(n_tiles * n_kv);
    const size_t smem = kvf_attention_decode_smem(head_dim);
    if (head_dim == 64) {
        KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_decode<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                       err);
        s_attn_decode<64><<<grid, DC_THREADS, smem, stream>>>((bf16 *)out, (const bf16 *)q, (const bf16 *)k_cache,
                                                              (const bf16 *)v_cache, tiles, pos, block_table,
                                                              max_blocks, n_heads, n_kv, block_size, scale_log2);
    } else {
        KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_decode<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)smem), err);
        s_attn_decode<128><<<grid, DC_THREADS, smem, stream>>>((bf16 *)out, (const bf16 *)q, (const bf16 *)k_cache,
                                                               (const bf16 *)v_cache, tiles, pos, block_table,
                                                               max_blocks, n_heads, n_kv, block_size, scale_log2);
    }
    KVF_LAUNCH_CHECK(err);
    return 0;
}
