// common/tokenizer_text.c — the text side of encoding, as HF tokenizers does it:
// added tokens split out of the text, normalizers, pre-tokenizers.
#include <stdlib.h>
#include <string.h>

#ifdef KVF_HAVE_ICU
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#endif

#include "alloc.h"
#include "tokenizer_int.h"

// ---------------------------------------------------------------- pieces

void kvf_tok_pieces_add(kvf_tok_pieces_t *ps, const char *s, size_t len, int at_start, int32_t id) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 16;
        ps->v = kvf_xrealloc(ps->v, ps->cap * sizeof *ps->v);
    }
    ps->v[ps->n++] = (kvf_tok_piece_t){.off = ps->text.n, .len = len, .at_start = at_start, .id = id};
    kvf_tok_buf_put(&ps->text, s, len);
}

void kvf_tok_pieces_free(kvf_tok_pieces_t *ps) {
    kvf_tok_buf_free(&ps->text);
    free(ps->v);
    ps->v = NULL;
    ps->n = ps->cap = 0;
}

static void s_pieces_reset(kvf_tok_pieces_t *ps) {
    ps->text.n = 0;
    ps->n = 0;
}

// ---------------------------------------------------------------- added tokens

static int s_starts_with_word(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len) {
    if (!len) return 0;
    size_t ms, me;
    size_t cl = kvf_tok_utf8_next(s, len, NULL);
    return kvf_tok_re_find(c, tok->re_word, s, cl, 0, &ms, &me) == 1;
}

static int s_ends_with_word(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len) {
    if (!len) return 0;
    size_t last = kvf_tok_utf8_last(s, len);
    return s_starts_with_word(tok, c, s + last, len - last);
}

void kvf_tok_split_added(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const kvf_tok_addset_t *set,
                         const char *s, size_t len, int at_start, kvf_tok_pieces_t *out) {
    size_t start_offset = 0;
    size_t pos = 0;
    while (set->n && pos < len) {
        // leftmost-longest match at or after pos
        size_t mstart = 0, mlen = 0;
        int32_t best = -1;
        for (size_t p = pos; p < len && best < 0; p++) {
            uint8_t b = (uint8_t)s[p];
            for (uint32_t k = set->first[b]; k < set->first[b + 1]; k++) {
                const kvf_tok_added_t *a = &tok->added[set->idx[k]];
                const char *pat = set->use_norm ? a->norm : a->content;
                size_t pl = set->use_norm ? a->norm_len : a->len;
                if (pl <= len - p && pl > mlen && memcmp(s + p, pat, pl) == 0) {
                    best = set->idx[k];
                    mstart = p;
                    mlen = pl;
                }
            }
        }
        if (best < 0) break;
        const kvf_tok_added_t *a = &tok->added[best];
        size_t start = mstart, stop = mstart + mlen;
        pos = stop;
        if (a->single_word) {
            int start_space = start == 0 || !s_ends_with_word(tok, c, s, start);
            int stop_space = stop == len || !s_starts_with_word(tok, c, s + stop, len - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t last = kvf_tok_utf8_last(s, ns);
                uint32_t cp;
                kvf_tok_utf8_next(s + last, ns - last, &cp);
                if (!kvf_tok_is_ws(cp)) break;
                ns = last;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < len) {
                uint32_t cp;
                size_t cl = kvf_tok_utf8_next(s + stop, len - stop, &cp);
                if (!kvf_tok_is_ws(cp)) break;
                stop += cl;
            }
            pos = stop;
        }
        if (start > start_offset)
            kvf_tok_pieces_add(out, s + start_offset, start - start_offset, at_start && start_offset == 0, -1);
        kvf_tok_pieces_add(out, s + start, stop - start, at_start && start == 0, a->id);
        start_offset = stop;
    }
    if (start_offset < len)
        kvf_tok_pieces_add(out, s + start_offset, len - start_offset, at_start && start_offset == 0, -1);
}

// ---------------------------------------------------------------- normalizers

int kvf_tok_replace_all(kvf_tok_ctx_t *c, const pcre2_code *re, const char *content, size_t clen,
                         const char *s, size_t len, kvf_tok_buf_t *out) {
    size_t pos = 0, from = 0;
    while (from <= len) {
        size_t ms, me;
        int rc = kvf_tok_re_find(c, re, s, len, from, &ms, &me);
        if (rc < 0) return -1;
        if (rc == 0) break;
        kvf_tok_buf_put(out, s + pos, ms - pos);
        kvf_tok_buf_put(out, content, clen);
        pos = from = me;
        if (me == ms) {  // an empty match: keep the next character and move past it
            if (me >= len) break;
            size_t cl = kvf_tok_utf8_next(s + me, len - me, NULL);
            kvf_tok_buf_put(out, s + me, cl);
            pos = from = me + cl;
        }
    }
    if (pos < len) kvf_tok_buf_put(out, s + pos, len - pos);
    return 0;
}

