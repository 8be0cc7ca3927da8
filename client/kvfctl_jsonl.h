// client/kvfctl_jsonl.h — the JSONL formats of `kvfctl run`: one request per
// input line, one result per output line.
//
// Input lines take one of two forms:
//   native:  {"id"?, "prompt": "text" | [ids], "prompt_ids"?: [ids], "max_tokens" | "max_new_tokens",
//             "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed",
//             "stop"?, "stop_ids", "ignore_eos"}
//   OpenAI batch:  {"custom_id", "method": "POST", "url": "/v1/completions", "body": {...the same
//             sampling fields, "prompt", "stop": "s" | ["s", ...]...}}
// A field set to null counts as absent; unknown fields are ignored. Fields not
// given take kvfleet's defaults (kvf_sampling_default: greedy, 256 new tokens),
// not OpenAI's. "stop" strings are applied by the client (kvfctl run): the text
// is cut before the first stop string and the request is cancelled.
//
// Output lines:
//   {"id", "text", "output_ids", "prompt_tokens", "completion_tokens", "finish_reason"}
//   {"id", "error": {"code", "message"}}
// where id is custom_id, else id (string or integer, as given), else the
// 1-based number of the request in the file (blank lines are not requests).
#ifndef KVF_KVFCTL_JSONL_H
#define KVF_KVFCTL_JSONL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/sampling.h"

#define KVF_JSONL_MAX_STOP 16

// One parsed input line. Everything it points to is owned by it.
typedef struct {
    json_t *id;        // the output id (always set after kvf_jsonl_parse, even on failure)
    char *text;        // the prompt as text, or NULL when ids are given
    int32_t *ids;      // the prompt as token ids (n_ids > 0), or NULL
    size_t n_ids;
    kvf_sampling_t sampling;
    char *stop[KVF_JSONL_MAX_STOP];  // stop strings (client-side), n_stop of them
    size_t n_stop;
} kvf_jsonl_req_t;

// 1 when the line holds only white space (it is skipped, not a request).
int kvf_jsonl_is_blank(const char *line, size_t len);

// Parses one line of len bytes (no trailing newline needed); number is its
// 1-based request number, the id used when the line names none. Fills *out
// (which need not be initialised) and returns 0; on a bad line (not JSON, not
// an object, no prompt or two, a field of the wrong type or out of range,
// invalid sampling, an OpenAI line that is not POST /v1/completions) returns -1
// with err->code KVF_E_INVAL or KVF_E_FORMAT and a message naming the field;
// out->id is still set (to the line's own id when it could be read) and the
// caller must kvf_jsonl_req_clear(out) in both cases.
int kvf_jsonl_parse(const char *line, size_t len, uint64_t number, kvf_jsonl_req_t *out, kvf_err_t *err);

// Releases what *r owns and zeroes it. Safe on a zeroed struct.
void kvf_jsonl_req_clear(kvf_jsonl_req_t *r);

// The output line of a finished request (no newline): a new string (free()).
// text (len bytes, not necessarily valid UTF-8: invalid bytes become U+FFFD).
char *kvf_jsonl_result_line(const json_t *id, const char *text, size_t text_len, const int32_t *ids, size_t n_ids,
                            uint32_t prompt_tokens, uint32_t completion_tokens, const char *finish_reason);

// The output line of a failed request (no newline): a new string (free()).
// code is a kvf_status name ("invalid", "too_long", ...).
char *kvf_jsonl_error_line(const json_t *id, const char *code, const char *message);

// Copies len bytes into a new NUL-terminated string (free()) in which every
// byte sequence that is not valid UTF-8 is replaced by U+FFFD.
char *kvf_jsonl_utf8_clean(const char *s, size_t len);

#endif
