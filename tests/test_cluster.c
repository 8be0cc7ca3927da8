// tests/test_cluster.c — a whole node on loopback: kvf-coordinator, CPU
// kvf-workers and the CLI tools (kvfctl, kvf-generate), started as real processes.
//   (a) 300 prompts through `kvfctl run` on 3 workers: each output equals
//       kvf-generate's for the same prompt (greedy), each prompt answered once;
//   (b) workers with deliberately small KV pools: the batch completes and no
//       worker reports a preemption or a rejection;
//   (c) `kvfctl status` while a batch runs; a SIGKILLed worker shows as dead and
//       its requests still finish elsewhere;
//   (d) garbage, oversized and unknown messages get an ERROR and the coordinator
//       keeps serving another client.
#include <criterion/criterion.h>
#include <jansson.h>
#include <string.h>

#include "cluster_harness.h"
#include "proto/codec.h"

// ---------------------------------------------------------------- helpers

// Runs `kvfctl --coordinator FRONT args...` and returns its exit status; stdout
// goes to out_path (may be NULL), stderr to DIR/kvfctl.err.
static int s_kvfctl(const kvh_cluster_t *c, const char *out_path, double timeout_s, const char *const *args) {
    char bin[512], err[400];
    char *argv[KVH_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)kvh_bin("kvfctl", bin, sizeof bin);
    argv[n++] = "--coordinator";
    argv[n++] = (char *)c->front;
    for (int i = 0; args[i] && n < KVH_MAX_ARGS - 1; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    snprintf(err, sizeof err, "%s/kvfctl.err", c->dir);
    return kvh_run(argv, out_path, err, timeout_s);
}

// `kvfctl status --json`, parsed (caller decrefs).
static json_t *s_status_json(const kvh_cluster_t *c) {
    char out[400];
    snprintf(out, sizeof out, "%s/status.json", c->dir);
    const char *args[] = {"status", "--json", NULL};
    int rc = s_kvfctl(c, out, 30, args);
    cr_assert_eq(rc, 0, "kvfctl status --json failed (%d)", rc);
    json_error_t je;
    json_t *j = json_load_file(out, 0, &je);
    cr_assert_not_null(j, "kvfctl status --json: %s", je.text);
    return j;
}

static json_t *s_worker(json_t *status, const char *id) {
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(status, "workers"), i, w) {
        if (strcmp(json_string_value(json_object_get(w, "id")), id) == 0) return w;
    }
    return NULL;
}

static json_int_t s_int(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    cr_assert(json_is_integer(v), "field %s is missing or not an integer", k);
    return json_integer_value(v);
}

// `kvfctl status --json` once every worker named prefix0..prefix{n-1} reports
// generated tokens (load figures come with heartbeats), or after 5 s.
static json_t *s_status_after_heartbeats(const kvh_cluster_t *c, const char *prefix, int n) {
    for (double until = kvh_now() + 5;;) {
        json_t *st = s_status_json(c);
        int all = 1;
        for (int i = 0; i < n; i++) {
            char id[16];
            snprintf(id, sizeof id, "%s%d", prefix, i);
            json_t *w = s_worker(st, id);
            all = all && w && s_int(w, "tokens_total") > 0;
        }
        if (all || kvh_now() > until) return st;
        json_decref(st);
        kvh_sleep_ms(200);
    }
}

// Reads a JSONL file into an array of objects (caller decrefs).
static json_t *s_read_jsonl(const char *path) {
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    json_t *arr = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int no = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        no++;
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)n, 0, &je);
        cr_assert_not_null(o, "%s:%d is not JSON: %s", path, no, je.text);
        json_array_append_new(arr, o);
    }
    free(line);
    fclose(f);
    return arr;
}

// ---------------------------------------------------------------- (d) hostile clients

static zsock_t *s_raw_dealer(const kvh_cluster_t *c) {
    zsock_t *s = zsock_new(ZMQ_DEALER);
    cr_assert_not_null(s);
    zsock_set_linger(s, 0);
    zsock_set_rcvtimeo(s, 5000);
    cr_assert_eq(zsock_connect(s, "%s", c->front), 0);
    return s;
}

static void s_send_raw(zsock_t *s, const void *data, size_t len) {
    cr_assert_eq(zmq_send(zsock_resolve(s), data, len, 0), (int)len, "send: %s", zmq_strerror(errno));
}

// Receives one reply and asserts it is an ERROR about the whole message.
static void s_expect_error(zsock_t *s, const char *what) {
    kvf_msg_t m;
    kvf_err_t err;
    memset(&m, 0, sizeof m);
    cr_assert_eq(kvf_msg_recv(s, NULL, &m, &err), 0, "%s: no decodable reply: %s", what, err.msg);
    cr_assert_eq(m.type, KVF_MSG_ERROR, "%s: got %s, not ERROR", what, kvf_msg_type_name(m.type));
    cr_assert_eq(m.u.error.rid, 0);
    cr_assert_neq(m.u.error.code, KVF_OK);
    cr_assert_gt(m.u.error.message.len, 0, "%s: ERROR without a message", what);
    kvf_msg_clear(&m);
}

// A well-behaved client still gets served.
static void s_expect_served(const kvh_cluster_t *c) {
    kvf_client_t *cl = kvh_client(c);
    kvf_cluster_status_t *st = NULL;
    kvf_err_t err;
    cr_assert_eq(kvf_client_status(cl, &st, &err), 0, "coordinator stopped serving: %s", err.msg);
    kvf_cluster_status_destroy(&st);
    kvf_client_destroy(&cl);
}

