// common/tokenizer_decode.c — decoders (HF decode_chain semantics) run as a stream.
//
// HF decodes a list of token strings through a chain of decoders; the chain's
// first Fuse or ByteLevel turns the list into one string. Here the decoders
// before that point work token by token (ByteFallback holds back a run of
// <0xNN> tokens until it ends, because a run that is not valid UTF-8 as a whole
// becomes one U+FFFD per byte); the ones after it work on the text as it grows
// (Strip's leading cut happens once, at the start of the stream; its trailing
// cut and Replace hold back what could still change). ByteLevel's bytes go
// through an incremental lossy UTF-8 decoder that emits U+FFFD exactly where
// Rust's from_utf8_lossy would. kvf_tokenizer_decode is this stream run over all
// ids, so streaming and whole decoding agree by construction.
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tokenizer_int.h"

static const char s_fffd[] = "\xEF\xBF\xBD";

typedef struct {
    size_t count;       // tokens seen (Metaspace: the first one is special)
    kvf_tok_buf_t buf;  // ByteFallback run; Strip trailing hold; Replace pending text
    size_t held;        // Strip: characters held back
    size_t start_left;  // Strip: leading characters still to cut
} s_stage_t;

struct kvf_detok_s {
    const kvf_tokenizer_t *tok;
    kvf_tok_ctx_t ctx;
    kvf_err_t err;
    s_stage_t *ts;  // per tok->tdec
    s_stage_t *cs;  // per tok->cdec
    size_t n_fused; // tokens that reached the fuse point
    uint8_t pend[4];
    int pn, need;   // lossy UTF-8: pending bytes of an incomplete character
    kvf_tok_buf_t out;
};

static void s_reset(kvf_detok_t *d) {
    const kvf_tokenizer_t *tok = d->tok;
    for (size_t i = 0; i < tok->n_tdec; i++) {
        d->ts[i].count = d->ts[i].held = 0;
        d->ts[i].buf.n = 0;
    }
    for (size_t i = 0; i < tok->n_cdec; i++) {
        d->cs[i].count = d->cs[i].held = 0;
        d->cs[i].buf.n = 0;
        d->cs[i].start_left = tok->cdec[i].start;
    }
    d->n_fused = 0;
    d->pn = d->need = 0;
}

kvf_detok_t *kvf_detok_new(const kvf_tokenizer_t *tok) {
    if (!tok) return NULL;
    kvf_detok_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->tok = tok;
    d->ts = calloc(tok->n_tdec + 1, sizeof *d->ts);
    d->cs = calloc(tok->n_cdec + 1, sizeof *d->cs);
    if (!d->ts || !d->cs || kvf_tok_ctx_init(&d->ctx, &d->err) != 0) {
        free(d->ts);
        free(d->cs);
        free(d);
        return NULL;
    }
    s_reset(d);
    return d;
}

void kvf_detok_destroy(kvf_detok_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_detok_t *d = *self_p;
    for (size_t i = 0; i < d->tok->n_tdec; i++) kvf_tok_buf_free(&d->ts[i].buf);
    for (size_t i = 0; i < d->tok->n_cdec; i++) kvf_tok_buf_free(&d->cs[i].buf);
    free(d->ts);
    free(d->cs);
    kvf_tok_ctx_fini(&d->ctx);
    kvf_tok_buf_free(&d->out);
    free(d);
    *self_p = NULL;
}

// ---------------------------------------------------------------- text stages (after the fuse point)

static void s_cpush(kvf_detok_t *d, size_t j, const char *s, size_t len);

static void s_cflush(kvf_detok_t *d, size_t j) {
    const kvf_tokenizer_t *tok = d->tok;
    if (j == tok->n_cdec) return;
    s_stage_t *st = &d->cs[j];
    switch (tok->cdec[j].kind) {
    case KVF_TOK_D_STRIP:  // what is held is the trailing run: cut
        st->buf.n = 0;
        st->held = 0;
        break;
    case KVF_TOK_D_REPLACE:
        if (st->buf.n) {
            kvf_tok_buf_t t = st->buf;
            st->buf = (kvf_tok_buf_t){0};
            s_cpush(d, j + 1, t.p, t.n);
            kvf_tok_buf_free(&t);
        }
        break;
    default:
        break;
    }
    s_cflush(d, j + 1);
}

