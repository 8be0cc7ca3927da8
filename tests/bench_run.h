// tests/bench_run.h — runs the real kvf-bench binary and reads its JSON report, for
// test_bench.c (cpu) and test_bench_cuda.c (gpu). Static helpers: include it once a file.
#ifndef KVF_TESTS_BENCH_RUN_H
#define KVF_TESTS_BENCH_RUN_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

// Runs kvf-bench with args (a shell fragment) and returns its stdout (free()),
// with *rc its exit status; stderr goes to the test log. The binary is the build's, or
// $KVF_BIN_DIR's where that is set (a gpu-pack's bin folder on the GPU machine).
static inline char *s_run_bench(const char *args, int *rc) {
    char *cmd = NULL;
    const char *bin = getenv("KVF_BIN_DIR");
    cr_assert_geq(asprintf(&cmd, "%s/kvf-bench %s", bin && *bin ? bin : KVF_BIN_DIR, args), 0);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    free(cmd);
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);
    size_t k;
    while ((k = fread(out + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (n + 1 == cap) out = realloc(out, cap *= 2);
    }
    out[n] = 0;
    int st = pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

// Same, with stderr captured instead of stdout.
static inline char *s_run_bench_err(const char *args, int *rc) {
    char *a = NULL;
    cr_assert_geq(asprintf(&a, "%s 2>&1 >/dev/null", args), 0);
    char *out = s_run_bench(a, rc);
    free(a);
    return out;
}

// kvf-bench's JSON report for args (which must hold --json); the run must exit 0.
static inline json_t *s_bench_report(const char *args) {
    int rc;
    char *out = s_run_bench(args, &rc);
    cr_assert_eq(rc, 0, "kvf-bench %s exited %d:\n%s", args, rc, out);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    cr_assert(j, "not JSON (%s):\n%s", je.text, out);
    free(out);
    return j;
}

static inline double s_num(json_t *root, const char *path) {
    // "a.b.c" -> root["a"]["b"]["c"], which must exist and be a number
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *v = root;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, ".")) {
        v = json_object_get(v, tok);
        cr_assert(v, "report has no %s", path);
    }
    cr_assert(json_is_number(v), "%s is not a number", path);
    return json_number_value(v);
}

#endif
