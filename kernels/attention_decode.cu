// kernels/attention_decode.cu — see attention_decode.h.
//
// Variant 0 (s_attn_decode): one block of 4 warps per (tile, KV head). The
// tile's rows (its tokens x the G query heads of the KV head, at most 16) are
// one m16 fragment that every warp holds. Keys go in tiles of 64 from the paged
// cache to shared memory by cp.async, two stages deep (the next tile is in
// flight while the current one is scored); warp w takes keys [16w, 16w + 16) of
// each tile: S = Q K^T and O += P V by mma.sync m16n8k16 (bf16 in, f32
// accumulators), its own online softmax (base 2). The four partial states are
// merged through shared memory. Unlike kernels/attention.cu (K and V widened to
// f32 in shared memory, scalar dot products), the bytes move as they are and the
// arithmetic is on the tensor cores, so a step of many sequences runs at the
// cache's read bandwidth.
//
// The other variants (s_attn_decode_v) reshape only the pipeline that feeds the
// same per-warp arithmetic (kvf_attn_step) and the same merge (s_merge): a ring of STAGES >= 3 buffers with one
// barrier per stage, the block-table entries of the next stage fetched into
// registers a stage ahead (no dependent global load in front of each
// cp.async), and either a block-wide ring (all warps fill a stage together) or
// one ring per warp (each warp copies and scores its own 16-key chunks with
// only __syncwarp; the block meets once, for the merge). HEADS > 1 puts
// several KV heads of a tile in one block (one warp or more each), so the
// block reads whole 2 KB token rows of the cache together.
#include <math.h>
#include <stdio.h>

#include "kernels/attention_decode.h"
#include "kernels/attention_step.cuh"
#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/mbarrier.cuh"
#include "kernels/mma.cuh"
#include "kernels/util.cuh"

#define DC_THREADS 128
#define DC_WARPS 4
#define DC_K 64  // keys per stage: 16 per warp

// Merges the (m, l, o) of the SPLIT warps of each of the block's HEADS KV heads
// (warps hh * SPLIT .. hh * SPLIT + SPLIT - 1 hold head kv0 + hh) through shared
// memory and writes the rows of out of those heads (the ones < KV). l0, l1 are
// already summed over the quad; sm must be free (every warp done with its stages).
template <int HD, int SPLIT, int HEADS>
static __device__ __forceinline__ void s_merge(float *sm,     // (SPLIT * HEADS, 16, HD) then (SPLIT * HEADS, 16, 2)
                                               bf16 *out,     // (n_tokens, H, HD)
                                               const float (&o)[HD / 8][4], float m0, float m1, float l0, float l1,
                                               int q0, int nr, int G, int H, int KV, int kv0, int lane, int warp) {
    constexpr int WARPS = SPLIT * HEADS;
    const int tq = lane & 3, r0 = lane >> 2, r1 = r0 + 8;  // this thread's two rows
    float *sO = sm;                                         // (WARPS, 16, HD)
    float *sML = sO + WARPS * 16 * HD;                      // (WARPS, 16, 2)
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
    for (int idx = threadIdx.x; idx < HEADS * nr * HD; idx += 32 * WARPS) {
        const int hh = idx / (nr * HD), r = idx / HD % nr, d = idx % HD, kvo = kv0 + hh;
        if (kvo >= KV) break;  // idx only grows: every later one is past the heads too
        const int wb = hh * SPLIT;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < SPLIT; w++) M = fmaxf(M, sML[2 * ((wb + w) * 16 + r)]);
        float L = 0.0f, acc = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int w = 0; w < SPLIT; w++) {
                const float mw = sML[2 * ((wb + w) * 16 + r)];
                if (mw == -INFINITY) continue;  // a warp that saw no key of this row
                const float f = exp2f(mw - M);
                L += sML[2 * ((wb + w) * 16 + r) + 1] * f;
                acc += sO[((wb + w) * 16 + r) * HD + d] * f;
            }
        }
        out[((size_t)(q0 + r / G) * H + kvo * G + r % G) * HD + d] = __float2bfloat16_rn(L > 0.0f ? acc / L : 0.0f);
    }
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
    kvf_pdl_wait();
    constexpr int KS = HD + 8;            // row stride (bf16) of a staged K or V tile: 16 bytes of padding
    constexpr int STAGE = 2 * DC_K * KS;  // K then V
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
        bf16 *sK = sm + stage * STAGE;
        kvf_attn_stage_kv<HD, DC_K, DC_THREADS>(sK, sK + DC_K * KS, kc, vc, btab, bs, KV, kvh, kt, kv_end);
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
            kvf_cp_async_wait<1>();
        } else {
            kvf_cp_async_wait<0>();
        }
        __syncthreads();  // this stage's keys are in shared memory for every thread
        const int kw = kt + 16 * warp;
        if (kw < kv_end) {  // uniform over the warp
            const bf16 *sK = sm + stage * STAGE + 16 * warp * KS;
            kvf_attn_step<HD, 16>(sK, sK + DC_K * KS, qf, o, m0, m1, l0, l1, kw, kv_end, pr0, pr1, scale_log2, lane);
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    // merge the four warps' (m, l, o) through shared memory (the stages are free now)
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    s_merge<HD, DC_WARPS, 1>((float *)dsmem4, out, o, m0, m1, l0, l1, q0, nr, G, H, KV, kvh, lane, warp);
}

// ---------------------------------------------------------------- variants

// The transposed variants' Q^T B fragments (kvf_attn_step_t): qf[ks][0..1] = row g,
// dims 2 tq.. and 2 tq + 8.. of each 16 (zeros for a row past the tile's nr or an
// inactive warp); [2..3] unused.
template <int HD>
static __device__ __forceinline__ void s_load_qt(uint32_t (&qf)[HD / 16][4], const bf16 *q,  // (n_tokens, H, HD)
                                                 bool active, int q0, int nr, int G, int H, int kvh, int lane) {
    const int g = lane >> 2, tq = lane & 3;
    const bool v = active && g < nr;
    const bf16 *qp = q + ((size_t)(q0 + (v ? g / G : 0)) * H + (v ? kvh * G + g % G : 0)) * HD;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        qf[ks][0] = v ? *(const uint32_t *)(qp + ks * 16 + 2 * tq) : 0u;
        qf[ks][1] = v ? *(const uint32_t *)(qp + ks * 16 + 2 * tq + 8) : 0u;
        qf[ks][2] = qf[ks][3] = 0u;
    }
}