static void s_cpush(kvf_detok_t *d, size_t j, const char *s, size_t len) {
    const kvf_tokenizer_t *tok = d->tok;
    if (len == 0) return;
    if (j == tok->n_cdec) {
        kvf_tok_buf_put(&d->out, s, len);
        return;
    }
    const kvf_tok_dec_t *dc = &tok->cdec[j];
    s_stage_t *st = &d->cs[j];
    kvf_tok_buf_t o = {0};
    switch (dc->kind) {
    case KVF_TOK_D_STRIP:
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t cl = kvf_tok_utf8_next(s + i, len - i, &cp);
            const char *ch = s + i;
            i += cl;
            if (st->start_left > 0) {
                if (cp == dc->strip_cp) {
                    st->start_left--;
                    continue;
                }
                st->start_left = 0;
            }
            if (dc->stop > 0) {
                if (cp == dc->strip_cp) {
                    kvf_tok_buf_put(&st->buf, ch, cl);
                    if (++st->held > dc->stop) {  // the oldest held one is no longer trailing
                        size_t l0 = kvf_tok_utf8_next(st->buf.p, st->buf.n, NULL);
                        kvf_tok_buf_put(&o, st->buf.p, l0);
                        memmove(st->buf.p, st->buf.p + l0, st->buf.n - l0);
                        st->buf.n -= l0;
                        st->held--;
                    }
                    continue;
                }
                kvf_tok_buf_put(&o, st->buf.p, st->buf.n);
                st->buf.n = 0;
                st->held = 0;
            }
            kvf_tok_buf_put(&o, ch, cl);
        }
        break;
    case KVF_TOK_D_REPLACE: {
        kvf_tok_buf_put(&st->buf, s, len);
        const char *p = st->buf.p;
        size_t n = st->buf.n, pos = 0;
        for (;;) {
            const char *hit = dc->pat_len ? memmem(p + pos, n - pos, dc->pat, dc->pat_len) : NULL;
            if (!hit) break;
            size_t at = (size_t)(hit - p);
            kvf_tok_buf_put(&o, p + pos, at - pos);
            kvf_tok_buf_put(&o, dc->content, dc->content_len);
            pos = at + dc->pat_len;
        }
        // hold back the earliest suffix that could still grow into a match
        size_t keep = n;
        for (size_t q = pos; q < n; q++)
            if (n - q < dc->pat_len && memcmp(p + q, dc->pat, n - q) == 0) {
                keep = q;
                break;
            }
        kvf_tok_buf_put(&o, p + pos, keep - pos);
        memmove(st->buf.p, p + keep, n - keep);
        st->buf.n = n - keep;
        break;
    }
    case KVF_TOK_D_METASPACE:
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t cl = kvf_tok_utf8_next(s + i, len - i, &cp);
            if (cp != dc->repl_cp) kvf_tok_buf_put(&o, s + i, cl);
            else if (!dc->strip_first) kvf_tok_buf_putc(&o, ' ');
            i += cl;
        }
        break;
    default:  // rejected at load
        kvf_tok_buf_put(&o, s, len);
        break;
    }
    s_cpush(d, j + 1, o.p, o.n);
    kvf_tok_buf_free(&o);
}

// ---------------------------------------------------------------- the fuse point

