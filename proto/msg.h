// proto/msg.h — every kvfleet wire message as a plain C struct.
//
// This header is the contract between coordinator, workers and clients; the
// wire form and the allowed sequences are specified in proto/PROTOCOL.md, and
// proto/codec.c is the only code that touches msgpack. A message on the wire is
// the msgpack array [version, type, body-map]; ZeroMQ routing frames (ROUTER
// identities) travel as separate frames before it and are not part of it.
//
// Ownership: a decoded kvf_msg_t owns everything its pointers reach; release it
// with kvf_msg_clear(). For encoding, the caller owns the struct and its
// pointers; the codec only reads them.
#ifndef KVF_PROTO_MSG_H
#define KVF_PROTO_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/sampling.h"

#define KVF_PROTO_VERSION 1

typedef enum {
    KVF_MSG_INVALID = 0,
    // worker -> coordinator
    KVF_MSG_REGISTER = 1,   // a worker (TP group leader) announces itself and its memory plan
    KVF_MSG_HEARTBEAT = 2,  // periodic load report
    KVF_MSG_RESULT = 3,     // tokens of one request (a chunk), possibly final
    // coordinator -> worker
    KVF_MSG_WELCOME = 4,    // reply to REGISTER: accepted, heartbeat interval
    KVF_MSG_ASSIGN = 5,     // run one request
    // client -> coordinator
    KVF_MSG_SUBMIT = 10,    // a batch of requests
    KVF_MSG_CANCEL = 11,    // cancel a request or a whole batch (also coordinator -> worker)
    KVF_MSG_STATUS = 12,    // ask for cluster status
    KVF_MSG_ATTACH = 13,    // re-attach to a batch by id (results not yet seen are re-sent)
    // coordinator -> client
    KVF_MSG_ACK = 20,       // batch accepted: request ids in submission order
    KVF_MSG_TOKENS = 21,    // a chunk of generated tokens (and text) of one request
    KVF_MSG_DONE = 22,      // a request finished: reason and usage
    KVF_MSG_ERROR = 23,     // an error on one request or on a whole message (any direction)
    KVF_MSG_STATUS_REPLY = 24,
    // operator -> coordinator (and coordinator -> worker)
    KVF_MSG_DRAIN = 30,     // finish current work, accept nothing new
    KVF_MSG_SHUTDOWN = 31,  // stop (the whole cluster, or one worker)
    KVF_MSG_OK = 32,        // generic acknowledgement of CANCEL / DRAIN / SHUTDOWN
} kvf_msg_type;

// Why a request ended. Names on the wire: "stop", "length", "cancelled", "error".
typedef enum {
    KVF_FINISH_NONE = 0,
    KVF_FINISH_STOP = 1,       // EOS or a stop token
    KVF_FINISH_LENGTH = 2,     // max_new_tokens reached
    KVF_FINISH_CANCELLED = 3,
    KVF_FINISH_ERROR = 4,
} kvf_finish_reason;

// A counted byte string; not NUL-terminated on the wire, but decoded strings
// always carry a NUL after len bytes so they can be used as C strings.
typedef struct {
    char *ptr;
    uint32_t len;
} kvf_str_t;

typedef struct {
    int32_t *ids;
    uint32_t n;
} kvf_ids_t;

// The memory plan a worker made at start-up (bytes are per rank).
typedef struct {
    uint64_t weights_bytes;
    uint64_t workspace_bytes;
    uint64_t kv_bytes;
    uint64_t free_bytes_at_start;  // device free memory (or CPU budget) before the KV slab
    uint32_t kv_blocks;
    uint32_t block_size;           // tokens per block
    uint64_t tokens_fit;           // kv_blocks * block_size
    uint32_t full_sequences;       // sequences of session_len that fit at once
    uint32_t kv_dtype;             // what the KV cache keeps: 0 the activations' precision, 1 FP8 E4M3
                                   // (worker/backend.h kvf_kv_dtype_t); optional on the wire, absent = 0
    uint32_t quant;                // what the linear layers multiply in: 0 the checkpoint's weights, 1 FP8
                                   // (worker/backend.h kvf_quant_t); optional on the wire, absent = 0
} kvf_plan_t;

typedef struct {
    kvf_str_t worker_id;   // unique in the cluster, e.g. "host:gpu0"
    kvf_str_t group_id;    // TP group; equal to worker_id when tp_size == 1
    kvf_str_t model;       // model directory or name
    kvf_str_t backend;     // "cpu" | "cuda"
    int32_t device;        // GPU index, -1 for cpu
    uint32_t tp_rank, tp_size;
    uint32_t total_blocks, free_blocks;
    uint32_t max_batch_size, max_prefill_tokens, session_len;
    uint32_t vocab_size;
    uint32_t prefix_caching;  // 1 when enabled
    kvf_plan_t plan;
} kvf_msg_register_t;

typedef struct {
    uint32_t heartbeat_ms;  // how often the worker must send HEARTBEAT
    uint32_t dead_after_ms; // silence after which the coordinator declares it dead
} kvf_msg_welcome_t;

