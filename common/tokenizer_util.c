// common/tokenizer_util.c — hash maps, buffers, UTF-8 and regex helpers for the tokenizer.
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tokenizer_int.h"

// ---------------------------------------------------------------- buffers

void kvf_tok_buf_put(kvf_tok_buf_t *b, const void *data, size_t len) {
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + len + 1) cap *= 2;
        b->p = kvf_xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (len) memcpy(b->p + b->n, data, len);
    b->n += len;
}

void kvf_tok_buf_putc(kvf_tok_buf_t *b, char c) { kvf_tok_buf_put(b, &c, 1); }

void kvf_tok_buf_put_cp(kvf_tok_buf_t *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    kvf_tok_buf_put(b, u, n);
}

char *kvf_tok_buf_cstr(kvf_tok_buf_t *b) {
    kvf_tok_buf_put(b, "", 0);  // guarantees room for the NUL
    b->p[b->n] = 0;
    return b->p;
}

void kvf_tok_buf_free(kvf_tok_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

// ---------------------------------------------------------------- arena

struct kvf_tok_arena_s {
    struct kvf_tok_arena_s *next;
    size_t used, cap;
    char data[];
};

char *kvf_tok_arena_dup(kvf_tok_arena_t **a, const char *s, size_t len) {
    if (!*a || (*a)->used + len + 1 > (*a)->cap) {
        size_t cap = len + 1 > (1u << 20) ? len + 1 : (1u << 20);
        kvf_tok_arena_t *blk = kvf_xmalloc(sizeof *blk + cap);
        blk->next = *a;
        blk->used = 0;
        blk->cap = cap;
        *a = blk;
    }
    char *p = (*a)->data + (*a)->used;
    if (len) memcpy(p, s, len);
    p[len] = 0;
    (*a)->used += len + 1;
    return p;
}

void kvf_tok_arena_free(kvf_tok_arena_t **a) {
    while (*a) {
        kvf_tok_arena_t *next = (*a)->next;
        free(*a);
        *a = next;
    }
}

// ---------------------------------------------------------------- hash maps

static uint64_t s_hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a, then a final mix
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

static uint64_t s_hash_u64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static size_t s_cap_for(size_t expect) {
    size_t cap = 16;
    while (cap < expect * 2) cap *= 2;
    return cap;
}

void kvf_tok_strmap_init(kvf_tok_strmap_t *m, size_t expect) {
    m->cap = s_cap_for(expect);
    m->n = 0;
    m->e = kvf_xcalloc(m->cap, sizeof *m->e);
}

static void s_strmap_grow(kvf_tok_strmap_t *m) {
    kvf_tok_strmap_t big;
    kvf_tok_strmap_init(&big, m->cap);
    for (size_t i = 0; i < m->cap; i++)
        if (m->e[i].key) kvf_tok_strmap_put(&big, m->e[i].key, m->e[i].len, m->e[i].val);
    free(m->e);
    *m = big;
}

void kvf_tok_strmap_put(kvf_tok_strmap_t *m, const char *key, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) s_strmap_grow(m);
    size_t mask = m->cap - 1;
    for (size_t i = s_hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
        kvf_tok_sent_t *e = &m->e[i];
        if (!e->key) {
            e->key = key;
            e->len = (uint32_t)len;
            e->val = val;
            m->n++;
            return;
        }
        if (e->len == len && memcmp(e->key, key, len) == 0) {
            e->val = val;
            return;
        }
    }
}

int32_t kvf_tok_strmap_get(const kvf_tok_strmap_t *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t mask = m->cap - 1;
    for (size_t i = s_hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
        const kvf_tok_sent_t *e = &m->e[i];
        if (!e->key) return -1;
        if (e->len == len && memcmp(e->key, key, len) == 0) return e->val;
    }
}

void kvf_tok_strmap_free(kvf_tok_strmap_t *m) {
    free(m->e);
    m->e = NULL;
    m->cap = m->n = 0;
}

void kvf_tok_pairmap_init(kvf_tok_pairmap_t *m, size_t expect) {
    m->cap = s_cap_for(expect);
    m->n = 0;
    m->e = kvf_xmalloc(m->cap * sizeof *m->e);
    for (size_t i = 0; i < m->cap; i++) m->e[i].new_id = -1;
}

void kvf_tok_pairmap_put(kvf_tok_pairmap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    if ((m->n + 1) * 2 > m->cap) {
        kvf_tok_pairmap_t big;
        kvf_tok_pairmap_init(&big, m->cap);
        for (size_t i = 0; i < m->cap; i++)
            if (m->e[i].new_id >= 0)
                kvf_tok_pairmap_put(&big, (int32_t)(m->e[i].key >> 32), (int32_t)(uint32_t)m->e[i].key,
                                    m->e[i].rank, m->e[i].new_id);
        free(m->e);
        *m = big;
    }
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = m->cap - 1;
    for (size_t i = s_hash_u64(key) & mask;; i = (i + 1) & mask) {
        kvf_tok_pent_t *e = &m->e[i];
        if (e->new_id < 0) {
            e->key = key;
            e->rank = rank;
            e->new_id = new_id;
            m->n++;
            return;
        }
        if (e->key == key) {  // a later duplicate wins, as HF's HashMap collect
            e->rank = rank;
            e->new_id = new_id;
            return;
        }
    }
}

