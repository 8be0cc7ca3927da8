// common/tokenizer_int.h — internals shared by the tokenizer modules (not a public API).
//
//   tokenizer.c         load (tokenizer.json -> the structures below), encode, lookups
//   tokenizer_util.c    hash maps, byte buffers, UTF-8, GPT-2 byte map, regex helpers
//   tokenizer_text.c    added-token splitting, normalizers, pre-tokenizers
//   tokenizer_bpe.c     the BPE model: one pre-token -> ids
//   tokenizer_decode.c  decoders as a streaming pipeline; kvf_tokenizer_decode, kvf_detok_*
//
// Everything hanging off kvf_tokenizer_t is read-only after load, so encode and
// decode may run from many threads; per-call state (PCRE2 match data, JIT stack)
// lives in a kvf_tok_ctx_t on the caller's stack.
#ifndef KVF_TOKENIZER_INT_H
#define KVF_TOKENIZER_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tokenizer.h"

// ---------------------------------------------------------------- utilities

// A growable byte string (not NUL-terminated unless kvf_tok_buf_cstr is called).
typedef struct {
    char *p;
    size_t n, cap;
} kvf_tok_buf_t;

void kvf_tok_buf_put(kvf_tok_buf_t *b, const void *data, size_t len);
void kvf_tok_buf_putc(kvf_tok_buf_t *b, char c);
// Appends the UTF-8 encoding of code point cp.
void kvf_tok_buf_put_cp(kvf_tok_buf_t *b, uint32_t cp);
// NUL-terminates (not counted in n) and returns p.
char *kvf_tok_buf_cstr(kvf_tok_buf_t *b);
void kvf_tok_buf_free(kvf_tok_buf_t *b);

// Strings owned by the tokenizer, copied out of the JSON document.
typedef struct kvf_tok_arena_s kvf_tok_arena_t;
char *kvf_tok_arena_dup(kvf_tok_arena_t **a, const char *s, size_t len);
void kvf_tok_arena_free(kvf_tok_arena_t **a);

// string -> int32 (open addressing; keys are borrowed and must outlive the map).
typedef struct {
    const char *key;
    uint32_t len;
    int32_t val;
} kvf_tok_sent_t;
typedef struct {
    kvf_tok_sent_t *e;
    size_t cap, n;
} kvf_tok_strmap_t;

void kvf_tok_strmap_init(kvf_tok_strmap_t *m, size_t expect);
// Inserts or overwrites.
void kvf_tok_strmap_put(kvf_tok_strmap_t *m, const char *key, size_t len, int32_t val);
// The value, or -1.
int32_t kvf_tok_strmap_get(const kvf_tok_strmap_t *m, const char *key, size_t len);
void kvf_tok_strmap_free(kvf_tok_strmap_t *m);

// (left id, right id) -> (merge rank, merged id).
typedef struct {
    uint64_t key;
    uint32_t rank;
    int32_t new_id;  // -1: empty slot
} kvf_tok_pent_t;
typedef struct {
    kvf_tok_pent_t *e;
    size_t cap, n;
} kvf_tok_pairmap_t;

