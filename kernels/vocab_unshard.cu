// kernels/vocab_unshard.cu — see vocab_unshard.h. A block per (row, rank): the
// rank's nv_p logits of the row, 16-byte loads where both sides are aligned.
#include <stdint.h>

#include "kernels/check.h"
#include "kernels/vocab_unshard.h"

#define VU_THREADS 256

static __global__ void __launch_bounds__(VU_THREADS) s_unshard(float *logits, const float *gathered, int rows,
                                                               int vocab, int size, int stride) {
    const int r = blockIdx.x, p = blockIdx.y;
    const int vb = vocab / size, vr = vocab % size;
    const int v0 = p * vb + (p < vr ? p : vr), nv = vb + (p < vr);
    const float *src = gathered + (size_t)p * rows * stride + (size_t)r * nv;  // (nv)
    float *dst = logits + (size_t)r * vocab + v0;                              // (nv)
    if ((((uintptr_t)src | (uintptr_t)dst) & 15) == 0) {
        const int n4 = nv / 4;
        for (int i = threadIdx.x; i < n4; i += blockDim.x) ((float4 *)dst)[i] = ((const float4 *)src)[i];
        for (int i = 4 * n4 + threadIdx.x; i < nv; i += blockDim.x) dst[i] = src[i];
    } else {
        for (int i = threadIdx.x; i < nv; i += blockDim.x) dst[i] = src[i];
    }
}

extern "C" int kvf_vocab_unshard(float *logits, const float *gathered, int rows, int vocab, int size, int stride,
                                 cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(logits && gathered && rows >= 0 && size >= 1 && size <= 65535 && vocab >= size, err);
    KVF_REQUIRE(stride >= vocab / size + (vocab % size != 0), err);
    if (rows == 0) return 0;
    s_unshard<<<dim3((unsigned)rows, (unsigned)size), VU_THREADS, 0, stream>>>(logits, gathered, rows, vocab, size,
                                                                              stride);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
