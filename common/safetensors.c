// common/safetensors.c — see safetensors.h.
//
// A file is: u64 little-endian header length N, N bytes of JSON, then the data
// area. Nothing in the header is trusted until it has been checked against the
// file size: the length, every tensor's dtype, shape and data_offsets, and that
// no two tensors share bytes.
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"

// Real headers are a few hundred KB at most (a 70B model's shard lists a few
// hundred tensors); anything far past that is a corrupt or hostile file.
#define S_MAX_HEADER (100u * 1024u * 1024u)

typedef struct {
    char *path;          // owned
    void *map;           // mmapped file, map_size bytes (NULL when the file is empty)
    size_t map_size;
} s_file_t;

struct kvf_safetensors_s {
    char *origin;        // the directory or file the set was opened from (for messages)
    s_file_t *files;
    size_t n_files, cap_files;
    kvf_tensor_t *tensors;   // sorted by name once the set is complete
    size_t n_tensors, cap_tensors;
};

// ---------------------------------------------------------------- helpers

static size_t s_dtype_size(kvf_dtype dt) {
    return dt == KVF_DT_F32 ? 4 : 2;
}

static const char *s_dtype_name(kvf_dtype dt) {
    switch (dt) {
    case KVF_DT_F32: return "F32";
    case KVF_DT_F16: return "F16";
    case KVF_DT_BF16: return "BF16";
    }
    return "?";
}

static uint64_t s_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int s_cmp_name(const void *a, const void *b) {
    const kvf_tensor_t *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static kvf_safetensors_t *s_set_new(const char *origin) {
    kvf_safetensors_t *st = kvf_xcalloc(1, sizeof *st);
    st->origin = kvf_xstrdup(origin);
    return st;
}

static kvf_tensor_t *s_push_tensor(kvf_safetensors_t *st) {
    if (st->n_tensors == st->cap_tensors) {
        st->cap_tensors = st->cap_tensors ? st->cap_tensors * 2 : 64;
        st->tensors = kvf_xrealloc(st->tensors, st->cap_tensors * sizeof *st->tensors);
    }
    kvf_tensor_t *t = &st->tensors[st->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

// Formats a shape as "[a, b, c]" into buf.
static const char *s_shape_str(char *buf, size_t cap, int n_dims, const int64_t *shape) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, cap - off, "[");
    for (int i = 0; i < n_dims && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
    return buf;
}

// ---------------------------------------------------------------- one file

typedef struct {
    uint64_t begin, end;
    const char *name;
} s_span_t;

static int s_cmp_span(const void *a, const void *b) {
    const s_span_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

// Parses one tensor entry of a header. data points to the data area of
// data_size bytes. Appends to st on success.
static int s_parse_entry(kvf_safetensors_t *st, const char *path, const char *name, json_t *v,
                         const unsigned char *data, uint64_t data_size, const char *file_ref,
                         s_span_t *span, kvf_err_t *err) {
    if (!json_is_object(v))
        return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": entry is not an object", path, name);
    json_t *jdt = json_object_get(v, "dtype");
    json_t *jshape = json_object_get(v, "shape");
    json_t *joff = json_object_get(v, "data_offsets");
    if (!json_is_string(jdt))
        return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": missing or non-string \"dtype\"", path, name);
    const char *dts = json_string_value(jdt);
    kvf_dtype dt;
    if (strcmp(dts, "F32") == 0) dt = KVF_DT_F32;
    else if (strcmp(dts, "F16") == 0) dt = KVF_DT_F16;
    else if (strcmp(dts, "BF16") == 0) dt = KVF_DT_BF16;
    else
        return kvf_err_set(err, KVF_E_UNSUPPORTED,
                           "%s: tensor \"%s\": dtype \"%.32s\" is not supported (F32, F16, BF16 are)", path, name, dts);
    if (!json_is_array(jshape))
        return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": missing or non-array \"shape\"", path, name);
    size_t nd = json_array_size(jshape);
    if (nd > KVF_ST_MAX_DIMS)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "%s: tensor \"%s\": %zu dimensions (at most %d supported)", path,
                           name, nd, KVF_ST_MAX_DIMS);
    int64_t shape[KVF_ST_MAX_DIMS] = {0};
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(jshape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": shape[%zu] is not a non-negative integer", path,
                               name, i);
        shape[i] = (int64_t)json_integer_value(d);
        if (__builtin_mul_overflow(numel, (uint64_t)shape[i], &numel))
            return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": shape overflows", path, name);
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)s_dtype_size(dt), &nbytes))
        return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": shape overflows", path, name);
    if (!json_is_array(joff) || json_array_size(joff) != 2 || !json_is_integer(json_array_get(joff, 0)) ||
        !json_is_integer(json_array_get(joff, 1)))
        return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": \"data_offsets\" is not [begin, end]", path, name);
    json_int_t b = json_integer_value(json_array_get(joff, 0));
    json_int_t e = json_integer_value(json_array_get(joff, 1));
    if (b < 0 || e < b)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\": bad data_offsets [%lld, %lld]", path, name,
                           (long long)b, (long long)e);
    if ((uint64_t)e > data_size)
        return kvf_err_set(err, KVF_E_FORMAT,
                           "%s: tensor \"%s\": data_offsets [%lld, %lld] past the end of the data (%llu bytes)", path,
                           name, (long long)b, (long long)e, (unsigned long long)data_size);
    if ((uint64_t)(e - b) != nbytes)
        return kvf_err_set(err, KVF_E_FORMAT,
                           "%s: tensor \"%s\": data_offsets span %lld bytes but %s shape needs %llu", path, name,
                           (long long)(e - b), dts, (unsigned long long)nbytes);
    kvf_tensor_t *t = s_push_tensor(st);
    t->name = kvf_xstrdup(name);
    t->dtype = dt;
    t->n_dims = (int32_t)nd;
    memcpy(t->shape, shape, sizeof shape);
    t->data = data + b;
    t->n_bytes = (size_t)nbytes;
    t->file = file_ref;
    span->begin = (uint64_t)b;
    span->end = (uint64_t)e;
    span->name = t->name;
    return 0;
}

