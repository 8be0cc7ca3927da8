// tests/test_kvfctl.c — kvfctl's JSONL formats (client/kvfctl_jsonl.h): both
// input forms, every kind of bad line, and the output lines; and the status
// view's JSON (client/kvfctl_status.h).
#include <criterion/criterion.h>
#include <jansson.h>
#include <string.h>

#include "client/kvfctl_jsonl.h"
#include "client/kvfctl_status.h"

static int s_parse(const char *line, uint64_t number, kvf_jsonl_req_t *r, kvf_err_t *err) {
    return kvf_jsonl_parse(line, strlen(line), number, r, err);
}

// ---------------------------------------------------------------- good lines

Test(jsonl, native_text_prompt_with_every_sampling_field) {
    kvf_jsonl_req_t r;
    kvf_err_t err;
    const char *line =
        "{\"id\": \"q7\", \"prompt\": \"Hello, world\", \"max_tokens\": 12, \"temperature\": 0.7, \"top_p\": 0.9,"
        " \"top_k\": 40, \"min_p\": 0.05, \"repetition_penalty\": 1.1, \"seed\": 1234, \"stop_ids\": [5, 9],"
        " \"ignore_eos\": true, \"unknown_field\": {\"x\": 1}}";
    cr_assert_eq(s_parse(line, 3, &r, &err), 0, "%s", err.msg);
    cr_assert_str_eq(json_string_value(r.id), "q7");
    cr_assert_str_eq(r.text, "Hello, world");
    cr_assert_null(r.ids);
    cr_assert_eq(r.sampling.max_new_tokens, 12);
    cr_assert_float_eq(r.sampling.temperature, 0.7f, 1e-6);
    cr_assert_float_eq(r.sampling.top_p, 0.9f, 1e-6);
    cr_assert_eq(r.sampling.top_k, 40);
    cr_assert_float_eq(r.sampling.min_p, 0.05f, 1e-6);
    cr_assert_float_eq(r.sampling.repetition_penalty, 1.1f, 1e-6);
    cr_assert_eq(r.sampling.seed, 1234);
    cr_assert_eq(r.sampling.n_stop_ids, 2);
    cr_assert_eq(r.sampling.stop_ids[0], 5);
    cr_assert_eq(r.sampling.stop_ids[1], 9);
    cr_assert_eq(r.sampling.ignore_eos, 1);
    kvf_jsonl_req_clear(&r);
    cr_assert_null(r.id);
}

Test(jsonl, native_ids_defaults_and_line_number_id) {
    kvf_jsonl_req_t r;
    kvf_err_t err;
    cr_assert_eq(s_parse("{\"prompt_ids\": [1, 2, 300], \"max_new_tokens\": 4}", 42, &r, &err), 0, "%s", err.msg);
    cr_assert(json_is_integer(r.id));
    cr_assert_eq(json_integer_value(r.id), 42);
    cr_assert_null(r.text);
    cr_assert_eq(r.n_ids, 3);
    cr_assert_eq(r.ids[2], 300);
    kvf_sampling_t d = kvf_sampling_default();
    cr_assert_eq(r.sampling.max_new_tokens, 4);
    cr_assert_eq(r.sampling.temperature, d.temperature);
    cr_assert_eq(r.sampling.top_p, d.top_p);
    cr_assert_eq(r.sampling.seed, d.seed);
    kvf_jsonl_req_clear(&r);

    // An integer id is kept as an integer; null fields count as absent; 8.0 is 8.
    cr_assert_eq(s_parse("{\"id\": 17, \"prompt\": [7], \"temperature\": null, \"max_tokens\": 8.0}", 1, &r, &err), 0,
                 "%s", err.msg);
    cr_assert(json_is_integer(r.id));
    cr_assert_eq(json_integer_value(r.id), 17);
    cr_assert_eq(r.n_ids, 1);
    cr_assert_eq(r.sampling.max_new_tokens, 8);
    cr_assert_eq(r.sampling.temperature, d.temperature);
    kvf_jsonl_req_clear(&r);
}

Test(jsonl, openai_batch_line) {
    kvf_jsonl_req_t r;
    kvf_err_t err;
    const char *line =
        "{\"custom_id\": \"request-1\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": {\"model\": \"x\","
        " \"prompt\": \"Once upon a time\", \"max_tokens\": 20, \"temperature\": 0.5, \"top_p\": 0.8, \"seed\": 7,"
        " \"stop\": [\"\\n\\n\", \"END\"], \"n\": 1}}";
    cr_assert_eq(s_parse(line, 1, &r, &err), 0, "%s", err.msg);
    cr_assert_str_eq(json_string_value(r.id), "request-1");
    cr_assert_str_eq(r.text, "Once upon a time");
    cr_assert_eq(r.sampling.max_new_tokens, 20);
    cr_assert_float_eq(r.sampling.temperature, 0.5f, 1e-6);
    cr_assert_float_eq(r.sampling.top_p, 0.8f, 1e-6);
    cr_assert_eq(r.sampling.seed, 7);
    cr_assert_eq(r.n_stop, 2);
    cr_assert_str_eq(r.stop[0], "\n\n");
    cr_assert_str_eq(r.stop[1], "END");
    kvf_jsonl_req_clear(&r);

    // A single stop string; method and url may be left out; stop: null is fine.
    cr_assert_eq(s_parse("{\"custom_id\": \"b\", \"body\": {\"prompt\": \"x\", \"stop\": \".\"}}", 2, &r, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(r.n_stop, 1);
    cr_assert_str_eq(r.stop[0], ".");
    kvf_jsonl_req_clear(&r);
    cr_assert_eq(s_parse("{\"custom_id\": \"c\", \"body\": {\"prompt\": [3, 4], \"stop\": null}}", 3, &r, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(r.n_ids, 2);
    cr_assert_eq(r.n_stop, 0);
    kvf_jsonl_req_clear(&r);
}

Test(jsonl, blank_lines) {
    cr_assert(kvf_jsonl_is_blank("", 0));
    cr_assert(kvf_jsonl_is_blank("  \t\r\n", 5));
    cr_assert_not(kvf_jsonl_is_blank(" {} ", 4));
}

// ---------------------------------------------------------------- bad lines

typedef struct {
    const char *line;
    kvf_status code;
    const char *msg_has;   // a piece of the message that names the problem
    const char *id;        // expected id (as text) of the error line
} s_bad_t;

Test(jsonl, every_bad_line_kind_is_an_error_with_a_clear_message) {
    const s_bad_t cases[] = {
        {"not json at all", KVF_E_FORMAT, "not JSON", "9"},
        {"{\"prompt\": \"x\"", KVF_E_FORMAT, "not JSON", "9"},
        {"[1, 2, 3]", KVF_E_FORMAT, "JSON object", "9"},
        {"\"just a string\"", KVF_E_FORMAT, "", "9"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"prompt\": \"y\"}", KVF_E_FORMAT, "not JSON", "9"},
        {"{\"id\": \"a\"}", KVF_E_INVAL, "no \"prompt\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"prompt_ids\": [1]}", KVF_E_INVAL, "not both", "a"},
        {"{\"id\": \"a\", \"prompt\": \"\"}", KVF_E_INVAL, "empty", "a"},
        {"{\"id\": \"a\", \"prompt_ids\": []}", KVF_E_INVAL, "empty", "a"},
        {"{\"id\": \"a\", \"prompt\": 5}", KVF_E_INVAL, "\"prompt\" must be", "a"},
        {"{\"id\": \"a\", \"prompt_ids\": [1, \"two\"]}", KVF_E_INVAL, "prompt_ids\"[1]", "a"},
        {"{\"id\": \"a\", \"prompt_ids\": [1, -2]}", KVF_E_INVAL, "prompt_ids\"[1]", "a"},
        {"{\"id\": \"a\", \"prompt_ids\": [4294967296]}", KVF_E_INVAL, "prompt_ids\"[0]", "a"},
        {"{\"id\": \"a\", \"prompt\": [\"p1\", \"p2\"]}", KVF_E_UNSUPPORTED, "one prompt per line", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": \"ten\"}", KVF_E_INVAL, "\"max_tokens\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 0}", KVF_E_INVAL, "\"max_tokens\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"max_new_tokens\": 2.5}", KVF_E_INVAL, "\"max_new_tokens\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": \"hot\"}", KVF_E_INVAL, "\"temperature\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": -1}", KVF_E_INVAL, "temperature", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"top_p\": 0}", KVF_E_INVAL, "top_p", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"top_p\": 1.5}", KVF_E_INVAL, "top_p", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"min_p\": 1}", KVF_E_INVAL, "min_p", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"top_k\": -3}", KVF_E_INVAL, "\"top_k\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"repetition_penalty\": 0}", KVF_E_INVAL, "repetition_penalty", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"seed\": -1}", KVF_E_INVAL, "\"seed\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"seed\": \"s\"}", KVF_E_INVAL, "\"seed\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"ignore_eos\": 1}", KVF_E_INVAL, "ignore_eos", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"stop_ids\": 5}", KVF_E_INVAL, "stop_ids", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"stop_ids\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", KVF_E_INVAL,
         "stop_ids", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"stop\": 3}", KVF_E_INVAL, "\"stop\"", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"stop\": [\"ok\", \"\"]}", KVF_E_INVAL, "\"stop\"[1]", "a"},
        {"{\"id\": \"a\", \"prompt\": \"x\", \"n\": 3}", KVF_E_UNSUPPORTED, "\"n\"", "a"},
        {"{\"id\": [1], \"prompt\": \"x\"}", KVF_E_INVAL, "\"id\" must be", "9"},
        {"{\"id\": 2.5, \"prompt\": \"x\"}", KVF_E_INVAL, "\"id\" must be", "9"},
        {"{\"custom_id\": \"o1\", \"method\": \"GET\", \"url\": \"/v1/completions\", \"body\": {\"prompt\": \"x\"}}",
         KVF_E_INVAL, "POST", "o1"},
        {"{\"custom_id\": \"o2\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": {\"prompt\": "
         "\"x\"}}",
         KVF_E_UNSUPPORTED, "/v1/completions", "o2"},
        {"{\"custom_id\": \"o3\", \"method\": \"POST\", \"url\": \"/v1/completions\"}", KVF_E_INVAL, "\"body\"", "o3"},
        {"{\"custom_id\": \"o4\", \"url\": \"/v1/completions\", \"body\": \"prompt\"}", KVF_E_INVAL, "\"body\"", "o4"},
        {"{\"custom_id\": \"o5\", \"body\": {\"prompt\": \"x\", \"max_tokens\": -5}}", KVF_E_INVAL, "max_tokens", "o5"},
        {"{\"custom_id\": \"o6\", \"body\": {\"messages\": []}}", KVF_E_INVAL, "no \"prompt\"", "o6"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvf_jsonl_req_t r;
        kvf_err_t err;
        kvf_err_clear(&err);
        int rc = s_parse(cases[i].line, 9, &r, &err);
        cr_assert_eq(rc, -1, "case %zu accepted: %s", i, cases[i].line);
        cr_assert_eq(err.code, cases[i].code, "case %zu (%s): code %s, message %s", i, cases[i].line,
                     kvf_status_name(err.code), err.msg);
        cr_assert(strstr(err.msg, cases[i].msg_has), "case %zu (%s): message '%s' lacks '%s'", i, cases[i].line,
                  err.msg, cases[i].msg_has);
        cr_assert_not_null(r.id, "case %zu has no id", i);
        char idtext[64];
        if (json_is_string(r.id)) snprintf(idtext, sizeof idtext, "%s", json_string_value(r.id));
        else snprintf(idtext, sizeof idtext, "%lld", (long long)json_integer_value(r.id));
        cr_assert_str_eq(idtext, cases[i].id, "case %zu", i);
        kvf_jsonl_req_clear(&r);
    }
}

// ---------------------------------------------------------------- output lines

Test(jsonl, result_and_error_lines) {
    json_t *id = json_string("req-\"1\"");
    int32_t ids[] = {5, 6, 7};
    char *line = kvf_jsonl_result_line(id, "abc\ndef", 7, ids, 3, 11, 3, "length");
    json_error_t je;
    json_t *o = json_loads(line, 0, &je);
    cr_assert_not_null(o, "%s: %s", line, je.text);
    cr_assert_null(strchr(line, '\n'), "an output line must be one line");
    cr_assert_str_eq(json_string_value(json_object_get(o, "id")), "req-\"1\"");
    cr_assert_str_eq(json_string_value(json_object_get(o, "text")), "abc\ndef");
    cr_assert_eq(json_array_size(json_object_get(o, "output_ids")), 3);
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(o, "output_ids"), 2)), 7);
    cr_assert_eq(json_integer_value(json_object_get(o, "prompt_tokens")), 11);
    cr_assert_eq(json_integer_value(json_object_get(o, "completion_tokens")), 3);
    cr_assert_str_eq(json_string_value(json_object_get(o, "finish_reason")), "length");
    json_decref(o);
    free(line);

    json_t *nid = json_integer(12);
    line = kvf_jsonl_error_line(nid, "too_long", "prompt of 5000 tokens");
    o = json_loads(line, 0, &je);
    cr_assert_not_null(o, "%s", line);
    cr_assert_eq(json_integer_value(json_object_get(o, "id")), 12);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "too_long");
    cr_assert_str_eq(json_string_value(json_object_get(e, "message")), "prompt of 5000 tokens");
    json_decref(o);
    free(line);
    json_decref(id);
    json_decref(nid);
}

Test(jsonl, invalid_utf8_becomes_replacement_characters) {
    // A random model can emit bytes that are not UTF-8; the line must stay valid JSON.
    const char bad[] = "ok\xff\xc3(\xe2\x82\xac\xed\xa0\x80z";  // 0xff, truncated 2-byte, €, a surrogate
    char *clean = kvf_jsonl_utf8_clean(bad, sizeof bad - 1);
    cr_assert_str_eq(clean, "ok\xEF\xBF\xBD\xEF\xBF\xBD(\xe2\x82\xac\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz");
    free(clean);
    json_t *id = json_integer(1);
    char *line = kvf_jsonl_result_line(id, bad, sizeof bad - 1, NULL, 0, 1, 0, "stop");
    json_t *o = json_loads(line, 0, NULL);
    cr_assert_not_null(o, "not valid JSON: %s", line);
    json_decref(o);
    free(line);
    json_decref(id);
}

// ---------------------------------------------------------------- status view

Test(status_view, json_totals_count_live_workers) {
    kvf_worker_info_t w[2];
    memset(w, 0, sizeof w);
    char a[] = "w0", b[] = "w1", cpu[] = "cpu", m[] = "m";
    w[0] = (kvf_worker_info_t){.worker_id = a, .group_id = a, .backend = cpu, .model = m, .device = -1,
                               .tp_size = 1, .block_size = 16};
    w[0].load = (kvf_msg_heartbeat_t){.state = KVF_WSTATE_READY, .free_blocks = 30, .total_blocks = 40,
                                      .running = 3, .waiting = 1, .tokens_per_s = 100.5, .preemptions = 2};
    w[0].plan.kv_blocks = 40;
    w[0].plan.block_size = 16;
    w[0].plan.tokens_fit = 640;
    w[1] = w[0];
    w[1].plan.kv_dtype = 1;  // an FP8 cache
    w[1].plan.quant = 1;     // and FP8 linear layers
    w[1].worker_id = b;
    w[1].group_id = b;
    w[1].load.state = KVF_WSTATE_DEAD;
    kvf_cluster_status_t st = {.workers = w, .n_workers = 2, .queue_len = 5, .queue_cap = 100};
    json_t *j = kvf_ctl_status_json(&st);
    json_t *ws = json_object_get(j, "workers");
    cr_assert_eq(json_array_size(ws), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ws, 1), "state")), "dead");
    cr_assert_float_eq(json_real_value(json_object_get(json_array_get(ws, 0), "free_pct")), 75.0, 1e-9);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(json_array_get(ws, 0), "plan"), "tokens_fit")),
                 640);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(json_array_get(ws, 0), "plan"), "kv_cache_dtype")), "auto");
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(json_array_get(ws, 1), "plan"), "kv_cache_dtype")), "fp8");
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(json_array_get(ws, 1), "plan"), "quantization")), "fp8");
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(json_array_get(ws, 0), "plan"), "quantization")), "none");
    json_t *t = json_object_get(j, "totals");
    cr_assert_eq(json_integer_value(json_object_get(t, "workers")), 2);
    cr_assert_eq(json_integer_value(json_object_get(t, "ready")), 1);
    cr_assert_eq(json_integer_value(json_object_get(t, "dead")), 1);
    cr_assert_eq(json_integer_value(json_object_get(t, "free_blocks")), 30);
    cr_assert_eq(json_integer_value(json_object_get(t, "total_blocks")), 40);
    cr_assert_eq(json_integer_value(json_object_get(t, "preemptions")), 4);
    cr_assert_eq(json_integer_value(json_object_get(j, "queue_len")), 5);
    json_decref(j);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    kvf_ctl_status_print(f, &st);
    fclose(f);
    cr_assert(strstr(buf, "w0"));
    cr_assert(strstr(buf, "30/40 (75%)"));
    cr_assert(strstr(buf, "40 blocks x 16 = 640 tokens, kv fp8, weights fp8"), "%s", buf);
    cr_assert(strstr(buf, "dead"));
    cr_assert(strstr(buf, "queue 5/100"));
    free(buf);
}

