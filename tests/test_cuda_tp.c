// tests/test_cuda_tp.c — the cuda backend over a TP group of T GPUs (one forked
// process per rank, device = rank; shm control group, NCCL communicator made
// over it as the engine does) against the cuda backend on one GPU:
//   - teacher-forced logits of every row within the bf16 tolerance (relative L2
//     2e-2, fixtures/README.md) of TP 1, and the ranks' logits agree;
//   - greedy decode of two sequences follows TP 1 (bf16 near-ties may flip late),
//     by forward()'s gathered logits, by forward_sample's picks across the
//     vocabulary shards (no gather), and with a sampled row beside it (the
//     leader asks for the device gather; the followers follow);
//   - the group takes the smallest block count (rank r asks for 24 - r blocks);
//   - a rank that dies makes the other's step fail with KVF_E_PEER_LOST at once
//     (the shm control group sees the dead process) instead of hanging.
// T = 4 on tiny-llama (2 KV heads) replicates each KV head on 2 ranks. Needs T
// GPUs; skips with fewer. The parent never touches CUDA (a forked child of a
// CUDA process cannot use the GPU).
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <execinfo.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/modelcfg.h"
#include "common/safetensors.h"
#include "common/sampling.h"
#include "test_util.h"
#include "worker/cuda_backend.h"
#include "worker/tp.h"

#define S_TF_LEN 40      // teacher-forced tokens
#define S_TF_CHUNK 13
#define S_DEC 24         // greedy decode steps per sequence
#define S_MAXB 8         // blocks per sequence (128 tokens)
#define S_CACHE 24       // rank r asks for S_CACHE - r blocks
#define S_MAXT 8

static int64_t s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

static void *s_shared(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED);
    memset(p, 0, bytes);
    return p;
}

// Slot r < size: TP rank r; slot size: TP 1.
typedef struct {
    char dir[1024];
    char group[KVF_TP_GROUP_MAX];
    kvf_modelcfg_t cfg;
    int size, vocab, die;        // die: rank 1 leaves after start-up
    int via;                     // decode: S_VIA_*
    int32_t *next;               // (S_DEC, 2) rank 0's decode tokens, for the followers
    float *tf;                   // (size + 1, S_TF_LEN, vocab)
    int32_t *ids;                // (size + 1, 2, S_DEC)
    int32_t *n_blocks;           // (size + 1)
    int32_t *code;               // (size + 1) kvf_status of a failure
    int64_t *ms;                 // (size + 1) how long the failing call took
    char (*msg)[512];            // (size + 1)
} s_ctx_t;

static void s_prompt(int32_t *ids, int n, int vocab, uint32_t seed, int bos) {
    uint32_t s = seed;
    for (int i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        ids[i] = (int32_t)((s >> 8) % (uint32_t)vocab);
    }
    if (bos >= 0) ids[0] = bos;
}

static int s_argmax(const float *row, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[b]) b = i;
    return b;
}

#define S_VIA_LOGITS 0   // forward() (the ranks' logits gathered), argmax here
#define S_VIA_SAMPLE 1   // forward_sample: rank 0 asks for greedy tokens, the followers for none
#define S_VIA_SAMPLED 2  // as S_VIA_SAMPLE, sequence 1 sampled (temperature 0.7): every step gathers

// One decode step's tokens into next.
static int s_decode(kvf_backend_t *be, const kvf_batch_t *d, int via, int step, float *logits, int32_t *next,
                    kvf_err_t *err) {
    const int vocab = be->cfg.vocab_size, rank = be->opts.tp_rank;
    if (via == S_VIA_LOGITS) {
        if (be->ops->forward(be, d, logits, err) != 0) return -1;
        next[0] = s_argmax(logits, vocab);
        next[1] = s_argmax(logits + vocab, vocab);
        return 0;
    }
    kvf_sampling_t greedy = kvf_sampling_default(), warm = kvf_sampling_default();
    greedy.temperature = 0.0f;
    warm.temperature = 0.7f;
    warm.seed = 42;
    const kvf_sampling_t *per_seq[2] = {NULL, NULL};
    if (rank == 0) per_seq[0] = &greedy, per_seq[1] = via == S_VIA_SAMPLED ? &warm : &greedy;
    int32_t steps[2] = {step, step}, out[2] = {-1, -1};
    if (be->ops->forward_sample(be, d, per_seq, steps, NULL, NULL, out, err) != 0) return -1;
    if (rank == 0) next[0] = out[0], next[1] = out[1];
    return 0;
}