// Maps path and appends its tensors to st. Returns 0, or -1 with err set.
static int s_load_file(kvf_safetensors_t *st, const char *path, kvf_err_t *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kvf_err_set(err, KVF_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return kvf_err_set(err, KVF_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return kvf_err_set(err, KVF_E_IO, "%s: not a regular file", path);
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        close(fd);
        return kvf_err_set(err, KVF_E_FORMAT, "%s: truncated: %llu bytes, too short for the 8-byte header length",
                           path, (unsigned long long)fsize);
    }
    void *map = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) return kvf_err_set(err, KVF_E_IO, "%s: mmap failed: %s", path, strerror(map_errno));

    // Register the mapping first so that the set's destroy unmaps it on any error.
    if (st->n_files == st->cap_files) {
        st->cap_files = st->cap_files ? st->cap_files * 2 : 4;
        st->files = kvf_xrealloc(st->files, st->cap_files * sizeof *st->files);
    }
    s_file_t *f = &st->files[st->n_files++];
    f->path = kvf_xstrdup(path);
    f->map = map;
    f->map_size = (size_t)fsize;
    const char *file_ref = f->path;

    const unsigned char *base = map;
    uint64_t hlen = s_le64(base);
    if (hlen > S_MAX_HEADER)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: header length %llu is larger than the %u-byte limit", path,
                           (unsigned long long)hlen, S_MAX_HEADER);
    if (hlen > fsize - 8)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: truncated: header length %llu but only %llu bytes follow", path,
                           (unsigned long long)hlen, (unsigned long long)(fsize - 8));
    json_error_t jerr;
    json_t *root = json_loadb((const char *)base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return kvf_err_set(err, KVF_E_FORMAT, "%s: header is not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return kvf_err_set(err, KVF_E_FORMAT, "%s: header is not a JSON object", path);
    }
    const unsigned char *data = base + 8 + hlen;
    uint64_t data_size = fsize - 8 - hlen;
    size_t n_entries = json_object_size(root);
    s_span_t *spans = kvf_xcalloc(n_entries ? n_entries : 1, sizeof *spans);
    size_t n_spans = 0;
    int rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        if (s_parse_entry(st, path, key, v, data, data_size, file_ref, &spans[n_spans], err) != 0) {
            rc = -1;
            break;
        }
        n_spans++;
    }
    if (rc == 0) {
        qsort(spans, n_spans, sizeof *spans, s_cmp_span);
        for (size_t i = 1; i < n_spans; i++) {
            if (spans[i].begin < spans[i - 1].end) {
                rc = kvf_err_set(err, KVF_E_FORMAT, "%s: tensors \"%s\" [%llu, %llu) and \"%s\" [%llu, %llu) overlap",
                                 path, spans[i - 1].name, (unsigned long long)spans[i - 1].begin,
                                 (unsigned long long)spans[i - 1].end, spans[i].name,
                                 (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end);
                break;
            }
        }
    }
    free(spans);
    json_decref(root);
    return rc;
}

