// common/tokenizer.h — Hugging Face tokenizer.json (BPE), both kinds:
// byte-level (Split regex pre-tokenizer + ByteLevel, as Llama 3 / Qwen2 / GPT-2)
// and SentencePiece-style ("▁" normalizer or Metaspace, byte_fallback, fuse_unk,
// as Llama 2 / Mistral). Added/special tokens are matched in text as transformers
// does; a TemplateProcessing post-processor adds BOS where the file says so.
#ifndef KVF_TOKENIZER_H
#define KVF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct kvf_tokenizer_s kvf_tokenizer_t;

// Loads path (a tokenizer.json). Returns a new tokenizer owned by the caller,
// or NULL with err set (missing file, bad JSON, unsupported model or component).
kvf_tokenizer_t *kvf_tokenizer_load(const char *path, kvf_err_t *err);

// Frees; accepts NULL; nulls *self_p.
void kvf_tokenizer_destroy(kvf_tokenizer_t **self_p);

// Number of ids (the largest id + 1, added tokens included).
int32_t kvf_tokenizer_vocab_size(const kvf_tokenizer_t *tok);

// Encodes len bytes of UTF-8 text. add_special != 0 applies the post-processor
// (e.g. BOS). On success *ids is a new array owned by the caller (free()), *n its
// length (may be 0), and 0 is returned; -1 with err set otherwise. Thread-safe:
// a tokenizer may encode from several threads at once.
int kvf_tokenizer_encode(const kvf_tokenizer_t *tok, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n, kvf_err_t *err);

// Decodes n ids to UTF-8 as HF's decode(skip_special_tokens=False) does. On
// success *text is a new NUL-terminated string owned by the caller. An id out of
// range is an error.
int kvf_tokenizer_decode(const kvf_tokenizer_t *tok, const int32_t *ids, size_t n, char **text, kvf_err_t *err);

// The token's id for an exact token string (vocab or added), or -1.
int32_t kvf_tokenizer_token_id(const kvf_tokenizer_t *tok, const char *token);

// 1 when id is a special added token.
int kvf_tokenizer_is_special(const kvf_tokenizer_t *tok, int32_t id);

// ---- streaming detokenization: feed ids one at a time, get text that never
// ends in half a UTF-8 character (bytes held back until complete).
typedef struct kvf_detok_s kvf_detok_t;

// A new stream over tok (borrowed; must outlive the stream), or NULL on OOM.
kvf_detok_t *kvf_detok_new(const kvf_tokenizer_t *tok);
void kvf_detok_destroy(kvf_detok_t **self_p);

// Appends id; writes the newly complete text (NUL-terminated, possibly empty)
// into a buffer owned by the stream, valid until the next call. Returns NULL
// for an id out of range.
const char *kvf_detok_push(kvf_detok_t *d, int32_t id);

// Ends the stream: returns what was held back (invalid bytes as U+FFFD).
const char *kvf_detok_flush(kvf_detok_t *d);

#endif
