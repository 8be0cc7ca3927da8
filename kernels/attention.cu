// kernels/attention.cu — see attention.h.
//
// One block of 4 warps per (tile, KV head, split). Its rows are the tile's
// query tokens x the query heads of that KV head (GQA: K and V are loaded once
// for the whole group). Per 32-key tile: K and V go to shared memory as f32;
// each lane scores one key against a row, the warp does the online-softmax
// update, and each lane accumulates head_dim/32 output dimensions.
#include <math.h>
#include <string.h>

#include "kernels/attention.h"
#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/util.cuh"

#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_KT 32

// 8 cache elements as one load: 16 bytes of bf16, 8 of E4M3; s_pair widens elements 2e, 2e + 1 to f32.
static __device__ __forceinline__ float2 s_pair(const uint4 &c, int e) {
    return __bfloat1622float2(((const __nv_bfloat162 *)&c)[e]);
}
static __device__ __forceinline__ float2 s_pair(const uint2 &c, int e) {
    const uint32_t h = kvf_fp8x2_to_f16x2((uint16_t)((e < 2 ? c.x : c.y) >> (16 * (e & 1))));
    return __half22float2(*(const __half2 *)&h);
}
template <typename TC>
struct s_chunk8 {
    typedef uint4 type;  // bf16
};
template <>
struct s_chunk8<kvf_fp8_t> {
    typedef uint2 type;
};