// Sorts the tensors by name and rejects a name held twice (across shards).
static int s_finish(kvf_safetensors_t *st, kvf_err_t *err) {
    if (st->n_tensors < 2) return 0;  // qsort on a NULL array is undefined
    qsort(st->tensors, st->n_tensors, sizeof *st->tensors, s_cmp_name);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, st->tensors[i - 1].name) == 0)
            return kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\" is stored twice (%s and %s)", st->origin,
                               st->tensors[i].name, st->tensors[i - 1].file, st->tensors[i].file);
    return 0;
}

// ---------------------------------------------------------------- public: open

kvf_safetensors_t *kvf_safetensors_open_file(const char *path, kvf_err_t *err) {
    kvf_err_clear(err);
    kvf_safetensors_t *st = s_set_new(path);
    if (s_load_file(st, path, err) != 0 || s_finish(st, err) != 0) {
        kvf_safetensors_destroy(&st);
        return NULL;
    }
    return st;
}

static int s_file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

// A shard name from an index must stay inside the model directory.
static int s_shard_name_ok(const char *s) {
    if (!*s || s[0] == '/') return 0;
    if (strcmp(s, "..") == 0 || strncmp(s, "../", 3) == 0 || strstr(s, "/../") != NULL) return 0;
    size_t n = strlen(s);
    if (n >= 3 && strcmp(s + n - 3, "/..") == 0) return 0;
    return 1;
}

static kvf_safetensors_t *s_open_index(const char *dir, const char *index_path, kvf_err_t *err) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        kvf_err_set(err, KVF_E_FORMAT, "%s: not valid JSON (line %d: %s)", index_path, jerr.line, jerr.text);
        return NULL;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        json_decref(root);
        kvf_err_set(err, KVF_E_FORMAT, "%s: missing or empty \"weight_map\" object", index_path);
        return NULL;
    }
    kvf_safetensors_t *st = s_set_new(dir);
    // Distinct shard names, in first-seen order: each file is mapped once.
    size_t n_shards = 0, cap = json_object_size(wm);
    const char **shards = kvf_xcalloc(cap, sizeof *shards);
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v) || !s_shard_name_ok(json_string_value(v))) {
            rc = kvf_err_set(err, KVF_E_FORMAT, "%s: weight_map[\"%s\"] is not a file name inside the model directory",
                             index_path, key);
            break;
        }
        const char *sh = json_string_value(v);
        size_t j = 0;
        while (j < n_shards && strcmp(shards[j], sh) != 0) j++;
        if (j == n_shards) shards[n_shards++] = sh;
    }
    char path[PATH_MAX];
    for (size_t j = 0; rc == 0 && j < n_shards; j++) {
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, shards[j]) >= sizeof path) {
            rc = kvf_err_set(err, KVF_E_INVAL, "%s/%s: path too long", dir, shards[j]);
            break;
        }
        if (!s_file_exists(path)) {
            rc = kvf_err_set(err, KVF_E_IO, "%s: shard %s listed in the index is missing", index_path, path);
            break;
        }
        rc = s_load_file(st, path, err);
    }
    if (rc == 0) rc = s_finish(st, err);
    if (rc == 0) {
        json_object_foreach(wm, key, v) {
            const kvf_tensor_t *t = kvf_safetensors_find(st, key);
            snprintf(path, sizeof path, "%s/%s", dir, json_string_value(v));
            if (!t || strcmp(t->file, path) != 0) {
                rc = kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\" is listed in the index but missing from shard %s/%s",
                                 index_path, key, dir, json_string_value(v));
                break;
            }
        }
    }
    free(shards);
    json_decref(root);
    if (rc != 0) kvf_safetensors_destroy(&st);
    return st;
}

