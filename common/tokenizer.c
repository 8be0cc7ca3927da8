// common/tokenizer.c — see tokenizer.h. Loading tokenizer.json into the
// structures of tokenizer_int.h, encoding, lookups.
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "tokenizer_int.h"

// ---------------------------------------------------------------- JSON helpers

// The string at key (length in *len), or NULL when absent or not a string.
static const char *s_jstr(const json_t *o, const char *key, size_t *len) {
    const json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return NULL;
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

static int s_jbool(const json_t *o, const char *key, int dflt) {
    const json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static const char *s_type(const json_t *o) {
    const char *t = s_jstr(o, "type", NULL);
    return t ? t : "";
}

// A {"String": s} or {"Regex": r} pattern, compiled.
static pcre2_code *s_pattern(const json_t *pat, const char *what, char **lit, size_t *lit_len,
                             kvf_tok_arena_t **arena, kvf_err_t *err) {
    size_t len;
    const char *s = s_jstr(pat, "String", &len);
    if (s) {
        if (lit) {
            *lit = kvf_tok_arena_dup(arena, s, len);
            *lit_len = len;
        }
        return kvf_tok_re_compile(s, len, 1, err);
    }
    s = s_jstr(pat, "Regex", &len);
    if (s) {
        if (lit) *lit = NULL;
        return kvf_tok_re_compile(s, len, 0, err);
    }
    kvf_err_set(err, KVF_E_FORMAT, "tokenizer: %s has no String or Regex pattern", what);
    return NULL;
}

// The first character of s as a code point (for Strip and Metaspace), or -1.
static int64_t s_one_char(const char *s, size_t len) {
    if (!s || !len) return -1;
    uint32_t cp;
    size_t cl = kvf_tok_utf8_next(s, len, &cp);
    return cl == len ? (int64_t)cp : -1;
}

// ---------------------------------------------------------------- model

static int s_load_bpe(kvf_tokenizer_t *tok, const json_t *model, int32_t *max_id, kvf_err_t *err) {
    kvf_tok_bpe_t *m = &tok->bpe;
    const char *type = s_jstr(model, "type", NULL);
    if (!json_is_object(model))
        return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: no model object");
    if (type && strcmp(type, "BPE") != 0)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: model type '%s' is not supported (only BPE)", type);
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: BPE model needs a vocab object and a merges array");
    if (json_is_number(json_object_get(model, "dropout")) && json_number_value(json_object_get(model, "dropout")) > 0)
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: BPE dropout is not supported");

    kvf_tok_strmap_init(&m->vocab, json_object_size(vocab));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= INT32_MAX)
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: vocab entry '%.64s' has a bad id", key);
        size_t kl = strlen(key);  // jansson object keys are NUL-terminated
        char *k = kvf_tok_arena_dup(&tok->arena, key, kl);
        int32_t id = (int32_t)json_integer_value(val);
        kvf_tok_strmap_put(&m->vocab, k, kl, id);
        if (id > *max_id) *max_id = id;
    }

    size_t plen = 0, slen = 0;
    const char *prefix = s_jstr(model, "continuing_subword_prefix", &plen);
    const char *suffix = s_jstr(model, "end_of_word_suffix", &slen);
    m->prefix = prefix ? kvf_tok_arena_dup(&tok->arena, prefix, plen) : NULL;
    m->prefix_len = plen;
    m->suffix = suffix ? kvf_tok_arena_dup(&tok->arena, suffix, slen) : NULL;
    m->suffix_len = slen;

    kvf_tok_pairmap_init(&m->merges, json_array_size(merges));
    kvf_tok_buf_t joined = {0};
    for (size_t i = 0; i < json_array_size(merges); i++) {
        const json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(e)) {
            a = json_string_value(e);
            size_t n = json_string_length(e);
            const char *sp = memchr(a, ' ', n);
            if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - a))) {
                kvf_tok_buf_free(&joined);
                return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: merge %zu '%.64s' is not two tokens", i, a);
            }
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = n - al - 1;
        } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            al = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
            bl = json_string_length(json_array_get(e, 1));
        } else {
            kvf_tok_buf_free(&joined);
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: merge %zu is neither \"a b\" nor [a, b]", i);
        }
        int32_t ia = kvf_tok_strmap_get(&m->vocab, a, al), ib = kvf_tok_strmap_get(&m->vocab, b, bl);
        if (ia < 0 || ib < 0) {
            kvf_tok_buf_free(&joined);
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: merge %zu uses '%.*s' which is not in the vocab", i,
                               (int)(ia < 0 ? (al > 64 ? 64 : al) : (bl > 64 ? 64 : bl)), ia < 0 ? a : b);
        }
        size_t cut = m->prefix && bl >= plen ? plen : 0;
        joined.n = 0;
        kvf_tok_buf_put(&joined, a, al);
        kvf_tok_buf_put(&joined, b + cut, bl - cut);
        int32_t nid = kvf_tok_strmap_get(&m->vocab, joined.p, joined.n);
        if (nid < 0) {
            kvf_tok_buf_free(&joined);
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: merge %zu gives '%.*s' which is not in the vocab", i,
                               (int)(joined.n > 64 ? 64 : joined.n), joined.p);
        }
        kvf_tok_pairmap_put(&m->merges, ia, ib, (uint32_t)i, nid);
    }
    kvf_tok_buf_free(&joined);

    m->byte_fallback = s_jbool(model, "byte_fallback", 0);
    m->fuse_unk = s_jbool(model, "fuse_unk", 0);
    m->ignore_merges = s_jbool(model, "ignore_merges", 0);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = kvf_tok_strmap_get(&m->vocab, name, 6);
    }
    size_t ul;
    const char *unk = s_jstr(model, "unk_token", &ul);
    m->unk_id = -1;
    if (unk) {
        m->unk_id = kvf_tok_strmap_get(&m->vocab, unk, ul);
        if (m->unk_id < 0) m->unk_id = -2;  // an error only when a word needs it, as HF
    }
    return 0;
}

// ---------------------------------------------------------------- added tokens

static int s_load_added(kvf_tokenizer_t *tok, const json_t *arr, int32_t *max_id, kvf_err_t *err) {
    size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
    tok->added = kvf_xcalloc(n + 1, sizeof *tok->added);
    kvf_tok_strmap_init(&tok->added_map, n + 1);
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(arr, i);
        size_t len;
        const char *content = s_jstr(o, "content", &len);
        const json_t *id = json_object_get(o, "id");
        if (!content || !json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= INT32_MAX)
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: added_tokens[%zu] needs a content and an id", i);
        if (len == 0) continue;  // an empty token can never match
        kvf_tok_added_t *a = &tok->added[tok->n_added++];
        a->id = (int32_t)json_integer_value(id);
        a->content = kvf_tok_arena_dup(&tok->arena, content, len);
        a->len = len;
        a->special = s_jbool(o, "special", 0);
        a->single_word = s_jbool(o, "single_word", 0);
        a->lstrip = s_jbool(o, "lstrip", 0);
        a->rstrip = s_jbool(o, "rstrip", 0);
        a->normalized = s_jbool(o, "normalized", !a->special);
        kvf_tok_strmap_put(&tok->added_map, a->content, len, a->id);
        if (a->id > *max_id) *max_id = a->id;
    }
    return 0;
}

// Buckets a set's tokens by first byte.
static void s_build_set(kvf_tokenizer_t *tok, kvf_tok_addset_t *set, int normalized) {
    set->use_norm = normalized;
    set->idx = kvf_xcalloc(tok->n_added + 1, sizeof *set->idx);
    uint32_t count[256] = {0};
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized && (normalized ? tok->added[i].norm_len : tok->added[i].len))
            count[(uint8_t)(normalized ? tok->added[i].norm[0] : tok->added[i].content[0])]++;
    set->first[0] = 0;
    for (int b = 0; b < 256; b++) set->first[b + 1] = set->first[b] + count[b];
    uint32_t fill[256];
    memcpy(fill, set->first, sizeof fill);
    for (size_t i = 0; i < tok->n_added; i++) {
        const kvf_tok_added_t *a = &tok->added[i];
        if (a->normalized != normalized || !(normalized ? a->norm_len : a->len)) continue;
        set->idx[fill[(uint8_t)(normalized ? a->norm[0] : a->content[0])]++] = (int32_t)i;
    }
    set->n = set->first[256];
}

// ---------------------------------------------------------------- normalizer

