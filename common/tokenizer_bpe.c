// common/tokenizer_bpe.c — the BPE model: one pre-token to ids, as HF tokenizers'
// BPE::merge_word + Word::merge_all (merge priority = rank, ties to the leftmost).
//
// Symbols form a doubly linked list over an array; candidate merges sit in a
// binary min-heap keyed (rank, position). Stale heap entries are detected as HF
// does (the pair now at that position no longer yields the same merged id), so
// the result is identical and a word of n characters costs O(n log n).
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tokenizer_int.h"

typedef struct {
    int32_t id;
    int32_t prev, next;  // -1: none
    uint32_t len;        // bytes covered; 0: merged away
} s_sym_t;

typedef struct {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} s_merge_t;

static int s_less(const s_merge_t *a, const s_merge_t *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void s_heap_push(s_merge_t *h, size_t *n, s_merge_t m) {
    size_t i = (*n)++;
    h[i] = m;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!s_less(&h[i], &h[p])) break;
        s_merge_t t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static s_merge_t s_heap_pop(s_merge_t *h, size_t *n) {
    s_merge_t top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && s_less(&h[l], &h[m])) m = l;
        if (r < *n && s_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        s_merge_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

static void s_push_sym(s_sym_t **syms, size_t *n, size_t *cap, int32_t id, uint32_t len) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *syms = kvf_xrealloc(*syms, *cap * sizeof **syms);
    }
    (*syms)[*n] = (s_sym_t){.id = id, .prev = (int32_t)*n - 1, .next = (int32_t)*n + 1, .len = len};
    (*n)++;
}

static void s_push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *ids = kvf_xrealloc(*ids, *cap * sizeof **ids);
    }
    (*ids)[(*n)++] = id;
}

// The initial symbols: one per character (with prefix/suffix), byte fallback, unk.
static int s_initial(const kvf_tok_bpe_t *m, const char *w, size_t len, s_sym_t **syms, size_t *n,
                     size_t *cap, kvf_err_t *err) {
    kvf_tok_buf_t tmp = {0};
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = kvf_tok_utf8_next(w + i, len - i, NULL);
        int first = i == 0, last = i + cl == len;
        const char *s = w + i;
        size_t sl = cl;
        if ((!first && m->prefix) || (last && m->suffix)) {
            tmp.n = 0;
            if (!first && m->prefix) kvf_tok_buf_put(&tmp, m->prefix, m->prefix_len);
            kvf_tok_buf_put(&tmp, w + i, cl);
            if (last && m->suffix) kvf_tok_buf_put(&tmp, m->suffix, m->suffix_len);
            s = tmp.p;
            sl = tmp.n;
        }
        i += cl;
        int32_t id = kvf_tok_strmap_get(&m->vocab, s, sl);
        if (id >= 0) {
            if (unk_id >= 0) {
                s_push_sym(syms, n, cap, unk_id, unk_len);
                unk_id = -1;
            }
            s_push_sym(syms, n, cap, id, (uint32_t)cl);
            continue;
        }
        if (m->byte_fallback) {
            size_t k = 0;
            while (k < sl && m->byte_ids[(uint8_t)s[k]] >= 0) k++;
            if (k == sl) {
                // HF adds these without flushing a pending unk first; keep that order.
                for (k = 0; k < sl; k++) s_push_sym(syms, n, cap, m->byte_ids[(uint8_t)s[k]], 1);
                continue;
            }
        }
        if (m->unk_id >= 0 || m->unk_id == -2) {
            if (m->unk_id == -2) {
                kvf_tok_buf_free(&tmp);
                return kvf_err_set(err, KVF_E_FORMAT, "tokenizer: unk_token is not in the vocabulary");
            }
            if (unk_id >= 0 && m->fuse_unk) {
                unk_len += (uint32_t)cl;
            } else {
                if (unk_id >= 0) s_push_sym(syms, n, cap, unk_id, unk_len);
                unk_id = m->unk_id;
                unk_len = (uint32_t)cl;
            }
        }
        // no unk token: the character is dropped, as HF does
    }
    if (unk_id >= 0) s_push_sym(syms, n, cap, unk_id, unk_len);
    kvf_tok_buf_free(&tmp);
    return 0;
}

int kvf_tok_bpe_word(const kvf_tok_bpe_t *m, const char *w, size_t len, int32_t **ids, size_t *n,
                     size_t *cap, kvf_err_t *err) {
    if (len == 0) return 0;
    if (m->ignore_merges) {
        int32_t id = kvf_tok_strmap_get(&m->vocab, w, len);
        if (id >= 0) {
            s_push_id(ids, n, cap, id);
            return 0;
        }
    }
    s_sym_t *syms = NULL;
    size_t ns = 0, scap = 0;
    if (s_initial(m, w, len, &syms, &ns, &scap, err) != 0) {
        free(syms);
        return -1;
    }
    if (ns == 0) return 0;
    syms[ns - 1].next = -1;

    s_merge_t *heap = kvf_xmalloc(ns * 2 * sizeof *heap + sizeof *heap);
    size_t hn = 0, hcap = ns * 2 + 1;
    for (size_t i = 0; i + 1 < ns; i++) {
        const kvf_tok_pent_t *e = kvf_tok_pairmap_get(&m->merges, syms[i].id, syms[i + 1].id);
        if (e) s_heap_push(heap, &hn, (s_merge_t){e->rank, (uint32_t)i, e->new_id});
    }
    while (hn > 0) {
        s_merge_t top = s_heap_pop(heap, &hn);
        s_sym_t *cur = &syms[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        s_sym_t right = syms[cur->next];
        const kvf_tok_pent_t *e = kvf_tok_pairmap_get(&m->merges, cur->id, right.id);
        if (!e || e->new_id != top.new_id) continue;  // stale entry

        int32_t rpos = cur->next;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        syms[rpos].len = 0;
        if (right.next >= 0) syms[right.next].prev = (int32_t)top.pos;

        // each merge adds at most two entries: the heap never outgrows 2n + n merges
        if (hn + 2 > hcap) {
            hcap *= 2;
            heap = kvf_xrealloc(heap, hcap * sizeof *heap);
        }
        if (cur->prev >= 0) {
            e = kvf_tok_pairmap_get(&m->merges, syms[cur->prev].id, cur->id);
            if (e) s_heap_push(heap, &hn, (s_merge_t){e->rank, (uint32_t)cur->prev, e->new_id});
        }
        if (cur->next >= 0) {
            e = kvf_tok_pairmap_get(&m->merges, cur->id, syms[cur->next].id);
            if (e) s_heap_push(heap, &hn, (s_merge_t){e->rank, top.pos, e->new_id});
        }
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) s_push_id(ids, n, cap, syms[i].id);
    free(heap);
    free(syms);
    return 0;
}