void kvf_tok_pairmap_init(kvf_tok_pairmap_t *m, size_t expect);
void kvf_tok_pairmap_put(kvf_tok_pairmap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
// The entry, or NULL.
const kvf_tok_pent_t *kvf_tok_pairmap_get(const kvf_tok_pairmap_t *m, int32_t a, int32_t b);
void kvf_tok_pairmap_free(kvf_tok_pairmap_t *m);

// UTF-8: the length of the character starting at s[0] (1 for a stray byte), and
// its code point. Assumes valid input (checked once at the API boundary).
size_t kvf_tok_utf8_next(const char *s, size_t len, uint32_t *cp);
// The byte offset where the last character of s[0..len) starts (0 when len == 0).
size_t kvf_tok_utf8_last(const char *s, size_t len);
// Offset of the first invalid byte (strict UTF-8, as Rust's str), or len when valid.
size_t kvf_tok_utf8_check(const char *s, size_t len);
// 1 for Unicode White_Space (Rust char::is_whitespace).
int kvf_tok_is_ws(uint32_t cp);

// The GPT-2 byte-to-unicode table and its inverse.
uint32_t kvf_tok_byte_to_cp(uint8_t b);
// The byte for a code point of the table, or -1.
int kvf_tok_cp_to_byte(uint32_t cp);

// Per-call state for PCRE2 (match data, JIT stack) and error reporting.
typedef struct {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
    kvf_err_t *err;
} kvf_tok_ctx_t;

int kvf_tok_ctx_init(kvf_tok_ctx_t *c, kvf_err_t *err);
void kvf_tok_ctx_fini(kvf_tok_ctx_t *c);

// Compiles pattern (UTF + UCP; literal when literal != 0), JIT where available.
// NULL with err set on a bad pattern.
pcre2_code *kvf_tok_re_compile(const char *pattern, size_t len, int literal, kvf_err_t *err);
// Finds the next match in s[0..len) at or after start. 1 found (*ms, *me set), 0 none, -1 error.
int kvf_tok_re_find(kvf_tok_ctx_t *c, const pcre2_code *re, const char *s, size_t len, size_t start,
                    size_t *ms, size_t *me);

// ---------------------------------------------------------------- components

typedef struct {
    int32_t id;
    char *content;          // raw content (arena)
    size_t len;
    char *norm;             // content after the normalizer, for normalized tokens (arena)
    size_t norm_len;
    int special, single_word, lstrip, rstrip, normalized;
} kvf_tok_added_t;

// A set of added tokens matched together, leftmost-longest (as aho-corasick).
typedef struct {
    int32_t *idx;           // indices into tok->added, by first byte below
    size_t n;
    uint32_t first[257];    // idx[first[b] .. first[b+1]) start with byte b
    int use_norm;           // match the normalized content
} kvf_tok_addset_t;

typedef enum {
    KVF_TOK_N_PREPEND,
    KVF_TOK_N_REPLACE,
    KVF_TOK_N_NFC,
    KVF_TOK_N_NFD,
    KVF_TOK_N_NFKC,
    KVF_TOK_N_NFKD,
    KVF_TOK_N_LOWERCASE,
    KVF_TOK_N_STRIP,
} kvf_tok_norm_kind;

typedef struct {
    kvf_tok_norm_kind kind;
    char *s;                // PREPEND: text; REPLACE: content
    size_t s_len;
    pcre2_code *re;         // REPLACE
    int left, right;        // STRIP
} kvf_tok_norm_t;

typedef enum {
    KVF_TOK_SPLIT_REMOVED,
    KVF_TOK_SPLIT_ISOLATED,
    KVF_TOK_SPLIT_MERGED_PREV,
    KVF_TOK_SPLIT_MERGED_NEXT,
    KVF_TOK_SPLIT_CONTIGUOUS,
} kvf_tok_split_behavior;

typedef enum {
    KVF_TOK_P_SPLIT,        // regex split (Split, Digits, Whitespace, WhitespaceSplit, Punctuation)
    KVF_TOK_P_BYTELEVEL,
    KVF_TOK_P_METASPACE,
} kvf_tok_pre_kind;

typedef enum { KVF_TOK_PREPEND_ALWAYS, KVF_TOK_PREPEND_FIRST, KVF_TOK_PREPEND_NEVER } kvf_tok_prepend;

typedef struct {
    kvf_tok_pre_kind kind;
    pcre2_code *re;         // SPLIT, BYTELEVEL (NULL: use_regex false), METASPACE (split on repl; NULL: no split)
    kvf_tok_split_behavior behavior;
    int invert;
    int add_prefix_space;   // BYTELEVEL
    char repl[8];           // METASPACE replacement (UTF-8)
    size_t repl_len;
    kvf_tok_prepend scheme; // METASPACE
} kvf_tok_pre_t;

// The BPE model.
typedef struct {
    kvf_tok_strmap_t vocab;
    kvf_tok_pairmap_t merges;
    int32_t unk_id;         // -1: none
    int byte_fallback, fuse_unk, ignore_merges;
    char *prefix;           // continuing_subword_prefix or NULL
    size_t prefix_len;
    char *suffix;           // end_of_word_suffix or NULL
    size_t suffix_len;
    int32_t byte_ids[256];  // id of "<0xNN>", -1 when absent
} kvf_tok_bpe_t;

typedef enum {
    KVF_TOK_D_REPLACE,
    KVF_TOK_D_BYTEFALLBACK,
    KVF_TOK_D_STRIP,
    KVF_TOK_D_METASPACE,
} kvf_tok_dec_kind;

typedef struct {
    kvf_tok_dec_kind kind;
    char *pat;              // REPLACE: literal pattern (NULL when regex)
    size_t pat_len;
    pcre2_code *re;         // REPLACE (token stage; literal or regex)
    char *content;          // REPLACE content
    size_t content_len;
    uint32_t strip_cp;      // STRIP
    size_t start, stop;     // STRIP
    uint32_t repl_cp;       // METASPACE
    int strip_first;        // METASPACE: prepend_scheme != never
} kvf_tok_dec_t;

// How the token list becomes one string (the first of Fuse / ByteLevel in the chain).
typedef enum {
    KVF_TOK_FUSE_JOIN,      // no fusing decoder: tokens joined with ""
    KVF_TOK_FUSE_SPACE,     // no decoder at all: tokens joined with " "
    KVF_TOK_FUSE_FUSE,
    KVF_TOK_FUSE_BYTELEVEL,
} kvf_tok_fuse_kind;

typedef struct {
    int32_t *before;        // ids before $A
    size_t n_before;
    int32_t *after;         // ids after $A
    size_t n_after;
} kvf_tok_post_t;

struct kvf_tokenizer_s {
    kvf_tok_arena_t *arena;
    kvf_tok_bpe_t bpe;
    int32_t vocab_size;
    const char **id_str;    // id -> token text (added tokens take precedence); NULL: hole
    uint32_t *id_len;

    kvf_tok_added_t *added;
    size_t n_added;
    kvf_tok_strmap_t added_map;   // content -> id
    uint8_t *is_special;          // by id
    kvf_tok_addset_t set_raw;     // normalized == false
    kvf_tok_addset_t set_norm;    // normalized == true

    kvf_tok_norm_t *norm;
    size_t n_norm;
    kvf_tok_pre_t *pre;
    size_t n_pre;
    kvf_tok_post_t post;
    int has_post;

    kvf_tok_dec_t *tdec;    // decoders applied to each token (before fusing)
    size_t n_tdec;
    kvf_tok_fuse_kind fuse;
    kvf_tok_dec_t *cdec;    // decoders applied to the fused text, streamed
    size_t n_cdec;

    pcre2_code *re_word;    // "\w" at the start: single_word checks
};

// ---------------------------------------------------------------- text pipeline

// A span of text in a pieces buffer; at_start: begins at offset 0 of the input text.
typedef struct {
    size_t off, len;
    int at_start;
    int32_t id;             // added-token id, or -1 for text
} kvf_tok_piece_t;

typedef struct {
    kvf_tok_buf_t text;
    kvf_tok_piece_t *v;
    size_t n, cap;
} kvf_tok_pieces_t;

void kvf_tok_pieces_add(kvf_tok_pieces_t *ps, const char *s, size_t len, int at_start, int32_t id);
void kvf_tok_pieces_free(kvf_tok_pieces_t *ps);

// Splits s on the tokens of set (HF's find_matches: leftmost-longest, then
// single_word / lstrip / rstrip), appending text spans (id -1) and token spans.
void kvf_tok_split_added(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const kvf_tok_addset_t *set,
                         const char *s, size_t len, int at_start, kvf_tok_pieces_t *out);
// Applies the normalizers to s; out receives the result. 0 or -1 (c->err set).
int kvf_tok_normalize(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len,
                      kvf_tok_buf_t *out);
// Appends s to out with every match of re replaced by content. 0 or -1.
int kvf_tok_replace_all(kvf_tok_ctx_t *c, const pcre2_code *re, const char *content, size_t clen,
                        const char *s, size_t len, kvf_tok_buf_t *out);
// Pre-tokenizes s into out (which is reset). 0 or -1.
int kvf_tok_pretokenize(const kvf_tokenizer_t *tok, kvf_tok_ctx_t *c, const char *s, size_t len,
                        int at_start, kvf_tok_pieces_t *out);

// ---------------------------------------------------------------- model

// Appends the ids of one pre-token. 0 or -1 (err set).
int kvf_tok_bpe_word(const kvf_tok_bpe_t *m, const char *w, size_t len, int32_t **ids, size_t *n,
                     size_t *cap, kvf_err_t *err);

#endif
