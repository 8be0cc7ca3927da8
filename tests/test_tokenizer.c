// tests/test_tokenizer.c — the tokenizer against Hugging Face golden data, small
// hand-made tokenizer.json files for the components the fixtures do not use,
// streaming decode, errors, threads, and the kvf-tokenize tool.
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/tokenizer.h"
#include "test_util.h"

// ---------------------------------------------------------------- helpers

static const char s_fffd[] = "\xEF\xBF\xBD";

static int s_valid_utf8(const char *s) {
    // jansson refuses invalid UTF-8: a cheap independent check
    json_t *j = json_string(s);
    int ok = j != NULL;
    json_decref(j);
    return ok;
}

static kvf_tokenizer_t *s_load_fixture(const char *rel) {
    char path[1024];
    KVF_FIXTURE_PATH(path, rel);
    kvf_err_t err;
    kvf_tokenizer_t *tok = kvf_tokenizer_load(path, &err);
    cr_assert_not_null(tok, "load %s: %s", path, err.msg);
    return tok;
}

static json_t *s_load_golden(const char *rel) {
    char path[1024];
    KVF_FIXTURE_PATH(path, rel);
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    cr_assert_not_null(g, "%s: %s", path, je.text);
    cr_assert(json_is_array(g));
    return g;
}

// Writes json text to a temporary file and loads it; NULL (err set) on failure.
static kvf_tokenizer_t *s_load_text(const char *text, kvf_err_t *err) {
    char path[] = "/tmp/kvf_tok_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    kvf_tokenizer_t *tok = kvf_tokenizer_load(path, err);
    unlink(path);
    return tok;
}

static kvf_tokenizer_t *s_must_load_text(const char *text) {
    kvf_err_t err;
    kvf_tokenizer_t *tok = s_load_text(text, &err);
    cr_assert_not_null(tok, "load: %s", err.msg);
    return tok;
}

static void s_assert_ids(const int32_t *got, size_t n, const int32_t *want, size_t wn, const char *what) {
    cr_assert_eq(n, wn, "%s: %zu ids, want %zu", what, n, wn);
    for (size_t i = 0; i < n; i++) cr_assert_eq(got[i], want[i], "%s: id[%zu] = %d, want %d", what, i, got[i], want[i]);
}

static void s_expect_encode(const kvf_tokenizer_t *tok, const char *text, int add_special, const int32_t *want,
                            size_t wn) {
    int32_t *ids;
    size_t n;
    kvf_err_t err;
    cr_assert_eq(kvf_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n, &err), 0, "%s", err.msg);
    s_assert_ids(ids, n, want, wn, text);
    free(ids);
}

static char *s_decode(const kvf_tokenizer_t *tok, const int32_t *ids, size_t n) {
    char *out;
    kvf_err_t err;
    cr_assert_eq(kvf_tokenizer_decode(tok, ids, n, &out, &err), 0, "%s", err.msg);
    return out;
}

// Streams ids one at a time; every piece must be whole UTF-8; returns the concatenation.
static char *s_stream(const kvf_tokenizer_t *tok, const int32_t *ids, size_t n) {
    kvf_detok_t *d = kvf_detok_new(tok);
    cr_assert_not_null(d);
    size_t cap = 64, len = 0;
    char *acc = malloc(cap);
    acc[0] = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *piece = i < n ? kvf_detok_push(d, ids[i]) : kvf_detok_flush(d);
        cr_assert_not_null(piece);
        cr_assert(s_valid_utf8(piece), "stream piece %zu is not whole UTF-8", i);
        size_t pl = strlen(piece);
        if (len + pl + 1 > cap) {
            while (len + pl + 1 > cap) cap *= 2;
            acc = realloc(acc, cap);
        }
        memcpy(acc + len, piece, pl + 1);
        len += pl;
    }
    kvf_detok_destroy(&d);
    cr_assert_null(d);
    return acc;
}

