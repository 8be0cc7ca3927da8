// kernels/embed.cu — see embed.h.
#include "kernels/check.h"
#include "kernels/embed.h"
#include "kernels/util.cuh"

// One block per output row; bf16 pairs when dim is even.
template <typename TOut>
static __global__ void s_gather_rows(TOut *out,          // (n, dim)
                                     const bf16 *src,    // (n_src, dim)
                                     const int32_t *idx, // (n)
                                     int dim, int n_src, int id0) {
    kvf_pdl_wait();
    const int t = blockIdx.x;
    const int id = idx[t] - id0;
    TOut *o = out + (size_t)t * dim;
    if (id < 0 || id >= n_src) {
        for (int d = threadIdx.x; d < dim; d += blockDim.x) kvf_st(o + d, 0.0f);
        return;
    }
    const bf16 *s = src + (size_t)id * dim;
    if ((dim & 1) == 0) {
        const __nv_bfloat162 *s2 = (const __nv_bfloat162 *)s;
        for (int d = threadIdx.x; d < dim / 2; d += blockDim.x) {
            float2 v = __bfloat1622float2(s2[d]);
            kvf_st(o + 2 * d, v.x);
            kvf_st(o + 2 * d + 1, v.y);
        }
    } else {
        for (int d = threadIdx.x; d < dim; d += blockDim.x) kvf_st(o + d, kvf_ld(s + d));
    }
}

template <typename TOut>
static int s_launch(TOut *out, const uint16_t *src, const int32_t *idx, int n, int dim, int n_src, int id0,
                    cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(out && src && idx, err);
    KVF_REQUIRE(n >= 0 && dim > 0 && n_src > 0, err);
    if (n == 0) return 0;
    int threads = dim / 2 >= 256 ? 256 : ((dim / 2 + 31) / 32) * 32;
    if (threads < 32) threads = 32;
    kvf_launch(s_gather_rows<TOut>, n, threads, 0, stream, out, (const bf16 *)src, idx, dim, n_src, id0);
    KVF_LAUNCH_CHECK(err);
    return 0;
}

extern "C" int kvf_embed_f32(float *out, const uint16_t *table, const int32_t *ids, int n, int dim,
                             int vocab, cudaStream_t stream, kvf_err_t *err) {
    return s_launch<float>(out, table, ids, n, dim, vocab, 0, stream, err);
}

extern "C" int kvf_embed_shard_f32(float *out, const uint16_t *table, const int32_t *ids, int n, int dim, int id0,
                                   int n_rows, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(id0 >= 0, err);
    return s_launch<float>(out, table, ids, n, dim, n_rows, id0, stream, err);
}

extern "C" int kvf_gather_rows_bf16(uint16_t *out, const uint16_t *src, const int32_t *idx, int n,
                                    int dim, int n_src, cudaStream_t stream, kvf_err_t *err) {
    return s_launch<bf16>((bf16 *)out, src, idx, n, dim, n_src, 0, stream, err);
}
