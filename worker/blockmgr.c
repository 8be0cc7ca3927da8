// worker/blockmgr.c — see blockmgr.h.
//
// Storage is a handful of arrays indexed by block id: reference counts, a stack
// of uncached free blocks, an intrusive doubly linked LRU list of cached blocks
// (head = least recently freed = next to evict), and the prefix-cache keys in a
// chained hash table (bucket heads + a next link per block).
#include "blockmgr.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

struct kvf_blockmgr_s {
    int32_t n_blocks;
    int32_t block_size;
    int prefix_caching;

    int32_t *refcnt;        // (n_blocks)
    int32_t *free_stack;    // (n_blocks) uncached free blocks; top at n_free_stack-1
    int32_t n_free_stack;

    int32_t *lru_prev;      // (n_blocks) -1 at the ends
    int32_t *lru_next;      // (n_blocks)
    int32_t lru_head, lru_tail;
    int32_t n_cached;

    uint8_t *keyed;         // (n_blocks) 1 when the block is in the hash table
    uint64_t *key_hash;     // (n_blocks)
    uint64_t *key_parent;   // (n_blocks)
    uint64_t *key_check;    // (n_blocks) a second, independent hash of the same content
    int32_t *bucket;        // (n_buckets) first block of the chain, -1 empty
    int32_t *chain_next;    // (n_blocks)
    uint32_t n_buckets;     // power of two

    uint64_t hits, misses, evictions;
};

// ---------------------------------------------------------------- helpers

