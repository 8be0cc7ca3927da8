// kernels/mbarrier.cuh — sm_90 shared-memory mbarriers and the copy engine's bulk
// copies (cp.async.bulk), for the producer / consumer rings of the warp-specialized
// kernels (internal, device-only, not a C header). A barrier is named by its
// shared-memory address (kvf_smem_addr). A "full" barrier counts one arrival (the
// producer's, with the bytes it expects) and the bytes the copies complete; an
// "empty" barrier one arrival a consumer. kvf_mb_wait(bar, parity) returns once the
// phase of that parity has completed (a fresh barrier is in phase 0).
//
// Callers guard their use with KVF_MB_AVAILABLE (device code for sm_90 and up).
#ifndef KVF_KERNELS_MBARRIER_CUH
#define KVF_KERNELS_MBARRIER_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KVF_MB_AVAILABLE 1
#else
#define KVF_MB_AVAILABLE 0
#endif

static __device__ __forceinline__ uint32_t kvf_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

#if KVF_MB_AVAILABLE
static __device__ __forceinline__ void kvf_mb_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// After the barriers of a block are initialized, before the __syncthreads that publishes them
// (to the copy engine too).
static __device__ __forceinline__ void kvf_mb_fence_init(void) {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
static __device__ __forceinline__ void kvf_mb_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void kvf_mb_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void kvf_mb_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred p;\nKVF_MB_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra KVF_MB_WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned) by the
// copy engine, counted on bar when they land.
static __device__ __forceinline__ void kvf_bulk_load(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
// Shared-memory writes of this thread (st.shared, cp.async) ordered before later reads or
// writes of the async proxy (wgmma, bulk copies).
static __device__ __forceinline__ void kvf_fence_proxy_async(void) {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif  // KVF_MB_AVAILABLE

#endif
