// tests/cluster_harness.h — real kvfleet processes on loopback for the
// multi-process tests (test_libkvf, test_cluster): a coordinator on wildcard
// ports, CPU workers, and the CLI tools, with logs in a temporary folder.
// Children get SIGKILL when the test process dies (PR_SET_PDEATHSIG), so a
// failed assertion never leaves processes behind.
#ifndef KVF_TEST_CLUSTER_HARNESS_H
#define KVF_TEST_CLUSTER_HARNESS_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/libkvf.h"
#include "test_util.h"

#define KVH_MAX_PROCS 16
#define KVH_MAX_ARGS 48

typedef struct {
    char dir[256];                 // temporary folder for logs and files
    char front[128], back[128];    // the coordinator's bound endpoints
    pid_t coord;
    pid_t workers[KVH_MAX_PROCS];
    int n_workers;
} kvh_cluster_t;

static inline double kvh_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void kvh_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline const char *kvh_bin(const char *name, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", KVF_BIN_DIR, name);
    return buf;
}

// Skips the test when a binary is not built (another area's part of the tree).
static inline void kvh_require_bin(const char *name) {
    char p[512];
    kvh_bin(name, p, sizeof p);
    if (access(p, X_OK) != 0) cr_skip_test("%s is not built", p);
}

// Starts argv[0] (a path) with stdout to out_path (NULL: /dev/null) and stderr to
// err_path (NULL: same as stdout). Returns the pid.
static inline pid_t kvh_spawn(char *const argv[], const char *out_path, const char *err_path) {
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 1);
        int fe = err_path ? open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : fd;
        if (fe >= 0) dup2(fe, 2);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

// Waits for pid up to timeout_s; returns its exit status (128+sig when killed by
// a signal), or -1 when it is still running.
static inline int kvh_wait(pid_t pid, double timeout_s) {
    double end = kvh_now() + timeout_s;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0) return -2;
        if (kvh_now() > end) return -1;
        kvh_sleep_ms(20);
    }
}

// SIGTERM, then SIGKILL after timeout_s.
static inline void kvh_stop(pid_t pid, double timeout_s) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    if (kvh_wait(pid, timeout_s) == -1) {
        kill(pid, SIGKILL);
        kvh_wait(pid, 5);
    }
}

// Runs a tool to completion (timeout_s) with output to out_path/err_path; returns its exit status.
static inline int kvh_run(char *const argv[], const char *out_path, const char *err_path, double timeout_s) {
    pid_t pid = kvh_spawn(argv, out_path, err_path);
    int rc = kvh_wait(pid, timeout_s);
    if (rc == -1) {
        kill(pid, SIGKILL);
        kvh_wait(pid, 5);
        cr_assert_fail("%s did not finish in %.0f s", argv[0], timeout_s);
    }
    return rc;
}

static inline void kvh_tail(const char *path) {
    char *s = kvf_test_slurp(path, NULL);
    if (!s) return;
    size_t n = strlen(s);
    cr_log_warn("---- %s (last 2000 bytes)\n%s", path, n > 2000 ? s + n - 2000 : s);  // shown without --verbose
    free(s);
}

// Creates the temporary folder and starts a coordinator on wildcard loopback
// ports with the extra options given (NULL-terminated), then waits for its
// "front EP back EP" line.
static inline void kvh_start_coordinator(kvh_cluster_t *c, const char *model, ...) {
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/kvf-test-XXXXXX");
    cr_assert_not_null(mkdtemp(c->dir));
    char bin[512], out[320], err[320];
    char *argv[KVH_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)kvh_bin("kvf-coordinator", bin, sizeof bin);
    argv[n++] = "--front";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--back";
    argv[n++] = "tcp://127.0.0.1:*";
    if (model) {
        argv[n++] = "--model";
        argv[n++] = (char *)model;
    }
    va_list ap;
    va_start(ap, model);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < KVH_MAX_ARGS - 1) argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    snprintf(out, sizeof out, "%s/coordinator.out", c->dir);
    snprintf(err, sizeof err, "%s/coordinator.log", c->dir);
    c->coord = kvh_spawn(argv, out, err);
    double end = kvh_now() + 20;
    while (kvh_now() < end) {
        char *s = kvf_test_slurp(out, NULL);
        if (s && sscanf(s, "front %127s back %127s", c->front, c->back) == 2) {
            free(s);
            return;
        }
        free(s);
        if (kvh_wait(c->coord, 0) >= 0) break;
        kvh_sleep_ms(20);
    }
    kvh_tail(err);
    cr_assert_fail("kvf-coordinator did not print its endpoints");
}

