// proto/schema.c — the field tables of every message body (see schema.h), and
// the small public helpers of codec.h that only need the tables.
#include "proto/schema.h"

#include <string.h>

#include "proto/codec.h"

#define F(T, name, kind, req) {#name, kind, offsetof(T, name), 0, req, NULL}
#define FSUB(T, name, kind, req, sub) {#name, kind, offsetof(T, name), 0, req, sub}
#define FCNT(T, name, cnt, kind, req, sub) {#name, kind, offsetof(T, name), offsetof(T, cnt), req, sub}
#define SCHEMA(fields, T, init) {fields, (int)(sizeof fields / sizeof fields[0]), sizeof(T), init}
#define REQ true
#define OPT false

static const kvf_field_t s_sampling_f[] = {
    F(kvf_sampling_t, temperature, KVF_FK_F32, OPT),
    F(kvf_sampling_t, top_k, KVF_FK_I32, OPT),
    F(kvf_sampling_t, top_p, KVF_FK_F32, OPT),
    F(kvf_sampling_t, min_p, KVF_FK_F32, OPT),
    F(kvf_sampling_t, repetition_penalty, KVF_FK_F32, OPT),
    F(kvf_sampling_t, seed, KVF_FK_U64, OPT),
    F(kvf_sampling_t, max_new_tokens, KVF_FK_I32, OPT),
    F(kvf_sampling_t, ignore_eos, KVF_FK_FLAG, OPT),
    FCNT(kvf_sampling_t, stop_ids, n_stop_ids, KVF_FK_STOP, OPT, NULL),
};
static const kvf_schema_t s_sampling = SCHEMA(s_sampling_f, kvf_sampling_t, NULL);

static const kvf_field_t s_plan_f[] = {
    F(kvf_plan_t, weights_bytes, KVF_FK_U64, REQ),
    F(kvf_plan_t, workspace_bytes, KVF_FK_U64, REQ),
    F(kvf_plan_t, kv_bytes, KVF_FK_U64, REQ),
    F(kvf_plan_t, free_bytes_at_start, KVF_FK_U64, REQ),
    F(kvf_plan_t, kv_blocks, KVF_FK_U32, REQ),
    F(kvf_plan_t, block_size, KVF_FK_U32, REQ),
    F(kvf_plan_t, tokens_fit, KVF_FK_U64, REQ),
    F(kvf_plan_t, full_sequences, KVF_FK_U32, REQ),
    F(kvf_plan_t, kv_dtype, KVF_FK_U32, OPT),
    F(kvf_plan_t, quant, KVF_FK_U32, OPT),
};
static const kvf_schema_t s_plan = SCHEMA(s_plan_f, kvf_plan_t, NULL);

static const kvf_field_t s_register_f[] = {
    F(kvf_msg_register_t, worker_id, KVF_FK_STR, REQ),
    F(kvf_msg_register_t, group_id, KVF_FK_STR, OPT),
    F(kvf_msg_register_t, model, KVF_FK_STR, OPT),
    F(kvf_msg_register_t, backend, KVF_FK_STR, REQ),
    F(kvf_msg_register_t, device, KVF_FK_I32, REQ),
    F(kvf_msg_register_t, tp_rank, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, tp_size, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, total_blocks, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, free_blocks, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, max_batch_size, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, max_prefill_tokens, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, session_len, KVF_FK_U32, REQ),
    F(kvf_msg_register_t, vocab_size, KVF_FK_U32, OPT),
    F(kvf_msg_register_t, prefix_caching, KVF_FK_FLAG, OPT),
    FSUB(kvf_msg_register_t, plan, KVF_FK_MAP, REQ, &s_plan),
};
static const kvf_schema_t s_register = SCHEMA(s_register_f, kvf_msg_register_t, NULL);

static const kvf_field_t s_welcome_f[] = {
    F(kvf_msg_welcome_t, heartbeat_ms, KVF_FK_U32, REQ),
    F(kvf_msg_welcome_t, dead_after_ms, KVF_FK_U32, REQ),
};
static const kvf_schema_t s_welcome = SCHEMA(s_welcome_f, kvf_msg_welcome_t, NULL);