// TC: the cache's element type, bf16 or kvf_fp8_t (E4M3).
template <int HDL, int RPW, typename TC>
static __global__ void __launch_bounds__(ATT_THREADS)
s_attn(bf16 *out,                 // (n_tokens, H, HD) when n_splits == 1
       float *part_acc,           // (n_splits, n_tokens * H, HD) when n_splits > 1
       float *part_ml,            // (n_splits, n_tokens * H, 2)
       const bf16 *q,             // (n_tokens, H, HD)
       const TC *kc,              // (n_blocks, bs, KV, HD)
       const TC *vc,              // (n_blocks, bs, KV, HD)
       const int32_t *tiles,      // (n_tiles, 3)
       const int32_t *pos,        // (n_tokens)
       const int32_t *bt,         // (n_seqs, max_blocks)
       int max_blocks, int n_tokens, int H, int KV, int HD, int bs, int n_splits, int split_len,
       float scale) {
    kvf_pdl_wait();
    constexpr int ROWS = ATT_WARPS * RPW;
    extern __shared__ float4 smem4[];    // float4: 16-byte aligned for the vector reads
    float *sQ = (float *)smem4;          // (ROWS, HD), pre-scaled
    float *sK = sQ + ROWS * HD;          // (ATT_KT, HD + 4): padded so that 16-byte reads of
                                         // 8 lanes (one phase) hit distinct banks
    float *sV = sK + ATT_KT * (HD + 4);  // (ATT_KT, HD)

    const int tile = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    const int seq = tiles[3 * tile], q0 = tiles[3 * tile + 1], nq = tiles[3 * tile + 2];
    const int G = H / KV;
    const int nr = nq * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t *btab = bt + (size_t)seq * max_blocks;

    const int kv_end = pos[q0 + nq - 1] + 1;
    const int k_begin = split * split_len;
    const int k_end = min(kv_end, k_begin + split_len);

    if (k_begin < k_end)  // else an empty split: only its (empty) partials are written
        for (int idx = threadIdx.x; idx < nr * HD; idx += ATT_THREADS) {
            int r = idx / HD, d = idx % HD;
            int t = q0 + r / G, h = kvh * G + r % G;
            sQ[idx] = __bfloat162float(q[((size_t)t * H + h) * HD + d]) * scale;
        }

    int rpos[RPW];
    float m[RPW], l[RPW], acc[RPW][HDL];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        int row = warp * RPW + rr;
        rpos[rr] = row < nr ? pos[q0 + row / G] : -1;
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < HDL; i++) acc[rr][i] = 0.0f;
    }

    // K and V move in chunks of 8 elements (16 bytes of bf16, 8 of E4M3): a tile is ATT_KT * HD / 8 chunks,
    // at most HDL per thread. The next tile is fetched into registers while the
    // current one is scored, so its global latency overlaps the arithmetic.
    const int cpr = HD / 8;  // chunks per key
    const int n_chunks = ATT_KT * cpr;
    typedef typename s_chunk8<TC>::type chunk_t;
    chunk_t rk[HDL], rv[HDL];
    auto fetch = [&](int kt) {
#pragma unroll
        for (int i = 0; i < HDL; i++) {
            const int ch = threadIdx.x + i * ATT_THREADS, j = ch / cpr, key = kt + j;
            rk[i] = rv[i] = chunk_t{};
            if (ch < n_chunks && key < k_end) {
                const size_t off = (((size_t)btab[key / bs] * bs + key % bs) * KV + kvh) * HD + (ch % cpr) * 8;
                rk[i] = *(const chunk_t *)(kc + off);
                rv[i] = *(const chunk_t *)(vc + off);
            }
        }
    };
    auto stash = [&]() {
#pragma unroll
        for (int i = 0; i < HDL; i++) {
            const int ch = threadIdx.x + i * ATT_THREADS;
            if (ch >= n_chunks) continue;
            const int j = ch / cpr, d = (ch % cpr) * 8;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float2 kk = s_pair(rk[i], e), vv = s_pair(rv[i], e);
                sK[j * (HD + 4) + d + 2 * e] = kk.x;
                sK[j * (HD + 4) + d + 2 * e + 1] = kk.y;
                sV[j * HD + d + 2 * e] = vv.x;
                sV[j * HD + d + 2 * e + 1] = vv.y;
            }
        }
    };
    if (k_begin < k_end) fetch(k_begin);
    for (int kt = k_begin; kt < k_end; kt += ATT_KT) {
        __syncthreads();  // sQ written / previous tile consumed
        stash();
        __syncthreads();
        if (kt + ATT_KT < k_end) fetch(kt + ATT_KT);
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            const int row = warp * RPW + rr;
            if (row >= nr) continue;  // uniform over the warp
            const int key = kt + lane;
            float s = -INFINITY;
            if (key < k_end && key <= rpos[rr]) {
                const float4 *qr = (const float4 *)(sQ + row * HD), *kr = (const float4 *)(sK + lane * (HD + 4));
                float dot = 0.0f;
#pragma unroll 4
                for (int d = 0; d < HD / 4; d++) {
                    const float4 a = qr[d], k = kr[d];
                    dot += a.x * k.x + a.y * k.y + a.z * k.z + a.w * k.w;
                }
                s = dot;
            }
            const float mt = kvf_warp_max(s);
            if (mt == -INFINITY) continue;  // no key of this tile is visible to the row
            const float mn = fmaxf(m[rr], mt);
            const float corr = expf(m[rr] - mn);
            const float p = s == -INFINITY ? 0.0f : expf(s - mn);
            l[rr] = l[rr] * corr + kvf_warp_sum(p);
            m[rr] = mn;
#pragma unroll
            for (int i = 0; i < HDL; i++) acc[rr][i] *= corr;
#pragma unroll 4
            for (int j = 0; j < ATT_KT; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int i = 0; i < HDL; i++) {
                    const int d = lane + 32 * i;
                    if (d < HD) acc[rr][i] += pj * sV[j * HD + d];
                }
            }
        }
    }

#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        const int row = warp * RPW + rr;
        if (row >= nr) continue;
        const size_t th = (size_t)(q0 + row / G) * H + kvh * G + row % G;  // (token, head) row
        if (n_splits == 1) {
            const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
#pragma unroll
            for (int i = 0; i < HDL; i++) {
                const int d = lane + 32 * i;
                if (d < HD) out[th * HD + d] = __float2bfloat16_rn(acc[rr][i] * inv);
            }
        } else {
            const size_t pr = (size_t)split * n_tokens * H + th;
#pragma unroll
            for (int i = 0; i < HDL; i++) {
                const int d = lane + 32 * i;
                if (d < HD) part_acc[pr * HD + d] = acc[rr][i];
            }
            if (lane == 0) {
                part_ml[2 * pr] = m[rr];
                part_ml[2 * pr + 1] = l[rr];
            }
        }
    }
}

