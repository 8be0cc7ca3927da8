// tests/test_proto.c — the wire codec (proto/codec.h, proto/PROTOCOL.md):
// round trips of every message type at edge values, hostile bytes (truncation,
// wrong field types, absurd counts, deep nesting, fuzz), and send/recv over a
// real ROUTER/DEALER pair. Hostile messages are crafted with msgpack-c's packer.
#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/zmqutil.h"
#include "proto/codec.h"

// ---------------------------------------------------------------- helpers

// Encodes in, decodes into *out (asserting both succeed), and checks that
// re-encoding the decoded message gives the same bytes.
static void s_roundtrip(const kvf_msg_t *in, kvf_msg_t *out) {
    kvf_err_t err;
    char *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    cr_assert_eq(kvf_msg_encode(in, &buf, &len, &err), 0, "encode %s: %s", kvf_msg_type_name(in->type), err.msg);
    cr_assert_eq(kvf_msg_decode(buf, len, out, &err), 0, "decode %s: %s", kvf_msg_type_name(in->type), err.msg);
    cr_assert_eq(out->type, in->type);
    cr_assert_eq(out->version, KVF_PROTO_VERSION);
    cr_assert_eq(kvf_msg_encode(out, &buf2, &len2, &err), 0, "re-encode: %s", err.msg);
    cr_assert_eq(len2, len);
    cr_assert_eq(memcmp(buf, buf2, len), 0, "re-encoding of %s differs", kvf_msg_type_name(in->type));
    free(buf);
    free(buf2);
}

static void s_assert_str(kvf_str_t got, const char *want) {
    cr_assert_not_null(got.ptr);
    cr_assert_eq(got.len, strlen(want), "length %u, want %zu (\"%s\")", got.len, strlen(want), want);
    cr_assert_eq(memcmp(got.ptr, want, got.len), 0);
    cr_assert_eq(got.ptr[got.len], '\0', "decoded strings are NUL-terminated");
}

static void s_assert_ids(kvf_ids_t got, const int32_t *want, uint32_t n) {
    cr_assert_eq(got.n, n);
    for (uint32_t i = 0; i < n; i++) cr_assert_eq(got.ids[i], want[i], "ids[%u]", i);
}

static kvf_sampling_t s_odd_sampling(void) {
    kvf_sampling_t s = kvf_sampling_default();
    s.temperature = 0.7f;
    s.top_k = 40;
    s.top_p = 0.9f;
    s.min_p = 0.05f;
    s.repetition_penalty = 1.3f;
    s.seed = UINT64_MAX;
    s.max_new_tokens = INT32_MAX;
    s.ignore_eos = 1;
    s.n_stop_ids = KVF_MAX_STOP_IDS;
    for (int i = 0; i < KVF_MAX_STOP_IDS; i++) s.stop_ids[i] = i == 0 ? INT32_MAX : i * 1000;
    return s;
}

static void s_assert_sampling(const kvf_sampling_t *a, const kvf_sampling_t *b) {
    cr_assert_eq(a->temperature, b->temperature);
    cr_assert_eq(a->top_k, b->top_k);
    cr_assert_eq(a->top_p, b->top_p);
    cr_assert_eq(a->min_p, b->min_p);
    cr_assert_eq(a->repetition_penalty, b->repetition_penalty);
    cr_assert_eq(a->seed, b->seed);
    cr_assert_eq(a->max_new_tokens, b->max_new_tokens);
    cr_assert_eq(a->ignore_eos, b->ignore_eos);
    cr_assert_eq(a->n_stop_ids, b->n_stop_ids);
    for (int i = 0; i < a->n_stop_ids; i++) cr_assert_eq(a->stop_ids[i], b->stop_ids[i]);
}

static const char *const S_UTF8 = "h\xc3\xa9llo w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80";

static kvf_plan_t s_plan(void) {
    kvf_plan_t p = {.weights_bytes = 16ull << 30, .workspace_bytes = UINT64_MAX, .kv_bytes = 1,
                    .free_bytes_at_start = 0, .kv_blocks = UINT32_MAX, .block_size = 64,
                    .tokens_fit = 123456789012ull, .full_sequences = 7, .kv_dtype = 1,
                    .quant = 1};
    return p;
}

static void s_assert_plan(const kvf_plan_t *a, const kvf_plan_t *b) {
    cr_assert_eq(a->weights_bytes, b->weights_bytes);
    cr_assert_eq(a->workspace_bytes, b->workspace_bytes);
    cr_assert_eq(a->kv_bytes, b->kv_bytes);
    cr_assert_eq(a->free_bytes_at_start, b->free_bytes_at_start);
    cr_assert_eq(a->kv_blocks, b->kv_blocks);
    cr_assert_eq(a->block_size, b->block_size);
    cr_assert_eq(a->tokens_fit, b->tokens_fit);
    cr_assert_eq(a->full_sequences, b->full_sequences);
    cr_assert_eq(a->kv_dtype, b->kv_dtype);
    cr_assert_eq(a->quant, b->quant);
}

static kvf_msg_heartbeat_t s_load(void) {
    kvf_msg_heartbeat_t h = {.state = KVF_WSTATE_DRAINING, .free_blocks = 0, .total_blocks = UINT32_MAX,
                             .running = 3, .waiting = 4, .tokens_per_s = 12345.678901234,
                             .tokens_total = UINT64_MAX, .preemptions = 5, .prefix_hits = 6,
                             .prefix_misses = 7, .rejected = 8};
    return h;
}

static void s_assert_load(const kvf_msg_heartbeat_t *a, const kvf_msg_heartbeat_t *b) {
    cr_assert_eq(a->state, b->state);
    cr_assert_eq(a->free_blocks, b->free_blocks);
    cr_assert_eq(a->total_blocks, b->total_blocks);
    cr_assert_eq(a->running, b->running);
    cr_assert_eq(a->waiting, b->waiting);
    cr_assert_eq(a->tokens_per_s, b->tokens_per_s);
    cr_assert_eq(a->tokens_total, b->tokens_total);
    cr_assert_eq(a->preemptions, b->preemptions);
    cr_assert_eq(a->prefix_hits, b->prefix_hits);
    cr_assert_eq(a->prefix_misses, b->prefix_misses);
    cr_assert_eq(a->rejected, b->rejected);
}

// A valid, fully populated message of each type (pointers into static storage
// of this file), used as fuzz seeds and for the wrong-type sweep.
static const int32_t S_IDS[] = {0, 1, INT32_MAX, 128000, 7};
static uint64_t s_rids[] = {1, UINT64_MAX, 42};

