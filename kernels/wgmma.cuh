// kernels/wgmma.cuh — sm_90a warpgroup tensor-core wrappers (wgmma.mma_async) for
// the attention kernels (internal, device-only, not a C header). A warpgroup is 4
// consecutive warps (128 threads); one wgmma multiplies a 64-row A (shared memory
// or registers) by a B in shared memory into f32 accumulators spread over the
// warpgroup: warp w holds rows 16 w .. 16 w + 15, and n8 block i of a thread's
// accumulators is d[4 i .. 4 i + 3] = (row g, col 8 i + 2 t), (g, 8 i + 2 t + 1),
// (g + 8, 8 i + 2 t), (g + 8, 8 i + 2 t + 1) with g = lane / 4, t = lane % 4 (the
// mma.sync m16n8 layout, one per n8 block). An A operand in registers is the
// mma.sync m16n8k16 A fragment of the warp's 16 rows.
//
// Shared-memory operands are described by 64-bit descriptors (PTX ISA, "Matrix
// Descriptor Format"); every tile here uses the 128-byte swizzle: rows of 128 bytes
// (64 bf16), 8 rows a 1024-byte atom (1024-byte aligned), the 16-byte chunk c of
// row r stored at chunk c ^ (r % 8) (kvf_wg_sw128). K-major (B of Q K^T, A = Q):
// rows are M/N, 8-row groups SBO = 1024 bytes apart, a k16 step = 32 bytes into the
// row. MN-major (B of P V: rows are keys, 64 dims a row): LBO = the stride between
// 64-dim column blocks, SBO = 1024 between groups of 8 keys.
//
// Only compiled for sm_90a (arch-specific features): callers guard with
// KVF_WG_AVAILABLE and launch only when kernels/ was built for it (KVF_CUDA_SM90A).
#ifndef KVF_KERNELS_WGMMA_CUH
#define KVF_KERNELS_WGMMA_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/mbarrier.cuh"  // kvf_fence_proxy_async

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KVF_WG_AVAILABLE 1
#else
#define KVF_WG_AVAILABLE 0
#endif

// Byte offset of 16-byte chunk c of row r in a swizzled tile of `rows` rows whose
// rows are 64-element (128-byte) column blocks: block c / 8 follows block c / 8 - 1
// at rows x 128 bytes.
static __device__ __forceinline__ unsigned kvf_wg_sw128(int rows, int r, int c) {
    return (unsigned)((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// Descriptor of a 128-byte-swizzled shared tile at shared address addr (bytes).
static __device__ __forceinline__ uint64_t kvf_wg_desc(unsigned addr, unsigned lbo, unsigned sbo) {
    return (uint64_t)((addr & 0x3ffffu) >> 4) | (uint64_t)((lbo & 0x3ffffu) >> 4) << 16 |
           (uint64_t)((sbo & 0x3ffffu) >> 4) << 32 | 1ull << 62;
}

#if KVF_WG_AVAILABLE
// Before the first wgmma that reads registers (accumulators, A) written by other instructions.
static __device__ __forceinline__ void kvf_wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void kvf_wg_commit(void) {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
static __device__ __forceinline__ void kvf_wg_wait(void) {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// x, opaque to the compiler (values made from it are not hoisted out of a loop).
static __device__ __forceinline__ unsigned kvf_wg_opaque(unsigned x) {
    asm volatile("" : "+r"(x));
    return x;
}
// Keeps the compiler from touching accumulators across an async wgmma (after its wait).
static __device__ __forceinline__ void kvf_wg_hold(float &x) { asm volatile("" : "+f"(x)::"memory"); }

#define KVF_WG_D4(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define KVF_WG_D16(d, i) KVF_WG_D4(d, i), KVF_WG_D4(d, i + 4), KVF_WG_D4(d, i + 8), KVF_WG_D4(d, i + 12)
#define KVF_WG_D32(d, i) KVF_WG_D16(d, i), KVF_WG_D16(d, i + 16)

// d (64 x 64 f32) = A B (+ d when acc): A 64 x 16 K-major, B 64 (n) x 16 K-major, both bf16 in shared memory.
static __device__ __forceinline__ void kvf_wg_m64n64k16_ss(float d[32], uint64_t da, uint64_t db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : KVF_WG_D32(d, 0)
        : "l"(da), "l"(db), "r"(acc));
}

#define KVF_WG_D64(d, i) KVF_WG_D32(d, i), KVF_WG_D32(d, i + 32)

// d (64 x 256 f32) = A B (+ d when acc): A 64 x 16 K-major, B 256 (n) x 16 K-major, both bf16 in shared memory.
static __device__ __forceinline__ void kvf_wg_m64n256k16_ss(float d[128], uint64_t da, uint64_t db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, p, 1, 1, 0, 0;\n}\n"
        : KVF_WG_D64(d, 0), KVF_WG_D64(d, 64)
        : "l"(da), "l"(db), "r"(acc));
}

// d (64 x 64 f32) += A B: A 64 x 16 bf16 in registers, B 16 (k) x 64 (n) MN-major bf16 in shared memory.
static __device__ __forceinline__ void kvf_wg_m64n64k16_rs_mn(float d[32], const uint32_t a[4], uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : KVF_WG_D32(d, 0)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// d (64 x 128 f32) += A B: A 64 x 16 bf16 in registers, B 16 (k) x 128 (n) MN-major bf16 in shared memory.
static __device__ __forceinline__ void kvf_wg_m64n128k16_rs_mn(float d[64], const uint32_t a[4], uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
        "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : KVF_WG_D32(d, 0), KVF_WG_D32(d, 32)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}
#endif

#endif
