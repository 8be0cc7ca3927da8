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

// Two rows' running maxima m0, m1 after a step whose own maxima (already reduced
// over the lanes that share a row) are mx0, mx1: b0, b1 the bases the step's
// exponentials subtract (0 for a row with no key yet), c0, c1 the factors by which
// the rows' sums and outputs must be rescaled (1 exactly when a maximum did not move).
static __device__ __forceinline__ void kvf_attn_new_max(float &m0, float &m1, float mx0, float mx1, float &b0,
                                                        float &b1, float &c0, float &c1) {
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    b0 = mn0 == -INFINITY ? 0.0f : mn0, b1 = mn1 == -INFINITY ? 0.0f : mn1;
    c0 = mn0 == -INFINITY ? 1.0f : exp2f(m0 - b0);  // a row with no key yet has nothing to rescale
    c1 = mn1 == -INFINITY ? 1.0f : exp2f(m1 - b1);
    m0 = mn0, m1 = mn1;
}

// The online-softmax update of a warp's 16 rows by the scores sc of NT 8-key
// tiles at kw..: scale, mask (a key past its row's position pr0 / pr1 or past
// kv_end), row maxima over the quad, base-2 exponentials in place, rescale of
// l; c0, c1: the factors by which the rows' outputs must be rescaled (1 exactly
// when the row maximum did not move). l0, l1 are per-thread partial sums (the
// quad adds them at the end).
template <int NT>
static __device__ __forceinline__ void kvf_attn_softmax(float (&sc)[NT][4], float &m0, float &m1, float &l0, float &l1,
                                                        float &c0, float &c1, int kw, int kv_end, int pr0, int pr1,
                                                        float scale_log2, int tq) {
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
    float b0, b1;
    kvf_attn_new_max(m0, m1, mx0, mx1, b0, b1, c0, c1);
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
    l0 = l0 * c0 + s0;
    l1 = l1 * c1 + s1;
}

// o (rows g, g + 8 of the warp's m16 fragments) times c0, c1; skipped when no
// row of the warp moved (c = 1 exactly).
template <int HD>
static __device__ __forceinline__ void kvf_attn_rescale(float (&o)[HD / 8][4], float c0, float c1) {
    if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            o[i][0] *= c0, o[i][1] *= c0;
            o[i][2] *= c1, o[i][3] *= c1;
        }
    }
}

// P of 16 keys (score tiles 2 kk, 2 kk + 1) as an m16n8k16 A fragment, bf16 or f16.
template <bool F16, int NT>
static __device__ __forceinline__ void kvf_attn_p_frag(uint32_t (&a)[4], const float (&sc)[NT][4], int kk) {
    a[0] = F16 ? kvf_pack_f16x2(sc[2 * kk][0], sc[2 * kk][1]) : kvf_pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]);
    a[1] = F16 ? kvf_pack_f16x2(sc[2 * kk][2], sc[2 * kk][3]) : kvf_pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]);
    a[2] = F16 ? kvf_pack_f16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1])
               : kvf_pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
    a[3] = F16 ? kvf_pack_f16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3])
               : kvf_pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
}

// One online-softmax step of a warp over the NK keys at kw..: sK, sV their (NK,
// HD + 8) rows of K and V (zeros past kv_end) in shared memory, scored against
// the Q fragments of the warp's 16 rows (positions pr0, pr1: a key past its row's
// position is masked) and folded into (m, l, o): S = Q K^T by mma, scale, mask,
// row maxima, base-2 softmax, rescale of (l, o), P rounded to bf16, O += P V with
// V by ldmatrix.trans. l0, l1 are per-thread partial sums (the quad adds them).
template <int HD, int NK>
static __device__ __forceinline__ void kvf_attn_step(const bf16 *sK,  // (NK, HD + 8)
                                                     const bf16 *sV,  // (NK, HD + 8)
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
        const bf16 *kr = sK + (nt * 8 + g) * KS + 2 * tq;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++)
            kvf_mma_bf16_16816(sc[nt], qf[ks], *(const uint32_t *)(kr + ks * 16),
                               *(const uint32_t *)(kr + ks * 16 + 8));
    }
    float c0, c1;
    kvf_attn_softmax<NT>(sc, m0, m1, l0, l1, c0, c1, kw, kv_end, pr0, pr1, scale_log2, tq);
    kvf_attn_rescale<HD>(o, c0, c1);
    // O += P V: P (16 x NK) from the score fragments, V through ldmatrix.trans
#pragma unroll
    for (int kk = 0; kk < NK / 16; kk++) {
        uint32_t a[4];
        kvf_attn_p_frag<false, NT>(a, sc, kk);
        const bf16 *vrow = sV + (kk * 16 + (lane & 15)) * KS;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            uint32_t v0, v1;
            kvf_ldmatrix_x2_trans(v0, v1, (unsigned)__cvta_generic_to_shared(vrow + dt * 8));
            kvf_mma_bf16_16816(o[dt], a, v0, v1);
        }
    }
}

// kvf_attn_step for tiles of at most 8 rows (a decode token's G <= 8 query heads)
// with both products transposed, so that the 8 rows are the mma's N and nothing
// is wasted on 8 empty rows of an m16 fragment: half the mma and accumulators.
// - S^T (16 keys x 8 rows) = K Q^T: K's 16 x 16 tiles are A fragments (ldmatrix),
//   Q^T is the B fragment qb[ks][0..1] (lane (g, tq): row g, dims 2 tq.. and
//   2 tq + 8.. of each 16; [2..3] unused); sT[0..1] then hold keys kw + g, rows 2 tq, 2 tq + 1, sT[2..3] keys
//   kw + g + 8 (rows of positions pra, prb; -1: no row).
// - The softmax runs down the columns: a row's maximum and sum over the 8 lanes of
//   a tq (shuffles 4, 8, 16); la, lb are per-lane partial sums (added at the end).
// - O^T (HD x 8) += V^T P^T: P^T's B fragment is S^T's tiles transposed by
//   movmatrix (bf16), V^T's A fragments are V's rows by ldmatrix.trans. oT[mt]
//   holds dims 16 mt + g (c 0, 1) and 16 mt + g + 8 (c 2, 3), rows 2 tq, 2 tq + 1.
template <int HD, int KS>
static __device__ __forceinline__ void kvf_attn_step_t(const bf16 *sK,  // (16, KS)
                                                       const bf16 *sV,  // (16, KS)
                                                       const uint32_t (&qb)[HD / 16][4], float (&oT)[HD / 16][4],
                                                       float &ma, float &mb, float &la, float &lb, int kw, int kv_end,
                                                       int pra, int prb, float scale_log2, int lane) {
    const int g = lane >> 2;
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    {  // A fragments of K: lanes 0-15 rows 0-15 at dims 16 ks, lanes 16-31 the same rows at 16 ks + 8
        const unsigned kr = (unsigned)__cvta_generic_to_shared(sK + (lane & 15) * KS + 8 * (lane >> 4));
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            uint32_t a[4];
            kvf_ldmatrix_x4(a, kr + 32 * ks);
            kvf_mma_bf16_16816(s, a, qb[ks][0], qb[ks][1]);
        }
    }
    const int k0 = kw + g, k1 = k0 + 8;
    s[0] = k0 > pra || k0 >= kv_end ? -INFINITY : s[0] * scale_log2;
    s[1] = k0 > prb || k0 >= kv_end ? -INFINITY : s[1] * scale_log2;
    s[2] = k1 > pra || k1 >= kv_end ? -INFINITY : s[2] * scale_log2;
    s[3] = k1 > prb || k1 >= kv_end ? -INFINITY : s[3] * scale_log2;
    float mxa = fmaxf(s[0], s[2]), mxb = fmaxf(s[1], s[3]);
