// tests/test_tp_nccl.c — the NCCL communicator (worker/tp.h, kvf_tp_nccl) with
// one forked process per GPU: all_reduce_sum of device buffers, all_gather,
// broadcast, min/max and barrier of host buffers; a rank killed after joining
// makes the other's collective return KVF_E_PEER_LOST within the timeout
// (ncclCommAbort) instead of hanging. Those need two GPUs and skip otherwise;
// with one GPU a one-rank group runs every collective for real, and a rank 0
// whose peer never comes gives up initialisation after the timeout.
//
// The parent never touches CUDA (a forked child of a CUDA process cannot use
// the GPU); rank 0 makes the unique id and hands it over through shared memory,
// as a worker would over its socket.
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "worker/tp.h"

static int64_t s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct {
    atomic_int id_ready;
    uint8_t id[KVF_TP_NCCL_ID_BYTES];
    int mode;                 // 0: collectives, 1: rank 1 dies after joining, 2: init without a peer
    int size;
    int timeout_ms;
    int code[2];
    int64_t ms[2];
    char msg[2][512];
} s_ctx_t;

static int s_gpu_count(void) {
    pid_t pid = fork();
    if (pid == 0) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
        _exit(n > 100 ? 100 : n);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 0;
}

static int s_report(s_ctx_t *x, int rank, const kvf_err_t *err, int64_t ms, int rc) {
    x->code[rank] = err->code;
    x->ms[rank] = ms;
    snprintf(x->msg[rank], sizeof x->msg[rank], "%s", err->msg);
    return rc;
}

static int s_child(s_ctx_t *x, int rank) {
    kvf_err_t err;
    if (rank == 0) {
        if (kvf_tp_nccl_unique_id(x->id, &err) != 0) return s_report(x, rank, &err, 0, 1);
        atomic_store(&x->id_ready, 1);
    } else {
        int64_t t0 = s_now_ms();
        while (!atomic_load(&x->id_ready) && s_now_ms() - t0 < 20000) usleep(1000);
        if (!atomic_load(&x->id_ready)) return 2;
    }
    int64_t t_init = s_now_ms();
    kvf_tp_t *tp = kvf_tp_nccl_new(x->id, rank, x->mode == 2 ? 2 : x->size, rank, x->timeout_ms, &err);
    if (x->mode == 2) return tp ? 20 : s_report(x, rank, &err, s_now_ms() - t_init, 0);
    if (!tp) return s_report(x, rank, &err, 0, 3);
    if (!kvf_tp_nccl_comm(tp) || !kvf_tp_nccl_stream(tp)) return 4;

    const size_t n = 1 << 20;
    float *host = malloc(n * sizeof(float)), *dev = NULL;
    if (cudaMalloc((void **)&dev, n * sizeof(float)) != cudaSuccess) return 5;
    for (size_t i = 0; i < n; i++) host[i] = (float)((int)(i % 1000) - 500) * 0.25f + (float)rank * 1000.0f;
    cudaMemcpy(dev, host, n * sizeof(float), cudaMemcpyHostToDevice);
    if (x->mode == 1) {
        if (kvf_tp_barrier(tp, &err) != 0) return s_report(x, rank, &err, 0, 6);
        if (rank == 1) raise(SIGKILL);
        usleep(200000);
        int64_t t0 = s_now_ms();
        int rc = kvf_tp_all_reduce_sum(tp, dev, n, &err);
        if (rc == 0) return 7;
        s_report(x, rank, &err, s_now_ms() - t0, 0);
        int rc2 = kvf_tp_barrier(tp, &err);  // refused at once afterwards
        if (rc2 == 0 || err.code != KVF_E_PEER_LOST) return 8;
        kvf_tp_destroy(&tp);
        return 0;
    }
    if (kvf_tp_all_reduce_sum(tp, dev, n, &err) != 0) return s_report(x, rank, &err, 0, 9);
    cudaMemcpy(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++) {
        float base = (float)((int)(i % 1000) - 500) * 0.25f;
        float want = x->size == 1 ? base : base * 2.0f + 1000.0f;
        if (host[i] != want) return 10;
    }
    // a second stream of the caller's
    cudaStream_t mine;
    cudaStreamCreate(&mine);
    if (kvf_tp_nccl_set_stream(tp, mine) != 0) return 11;
    if (kvf_tp_all_reduce_sum(tp, dev, 1, &err) != 0) return s_report(x, rank, &err, 0, 12);
    kvf_tp_nccl_set_stream(tp, NULL);
    cudaStreamDestroy(mine);

    size_t gb = 70000;  // more than the 64 KiB staging buffer
    const int size = x->size;
    uint8_t *send = malloc(gb), *recv = malloc((size_t)size * gb);
    for (size_t i = 0; i < gb; i++) send[i] = (uint8_t)(rank * 77 + i * 3);
    if (kvf_tp_all_gather(tp, send, recv, gb, &err) != 0) return s_report(x, rank, &err, 0, 13);
    for (int p = 0; p < size; p++)
        for (size_t i = 0; i < gb; i++)
            if (recv[(size_t)p * gb + i] != (uint8_t)(p * 77 + i * 3)) return 14;
    for (size_t i = 0; i < gb; i++) send[i] = rank == size - 1 ? (uint8_t)(i * 5 + 1) : 0;
    if (kvf_tp_broadcast(tp, send, gb, size - 1, &err) != 0) return s_report(x, rank, &err, 0, 15);
    for (size_t i = 0; i < gb; i++)
        if (send[i] != (uint8_t)(i * 5 + 1)) return 16;
    int64_t v = 10 + rank;
    if (kvf_tp_all_reduce_min_i64(tp, &v, &err) != 0 || v != 10) return 17;
    for (int k = 0; k < 100; k++)
        if (kvf_tp_barrier(tp, &err) != 0) return s_report(x, rank, &err, 0, 18);
    free(send);
    free(recv);
    free(host);
    cudaFree(dev);
    kvf_tp_destroy(&tp);
    return tp == NULL ? 0 : 19;
}