static int32_t *s_json_ids(const json_t *arr, size_t *n) {
    *n = json_array_size(arr);
    int32_t *v = malloc((*n + 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

// Every golden row: ids, ids with special tokens, decode, streaming decode.
static void s_check_golden(const char *tok_rel, const char *golden_rel) {
    kvf_tokenizer_t *tok = s_load_fixture(tok_rel);
    json_t *g = s_load_golden(golden_rel);
    cr_assert_gt(json_array_size(g), 0);
    size_t i;
    json_t *row;
    json_array_foreach(g, i, row) {
        const char *text = json_string_value(json_object_get(row, "text"));
        size_t text_len = json_string_length(json_object_get(row, "text"));
        const char *decoded = json_string_value(json_object_get(row, "decoded"));
        size_t wn, wsn;
        int32_t *want = s_json_ids(json_object_get(row, "ids"), &wn);
        int32_t *want_sp = s_json_ids(json_object_get(row, "ids_with_special"), &wsn);
        int32_t *ids;
        size_t n;
        kvf_err_t err;
        cr_assert_eq(kvf_tokenizer_encode(tok, text, text_len, 0, &ids, &n, &err), 0, "%s", err.msg);
        s_assert_ids(ids, n, want, wn, text);
        free(ids);
        cr_assert_eq(kvf_tokenizer_encode(tok, text, text_len, 1, &ids, &n, &err), 0, "%s", err.msg);
        s_assert_ids(ids, n, want_sp, wsn, text);
        free(ids);

        char *full = s_decode(tok, want, wn);
        cr_assert_str_eq(full, decoded, "row %zu decode", i);
        char *streamed = s_stream(tok, want, wn);
        cr_assert_str_eq(streamed, full, "row %zu streaming decode", i);
        free(full);
        free(streamed);
        full = s_decode(tok, want_sp, wsn);
        streamed = s_stream(tok, want_sp, wsn);
        cr_assert_str_eq(streamed, full, "row %zu streaming decode with special tokens", i);
        free(full);
        free(streamed);
        free(want);
        free(want_sp);
    }
    json_decref(g);
    kvf_tokenizer_destroy(&tok);
    cr_assert_null(tok);
}

// ---------------------------------------------------------------- golden data

Test(tokenizer, golden_tiny_llama_byte_level) {
    s_check_golden("tiny-llama/tokenizer.json", "tiny-llama/tokenizer_golden.json");
}

Test(tokenizer, golden_llama2_sentencepiece_style) {
    s_check_golden("tok-llama2/tokenizer.json", "tok-llama2/tokenizer_golden.json");
}

// sentencepiece itself agrees except where the text holds a special-token string
// (HF matches it as that token; sentencepiece spells it out).
Test(tokenizer, agrees_with_sentencepiece) {
    kvf_tokenizer_t *tok = s_load_fixture("tok-llama2/tokenizer.json");
    json_t *g = s_load_golden("tok-llama2/sentencepiece_golden.json");
    size_t i, compared = 0, differing = 0;
    json_t *row;
    json_array_foreach(g, i, row) {
        const char *text = json_string_value(json_object_get(row, "text"));
        size_t wn;
        int32_t *want = s_json_ids(json_object_get(row, "ids"), &wn);
        int32_t *ids;
        size_t n;
        kvf_err_t err;
        cr_assert_eq(kvf_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n, &err), 0, "%s", err.msg);
        int has_special = strstr(text, "<s>") || strstr(text, "</s>") || strstr(text, "<unk>");
        if (has_special) {
            differing++;
            int same = n == wn && memcmp(ids, want, n * sizeof *ids) == 0;
            cr_assert(!same, "special-token strings must be matched as tokens: %s", text);
        } else {
            s_assert_ids(ids, n, want, wn, text);
            compared++;
        }
        free(ids);
        free(want);
    }
    cr_assert_gt(compared, 10);
    cr_assert_eq(differing, 1);
    json_decref(g);
    kvf_tokenizer_destroy(&tok);
}

Test(tokenizer, lookups_and_specials) {
    kvf_tokenizer_t *tok = s_load_fixture("tok-llama2/tokenizer.json");
    cr_assert_eq(kvf_tokenizer_vocab_size(tok), 32000);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "<s>"), 1);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "</s>"), 2);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "▁Hello"), 15043);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "<0x0A>"), 13);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "no such token"), -1);
    cr_assert(kvf_tokenizer_is_special(tok, 1));
    cr_assert(!kvf_tokenizer_is_special(tok, 15043));
    cr_assert(!kvf_tokenizer_is_special(tok, 99999));
    kvf_tokenizer_destroy(&tok);

    tok = s_load_fixture("tiny-llama/tokenizer.json");
    cr_assert_eq(kvf_tokenizer_vocab_size(tok), 2048);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "<|begin_of_text|>"), 0);
    cr_assert_eq(kvf_tokenizer_token_id(tok, "<|end_of_text|>"), 1);
    cr_assert(kvf_tokenizer_is_special(tok, 1));
    // a special token in text is matched even without add_special, and round-trips
    const int32_t want[] = {1};
    s_expect_encode(tok, "<|end_of_text|>", 0, want, 1);
    kvf_tokenizer_destroy(&tok);
}