#pragma unroll
    for (int o_ = 4; o_ <= 16; o_ <<= 1) {
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, o_));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, o_));
    }
    float ba, bb, ca, cb;
    kvf_attn_new_max(ma, mb, mxa, mxb, ba, bb, ca, cb);
    s[0] = exp2f(s[0] - ba), s[1] = exp2f(s[1] - bb), s[2] = exp2f(s[2] - ba), s[3] = exp2f(s[3] - bb);
    la = la * ca + s[0] + s[2];
    lb = lb * cb + s[1] + s[3];
    if (__any_sync(0xffffffffu, ca != 1.0f || cb != 1.0f)) {
#pragma unroll
        for (int mt = 0; mt < HD / 16; mt++) oT[mt][0] *= ca, oT[mt][1] *= cb, oT[mt][2] *= ca, oT[mt][3] *= cb;
    }
    // P^T's B fragment: (keys 2 tq, 2 tq + 1 | + 8, row g), the transposes of (key g | g + 8, rows 2 tq, 2 tq + 1)
    const uint32_t b0 = kvf_movmatrix_trans(kvf_pack_bf16x2(s[0], s[1]));
    const uint32_t b1 = kvf_movmatrix_trans(kvf_pack_bf16x2(s[2], s[3]));
    // V^T's A fragments: lanes 0-7 keys 0-7 at dims 16 mt, 8-15 the same keys at 16 mt + 8, 16-31 keys 8-15
    const unsigned vr =
        (unsigned)__cvta_generic_to_shared(sV + ((lane & 7) + 8 * (lane >> 4)) * KS + 8 * ((lane >> 3) & 1));
#pragma unroll
    for (int mt = 0; mt < HD / 16; mt++) {
        uint32_t a[4];
        kvf_ldmatrix_x4_trans(a, vr + 32 * mt);
        kvf_mma_bf16_16816(oT[mt], a, b0, b1);
    }
}

// kvf_attn_step over 16 keys of an FP8 cache: sK, sV hold E4M3 bytes, rows RS
// bytes apart (RS = HD + 16: a warp's reads meet no bank twice), and Q, K, V, P
// meet in f16 mma (E4M3 widens to f16 exactly). No tile is widened in shared
// memory: the fragments are read from the bytes, with two dim permutations that
// make every read wide (sums do not care about order, outputs are put back):
// - S = Q K^T: lane (g, tq) reads dims 4 tq .. 4 tq + 3 of each 16 of its key row
//   with one 32-bit load: Q's fragments must hold the same dims in the same
//   slots (the decode kernel loads them so: dims 4 tq, 4 tq + 1 where the mma has
//   k = 2 tq, 2 tq + 1, and 4 tq + 2, 4 tq + 3 for k = 2 tq + 8, 2 tq + 9).
// - O += P V: n-tile dt, column j holds dim j HD/8 + dt, so lane g's B fragments
//   over all dt are the HD/8 bytes j = g of its four key rows (2 tq, 2 tq + 1,
//   2 tq + 8, 2 tq + 9): four wide loads. o[dt][0..1] then hold dims (2 tq) HD/8 +
//   dt and (2 tq + 1) HD/8 + dt (kvf_attn_f8_dim).
// S = Q K^T of 16 E4M3 key rows (RS bytes apart) in two 8-key tiles, K widened
// to f16 as it is read (4 dims a 32-bit load: Q's fragments hold the same dims).
template <int HD, int RS>
static __device__ __forceinline__ void kvf_attn_qk_f8(float (&sc)[2][4], const uint8_t *sK,
                                                      const uint32_t (&qf)[HD / 16][4], int g, int tq) {
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
        const uint8_t *kr = sK + (nt * 8 + g) * RS + 4 * tq;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            const uint32_t w = *(const uint32_t *)(kr + ks * 16);
            kvf_mma_f16_16816(sc[nt], qf[ks], kvf_fp8x2_to_f16x2((uint16_t)(w & 0xffffu)),
                              kvf_fp8x2_to_f16x2((uint16_t)(w >> 16)));
        }
    }
}