// Writes a transposed variant's rows: o[mt] holds dims 16 mt + g (c 0, 1) and + 8
// (c 2, 3) of tile rows 2 tq (c 0, 2) and 2 tq + 1 (c 1, 3); l0, l1 their per-lane
// partial sums (added here over the 8 lanes of a tq). Every lane of the warp calls it.
template <int HD>
static __device__ __forceinline__ void s_store_t(bf16 *out,  // (n_tokens, H, HD)
                                                 const float (&o)[HD / 16][4], float l0, float l1, bool active,
                                                 int q0, int nr, int G, int H, int kvh, int lane) {
    const int g = lane >> 2, r0 = 2 * (lane & 3), r1 = r0 + 1;
#pragma unroll
    for (int o_ = 4; o_ <= 16; o_ <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, o_);
        l1 += __shfl_xor_sync(0xffffffffu, l1, o_);
    }
    if (!active) return;
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16 *o0 = out + ((size_t)(q0 + (r0 < nr ? r0 / G : 0)) * H + kvh * G + (r0 < nr ? r0 % G : 0)) * HD + g;
    bf16 *o1 = out + ((size_t)(q0 + (r1 < nr ? r1 / G : 0)) * H + kvh * G + (r1 < nr ? r1 % G : 0)) * HD + g;
#pragma unroll
    for (int mt = 0; mt < HD / 16; mt++) {
        if (r0 < nr) {
            o0[16 * mt] = __float2bfloat16_rn(o[mt][0] * i0);
            o0[16 * mt + 8] = __float2bfloat16_rn(o[mt][2] * i0);
        }
        if (r1 < nr) {
            o1[16 * mt] = __float2bfloat16_rn(o[mt][1] * i1);
            o1[16 * mt + 8] = __float2bfloat16_rn(o[mt][3] * i1);
        }
    }
}

// Dynamic shared memory of s_attn_decode_v: STAGES x (K|V) x 16 rows a warp,
// rows of HD + 8 bf16; with an FP8 cache (fp8) rows of HD + 16 bytes. The merge
// (SPLIT > 1) reuses it: (WARPS, 16, HD) f32 + (WARPS, 16, 2).
static size_t s_smem_v(int hd, int warps, int stages, int fp8 = 0) {
    if (fp8) return (size_t)stages * 2 * 16 * warps * (hd + 16);
    return (size_t)stages * 2 * 16 * warps * (hd + 8) * sizeof(uint16_t);
}