Test(cluster, hostile_clients_get_errors_and_the_coordinator_keeps_serving) {
    kvh_require_bin("kvf-coordinator");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, NULL, "--max-msg-size", "64K", NULL);
    zsock_t *s = s_raw_dealer(&c);

    const char garbage[] = "\xc1\xff\x00 this is not msgpack \x93\x01";
    s_send_raw(s, garbage, sizeof garbage - 1);
    s_expect_error(s, "garbage bytes");
    s_expect_served(&c);

    // [1, 99, {}]: a well-formed message of an unknown type.
    const unsigned char unknown[] = {0x93, 0x01, 0x63, 0x80};
    s_send_raw(s, unknown, sizeof unknown);
    s_expect_error(s, "unknown type");
    // [7, 12, {}]: STATUS of a protocol version nobody speaks.
    const unsigned char version[] = {0x93, 0x07, 0x0c, 0x80};
    s_send_raw(s, version, sizeof version);
    s_expect_error(s, "unknown version");
    // A map claiming 2^32-1 entries in a few bytes.
    const unsigned char huge_count[] = {0x93, 0x01, 0x0a, 0xdf, 0xff, 0xff, 0xff, 0xff};
    s_send_raw(s, huge_count, sizeof huge_count);
    s_expect_error(s, "lying map count");
    // A valid message that only workers may send.
    kvf_msg_t hb;
    kvf_msg_init(&hb, KVF_MSG_HEARTBEAT);
    kvf_err_t err;
    cr_assert_eq(kvf_msg_send(s, NULL, &hb, &err), 0, "%s", err.msg);
    s_expect_error(s, "worker message on the client socket");
    // Empty frame.
    s_send_raw(s, "", 0);
    s_expect_error(s, "empty message");
    s_expect_served(&c);

    // An oversized frame (over --max-msg-size, under the transport's hard bound).
    size_t big = 100 * 1024;
    char *buf = calloc(1, big);
    cr_assert_not_null(buf);
    memset(buf, 0xa5, big);
    s_send_raw(s, buf, big);
    s_expect_error(s, "oversized frame");
    s_expect_served(&c);
    // Past the hard bound libzmq drops the connection: no reply, still serving.
    size_t huge = 300 * 1024;
    char *hbuf = calloc(1, huge);
    cr_assert_not_null(hbuf);
    s_send_raw(s, hbuf, huge);
    kvh_sleep_ms(200);
    s_expect_served(&c);
    free(buf);
    free(hbuf);
    zsock_destroy(&s);

    // And after all that, a fresh raw client gets a real reply to a real message.
    s = s_raw_dealer(&c);
    kvf_msg_t st;
    kvf_msg_init(&st, KVF_MSG_STATUS);
    cr_assert_eq(kvf_msg_send(s, NULL, &st, &err), 0, "%s", err.msg);
    kvf_msg_t reply;
    memset(&reply, 0, sizeof reply);
    cr_assert_eq(kvf_msg_recv(s, NULL, &reply, &err), 0, "%s", err.msg);
    cr_assert_eq(reply.type, KVF_MSG_STATUS_REPLY);
    kvf_msg_clear(&reply);
    zsock_destroy(&s);
    cr_assert_eq(kvh_wait(c.coord, 0), -1, "the coordinator died");
    kvh_teardown(&c);
}

// ---------------------------------------------------------------- prompts

static const char *const s_words[] = {
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then", "a", "little",
    "girl", "named", "Lily", "went", "to", "park", "with", "her", "mom", "sun", "was", "bright",
    "code", "int", "main", "(void)", "{", "return", "0;", "}", "42", "3.14", "caf\xc3\xa9", "na\xc3\xafve",
};

// Prompt k of the test set: 1 to 90 words, so prompts span a few to ~150 tokens.
static void s_prompt(int k, char *buf, size_t len) {
    int n = 1 + (k * 37) % 90;
    buf[0] = 0;
    unsigned x = 2654435761u * (unsigned)(k + 1);
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        const char *w = s_words[(x >> 16) % (sizeof s_words / sizeof s_words[0])];
        if (strlen(buf) + strlen(w) + 2 >= len) break;
        if (i) strcat(buf, " ");
        strcat(buf, w);
    }
}

// kvf-generate's greedy output for a prompt: its ids (json array) and text.
static void s_reference(const kvh_cluster_t *c, const char *model, const char *prompt, int max_tokens, json_t **ids,
                        char **text, char **finish) {
    char bin[512], out[400], err[400], mt[16];
    snprintf(out, sizeof out, "%s/gen.json", c->dir);
    snprintf(err, sizeof err, "%s/gen.err", c->dir);
    snprintf(mt, sizeof mt, "%d", max_tokens);
    char *argv[] = {(char *)kvh_bin("kvf-generate", bin, sizeof bin), "--model", (char *)model, "--backend", "cpu",
                    "--prompt", (char *)prompt, "--max-new-tokens", mt, "--json", NULL};
    int rc = kvh_run(argv, out, err, 60);
    if (rc != 0) kvh_tail(err);
    cr_assert_eq(rc, 0, "kvf-generate failed (%d) for '%s'", rc, prompt);
    json_error_t je;
    json_t *j = json_load_file(out, JSON_DISABLE_EOF_CHECK, &je);
    cr_assert_not_null(j, "kvf-generate --json: %s", je.text);
    json_t *o = json_object_get(j, "output_ids");
    if (!o) o = json_object_get(j, "ids");
    cr_assert(json_is_array(o), "kvf-generate --json has no output_ids");
    *ids = json_incref(o);
    json_t *t = json_object_get(j, "text");
    cr_assert(json_is_string(t), "kvf-generate --json has no text");
    *text = strdup(json_string_value(t));
    json_t *f = json_object_get(j, "finish_reason");
    *finish = json_is_string(f) ? strdup(json_string_value(f)) : NULL;
    json_decref(j);
}

#define S_DISTINCT 30
#define S_LINES 300

static int s_max_tokens(int k) { return 4 + (k % 5) * 5; }

// ---------------------------------------------------------------- (a) correctness

