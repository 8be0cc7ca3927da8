// coordinator/journal.h — the coordinator's job journal: batches, their
// requests, the tokens delivered and the finished results, in one SQLite
// database in WAL mode, so that a restarted coordinator (--journal PATH)
// resumes unfinished work and clients can ATTACH again.
//
// Writes are cheap: every write joins one open transaction that the loop
// commits once per iteration (kvf_journal_commit), with synchronous=NORMAL, so
// a commit is a WAL append, not an fsync (SQLite fsyncs the WAL at
// checkpoints). A power cut may lose the last commits; a killed process loses
// only the transaction that was open (at most one loop iteration): those
// tokens are generated again after a restart and reach a client that
// re-attaches in the ATTACH replay, which replaces what it had.
//
// Tables: batches(id, seq, n), requests(rid, batch, idx, tag, prompt,
// sampling..., finished, finish_reason, error_code, error), tokens(rid, ids,
// text) — one row per delivered chunk. A batch is deleted with its requests
// and tokens once it is released (complete and delivered, or evicted).
#ifndef KVF_COORD_JOURNAL_H
#define KVF_COORD_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "coordinator/reqtable.h"

typedef struct kvf_journal_s kvf_journal_t;

// Opens (creating when absent) the journal at path, in WAL mode, and locks it
// for this process until kvf_journal_destroy (or its death). Returns a new
// journal owned by the caller, or NULL with err set (KVF_E_IO: cannot open, not
// a journal, in use by another process, or a schema error).
kvf_journal_t *kvf_journal_new(const char *path, kvf_err_t *err);

// Commits what is open and closes; accepts NULL; nulls *self_p.
void kvf_journal_destroy(kvf_journal_t **self_p);

// Records a new batch and every request in it (b->reqs all set). 0, or -1 with err.
int kvf_journal_batch(kvf_journal_t *j, const kvf_batch_t *b, kvf_err_t *err);

// Records n tokens (and their text) delivered for rid. 0, or -1 with err.
int kvf_journal_tokens(kvf_journal_t *j, uint64_t rid, const int32_t *ids, uint32_t n, const char *text,
                       size_t text_len, kvf_err_t *err);

// Records that req finished (finish_reason, error_code, error). 0, or -1 with err.
int kvf_journal_finish(kvf_journal_t *j, const kvf_req_t *req, kvf_err_t *err);

// Forgets a released batch with its requests and tokens. 0, or -1 with err.
int kvf_journal_release(kvf_journal_t *j, const char *batch_id, kvf_err_t *err);

// Commits the open transaction (no-op when none is open). 0, or -1 with err.
int kvf_journal_commit(kvf_journal_t *j, kvf_err_t *err);

// Number of writes since the last commit (0: nothing open).
uint64_t kvf_journal_pending(const kvf_journal_t *j);

// Loads every journalled batch into t, oldest first, each detached from any
// client (client_ok 0: results kept for ATTACH): finished requests FINISHED
// with their results, the others NEW with the tokens delivered so far, for the
// caller to queue. rids keep their values; t->next_rid continues above the
// largest. *n_batches and *n_unfinished (may be NULL) count what was loaded.
// 0, or -1 with err (the table may then hold part of the journal).
int kvf_journal_load(kvf_journal_t *j, kvf_reqtable_t *t, uint32_t *n_batches, uint32_t *n_unfinished,
                     kvf_err_t *err);

#endif
