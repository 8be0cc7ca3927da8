// kernels/mma.cuh — sm_80+ tensor-core and async-copy wrappers shared by the
// attention kernels (internal, device-only, not a C header): mma.sync m16n8k16
// bf16 (or f16) with f32 accumulators, ldmatrix, movmatrix, cp.async. Fragment layouts are PTX's
// (ISA, "Matrix Fragments for mma.m16n8k16"); each wrapper is one instruction.
#ifndef KVF_KERNELS_MMA_CUH
#define KVF_KERNELS_MMA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

// c += a b: a the 16 x 16 row-major A fragment (4 bf16x2 words), b0 b1 the
// 16 x 8 column-major B fragment, c the 16 x 8 f32 accumulator.
static __device__ __forceinline__ void kvf_mma_bf16_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same with f16 operands (the FP8 KV cache's path: E4M3 widens to f16 exactly).
static __device__ __forceinline__ void kvf_mma_f16_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to bf16 (nearest even) in one word, lo in the low half.
static __device__ __forceinline__ uint32_t kvf_pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

// Two floats rounded to f16 (nearest even) in one word, lo in the low half.
static __device__ __forceinline__ uint32_t kvf_pack_f16x2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&v;
}

// Four 8 x 8 b16 matrices from shared memory (addr: this lane's row, shared space).
static __device__ __forceinline__ void kvf_ldmatrix_x4(uint32_t r[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// kvf_ldmatrix_x4 transposed (B fragments of a row-major K x N tile).
static __device__ __forceinline__ void kvf_ldmatrix_x4_trans(uint32_t r[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two 8 x 8 b16 matrices transposed: lanes 0-15 give the rows.
static __device__ __forceinline__ void kvf_ldmatrix_x2_trans(uint32_t &r0, uint32_t &r1, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}

// An 8 x 8 b16 matrix transposed across the warp: lane (g, tq) gives row g, columns
// 2 tq and 2 tq + 1 (one word, column 2 tq low) and gets the same of the transpose.
static __device__ __forceinline__ uint32_t kvf_movmatrix_trans(uint32_t a) {
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

// 16 bytes global -> shared, bypassing L1; both 16-byte aligned.
static __device__ __forceinline__ void kvf_cp_async16(void *smem, const void *gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

// Closes this thread's group of cp.async (an empty group counts too).
static __device__ __forceinline__ void kvf_cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of this thread's groups are in flight.
template <int N>
static __device__ __forceinline__ void kvf_cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif
