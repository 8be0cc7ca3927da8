// kvf-generate — one generation (or one teacher-forced scoring) on the engine,
// in-process. Contract (tests depend on it):
//
//   kvf-generate --model DIR [--backend cpu|cuda] [--block-size N]
//                (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]
//                [--temperature T] [--top-k K] [--top-p P] [--seed S]
//                [--ignore-eos] [--json]
//   kvf-generate --model DIR --score-ids 1,2,3 --logits-out FILE
//
// --json prints one object {"prompt_ids", "output_ids", "text", "finish_reason"};
// without it the text is streamed (ids when the model has no tokenizer).
// --prompt-ids / --score-ids are used exactly as given; --prompt TEXT is
// tokenized with the post-processor (BOS). --logits-out gets (n_ids, vocab)
// little-endian float32. Errors: a message on stderr and exit status 1 (2 for
// a bad command line).
//
// Sizing: one sequence, so session_len = prompt + max_new_tokens (capped at the
// model's max_position) and the KV pool is exactly one such sequence's blocks.
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/args.h"
#include "common/log.h"
#include "common/modelcfg.h"
#include "common/sampling.h"
#include "common/tokenizer.h"
#include "worker/backend.h"
#include "worker/engine.h"

#define EXIT_USAGE 2

typedef struct {
    const char *model, *backend, *prompt, *prompt_ids, *score_ids, *logits_out;
    int64_t block_size;
    int32_t kv_dtype;  // --kv-cache-dtype
    int32_t quant;     // --quantization
    kvf_sampling_t sampling;
    int json;
} s_args_t;

typedef struct {
    int32_t *ids;
    int32_t n, cap;
    kvf_finish_reason reason;
    int finished;
    kvf_detok_t *detok;  // streaming (no --json) with a tokenizer
    int stream_ids;      // streaming without a tokenizer
} s_out_t;

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: kvf-generate --model DIR [--backend cpu|cuda] [--block-size N] [--kv-cache-dtype auto|fp8]\n"
            "                    [--quantization none|fp8]\n"
            "                    (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]\n"
            "                    [--temperature T] [--top-k K] [--top-p P] [--seed S] [--ignore-eos] [--json]\n"
            "       kvf-generate --model DIR [--backend cpu|cuda] --score-ids 1,2,3 --logits-out FILE\n");
}

static int s_parse(int argc, char **argv, s_args_t *a, kvf_err_t *err) {
    memset(a, 0, sizeof *a);
    a->backend = "cpu";
    a->block_size = 64;
    a->sampling = kvf_sampling_default();
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char **str = NULL;
        if (!strcmp(f, "--model")) str = &a->model;
        else if (!strcmp(f, "--backend")) str = &a->backend;
        else if (!strcmp(f, "--prompt")) str = &a->prompt;
        else if (!strcmp(f, "--prompt-ids")) str = &a->prompt_ids;
        else if (!strcmp(f, "--score-ids")) str = &a->score_ids;
        else if (!strcmp(f, "--logits-out")) str = &a->logits_out;
        if (str) {
            if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: missing value", f);
            *str = argv[++i];
            continue;
        }
        if (!strcmp(f, "--ignore-eos")) {
            a->sampling.ignore_eos = 1;
            continue;
        }
        if (!strcmp(f, "--json")) {
            a->json = 1;
            continue;
        }
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            s_usage(stdout);
            return 1;
        }
        if (i + 1 >= argc) return kvf_err_set(err, KVF_E_INVAL, "%s: unknown flag or missing value", f);
        const char *v = argv[++i];
        int64_t iv;
        double dv;
        if (!strcmp(f, "--block-size")) {
            if (kvf_args_int(f, v, 1, 4096, &a->block_size, err)) return -1;
        } else if (!strcmp(f, "--kv-cache-dtype")) {
            if (kvf_kv_dtype_parse(f, v, &a->kv_dtype, err)) return -1;
        } else if (!strcmp(f, "--quantization")) {
            if (kvf_quant_parse(f, v, &a->quant, err)) return -1;
        } else if (!strcmp(f, "--max-new-tokens")) {
            if (kvf_args_int(f, v, 1, INT32_MAX, &iv, err)) return -1;
            a->sampling.max_new_tokens = (int32_t)iv;
        } else if (!strcmp(f, "--temperature")) {
            if (kvf_args_double(f, v, 0, 100, &dv, err)) return -1;
            a->sampling.temperature = (float)dv;
        } else if (!strcmp(f, "--top-k")) {
            if (kvf_args_int(f, v, 0, INT32_MAX, &iv, err)) return -1;
            a->sampling.top_k = (int32_t)iv;
        } else if (!strcmp(f, "--top-p")) {
            if (kvf_args_double(f, v, 0, 1, &dv, err)) return -1;
            a->sampling.top_p = (float)dv;
        } else if (!strcmp(f, "--seed")) {
            if (kvf_args_int(f, v, 0, INT64_MAX, &iv, err)) return -1;
            a->sampling.seed = (uint64_t)iv;
        } else {
            return kvf_err_set(err, KVF_E_INVAL, "unknown flag %s", f);
        }
    }
    if (!a->model) return kvf_err_set(err, KVF_E_INVAL, "--model DIR is required");
    int n_modes = (a->prompt != NULL) + (a->prompt_ids != NULL) + (a->score_ids != NULL);
    if (n_modes != 1)
        return kvf_err_set(err, KVF_E_INVAL, "give exactly one of --prompt, --prompt-ids or --score-ids");
    if (a->score_ids && !a->logits_out) return kvf_err_set(err, KVF_E_INVAL, "--score-ids needs --logits-out FILE");
    if (!a->score_ids && a->logits_out) return kvf_err_set(err, KVF_E_INVAL, "--logits-out goes with --score-ids");
    if (kvf_sampling_validate(&a->sampling, err)) return -1;
    return 0;
}

