// common/args.h — parsing of command-line values shared by every tool.
//
// Each parser returns 0 and writes *out, or -1 (and fills err naming the flag)
// when the text is not a complete, in-range value. Nothing here exits.
#ifndef KVF_ARGS_H
#define KVF_ARGS_H

#include <stdint.h>
#include <stddef.h>

#include "error.h"

// Integer in [min, max].
int kvf_args_int(const char *flag, const char *s, int64_t min, int64_t max, int64_t *out, kvf_err_t *err);

// Finite double in [min, max].
int kvf_args_double(const char *flag, const char *s, double min, double max, double *out, kvf_err_t *err);

// A byte size: a non-negative integer with an optional K, M, G or T suffix
// (powers of 1024; "KiB"/"KB"/"K" alike), e.g. "512M", "80G".
int kvf_args_size(const char *flag, const char *s, uint64_t *out, kvf_err_t *err);

// A comma-separated list of non-negative int32 ("1,2,3"; spaces allowed around
// commas). On success *ids is a new array owned by the caller (free()), *n its
// length. An empty string gives n = 0 and ids = NULL.
int kvf_args_ids(const char *flag, const char *s, int32_t **ids, size_t *n, kvf_err_t *err);

#endif
