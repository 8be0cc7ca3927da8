// worker/mkmodel_tok.h — the byte-level BPE tokenizer that kvf-mkmodel ships
// with its generated models: trained in C over a small embedded English text,
// written as a Hugging Face tokenizer.json (Llama 3 layout).
#ifndef KVF_MKMODEL_TOK_H
#define KVF_MKMODEL_TOK_H

#include <stdint.h>

#include "common/error.h"

typedef struct kvf_mktok_s kvf_mktok_t;

// Trains a byte-level BPE of at most n_merges merges (pairs seen fewer than
// twice are never merged) over the embedded text, pre-tokenized with the
// Llama 3 regex. The result depends only on n_merges. Returns a new tokenizer
// owned by the caller, or NULL with err set (a regex library failure).
kvf_mktok_t *kvf_mktok_train(int n_merges, kvf_err_t *err);

void kvf_mktok_destroy(kvf_mktok_t **self_p);

// Total ids: 256 byte symbols + merged tokens + the two special tokens.
int32_t kvf_mktok_vocab_size(const kvf_mktok_t *tok);
int32_t kvf_mktok_bos_id(const kvf_mktok_t *tok);   // <|begin_of_text|>
int32_t kvf_mktok_eos_id(const kvf_mktok_t *tok);   // <|end_of_text|>
int32_t kvf_mktok_n_merges(const kvf_mktok_t *tok);

// The tokenizer.json text (new string owned by the caller, free()), or NULL
// with err set.
char *kvf_mktok_json(const kvf_mktok_t *tok, kvf_err_t *err);

#endif
