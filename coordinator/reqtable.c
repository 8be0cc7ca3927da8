// coordinator/reqtable.c — see reqtable.h.
#include "coordinator/reqtable.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

// ---- the state table

typedef struct {
    int8_t next;       // kvf_req_state, -1 illegal
    uint8_t actions;   // kvf_req_action flags
} s_cell_t;

#define X -1, 0
#define DONE_(a) KVF_REQ_FINISHED, (uint8_t)((a) | KVF_REQ_ACT_COMPLETE)
static const s_cell_t s_table[KVF_REQ_STATE_COUNT][KVF_REQ_EV_COUNT] = {
    //              ENQUEUE                 PLACE                    REQUEUE
    //              FINISH                  CANCEL                   FAIL
    [KVF_REQ_NEW] = {{KVF_REQ_QUEUED, 0}, {KVF_REQ_ASSIGNED, 0}, {X},
                     {X}, {X}, {DONE_(0)}},
    [KVF_REQ_QUEUED] = {{X}, {KVF_REQ_ASSIGNED, KVF_REQ_ACT_UNQUEUE}, {X},
                        {DONE_(KVF_REQ_ACT_UNQUEUE)}, {DONE_(KVF_REQ_ACT_UNQUEUE)}, {DONE_(KVF_REQ_ACT_UNQUEUE)}},
    [KVF_REQ_ASSIGNED] = {{X}, {X}, {KVF_REQ_QUEUED, KVF_REQ_ACT_RELEASE | KVF_REQ_ACT_REQUEUE},
                          {DONE_(KVF_REQ_ACT_RELEASE)},
                          {DONE_(KVF_REQ_ACT_RELEASE | KVF_REQ_ACT_FORWARD_CANCEL)},
                          {DONE_(KVF_REQ_ACT_RELEASE)}},
    [KVF_REQ_FINISHED] = {{X}, {X}, {X}, {X}, {X}, {X}},
};
#undef X
#undef DONE_

static const char *s_state_names[] = {"NEW", "QUEUED", "ASSIGNED", "FINISHED"};
static const char *s_event_names[] = {"ENQUEUE", "PLACE", "REQUEUE", "FINISH", "CANCEL", "FAIL"};

const char *kvf_req_state_name(kvf_req_state s) {
    return (unsigned)s < KVF_REQ_STATE_COUNT ? s_state_names[s] : "?";
}

const char *kvf_req_event_name(kvf_req_event e) {
    return (unsigned)e < KVF_REQ_EV_COUNT ? s_event_names[e] : "?";
}

int kvf_req_transition(kvf_req_state state, kvf_req_event ev, kvf_req_state *next, unsigned *actions) {
    if ((unsigned)state >= KVF_REQ_STATE_COUNT || (unsigned)ev >= KVF_REQ_EV_COUNT) return -1;
    s_cell_t c = s_table[state][ev];
    if (c.next < 0) return -1;
    *next = (kvf_req_state)c.next;
    *actions = c.actions;
    return 0;
}

int kvf_req_apply(kvf_req_t *req, kvf_req_event ev, unsigned *actions) {
    kvf_req_state next;
    unsigned act;
    if (kvf_req_transition(req->state, ev, &next, &act) < 0) {
        kvf_log(KVF_LOG_DEBUG, "rid %" PRIu64 ": %s refused in state %s", req->rid, kvf_req_event_name(ev),
                kvf_req_state_name(req->state));
        return -1;
    }
    req->state = next;
    if (act & KVF_REQ_ACT_COMPLETE) req->batch->n_finished++;
    if (actions) *actions = act;
    return 0;
}

// ---- table

