// coordinator/placement.c — see placement.h.
#include "coordinator/placement.h"

#include <string.h>

uint32_t kvf_place_need(uint64_t tokens, uint32_t block_size) {
    uint64_t n = (tokens + block_size - 1) / block_size;
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

uint64_t kvf_place_prefix_hash(const int32_t *ids, uint32_t n, uint32_t block_size) {
    if (block_size == 0 || n < block_size) return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < block_size; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    }
    return h ? h : 1;
}

int kvf_place_could_ever_fit(const kvf_cworker_t *w, uint64_t tokens, uint32_t need, uint32_t watermark) {
    if (w->session_len && tokens > w->session_len) return 0;
    return (uint64_t)need + watermark <= w->total_blocks;
}

int kvf_place_fits(const kvf_cworker_t *w, uint64_t tokens, uint32_t need, uint32_t watermark) {
    if (!kvf_registry_placeable(w)) return 0;
    if (!kvf_place_could_ever_fit(w, tokens, need, watermark)) return 0;
    if ((uint64_t)kvf_registry_avail(w) < (uint64_t)need + watermark) return 0;
    return w->ledger + need <= (uint64_t)w->total_blocks - watermark;
}

void kvf_affinity_init(kvf_affinity_t *aff) {
    memset(aff, 0, sizeof *aff);
    for (uint32_t i = 0; i < KVF_AFFINITY_SLOTS; i++) aff->slot[i].worker = -1;
}

void kvf_affinity_note(kvf_affinity_t *aff, uint64_t hash, int worker, uint32_t generation) {
    if (!hash) return;
    uint32_t s = (uint32_t)(hash % KVF_AFFINITY_SLOTS);
    aff->slot[s].hash = hash;
    aff->slot[s].worker = worker;
    aff->slot[s].generation = generation;
}

int kvf_affinity_lookup(const kvf_affinity_t *aff, const kvf_registry_t *reg, uint64_t hash) {
    if (!aff || !hash) return -1;
    uint32_t s = (uint32_t)(hash % KVF_AFFINITY_SLOTS);
    if (aff->slot[s].hash != hash || aff->slot[s].worker < 0) return -1;
    int w = aff->slot[s].worker;
    if ((uint32_t)w >= reg->n || reg->w[w]->generation != aff->slot[s].generation) return -1;
    return w;
}

kvf_place_verdict kvf_place_choose(const kvf_registry_t *reg, const kvf_affinity_t *aff, const int32_t *prompt,
                                   uint32_t n_prompt, uint32_t max_new, uint32_t watermark, kvf_place_t *out) {
    uint64_t tokens = (uint64_t)n_prompt + (max_new > 0 ? (uint64_t)max_new : 0);
    int best = -1, best_aff = 0, any_placeable = 0, any_ever = 0;
    uint32_t best_need = 0;
    uint64_t best_hash = 0;
    for (uint32_t i = 0; i < reg->n; i++) {
        const kvf_cworker_t *w = reg->w[i];
        if (!kvf_registry_placeable(w)) continue;
        any_placeable = 1;
        uint32_t need = kvf_place_need(tokens, w->block_size);
        if (!kvf_place_could_ever_fit(w, tokens, need, watermark)) continue;
        any_ever = 1;
        if (!kvf_place_fits(w, tokens, need, watermark)) continue;
        uint64_t h = kvf_place_prefix_hash(prompt, n_prompt, w->block_size);
        // Affinity only pays where the worker keeps a prefix cache.
        int is_aff = h && w->prefix_caching && kvf_affinity_lookup(aff, reg, h) == (int)i;
        int better;
        if (best < 0) {
            better = 1;
        } else if (is_aff != best_aff) {
            better = is_aff;
        } else {
            const kvf_cworker_t *b = reg->w[best];
            uint32_t aw = kvf_registry_avail(w), ab = kvf_registry_avail(b);
            if (aw != ab)
                better = aw > ab;
            else
                better = w->outstanding < b->outstanding;
        }
        if (better) {
            best = (int)i;
            best_aff = is_aff;
            best_need = need;
            best_hash = h;
        }
    }
    if (best >= 0) {
        out->worker = best;
        out->need = best_need;
        out->prefix_hash = best_hash;
        return KVF_PLACE_OK;
    }
    if (any_placeable && !any_ever) return KVF_PLACE_TOO_LONG;
    return KVF_PLACE_WAIT;
}

int kvf_place_any_room(const kvf_registry_t *reg, uint32_t watermark) {
    for (uint32_t i = 0; i < reg->n; i++) {
        const kvf_cworker_t *w = reg->w[i];
        if (kvf_place_fits(w, 1, 1, watermark)) return 1;
    }
    return 0;
}