// Lossy UTF-8 over a byte stream: complete characters out, U+FFFD per maximal invalid subpart.
static void s_u8_feed(kvf_detok_t *d, uint8_t b, kvf_tok_buf_t *o) {
    for (;;) {
        if (d->pn == 0) {
            if (b < 0x80) {
                kvf_tok_buf_putc(o, (char)b);
                return;
            }
            if (b >= 0xC2 && b <= 0xDF) d->need = 2;
            else if (b >= 0xE0 && b <= 0xEF) d->need = 3;
            else if (b >= 0xF0 && b <= 0xF4) d->need = 4;
            else {
                kvf_tok_buf_put(o, s_fffd, 3);
                return;
            }
            d->pend[d->pn++] = b;
            return;
        }
        uint8_t lo = 0x80, hi = 0xBF;
        if (d->pn == 1) {
            if (d->pend[0] == 0xE0) lo = 0xA0;
            if (d->pend[0] == 0xED) hi = 0x9F;
            if (d->pend[0] == 0xF0) lo = 0x90;
            if (d->pend[0] == 0xF4) hi = 0x8F;
        }
        if (b >= lo && b <= hi) {
            d->pend[d->pn++] = b;
            if (d->pn == d->need) {
                kvf_tok_buf_put(o, d->pend, (size_t)d->pn);
                d->pn = 0;
            }
            return;
        }
        kvf_tok_buf_put(o, s_fffd, 3);
        d->pn = 0;  // and b starts afresh
    }
}

static void s_fuse_push(kvf_detok_t *d, const char *s, size_t len) {
    const kvf_tokenizer_t *tok = d->tok;
    size_t idx = d->n_fused++;
    switch (tok->fuse) {
    case KVF_TOK_FUSE_SPACE:
        if (idx > 0) s_cpush(d, 0, " ", 1);
        s_cpush(d, 0, s, len);
        break;
    case KVF_TOK_FUSE_BYTELEVEL: {
        // a token with a character outside the byte map keeps its own bytes (as HF)
        int mapped = 1;
        for (size_t i = 0; i < len && mapped;) {
            uint32_t cp;
            i += kvf_tok_utf8_next(s + i, len - i, &cp);
            mapped = kvf_tok_cp_to_byte(cp) >= 0;
        }
        kvf_tok_buf_t o = {0};
        if (mapped) {
            for (size_t i = 0; i < len;) {
                uint32_t cp;
                i += kvf_tok_utf8_next(s + i, len - i, &cp);
                s_u8_feed(d, (uint8_t)kvf_tok_cp_to_byte(cp), &o);
            }
        } else {
            for (size_t i = 0; i < len; i++) s_u8_feed(d, (uint8_t)s[i], &o);
        }
        s_cpush(d, 0, o.p, o.n);
        kvf_tok_buf_free(&o);
        break;
    }
    default:
        s_cpush(d, 0, s, len);
        break;
    }
}

static void s_fuse_flush(kvf_detok_t *d) {
    if (d->pn) {  // an incomplete character at the very end
        d->pn = 0;
        s_cpush(d, 0, s_fffd, 3);
    }
    s_cflush(d, 0);
}

// ---------------------------------------------------------------- token stages

static int s_tpush(kvf_detok_t *d, size_t i, const char *s, size_t len);

