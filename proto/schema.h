// proto/schema.h — private to proto/: the table that describes every message
// body field by field (wire key, kind, offset, required). The encoder and the
// decoder in codec.c both walk it, so the two directions cannot drift apart;
// PROTOCOL.md is the prose form of the same table.
#ifndef KVF_PROTO_SCHEMA_H
#define KVF_PROTO_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/msg.h"

typedef enum {
    KVF_FK_U32,     // uint32_t                    msgpack uint
    KVF_FK_U64,     // uint64_t                    msgpack uint
    KVF_FK_I32,     // int32_t                     msgpack int
    KVF_FK_F32,     // float                       msgpack float32 (decode: any float or int)
    KVF_FK_F64,     // double                      msgpack float64 (decode: any float or int)
    KVF_FK_FLAG,    // uint32_t/int32_t 0 or 1     msgpack bool (decode: bool, or uint 0/1)
    KVF_FK_STR,     // kvf_str_t                   msgpack str (decode: str or bin)
    KVF_FK_IDS,     // kvf_ids_t                   array of int32
    KVF_FK_STOP,    // int32_t[KVF_MAX_STOP_IDS] at off, int32_t count at off2: array of int32
    KVF_FK_FINISH,  // uint32_t kvf_finish_reason  msgpack str ("stop", ...)
    KVF_FK_MAP,     // nested struct at off        map (sub)
    KVF_FK_ARR,     // pointer at off, uint32_t count at off2: array of maps (sub)
    KVF_FK_U64S,    // uint64_t * at off, uint32_t count at off2: array of uint
} kvf_field_kind;

typedef struct kvf_schema kvf_schema_t;

typedef struct {
    const char *name;  // wire key
    kvf_field_kind kind;
    size_t off;
    size_t off2;       // count, for KVF_FK_STOP, KVF_FK_ARR, KVF_FK_U64S
    bool required;
    const kvf_schema_t *sub;  // KVF_FK_MAP, KVF_FK_ARR
} kvf_field_t;

struct kvf_schema {
    const kvf_field_t *fields;
    int n;
    size_t size;                // element size, for KVF_FK_ARR
    void (*init)(void *elem);   // element initializer, for KVF_FK_ARR (NULL: zeroes)
};


typedef struct {
    kvf_msg_type type;
    const char *name;
    const kvf_schema_t *body;
} kvf_msg_info_t;

// The description of a message type (name and body schema); NULL when unknown.
const kvf_msg_info_t *kvf_schema_find(uint64_t type);

// Parses a wire finish-reason name ("stop", ...; "none" too) of n bytes into *out.
// Returns 0, or -1 when the name is unknown.
int kvf_schema_finish_parse(const char *s, size_t n, uint32_t *out);

#endif
