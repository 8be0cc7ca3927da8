// proto/prescan.c — a bounds check over raw msgpack bytes, run before msgpack-c
// sees untrusted input (see kvf_msgpack_prescan in codec.h and PROTOCOL.md).
//
// msgpack-c allocates count * sizeof(msgpack_object) as soon as it reads an
// array or map header, and recurses up to its own stack limit; a 10-byte message
// claiming 2^32-1 elements would make it try to allocate 64 GiB. The scan walks
// the bytes once with an explicit stack and no allocation, and accepts only one
// complete object that fits: every element still owed needs at least one byte,
// so the sum of owed elements may never exceed the bytes left.
#include "proto/codec.h"

#include <stdint.h>

#define S_MAX_DEPTH_LIMIT 64  // hard cap on the depth a caller may ask for

static uint64_t s_be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

int kvf_msgpack_prescan(const void *data, size_t len, int max_depth, kvf_err_t *err) {
    if (max_depth < 1 || max_depth > S_MAX_DEPTH_LIMIT)
        return kvf_err_set(err, KVF_E_INVAL, "msgpack pre-scan: depth limit %d must be in [1, %d]", max_depth,
                           S_MAX_DEPTH_LIMIT);
    if (!data && len > 0) return kvf_err_set(err, KVF_E_INVAL, "msgpack pre-scan: NULL data");
    const uint8_t *p = data;
    uint64_t rem[S_MAX_DEPTH_LIMIT + 1];  // elements still owed at each open level; level 0 is the top object
    int sp = 0;                           // containers open
    uint64_t pending = 1;                 // sum of rem[]
    size_t pos = 0;
    rem[0] = 1;
    while (!(sp == 0 && rem[0] == 0)) {
        if (rem[sp] == 0) {
            sp--;
            continue;
        }
        if (pos >= len) return kvf_err_set(err, KVF_E_FORMAT, "message truncated at byte %zu", pos);
        size_t at = pos;
        uint8_t b = p[pos++];
        rem[sp]--;
        pending--;
        size_t left = len - pos;
        int hdr = 0;          // bytes of length/count field after the type byte
        uint64_t body = 0;    // payload bytes (scalars, str, bin, ext)
        uint64_t items = 0;   // elements of a container (a map counts keys and values)
        int container = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            body = 0;  // fixint, nil, bool
        } else if (b <= 0x8f) {
            container = 1;
            items = 2u * (uint64_t)(b & 0x0f);
        } else if (b <= 0x9f) {
            container = 1;
            items = b & 0x0f;
        } else if (b <= 0xbf) {
            body = b & 0x1f;
        } else {
            switch (b) {
            case 0xc1:
                return kvf_err_set(err, KVF_E_FORMAT, "reserved msgpack byte 0xc1 at byte %zu", at);
            case 0xc4: case 0xd9: hdr = 1; break;            // bin8, str8
            case 0xc5: case 0xda: hdr = 2; break;            // bin16, str16
            case 0xc6: case 0xdb: hdr = 4; break;            // bin32, str32
            case 0xc7: hdr = 1; body = 1; break;             // ext8: len, type
            case 0xc8: hdr = 2; body = 1; break;             // ext16
            case 0xc9: hdr = 4; body = 1; break;             // ext32
            case 0xca: body = 4; break;                      // float32
            case 0xcb: body = 8; break;                      // float64
            case 0xcc: case 0xd0: body = 1; break;           // (u)int8
            case 0xcd: case 0xd1: body = 2; break;           // (u)int16
            case 0xce: case 0xd2: body = 4; break;           // (u)int32
            case 0xcf: case 0xd3: body = 8; break;           // (u)int64
            case 0xd4: body = 2; break;                      // fixext1: type + 1
            case 0xd5: body = 3; break;
            case 0xd6: body = 5; break;
            case 0xd7: body = 9; break;
            case 0xd8: body = 17; break;
            case 0xdc: container = 1; hdr = 2; break;        // array16
            case 0xdd: container = 1; hdr = 4; break;        // array32
            case 0xde: container = 2; hdr = 2; break;        // map16
            case 0xdf: container = 2; hdr = 4; break;        // map32
            default:
                return kvf_err_set(err, KVF_E_INTERNAL, "msgpack pre-scan: unhandled byte 0x%02x", b);
            }
            if ((size_t)hdr > left)
                return kvf_err_set(err, KVF_E_FORMAT, "message truncated in a header at byte %zu", at);
            if (hdr) {
                uint64_t n = s_be(p + pos, hdr);
                pos += (size_t)hdr;
                left -= (size_t)hdr;
                if (container) items = n * (uint64_t)container;  // map: keys and values
                else body += n;
            }
        }
        if (container) {
            if (sp + 1 > max_depth)
                return kvf_err_set(err, KVF_E_FORMAT, "nesting deeper than %d at byte %zu", max_depth, at);
            if (items > left || pending + items > left)
                return kvf_err_set(err, KVF_E_FORMAT,
                                   "%s at byte %zu claims %llu elements but only %zu bytes are left",
                                   (b & 0xf0) == 0x80 || b >= 0xde ? "map" : "array", at,
                                   (unsigned long long)items, left);
            pending += items;
            rem[++sp] = items;
        } else {
            if (body > left)
                return kvf_err_set(err, KVF_E_FORMAT,
                                   "value at byte %zu claims %llu bytes but only %zu are left", at,
                                   (unsigned long long)body, left);
            pos += (size_t)body;
        }
    }
    if (pos != len)
        return kvf_err_set(err, KVF_E_FORMAT, "%zu trailing bytes after the message", len - pos);
    return 0;
}