static int s_load_norm(kvf_tokenizer_t *tok, const json_t *o, size_t *cap, kvf_err_t *err) {
    if (json_is_null(o) || !o) return 0;
    const char *t = s_type(o);
    if (strcmp(t, "Sequence") == 0) {
        const json_t *arr = json_object_get(o, "normalizers");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (s_load_norm(tok, json_array_get(arr, i), cap, err) != 0) return -1;
        return 0;
    }
    if (tok->n_norm == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        tok->norm = kvf_xrealloc(tok->norm, *cap * sizeof *tok->norm);
    }
    kvf_tok_norm_t nz = {0};
    size_t len;
    const char *s;
    if (strcmp(t, "Prepend") == 0) {
        if (!(s = s_jstr(o, "prepend", &len)))
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: Prepend normalizer without 'prepend'");
        nz.kind = KVF_TOK_N_PREPEND;
        nz.s = kvf_tok_arena_dup(&tok->arena, s, len);
        nz.s_len = len;
    } else if (strcmp(t, "Replace") == 0) {
        if (!(s = s_jstr(o, "content", &len)))
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: Replace normalizer without 'content'");
        nz.kind = KVF_TOK_N_REPLACE;
        nz.s = kvf_tok_arena_dup(&tok->arena, s, len);
        nz.s_len = len;
        nz.re = s_pattern(json_object_get(o, "pattern"), "Replace normalizer", NULL, NULL, &tok->arena, err);
        if (!nz.re) return -1;
    } else if (strcmp(t, "NFC") == 0) nz.kind = KVF_TOK_N_NFC;
    else if (strcmp(t, "NFD") == 0) nz.kind = KVF_TOK_N_NFD;
    else if (strcmp(t, "NFKC") == 0) nz.kind = KVF_TOK_N_NFKC;
    else if (strcmp(t, "NFKD") == 0) nz.kind = KVF_TOK_N_NFKD;
    else if (strcmp(t, "Lowercase") == 0) nz.kind = KVF_TOK_N_LOWERCASE;
    else if (strcmp(t, "Strip") == 0) {
        nz.kind = KVF_TOK_N_STRIP;
        nz.left = s_jbool(o, "strip_left", 1);
        nz.right = s_jbool(o, "strip_right", 1);
    } else
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: normalizer '%s' is not supported", t);
    tok->norm[tok->n_norm++] = nz;
    return 0;
}

// ---------------------------------------------------------------- pre-tokenizer

static int s_behavior(const json_t *o, kvf_tok_split_behavior *b, kvf_err_t *err) {
    const char *s = s_jstr(o, "behavior", NULL);
    if (!s) return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: pre-tokenizer without 'behavior'");
    static const struct {
        const char *name;
        kvf_tok_split_behavior b;
    } names[] = {{"Removed", KVF_TOK_SPLIT_REMOVED},         {"Isolated", KVF_TOK_SPLIT_ISOLATED},
                 {"MergedWithPrevious", KVF_TOK_SPLIT_MERGED_PREV}, {"MergedWithNext", KVF_TOK_SPLIT_MERGED_NEXT},
                 {"Contiguous", KVF_TOK_SPLIT_CONTIGUOUS}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *b = names[i].b;
            return 0;
        }
    return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: split behavior '%s' is not supported", s);
}

static int s_scheme(const json_t *o, kvf_tok_prepend *p, kvf_err_t *err) {
    const char *s = s_jstr(o, "prepend_scheme", NULL);
    if (!s) {  // older files: add_prefix_space
        *p = s_jbool(o, "add_prefix_space", 1) ? KVF_TOK_PREPEND_ALWAYS : KVF_TOK_PREPEND_NEVER;
        return 0;
    }
    if (strcmp(s, "always") == 0) *p = KVF_TOK_PREPEND_ALWAYS;
    else if (strcmp(s, "first") == 0) *p = KVF_TOK_PREPEND_FIRST;
    else if (strcmp(s, "never") == 0) *p = KVF_TOK_PREPEND_NEVER;
    else return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: Metaspace prepend_scheme '%s' is not supported", s);
    return 0;
}

static const char s_gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int s_load_pre(kvf_tokenizer_t *tok, const json_t *o, size_t *cap, kvf_err_t *err) {
    if (json_is_null(o) || !o) return 0;
    const char *t = s_type(o);
    if (strcmp(t, "Sequence") == 0) {
        const json_t *arr = json_object_get(o, "pretokenizers");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (s_load_pre(tok, json_array_get(arr, i), cap, err) != 0) return -1;
        return 0;
    }
    if (tok->n_pre == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        tok->pre = kvf_xrealloc(tok->pre, *cap * sizeof *tok->pre);
    }
    kvf_tok_pre_t p = {0};
    const char *re = NULL;
    if (strcmp(t, "Split") == 0) {
        p.kind = KVF_TOK_P_SPLIT;
        if (s_behavior(o, &p.behavior, err) != 0) return -1;
        p.invert = s_jbool(o, "invert", 0);
        if (!(p.re = s_pattern(json_object_get(o, "pattern"), "Split", NULL, NULL, &tok->arena, err))) return -1;
    } else if (strcmp(t, "ByteLevel") == 0) {
        p.kind = KVF_TOK_P_BYTELEVEL;
        p.add_prefix_space = s_jbool(o, "add_prefix_space", 1);
        if (s_jbool(o, "use_regex", 1)) re = s_gpt2_re;
    } else if (strcmp(t, "Metaspace") == 0) {
        p.kind = KVF_TOK_P_METASPACE;
        size_t len;
        const char *r = s_jstr(o, "replacement", &len);
        if (!r) r = s_jstr(o, "str_rep", &len);
        if (s_one_char(r, len) < 0)
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: Metaspace replacement must be one character");
        memcpy(p.repl, r, len);
        p.repl_len = len;
        if (s_scheme(o, &p.scheme, err) != 0) return -1;
        if (s_jbool(o, "split", 1) && !(p.re = kvf_tok_re_compile(r, len, 1, err))) return -1;
    } else if (strcmp(t, "Digits") == 0) {
        p.kind = KVF_TOK_P_SPLIT;
        p.behavior = s_jbool(o, "individual_digits", 0) ? KVF_TOK_SPLIT_ISOLATED : KVF_TOK_SPLIT_CONTIGUOUS;
        re = "\\p{N}";
    } else if (strcmp(t, "Whitespace") == 0) {
        p.kind = KVF_TOK_P_SPLIT;
        p.behavior = KVF_TOK_SPLIT_REMOVED;
        p.invert = 1;
        re = "\\w+|[^\\w\\s]+";
    } else if (strcmp(t, "WhitespaceSplit") == 0) {
        p.kind = KVF_TOK_P_SPLIT;
        p.behavior = KVF_TOK_SPLIT_REMOVED;
        re = "\\s";
    } else if (strcmp(t, "Punctuation") == 0) {
        p.kind = KVF_TOK_P_SPLIT;
        p.behavior = KVF_TOK_SPLIT_ISOLATED;
        if (json_object_get(o, "behavior") && s_behavior(o, &p.behavior, err) != 0) return -1;
        re = "[\\p{P}!-/:-@\\[-`{-~]";
    } else
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: pre-tokenizer '%s' is not supported", t);
    if (re && !(p.re = kvf_tok_re_compile(re, strlen(re), 0, err))) return -1;
    tok->pre[tok->n_pre++] = p;
    return 0;
}

// ---------------------------------------------------------------- post-processor

static void s_ids_append(int32_t **v, size_t *n, const int32_t *add, size_t k, int front) {
    if (k == 0) return;
    *v = kvf_xrealloc(*v, (*n + k + 1) * sizeof **v);
    if (front) {
        memmove(*v + k, *v, *n * sizeof **v);
        memcpy(*v, add, k * sizeof **v);
    } else {
        memcpy(*v + *n, add, k * sizeof **v);
    }
    *n += k;
}

