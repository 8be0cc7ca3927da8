// proto/codec.c — kvf_msg_t <-> msgpack [version, type, body-map]; the wire form
// is specified in proto/PROTOCOL.md.
//
// Every body is described once, as a table of fields in schema.c (wire key = C
// field name, kind, offset, required); one encoder and one decoder walk those
// tables, so every field gets the same type checks in both directions.
// A decoded message lives in one msgpack zone (msg->arena_), whose growth is
// capped at a multiple of the input size.
#include "proto/codec.h"

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "proto/schema.h"

// The decoded form of a message may take at most this many bytes per input
// byte, plus S_ARENA_SLACK: a hostile message cannot expand without bound.
#define S_ARENA_FACTOR 32
#define S_ARENA_SLACK (64u << 10)

// ---------------------------------------------------------------- storage

void kvf_msg_clear(kvf_msg_t *msg) {
    if (!msg) return;
    if (msg->arena_) msgpack_zone_free(msg->arena_);
    memset(msg, 0, sizeof *msg);
}

// ---------------------------------------------------------------- encoder

typedef struct {
    msgpack_packer pk;
    int rc;           // OR of the packer's return codes: nonzero once a write failed
    const char *tname;
    kvf_err_t *err;
} s_enc;

static int s_enc_struct(s_enc *e, const kvf_schema_t *sc, const void *base);

static void s_enc_key(s_enc *e, const char *k) {
    e->rc |= msgpack_pack_str_with_body(&e->pk, k, strlen(k));
}

static int s_enc_field(s_enc *e, const kvf_field_t *f, const void *base) {
    const char *p = (const char *)base + f->off;
    msgpack_packer *pk = &e->pk;
    switch (f->kind) {
    case KVF_FK_U32: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        e->rc |= msgpack_pack_uint32(pk, v);
        return 0;
    }
    case KVF_FK_U64: {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        e->rc |= msgpack_pack_uint64(pk, v);
        return 0;
    }
    case KVF_FK_I32: {
        int32_t v;
        memcpy(&v, p, sizeof v);
        e->rc |= msgpack_pack_int32(pk, v);
        return 0;
    }
    case KVF_FK_F32: {
        float v;
        memcpy(&v, p, sizeof v);
        e->rc |= msgpack_pack_float(pk, v);
        return 0;
    }
    case KVF_FK_F64: {
        double v;
        memcpy(&v, p, sizeof v);
        e->rc |= msgpack_pack_double(pk, v);
        return 0;
    }
    case KVF_FK_FLAG: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        e->rc |= v ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        return 0;
    }
    case KVF_FK_STR: {
        const kvf_str_t *s = (const kvf_str_t *)p;
        if (!s->ptr && s->len)
            return kvf_err_set(e->err, KVF_E_INVAL, "%s: field %s: NULL string of length %u", e->tname, f->name,
                               s->len);
        e->rc |= msgpack_pack_str_with_body(pk, s->ptr ? s->ptr : "", s->len);
        return 0;
    }
    case KVF_FK_IDS: {
        const kvf_ids_t *ids = (const kvf_ids_t *)p;
        if (!ids->ids && ids->n)
            return kvf_err_set(e->err, KVF_E_INVAL, "%s: field %s: NULL array of %u ids", e->tname, f->name, ids->n);
        e->rc |= msgpack_pack_array(pk, ids->n);
        for (uint32_t i = 0; i < ids->n; i++) e->rc |= msgpack_pack_int32(pk, ids->ids[i]);
        return 0;
    }
    case KVF_FK_STOP: {
        int32_t n;
        memcpy(&n, (const char *)base + f->off2, sizeof n);
        if (n < 0 || n > KVF_MAX_STOP_IDS)
            return kvf_err_set(e->err, KVF_E_INVAL, "%s: field %s: %d stop ids (at most %d)", e->tname, f->name, n,
                               KVF_MAX_STOP_IDS);
        const int32_t *ids = (const int32_t *)p;
        e->rc |= msgpack_pack_array(pk, (size_t)n);
        for (int32_t i = 0; i < n; i++) e->rc |= msgpack_pack_int32(pk, ids[i]);
        return 0;
    }
    case KVF_FK_FINISH: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        const char *name = kvf_finish_name((kvf_finish_reason)v);
        if (strcmp(name, "unknown") == 0)
            return kvf_err_set(e->err, KVF_E_INVAL, "%s: field %s: unknown finish reason %u", e->tname, f->name, v);
        s_enc_key(e, name);
        return 0;
    }
    case KVF_FK_MAP:
        return s_enc_struct(e, f->sub, p);
    case KVF_FK_ARR: {
        const char *arr;
        uint32_t n;
        memcpy(&arr, p, sizeof arr);
        memcpy(&n, (const char *)base + f->off2, sizeof n);
        if (!arr && n)
            return kvf_err_set(e->err, KVF_E_INVAL, "%s: field %s: NULL array of %u elements", e->tname, f->name, n);
        e->rc |= msgpack_pack_array(pk, n);
        for (uint32_t i = 0; i < n; i++)
            if (s_enc_struct(e, f->sub, arr + (size_t)i * f->sub->size) < 0) return -1;
        return 0;
    }
    case KVF_FK_U64S: {
        const uint64_t *arr;
        uint32_t n;
        memcpy(&arr, p, sizeof arr);
        memcpy(&n, (const char *)base + f->off2, sizeof n);
        if (!arr && n)
            return kvf_err_set(e->err, KVF_E_INVAL, "%s: field %s: NULL array of %u elements", e->tname, f->name, n);
        e->rc |= msgpack_pack_array(pk, n);
        for (uint32_t i = 0; i < n; i++) e->rc |= msgpack_pack_uint64(pk, arr[i]);
        return 0;
    }
    }
    return kvf_err_set(e->err, KVF_E_INTERNAL, "%s: field %s: unknown kind %d", e->tname, f->name, (int)f->kind);
}