// ---------------------------------------------------------------- the CLI's errors

#include "cluster_harness.h"

// Runs kvfctl with args; returns its exit status and its stderr in *err_text (free()).
static int s_cli(const char *const *args, char **err_text) {
    kvh_require_bin("kvfctl");
    char bin[512], errp[64] = "/tmp/kvfctl-cli-XXXXXX";
    int fd = mkstemp(errp);
    cr_assert_geq(fd, 0);
    close(fd);
    char *argv[KVH_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)kvh_bin("kvfctl", bin, sizeof bin);
    for (int i = 0; args[i]; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    int rc = kvh_run(argv, NULL, errp, 30);
    *err_text = kvf_test_slurp(errp, NULL);
    unlink(errp);
    return rc;
}

Test(cli, bad_usage_exits_2_with_a_message) {
    const char *cases[][8] = {
        {"--bogus", "status", NULL},
        {"frobnicate", NULL},
        {"run", "in.jsonl", NULL},
        {"run", "-o", "out.jsonl", NULL},
        {"status", "--yaml", NULL},
        {"generate", "hi", "--temperature", "-1", NULL},
        {"generate", "hi", "--max-tokens", "zero", NULL},
        {"--coordinator", "nonsense", "status", NULL},
        {"--timeout", "0", "status", NULL},
        {"drain", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *e = NULL;
        int rc = s_cli(cases[i], &e);
        cr_assert_eq(rc, 2, "case %zu (%s %s): exit %d", i, cases[i][0], cases[i][1] ? cases[i][1] : "", rc);
        cr_assert(e && strstr(e, "kvfctl"), "case %zu: no message", i);
        free(e);
    }
    char *e = NULL;
    const char *help[] = {"--help", NULL};
    cr_assert_eq(s_cli(help, &e), 0);
    free(e);
}

Test(cli, unreachable_coordinator_exits_1_after_the_timeout) {
    const char *cmds[][8] = {
        {"--coordinator", "tcp://127.0.0.1:1", "--timeout", "300", "status", NULL},
        {"--coordinator", "tcp://127.0.0.1:1", "--timeout", "300", "generate", "hello", NULL},
        {"--coordinator", "tcp://127.0.0.1:1", "--timeout", "300", "shutdown", NULL},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *e = NULL;
        double t0 = kvh_now();
        int rc = s_cli(cmds[i], &e);
        double dt = kvh_now() - t0;
        cr_assert_eq(rc, 1, "%s: exit %d", cmds[i][4], rc);
        cr_assert(e && strstr(e, "tcp://127.0.0.1:1") && strstr(e, "timeout"), "%s: message '%s'", cmds[i][4], e);
        cr_assert_lt(dt, 5.0);
        free(e);
    }
}