static int s_load_post(kvf_tokenizer_t *tok, const json_t *o, kvf_err_t *err) {
    if (json_is_null(o) || !o) return 0;
    const char *t = s_type(o);
    kvf_tok_post_t *pp = &tok->post;
    if (strcmp(t, "Sequence") == 0) {
        const json_t *arr = json_object_get(o, "processors");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (s_load_post(tok, json_array_get(arr, i), err) != 0) return -1;
        return 0;
    }
    if (strcmp(t, "ByteLevel") == 0) return 0;  // offsets only
    if (strcmp(t, "TemplateProcessing") == 0) {
        const json_t *single = json_object_get(o, "single");
        const json_t *specials = json_object_get(o, "special_tokens");
        if (!json_is_array(single))
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: TemplateProcessing without a 'single' template");
        int32_t *before = NULL, *after = NULL;
        size_t nb = 0, na = 0;
        int seen_a = 0;
        for (size_t i = 0; i < json_array_size(single); i++) {
            const json_t *item = json_array_get(single, i);
            const json_t *sp = json_object_get(item, "SpecialToken");
            const json_t *sq = json_object_get(item, "Sequence");
            if (sq) {
                const char *which = s_jstr(sq, "id", NULL);
                if (!which || strcmp(which, "A") != 0 || seen_a) {
                    free(before);
                    free(after);
                    return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: single template must use $A once");
                }
                seen_a = 1;
                continue;
            }
            const char *name = s_jstr(sp, "id", NULL);
            const json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
            if (!name || !json_is_array(ids)) {
                free(before);
                free(after);
                return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: template special token '%s' has no ids",
                                   name ? name : "?");
            }
            for (size_t k = 0; k < json_array_size(ids); k++) {
                int32_t id = (int32_t)json_integer_value(json_array_get(ids, k));
                if (seen_a) s_ids_append(&after, &na, &id, 1, 0);
                else s_ids_append(&before, &nb, &id, 1, 0);
            }
        }
        // composed with what came before: before_new + (before_old A after_old) + after_new
        s_ids_append(&pp->before, &pp->n_before, before, nb, 1);
        s_ids_append(&pp->after, &pp->n_after, after, na, 0);
        free(before);
        free(after);
        tok->has_post = 1;
        return 0;
    }
    if (strcmp(t, "RobertaProcessing") == 0 || strcmp(t, "BertProcessing") == 0) {
        const json_t *cls = json_object_get(o, "cls"), *sep = json_object_get(o, "sep");
        if (!json_is_integer(json_array_get(cls, 1)) || !json_is_integer(json_array_get(sep, 1)))
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: %s needs cls and sep", t);
        int32_t c = (int32_t)json_integer_value(json_array_get(cls, 1));
        int32_t s = (int32_t)json_integer_value(json_array_get(sep, 1));
        s_ids_append(&pp->before, &pp->n_before, &c, 1, 1);
        s_ids_append(&pp->after, &pp->n_after, &s, 1, 0);
        tok->has_post = 1;
        return 0;
    }
    return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: post-processor '%s' is not supported", t);
}

// ---------------------------------------------------------------- decoder