// One warp per (token, head): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
template <int HDL>
static __global__ void __launch_bounds__(ATT_THREADS)
s_attn_reduce(bf16 *out,              // (n_rows, HD)
              const float *part_acc,  // (n_splits, n_rows, HD)
              const float *part_ml,   // (n_splits, n_rows, 2)
              int n_rows, int HD, int n_splits) {
    kvf_pdl_wait();
    const int row = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    float M = -INFINITY;
    for (int s = 0; s < n_splits; s++) M = fmaxf(M, part_ml[2 * ((size_t)s * n_rows + row)]);
    float L = 0.0f, acc[HDL];
#pragma unroll
    for (int i = 0; i < HDL; i++) acc[i] = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        const size_t pr = (size_t)s * n_rows + row;
        const float ms = part_ml[2 * pr], ls = part_ml[2 * pr + 1];
        if (!(ls > 0.0f)) continue;  // an empty split (keys beyond this row)
        const float w = expf(ms - M);
        L += ls * w;
#pragma unroll
        for (int i = 0; i < HDL; i++) {
            const int d = lane + 32 * i;
            if (d < HD) acc[i] += w * part_acc[pr * HD + d];
        }
    }
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
#pragma unroll
    for (int i = 0; i < HDL; i++) {
        const int d = lane + 32 * i;
        if (d < HD) out[(size_t)row * HD + d] = __float2bfloat16_rn(acc[i] * inv);
    }
}

// ---------------------------------------------------------------- host helpers

extern "C" int kvf_attn_q_per_tile(int n_heads, int n_kv) {
    if (n_kv <= 0 || n_heads % n_kv) return 0;
    int g = n_heads / n_kv;
    return g > KVF_ATTN_MAX_ROWS ? 0 : KVF_ATTN_MAX_ROWS / g;
}

extern "C" int kvf_attn_build_tiles(int32_t *tiles, int max_tiles, const int32_t *n_new, int n_seqs,
                                    int q_per_tile) {
    if (!tiles || !n_new || q_per_tile <= 0) return -1;
    int nt = 0, q0 = 0;
    for (int s = 0; s < n_seqs; s++) {
        for (int i = 0; i < n_new[s]; i += q_per_tile) {
            if (nt >= max_tiles) return -1;
            tiles[3 * nt] = s;
            tiles[3 * nt + 1] = q0 + i;
            tiles[3 * nt + 2] = n_new[s] - i < q_per_tile ? n_new[s] - i : q_per_tile;
            nt++;
        }
        q0 += n_new[s];
    }
    return nt;
}

extern "C" size_t kvf_attn_order_scratch_ints(int n_tiles, int max_keys) {
    if (n_tiles < 0 || max_keys < 0) return 0;
    return (size_t)3 * n_tiles + (size_t)(max_keys / KVF_ATTN_ORDER_KEYS) + 2;
}

// A counting sort on the steps of keys: one pass to count, one to place.
extern "C" int kvf_attn_order_tiles(int32_t *tiles, int n_tiles, const int32_t *pos, int max_keys,
                                    int32_t *scratch) {
    if (n_tiles < 0 || max_keys < 0 || (n_tiles > 0 && (!tiles || !pos || !scratch))) return -1;
    if (n_tiles < 2) return 0;
    const int top = max_keys / KVF_ATTN_ORDER_KEYS + 1;  // steps of the longest tile allowed: buckets 0..top
    int32_t *copy = scratch, *start = scratch + 3 * (size_t)n_tiles;  // (n_tiles, 3), (top + 1)
    memset(start, 0, (size_t)(top + 1) * sizeof(int32_t));
    for (int i = 0; i < n_tiles; i++) {
        const int64_t keys = (int64_t)pos[tiles[3 * i + 1] + tiles[3 * i + 2] - 1] + 1;
        if (tiles[3 * i + 2] < 1 || keys < 1 || keys > max_keys) return -1;
        start[top - (keys + KVF_ATTN_ORDER_KEYS - 1) / KVF_ATTN_ORDER_KEYS]++;  // bucket 0: the longest
    }
    for (int b = 0, sum = 0; b <= top; b++) {
        const int cnt = start[b];
        start[b] = sum, sum += cnt;
    }
    for (int i = 0; i < n_tiles; i++) {
        const int64_t keys = (int64_t)pos[tiles[3 * i + 1] + tiles[3 * i + 2] - 1] + 1;
        const int to = start[top - (keys + KVF_ATTN_ORDER_KEYS - 1) / KVF_ATTN_ORDER_KEYS]++;
        memcpy(copy + 3 * (size_t)to, tiles + 3 * (size_t)i, 3 * sizeof(int32_t));
    }
    memcpy(tiles, copy, (size_t)n_tiles * 3 * sizeof(int32_t));
    return 0;
}

