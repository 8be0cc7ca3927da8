// worker/kvf_tokenize.c — tokenizer check tool.
//
//   kvf-tokenize --model DIR --text TEXT [--add-special]   prints {"ids": [...]}
//   kvf-tokenize --model DIR --decode 1,2,3                prints {"text": "..."}
//
// DIR holds a Hugging Face tokenizer.json. Errors go to stderr; exit status 2
// for bad usage, 1 for a failure.
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/error.h"
#include "common/tokenizer.h"

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: kvf-tokenize --model DIR --text TEXT [--add-special]\n"
            "       kvf-tokenize --model DIR --decode ID,ID,...\n"
            "DIR contains tokenizer.json. Prints one JSON object on stdout.\n");
}

// Prints obj (stolen) as one line; 0 or -1.
static int s_print(json_t *obj) {
    char *s = obj ? json_dumps(obj, 0) : NULL;
    json_decref(obj);
    if (!s) {
        fprintf(stderr, "kvf-tokenize: cannot format the output\n");
        return -1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *decode = NULL;
    int add_special = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            s_usage(stdout);
            return 0;
        } else if (strcmp(a, "--add-special") == 0) {
            add_special = 1;
        } else if (strcmp(a, "--model") == 0 || strcmp(a, "--text") == 0 || strcmp(a, "--decode") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kvf-tokenize: %s needs a value\n", a);
                return 2;
            }
            const char **dst = a[2] == 'm' ? &model : a[2] == 't' ? &text : &decode;
            *dst = argv[++i];
        } else {
            fprintf(stderr, "kvf-tokenize: unknown argument '%s'\n", a);
            s_usage(stderr);
            return 2;
        }
    }
    if (!model || (!text && !decode) || (text && decode)) {
        fprintf(stderr, "kvf-tokenize: give --model and exactly one of --text or --decode\n");
        s_usage(stderr);
        return 2;
    }
    if (decode && add_special) {
        fprintf(stderr, "kvf-tokenize: --add-special applies to --text only\n");
        return 2;
    }

    kvf_err_t err;
    int32_t *ids = NULL;
    size_t n = 0;
    if (decode && kvf_args_ids("--decode", decode, &ids, &n, &err) != 0) {
        fprintf(stderr, "kvf-tokenize: %s\n", err.msg);
        return 2;
    }
    size_t plen = strlen(model) + sizeof "/tokenizer.json";
    char *path = malloc(plen);
    if (!path) {
        free(ids);
        fprintf(stderr, "kvf-tokenize: out of memory\n");
        return 1;
    }
    snprintf(path, plen, "%s/tokenizer.json", model);
    kvf_tokenizer_t *tok = kvf_tokenizer_load(path, &err);
    free(path);
    if (!tok) {
        free(ids);
        fprintf(stderr, "kvf-tokenize: %s\n", err.msg);
        return 1;
    }

    int rc = 0;
    if (text) {
        if (kvf_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n, &err) != 0) {
            fprintf(stderr, "kvf-tokenize: %s\n", err.msg);
            rc = 1;
        } else {
            json_t *arr = json_array();
            for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
            rc = s_print(json_pack("{s:o}", "ids", arr)) == 0 ? 0 : 1;
        }
    } else {
        char *out = NULL;
        if (kvf_tokenizer_decode(tok, ids, n, &out, &err) != 0) {
            fprintf(stderr, "kvf-tokenize: %s\n", err.msg);
            rc = 1;
        } else {
            rc = s_print(json_pack("{s:s%}", "text", out, strlen(out))) == 0 ? 0 : 1;
        }
        free(out);
    }
    free(ids);
    kvf_tokenizer_destroy(&tok);
    return rc;
}