static int s_hex(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int s_bf_flush(kvf_detok_t *d, size_t i) {
    s_stage_t *st = &d->ts[i];  // later stages never touch this one's buffer
    int rc = 0;
    if (!st->buf.n) return 0;
    if (kvf_tok_utf8_check(st->buf.p, st->buf.n) == st->buf.n) {
        rc = s_tpush(d, i + 1, st->buf.p, st->buf.n);
    } else {
        for (size_t k = 0; k < st->buf.n && rc == 0; k++) rc = s_tpush(d, i + 1, s_fffd, 3);
    }
    st->buf.n = 0;
    return rc;
}

static int s_tpush(kvf_detok_t *d, size_t i, const char *s, size_t len) {
    const kvf_tokenizer_t *tok = d->tok;
    if (i == tok->n_tdec) {
        s_fuse_push(d, s, len);
        return 0;
    }
    const kvf_tok_dec_t *dc = &tok->tdec[i];
    s_stage_t *st = &d->ts[i];
    size_t idx = st->count++;
    kvf_tok_buf_t o = {0};
    int rc = 0;
    switch (dc->kind) {
    case KVF_TOK_D_REPLACE:
        rc = kvf_tok_replace_all(&d->ctx, dc->re, dc->content, dc->content_len, s, len, &o);
        if (rc == 0) rc = s_tpush(d, i + 1, o.p ? o.p : "", o.n);
        break;
    case KVF_TOK_D_BYTEFALLBACK:
        if (len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && s_hex(s[3]) >= 0 && s_hex(s[4]) >= 0) {
            kvf_tok_buf_putc(&st->buf, (char)(s_hex(s[3]) * 16 + s_hex(s[4])));
            break;
        }
        rc = s_bf_flush(d, i);
        if (rc == 0) rc = s_tpush(d, i + 1, s, len);
        break;
    case KVF_TOK_D_STRIP: {
        size_t a = 0, b = len;
        for (size_t k = 0; k < dc->start && a < len; k++) {
            uint32_t cp;
            size_t cl = kvf_tok_utf8_next(s + a, len - a, &cp);
            if (cp != dc->strip_cp) break;
            a += cl;
        }
        for (size_t k = 0; k < dc->stop && b > a; k++) {
            size_t last = kvf_tok_utf8_last(s, b);
            uint32_t cp;
            kvf_tok_utf8_next(s + last, b - last, &cp);
            if (cp != dc->strip_cp || last < a) break;
            b = last;
        }
        rc = s_tpush(d, i + 1, s + a, b - a);
        break;
    }
    case KVF_TOK_D_METASPACE:
        for (size_t k = 0; k < len;) {
            uint32_t cp;
            size_t cl = kvf_tok_utf8_next(s + k, len - k, &cp);
            if (cp != dc->repl_cp) kvf_tok_buf_put(&o, s + k, cl);
            else if (!(idx == 0 && dc->strip_first)) kvf_tok_buf_putc(&o, ' ');
            k += cl;
        }
        rc = s_tpush(d, i + 1, o.p ? o.p : "", o.n);
        break;
    }
    kvf_tok_buf_free(&o);
    return rc;
}

static int s_tflush(kvf_detok_t *d, size_t i) {
    if (i == d->tok->n_tdec) {
        s_fuse_flush(d);
        return 0;
    }
    if (d->tok->tdec[i].kind == KVF_TOK_D_BYTEFALLBACK && s_bf_flush(d, i) != 0) return -1;
    return s_tflush(d, i + 1);
}

// ---------------------------------------------------------------- API

static int s_push_id(kvf_detok_t *d, int32_t id) {
    const kvf_tokenizer_t *tok = d->tok;
    if (id < 0 || id >= tok->vocab_size || !tok->id_str[id]) return -1;
    return s_tpush(d, 0, tok->id_str[id], tok->id_len[id]);
}

const char *kvf_detok_push(kvf_detok_t *d, int32_t id) {
    if (!d) return NULL;
    d->out.n = 0;
    if (s_push_id(d, id) != 0) return NULL;
    return kvf_tok_buf_cstr(&d->out);
}

const char *kvf_detok_flush(kvf_detok_t *d) {
    if (!d) return NULL;
    d->out.n = 0;
    int rc = s_tflush(d, 0);
    s_reset(d);
    return rc == 0 ? kvf_tok_buf_cstr(&d->out) : NULL;
}

int kvf_tokenizer_decode(const kvf_tokenizer_t *tok, const int32_t *ids, size_t n, char **text, kvf_err_t *err) {
    *text = NULL;
    if (!tok) return kvf_err_set(err, KVF_E_INVAL, "tokenizer: decode without a tokenizer");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tok->vocab_size || !tok->id_str[ids[i]])
            return kvf_err_set(err, KVF_E_INVAL, "tokenizer: id %d at position %zu is out of range [0, %d) or has no token",
                               (int)ids[i], i, (int)tok->vocab_size);
    kvf_detok_t *d = kvf_detok_new(tok);
    if (!d) return kvf_err_set(err, KVF_E_NOMEM, "tokenizer: out of memory");
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) rc = s_push_id(d, ids[i]);
    if (rc == 0) rc = s_tflush(d, 0);
    if (rc != 0) {
        kvf_err_set(err, KVF_E_INTERNAL, "tokenizer: decode failed: %s", d->err.msg);
        kvf_detok_destroy(&d);
        return -1;
    }
    kvf_tok_buf_cstr(&d->out);
    *text = d->out.p;
    d->out = (kvf_tok_buf_t){0};
    kvf_detok_destroy(&d);
    return 0;
}