extern "C" int kvf_attn_choose_splits(int n_tiles, int n_kv, int max_ctx, int max_splits, int n_sms,
                                      int *split_len) {
    long long ctas = (long long)n_tiles * n_kv;
    int splits = 1;
    if (max_splits > 1 && max_ctx > 256 && ctas < 2LL * n_sms) {
        long long want = (2LL * n_sms + ctas - 1) / ctas;
        long long cap = (max_ctx + 127) / 128;
        if (want > cap) want = cap;
        if (want > max_splits) want = max_splits;
        splits = (int)want;
    }
    if (splits <= 1) {
        *split_len = 1 << 30;
        return 1;
    }
    int len = (max_ctx + splits - 1) / splits;
    len = (len + ATT_KT - 1) / ATT_KT * ATT_KT;
    *split_len = len;
    return (max_ctx + len - 1) / len;
}

extern "C" size_t kvf_attn_partial_floats(int n_splits, int n_tokens, int n_heads, int head_dim) {
    return (size_t)n_splits * n_tokens * n_heads * (head_dim + 2);
}

template <int HDL, int RPW, typename TC>
static void s_launch(dim3 grid, size_t smem, cudaStream_t stream, bf16 *out, float *pa, float *pml,
                     const bf16 *q, const TC *kc, const TC *vc, const int32_t *tiles, const int32_t *pos,
                     const int32_t *bt, int max_blocks, int n_tokens, int H, int KV, int HD, int bs,
                     int n_splits, int split_len, float scale) {
    kvf_launch(s_attn<HDL, RPW, TC>, grid, ATT_THREADS, smem, stream, out, pa, pml, q, kc, vc, tiles, pos, bt,
               max_blocks, n_tokens, H, KV, HD, bs, n_splits, split_len, scale);
}

