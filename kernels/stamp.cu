// kernels/stamp.cu — see stamp.h.
#include "kernels/check.h"
#include "kernels/stamp.h"

static __global__ void s_stamp(uint64_t *slot) {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    *slot = t;
}

int kvf_stamp(uint64_t *slot, cudaStream_t stream, kvf_err_t *err) {
    KVF_REQUIRE(slot, err);
    s_stamp<<<1, 1, 0, stream>>>(slot);
    KVF_LAUNCH_CHECK(err);
    return 0;
}