#ifdef KVF_HAVE_ICU
static int s_icu(kvf_tok_ctx_t *c, kvf_tok_norm_kind kind, const char *s, size_t len, kvf_tok_buf_t *out) {
    UErrorCode st = U_ZERO_ERROR;
    int32_t n16 = 0;
    u_strFromUTF8(NULL, 0, &n16, s, (int32_t)len, &st);
    st = U_ZERO_ERROR;
    UChar *src = kvf_xmalloc(((size_t)n16 + 1) * sizeof(UChar));
    u_strFromUTF8(src, n16 + 1, NULL, s, (int32_t)len, &st);
    int32_t cap = n16 * 4 + 16;
    UChar *dst = kvf_xmalloc((size_t)cap * sizeof(UChar));
    int32_t nd = 0;
    if (kind == KVF_TOK_N_LOWERCASE) {
        nd = u_strToLower(dst, cap, src, n16, "", &st);
    } else {
        const UNormalizer2 *nz = kind == KVF_TOK_N_NFC    ? unorm2_getNFCInstance(&st)
                                 : kind == KVF_TOK_N_NFD  ? unorm2_getNFDInstance(&st)
                                 : kind == KVF_TOK_N_NFKC ? unorm2_getNFKCInstance(&st)
                                                          : unorm2_getNFKDInstance(&st);
        if (U_SUCCESS(st)) nd = unorm2_normalize(nz, src, n16, dst, cap, &st);
    }
    int32_t n8 = 0;
    if (U_SUCCESS(st)) {
        u_strToUTF8(NULL, 0, &n8, dst, nd, &st);
        if (st == U_BUFFER_OVERFLOW_ERROR) st = U_ZERO_ERROR;
    }
    if (U_SUCCESS(st)) {
        size_t at = out->n;
        kvf_tok_buf_put(out, NULL, 0);
        for (int32_t i = 0; i < n8 + 1; i++) kvf_tok_buf_putc(out, 0);
        u_strToUTF8(out->p + at, n8 + 1, NULL, dst, nd, &st);
        out->n = at + (size_t)n8;
    }
    free(src);
    free(dst);
    if (U_FAILURE(st))
        return kvf_err_set(c->err, KVF_E_INTERNAL, "tokenizer: unicode normalization failed: %s",
                           u_errorName(st));
    return 0;
}
#endif

static int s_unicode(kvf_tok_ctx_t *c, kvf_tok_norm_kind kind, const char *s, size_t len, kvf_tok_buf_t *out) {
#ifdef KVF_HAVE_ICU
    return s_icu(c, kind, s, len, out);
#else
    for (size_t i = 0; i < len; i++)
        if ((uint8_t)s[i] >= 0x80)
            return kvf_err_set(c->err, KVF_E_UNSUPPORTED,
                               "tokenizer: Unicode normalizer/lowercase on non-ASCII text needs ICU "
                               "(libicu-dev), which this build lacks");
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (kind == KVF_TOK_N_LOWERCASE && ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
        kvf_tok_buf_putc(out, ch);
    }
    return 0;
#endif
}