Test(cluster, three_workers_300_prompts_match_kvf_generate_and_each_is_answered_once, .timeout = 200) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    kvh_require_bin("kvf-generate");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, model, NULL);
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "w%d", i);
        kvh_start_worker(&c, model, id, "--threads", "1", "--cache-max-entry-count", "512", "--block-size", "16",
                         NULL);
    }

    // The reference, while the workers start: 30 distinct prompts through kvf-generate.
    char prompts[S_DISTINCT][1024];
    json_t *ref_ids[S_DISTINCT];
    char *ref_text[S_DISTINCT], *ref_finish[S_DISTINCT];
    double t0 = kvh_now();
    for (int k = 0; k < S_DISTINCT; k++) {
        s_prompt(k, prompts[k], sizeof prompts[k]);
        s_reference(&c, model, prompts[k], s_max_tokens(k), &ref_ids[k], &ref_text[k], &ref_finish[k]);
    }
    cr_log_info("reference: %d kvf-generate runs in %.1f s", S_DISTINCT, kvh_now() - t0);
    kvh_wait_ready(&c, 3, 60);

    // 300 lines from those 30 prompts (native and OpenAI forms mixed) plus two bad lines.
    char in[400], out[400];
    snprintf(in, sizeof in, "%s/in.jsonl", c.dir);
    snprintf(out, sizeof out, "%s/out.jsonl", c.dir);
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < S_LINES; i++) {
        int k = (i * 7) % S_DISTINCT;
        json_t *o;
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        if (i % 3 == 2)
            o = json_pack("{s:s, s:s, s:s, s:{s:s, s:i, s:f}}", "custom_id", id, "method", "POST", "url",
                          "/v1/completions", "body", "prompt", prompts[k], "max_tokens", s_max_tokens(k),
                          "temperature", 0.0);
        else
            o = json_pack("{s:s, s:s, s:i}", "id", id, "prompt", prompts[k], "max_new_tokens", s_max_tokens(k));
        char *line = json_dumps(o, JSON_COMPACT);
        fprintf(f, "%s\n", line);
        free(line);
        json_decref(o);
        if (i == 100) fprintf(f, "{\"id\": \"bad-json\", \"prompt\": \n");
        if (i == 200) fprintf(f, "{\"id\": \"bad-temp\", \"prompt\": \"x\", \"temperature\": -2}\n");
    }
    // One more with a stop string taken from the middle of its reference text:
    // the client cuts the text before it and reports finish_reason "stop".
    int ks = 0;
    for (int k = 1; k < S_DISTINCT; k++)
        if (strlen(ref_text[k]) > strlen(ref_text[ks])) ks = k;
    size_t rl = strlen(ref_text[ks]);
    cr_assert_geq(rl, 8, "reference texts are too short for a stop-string check");
    char stop[8] = {0};
    memcpy(stop, ref_text[ks] + rl / 2, 3);
    while (stop[0] && ((unsigned char)stop[0] & 0xC0) == 0x80) memmove(stop, stop + 1, strlen(stop));  // whole UTF-8
    size_t sl = strlen(stop);
    while (sl > 0 && ((unsigned char)stop[sl - 1] & 0x80)) stop[--sl] = 0;
    cr_assert_gt(sl, 0);
    char *expect_cut = strndup(ref_text[ks], (size_t)(strstr(ref_text[ks], stop) - ref_text[ks]));
    json_t *so = json_pack("{s:s, s:s, s:s, s:{s:s, s:i, s:s}}", "custom_id", "with-stop", "method", "POST", "url",
                           "/v1/completions", "body", "prompt", prompts[ks], "max_tokens", s_max_tokens(ks), "stop",
                           stop);
    char *sline = json_dumps(so, JSON_COMPACT);
    fprintf(f, "%s\n", sline);
    free(sline);
    json_decref(so);
    fclose(f);

    t0 = kvh_now();
    const char *args[] = {"run", in, "-o", out, "--chunk", "64", "--batch-id", "t300", NULL};
    int rc = s_kvfctl(&c, NULL, 150, args);
    double secs = kvh_now() - t0;
    if (rc != 0) kvh_dump_logs(&c);
    cr_assert_eq(rc, 0, "kvfctl run failed (%d)", rc);
    cr_log_info("kvfctl run: %d lines in %.2f s", S_LINES + 2, secs);

    json_t *lines = s_read_jsonl(out);
    cr_assert_eq(json_array_size(lines), S_LINES + 3, "%zu output lines", json_array_size(lines));
    json_t *sl_out = json_array_get(lines, S_LINES + 2);
    cr_assert_str_eq(json_string_value(json_object_get(sl_out, "id")), "with-stop");
    cr_assert_str_eq(json_string_value(json_object_get(sl_out, "text")), expect_cut, "stop string '%s'", stop);
    cr_assert_str_eq(json_string_value(json_object_get(sl_out, "finish_reason")), "stop");
    free(expect_cut);
    size_t li = 0;
    for (int i = 0; i < S_LINES; i++, li++) {
        json_t *o = json_array_get(lines, li);
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        cr_assert_str_eq(json_string_value(json_object_get(o, "id")), id, "line %zu is out of order", li);
        cr_assert_null(json_object_get(o, "error"), "%s failed: %s", id,
                       json_string_value(json_object_get(json_object_get(o, "error"), "message")));
        int k = (i * 7) % S_DISTINCT;
        json_t *got = json_object_get(o, "output_ids");
        cr_assert(json_equal(got, ref_ids[k]), "%s: output_ids differ from kvf-generate's for prompt %d", id, k);
        cr_assert_str_eq(json_string_value(json_object_get(o, "text")), ref_text[k], "%s: text differs", id);
        cr_assert_eq(s_int(o, "completion_tokens"), (json_int_t)json_array_size(ref_ids[k]));
        cr_assert_gt(s_int(o, "prompt_tokens"), 0);
        if (ref_finish[k])
            cr_assert_str_eq(json_string_value(json_object_get(o, "finish_reason")), ref_finish[k], "%s", id);
        if (i == 100 || i == 200) {
            // An unreadable line is named by its number (102: after r0..r100); a readable one by its id.
            json_t *e = json_array_get(lines, ++li);
            if (i == 100) cr_assert_eq(s_int(e, "id"), 102);
            else cr_assert_str_eq(json_string_value(json_object_get(e, "id")), "bad-temp");
            cr_assert_not_null(json_object_get(json_object_get(e, "error"), "message"));
        }
    }

    // kvfctl generate streams the same greedy text.
    char gen_out[400], mt[16];
    snprintf(gen_out, sizeof gen_out, "%s/generate.json", c.dir);
    snprintf(mt, sizeof mt, "%d", s_max_tokens(3));
    const char *gargs[] = {"generate", prompts[3], "--max-tokens", mt, "--json", NULL};
    cr_assert_eq(s_kvfctl(&c, gen_out, 60, gargs), 0);
    json_t *g = json_load_file(gen_out, 0, NULL);
    cr_assert_not_null(g);
    cr_assert(json_equal(json_object_get(g, "output_ids"), ref_ids[3]), "kvfctl generate differs from kvf-generate");
    cr_assert_str_eq(json_string_value(json_object_get(g, "text")), ref_text[3]);
    json_decref(g);

    // Every worker took part; nothing was preempted or rejected; the coordinator
    // completed each submitted request once (the two bad lines never left kvfctl).
    json_t *st = s_status_after_heartbeats(&c, "w", 3);
    cr_assert_eq(s_int(st, "requests_done"), S_LINES + 1 + 1, "requests_done");
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "w%d", i);
        json_t *w = s_worker(st, id);
        cr_assert_not_null(w, "%s missing from status", id);
        cr_assert_gt(s_int(w, "tokens_total"), 0, "%s generated nothing", id);
        cr_assert_eq(s_int(w, "preemptions"), 0);
        cr_assert_eq(s_int(w, "rejected"), 0);
    }
    json_decref(st);
    json_decref(lines);
    for (int k = 0; k < S_DISTINCT; k++) {
        json_decref(ref_ids[k]);
        free(ref_text[k]);
        free(ref_finish[k]);
    }
    kvh_teardown(&c);
}