static s_ctx_t *s_run(int mode, int size, int timeout_ms, int *codes) {
    int gpus = s_gpu_count();
    if (gpus < size) cr_skip_test("this NCCL test needs %d GPUs, %d here", size, gpus);
    s_ctx_t *x = mmap(NULL, sizeof *x, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(x, MAP_FAILED);
    memset(x, 0, sizeof *x);
    x->mode = mode;
    x->timeout_ms = timeout_ms;
    x->size = size;
    pid_t pids[2];
    for (int r = 0; r < size; r++) {
        pids[r] = fork();
        cr_assert_geq(pids[r], 0, "fork: %s", strerror(errno));
        if (pids[r] == 0) _exit(s_child(x, r));
    }
    int64_t t0 = s_now_ms();
    for (int r = 0; r < size; r++) {
        int st = 0;
        pid_t w = 0;
        while ((w = waitpid(pids[r], &st, WNOHANG)) == 0 && s_now_ms() - t0 < 120000) usleep(5000);
        if (w == 0) {
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &st, 0);
            codes[r] = -1;
        } else {
            codes[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
    }
    return x;
}

Test(tp_nccl, one_rank_collectives) {
    int codes[2];
    s_ctx_t *x = s_run(0, 1, 30000, codes);
    cr_assert_eq(codes[0], 0, "exit %d: %s", codes[0], x->msg[0]);
}

Test(tp_nccl, init_without_peer_times_out) {
    int codes[2];
    s_ctx_t *x = s_run(2, 1, 2000, codes);
    cr_assert_eq(codes[0], 0, "exit %d: %s", codes[0], x->msg[0]);
    cr_assert_eq(x->code[0], KVF_E_PEER_LOST, "%s", x->msg[0]);
    cr_assert(x->ms[0] >= 1900 && x->ms[0] < 2000 + 3000, "gave up after %lld ms", (long long)x->ms[0]);
    cr_log_info("init without a peer: %lld ms: %s", (long long)x->ms[0], x->msg[0]);
}

Test(tp_nccl, two_rank_collectives) {
    int codes[2];
    s_ctx_t *x = s_run(0, 2, 30000, codes);
    for (int r = 0; r < 2; r++) cr_assert_eq(codes[r], 0, "rank %d exit %d: %s", r, codes[r], x->msg[r]);
}

Test(tp_nccl, dead_rank_times_out) {
    int codes[2];
    s_ctx_t *x = s_run(1, 2, 3000, codes);
    cr_assert_eq(codes[1], 128 + SIGKILL, "rank 1 exit %d: %s", codes[1], x->msg[1]);
    cr_assert_eq(codes[0], 0, "rank 0 exit %d: %s", codes[0], x->msg[0]);
    cr_assert_eq(x->code[0], KVF_E_PEER_LOST, "%s", x->msg[0]);
    cr_assert_lt(x->ms[0], 3000 + 2000, "rank 0 gave up after %lld ms", (long long)x->ms[0]);
    cr_log_info("rank 0 failed %lld ms after the kill: %s", (long long)x->ms[0], x->msg[0]);
}

// The unique id travels over a shm control group of the same ranks (as in
// kvf-worker): one rank per GPU, 2 where there are 2 GPUs, else 1.
static int s_over_child(const char *group, int rank, int size) {
    kvf_err_t err;
    kvf_tp_shm_opts_t so = {.timeout_ms = 20000};
    kvf_tp_t *ctl = kvf_tp_shm_new(group, rank, size, &so, &err);
    if (!ctl) return 1;
    kvf_tp_t *tp = kvf_tp_nccl_new_over(ctl, rank, 20000, &err);
    if (!tp) return 2;
    float *dev = NULL, host[4] = {1.0f + rank, 2, 3, 4};
    if (cudaMalloc((void **)&dev, sizeof host) != cudaSuccess) return 3;
    cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice);
    if (kvf_tp_all_reduce_sum(tp, dev, 4, &err) != 0) return 4;
    cudaMemcpy(host, dev, sizeof host, cudaMemcpyDeviceToHost);
    float want0 = size == 1 ? 1.0f : 3.0f;
    if (host[0] != want0 || host[1] != 2.0f * size) return 5;
    cudaFree(dev);
    kvf_tp_destroy(&tp);
    kvf_tp_destroy(&ctl);
    return 0;
}

Test(tp_nccl, id_over_a_shm_control_group) {
    int gpus = s_gpu_count();
    if (gpus < 1) cr_skip_test("no GPU");
    int size = gpus >= 2 ? 2 : 1;
    char group[64];
    snprintf(group, sizeof group, "nccl-over-%d", (int)getpid());
    pid_t pids[2];
    for (int r = 0; r < size; r++) {
        pids[r] = fork();
        cr_assert_geq(pids[r], 0);
        if (pids[r] == 0) _exit(s_over_child(group, r, size));
    }
    for (int r = 0; r < size; r++) {
        int st = 0;
        int64_t t0 = s_now_ms();
        pid_t w = 0;
        while ((w = waitpid(pids[r], &st, WNOHANG)) == 0 && s_now_ms() - t0 < 60000) usleep(5000);
        if (w == 0) {
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &st, 0);
        }
        cr_assert(w != 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%d ranks: rank %d status %d", size, r, st);
    }
}