int kvf_tok_normalize(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len,
                      kvf_tok_buf_t *out) {
    out->n = 0;
    kvf_tok_buf_put(out, s, len);
    kvf_tok_buf_t tmp = {0};
    for (size_t i = 0; i < tok->n_norm; i++) {
        const kvf_tok_norm_t *nz = &tok->norm[i];
        tmp.n = 0;
        int rc = 0;
        switch (nz->kind) {
        case KVF_TOK_N_PREPEND:
            if (out->n == 0) continue;  // HF prepends only to non-empty text
            kvf_tok_buf_put(&tmp, nz->s, nz->s_len);
            kvf_tok_buf_put(&tmp, out->p, out->n);
            break;
        case KVF_TOK_N_REPLACE:
            rc = kvf_tok_replace_all(c, nz->re, nz->s, nz->s_len, out->p, out->n, &tmp);
            break;
        case KVF_TOK_N_STRIP: {
            size_t a = 0, b = out->n;
            while (nz->left && a < b) {
                uint32_t cp;
                size_t cl = kvf_tok_utf8_next(out->p + a, b - a, &cp);
                if (!kvf_tok_is_ws(cp)) break;
                a += cl;
            }
            while (nz->right && b > a) {
                size_t last = kvf_tok_utf8_last(out->p + a, b - a) + a;
                uint32_t cp;
                kvf_tok_utf8_next(out->p + last, b - last, &cp);
                if (!kvf_tok_is_ws(cp)) break;
                b = last;
            }
            kvf_tok_buf_put(&tmp, out->p + a, b - a);
            break;
        }
        default:
            rc = s_unicode(c, nz->kind, out->p, out->n, &tmp);
            break;
        }
        if (rc != 0) {
            kvf_tok_buf_free(&tmp);
            return -1;
        }
        kvf_tok_buf_t t = *out;
        *out = tmp;
        tmp = t;
    }
    kvf_tok_buf_free(&tmp);
    return 0;
}

// ---------------------------------------------------------------- pre-tokenizers

typedef struct {
    size_t a, b;
    int match;
} s_span_t;

typedef struct {
    s_span_t *v;
    size_t n, cap;
} s_spans_t;

static void s_span_add(s_spans_t *sp, size_t a, size_t b, int match) {
    if (sp->n == sp->cap) {
        sp->cap = sp->cap ? sp->cap * 2 : 16;
        sp->v = kvf_xrealloc(sp->v, sp->cap * sizeof *sp->v);
    }
    sp->v[sp->n++] = (s_span_t){a, b, match};
}

// NormalizedString::split: the pieces of s that the behavior keeps, as spans (match = 0).
static int s_split(kvf_tok_ctx_t *c, const pcre2_code *re, int invert, kvf_tok_split_behavior behavior,
                   const char *s, size_t len, s_spans_t *out) {
    s_spans_t m = {0};
    out->n = 0;
    if (len == 0) {
        free(m.v);
        return 0;
    }
    size_t prev = 0, from = 0;
    while (from <= len) {
        size_t ms, me;
        int rc = kvf_tok_re_find(c, re, s, len, from, &ms, &me);
        if (rc < 0) {
            free(m.v);
            return -1;
        }
        if (rc == 0) break;
        if (prev != ms) s_span_add(&m, prev, ms, 0);
        s_span_add(&m, ms, me, 1);
        prev = me;
        from = me > ms ? me : (me < len ? me + kvf_tok_utf8_next(s + me, len - me, NULL) : len + 1);
    }
    if (prev != len) s_span_add(&m, prev, len, 0);
    if (invert)
        for (size_t i = 0; i < m.n; i++) m.v[i].match = !m.v[i].match;

    switch (behavior) {
    case KVF_TOK_SPLIT_ISOLATED:
        for (size_t i = 0; i < m.n; i++) s_span_add(out, m.v[i].a, m.v[i].b, 0);
        break;
    case KVF_TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < m.n; i++)
            if (!m.v[i].match) s_span_add(out, m.v[i].a, m.v[i].b, 0);
        break;
    case KVF_TOK_SPLIT_CONTIGUOUS: {
        int prevm = 0;
        for (size_t i = 0; i < m.n; i++) {
            if (m.v[i].match == prevm && out->n) out->v[out->n - 1].b = m.v[i].b;
            else s_span_add(out, m.v[i].a, m.v[i].b, 0);
            prevm = m.v[i].match;
        }
        break;
    }
    case KVF_TOK_SPLIT_MERGED_PREV: {
        int prevm = 0;
        for (size_t i = 0; i < m.n; i++) {
            if (m.v[i].match && !prevm && out->n) out->v[out->n - 1].b = m.v[i].b;
            else s_span_add(out, m.v[i].a, m.v[i].b, 0);
            prevm = m.v[i].match;
        }
        break;
    }
    case KVF_TOK_SPLIT_MERGED_NEXT: {
        int prevm = 0;  // walking backwards: "previous" is the span to the right
        for (size_t i = m.n; i-- > 0;) {
            if (m.v[i].match && !prevm && out->n) out->v[out->n - 1].a = m.v[i].a;
            else s_span_add(out, m.v[i].a, m.v[i].b, 0);
            prevm = m.v[i].match;
        }
        for (size_t i = 0; i < out->n / 2; i++) {
            s_span_t t = out->v[i];
            out->v[i] = out->v[out->n - 1 - i];
            out->v[out->n - 1 - i] = t;
        }
        break;
    }
    }
    free(m.v);
    return 0;
}