// ---------------------------------------------------------------- streaming details

Test(tokenizer, byte_level_partial_utf8) {
    kvf_tokenizer_t *tok = s_load_fixture("tiny-llama/tokenizer.json");
    int32_t *ids;
    size_t n;
    kvf_err_t err;
    const char *zh = "中";  // three bytes, three byte tokens in this small vocab
    cr_assert_eq(kvf_tokenizer_encode(tok, zh, strlen(zh), 0, &ids, &n, &err), 0);
    cr_assert_eq(n, 3);

    kvf_detok_t *d = kvf_detok_new(tok);
    cr_assert_str_eq(kvf_detok_push(d, ids[0]), "");
    cr_assert_str_eq(kvf_detok_push(d, ids[1]), "");
    cr_assert_str_eq(kvf_detok_push(d, ids[2]), "中");
    cr_assert_str_eq(kvf_detok_flush(d), "");
    // an incomplete character is held, then becomes one U+FFFD at the end
    cr_assert_str_eq(kvf_detok_push(d, ids[0]), "");
    cr_assert_str_eq(kvf_detok_push(d, ids[1]), "");
    cr_assert_str_eq(kvf_detok_flush(d), s_fffd);
    // ... or as soon as a byte shows it cannot complete
    cr_assert_str_eq(kvf_detok_push(d, ids[0]), "");
    const char *s = kvf_detok_push(d, ids[0]);
    cr_assert_str_eq(s, s_fffd);
    cr_assert_str_eq(kvf_detok_flush(d), s_fffd);
    cr_assert_null(kvf_detok_push(d, 2048));
    cr_assert_null(kvf_detok_push(d, -1));
    kvf_detok_destroy(&d);

    int32_t bad[] = {ids[1], ids[0], ids[1], ids[2]};  // stray continuation byte, then "中"
    char *full = s_decode(tok, bad, 4);
    char expect[16];
    snprintf(expect, sizeof expect, "%s中", s_fffd);
    cr_assert_str_eq(full, expect);
    char *streamed = s_stream(tok, bad, 4);
    cr_assert_str_eq(streamed, full);
    free(full);
    free(streamed);
    free(ids);
    kvf_tokenizer_destroy(&tok);
}