kvf_safetensors_t *kvf_safetensors_open_dir(const char *dir, kvf_err_t *err) {
    kvf_err_clear(err);
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/model.safetensors", dir) >= sizeof path) {
        kvf_err_set(err, KVF_E_INVAL, "%s: path too long", dir);
        return NULL;
    }
    if (s_file_exists(path)) {
        kvf_safetensors_t *st = kvf_safetensors_open_file(path, err);
        if (st) {
            free(st->origin);
            st->origin = kvf_xstrdup(dir);
        }
        return st;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (s_file_exists(path)) return s_open_index(dir, path, err);
    kvf_err_set(err, KVF_E_IO, "%s: no model.safetensors and no model.safetensors.index.json", dir);
    return NULL;
}

void kvf_safetensors_destroy(kvf_safetensors_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_safetensors_t *st = *self_p;
    for (size_t i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    for (size_t i = 0; i < st->n_files; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].map_size);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->origin);
    free(st);
    *self_p = NULL;
}

// ---------------------------------------------------------------- public: lookup

const kvf_tensor_t *kvf_safetensors_find(const kvf_safetensors_t *st, const char *name) {
    if (!st || !name || st->n_tensors == 0) return NULL;
    kvf_tensor_t key = {.name = name};
    return bsearch(&key, st->tensors, st->n_tensors, sizeof *st->tensors, s_cmp_name);
}

size_t kvf_safetensors_count(const kvf_safetensors_t *st) {
    return st ? st->n_tensors : 0;
}

const kvf_tensor_t *kvf_safetensors_at(const kvf_safetensors_t *st, size_t i) {
    return (st && i < st->n_tensors) ? &st->tensors[i] : NULL;
}

const kvf_tensor_t *kvf_safetensors_expect(const kvf_safetensors_t *st, const char *name, int n_dims,
                                           const int64_t *shape, kvf_err_t *err) {
    const kvf_tensor_t *t = kvf_safetensors_find(st, name);
    if (!t) {
        kvf_err_set(err, KVF_E_NOT_FOUND, "%s: tensor \"%s\" not found", st ? st->origin : "(null)", name);
        return NULL;
    }
    int same = t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[96], b[96];
        int nd = n_dims < 0 ? 0 : (n_dims > KVF_ST_MAX_DIMS ? KVF_ST_MAX_DIMS : n_dims);
        kvf_err_set(err, KVF_E_FORMAT, "%s: tensor \"%s\" has shape %s %s, expected %s", t->file, name,
                    s_shape_str(a, sizeof a, t->n_dims, t->shape), s_dtype_name(t->dtype),
                    s_shape_str(b, sizeof b, nd, shape));
        return NULL;
    }
    return t;
}

// ---------------------------------------------------------------- conversions

static uint32_t s_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float s_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float kvf_bf16_to_f32(uint16_t h) {
    return s_bits_f32((uint32_t)h << 16);
}

uint16_t kvf_f32_to_bf16(float f) {
    uint32_t u = s_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // NaN stays (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kvf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {
        // Subnormal: value = man * 2^-24; normalise into a float32.
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    return s_bits_f32(u);
}

uint16_t kvf_f32_to_f16(float f) {
    uint32_t u = s_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x1ffu);  // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;   // rounds to >= 65520: inf
    if (a >= 0x38800000u) {                         // normal f16 (>= 2^-14)
        uint32_t r = a - (112u << 23);              // rebias exponent
        r += 0xfffu + ((r >> 13) & 1u);             // round to nearest even on the 13 dropped bits
        return sign | (uint16_t)(r >> 13);
    }
    if (a < 0x33000000u) return sign;               // below half the smallest subnormal (2^-25): zero
    // Subnormal f16: value = m * 2^-24 with m = round(x * 2^24).
    uint32_t exp = a >> 23;                         // 102..112
    uint32_t man = (a & 0x7fffffu) | 0x800000u;     // 24-bit significand, x = man * 2^(exp-150)
    uint32_t shift = 126u - exp;                    // m = man >> shift (shift in 14..24)
    uint32_t m = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1u))) m++;
    return sign | (uint16_t)m;                      // m == 0x400 carries into the smallest normal
}