static void s_sample_msg(kvf_msg_type t, kvf_msg_t *m, kvf_submit_req_t *reqs, kvf_worker_status_t *ws) {
    kvf_msg_init(m, t);
    kvf_ids_t ids = {(int32_t *)S_IDS, 5};
    switch (t) {
    case KVF_MSG_REGISTER:
        m->u.reg = (kvf_msg_register_t){.worker_id = kvf_str("host:gpu0"), .group_id = kvf_str("g0"),
                                        .model = kvf_str(S_UTF8), .backend = kvf_str("cuda"), .device = -1,
                                        .tp_rank = 1, .tp_size = 2, .total_blocks = 1000, .free_blocks = 999,
                                        .max_batch_size = 256, .max_prefill_tokens = 8192, .session_len = 4096,
                                        .vocab_size = 128256, .prefix_caching = 1, .plan = s_plan()};
        break;
    case KVF_MSG_WELCOME: m->u.welcome = (kvf_msg_welcome_t){.heartbeat_ms = 500, .dead_after_ms = UINT32_MAX}; break;
    case KVF_MSG_HEARTBEAT: m->u.heartbeat = s_load(); break;
    case KVF_MSG_RESULT:
        m->u.result = (kvf_msg_result_t){.rid = UINT64_MAX, .tokens = ids, .text = kvf_str(S_UTF8), .finished = 1,
                                         .finish_reason = KVF_FINISH_ERROR, .prompt_tokens = 10,
                                         .completion_tokens = 5, .free_blocks = 17, .error_code = KVF_E_DEVICE,
                                         .error = kvf_str("cuda: illegal address")};
        break;
    case KVF_MSG_ASSIGN:
        m->u.assign.rid = 77;
        m->u.assign.text = kvf_str("prompt");
        m->u.assign.prompt_ids = ids;
        m->u.assign.resume_ids = ids;
        m->u.assign.sampling = s_odd_sampling();
        m->u.assign.prefix_hash = 0xdeadbeefcafef00dull;
        break;
    case KVF_MSG_SUBMIT:
        reqs[0] = (kvf_submit_req_t){.tag = kvf_str("custom-1"), .text = kvf_str(S_UTF8), .sampling = s_odd_sampling()};
        reqs[1] = (kvf_submit_req_t){.tag = kvf_str(""), .prompt_ids = ids, .sampling = kvf_sampling_default()};
        m->u.submit = (kvf_msg_submit_t){.batch_id = kvf_str("batch-9"), .reqs = reqs, .n_reqs = 2};
        break;
    case KVF_MSG_ACK: m->u.ack = (kvf_msg_ack_t){.batch_id = kvf_str("batch-9"), .rids = s_rids, .n_rids = 3}; break;
    case KVF_MSG_TOKENS: m->u.tokens = (kvf_msg_tokens_t){.rid = 3, .tokens = ids, .text = kvf_str("abc")}; break;
    case KVF_MSG_DONE:
        m->u.done = (kvf_msg_done_t){.rid = 3, .finish_reason = KVF_FINISH_LENGTH, .prompt_tokens = 1,
                                     .completion_tokens = 256};
        break;
    case KVF_MSG_ERROR:
        m->u.error = (kvf_msg_error_t){.rid = 9, .code = KVF_E_TOO_LONG, .message = kvf_str("prompt too long")};
        break;
    case KVF_MSG_CANCEL: m->u.cancel = (kvf_msg_cancel_t){.rid = 5, .batch_id = kvf_str("b")}; break;
    case KVF_MSG_ATTACH: m->u.attach.batch_id = kvf_str("batch-9"); break;
    case KVF_MSG_DRAIN: case KVF_MSG_SHUTDOWN: m->u.target.worker_id = kvf_str("host:gpu1"); break;
    case KVF_MSG_STATUS_REPLY:
        ws[0] = (kvf_worker_status_t){.worker_id = kvf_str("host:gpu0"), .group_id = kvf_str("g0"),
                                      .backend = kvf_str("cuda"), .model = kvf_str("llama"), .device = 0,
                                      .tp_rank = 0, .tp_size = 2, .block_size = 64, .load = s_load(),
                                      .plan = s_plan(), .assigned = 12, .last_seen_ms = UINT64_MAX};
        m->u.status = (kvf_msg_status_reply_t){.workers = ws, .n_workers = 1, .queue_len = 3, .queue_cap = 1000,
                                               .requests_done = 99, .uptime_ms = 123456};
        break;
    default: break;  // STATUS, OK: no body
    }
}

static const kvf_msg_type S_ALL_TYPES[] = {
    KVF_MSG_REGISTER, KVF_MSG_HEARTBEAT, KVF_MSG_RESULT, KVF_MSG_WELCOME, KVF_MSG_ASSIGN, KVF_MSG_SUBMIT,
    KVF_MSG_CANCEL, KVF_MSG_STATUS, KVF_MSG_ATTACH, KVF_MSG_ACK, KVF_MSG_TOKENS, KVF_MSG_DONE,
    KVF_MSG_ERROR, KVF_MSG_STATUS_REPLY, KVF_MSG_DRAIN, KVF_MSG_SHUTDOWN, KVF_MSG_OK,
};
#define S_N_TYPES (sizeof S_ALL_TYPES / sizeof S_ALL_TYPES[0])

static void s_encode_sample(kvf_msg_type t, char **buf, size_t *len) {
    kvf_msg_t m;
    kvf_submit_req_t reqs[2];
    kvf_worker_status_t ws[1];
    kvf_err_t err;
    s_sample_msg(t, &m, reqs, ws);
    cr_assert_eq(kvf_msg_encode(&m, buf, len, &err), 0, "%s", err.msg);
}

// Decodes bytes that must be rejected; returns the error code.
static kvf_status s_reject(const void *data, size_t len, kvf_err_t *err) {
    kvf_msg_t m;
    cr_assert_eq(kvf_msg_decode(data, len, &m, err), -1, "hostile input of %zu bytes was accepted", len);
    cr_assert_null(m.arena_, "a failed decode leaves nothing to release");
    cr_assert(err->code == KVF_E_FORMAT || err->code == KVF_E_PROTO, "code %s", kvf_status_name(err->code));
    cr_assert(err->msg[0] != '\0');
    return err->code;
}

// msgpack packer over an sbuffer, for hand-made messages.
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} s_pack;

static void s_pack_init(s_pack *p) {
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
}

static void s_pack_str(s_pack *p, const char *s) { msgpack_pack_str_with_body(&p->pk, s, strlen(s)); }

static void s_pack_head(s_pack *p, uint32_t version, uint32_t type, size_t body_keys) {
    msgpack_pack_array(&p->pk, 3);
    msgpack_pack_uint32(&p->pk, version);
    msgpack_pack_uint32(&p->pk, type);
    msgpack_pack_map(&p->pk, body_keys);
}

// ---------------------------------------------------------------- round trips

