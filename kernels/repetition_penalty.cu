// kernels/repetition_penalty.cu — see repetition_penalty.h. One block per row:
// every history id's logit is read into scratch, then (after a block barrier)
// each is written back penalised; an id that occurs twice writes the same value
// twice, so it is penalised once, as the host's seen-marks do.
#include "kernels/check.h"
#include "kernels/repetition_penalty.h"
#include "kernels/util.cuh"

#define RP_THREADS 256

static __global__ void __launch_bounds__(RP_THREADS)
s_penalty(float *logits, const int32_t *hist, const int32_t *hist_off, const float *penalty, float *scratch,
          int vocab) {
    const int r = blockIdx.x;
    const float p = penalty[r];
    if (p == 1.0f) return;
    float *row = logits + (size_t)r * vocab;
    const int j0 = hist_off[r], j1 = hist_off[r + 1];
    for (int j = j0 + threadIdx.x; j < j1; j += RP_THREADS) {
        const int id = hist[j];
        if (id >= 0 && id < vocab) scratch[j] = row[id];
    }
    __syncthreads();
    for (int j = j0 + threadIdx.x; j < j1; j += RP_THREADS) {
        const int id = hist[j];
        if (id < 0 || id >= vocab) continue;
        const float v = scratch[j];
        row[id] = v < 0.0f ? v * p : __fdiv_rn(v, p);
    }
}

extern "C" int kvf_repetition_penalty(float *logits, const int32_t *hist, const int32_t *hist_off,
                                      const float *penalty, float *scratch, int n, int vocab, cudaStream_t stream,
                                      kvf_err_t *err) {
    KVF_REQUIRE(logits && hist_off && penalty && n >= 0 && vocab > 0, err);
    if (n == 0) return 0;
    s_penalty<<<n, RP_THREADS, 0, stream>>>(logits, hist, hist_off, penalty, scratch, vocab);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