typedef enum {
    KVF_WSTATE_READY = 0,
    KVF_WSTATE_DRAINING = 1,
    KVF_WSTATE_DEAD = 2,      // only in STATUS_REPLY
    KVF_WSTATE_STARTING = 3,  // only in STATUS_REPLY
} kvf_wstate;

typedef struct {
    uint32_t state;           // kvf_wstate
    uint32_t free_blocks, total_blocks;
    uint32_t running, waiting;
    double tokens_per_s;      // generated tokens per second over the last interval
    uint64_t tokens_total;    // generated tokens since start
    uint64_t preemptions;
    uint64_t prefix_hits, prefix_misses;  // in blocks
    uint64_t rejected;        // requests refused for lack of blocks (placement should keep this 0)
} kvf_msg_heartbeat_t;

typedef struct {
    uint64_t rid;              // coordinator-assigned request id, unique in the cluster
    kvf_str_t text;            // prompt as text (tokenized by the worker), or empty
    kvf_ids_t prompt_ids;      // prompt as token ids (used as given), or empty
    kvf_ids_t resume_ids;      // tokens already delivered to the client (re-dispatch): continue after them
    kvf_sampling_t sampling;
    uint64_t prefix_hash;      // hash of the first block of the prompt, for affinity bookkeeping (0 if unknown)
} kvf_msg_assign_t;

typedef struct {
    uint64_t rid;
    kvf_ids_t tokens;          // newly generated tokens in this chunk (may be empty on the final one)
    kvf_str_t text;            // their text (streaming detokenization; never half a UTF-8 character)
    uint32_t finished;         // 1 on the last chunk of the request
    uint32_t finish_reason;    // kvf_finish_reason (when finished)
    uint32_t prompt_tokens;    // (when finished)
    uint32_t completion_tokens;// (when finished)
    uint32_t free_blocks;      // the worker's free KV blocks after this step
    uint32_t error_code;       // kvf_status when finish_reason is ERROR
    kvf_str_t error;           // message when finish_reason is ERROR
} kvf_msg_result_t;

typedef struct {
    kvf_str_t tag;             // client's id for this request (custom_id); may be empty
    kvf_str_t text;            // prompt text, or empty when prompt_ids is given
    kvf_ids_t prompt_ids;
    kvf_sampling_t sampling;
} kvf_submit_req_t;

typedef struct {
    kvf_str_t batch_id;        // client-chosen id to re-attach later; empty: coordinator picks one
    kvf_submit_req_t *reqs;
    uint32_t n_reqs;
} kvf_msg_submit_t;

typedef struct {
    kvf_str_t batch_id;
    uint64_t *rids;            // one per submitted request, in order
    uint32_t n_rids;
} kvf_msg_ack_t;

typedef struct {
    uint64_t rid;
    kvf_ids_t tokens;
    kvf_str_t text;
} kvf_msg_tokens_t;

typedef struct {
    uint64_t rid;
    uint32_t finish_reason;    // kvf_finish_reason
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
} kvf_msg_done_t;

typedef struct {
    uint64_t rid;              // 0 when the error is about the whole message
    uint32_t code;             // kvf_status
    kvf_str_t message;
} kvf_msg_error_t;

typedef struct {
    uint64_t rid;              // 0: cancel the batch named by batch_id
    kvf_str_t batch_id;
} kvf_msg_cancel_t;

typedef struct {
    kvf_str_t batch_id;
} kvf_msg_attach_t;

typedef struct {
    kvf_str_t worker_id;       // DRAIN: worker or group to drain; SHUTDOWN: empty = whole cluster
} kvf_msg_target_t;

typedef struct {
    kvf_str_t worker_id, group_id, backend, model;
    int32_t device;
    uint32_t tp_rank, tp_size;
    uint32_t block_size;
    kvf_msg_heartbeat_t load;  // last heartbeat; load.state may be DEAD
    kvf_plan_t plan;
    uint32_t assigned;         // requests the coordinator has placed there and not seen finish
    uint64_t last_seen_ms;     // ms since its last message
} kvf_worker_status_t;

typedef struct {
    kvf_worker_status_t *workers;
    uint32_t n_workers;
    uint32_t queue_len;        // requests held by the coordinator (nothing fits yet)
    uint32_t queue_cap;
    uint64_t requests_done;
    uint64_t uptime_ms;
} kvf_msg_status_reply_t;

typedef struct {
    kvf_msg_type type;
    uint32_t version;
    union {
        kvf_msg_register_t reg;
        kvf_msg_welcome_t welcome;
        kvf_msg_heartbeat_t heartbeat;
        kvf_msg_result_t result;
        kvf_msg_assign_t assign;
        kvf_msg_submit_t submit;
        kvf_msg_ack_t ack;
        kvf_msg_tokens_t tokens;
        kvf_msg_done_t done;
        kvf_msg_error_t error;
        kvf_msg_cancel_t cancel;
        kvf_msg_attach_t attach;
        kvf_msg_target_t target;         // DRAIN, SHUTDOWN
        kvf_msg_status_reply_t status;   // STATUS_REPLY (STATUS has no body)
    } u;
    void *arena_;  // codec-private storage of a decoded message
} kvf_msg_t;

#endif