Test(roundtrip, register_welcome_heartbeat) {
    kvf_msg_t in, out;
    s_sample_msg(KVF_MSG_REGISTER, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    const kvf_msg_register_t *r = &out.u.reg;
    s_assert_str(r->worker_id, "host:gpu0");
    s_assert_str(r->group_id, "g0");
    s_assert_str(r->model, S_UTF8);
    s_assert_str(r->backend, "cuda");
    cr_assert_eq(r->device, -1);
    cr_assert_eq(r->tp_rank, 1);
    cr_assert_eq(r->tp_size, 2);
    cr_assert_eq(r->total_blocks, 1000);
    cr_assert_eq(r->free_blocks, 999);
    cr_assert_eq(r->max_batch_size, 256);
    cr_assert_eq(r->max_prefill_tokens, 8192);
    cr_assert_eq(r->session_len, 4096);
    cr_assert_eq(r->vocab_size, 128256);
    cr_assert_eq(r->prefix_caching, 1);
    s_assert_plan(&r->plan, &in.u.reg.plan);
    kvf_msg_clear(&out);
    cr_assert_null(out.arena_);
    cr_assert_eq(out.type, KVF_MSG_INVALID);

    s_sample_msg(KVF_MSG_WELCOME, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.welcome.heartbeat_ms, 500);
    cr_assert_eq(out.u.welcome.dead_after_ms, UINT32_MAX);
    kvf_msg_clear(&out);

    s_sample_msg(KVF_MSG_HEARTBEAT, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    s_assert_load(&out.u.heartbeat, &in.u.heartbeat);
    kvf_msg_clear(&out);

    // All zero and empty.
    kvf_msg_init(&in, KVF_MSG_REGISTER);
    s_roundtrip(&in, &out);
    s_assert_str(out.u.reg.worker_id, "");
    s_assert_str(out.u.reg.model, "");
    cr_assert_eq(out.u.reg.plan.kv_blocks, 0);
    kvf_msg_clear(&out);
}

Test(roundtrip, result_tokens_done) {
    kvf_msg_t in, out;
    s_sample_msg(KVF_MSG_RESULT, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    const kvf_msg_result_t *r = &out.u.result;
    cr_assert_eq(r->rid, UINT64_MAX);
    s_assert_ids(r->tokens, S_IDS, 5);
    s_assert_str(r->text, S_UTF8);
    cr_assert_eq(r->finished, 1);
    cr_assert_eq(r->finish_reason, KVF_FINISH_ERROR);
    cr_assert_eq(r->prompt_tokens, 10);
    cr_assert_eq(r->completion_tokens, 5);
    cr_assert_eq(r->free_blocks, 17);
    cr_assert_eq(r->error_code, KVF_E_DEVICE);
    s_assert_str(r->error, "cuda: illegal address");
    kvf_msg_clear(&out);

    // A final chunk with no tokens and no text.
    kvf_msg_init(&in, KVF_MSG_RESULT);
    in.u.result.rid = 0;
    in.u.result.finished = 1;
    in.u.result.finish_reason = KVF_FINISH_STOP;
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.result.tokens.n, 0);
    s_assert_str(out.u.result.text, "");
    s_assert_str(out.u.result.error, "");
    cr_assert_eq(out.u.result.finish_reason, KVF_FINISH_STOP);
    kvf_msg_clear(&out);

    s_sample_msg(KVF_MSG_TOKENS, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.tokens.rid, 3);
    s_assert_ids(out.u.tokens.tokens, S_IDS, 5);
    s_assert_str(out.u.tokens.text, "abc");
    kvf_msg_clear(&out);

    for (int fr = KVF_FINISH_NONE; fr <= KVF_FINISH_ERROR; fr++) {
        kvf_msg_init(&in, KVF_MSG_DONE);
        in.u.done = (kvf_msg_done_t){.rid = UINT64_MAX, .finish_reason = (uint32_t)fr, .prompt_tokens = UINT32_MAX,
                                     .completion_tokens = 0};
        s_roundtrip(&in, &out);
        cr_assert_eq(out.u.done.rid, UINT64_MAX);
        cr_assert_eq(out.u.done.finish_reason, (uint32_t)fr);
        cr_assert_eq(out.u.done.prompt_tokens, UINT32_MAX);
        cr_assert_eq(out.u.done.completion_tokens, 0);
        kvf_msg_clear(&out);
    }
}

Test(roundtrip, assign_with_every_sampling_field) {
    kvf_msg_t in, out;
    s_sample_msg(KVF_MSG_ASSIGN, &in, NULL, NULL);
    // A long prompt: counts far beyond the small fixarray forms.
    enum { N = 100000 };
    int32_t *big = malloc(N * sizeof *big);
    for (int i = 0; i < N; i++) big[i] = i % 2 ? INT32_MAX - i : i;
    in.u.assign.prompt_ids = (kvf_ids_t){big, N};
    s_roundtrip(&in, &out);
    const kvf_msg_assign_t *a = &out.u.assign;
    cr_assert_eq(a->rid, 77);
    s_assert_str(a->text, "prompt");
    s_assert_ids(a->prompt_ids, big, N);
    s_assert_ids(a->resume_ids, S_IDS, 5);
    cr_assert_eq(a->prefix_hash, 0xdeadbeefcafef00dull);
    kvf_sampling_t want = s_odd_sampling();
    s_assert_sampling(&a->sampling, &want);
    kvf_msg_clear(&out);
    free(big);

    // Empty text and ids.
    kvf_msg_init(&in, KVF_MSG_ASSIGN);
    in.u.assign.rid = UINT64_MAX;
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.assign.rid, UINT64_MAX);
    s_assert_str(out.u.assign.text, "");
    cr_assert_eq(out.u.assign.prompt_ids.n, 0);
    cr_assert_eq(out.u.assign.resume_ids.n, 0);
    kvf_sampling_t def = kvf_sampling_default();
    s_assert_sampling(&out.u.assign.sampling, &def);
    kvf_msg_clear(&out);
}

Test(roundtrip, submit_and_ack) {
    kvf_msg_t in, out;
    kvf_submit_req_t reqs[2];
    s_sample_msg(KVF_MSG_SUBMIT, &in, reqs, NULL);
    s_roundtrip(&in, &out);
    const kvf_msg_submit_t *s = &out.u.submit;
    s_assert_str(s->batch_id, "batch-9");
    cr_assert_eq(s->n_reqs, 2);
    s_assert_str(s->reqs[0].tag, "custom-1");
    s_assert_str(s->reqs[0].text, S_UTF8);
    cr_assert_eq(s->reqs[0].prompt_ids.n, 0);
    kvf_sampling_t odd = s_odd_sampling(), def = kvf_sampling_default();
    s_assert_sampling(&s->reqs[0].sampling, &odd);
    s_assert_str(s->reqs[1].tag, "");
    s_assert_str(s->reqs[1].text, "");
    s_assert_ids(s->reqs[1].prompt_ids, S_IDS, 5);
    s_assert_sampling(&s->reqs[1].sampling, &def);
    kvf_msg_clear(&out);

    // Zero requests, empty batch id.
    kvf_msg_init(&in, KVF_MSG_SUBMIT);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.submit.n_reqs, 0);
    s_assert_str(out.u.submit.batch_id, "");
    kvf_msg_clear(&out);

    // Many requests.
    enum { N = 5000 };
    kvf_submit_req_t *many = calloc(N, sizeof *many);
    for (int i = 0; i < N; i++) {
        many[i].text = kvf_str(i % 2 ? "x" : "");
        many[i].sampling = kvf_sampling_default();
        many[i].sampling.seed = (uint64_t)i;
    }
    kvf_msg_init(&in, KVF_MSG_SUBMIT);
    in.u.submit.reqs = many;
    in.u.submit.n_reqs = N;
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.submit.n_reqs, N);
    cr_assert_eq(out.u.submit.reqs[N - 1].sampling.seed, N - 1);
    s_assert_str(out.u.submit.reqs[N - 1].text, "x");
    kvf_msg_clear(&out);
    free(many);

    s_sample_msg(KVF_MSG_ACK, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    s_assert_str(out.u.ack.batch_id, "batch-9");
    cr_assert_eq(out.u.ack.n_rids, 3);
    cr_assert_eq(out.u.ack.rids[0], 1);
    cr_assert_eq(out.u.ack.rids[1], UINT64_MAX);
    cr_assert_eq(out.u.ack.rids[2], 42);
    kvf_msg_clear(&out);
    kvf_msg_init(&in, KVF_MSG_ACK);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.ack.n_rids, 0);
    kvf_msg_clear(&out);
}

Test(roundtrip, small_control_messages) {
    kvf_msg_t in, out;
    s_sample_msg(KVF_MSG_ERROR, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.error.rid, 9);
    cr_assert_eq(out.u.error.code, KVF_E_TOO_LONG);
    s_assert_str(out.u.error.message, "prompt too long");
    kvf_msg_clear(&out);

    s_sample_msg(KVF_MSG_CANCEL, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.cancel.rid, 5);
    s_assert_str(out.u.cancel.batch_id, "b");
    kvf_msg_clear(&out);

    s_sample_msg(KVF_MSG_ATTACH, &in, NULL, NULL);
    s_roundtrip(&in, &out);
    s_assert_str(out.u.attach.batch_id, "batch-9");
    kvf_msg_clear(&out);

    kvf_msg_type targets[] = {KVF_MSG_DRAIN, KVF_MSG_SHUTDOWN};
    for (int i = 0; i < 2; i++) {
        s_sample_msg(targets[i], &in, NULL, NULL);
        s_roundtrip(&in, &out);
        s_assert_str(out.u.target.worker_id, "host:gpu1");
        kvf_msg_clear(&out);
        kvf_msg_init(&in, targets[i]);
        s_roundtrip(&in, &out);
        s_assert_str(out.u.target.worker_id, "");
        kvf_msg_clear(&out);
    }

    kvf_msg_type empties[] = {KVF_MSG_STATUS, KVF_MSG_OK};
    for (int i = 0; i < 2; i++) {
        kvf_msg_init(&in, empties[i]);
        char *buf;
        size_t len;
        kvf_err_t err;
        cr_assert_eq(kvf_msg_encode(&in, &buf, &len, &err), 0);
        const uint8_t want[] = {0x93, 0x01, (uint8_t)empties[i], 0x80};  // [1, type, {}]
        cr_assert_eq(len, sizeof want);
        cr_assert_eq(memcmp(buf, want, len), 0);
        free(buf);
        s_roundtrip(&in, &out);
        kvf_msg_clear(&out);
    }
}