Test(tokenizer, byte_fallback_runs) {
    kvf_tokenizer_t *tok = s_load_fixture("tok-llama2/tokenizer.json");
    int32_t ci = kvf_tokenizer_token_id(tok, "<0xE8>"), c2 = kvf_tokenizer_token_id(tok, "<0xAF>"),
            c3 = kvf_tokenizer_token_id(tok, "<0x8D>"), hello = kvf_tokenizer_token_id(tok, "▁Hello");
    // "词" = E8 AF 8D: held until the run of byte tokens ends
    int32_t ok[] = {hello, ci, c2, c3, hello};
    kvf_detok_t *d = kvf_detok_new(tok);
    cr_assert_str_eq(kvf_detok_push(d, ok[0]), "Hello");
    cr_assert_str_eq(kvf_detok_push(d, ok[1]), "");
    cr_assert_str_eq(kvf_detok_push(d, ok[2]), "");
    cr_assert_str_eq(kvf_detok_push(d, ok[3]), "");
    cr_assert_str_eq(kvf_detok_push(d, ok[4]), "词 Hello");
    cr_assert_str_eq(kvf_detok_flush(d), "");
    kvf_detok_destroy(&d);
    // a run that is not valid UTF-8 as a whole: one U+FFFD per byte token (HF ByteFallback)
    int32_t broken[] = {ci, c2, hello};
    char *full = s_decode(tok, broken, 3);
    char expect[32];
    snprintf(expect, sizeof expect, "%s%s Hello", s_fffd, s_fffd);
    cr_assert_str_eq(full, expect);
    char *streamed = s_stream(tok, broken, 3);
    cr_assert_str_eq(streamed, full);
    free(full);
    free(streamed);
    // only the stream's first token loses its leading space
    int32_t two[] = {hello, hello};
    full = s_decode(tok, two, 2);
    cr_assert_str_eq(full, "Hello Hello");
    free(full);
    kvf_tokenizer_destroy(&tok);
}

// ---------------------------------------------------------------- long input

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void s_long_word(const char *tok_rel, int strip_leading) {
    kvf_tokenizer_t *tok = s_load_fixture(tok_rel);
    size_t len = 10000;
    char *text = malloc(len + 1);
    uint32_t x = 12345;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            text[i] = pass == 0 ? 'a' : (char)('a' + (x >> 16) % 26);
        }
        text[len] = 0;
        int32_t *ids;
        size_t n;
        kvf_err_t err;
        double t0 = s_now();
        cr_assert_eq(kvf_tokenizer_encode(tok, text, len, 0, &ids, &n, &err), 0, "%s", err.msg);
        double dt = s_now() - t0;
        cr_assert_lt(dt, 1.0, "a 10k-character word took %.2f s", dt);
        cr_assert_gt(n, 0);
        cr_assert_lt(n, len);
        char *back = s_decode(tok, ids, n);
        cr_assert_str_eq(back + (strip_leading && back[0] == ' '), text);
        free(back);
        free(ids);
    }
    free(text);
    kvf_tokenizer_destroy(&tok);
}

Test(tokenizer, long_word_byte_level) { s_long_word("tiny-llama/tokenizer.json", 0); }
Test(tokenizer, long_word_sentencepiece) { s_long_word("tok-llama2/tokenizer.json", 0); }

// ---------------------------------------------------------------- threads

typedef struct {
    const kvf_tokenizer_t *tok;
    json_t *golden;
    int failures;
} s_thread_arg_t;

static void *s_thread(void *p) {
    s_thread_arg_t *a = p;
    for (int rep = 0; rep < 20; rep++) {
        size_t i;
        json_t *row;
        json_array_foreach(a->golden, i, row) {
            const char *text = json_string_value(json_object_get(row, "text"));
            size_t wn;
            int32_t *want = s_json_ids(json_object_get(row, "ids"), &wn);
            int32_t *ids;
            size_t n;
            kvf_err_t err;
            if (kvf_tokenizer_encode(a->tok, text, strlen(text), 0, &ids, &n, &err) != 0 || n != wn ||
                (n && memcmp(ids, want, n * sizeof *ids) != 0))
                a->failures++;
            free(ids);
            free(want);
        }
    }
    return NULL;
}