// As tests/test_tp.c: one sequence teacher-forced in chunks with all logits,
// then two prefilled together and decoded greedily together, on scattered blocks
// below the group's smallest pool. Followers decode rank 0's tokens (shared,
// after a barrier on ctl) when via is not S_VIA_LOGITS.
static int s_scenario(kvf_backend_t *be, int vocab, int bos, float *tf, int32_t *ids, int via, int32_t *shared_next,
                      kvf_tp_t *ctl, kvf_err_t *err) {
    int32_t table[3][S_MAXB];
    for (int i = 0; i < S_MAXB; i++) {
        table[0][i] = 19 - i;
        table[1][i] = (i * 5 + 2) % 20;
        table[2][i] = (i * 5 + 3) % 20;
    }
    int32_t tok[S_TF_LEN];
    s_prompt(tok, S_TF_LEN, vocab, 7, bos);
    for (int p = 0; p < S_TF_LEN; p += S_TF_CHUNK) {
        int32_t nn = S_TF_LEN - p < S_TF_CHUNK ? S_TF_LEN - p : S_TF_CHUNK, np = p;
        kvf_batch_t b = {1, nn, tok + p, &nn, &np, table[0], S_MAXB, 1};
        if (be->ops->forward(be, &b, tf + (size_t)p * vocab, err) != 0) return -1;
    }
    float *logits = malloc((size_t)4 * vocab * sizeof(float));
    int rc = -1;
    int32_t pr[14], n_new[2] = {5, 9}, n_past[2] = {0, 0}, bt[2 * S_MAXB];
    s_prompt(pr, 5, vocab, 11, bos);
    s_prompt(pr + 5, 9, vocab, 12, bos);
    memcpy(bt, table[1], sizeof table[1]);
    memcpy(bt + S_MAXB, table[2], sizeof table[2]);
    kvf_batch_t b = {2, 14, pr, n_new, n_past, bt, S_MAXB, 0};
    if (be->ops->forward(be, &b, logits, err) != 0) goto done;
    int32_t next[2] = {s_argmax(logits, vocab), s_argmax(logits + vocab, vocab)}, len[2] = {5, 9};
    for (int step = 0; step < S_DEC; step++) {
        ids[step] = next[0];
        ids[S_DEC + step] = next[1];
        int32_t one[2] = {1, 1};
        kvf_batch_t d = {2, 2, next, one, len, bt, S_MAXB, 0};
        if (s_decode(be, &d, via, step, logits, next, err) != 0) goto done;
        len[0]++, len[1]++;
        if (via != S_VIA_LOGITS && ctl) {  // followers take rank 0's tokens, as from the leader's step plan
            if (be->opts.tp_rank == 0) memcpy(shared_next + 2 * step, next, sizeof next);
            if (kvf_tp_barrier(ctl, err) != 0) goto done;
            memcpy(next, shared_next + 2 * step, sizeof next);
        }
        if (next[0] < 0 || next[0] >= vocab || next[1] < 0 || next[1] >= vocab) {
            kvf_err_set(err, KVF_E_INTERNAL, "decode step %d: tokens %d, %d outside the vocabulary", step, next[0],
                        next[1]);
            goto done;
        }
    }
    rc = 0;
done:
    free(logits);
    return rc;
}

