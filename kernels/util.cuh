// kernels/util.cuh — device helpers shared by the kernels (internal, not a C header).
#ifndef KVF_KERNELS_UTIL_CUH
#define KVF_KERNELS_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------- programmatic dependent launch
//
// A kernel launched by kvf_launch may start (sm_90: programmatic dependent launch) as soon as every block
// of the kernel before it on the stream has ended, before that kernel's writes are flushed and without a
// launch of its own in between. Such a kernel calls kvf_pdl_wait before it reads or writes any memory
// another kernel writes: it returns when the previous kernel has ended and its writes are visible (at
// once when there is none to wait for). The wait keeps the chain ordered: a kernel ends only after its
// own wait returned, so every earlier kernel has ended too. Measured (bench/RESULTS.md, session 16):
// decode steps of one sequence 4.5% faster. No kernel calls griddepcontrol.launch_dependents: with it at
// a block's start, the next kernel's blocks took SMs early and 128-sequence decode steps ran 5% slower.
// Built with KVF_PDL=0 (cmake -DKVF_PDL=OFF) kvf_launch launches plainly, for A/B runs.
#ifndef KVF_PDL
#define KVF_PDL 1
#endif

static __device__ __forceinline__ void kvf_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization; the caller
// checks the launch (KVF_LAUNCH_CHECK) as after <<< >>>.
template <typename... P, typename... A>
static inline cudaError_t kvf_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                     A &&...args) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t lc = {};
    lc.gridDim = grid, lc.blockDim = block, lc.dynamicSmemBytes = smem, lc.stream = stream;
    lc.attrs = at, lc.numAttrs = KVF_PDL ? 1 : 0;
    return cudaLaunchKernelEx(&lc, kernel, std::forward<A>(args)...);
}

static __device__ __forceinline__ float kvf_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float kvf_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (MAX false) or max (MAX true) over the block (blockDim.x a multiple of 32, at
// most 1024); every thread gets it.
template <bool MAX>
static __device__ __forceinline__ float kvf_block_reduce(float v, float *scratch /* (32) */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = MAX ? kvf_warp_max(v) : kvf_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : (MAX ? -INFINITY : 0.0f);
    return MAX ? kvf_warp_max(v) : kvf_warp_sum(v);
}

static __device__ __forceinline__ float kvf_block_sum(float v, float *scratch) {
    return kvf_block_reduce<false>(v, scratch);
}

static __device__ __forceinline__ float kvf_block_max(float v, float *scratch) {
    return kvf_block_reduce<true>(v, scratch);
}

static __device__ __forceinline__ float kvf_ld(const bf16 *p) { return __bfloat162float(*p); }
static __device__ __forceinline__ float kvf_ld(const float *p) { return *p; }
static __device__ __forceinline__ void kvf_st(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }
static __device__ __forceinline__ void kvf_st(float *p, float v) { *p = v; }

// A counter-based hash (splitmix64): random numbers keyed by (seed, index) alone.
static __device__ __forceinline__ uint64_t kvf_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Uniform in (0, 1): 24 random bits, never 0 or 1.
static __device__ __forceinline__ float kvf_uniform01(uint64_t seed, uint64_t i) {
    uint64_t h = kvf_mix64(seed ^ kvf_mix64(i));
    return ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

static inline unsigned kvf_cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

#endif
