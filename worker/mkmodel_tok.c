// worker/mkmodel_tok.c — see mkmodel_tok.h.
//
// Training follows the Hugging Face BPE trainer: words are the pre-tokens of
// the text (Llama 3 regex, then GPT-2 byte-to-unicode mapping), each pair is
// counted weighted by its word's frequency, the most frequent pair becomes the
// next merge (ties: the smaller pair of ids), and a merged string that already
// exists keeps its id.
#include "mkmodel_tok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"

#define S_BOS "<|begin_of_text|>"
#define S_EOS "<|end_of_text|>"

// Llama 3's pre-tokenizer split pattern, as written in its tokenizer.json.
static const char *s_llama3_regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// The training text: plain English prose about the things this project does,
// with some code, numbers and punctuation so that the merges are not all words.
static const char *s_corpus =
    "The river ran past the old mill, and the miller's daughter sat on the stone wall to watch the water. "
    "Every morning she counted the boats that went down to the sea, and every evening she counted the ones "
    "that came back. Most days the numbers were the same. On the days they were not, she walked to the harbour "
    "and asked the fishermen what had happened, and they told her stories about storms, broken nets and the "
    "long way home.\n\n"
    "A language model reads a prompt one token at a time and predicts the next token. The tokens are small "
    "pieces of text: a whole word, part of a word, a space followed by a word, or a single byte. The model "
    "does not see letters; it sees numbers, and it has learned which numbers tend to follow which. When we "
    "serve many prompts at once, we keep the keys and values of every token in a cache, so that the model "
    "never has to read the same prompt twice.\n\n"
    "The cache is split into blocks of sixty-four tokens. A block is either free or held by a sequence. When "
    "a new request arrives, the scheduler asks how many blocks it needs, and only starts it when they are "
    "there. If the pool runs dry, the newest sequence is stopped, its blocks are returned, and it waits to be "
    "computed again later. Nothing is lost; it only takes a little longer.\n\n"
    "In the kitchen, the bread was rising under a cloth. Her grandmother said that good bread needs three "
    "things: time, warmth and patience. The flour came from the mill, the salt from the sea, and the water "
    "from the river. She kneaded the dough for ten minutes, shaped it into two loaves, and put them in the "
    "oven at two hundred and twenty degrees.\n\n"
    "int main(int argc, char **argv) {\n"
    "    for (int i = 0; i < argc; i++) {\n"
    "        printf(\"%d: %s\\n\", i, argv[i]);\n"
    "    }\n"
    "    return 0;\n"
    "}\n\n"
    "def generate(model, prompt, max_tokens=128):\n"
    "    tokens = tokenizer.encode(prompt)\n"
    "    for _ in range(max_tokens):\n"
    "        logits = model(tokens)\n"
    "        tokens.append(int(logits[-1].argmax()))\n"
    "    return tokenizer.decode(tokens)\n\n"
    "The train left the station at 7:45 and arrived at 10:30, three hours later than planned. There were 128 "
    "people on board, 64 in each of the two cars, and 12 of them had bicycles. The ticket cost 24.50 euros, "
    "or 19.99 with a discount card. It was the 3rd of March, 2024, and it was still cold in the mountains.\n\n"
    "When the weather was fine, the children played by the water. They built small dams from stones and "
    "sticks, and they watched the water find its way around them. It always did. The youngest one asked why "
    "the river never stopped, and nobody could give her an answer that she liked. \"Because the rain keeps "
    "falling,\" said her brother. \"But where does the rain come from?\" she asked. \"From the sea,\" he said, "
    "and that was the end of it, at least for that day.\n\n"
    "Each worker reports how many blocks are free. The coordinator sends a request only to a group where "
    "the blocks fit, and it prefers the group that has served the same prefix before, because its cache may "
    "still hold the first blocks of the prompt. If no group has room, the request waits in the queue of the "
    "coordinator, and it is sent as soon as a report shows enough free blocks. The workers never run out of "
    "memory, because they never accept more than they can hold.\n\n"
    "At night the mill was quiet. The wheel turned slowly in the dark water, and the only light came from "
    "the window of the kitchen, where the miller read his letters and wrote down the numbers of the day: "
    "how much grain had come in, how much flour had gone out, and how much was left for the winter. He "
    "was a careful man, and his numbers were always right.\n";

// ---------------------------------------------------------------- types

typedef struct {
    int32_t *syms;       // current symbol ids
    int32_t n;
    int64_t count;       // occurrences in the text
} s_word_t;

struct kvf_mktok_s {
    char **tokens;       // tokens[id] = byte-level string, ids 0..n_tokens-1 (no specials)
    int32_t n_tokens;
    int32_t (*merges)[2];
    int32_t n_merges;
};