// ---------------------------------------------------------------- (b) small pools

Test(cluster, small_kv_pools_complete_without_preemption_or_rejection, .timeout = 200) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, model, NULL);
    // 24 blocks of 16 tokens: a few requests at a time, so the coordinator must queue.
    for (int i = 0; i < 2; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%d", i);
        kvh_start_worker(&c, model, id, "--threads", "1", "--cache-max-entry-count", "24", "--block-size", "16",
                         "--session-len", "256", NULL);
    }
    kvh_wait_ready(&c, 2, 60);
    json_t *st = s_status_json(&c);
    json_t *w0 = s_worker(st, "s0");
    cr_assert_not_null(w0);
    cr_assert_eq(s_int(w0, "total_blocks"), 24);
    json_decref(st);

    char in[400], out[400], prompt[1024];
    snprintf(in, sizeof in, "%s/in.jsonl", c.dir);
    snprintf(out, sizeof out, "%s/out.jsonl", c.dir);
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 120; i++) {
        s_prompt(i, prompt, sizeof prompt);
        json_t *o = json_pack("{s:i, s:s, s:i, s:b}", "id", i, "prompt", prompt, "max_tokens", 48, "ignore_eos", 1);
        char *line = json_dumps(o, JSON_COMPACT);
        fprintf(f, "%s\n", line);
        free(line);
        json_decref(o);
    }
    fclose(f);
    // kvfctl run in the background; meanwhile watch the coordinator hold what does not fit.
    char bin[512], errp[400];
    snprintf(errp, sizeof errp, "%s/kvfctl.err", c.dir);
    char *argv[] = {(char *)kvh_bin("kvfctl", bin, sizeof bin), "--coordinator", c.front, "run", in, "-o", out, NULL};
    pid_t run = kvh_spawn(argv, NULL, errp);
    kvf_client_t *cl = kvh_client(&c);
    uint32_t max_queue = 0;
    int rc = -1;
    double end = kvh_now() + 150;
    while ((rc = kvh_wait(run, 0)) == -1 && kvh_now() < end) {
        kvf_cluster_status_t *cs = NULL;
        kvf_err_t err;
        cr_assert_eq(kvf_client_status(cl, &cs, &err), 0, "%s", err.msg);
        if (cs->queue_len > max_queue) max_queue = cs->queue_len;
        for (uint32_t k = 0; k < cs->n_workers; k++) {
            cr_assert_leq(cs->workers[k].load.free_blocks, cs->workers[k].load.total_blocks);
            cr_assert_eq(cs->workers[k].load.preemptions, 0, "%s preempted", cs->workers[k].worker_id);
        }
        kvf_cluster_status_destroy(&cs);
        kvh_sleep_ms(10);
    }
    kvf_client_destroy(&cl);
    if (rc != 0) kvh_dump_logs(&c);
    cr_assert_eq(rc, 0, "kvfctl run failed (%d)", rc);
    cr_assert_gt(max_queue, 0, "the pools were never full: the coordinator queued nothing");
    json_t *lines = s_read_jsonl(out);
    cr_assert_eq(json_array_size(lines), 120);
    size_t i;
    json_t *o;
    json_array_foreach(lines, i, o) {
        cr_assert_eq(s_int(o, "id"), (json_int_t)i);
        cr_assert_null(json_object_get(o, "error"), "request %zu failed: %s", i,
                       json_string_value(json_object_get(json_object_get(o, "error"), "message")));
        cr_assert_eq(s_int(o, "completion_tokens"), 48);
    }
    json_decref(lines);
    st = s_status_after_heartbeats(&c, "s", 2);
    for (int k = 0; k < 2; k++) {
        char id[16];
        snprintf(id, sizeof id, "s%d", k);
        json_t *w = s_worker(st, id);
        cr_assert_not_null(w);
        cr_assert_eq(s_int(w, "preemptions"), 0, "%s preempted", id);
        cr_assert_eq(s_int(w, "rejected"), 0, "%s rejected requests", id);
        cr_assert_gt(s_int(w, "tokens_total"), 0);
    }
    json_decref(st);
    kvh_teardown(&c);
}