Test(roundtrip, status_reply) {
    kvf_msg_t in, out;
    kvf_worker_status_t ws[1];
    s_sample_msg(KVF_MSG_STATUS_REPLY, &in, NULL, ws);
    s_roundtrip(&in, &out);
    const kvf_msg_status_reply_t *s = &out.u.status;
    cr_assert_eq(s->n_workers, 1);
    cr_assert_eq(s->queue_len, 3);
    cr_assert_eq(s->queue_cap, 1000);
    cr_assert_eq(s->requests_done, 99);
    cr_assert_eq(s->uptime_ms, 123456);
    const kvf_worker_status_t *w = &s->workers[0];
    s_assert_str(w->worker_id, "host:gpu0");
    s_assert_str(w->group_id, "g0");
    s_assert_str(w->backend, "cuda");
    s_assert_str(w->model, "llama");
    cr_assert_eq(w->device, 0);
    cr_assert_eq(w->tp_rank, 0);
    cr_assert_eq(w->tp_size, 2);
    cr_assert_eq(w->block_size, 64);
    s_assert_load(&w->load, &ws[0].load);
    s_assert_plan(&w->plan, &ws[0].plan);
    cr_assert_eq(w->assigned, 12);
    cr_assert_eq(w->last_seen_ms, UINT64_MAX);
    kvf_msg_clear(&out);

    kvf_msg_init(&in, KVF_MSG_STATUS_REPLY);
    s_roundtrip(&in, &out);
    cr_assert_eq(out.u.status.n_workers, 0);
    kvf_msg_clear(&out);
}

Test(roundtrip, names_and_clear) {
    cr_assert_str_eq(kvf_msg_type_name(KVF_MSG_SUBMIT), "SUBMIT");
    cr_assert_str_eq(kvf_msg_type_name(KVF_MSG_STATUS_REPLY), "STATUS_REPLY");
    cr_assert_str_eq(kvf_msg_type_name((kvf_msg_type)99), "UNKNOWN");
    cr_assert_str_eq(kvf_finish_name(KVF_FINISH_CANCELLED), "cancelled");
    cr_assert_str_eq(kvf_finish_name((kvf_finish_reason)9), "unknown");
    kvf_str_t s = kvf_str(NULL);
    cr_assert_eq(s.len, 0);
    cr_assert_str_eq(s.ptr, "");
    kvf_msg_t m;
    memset(&m, 0, sizeof m);
    kvf_msg_clear(&m);
    kvf_msg_clear(NULL);
    s_sample_msg(KVF_MSG_TOKENS, &m, NULL, NULL);  // caller-owned pointers: clear only zeroes
    kvf_msg_clear(&m);
    cr_assert_eq(m.u.tokens.tokens.n, 0);
}

// ---------------------------------------------------------------- decoding rules

Test(decode, defaults_unknown_fields_and_bin_strings) {
    s_pack p;
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_SUBMIT, 3);
    s_pack_str(&p, "from_the_future");  // unknown fields are ignored, whatever their shape
    msgpack_pack_array(&p.pk, 2);
    msgpack_pack_map(&p.pk, 1);
    s_pack_str(&p, "x");
    msgpack_pack_nil(&p.pk);
    msgpack_pack_ext_with_body(&p.pk, "ab", 2, 5);
    s_pack_str(&p, "reqs");
    msgpack_pack_array(&p.pk, 2);
    msgpack_pack_map(&p.pk, 2);   // req 0: text as bin, sampling with two fields
    s_pack_str(&p, "text");
    msgpack_pack_bin_with_body(&p.pk, "hi", 2);
    s_pack_str(&p, "sampling");
    msgpack_pack_map(&p.pk, 3);
    s_pack_str(&p, "temperature");
    msgpack_pack_uint8(&p.pk, 1);  // an integer is a valid float field
    s_pack_str(&p, "ignore_eos");
    msgpack_pack_uint8(&p.pk, 1);  // 0/1 for a bool
    s_pack_str(&p, "newer_knob");
    msgpack_pack_float(&p.pk, 3.0f);
    msgpack_pack_map(&p.pk, 0);   // req 1: everything defaulted
    s_pack_str(&p, "batch_id");
    s_pack_str(&p, "b1");
    kvf_msg_t m;
    kvf_err_t err;
    cr_assert_eq(kvf_msg_decode(p.sb.data, p.sb.size, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.u.submit.n_reqs, 2);
    s_assert_str(m.u.submit.batch_id, "b1");
    const kvf_submit_req_t *r0 = &m.u.submit.reqs[0], *r1 = &m.u.submit.reqs[1];
    s_assert_str(r0->text, "hi");
    s_assert_str(r0->tag, "");
    cr_assert_eq(r0->sampling.temperature, 1.0f);
    cr_assert_eq(r0->sampling.ignore_eos, 1);
    kvf_sampling_t def = kvf_sampling_default();
    cr_assert_eq(r0->sampling.max_new_tokens, def.max_new_tokens);
    cr_assert_eq(r0->sampling.top_p, def.top_p);
    s_assert_sampling(&r1->sampling, &def);
    s_assert_str(r1->text, "");
    cr_assert_eq(r1->prompt_ids.n, 0);
    kvf_msg_clear(&m);
    msgpack_sbuffer_destroy(&p.sb);
}