Test(tokenizer, encode_from_two_threads) {
    kvf_tokenizer_t *tok = s_load_fixture("tiny-llama/tokenizer.json");
    json_t *g = s_load_golden("tiny-llama/tokenizer_golden.json");
    s_thread_arg_t a = {tok, g, 0}, b = {tok, g, 0};
    pthread_t ta, tb;
    cr_assert_eq(pthread_create(&ta, NULL, s_thread, &a), 0);
    cr_assert_eq(pthread_create(&tb, NULL, s_thread, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(a.failures + b.failures, 0);
    json_decref(g);
    kvf_tokenizer_destroy(&tok);
}

// ---------------------------------------------------------------- errors

Test(tokenizer, errors) {
    kvf_err_t err;
    cr_assert_null(kvf_tokenizer_load("/nonexistent/tokenizer.json", &err));
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert(strstr(err.msg, "/nonexistent/tokenizer.json"));

    cr_assert_null(s_load_text("{\"model\": {\"type\": \"BPE\", ", &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "JSON"), "%s", err.msg);

    cr_assert_null(s_load_text("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", &err));
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED);
    cr_assert(strstr(err.msg, "WordPiece"), "%s", err.msg);

    cr_assert_null(s_load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "merge"), "%s", err.msg);

    cr_assert_null(s_load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                               " \"normalizer\": {\"type\": \"Precompiled\"}}",
                               &err));
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED);
    cr_assert(strstr(err.msg, "Precompiled"), "%s", err.msg);

    cr_assert_null(s_load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                               " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"},"
                               " \"behavior\": \"Isolated\"}}",
                               &err));
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED);
    cr_assert(strstr(err.msg, "regex"), "%s", err.msg);

    // a post-processor id inside the id range that the vocabulary skips (found by fuzz_tokenizer:
    // encode with specials emitted an id that decode then refused)
    cr_assert_null(s_load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1, \"b\": 2}, \"merges\": []},"
                               " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\":"
                               " {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
                               " \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [0], \"tokens\": [\"<s>\"]}}}}",
                               &err));
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "post-processor id 0 has no token"), "%s", err.msg);

    kvf_tokenizer_t *tok = s_load_fixture("tiny-llama/tokenizer.json");
    int32_t ids[] = {41, 2048};
    char *text = (char *)1;
    cr_assert_eq(kvf_tokenizer_decode(tok, ids, 2, &text, &err), -1);
    cr_assert_null(text);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert(strstr(err.msg, "2048"), "%s", err.msg);
    ids[1] = -5;
    cr_assert_eq(kvf_tokenizer_decode(tok, ids, 2, &text, &err), -1);

    int32_t *out;
    size_t n;
    cr_assert_eq(kvf_tokenizer_encode(tok, "ab\xC3(", 4, 0, &out, &n, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert(strstr(err.msg, "UTF-8"), "%s", err.msg);
    cr_assert_eq(kvf_tokenizer_encode(tok, "", 0, 0, &out, &n, &err), 0);
    cr_assert_eq(n, 0);
    free(out);
    kvf_tokenizer_destroy(&tok);
    kvf_tokenizer_destroy(&tok);  // NULL is fine
    kvf_tokenizer_destroy(NULL);
}

// ---------------------------------------------------------------- components the fixtures lack

// Metaspace pre-tokenizer and decoder (prepend_scheme first), byte fallback, fused unk.
static const char s_metaspace_json[] =
    "{\"added_tokens\": [{\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false,"
    "  \"lstrip\": false, \"rstrip\": false, \"single_word\": false}],"
    " \"normalizer\": null,"
    " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\","
    "  \"split\": true},"
    " \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\","
    "  \"split\": true},"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": true,"
    "  \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"\\u2581\": 2, \"a\": 3, \"b\": 4, \"\\u2581a\": 5, \"ab\": 6,"
    "   \"\\u2581ab\": 7, \"<0x41>\": 8},"
    "  \"merges\": [\"\\u2581 a\", \"a b\", \"\\u2581a b\"]}}";

Test(tokenizer, metaspace_byte_fallback_unk) {
    kvf_tokenizer_t *tok = s_must_load_text(s_metaspace_json);
    const int32_t w1[] = {7, 7};
    s_expect_encode(tok, "ab ab", 0, w1, 2);
    const int32_t w2[] = {1, 6};  // "first": no "▁" after a special token
    s_expect_encode(tok, "<s>ab", 0, w2, 2);
    const int32_t w3[] = {2, 0, 3};  // unknown characters fuse into one <unk>
    s_expect_encode(tok, "xya", 0, w3, 3);
    const int32_t w4[] = {2, 8, 3};  // "A" via byte fallback
    s_expect_encode(tok, "Aa", 0, w4, 3);

    char *s = s_decode(tok, w1, 2);
    cr_assert_str_eq(s, "ab ab");
    free(s);
    s = s_stream(tok, w1, 2);
    cr_assert_str_eq(s, "ab ab");
    free(s);
    s = s_decode(tok, w2, 2);
    cr_assert_str_eq(s, "<s>ab");
    free(s);
    kvf_tokenizer_destroy(&tok);
}

// GPT-2 style: ByteLevel with its own regex and prefix space; added tokens with
// lstrip/rstrip and single_word.
static const char s_bytelevel_json[] =
    "{\"added_tokens\": ["
    "  {\"id\": 5, \"content\": \"<m>\", \"special\": false, \"normalized\": false, \"lstrip\": true,"
    "   \"rstrip\": true, \"single_word\": false},"
    "  {\"id\": 6, \"content\": \"ii\", \"special\": false, \"normalized\": false, \"lstrip\": false,"
    "   \"rstrip\": false, \"single_word\": true}],"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"use_regex\": true},"
    " \"post_processor\": {\"type\": \"ByteLevel\"},"
    " \"decoder\": {\"type\": \"ByteLevel\"},"
    " \"model\": {\"type\": \"BPE\", \"vocab\": {\"\\u0120\": 0, \"h\": 1, \"i\": 2, \"\\u0120h\": 3,"
    "   \"\\u0120hi\": 4},"
    "  \"merges\": [[\"\\u0120\", \"h\"], [\"\\u0120h\", \"i\"]]}}";

Test(tokenizer, byte_level_added_token_options) {
    kvf_tokenizer_t *tok = s_must_load_text(s_bytelevel_json);
    cr_assert_eq(kvf_tokenizer_vocab_size(tok), 7);
    const int32_t w1[] = {4, 4};
    s_expect_encode(tok, "hi hi", 0, w1, 2);
    const int32_t w2[] = {4, 5, 4};  // lstrip/rstrip swallow the spaces around <m>
    s_expect_encode(tok, "hi <m> hi", 0, w2, 3);
    const int32_t w3[] = {6, 4, 2};  // "ii" inside "hii" is not a single word
    s_expect_encode(tok, "ii hii", 0, w3, 3);
    char *s = s_decode(tok, w1, 2);
    cr_assert_str_eq(s, " hi hi");
    free(s);
    kvf_tokenizer_destroy(&tok);
}

// ignore_merges, merges as "a b" strings, no decoder (tokens joined by spaces).
Test(tokenizer, ignore_merges_and_no_decoder) {
    const char *fmt = "{\"model\": {\"type\": \"BPE\", \"ignore_merges\": %s, \"vocab\": {\"a\": 0, \"b\": 1,"
                      " \"c\": 2, \"ab\": 3, \"abc\": 4, \"bc\": 5}, \"merges\": [\"b c\", \"a b\"]}}";
    char json[512];
    snprintf(json, sizeof json, fmt, "true");
    kvf_tokenizer_t *tok = s_must_load_text(json);
    const int32_t w1[] = {4};
    s_expect_encode(tok, "abc", 0, w1, 1);
    kvf_tokenizer_destroy(&tok);
    snprintf(json, sizeof json, fmt, "false");
    tok = s_must_load_text(json);
    const int32_t w2[] = {0, 5};  // "b c" ranks first, and "a bc" is no merge
    s_expect_encode(tok, "abc", 0, w2, 2);
    char *s = s_decode(tok, w2, 2);
    cr_assert_str_eq(s, "a bc");
    free(s);
    s = s_stream(tok, w2, 2);
    cr_assert_str_eq(s, "a bc");
    free(s);
    kvf_tokenizer_destroy(&tok);
}

// Sequence of WhitespaceSplit and Digits: pieces never merge across a split.
Test(tokenizer, whitespace_split_and_digits) {
    kvf_tokenizer_t *tok = s_must_load_text(
        "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"WhitespaceSplit\"},"
        "  {\"type\": \"Digits\", \"individual_digits\": true}]},"
        " \"decoder\": {\"type\": \"Fuse\"},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"1\": 2, \"2\": 3, \"3\": 4, \"a1\": 5,"
        "  \"12\": 6}, \"merges\": [\"a 1\", \"1 2\"]}}");
    const int32_t w[] = {0, 2, 3, 1, 4};
    s_expect_encode(tok, "a12  b3", 0, w, 5);
    char *s = s_decode(tok, w, 5);
    cr_assert_str_eq(s, "a12b3");
    free(s);
    kvf_tokenizer_destroy(&tok);
}

// Decoders after Fuse stream too: Strip with a trailing cut, Replace across tokens.
Test(tokenizer, streaming_strip_and_replace_after_fuse) {
    kvf_tokenizer_t *tok = s_must_load_text(
        "{\"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
        "  {\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
        "  {\"type\": \"Fuse\"},"
        "  {\"type\": \"Replace\", \"pattern\": {\"String\": \"ab\"}, \"content\": \"X\"},"
        "  {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 1}]},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"\\u2581a\": 0, \"b\": 1, \"\\u2581\": 2, \"c\": 3},"
        "  \"merges\": []}}");
    kvf_detok_t *d = kvf_detok_new(tok);
    cr_assert_str_eq(kvf_detok_push(d, 0), "");   // " a": leading space cut, "a" may start "ab"
    cr_assert_str_eq(kvf_detok_push(d, 1), "X");  // "ab" -> "X"
    cr_assert_str_eq(kvf_detok_push(d, 2), "");   // a trailing space is held
    cr_assert_str_eq(kvf_detok_push(d, 3), " c");
    cr_assert_str_eq(kvf_detok_push(d, 2), "");
    cr_assert_str_eq(kvf_detok_flush(d), "");     // ... and cut at the end
    kvf_detok_destroy(&d);
    const int32_t ids[] = {0, 1, 2, 3, 2};
    char *s = s_decode(tok, ids, 5);
    cr_assert_str_eq(s, "X c");
    free(s);
    const int32_t ids2[] = {0, 3, 0};
    s = s_decode(tok, ids2, 3);
    cr_assert_str_eq(s, "ac a");
    char *st = s_stream(tok, ids2, 3);
    cr_assert_str_eq(st, s);
    free(s);
    free(st);
    kvf_tokenizer_destroy(&tok);
}

// ---------------------------------------------------------------- the tool

static int s_run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(tokenizer, kvf_tokenize_tool) {
    char dir[1024], cmd[4096], out[4096];
    KVF_FIXTURE_PATH(dir, "tiny-llama");
    snprintf(cmd, sizeof cmd, "'%s/kvf-tokenize' --model '%s' --text 'Hello world' --add-special", KVF_BIN_DIR, dir);
    cr_assert_eq(s_run(cmd, out, sizeof out), 0);
    cr_assert_str_eq(out, "{\"ids\": [0, 41, 473, 335, 319, 270, 1690]}\n");

    snprintf(cmd, sizeof cmd, "'%s/kvf-tokenize' --model '%s' --decode 41,473,335,319,270,1690,200", KVF_BIN_DIR, dir);
    cr_assert_eq(s_run(cmd, out, sizeof out), 0);
    cr_assert_str_eq(out, "{\"text\": \"Hello world\\n\"}\n");

    snprintf(cmd, sizeof cmd, "'%s/kvf-tokenize' --model '%s' --decode 1,x 2>&1", KVF_BIN_DIR, dir);
    cr_assert_neq(s_run(cmd, out, sizeof out), 0);
    cr_assert(strstr(out, "--decode"), "%s", out);

    snprintf(cmd, sizeof cmd, "'%s/kvf-tokenize' --model '%s' --decode 5000 2>&1", KVF_BIN_DIR, dir);
    cr_assert_neq(s_run(cmd, out, sizeof out), 0);
    cr_assert(strstr(out, "out of range"), "%s", out);

    snprintf(cmd, sizeof cmd, "'%s/kvf-tokenize' --model '%s' --bogus 2>&1", KVF_BIN_DIR, dir);
    cr_assert_eq(s_run(cmd, out, sizeof out), 2);
    cr_assert(strstr(out, "--bogus"), "%s", out);

    snprintf(cmd, sizeof cmd, "'%s/kvf-tokenize' --model /nonexistent --text hi 2>&1", KVF_BIN_DIR);
    cr_assert_eq(s_run(cmd, out, sizeof out), 1);
    cr_assert(strstr(out, "/nonexistent/tokenizer.json"), "%s", out);
}

// ---------------------------------------------------------------- split behaviors and normalizers

Test(tokenizer, split_behaviors) {
    const char *fmt = "{\"pre_tokenizer\": %s, \"decoder\": {\"type\": \"Fuse\"},"
                      " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"-\": 3, \"a-\": 4,"
                      "  \"b-\": 5, \"-b\": 6, \"1\": 7, \"2\": 8, \"12\": 9},"
                      "  \"merges\": [\"- b\", \"a -\", \"b -\", \"1 2\"]}}";
    char json[1024];
    snprintf(json, sizeof json, fmt, "null");
    kvf_tokenizer_t *tok = s_must_load_text(json);
    const int32_t whole[] = {0, 6, 3, 2};  // "-b" ranks first when nothing splits: a -b - c
    s_expect_encode(tok, "a-b-c", 0, whole, 4);
    kvf_tokenizer_destroy(&tok);

    snprintf(json, sizeof json, fmt,
             "{\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": \"MergedWithPrevious\","
             " \"invert\": false}");
    tok = s_must_load_text(json);
    const int32_t prev[] = {4, 5, 2};  // "a-" "b-" "c"
    s_expect_encode(tok, "a-b-c", 0, prev, 3);
    kvf_tokenizer_destroy(&tok);

    snprintf(json, sizeof json, fmt,
             "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\d+\"}, \"behavior\": \"Removed\", \"invert\": true}");
    tok = s_must_load_text(json);
    const int32_t inv[] = {9, 7};  // digits kept, the rest removed
    s_expect_encode(tok, "a12b1c", 0, inv, 2);
    kvf_tokenizer_destroy(&tok);

    snprintf(json, sizeof json, fmt, "{\"type\": \"Digits\", \"individual_digits\": false}");
    tok = s_must_load_text(json);
    const int32_t contig[] = {0, 9, 1};
    s_expect_encode(tok, "a12b", 0, contig, 3);
    kvf_tokenizer_destroy(&tok);

    snprintf(json, sizeof json, fmt, "{\"type\": \"Digits\", \"individual_digits\": true}");
    tok = s_must_load_text(json);
    const int32_t indiv[] = {0, 7, 8, 1};
    s_expect_encode(tok, "a12b", 0, indiv, 4);
    kvf_tokenizer_destroy(&tok);
}

// NFC and Lowercase need ICU for non-ASCII text; without it they must refuse, not guess.
Test(tokenizer, unicode_normalizers) {
    kvf_tokenizer_t *tok = s_must_load_text(
        "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Strip\", \"strip_left\": true,"
        "  \"strip_right\": true}, {\"type\": \"NFC\"}, {\"type\": \"Lowercase\"}]},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"\\u00e9\": 1, \"b\": 2}, \"merges\": []}}");
    const int32_t ascii[] = {0, 2};
    s_expect_encode(tok, "  AB \n", 0, ascii, 2);
    const char *text = "E\xCC\x81" "a";  // "E" + combining acute: NFC then lowercase gives "éa"
    int32_t *ids;
    size_t n;
    kvf_err_t err;
    if (kvf_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n, &err) == 0) {
        const int32_t want[] = {1, 0};
        s_assert_ids(ids, n, want, 2, "NFC + Lowercase");
        free(ids);
    } else {
        cr_assert_eq(err.code, KVF_E_UNSUPPORTED);
        cr_assert(strstr(err.msg, "ICU"), "%s", err.msg);
    }
    kvf_tokenizer_destroy(&tok);
}
