// coordinator/journal.c — see journal.h.
#include "coordinator/journal.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "proto/msg.h"

enum {
    S_ST_BATCH,
    S_ST_REQ,
    S_ST_TOKENS,
    S_ST_FINISH,
    S_ST_DEL_TOKENS,
    S_ST_DEL_REQS,
    S_ST_DEL_BATCH,
    S_ST_COUNT
};

static const char *s_sql[S_ST_COUNT] = {
    [S_ST_BATCH] = "INSERT OR REPLACE INTO batches(id, n, owner) VALUES(?1, ?2, ?3)",
    [S_ST_REQ] = "INSERT OR REPLACE INTO requests(rid, batch, idx, tag, prompt, temperature, top_k, top_p, min_p, "
                 "repetition_penalty, seed, max_new_tokens, ignore_eos, stop_ids, finished) "
                 "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 0)",
    [S_ST_TOKENS] = "INSERT INTO tokens(rid, ids, text) VALUES(?1, ?2, ?3)",
    [S_ST_FINISH] = "UPDATE requests SET finished = 1, finish_reason = ?2, error_code = ?3, error = ?4 WHERE rid = ?1",
    [S_ST_DEL_TOKENS] = "DELETE FROM tokens WHERE rid IN (SELECT rid FROM requests WHERE batch = ?1)",
    [S_ST_DEL_REQS] = "DELETE FROM requests WHERE batch = ?1",
    [S_ST_DEL_BATCH] = "DELETE FROM batches WHERE id = ?1",
};

static const char *s_schema =
    "CREATE TABLE IF NOT EXISTS batches(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
    " n INTEGER NOT NULL, owner TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE IF NOT EXISTS requests(rid INTEGER PRIMARY KEY, batch TEXT NOT NULL, idx INTEGER NOT NULL,"
    " tag TEXT NOT NULL, prompt BLOB, temperature REAL, top_k INTEGER, top_p REAL, min_p REAL,"
    " repetition_penalty REAL, seed INTEGER, max_new_tokens INTEGER, ignore_eos INTEGER, stop_ids BLOB,"
    " finished INTEGER NOT NULL DEFAULT 0, finish_reason INTEGER, error_code INTEGER, error TEXT);"
    "CREATE INDEX IF NOT EXISTS requests_batch ON requests(batch);"
    "CREATE TABLE IF NOT EXISTS tokens(seq INTEGER PRIMARY KEY AUTOINCREMENT, rid INTEGER NOT NULL,"
    " ids BLOB, text BLOB);"
    "CREATE INDEX IF NOT EXISTS tokens_rid ON tokens(rid);";

struct kvf_journal_s {
    sqlite3 *db;
    char *path;
    sqlite3_stmt *st[S_ST_COUNT];
    int in_txn;
    uint64_t pending;  // writes in the open transaction
};

// ---- helpers

static int s_fail(kvf_journal_t *j, kvf_err_t *err, const char *what) {
    return kvf_err_set(err, KVF_E_IO, "journal %s: %s: %s", j->path, what, sqlite3_errmsg(j->db));
}

