// coordinator/coord_journal.c — the coordinator's use of its job journal
// (journal.h): what is written when, and how a restarted coordinator takes the
// journalled work back. Journal failures are logged and never stop serving:
// the cluster goes on, only a later restart would lose what was not written.
#include "coordinator/coord_int.h"

#include <inttypes.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "common/log.h"
#include "coordinator/journal.h"

static void s_failed(kvf_coord_t *c, const kvf_err_t *err) {
    c->journal_errors++;
    // Once per burst, not per token.
    if (c->journal_errors == 1 || c->journal_errors % 10000 == 0)
        kvf_log(KVF_LOG_ERROR, "%s (%" PRIu64 " journal errors so far)", err->msg, c->journal_errors);
}

static void s_on_release(void *ctx, const kvf_batch_t *b) {
    kvf_coord_t *c = ctx;
    kvf_err_t err;
    if (c->journal && kvf_journal_release(c->journal, b->id, &err) < 0) s_failed(c, &err);
}

static int s_cmp_desc(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

int kvf_coord_journal_open(kvf_coord_t *c, const char *path, kvf_err_t *err) {
    c->journal = kvf_journal_new(path, err);
    if (!c->journal) return -1;
    uint32_t nb = 0, nu = 0;
    if (kvf_journal_load(c->journal, c->reqs, &nb, &nu, err) < 0) return -1;
    // Unfinished requests wait in the queue, oldest first, beyond its cap
    // (they were accepted before the restart); finished batches are retained
    // for ATTACH, as their clients are not connected to this process.
    uint64_t *rids = kvf_xcalloc(nu ? nu : 1, sizeof *rids);
    uint32_t n = 0;
    zhashx_t *h = c->reqs->by_rid;
    for (kvf_req_t *r = zhashx_first(h); r; r = zhashx_next(h))
        if (r->state == KVF_REQ_NEW && n < nu) rids[n++] = r->rid;
    qsort(rids, n, sizeof *rids, s_cmp_desc);
    uint64_t resumed_tokens = 0;
    for (uint32_t i = 0; i < n; i++) {
        kvf_req_t *r = kvf_reqtable_get(c->reqs, rids[i]);
        resumed_tokens += r->n_out;  // they become its resume_ids: not generated again
        kvf_queue_push_front(c->queue, r->rid, kvf_coord_req_tokens(r));
        kvf_assert(kvf_coord_req_event(c, r, KVF_REQ_EV_ENQUEUE) == 0);
    }
    free(rids);
    zhashx_t *bh = c->reqs->batches;
    for (kvf_batch_t *b = zhashx_first(bh); b; b = zhashx_next(bh))
        if (b->n_finished == b->n) kvf_coord_settle(c, b);
    c->reqs->on_release = s_on_release;
    c->reqs->on_release_ctx = c;
    c->dirty = 1;
    kvf_log(KVF_LOG_INFO,
            "journal %s: %u batches, %u unfinished requests resumed after %" PRIu64
            " tokens already delivered; rids continue at %" PRIu64,
            path, nb, n, resumed_tokens, c->reqs->next_rid);
    return 0;
}

void kvf_coord_journal_batch(kvf_coord_t *c, const kvf_batch_t *b) {
    kvf_err_t err;
    if (c->journal && kvf_journal_batch(c->journal, b, &err) < 0) s_failed(c, &err);
}

void kvf_coord_journal_tokens(kvf_coord_t *c, const kvf_req_t *req, const int32_t *ids, uint32_t n, const char *text,
                              size_t text_len) {
    kvf_err_t err;
    if (c->journal && kvf_journal_tokens(c->journal, req->rid, ids, n, text, text_len, &err) < 0) s_failed(c, &err);
}

void kvf_coord_journal_finish(kvf_coord_t *c, const kvf_req_t *req) {
    kvf_err_t err;
    if (c->journal && kvf_journal_finish(c->journal, req, &err) < 0) s_failed(c, &err);
}

#define S_COMMIT_EVERY_MS 20   // the group-commit window
#define S_COMMIT_WRITES 8192   // or this many writes, whichever comes first

void kvf_coord_journal_commit(kvf_coord_t *c) {
    if (!c->journal) return;
    uint64_t pending = kvf_journal_pending(c->journal), now = kvf_coord_now();
    if (pending == 0 || (now - c->journal_commit_ms < S_COMMIT_EVERY_MS && pending < S_COMMIT_WRITES)) return;
    kvf_err_t err;
    if (kvf_journal_commit(c->journal, &err) < 0) s_failed(c, &err);
    c->journal_commit_ms = now;
}