// One block per (tile, group of HEADS KV heads); WARPS / HEADS (= SPLIT) warps a
// head, warp sw of a head taking the 16-key chunks sw, sw + SPLIT, ... of its
// keys. PW: each warp fills its own ring of STAGES chunks (__syncwarp only);
// else (HEADS 1) the block fills a ring of STAGES stages of 16 x WARPS keys
// (one __syncthreads a stage). Grid: n_tiles x ceil(KV / HEADS), heads fastest.
// TC: the cache's element type, bf16 or kvf_fp8_t (E4M3; PW, SPLIT 1): the ring
// then holds the raw bytes (half the bytes in flight a chunk, rows padded to
// HD + 16), which kvf_attn_step_f8 widens to f16 as it reads them (Q, K, V and P
// in f16: E4M3 and bf16 are exact in f16 up to +-65504, where Q saturates).
// PVT (fp8 only): kvf_attn_step_f8t, P V transposed, for tiles of at most 8 rows.
template <int HD, int WARPS, int STAGES, int HEADS, bool PW, typename TC = bf16, bool PVT = false>
static __global__ void __launch_bounds__(32 * WARPS)
s_attn_decode_v(bf16 *out,             // (n_tokens, H, HD)
                const bf16 *q,         // (n_tokens, H, HD)
                const TC *kc,          // (n_blocks, bs, KV, HD)
                const TC *vc,          // (n_blocks, bs, KV, HD)
                const int32_t *tiles,  // (n_tiles, 3)
                const int32_t *pos,    // (n_tokens)
                const int32_t *bt,     // (n_seqs, max_blocks)
                int max_blocks, int H, int KV, int bs, float scale_log2) {
    kvf_pdl_wait();
    constexpr int SPLIT = WARPS / HEADS;  // warps that share one KV head's keys
    constexpr bool F8 = sizeof(TC) == 1;  // an FP8 cache: raw rows staged, widened to f16 a chunk at a time
    static_assert(WARPS % HEADS == 0 && (PW || HEADS == 1) && STAGES >= 3 && (!(F8 || PVT) || (PW && SPLIT == 1)),
                  "bad variant shape");
    constexpr bool T = PVT && !F8;        // bf16, both products transposed (kvf_attn_step_t): rows are the N of 8
    constexpr int KS = HD + 8;            // row stride (16-bit elements) of the tiles scored: 16 bytes of padding
    constexpr int RS = F8 ? HD + 16 : KS;  // row stride (TC) of the staged rows
    constexpr int NR = 16 * WARPS;        // rows of K (and of V) in one stage, 16 a warp
    constexpr int STAGE = 2 * NR * RS;    // K then V
    constexpr int LN = PW ? 32 : 32 * WARPS;  // threads that fill a warp's rows (PW) or the stage
    constexpr int EPC = 16 / (int)sizeof(TC);  // elements a 16-byte chunk
    constexpr int RPC = HD / EPC;         // 16-byte chunks a row
    constexpr int CPT = (PW ? 16 : NR) * RPC / LN;  // chunks a thread fills per tensor per stage
    constexpr int RSTEP = LN / RPC;       // rows between a thread's chunks
    static_assert(LN % RPC == 0 && RSTEP * CPT == (PW ? 16 : NR), "loader shape");
    static_assert(F8 || STAGES * 2 * 16 * RS * sizeof(TC) >= 16 * (HD + 2) * 4, "the merge must fit in the stages");
    extern __shared__ float4 dsmem4[];
    TC *sm = (TC *)dsmem4;                // (STAGES, K|V, NR, RS)

    const int groups = (KV + HEADS - 1) / HEADS;
    const int tile = blockIdx.x / groups, kvg = blockIdx.x % groups;
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int G = H / KV, nr = nq * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int sw = warp % SPLIT, kvh = kvg * HEADS + warp / SPLIT;
    const bool active = kvh < KV;         // uniform over the warp; always true when HEADS is 1
    const int32_t *btab = bt + (size_t)seq * max_blocks;
    const int p0 = pos[q0];
    const int kv_end = p0 + nq;
    const int r0 = T ? 2 * tq : g, r1 = T ? 2 * tq + 1 : g + 8;  // this thread's two rows (T: of S^T's columns)
    const int pr0 = r0 < nr ? p0 + r0 / G : -1, pr1 = r1 < nr ? p0 + r1 / G : -1;
    const int n_kt = (kv_end + 16 * SPLIT - 1) / (16 * SPLIT);  // chunks a warp (PW) or stages (block)

    const int li = PW ? lane : (int)threadIdx.x;
    const int jl = li / RPC, dl = (li % RPC) * EPC;  // this thread's first row and its EPC dims
    const int rb = PW ? 16 * warp : 0;             // first stage row that this thread's ring fills
    int nb[CPT], ns[CPT];                          // cache block and slot in it of the next load's rows
    // PW with 16 | bs: a warp's 16-key chunk starts at a multiple of 16, so it lies in one cache block:
    // one block-table entry a chunk (nb[0], ns[0] its first row's), not one a row
    const bool one_blk = PW && bs % 16 == 0;
    auto key0 = [&](int it) { return PW ? 16 * (SPLIT * it + sw) : it * NR; };
    auto fetch = [&](int it) {
        const int key = key0(it) + jl;
        int blk = key / bs, slot = key - blk * bs;  // one division a stage; the rows RSTEP apart step on
        if (one_blk) {
            nb[0] = key < kv_end ? __ldg(btab + blk) : 0;
            ns[0] = slot;
            return;
        }
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            if (i > 0)
                for (slot += RSTEP; slot >= bs; slot -= bs) blk++;
            nb[i] = key + i * RSTEP < kv_end ? __ldg(btab + blk) : 0;
            ns[i] = slot;
        }
    };
    auto load = [&](int it) {
        const int kb = key0(it);
        if (active && it < n_kt && kb < kv_end) {
            TC *sK = sm + (it % STAGES) * STAGE + rb * RS, *sV = sK + NR * RS;
            const size_t off0 = (((size_t)nb[0] * bs + ns[0]) * KV + kvh) * HD + dl;  // one_blk: row i's at
#pragma unroll                                                                     // off0 + i RSTEP KV HD
            for (int i = 0; i < CPT; i++) {
                const int j = jl + i * RSTEP, key = kb + j;
                if (key < kv_end) {
                    const size_t off = one_blk ? off0 + (size_t)i * RSTEP * KV * HD
                                               : (((size_t)nb[i] * bs + ns[i]) * KV + kvh) * HD + dl;
                    kvf_cp_async16(sK + j * RS + dl, kc + off);
                    kvf_cp_async16(sV + j * RS + dl, vc + off);
                } else {  // zeros: a masked key's V row is multiplied by p = 0, which must not meet a NaN
                    *(uint4 *)(sK + j * RS + dl) = make_uint4(0u, 0u, 0u, 0u);
                    *(uint4 *)(sV + j * RS + dl) = make_uint4(0u, 0u, 0u, 0u);
                }
            }
            fetch(it + 1);  // in flight while this stage is
        }
        kvf_cp_async_commit();  // empty groups too: wait_group counts them
    };
    fetch(0);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) load(s);

    // Q fragments (A operands), one per 16 dims; rows past the tile are zeros.
    // T: Q^T's B fragments in qf[ks][0..1]: row g, dims 2 tq.. and 2 tq + 8.. of each 16
    uint32_t qf[HD / 16][4];
    if constexpr (T) {
        s_load_qt<HD>(qf, q, active, q0, nr, G, H, kvh, lane);
    } else {
        const bool v0 = active && r0 < nr, v1 = active && r1 < nr;
        const bf16 *q0p = q + ((size_t)(q0 + (v0 ? r0 / G : 0)) * H + (v0 ? kvh * G + r0 % G : 0)) * HD;
        const bf16 *q1p = q + ((size_t)(q0 + (v1 ? r1 / G : 0)) * H + (v1 ? kvh * G + r1 % G : 0)) * HD;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            // F8: dims 4 tq, 4 tq + 1 in the slots of 2 tq, 2 tq + 1 and 4 tq + 2, 4 tq + 3 in those of
            // 2 tq + 8, 2 tq + 9 (kvf_attn_step's K8S reads), as f16
            const int c = ks * 16 + (F8 ? 4 : 2) * tq, c2 = c + (F8 ? 2 : 8);
            qf[ks][0] = v0 ? *(const uint32_t *)(q0p + c) : 0u;
            qf[ks][1] = v1 ? *(const uint32_t *)(q1p + c) : 0u;
            qf[ks][2] = v0 ? *(const uint32_t *)(q0p + c2) : 0u;
            qf[ks][3] = v1 ? *(const uint32_t *)(q1p + c2) : 0u;
            if (F8)
#pragma unroll
                for (int e = 0; e < 4; e++) qf[ks][e] = kvf_bf16x2_to_f16x2_sat(qf[ks][e]);
        }
    }

    constexpr int NO = PVT ? HD / 16 : HD / 8;  // accumulator fragments
    float o[NO][4];
