// kernels/attention_prefill.cu — see attention_prefill.h.
//
// One block of 4 warps per (tile of 64 query tokens, query head); each warp owns
// 16 query rows, keeps its Q fragments and its output accumulator in registers,
// and walks the keys in tiles of 64 staged in shared memory (K and V row-major,
// rows padded by 16 bytes) by cp.async, two stages deep: the next key tile is in
// flight while the current one is multiplied (v1 loaded each tile synchronously,
// one memory latency per 16-byte chunk a thread: ~85 TFLOP/s). Blocks run the
// tiles last to first, so the long causal tiles (late queries) start first and
// the short ones fill the tail; the query heads of a tile are neighbours in the
// grid, so the 4 heads of a GQA group read their K/V tiles at about the same
// time and three of the four reads hit the L2. S = Q K^T and O += P V are mma.sync m16n8k16 bf16
// products with f32 accumulators; V's fragments come through ldmatrix.trans.
// Softmax runs in base 2 on the f32 scores; P is rounded to bf16 for the PV
// product (as flash-attention does).
#include <math.h>

#include "kernels/attention_prefill.h"
#include "kernels/check.h"
#include "kernels/util.cuh"

#define PM_THREADS 128
#define PM_Q KVF_ATTN_PREFILL_Q
#define PM_K 64

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
    const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(gmem));
}