// ---------------------------------------------------------------- byte level

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to
// U+0100 and up, in byte order.
static uint32_t s_byte_cp(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256u + (uint32_t)n;
}

static void s_put_utf8(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {  // all byte-level code points are below U+0800
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static int32_t s_token_lookup(const kvf_mktok_t *t, const char *s) {
    for (int32_t i = 0; i < t->n_tokens; i++)
        if (strcmp(t->tokens[i], s) == 0) return i;
    return -1;
}

// ---------------------------------------------------------------- words

static int s_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Splits the corpus into pre-tokens and returns the distinct words with their
// counts (sorted by text, so the result never depends on hashing).
static s_word_t *s_words(size_t *n_out, kvf_err_t *err) {
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)s_llama3_regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ecode,
                                   &eoff, NULL);
    if (!re) {
        kvf_err_set(err, KVF_E_INTERNAL, "pre-tokenizer regex does not compile (error %d at %zu)", ecode, (size_t)eoff);
        return NULL;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t len = strlen(s_corpus), pos = 0, n = 0, cap = 1024;
    char **pieces = kvf_xmalloc(cap * sizeof *pieces);
    while (pos < len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s_corpus, len, pos, 0, md, NULL);
        size_t b = len, e = len;
        if (rc > 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            b = ov[0];
            e = ov[1];
        }
        if (e == b && b < len) e = b + 1;  // never loop on an empty match
        // Text between matches is a piece of its own (Split behaviour "Isolated").
        size_t spans[2][2] = {{pos, b}, {b, e}};
        for (int k = 0; k < 2; k++) {
            if (spans[k][1] <= spans[k][0]) continue;
            if (n == cap) pieces = kvf_xrealloc(pieces, (cap *= 2) * sizeof *pieces);
            size_t m = spans[k][1] - spans[k][0];
            pieces[n] = kvf_xmalloc(m + 1);
            memcpy(pieces[n], s_corpus + spans[k][0], m);
            pieces[n][m] = 0;
            n++;
        }
        pos = e;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    qsort(pieces, n, sizeof *pieces, s_cmp_str);
    s_word_t *words = kvf_xcalloc(n ? n : 1, sizeof *words);
    size_t nw = 0;
    for (size_t i = 0; i < n; i++) {
        if (nw && i && strcmp(pieces[i], pieces[i - 1]) == 0) {
            words[nw - 1].count++;
        } else {
            size_t m = strlen(pieces[i]);
            words[nw].syms = kvf_xmalloc(m * sizeof(int32_t));
            for (size_t j = 0; j < m; j++) words[nw].syms[j] = (unsigned char)pieces[i][j];
            words[nw].n = (int32_t)m;
            words[nw].count = 1;
            nw++;
        }
    }
    for (size_t i = 0; i < n; i++) free(pieces[i]);
    free(pieces);
    *n_out = nw;
    return words;
}

// ---------------------------------------------------------------- training

kvf_mktok_t *kvf_mktok_train(int n_merges, kvf_err_t *err) {
    if (n_merges < 0 || n_merges > 4096) {
        kvf_err_set(err, KVF_E_INVAL, "merges: %d is out of range (0..4096)", n_merges);
        return NULL;
    }
    size_t nw;
    s_word_t *words = s_words(&nw, err);
    if (!words) return NULL;
    kvf_mktok_t *t = kvf_xcalloc(1, sizeof *t);
    int32_t max_tok = 256 + n_merges;
    t->tokens = kvf_xcalloc((size_t)max_tok, sizeof *t->tokens);
    t->merges = kvf_xcalloc(n_merges ? (size_t)n_merges : 1, sizeof *t->merges);
    for (int b = 0; b < 256; b++) {
        char s[4];
        s_put_utf8(s, s_byte_cp(b));
        t->tokens[t->n_tokens++] = kvf_xstrdup(s);
    }
    // Dense pair counts over ids below max_tok: at most (256+4096)^2 entries,
    // a few hundred KB for the default merge count.
    int64_t *counts = kvf_xmalloc((size_t)max_tok * (size_t)max_tok * sizeof *counts);
    while (t->n_merges < n_merges) {
        size_t nt = (size_t)t->n_tokens;
        for (size_t i = 0; i < nt; i++) memset(counts + i * (size_t)max_tok, 0, nt * sizeof *counts);
        for (size_t w = 0; w < nw; w++)
            for (int32_t j = 0; j + 1 < words[w].n; j++)
                counts[(size_t)words[w].syms[j] * (size_t)max_tok + (size_t)words[w].syms[j + 1]] += words[w].count;
        int64_t best = 1;  // a pair must occur at least twice
        int32_t ba = -1, bb = -1;
        for (size_t a = 0; a < nt; a++)
            for (size_t b = 0; b < nt; b++)
                if (counts[a * (size_t)max_tok + b] > best) {
                    best = counts[a * (size_t)max_tok + b];
                    ba = (int32_t)a;
                    bb = (int32_t)b;
                }
        if (ba < 0) break;
        size_t la = strlen(t->tokens[ba]), lb = strlen(t->tokens[bb]);
        char *s = kvf_xmalloc(la + lb + 1);
        memcpy(s, t->tokens[ba], la);
        memcpy(s + la, t->tokens[bb], lb + 1);
        int32_t id = s_token_lookup(t, s);
        if (id < 0) {
            id = t->n_tokens;
            t->tokens[t->n_tokens++] = s;
        } else {
            free(s);
        }
        t->merges[t->n_merges][0] = ba;
        t->merges[t->n_merges][1] = bb;
        t->n_merges++;
        // Apply the merge left to right, as encoding will.
        for (size_t w = 0; w < nw; w++) {
            int32_t o = 0;
            for (int32_t j = 0; j < words[w].n; j++) {
                if (j + 1 < words[w].n && words[w].syms[j] == ba && words[w].syms[j + 1] == bb) {
                    words[w].syms[o++] = id;
                    j++;
                } else {
                    words[w].syms[o++] = words[w].syms[j];
                }
            }
            words[w].n = o;
        }
    }
    free(counts);
    for (size_t w = 0; w < nw; w++) free(words[w].syms);
    free(words);
    return t;
}

void kvf_mktok_destroy(kvf_mktok_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_mktok_t *t = *self_p;
    for (int32_t i = 0; i < t->n_tokens; i++) free(t->tokens[i]);
    free(t->tokens);
    free(t->merges);
    free(t);
    *self_p = NULL;
}

int32_t kvf_mktok_vocab_size(const kvf_mktok_t *t) {
    return t->n_tokens + 2;
}

int32_t kvf_mktok_bos_id(const kvf_mktok_t *t) {
    return t->n_tokens;
}

int32_t kvf_mktok_eos_id(const kvf_mktok_t *t) {
    return t->n_tokens + 1;
}

int32_t kvf_mktok_n_merges(const kvf_mktok_t *t) {
    return t->n_merges;
}

// ---------------------------------------------------------------- tokenizer.json

static json_t *s_added_token(int32_t id, const char *content) {
    return json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", (int)id, "content", content, "single_word", 0, "lstrip", 0,
                     "rstrip", 0, "normalized", 0, "special", 1);
}

