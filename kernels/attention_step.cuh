// kernels/attention_step.cuh — the paged K/V stage loader and the per-warp
// flash-attention step shared by the decode kernels and prefill v0 (internal,
// device-only, not a C header).
#ifndef KVF_KERNELS_ATTENTION_STEP_CUH
#define KVF_KERNELS_ATTENTION_STEP_CUH

#include <math.h>

#include "kernels/fp8.cuh"
#include "kernels/mma.cuh"
#include "kernels/util.cuh"

// Stages keys [kt, kt + NK) of KV head kvh of a paged cache (block table btab,
// block size bs, KV heads a token) into sK and sV (NK rows of HD + 8 bf16) by
// 16-byte cp.async chunks spread over the block's THREADS threads; keys at or past
// kv_end become zeros (a masked key's V row is multiplied by p = 0, which must
// not meet a NaN). Commits one cp.async group (empty ones too: wait_group counts them).
template <int HD, int NK, int THREADS>
static __device__ __forceinline__ void kvf_attn_stage_kv(bf16 *sK,        // (NK, HD + 8)
                                                         bf16 *sV,        // (NK, HD + 8)
                                                         const bf16 *kc,  // (n_blocks, bs, KV, HD)
                                                         const bf16 *vc,  // (n_blocks, bs, KV, HD)
                                                         const int32_t *btab, int bs, int KV, int kvh, int kt,
                                                         int kv_end) {
    constexpr int KS = HD + 8, CPT = NK * (HD / 8) / THREADS;  // row stride; chunks per thread per tensor
    static_assert(NK * (HD / 8) % THREADS == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < CPT; i++) {
        const int ch = threadIdx.x + i * THREADS, j = ch / (HD / 8), d = (ch % (HD / 8)) * 8, key = kt + j;
        bf16 *dk = sK + j * KS + d, *dv = sV + j * KS + d;
        if (key < kv_end) {
            const size_t off = (((size_t)btab[key / bs] * bs + key % bs) * KV + kvh) * HD + d;
            kvf_cp_async16(dk, kc + off);
            kvf_cp_async16(dv, vc + off);
        } else {
            *(uint4 *)dk = make_uint4(0u, 0u, 0u, 0u);
            *(uint4 *)dv = make_uint4(0u, 0u, 0u, 0u);
        }
    }
    kvf_cp_async_commit();
}

// One online-softmax step of a warp over the NK keys at kw..: sK, sV their (NK,
// HD + 8) rows of K and V (zeros past kv_end) in shared memory, scored against
// the Q fragments of the warp's 16 rows (positions pr0, pr1: a key past its row's
// position is masked) and folded into (m, l, o): S = Q K^T by mma, scale, mask,
// row maxima, base-2 softmax, rescale of (l, o), P rounded to bf16, O += P V with
// V by ldmatrix.trans. l0, l1 are per-thread partial sums (the quad adds them).
// F16: Q, K, V and P are f16 (the FP8 cache's path), E the 16-bit element type.
// K8S > 0: sK holds E4M3 bytes, rows K8S bytes apart, widened to f16 as they are
// read; each lane reads 4 neighbouring dims (4 tq .. 4 tq + 3 of each 16) with
// one 32-bit load, so the Q fragments must hold the same dims in the same slots
// (kvf_attn_q_frag8): the dot products are sums over the same pairs.
template <int HD, int NK, bool F16 = false, typename E = bf16, int K8S = 0>
static __device__ __forceinline__ void kvf_attn_step(const void *sKv,  // (NK, HD + 8) E, or (NK, K8S) bytes
                                                     const E *sV,      // (NK, HD + 8)
                                                     const uint32_t (&qf)[HD / 16][4], float (&o)[HD / 8][4],
                                                     float &m0, float &m1, float &l0, float &l1, int kw, int kv_end,
                                                     int pr0, int pr1, float scale_log2, int lane) {
    static_assert(NK % 16 == 0, "whole m16n8k16 steps of P V");
    constexpr int KS = HD + 8, NT = NK / 8;  // row stride (bf16); 8-key score tiles
    const int g = lane >> 2, tq = lane & 3;
    float sc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
        if constexpr (K8S > 0) {
            const uint8_t *kr = (const uint8_t *)sKv + (nt * 8 + g) * K8S + 4 * tq;
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) {
                const uint32_t w = *(const uint32_t *)(kr + ks * 16);
                kvf_mma_f16_16816(sc[nt], qf[ks], kvf_fp8x2_to_f16x2((uint16_t)(w & 0xffffu)),
                                  kvf_fp8x2_to_f16x2((uint16_t)(w >> 16)));
            }
        } else {
            const E *kr = (const E *)sKv + (nt * 8 + g) * KS + 2 * tq;
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) {
                const uint32_t b0 = *(const uint32_t *)(kr + ks * 16), b1 = *(const uint32_t *)(kr + ks * 16 + 8);
                if (F16) kvf_mma_f16_16816(sc[nt], qf[ks], b0, b1);
                else kvf_mma_bf16_16816(sc[nt], qf[ks], b0, b1);
            }
        }
    }
    // scale, causal mask, row maxima (a row's scores live in the 4 threads of a quad)
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
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
    for (int nt = 0; nt < NT; nt++) {
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
    // O += P V: P (16 x NK) from the score fragments, V through ldmatrix.trans
#pragma unroll
    for (int kk = 0; kk < NK / 16; kk++) {
        uint32_t a[4];
        a[0] = F16 ? kvf_pack_f16x2(sc[2 * kk][0], sc[2 * kk][1]) : kvf_pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]);
        a[1] = F16 ? kvf_pack_f16x2(sc[2 * kk][2], sc[2 * kk][3]) : kvf_pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]);
        a[2] = F16 ? kvf_pack_f16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1])
                   : kvf_pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        a[3] = F16 ? kvf_pack_f16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3])
                   : kvf_pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
        const E *vrow = sV + (kk * 16 + (lane & 15)) * KS;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            uint32_t v0, v1;
            kvf_ldmatrix_x2_trans(v0, v1, (unsigned)__cvta_generic_to_shared(vrow + dt * 8));
            if (F16) kvf_mma_f16_16816(o[dt], a, v0, v1);
            else kvf_mma_bf16_16816(o[dt], a, v0, v1);
        }
    }
}

#endif
