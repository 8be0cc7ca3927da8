// client/kvfctl_chunks.h — OUT.batches, the chunk list of a `kvfctl run
// --batch-id ID -o OUT`: a first line "kvfctl-run ID", then one line per chunk
// submitted, "NAME idx idx ...", naming the input requests (0-based, in the
// chunk's order) that the chunk's rids answer. A run that finds the list of its
// ID resumes: OUT's complete lines are kept, the chunks attached again. The
// list is locked (flock) while a run writes OUT, so that two runs never write
// one output.
#ifndef KVF_KVFCTL_CHUNKS_H
#define KVF_KVFCTL_CHUNKS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/error.h"

typedef struct {
    char *name;       // owned: the chunk's batch id
    uint64_t *idx;    // (n) owned: input request of each of its rids
    size_t n;
} kvf_chunk_t;

typedef struct {
    FILE *f;              // the list, open for appending and locked
    int resume;           // 1: the list was this ID's (chunks and done are set)
    kvf_chunk_t *chunks;  // (n_chunks) owned: the chunks already submitted
    size_t n_chunks;
    uint64_t done;        // complete lines in OUT (a cut last line is removed)
    uint64_t next_chunk;  // k of the next chunk "ID.k" (above every listed one)
} kvf_chunklist_t;

// Opens OUT.batches for out_path and batch id, locked. When it is this ID's
// list, reads it and counts (and trims) OUT's lines: cl->resume = 1. Otherwise
// starts it afresh (cl->resume = 0; the caller truncates OUT). 0, or -1 with
// err (KVF_E_BUSY when another run holds it, KVF_E_IO). cl is zeroed first and
// must be closed with kvf_chunklist_close either way.
int kvf_chunklist_open(kvf_chunklist_t *cl, const char *out_path, const char *id, kvf_err_t *err);

// Appends a submitted chunk (name, the input request of each rid) and flushes.
// A failure is reported on stderr only: it costs a resumed run time, not lines.
void kvf_chunklist_note(kvf_chunklist_t *cl, const char *name, const uint64_t *idx, size_t n);

// Frees the chunks read; closes (and unlocks) the list. Safe on a zeroed cl.
void kvf_chunklist_close(kvf_chunklist_t *cl);

#endif