char *kvf_mktok_json(const kvf_mktok_t *t, kvf_err_t *err) {
    int32_t bos = kvf_mktok_bos_id(t), eos = kvf_mktok_eos_id(t);
    json_t *root = json_object();
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens", json_pack("[o,o]", s_added_token(bos, S_BOS), s_added_token(eos, S_EOS)));
    json_object_set_new(root, "normalizer", json_null());
    json_object_set_new(
        root, "pre_tokenizer",
        json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]}", "type", "Sequence", "pretokenizers", "type",
                  "Split", "pattern", "Regex", s_llama3_regex, "behavior", "Isolated", "invert", 0, "type", "ByteLevel",
                  "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0));
    json_t *special = json_pack("{s:{s:s,s:[i],s:[s]}}", S_BOS, "id", S_BOS, "ids", (int)bos, "tokens", S_BOS);
    json_object_set_new(root, "post_processor",
                        json_pack("{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],"
                                  "s:[{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}}],s:o}",
                                  "type", "TemplateProcessing", "single", "SpecialToken", "id", S_BOS, "type_id", 0,
                                  "Sequence", "id", "A", "type_id", 0, "pair", "SpecialToken", "id", S_BOS, "type_id",
                                  0, "Sequence", "id", "A", "type_id", 0, "SpecialToken", "id", S_BOS, "type_id", 1,
                                  "Sequence", "id", "B", "type_id", 1, "special_tokens", special));
    json_object_set_new(root, "decoder",
                        json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1,
                                  "use_regex", 1));
    json_t *vocab = json_object();
    for (int32_t i = 0; i < t->n_tokens; i++) json_object_set_new(vocab, t->tokens[i], json_integer(i));
    json_object_set_new(vocab, S_BOS, json_integer(bos));
    json_object_set_new(vocab, S_EOS, json_integer(eos));
    json_t *merges = json_array();
    for (int32_t i = 0; i < t->n_merges; i++)
        json_array_append_new(merges, json_pack("[s,s]", t->tokens[t->merges[i][0]], t->tokens[t->merges[i][1]]));
    json_object_set_new(root, "model",
                        json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout", "unk_token",
                                  "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
                                  "ignore_merges", 0, "vocab", vocab, "merges", merges));
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text) kvf_err_set(err, KVF_E_NOMEM, "tokenizer.json: cannot format");
    return text;
}
