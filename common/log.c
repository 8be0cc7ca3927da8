// common/log.c — see log.h.
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static struct {
    char component[32];
    int rank;
    kvf_log_level_t level;
} s_log = {"kvf", -1, KVF_LOG_INFO};

static const char *s_level_names[] = {"error", "warn", "info", "debug"};

int kvf_log_parse_level(const char *s, kvf_log_level_t *out) {
    if (!s) return -1;
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, s_level_names[i]) == 0) {
            *out = (kvf_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void kvf_log_setup(const char *component, int rank, kvf_log_level_t level) {
    if (component) {
        snprintf(s_log.component, sizeof s_log.component, "%s", component);
    }
    s_log.rank = rank;
    s_log.level = level;
    kvf_log_level_t env;
    if (kvf_log_parse_level(getenv("KVF_LOG_LEVEL"), &env) == 0) s_log.level = env;
}

int kvf_log_enabled(kvf_log_level_t level) { return level <= s_log.level; }

void kvf_log_write(kvf_log_level_t level, const char *file, int line, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    char who[48];
    if (s_log.rank >= 0)
        snprintf(who, sizeof who, "%s[%d]", s_log.component, s_log.rank);
    else
        snprintf(who, sizeof who, "%s", s_log.component);
    // One fprintf call so that lines from several threads do not interleave.
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s %s %d %s:%d: %s\n", tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000, s_level_names[level], who, (int)getpid(), base,
            line, msg);
}
