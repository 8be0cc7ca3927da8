// kernels/rope_kv.cu — see rope_kv.h. One block per token; threads walk the
// rotation pairs of all q and k heads, then the v elements (two pairs / two
// elements a thread when head_dim % 4 == 0).
#include "kernels/check.h"
#include "kernels/fp8.cuh"
#include "kernels/rope_kv.h"
#include "kernels/util.cuh"

// Cache stores: bf16 (nearest even) or E4M3 (nearest even, saturated), from f32.
static __device__ __forceinline__ void s_st1(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }
static __device__ __forceinline__ void s_st1(kvf_fp8_t *p, float v) {
    *p = (kvf_fp8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}
static __device__ __forceinline__ void s_st2(bf16 *p, float a, float b) {
    *(__nv_bfloat162 *)p = __floats2bfloat162_rn(a, b);
}
static __device__ __forceinline__ void s_st2(kvf_fp8_t *p, float a, float b) {
    *(uint16_t *)p = kvf_fp8x2_from_float2(a, b);
}

// TC: the cache's element type, bf16 or kvf_fp8_t (E4M3); q_out is bf16 either way.
template <typename TIn, typename TC>
static __global__ void s_rope_kv(bf16 *q_out,            // (n, H, HD)
                                 TC *k_cache,            // (n_blocks, bs, KV, HD)
                                 TC *v_cache,            // (n_blocks, bs, KV, HD)
                                 const TIn *qkv,         // (n, (H + 2KV) * HD)
                                 const float *bias,      // ((H + 2KV) * HD) or NULL
                                 const float *inv_freq,  // (HD / 2)
                                 const int32_t *pos, const int32_t *tok_seq,
                                 const int32_t *block_table,  // (n_seqs, max_blocks)
                                 int max_blocks, int H, int KV, int HD, int bs, int n_blocks) {
    kvf_pdl_wait();
    const int t = blockIdx.x;
    const int half = HD / 2;
    const int row_len = (H + 2 * KV) * HD;
    const TIn *x = qkv + (size_t)t * row_len;
    const int p = pos[t];
    const int blk = (p >= 0 && p / bs < max_blocks) ? block_table[(size_t)tok_seq[t] * max_blocks + p / bs] : -1;
    const bool slot_ok = blk >= 0 && blk < n_blocks;
    const size_t slot = ((size_t)blk * bs + (size_t)(p % bs)) * KV * HD;  // element offset of the token's row
    const float fp = (float)p;

    // q and k heads: pairs (i, i + half)
    for (int idx = threadIdx.x; idx < (H + KV) * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        const int c0 = h * HD + i, c1 = c0 + half;
        float x1 = kvf_ld(x + c0), x2 = kvf_ld(x + c1);
        if (bias) {
            x1 += bias[c0];
            x2 += bias[c1];
        }
        float s, c;
        sincosf(inv_freq[i] * fp, &s, &c);
        const float y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s;
        if (h < H) {
            bf16 *qo = q_out + ((size_t)t * H + h) * HD;
            qo[i] = __float2bfloat16_rn(y1);
            qo[i + half] = __float2bfloat16_rn(y2);
        } else if (slot_ok) {
            TC *ko = k_cache + slot + (size_t)(h - H) * HD;
            s_st1(ko + i, y1);
            s_st1(ko + i + half, y2);
        }
    }
    if (!slot_ok) return;
    // v heads: copied (with bias)
    const int v0 = (H + KV) * HD;
    for (int idx = threadIdx.x; idx < KV * HD; idx += blockDim.x) {
        float v = kvf_ld(x + v0 + idx);
        if (bias) v += bias[v0 + idx];
        s_st1(v_cache + slot + idx, v);
    }
}

static __device__ __forceinline__ float2 s_ld2(const float *p) { return *(const float2 *)p; }
static __device__ __forceinline__ float2 s_ld2(const bf16 *p) { return __bfloat1622float2(*(const __nv_bfloat162 *)p); }

// The same with two neighbouring rotation pairs a thread (i, i + 1 with i even):
// 8-byte f32 / 4-byte bf16 loads and bf16x2 stores instead of scalar ones. Needs
// head_dim % 4 == 0; the arithmetic of each element is the scalar kernel's.
template <typename TIn, typename TC>
static __global__ void s_rope_kv2(bf16 *q_out,            // (n, H, HD)
                                  TC *k_cache,            // (n_blocks, bs, KV, HD)
                                  TC *v_cache,            // (n_blocks, bs, KV, HD)
                                  const TIn *qkv,         // (n, (H + 2KV) * HD)
                                  const float *bias,      // ((H + 2KV) * HD) or NULL
                                  const float *inv_freq,  // (HD / 2)
                                  const int32_t *pos, const int32_t *tok_seq,
                                  const int32_t *block_table,  // (n_seqs, max_blocks)
                                  int max_blocks, int H, int KV, int HD, int bs, int n_blocks) {
    kvf_pdl_wait();
    const int t = blockIdx.x;
    const int half = HD / 2, hp = half / 2;
    const int row_len = (H + 2 * KV) * HD;
    const TIn *x = qkv + (size_t)t * row_len;
    const int p = pos[t];
    const int blk = (p >= 0 && p / bs < max_blocks) ? block_table[(size_t)tok_seq[t] * max_blocks + p / bs] : -1;
    const bool slot_ok = blk >= 0 && blk < n_blocks;
    const size_t slot = ((size_t)blk * bs + (size_t)(p % bs)) * KV * HD;  // element offset of the token's row
    const float fp = (float)p;
    // the token's angles once (every q and k head rotates by the same ones): 40 heads
    // of Llama-3-8B each computed them again before, ~as much time as the bytes moved
    extern __shared__ float rope_sc[];  // (HD / 2) sines, then (HD / 2) cosines
    for (int i = threadIdx.x; i < half; i += blockDim.x) sincosf(inv_freq[i] * fp, &rope_sc[i], &rope_sc[half + i]);
    __syncthreads();

    for (int idx = threadIdx.x; idx < (H + KV) * hp; idx += blockDim.x) {
        const int h = idx / hp, i = 2 * (idx % hp);
        const int c0 = h * HD + i, c1 = c0 + half;
        float2 a = s_ld2(x + c0), b = s_ld2(x + c1);
        if (bias) {
            const float2 ba = *(const float2 *)(bias + c0), bb = *(const float2 *)(bias + c1);
            a.x += ba.x, a.y += ba.y, b.x += bb.x, b.y += bb.y;
        }
        const float s0 = rope_sc[i], co0 = rope_sc[half + i], s1 = rope_sc[i + 1], co1 = rope_sc[half + i + 1];
        const float2 y1 = make_float2(a.x * co0 - b.x * s0, a.y * co1 - b.y * s1);
        const float2 y2 = make_float2(b.x * co0 + a.x * s0, b.y * co1 + a.y * s1);
        if (h < H) {
            bf16 *o = q_out + ((size_t)t * H + h) * HD;
            s_st2(o + i, y1.x, y1.y);
            s_st2(o + i + half, y2.x, y2.y);
        } else if (slot_ok) {
            TC *o = k_cache + slot + (size_t)(h - H) * HD;
            s_st2(o + i, y1.x, y1.y);
            s_st2(o + i + half, y2.x, y2.y);
        }
    }
    if (!slot_ok) return;
    const int v0 = (H + KV) * HD;
    for (int idx = 2 * threadIdx.x; idx < KV * HD; idx += 2 * blockDim.x) {
        float2 v = s_ld2(x + v0 + idx);
        if (bias) {
            const float2 bv = *(const float2 *)(bias + v0 + idx);
            v.x += bv.x, v.y += bv.y;
        }
        s_st2(v_cache + slot + idx, v.x, v.y);
    }
}

template <typename TIn, typename TC>
static int s_launch(uint16_t *q_out, TC *k_cache, TC *v_cache, const TIn *qkv, const float *bias,
                    const float *inv_freq, const int32_t *pos, const int32_t *tok_seq, const int32_t *block_table,
                    int max_blocks, int n, int n_heads, int n_kv, int head_dim, int block_size, int n_blocks,
                    cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(q_out && k_cache && v_cache && qkv && inv_freq && pos && tok_seq && block_table, err);
    KVF_REQUIRE(n >= 0 && n_heads > 0 && n_kv > 0 && n_heads % n_kv == 0, err);
    KVF_REQUIRE(head_dim > 0 && head_dim % 2 == 0 && block_size > 0 && max_blocks > 0 && n_blocks > 0, err);
    if (n == 0) return 0;
    const uintptr_t al = (uintptr_t)q_out | (uintptr_t)k_cache | (uintptr_t)v_cache | (uintptr_t)qkv |
                         (uintptr_t)bias | (uintptr_t)inv_freq;
    if (head_dim % 4 == 0 && al % 8 == 0) {  // two pairs a thread (every offset is then even)
        const int work = (n_heads + n_kv) * head_dim / 4;
        const int threads = work >= 256 ? 256 : ((work + 31) / 32) * 32;
        kvf_launch(s_rope_kv2<TIn, TC>, n, threads, (size_t)head_dim * sizeof(float), stream, (bf16 *)q_out, k_cache,
                   v_cache, qkv, bias, inv_freq, pos, tok_seq, block_table, max_blocks, n_heads, n_kv, head_dim,
                   block_size, n_blocks);
        KVF_LAUNCH_CHECK(err);
        return 0;
    }
    int work = (n_heads + n_kv) * head_dim / 2;
    int threads = work >= 256 ? 256 : ((work + 31) / 32) * 32;
    kvf_launch(s_rope_kv<TIn, TC>, n, threads, 0, stream, (bf16 *)q_out, k_cache, v_cache, qkv, bias, inv_freq, pos,
               tok_seq, block_table, max_blocks, n_heads, n_kv, head_dim, block_size, n_blocks);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_rope_kv(uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache, const uint16_t *qkv,
                           const float *bias, const float *inv_freq, const int32_t *pos, const int32_t *tok_seq,
                           const int32_t *block_table, int max_blocks, int n, int n_heads, int n_kv, int head_dim,
                           int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err) {
    return s_launch<bf16, bf16>(q_out, (bf16 *)k_cache, (bf16 *)v_cache, (const bf16 *)qkv, bias, inv_freq, pos,
                                tok_seq, block_table, max_blocks, n, n_heads, n_kv, head_dim, block_size, n_blocks,
                                stream, err);
}

extern "C" int kvf_rope_kv_f32(uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache, const float *qkv,
                               const float *bias, const float *inv_freq, const int32_t *pos, const int32_t *tok_seq,
                               const int32_t *block_table, int max_blocks, int n, int n_heads, int n_kv, int head_dim,
                               int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err) {
    return s_launch<float, bf16>(q_out, (bf16 *)k_cache, (bf16 *)v_cache, qkv, bias, inv_freq, pos, tok_seq,
                                 block_table, max_blocks, n, n_heads, n_kv, head_dim, block_size, n_blocks, stream,
                                 err);
}

extern "C" int kvf_rope_kv_fp8(uint16_t *q_out, uint8_t *k_cache, uint8_t *v_cache, const uint16_t *qkv,
                               const float *bias, const float *inv_freq, const int32_t *pos, const int32_t *tok_seq,
                               const int32_t *block_table, int max_blocks, int n, int n_heads, int n_kv,
                               int head_dim, int block_size, int n_blocks, cudaStream_t stream, kvf_err_t *err) {
    return s_launch<bf16, kvf_fp8_t>(q_out, k_cache, v_cache, (const bf16 *)qkv, bias, inv_freq, pos, tok_seq,
                                     block_table, max_blocks, n, n_heads, n_kv, head_dim, block_size, n_blocks,
                                     stream, err);
}

extern "C" int kvf_rope_kv_f32_fp8(uint16_t *q_out, uint8_t *k_cache, uint8_t *v_cache, const float *qkv,
                                   const float *bias, const float *inv_freq, const int32_t *pos,
                                   const int32_t *tok_seq, const int32_t *block_table, int max_blocks, int n,
                                   int n_heads, int n_kv, int head_dim, int block_size, int n_blocks,
                                   cudaStream_t stream, kvf_err_t *err) {
    return s_launch<float, kvf_fp8_t>(q_out, k_cache, v_cache, qkv, bias, inv_freq, pos, tok_seq, block_table,
                                      max_blocks, n, n_heads, n_kv, head_dim, block_size, n_blocks, stream, err);
}
