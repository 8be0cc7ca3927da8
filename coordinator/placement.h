// coordinator/placement.h — where a request may go, as pure functions over the
// registry (the point of kvfleet: work only goes where its KV blocks fit).
//
// need = ceil((prompt_tokens + max_new_tokens) / block_size) on that worker.
// A worker fits when it is placeable (READY leader) and BOTH
//   avail (reported free − promised since the report) ≥ need + watermark, and
//   ledger (need of everything outstanding there) + need ≤ total − watermark,
// and, when the worker reported a session_len, prompt + max_new ≤ session_len.
// Among fitting workers: prefix-cache affinity first (the worker with a prefix
// cache that last served the same first-block hash), then the most available blocks, then the fewest
// outstanding requests, then the lowest index.
#ifndef KVF_COORD_PLACEMENT_H
#define KVF_COORD_PLACEMENT_H

#include <stdint.h>

#include "coordinator/registry.h"

typedef enum {
    KVF_PLACE_OK = 0,       // out->worker is where it goes
    KVF_PLACE_WAIT = 1,     // nothing fits now (or no worker yet): queue it
    KVF_PLACE_TOO_LONG = 2, // no placeable worker could ever hold it
} kvf_place_verdict;

typedef struct {
    int worker;            // registry index (OK only)
    uint32_t need;         // blocks there
    uint64_t prefix_hash;  // first-block hash with that worker's block size (0: prompt shorter than a block)
} kvf_place_t;

// Remembers, per first-block hash, the worker that last served it. Direct
// mapped and bounded: a newer hash may evict an older one (affinity is a hint).
#define KVF_AFFINITY_SLOTS 8192
typedef struct {
    struct {
        uint64_t hash;
        int32_t worker;
        uint32_t generation;  // worker's registration it refers to
    } slot[KVF_AFFINITY_SLOTS];
} kvf_affinity_t;

// Blocks of block_size tokens that hold `tokens` tokens (rounded up; saturates
// at UINT32_MAX). block_size must be > 0.
uint32_t kvf_place_need(uint64_t tokens, uint32_t block_size);

// 64-bit FNV-1a of the first block_size ids (never 0); 0 when n < block_size.
uint64_t kvf_place_prefix_hash(const int32_t *ids, uint32_t n, uint32_t block_size);

// 1 when a request of `tokens` tokens (prompt + max_new) needing `need` blocks
// fits on w now (both halves of the rule above).
int kvf_place_fits(const kvf_cworker_t *w, uint64_t tokens, uint32_t need, uint32_t watermark);

// 1 when w could hold such a request once it is idle (need + watermark ≤ total,
// tokens ≤ session_len when reported).
int kvf_place_could_ever_fit(const kvf_cworker_t *w, uint64_t tokens, uint32_t need, uint32_t watermark);

// An empty affinity table (all slots free).
void kvf_affinity_init(kvf_affinity_t *aff);

// Records that worker idx (of this registration generation) served hash.
void kvf_affinity_note(kvf_affinity_t *aff, uint64_t hash, int worker, uint32_t generation);

// The worker that last served hash, or -1 (also when that worker re-registered since).
int kvf_affinity_lookup(const kvf_affinity_t *aff, const kvf_registry_t *reg, uint64_t hash);

// Chooses a worker for a prompt of n_prompt ids with max_new new tokens.
// aff may be NULL (no affinity). Fills *out on KVF_PLACE_OK.
kvf_place_verdict kvf_place_choose(const kvf_registry_t *reg, const kvf_affinity_t *aff, const int32_t *prompt,
                                   uint32_t n_prompt, uint32_t max_new, uint32_t watermark, kvf_place_t *out);

// 1 when some placeable worker has room for at least one block of new work
// (a cheap test to stop scanning the queue early).
int kvf_place_any_room(const kvf_registry_t *reg, uint32_t watermark);

#endif