void kvf_tensor_to_f32(const kvf_tensor_t *t, float *out) {
    size_t n = t->n_bytes / s_dtype_size(t->dtype);
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case KVF_DT_F32:
        memcpy(out, p, n * 4);
        break;
    case KVF_DT_F16:
        for (size_t i = 0; i < n; i++) out[i] = kvf_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
    case KVF_DT_BF16:
        for (size_t i = 0; i < n; i++) out[i] = kvf_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
    }
}

// ---------------------------------------------------------------- writing

static int s_write_all(FILE *f, const void *p, size_t n) {
    return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1;
}

int kvf_safetensors_write(const char *path, int n, const char *const *names, const kvf_dtype *dtypes,
                          const int *n_dims, const int64_t (*shapes)[KVF_ST_MAX_DIMS],
                          const void *const *data, kvf_err_t *err) {
    kvf_err_clear(err);
    if (n < 0) return kvf_err_set(err, KVF_E_INVAL, "%s: negative tensor count %d", path, n);
    json_t *root = json_object();
    json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
    size_t *sizes = kvf_xcalloc(n ? (size_t)n : 1, sizeof *sizes);
    uint64_t off = 0;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!names[i] || !*names[i] || strcmp(names[i], "__metadata__") == 0) {
            rc = kvf_err_set(err, KVF_E_INVAL, "%s: tensor %d has no usable name", path, i);
            break;
        }
        if (json_object_get(root, names[i])) {
            rc = kvf_err_set(err, KVF_E_INVAL, "%s: tensor \"%s\" given twice", path, names[i]);
            break;
        }
        if (dtypes[i] != KVF_DT_F32 && dtypes[i] != KVF_DT_F16 && dtypes[i] != KVF_DT_BF16) {
            rc = kvf_err_set(err, KVF_E_INVAL, "%s: tensor \"%s\": bad dtype %d", path, names[i], (int)dtypes[i]);
            break;
        }
        if (n_dims[i] < 0 || n_dims[i] > KVF_ST_MAX_DIMS) {
            rc = kvf_err_set(err, KVF_E_INVAL, "%s: tensor \"%s\": %d dimensions", path, names[i], n_dims[i]);
            break;
        }
        uint64_t numel = 1;
        json_t *jshape = json_array();
        for (int d = 0; d < n_dims[i]; d++) {
            if (shapes[i][d] < 0 || __builtin_mul_overflow(numel, (uint64_t)shapes[i][d], &numel)) rc = -1;
            json_array_append_new(jshape, json_integer((json_int_t)shapes[i][d]));
        }
        uint64_t nb;
        if (rc != 0 || __builtin_mul_overflow(numel, (uint64_t)s_dtype_size(dtypes[i]), &nb) || nb > SIZE_MAX ||
            (nb > 0 && !data[i])) {
            json_decref(jshape);
            rc = kvf_err_set(err, KVF_E_INVAL, "%s: tensor \"%s\": bad shape or no data", path, names[i]);
            break;
        }
        sizes[i] = (size_t)nb;
        json_object_set_new(root, names[i],
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", s_dtype_name(dtypes[i]), "shape", jshape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
        off += nb;
    }
    char *header = rc == 0 ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (rc != 0 || !header) {
        free(sizes);
        free(header);
        return rc != 0 ? rc : kvf_err_set(err, KVF_E_NOMEM, "%s: cannot format the header", path);
    }
    // Pad the header with spaces so the data area starts 8-byte aligned.
    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) & ~(size_t)7;
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    // Written to a temporary name beside the target, then renamed: a reader
    // never sees a half-written file, and a crash leaves the old file intact.
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp) {
        free(sizes);
        free(header);
        return kvf_err_set(err, KVF_E_INVAL, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int e = errno;
        free(sizes);
        free(header);
        return kvf_err_set(err, KVF_E_IO, "%s: cannot create: %s", tmp, strerror(e));
    }
    int bad = s_write_all(f, lenbuf, 8) || s_write_all(f, header, hlen);
    for (size_t i = hlen; !bad && i < padded; i++) bad = fputc(' ', f) == EOF;
    for (int i = 0; !bad && i < n; i++) bad = s_write_all(f, data[i], sizes[i]);
    int e = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    free(sizes);
    free(header);
    if (bad) {
        unlink(tmp);
        return kvf_err_set(err, KVF_E_IO, "%s: write failed: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return kvf_err_set(err, KVF_E_IO, "%s: cannot rename into place: %s", path, strerror(e));
    }
    return 0;
}