static kvf_backend_opts_t s_opts(int rank, int size, kvf_tp_t *tp) {
    kvf_backend_opts_t o;
    memset(&o, 0, sizeof o);
    o.block_size = 16;
    o.max_batch_size = 4;
    o.max_step_tokens = 64;
    o.max_logit_rows = 64;
    o.max_blocks_per_seq = S_MAXB;
    o.tp_rank = rank;
    o.tp_size = size;
    o.device = rank;
    o.cache_max_entry_count = S_CACHE - rank;
    o.tp = tp;
    return o;
}

static int s_fail(s_ctx_t *x, int slot, const kvf_err_t *err, int64_t ms, int rc) {
    x->code[slot] = err->code;
    x->ms[slot] = ms;
    snprintf(x->msg[slot], sizeof x->msg[0], "%s", err->msg);
    return rc;
}

// SIGUSR1 (from s_wait_all, before it kills a child that overran): the main
// thread's stack to stderr, so that a hang says where it is.
static void s_on_usr1(int sig) {
    (void)sig;
    static const char head[] = "CUDA_TP stack of a child that overran:\n";
    if (write(2, head, sizeof head - 1) < 0) return;
    void *f[64];
    backtrace_symbols_fd(f, backtrace(f, 64), 2);
}

// One process: TP 1 on device 0 (rank < 0), or rank `rank` of the group.
static int s_child(s_ctx_t *x, int rank) {
    const int slot = rank < 0 ? x->size : rank;
    // SIGUSR1 blocked while CUDA and NCCL make their threads (they inherit the mask), then
    // unblocked here: it reaches this thread. backtrace once now (its first call loads libgcc).
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    void *f0[4];
    backtrace(f0, 4);
    signal(SIGUSR1, s_on_usr1);
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_dir(x->dir, &err);
    if (!st) return s_fail(x, slot, &err, 0, 1);
    kvf_tp_t *ctl = NULL, *nccl = NULL;
    if (rank >= 0) {
        kvf_tp_shm_opts_t so = {.timeout_ms = 20000};
        ctl = kvf_tp_shm_new(x->group, rank, x->size, &so, &err);
        if (!ctl) return s_fail(x, slot, &err, 0, 2);
        nccl = kvf_tp_nccl_new_over(ctl, rank, x->die ? 3000 : 20000, &err);
        if (!nccl) return s_fail(x, slot, &err, 0, 3);
    }
    kvf_backend_opts_t o = rank < 0 ? s_opts(0, 1, NULL) : s_opts(rank, x->size, nccl);
    kvf_backend_t *be = kvf_cuda_backend_new(&x->cfg, st, &o, &err);
    kvf_safetensors_destroy(&st);
    if (!be) return s_fail(x, slot, &err, 0, 4);
    x->n_blocks[slot] = be->n_blocks;
    if (x->die && rank == 1) _exit(0);  // gone without a word: the peer's next collective must not hang
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    int64_t t0 = s_now_ms();
    int rc = s_scenario(be, x->vocab, x->cfg.bos_id, x->tf + (size_t)slot * S_TF_LEN * x->vocab,
                        x->ids + (size_t)slot * 2 * S_DEC, rank < 0 ? S_VIA_LOGITS : x->via, x->next, ctl, &err);
    if (rc != 0) s_fail(x, slot, &err, s_now_ms() - t0, 0);
    be->ops->destroy(&be);
    kvf_tp_destroy(&nccl);
    kvf_tp_destroy(&ctl);
    return rc == 0 ? 0 : 5;
}

