// client/kvfctl_run.c — see kvfctl_run.h.
#include "kvfctl_run.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/kvfctl_chunks.h"
#include "client/kvfctl_jsonl.h"
#include "common/alloc.h"
#include "proto/codec.h"

#define S_CHUNK_BYTES (4u << 20)   // prompt bytes per SUBMIT, well under KVF_ZMQ_MAX_MSG
#define S_STALL_CHECK_MS 10000     // re-attach after this long without a result
#define S_RESTART_CHECK_MS 2000    // ask whether the coordinator restarted after this long without one
#define S_GONE_MS 300000           // give up when the coordinator has not answered for this long

// One request of the file, from the moment it is read until its line is written.
typedef enum { S_PENDING = 0, S_INFLIGHT = 1, S_FINISHED = 2 } s_state_t;

typedef struct {
    s_state_t state;
    kvf_jsonl_req_t req;        // the parsed line (text/ids freed once submitted)
    uint64_t rid;
    size_t batch;               // index of its chunk's batch id
    char *text;                 // generated text so far
    size_t text_len, text_cap;
    int32_t *ids;               // generated ids so far
    size_t n_ids, ids_cap;
    int stopped;                // a stop string matched: cut and cancelled
    char *line;                 // the output line once finished
    int ok;
} s_rec_t;

// rid -> absolute record index; open addressing, linear probing, backward-shift delete.
typedef struct {
    uint64_t *keys;  // 0 = empty (rids are never 0)
    uint64_t *vals;
    size_t cap, n;
} s_map_t;

typedef struct {
    kvf_client_t *client;
    const kvf_run_opts_t *o;
    FILE *in, *out;
    int eof;
    uint64_t lines_read;       // requests read so far
    uint64_t total;            // requests in the file (0: unknown, e.g. stdin)
    s_rec_t *recs;             // recs[i] is request base + i
    uint64_t base, n_recs, recs_cap;
    uint64_t next_write;       // absolute index of the next line to write
    uint64_t *pending;         // absolute indices read and not yet submitted
    size_t n_pending, pending_cap;
    uint64_t inflight;
    size_t max_inflight;
    s_map_t map;
    char **batches;            // the id of every chunk submitted (a batch each)
    size_t n_batches, batches_cap;
    kvf_run_stats_t st;
    int64_t t0, last_event, last_progress, retry_at;
    int bar;                   // 1: redrawn bar on a terminal
    kvf_chunklist_t chunks;    // OUT.batches with --batch-id (f NULL without)
    uint64_t next_chunk;       // number of the next chunk ("ID.k")
    int64_t coord_started;     // the coordinator's start (our clock) at the last STATUS; 0: not asked yet
    int64_t last_check;        // last STATUS sent for a silence
    int coord_down;            // the last STATUS got no answer
} s_run_t;

// ---------------------------------------------------------------- rid map

static size_t s_hash(uint64_t k, size_t cap) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k & (cap - 1);
}

static void s_map_put(s_map_t *m, uint64_t k, uint64_t v);

static void s_map_grow(s_map_t *m) {
    s_map_t old = *m;
    m->cap = old.cap ? old.cap * 2 : 1024;
    m->keys = kvf_xcalloc(m->cap, sizeof *m->keys);
    m->vals = kvf_xcalloc(m->cap, sizeof *m->vals);
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.keys[i]) s_map_put(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
}

static void s_map_put(s_map_t *m, uint64_t k, uint64_t v) {
    if ((m->n + 1) * 2 > m->cap) s_map_grow(m);
    size_t i = s_hash(k, m->cap);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) m->n++;
    m->keys[i] = k;
    m->vals[i] = v;
}