#pragma unroll
    for (int i = 0; i < NO; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    const int n_it = active ? n_kt : 0;
    for (int it = 0; it < n_it; it++) {
        kvf_cp_async_wait<STAGES - 2>();  // this thread's part of stage it is in
        if (PW) __syncwarp();  // every lane's part; the slot of it - 1 is free (scored by this warp)
        else __syncthreads();  // every thread's part; the slot of it - 1 is free (scored by every warp)
        load(it + STAGES - 1);
        const int kw = 16 * (SPLIT * it + sw);
        if (kw < kv_end) {  // uniform over the warp
            const TC *sK = sm + (it % STAGES) * STAGE + 16 * warp * RS;
            if constexpr (T)
                kvf_attn_step_t<HD, RS>(sK, sK + NR * RS, qf, o, m0, m1, l0, l1, kw, kv_end, pr0, pr1, scale_log2,
                                        lane);
            else if constexpr (PVT)
                kvf_attn_step_f8t<HD, RS>(sK, sK + NR * RS, qf, o, m0, m1, l0, l1, kw, kv_end, pr0, pr1, scale_log2,
                                          lane);
            else if constexpr (F8)
                kvf_attn_step_f8<HD, RS>(sK, sK + NR * RS, qf, o, m0, m1, l0, l1, kw, kv_end, pr0, pr1, scale_log2,
                                         lane);
            else
                kvf_attn_step<HD, 16>(sK, sK + NR * RS, qf, o, m0, m1, l0, l1, kw, kv_end, pr0, pr1, scale_log2,
                                      lane);
        }
    }
    kvf_cp_async_wait<0>();

    if constexpr (T) {
        s_store_t<HD>(out, o, l0, l1, active, q0, nr, G, H, kvh, lane);
        return;
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    if constexpr (PVT) {  // o[mt] holds dims (mt, g) and (mt, g + 8) of tile rows 2 tq, 2 tq + 1 (< 8)
        const float la = __shfl_sync(0xffffffffu, l0, 8 * tq), lb = __shfl_sync(0xffffffffu, l0, 8 * tq + 4);
        if (!active) return;
        const int ra = 2 * tq, rb = ra + 1;
        const float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
        bf16 *oa = out + ((size_t)(q0 + (ra < nr ? ra / G : 0)) * H + kvh * G + (ra < nr ? ra % G : 0)) * HD;
        bf16 *ob = out + ((size_t)(q0 + (rb < nr ? rb / G : 0)) * H + kvh * G + (rb < nr ? rb % G : 0)) * HD;
#pragma unroll
        for (int mt = 0; mt < NO; mt += 2)
#pragma unroll
            for (int h = 0; h < 2; h++) {  // dims of m-tile rows g, g + 8: mt and mt + 1 are neighbours
                const int d = kvf_attn_f8t_dim(HD, mt, g + 8 * h);
                if (ra < nr)
                    *(__nv_bfloat162 *)(oa + d) = __floats2bfloat162_rn(o[mt][2 * h] * ia, o[mt + 1][2 * h] * ia);
                if (rb < nr)
                    *(__nv_bfloat162 *)(ob + d) =
                        __floats2bfloat162_rn(o[mt][2 * h + 1] * ib, o[mt + 1][2 * h + 1] * ib);
            }
        return;
    } else {
        if (SPLIT == 1) {  // the warp saw every key of its head: no merge, no barrier
            if (!active) return;
            bf16 *o0 = out + ((size_t)(q0 + r0 / G) * H + kvh * G + r0 % G) * HD;
            bf16 *o1 = out + ((size_t)(q0 + r1 / G) * H + kvh * G + r1 % G) * HD;
            if constexpr (F8) {  // o[dt][c] holds dim kvf_attn_f8_dim(tq, dt, c): neighbouring dt are neighbouring dims
                const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt += 2)
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const int d = kvf_attn_f8_dim(HD, tq, dt, c);
                        if (r0 < nr)
                            *(__nv_bfloat162 *)(o0 + d) = __floats2bfloat162_rn(o[dt][c] * i0, o[dt + 1][c] * i0);
                        if (r1 < nr)
                            *(__nv_bfloat162 *)(o1 + d) =
                                __floats2bfloat162_rn(o[dt][2 + c] * i1, o[dt + 1][2 + c] * i1);
                    }
                return;
            }
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                const int c = dt * 8 + 2 * tq;
                if (r0 < nr)
                    *(__nv_bfloat162 *)(o0 + c) = __floats2bfloat162_rn(l0 > 0.0f ? o[dt][0] / l0 : 0.0f,
                                                                        l0 > 0.0f ? o[dt][1] / l0 : 0.0f);
                if (r1 < nr)
                    *(__nv_bfloat162 *)(o1 + c) = __floats2bfloat162_rn(l1 > 0.0f ? o[dt][2] / l1 : 0.0f,
                                                                        l1 > 0.0f ? o[dt][3] / l1 : 0.0f);
            }
            return;
        }

        // merge the SPLIT warps of each head (m, l, o) through shared memory
        __syncthreads();  // every warp is done with the stages
        s_merge<HD, SPLIT, HEADS>((float *)dsmem4, out, o, m0, m1, l0, l1, q0, nr, G, H, KV, kvg * HEADS, lane, warp);
    }
}

// ---------------------------------------------------------------- launchers

// The launch arguments common to every variant.
typedef struct {
    bf16 *out;
    const bf16 *q;
    const void *kc, *vc;  // bf16, or E4M3 bytes for the fp8 launchers
    const int32_t *tiles, *pos, *bt;
    int n_tiles, max_blocks, H, KV, bs;
    float scale_log2;
    cudaStream_t stream;
} s_args_t;

// Checks a launch and fills *a: 1 to launch, 0 when there is nothing to do, -1 with err set.
static int s_args(s_args_t *a, int variant, int n_variants, uint16_t *out, const uint16_t *q, const void *k_cache,
                  const void *v_cache, const int32_t *tiles, int n_tiles, const int32_t *pos,
                  const int32_t *block_table, int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                  cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(variant >= 0 && variant < n_variants, err);
    KVF_REQUIRE(out && q && k_cache && v_cache && tiles && pos && block_table, err);
    KVF_REQUIRE(kvf_attention_decode_supports(n_heads, n_kv, head_dim) && n_kv <= 65535, err);
    KVF_REQUIRE(block_size > 0 && max_blocks > 0 && n_tiles >= 0, err);
    *a = (s_args_t){(bf16 *)out, (const bf16 *)q, k_cache, v_cache, tiles, pos, block_table, n_tiles, max_blocks,
                    n_heads, n_kv, block_size, (float)(1.0 / sqrt((double)head_dim) * 1.4426950408889634), stream};
    return n_tiles > 0;
}