Test(decode, missing_required_and_duplicate_fields) {
    kvf_err_t err;
    s_pack p;
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_DONE, 2);  // no finish_reason, no completion_tokens
    s_pack_str(&p, "rid");
    msgpack_pack_uint64(&p.pk, 1);
    s_pack_str(&p, "prompt_tokens");
    msgpack_pack_uint64(&p.pk, 1);
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "DONE") && strstr(err.msg, "finish_reason") && strstr(err.msg, "missing"), "%s",
              err.msg);
    msgpack_sbuffer_destroy(&p.sb);

    // A known type with a bad body still tells the caller which type it was.
    kvf_msg_t m;
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_ATTACH, 2);
    s_pack_str(&p, "batch_id");
    s_pack_str(&p, "a");
    s_pack_str(&p, "batch_id");
    s_pack_str(&p, "b");
    cr_assert_eq(kvf_msg_decode(p.sb.data, p.sb.size, &m, &err), -1);
    cr_assert_eq(m.type, KVF_MSG_ATTACH);
    cr_assert_null(m.arena_);
    cr_assert(strstr(err.msg, "twice"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);

    // Missing nested required field: plan.block_size in REGISTER.
    char *buf;
    size_t len;
    s_encode_sample(KVF_MSG_REGISTER, &buf, &len);
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object o;
    cr_assert_eq(msgpack_unpack(buf, len, NULL, &z, &o), MSGPACK_UNPACK_SUCCESS);
    msgpack_object *body = &o.via.array.ptr[2];
    int found = 0;
    for (uint32_t i = 0; i < body->via.map.size; i++) {
        msgpack_object_kv *kv = &body->via.map.ptr[i];
        if (kv->key.via.str.size == 4 && memcmp(kv->key.via.str.ptr, "plan", 4) == 0) {
            msgpack_object_map *pm = &kv->val.via.map;
            for (uint32_t j = 0; j < pm->size; j++)
                if (pm->ptr[j].key.via.str.size == 10 && memcmp(pm->ptr[j].key.via.str.ptr, "block_size", 10) == 0) {
                    pm->ptr[j] = pm->ptr[pm->size - 1];
                    pm->size--;
                    found = 1;
                    break;
                }
        }
    }
    cr_assert(found);
    s_pack_init(&p);
    msgpack_pack_object(&p.pk, o);
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert(strstr(err.msg, "plan.block_size"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);
    msgpack_zone_destroy(&z);
    free(buf);
}

Test(decode, header_rules) {
    kvf_err_t err;
    kvf_msg_t m;
    // Wrong version: protocol error, even when the rest would not parse as v1.
    const uint8_t v2[] = {0x93, 0x02, 0x0c, 0x80};
    cr_assert_eq(s_reject(v2, sizeof v2, &err), KVF_E_PROTO);
    cr_assert(strstr(err.msg, "version"), "%s", err.msg);
    const uint8_t v2b[] = {0x92, 0x02, 0x0c};
    cr_assert_eq(s_reject(v2b, sizeof v2b, &err), KVF_E_PROTO);
    // Unknown type.
    const uint8_t unk[] = {0x93, 0x01, 0x63, 0x80};
    cr_assert_eq(s_reject(unk, sizeof unk, &err), KVF_E_PROTO);
    cr_assert(strstr(err.msg, "99"), "%s", err.msg);
    kvf_msg_decode(unk, sizeof unk, &m, &err);
    cr_assert_eq(m.type, KVF_MSG_INVALID);
    const uint8_t zero_type[] = {0x93, 0x01, 0x00, 0x80};
    cr_assert_eq(s_reject(zero_type, sizeof zero_type, &err), KVF_E_PROTO);
    // Not an array at the top, or an array of the wrong shape.
    const uint8_t map_top[] = {0x81, 0xa1, 'a', 0x01};
    cr_assert_eq(s_reject(map_top, sizeof map_top, &err), KVF_E_FORMAT);
    const uint8_t int_top[] = {0x05};
    cr_assert_eq(s_reject(int_top, sizeof int_top, &err), KVF_E_FORMAT);
    const uint8_t str_top[] = {0xa3, 'a', 'b', 'c'};
    cr_assert_eq(s_reject(str_top, sizeof str_top, &err), KVF_E_FORMAT);
    const uint8_t empty_arr[] = {0x90};
    cr_assert_eq(s_reject(empty_arr, sizeof empty_arr, &err), KVF_E_FORMAT);
    const uint8_t two[] = {0x92, 0x01, 0x0c};
    cr_assert_eq(s_reject(two, sizeof two, &err), KVF_E_FORMAT);
    const uint8_t four[] = {0x94, 0x01, 0x0c, 0x80, 0x80};
    cr_assert_eq(s_reject(four, sizeof four, &err), KVF_E_FORMAT);
    const uint8_t body_arr[] = {0x93, 0x01, 0x0c, 0x90};
    cr_assert_eq(s_reject(body_arr, sizeof body_arr, &err), KVF_E_FORMAT);
    const uint8_t str_version[] = {0x93, 0xa1, '1', 0x0c, 0x80};
    cr_assert_eq(s_reject(str_version, sizeof str_version, &err), KVF_E_FORMAT);
    const uint8_t neg_type[] = {0x93, 0x01, 0xff, 0x80};
    cr_assert_eq(s_reject(neg_type, sizeof neg_type, &err), KVF_E_FORMAT);
    const uint8_t int_key[] = {0x93, 0x01, 0x0d, 0x81, 0x01, 0xa1, 'x'};
    cr_assert_eq(s_reject(int_key, sizeof int_key, &err), KVF_E_FORMAT);
    // Trailing garbage after a valid STATUS, and the empty message.
    const uint8_t trailing[] = {0x93, 0x01, 0x0c, 0x80, 0x00};
    cr_assert_eq(s_reject(trailing, sizeof trailing, &err), KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "trailing"), "%s", err.msg);
    cr_assert_eq(s_reject("", 0, &err), KVF_E_FORMAT);
    cr_assert_eq(s_reject(NULL, 0, &err), KVF_E_FORMAT);
    // The valid STATUS itself decodes.
    cr_assert_eq(kvf_msg_decode(trailing, sizeof trailing - 1, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.type, KVF_MSG_STATUS);
    kvf_msg_clear(&m);
}

Test(decode, range_checks) {
    kvf_err_t err;
    struct {
        kvf_msg_type type;
        const char *key;
        int64_t value;  // packed as int64 (or uint64 when >= 0)
        int ok;
    } cases[] = {
        {KVF_MSG_WELCOME, "heartbeat_ms", (int64_t)UINT32_MAX + 1, 0},
        {KVF_MSG_WELCOME, "heartbeat_ms", -1, 0},
        {KVF_MSG_WELCOME, "heartbeat_ms", UINT32_MAX, 1},
        {KVF_MSG_ERROR, "code", 0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        s_pack p;
        s_pack_init(&p);
        int n = cases[c].type == KVF_MSG_WELCOME ? 2 : 1;
        s_pack_head(&p, KVF_PROTO_VERSION, cases[c].type, (size_t)n);
        s_pack_str(&p, cases[c].key);
        if (cases[c].value < 0) msgpack_pack_int64(&p.pk, cases[c].value);
        else msgpack_pack_uint64(&p.pk, (uint64_t)cases[c].value);
        if (n == 2) {
            s_pack_str(&p, "dead_after_ms");
            msgpack_pack_uint32(&p.pk, 1);
        }
        kvf_msg_t m;
        int rc = kvf_msg_decode(p.sb.data, p.sb.size, &m, &err);
        cr_assert_eq(rc, cases[c].ok ? 0 : -1, "case %zu: %s", c, err.msg);
        if (!cases[c].ok) cr_assert(strstr(err.msg, cases[c].key), "%s", err.msg);
        kvf_msg_clear(&m);
        msgpack_sbuffer_destroy(&p.sb);
    }
    // Token ids outside int32, too many stop ids, an unknown finish reason.
    s_pack p;
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_TOKENS, 2);
    s_pack_str(&p, "rid");
    msgpack_pack_uint8(&p.pk, 1);
    s_pack_str(&p, "tokens");
    msgpack_pack_array(&p.pk, 2);
    msgpack_pack_int32(&p.pk, INT32_MIN);
    msgpack_pack_uint64(&p.pk, (uint64_t)INT32_MAX + 1);
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert(strstr(err.msg, "tokens[1]"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);

    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_ASSIGN, 2);
    s_pack_str(&p, "rid");
    msgpack_pack_uint8(&p.pk, 1);
    s_pack_str(&p, "sampling");
    msgpack_pack_map(&p.pk, 1);
    s_pack_str(&p, "stop_ids");
    msgpack_pack_array(&p.pk, KVF_MAX_STOP_IDS + 1);
    for (int i = 0; i <= KVF_MAX_STOP_IDS; i++) msgpack_pack_int(&p.pk, i);
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert(strstr(err.msg, "sampling.stop_ids"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);

    // A double beyond float range for a float field.
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_ASSIGN, 2);
    s_pack_str(&p, "rid");
    msgpack_pack_uint8(&p.pk, 1);
    s_pack_str(&p, "sampling");
    msgpack_pack_map(&p.pk, 1);
    s_pack_str(&p, "top_p");
    msgpack_pack_double(&p.pk, 1e300);
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert(strstr(err.msg, "sampling.top_p"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);

    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_DONE, 4);
    s_pack_str(&p, "rid");
    msgpack_pack_uint8(&p.pk, 1);
    s_pack_str(&p, "finish_reason");
    s_pack_str(&p, "bored");
    s_pack_str(&p, "prompt_tokens");
    msgpack_pack_uint8(&p.pk, 1);
    s_pack_str(&p, "completion_tokens");
    msgpack_pack_uint8(&p.pk, 1);
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert(strstr(err.msg, "bored"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);
}

// For every field of the body (recursively: nested maps and maps inside arrays),
// replaces its value with each value of a wrong type in turn and checks that
// decoding fails naming the message type and the field.
typedef struct {
    msgpack_object *top;
    const char *tname;
    int checked;
} s_sweep;

static int s_compatible(const msgpack_object *orig, const msgpack_object *bad, const char *key, size_t klen) {
    int is_finish = klen == 13 && memcmp(key, "finish_reason", 13) == 0;
    switch (bad->type) {
    case MSGPACK_OBJECT_BOOLEAN: return orig->type == MSGPACK_OBJECT_BOOLEAN;
    case MSGPACK_OBJECT_STR: return orig->type == MSGPACK_OBJECT_STR && !is_finish;
    case MSGPACK_OBJECT_FLOAT64: return orig->type == MSGPACK_OBJECT_FLOAT32 || orig->type == MSGPACK_OBJECT_FLOAT64;
    case MSGPACK_OBJECT_MAP: return orig->type == MSGPACK_OBJECT_MAP;
    default: return 0;  // nil and ["x"] fit no field
    }
}

static void s_sweep_map(s_sweep *s, msgpack_object *map) {
    msgpack_object str_x = {.type = MSGPACK_OBJECT_STR, .via.str = {1, "x"}};
    msgpack_object bads[6];
    bads[0] = (msgpack_object){.type = MSGPACK_OBJECT_NIL};
    bads[1] = (msgpack_object){.type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = true};
    bads[2] = str_x;
    bads[3] = (msgpack_object){.type = MSGPACK_OBJECT_FLOAT64, .via.f64 = 1.5};
    bads[4] = (msgpack_object){.type = MSGPACK_OBJECT_MAP, .via.map = {0, NULL}};
    bads[5] = (msgpack_object){.type = MSGPACK_OBJECT_ARRAY, .via.array = {1, &str_x}};
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        msgpack_object_kv *kv = &map->via.map.ptr[i];
        msgpack_object orig = kv->val;
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.via.str.size, kv->key.via.str.ptr);
        for (int b = 0; b < 6; b++) {
            if (s_compatible(&orig, &bads[b], key, strlen(key))) continue;
            kv->val = bads[b];
            s_pack p;
            s_pack_init(&p);
            msgpack_pack_object(&p.pk, *s->top);
            kvf_err_t err;
            kvf_msg_t m;
            int rc = kvf_msg_decode(p.sb.data, p.sb.size, &m, &err);
            cr_assert_eq(rc, -1, "%s: field %s with a wrong-typed value (%d) was accepted", s->tname, key, b);
            cr_assert_eq(err.code, KVF_E_FORMAT);
            cr_assert(strstr(err.msg, s->tname) && strstr(err.msg, key), "error does not name %s.%s: %s", s->tname,
                      key, err.msg);
            msgpack_sbuffer_destroy(&p.sb);
            s->checked++;
        }
        kv->val = orig;
        if (orig.type == MSGPACK_OBJECT_MAP) s_sweep_map(s, &kv->val);
        if (orig.type == MSGPACK_OBJECT_ARRAY)
            for (uint32_t j = 0; j < orig.via.array.size; j++)
                if (orig.via.array.ptr[j].type == MSGPACK_OBJECT_MAP) s_sweep_map(s, &orig.via.array.ptr[j]);
    }
}