template <typename TC>
static int s_attention(uint16_t *out, float *partial, const uint16_t *q, const TC *kc, const TC *vc,
                       const int32_t *tiles, int n_tiles, int q_per_tile, const int32_t *pos,
                       const int32_t *block_table, int max_blocks, int n_tokens, int n_heads, int n_kv, int head_dim,
                       int block_size, int n_splits, int split_len, cudaStream_t stream, kvf_err_t *err) {
    const void *k_cache = kc, *v_cache = vc;
    KVF_REQUIRE(out && q && k_cache && v_cache && tiles && pos && block_table, err);
    KVF_REQUIRE(n_heads > 0 && n_kv > 0 && n_heads % n_kv == 0, err);
    KVF_REQUIRE(head_dim >= 8 && head_dim % 8 == 0 && head_dim <= KVF_ATTN_MAX_HEAD_DIM, err);
    KVF_REQUIRE(q_per_tile >= 1 && q_per_tile * (n_heads / n_kv) <= KVF_ATTN_MAX_ROWS, err);
    KVF_REQUIRE(block_size > 0 && max_blocks > 0 && n_tiles >= 0 && n_tokens >= 0, err);
    KVF_REQUIRE(n_splits >= 1 && n_splits <= KVF_ATTN_MAX_SPLITS && n_kv <= 65535, err);
    KVF_REQUIRE(n_splits == 1 || (partial && split_len >= ATT_KT && split_len % ATT_KT == 0), err);
    if (n_splits == 1) split_len = 1 << 30;
    if (n_tiles == 0) return 0;

    const int rows = q_per_tile * (n_heads / n_kv);
    const int rpw = rows <= 4 ? 1 : rows <= 8 ? 2 : 4;
    const int hdl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : 4;  // dims per lane (extra ones guarded)
    const size_t smem = sizeof(float) * ((size_t)ATT_WARPS * rpw * head_dim + (size_t)ATT_KT * (head_dim + 4) +
                                         (size_t)ATT_KT * head_dim);
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    const dim3 grid(n_tiles, n_kv, n_splits);
    float *pa = n_splits > 1 ? partial : NULL;
    float *pml = n_splits > 1 ? partial + (size_t)n_splits * n_tokens * n_heads * head_dim : NULL;
    bf16 *o = (bf16 *)out;
    const bf16 *qq = (const bf16 *)q;

#define KVF_ATT_CASE(HDL_, RPW_)                                                                    \
    if (hdl == HDL_ && rpw == RPW_)                                                                 \
        s_launch<HDL_, RPW_, TC>(grid, smem, stream, o, pa, pml, qq, kc, vc, tiles, pos, block_table,  \
                             max_blocks, n_tokens, n_heads, n_kv, head_dim, block_size, n_splits,   \
                             split_len, scale);
    KVF_ATT_CASE(1, 1) else KVF_ATT_CASE(1, 2) else KVF_ATT_CASE(1, 4)
    else KVF_ATT_CASE(2, 1) else KVF_ATT_CASE(2, 2) else KVF_ATT_CASE(2, 4)
    else KVF_ATT_CASE(4, 1) else KVF_ATT_CASE(4, 2) else KVF_ATT_CASE(4, 4)
#undef KVF_ATT_CASE
    KVF_LAUNCH_CHECK(err);

    if (n_splits > 1) {
        const int n_rows = n_tokens * n_heads;
        const unsigned blocks = kvf_cdiv(n_rows, ATT_WARPS);
        switch (hdl) {
        case 1:
            kvf_launch(s_attn_reduce<1>, blocks, ATT_THREADS, 0, stream, o, pa, pml, n_rows, head_dim, n_splits);
            break;
        case 2:
            kvf_launch(s_attn_reduce<2>, blocks, ATT_THREADS, 0, stream, o, pa, pml, n_rows, head_dim, n_splits);
            break;
        default:
            kvf_launch(s_attn_reduce<4>, blocks, ATT_THREADS, 0, stream, o, pa, pml, n_rows, head_dim, n_splits);
            break;
        }
        KVF_LAUNCH_CHECK(err);
    }
    return 0;
}

extern "C" int kvf_attention(uint16_t *out, float *partial, const uint16_t *q, const uint16_t *k_cache,
                             const uint16_t *v_cache, const int32_t *tiles, int n_tiles, int q_per_tile,
                             const int32_t *pos, const int32_t *block_table, int max_blocks, int n_tokens,
                             int n_heads, int n_kv, int head_dim, int block_size, int n_splits, int split_len,
                             cudaStream_t stream, kvf_err_t *err) {
    return s_attention<bf16>(out, partial, q, (const bf16 *)k_cache, (const bf16 *)v_cache, tiles, n_tiles,
                             q_per_tile, pos, block_table, max_blocks, n_tokens, n_heads, n_kv, head_dim, block_size,
                             n_splits, split_len, stream, err);
}

extern "C" int kvf_attention_fp8(uint16_t *out, float *partial, const uint16_t *q, const uint8_t *k_cache,
                                 const uint8_t *v_cache, const int32_t *tiles, int n_tiles, int q_per_tile,
                                 const int32_t *pos, const int32_t *block_table, int max_blocks, int n_tokens,
                                 int n_heads, int n_kv, int head_dim, int block_size, int n_splits, int split_len,
                                 cudaStream_t stream, kvf_err_t *err) {
    return s_attention<kvf_fp8_t>(out, partial, q, k_cache, v_cache, tiles, n_tiles, q_per_tile, pos, block_table,
                                  max_blocks, n_tokens, n_heads, n_kv, head_dim, block_size, n_splits, split_len,
                                  stream, err);
}