Test(cluster, kvfctl_run_resubmits_what_a_full_queue_refused, .timeout = 120) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, model, "--queue-cap", "4", NULL);
    kvh_start_worker(&c, model, "q0", "--threads", "1", "--cache-max-entry-count", "24", "--block-size", "16",
                     "--session-len", "256", NULL);
    kvh_wait_ready(&c, 1, 60);
    char in[400], out[400], prompt[1024];
    snprintf(in, sizeof in, "%s/in.jsonl", c.dir);
    snprintf(out, sizeof out, "%s/out.jsonl", c.dir);
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 40; i++) {
        s_prompt(i, prompt, sizeof prompt);
        fprintf(f, "{\"id\": %d, \"prompt\": \"%s\", \"max_tokens\": 16, \"ignore_eos\": true}\n", i, prompt);
    }
    fclose(f);
    const char *args[] = {"run", in, "-o", out, "--chunk", "20", NULL};
    int rc = s_kvfctl(&c, NULL, 100, args);
    if (rc != 0) kvh_dump_logs(&c);
    cr_assert_eq(rc, 0);
    json_t *lines = s_read_jsonl(out);
    cr_assert_eq(json_array_size(lines), 40);
    size_t i;
    json_t *o;
    json_array_foreach(lines, i, o) {
        cr_assert_eq(s_int(o, "id"), (json_int_t)i);
        cr_assert_null(json_object_get(o, "error"), "request %zu: %s", i,
                       json_string_value(json_object_get(json_object_get(o, "error"), "message")));
        cr_assert_eq(s_int(o, "completion_tokens"), 16);
    }
    json_decref(lines);
    // The queue really was full at times (else this test shows nothing): kvfctl says so.
    char errp[400];
    snprintf(errp, sizeof errp, "%s/kvfctl.err", c.dir);
    char *text = kvf_test_slurp(errp, NULL);
    cr_assert_not_null(text);
    char *p = strstr(text, " requests resubmitted after the queue was full");
    cr_assert_not_null(p, "kvfctl never met a full queue: %s", text);
    while (p > text && p[-1] != ' ') p--;
    cr_assert_gt(atoi(p), 0);
    free(text);
    kvh_teardown(&c);
}

// ---------------------------------------------------------------- (c) status and a dead worker

typedef struct {
    kvf_client_t *cl;
    const uint64_t *rids;
    int n;
    uint32_t want;       // completion tokens of every request
    uint32_t *streamed;  // tokens seen per request
    int *done;
    int n_done;
} s_events_t;

// Reads what has arrived (for up to ~300 ms), so the coordinator never has to
// hold results back; asserts each request ends once, with all its tokens.
static void s_drain(s_events_t *e, int wait_ms) {
    double end = kvh_now() + 0.3;
    int wait = wait_ms;
    while (kvh_now() < end) {
        kvf_event_t ev = {0};
        kvf_err_t err;
        if (kvf_client_next(e->cl, wait, &ev, &err) < 0) break;
        wait = 0;
        int k = 0;
        while (k < e->n && e->rids[k] != ev.rid) k++;
        cr_assert_lt(k, e->n, "unknown rid %llu", (unsigned long long)ev.rid);
        cr_assert_eq(e->done[k], 0, "rid %llu: event after DONE", (unsigned long long)ev.rid);
        if (ev.type == KVF_EVENT_TOKENS) {
            e->streamed[k] += ev.n_ids;
        } else {
            cr_assert_eq(ev.type, KVF_EVENT_DONE, "rid %llu failed: %s", (unsigned long long)ev.rid, ev.message);
            cr_assert_eq(ev.completion_tokens, e->want);
            e->done[k] = 1;
            e->n_done++;
        }
        kvf_event_clear(&ev);
    }
}

static void s_check_status_sane(json_t *st, int n_workers) {
    json_t *ws = json_object_get(st, "workers");
    cr_assert_eq(json_array_size(ws), (size_t)n_workers);
    size_t i;
    json_t *w;
    json_array_foreach(ws, i, w) {
        json_int_t free_b = s_int(w, "free_blocks"), total = s_int(w, "total_blocks");
        cr_assert_gt(total, 0);
        cr_assert(free_b >= 0 && free_b <= total, "free %lld of %lld", (long long)free_b, (long long)total);
        cr_assert_geq(s_int(w, "running"), 0);
        cr_assert_geq(s_int(w, "waiting"), 0);
        double tps = json_number_value(json_object_get(w, "tokens_per_s"));
        cr_assert(tps >= 0 && tps < 1e9, "tokens/s %g", tps);
        cr_assert_gt(s_int(json_object_get(w, "plan"), "kv_blocks"), 0);
        cr_assert_str_eq(json_string_value(json_object_get(w, "backend")), "cpu");
    }
    cr_assert_geq(s_int(st, "queue_len"), 0);
}