template <int HD, int WARPS, int STAGES, int HEADS, bool PW, typename TC = bf16, bool PVT = false>
static int s_launch_v(const s_args_t *a, kvf_err_t *err) {
    const int groups = (a->KV + HEADS - 1) / HEADS;
    KVF_REQUIRE((long long)a->n_tiles * groups <= 0x7fffffffLL, err);
    const size_t smem = s_smem_v(HD, WARPS, STAGES, sizeof(TC) == 1);
    KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_decode_v<HD, WARPS, STAGES, HEADS, PW, TC, PVT>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err);
    kvf_launch(s_attn_decode_v<HD, WARPS, STAGES, HEADS, PW, TC, PVT>, a->n_tiles * groups, 32 * WARPS, smem, a->stream,
               a->out, a->q, (const TC *)a->kc, (const TC *)a->vc, a->tiles, a->pos, a->bt, a->max_blocks, a->H, a->KV,
               a->bs, a->scale_log2);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

template <int HD>
static int s_launch_v0(const s_args_t *a, kvf_err_t *err) {
    KVF_REQUIRE((long long)a->n_tiles * a->KV <= 0x7fffffffLL, err);
    const size_t smem = (size_t)2 * 2 * DC_K * (HD + 8) * sizeof(uint16_t);
    KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_decode<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                   err);
    kvf_launch(s_attn_decode<HD>, a->n_tiles * a->KV, DC_THREADS, smem, a->stream, a->out, a->q, (const bf16 *)a->kc,
               (const bf16 *)a->vc, a->tiles, a->pos, a->bt, a->max_blocks, a->H, a->KV, a->bs, a->scale_log2);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

// ---------------------------------------------------------------- bulk-copy variants (sm_90)

// Dynamic shared memory of s_attn_decode_b: STAGES x (K|V) x 16 rows of HEADS x HD
// bf16 + 16 bytes, then a "full" and an "empty" mbarrier a stage.
static size_t s_smem_b(int hd, int heads, int stages) {
    return (size_t)stages * 2 * 16 * ((size_t)heads * hd * 2 + 16) + (size_t)stages * 2 * 8;
}

// The keys reach shared memory by the copy engine, not by the warps that score them,
// so that an SM keeps more bytes in flight than its warps' cp.async rings did (a
// share of the SMs must read as fast as the whole device: two-batch overlap, bench/
// RESULTS.md sessions 12-14). One block a (tile, group of HEADS KV heads): HEADS
// consumer warps (a warp a KV head, all of its keys, kvf_attn_step_t: tiles of at
// most 8 rows) and one producer warp. A stage is 16 keys: a key's K row and its V row
// of the group's heads (HEADS x HD bf16, side by side in the cache) are one
// cp.async.bulk each (lanes 0-15 K, 16-31 V), counted on the stage's "full" barrier;
// rows lie RB + 16 bytes apart, so the 8 rows of an ldmatrix phase meet no bank twice.
// The consumers give a stage back on its "empty" barrier (one arrival a warp). Keys
// past kv_end are not copied: each consumer zeroes its head's V rows there (p = 0 must
// not meet a NaN) and masks their scores.
template <int HD, int HEADS, int STAGES>
static __global__ void __launch_bounds__(32 * (HEADS + 1))
s_attn_decode_b(bf16 *out,             // (n_tokens, H, HD)
                const bf16 *q,         // (n_tokens, H, HD)
                const bf16 *kc,        // (n_blocks, bs, KV, HD)
                const bf16 *vc,        // (n_blocks, bs, KV, HD)
                const int32_t *tiles,  // (n_tiles, 3)
                const int32_t *pos,    // (n_tokens)
                const int32_t *bt,     // (n_seqs, max_blocks)
                int max_blocks, int H, int KV, int bs, float scale_log2) {
    kvf_pdl_wait();
#if KVF_MB_AVAILABLE
    constexpr int RS = HEADS * HD * 2 + 16;  // bytes between staged rows
    constexpr int KS = RS / 2;                // the same in bf16
    constexpr int STAGE = 2 * 16 * RS;        // K rows, then V rows
    extern __shared__ float4 dsmem4[];
    unsigned char *ring = (unsigned char *)dsmem4;  // (STAGES, K|V, 16, RS)
    uint64_t *full = (uint64_t *)(ring + STAGES * STAGE), *empty = full + STAGES;

    const int groups = (KV + HEADS - 1) / HEADS;
    const int tile = blockIdx.x / groups, kv0 = blockIdx.x % groups * HEADS;
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int G = H / KV, nr = nq * G, nh = min(HEADS, KV - kv0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int p0 = pos[q0], kv_end = p0 + nq, n_kt = (kv_end + 15) / 16;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            kvf_mb_init(kvf_smem_addr(full + s), 1);
            kvf_mb_init(kvf_smem_addr(empty + s), HEADS);
        }
        kvf_mb_fence_init();
    }
    __syncthreads();

    if (warp == HEADS) {  // the producer: a stage's 16 K rows (lanes 0-15) and V rows (16-31)
        const int32_t *btab = bt + (size_t)seq * max_blocks;
        const int j = lane & 15;
        const bf16 *cache = lane < 16 ? kc : vc;
        const uint32_t rb = (uint32_t)nh * HD * 2;
        for (int it = 0; it < n_kt; it++) {
            const int s = it % STAGES, key = 16 * it + j;
            if (it >= STAGES) kvf_mb_wait(kvf_smem_addr(empty + s), (it / STAGES - 1) & 1);
            if (lane == 0) kvf_mb_expect_tx(kvf_smem_addr(full + s), 2u * (uint32_t)min(16, kv_end - 16 * it) * rb);
            __syncwarp();
            if (key < kv_end) {
                const int blk = __ldg(btab + key / bs);
                kvf_bulk_load(kvf_smem_addr(ring + s * STAGE + ((lane >> 4) * 16 + j) * RS),
                              cache + (((size_t)blk * bs + key % bs) * KV + kv0) * HD, rb, kvf_smem_addr(full + s));
            }
        }
        return;  // the copies complete on the barriers; the consumers keep the block alive
    }

    const int kvh = kv0 + warp, tq = lane & 3;
    const bool active = warp < nh;  // uniform over the warp
    const int r0 = 2 * tq, r1 = r0 + 1;
    const int pr0 = r0 < nr ? p0 + r0 / G : -1, pr1 = r1 < nr ? p0 + r1 / G : -1;
    uint32_t qf[HD / 16][4];
    s_load_qt<HD>(qf, q, active, q0, nr, G, H, kvh, lane);
    float o[HD / 16][4];