// Starts a CPU worker named id with the extra options given (NULL-terminated).
static inline pid_t kvh_start_worker(kvh_cluster_t *c, const char *model, const char *id, ...) {
    cr_assert_lt(c->n_workers, KVH_MAX_PROCS);
    char bin[512], log[320];
    char *argv[KVH_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)kvh_bin("kvf-worker", bin, sizeof bin);
    argv[n++] = "--model";
    argv[n++] = (char *)model;
    argv[n++] = "--backend";
    argv[n++] = "cpu";
    argv[n++] = "--coordinator";
    argv[n++] = c->back;
    argv[n++] = "--worker-id";
    argv[n++] = (char *)id;
    va_list ap;
    va_start(ap, id);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < KVH_MAX_ARGS - 1) argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    snprintf(log, sizeof log, "%s/worker-%s.log", c->dir, id);
    pid_t pid = kvh_spawn(argv, log, NULL);
    c->workers[c->n_workers++] = pid;
    return pid;
}

// A client of this cluster (asserts).
static inline kvf_client_t *kvh_client(const kvh_cluster_t *c) {
    kvf_err_t err;
    kvf_client_t *cl = kvf_client_new(c->front, &err);
    cr_assert_not_null(cl, "%s", err.msg);
    kvf_client_set_timeout(cl, 5000);
    return cl;
}

static inline void kvh_dump_logs(const kvh_cluster_t *c) {
    char p[400];
    snprintf(p, sizeof p, "%s/coordinator.log", c->dir);
    kvh_tail(p);
}

// Waits until n workers are registered and ready.
static inline void kvh_wait_ready(kvh_cluster_t *c, uint32_t n, double timeout_s) {
    kvf_client_t *cl = kvh_client(c);
    double end = kvh_now() + timeout_s;
    uint32_t ready = 0;
    while (kvh_now() < end) {
        kvf_cluster_status_t *st = NULL;
        kvf_err_t err;
        if (kvf_client_status(cl, &st, &err) == 0) {
            ready = 0;
            for (uint32_t i = 0; i < st->n_workers; i++) ready += st->workers[i].load.state == KVF_WSTATE_READY;
            kvf_cluster_status_destroy(&st);
            if (ready >= n) break;
        }
        for (int i = 0; i < c->n_workers; i++) {
            if (c->workers[i] > 0 && kvh_wait(c->workers[i], 0) >= 0) {
                kvh_dump_logs(c);
                cr_assert_fail("worker %d exited at start (logs in %s)", i, c->dir);
            }
        }
        kvh_sleep_ms(50);
    }
    kvf_client_destroy(&cl);
    if (ready < n) kvh_dump_logs(c);
    cr_assert_geq(ready, n, "only %u of %u workers ready after %.0f s (logs in %s)", ready, n, timeout_s, c->dir);
}

// Stops everything and removes the folder unless KVF_KEEP_TEST_DIR is set.
static inline void kvh_teardown(kvh_cluster_t *c) {
    for (int i = 0; i < c->n_workers; i++) {
        if (c->workers[i] > 0) kill(c->workers[i], SIGTERM);
    }
    for (int i = 0; i < c->n_workers; i++) {
        kvh_stop(c->workers[i], 5);
        c->workers[i] = 0;
    }
    kvh_stop(c->coord, 5);
    c->coord = 0;
    if (!getenv("KVF_KEEP_TEST_DIR") && c->dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
        if (system(cmd) != 0) cr_log_warn("could not remove %s", c->dir);
    }
}

// Writes s to path (asserts).
static inline void kvh_write(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fputs(s, f);
    fclose(f);
}

#endif