Test(cluster, status_during_a_batch_and_a_killed_worker_shows_dead, .timeout = 200) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, model, "--heartbeat-ms", "200", "--dead-after-ms", "1500", NULL);
    pid_t victim = 0;
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "w%d", i);
        pid_t p = kvh_start_worker(&c, model, id, "--threads", "1", "--cache-max-entry-count", "1024", "--block-size",
                                   "16", NULL);
        if (i == 2) victim = p;
    }
    kvh_wait_ready(&c, 3, 60);

    kvf_client_t *cl = kvh_client(&c);
    enum { N = 60, T = 300 };
    kvf_request_t reqs[N];
    char prompts[N][1024];
    for (int i = 0; i < N; i++) {
        s_prompt(i, prompts[i], sizeof prompts[i]);
        reqs[i] = (kvf_request_t){.text = prompts[i], .sampling = kvf_sampling_default()};
        reqs[i].sampling.max_new_tokens = T;
        reqs[i].sampling.ignore_eos = 1;
    }
    uint64_t rids[N];
    kvf_err_t err;
    cr_assert_eq(kvf_client_submit(cl, NULL, reqs, N, rids, NULL, &err), 0, "%s", err.msg);

    uint32_t streamed[N] = {0};
    int done[N] = {0};
    s_events_t evs = {cl, rids, N, T, streamed, done, 0};

    // Status while it runs: every worker, sane numbers, work visible somewhere.
    int saw_running = 0;
    for (int round = 0; round < 40 && !saw_running && evs.n_done < N; round++) {
        s_drain(&evs, 50);
        json_t *st = s_status_json(&c);
        s_check_status_sane(st, 3);
        json_int_t busy = s_int(json_object_get(st, "totals"), "running") + s_int(st, "queue_len");
        size_t i;
        json_t *w;
        json_array_foreach(json_object_get(st, "workers"), i, w) {
            cr_assert_str_eq(json_string_value(json_object_get(w, "state")), "ready");
        }
        saw_running = busy > 0 && s_int(json_object_get(st, "totals"), "running") > 0;
        json_decref(st);
    }
    cr_assert(saw_running, "never saw a running request in kvfctl status");
    cr_assert_lt(evs.n_done, N, "the batch finished before a worker could be killed; make it longer");

    // SIGKILL one worker: within dead-after-ms it shows as dead.
    cr_assert_eq(kill(victim, SIGKILL), 0);
    kvh_wait(victim, 5);
    for (int i = 0; i < c.n_workers; i++)
        if (c.workers[i] == victim) c.workers[i] = 0;
    double end = kvh_now() + 10;
    int dead = 0;
    while (!dead && kvh_now() < end) {
        s_drain(&evs, 100);
        json_t *st = s_status_json(&c);
        json_t *w = s_worker(st, "w2");
        cr_assert_not_null(w, "the killed worker vanished from status");
        dead = strcmp(json_string_value(json_object_get(w, "state")), "dead") == 0;
        if (dead) {
            cr_assert_eq(s_int(json_object_get(st, "totals"), "dead"), 1);
            cr_assert_str_eq(json_string_value(json_object_get(s_worker(st, "w0"), "state")), "ready");
        }
        json_decref(st);
    }
    cr_assert(dead, "a SIGKILLed worker is not shown as dead after 10 s");

    // Its requests finish on the others; every token reaches the client exactly once.
    end = kvh_now() + 120;
    while (evs.n_done < N && kvh_now() < end) s_drain(&evs, 200);
    cr_assert_eq(evs.n_done, N, "%d of %d requests finished", evs.n_done, N);
    for (int i = 0; i < N; i++) cr_assert_eq(streamed[i], T, "rid %llu streamed %u tokens", (unsigned long long)rids[i], streamed[i]);
        kvf_client_destroy(&cl);
    kvh_teardown(&c);
}

// ---------------------------------------------------------------- deploy/kvf-node

#include <netinet/in.h>
#include <sys/socket.h>

// A TCP port that is free on loopback now (the kernel's pick).
static int s_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int s_pid_alive(const char *pidfile, pid_t *pid_out) {
    char *s = kvf_test_slurp(pidfile, NULL);
    if (!s) return 0;
    pid_t pid = (pid_t)atoi(s);
    free(s);
    if (pid_out) *pid_out = pid;
    return pid > 0 && kill(pid, 0) == 0;
}