static int s_load_dec(kvf_tokenizer_t *tok, const json_t *o, int *fused, size_t *tcap, size_t *ccap,
                      kvf_err_t *err) {
    const char *t = s_type(o);
    if (strcmp(t, "Sequence") == 0) {
        const json_t *arr = json_object_get(o, "decoders");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (s_load_dec(tok, json_array_get(arr, i), fused, tcap, ccap, err) != 0) return -1;
        return 0;
    }
    if (strcmp(t, "Fuse") == 0 || strcmp(t, "ByteLevel") == 0) {
        if (*fused) {
            if (strcmp(t, "Fuse") == 0) return 0;  // one string already: nothing to fuse
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: decoder ByteLevel after Fuse is not supported");
        }
        *fused = 1;
        tok->fuse = strcmp(t, "Fuse") == 0 ? KVF_TOK_FUSE_FUSE : KVF_TOK_FUSE_BYTELEVEL;
        return 0;
    }
    kvf_tok_dec_t dc = {0};
    size_t len;
    const char *s;
    if (strcmp(t, "Replace") == 0) {
        dc.kind = KVF_TOK_D_REPLACE;
        if (!(s = s_jstr(o, "content", &len)))
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: Replace decoder without 'content'");
        dc.content = kvf_tok_arena_dup(&tok->arena, s, len);
        dc.content_len = len;
        dc.re = s_pattern(json_object_get(o, "pattern"), "Replace decoder", &dc.pat, &dc.pat_len, &tok->arena, err);
        if (!dc.re) return -1;
        if (*fused && !dc.pat)
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: regex Replace decoder after Fuse is not supported");
    } else if (strcmp(t, "ByteFallback") == 0) {
        if (*fused)
            return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: ByteFallback decoder after Fuse is not supported");
        dc.kind = KVF_TOK_D_BYTEFALLBACK;
    } else if (strcmp(t, "Strip") == 0) {
        dc.kind = KVF_TOK_D_STRIP;
        s = s_jstr(o, "content", &len);
        int64_t cp = s_one_char(s, s ? len : 0);
        if (cp < 0) return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: Strip decoder content must be one character");
        dc.strip_cp = (uint32_t)cp;
        const json_t *a = json_object_get(o, "start"), *b = json_object_get(o, "stop");
        dc.start = json_is_integer(a) && json_integer_value(a) > 0 ? (size_t)json_integer_value(a) : 0;
        dc.stop = json_is_integer(b) && json_integer_value(b) > 0 ? (size_t)json_integer_value(b) : 0;
    } else if (strcmp(t, "Metaspace") == 0) {
        dc.kind = KVF_TOK_D_METASPACE;
        s = s_jstr(o, "replacement", &len);
        if (!s) s = s_jstr(o, "str_rep", &len);
        int64_t cp = s_one_char(s, s ? len : 0);
        if (cp < 0) return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: Metaspace replacement must be one character");
        dc.repl_cp = (uint32_t)cp;
        kvf_tok_prepend sch;
        if (s_scheme(o, &sch, err) != 0) return -1;
        dc.strip_first = sch != KVF_TOK_PREPEND_NEVER;
    } else {
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "tokenizer: decoder '%s' is not supported", t);
    }
    kvf_tok_dec_t **arr = *fused ? &tok->cdec : &tok->tdec;
    size_t *n = *fused ? &tok->n_cdec : &tok->n_tdec;
    size_t *cap = *fused ? ccap : tcap;
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        *arr = kvf_xrealloc(*arr, *cap * sizeof **arr);
    }
    (*arr)[(*n)++] = dc;
    return 0;
}

// ---------------------------------------------------------------- load

static int s_load(kvf_tokenizer_t *tok, const json_t *root, kvf_err_t *err) {
    int32_t max_id = -1;
    if (s_load_bpe(tok, json_object_get(root, "model"), &max_id, err) != 0) return -1;
    if (s_load_added(tok, json_object_get(root, "added_tokens"), &max_id, err) != 0) return -1;
    size_t cap = 0;
    if (s_load_norm(tok, json_object_get(root, "normalizer"), &cap, err) != 0) return -1;
    cap = 0;
    if (s_load_pre(tok, json_object_get(root, "pre_tokenizer"), &cap, err) != 0) return -1;
    if (s_load_post(tok, json_object_get(root, "post_processor"), err) != 0) return -1;
    const json_t *dec = json_object_get(root, "decoder");
    if (!dec || json_is_null(dec)) {
        tok->fuse = KVF_TOK_FUSE_SPACE;
    } else {
        int fused = 0;
        size_t tcap = 0, ccap = 0;
        tok->fuse = KVF_TOK_FUSE_JOIN;
        if (s_load_dec(tok, dec, &fused, &tcap, &ccap, err) != 0) return -1;
    }
    if (!(tok->re_word = kvf_tok_re_compile("\\w", 2, 0, err))) return -1;

    tok->vocab_size = max_id + 1;
    const kvf_tok_post_t *pp = &tok->post;
    for (size_t i = 0; i < pp->n_before + pp->n_after; i++) {
        int32_t id = i < pp->n_before ? pp->before[i] : pp->after[i - pp->n_before];
        if (id < 0 || id >= tok->vocab_size)
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: post-processor id %d is not in the vocabulary", (int)id);
    }
    tok->id_str = kvf_xcalloc((size_t)tok->vocab_size + 1, sizeof *tok->id_str);
    tok->id_len = kvf_xcalloc((size_t)tok->vocab_size + 1, sizeof *tok->id_len);
    tok->is_special = kvf_xcalloc((size_t)tok->vocab_size + 1, 1);
    const kvf_tok_strmap_t *v = &tok->bpe.vocab;
    for (size_t i = 0; i < v->cap; i++)
        if (v->e[i].key && !tok->id_str[v->e[i].val]) {
            tok->id_str[v->e[i].val] = v->e[i].key;
            tok->id_len[v->e[i].val] = v->e[i].len;
        }
    for (size_t i = 0; i < tok->n_added; i++) {
        const kvf_tok_added_t *a = &tok->added[i];
        tok->id_str[a->id] = a->content;
        tok->id_len[a->id] = (uint32_t)a->len;
        tok->is_special[a->id] = (uint8_t)a->special;
    }
    // an id the post-processor adds must decode: in range (checked above) is not
    // enough when the vocabulary skips it (ids need not be dense)
    for (size_t i = 0; i < pp->n_before + pp->n_after; i++) {
        int32_t id = i < pp->n_before ? pp->before[i] : pp->after[i - pp->n_before];
        if (!tok->id_str[id])
            return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: post-processor id %d has no token in the vocabulary",
                               (int)id);
    }

    // normalized added tokens are matched in normalized text: normalize their content once
    kvf_tok_ctx_t c;
    if (kvf_tok_ctx_init(&c, err) != 0) return -1;
    kvf_tok_buf_t nb = {0};
    for (size_t i = 0; i < tok->n_added; i++) {
        kvf_tok_added_t *a = &tok->added[i];
        if (!a->normalized) continue;
        if (kvf_tok_normalize(tok, &c, a->content, a->len, &nb) != 0) {
            kvf_tok_buf_free(&nb);
            kvf_tok_ctx_fini(&c);
            return -1;
        }
        a->norm = kvf_tok_arena_dup(&tok->arena, nb.p ? nb.p : "", nb.n);
        a->norm_len = nb.n;
    }
    kvf_tok_buf_free(&nb);
    kvf_tok_ctx_fini(&c);
    s_build_set(tok, &tok->set_raw, 0);
    s_build_set(tok, &tok->set_norm, 1);
    return 0;
}