Test(hostile, wrong_type_in_every_field) {
    int total = 0;
    for (size_t t = 0; t < S_N_TYPES; t++) {
        char *buf;
        size_t len;
        s_encode_sample(S_ALL_TYPES[t], &buf, &len);
        msgpack_zone z;
        msgpack_zone_init(&z, 4096);
        msgpack_object o;
        cr_assert_eq(msgpack_unpack(buf, len, NULL, &z, &o), MSGPACK_UNPACK_SUCCESS);
        s_sweep s = {&o, kvf_msg_type_name(S_ALL_TYPES[t]), 0};
        s_sweep_map(&s, &o.via.array.ptr[2]);
        if (S_ALL_TYPES[t] != KVF_MSG_STATUS && S_ALL_TYPES[t] != KVF_MSG_OK)
            cr_assert_gt(s.checked, 0, "%s: no field swept", s.tname);
        total += s.checked;
        msgpack_zone_destroy(&z);
        free(buf);
    }
    // About 150 fields (nested ones included) with 5-6 wrong values each.
    cr_assert_gt(total, 750, "only %d cases", total);
}

// ---------------------------------------------------------------- hostile bytes

Test(hostile, every_prefix_of_a_submit) {
    char *buf;
    size_t len;
    s_encode_sample(KVF_MSG_SUBMIT, &buf, &len);
    kvf_err_t err;
    for (size_t n = 0; n < len; n++) {
        cr_assert_eq(s_reject(buf, n, &err), KVF_E_FORMAT, "prefix %zu/%zu: %s", n, len, err.msg);
        // The prefix in a buffer of exactly that size, so ASan sees any overread.
        char *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        s_reject(cut, n, &err);
        free(cut);
    }
    kvf_msg_t m;
    cr_assert_eq(kvf_msg_decode(buf, len, &m, &err), 0);
    kvf_msg_clear(&m);
    free(buf);
}

Test(hostile, absurd_counts_and_lengths) {
    kvf_err_t err;
    // A top-level array32 claiming 2^32-1 elements.
    const uint8_t arr32[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x0a, 0x80};
    s_reject(arr32, sizeof arr32, &err);
    cr_assert(strstr(err.msg, "4294967295"), "%s", err.msg);
    // The same as the reqs of an otherwise valid SUBMIT, and as a map32.
    const uint8_t reqs32[] = {0x93, 0x01, 0x0a, 0x81, 0xa4, 'r', 'e', 'q', 's', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x80};
    s_reject(reqs32, sizeof reqs32, &err);
    const uint8_t map32[] = {0x93, 0x01, 0x0a, 0xdf, 0x7f, 0xff, 0xff, 0xff, 0xa1, 'x', 0x00};
    s_reject(map32, sizeof map32, &err);
    // A str32 claiming 64 MiB in a 10-byte message; the same for bin32 and ext32.
    const uint8_t str32[] = {0x93, 0x01, 0x0d, 0x81, 0xdb, 0x04, 0x00, 0x00, 0x00, 'x'};
    cr_assert_eq(sizeof str32, 10);
    s_reject(str32, sizeof str32, &err);
    cr_assert(strstr(err.msg, "67108864"), "%s", err.msg);
    const uint8_t bin32[] = {0x93, 0x01, 0x0d, 0x81, 0xc6, 0x04, 0x00, 0x00, 0x00, 'x'};
    s_reject(bin32, sizeof bin32, &err);
    const uint8_t ext32[] = {0x93, 0x01, 0x0d, 0x81, 0xc9, 0x04, 0x00, 0x00, 0x00, 0x01};
    s_reject(ext32, sizeof ext32, &err);
    // The reserved byte.
    const uint8_t c1[] = {0x93, 0x01, 0x0c, 0xc1};
    s_reject(c1, sizeof c1, &err);
    cr_assert(strstr(err.msg, "0xc1"), "%s", err.msg);
    // Counts that fit one level each but not together: two arrays of 3 in 8 bytes.
    const uint8_t owed[] = {0x92, 0x93, 0x00, 0x00, 0x00, 0x93, 0x00, 0x00};
    s_reject(owed, sizeof owed, &err);
}