static void s_on_token(void *ud, uint64_t rid, int32_t token, int finished, kvf_finish_reason reason) {
    (void)rid;
    s_out_t *o = ud;
    if (token >= 0) {
        if (o->n == o->cap) {
            o->cap = o->cap ? 2 * o->cap : 64;
            o->ids = kvf_xrealloc(o->ids, sizeof(int32_t) * (size_t)o->cap);
        }
        o->ids[o->n++] = token;
        if (o->detok) {
            const char *t = kvf_detok_push(o->detok, token);
            if (t && *t) fputs(t, stdout);
            fflush(stdout);
        } else if (o->stream_ids) {
            printf(o->n > 1 ? " %d" : "%d", token);
            fflush(stdout);
        }
    }
    if (finished) {
        o->finished = 1;
        o->reason = reason;
    }
}

static json_t *s_json_ids(const int32_t *ids, int32_t n) {
    json_t *a = json_array();
    for (int32_t i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

// Text of the output: the final stop token (EOS or a stop id) is not part of it.
static int s_output_text(const kvf_tokenizer_t *tok, const s_out_t *o, char **text, kvf_err_t *err) {
    if (!tok) {
        *text = strdup("");
        return *text ? 0 : kvf_err_set(err, KVF_E_NOMEM, "out of memory");
    }
    int32_t n = o->n;
    if (o->reason == KVF_FINISH_STOP && n > 0) n--;
    return kvf_tokenizer_decode(tok, o->ids, (size_t)n, text, err);
}

static int s_score(kvf_engine_t *e, const int32_t *ids, int32_t n, const char *path, kvf_err_t *err) {
    const int32_t V = kvf_engine_cfg(e)->vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
    if (!lg) return kvf_err_set(err, KVF_E_NOMEM, "cannot allocate logits for %d ids", n);
    int rc = kvf_engine_score(e, ids, n, lg, err);
    if (rc == 0) {
        FILE *f = fopen(path, "wb");
        if (!f) {
            rc = kvf_err_set(err, KVF_E_IO, "--logits-out %s: cannot open for writing", path);
        } else {
            // float32 little-endian: the host order on every supported machine (x86-64, aarch64)
            size_t w = fwrite(lg, sizeof(float), (size_t)n * (size_t)V, f);
            if (fclose(f) != 0 || w != (size_t)n * (size_t)V)
                rc = kvf_err_set(err, KVF_E_IO, "--logits-out %s: write failed", path);
        }
    }
    free(lg);
    return rc;
}

static int s_run(const s_args_t *a, kvf_err_t *err) {
    kvf_modelcfg_t cfg;
    if (kvf_modelcfg_load(a->model, &cfg, err)) return -1;

    kvf_tokenizer_t *tok = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    kvf_engine_t *e = NULL;
    s_out_t out = {0};
    int rc = -1;

    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", a->model);
    FILE *probe = fopen(path, "rb");
    if (probe) {
        fclose(probe);
        tok = kvf_tokenizer_load(path, err);
        if (!tok) goto done;
    }
    if (a->prompt) {
        if (!tok) {
            kvf_err_set(err, KVF_E_INVAL, "--prompt: %s has no tokenizer.json; give --prompt-ids", a->model);
            goto done;
        }
        if (kvf_tokenizer_encode(tok, a->prompt, strlen(a->prompt), 1, &ids, &n_ids, err)) goto done;
        if (n_ids == 0) {
            kvf_err_set(err, KVF_E_INVAL, "--prompt: the text gives no tokens");
            goto done;
        }
    } else {
        const char *flag = a->score_ids ? "--score-ids" : "--prompt-ids";
        if (kvf_args_ids(flag, a->score_ids ? a->score_ids : a->prompt_ids, &ids, &n_ids, err)) goto done;
        if (n_ids == 0) {
            kvf_err_set(err, KVF_E_INVAL, "%s: no ids given", flag);
            goto done;
        }
    }
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] >= cfg.vocab_size) {
            kvf_err_set(err, KVF_E_INVAL, "token id %d at position %zu is outside the vocabulary [0, %d)", ids[i], i,
                        cfg.vocab_size);
            goto done;
        }

    // one sequence: the session is what this run needs, within the model's context
    int64_t need = a->score_ids ? (int64_t)n_ids : (int64_t)n_ids + a->sampling.max_new_tokens;
    if (a->score_ids ? (int64_t)n_ids > cfg.max_position : (int64_t)n_ids >= cfg.max_position) {
        kvf_err_set(err, KVF_E_TOO_LONG, "%zu ids do not fit the model's context of %d positions%s", n_ids,
                    cfg.max_position, a->score_ids ? "" : " (the prompt needs room for one new token)");
        goto done;
    }
    if (need > cfg.max_position) need = cfg.max_position;
    if (need < 2) need = 2;

    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.backend = a->backend;
    o.block_size = (int32_t)a->block_size;
    o.kv_dtype = a->kv_dtype;
    o.quant = a->quant;
    o.session_len = (int32_t)need;
    o.max_batch_size = 64;             // also the rows per scoring chunk
    o.max_prefill_token_num = 2048;
    o.cache_max_entry_count = (double)((need + a->block_size - 1) / a->block_size);
    o.no_tokenizer = 1;
    e = kvf_engine_new(a->model, &o, err);
    if (!e) goto done;

    if (a->score_ids) {
        rc = s_score(e, ids, (int32_t)n_ids, a->logits_out, err);
        goto done;
    }

    if (!a->json) {
        if (tok) {
            out.detok = kvf_detok_new(tok);
            if (!out.detok) {
                kvf_err_set(err, KVF_E_NOMEM, "out of memory");
                goto done;
            }
        } else {
            out.stream_ids = 1;
        }
    }
    if (kvf_engine_add(e, 1, ids, (int32_t)n_ids, NULL, 0, &a->sampling, err)) goto done;
    while (kvf_engine_has_work(e))
        if (kvf_engine_step(e, s_on_token, &out, err) < 0) goto done;
    if (!out.finished) {
        kvf_err_set(err, KVF_E_INTERNAL, "the request ended without a finish");
        goto done;
    }

    if (a->json) {
        char *text = NULL;
        if (s_output_text(tok, &out, &text, err)) goto done;
        json_t *obj = json_object();
        json_object_set_new(obj, "prompt_ids", s_json_ids(ids, (int32_t)n_ids));
        json_object_set_new(obj, "output_ids", s_json_ids(out.ids, out.n));
        json_object_set_new(obj, "text", json_string(text));
        json_object_set_new(obj, "finish_reason",
                            json_string(out.reason == KVF_FINISH_STOP ? "stop" : out.reason == KVF_FINISH_LENGTH
                                                                                   ? "length" : "error"));
        free(text);
        char *s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(obj);
        if (!s) {
            kvf_err_set(err, KVF_E_NOMEM, "out of memory");
            goto done;
        }
        puts(s);
        free(s);
    } else {
        if (out.detok) fputs(kvf_detok_flush(out.detok), stdout);
        putchar('\n');
    }
    rc = out.reason == KVF_FINISH_ERROR ? kvf_err_set(err, KVF_E_DEVICE, "generation failed") : 0;

done:
    kvf_detok_destroy(&out.detok);
    free(out.ids);
    free(ids);
    kvf_engine_destroy(&e);
    kvf_tokenizer_destroy(&tok);
    return rc;
}

int main(int argc, char **argv) {
    kvf_log_setup("kvf-generate", -1, KVF_LOG_WARN);
    s_args_t a;
    kvf_err_t err;
    kvf_err_clear(&err);
    int prc = s_parse(argc, argv, &a, &err);
    if (prc > 0) return 0;
    if (prc < 0) {
        fprintf(stderr, "kvf-generate: %s\n", err.msg);
        s_usage(stderr);
        return EXIT_USAGE;
    }
    if (s_run(&a, &err) != 0) {
        fflush(stdout);
        fprintf(stderr, "kvf-generate: error: %s\n", err.msg);
        return 1;
    }
    return 0;
}