// Waits for pids[0..n) within limit_ms, then kills what is left; exit codes into codes.
static void s_wait_all(pid_t *pids, int n, int64_t limit_ms, int *codes) {
    int64_t t0 = s_now_ms();
    int left = n;
    for (int i = 0; i < n; i++) codes[i] = -1;
    while (left > 0) {
        for (int i = 0; i < n; i++) {
            if (codes[i] != -1) continue;
            int st;
            if (waitpid(pids[i], &st, WNOHANG) == pids[i]) {
                codes[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                left--;
            }
        }
        if (left > 0 && s_now_ms() - t0 > limit_ms) {
            for (int i = 0; i < n; i++)
                if (codes[i] == -1) kill(pids[i], SIGUSR1);  // its stack first (s_on_usr1)
            usleep(500000);
            for (int i = 0; i < n; i++)
                if (codes[i] == -1) kill(pids[i], SIGKILL);
        }
        usleep(10000);
    }
}

static void s_setup(s_ctx_t *x, const char *model, int size, int die) {
    int n_gpu = s_gpu_count();
    if (n_gpu < size) cr_skip_test("needs %d GPUs, found %d", size, n_gpu);
    memset(x, 0, sizeof *x);
    KVF_FIXTURE_PATH(x->dir, model);
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_load(x->dir, &x->cfg, &err), 0, "%s", err.msg);
    x->size = size;
    x->vocab = x->cfg.vocab_size;
    x->die = die;
    snprintf(x->group, sizeof x->group, "cudatp-%d-%lld", (int)getpid(), (long long)s_now_ms());
    x->tf = s_shared((size_t)(size + 1) * S_TF_LEN * x->vocab * sizeof(float));
    x->ids = s_shared((size_t)(size + 1) * 2 * S_DEC * sizeof(int32_t));
    x->n_blocks = s_shared((size_t)(size + 1) * sizeof(int32_t));
    x->code = s_shared((size_t)(size + 1) * sizeof(int32_t));
    x->ms = s_shared((size_t)(size + 1) * sizeof(int64_t));
    x->msg = s_shared((size_t)(size + 1) * sizeof x->msg[0]);
    x->next = s_shared((size_t)2 * S_DEC * sizeof(int32_t));
    setenv("NCCL_NVLS_ENABLE", "0", 1);
}

static void s_run_group(s_ctx_t *x, int *codes) {
    pid_t pids[S_MAXT];
    for (int r = 0; r < x->size; r++) {
        pids[r] = fork();
        cr_assert_geq(pids[r], 0);
        if (pids[r] == 0) _exit(s_child(x, r));
    }
    s_wait_all(pids, x->size, x->die ? 60000 : 240000, codes);  // a dead rank's peer must give up in seconds
}

