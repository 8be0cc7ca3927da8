// tests/fuzz/make_seeds.c — writes the binary seed corpora of the fuzz targets
// that cannot be written by hand: encoded protocol messages (corpus/codec) and
// small valid safetensors files (corpus/safetensors). Built with the fuzzers
// (tests/fuzz/CMakeLists.txt); run by hand when the formats change:
//   fuzz-build/bin/kvf_fuzz_make_seeds tests/fuzz/corpus
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "proto/codec.h"

static int s_put(const char *dir, const char *name, const kvf_msg_t *m) {
    kvf_err_t err;
    char *buf = NULL;
    size_t len = 0;
    if (kvf_msg_encode(m, &buf, &len, &err) != 0) {
        fprintf(stderr, "make_seeds: %s: %s\n", name, err.msg);
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/codec/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int rc = f && fwrite(buf, 1, len, f) == len ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    if (rc != 0) fprintf(stderr, "make_seeds: cannot write %s\n", path);
    free(buf);
    return rc;
}

static int s_codec(const char *dir) {
    int rc = 0;
    kvf_msg_t m;
    int32_t ids[] = {1, 15043, 3186, 29991, 0, 2};
    uint64_t rids[] = {1, 2, 0xffffffffffull};

    kvf_msg_init(&m, KVF_MSG_REGISTER);
    m.u.reg.worker_id = kvf_str("node1:gpu0");
    m.u.reg.group_id = kvf_str("node1:g0");
    m.u.reg.model = kvf_str("/models/tiny-llama");
    m.u.reg.backend = kvf_str("cuda");
    m.u.reg.device = 0;
    m.u.reg.tp_size = 2;
    m.u.reg.total_blocks = m.u.reg.free_blocks = 4096;
    m.u.reg.max_batch_size = 128;
    m.u.reg.max_prefill_tokens = 8192;
    m.u.reg.session_len = 4096;
    m.u.reg.vocab_size = 32000;
    m.u.reg.prefix_caching = 1;
    m.u.reg.plan = (kvf_plan_t){.weights_bytes = 1u << 30, .workspace_bytes = 1u << 28, .kv_bytes = 1ull << 34,
                                .free_bytes_at_start = 1ull << 36, .kv_blocks = 4096, .block_size = 64,
                                .tokens_fit = 4096 * 64, .full_sequences = 64};
    rc |= s_put(dir, "register.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_HEARTBEAT);
    m.u.heartbeat = (kvf_msg_heartbeat_t){.state = KVF_WSTATE_READY, .free_blocks = 100, .total_blocks = 4096,
                                          .running = 3, .waiting = 1, .tokens_per_s = 1234.5, .tokens_total = 99999,
                                          .preemptions = 2, .prefix_hits = 7, .prefix_misses = 9};
    rc |= s_put(dir, "heartbeat.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_WELCOME);
    m.u.welcome.heartbeat_ms = 500;
    m.u.welcome.dead_after_ms = 3000;
    rc |= s_put(dir, "welcome.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_ASSIGN);
    m.u.assign.rid = 42;
    m.u.assign.text = kvf_str("Once upon a time");
    m.u.assign.resume_ids = (kvf_ids_t){ids + 1, 2};
    m.u.assign.sampling.temperature = 0.7f;
    m.u.assign.sampling.top_k = 40;
    m.u.assign.sampling.top_p = 0.9f;
    m.u.assign.sampling.seed = 1234;
    m.u.assign.sampling.n_stop_ids = 2;
    m.u.assign.sampling.stop_ids[0] = 2;
    m.u.assign.sampling.stop_ids[1] = 13;
    m.u.assign.prefix_hash = 0xdeadbeefcafeull;
    rc |= s_put(dir, "assign.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_RESULT);
    m.u.result.rid = 42;
    m.u.result.tokens = (kvf_ids_t){ids, 6};
    m.u.result.text = kvf_str(" caf\xc3\xa9");
    m.u.result.finished = 1;
    m.u.result.finish_reason = KVF_FINISH_ERROR;
    m.u.result.prompt_tokens = 5;
    m.u.result.completion_tokens = 6;
    m.u.result.free_blocks = 77;
    m.u.result.error_code = KVF_E_FORMAT;
    m.u.result.error = kvf_str("boom");
    rc |= s_put(dir, "result.msgpack", &m);

    kvf_submit_req_t reqs[2];
    memset(reqs, 0, sizeof reqs);
    reqs[0].tag = kvf_str("req-0");
    reqs[0].text = kvf_str("Hello");
    reqs[0].sampling = kvf_sampling_default();
    reqs[1].tag = kvf_str("req-1");
    reqs[1].prompt_ids = (kvf_ids_t){ids, 4};
    reqs[1].sampling = kvf_sampling_default();
    reqs[1].sampling.max_new_tokens = 16;
    reqs[1].sampling.repetition_penalty = 1.1f;
    kvf_msg_init(&m, KVF_MSG_SUBMIT);
    m.u.submit.batch_id = kvf_str("batch-7");
    m.u.submit.reqs = reqs;
    m.u.submit.n_reqs = 2;
    rc |= s_put(dir, "submit.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_ACK);
    m.u.ack.batch_id = kvf_str("batch-7");
    m.u.ack.rids = rids;
    m.u.ack.n_rids = 3;
    rc |= s_put(dir, "ack.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_TOKENS);
    m.u.tokens.rid = 2;
    m.u.tokens.tokens = (kvf_ids_t){ids, 3};
    m.u.tokens.text = kvf_str("Hi there");
    rc |= s_put(dir, "tokens.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_DONE);
    m.u.done = (kvf_msg_done_t){.rid = 2, .finish_reason = KVF_FINISH_LENGTH, .prompt_tokens = 4,
                                .completion_tokens = 16};
    rc |= s_put(dir, "done.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_ERROR);
    m.u.error.rid = 0;
    m.u.error.code = KVF_E_PROTO;
    m.u.error.message = kvf_str("unknown message type 99");
    rc |= s_put(dir, "error.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_CANCEL);
    m.u.cancel.batch_id = kvf_str("batch-7");
    rc |= s_put(dir, "cancel.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_ATTACH);
    m.u.attach.batch_id = kvf_str("batch-7");
    rc |= s_put(dir, "attach.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_STATUS);
    rc |= s_put(dir, "status.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_DRAIN);
    m.u.target.worker_id = kvf_str("node1:g0");
    rc |= s_put(dir, "drain.msgpack", &m);

    kvf_msg_init(&m, KVF_MSG_OK);
    rc |= s_put(dir, "ok.msgpack", &m);

    kvf_worker_status_t ws[2];
    memset(ws, 0, sizeof ws);
    ws[0].worker_id = ws[0].group_id = kvf_str("node1:gpu0");
    ws[0].backend = kvf_str("cuda");
    ws[0].model = kvf_str("tiny");
    ws[0].tp_size = 1;
    ws[0].block_size = 64;
    ws[0].load.free_blocks = 10;
    ws[0].load.total_blocks = 20;
    ws[0].assigned = 3;
    ws[0].last_seen_ms = 120;
    ws[1] = ws[0];
    ws[1].worker_id = ws[1].group_id = kvf_str("cpu0");
    ws[1].backend = kvf_str("cpu");
    ws[1].device = -1;
    ws[1].load.state = KVF_WSTATE_DEAD;
    kvf_msg_init(&m, KVF_MSG_STATUS_REPLY);
    m.u.status = (kvf_msg_status_reply_t){.workers = ws, .n_workers = 2, .queue_len = 5, .queue_cap = 1024,
                                          .requests_done = 77, .uptime_ms = 3600000};
    rc |= s_put(dir, "status_reply.msgpack", &m);
    return rc;
}

// Two small files: one tensor of each dtype (with a 0-dim scalar and an empty
// tensor), and a one-tensor file (kvf_safetensors_write adds __metadata__).
static int s_safetensors(const char *dir) {
    kvf_err_t err;
    char path[4096];
    float f32[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 65504.0f};
    uint16_t f16[4], bf16[4];
    for (int i = 0; i < 4; i++) {
        f16[i] = kvf_f32_to_f16(f32[i]);
        bf16[i] = kvf_f32_to_bf16(f32[i]);
    }
    const char *names[] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "scalar", "empty"};
    kvf_dtype dts[] = {KVF_DT_F32, KVF_DT_F16, KVF_DT_BF16, KVF_DT_F32, KVF_DT_BF16};
    int nd[] = {2, 1, 2, 0, 2};
    int64_t shapes[][KVF_ST_MAX_DIMS] = {{2, 3}, {4}, {2, 2}, {0}, {0, 4}};
    const void *data[] = {f32, f16, bf16, f32 + 2, bf16};
    snprintf(path, sizeof path, "%s/safetensors/mixed.safetensors", dir);
    if (kvf_safetensors_write(path, 5, names, dts, nd, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes, data, &err) != 0) {
        fprintf(stderr, "make_seeds: %s\n", err.msg);
        return -1;
    }
    snprintf(path, sizeof path, "%s/safetensors/one.safetensors", dir);
    if (kvf_safetensors_write(path, 1, names + 1, dts + 1, nd + 1, (const int64_t(*)[KVF_ST_MAX_DIMS])shapes + 1,
                              data + 1, &err) != 0) {
        fprintf(stderr, "make_seeds: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR (with codec/ and safetensors/ inside)\n", argv[0]);
        return 2;
    }
    int rc = s_codec(argv[1]);
    rc |= s_safetensors(argv[1]);
    return rc ? 1 : 0;
}