kvf_tokenizer_t *kvf_tokenizer_load(const char *path, kvf_err_t *err) {
    kvf_err_clear(err);
    if (!path) {
        kvf_err_set(err, KVF_E_INVAL, "tokenizer: no path");
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        kvf_err_set(err, KVF_E_IO, "tokenizer: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        kvf_err_set(err, KVF_E_IO, "tokenizer: %s is a directory, not a tokenizer.json", path);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadf(f, JSON_ALLOW_NUL, &je);
    fclose(f);
    if (!root) {
        kvf_err_set(err, KVF_E_FORMAT, "tokenizer: %s is not valid JSON (line %d, column %d): %s", path, je.line,
                    je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        kvf_err_set(err, KVF_E_FORMAT, "tokenizer: %s is not a JSON object", path);
        return NULL;
    }
    kvf_tokenizer_t *tok = kvf_xcalloc(1, sizeof *tok);
    int rc = s_load(tok, root, err);
    json_decref(root);
    if (rc != 0) {
        if (err && !strstr(err->msg, path)) {  // name the file in every message
            size_t used = strlen(err->msg);
            if (used + 4 < sizeof err->msg)
                snprintf(err->msg + used, sizeof err->msg - used, " (%s)", path);
        }
        kvf_tokenizer_destroy(&tok);
        return NULL;
    }
    return tok;
}

void kvf_tokenizer_destroy(kvf_tokenizer_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_tokenizer_t *tok = *self_p;
    kvf_tok_strmap_free(&tok->bpe.vocab);
    kvf_tok_pairmap_free(&tok->bpe.merges);
    kvf_tok_strmap_free(&tok->added_map);
    free(tok->added);
    free(tok->set_raw.idx);
    free(tok->set_norm.idx);
    for (size_t i = 0; i < tok->n_norm; i++) pcre2_code_free(tok->norm[i].re);
    free(tok->norm);
    for (size_t i = 0; i < tok->n_pre; i++) pcre2_code_free(tok->pre[i].re);
    free(tok->pre);
    for (size_t i = 0; i < tok->n_tdec; i++) pcre2_code_free(tok->tdec[i].re);
    free(tok->tdec);
    for (size_t i = 0; i < tok->n_cdec; i++) pcre2_code_free(tok->cdec[i].re);
    free(tok->cdec);
    free(tok->post.before);
    free(tok->post.after);
    pcre2_code_free(tok->re_word);
    free(tok->id_str);
    free(tok->id_len);
    free(tok->is_special);
    kvf_tok_arena_free(&tok->arena);
    free(tok);
    *self_p = NULL;
}

// ---------------------------------------------------------------- encode

static void s_push(int32_t **v, size_t *n, size_t *cap, int32_t id) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *v = kvf_xrealloc(*v, *cap * sizeof **v);
    }
    (*v)[(*n)++] = id;
}

// One span of text between added tokens: normalize, split normalized added
// tokens out, pre-tokenize, run the model.
static int s_encode_span(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len, int at_start,
                         int32_t **v, size_t *n, size_t *cap) {
    kvf_tok_buf_t norm = {0};
    kvf_tok_pieces_t sub = {0}, pre = {0};
    int rc = kvf_tok_normalize(tok, c, s, len, &norm);
    if (rc == 0 && norm.n > 0) kvf_tok_split_added(tok, c, &tok->set_norm, norm.p, norm.n, at_start, &sub);
    for (size_t i = 0; rc == 0 && i < sub.n; i++) {
        const kvf_tok_piece_t *p = &sub.v[i];
        if (p->id >= 0) {
            s_push(v, n, cap, p->id);
            continue;
        }
        rc = kvf_tok_pretokenize(tok, c, sub.text.p + p->off, p->len, p->at_start, &pre);
        for (size_t k = 0; rc == 0 && k < pre.n; k++)
            rc = kvf_tok_bpe_word(&tok->bpe, pre.text.p + pre.v[k].off, pre.v[k].len, v, n, cap, c->err);
    }
    kvf_tok_buf_free(&norm);
    kvf_tok_pieces_free(&sub);
    kvf_tok_pieces_free(&pre);
    return rc;
}

int kvf_tokenizer_encode(const kvf_tokenizer_t *tok, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n, kvf_err_t *err) {
    *ids = NULL;
    *n = 0;
    if (!tok) return kvf_err_set(err, KVF_E_INVAL, "tokenizer: encode without a tokenizer");
    if (!text && len) return kvf_err_set(err, KVF_E_INVAL, "tokenizer: NULL text");
    size_t bad = kvf_tok_utf8_check(text, len);
    if (bad != len) return kvf_err_set(err, KVF_E_INVAL, "tokenizer: text is not valid UTF-8 (byte %zu)", bad);
    kvf_tok_ctx_t c;
    if (kvf_tok_ctx_init(&c, err) != 0) return -1;

    int32_t *v = NULL;
    size_t nv = 0, cap = 0;
    if (add_special && tok->has_post)
        for (size_t i = 0; i < tok->post.n_before; i++) s_push(&v, &nv, &cap, tok->post.before[i]);
    kvf_tok_pieces_t segs = {0};
    kvf_tok_split_added(tok, &c, &tok->set_raw, text, len, 1, &segs);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < segs.n; i++) {
        const kvf_tok_piece_t *p = &segs.v[i];
        if (p->id >= 0) s_push(&v, &nv, &cap, p->id);
        else rc = s_encode_span(tok, &c, segs.text.p + p->off, p->len, p->at_start, &v, &nv, &cap);
    }
    if (add_special && tok->has_post)
        for (size_t i = 0; i < tok->post.n_after; i++) s_push(&v, &nv, &cap, tok->post.after[i]);
    kvf_tok_pieces_free(&segs);
    kvf_tok_ctx_fini(&c);
    if (rc != 0) {
        free(v);
        return -1;
    }
    *ids = v;
    *n = nv;
    return 0;
}

// ---------------------------------------------------------------- lookups

int32_t kvf_tokenizer_vocab_size(const kvf_tokenizer_t *tok) { return tok ? tok->vocab_size : 0; }

int32_t kvf_tokenizer_token_id(const kvf_tokenizer_t *tok, const char *token) {
    if (!tok || !token) return -1;
    size_t len = strlen(token);
    int32_t id = kvf_tok_strmap_get(&tok->added_map, token, len);
    return id >= 0 ? id : kvf_tok_strmap_get(&tok->bpe.vocab, token, len);
}

int kvf_tokenizer_is_special(const kvf_tokenizer_t *tok, int32_t id) {
    return tok && id >= 0 && id < tok->vocab_size && tok->is_special[id];
}