static size_t s_rid_hash(const void *key) {
    uint64_t x = *(const uint64_t *)key;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static int s_rid_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void s_req_free(kvf_req_t *r) {
    if (!r) return;
    free(r->tag);
    free(r->prompt);
    free(r->out);
    free(r->text);
    free(r->error);
    free(r);
}

static void s_batch_free(kvf_reqtable_t *t, kvf_batch_t *b) {
    for (uint32_t i = 0; i < b->n; i++) {
        if (!b->reqs[i]) continue;
        zhashx_delete(t->by_rid, &b->reqs[i]->rid);
        s_req_free(b->reqs[i]);
    }
    free(b->reqs);
    free(b->id);
    free(b);
}

kvf_reqtable_t *kvf_reqtable_new(uint32_t max_retained) {
    kvf_reqtable_t *t = kvf_xcalloc(1, sizeof *t);
    t->by_rid = zhashx_new();
    kvf_assert(t->by_rid);
    // Keys point at the rid inside the request: no copy, no destructor.
    zhashx_set_key_duplicator(t->by_rid, NULL);
    zhashx_set_key_destructor(t->by_rid, NULL);
    zhashx_set_key_hasher(t->by_rid, s_rid_hash);
    zhashx_set_key_comparator(t->by_rid, s_rid_cmp);
    t->batches = zhashx_new();
    kvf_assert(t->batches);
    t->max_retained = max_retained;
    t->retained = kvf_xcalloc(max_retained + 1, sizeof *t->retained);
    t->next_rid = 1;
    t->next_batch = 1;
    return t;
}

void kvf_reqtable_destroy(kvf_reqtable_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_reqtable_t *t = *self_p;
    for (kvf_batch_t *b = zhashx_first(t->batches); b; b = zhashx_next(t->batches)) s_batch_free(t, b);
    zhashx_destroy(&t->batches);
    zhashx_destroy(&t->by_rid);
    free(t->retained);
    free(t);
    *self_p = NULL;
}

kvf_batch_t *kvf_reqtable_batch_new(kvf_reqtable_t *t, const char *id, const void *ident, size_t ident_len,
                                    uint32_t n, kvf_err_t *err) {
    char idbuf[64];
    if (!id || !*id) {
        do {
            snprintf(idbuf, sizeof idbuf, "b%" PRIu64 "-%08x", t->next_batch++, (unsigned)(zclock_usecs() & 0xffffffff));
        } while (zhashx_lookup(t->batches, idbuf));
        id = idbuf;
    } else if (strlen(id) > 200) {
        kvf_err_set(err, KVF_E_INVAL, "batch_id is longer than 200 bytes");
        return NULL;
    } else if (zhashx_lookup(t->batches, id)) {
        kvf_err_set(err, KVF_E_INVAL, "batch_id %s is in use (ATTACH to it, or pick another id)", id);
        return NULL;
    }
    if (ident_len > sizeof(((kvf_batch_t *)0)->client)) {
        kvf_err_set(err, KVF_E_INVAL, "client identity of %zu bytes", ident_len);
        return NULL;
    }
    kvf_batch_t *b = kvf_xcalloc(1, sizeof *b);
    b->id = kvf_xstrdup(id);
    memcpy(b->client, ident, ident_len);
    b->client_len = ident_len;
    b->client_ok = 1;
    b->reqs = kvf_xcalloc(n ? n : 1, sizeof *b->reqs);
    b->n = n;
    zhashx_insert(t->batches, b->id, b);
    return b;
}

static kvf_req_t *s_add_at(kvf_reqtable_t *t, kvf_batch_t *b, uint64_t rid, uint32_t idx, const char *tag,
                           int32_t **prompt_p, uint32_t n_prompt, const kvf_sampling_t *sampling) {
    kvf_assert(idx < b->n && !b->reqs[idx]);
    kvf_req_t *r = kvf_xcalloc(1, sizeof *r);
    r->rid = rid;
    r->state = KVF_REQ_NEW;
    r->batch = b;
    r->index = idx;
    r->tag = kvf_xstrdup(tag ? tag : "");
    r->prompt = *prompt_p;
    *prompt_p = NULL;
    r->n_prompt = n_prompt;
    r->sampling = *sampling;
    r->worker = -1;
    r->text = kvf_xcalloc(1, 1);
    r->text_cap = 1;
    b->reqs[idx] = r;
    zhashx_insert(t->by_rid, &r->rid, r);
    return r;
}

kvf_req_t *kvf_reqtable_add(kvf_reqtable_t *t, kvf_batch_t *b, const char *tag, int32_t **prompt_p,
                            uint32_t n_prompt, const kvf_sampling_t *sampling) {
    uint32_t idx = 0;
    while (idx < b->n && b->reqs[idx]) idx++;
    return s_add_at(t, b, t->next_rid++, idx, tag, prompt_p, n_prompt, sampling);
}

kvf_req_t *kvf_reqtable_restore(kvf_reqtable_t *t, kvf_batch_t *b, uint64_t rid, uint32_t idx, const char *tag,
                                int32_t **prompt_p, uint32_t n_prompt, const kvf_sampling_t *sampling) {
    kvf_assert(rid != 0 && !kvf_reqtable_get(t, rid));
    if (rid >= t->next_rid) t->next_rid = rid + 1;
    return s_add_at(t, b, rid, idx, tag, prompt_p, n_prompt, sampling);
}

kvf_req_t *kvf_reqtable_get(const kvf_reqtable_t *t, uint64_t rid) { return zhashx_lookup(t->by_rid, &rid); }

kvf_batch_t *kvf_reqtable_batch(const kvf_reqtable_t *t, const char *id) {
    return id ? zhashx_lookup(t->batches, id) : NULL;
}

size_t kvf_reqtable_size(const kvf_reqtable_t *t) { return zhashx_size(t->by_rid); }

void kvf_req_append(kvf_req_t *req, const int32_t *ids, uint32_t n, const char *text, size_t text_len) {
    if (n) {
        if (req->n_out + n > req->cap_out) {
            uint32_t c = req->cap_out ? req->cap_out : 16;
            while (c < req->n_out + n) c *= 2;
            req->out = kvf_xrealloc(req->out, (size_t)c * sizeof *req->out);
            req->cap_out = c;
        }
        memcpy(req->out + req->n_out, ids, (size_t)n * sizeof *ids);
        req->n_out += n;
    }
    if (text_len) {
        if (req->text_len + text_len + 1 > req->text_cap) {
            size_t c = req->text_cap;
            while (c < req->text_len + text_len + 1) c *= 2;
            req->text = kvf_xrealloc(req->text, c);
            req->text_cap = c;
        }
        memcpy(req->text + req->text_len, text, text_len);
        req->text_len += text_len;
        req->text[req->text_len] = 0;
    }
}

void kvf_req_set_error(kvf_req_t *req, uint32_t code, const char *msg) {
    free(req->error);
    req->error = kvf_xstrdup(msg ? msg : "");
    req->error_code = code;
}

// ---- batch retention

static void s_unretain(kvf_reqtable_t *t, kvf_batch_t *b) {
    for (uint32_t i = 0; i < t->n_retained; i++) {
        if (t->retained[i] != b) continue;
        memmove(t->retained + i, t->retained + i + 1, (t->n_retained - i - 1) * sizeof *t->retained);
        t->n_retained--;
        b->retained = 0;
        return;
    }
}

static void s_release(kvf_reqtable_t *t, kvf_batch_t *b) {
    if (t->on_release) t->on_release(t->on_release_ctx, b);
    if (b->retained) s_unretain(t, b);
    zhashx_delete(t->batches, b->id);  // no item destructor: freed below
    s_batch_free(t, b);
}

int kvf_reqtable_settle(kvf_reqtable_t *t, kvf_batch_t *b) {
    if (b->n_finished < b->n) return 0;
    if (b->client_ok) {
        s_release(t, b);
        return 1;
    }
    if (b->retained) return 0;
    if (t->max_retained == 0) {
        s_release(t, b);
        return 1;
    }
    if (t->n_retained == t->max_retained) {
        // The oldest one that nobody is about to settle (a pending one is still referenced).
        uint32_t i = 0;
        while (i < t->n_retained && t->retained[i]->settle_pending) i++;
        if (i == t->n_retained) {
            s_release(t, b);  // every slot is in use right now: the newest loses
            return 1;
        }
        kvf_batch_t *old = t->retained[i];
        kvf_log(KVF_LOG_WARN, "batch %s: results dropped (more than %u finished batches wait for ATTACH)", old->id,
                t->max_retained);
        s_release(t, old);
    }
    t->retained[t->n_retained++] = b;
    b->retained = 1;
    return 0;
}
