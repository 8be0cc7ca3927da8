// kernels/check.h — one check macro for CUDA, cuBLAS(Lt) and NCCL calls.
//
// KVF_CHECK_GEN(expr, ok, strfn, err) evaluates expr once; when it is not ok it
// logs the statement, the device, the error string and file:line, fills err
// (KVF_E_DEVICE, same text) and makes the enclosing function return -1.
// Host code only: kernels never log.
#ifndef KVF_KERNELS_CHECK_H
#define KVF_KERNELS_CHECK_H

#include <cuda_runtime_api.h>
#include <cublasLt.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

// Logs and fills err for a failed call; returns -1 (so it can end a return statement).
int kvf_check_fail(kvf_err_t *err, const char *stmt, long long code, const char *what,
                   const char *file, int line);

// A precondition of a launcher that does not hold: KVF_E_INVAL, returns -1.
int kvf_check_inval(kvf_err_t *err, const char *cond, const char *func);

static inline const char *kvf_cuda_errstr(long long rc) { return cudaGetErrorString((cudaError_t)rc); }
static inline const char *kvf_cublas_errstr(long long rc) { return cublasLtGetStatusString((cublasStatus_t)rc); }

#ifdef __cplusplus
}
#endif

#define KVF_CHECK_GEN(expr, ok, strfn, err)                                               \
    do {                                                                                  \
        long long kvf_rc_ = (long long)(expr);                                            \
        if (kvf_rc_ != (long long)(ok))                                                   \
            return kvf_check_fail((err), #expr, kvf_rc_, strfn(kvf_rc_), __FILE__, __LINE__); \
    } while (0)

#define KVF_CUDA_CHECK(expr, err) KVF_CHECK_GEN(expr, cudaSuccess, kvf_cuda_errstr, err)
#define KVF_CUBLAS_CHECK(expr, err) KVF_CHECK_GEN(expr, CUBLAS_STATUS_SUCCESS, kvf_cublas_errstr, err)
#if defined(NCCL_H_)
static inline const char *kvf_nccl_errstr(long long rc) { return ncclGetErrorString((ncclResult_t)rc); }
#define KVF_NCCL_CHECK(expr, err) KVF_CHECK_GEN(expr, ncclSuccess, kvf_nccl_errstr, err)
#endif

// After a kernel launch: the launch error (bad configuration, missing image).
#define KVF_LAUNCH_CHECK(err) KVF_CUDA_CHECK(cudaGetLastError(), err)

// A launcher's precondition: bad arguments are a returned KVF_E_INVAL, never a crash.
#define KVF_REQUIRE(cond, err)                                                            \
    do {                                                                                  \
        if (!(cond)) return kvf_check_inval((err), #cond, __func__);                      \
    } while (0)

#endif
