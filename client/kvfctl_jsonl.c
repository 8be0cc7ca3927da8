// client/kvfctl_jsonl.c — see kvfctl_jsonl.h.
#include "kvfctl_jsonl.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"

int kvf_jsonl_is_blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (!isspace((unsigned char)line[i])) return 0;
    return 1;
}

void kvf_jsonl_req_clear(kvf_jsonl_req_t *r) {
    if (!r) return;
    json_decref(r->id);
    free(r->text);
    free(r->ids);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

// ---------------------------------------------------------------- field readers
// Each returns 1 when the field is present (and valid), 0 when absent or null,
// -1 with err set when it has the wrong type or is out of range.

static json_t *s_get(const json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

static int s_get_int(const json_t *obj, const char *key, int64_t min, int64_t max, int64_t *out, kvf_err_t *err) {
    json_t *v = s_get(obj, key);
    if (!v) return 0;
    // 3.0 is accepted as 3: some writers emit every number as a float.
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || d < (double)min || d > (double)max)
            return kvf_err_set(err, KVF_E_INVAL, "\"%s\" must be an integer in [%lld, %lld]", key, (long long)min,
                               (long long)max);
        *out = (int64_t)d;
        return 1;
    }
    if (!json_is_integer(v))
        return kvf_err_set(err, KVF_E_INVAL, "\"%s\" must be an integer", key);
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return kvf_err_set(err, KVF_E_INVAL, "\"%s\" = %lld is outside [%lld, %lld]", key, (long long)i,
                           (long long)min, (long long)max);
    *out = i;
    return 1;
}

static int s_get_num(const json_t *obj, const char *key, float *out, kvf_err_t *err) {
    json_t *v = s_get(obj, key);
    if (!v) return 0;
    if (!json_is_number(v)) return kvf_err_set(err, KVF_E_INVAL, "\"%s\" must be a number", key);
    *out = (float)json_number_value(v);
    return 1;
}

// An array of non-negative int32 token ids; at most max of them.
static int s_get_ids(const json_t *v, const char *key, size_t max, int32_t **ids, size_t *n, kvf_err_t *err) {
    if (!json_is_array(v)) return kvf_err_set(err, KVF_E_INVAL, "\"%s\" must be an array of token ids", key);
    size_t cnt = json_array_size(v);
    if (cnt > max) return kvf_err_set(err, KVF_E_INVAL, "\"%s\" has %zu ids, at most %zu allowed", key, cnt, max);
    int32_t *a = kvf_xmalloc((cnt ? cnt : 1) * sizeof *a);
    for (size_t i = 0; i < cnt; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
            free(a);
            return kvf_err_set(err, KVF_E_INVAL, "\"%s\"[%zu] is not a token id (an integer in [0, %d])", key, i,
                               INT32_MAX);
        }
        a[i] = (int32_t)json_integer_value(e);
    }
    *ids = a;
    *n = cnt;
    return 1;
}

// ---------------------------------------------------------------- parse

static int s_read_id(const json_t *root, uint64_t number, json_t **id, kvf_err_t *err) {
    *id = json_integer((json_int_t)number);
    const char *key = s_get(root, "custom_id") ? "custom_id" : "id";
    json_t *v = s_get(root, key);
    if (!v) return 0;
    if (!json_is_string(v) && !json_is_integer(v))
        return kvf_err_set(err, KVF_E_INVAL, "\"%s\" must be a string or an integer", key);
    json_decref(*id);
    *id = json_deep_copy(v);
    return 0;
}