Test(hostile, deep_nesting) {
    kvf_err_t err;
    enum { D = 1000 };
    uint8_t *deep = malloc(D + 1);
    memset(deep, 0x91, D);
    deep[D] = 0xc0;
    s_reject(deep, D + 1, &err);
    cr_assert(strstr(err.msg, "nesting"), "%s", err.msg);
    memset(deep, 0x81, D);  // maps: {nil: {nil: ...}} is as deep
    for (int i = 0; i < D; i += 2) deep[i] = 0x81, deep[i + 1] = 0xc0;
    s_reject(deep, D + 1, &err);
    free(deep);
    // Exactly at the limit passes the pre-scan, one deeper does not.
    uint8_t at[KVF_PROTO_MAX_DEPTH + 2];
    memset(at, 0x91, sizeof at);
    at[KVF_PROTO_MAX_DEPTH] = 0xc0;
    cr_assert_eq(kvf_msgpack_prescan(at, KVF_PROTO_MAX_DEPTH + 1, KVF_PROTO_MAX_DEPTH, &err), 0, "%s", err.msg);
    at[KVF_PROTO_MAX_DEPTH + 1] = 0xc0;
    at[KVF_PROTO_MAX_DEPTH] = 0x91;
    cr_assert_eq(kvf_msgpack_prescan(at, KVF_PROTO_MAX_DEPTH + 2, KVF_PROTO_MAX_DEPTH, &err), -1);
    cr_assert_eq(err.code, KVF_E_FORMAT);
    // An unknown field nested 17 deep inside a valid STATUS is rejected too.
    s_pack p;
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_STATUS, 1);
    s_pack_str(&p, "x");
    for (int i = 0; i < KVF_PROTO_MAX_DEPTH - 1; i++) msgpack_pack_array(&p.pk, 1);
    msgpack_pack_nil(&p.pk);
    s_reject(p.sb.data, p.sb.size, &err);
    msgpack_sbuffer_destroy(&p.sb);
}