Test(cluster, kvf_node_starts_reports_and_stops_a_node, .timeout = 120) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    kvh_require_bin("kvfctl");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    char dir[64] = "/tmp/kvf-node-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char script[512], fp[16], bp[16], log[128], out[128];
    snprintf(script, sizeof script, "%s/deploy/kvf-node", KVF_SOURCE_DIR);
    snprintf(fp, sizeof fp, "%d", s_free_port());
    do snprintf(bp, sizeof bp, "%d", s_free_port());
    while (strcmp(fp, bp) == 0);
    snprintf(log, sizeof log, "%s/node.log", dir);
    snprintf(out, sizeof out, "%s/status.json", dir);
    char *start[] = {script, "start", "--model", model, "--workers", "2", "--backend", "cpu", "--front-port", fp,
                     "--back-port", bp, "--run-dir", dir, "--bin-dir", KVF_BIN_DIR, "--timeout", "60",
                     "--threads", "1", "--cache-max-entry-count", "64", NULL};
    int rc = kvh_run(start, log, NULL, 90);
    if (rc != 0) kvh_tail(log);
    cr_assert_eq(rc, 0, "kvf-node start failed (%d)", rc);

    // Started, registered, and the pids are the processes'.
    char pf[128];
    pid_t pids[3];
    const char *names[] = {"coordinator", "worker-0", "worker-1"};
    for (int i = 0; i < 3; i++) {
        snprintf(pf, sizeof pf, "%s/%s.pid", dir, names[i]);
        cr_assert(s_pid_alive(pf, &pids[i]), "%s is not running", names[i]);
    }
    char *status[] = {script, "status", "--run-dir", dir, "--bin-dir", KVF_BIN_DIR, "--json", NULL};
    cr_assert_eq(kvh_run(status, out, NULL, 30), 0);
    char *text = kvf_test_slurp(out, NULL);
    cr_assert_not_null(text);
    char *js = strchr(text, '{');  // after the process lines
    cr_assert_not_null(js, "%s", text);
    json_t *st = json_loads(js, 0, NULL);
    cr_assert_not_null(st, "%s", text);
    cr_assert_eq(s_int(json_object_get(st, "totals"), "ready"), 2);
    json_decref(st);
    free(text);

    // A second start refuses; stop ends every process.
    cr_assert_eq(kvh_run(start, log, NULL, 30), 1, "a second start should refuse");
    char *stop[] = {script, "stop", "--run-dir", dir, "--timeout", "10", NULL};
    cr_assert_eq(kvh_run(stop, log, NULL, 30), 0);
    for (int i = 0; i < 3; i++) {
        // They are not our children: alive means kill(pid, 0) works and it is not a zombie.
        char proc[64], stat[256] = "";
        snprintf(proc, sizeof proc, "/proc/%d/stat", (int)pids[i]);
        FILE *sf = fopen(proc, "r");  // (a /proc file has no size: read it as a stream)
        if (sf) {
            if (!fgets(stat, sizeof stat, sf)) stat[0] = 0;
            fclose(sf);
        }
        int running = stat[0] && !strstr(stat, ") Z ");
        cr_assert_not(running, "%s (pid %d) survived kvf-node stop: %.60s", names[i], (int)pids[i], stat);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

// Whether the process of pid is gone (not ours: a zombie counts as gone).
static int s_proc_gone(pid_t pid) {
    char proc[64], stat[256] = "";
    snprintf(proc, sizeof proc, "/proc/%d/stat", (int)pid);
    FILE *sf = fopen(proc, "r");
    if (sf) {
        if (!fgets(stat, sizeof stat, sf)) stat[0] = 0;
        fclose(sf);
    }
    return !stat[0] || strstr(stat, ") Z ") != NULL;
}

// kvf-node's per-node layouts: node "a" runs the coordinator and one TP group of 2
// ranks (--tp 2, deploy/tp-run.sh), node "b" only a worker that joins a's coordinator
// (--join, as every node but the first of a Slurm job). A batch runs across both;
// each node's stop ends its own processes, the TP group's ranks too.
Test(cluster, kvf_node_tp_groups_and_a_joined_node, .timeout = 150) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    kvh_require_bin("kvfctl");
    char model[512];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    char da[64] = "/tmp/kvf-node-a-XXXXXX", db[64] = "/tmp/kvf-node-b-XXXXXX";
    cr_assert_not_null(mkdtemp(da));
    cr_assert_not_null(mkdtemp(db));
    char script[512], fp[16], bp[16], log[128], out[128], in[128], res[128], front[64];
    snprintf(script, sizeof script, "%s/deploy/kvf-node", KVF_SOURCE_DIR);
    snprintf(fp, sizeof fp, "%d", s_free_port());
    do snprintf(bp, sizeof bp, "%d", s_free_port());
    while (strcmp(fp, bp) == 0);
    snprintf(front, sizeof front, "tcp://127.0.0.1:%s", fp);
    snprintf(log, sizeof log, "%s/node.log", da);
    snprintf(out, sizeof out, "%s/status.json", da);
    char *start_a[] = {script, "start", "--model", model, "--tp", "2", "--name", "a", "--backend", "cpu",
                       "--front-port", fp, "--back-port", bp, "--run-dir", da, "--bin-dir", KVF_BIN_DIR,
                       "--timeout", "60", "--threads", "1", "--cache-max-entry-count", "64", NULL};
    int rc = kvh_run(start_a, log, NULL, 90);
    if (rc != 0) kvh_tail(log);
    cr_assert_eq(rc, 0, "kvf-node start --tp 2 failed (%d)", rc);
    char *start_b[] = {script, "start", "--model", model, "--join", "127.0.0.1", "--name", "b", "--backend", "cpu",
                       "--front-port", fp, "--back-port", bp, "--run-dir", db, "--bin-dir", KVF_BIN_DIR,
                       "--timeout", "60", "--threads", "1", "--cache-max-entry-count", "64", NULL};
    rc = kvh_run(start_b, log, NULL, 90);
    if (rc != 0) kvh_tail(log);
    cr_assert_eq(rc, 0, "kvf-node start --join failed (%d)", rc);
    char pf[128];
    cr_assert_not(access(strcat(strcpy(pf, db), "/coordinator.pid"), F_OK) == 0, "--join started a coordinator");

    // Both registered with a's coordinator: a's group as one worker of TP size 2.
    char *status[] = {KVF_BIN_DIR "/kvfctl", "--coordinator", front, "status", "--json", NULL};
    cr_assert_eq(kvh_run(status, out, NULL, 30), 0);
    json_t *st = json_load_file(out, 0, NULL);
    cr_assert_not_null(st);
    cr_assert_eq(s_int(json_object_get(st, "totals"), "ready"), 2);
    json_t *ws = json_object_get(st, "workers");
    int seen = 0;
    for (size_t i = 0; i < json_array_size(ws); i++) {
        json_t *w = json_array_get(ws, i);
        const char *id = json_string_value(json_object_get(w, "id"));
        cr_assert_not_null(id);
        if (!strcmp(id, "a-cpu0")) {
            seen |= 1;
            cr_assert_eq(s_int(w, "tp_size"), 2);
        }
        if (!strcmp(id, "b-cpu0")) {
            seen |= 2;
            cr_assert_eq(s_int(w, "tp_size"), 1);
        }
    }
    cr_assert_eq(seen, 3, "workers a-cpu0 and b-cpu0 expected");
    json_decref(st);

    // A batch across the two nodes comes back whole.
    snprintf(in, sizeof in, "%s/in.jsonl", da);
    snprintf(res, sizeof res, "%s/out.jsonl", da);
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 24; i++) fprintf(f, "{\"id\": %d, \"prompt\": \"Once upon a time %d\", \"max_tokens\": 16}\n", i, i);
    fclose(f);
    char *run[] = {KVF_BIN_DIR "/kvfctl", "--coordinator", front, "run", in, "-o", res, "--progress", "none", NULL};
    cr_assert_eq(kvh_run(run, log, NULL, 60), 0);
    char *text = kvf_test_slurp(res, NULL);
    cr_assert_not_null(text);
    int lines = 0;
    for (char *c = text; *c; c++) lines += *c == '\n';
    free(text);
    cr_assert_eq(lines, 24);

    // The group's processes: tp-run (worker-0.pid) and its two ranks (its first log line names them).
    pid_t pids[4];
    char tplog[160];
    snprintf(tplog, sizeof tplog, "%s/worker-0.log", da);
    text = kvf_test_slurp(tplog, NULL);
    cr_assert_not_null(text);
    char *pl = strstr(text, " pids ");
    cr_assert_not_null(pl, "%s", text);
    int r0 = 0, r1 = 0;
    cr_assert_eq(sscanf(pl, " pids %d %d", &r0, &r1), 2, "%s", text);
    free(text);
    pids[0] = r0, pids[1] = r1;
    cr_assert(s_pid_alive(strcat(strcpy(pf, da), "/worker-0.pid"), &pids[2]));
    cr_assert(s_pid_alive(strcat(strcpy(pf, db), "/worker-0.pid"), &pids[3]));
    char *stop_b[] = {script, "stop", "--run-dir", db, "--timeout", "10", NULL};
    cr_assert_eq(kvh_run(stop_b, log, NULL, 30), 0);
    cr_assert(s_proc_gone(pids[3]), "b's worker survived its stop");
    cr_assert(!s_proc_gone(pids[0]), "b's stop must leave a's group alone");
    char *stop_a[] = {script, "stop", "--run-dir", da, "--timeout", "20", NULL};
    cr_assert_eq(kvh_run(stop_a, log, NULL, 40), 0);
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 50 && !s_proc_gone(pids[i]); k++) usleep(100000);  // a rank leaves just after tp-run
        cr_assert(s_proc_gone(pids[i]), "pid %d of a's group survived kvf-node stop", (int)pids[i]);
    }
    char cmd[192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", da, db);
    cr_assert_eq(system(cmd), 0);
}