static const kvf_field_t s_heartbeat_f[] = {
    F(kvf_msg_heartbeat_t, state, KVF_FK_U32, REQ),
    F(kvf_msg_heartbeat_t, free_blocks, KVF_FK_U32, REQ),
    F(kvf_msg_heartbeat_t, total_blocks, KVF_FK_U32, REQ),
    F(kvf_msg_heartbeat_t, running, KVF_FK_U32, REQ),
    F(kvf_msg_heartbeat_t, waiting, KVF_FK_U32, REQ),
    F(kvf_msg_heartbeat_t, tokens_per_s, KVF_FK_F64, OPT),
    F(kvf_msg_heartbeat_t, tokens_total, KVF_FK_U64, OPT),
    F(kvf_msg_heartbeat_t, preemptions, KVF_FK_U64, OPT),
    F(kvf_msg_heartbeat_t, prefix_hits, KVF_FK_U64, OPT),
    F(kvf_msg_heartbeat_t, prefix_misses, KVF_FK_U64, OPT),
    F(kvf_msg_heartbeat_t, rejected, KVF_FK_U64, OPT),
};
static const kvf_schema_t s_heartbeat = SCHEMA(s_heartbeat_f, kvf_msg_heartbeat_t, NULL);

static const kvf_field_t s_result_f[] = {
    F(kvf_msg_result_t, rid, KVF_FK_U64, REQ),
    F(kvf_msg_result_t, tokens, KVF_FK_IDS, OPT),
    F(kvf_msg_result_t, text, KVF_FK_STR, OPT),
    F(kvf_msg_result_t, finished, KVF_FK_FLAG, OPT),
    F(kvf_msg_result_t, finish_reason, KVF_FK_FINISH, OPT),
    F(kvf_msg_result_t, prompt_tokens, KVF_FK_U32, OPT),
    F(kvf_msg_result_t, completion_tokens, KVF_FK_U32, OPT),
    F(kvf_msg_result_t, free_blocks, KVF_FK_U32, REQ),
    F(kvf_msg_result_t, error_code, KVF_FK_U32, OPT),
    F(kvf_msg_result_t, error, KVF_FK_STR, OPT),
};
static const kvf_schema_t s_result = SCHEMA(s_result_f, kvf_msg_result_t, NULL);

static const kvf_field_t s_assign_f[] = {
    F(kvf_msg_assign_t, rid, KVF_FK_U64, REQ),
    F(kvf_msg_assign_t, text, KVF_FK_STR, OPT),
    F(kvf_msg_assign_t, prompt_ids, KVF_FK_IDS, OPT),
    F(kvf_msg_assign_t, resume_ids, KVF_FK_IDS, OPT),
    FSUB(kvf_msg_assign_t, sampling, KVF_FK_MAP, OPT, &s_sampling),
    F(kvf_msg_assign_t, prefix_hash, KVF_FK_U64, OPT),
};
static const kvf_schema_t s_assign = SCHEMA(s_assign_f, kvf_msg_assign_t, NULL);

static void s_submit_req_init(void *p) {
    kvf_submit_req_t *r = p;
    memset(r, 0, sizeof *r);
    r->sampling = kvf_sampling_default();
}

static const kvf_field_t s_submit_req_f[] = {
    F(kvf_submit_req_t, tag, KVF_FK_STR, OPT),
    F(kvf_submit_req_t, text, KVF_FK_STR, OPT),
    F(kvf_submit_req_t, prompt_ids, KVF_FK_IDS, OPT),
    FSUB(kvf_submit_req_t, sampling, KVF_FK_MAP, OPT, &s_sampling),
};
static const kvf_schema_t s_submit_req = SCHEMA(s_submit_req_f, kvf_submit_req_t, s_submit_req_init);

static const kvf_field_t s_submit_f[] = {
    F(kvf_msg_submit_t, batch_id, KVF_FK_STR, OPT),
    FCNT(kvf_msg_submit_t, reqs, n_reqs, KVF_FK_ARR, REQ, &s_submit_req),
};
static const kvf_schema_t s_submit = SCHEMA(s_submit_f, kvf_msg_submit_t, NULL);