static int s_enc_struct(s_enc *e, const kvf_schema_t *sc, const void *base) {
    e->rc |= msgpack_pack_map(&e->pk, (size_t)sc->n);
    for (int i = 0; i < sc->n; i++) {
        s_enc_key(e, sc->fields[i].name);
        if (s_enc_field(e, &sc->fields[i], base) < 0) return -1;
    }
    return 0;
}

int kvf_msg_encode(const kvf_msg_t *msg, char **buf, size_t *len, kvf_err_t *err) {
    *buf = NULL;
    *len = 0;
    const kvf_msg_info_t *ti = kvf_schema_find((uint64_t)msg->type);
    if (!ti) return kvf_err_set(err, KVF_E_INVAL, "cannot encode unknown message type %d", (int)msg->type);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    s_enc e = {.rc = 0, .tname = ti->name, .err = err};
    msgpack_packer_init(&e.pk, &sb, msgpack_sbuffer_write);
    e.rc |= msgpack_pack_array(&e.pk, 3);
    e.rc |= msgpack_pack_uint32(&e.pk, KVF_PROTO_VERSION);
    e.rc |= msgpack_pack_uint32(&e.pk, (uint32_t)msg->type);
    if (s_enc_struct(&e, ti->body, &msg->u) < 0) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    if (e.rc) {
        msgpack_sbuffer_destroy(&sb);
        return kvf_err_set(err, KVF_E_NOMEM, "%s: out of memory while encoding", ti->name);
    }
    *len = sb.size;
    *buf = msgpack_sbuffer_release(&sb);
    return 0;
}

// ---------------------------------------------------------------- decoder

typedef struct {
    msgpack_zone *arena;
    size_t used, budget;
    char *empty;          // one shared "" for absent and empty strings
    const char *tname;
    char path[256];       // where in the body we are: "reqs[3].sampling"
    size_t plen;
    kvf_err_t *err;
} s_dec;