const kvf_tok_pent_t *kvf_tok_pairmap_get(const kvf_tok_pairmap_t *m, int32_t a, int32_t b) {
    if (!m->cap) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = m->cap - 1;
    for (size_t i = s_hash_u64(key) & mask;; i = (i + 1) & mask) {
        const kvf_tok_pent_t *e = &m->e[i];
        if (e->new_id < 0) return NULL;
        if (e->key == key) return e;
    }
}

void kvf_tok_pairmap_free(kvf_tok_pairmap_t *m) {
    free(m->e);
    m->e = NULL;
    m->cap = m->n = 0;
}

// ---------------------------------------------------------------- UTF-8

size_t kvf_tok_utf8_next(const char *s, size_t len, uint32_t *cp) {
    const uint8_t *u = (const uint8_t *)s;
    size_t n = u[0] < 0x80 ? 1 : u[0] >= 0xF0 ? 4 : u[0] >= 0xE0 ? 3 : u[0] >= 0xC0 ? 2 : 1;
    if (n > len) n = 1;
    uint32_t c = n == 1 ? u[0] : n == 2 ? (u[0] & 0x1Fu) : n == 3 ? (u[0] & 0x0Fu) : (u[0] & 0x07u);
    for (size_t i = 1; i < n; i++) c = (c << 6) | (u[i] & 0x3Fu);
    if (cp) *cp = c;
    return n;
}

size_t kvf_tok_utf8_last(const char *s, size_t len) {
    if (!len) return 0;
    size_t i = len - 1;
    while (i > 0 && ((uint8_t)s[i] & 0xC0) == 0x80 && len - i < 4) i--;
    return i;
}

size_t kvf_tok_utf8_check(const char *s, size_t len) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        uint8_t b = u[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else
            return i;
        if (i + need >= len) return i;
        if (u[i + 1] < lo || u[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((u[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return len;
}

int kvf_tok_is_ws(uint32_t cp) {
    switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

// ---------------------------------------------------------------- GPT-2 byte map

// Printable bytes map to themselves; the other 68 take code points 256.. in byte order.
static int s_byte_printable(unsigned b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

uint32_t kvf_tok_byte_to_cp(uint8_t b) {
    if (s_byte_printable(b)) return b;
    uint32_t k = 0;
    for (unsigned i = 0; i < b; i++) k += !s_byte_printable(i);
    return 256 + k;
}

int kvf_tok_cp_to_byte(uint32_t cp) {
    if (cp < 256) return s_byte_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t k = cp - 256;
    for (unsigned i = 0; i < 256; i++)
        if (!s_byte_printable(i) && k-- == 0) return (int)i;
    return -1;
}

// ---------------------------------------------------------------- regex

int kvf_tok_ctx_init(kvf_tok_ctx_t *c, kvf_err_t *err) {
    memset(c, 0, sizeof *c);
    c->err = err;
    c->md = pcre2_match_data_create(1, NULL);
    c->mc = pcre2_match_context_create(NULL);
    c->js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!c->md || !c->mc) {
        kvf_tok_ctx_fini(c);
        return kvf_err_set(err, KVF_E_NOMEM, "tokenizer: out of memory for regex match data");
    }
    if (c->js) pcre2_jit_stack_assign(c->mc, NULL, c->js);
    return 0;
}

void kvf_tok_ctx_fini(kvf_tok_ctx_t *c) {
    if (c->md) pcre2_match_data_free(c->md);
    if (c->mc) pcre2_match_context_free(c->mc);
    if (c->js) pcre2_jit_stack_free(c->js);
    c->md = NULL;
    c->mc = NULL;
    c->js = NULL;
}

pcre2_code *kvf_tok_re_compile(const char *pattern, size_t len, int literal, kvf_err_t *err) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);  // LITERAL refuses UCP
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: regex /%.*s/ does not compile at %zu: %s",
                    (int)(len > 200 ? 200 : len), pattern, (size_t)eo, (char *)msg);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // the interpreter is the fallback
    return re;
}

int kvf_tok_re_find(kvf_tok_ctx_t *c, const pcre2_code *re, const char *s, size_t len, size_t start,
                    size_t *ms, size_t *me) {
    if (start > len) return 0;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK, c->md, c->mc);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return kvf_err_set(c->err, KVF_E_INTERNAL, "tokenizer: regex match failed: %s", (char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}