static const kvf_field_t s_ack_f[] = {
    F(kvf_msg_ack_t, batch_id, KVF_FK_STR, REQ),
    FCNT(kvf_msg_ack_t, rids, n_rids, KVF_FK_U64S, REQ, NULL),
};
static const kvf_schema_t s_ack = SCHEMA(s_ack_f, kvf_msg_ack_t, NULL);

static const kvf_field_t s_tokens_f[] = {
    F(kvf_msg_tokens_t, rid, KVF_FK_U64, REQ),
    F(kvf_msg_tokens_t, tokens, KVF_FK_IDS, OPT),
    F(kvf_msg_tokens_t, text, KVF_FK_STR, OPT),
};
static const kvf_schema_t s_tokens = SCHEMA(s_tokens_f, kvf_msg_tokens_t, NULL);

static const kvf_field_t s_done_f[] = {
    F(kvf_msg_done_t, rid, KVF_FK_U64, REQ),
    F(kvf_msg_done_t, finish_reason, KVF_FK_FINISH, REQ),
    F(kvf_msg_done_t, prompt_tokens, KVF_FK_U32, REQ),
    F(kvf_msg_done_t, completion_tokens, KVF_FK_U32, REQ),
};
static const kvf_schema_t s_done = SCHEMA(s_done_f, kvf_msg_done_t, NULL);

static const kvf_field_t s_error_f[] = {
    F(kvf_msg_error_t, rid, KVF_FK_U64, OPT),
    F(kvf_msg_error_t, code, KVF_FK_U32, REQ),
    F(kvf_msg_error_t, message, KVF_FK_STR, OPT),
};
static const kvf_schema_t s_error = SCHEMA(s_error_f, kvf_msg_error_t, NULL);

static const kvf_field_t s_cancel_f[] = {
    F(kvf_msg_cancel_t, rid, KVF_FK_U64, OPT),
    F(kvf_msg_cancel_t, batch_id, KVF_FK_STR, OPT),
};
static const kvf_schema_t s_cancel = SCHEMA(s_cancel_f, kvf_msg_cancel_t, NULL);

static const kvf_field_t s_attach_f[] = {
    F(kvf_msg_attach_t, batch_id, KVF_FK_STR, REQ),
};
static const kvf_schema_t s_attach = SCHEMA(s_attach_f, kvf_msg_attach_t, NULL);

static const kvf_field_t s_target_f[] = {
    F(kvf_msg_target_t, worker_id, KVF_FK_STR, OPT),
};
static const kvf_schema_t s_target = SCHEMA(s_target_f, kvf_msg_target_t, NULL);

static const kvf_field_t s_worker_status_f[] = {
    F(kvf_worker_status_t, worker_id, KVF_FK_STR, REQ),
    F(kvf_worker_status_t, group_id, KVF_FK_STR, OPT),
    F(kvf_worker_status_t, backend, KVF_FK_STR, OPT),
    F(kvf_worker_status_t, model, KVF_FK_STR, OPT),
    F(kvf_worker_status_t, device, KVF_FK_I32, REQ),
    F(kvf_worker_status_t, tp_rank, KVF_FK_U32, REQ),
    F(kvf_worker_status_t, tp_size, KVF_FK_U32, REQ),
    F(kvf_worker_status_t, block_size, KVF_FK_U32, REQ),
    FSUB(kvf_worker_status_t, load, KVF_FK_MAP, REQ, &s_heartbeat),
    FSUB(kvf_worker_status_t, plan, KVF_FK_MAP, REQ, &s_plan),
    F(kvf_worker_status_t, assigned, KVF_FK_U32, REQ),
    F(kvf_worker_status_t, last_seen_ms, KVF_FK_U64, REQ),
};
static const kvf_schema_t s_worker_status = SCHEMA(s_worker_status_f, kvf_worker_status_t, NULL);