static const char *s_obj_type_name(const msgpack_object *o) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "uint";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative int";
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    return "?";
}

// An error about the field at d->path: "SUBMIT: field reqs[0].text: ...".
static int s_ferr(s_dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_ferr(s_dec *d, const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return kvf_err_set(d->err, KVF_E_FORMAT, "%s: field %s: %s", d->tname, d->plen ? d->path : "(body)", what);
}

static int s_type_err(s_dec *d, const char *want, const msgpack_object *o) {
    return s_ferr(d, "expected %s, got %s", want, s_obj_type_name(o));
}

// Appends ".name" or "[i]" to the path; returns the old length to restore.
static size_t s_path_push(s_dec *d, const char *name, long idx) {
    size_t old = d->plen;
    int n;
    if (name)
        n = snprintf(d->path + d->plen, sizeof d->path - d->plen, "%s%s", d->plen ? "." : "", name);
    else
        n = snprintf(d->path + d->plen, sizeof d->path - d->plen, "[%ld]", idx);
    if (n > 0) d->plen += (size_t)n < sizeof d->path - d->plen ? (size_t)n : sizeof d->path - d->plen - 1;
    return old;
}

static void s_path_pop(s_dec *d, size_t old) {
    d->plen = old;
    d->path[old] = '\0';
}

static void *s_alloc(s_dec *d, size_t n, size_t size) {
    if (size && n > (SIZE_MAX / 2) / size) {
        s_ferr(d, "%zu elements overflow", n);
        return NULL;
    }
    size_t bytes = n * size;
    size_t cost = bytes + sizeof(void *);  // the zone's alignment slack counts too
    if (cost > d->budget - d->used) {
        s_ferr(d, "decoded message would exceed %zu bytes (%d x its size + %u)", d->budget, S_ARENA_FACTOR,
               S_ARENA_SLACK);
        return NULL;
    }
    void *p = msgpack_zone_malloc(d->arena, bytes ? bytes : 1);
    if (!p) {
        kvf_err_set(d->err, KVF_E_NOMEM, "%s: out of memory decoding %zu bytes", d->tname, bytes);
        return NULL;
    }
    d->used += cost;
    return p;
}

static int s_get_uint(s_dec *d, const msgpack_object *o, uint64_t max, uint64_t *out) {
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return s_type_err(d, "a non-negative integer", o);
    if (o->via.u64 > max) return s_ferr(d, "%llu is larger than %llu", (unsigned long long)o->via.u64,
                                        (unsigned long long)max);
    *out = o->via.u64;
    return 0;
}

static int s_get_i32(s_dec *d, const msgpack_object *o, int32_t *out) {
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > INT32_MAX) return s_ferr(d, "%llu is out of int32 range", (unsigned long long)o->via.u64);
        *out = (int32_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        if (o->via.i64 < INT32_MIN) return s_ferr(d, "%lld is out of int32 range", (long long)o->via.i64);
        *out = (int32_t)o->via.i64;
        return 0;
    }
    return s_type_err(d, "an integer", o);
}

static int s_get_num(s_dec *d, const msgpack_object *o, double *out) {
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return 0;
    default: return s_type_err(d, "a number", o);
    }
}

// Copies a str or bin into the arena with a NUL after it.
static int s_get_str(s_dec *d, const msgpack_object *o, kvf_str_t *out) {
    const char *src;
    uint32_t n;
    if (o->type == MSGPACK_OBJECT_STR) {
        src = o->via.str.ptr;
        n = o->via.str.size;
    } else if (o->type == MSGPACK_OBJECT_BIN) {
        src = o->via.bin.ptr;
        n = o->via.bin.size;
    } else {
        return s_type_err(d, "a string", o);
    }
    if (n == 0) {
        out->ptr = d->empty;
        out->len = 0;
        return 0;
    }
    char *dst = s_alloc(d, (size_t)n + 1, 1);
    if (!dst) return -1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    out->ptr = dst;
    out->len = n;
    return 0;
}

