// coordinator/registry.c — see registry.h.
#include "coordinator/registry.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

// ---- lifetime

kvf_registry_t *kvf_registry_new(void) { return kvf_xcalloc(1, sizeof(kvf_registry_t)); }

static void s_worker_free(kvf_cworker_t *w) {
    if (!w) return;
    free(w->worker_id);
    free(w->group_id);
    free(w->backend);
    free(w->model);
    free(w->unseen);
    free(w);
}

void kvf_registry_destroy(kvf_registry_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_registry_t *reg = *self_p;
    for (uint32_t i = 0; i < reg->n; i++) s_worker_free(reg->w[i]);
    free(reg->w);
    free(reg);
    *self_p = NULL;
}

// ---- lookup

int kvf_registry_find(const kvf_registry_t *reg, const char *worker_id) {
    if (!worker_id) return -1;
    for (uint32_t i = 0; i < reg->n; i++)
        if (strcmp(reg->w[i]->worker_id, worker_id) == 0) return (int)i;
    return -1;
}

int kvf_registry_find_ident(const kvf_registry_t *reg, const void *ident, size_t len) {
    for (uint32_t i = 0; i < reg->n; i++) {
        const kvf_cworker_t *w = reg->w[i];
        if (w->ident_len == len && memcmp(w->ident, ident, len) == 0) return (int)i;
    }
    return -1;
}

// ---- registration

int kvf_registry_check(const kvf_msg_register_t *r, kvf_err_t *err) {
    if (!r->worker_id.ptr || r->worker_id.len == 0)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER: worker_id is empty");
    if (r->worker_id.len > 200 || strlen(r->worker_id.ptr) != r->worker_id.len)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER: worker_id is longer than 200 bytes or holds NUL");
    if (r->group_id.len > 200 || r->backend.len > 64 || r->model.len > 4096)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER: group_id, backend or model too long");
    if (r->tp_size == 0 || r->tp_rank >= r->tp_size)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER %s: tp_rank %u not below tp_size %u",
                           r->worker_id.ptr, r->tp_rank, r->tp_size);
    if (r->plan.block_size == 0)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER %s: plan.block_size is 0", r->worker_id.ptr);
    if (r->total_blocks == 0)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER %s: total_blocks is 0", r->worker_id.ptr);
    if (r->free_blocks > r->total_blocks)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER %s: free_blocks %u > total_blocks %u",
                           r->worker_id.ptr, r->free_blocks, r->total_blocks);
    return 0;
}

static char *s_dup(const kvf_str_t *s) {
    return kvf_xstrdup(s->ptr ? s->ptr : "");
}

int kvf_registry_upsert(kvf_registry_t *reg, const kvf_msg_register_t *r, const void *ident,
                        size_t ident_len, uint64_t now_ms, kvf_err_t *err) {
    if (kvf_registry_check(r, err) < 0) return -1;
    if (ident_len == 0 || ident_len > KVF_REGISTRY_MAX_IDENT)
        return kvf_err_set(err, KVF_E_INVAL, "REGISTER %s: routing identity of %zu bytes", r->worker_id.ptr,
                           ident_len);
    int idx = kvf_registry_find(reg, r->worker_id.ptr);
    kvf_cworker_t *w;
    if (idx < 0) {
        if (reg->n >= KVF_REGISTRY_MAX_WORKERS)
            return kvf_err_set(err, KVF_E_BUSY, "REGISTER %s: registry full (%d workers)", r->worker_id.ptr,
                               KVF_REGISTRY_MAX_WORKERS);
        if (reg->n == reg->cap) {
            reg->cap = reg->cap ? reg->cap * 2 : 8;
            reg->w = kvf_xrealloc(reg->w, reg->cap * sizeof *reg->w);
        }
        w = kvf_xcalloc(1, sizeof *w);
        w->worker_id = s_dup(&r->worker_id);
        idx = (int)reg->n;
        reg->w[reg->n++] = w;
    } else {
        w = reg->w[idx];
        free(w->group_id);
        free(w->backend);
        free(w->model);
    }
    w->group_id = s_dup(r->group_id.len ? &r->group_id : &r->worker_id);
    w->backend = s_dup(&r->backend);
    w->model = s_dup(&r->model);
    memcpy(w->ident, ident, ident_len);
    w->ident_len = ident_len;
    w->device = r->device;
    w->tp_rank = r->tp_rank;
    w->tp_size = r->tp_size;
    w->block_size = r->plan.block_size;
    w->total_blocks = r->total_blocks;
    w->vocab_size = r->vocab_size;
    w->session_len = r->session_len;
    w->max_batch_size = r->max_batch_size;
    w->prefix_caching = r->prefix_caching;
    w->plan = r->plan;
    memset(&w->load, 0, sizeof w->load);
    w->load.state = KVF_WSTATE_READY;
    w->load.free_blocks = r->free_blocks;
    w->load.total_blocks = r->total_blocks;
    w->state = KVF_WSTATE_READY;
    w->generation++;
    kvf_registry_clear_ledger(w);
    w->reported_free = r->free_blocks;
    w->last_seen_ms = now_ms;
    return idx;
}

// ---- ledger

uint64_t kvf_registry_note_assign(kvf_cworker_t *w, uint64_t rid, uint32_t need) {
    if (w->n_unseen == w->cap_unseen) {
        w->cap_unseen = w->cap_unseen ? w->cap_unseen * 2 : 16;
        w->unseen = kvf_xrealloc(w->unseen, w->cap_unseen * sizeof *w->unseen);
    }
    uint64_t seq = ++w->next_seq;
    w->unseen[w->n_unseen++] = (kvf_unseen_t){.seq = seq, .rid = rid, .need = need};
    w->promised += need;
    w->ledger += need;
    w->outstanding++;
    return seq;
}

void kvf_registry_note_report(kvf_cworker_t *w, uint32_t free_blocks, uint64_t seen_rid) {
    w->reported_free = free_blocks;
    w->load.free_blocks = free_blocks;
    if (seen_rid) {
        uint32_t k = 0;
        while (k < w->n_unseen && w->unseen[k].rid != seen_rid) k++;
        if (k < w->n_unseen) {
            // The FIFO is in seq order: the worker got everything up to k.
            uint32_t drop = k + 1;
            memmove(w->unseen, w->unseen + drop, (w->n_unseen - drop) * sizeof *w->unseen);
            w->n_unseen -= drop;
        }
    }
    uint64_t p = 0;
    for (uint32_t i = 0; i < w->n_unseen; i++) p += w->unseen[i].need;
    w->promised = p > UINT32_MAX ? UINT32_MAX : (uint32_t)p;
}

void kvf_registry_note_release(kvf_cworker_t *w, uint32_t need) {
    kvf_assert(w->ledger >= need && w->outstanding > 0);
    w->ledger -= need;
    w->outstanding--;
}

void kvf_registry_clear_ledger(kvf_cworker_t *w) {
    w->ledger = 0;
    w->outstanding = 0;
    w->promised = 0;
    w->n_unseen = 0;
}

uint32_t kvf_registry_avail(const kvf_cworker_t *w) {
    return w->reported_free > w->promised ? w->reported_free - w->promised : 0;
}

int kvf_registry_placeable(const kvf_cworker_t *w) {
    return w->state == KVF_WSTATE_READY && w->tp_rank == 0 && w->block_size > 0 && w->total_blocks > 0;
}
