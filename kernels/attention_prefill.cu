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
// product (as flash-attention does). That kernel is variant 0; variants 1 and 2
// (below) give a staged K/V tile to 2 or 4 query heads of a group and 32 rows to a
// warp; kvf_attention_prefill runs s_default_variant.
#include <math.h>

#include "kernels/attention_prefill.h"
#include "kernels/attention_step.cuh"
#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/mma.cuh"
#include "kernels/util.cuh"
#include "kernels/wgmma.cuh"

#define PM_THREADS 128
#define PM_Q KVF_ATTN_PREFILL_Q
#define PM_K 64

// ---------------------------------------------------------------- v0: a block per (tile, query head)

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
    kvf_pdl_wait();
    constexpr int KS = HD + 8;            // row stride of sK and sV (bf16): 16 bytes of padding
    constexpr int STAGE = 2 * PM_K * KS;  // K then V
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
        bf16 *sK = sm + stage * STAGE;
        kvf_attn_stage_kv<HD, PM_K, PM_THREADS>(sK, sK + PM_K * KS, kc, vc, btab, bs, KV, kvh, kt, kv_end);
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
            kvf_cp_async_wait<1>();
        } else {
            kvf_cp_async_wait<0>();
        }
        __syncthreads();  // this stage's keys are in shared memory for every thread
        const bf16 *sK = sm + stage * STAGE, *sV = sK + PM_K * KS;
        if (warp_live && kt <= warp_last_pos) {  // uniform over the warp
            kvf_attn_step<HD, PM_K>(sK, sV, qf, o, m0, m1, l0, l1, kt, kv_end, pr0, pr1, scale_log2, lane);
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

// ---------------------------------------------------------------- v1, v2: GQA rows, 32 rows a warp
//
// flash-attention 2's shape over the paged cache. A block takes NH query heads of
// one KV head for a tile of 64 tokens (NH x 64 rows, 2 warps a head, 32 rows a
// warp as two m16 fragments), so each staged K/V tile serves NH x 64 rows (v0:
// 64) and each K or V fragment read from shared memory feeds two mma (v0: one);
// the two fragments are independent chains that overlap each other's softmax
// latency. Registers: 2 x 16 x 4 output floats (HD 128) leave no room for Q, so Q
// lives in shared memory and is re-read per 16 dims by ldmatrix, and a 64-key
// stage is two online-softmax steps of 32 keys (2 x 4 x 4 score floats; with 64
// keys ptxas spilled); the output rescale is skipped when no row maximum of the
// warp moved (c = 1 exactly, most steps). K comes through ldmatrix (4 matrices:
// 16 keys x 16 dims), V through ldmatrix.trans (16 keys x 16 dims). The causal
// mask is applied only on steps that reach past a warp's first query, and a warp
// skips the steps past its last query. Numerics are v0's: base-2 softmax on f32
// scores, P rounded to bf16 (against the running maximum of 32 keys, not 64).

// NH heads a block (1, 2 or 4, dividing the group), 64 x NH threads. TC: the
// cache's element type, bf16 or kvf_fp8_t (E4M3): FP8 key tiles land as bytes in
// a ring of their own and the block widens each to bf16 (exact) in the stage that
// the warps read, one more barrier a tile; the arithmetic is the bf16 path's.
template <int HD, int NH, typename TC = bf16>
static __global__ void __launch_bounds__(64 * NH, 1)  // <= 255 registers; shared memory sets blocks an SM
s_attn_prefill_gqa(bf16 *out,                // (n_tokens, H, HD)
                   const bf16 *q,            // (n_tokens, H, HD)
                   const TC *kc,             // (n_blocks, bs, KV, HD)
                   const TC *vc,             // (n_blocks, bs, KV, HD)
                   const int32_t *tiles,     // (n_tiles, 3)
                   const int32_t *pos,       // (n_tokens)
                   const int32_t *bt,        // (n_seqs, max_blocks)
                   int max_blocks, int H, int KV, int bs, float scale_log2) {
    kvf_pdl_wait();
    constexpr int NT = 64 * NH;           // threads, and rows (NH heads x 64 tokens)
    constexpr int KS = HD + 8;            // row stride of sQ, sK, sV (bf16): 16 bytes of padding, no bank conflicts
    constexpr int STAGE = 2 * PM_K * KS;  // K then V
    constexpr int GK = 32;                // keys an online-softmax step
    static_assert(PM_Q == 64, "2 warps of 32 rows a head");
    extern __shared__ float4 pg_dsmem4[];
    bf16 *sQ = (bf16 *)pg_dsmem4;         // (NH x 64 rows, KS): row hh * 64 + t is token t of head h0 + hh
    bf16 *sKV = sQ + NT * KS;             // (2 stages, K|V, PM_K, KS)
    constexpr bool F8 = sizeof(TC) == 1;
    constexpr int EPC = 16 / (int)sizeof(TC);  // elements a 16-byte chunk
    constexpr int RS = F8 ? HD : KS;           // row stride (TC) of the rows that cp.async fills
    constexpr int LSTAGE = F8 ? 2 * PM_K * HD : STAGE;  // (K|V, PM_K, RS) TC
    TC *sL = F8 ? (TC *)(sKV + 2 * STAGE) : (TC *)sKV;  // where the loads land: (2 stages, K|V, PM_K, RS)

    // tiles last to first (long causal tiles first), head groups fastest (they share K/V through the L2)
    const int n_hb = H / NH;
    const int lin = gridDim.x - 1 - blockIdx.x, tile = lin / n_hb, h0 = (lin % n_hb) * NH, kvh = h0 / (H / KV);
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int h = h0 + (warp >> 1), tw = (warp & 1) * 32;  // this warp's head and first token
    const int32_t *btab = bt + (size_t)seq * max_blocks;
    const int p0 = pos[q0];
    const int kv_end = p0 + nq;

    // Q of the block's NH heads (zeros past the tile's tokens), in the first cp.async group with key tile 0
#pragma unroll
    for (int i = 0; i < HD / 8; i++) {
        const int ch = threadIdx.x + i * NT, r = ch / (HD / 8), d = (ch % (HD / 8)) * 8, t = r % 64;
        if (t < nq) kvf_cp_async16(sQ + r * KS + d, q + ((size_t)(q0 + t) * H + h0 + r / 64) * HD + d);
        else *(uint4 *)(sQ + r * KS + d) = make_uint4(0u, 0u, 0u, 0u);
    }
    // NH threads a key row: thread part p copies the 16-byte chunks p, p + NH, ... of key j's K and V rows, so one
    // block-table look-up serves a thread's whole row share, and at each step the NH threads of a key read
    // NH x 16 adjacent bytes. Few registers live across the loop (the accumulators need them).
    constexpr int CPT = HD / EPC / NH;  // chunks per thread per tensor per key tile
    static_assert(NT == PM_K * NH && CPT * NH == HD / EPC, "NH threads a key");
    const int kj = threadIdx.x / NH, kp = threadIdx.x % NH;
    const TC *kbase = kc + (size_t)kvh * HD + kp * EPC, *vbase = vc + (size_t)kvh * HD + kp * EPC;
    TC *sdst = sL + kj * RS + kp * EPC;  // stage 0's K
    auto load = [&](int stage, int kt) {
        TC *sK = sdst + stage * LSTAGE, *sV = sK + PM_K * RS;
        const int key = kt + kj;
        if (key < kv_end) {
            const size_t row = (size_t)btab[key / bs] * bs + key % bs;
            const TC *gk = kbase + row * KV * HD, *gv = vbase + row * KV * HD;
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                kvf_cp_async16(sK + i * NH * EPC, gk + i * NH * EPC);
                kvf_cp_async16(sV + i * NH * EPC, gv + i * NH * EPC);
            }
        } else {  // zeros: a masked key's V row is multiplied by p = 0, which must not meet a NaN
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                *(uint4 *)(sK + i * NH * EPC) = make_uint4(0u, 0u, 0u, 0u);
                *(uint4 *)(sV + i * NH * EPC) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        kvf_cp_async_commit();
    };
    const int n_kt = (kv_end + PM_K - 1) / PM_K;
    load(0, 0);

    float o[2][HD / 8][4];
#pragma unroll
    for (int f = 0; f < 2; f++)
#pragma unroll
        for (int i = 0; i < HD / 8; i++) o[f][i][0] = o[f][i][1] = o[f][i][2] = o[f][i][3] = 0.0f;
    float m[2][2], l[2][2];  // [fragment][row g, row g + 8]
#pragma unroll
    for (int f = 0; f < 2; f++) m[f][0] = m[f][1] = -INFINITY, l[f][0] = l[f][1] = 0.0f;
    const bool warp_live = tw < nq;
    const int warp_first_pos = p0 + tw, warp_last_pos = warp_first_pos + 31;

    // ldmatrix row addresses (bytes, shared space). Q (A, 16 x 16): lane -> row lane % 16, dims + 8 (lane / 16).
    // K (B of S, 4 matrices 8 keys x 8 dims): lane -> key lane % 8 + 8 (lane / 16), dims + 8 (lane / 8 % 2):
    // b0 b1 of two key tiles.
    // V (B of PV, trans, 4 matrices 8 keys x 8 dims): lane -> key lane % 16, dims + 8 (lane / 16): two n-tiles.
    const unsigned q_addr =
        (unsigned)__cvta_generic_to_shared(sQ + (warp * 32 + (lane & 15)) * KS + (lane >> 4) * 8);
    const unsigned kv_addr0 = (unsigned)__cvta_generic_to_shared(sKV);
    const unsigned k_off = (((lane & 7) + (lane >> 4) * 8) * KS + ((lane >> 3) & 1) * 8) * 2;
    const unsigned v_off = ((lane & 15) * KS + (lane >> 4) * 8) * 2;

    for (int it = 0; it < n_kt; it++) {
        const int stage = it & 1, kt = it * PM_K;
        if (it + 1 < n_kt) {
            load(stage ^ 1, kt + PM_K);  // its buffer was released by the barrier that ended it - 1
            kvf_cp_async_wait<1>();
        } else {
            kvf_cp_async_wait<0>();
        }
        __syncthreads();  // this stage's keys (and Q) are in shared memory for every thread
        if constexpr (F8) {  // widen the tile's E4M3 rows into the bf16 stage (exact)
            constexpr int WPT = 2 * PM_K * (HD / 16) / NT;  // 16-byte chunks a thread
            static_assert(WPT * NT == 2 * PM_K * (HD / 16), "whole chunks a thread");
            const TC *src = sL + stage * LSTAGE;
            bf16 *dst = sKV + stage * STAGE;
#pragma unroll 2
            for (int i = 0; i < WPT; i++) {
                const int ch = threadIdx.x + i * NT, r = ch / (HD / 16), d = ch % (HD / 16) * 16;  // r: K rows, V rows
                uint4 w[2];
                kvf_fp8x16_to_bf16(*(const uint4 *)(src + r * HD + d), w);
                *(uint4 *)(dst + r * KS + d) = w[0];
                *(uint4 *)(dst + r * KS + d + 8) = w[1];
            }
            __syncthreads();
        }
        if (warp_live && kt <= warp_last_pos) {  // uniform over the warp
            const unsigned k_addr = kv_addr0 + stage * STAGE * 2 + k_off;
            const unsigned v_addr = kv_addr0 + (stage * STAGE + PM_K * KS) * 2 + v_off;
            // two online-softmax steps of 32 keys: 2 x 16 x 32 scores fit next to the 2 x 16 x HD accumulators
#pragma unroll
            for (int hf = 0; hf < PM_K / GK; hf++) {
                const int kh = kt + hf * GK;  // first key of this step
                if (kh > warp_last_pos) break;  // uniform: every key of the step is past the warp's queries
                // S = Q K^T for 32 rows x 32 keys: 2 fragments x 4 tiles of 8 keys
                float sc[2][GK / 8][4];
#pragma unroll
                for (int f = 0; f < 2; f++)
#pragma unroll
                    for (int nt = 0; nt < GK / 8; nt++)
                        sc[f][nt][0] = sc[f][nt][1] = sc[f][nt][2] = sc[f][nt][3] = 0.0f;
#pragma unroll
                for (int ks = 0; ks < HD / 16; ks++) {
                    uint32_t qa[2][4];  // [fragment]
#pragma unroll
                    for (int f = 0; f < 2; f++) kvf_ldmatrix_x4(qa[f], q_addr + (f * 16 * KS + ks * 16) * 2);
#pragma unroll
                    for (int nt = 0; nt < GK / 8; nt += 2) {
                        uint32_t kb[4];  // b0 b1 of key tiles nt and nt + 1
                        kvf_ldmatrix_x4(kb, k_addr + ((hf * GK + nt * 8) * KS + ks * 16) * 2);
#pragma unroll
                        for (int f = 0; f < 2; f++) {
                            kvf_mma_bf16_16816(sc[f][nt], qa[f], kb[0], kb[1]);
                            kvf_mma_bf16_16816(sc[f][nt + 1], qa[f], kb[2], kb[3]);
                        }
                    }
                }
                // scale, causal mask (only where the step reaches past the warp's first query), online softmax
                const bool diag = kh + GK - 1 > warp_first_pos;
                float c[2][2];
                uint32_t pa[2][GK / 16][4];  // P as A fragments of PV (bf16): [fragment][16 keys]
#pragma unroll
                for (int f = 0; f < 2; f++) {
                    // key kh + nt * 8 + 2 tq + (e & 1) is past row g's position when nt * 8 + (e & 1) > lim0 (an
                    // immediate against one register: no per-element constants live across the loop)
                    const int lim0 = warp_first_pos + f * 16 + g - kh - 2 * tq, lim1 = lim0 + 8;
                    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
                    for (int nt = 0; nt < GK / 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            float v = sc[f][nt][e] * scale_log2;
                            if (diag && nt * 8 + (e & 1) > (e < 2 ? lim0 : lim1)) v = -INFINITY;
                            sc[f][nt][e] = v;
                            if (e < 2) mx0 = fmaxf(mx0, v);
                            else mx1 = fmaxf(mx1, v);
                        }
#pragma unroll
                    for (int o_ = 1; o_ <= 2; o_ <<= 1) {
                        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
                        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
                    }
                    const float mn0 = fmaxf(m[f][0], mx0), mn1 = fmaxf(m[f][1], mx1);
                    const float b0 = mn0 == -INFINITY ? 0.0f : mn0, b1 = mn1 == -INFINITY ? 0.0f : mn1;
                    c[f][0] = exp2f(m[f][0] - b0), c[f][1] = exp2f(m[f][1] - b1);
                    m[f][0] = mn0, m[f][1] = mn1;
                    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
                    for (int nt = 0; nt < GK / 8; nt++) {
                        sc[f][nt][0] = exp2f(sc[f][nt][0] - b0);
                        sc[f][nt][1] = exp2f(sc[f][nt][1] - b0);
                        sc[f][nt][2] = exp2f(sc[f][nt][2] - b1);
                        sc[f][nt][3] = exp2f(sc[f][nt][3] - b1);
                        s0 += sc[f][nt][0] + sc[f][nt][1];
                        s1 += sc[f][nt][2] + sc[f][nt][3];
                    }
#pragma unroll
                    for (int kk = 0; kk < GK / 16; kk++) {
                        pa[f][kk][0] = kvf_pack_bf16x2(sc[f][2 * kk][0], sc[f][2 * kk][1]);
                        pa[f][kk][1] = kvf_pack_bf16x2(sc[f][2 * kk][2], sc[f][2 * kk][3]);
                        pa[f][kk][2] = kvf_pack_bf16x2(sc[f][2 * kk + 1][0], sc[f][2 * kk + 1][1]);
                        pa[f][kk][3] = kvf_pack_bf16x2(sc[f][2 * kk + 1][2], sc[f][2 * kk + 1][3]);
                    }
                    l[f][0] = l[f][0] * c[f][0] + s0;  // per-thread partial sums; the quad adds them up at the end
                    l[f][1] = l[f][1] * c[f][1] + s1;
                }
                // the row maxima stop moving after the first keys: skip the rescale when no row's did (exact: c = 1)
                const bool moved = c[0][0] != 1.0f || c[0][1] != 1.0f || c[1][0] != 1.0f || c[1][1] != 1.0f;
                if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                    for (int f = 0; f < 2; f++)
#pragma unroll
                        for (int i = 0; i < HD / 8; i++) {
                            o[f][i][0] *= c[f][0], o[f][i][1] *= c[f][0];
                            o[f][i][2] *= c[f][1], o[f][i][3] *= c[f][1];
                        }
                }
                // O += P V, V through ldmatrix.trans
#pragma unroll
                for (int kk = 0; kk < GK / 16; kk++) {
#pragma unroll
                    for (int dt = 0; dt < HD / 8; dt += 2) {
                        uint32_t vb[4];
                        kvf_ldmatrix_x4_trans(vb, v_addr + ((hf * GK + kk * 16) * KS + dt * 8) * 2);
#pragma unroll
                        for (int f = 0; f < 2; f++) {
                            kvf_mma_bf16_16816(o[f][dt], pa[f][kk], vb[0], vb[1]);
                            kvf_mma_bf16_16816(o[f][dt + 1], pa[f][kk], vb[2], vb[3]);
                        }
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with this stage before it is loaded again
    }

#pragma unroll
    for (int f = 0; f < 2; f++) {
        float l0 = l[f][0], l1 = l[f][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        const int r0 = tw + f * 16 + g, r1 = r0 + 8;  // tokens in the tile
        bf16 *o0 = out + ((size_t)(q0 + r0) * H + h) * HD, *o1 = out + ((size_t)(q0 + r1) * H + h) * HD;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            const int cc = dt * 8 + 2 * tq;
            if (r0 < nq) *(__nv_bfloat162 *)(o0 + cc) = __floats2bfloat162_rn(o[f][dt][0] * i0, o[f][dt][1] * i0);
            if (r1 < nq) *(__nv_bfloat162 *)(o1 + cc) = __floats2bfloat162_rn(o[f][dt][2] * i1, o[f][dt][3] * i1);
        }
    }
}

// ---------------------------------------------------------------- v3, v4: warpgroup MMA (sm_90a)
//
// flash-attention 3's arithmetic without its warp specialisation. A block takes NH
// query heads of one KV head for a tile of 64 tokens; warpgroup w (128 threads)
// owns head h0 + w's 64 rows. Q, and each 64-key stage of K and V, sit in shared
// memory in wgmma's 128-byte-swizzled layout (kernels/wgmma.cuh), loaded by
// cp.async: a ring of 2 stages with a barrier before and after each (v3), or of 3
// with one barrier a stage and two stages in flight (v4). Per stage a warpgroup
// runs S = Q K^T as HD / 16 wgmma m64n64k16 (both operands from shared memory),
// the online softmax on its 32 score registers a thread (v2's numerics: base 2, P
// rounded to bf16; the scale folded into one fma a score), then O += P V as 4
// wgmma m64nHDk16 with P from registers and V read MN-major (no transposed copy).
// A warpgroup's accumulators are 64 x 64 / 128 + 64 x HD / 128 floats a thread
// (v2: a warp's 32 rows needed 2 x 16 x HD / 32), so 4 warpgroups (16 warps) fit
// on an SM under a 128-register cap. Fewer warps measured slower, whatever they
// gained (kernels/NOTES.md v9: 2 heads uncapped 174 TFLOP/s; a producer warpgroup
// with mbarriers and 2 consumers 159, with the next stage's S issued before the
// softmax 141), and so did 32-key steps (203). The warpgroups of a block share the
// K/V stage and its barriers. FP8 caches land as bytes and are widened into the
// bf16 stage, as in v2.
// Q rows of NH heads (h0 ..) of a 64-token tile into NH swizzled tiles at sQ, zeros past the tile's nq tokens:
// thread tid of NTL copies 16-byte chunks tid, tid + NTL, ... (cp.async, not committed).
template <int HD, int NH, int NTL>
static __device__ __forceinline__ void s_wg_load_q(char *sQ, int tid, const bf16 *q, int q0, int nq, int H, int h0) {
    constexpr int CPR = HD / 8, TILE = PM_Q * HD * 2;  // 16-byte chunks a row, bytes a head's tile
    static_assert(NH * PM_Q * CPR % NTL == 0, "whole Q chunks a thread");
#pragma unroll
    for (int i = 0; i < NH * PM_Q * CPR / NTL; i++) {
        const int ch = tid + i * NTL, r = ch / CPR, c = ch % CPR, hh = r / PM_Q, t = r % PM_Q;
        char *dst = sQ + hh * TILE + kvf_wg_sw128(PM_Q, t, c);
        if (t < nq) kvf_cp_async16(dst, q + ((size_t)(q0 + t) * H + h0 + hh) * HD + c * 8);
        else *(uint4 *)dst = make_uint4(0u, 0u, 0u, 0u);
    }
}

// A stage: keys kt .. kt + 63 of K and of V (kbase, vbase: the cache at this KV head) into the stage at dst
// (bf16: K then V swizzled tiles; E4M3: K then V rows of HD bytes), zeros past kv_end. Thread tid of NTL copies
// chunk tid % LCPR of key rows tid / LCPR + r x RSTEP, its K and its V chunk, so one block-table look-up serves
// both and consecutive threads read a row's consecutive chunks (cp.async, not committed). bsh: log2 of bs, or -1.
template <int HD, int NTL, typename TC>
static __device__ __forceinline__ void s_wg_load_stage(char *dst, int tid, int kt, int kv_end, const int32_t *btab,
                                                       int bs, int bsh, const TC *kbase, const TC *vbase, int KV) {
    constexpr bool F8 = sizeof(TC) == 1;
    constexpr int EPC = 16 / (int)sizeof(TC), LCPR = HD / EPC;                 // elements a chunk, chunks a row
    constexpr int RSTEP = NTL / LCPR, KPT = RSTEP >= PM_K ? 1 : PM_K / RSTEP;  // rows apart, key rows a thread
    static_assert(NTL % LCPR == 0 && (RSTEP >= PM_K || PM_K % RSTEP == 0), "whole K/V rows a thread group");
    const int lc = tid % LCPR, lj = tid / LCPR;
#pragma unroll 2
    for (int r = 0; r < KPT; r++) {
        const int j = lj + r * RSTEP, key = kt + j;
        if (RSTEP > PM_K && j >= PM_K) break;  // more threads than chunks (small rows): the rest idle
        char *dk = F8 ? dst + j * HD + lc * EPC : dst + kvf_wg_sw128(PM_K, j, lc);
        char *dv = dk + (F8 ? PM_K * HD : PM_K * HD * 2);
        if (key < kv_end) {
            const int blk = bsh >= 0 ? key >> bsh : key / bs, off = key - blk * bs;
            const size_t row = ((size_t)btab[blk] * bs + off) * KV * HD + lc * EPC;
            kvf_cp_async16(dk, kbase + row);
            kvf_cp_async16(dv, vbase + row);
        } else {  // zeros: a masked key's V row is multiplied by p = 0, which must not meet a NaN
            *(uint4 *)dk = make_uint4(0u, 0u, 0u, 0u);
            *(uint4 *)dv = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// S (64 rows x 64 keys, f32) = Q K^T for the keys whose 128-byte rows start at shared address k_addr (Q at
// descriptor dq): 8 (HD 128) wgmma k16 steps, 32 bytes into a 128-byte row each. Issued and committed, not waited.
// The descriptor is made here from an opaque base, so that ptxas does not keep every step's live across a loop.
template <int HD>
static __device__ __forceinline__ void s_wg_scores(float (&sc)[PM_K / 2], uint64_t dq, unsigned k_addr) {
#if KVF_WG_AVAILABLE
    const uint64_t dk = kvf_wg_desc(kvf_wg_opaque(k_addr), 16, 1024);
    kvf_wg_fence();
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        const unsigned off = ((ks >> 2) * PM_K * 128 + (ks & 3) * 32) >> 4;  // descriptor address units
        kvf_wg_m64n64k16_ss(sc, dq + off, dk + off, ks);
    }
    kvf_wg_commit();
#else
    (void)sc, (void)dq, (void)k_addr;
#endif
}

// The online softmax of a stage's scores (keys kt .. kt + 63; pr0 = position of this thread's first row, p0 the
// tile's first): the causal mask where the stage reaches past p0, base 2 with the maxima m kept scaled (scale > 0
// commutes with max: p = 2^(s x scale - m), one fma a score), P rounded to bf16 into pa, l the per-thread partial
// sums, o rescaled where a row maximum moved.
template <int HD>
static __device__ __forceinline__ void s_wg_softmax(float (&sc)[PM_K / 2], uint32_t (&pa)[PM_K / 16][4],
                                                    float (&o)[HD / 2], float &m0, float &m1, float &l0, float &l1,
                                                    int kt, int p0, int pr0, int tq, float scale_log2) {
    const bool diag = kt + PM_K - 1 > p0;
    const int lim0 = pr0 - kt - 2 * tq, lim1 = lim0 + 8;  // key nt * 8 + (e & 1) of the stage is past row g
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < PM_K / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = sc[4 * nt + e];
            if (diag && nt * 8 + (e & 1) > (e < 2 ? lim0 : lim1)) v = -INFINITY;
            sc[4 * nt + e] = v;
            if (e < 2) mx0 = fmaxf(mx0, v);
            else mx1 = fmaxf(mx1, v);
        }
#pragma unroll
    for (int o_ = 1; o_ <= 2; o_ <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
    }
    float b0, b1, c0, c1;
    kvf_attn_new_max(m0, m1, mx0 * scale_log2, mx1 * scale_log2, b0, b1, c0, c1);
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < PM_K / 8; nt++) {
        sc[4 * nt + 0] = exp2f(fmaf(sc[4 * nt + 0], scale_log2, -b0));
        sc[4 * nt + 1] = exp2f(fmaf(sc[4 * nt + 1], scale_log2, -b0));
        sc[4 * nt + 2] = exp2f(fmaf(sc[4 * nt + 2], scale_log2, -b1));
        sc[4 * nt + 3] = exp2f(fmaf(sc[4 * nt + 3], scale_log2, -b1));
        s0 += sc[4 * nt + 0] + sc[4 * nt + 1];
        s1 += sc[4 * nt + 2] + sc[4 * nt + 3];
    }
#pragma unroll
    for (int kk = 0; kk < PM_K / 16; kk++) {
        pa[kk][0] = kvf_pack_bf16x2(sc[8 * kk + 0], sc[8 * kk + 1]);
        pa[kk][1] = kvf_pack_bf16x2(sc[8 * kk + 2], sc[8 * kk + 3]);
        pa[kk][2] = kvf_pack_bf16x2(sc[8 * kk + 4], sc[8 * kk + 5]);
        pa[kk][3] = kvf_pack_bf16x2(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
    l0 = l0 * c0 + s0;  // per-thread partial sums; the quad adds them up at the end
    l1 = l1 * c1 + s1;
    if (c0 != 1.0f || c1 != 1.0f) {  // the row maxima stop moving after the first keys (exact: c = 1)
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            o[4 * dt + 0] *= c0, o[4 * dt + 1] *= c0;
            o[4 * dt + 2] *= c1, o[4 * dt + 3] *= c1;
        }
    }
}

// O += P V: V's rows (keys, 64 dims a 128-byte row, MN-major) at shared address v_addr, 16 keys (2048 bytes) a
// wgmma. Issued and committed, not waited.
template <int HD>
static __device__ __forceinline__ void s_wg_pv(float (&o)[HD / 2], const uint32_t (&pa)[PM_K / 16][4], unsigned v_addr) {
#if KVF_WG_AVAILABLE
    const uint64_t dv = kvf_wg_desc(v_addr, PM_K * 128, 1024);
    kvf_wg_fence();
#pragma unroll
    for (int kk = 0; kk < PM_K / 16; kk++) {
        if constexpr (HD == 128) kvf_wg_m64n128k16_rs_mn(o, pa[kk], dv + ((kk * 16 * 128) >> 4));
        else kvf_wg_m64n64k16_rs_mn(o, pa[kk], dv + ((kk * 16 * 128) >> 4));
    }
    kvf_wg_commit();
#else
    (void)o, (void)pa, (void)v_addr;
#endif
}

// A wgmma group's accumulators, after its wait: the compiler must not move their uses above it.
template <int N>
static __device__ __forceinline__ void s_wg_hold(float (&x)[N]) {
#if KVF_WG_AVAILABLE
#pragma unroll
    for (int i = 0; i < N; i++) kvf_wg_hold(x[i]);
#else
    (void)x;
#endif
}

// One 64-key stage of a warpgroup's 64 rows, each wgmma group waited before its results are used.
template <int HD>
static __device__ __forceinline__ void s_wg_stage(float (&o)[HD / 2], float &m0, float &m1, float &l0, float &l1,
                                                  uint64_t dq, unsigned k_addr, unsigned v_addr, int kt, int p0,
                                                  int pr0, int tq, float scale_log2) {
#if KVF_WG_AVAILABLE
    float sc[PM_K / 2];
    uint32_t pa[PM_K / 16][4];  // P as A fragments of PV (bf16), 16 keys each
    s_wg_scores<HD>(sc, dq, k_addr);
    kvf_wg_wait<0>();
    s_wg_hold(sc);
    s_wg_softmax<HD>(sc, pa, o, m0, m1, l0, l1, kt, p0, pr0, tq, scale_log2);
    s_wg_pv<HD>(o, pa, v_addr);
    kvf_wg_wait<0>();
    s_wg_hold(o);
#else
    (void)o, (void)m0, (void)m1, (void)l0, (void)l1, (void)dq, (void)k_addr, (void)v_addr, (void)kt, (void)p0;
    (void)pr0, (void)tq, (void)scale_log2;
#endif
}

// A warpgroup's normalized rows into out: this thread's rows r0 and r0 + 8 of the tile (those below nq).
template <int HD>
static __device__ __forceinline__ void s_wg_store(bf16 *out, const float (&o)[HD / 2], float l0, float l1, int q0,
                                                  int nq, int H, int h, int r0, int tq) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const int r1 = r0 + 8;  // tokens in the tile
    bf16 *o0 = out + ((size_t)(q0 + r0) * H + h) * HD, *o1 = out + ((size_t)(q0 + r1) * H + h) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        const int cc = dt * 8 + 2 * tq;
        if (r0 < nq) *(__nv_bfloat162 *)(o0 + cc) = __floats2bfloat162_rn(o[4 * dt] * i0, o[4 * dt + 1] * i0);
        if (r1 < nq) *(__nv_bfloat162 *)(o1 + cc) = __floats2bfloat162_rn(o[4 * dt + 2] * i1, o[4 * dt + 3] * i1);
    }
}

template <int HD, int NH, int MINB, int ST, typename TC = bf16>
static __global__ void __launch_bounds__(128 * NH, MINB)  // NH x MINB = 4: <= 128 registers (16 warps an SM)
s_attn_prefill_wg(bf16 *out,                // (n_tokens, H, HD)
                  const bf16 *q,            // (n_tokens, H, HD)
                  const TC *kc,             // (n_blocks, bs, KV, HD)
                  const TC *vc,             // (n_blocks, bs, KV, HD)
                  const int32_t *tiles,     // (n_tiles, 3)
                  const int32_t *pos,       // (n_tokens)
                  const int32_t *bt,        // (n_seqs, max_blocks)
                  int max_blocks, int H, int KV, int bs, float scale_log2) {
    kvf_pdl_wait();
#if KVF_WG_AVAILABLE
    constexpr int NT = 128 * NH;
    constexpr int TILE = PM_K * HD * 2;  // bytes of a swizzled 64-row bf16 tile (a head's Q, a stage's K or V)
    constexpr bool F8 = sizeof(TC) == 1;
    static_assert(PM_Q == 64 && PM_K == 64, "a warpgroup's 64 rows, 64-key stages");
    static_assert(ST == 2 || ST == 3, "a ring of 2 or 3 stages");
    extern __shared__ float4 pw_dsmem4[];
    // 1024-byte aligned base (the swizzle is on address bits): (NH, TILE) Q, (ST stages, K|V, TILE), F8: the bytes
    const unsigned raw = (unsigned)__cvta_generic_to_shared(pw_dsmem4), sbase = (raw + 1023u) & ~1023u;
    char *gbase = (char *)pw_dsmem4 + (sbase - raw);
    char *sQ = gbase, *sKV = gbase + NH * TILE;
    TC *sL = (TC *)(sKV + 2 * ST * TILE);  // F8: (ST stages, K|V, PM_K, HD) E4M3 rows

    const int n_hb = H / NH;
    const int lin = gridDim.x - 1 - blockIdx.x, tile = lin / n_hb, h0 = (lin % n_hb) * NH, kvh = h0 / (H / KV);
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31, wq = (threadIdx.x >> 5) & 3;
    const int g = lane >> 2, tq = lane & 3;
    const int h = h0 + wg;
    const int32_t *btab = bt + (size_t)seq * max_blocks;
    const int p0 = pos[q0];
    const int kv_end = p0 + nq;

    // Q of the block's heads, in the first cp.async group with key tile 0
    s_wg_load_q<HD, NH, NT>(sQ, threadIdx.x, q, q0, nq, H, h0);
    const int bsh = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;  // log2 of a power-of-two block size
    const TC *kbase = kc + (size_t)kvh * HD, *vbase = vc + (size_t)kvh * HD;
    auto load = [&](int stage, int kt) {
        s_wg_load_stage<HD, NT, TC>(F8 ? (char *)(sL + (size_t)stage * 2 * PM_K * HD) : sKV + stage * 2 * TILE,
                                    threadIdx.x, kt, kv_end, btab, bs, bsh, kbase, vbase, KV);
        kvf_cp_async_commit();
    };
    const int n_kt = (kv_end + PM_K - 1) / PM_K;
    load(0, 0);
    if (ST == 3 && n_kt > 1) load(1, PM_K);

    float o[HD / 2];  // (64 rows x HD) / 128 threads: n8 block dt is o[4 dt .. 4 dt + 3]
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int pr0 = p0 + wq * 16 + g;  // position of this thread's first row (the second is 8 rows on)
    const unsigned q_addr = sbase + wg * TILE;

    // ST 2: stage it + 1 is loaded while stage it is multiplied, a barrier before and after. ST 3: stage it + 2
    // is loaded after the barrier that opens stage it (every warpgroup is then done with it - 1, whose buffers
    // it takes), so one barrier a stage and two stages in flight.
    for (int it = 0; it < n_kt; it++) {
        const int stage = it % ST, kt = it * PM_K;
        if (ST == 2 && it + 1 < n_kt) {
            load(stage ^ 1, kt + PM_K);  // its buffer was released by the barrier that ended it - 1
            kvf_cp_async_wait<1>();
        } else if (ST == 3 && it + 1 < n_kt) {
            kvf_cp_async_wait<1>();  // stage it + 1 may stay in flight
        } else {
            kvf_cp_async_wait<0>();
        }
        if constexpr (F8) {  // widen the stage's E4M3 rows into its swizzled bf16 tiles (exact)
            __syncthreads();
            constexpr int WPT = 2 * PM_K * (HD / 16) / NT;  // 16-byte byte-chunks a thread
            static_assert(WPT * NT == 2 * PM_K * (HD / 16), "whole chunks a thread");
#pragma unroll 1
            for (int i = 0; i < WPT; i++) {
                const int ch = threadIdx.x + i * NT, r = ch / (HD / 16), c16 = ch % (HD / 16);  // r: K rows, V rows
                const int tv = r / PM_K, j = r % PM_K;
                uint4 w[2];
                kvf_fp8x16_to_bf16(*(const uint4 *)(sL + ((size_t)stage * 2 * PM_K + r) * HD + c16 * 16), w);
                char *dst = sKV + (stage * 2 + tv) * TILE;
                *(uint4 *)(dst + kvf_wg_sw128(PM_K, j, 2 * c16)) = w[0];
                *(uint4 *)(dst + kvf_wg_sw128(PM_K, j, 2 * c16 + 1)) = w[1];
            }
        }
        kvf_fence_proxy_async();  // this thread's shared writes (cp.async, zeros, widened rows) seen by wgmma
        __syncthreads();          // this stage's keys (and Q) are in shared memory for every warpgroup
        if (ST == 3 && it + 2 < n_kt) load((it + 2) % 3, kt + 2 * PM_K);
        const unsigned k_addr = kvf_wg_opaque(sbase + NH * TILE + stage * 2 * TILE), v_addr = k_addr + TILE;

        s_wg_stage<HD>(o, m0, m1, l0, l1, kvf_wg_desc(kvf_wg_opaque(q_addr), 16, 1024), k_addr, v_addr, kt, p0, pr0,
                       tq, scale_log2);
        if (ST == 2) __syncthreads();  // every warpgroup is done with this stage before it is loaded again
    }

    s_wg_store<HD>(out, o, l0, l1, q0, nq, H, h, wq * 16 + g, tq);
#else
    (void)out, (void)q, (void)kc, (void)vc, (void)tiles, (void)pos, (void)bt, (void)max_blocks, (void)H, (void)KV;
    (void)bs, (void)scale_log2;
    __trap();  // the launcher runs this kernel only where it was built for sm_90a
#endif
}

// ---------------------------------------------------------------- launchers

extern "C" int kvf_attention_prefill_supports(int head_dim) { return head_dim == 64 || head_dim == 128; }

// The variants, timed against each other by kvf-kbench; every one runs every
// shape that kvf_attention_prefill_supports accepts.
static const char *const s_variant_names[] = {
    "v0 64q 4w",   // a block per (tile, query head): 4 warps x 16 rows, Q in registers
    "v1 gqa2 4w",  // a block per (tile, 2 heads of a group): 4 warps x 32 rows, Q in shared memory
    "v2 gqa4 8w",  // a block per (tile, 4 heads of a group): 8 warps x 32 rows, Q in shared memory
    "v3 wg gqa4",      // sm_90a: a block per (tile, 4 heads of a group), a warpgroup a head, wgmma, 2 stages
    "v4 wg gqa4 3st",  // sm_90a: the same with a ring of 3 stages, one barrier a stage
};
#define S_N_VARIANTS ((int)(sizeof s_variant_names / sizeof s_variant_names[0]))
// v2, the fastest on an H200 (kvf-kbench, 16 x 512-token causal prompts: v2 157 TFLOP/s,
// v1 152, v0 119)
static const int s_default_variant = 2;
// where the wgmma variants are available (built for sm_90a, running on compute capability 9.0): v4, 212-215
// TFLOP/s on the same prompts (v3 208-211)
static const int s_wg_default_variant = 4;

#define S_NEEDS_SM90A \
    "variants 3-4 need kernels built for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a) and a compute capability 9.0 GPU"

extern "C" int kvf_attention_prefill_n_variants(void) { return S_N_VARIANTS; }

extern "C" int kvf_attention_prefill_variant_available(int variant) {
    if (variant < 0 || variant >= S_N_VARIANTS) return 0;
    if (variant < 3) return 1;
#ifdef KVF_CUDA_SM90A
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
        return 0;
    return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
#else
    return 0;
#endif
}

extern "C" int kvf_attention_prefill_default_variant(void) {
    return kvf_attention_prefill_variant_available(s_wg_default_variant) ? s_wg_default_variant : s_default_variant;
}

extern "C" const char *kvf_attention_prefill_variant_name(int variant) {
    return variant >= 0 && variant < S_N_VARIANTS ? s_variant_names[variant] : NULL;
}

template <int HD>
static int s_launch_v0(dim3 grid, size_t smem, bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc,
                       const int32_t *tiles, const int32_t *pos, const int32_t *bt, int max_blocks, int H, int KV,
                       int bs, float scale_log2, cudaStream_t stream, kvf_err_t *err) {
    KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_prefill<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                   err);
    kvf_launch(s_attn_prefill<HD>, grid, PM_THREADS, smem, stream, out, q, kc, vc, tiles, pos, bt, max_blocks, H, KV,
               bs, scale_log2);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

template <int HD, int NH, typename TC = bf16>
static int s_launch_gqa(int n_tiles, bf16 *out, const bf16 *q, const TC *kc, const TC *vc, const int32_t *tiles,
                        const int32_t *pos, const int32_t *bt, int max_blocks, int H, int KV, int bs,
                        float scale_log2, cudaStream_t stream, kvf_err_t *err) {
    const dim3 grid(n_tiles * (H / NH));
    // Q, then 2 stages of K and V; FP8: then the 2 stages of bytes that the loads fill
    const size_t smem = (size_t)(64 * NH + 2 * 2 * PM_K) * (HD + 8) * sizeof(bf16) +
                        (sizeof(TC) == 1 ? (size_t)2 * 2 * PM_K * HD : 0);
    KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_prefill_gqa<HD, NH, TC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem), err);
    kvf_launch(s_attn_prefill_gqa<HD, NH, TC>, grid, 64 * NH, smem, stream, out, q, kc, vc, tiles, pos, bt, max_blocks,
               H, KV, bs, scale_log2);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

template <int HD, int NH, int MINB, int ST, typename TC = bf16>
static int s_launch_wg(int n_tiles, bf16 *out, const bf16 *q, const TC *kc, const TC *vc, const int32_t *tiles,
                       const int32_t *pos, const int32_t *bt, int max_blocks, int H, int KV, int bs, float scale_log2,
                       cudaStream_t stream, kvf_err_t *err) {
    const dim3 grid(n_tiles * (H / NH));
    // 1024 bytes of alignment slack, Q of NH heads, 2 stages of K and V (swizzled bf16); FP8: the stages' bytes
    const size_t tile = (size_t)PM_K * HD * sizeof(bf16);
    const size_t smem = 1024 + (NH + 2 * ST) * tile + (sizeof(TC) == 1 ? (size_t)ST * 2 * PM_K * HD : 0);
    KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_prefill_wg<HD, NH, MINB, ST, TC>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err);
    kvf_launch(s_attn_prefill_wg<HD, NH, MINB, ST, TC>, grid, 128 * NH, smem, stream, out, q, kc, vc, tiles, pos, bt,
               max_blocks, H, KV, bs, scale_log2);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

// Variant 3: 4 heads a block, 2 stages; 4: 3 stages. <= 128 registers a thread: where 4 does not divide the
// group, 2 heads a block (2 blocks an SM) or 1 (4).
template <int HD, typename TC = bf16>
static int s_launch_wg_v(int variant, int n_tiles, bf16 *out, const bf16 *q, const TC *kc, const TC *vc,
                         const int32_t *tiles, const int32_t *pos, const int32_t *bt, int max_blocks, int H, int KV,
                         int bs, float scale_log2, cudaStream_t stream, kvf_err_t *err) {
    const int G = H / KV;
#define S_WG(NH, MINB, ST) \
    s_launch_wg<HD, NH, MINB, ST, TC>(n_tiles, out, q, kc, vc, tiles, pos, bt, max_blocks, H, KV, bs, scale_log2, \
                                      stream, err)
    if (variant == 3) return G % 4 == 0 ? S_WG(4, 1, 2) : G % 2 == 0 ? S_WG(2, 2, 2) : S_WG(1, 4, 2);
    return G % 4 == 0 ? S_WG(4, 1, 3) : G % 2 == 0 ? S_WG(2, 2, 3) : S_WG(1, 4, 3);
#undef S_WG
}

// v1 / v2 with as many heads a block as divide the group, up to nh_max.
template <int HD, typename TC = bf16>
static int s_launch_gqa_nh(int nh_max, int n_tiles, bf16 *out, const bf16 *q, const TC *kc, const TC *vc,
                           const int32_t *tiles, const int32_t *pos, const int32_t *bt, int max_blocks, int H, int KV,
                           int bs, float scale_log2, cudaStream_t stream, kvf_err_t *err) {
    const int G = H / KV;
    if (nh_max >= 4 && G % 4 == 0)
        return s_launch_gqa<HD, 4, TC>(n_tiles, out, q, kc, vc, tiles, pos, bt, max_blocks, H, KV, bs, scale_log2,
                                       stream, err);
    if (nh_max >= 2 && G % 2 == 0)
        return s_launch_gqa<HD, 2, TC>(n_tiles, out, q, kc, vc, tiles, pos, bt, max_blocks, H, KV, bs, scale_log2,
                                       stream, err);
    return s_launch_gqa<HD, 1, TC>(n_tiles, out, q, kc, vc, tiles, pos, bt, max_blocks, H, KV, bs, scale_log2, stream,
                                   err);
}

extern "C" int kvf_attention_prefill_variant(int variant, uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                             const uint16_t *v_cache, const int32_t *tiles, int n_tiles,
                                             const int32_t *pos, const int32_t *block_table, int max_blocks,
                                             int n_heads, int n_kv, int head_dim, int block_size,
                                             cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(variant >= 0 && variant < S_N_VARIANTS, err);
    KVF_REQUIRE(out && q && k_cache && v_cache && tiles && pos && block_table, err);
    KVF_REQUIRE(n_heads > 0 && n_kv > 0 && n_heads % n_kv == 0 && n_heads <= 65535, err);
    KVF_REQUIRE(kvf_attention_prefill_supports(head_dim), err);
    KVF_REQUIRE(block_size > 0 && max_blocks > 0 && n_tiles >= 0, err);
    if (n_tiles == 0) return 0;
    const float scale_log2 = (float)(1.0 / sqrt((double)head_dim) * 1.4426950408889634);
    KVF_REQUIRE((long long)n_tiles * n_heads <= 0x7fffffffLL, err);
    bf16 *o = (bf16 *)out;
    const bf16 *qq = (const bf16 *)q, *kc = (const bf16 *)k_cache, *vc = (const bf16 *)v_cache;
    if (variant >= 3) {
        if (!kvf_attention_prefill_variant_available(variant))
            return kvf_check_inval(err, S_NEEDS_SM90A, __func__);
        if (head_dim == 64)
            return s_launch_wg_v<64>(variant, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads,
                                     n_kv, block_size, scale_log2, stream, err);
        return s_launch_wg_v<128>(variant, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads, n_kv,
                                  block_size, scale_log2, stream, err);
    }
    if (variant == 0) {
        const dim3 grid(n_tiles * n_heads);
        const size_t smem = (size_t)2 * 2 * PM_K * (head_dim + 8) * sizeof(uint16_t);  // 2 stages of K and V
        if (head_dim == 64)
            return s_launch_v0<64>(grid, smem, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads, n_kv,
                                   block_size, scale_log2, stream, err);
        return s_launch_v0<128>(grid, smem, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads, n_kv,
                                block_size, scale_log2, stream, err);
    }
    const int nh_max = variant == 1 ? 2 : 4;
    if (head_dim == 64)
        return s_launch_gqa_nh<64>(nh_max, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads, n_kv,
                                   block_size, scale_log2, stream, err);
    return s_launch_gqa_nh<128>(nh_max, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads, n_kv,
                                block_size, scale_log2, stream, err);
}

extern "C" int kvf_attention_prefill(uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                     const uint16_t *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                     const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim,
                                     int block_size, cudaStream_t stream, kvf_err_t *err) {
    return kvf_attention_prefill_variant(kvf_attention_prefill_default_variant(), out, q, k_cache, v_cache, tiles,
                                         n_tiles, pos, block_table, max_blocks, n_heads, n_kv, head_dim, block_size,
                                         stream, err);
}

extern "C" int kvf_attention_prefill_fp8_variant(int variant, uint16_t *out, const uint16_t *q,
                                                 const uint8_t *k_cache, const uint8_t *v_cache, const int32_t *tiles,
                                                 int n_tiles, const int32_t *pos, const int32_t *block_table,
                                                 int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                                                 cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(variant >= 0 && variant < S_N_VARIANTS, err);
    KVF_REQUIRE(out && q && k_cache && v_cache && tiles && pos && block_table, err);
    KVF_REQUIRE(n_heads > 0 && n_kv > 0 && n_heads % n_kv == 0 && n_heads <= 65535, err);
    KVF_REQUIRE(kvf_attention_prefill_supports(head_dim), err);
    KVF_REQUIRE(block_size > 0 && max_blocks > 0 && n_tiles >= 0, err);
    if (variant < 2)
        return kvf_check_inval(err, "a variant with an FP8-cache form (2 and up)", __func__);
    if (!kvf_attention_prefill_variant_available(variant))
        return kvf_check_inval(err, S_NEEDS_SM90A, __func__);
    if (n_tiles == 0) return 0;
    KVF_REQUIRE((long long)n_tiles * n_heads <= 0x7fffffffLL, err);
    const float scale_log2 = (float)(1.0 / sqrt((double)head_dim) * 1.4426950408889634);
    bf16 *o = (bf16 *)out;
    const bf16 *qq = (const bf16 *)q;
    const kvf_fp8_t *kc = k_cache, *vc = v_cache;
    if (variant >= 3) {
        if (head_dim == 64)
            return s_launch_wg_v<64, kvf_fp8_t>(variant, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks,
                                                n_heads, n_kv, block_size, scale_log2, stream, err);
        return s_launch_wg_v<128, kvf_fp8_t>(variant, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks,
                                             n_heads, n_kv, block_size, scale_log2, stream, err);
    }
    if (head_dim == 64)
        return s_launch_gqa_nh<64, kvf_fp8_t>(4, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads,
                                              n_kv, block_size, scale_log2, stream, err);
    return s_launch_gqa_nh<128, kvf_fp8_t>(4, n_tiles, o, qq, kc, vc, tiles, pos, block_table, max_blocks, n_heads,
                                           n_kv, block_size, scale_log2, stream, err);
}

extern "C" int kvf_attention_prefill_fp8(uint16_t *out, const uint16_t *q, const uint8_t *k_cache,
                                         const uint8_t *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                                         const int32_t *block_table, int max_blocks, int n_heads, int n_kv,
                                         int head_dim, int block_size, cudaStream_t stream, kvf_err_t *err) {
    return kvf_attention_prefill_fp8_variant(kvf_attention_prefill_default_variant(), out, q, k_cache, v_cache, tiles,
                                             n_tiles, pos, block_table, max_blocks, n_heads, n_kv, head_dim,
                                             block_size, stream, err);
}