static int s_read_prompt(const json_t *obj, kvf_jsonl_req_t *out, kvf_err_t *err) {
    json_t *p = s_get(obj, "prompt");
    json_t *pi = s_get(obj, "prompt_ids");
    if (p && pi) return kvf_err_set(err, KVF_E_INVAL, "give \"prompt\" or \"prompt_ids\", not both");
    if (!p && !pi) return kvf_err_set(err, KVF_E_INVAL, "no \"prompt\" or \"prompt_ids\"");
    if (p && json_is_string(p)) {
        if (json_string_length(p) == 0) return kvf_err_set(err, KVF_E_INVAL, "\"prompt\" is empty");
        out->text = kvf_xstrdup(json_string_value(p));
        return 0;
    }
    if (p && json_is_array(p) && json_array_size(p) > 0 && json_is_string(json_array_get(p, 0)))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "\"prompt\" is a list of prompts: give one prompt per line");
    if (p && !json_is_array(p))
        return kvf_err_set(err, KVF_E_INVAL, "\"prompt\" must be a string or an array of token ids");
    const char *key = p ? "prompt" : "prompt_ids";
    if (s_get_ids(p ? p : pi, key, (size_t)UINT32_MAX, &out->ids, &out->n_ids, err) < 0) return -1;
    if (out->n_ids == 0) return kvf_err_set(err, KVF_E_INVAL, "\"%s\" is empty", key);
    return 0;
}

static int s_read_stop(const json_t *obj, kvf_jsonl_req_t *out, kvf_err_t *err) {
    json_t *v = s_get(obj, "stop");
    if (!v) return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return kvf_err_set(err, KVF_E_INVAL, "\"stop\" is an empty string");
        out->stop[out->n_stop++] = kvf_xstrdup(json_string_value(v));
        return 0;
    }
    if (!json_is_array(v)) return kvf_err_set(err, KVF_E_INVAL, "\"stop\" must be a string or an array of strings");
    if (json_array_size(v) > KVF_JSONL_MAX_STOP)
        return kvf_err_set(err, KVF_E_INVAL, "\"stop\" has more than %d strings", KVF_JSONL_MAX_STOP);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e) || json_string_length(e) == 0)
            return kvf_err_set(err, KVF_E_INVAL, "\"stop\"[%zu] must be a non-empty string", i);
        out->stop[out->n_stop++] = kvf_xstrdup(json_string_value(e));
    }
    return 0;
}

static int s_read_sampling(const json_t *obj, kvf_sampling_t *s, kvf_err_t *err) {
    int64_t i;
    int rc;
    if ((rc = s_get_int(obj, "max_tokens", 1, INT32_MAX, &i, err)) < 0) return -1;
    if (rc) s->max_new_tokens = (int32_t)i;
    if ((rc = s_get_int(obj, "max_new_tokens", 1, INT32_MAX, &i, err)) < 0) return -1;
    if (rc) s->max_new_tokens = (int32_t)i;
    if ((rc = s_get_int(obj, "top_k", 0, INT32_MAX, &i, err)) < 0) return -1;
    if (rc) s->top_k = (int32_t)i;
    if ((rc = s_get_int(obj, "seed", 0, INT64_MAX, &i, err)) < 0) return -1;
    if (rc) s->seed = (uint64_t)i;
    if (s_get_num(obj, "temperature", &s->temperature, err) < 0) return -1;
    if (s_get_num(obj, "top_p", &s->top_p, err) < 0) return -1;
    if (s_get_num(obj, "min_p", &s->min_p, err) < 0) return -1;
    if (s_get_num(obj, "repetition_penalty", &s->repetition_penalty, err) < 0) return -1;
    json_t *v = s_get(obj, "ignore_eos");
    if (v) {
        if (!json_is_boolean(v)) return kvf_err_set(err, KVF_E_INVAL, "\"ignore_eos\" must be true or false");
        s->ignore_eos = json_is_true(v);
    }
    v = s_get(obj, "stop_ids");
    if (v) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (s_get_ids(v, "stop_ids", KVF_MAX_STOP_IDS, &ids, &n, err) < 0) return -1;
        memcpy(s->stop_ids, ids, n * sizeof *ids);
        s->n_stop_ids = (int32_t)n;
        free(ids);
    }
    v = s_get(obj, "n");
    if (v && !(json_is_integer(v) && json_integer_value(v) == 1))
        return kvf_err_set(err, KVF_E_UNSUPPORTED, "\"n\" must be 1: one completion per line");
    kvf_err_t e;
    if (kvf_sampling_validate(s, &e) < 0) return kvf_err_set(err, KVF_E_INVAL, "%s", e.msg);
    return 0;
}

