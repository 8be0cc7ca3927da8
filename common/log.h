// common/log.h — one logging call for every process: level, component, rank, pid.
//
// kvf_log(KVF_LOG_INFO, "plan: %d blocks", n) formats nothing when the level is
// filtered out. Settings are process-wide (the one hidden global besides the
// interrupt flag and build info, see STYLE.md): set them once in main().
#ifndef KVF_LOG_H
#define KVF_LOG_H

#include <stdarg.h>
#include <stdlib.h>

typedef enum {
    KVF_LOG_ERROR = 0,
    KVF_LOG_WARN = 1,
    KVF_LOG_INFO = 2,
    KVF_LOG_DEBUG = 3,
} kvf_log_level_t;

// Sets the component name (copied, truncated to 31 bytes), the TP rank (-1 for
// none) and the level. The level is overridden by $KVF_LOG_LEVEL
// (error|warn|info|debug) when that is set.
void kvf_log_setup(const char *component, int rank, kvf_log_level_t level);

// Parses "error", "warn", "info", "debug"; returns 0 and sets *out, or -1.
int kvf_log_parse_level(const char *s, kvf_log_level_t *out);

// 1 when messages of this level are written.
int kvf_log_enabled(kvf_log_level_t level);

// Writes one line to stderr: "time level component[rank] pid file:line: message".
void kvf_log_write(kvf_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define kvf_log(level, ...)                                        \
    do {                                                           \
        if (kvf_log_enabled(level))                                \
            kvf_log_write((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

// An invariant that must hold; logs where it fired, then aborts. Never for bad input.
#define kvf_assert(cond)                                                            \
    do {                                                                            \
        if (!(cond)) {                                                              \
            kvf_log_write(KVF_LOG_ERROR, __FILE__, __LINE__, "assertion failed: %s", #cond); \
            abort();                                                                \
        }                                                                           \
    } while (0)

#endif