#pragma unroll
    for (int i = 0; i < HD / 16; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    for (int it = 0; it < n_kt; it++) {
        const int s = it % STAGES, kw = 16 * it;
        kvf_mb_wait(kvf_smem_addr(full + s), (it / STAGES) & 1);
        bf16 *sK = (bf16 *)(ring + s * STAGE) + warp * HD, *sV = sK + 16 * KS;
        if (active) {
            if (kw + 16 > kv_end) {  // the last stage: this head's V rows past kv_end were not copied
                for (int c = lane; c < (kw + 16 - kv_end) * (HD / 8); c += 32)
                    *(uint4 *)(sV + (kv_end - kw + c / (HD / 8)) * KS + c % (HD / 8) * 8) = make_uint4(0u, 0u, 0u, 0u);
                kvf_fence_proxy_async();  // before the copy engine refills the stage
                __syncwarp();
            }
            kvf_attn_step_t<HD, KS>(sK, sV, qf, o, m0, m1, l0, l1, kw, kv_end, pr0, pr1, scale_log2, lane);
        }
        __syncwarp();  // every lane's reads of the stage are done
        if (lane == 0) kvf_mb_arrive(kvf_smem_addr(empty + s));
    }
    s_store_t<HD>(out, o, l0, l1, active, q0, nr, G, H, kvh, lane);
#else
    __trap();  // the launcher runs these only where the build has sm_90 code
#endif
}