// Appends s to out, each byte as its GPT-2 code point.
static void s_bytes_to_chars(const char *s, size_t len, kvf_tok_buf_t *out) {
    for (size_t i = 0; i < len; i++) kvf_tok_buf_put_cp(out, kvf_tok_byte_to_cp((uint8_t)s[i]));
}

// One pre-tokenizer over one piece; the results are appended to out.
static int s_pre_one(const kvf_tok_pre_t *p, kvf_tok_ctx_t *c, const char *s, size_t len, int at_start,
                     kvf_tok_pieces_t *out, kvf_tok_buf_t *tmp, kvf_tok_buf_t *tmp2, s_spans_t *sp) {
    const char *t = s;
    size_t tl = len;
    if (p->kind == KVF_TOK_P_BYTELEVEL && p->add_prefix_space && (len == 0 || s[0] != ' ')) {
        tmp->n = 0;
        kvf_tok_buf_putc(tmp, ' ');
        kvf_tok_buf_put(tmp, s, len);
        t = tmp->p;
        tl = tmp->n;
    } else if (p->kind == KVF_TOK_P_METASPACE) {
        tmp->n = 0;
        for (size_t i = 0; i < len; i++) {
            if (s[i] == ' ') kvf_tok_buf_put(tmp, p->repl, p->repl_len);
            else kvf_tok_buf_putc(tmp, s[i]);
        }
        int starts = tmp->n >= p->repl_len && memcmp(tmp->p, p->repl, p->repl_len) == 0;
        if (!starts && (p->scheme == KVF_TOK_PREPEND_ALWAYS || (p->scheme == KVF_TOK_PREPEND_FIRST && at_start))) {
            tmp2->n = 0;
            kvf_tok_buf_put(tmp2, p->repl, p->repl_len);
            kvf_tok_buf_put(tmp2, tmp->p, tmp->n);
            kvf_tok_buf_t x = *tmp;
            *tmp = *tmp2;
            *tmp2 = x;
        }
        t = tmp->p;
        tl = tmp->n;
    }
    if (tl == 0) return 0;
    if (!p->re) {
        sp->n = 0;
        s_span_add(sp, 0, tl, 0);
    } else {
        kvf_tok_split_behavior beh = p->kind == KVF_TOK_P_SPLIT       ? p->behavior
                                     : p->kind == KVF_TOK_P_BYTELEVEL ? KVF_TOK_SPLIT_ISOLATED
                                                                      : KVF_TOK_SPLIT_MERGED_NEXT;
        if (s_split(c, p->re, p->kind == KVF_TOK_P_SPLIT && p->invert, beh, t, tl, sp) != 0) return -1;
    }
    for (size_t i = 0; i < sp->n; i++) {
        size_t a = sp->v[i].a, b = sp->v[i].b;
        if (a == b) continue;
        int st = at_start && a == 0;
        if (p->kind == KVF_TOK_P_BYTELEVEL) {
            tmp2->n = 0;  // t points into tmp, never tmp2, for ByteLevel
            s_bytes_to_chars(t + a, b - a, tmp2);
            kvf_tok_pieces_add(out, tmp2->p, tmp2->n, st, -1);
        } else {
            kvf_tok_pieces_add(out, t + a, b - a, st, -1);
        }
    }
    return 0;
}

int kvf_tok_pretokenize(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len,
                        int at_start, kvf_tok_pieces_t *out) {
    s_pieces_reset(out);
    kvf_tok_pieces_add(out, s, len, at_start, -1);
    if (tok->n_pre == 0) return 0;
    kvf_tok_pieces_t next = {0};
    kvf_tok_buf_t tmp = {0}, tmp2 = {0};
    s_spans_t sp = {0};
    int rc = 0;
    for (size_t k = 0; k < tok->n_pre && rc == 0; k++) {
        s_pieces_reset(&next);
        for (size_t i = 0; i < out->n && rc == 0; i++)
            rc = s_pre_one(&tok->pre[k], c, out->text.p + out->v[i].off, out->v[i].len, out->v[i].at_start,
                           &next, &tmp, &tmp2, &sp);
        kvf_tok_pieces_t t = *out;
        *out = next;
        next = t;
    }
    kvf_tok_pieces_free(&next);
    kvf_tok_buf_free(&tmp);
    kvf_tok_buf_free(&tmp2);
    free(sp.v);
    return rc;
}