static int s_get_i32_array(s_dec *d, const msgpack_object *o, int32_t *dst, uint32_t max, uint32_t *n_out) {
    if (o->type != MSGPACK_OBJECT_ARRAY) return s_type_err(d, "an array of integers", o);
    if (o->via.array.size > max) return s_ferr(d, "%u elements, at most %u", o->via.array.size, max);
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        size_t old = s_path_push(d, NULL, (long)i);
        int rc = s_get_i32(d, &o->via.array.ptr[i], &dst[i]);
        s_path_pop(d, old);
        if (rc < 0) return -1;
    }
    *n_out = o->via.array.size;
    return 0;
}

static int s_dec_struct(s_dec *d, const msgpack_object *o, const kvf_schema_t *sc, void *base);

static int s_dec_field(s_dec *d, const kvf_field_t *f, const msgpack_object *o, void *base) {
    char *p = (char *)base + f->off;
    switch (f->kind) {
    case KVF_FK_U32: {
        uint64_t v;
        if (s_get_uint(d, o, UINT32_MAX, &v) < 0) return -1;
        uint32_t v32 = (uint32_t)v;
        memcpy(p, &v32, sizeof v32);
        return 0;
    }
    case KVF_FK_U64: {
        uint64_t v;
        if (s_get_uint(d, o, UINT64_MAX, &v) < 0) return -1;
        memcpy(p, &v, sizeof v);
        return 0;
    }
    case KVF_FK_I32: {
        int32_t v;
        if (s_get_i32(d, o, &v) < 0) return -1;
        memcpy(p, &v, sizeof v);
        return 0;
    }
    case KVF_FK_F32: {
        double v;
        if (s_get_num(d, o, &v) < 0) return -1;
        // Converting a finite double beyond float range is undefined in C.
        if (isfinite(v) && fabs(v) > FLT_MAX) return s_ferr(d, "%g is out of float32 range", v);
        float f32 = (float)v;
        memcpy(p, &f32, sizeof f32);
        return 0;
    }
    case KVF_FK_F64: {
        double v;
        if (s_get_num(d, o, &v) < 0) return -1;
        memcpy(p, &v, sizeof v);
        return 0;
    }
    case KVF_FK_FLAG: {
        uint32_t v;
        if (o->type == MSGPACK_OBJECT_BOOLEAN) v = o->via.boolean ? 1 : 0;
        else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= 1) v = (uint32_t)o->via.u64;
        else return s_type_err(d, "a bool", o);
        memcpy(p, &v, sizeof v);
        return 0;
    }
    case KVF_FK_STR:
        return s_get_str(d, o, (kvf_str_t *)p);
    case KVF_FK_IDS: {
        kvf_ids_t *ids = (kvf_ids_t *)p;
        if (o->type != MSGPACK_OBJECT_ARRAY) return s_type_err(d, "an array of integers", o);
        int32_t *arr = o->via.array.size ? s_alloc(d, o->via.array.size, sizeof(int32_t)) : NULL;
        if (o->via.array.size && !arr) return -1;
        uint32_t n = 0;
        if (s_get_i32_array(d, o, arr, UINT32_MAX, &n) < 0) return -1;
        ids->ids = arr;
        ids->n = n;
        return 0;
    }
    case KVF_FK_STOP: {
        uint32_t n = 0;
        if (s_get_i32_array(d, o, (int32_t *)p, KVF_MAX_STOP_IDS, &n) < 0) return -1;
        int32_t n32 = (int32_t)n;
        memcpy((char *)base + f->off2, &n32, sizeof n32);
        return 0;
    }
    case KVF_FK_FINISH: {
        if (o->type != MSGPACK_OBJECT_STR) return s_type_err(d, "a finish reason string", o);
        uint32_t v;
        if (kvf_schema_finish_parse(o->via.str.ptr, o->via.str.size, &v) == 0) {
            memcpy(p, &v, sizeof v);
            return 0;
        }
        return s_ferr(d, "unknown finish reason \"%.*s\"", (int)(o->via.str.size > 32 ? 32 : o->via.str.size),
                      o->via.str.ptr);
    }
    case KVF_FK_MAP:
        return s_dec_struct(d, o, f->sub, p);
    case KVF_FK_ARR: {
        if (o->type != MSGPACK_OBJECT_ARRAY) return s_type_err(d, "an array of maps", o);
        uint32_t n = o->via.array.size;
        char *arr = NULL;
        if (n) {
            arr = s_alloc(d, n, f->sub->size);
            if (!arr) return -1;
        }
        for (uint32_t i = 0; i < n; i++) {
            void *el = arr + (size_t)i * f->sub->size;
            if (f->sub->init) f->sub->init(el);
            else memset(el, 0, f->sub->size);
            size_t old = s_path_push(d, NULL, (long)i);
            int rc = s_dec_struct(d, &o->via.array.ptr[i], f->sub, el);
            s_path_pop(d, old);
            if (rc < 0) return -1;
        }
        memcpy(p, &arr, sizeof arr);
        memcpy((char *)base + f->off2, &n, sizeof n);
        return 0;
    }
    case KVF_FK_U64S: {
        if (o->type != MSGPACK_OBJECT_ARRAY) return s_type_err(d, "an array of non-negative integers", o);
        uint32_t n = o->via.array.size;
        uint64_t *arr = NULL;
        if (n) {
            arr = s_alloc(d, n, sizeof(uint64_t));
            if (!arr) return -1;
        }
        for (uint32_t i = 0; i < n; i++) {
            size_t old = s_path_push(d, NULL, (long)i);
            int rc = s_get_uint(d, &o->via.array.ptr[i], UINT64_MAX, &arr[i]);
            s_path_pop(d, old);
            if (rc < 0) return -1;
        }
        memcpy(p, &arr, sizeof arr);
        memcpy((char *)base + f->off2, &n, sizeof n);
        return 0;
    }
    }
    return kvf_err_set(d->err, KVF_E_INTERNAL, "%s: field %s: unknown kind %d", d->tname, f->name, (int)f->kind);
}

