// tests/test_util.h — small helpers shared by the test files (header-only).
#ifndef KVF_TEST_UTIL_H
#define KVF_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// The fixtures folder: $KVF_FIXTURES when set, else ../shared/fixtures beside
// the project. Returns NULL when the folder does not exist.
static inline const char *kvf_test_fixtures(void) {
    const char *env = getenv("KVF_FIXTURES");
    const char *dir = (env && *env) ? env : KVF_FIXTURES_DEFAULT;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return NULL;
    return dir;
}

// Skips the current test, naming the folder, when the fixtures are absent (a
// user's own clone). Writes "<fixtures>/<rel>" into buf otherwise.
#define KVF_FIXTURE_PATH(buf, rel)                                                         \
    do {                                                                                   \
        const char *fx_ = kvf_test_fixtures();                                             \
        if (!fx_) {                                                                        \
            const char *e_ = getenv("KVF_FIXTURES");                                       \
            cr_skip_test("fixtures folder %s is missing", (e_ && *e_) ? e_ : KVF_FIXTURES_DEFAULT); \
        }                                                                                  \
        snprintf((buf), sizeof(buf), "%s/%s", fx_, (rel));                                 \
    } while (0)

// Reads a whole file into a new NUL-terminated buffer (free()); NULL on error.
static inline char *kvf_test_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

#endif
