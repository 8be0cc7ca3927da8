// tests/fuzz/fuzz_tokenizer.c — libFuzzer target over the tokenizer.json loader
// and, when a file loads, encode, decode and streaming detokenization.
//
// Input: the tokenizer.json text, then optionally a NUL byte and the text to
// encode (a raw NUL never appears in valid JSON, so the split is unambiguous).
// Without a NUL a fixed sample text is encoded. The text's bytes are also read
// as token ids (in range and not) for decode and the streaming decoder.
//
// Checks beyond the sanitizers: every encoded id is inside the vocabulary and
// decodes; decode and the stream refuse ids out of range (and agree on which
// ids inside [0, vocab_size) have no token) instead of reading past a table;
// the streamed text never ends in half a UTF-8 character.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tokenizer.h"
#include "fuzz_memfd.h"

#define S_MAX_IDS 256

static const char s_sample[] = "Hello world, it's 2024!\n  <s> caf\xc3\xa9 \xe2\x96\x81x \xf0\x9f\x98\x80 </s>[INST]";

static void s_fail(const char *what, const kvf_err_t *err) {
    fprintf(stderr, "fuzz_tokenizer: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    abort();
}

// 1 when s ends inside a UTF-8 sequence (a lead byte whose continuation is missing).
static int s_ends_mid_char(const char *s) {
    size_t n = strlen(s);
    size_t i = n, cont = 0;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xc0) == 0x80 && cont < 4) {
        i--;
        cont++;
    }
    if (i == 0) return 0;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xf0 ? 3 : lead >= 0xe0 ? 2 : lead >= 0xc0 ? 1 : 0;
    return need > cont;
}

// 1 when decode accepts id on its own; an id outside [0, vocab_size) never is.
static int s_valid(const kvf_tokenizer_t *tok, int32_t id) {
    char *out = NULL;
    kvf_err_t err;
    int ok = kvf_tokenizer_decode(tok, &id, 1, &out, &err) == 0;
    free(out);
    if (ok && (id < 0 || id >= kvf_tokenizer_vocab_size(tok))) s_fail("decode accepted an id out of range", NULL);
    return ok;
}

static void s_stream(const kvf_tokenizer_t *tok, const int32_t *ids, size_t n) {
    kvf_detok_t *d = kvf_detok_new(tok);
    if (!d) return;
    for (size_t i = 0; i < n; i++) {
        const char *s = kvf_detok_push(d, ids[i]);
        int valid = s_valid(tok, ids[i]);
        if (!valid && s) s_fail("detok_push accepted an id that decode refuses", NULL);
        if (valid && !s) s_fail("detok_push refused an id that decode accepts", NULL);
        if (s && s_ends_mid_char(s)) s_fail("detok_push returned half a UTF-8 character", NULL);
    }
    const char *rest = kvf_detok_flush(d);
    if (!rest) s_fail("detok_flush returned NULL", NULL);
    kvf_detok_destroy(&d);
    if (d) s_fail("detok_destroy did not null the pointer", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    const uint8_t *nul = memchr(data, 0, len);
    size_t json_len = nul ? (size_t)(nul - data) : len;
    const char *text = nul ? (const char *)nul + 1 : s_sample;
    size_t text_len = nul ? len - json_len - 1 : sizeof s_sample - 1;

    char path[64];
    kvf_fuzz_memfd_put(data, json_len, path, sizeof path);
    kvf_err_t err;
    kvf_tokenizer_t *tok = kvf_tokenizer_load(path, &err);
    if (!tok) {
        if (err.msg[0] == '\0') s_fail("load failed without a message", NULL);
        return 0;
    }
    int32_t vocab = kvf_tokenizer_vocab_size(tok);
    if (vocab < 0) s_fail("negative vocab size", NULL);

    for (int add_special = 0; add_special <= 1; add_special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (kvf_tokenizer_encode(tok, text, text_len, add_special, &ids, &n, &err) != 0) {
            if (err.msg[0] == '\0') s_fail("encode failed without a message", NULL);
            continue;
        }
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= vocab) s_fail("encode produced an id outside the vocabulary", NULL);
        char *out = NULL;
        if (kvf_tokenizer_decode(tok, ids, n, &out, &err) != 0) s_fail("decode refused encoded ids", &err);
        free(out);
        s_stream(tok, ids, n < S_MAX_IDS ? n : S_MAX_IDS);
        free(ids);
    }

    // The text read as ids: mostly in range, a few just outside it.
    int32_t ids[S_MAX_IDS];
    size_t n = 0;
    int any_bad = 0;
    for (size_t i = 0; i + 1 < text_len && n < S_MAX_IDS; i += 2) {
        uint16_t v = (uint16_t)((unsigned char)text[i] | (unsigned char)text[i + 1] << 8);
        int32_t id = (v & 0x8000) ? vocab - 2 + (v & 3) : (vocab > 0 ? (int32_t)(v % (uint32_t)vocab) : 0);
        if (v == 0xffff) id = -1;
        if (!s_valid(tok, id)) any_bad = 1;
        ids[n++] = id;
    }
    char *out = NULL;
    int rc = kvf_tokenizer_decode(tok, ids, n, &out, &err);
    if (rc == 0 && any_bad) s_fail("decode accepted a list with an id it refuses alone", NULL);
    if (rc != 0 && !any_bad) s_fail("decode refused a list of ids it accepts one by one", &err);
    free(out);
    s_stream(tok, ids, n);

    for (int32_t id = 0; id < vocab && id < 8; id++) (void)kvf_tokenizer_is_special(tok, id);
    (void)kvf_tokenizer_token_id(tok, "<s>");
    kvf_tokenizer_destroy(&tok);
    return 0;
}
