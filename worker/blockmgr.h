// worker/blockmgr.h — the KV block manager: fixed-size blocks, a free list,
// reference counts and a prefix cache.
//
// Blocks are numbered 0..n_blocks-1 (the rows of the backend's KV slab). A
// block is in one of three states:
//   free       refcount 0, holds nothing anyone can reuse (on the free list)
//   used       refcount >= 1, owned by one or more sequences
//   cached     refcount 0 but keyed in the prefix cache: reusable by a hit until
//              it is evicted (least recently freed first) to satisfy an alloc
// "Free count" is free + cached: everything an alloc can hand out.
//
// Prefix cache: a FULL block is keyed by a 64-bit hash chained over its parent
// block's hash and its own block_size tokens (kvf_blockmgr_hash). The parent
// hash and a second, independent 64-bit hash of the content are stored with the
// key and compared on lookup, so handing out the wrong KV would take a 128-bit
// collision (and memory stays 24 bytes per block, whatever the block size).
#ifndef KVF_BLOCKMGR_H
#define KVF_BLOCKMGR_H

#include <stdint.h>

#include "common/error.h"

// The parent hash of a sequence's first block.
#define KVF_BLOCKMGR_ROOT_HASH 0x6b7666726f6f7421ull

typedef struct kvf_blockmgr_s kvf_blockmgr_t;

typedef struct {
    int32_t n_blocks;       // total
    int32_t n_free;         // free + cached (what alloc can hand out)
    int32_t n_cached;       // of n_free: keyed and reusable by a hit
    uint64_t prefix_hits;   // full prompt blocks found in the cache
    uint64_t prefix_misses; // full prompt blocks looked up and not found
    uint64_t evictions;     // cached blocks reused for other content
} kvf_blockmgr_stats_t;

// A manager of n_blocks blocks of block_size tokens; prefix_caching 0 turns the
// cache off (commits are ignored, lookups miss). Returns a new manager owned by
// the caller, or NULL when n_blocks < 1 or block_size < 1.
kvf_blockmgr_t *kvf_blockmgr_new(int32_t n_blocks, int32_t block_size, int prefix_caching);

// Frees the manager; accepts NULL; nulls *self_p.
void kvf_blockmgr_destroy(kvf_blockmgr_t **self_p);

int32_t kvf_blockmgr_block_size(const kvf_blockmgr_t *bm);
int32_t kvf_blockmgr_total(const kvf_blockmgr_t *bm);

// Free + cached blocks: how many kvf_blockmgr_alloc calls would succeed now.
int32_t kvf_blockmgr_free_count(const kvf_blockmgr_t *bm);

// Takes a block (refcount 1): an uncached free block if there is one, else the
// least recently freed cached block, whose key is dropped. Returns its id, or
// -1 with err set to KVF_E_NOMEM_BLOCKS when every block is in use.
int32_t kvf_blockmgr_alloc(kvf_blockmgr_t *bm, kvf_err_t *err);

// Adds a reference to a used block. Returns 0, or -1 (KVF_E_INVAL) for an id
// out of range or a block that is not in use.
int kvf_blockmgr_incref(kvf_blockmgr_t *bm, int32_t id, kvf_err_t *err);

// Drops a reference. At 0 a keyed block becomes cached (most recently freed),
// any other block goes back to the free list. Returns 0, or -1 (KVF_E_INVAL)
// for an id out of range or a block that is not in use.
int kvf_blockmgr_free(kvf_blockmgr_t *bm, int32_t id, kvf_err_t *err);

// The current reference count of a block (0 for free or cached; -1 out of range).
int32_t kvf_blockmgr_refcount(const kvf_blockmgr_t *bm, int32_t id);

// The chained key of a full block: parent (KVF_BLOCKMGR_ROOT_HASH for the
// first block) and its block_size tokens.
uint64_t kvf_blockmgr_hash(uint64_t parent, const int32_t *tokens, int32_t block_size);

// Looks up the full blocks of tokens[0..n_tokens) in order and stops at the
// first miss. At most max_blocks are matched. With take != 0 each hit gains a
// reference (a cached block becomes used) and the lookup is counted: hits, and
// the full blocks after the first miss as misses. With take == 0 nothing
// changes (a dry run for admission checks). Writes the blocks' ids and keys to
// blocks_out/hashes_out (either may be NULL), and, when n_cached_out is not
// NULL, how many of the hits are cached blocks (they leave the free count when
// taken). Returns the number of hits.
int32_t kvf_blockmgr_match_prefix(kvf_blockmgr_t *bm, const int32_t *tokens, int32_t n_tokens,
                                  int32_t max_blocks, int take, int32_t *blocks_out,
                                  uint64_t *hashes_out, int32_t *n_cached_out);

// Keys a used, full block with its content (parent hash + block_size tokens)
// so later sequences can share it. Writes the key to *hash_out. When the key is
// already held by another block (two sequences computed the same prefix), this
// block stays unkeyed. No-op when caching is off or the block is already keyed.
// Returns 0, or -1 (KVF_E_INVAL) for a block that is not in use.
int kvf_blockmgr_commit_full_block(kvf_blockmgr_t *bm, int32_t id, uint64_t parent,
                                   const int32_t *tokens, uint64_t *hash_out, kvf_err_t *err);

// Counters and occupancy.
void kvf_blockmgr_stats(const kvf_blockmgr_t *bm, kvf_blockmgr_stats_t *out);

#endif