Test(hostile, prescan_accepts_every_format) {
    // One of each msgpack format in an array; the scan must accept exactly it.
    s_pack p;
    s_pack_init(&p);
    msgpack_pack_array(&p.pk, 20);
    msgpack_pack_nil(&p.pk);
    msgpack_pack_true(&p.pk);
    msgpack_pack_int8(&p.pk, -100);
    msgpack_pack_int16(&p.pk, -1000);
    msgpack_pack_int32(&p.pk, -100000);
    msgpack_pack_int64(&p.pk, INT64_MIN);
    msgpack_pack_uint8(&p.pk, 200);
    msgpack_pack_uint16(&p.pk, 60000);
    msgpack_pack_uint64(&p.pk, UINT64_MAX);
    msgpack_pack_float(&p.pk, 1.5f);
    msgpack_pack_double(&p.pk, 2.5);
    char big[70000];
    memset(big, 'a', sizeof big);
    msgpack_pack_str_with_body(&p.pk, big, 40);      // str8
    msgpack_pack_str_with_body(&p.pk, big, 300);     // str16
    msgpack_pack_str_with_body(&p.pk, big, 70000);   // str32
    msgpack_pack_bin_with_body(&p.pk, big, 300);     // bin16
    msgpack_pack_ext_with_body(&p.pk, big, 1, 1);    // fixext1
    msgpack_pack_ext_with_body(&p.pk, big, 16, 1);   // fixext16
    msgpack_pack_ext_with_body(&p.pk, big, 3, 1);    // ext8
    msgpack_pack_array(&p.pk, 20);                   // array16
    for (int i = 0; i < 20; i++) msgpack_pack_fix_int8(&p.pk, -1);
    msgpack_pack_map(&p.pk, 16);                     // map16
    for (int i = 0; i < 32; i++) msgpack_pack_nil(&p.pk);
    kvf_err_t err;
    cr_assert_eq(kvf_msgpack_prescan(p.sb.data, p.sb.size, 16, &err), 0, "%s", err.msg);
    for (size_t n = 0; n < p.sb.size; n += 97)
        cr_assert_eq(kvf_msgpack_prescan(p.sb.data, n, 16, &err), -1, "prefix %zu", n);
    cr_assert_eq(kvf_msgpack_prescan(p.sb.data, p.sb.size, 0, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    msgpack_sbuffer_destroy(&p.sb);
}

Test(hostile, decoded_size_is_bounded_by_input) {
    // 200000 empty request maps: 200 KB on the wire, but each would become a
    // whole kvf_submit_req_t; the decoder refuses to expand that far.
    enum { N = 200000 };
    s_pack p;
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_SUBMIT, 1);
    s_pack_str(&p, "reqs");
    msgpack_pack_array(&p.pk, N);
    for (int i = 0; i < N; i++) msgpack_pack_map(&p.pk, 0);
    kvf_err_t err;
    s_reject(p.sb.data, p.sb.size, &err);
    cr_assert(strstr(err.msg, "exceed"), "%s", err.msg);
    msgpack_sbuffer_destroy(&p.sb);
    // Realistic requests of the same count are fine.
    s_pack_init(&p);
    s_pack_head(&p, KVF_PROTO_VERSION, KVF_MSG_SUBMIT, 1);
    s_pack_str(&p, "reqs");
    msgpack_pack_array(&p.pk, N);
    for (int i = 0; i < N; i++) {
        msgpack_pack_map(&p.pk, 1);
        s_pack_str(&p, "text");
        s_pack_str(&p, "hello");
    }
    kvf_msg_t m;
    cr_assert_eq(kvf_msg_decode(p.sb.data, p.sb.size, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.u.submit.n_reqs, N);
    s_assert_str(m.u.submit.reqs[N - 1].text, "hello");
    kvf_msg_clear(&m);
    msgpack_sbuffer_destroy(&p.sb);
}

static uint64_t s_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

Test(hostile, fuzz_random_and_mutated, .timeout = 120) {
    static const uint8_t interesting[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1,
                                          0xc4, 0xc6, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd8, 0xdb, 0xdc,
                                          0xdd, 0xde, 0xdf, 0xe0, 0xff};
    char *seeds[S_N_TYPES];
    size_t seed_len[S_N_TYPES];
    for (size_t t = 0; t < S_N_TYPES; t++) s_encode_sample(S_ALL_TYPES[t], &seeds[t], &seed_len[t]);
    uint64_t rs = 0x9e3779b97f4a7c15ull;
    int accepted = 0;
    enum { ITERS = 20000, MAXLEN = 1024 };
    for (int it = 0; it < ITERS; it++) {
        uint8_t *b = malloc(MAXLEN);
        size_t len;
        if (it % 10 == 0) {  // pure random bytes, sometimes behind a valid header
            len = s_rand(&rs) % 64;
            for (size_t i = 0; i < len; i++) b[i] = (uint8_t)s_rand(&rs);
            if (len >= 3 && it % 20 == 0) b[0] = 0x93, b[1] = 0x01, b[2] = (uint8_t)S_ALL_TYPES[s_rand(&rs) % S_N_TYPES];
        } else {
            size_t t = s_rand(&rs) % S_N_TYPES;
            len = seed_len[t] < MAXLEN ? seed_len[t] : MAXLEN;
            memcpy(b, seeds[t], len);
            int muts = 1 + (int)(s_rand(&rs) % 4);
            for (int k = 0; k < muts && len > 0; k++) {
                size_t at = s_rand(&rs) % len;
                switch (s_rand(&rs) % 6) {
                case 0: b[at] ^= (uint8_t)(1u << (s_rand(&rs) % 8)); break;
                case 1: b[at] = (uint8_t)s_rand(&rs); break;
                case 2: b[at] = interesting[s_rand(&rs) % sizeof interesting]; break;
                case 3: len = at; break;  // truncate
                case 4:                   // delete one byte
                    memmove(b + at, b + at + 1, len - at - 1);
                    len--;
                    break;
                case 5:  // insert one byte
                    if (len < MAXLEN) {
                        memmove(b + at + 1, b + at, len - at);
                        b[at] = interesting[s_rand(&rs) % sizeof interesting];
                        len++;
                    }
                    break;
                }
            }
        }
        uint8_t *exact = malloc(len ? len : 1);  // exact size: ASan catches any overread
        memcpy(exact, b, len);
        free(b);
        kvf_msg_t m;
        kvf_err_t err;
        if (kvf_msg_decode(exact, len, &m, &err) == 0) {
            accepted++;
            char *re, *re2;
            size_t rlen, rlen2;
            cr_assert_eq(kvf_msg_encode(&m, &re, &rlen, &err), 0, "iteration %d: accepted but cannot re-encode: %s",
                         it, err.msg);
            kvf_msg_t m2;
            cr_assert_eq(kvf_msg_decode(re, rlen, &m2, &err), 0, "iteration %d: re-encoding rejected: %s", it,
                         err.msg);
            cr_assert_eq(kvf_msg_encode(&m2, &re2, &rlen2, &err), 0);
            cr_assert(rlen == rlen2 && memcmp(re, re2, rlen) == 0, "iteration %d: re-encoding is not stable", it);
            free(re);
            free(re2);
            kvf_msg_clear(&m2);
            kvf_msg_clear(&m);
        } else {
            cr_assert_null(m.arena_);
            cr_assert(err.code == KVF_E_FORMAT || err.code == KVF_E_PROTO, "iteration %d: code %s", it,
                      kvf_status_name(err.code));
        }
        free(exact);
    }
    // Single-byte flips in a value keep many messages valid: the loop exercised
    // the accept path as well as the reject path.
    cr_assert_gt(accepted, 100, "only %d mutated messages decoded", accepted);
    for (size_t t = 0; t < S_N_TYPES; t++) free(seeds[t]);
}

// ---------------------------------------------------------------- encoding errors

Test(encode, refuses_inconsistent_structs) {
    kvf_msg_t m;
    char *buf = (char *)1;
    size_t len = 1;
    kvf_err_t err;
    kvf_msg_init(&m, (kvf_msg_type)77);
    cr_assert_eq(kvf_msg_encode(&m, &buf, &len, &err), -1);
    cr_assert_null(buf);
    cr_assert_eq(len, 0);
    cr_assert_eq(err.code, KVF_E_INVAL);

    kvf_msg_init(&m, KVF_MSG_ASSIGN);
    m.u.assign.sampling.n_stop_ids = KVF_MAX_STOP_IDS + 1;
    cr_assert_eq(kvf_msg_encode(&m, &buf, &len, &err), -1);
    cr_assert(strstr(err.msg, "stop_ids"), "%s", err.msg);

    kvf_msg_init(&m, KVF_MSG_TOKENS);
    m.u.tokens.text.len = 5;  // NULL pointer with a length
    cr_assert_eq(kvf_msg_encode(&m, &buf, &len, &err), -1);
    cr_assert(strstr(err.msg, "text"), "%s", err.msg);

    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    m.u.submit.n_reqs = 3;
    cr_assert_eq(kvf_msg_encode(&m, &buf, &len, &err), -1);

    kvf_msg_init(&m, KVF_MSG_DONE);
    m.u.done.finish_reason = 9;
    cr_assert_eq(kvf_msg_encode(&m, &buf, &len, &err), -1);
    cr_assert(strstr(err.msg, "finish_reason"), "%s", err.msg);
}

// ---------------------------------------------------------------- sockets

Test(transport, router_dealer_exchange) {
    kvf_err_t err;
    zsock_t *router = kvf_zmq_router_bind("tcp://127.0.0.1:*", 0, &err);
    cr_assert_not_null(router, "%s", err.msg);
    char *ep = zsock_last_endpoint(router);  // a new string (czmq 4)
    zsock_t *dealer = kvf_zmq_dealer_connect(ep, "client-1", 0, &err);
    zstr_free(&ep);
    cr_assert_not_null(dealer, "%s", err.msg);
    zsock_set_rcvtimeo(router, 5000);
    zsock_set_rcvtimeo(dealer, 5000);

    // DEALER -> ROUTER: SUBMIT arrives with the sender's identity.
    kvf_msg_t out, in;
    kvf_submit_req_t reqs[2];
    s_sample_msg(KVF_MSG_SUBMIT, &out, reqs, NULL);
    cr_assert_eq(kvf_msg_send(dealer, NULL, &out, &err), 0, "%s", err.msg);
    zframe_t *id = NULL;
    cr_assert_eq(kvf_msg_recv(router, &id, &in, &err), 0, "%s", err.msg);
    cr_assert_not_null(id);
    cr_assert_eq(zframe_size(id), 8);
    cr_assert_eq(memcmp(zframe_data(id), "client-1", 8), 0);
    cr_assert_eq(in.type, KVF_MSG_SUBMIT);
    cr_assert_eq(in.u.submit.n_reqs, 2);
    s_assert_str(in.u.submit.reqs[0].text, S_UTF8);
    kvf_msg_clear(&in);

    // ROUTER -> DEALER: ACK addressed by that identity.
    s_sample_msg(KVF_MSG_ACK, &out, NULL, NULL);
    cr_assert_eq(kvf_msg_send(router, id, &out, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_msg_recv(dealer, NULL, &in, &err), 0, "%s", err.msg);
    cr_assert_eq(in.type, KVF_MSG_ACK);
    cr_assert_eq(in.u.ack.rids[1], UINT64_MAX);
    kvf_msg_clear(&in);
    zframe_destroy(&id);

    // Three frames from the dealer: format error, but the identity comes back
    // so the router can answer with an ERROR.
    zstr_sendm(dealer, "a");
    zstr_sendm(dealer, "b");
    zstr_send(dealer, "c");
    cr_assert_eq(kvf_msg_recv(router, &id, &in, &err), -1);
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert(strstr(err.msg, "frames"), "%s", err.msg);
    cr_assert_not_null(id);
    kvf_msg_init(&out, KVF_MSG_ERROR);
    out.u.error.code = err.code;
    out.u.error.message = kvf_str(err.msg);
    cr_assert_eq(kvf_msg_send(router, id, &out, &err), 0, "%s", err.msg);
    zframe_destroy(&id);
    cr_assert_eq(kvf_msg_recv(dealer, NULL, &in, &err), 0, "%s", err.msg);
    cr_assert_eq(in.type, KVF_MSG_ERROR);
    cr_assert_eq(in.u.error.code, KVF_E_FORMAT);
    kvf_msg_clear(&in);

    // Garbage payload: decode error, identity still returned.
    const uint8_t junk[] = {0x93, 0x02, 0x0a, 0x80};
    zsock_send(dealer, "b", junk, sizeof junk);
    cr_assert_eq(kvf_msg_recv(router, &id, &in, &err), -1);
    cr_assert_eq(err.code, KVF_E_PROTO);
    cr_assert_not_null(id);
    zframe_destroy(&id);

    // The next good message is still received intact (frame boundaries kept).
    kvf_msg_init(&out, KVF_MSG_STATUS);
    cr_assert_eq(kvf_msg_send(dealer, NULL, &out, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_msg_recv(router, &id, &in, &err), 0, "%s", err.msg);
    cr_assert_eq(in.type, KVF_MSG_STATUS);
    kvf_msg_clear(&in);
    zframe_destroy(&id);

    // A peer that is not there, and a receive that times out.
    zframe_t *ghost = zframe_new("nobody", 6);
    kvf_msg_init(&out, KVF_MSG_OK);
    cr_assert_eq(kvf_msg_send(router, ghost, &out, &err), -1);
    cr_assert_eq(err.code, KVF_E_PEER_LOST);
    zframe_destroy(&ghost);
    zsock_set_rcvtimeo(dealer, 50);
    cr_assert_eq(kvf_msg_recv(dealer, NULL, &in, &err), -1);
    cr_assert_eq(err.code, KVF_E_TIMEOUT);

    // An unencodable message is not sent.
    kvf_msg_init(&out, (kvf_msg_type)77);
    cr_assert_eq(kvf_msg_send(dealer, NULL, &out, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);

    zsock_destroy(&dealer);
    zsock_destroy(&router);
}