template <int HD>
static __global__ void __launch_bounds__(PM_THREADS, 3)  // 3 blocks an SM: <= 170 registers, 3 x 68 KB
s_attn_prefill(bf16 *out,                // (n_tokens, H, HD)
               const bf16 *q,            // (n_tokens, H, HD)
               const bf16 *kc,           // (n_blocks, bs, KV, HD)
               const bf16 *vc,           // (n_blocks, bs, KV, HD)
               const int32_t *tiles,     // (n_tiles, 3)
               const int32_t *pos,       // (n_tokens)
               const int32_t *bt,        // (n_seqs, max_blocks)
               int max_blocks, int H, int KV, int bs, float scale_log2) {
    constexpr int KS = HD + 8;            // row stride of sK and sV (bf16): 16 bytes of padding
    constexpr int STAGE = 2 * PM_K * KS;  // K then V
    constexpr int CPT = PM_K * (HD / 8) / PM_THREADS;  // 16-byte chunks per thread per tensor
    extern __shared__ float4 pm_dsmem4[];
    bf16 *sm = (bf16 *)pm_dsmem4;         // (2 stages, K|V, PM_K, KS)

    // tiles last to first, heads fastest (a tile's query heads share its K/V through the L2)
    const int lin = gridDim.x - 1 - blockIdx.x, tile = lin / H, h = lin % H, kvh = h / (H / KV);
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int32_t *btab = bt + (size_t)seq * max_blocks;
    const int p0 = pos[q0];
    const int kv_end = p0 + nq;
    const int r0 = warp * 16 + g, r1 = r0 + 8;  // this thread's two rows in the tile
    const int pr0 = p0 + r0, pr1 = p0 + r1;

    auto load = [&](int stage, int kt) {
        bf16 *sK = sm + stage * STAGE, *sV = sK + PM_K * KS;
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const int ch = threadIdx.x + i * PM_THREADS, j = ch / (HD / 8), d = (ch % (HD / 8)) * 8, key = kt + j;
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
    const int n_kt = (kv_end + PM_K - 1) / PM_K;
    load(0, 0);

    // Q fragments (A operands), one per 16 dims
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        const int c = ks * 16 + 2 * tq;
        const bf16 *q0p = q + ((size_t)(q0 + r0) * H + h) * HD, *q1p = q + ((size_t)(q0 + r1) * H + h) * HD;
        qf[ks][0] = r0 < nq ? *(const uint32_t *)(q0p + c) : 0u;
        qf[ks][1] = r1 < nq ? *(const uint32_t *)(q1p + c) : 0u;
        qf[ks][2] = r0 < nq ? *(const uint32_t *)(q0p + c + 8) : 0u;
        qf[ks][3] = r1 < nq ? *(const uint32_t *)(q1p + c + 8) : 0u;
    }

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const bool warp_live = warp * 16 < nq;
    const int warp_last_pos = p0 + warp * 16 + 15;

    for (int it = 0; it < n_kt; it++) {
        const int stage = it & 1, kt = it * PM_K;
        if (it + 1 < n_kt) {
            load(stage ^ 1, kt + PM_K);  // its buffer was released by the barrier that ended it - 1
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();  // this stage's keys are in shared memory for every thread
        const bf16 *sK = sm + stage * STAGE, *sV = sK + PM_K * KS;
        if (warp_live && kt <= warp_last_pos) {  // uniform over the warp
            // S = Q K^T for 64 keys: 8 tiles of 8 keys
            float sc[PM_K / 8][4];
    #pragma unroll
            for (int nt = 0; nt < PM_K / 8; nt++) {
                sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
                const bf16 *kr = sK + (nt * 8 + g) * KS + 2 * tq;
    #pragma unroll
                for (int ks = 0; ks < HD / 16; ks++)
                    s_mma(sc[nt], qf[ks], *(const uint32_t *)(kr + ks * 16), *(const uint32_t *)(kr + ks * 16 + 8));
            }
            // scale, causal mask, row maxima (a row's 64 scores live in the 4 threads of a quad)
            float mx0 = -INFINITY, mx1 = -INFINITY;
    #pragma unroll
            for (int nt = 0; nt < PM_K / 8; nt++)
    #pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kt + nt * 8 + 2 * tq + (e & 1);
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
            for (int nt = 0; nt < PM_K / 8; nt++) {
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
            // O += P V: P (16 x 64) from the score fragments, V through ldmatrix.trans
    #pragma unroll
            for (int kk = 0; kk < PM_K / 16; kk++) {
                uint32_t a[4];
                a[0] = s_pack(sc[2 * kk][0], sc[2 * kk][1]);
                a[1] = s_pack(sc[2 * kk][2], sc[2 * kk][3]);
                a[2] = s_pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                a[3] = s_pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
                const bf16 *vrow = sV + (kk * 16 + (lane & 15)) * KS;
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
        }
        __syncthreads();  // every warp is done with this stage before it is loaded again
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16 *o0 = out + ((size_t)(q0 + r0) * H + h) * HD, *o1 = out + ((size_t)(q0 + r1) * H + h) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        const int c = dt * 8 + 2 * tq;
        if (r0 < nq) *(__nv_bfloat162 *)(o0 + c) = __floats2bfloat162_rn(o[dt][0] * i0, o[dt][1] * i0);
        if (r1 < nq) *(__nv_bfloat162 *)(o1 + c) = __floats2bfloat162_rn(o[dt][2] * i1, o[dt][3] * i1);
    }
}

extern "C" int kvf_attention_prefill_supports(int head_dim) { return head_dim == 64 || head_dim == 128; }

extern "C" int kvf_attention_prefill(uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                     const uint16_t *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                     const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim,
                                     int block_size, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && q && k_cache && v_cache && tiles && pos && block_table, err);
    KVF_REQUIRE(n_heads > 0 && n_kv > 0 && n_heads % n_kv == 0 && n_heads <= 65535, err);
    KVF_REQUIRE(kvf_attention_prefill_supports(head_dim), err);
    KVF_REQUIRE(block_size > 0 && max_blocks > 0 && n_tiles >= 0, err);
    if (n_tiles == 0) return 0;
    const float scale_log2 = (float)(1.0 / sqrt((double)head_dim) * 1.4426950408889634);
    KVF_REQUIRE((long long)n_tiles * n_heads <= 0x7fffffffLL, err);
    const dim3 grid(n_tiles * n_heads);
    const size_t smem = (size_t)2 * 2 * PM_K * (head_dim + 8) * sizeof(uint16_t);  // 2 stages of K and V
    if (head_dim == 64) {
        KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)smem), err);
        s_attn_prefill<64><<<grid, PM_THREADS, smem, stream>>>((bf16 *)out, (const bf16 *)q, (const bf16 *)k_cache,
                                                              (const bf16 *)v_cache, tiles, pos, block_table,
                                                              max_blocks, n_heads, n_kv, block_size, scale_log2);
    } else {
        KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)smem), err);
        s_attn_prefill<128><<<grid, PM_THREADS, smem, stream>>>((bf16 *)out, (const bf16 *)q, (const bf16 *)k_cache,
                                                               (const bf16 *)v_cache, tiles, pos, block_table,
                                                               max_blocks, n_heads, n_kv, block_size, scale_log2);
    }
    KVF_LAUNCH_CHECK(err);
    return 0;
}