// A cpu step longer than the coordinator's --dead-after-ms (a real model's
// prefill on a cpu worker takes seconds, a single layer of it can): the
// worker's heartbeat thread keeps the heartbeats going while the step runs, so
// it is not declared dead mid-step (which would re-dispatch the request to the
// same slow step until the coordinator gave up) and the request is answered.
// The model (kvf-mkmodel, 24 layers, 76M parameters) takes ~10 s for the
// prompt's one 1500-token step on one thread; the coordinator allows 4 s of
// silence, with a heartbeat due every 50 ms. Less is not safe on a shared 2-core
// machine: under ctest -j2 alone a process asleep for 50 ms once woke 2.7 s late
// (at 300 ms allowed, this test once saw 314 ms between heartbeats).
Test(cluster, a_step_longer_than_dead_after_keeps_the_worker_alive, .timeout = 120) {
    kvh_require_bin("kvf-coordinator");
    kvh_require_bin("kvf-worker");
    kvh_require_bin("kvf-mkmodel");
    kvh_cluster_t c;
    kvh_start_coordinator(&c, NULL, "--heartbeat-ms", "50", "--dead-after-ms", "4000", NULL);
    char model[400], bin[512], cmd[1024];
    snprintf(model, sizeof model, "%s/slow-model", c.dir);
    snprintf(cmd, sizeof cmd, "%s %s --hidden 512 --layers 24 --heads 8 --kv-heads 4 --intermediate 1536 --seed 3 "
             ">/dev/null", kvh_bin("kvf-mkmodel", bin, sizeof bin), model);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    kvh_start_worker(&c, model, "slow", "--threads", "1", "--max-prefill-token-num", "1536", NULL);
    kvh_wait_ready(&c, 1, 60);
    // 1500 prompt ids: one prefill step
    char ids[16384];
    size_t at = 0;
    for (int i = 0; i < 1500; i++)
        at += (size_t)snprintf(ids + at, sizeof ids - at, "%s%d", i ? "," : "", 3 + (i * 7) % 500);
    char out[400];
    snprintf(out, sizeof out, "%s/generate.json", c.dir);
    const char *args[] = {"generate", "--prompt-ids", ids, "--max-tokens", "4", "--json", NULL};
    const double t0 = kvh_now();
    int rc = s_kvfctl(&c, out, 90, args);
    const double took = kvh_now() - t0;
    char log[400];
    snprintf(log, sizeof log, "%s/coordinator.log", c.dir);
    char *text = kvf_test_slurp(log, NULL);
    cr_assert_not_null(text);
    const int declared_dead = strstr(text, "dead: ") != NULL;
    free(text);
    if (rc != 0 || declared_dead) {
        kvh_dump_logs(&c);
        snprintf(log, sizeof log, "%s/worker-slow.log", c.dir);
        kvh_tail(log);
    }
    cr_assert_eq(rc, 0, "kvfctl generate failed (%d)", rc);
    cr_assert_not(declared_dead, "the worker was declared dead during its long step (coordinator.log)");
    json_t *res = json_load_file(out, 0, NULL);
    cr_assert_not_null(res);
    cr_assert_eq(s_int(res, "completion_tokens"), 4);
    cr_assert_eq(s_int(res, "prompt_tokens"), 1500);
    json_decref(res);
    // the test means something only if the prefill step outlasted --dead-after-ms (4 s)
    cr_assert_gt(took, 6.0, "the request took %.2f s: the step was not longer than --dead-after-ms", took);
    cr_log_info("1500-token prompt on a 76M-parameter model, one thread: %.2f s, no heartbeat gap over 4 s", took);
    kvh_teardown(&c);
}
