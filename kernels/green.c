// kernels/green.c — see green.h.
#include "kernels/green.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "kernels/check.h"

#define S_EVENTS 8

typedef struct {
    PFN_cuDeviceGet_v2000 device_get;
    PFN_cuDeviceGetDevResource_v12040 get_resource;
    PFN_cuDevSmResourceSplitByCount_v12040 split;
    PFN_cuDevResourceGenerateDesc_v12040 gen_desc;
    PFN_cuGreenCtxCreate_v12040 ctx_create;
    PFN_cuGreenCtxDestroy_v12040 ctx_destroy;
    PFN_cuGreenCtxStreamCreate_v12050 stream_create;
    PFN_cuCtxFromGreenCtx_v12040 ctx_from_green;
    PFN_cuCtxPushCurrent_v4000 push;
    PFN_cuCtxPopCurrent_v4000 pop;
    PFN_cuStreamDestroy_v4000 stream_destroy;
} s_drv_t;

struct kvf_green_s {
    s_drv_t d;
    CUgreenCtx ctx[2];
    cudaStream_t stream[2];
    int sms[2];
    cudaEvent_t ev[2][S_EVENTS];
    int n_ev[2];
};

static int s_sym(const char *name, void **fn, unsigned version) {
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion(name, fn, version, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !*fn) {
        cudaGetLastError();
        return -1;
    }
    return 0;
}

static int s_drv_load(s_drv_t *d) {
    memset(d, 0, sizeof *d);
    return s_sym("cuDeviceGet", (void **)&d->device_get, 2000) ||
           s_sym("cuDeviceGetDevResource", (void **)&d->get_resource, 12040) ||
           s_sym("cuDevSmResourceSplitByCount", (void **)&d->split, 12040) ||
           s_sym("cuDevResourceGenerateDesc", (void **)&d->gen_desc, 12040) ||
           s_sym("cuGreenCtxCreate", (void **)&d->ctx_create, 12040) ||
           s_sym("cuGreenCtxDestroy", (void **)&d->ctx_destroy, 12040) ||
           s_sym("cuGreenCtxStreamCreate", (void **)&d->stream_create, 12050) ||
           s_sym("cuCtxFromGreenCtx", (void **)&d->ctx_from_green, 12040) ||
           s_sym("cuCtxPushCurrent", (void **)&d->push, 4000) || s_sym("cuCtxPopCurrent", (void **)&d->pop, 4000) ||
           s_sym("cuStreamDestroy", (void **)&d->stream_destroy, 4000);
}

kvf_green_t *kvf_green_new(int device, int sms, kvf_err_t *err) {
    if (sms < 1) {
        kvf_err_set(err, KVF_E_INVAL, "green contexts: a share of %d SMs", sms);
        return NULL;
    }
    kvf_green_t *g = kvf_xcalloc(1, sizeof *g);
    CUdevice dev;
    CUdevResource all, part[2];
    CUdevResourceDesc desc[2];
    unsigned n_grp = 1;
    if (s_drv_load(&g->d) != 0) {
        kvf_err_set(err, KVF_E_DEVICE, "green contexts: this driver has none (CUDA 12.5 or later needed)");
        goto fail;
    }
    if (g->d.device_get(&dev, device) != CUDA_SUCCESS ||
        g->d.get_resource(dev, &all, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS) {
        kvf_err_set(err, KVF_E_DEVICE, "green contexts: device %d's SMs cannot be partitioned", device);
        goto fail;
    }
    if (g->d.split(&part[0], &n_grp, &all, &part[1], 0, (unsigned)sms) != CUDA_SUCCESS || n_grp != 1 ||
        part[1].sm.smCount < 1) {
        kvf_err_set(err, KVF_E_DEVICE, "green contexts: %u SMs do not split into %d and the rest", all.sm.smCount,
                    sms);
        goto fail;
    }
    for (int p = 0; p < 2; p++) {
        if (g->d.gen_desc(&desc[p], &part[p], 1) != CUDA_SUCCESS ||
            g->d.ctx_create(&g->ctx[p], desc[p], dev, CU_GREEN_CTX_DEFAULT_STREAM) != CUDA_SUCCESS ||
            g->d.stream_create((CUstream *)&g->stream[p], g->ctx[p], CU_STREAM_NON_BLOCKING, 0) != CUDA_SUCCESS) {
            kvf_err_set(err, KVF_E_DEVICE, "green contexts: context %d (%u SMs) could not be made", p,
                        part[p].sm.smCount);
            goto fail;
        }
        g->sms[p] = (int)part[p].sm.smCount;
    }
    return g;
fail:
    kvf_green_destroy(&g);
    return NULL;
}

void kvf_green_destroy(kvf_green_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_green_t *g = *self_p;
    for (int p = 0; p < 2; p++) {
        if (g->stream[p]) {
            cudaStreamSynchronize(g->stream[p]);
            g->d.stream_destroy((CUstream)g->stream[p]);
        }
        for (int i = 0; i < g->n_ev[p]; i++) cudaEventDestroy(g->ev[p][i]);
        if (g->ctx[p]) g->d.ctx_destroy(g->ctx[p]);
    }
    free(g);
    *self_p = NULL;
}

cudaStream_t kvf_green_stream(const kvf_green_t *g, int part) { return g->stream[part != 0]; }
int kvf_green_sms(const kvf_green_t *g, int part) { return g->sms[part != 0]; }

int kvf_green_event(kvf_green_t *g, int part, cudaEvent_t *ev, kvf_err_t *err) {
    KVF_REQUIRE(g && ev && (part == 0 || part == 1) && g->n_ev[part] < S_EVENTS, err);
    CUcontext ctx = NULL, popped = NULL;
    if (g->d.ctx_from_green(&ctx, g->ctx[part]) != CUDA_SUCCESS || g->d.push(ctx) != CUDA_SUCCESS)
        return kvf_err_set(err, KVF_E_DEVICE, "green contexts: context %d cannot be made current", part);
    const cudaError_t ce = cudaEventCreateWithFlags(ev, cudaEventDisableTiming);
    g->d.pop(&popped);
    KVF_CUDA_CHECK(ce, err);
    g->ev[part][g->n_ev[part]++] = *ev;
    return 0;
}