template <int HD, int RS>
static __device__ __forceinline__ void kvf_attn_step_f8(const uint8_t *sK,  // (16, RS) E4M3
                                                        const uint8_t *sV,  // (16, RS) E4M3
                                                        const uint32_t (&qf)[HD / 16][4], float (&o)[HD / 8][4],
                                                        float &m0, float &m1, float &l0, float &l1, int kw,
                                                        int kv_end, int pr0, int pr1, float scale_log2, int lane) {
    static_assert(HD == 64 || HD == 128, "a lane's V bytes are one 8- or 16-byte load a row");
    constexpr int DT = HD / 8;  // n-tiles of P V, and V bytes a lane reads per row
    const int g = lane >> 2, tq = lane & 3;
    float sc[2][4];
    kvf_attn_qk_f8<HD, RS>(sc, sK, qf, g, tq);
    float c0, c1;
    kvf_attn_softmax<2>(sc, m0, m1, l0, l1, c0, c1, kw, kv_end, pr0, pr1, scale_log2, tq);
    kvf_attn_rescale<HD>(o, c0, c1);
    uint32_t a[4];
    kvf_attn_p_frag<true, 2>(a, sc, 0);
    // rows 2 tq, 2 tq + 1 (b0) and 2 tq + 8, 2 tq + 9 (b1), bytes g DT .. g DT + DT - 1
    uint32_t r[4][DT / 4];
    const int rows[4] = {2 * tq, 2 * tq + 1, 2 * tq + 8, 2 * tq + 9};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint8_t *src = sV + rows[i] * RS + g * DT;
        if constexpr (DT == 16) {
            const uint4 v = *(const uint4 *)src;
            r[i][0] = v.x, r[i][1] = v.y, r[i][2] = v.z, r[i][3] = v.w;
        } else {
            const uint2 v = *(const uint2 *)src;
            r[i][0] = v.x, r[i][1] = v.y;
        }
    }
#pragma unroll
    for (int w = 0; w < DT / 4; w++) {
        // bytes of dims w4 .. w4 + 3: interleave rows (2 tq, 2 tq + 1) and (2 tq + 8, 2 tq + 9) into key pairs
        const uint32_t p01 = __byte_perm(r[0][w], r[1][w], 0x5140), p23 = __byte_perm(r[0][w], r[1][w], 0x7362);
        const uint32_t q01 = __byte_perm(r[2][w], r[3][w], 0x5140), q23 = __byte_perm(r[2][w], r[3][w], 0x7362);
        const uint32_t pp[4] = {p01, p01 >> 16, p23, p23 >> 16}, qq[4] = {q01, q01 >> 16, q23, q23 >> 16};
#pragma unroll
        for (int e = 0; e < 4; e++)
            kvf_mma_f16_16816(o[4 * w + e], a, kvf_fp8x2_to_f16x2((uint16_t)(pp[e] & 0xffffu)),
                              kvf_fp8x2_to_f16x2((uint16_t)(qq[e] & 0xffffu)));
    }
}

// The dim that o[dt][c] of lane tq holds after kvf_attn_step_f8 (c 0, 2: even
// column 2 tq; c 1, 3: odd column 2 tq + 1).
static __device__ __forceinline__ int kvf_attn_f8_dim(int hd, int tq, int dt, int c) {
    return (2 * tq + (c & 1)) * (hd / 8) + dt;
}

