// common/args.c — see args.h.
#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alloc.h"

int kvf_args_int(const char *flag, const char *s, int64_t min, int64_t max, int64_t *out, kvf_err_t *err) {
    if (!s || !*s) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", flag);
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s)
        return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is not an integer", flag, s);
    if (v < min || v > max)
        return kvf_err_set(err, KVF_E_INVAL, "%s: %lld is outside [%lld, %lld]", flag, v,
                           (long long)min, (long long)max);
    *out = v;
    return 0;
}

int kvf_args_double(const char *flag, const char *s, double min, double max, double *out, kvf_err_t *err) {
    if (!s || !*s) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", flag);
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v))
        return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is not a number", flag, s);
    if (v < min || v > max)
        return kvf_err_set(err, KVF_E_INVAL, "%s: %g is outside [%g, %g]", flag, v, min, max);
    *out = v;
    return 0;
}

int kvf_args_size(const char *flag, const char *s, uint64_t *out, kvf_err_t *err) {
    if (!s || !*s) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", flag);
    if (!isdigit((unsigned char)s[0]))
        return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is not a size", flag, s);
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is too large", flag, s);
    int shift = 0;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        default: return kvf_err_set(err, KVF_E_INVAL, "%s: '%s': unknown suffix (use K, M, G or T)", flag, s);
        }
        end++;
        if (strcasecmp(end, "") != 0 && strcasecmp(end, "B") != 0 && strcasecmp(end, "iB") != 0)
            return kvf_err_set(err, KVF_E_INVAL, "%s: '%s': unknown suffix (use K, M, G or T)", flag, s);
    }
    if (shift && v > (UINT64_MAX >> shift))
        return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is too large", flag, s);
    *out = (uint64_t)v << shift;
    return 0;
}

int kvf_args_ids(const char *flag, const char *s, int32_t **ids, size_t *n, kvf_err_t *err) {
    *ids = NULL;
    *n = 0;
    if (!s) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", flag);
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += (*p == ',');
    const char *p = s;
    while (isspace((unsigned char)*p)) p++;
    if (!*p) return 0;
    int32_t *v = kvf_xmalloc(cap * sizeof *v);
    size_t k = 0;
    for (;;) {
        while (isspace((unsigned char)*p)) p++;
        if (!isdigit((unsigned char)*p)) goto bad;
        errno = 0;
        char *end = NULL;
        long long x = strtoll(p, &end, 10);
        if (errno || x > INT32_MAX) goto bad;
        v[k++] = (int32_t)x;
        p = end;
        while (isspace((unsigned char)*p)) p++;
        if (!*p) break;
        if (*p != ',') goto bad;
        p++;
    }
    *ids = v;
    *n = k;
    return 0;
bad:
    free(v);
    return kvf_err_set(err, KVF_E_INVAL, "%s: '%s' is not a comma-separated list of token ids", flag, s);
}