template <int HD, int HEADS, int STAGES>
static int s_launch_b(const s_args_t *a, kvf_err_t *err) {
    const int groups = (a->KV + HEADS - 1) / HEADS;
    KVF_REQUIRE((long long)a->n_tiles * groups <= 0x7fffffffLL, err);
    const size_t smem = s_smem_b(HD, HEADS, STAGES);
    KVF_CUDA_CHECK(cudaFuncSetAttribute(s_attn_decode_b<HD, HEADS, STAGES>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err);
    kvf_launch(s_attn_decode_b<HD, HEADS, STAGES>, a->n_tiles * groups, 32 * (HEADS + 1), smem, a->stream, a->out, a->q,
               (const bf16 *)a->kc, (const bf16 *)a->vc, a->tiles, a->pos, a->bt, a->max_blocks, a->H, a->KV, a->bs,
               a->scale_log2);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

// The variants: name, shape (warps a block, ring depth, KV heads a block, one ring a warp).
// "SxK Nw": block-wide ring of S stages of K keys, N warps; "wSx16": a ring of S
// 16-key chunks a warp; "4h": 4 KV heads a block, a warp each.
typedef struct {
    const char *name;
    int warps, stages, heads, per_warp;
    int pvt;   // P V transposed (tiles of at most 8 rows)
    int bulk;  // s_attn_decode_b: heads a block, stages (warps: heads + the producer)
} s_variant_t;

static const s_variant_t s_variants[] = {
    {"v0 2x64 4w", 4, 2, 1, 0},   // s_attn_decode: two barriers a stage, block table read in front of each stage
    {"v1 3x64 4w", 4, 3, 1, 0},   // 104 KB: 2 blocks an SM, 2-3 stages in flight a block
    {"v2 4x32 2w", 2, 4, 1, 0},   // 68 KB: 3 blocks an SM of 2 warps, 3-4 stages in flight
    {"v3 w3x16 4w", 4, 3, 1, 1},  // 104 KB: 2 blocks an SM, no block barrier until the merge
    {"v4 w4x16 2w", 2, 4, 1, 1},  // 68 KB: 3 blocks an SM of 2 warps, no block barrier until the merge
    {"v5 w3x16 4h", 4, 3, 4, 1},  // 104 KB: a warp a KV head over all keys, no merge, no block barrier
    {"v6 w3x16 2w", 2, 3, 1, 1},  // 51 KB: 4 blocks an SM of 2 warps
    {"v7 t w3x16 4h", 4, 3, 4, 1, 1},  // v5, transposed (kvf_attn_step_t): tiles of at most 8 rows
    {"v8 t w4x16 2h", 2, 4, 2, 1, 1},  // 68 KB: 3 blocks an SM of 2 warps, 3 chunks in flight a warp
    {"v9 t b3x16 4h", 5, 3, 4, 1, 1, 1},    // bulk copies, 100 KB: 2 blocks an SM, 8 consumer warps
    {"v10 t b6x16 4h", 5, 6, 4, 1, 1, 1},   // 200 KB: 1 block an SM, 5 stages in flight
    {"v11 t b3x16 8h", 9, 3, 8, 1, 1, 1},   // 198 KB: 1 block an SM (a block a token), 8 consumer warps
    {"v12 t b4x16 2h", 3, 4, 2, 1, 1, 1},   // 68 KB: 3 blocks an SM, 6 consumer warps
    {"v13 t b2x16 4h", 5, 2, 4, 1, 1, 1},   // 67 KB: 3 blocks an SM, 12 consumer warps, one stage ahead
};
// Tried and dropped (H200, 512 x 576 keys): v5 with 8 KV heads a block (1 block an SM) 3.79 TB/s, with 2 (4 blocks
// an SM) 3.79, v5 3.80: the block's head count past 4 no longer matters.
#define DC_N_VARIANTS ((int)(sizeof s_variants / sizeof s_variants[0]))
// the variant kvf_attention_decode runs: v5, the fastest on an H200 (kvf-kbench, 512 sequences of
// 512-640 keys: v5 3.84 TB/s, v6 3.78, v3 3.55, v0 3.41; 128 sequences: v5 3.31, v0 2.86)
#define DC_DEFAULT 5
// tiles of at most 8 rows: v13 where the bulk-copy variants run (H200, 1024 sequences of 512-640 keys: 4.16-4.17
// TB/s against v7's 4.04-4.05; on a 32-SM share 2.20 against 1.68-1.72), else v7
#define DC_T_DEFAULT 13
#define DC_T_FALLBACK 7

template <int HD>
static int s_launch(int variant, const s_args_t *a, kvf_err_t *err) {
    switch (variant) {
    case 0: return s_launch_v0<HD>(a, err);
    case 1: return s_launch_v<HD, 4, 3, 1, false>(a, err);
    case 2: return s_launch_v<HD, 2, 4, 1, false>(a, err);
    case 3: return s_launch_v<HD, 4, 3, 1, true>(a, err);
    case 4: return s_launch_v<HD, 2, 4, 1, true>(a, err);
    case 5: return s_launch_v<HD, 4, 3, 4, true>(a, err);
    case 6: return s_launch_v<HD, 2, 3, 1, true>(a, err);
    case 7: return s_launch_v<HD, 4, 3, 4, true, bf16, true>(a, err);
    case 8: return s_launch_v<HD, 2, 4, 2, true, bf16, true>(a, err);
    case 9: return s_launch_b<HD, 4, 3>(a, err);
    case 10: return s_launch_b<HD, 4, 6>(a, err);
    case 11: return s_launch_b<HD, 8, 3>(a, err);
    case 12: return s_launch_b<HD, 2, 4>(a, err);
    case 13: return s_launch_b<HD, 4, 2>(a, err);
    default: break;
    }
    return kvf_check_inval(err, "a launcher for every variant", __func__);
}

extern "C" int kvf_attention_decode_supports(int n_heads, int n_kv, int head_dim) {
    return n_kv > 0 && n_heads > 0 && n_heads % n_kv == 0 && n_heads / n_kv <= KVF_ATTN_DECODE_ROWS &&
           (head_dim == 64 || head_dim == 128);
}

// The FP8-cache variants (kvf_attention_decode_fp8_variant): v5's shape, rings of
// 3, 4 or 6 chunks a warp (half the bytes of a bf16 chunk each).
static const s_variant_t s_fp8_variants[] = {
    {"f8 w3x16 4h", 4, 3, 4, 1},  // 54 KB: 3 blocks an SM (162 registers a thread)
    {"f8 w4x16 4h", 4, 4, 4, 1},  // 72 KB: 3 blocks an SM (H200, 512 x 577 keys: 0.196 ms, as w3)
    {"f8 w6x16 4h", 4, 6, 4, 1},  // 108 KB: 2 blocks an SM, 5 chunks in flight a warp
    {"f8t w3x16 4h", 4, 3, 4, 1, 1},  // kvf_attn_step_f8t: half the P V mma and accumulators
    {"f8t w4x16 4h", 4, 4, 4, 1, 1},
};
// Tried and dropped (H200, 512 x 577 keys): w3 with registers for 4 blocks an SM (<= 128 a thread, spills)
// 0.233 ms against 0.196; widening K and V into a per-warp f16 tile (2 blocks an SM) 0.298, the V tile
// alone (3 blocks an SM) 0.224: the warps' latency, not the bytes, set the pace.
#define DC_N_FP8_VARIANTS ((int)(sizeof s_fp8_variants / sizeof s_fp8_variants[0]))
#define DC_FP8_DEFAULT 1   // tiles of more than 8 rows
#define DC_FP8T_DEFAULT 3  // tiles of at most 8 rows (decode: one token, G <= 8)

extern "C" size_t kvf_attention_decode_smem(int head_dim) {
    size_t m = (size_t)2 * 2 * DC_K * (head_dim + 8) * sizeof(uint16_t);  // variant 0
    for (int v = 1; v < DC_N_VARIANTS; v++) {
        const size_t s = s_variants[v].bulk ? s_smem_b(head_dim, s_variants[v].heads, s_variants[v].stages)
                                            : s_smem_v(head_dim, s_variants[v].warps, s_variants[v].stages);
        if (s > m) m = s;
    }
    for (int v = 0; v < DC_N_FP8_VARIANTS; v++) {
        const size_t s = s_smem_v(head_dim, s_fp8_variants[v].warps, s_fp8_variants[v].stages, 1);
        if (s > m) m = s;
    }
    return m;
}

extern "C" int kvf_attention_decode_n_variants(void) { return DC_N_VARIANTS; }

extern "C" int kvf_attention_decode_variant_available(int variant) {
    if (variant < 0 || variant >= DC_N_VARIANTS) return 0;
    if (!s_variants[variant].bulk) return 1;
#ifdef KVF_CUDA_SM90
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                  cudaSuccess)
        return 0;
    return major == 9;  // sm_90 / sm_90a code
#else
    return 0;
#endif
}

extern "C" int kvf_attention_decode_default_variant(int fp8, int tile_rows) {
    if (!fp8 && tile_rows <= 8)
        return kvf_attention_decode_variant_available(DC_T_DEFAULT) ? DC_T_DEFAULT : DC_T_FALLBACK;
    if (!fp8) return DC_DEFAULT;
    return tile_rows <= 8 ? DC_FP8T_DEFAULT : DC_FP8_DEFAULT;
}

extern "C" int kvf_attention_decode_variant_max_rows(int fp8, int variant) {
    const s_variant_t *v = fp8 ? s_fp8_variants : s_variants;
    if (variant < 0 || variant >= (fp8 ? DC_N_FP8_VARIANTS : DC_N_VARIANTS)) return 0;
    return v[variant].pvt ? 8 : KVF_ATTN_DECODE_ROWS;
}

// KVF_E_INVAL when the tiles may hold more rows than the variant takes.
static int s_check_rows(int fp8, int variant, int tile_tokens, int n_heads, int n_kv, kvf_err_t *err) {
    const int max_rows = kvf_attention_decode_variant_max_rows(fp8, variant);
    if (tile_tokens >= 1 && (long long)tile_tokens * (n_heads / n_kv) <= max_rows) return 0;
    char what[160];
    snprintf(what, sizeof what, "variant \"%s\" takes tiles of at most %d rows (tile_tokens %d x %d heads a KV head)",
             fp8 ? s_fp8_variants[variant].name : s_variants[variant].name, max_rows, tile_tokens, n_heads / n_kv);
    return kvf_check_inval(err, what, fp8 ? "kvf_attention_decode_fp8_variant" : "kvf_attention_decode_variant");
}

extern "C" const char *kvf_attention_decode_variant_name(int variant) {
    return variant >= 0 && variant < DC_N_VARIANTS ? s_variants[variant].name : NULL;
}

extern "C" int kvf_attention_decode_variant(int variant, uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                            const uint16_t *v_cache, const int32_t *tiles, int n_tiles,
                                            int tile_tokens, const int32_t *pos, const int32_t *block_table,
                                            int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                                            cudaStream_t stream, kvf_err_t *err) {
    s_args_t a;
    const int rc = s_args(&a, variant, DC_N_VARIANTS, out, q, k_cache, v_cache, tiles, n_tiles, pos, block_table,
                          max_blocks, n_heads, n_kv, head_dim, block_size, stream, err);
    if (rc <= 0) return rc;
    if (s_check_rows(0, variant, tile_tokens, n_heads, n_kv, err) != 0) return -1;
    if (!kvf_attention_decode_variant_available(variant))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "decode attention variant \"%s\" needs sm_90 code (this build: "
                           "CMAKE_CUDA_ARCHITECTURES with 90 or 90a) and a compute capability 9.x device",
                           s_variants[variant].name);
    return head_dim == 64 ? s_launch<64>(variant, &a, err) : s_launch<128>(variant, &a, err);
}