static double s_rel_l2(const float *a, const float *ref, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void s_matches_tp1(const char *model, int size, int via) {
    s_ctx_t x;
    s_setup(&x, model, size, 0);
    x.via = via;
    // TP 1 first, alone on device 0
    pid_t p1 = fork();
    cr_assert_geq(p1, 0);
    if (p1 == 0) _exit(s_child(&x, -1));
    int c1;
    s_wait_all(&p1, 1, 240000, &c1);
    cr_assert_eq(c1, 0, "TP 1 exit %d: %s", c1, x.msg[size]);
    cr_assert_eq(x.n_blocks[size], S_CACHE);

    int codes[S_MAXT];
    s_run_group(&x, codes);
    for (int r = 0; r < size; r++) cr_assert_eq(codes[r], 0, "rank %d exit %d: %s", r, codes[r], x.msg[r]);
    const float *ref = x.tf + (size_t)size * S_TF_LEN * x.vocab;
    const int32_t *ref_ids = x.ids + (size_t)size * 2 * S_DEC;
    for (int r = 0; r < size; r++) {
        cr_assert_eq(x.n_blocks[r], S_CACHE - (size - 1), "rank %d holds %d blocks, the group's minimum is %d", r,
                     x.n_blocks[r], S_CACHE - (size - 1));
        const float *tf = x.tf + (size_t)r * S_TF_LEN * x.vocab;
        double worst = 0, worst_rank = 0;
        for (int t = 0; t < S_TF_LEN; t++) {
            double e = s_rel_l2(tf + (size_t)t * x.vocab, ref + (size_t)t * x.vocab, x.vocab);
            cr_expect(e < 2e-2, "%s TP %d rank %d row %d: rel L2 vs TP 1 %.3e", model, size, r, t, e);
            if (e > worst) worst = e;
            double er = s_rel_l2(tf + (size_t)t * x.vocab, x.tf + (size_t)t * x.vocab, x.vocab);  // vs rank 0
            cr_expect(er < 1e-3, "%s TP %d rank %d row %d: rel L2 vs rank 0 %.3e", model, size, r, t, er);
            if (er > worst_rank) worst_rank = er;
        }
        const int32_t *ids = x.ids + (size_t)r * 2 * S_DEC;
        for (int s = 0; s < (via == S_VIA_SAMPLED ? 1 : 2); s++) {  // a sampled sequence 1 goes its own way
            int same = 0;
            while (same < S_DEC && ids[s * S_DEC + same] == ref_ids[s * S_DEC + same]) same++;
            cr_expect(same >= 8, "%s TP %d rank %d sequence %d: greedy ids leave TP 1's after %d steps", model, size,
                      r, s, same);
            cr_expect(memcmp(ids + s * S_DEC, x.ids + s * S_DEC, S_DEC * sizeof(int32_t)) == 0,
                      "%s TP %d rank %d sequence %d: greedy ids differ from rank 0's", model, size, r, s);
            fprintf(stderr, "CUDA_TP %s T %d via %d rank %d seq %d: %d of %d greedy ids as TP 1\n", model, size, via,
                    r, s, same, S_DEC);
        }
        fprintf(stderr, "CUDA_TP %s T %d rank %d: teacher-forced worst rel L2 vs TP 1 %.3e, vs rank 0 %.3e\n", model,
                size, r, worst, worst_rank);
    }
}

Test(cuda_tp, tiny_llama_tp2_matches_tp1, .timeout = 600) { s_matches_tp1("tiny-llama", 2, S_VIA_LOGITS); }
Test(cuda_tp, stories260K_tp2_matches_tp1, .timeout = 600) { s_matches_tp1("stories260K", 2, S_VIA_LOGITS); }
Test(cuda_tp, tiny_llama_tp4_replicated_kv_matches_tp1, .timeout = 600) {
    s_matches_tp1("tiny-llama", 4, S_VIA_LOGITS);
}
Test(cuda_tp, stories260K_tp4_matches_tp1, .timeout = 600) { s_matches_tp1("stories260K", 4, S_VIA_LOGITS); }
// the vocab-parallel lm_head: greedy picks across the shards, and a sampled row beside a greedy one
Test(cuda_tp, tiny_llama_tp2_greedy_across_shards, .timeout = 600) { s_matches_tp1("tiny-llama", 2, S_VIA_SAMPLE); }
Test(cuda_tp, stories260K_tp2_sampled_row_gathers, .timeout = 600) { s_matches_tp1("stories260K", 2, S_VIA_SAMPLED); }
Test(cuda_tp, tiny_llama_tp4_greedy_across_shards, .timeout = 600) { s_matches_tp1("tiny-llama", 4, S_VIA_SAMPLE); }

Test(cuda_tp, dead_rank_fails_the_step_not_hangs, .timeout = 300) {
    s_ctx_t x;
    s_setup(&x, "tiny-llama", 2, 1);
    int codes[S_MAXT];
    s_run_group(&x, codes);
    cr_assert_eq(codes[1], 0, "rank 1 exit %d: %s", codes[1], x.msg[1]);
    cr_assert_eq(codes[0], 5, "rank 0 exit %d (5: its step failed): %s", codes[0], x.msg[0]);
    cr_assert_eq(x.code[0], KVF_E_PEER_LOST, "%s", x.msg[0]);
    // the shm control group sees the dead process (kvf_tp_check), long before the 3000 ms timeout
    cr_assert_lt(x.ms[0], 2000, "rank 0 gave up after %lld ms: %s", (long long)x.ms[0], x.msg[0]);
    fprintf(stderr, "CUDA_TP dead rank: rank 0 failed after %lld ms: %s\n", (long long)x.ms[0], x.msg[0]);
}