// Fills the struct at base (already initialized with defaults) from the map o.
static int s_dec_struct(s_dec *d, const msgpack_object *o, const kvf_schema_t *sc, void *base) {
    if (o->type != MSGPACK_OBJECT_MAP) return s_type_err(d, "a map", o);
    uint64_t seen = 0;  // schemas have fewer than 64 fields
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) return s_ferr(d, "a key is a %s, not a string", s_obj_type_name(&kv->key));
        int fi = -1;
        for (int j = 0; j < sc->n; j++) {
            const char *name = sc->fields[j].name;
            if (strlen(name) == kv->key.via.str.size && memcmp(name, kv->key.via.str.ptr, kv->key.via.str.size) == 0) {
                fi = j;
                break;
            }
        }
        if (fi < 0) continue;  // unknown field: ignored (forward compatibility)
        const kvf_field_t *f = &sc->fields[fi];
        size_t old = s_path_push(d, f->name, 0);
        int rc;
        if (seen & (1ull << fi)) rc = s_ferr(d, "appears twice");
        else rc = s_dec_field(d, f, &kv->val, base);
        s_path_pop(d, old);
        if (rc < 0) return -1;
        seen |= 1ull << fi;
    }
    for (int j = 0; j < sc->n; j++) {
        const kvf_field_t *f = &sc->fields[j];
        if (f->required && !(seen & (1ull << j))) {
            size_t old = s_path_push(d, f->name, 0);
            s_ferr(d, "required field is missing");
            s_path_pop(d, old);
            return -1;
        }
        if (f->kind == KVF_FK_STR) {
            kvf_str_t *s = (kvf_str_t *)((char *)base + f->off);
            if (!s->ptr) s->ptr = d->empty;
        }
    }
    return 0;
}