int kvf_jsonl_parse(const char *line, size_t len, uint64_t number, kvf_jsonl_req_t *out, kvf_err_t *err) {
    memset(out, 0, sizeof *out);
    out->sampling = kvf_sampling_default();
    out->id = json_integer((json_int_t)number);
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return kvf_err_set(err, KVF_E_FORMAT, "not JSON: %s (column %d)", jerr.text, jerr.column);
    int rc = -1;
    if (!json_is_object(root)) {
        kvf_err_set(err, KVF_E_FORMAT, "a line must be a JSON object");
        goto done;
    }
    json_decref(out->id);
    if (s_read_id(root, number, &out->id, err) < 0) goto done;

    const json_t *req = root;
    json_t *body = json_object_get(root, "body");
    if (body || json_object_get(root, "custom_id") || json_object_get(root, "url")) {
        // OpenAI batch format.
        json_t *method = s_get(root, "method");
        if (method && !(json_is_string(method) && strcmp(json_string_value(method), "POST") == 0)) {
            kvf_err_set(err, KVF_E_INVAL, "\"method\" must be \"POST\"");
            goto done;
        }
        json_t *url = s_get(root, "url");
        if (url && !(json_is_string(url) && strcmp(json_string_value(url), "/v1/completions") == 0)) {
            kvf_err_set(err, KVF_E_UNSUPPORTED, "\"url\" must be \"/v1/completions\" (got %s)",
                        json_is_string(url) ? json_string_value(url) : "a non-string");
            goto done;
        }
        if (!json_is_object(body)) {
            kvf_err_set(err, KVF_E_INVAL, "\"body\" must be an object holding the request");
            goto done;
        }
        req = body;
    }
    if (s_read_prompt(req, out, err) < 0) goto done;
    if (s_read_stop(req, out, err) < 0) goto done;
    if (s_read_sampling(req, &out->sampling, err) < 0) goto done;
    rc = 0;
done:
    json_decref(root);
    return rc;
}

// ---------------------------------------------------------------- output

char *kvf_jsonl_utf8_clean(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    char *out = kvf_xmalloc(len * 3 + 1);  // each bad byte may grow to 3 (U+FFFD)
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned char c = p[i];
        size_t n = 0;
        uint32_t cp = 0, min = 0;
        if (c < 0x80) n = 1, cp = c;
        else if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07, min = 0x10000;
        int ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) ok = 0;
            else cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = 0;
        if (ok) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
        }
    }
    out[o] = 0;
    return out;
}

static char *s_dump(json_t *obj) {
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!s) s = kvf_xstrdup("{\"error\": {\"code\": \"internal\", \"message\": \"cannot format a result line\"}}");
    return s;
}

char *kvf_jsonl_result_line(const json_t *id, const char *text, size_t text_len, const int32_t *ids, size_t n_ids,
                            uint32_t prompt_tokens, uint32_t completion_tokens, const char *finish_reason) {
    char *clean = kvf_jsonl_utf8_clean(text ? text : "", text ? text_len : 0);
    json_t *arr = json_array();
    for (size_t i = 0; i < n_ids; i++) json_array_append_new(arr, json_integer(ids[i]));
    json_t *o = json_object();
    json_object_set_new(o, "id", json_deep_copy(id));
    json_object_set_new(o, "text", json_stringn_nocheck(clean, strlen(clean)));
    json_object_set_new(o, "output_ids", arr);
    json_object_set_new(o, "prompt_tokens", json_integer(prompt_tokens));
    json_object_set_new(o, "completion_tokens", json_integer(completion_tokens));
    json_object_set_new(o, "finish_reason", json_string(finish_reason ? finish_reason : "error"));
    free(clean);
    return s_dump(o);
}

char *kvf_jsonl_error_line(const json_t *id, const char *code, const char *message) {
    char *clean = kvf_jsonl_utf8_clean(message ? message : "", message ? strlen(message) : 0);
    json_t *e = json_object();
    json_object_set_new(e, "code", json_string(code ? code : "internal"));
    json_object_set_new(e, "message", json_stringn_nocheck(clean, strlen(clean)));
    json_t *o = json_object();
    json_object_set_new(o, "id", json_deep_copy(id));
    json_object_set_new(o, "error", e);
    free(clean);
    return s_dump(o);
}