// kvf_attn_step_f8 for tiles of at most 8 rows (a decode token's query heads,
// G <= 8), with P V computed transposed: O^T (HD x 8) += V^T (HD x 16 keys) P^T.
// P^T is an m16n8k16 B fragment as the scores already lie (column n = row g of
// S, keys 2 tq.. of each 8-key tile), so only rows 0-7 of S count, and the P V
// product takes HD / 16 mma instead of HD / 8, into half the accumulators:
// oT[mt] holds O^T rows (dims) kvf_attn_f8t_dim(mt, g) and (mt, g + 8), columns
// (rows of S) 2 tq and 2 tq + 1. Dim j M + mt (M = HD / 16) sits in m-tile mt,
// row j, so a lane's V bytes are two M-byte loads a key row. c0 of row r of S is
// held by lanes 4 r .. 4 r + 3: the rescale of column 2 tq (+ 1) shuffles it in.
template <int HD, int RS>
static __device__ __forceinline__ void kvf_attn_step_f8t(const uint8_t *sK,  // (16, RS) E4M3
                                                         const uint8_t *sV,  // (16, RS) E4M3
                                                         const uint32_t (&qf)[HD / 16][4], float (&oT)[HD / 16][4],
                                                         float &m0, float &m1, float &l0, float &l1, int kw,
                                                         int kv_end, int pr0, int pr1, float scale_log2, int lane) {
    static_assert(HD == 64 || HD == 128, "a lane's V bytes are 4- or 8-byte loads");
    constexpr int M = HD / 16;  // m-tiles of O^T, and V bytes a load
    const int g = lane >> 2, tq = lane & 3;
    float sc[2][4];
    kvf_attn_qk_f8<HD, RS>(sc, sK, qf, g, tq);
    float c0, c1;
    kvf_attn_softmax<2>(sc, m0, m1, l0, l1, c0, c1, kw, kv_end, pr0, pr1, scale_log2, tq);
    const float ca = __shfl_sync(0xffffffffu, c0, 8 * tq), cb = __shfl_sync(0xffffffffu, c0, 8 * tq + 4);
    if (__any_sync(0xffffffffu, ca != 1.0f || cb != 1.0f)) {
#pragma unroll
        for (int mt = 0; mt < M; mt++) oT[mt][0] *= ca, oT[mt][1] *= cb, oT[mt][2] *= ca, oT[mt][3] *= cb;
    }
    // P^T as the B fragment: b0 keys 2 tq, 2 tq + 1 of tile 0, b1 of tile 1, column g = row g of S
    const uint32_t b0 = kvf_pack_f16x2(sc[0][0], sc[0][1]), b1 = kvf_pack_f16x2(sc[1][0], sc[1][1]);
    // V^T as A fragments: key rows 2 tq, 2 tq + 1 (a0 a1) and 2 tq + 8, 2 tq + 9 (a2 a3); dims of rows g, g + 8
    uint32_t lo[4][M / 4], hi[4][M / 4];
    const int rows[4] = {2 * tq, 2 * tq + 1, 2 * tq + 8, 2 * tq + 9};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint8_t *src = sV + rows[i] * RS;
        if constexpr (M == 8) {
            const uint2 a = *(const uint2 *)(src + g * M), b = *(const uint2 *)(src + (g + 8) * M);
            lo[i][0] = a.x, lo[i][1] = a.y, hi[i][0] = b.x, hi[i][1] = b.y;
        } else {
            lo[i][0] = *(const uint32_t *)(src + g * M), hi[i][0] = *(const uint32_t *)(src + (g + 8) * M);
        }
    }
#pragma unroll
    for (int w = 0; w < M / 4; w++) {
        // key pairs of dims 4w .. 4w + 3 of each load: (row 2 tq, row 2 tq + 1) and (2 tq + 8, 2 tq + 9)
        const uint32_t l01[2] = {__byte_perm(lo[0][w], lo[1][w], 0x5140), __byte_perm(lo[0][w], lo[1][w], 0x7362)};
        const uint32_t l23[2] = {__byte_perm(lo[2][w], lo[3][w], 0x5140), __byte_perm(lo[2][w], lo[3][w], 0x7362)};
        const uint32_t h01[2] = {__byte_perm(hi[0][w], hi[1][w], 0x5140), __byte_perm(hi[0][w], hi[1][w], 0x7362)};
        const uint32_t h23[2] = {__byte_perm(hi[2][w], hi[3][w], 0x5140), __byte_perm(hi[2][w], hi[3][w], 0x7362)};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int sh = 16 * (e & 1);
            const uint32_t a[4] = {kvf_fp8x2_to_f16x2((uint16_t)(l01[e >> 1] >> sh)),
                                   kvf_fp8x2_to_f16x2((uint16_t)(h01[e >> 1] >> sh)),
                                   kvf_fp8x2_to_f16x2((uint16_t)(l23[e >> 1] >> sh)),
                                   kvf_fp8x2_to_f16x2((uint16_t)(h23[e >> 1] >> sh))};
            kvf_mma_f16_16816(oT[4 * w + e], a, b0, b1);
        }
    }
}

// The dim that oT[mt] row r (r = g for c 0, 1; g + 8 for c 2, 3) holds after kvf_attn_step_f8t.
static __device__ __forceinline__ int kvf_attn_f8t_dim(int hd, int mt, int r) { return r * (hd / 16) + mt; }

#endif