static uint64_t s_mix(uint64_t x) {
    // splitmix64 finalizer
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int s_valid_used(const kvf_blockmgr_t *bm, int32_t id, const char *what, kvf_err_t *err) {
    if (id < 0 || id >= bm->n_blocks)
        return kvf_err_set(err, KVF_E_INVAL, "%s: block %d out of range [0, %d)", what, id, bm->n_blocks);
    if (bm->refcnt[id] <= 0)
        return kvf_err_set(err, KVF_E_INVAL, "%s: block %d is not in use", what, id);
    return 0;
}

static void s_lru_remove(kvf_blockmgr_t *bm, int32_t id) {
    int32_t p = bm->lru_prev[id], n = bm->lru_next[id];
    if (p >= 0) bm->lru_next[p] = n; else bm->lru_head = n;
    if (n >= 0) bm->lru_prev[n] = p; else bm->lru_tail = p;
    bm->lru_prev[id] = bm->lru_next[id] = -1;
    bm->n_cached--;
}

static void s_lru_push_tail(kvf_blockmgr_t *bm, int32_t id) {
    bm->lru_prev[id] = bm->lru_tail;
    bm->lru_next[id] = -1;
    if (bm->lru_tail >= 0) bm->lru_next[bm->lru_tail] = id; else bm->lru_head = id;
    bm->lru_tail = id;
    bm->n_cached++;
}

static uint32_t s_bucket_of(const kvf_blockmgr_t *bm, uint64_t hash) {
    return (uint32_t)(hash & (bm->n_buckets - 1));
}

// A second hash of the same content with other constants: a block matches only
// when both agree (a false hit would need a 128-bit collision).
static uint64_t s_check_hash(uint64_t parent, const int32_t *tokens, int32_t block_size) {
    uint64_t h = parent * 0xff51afd7ed558ccdull + 0xc4ceb9fe1a85ec53ull;
    for (int32_t i = 0; i < block_size; i++) {
        h ^= (uint64_t)(uint32_t)tokens[i] + 0x632be59bd9b4e019ull + (h << 6) + (h >> 2);
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

// The block keyed by (hash, parent, check), or -1.
static int32_t s_lookup(const kvf_blockmgr_t *bm, uint64_t hash, uint64_t parent, uint64_t check) {
    for (int32_t b = bm->bucket[s_bucket_of(bm, hash)]; b >= 0; b = bm->chain_next[b])
        if (bm->key_hash[b] == hash && bm->key_parent[b] == parent && bm->key_check[b] == check) return b;
    return -1;
}

static void s_unkey(kvf_blockmgr_t *bm, int32_t id) {
    if (!bm->keyed[id]) return;
    int32_t *link = &bm->bucket[s_bucket_of(bm, bm->key_hash[id])];
    while (*link != id) {
        kvf_assert(*link >= 0);
        link = &bm->chain_next[*link];
    }
    *link = bm->chain_next[id];
    bm->chain_next[id] = -1;
    bm->keyed[id] = 0;
}

// ---------------------------------------------------------------- lifecycle

kvf_blockmgr_t *kvf_blockmgr_new(int32_t n_blocks, int32_t block_size, int prefix_caching) {
    if (n_blocks < 1 || block_size < 1) return NULL;
    kvf_blockmgr_t *bm = kvf_xcalloc(1, sizeof *bm);
    bm->n_blocks = n_blocks;
    bm->block_size = block_size;
    bm->prefix_caching = prefix_caching != 0;
    size_t n = (size_t)n_blocks;
    bm->refcnt = kvf_xcalloc(n, sizeof(int32_t));
    bm->free_stack = kvf_xmalloc(n * sizeof(int32_t));
    bm->lru_prev = kvf_xmalloc(n * sizeof(int32_t));
    bm->lru_next = kvf_xmalloc(n * sizeof(int32_t));
    bm->keyed = kvf_xcalloc(n, 1);
    bm->chain_next = kvf_xmalloc(n * sizeof(int32_t));
    // Lowest ids on top of the stack, so allocation order is 0, 1, 2... on a fresh manager.
    for (int32_t i = 0; i < n_blocks; i++) {
        bm->free_stack[i] = n_blocks - 1 - i;
        bm->lru_prev[i] = bm->lru_next[i] = -1;
        bm->chain_next[i] = -1;
    }
    bm->n_free_stack = n_blocks;
    bm->lru_head = bm->lru_tail = -1;
    if (bm->prefix_caching) {
        bm->key_hash = kvf_xcalloc(n, sizeof(uint64_t));
        bm->key_parent = kvf_xcalloc(n, sizeof(uint64_t));
        bm->key_check = kvf_xcalloc(n, sizeof(uint64_t));
        bm->n_buckets = 16;
        while (bm->n_buckets < 2 * n) bm->n_buckets <<= 1;
        bm->bucket = kvf_xmalloc(bm->n_buckets * sizeof(int32_t));
        for (uint32_t i = 0; i < bm->n_buckets; i++) bm->bucket[i] = -1;
    }
    return bm;
}

void kvf_blockmgr_destroy(kvf_blockmgr_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_blockmgr_t *bm = *self_p;
    free(bm->refcnt);
    free(bm->free_stack);
    free(bm->lru_prev);
    free(bm->lru_next);
    free(bm->keyed);
    free(bm->chain_next);
    free(bm->key_hash);
    free(bm->key_parent);
    free(bm->key_check);
    free(bm->bucket);
    free(bm);
    *self_p = NULL;
}

// ---------------------------------------------------------------- blocks

int32_t kvf_blockmgr_block_size(const kvf_blockmgr_t *bm) { return bm->block_size; }
int32_t kvf_blockmgr_total(const kvf_blockmgr_t *bm) { return bm->n_blocks; }

int32_t kvf_blockmgr_free_count(const kvf_blockmgr_t *bm) { return bm->n_free_stack + bm->n_cached; }

int32_t kvf_blockmgr_alloc(kvf_blockmgr_t *bm, kvf_err_t *err) {
    int32_t id;
    if (bm->n_free_stack > 0) {
        id = bm->free_stack[--bm->n_free_stack];
    } else if (bm->lru_head >= 0) {
        id = bm->lru_head;
        s_lru_remove(bm, id);
        s_unkey(bm, id);
        bm->evictions++;
    } else {
        kvf_err_set(err, KVF_E_NOMEM_BLOCKS, "all %d KV blocks are in use", bm->n_blocks);
        return -1;
    }
    kvf_assert(bm->refcnt[id] == 0);
    bm->refcnt[id] = 1;
    return id;
}

int kvf_blockmgr_incref(kvf_blockmgr_t *bm, int32_t id, kvf_err_t *err) {
    if (s_valid_used(bm, id, "incref", err)) return -1;
    bm->refcnt[id]++;
    return 0;
}

int kvf_blockmgr_free(kvf_blockmgr_t *bm, int32_t id, kvf_err_t *err) {
    if (s_valid_used(bm, id, "free", err)) return -1;
    if (--bm->refcnt[id] > 0) return 0;
    if (bm->keyed[id])
        s_lru_push_tail(bm, id);
    else
        bm->free_stack[bm->n_free_stack++] = id;
    return 0;
}

int32_t kvf_blockmgr_refcount(const kvf_blockmgr_t *bm, int32_t id) {
    if (id < 0 || id >= bm->n_blocks) return -1;
    return bm->refcnt[id];
}

// ---------------------------------------------------------------- prefix cache

uint64_t kvf_blockmgr_hash(uint64_t parent, const int32_t *tokens, int32_t block_size) {
    uint64_t h = s_mix(parent ^ ((uint64_t)(uint32_t)block_size << 32));
    for (int32_t i = 0; i < block_size; i++) h = s_mix(h ^ (uint64_t)(uint32_t)tokens[i]);
    return h;
}

int32_t kvf_blockmgr_match_prefix(kvf_blockmgr_t *bm, const int32_t *tokens, int32_t n_tokens,
                                  int32_t max_blocks, int take, int32_t *blocks_out,
                                  uint64_t *hashes_out, int32_t *n_cached_out) {
    int32_t n_full = n_tokens > 0 ? n_tokens / bm->block_size : 0;
    if (n_full > max_blocks) n_full = max_blocks;
    int32_t hits = 0, cached = 0;
    if (bm->prefix_caching) {
        uint64_t parent = KVF_BLOCKMGR_ROOT_HASH;
        for (int32_t i = 0; i < n_full; i++) {
            const int32_t *blk = tokens + (size_t)i * bm->block_size;
            uint64_t h = kvf_blockmgr_hash(parent, blk, bm->block_size);
            int32_t id = s_lookup(bm, h, parent, s_check_hash(parent, blk, bm->block_size));
            if (id < 0) break;
            if (bm->refcnt[id] == 0) {
                cached++;
                if (take) s_lru_remove(bm, id);
            }
            if (take) bm->refcnt[id]++;
            if (blocks_out) blocks_out[i] = id;
            if (hashes_out) hashes_out[i] = h;
            parent = h;
            hits++;
        }
    }
    if (take) {
        bm->hits += (uint64_t)hits;
        bm->misses += (uint64_t)(n_full - hits);
    }
    if (n_cached_out) *n_cached_out = cached;
    return hits;
}

int kvf_blockmgr_commit_full_block(kvf_blockmgr_t *bm, int32_t id, uint64_t parent,
                                   const int32_t *tokens, uint64_t *hash_out, kvf_err_t *err) {
    if (s_valid_used(bm, id, "commit", err)) return -1;
    uint64_t h = kvf_blockmgr_hash(parent, tokens, bm->block_size);
    if (hash_out) *hash_out = h;
    if (!bm->prefix_caching || bm->keyed[id]) return 0;
    uint64_t check = s_check_hash(parent, tokens, bm->block_size);
    if (s_lookup(bm, h, parent, check) >= 0) return 0;
    bm->keyed[id] = 1;
    bm->key_hash[id] = h;
    bm->key_parent[id] = parent;
    bm->key_check[id] = check;
    uint32_t b = s_bucket_of(bm, h);
    bm->chain_next[id] = bm->bucket[b];
    bm->bucket[b] = id;
    return 0;
}

void kvf_blockmgr_stats(const kvf_blockmgr_t *bm, kvf_blockmgr_stats_t *out) {
    out->n_blocks = bm->n_blocks;
    out->n_free = kvf_blockmgr_free_count(bm);
    out->n_cached = bm->n_cached;
    out->prefix_hits = bm->hits;
    out->prefix_misses = bm->misses;
    out->evictions = bm->evictions;
}