int kvf_msg_decode(const void *data, size_t len, kvf_msg_t *msg, kvf_err_t *err) {
    memset(msg, 0, sizeof *msg);
    if (kvf_msgpack_prescan(data, len, KVF_PROTO_MAX_DEPTH, err) < 0) return -1;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&up, data, len, &off);
    int rc = -1;
    msgpack_zone *arena = NULL;
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        kvf_err_set(err, KVF_E_NOMEM, "out of memory unpacking a %zu-byte message", len);
        goto out;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        kvf_err_set(err, KVF_E_FORMAT, "malformed msgpack message (%zu bytes)", len);
        goto out;
    }
    const msgpack_object *top = &up.data;
    if (top->type != MSGPACK_OBJECT_ARRAY || top->via.array.size < 1) {
        kvf_err_set(err, KVF_E_FORMAT, "a message is an array [version, type, body], not a %s",
                    top->type == MSGPACK_OBJECT_ARRAY ? "empty array" : s_obj_type_name(top));
        goto out;
    }
    const msgpack_object *ov = &top->via.array.ptr[0];
    if (ov->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        kvf_err_set(err, KVF_E_FORMAT, "message version is a %s, not an integer", s_obj_type_name(ov));
        goto out;
    }
    if (ov->via.u64 != KVF_PROTO_VERSION) {
        kvf_err_set(err, KVF_E_PROTO, "protocol version %llu is not supported (this peer speaks %d)",
                    (unsigned long long)ov->via.u64, KVF_PROTO_VERSION);
        goto out;
    }
    if (top->via.array.size != 3) {
        kvf_err_set(err, KVF_E_FORMAT, "a message is an array of 3 [version, type, body], not of %u",
                    top->via.array.size);
        goto out;
    }
    const msgpack_object *ot = &top->via.array.ptr[1];
    if (ot->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        kvf_err_set(err, KVF_E_FORMAT, "message type is a %s, not an integer", s_obj_type_name(ot));
        goto out;
    }
    const kvf_msg_info_t *ti = kvf_schema_find(ot->via.u64);
    if (!ti) {
        kvf_err_set(err, KVF_E_PROTO, "unknown message type %llu", (unsigned long long)ot->via.u64);
        goto out;
    }
    arena = msgpack_zone_new(len < 4096 ? 1024 : 8192);
    if (!arena) {
        kvf_err_set(err, KVF_E_NOMEM, "out of memory decoding a %zu-byte message", len);
        goto out;
    }
    kvf_msg_init(msg, ti->type);
    s_dec d = {.arena = arena, .used = 0, .tname = ti->name, .plen = 0, .err = err};
    d.budget = len > (SIZE_MAX - S_ARENA_SLACK) / S_ARENA_FACTOR ? SIZE_MAX : len * S_ARENA_FACTOR + S_ARENA_SLACK;
    d.path[0] = '\0';
    d.empty = s_alloc(&d, 1, 1);
    if (!d.empty) goto out;
    d.empty[0] = '\0';
    if (s_dec_struct(&d, &top->via.array.ptr[2], ti->body, &msg->u) < 0) goto out;
    msg->arena_ = arena;
    arena = NULL;
    rc = 0;
out:
    if (rc < 0) {
        // Keep what was read of the header so that the caller can name the
        // message in its ERROR reply; nothing is left to release.
        kvf_msg_type t = msg->type;
        memset(msg, 0, sizeof *msg);
        msg->type = t;
        if (t != KVF_MSG_INVALID) msg->version = KVF_PROTO_VERSION;
    }
    if (arena) msgpack_zone_free(arena);
    msgpack_unpacked_destroy(&up);
    return rc;
}