static int s_exec(kvf_journal_t *j, const char *sql, kvf_err_t *err) {
    char *msg = NULL;
    if (sqlite3_exec(j->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        kvf_err_set(err, KVF_E_IO, "journal %s: %.60s: %s", j->path, sql, msg ? msg : sqlite3_errmsg(j->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

// Joins (or opens) the transaction the loop commits.
static int s_begin(kvf_journal_t *j, kvf_err_t *err) {
    if (j->in_txn) return 0;
    if (s_exec(j, "BEGIN", err) < 0) return -1;
    j->in_txn = 1;
    return 0;
}

// Runs a bound statement to completion and resets it.
static int s_step(kvf_journal_t *j, int which, kvf_err_t *err) {
    sqlite3_stmt *s = j->st[which];
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) return s_fail(j, err, "write");
    j->pending++;
    return 0;
}

// ---- lifetime

kvf_journal_t *kvf_journal_new(const char *path, kvf_err_t *err) {
    if (!path || !*path) {
        kvf_err_set(err, KVF_E_INVAL, "journal: empty path");
        return NULL;
    }
    kvf_journal_t *j = kvf_xcalloc(1, sizeof *j);
    j->path = kvf_xstrdup(path);
    if (sqlite3_open_v2(path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        kvf_err_set(err, KVF_E_IO, "journal %s: cannot open: %s", path, j->db ? sqlite3_errmsg(j->db) : "no memory");
        goto fail;
    }
    sqlite3_busy_timeout(j->db, 500);
    // One coordinator per journal: the first write takes an exclusive lock it
    // keeps until it exits (the OS drops it when the process dies).
    // WAL + NORMAL: a commit appends to the WAL without an fsync; the loop
    // group-commits, so the cost does not grow with tokens.
    if (s_exec(j, "PRAGMA locking_mode=EXCLUSIVE", err) < 0 || s_exec(j, "PRAGMA journal_mode=WAL", err) < 0 ||
        s_exec(j, "PRAGMA synchronous=NORMAL", err) < 0 || s_exec(j, "BEGIN IMMEDIATE", err) < 0 ||
        s_exec(j, s_schema, err) < 0 || s_exec(j, "COMMIT", err) < 0) {
        if ((sqlite3_errcode(j->db) & 0xff) == SQLITE_BUSY || (sqlite3_errcode(j->db) & 0xff) == SQLITE_LOCKED)
            kvf_err_set(err, KVF_E_IO, "journal %s is in use by another coordinator", path);
        goto fail;
    }
    for (int i = 0; i < S_ST_COUNT; i++) {
        if (sqlite3_prepare_v2(j->db, s_sql[i], -1, &j->st[i], NULL) != SQLITE_OK) {
            s_fail(j, err, "prepare");
            goto fail;
        }
    }
    return j;
fail:
    kvf_journal_destroy(&j);
    return NULL;
}

void kvf_journal_destroy(kvf_journal_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_journal_t *j = *self_p;
    kvf_err_t err;
    if (j->db && kvf_journal_commit(j, &err) < 0) kvf_log(KVF_LOG_ERROR, "%s", err.msg);
    for (int i = 0; i < S_ST_COUNT; i++) sqlite3_finalize(j->st[i]);
    if (j->db) sqlite3_close(j->db);
    free(j->path);
    free(j);
    *self_p = NULL;
}

// ---- writes

int kvf_journal_batch(kvf_journal_t *j, const kvf_batch_t *b, kvf_err_t *err) {
    if (s_begin(j, err) < 0) return -1;
    sqlite3_stmt *s = j->st[S_ST_BATCH];
    sqlite3_bind_text(s, 1, b->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, b->n);
    // With CURVE the batch belongs to the key that submitted it, also after a restart.
    sqlite3_bind_text(s, 3, b->owner, -1, SQLITE_STATIC);
    if (s_step(j, S_ST_BATCH, err) < 0) return -1;
    s = j->st[S_ST_REQ];
    for (uint32_t i = 0; i < b->n; i++) {
        const kvf_req_t *r = b->reqs[i];
        const kvf_sampling_t *sp = &r->sampling;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)r->rid);
        sqlite3_bind_text(s, 2, b->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, r->index);
        sqlite3_bind_text(s, 4, r->tag ? r->tag : "", -1, SQLITE_STATIC);
        sqlite3_bind_blob(s, 5, r->prompt ? (const void *)r->prompt : "", (int)(r->n_prompt * sizeof *r->prompt),
                          SQLITE_STATIC);
        sqlite3_bind_double(s, 6, sp->temperature);
        sqlite3_bind_int64(s, 7, sp->top_k);
        sqlite3_bind_double(s, 8, sp->top_p);
        sqlite3_bind_double(s, 9, sp->min_p);
        sqlite3_bind_double(s, 10, sp->repetition_penalty);
        sqlite3_bind_int64(s, 11, (sqlite3_int64)sp->seed);
        sqlite3_bind_int64(s, 12, sp->max_new_tokens);
        sqlite3_bind_int64(s, 13, sp->ignore_eos);
        int ns = sp->n_stop_ids < 0 ? 0 : sp->n_stop_ids > KVF_MAX_STOP_IDS ? KVF_MAX_STOP_IDS : sp->n_stop_ids;
        sqlite3_bind_blob(s, 14, sp->stop_ids, (int)(ns * sizeof sp->stop_ids[0]), SQLITE_STATIC);
        if (s_step(j, S_ST_REQ, err) < 0) return -1;
    }
    return 0;
}

int kvf_journal_tokens(kvf_journal_t *j, uint64_t rid, const int32_t *ids, uint32_t n, const char *text,
                       size_t text_len, kvf_err_t *err) {
    if (s_begin(j, err) < 0) return -1;
    sqlite3_stmt *s = j->st[S_ST_TOKENS];
    sqlite3_bind_int64(s, 1, (sqlite3_int64)rid);
    sqlite3_bind_blob(s, 2, n ? (const void *)ids : "", (int)(n * sizeof *ids), SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, text_len ? text : "", (int)text_len, SQLITE_STATIC);
    return s_step(j, S_ST_TOKENS, err);
}

int kvf_journal_finish(kvf_journal_t *j, const kvf_req_t *req, kvf_err_t *err) {
    if (s_begin(j, err) < 0) return -1;
    sqlite3_stmt *s = j->st[S_ST_FINISH];
    sqlite3_bind_int64(s, 1, (sqlite3_int64)req->rid);
    sqlite3_bind_int64(s, 2, req->finish_reason);
    sqlite3_bind_int64(s, 3, req->error_code);
    sqlite3_bind_text(s, 4, req->error ? req->error : "", -1, SQLITE_STATIC);
    return s_step(j, S_ST_FINISH, err);
}

int kvf_journal_release(kvf_journal_t *j, const char *batch_id, kvf_err_t *err) {
    if (s_begin(j, err) < 0) return -1;
    static const int order[3] = {S_ST_DEL_TOKENS, S_ST_DEL_REQS, S_ST_DEL_BATCH};
    for (int i = 0; i < 3; i++) {
        sqlite3_bind_text(j->st[order[i]], 1, batch_id, -1, SQLITE_STATIC);
        if (s_step(j, order[i], err) < 0) return -1;
    }
    return 0;
}

int kvf_journal_commit(kvf_journal_t *j, kvf_err_t *err) {
    if (!j->in_txn) return 0;
    if (s_exec(j, "COMMIT", err) < 0) {
        // Leave no half transaction open: the next write starts afresh.
        sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
        j->in_txn = 0;
        j->pending = 0;
        return -1;
    }
    j->in_txn = 0;
    j->pending = 0;
    return 0;
}

uint64_t kvf_journal_pending(const kvf_journal_t *j) { return j->pending; }

// ---- load

// Appends the journalled tokens of req.
static int s_load_tokens(kvf_journal_t *j, sqlite3_stmt *tk, kvf_req_t *req, kvf_err_t *err) {
    sqlite3_bind_int64(tk, 1, (sqlite3_int64)req->rid);
    int rc;
    while ((rc = sqlite3_step(tk)) == SQLITE_ROW) {
        int nb = sqlite3_column_bytes(tk, 0);
        const void *ids = sqlite3_column_blob(tk, 0);
        int tb = sqlite3_column_bytes(tk, 1);
        const char *text = sqlite3_column_blob(tk, 1);
        uint32_t n = (uint32_t)nb / sizeof(int32_t);
        int32_t *copy = NULL;
        if (n) {
            copy = kvf_xmalloc((size_t)n * sizeof *copy);
            memcpy(copy, ids, (size_t)n * sizeof *copy);  // the blob need not be aligned
        }
        kvf_req_append(req, copy, n, text, tb > 0 ? (size_t)tb : 0);
        free(copy);
    }
    sqlite3_reset(tk);
    if (rc != SQLITE_DONE) return s_fail(j, err, "read tokens");
    return 0;
}

int kvf_journal_load(kvf_journal_t *j, kvf_reqtable_t *t, uint32_t *n_batches, uint32_t *n_unfinished,
                     kvf_err_t *err) {
    uint32_t nb = 0, nu = 0;
    if (kvf_journal_commit(j, err) < 0) return -1;
    sqlite3_stmt *bs = NULL, *rs = NULL, *tk = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(j->db, "SELECT id, n, owner FROM batches ORDER BY seq", -1, &bs, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(j->db,
                           "SELECT rid, idx, tag, prompt, temperature, top_k, top_p, min_p, repetition_penalty, seed,"
                           " max_new_tokens, ignore_eos, stop_ids, finished, finish_reason, error_code, error"
                           " FROM requests WHERE batch = ?1 ORDER BY idx",
                           -1, &rs, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(j->db, "SELECT ids, text FROM tokens WHERE rid = ?1 ORDER BY seq", -1, &tk, NULL) !=
            SQLITE_OK) {
        s_fail(j, err, "prepare load");
        goto done;
    }
    int brc;
    while ((brc = sqlite3_step(bs)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(bs, 0);
        sqlite3_int64 n = sqlite3_column_int64(bs, 1);
        if (!id || n < 0 || n > UINT32_MAX) {
            kvf_log(KVF_LOG_WARN, "journal %s: batch row with a bad id or size skipped", j->path);
            continue;
        }
        kvf_err_t e;
        kvf_batch_t *b = kvf_reqtable_batch_new(t, id, "", 0, (uint32_t)n, &e);
        if (!b) {
            kvf_log(KVF_LOG_WARN, "journal %s: batch %s skipped: %s", j->path, id, e.msg);
            continue;
        }
        b->client_ok = 0;  // its client must ATTACH again
        const char *owner = (const char *)sqlite3_column_text(bs, 2);
        snprintf(b->owner, sizeof b->owner, "%s", owner ? owner : "");
        sqlite3_bind_text(rs, 1, id, -1, SQLITE_TRANSIENT);
        int rrc;
        uint32_t got = 0;
        while ((rrc = sqlite3_step(rs)) == SQLITE_ROW) {
            uint64_t rid = (uint64_t)sqlite3_column_int64(rs, 0);
            sqlite3_int64 idx = sqlite3_column_int64(rs, 1);
            const char *tag = (const char *)sqlite3_column_text(rs, 2);
            int pb = sqlite3_column_bytes(rs, 3);
            const void *pblob = sqlite3_column_blob(rs, 3);
            kvf_sampling_t sp = kvf_sampling_default();
            sp.temperature = (float)sqlite3_column_double(rs, 4);
            sp.top_k = (int32_t)sqlite3_column_int64(rs, 5);
            sp.top_p = (float)sqlite3_column_double(rs, 6);
            sp.min_p = (float)sqlite3_column_double(rs, 7);
            sp.repetition_penalty = (float)sqlite3_column_double(rs, 8);
            sp.seed = (uint64_t)sqlite3_column_int64(rs, 9);
            sp.max_new_tokens = (int32_t)sqlite3_column_int64(rs, 10);
            sp.ignore_eos = (int32_t)sqlite3_column_int64(rs, 11);
            int sb = sqlite3_column_bytes(rs, 12);
            const void *sblob = sqlite3_column_blob(rs, 12);
            sp.n_stop_ids = sb / (int)sizeof(int32_t);
            if (sp.n_stop_ids > KVF_MAX_STOP_IDS) sp.n_stop_ids = KVF_MAX_STOP_IDS;
            if (sp.n_stop_ids) memcpy(sp.stop_ids, sblob, (size_t)sp.n_stop_ids * sizeof(int32_t));
            uint32_t np = (uint32_t)pb / sizeof(int32_t);
            int32_t *prompt = NULL;
            if (np) {
                prompt = kvf_xmalloc((size_t)np * sizeof *prompt);
                memcpy(prompt, pblob, (size_t)np * sizeof *prompt);
            }
            if (rid == 0 || idx < 0 || idx >= n || b->reqs[idx] || kvf_reqtable_get(t, rid)) {
                kvf_log(KVF_LOG_WARN, "journal %s: batch %s: bad request row (rid %" PRIu64 ") skipped", j->path, id,
                        rid);
                free(prompt);
                continue;
            }
            kvf_req_t *req = kvf_reqtable_restore(t, b, rid, (uint32_t)idx, tag, &prompt, np, &sp);
            if (s_load_tokens(j, tk, req, err) < 0) goto done;
            got++;
            if (sqlite3_column_int64(rs, 13)) {
                req->finish_reason = (uint32_t)sqlite3_column_int64(rs, 14);
                const char *emsg = (const char *)sqlite3_column_text(rs, 16);
                if (req->finish_reason == KVF_FINISH_ERROR)
                    kvf_req_set_error(req, (uint32_t)sqlite3_column_int64(rs, 15), emsg ? emsg : "");
                req->state = KVF_REQ_FINISHED;
                b->n_finished++;
            } else {
                nu++;
            }
        }
        sqlite3_reset(rs);
        if (rrc != SQLITE_DONE) {
            s_fail(j, err, "read requests");
            goto done;
        }
        if (got != b->n) {
            // Written in one transaction with its batch: a gap is a damaged file.
            kvf_log(KVF_LOG_ERROR, "journal %s: batch %s has %u of its %u requests; the missing ones fail", j->path,
                    id, got, b->n);
            for (uint32_t i = 0; i < b->n; i++) {
                if (b->reqs[i]) continue;
                int32_t *none = NULL;
                kvf_req_t *req = kvf_reqtable_restore(t, b, t->next_rid, i, "", &none, 0, &(kvf_sampling_t){0});
                kvf_req_set_error(req, KVF_E_INTERNAL, "lost from the coordinator's journal");
                req->finish_reason = KVF_FINISH_ERROR;
                req->state = KVF_REQ_FINISHED;
                b->n_finished++;
            }
        }
        nb++;
    }
    if (brc != SQLITE_DONE) {
        s_fail(j, err, "read batches");
        goto done;
    }
    rc = 0;
done:
    sqlite3_finalize(bs);
    sqlite3_finalize(rs);
    sqlite3_finalize(tk);
    if (n_batches) *n_batches = nb;
    if (n_unfinished) *n_unfinished = nu;
    return rc;
}