static int s_map_get(const s_map_t *m, uint64_t k, uint64_t *v) {
    if (!m->cap || !k) return -1;
    size_t i = s_hash(k, m->cap);
    while (m->keys[i]) {
        if (m->keys[i] == k) {
            *v = m->vals[i];
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

static void s_map_del(s_map_t *m, uint64_t k) {
    if (!m->cap || !k) return;
    size_t mask = m->cap - 1, i = s_hash(k, m->cap);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & mask;
    if (!m->keys[i]) return;
    m->keys[i] = 0;
    m->n--;
    // Move later entries of the cluster back so that lookups never stop early.
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t h = s_hash(m->keys[j], m->cap);
        if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            m->keys[j] = 0;
            i = j;
        }
    }
}

// ---------------------------------------------------------------- records

static s_rec_t *s_rec(s_run_t *r, uint64_t idx) {
    return &r->recs[idx - r->base];
}

static s_rec_t *s_rec_add(s_run_t *r) {
    if (r->n_recs == r->recs_cap) {
        // Drop the written prefix before growing.
        uint64_t written = r->next_write - r->base;
        if (written > 0 && written * 2 >= r->n_recs) {
            memmove(r->recs, r->recs + written, (r->n_recs - written) * sizeof *r->recs);
            r->n_recs -= written;
            r->base = r->next_write;
        }
        if (r->n_recs == r->recs_cap) {
            r->recs_cap = r->recs_cap ? r->recs_cap * 2 : 1024;
            r->recs = kvf_xrealloc(r->recs, r->recs_cap * sizeof *r->recs);
        }
    }
    s_rec_t *rec = &r->recs[r->n_recs++];
    memset(rec, 0, sizeof *rec);
    return rec;
}

static void s_rec_finish_error(s_run_t *r, s_rec_t *rec, const char *code, const char *message) {
    rec->line = kvf_jsonl_error_line(rec->req.id, code, message);
    rec->state = S_FINISHED;
    rec->ok = 0;
    r->st.errors++;
}

static void s_rec_finish_done(s_run_t *r, s_rec_t *rec, const char *reason, uint32_t prompt_tokens,
                              uint32_t completion_tokens) {
    rec->line = kvf_jsonl_result_line(rec->req.id, rec->text, rec->text_len, rec->ids, rec->n_ids, prompt_tokens,
                                      completion_tokens, reason);
    rec->state = S_FINISHED;
    rec->ok = 1;
    r->st.ok++;
    r->st.prompt_tokens += prompt_tokens;
}

// Releases what a finished record still holds except its output line.
static void s_rec_release(s_rec_t *rec) {
    kvf_jsonl_req_clear(&rec->req);
    free(rec->text);
    free(rec->ids);
    rec->text = NULL;
    rec->ids = NULL;
}

// ---------------------------------------------------------------- input

static void s_pending_push(s_run_t *r, uint64_t idx) {
    if (r->n_pending == r->pending_cap) {
        r->pending_cap = r->pending_cap ? r->pending_cap * 2 : 256;
        r->pending = kvf_xrealloc(r->pending, r->pending_cap * sizeof *r->pending);
    }
    r->pending[r->n_pending++] = idx;
}

// Counts the requests in a regular file, for the progress bar's total; 0 otherwise.
static uint64_t s_count(const char *path) {
    struct stat sb;
    if (strcmp(path, "-") == 0 || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    uint64_t c = 0;
    while ((n = getline(&line, &cap, f)) >= 0)
        if (!kvf_jsonl_is_blank(line, (size_t)n)) c++;
    free(line);
    fclose(f);
    return c;
}

// Reads the next request; 1 when one was read, 0 at end of input, -1 on a read error.
static int s_read_one(s_run_t *r, kvf_err_t *err) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (;;) {
        errno = 0;
        n = getline(&line, &cap, r->in);
        if (n < 0) {
            free(line);
            if (ferror(r->in)) return kvf_err_set(err, KVF_E_IO, "reading %s: %s", r->o->in_path, strerror(errno));
            r->eof = 1;
            return 0;
        }
        if (!kvf_jsonl_is_blank(line, (size_t)n)) break;
    }
    s_rec_t *rec = s_rec_add(r);
    uint64_t idx = r->base + r->n_recs - 1;
    r->lines_read++;
    kvf_err_t e;
    if (kvf_jsonl_parse(line, (size_t)n, r->lines_read, &rec->req, &e) < 0) {
        s_rec_finish_error(r, rec, kvf_status_name(e.code), e.msg);
    } else {
        s_pending_push(r, idx);
    }
    free(line);
    return 1;
}

// ---------------------------------------------------------------- submit

// A named SUBMIT got no ACK (the coordinator died, or restarts): once it
// answers again, the chunk is attached when it has it (journalled before the
// crash: its ACK comes again) and submitted again when it does not. Gives up
// (KVF_E_TIMEOUT) after S_GONE_MS without an answer.
static int s_submit_recover(s_run_t *r, const char *name, const kvf_request_t *reqs, size_t n, uint64_t *rids,
                            char **bid, kvf_err_t *err) {
    int64_t t0 = zclock_mono();
    fprintf(stderr, "kvfctl run: no ACK for %s; waiting for the coordinator\n", name);
    while (zclock_mono() - t0 < S_GONE_MS && !zsys_interrupted) {
        uint64_t *got = NULL;
        size_t ng = 0;
        kvf_err_t e;
        if (kvf_client_attach(r->client, name, &got, &ng, &e) == 0) {
            if (ng == n) {
                memcpy(rids, got, n * sizeof *rids);
                free(got);
                *bid = kvf_xstrdup(name);
                return 0;
            }
            free(got);
            return kvf_err_set(err, KVF_E_INVAL, "batch %s has %zu requests, not %zu: pick another --batch-id", name,
                               ng, n);
        }
        if (e.code == KVF_E_NOT_FOUND) {
            if (kvf_client_submit(r->client, name, reqs, n, rids, bid, &e) == 0) return 0;
            if (e.code != KVF_E_TIMEOUT) return kvf_err_set(err, e.code, "%s", e.msg);
        } else if (e.code != KVF_E_TIMEOUT) {
            return kvf_err_set(err, e.code, "%s", e.msg);
        }
        zclock_sleep(200);
    }
    return kvf_err_set(err, KVF_E_TIMEOUT, "no ACK for %s, and the coordinator did not come back", name);
}

// Submits recs idx[0..n-1]; returns 0, or -1 with err (the coordinator's refusal).
static int s_submit_some(s_run_t *r, const uint64_t *idx, size_t n, kvf_err_t *err) {
    kvf_request_t *reqs = kvf_xcalloc(n, sizeof *reqs);
    uint64_t *rids = kvf_xcalloc(n, sizeof *rids);
    char *tags = kvf_xmalloc(n * 24);  // integer ids travel as their decimal text
    for (size_t i = 0; i < n; i++) {
        const kvf_jsonl_req_t *q = &s_rec(r, idx[i])->req;
        reqs[i].text = q->text;
        reqs[i].prompt_ids = q->ids;
        reqs[i].n_prompt_ids = q->n_ids;
        reqs[i].sampling = q->sampling;
        if (json_is_string(q->id)) {
            reqs[i].tag = json_string_value(q->id);
        } else {
            snprintf(tags + i * 24, 24, "%lld", (long long)json_integer_value(q->id));
            reqs[i].tag = tags + i * 24;
        }
    }
    // A batch id names one SUBMIT, so chunk k of --batch-id ID is "ID.k".
    char want[160];
    if (r->o->batch_id && *r->o->batch_id)
        snprintf(want, sizeof want, "%.140s.%llu", r->o->batch_id, (unsigned long long)r->next_chunk);
    char *bid = NULL;
    int named = r->o->batch_id && *r->o->batch_id;
    int rc = kvf_client_submit(r->client, named ? want : NULL, reqs, n, rids, &bid, err);
    // (Only once the coordinator has answered this run: an unreachable one fails fast.)
    if (rc < 0 && named && r->n_batches > 0 && err && err->code == KVF_E_TIMEOUT)
        rc = s_submit_recover(r, want, reqs, n, rids, &bid, err);
    if (rc == 0) {
        if (r->n_batches == 0) snprintf(r->st.batch_id, sizeof r->st.batch_id, "%s", bid);
        if (r->n_batches == r->batches_cap) {
            r->batches_cap = r->batches_cap ? r->batches_cap * 2 : 16;
            r->batches = kvf_xrealloc(r->batches, r->batches_cap * sizeof *r->batches);
        }
        r->batches[r->n_batches++] = bid;
        r->next_chunk++;
        for (size_t i = 0; i < n; i++) {
            s_rec_t *rec = s_rec(r, idx[i]);
            rec->rid = rids[i];
            rec->batch = r->n_batches - 1;
            rec->state = S_INFLIGHT;
            s_map_put(&r->map, rids[i], idx[i]);
        }
        r->inflight += n;
        kvf_chunklist_note(&r->chunks, bid, idx, n);
    }
    free(tags);
    free(reqs);
    free(rids);
    return rc;
}

// Submits what is pending. 0 (possibly after a BUSY refusal: retried later), or
// -1 with err when the coordinator does not answer.
static int s_submit_pending(s_run_t *r, kvf_err_t *err) {
    size_t room = r->inflight >= r->max_inflight ? 0 : r->max_inflight - r->inflight;
    size_t n = 0, bytes = 0;
    while (n < r->n_pending && n < r->o->chunk && n < room) {
        const kvf_jsonl_req_t *q = &s_rec(r, r->pending[n])->req;
        bytes += (q->text ? strlen(q->text) : 0) + q->n_ids * 5 + 64;
        n++;
        if (bytes >= S_CHUNK_BYTES) break;
    }
    if (n == 0) return 0;
    kvf_err_t e;
    if (s_submit_some(r, r->pending, n, &e) < 0) {
        if (e.code == KVF_E_TIMEOUT || e.code == KVF_E_IO) return kvf_err_set(err, e.code, "%s", e.msg);
        if (e.code == KVF_E_BUSY) {
            // The coordinator's queue is full: hold back until results drain.
            if (r->inflight > 0 && r->max_inflight > r->inflight) r->max_inflight = r->inflight;
            r->retry_at = zclock_mono() + 200;
            return 0;
        }
        // Refused as a whole (one bad request spoils a message): one at a time,
        // so that each bad request gets its own error line.
        for (size_t i = 0; i < n; i++) {
            kvf_err_t e1;
            if (s_submit_some(r, &r->pending[i], 1, &e1) < 0) {
                if (e1.code == KVF_E_TIMEOUT || e1.code == KVF_E_IO) return kvf_err_set(err, e1.code, "%s", e1.msg);
                if (e1.code == KVF_E_BUSY) {
                    memmove(r->pending, r->pending + i, (r->n_pending - i) * sizeof *r->pending);
                    r->n_pending -= i;
                    r->retry_at = zclock_mono() + 200;
                    return 0;
                }
                s_rec_t *rec = s_rec(r, r->pending[i]);
                s_rec_finish_error(r, rec, kvf_status_name(e1.code), e1.msg);
            }
        }
    }
    memmove(r->pending, r->pending + n, (r->n_pending - n) * sizeof *r->pending);
    r->n_pending -= n;
    return 0;
}

// ---------------------------------------------------------------- results

static void s_append_text(s_rec_t *rec, const char *text, size_t len) {
    if (rec->text_len + len + 1 > rec->text_cap) {
        rec->text_cap = (rec->text_len + len + 1) * 2;
        rec->text = kvf_xrealloc(rec->text, rec->text_cap);
    }
    memcpy(rec->text + rec->text_len, text, len);
    rec->text_len += len;
    rec->text[rec->text_len] = 0;
}

static void s_append_ids(s_rec_t *rec, const int32_t *ids, size_t n) {
    if (rec->n_ids + n > rec->ids_cap) {
        rec->ids_cap = (rec->n_ids + n) * 2 + 16;
        rec->ids = kvf_xrealloc(rec->ids, rec->ids_cap * sizeof *rec->ids);
    }
    memcpy(rec->ids + rec->n_ids, ids, n * sizeof *ids);
    rec->n_ids += n;
}

// Looks for a stop string in the text that arrived since old_len; cuts the
// text there and returns 1 when one is found.
static int s_check_stop(s_rec_t *rec, size_t old_len) {
    size_t maxlen = 0;
    for (size_t i = 0; i < rec->req.n_stop; i++) {
        size_t l = strlen(rec->req.stop[i]);
        if (l > maxlen) maxlen = l;
    }
    size_t from = old_len >= maxlen ? old_len - maxlen + 1 : 0;
    size_t cut = SIZE_MAX;
    for (size_t i = 0; i < rec->req.n_stop; i++) {
        const char *hit = memmem(rec->text + from, rec->text_len - from, rec->req.stop[i], strlen(rec->req.stop[i]));
        if (hit && (size_t)(hit - rec->text) < cut) cut = (size_t)(hit - rec->text);
    }
    if (cut == SIZE_MAX) return 0;
    rec->text_len = cut;
    rec->text[cut] = 0;
    return 1;
}

static void s_handle(s_run_t *r, const kvf_event_t *ev) {
    uint64_t idx;
    if (ev->type == KVF_EVENT_ERROR && ev->rid == 0) {
        fprintf(stderr, "kvfctl run: coordinator error: %s\n", ev->message);
        return;
    }
    if (s_map_get(&r->map, ev->rid, &idx) < 0) return;  // not ours, or already finished
    s_rec_t *rec = s_rec(r, idx);
    switch (ev->type) {
    case KVF_EVENT_TOKENS:
        r->st.completion_tokens += ev->n_ids;
        if (rec->stopped) break;
        size_t old = rec->text_len;
        s_append_ids(rec, ev->ids, ev->n_ids);
        s_append_text(rec, ev->text, strlen(ev->text));
        if (rec->req.n_stop && s_check_stop(rec, old)) {
            rec->stopped = 1;
            kvf_err_t e;
            // The client cuts at the stop string; the rest of the generation is
            // wasted work, so cancel it (a failure only costs time).
            if (kvf_client_cancel(r->client, rec->rid, NULL, &e) < 0 && e.code != KVF_E_NOT_FOUND)
                fprintf(stderr, "kvfctl run: cancel %llu: %s\n", (unsigned long long)rec->rid, e.msg);
        }
        break;
    case KVF_EVENT_DONE: {
        const char *reason = rec->stopped ? "stop" : kvf_finish_name(ev->finish_reason);
        uint32_t completion = rec->stopped ? (uint32_t)rec->n_ids : ev->completion_tokens;
        s_rec_finish_done(r, rec, reason, ev->prompt_tokens, completion);
        break;
    }
    case KVF_EVENT_ERROR:
        if (ev->code == KVF_E_BUSY) {
            // The coordinator's queue was full: submit it again later.
            r->st.resubmitted++;
            s_map_del(&r->map, ev->rid);
            r->inflight--;
            rec->state = S_PENDING;
            rec->text_len = rec->n_ids = 0;
            rec->stopped = 0;
            s_pending_push(r, idx);
            if (r->inflight > 0 && r->max_inflight > r->inflight) r->max_inflight = r->inflight;
            r->retry_at = zclock_mono() + 200;
            return;
        }
        s_rec_finish_error(r, rec, kvf_status_name(ev->code), ev->message);
        break;
    default:
        return;
    }
    if (rec->state == S_FINISHED) {
        s_rec_release(rec);
        s_map_del(&r->map, ev->rid);
        r->inflight--;
    }
}

// Writes every finished line whose predecessors are all written.
static int s_flush(s_run_t *r, kvf_err_t *err) {
    int wrote = 0;
    while (r->next_write < r->base + r->n_recs) {
        s_rec_t *rec = s_rec(r, r->next_write);
        if (rec->state != S_FINISHED) break;
        if (fputs(rec->line, r->out) == EOF || fputc('\n', r->out) == EOF)
            return kvf_err_set(err, KVF_E_IO, "writing %s: %s", r->o->out_path, strerror(errno));
        free(rec->line);
        rec->line = NULL;
        s_rec_release(rec);
        r->next_write++;
        wrote = 1;
    }
    if (wrote && fflush(r->out) != 0)
        return kvf_err_set(err, KVF_E_IO, "writing %s: %s", r->o->out_path, strerror(errno));
    return 0;
}

// ---------------------------------------------------------------- progress

static void s_progress(s_run_t *r, int final) {
    if (r->o->progress == 0) return;
    int64_t now = zclock_mono();
    int every = r->bar ? 200 : (r->o->progress_every_ms > 0 ? r->o->progress_every_ms : 5000);
    if (!final && now - r->last_progress < every) return;
    r->last_progress = now;
    double secs = (double)(now - r->t0) / 1000.0;
    uint64_t done = r->st.ok + r->st.errors;
    uint64_t total = r->total > r->lines_read ? r->total : r->lines_read;
    double tps = secs > 0 ? (double)r->st.completion_tokens / secs : 0;
    char eta[32] = "?";
    if (done > 0 && total >= done && r->total) snprintf(eta, sizeof eta, "%.0fs", secs * (double)(total - done) / (double)done);
    if (r->bar) {
        int width = 30, fill = total ? (int)((double)width * (double)done / (double)total) : 0;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r[%s] %llu/%llu  %.0f tok/s  ETA %s\033[K", bar, (unsigned long long)done,
                (unsigned long long)total, tps, final ? "0s" : eta);
        if (final) fputc('\n', stderr);
    } else if (!final) {
        fprintf(stderr, "kvfctl run: %llu/%llu done, %.0f tok/s, ETA %s\n", (unsigned long long)done,
                (unsigned long long)total, tps, eta);
    }
    fflush(stderr);
}

// A batch the coordinator no longer knows (it restarted without a journal, or
// released the batch before its last results reached us): its unfinished
// requests are submitted again, in a new chunk.
static void s_resubmit_batch(s_run_t *r, size_t b) {
    uint64_t n = 0;
    for (uint64_t i = r->next_write; i < r->base + r->n_recs; i++) {
        s_rec_t *rec = s_rec(r, i);
        if (rec->state != S_INFLIGHT || rec->batch != b) continue;
        s_map_del(&r->map, rec->rid);
        r->inflight--;
        rec->state = S_PENDING;
        rec->text_len = rec->n_ids = 0;
        rec->stopped = 0;
        s_pending_push(r, i);
        n++;
    }
    if (n) fprintf(stderr, "kvfctl run: %llu requests of %s submitted again\n", (unsigned long long)n, r->batches[b]);
}

// The coordinator stops streaming to a client that fell behind (its send queue
// full) and keeps the results for ATTACH. After a silence, re-attach to every
// batch with unfinished requests: their results come again from the start.
static int s_reattach(s_run_t *r, kvf_err_t *err) {
    for (size_t b = 0; b < r->n_batches; b++) {
        int any = 0;
        for (uint64_t i = r->next_write; i < r->base + r->n_recs && !any; i++) {
            s_rec_t *rec = s_rec(r, i);
            any = rec->state == S_INFLIGHT && rec->batch == b;
        }
        if (!any) continue;
        for (uint64_t i = r->next_write; i < r->base + r->n_recs; i++) {
            s_rec_t *rec = s_rec(r, i);
            if (rec->state == S_INFLIGHT && rec->batch == b) {
                rec->text_len = rec->n_ids = 0;
                rec->stopped = 0;
            }
        }
        uint64_t *rids = NULL;
        size_t n = 0;
        kvf_err_t e;
        if (kvf_client_attach(r->client, r->batches[b], &rids, &n, &e) < 0) {
            if (e.code == KVF_E_TIMEOUT || e.code == KVF_E_IO) return kvf_err_set(err, e.code, "%s", e.msg);
            fprintf(stderr, "kvfctl run: re-attach to %s: %s\n", r->batches[b], e.msg);
            if (e.code == KVF_E_NOT_FOUND) s_resubmit_batch(r, b);
            continue;
        }
        free(rids);
    }
    return 0;
}

// A silence: asks for STATUS. A coordinator that restarted since (it started
// after the last one we saw, or after this run began) has lost our connection:
// re-attach at once (a journalled coordinator still has the batches; without a
// journal they are submitted again). A coordinator that does not answer is
// waited for, up to S_GONE_MS. After S_STALL_CHECK_MS of silence re-attach
// anyway (the coordinator stops streaming to a client that fell behind).
static int s_check_silence(s_run_t *r, kvf_err_t *err) {
    int64_t now = zclock_mono();
    if (now - r->last_event <= S_RESTART_CHECK_MS || now - r->last_check < S_RESTART_CHECK_MS) return 0;
    r->last_check = now;
    kvf_cluster_status_t *st = NULL;
    kvf_err_t e;
    if (kvf_client_status(r->client, &st, &e) < 0) {
        if (e.code != KVF_E_TIMEOUT) return 0;
        if (zclock_mono() - r->last_event > S_GONE_MS)
            return kvf_err_set(err, KVF_E_TIMEOUT, "the coordinator stopped answering: %s", e.msg);
        if (!r->coord_down) fprintf(stderr, "kvfctl run: no answer from the coordinator; waiting for it\n");
        r->coord_down = 1;
        r->last_check = zclock_mono();
        return 0;
    }
    now = zclock_mono();
    int64_t started = now - (int64_t)st->uptime_ms;
    kvf_cluster_status_destroy(&st);
    int64_t ref = r->coord_started ? r->coord_started : r->t0;
    int restarted = started > ref + 250;  // our clock on both sides: the margin covers the round trip
    r->coord_started = started;
    if (!restarted && !r->coord_down && now - r->last_event <= S_STALL_CHECK_MS) return 0;
    if (restarted) fprintf(stderr, "kvfctl run: the coordinator restarted; attaching to the batches again\n");
    r->coord_down = 0;
    if (s_reattach(r, err) < 0) return -1;
    r->last_event = zclock_mono();
    return 0;
}

// ---------------------------------------------------------------- resume

// With --batch-id and an output file: opens OUT and its chunk list
// (kvfctl_chunks.h). A list of this ID resumes the run: OUT's lines stay and
// their requests are skipped; the rest of the input is read up to the last
// request a chunk holds, and each chunk that is the last to hold one of them
// (a request refused as BUSY went again in a later chunk) is attached again,
// so that what the coordinator already generated is not generated twice; what
// no chunk still holds is submitted anew. 0, or -1 with err.
static int s_resume(s_run_t *r, kvf_err_t *err) {
    kvf_chunklist_t *cl = &r->chunks;
    if (kvf_chunklist_open(cl, r->o->out_path, r->o->batch_id, err) < 0) return -1;
    r->out = fopen(r->o->out_path, cl->resume ? "a" : "w");
    if (!r->out) return kvf_err_set(err, KVF_E_IO, "cannot create %s: %s", r->o->out_path, strerror(errno));
    if (!cl->resume) return 0;
    uint64_t done = cl->done, skipped = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (skipped < done && (n = getline(&line, &cap, r->in)) >= 0)
        if (!kvf_jsonl_is_blank(line, (size_t)n)) skipped++;
    free(line);
    if (skipped < done)
        return kvf_err_set(err, KVF_E_INVAL, "%s has %llu lines but %s only %llu requests: not this input's output",
                           r->o->out_path, (unsigned long long)done, r->o->in_path, (unsigned long long)skipped);
    r->lines_read = r->base = r->next_write = done;
    r->next_chunk = cl->next_chunk;
    uint64_t hi = done;
    for (size_t c = 0; c < cl->n_chunks; c++)
        for (size_t i = 0; i < cl->chunks[c].n; i++)
            if (cl->chunks[c].idx[i] + 1 > hi) hi = cl->chunks[c].idx[i] + 1;
    while (!r->eof && r->lines_read < hi)
        if (s_read_one(r, err) < 0) return -1;
    uint64_t end = r->base + r->n_recs;
    size_t *last = kvf_xcalloc(end - done + 1, sizeof *last);  // chunk + 1 that last holds request done + i
    for (size_t c = 0; c < cl->n_chunks; c++)
        for (size_t i = 0; i < cl->chunks[c].n; i++)
            if (cl->chunks[c].idx[i] >= done && cl->chunks[c].idx[i] < end) last[cl->chunks[c].idx[i] - done] = c + 1;
    uint64_t attached = 0;
    int rc = 0;
    for (size_t c = 0; c < cl->n_chunks && rc == 0; c++) {
        const kvf_chunk_t *ch = &cl->chunks[c];
        int any = 0;
        for (size_t i = 0; i < ch->n && !any; i++)
            any = ch->idx[i] >= done && ch->idx[i] < end && last[ch->idx[i] - done] == c + 1;
        if (!any) continue;
        uint64_t *rids = NULL;
        size_t nr = 0;
        kvf_err_t e;
        if (kvf_client_attach(r->client, ch->name, &rids, &nr, &e) < 0) {
            if (e.code == KVF_E_TIMEOUT || e.code == KVF_E_IO) rc = kvf_err_set(err, e.code, "%s", e.msg);
            continue;  // gone: its requests are submitted again
        }
        if (nr != ch->n) {
            fprintf(stderr, "kvfctl run: %s has %zu requests, not %zu: submitting them again\n", ch->name, nr, ch->n);
            kvf_client_cancel(r->client, 0, ch->name, NULL);
            free(rids);
            continue;
        }
        if (r->n_batches == r->batches_cap) {
            r->batches_cap = r->batches_cap ? r->batches_cap * 2 : 16;
            r->batches = kvf_xrealloc(r->batches, r->batches_cap * sizeof *r->batches);
        }
        r->batches[r->n_batches++] = kvf_xstrdup(ch->name);
        for (size_t i = 0; i < nr; i++) {
            uint64_t x = ch->idx[i];
            if (x < done || x >= end || last[x - done] != c + 1) continue;
            s_rec_t *rec = s_rec(r, x);
            if (rec->state != S_PENDING) continue;  // an unparsable line: its error line is made here
            rec->rid = rids[i];
            rec->batch = r->n_batches - 1;
            rec->state = S_INFLIGHT;
            s_map_put(&r->map, rids[i], x);
            r->inflight++;
            attached++;
        }
        free(rids);
    }
    free(last);
    if (rc < 0) return -1;
    // What was attached is no longer pending.
    size_t k = 0;
    for (size_t i = 0; i < r->n_pending; i++)
        if (s_rec(r, r->pending[i])->state == S_PENDING) r->pending[k++] = r->pending[i];
    r->n_pending = k;
    if (r->n_batches) snprintf(r->st.batch_id, sizeof r->st.batch_id, "%s", r->batches[0]);
    fprintf(stderr, "kvfctl run: resuming %s: %llu lines already in %s, %llu requests attached in %zu chunks\n",
            r->o->batch_id, (unsigned long long)done, r->o->out_path, (unsigned long long)attached, r->n_batches);
    return 0;
}

// ---------------------------------------------------------------- run

static int s_loop(s_run_t *r, kvf_err_t *err) {
    while (!r->eof || r->n_pending > 0 || r->inflight > 0) {
        if (zsys_interrupted) {
            for (size_t i = 0; i < r->n_batches; i++) kvf_client_cancel(r->client, 0, r->batches[i], NULL);
            return kvf_err_set(err, KVF_E_CANCELLED, "interrupted: %zu batches cancelled", r->n_batches);
        }
        while (!r->eof && r->n_pending < r->o->chunk && r->inflight + r->n_pending < r->max_inflight)
            if (s_read_one(r, err) < 0) return -1;
        int64_t now = zclock_mono();
        int can_submit = r->n_pending > 0 && now >= r->retry_at && r->inflight < r->max_inflight &&
                         (r->n_pending >= r->o->chunk || r->eof || r->inflight + r->n_pending >= r->max_inflight);
        if (can_submit && s_submit_pending(r, err) < 0) return -1;
        if (s_flush(r, err) < 0) return -1;

        int wait = (r->n_pending > 0 && r->inflight == 0) ? 50 : 100;
        if (r->inflight == 0 && r->n_pending == 0) wait = 0;
        if (r->inflight == 0 && r->n_pending > 0 && zclock_mono() < r->retry_at)
            zclock_sleep((int)(r->retry_at - zclock_mono()));  // refused as BUSY, nothing to read meanwhile
        for (int k = 0; k < 4096 && r->inflight > 0; k++) {
            kvf_event_t ev = {0};
            kvf_err_t e;
            if (kvf_client_next(r->client, k == 0 ? wait : 0, &ev, &e) < 0) {
                if (e.code == KVF_E_TIMEOUT) break;
                if (e.code == KVF_E_IO) {
                    if (zsys_interrupted) break;
                    return kvf_err_set(err, KVF_E_IO, "%s", e.msg);
                }
                fprintf(stderr, "kvfctl run: %s\n", e.msg);  // undecodable message: skip it
                continue;
            }
            r->last_event = zclock_mono();
            s_handle(r, &ev);
            kvf_event_clear(&ev);
        }
        // Work submitted and not a word for a while: is the coordinator still there?
        if (r->inflight > 0 && s_check_silence(r, err) < 0) return -1;
        // BUSY made us hold back: open up again as results drain.
        if (r->max_inflight < r->o->max_inflight && r->inflight < r->max_inflight / 2 + 1)
            r->max_inflight = r->max_inflight * 2 < r->o->max_inflight ? r->max_inflight * 2 : r->o->max_inflight;
        if (s_flush(r, err) < 0) return -1;
        s_progress(r, 0);
    }
    return s_flush(r, err);
}

int kvf_ctl_run(kvf_client_t *client, const kvf_run_opts_t *opts, kvf_run_stats_t *stats, kvf_err_t *err) {
    kvf_run_opts_t o = *opts;
    if (o.chunk == 0) o.chunk = 256;
    if (o.max_inflight == 0) o.max_inflight = 4096;
    if (o.max_inflight < o.chunk) o.max_inflight = o.chunk;
    s_run_t r;
    memset(&r, 0, sizeof r);
    r.client = client;
    r.o = &o;
    r.max_inflight = o.max_inflight;
    r.bar = o.progress < 0 && isatty(STDERR_FILENO);
    int rc = -1;
    r.t0 = r.last_event = r.last_progress = zclock_mono();
    r.in = strcmp(o.in_path, "-") == 0 ? stdin : fopen(o.in_path, "r");
    if (!r.in) {
        kvf_err_set(err, KVF_E_IO, "cannot open %s: %s", o.in_path, strerror(errno));
        goto done;
    }
    r.total = s_count(o.in_path);
    if (o.batch_id && *o.batch_id && strcmp(o.out_path, "-") != 0) {
        if (s_resume(&r, err) < 0) goto done;
    } else {
        r.out = strcmp(o.out_path, "-") == 0 ? stdout : fopen(o.out_path, "w");
        if (!r.out) {
            kvf_err_set(err, KVF_E_IO, "cannot create %s: %s", o.out_path, strerror(errno));
            goto done;
        }
    }
    rc = s_loop(&r, err);
    s_progress(&r, 1);
done:
    r.st.lines = r.lines_read;
    r.st.batches = r.n_batches;
    r.st.seconds = (double)(zclock_mono() - r.t0) / 1000.0;
    if (stats) *stats = r.st;
    if (r.in && r.in != stdin) fclose(r.in);
    kvf_chunklist_close(&r.chunks);
    if (r.out && r.out != stdout && fclose(r.out) != 0 && rc == 0)
        rc = kvf_err_set(err, KVF_E_IO, "writing %s: %s", o.out_path, strerror(errno));
    for (uint64_t i = 0; i < r.n_recs; i++) {
        s_rec_release(&r.recs[i]);
        free(r.recs[i].line);
    }
    free(r.recs);
    free(r.pending);
    free(r.map.keys);
    free(r.map.vals);
    for (size_t i = 0; i < r.n_batches; i++) free(r.batches[i]);
    free(r.batches);
    return rc;
}
