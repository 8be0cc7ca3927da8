// tests/test_attn_tiles.c — the attention kernels' host helpers (kernels/attention.h),
// which need no GPU: cutting the new tokens into tiles, putting the tiles longest
// first (the order the cuda backend launches them in), and choosing key splits.
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attention.h"

// n_new[s] new tokens of sequence s after n_past[s] keys: positions into pos (n tokens).
static int s_positions(int32_t *pos, const int32_t *n_new, const int32_t *n_past, int n_seqs) {
    int t = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int i = 0; i < n_new[s]; i++) pos[t++] = n_past[s] + i;
    return t;
}

static int s_tile_keys(const int32_t *tile, const int32_t *pos) { return pos[tile[1] + tile[2] - 1] + 1; }

Test(attn_tiles, build_cuts_each_sequence) {
    const int32_t n_new[] = {5, 1, 0, 9};
    int32_t tiles[3 * 8];
    cr_assert_eq(kvf_attn_build_tiles(tiles, 8, n_new, 4, 4), 6);  // 2 + 1 + 0 + 3 tiles of at most 4 tokens
    const int32_t want[] = {0, 0, 4, 0, 4, 1, 1, 5, 1, 3, 6, 4, 3, 10, 4, 3, 14, 1};
    cr_assert_eq(memcmp(tiles, want, sizeof want), 0);
    cr_assert_eq(kvf_attn_build_tiles(tiles, 4, n_new, 4, 4), -1, "more tiles than max_tiles");
    cr_assert_eq(kvf_attn_build_tiles(tiles, 8, n_new, 4, 0), -1);
}

Test(attn_tiles, order_puts_the_longest_first_and_keeps_ties_in_order) {
    // decode: one token a sequence, contexts 3 .. 200 keys
    enum { N = 9 };
    const int32_t n_past[N] = {40, 199, 17, 2, 47, 100, 33, 199, 34};
    int32_t n_new[N], pos[N], tiles[3 * N], before[3 * N];
    for (int s = 0; s < N; s++) n_new[s] = 1;
    s_positions(pos, n_new, n_past, N);
    cr_assert_eq(kvf_attn_build_tiles(tiles, N, n_new, N, 1), N);
    memcpy(before, tiles, sizeof tiles);
    int32_t *scratch = malloc(kvf_attn_order_scratch_ints(N, 200) * sizeof(int32_t));
    cr_assert_eq(kvf_attn_order_tiles(tiles, N, pos, 200, scratch), 0);
    // steps of 16 keys: 200, 200 (13) | 101 (7) | 41, 48, 34, 35 (3: kept in order) | 18 (2) | 3 (1)
    const int32_t want_seq[N] = {1, 7, 5, 0, 4, 6, 8, 2, 3};
    for (int i = 0; i < N; i++) {
        cr_assert_eq(tiles[3 * i], want_seq[i], "tile %d: sequence %d, want %d", i, tiles[3 * i], want_seq[i]);
        cr_assert_eq(memcmp(tiles + 3 * i, before + 3 * want_seq[i], 3 * sizeof(int32_t)), 0, "tile %d moved whole", i);
    }
    for (int i = 1; i < N; i++)
        cr_assert((s_tile_keys(tiles + 3 * (i - 1), pos) + 15) / 16 >= (s_tile_keys(tiles + 3 * i, pos) + 15) / 16);
    free(scratch);
}

Test(attn_tiles, order_counts_the_keys_of_a_tiles_last_token) {
    // two prompts of 200 and 70 new tokens after 0 and 30 keys, tiles of 64: the last tiles see the most keys
    const int32_t n_new[] = {200, 70}, n_past[] = {0, 30};
    int32_t pos[270], tiles[3 * 8];
    s_positions(pos, n_new, n_past, 2);
    const int nt = kvf_attn_build_tiles(tiles, 8, n_new, 2, 64);
    cr_assert_eq(nt, 6);  // 64, 64, 64, 8 | 64, 6
    int32_t *scratch = malloc(kvf_attn_order_scratch_ints(nt, 200) * sizeof(int32_t));
    cr_assert_eq(kvf_attn_order_tiles(tiles, nt, pos, 200, scratch), 0);
    // keys 200 (prompt 0's 8-token tail), 192, 128, 100 (prompt 1's 6-token tail), 94, 64
    const int32_t want_first[] = {192, 128, 64, 264, 200, 0};
    for (int i = 0; i < nt; i++)
        cr_assert_eq(tiles[3 * i + 1], want_first[i], "tile %d starts at token %d, want %d", i, tiles[3 * i + 1],
                     want_first[i]);
    free(scratch);
}

Test(attn_tiles, order_refuses_bad_arguments_and_leaves_tiles_alone) {
    const int32_t n_new[] = {1, 1, 1}, n_past[] = {10, 300, 20};
    int32_t pos[3], tiles[9], before[9];
    s_positions(pos, n_new, n_past, 3);
    kvf_attn_build_tiles(tiles, 3, n_new, 3, 1);
    memcpy(before, tiles, sizeof tiles);
    int32_t *scratch = malloc(kvf_attn_order_scratch_ints(3, 301) * sizeof(int32_t));
    cr_assert_eq(kvf_attn_order_tiles(tiles, 3, pos, 100, scratch), -1, "a tile of 301 keys past max_keys 100");
    cr_assert_eq(memcmp(tiles, before, sizeof tiles), 0);
    cr_assert_eq(kvf_attn_order_tiles(tiles, 3, NULL, 301, scratch), -1);
    cr_assert_eq(kvf_attn_order_tiles(tiles, 3, pos, 301, NULL), -1);
    cr_assert_eq(kvf_attn_order_tiles(tiles, -1, pos, 301, scratch), -1);
    cr_assert_eq(kvf_attn_order_tiles(NULL, 0, NULL, 301, NULL), 0, "no tiles: nothing to do");
    cr_assert_eq(kvf_attn_order_tiles(tiles, 1, pos, 301, scratch), 0);
    cr_assert_eq(memcmp(tiles, before, sizeof tiles), 0, "one tile stays");
    cr_assert_eq(kvf_attn_order_tiles(tiles, 3, pos, 301, scratch), 0);
    cr_assert_eq(tiles[0], 1);  // 301 keys, then 21, then 11
    cr_assert_eq(tiles[3], 2);
    cr_assert_eq(tiles[6], 0);
    cr_assert_eq(kvf_attn_order_scratch_ints(-1, 5), 0);
    free(scratch);
}

Test(attn_tiles, splits_only_when_the_device_would_idle) {
    int len = 0;
    cr_assert_eq(kvf_attn_choose_splits(512, 8, 4096, 64, 132, &len), 1, "4096 blocks fill 132 SMs");
    const int s = kvf_attn_choose_splits(2, 8, 4096, 64, 132, &len);
    cr_assert(s > 1 && s <= 64);
    cr_assert(len % 32 == 0 && (long long)len * s >= 4096, "%d splits of %d keys cover 4096", s, len);
    cr_assert_eq(kvf_attn_choose_splits(2, 8, 200, 64, 132, &len), 1, "short contexts are not split");
}