extern "C" int kvf_attention_decode_fp8_n_variants(void) { return DC_N_FP8_VARIANTS; }

extern "C" const char *kvf_attention_decode_fp8_variant_name(int variant) {
    return variant >= 0 && variant < DC_N_FP8_VARIANTS ? s_fp8_variants[variant].name : NULL;
}

extern "C" int kvf_attention_decode_fp8_variant(int variant, uint16_t *out, const uint16_t *q, const uint8_t *k_cache,
                                                const uint8_t *v_cache, const int32_t *tiles, int n_tiles,
                                                int tile_tokens, const int32_t *pos, const int32_t *block_table,
                                                int max_blocks, int n_heads, int n_kv, int head_dim, int block_size,
                                                cudaStream_t stream, kvf_err_t *err) {
    s_args_t a;
    const int rc = s_args(&a, variant, DC_N_FP8_VARIANTS, out, q, k_cache, v_cache, tiles, n_tiles, pos, block_table,
                          max_blocks, n_heads, n_kv, head_dim, block_size, stream, err);
    if (rc <= 0) return rc;
    if (s_check_rows(1, variant, tile_tokens, n_heads, n_kv, err) != 0) return -1;
    switch (variant * 2 + (head_dim == 128)) {
    case 0: return s_launch_v<64, 4, 3, 4, true, kvf_fp8_t>(&a, err);
    case 1: return s_launch_v<128, 4, 3, 4, true, kvf_fp8_t>(&a, err);
    case 2: return s_launch_v<64, 4, 4, 4, true, kvf_fp8_t>(&a, err);
    case 3: return s_launch_v<128, 4, 4, 4, true, kvf_fp8_t>(&a, err);
    case 4: return s_launch_v<64, 4, 6, 4, true, kvf_fp8_t>(&a, err);
    case 5: return s_launch_v<128, 4, 6, 4, true, kvf_fp8_t>(&a, err);
    case 6: return s_launch_v<64, 4, 3, 4, true, kvf_fp8_t, true>(&a, err);
    case 7: return s_launch_v<128, 4, 3, 4, true, kvf_fp8_t, true>(&a, err);
    case 8: return s_launch_v<64, 4, 4, 4, true, kvf_fp8_t, true>(&a, err);
    case 9: return s_launch_v<128, 4, 4, 4, true, kvf_fp8_t, true>(&a, err);
    default: break;
    }
    return kvf_check_inval(err, "a launcher for every fp8 variant", __func__);
}

extern "C" int kvf_attention_decode_fp8(uint16_t *out, const uint16_t *q, const uint8_t *k_cache,
                                        const uint8_t *v_cache, const int32_t *tiles, int n_tiles, int tile_tokens,
                                        const int32_t *pos, const int32_t *block_table, int max_blocks, int n_heads,
                                        int n_kv, int head_dim, int block_size, cudaStream_t stream, kvf_err_t *err) {
    const int v = kvf_attention_decode_default_variant(1, n_kv > 0 ? tile_tokens * (n_heads / n_kv) : 1 << 30);
    return kvf_attention_decode_fp8_variant(v, out, q, k_cache, v_cache, tiles, n_tiles, tile_tokens, pos,
                                            block_table, max_blocks, n_heads, n_kv, head_dim, block_size, stream, err);
}

extern "C" int kvf_attention_decode(uint16_t *out, const uint16_t *q, const uint16_t *k_cache,
                                    const uint16_t *v_cache, const int32_t *tiles, int n_tiles, int tile_tokens,
                                    const int32_t *pos, const int32_t *block_table, int max_blocks, int n_heads,
                                    int n_kv, int head_dim, int block_size, cudaStream_t stream, kvf_err_t *err) {
    const int v = kvf_attention_decode_default_variant(0, n_kv > 0 ? tile_tokens * (n_heads / n_kv) : 1 << 30);
    return kvf_attention_decode_variant(v, out, q, k_cache, v_cache, tiles, n_tiles, tile_tokens, pos, block_table,
                                        max_blocks, n_heads, n_kv, head_dim, block_size, stream, err);
}