static const kvf_field_t s_status_reply_f[] = {
    FCNT(kvf_msg_status_reply_t, workers, n_workers, KVF_FK_ARR, REQ, &s_worker_status),
    F(kvf_msg_status_reply_t, queue_len, KVF_FK_U32, REQ),
    F(kvf_msg_status_reply_t, queue_cap, KVF_FK_U32, REQ),
    F(kvf_msg_status_reply_t, requests_done, KVF_FK_U64, REQ),
    F(kvf_msg_status_reply_t, uptime_ms, KVF_FK_U64, REQ),
};
static const kvf_schema_t s_status_reply = SCHEMA(s_status_reply_f, kvf_msg_status_reply_t, NULL);

static const kvf_field_t s_empty_f[1] = {{NULL, KVF_FK_U32, 0, 0, false, NULL}};
static const kvf_schema_t s_empty = {s_empty_f, 0, 0, NULL};  // STATUS, OK: an empty map


static const kvf_msg_info_t s_types[] = {
    {KVF_MSG_REGISTER, "REGISTER", &s_register},
    {KVF_MSG_HEARTBEAT, "HEARTBEAT", &s_heartbeat},
    {KVF_MSG_RESULT, "RESULT", &s_result},
    {KVF_MSG_WELCOME, "WELCOME", &s_welcome},
    {KVF_MSG_ASSIGN, "ASSIGN", &s_assign},
    {KVF_MSG_SUBMIT, "SUBMIT", &s_submit},
    {KVF_MSG_CANCEL, "CANCEL", &s_cancel},
    {KVF_MSG_STATUS, "STATUS", &s_empty},
    {KVF_MSG_ATTACH, "ATTACH", &s_attach},
    {KVF_MSG_ACK, "ACK", &s_ack},
    {KVF_MSG_TOKENS, "TOKENS", &s_tokens},
    {KVF_MSG_DONE, "DONE", &s_done},
    {KVF_MSG_ERROR, "ERROR", &s_error},
    {KVF_MSG_STATUS_REPLY, "STATUS_REPLY", &s_status_reply},
    {KVF_MSG_DRAIN, "DRAIN", &s_target},
    {KVF_MSG_SHUTDOWN, "SHUTDOWN", &s_target},
    {KVF_MSG_OK, "OK", &s_empty},
};

const kvf_msg_info_t *kvf_schema_find(uint64_t t) {
    for (size_t i = 0; i < sizeof s_types / sizeof s_types[0]; i++)
        if ((uint64_t)s_types[i].type == t) return &s_types[i];
    return NULL;
}

static const char *s_finish_names[] = {
    [KVF_FINISH_NONE] = "none",
    [KVF_FINISH_STOP] = "stop",
    [KVF_FINISH_LENGTH] = "length",
    [KVF_FINISH_CANCELLED] = "cancelled",
    [KVF_FINISH_ERROR] = "error",
};
#define S_N_FINISH ((int)(sizeof s_finish_names / sizeof s_finish_names[0]))

int kvf_schema_finish_parse(const char *s, size_t n, uint32_t *out) {
    for (int i = 0; i < S_N_FINISH; i++) {
        if (n == strlen(s_finish_names[i]) && memcmp(s, s_finish_names[i], n) == 0) {
            *out = (uint32_t)i;
            return 0;
        }
    }
    return -1;
}

// ---------------------------------------------------------------- helpers of codec.h

const char *kvf_msg_type_name(kvf_msg_type t) {
    const kvf_msg_info_t *ti = kvf_schema_find((uint64_t)t);
    return ti ? ti->name : "UNKNOWN";
}

const char *kvf_finish_name(kvf_finish_reason r) {
    if ((int)r < 0 || (int)r >= S_N_FINISH) return "unknown";
    return s_finish_names[r];
}

kvf_str_t kvf_str(const char *s) {
    kvf_str_t r = {(char *)(s ? s : ""), s ? (uint32_t)strlen(s) : 0};
    return r;
}

void kvf_msg_init(kvf_msg_t *msg, kvf_msg_type type) {
    memset(msg, 0, sizeof *msg);
    msg->type = type;
    msg->version = KVF_PROTO_VERSION;
    if (type == KVF_MSG_ASSIGN) msg->u.assign.sampling = kvf_sampling_default();
}

