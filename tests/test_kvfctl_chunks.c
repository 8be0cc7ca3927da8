// tests/test_kvfctl_chunks.c — client/kvfctl_chunks.{h,c}, the chunk list a
// `kvfctl run --batch-id` resumes from: a fresh list has its header, noted
// chunks come back with their requests, OUT's cut last line is removed and its
// complete lines counted, another ID's list starts afresh, and a second run on
// the same output is refused while the first holds the list.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/kvfctl_chunks.h"
#include "test_util.h"

static char s_dir[64], s_out[128], s_side[160];

static void s_setup(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/kvf-chunks-XXXXXX");
    cr_assert_not_null(mkdtemp(s_dir));
    snprintf(s_out, sizeof s_out, "%s/out.jsonl", s_dir);
    snprintf(s_side, sizeof s_side, "%s.batches", s_out);
}

static void s_teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0) cr_log_warn("could not remove %s", s_dir);
}

static void s_write(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

TestSuite(chunks, .init = s_setup, .fini = s_teardown);

Test(chunks, a_resumed_list_gives_back_its_chunks_and_the_complete_lines) {
    kvf_chunklist_t cl;
    kvf_err_t err;
    s_write(s_out, "old\n");  // a fresh list: the caller truncates OUT
    cr_assert_eq(kvf_chunklist_open(&cl, s_out, "job", &err), 0, "%s", err.msg);
    cr_assert_eq(cl.resume, 0);
    cr_assert_eq(cl.next_chunk, 0);
    const uint64_t a[] = {0, 1, 2}, b[] = {3, 5};
    kvf_chunklist_note(&cl, "job.0", a, 3);
    kvf_chunklist_note(&cl, "job.1", b, 2);
    kvf_chunklist_close(&cl);
    char *side = kvf_test_slurp(s_side, NULL);
    cr_assert_str_eq(side, "kvfctl-run job\njob.0 0 1 2\njob.1 3 5\n");
    free(side);

    s_write(s_out, "{\"id\":0}\n{\"id\":1}\n{\"id\":2, \"te");  // killed mid-line
    cr_assert_eq(kvf_chunklist_open(&cl, s_out, "job", &err), 0, "%s", err.msg);
    cr_assert_eq(cl.resume, 1);
    cr_assert_eq(cl.done, 2);
    cr_assert_eq(cl.n_chunks, 2);
    cr_assert_str_eq(cl.chunks[1].name, "job.1");
    cr_assert_eq(cl.chunks[1].n, 2);
    cr_assert_eq(cl.chunks[1].idx[1], 5);
    cr_assert_eq(cl.next_chunk, 2);
    char *out = kvf_test_slurp(s_out, NULL);
    cr_assert_str_eq(out, "{\"id\":0}\n{\"id\":1}\n", "the cut line must go");
    free(out);
    kvf_chunklist_close(&cl);
}

Test(chunks, another_ids_list_starts_afresh_and_a_cut_chunk_line_is_not_trusted) {
    s_write(s_side, "kvfctl-run other\nother.0 0 1\n");
    kvf_chunklist_t cl;
    kvf_err_t err;
    cr_assert_eq(kvf_chunklist_open(&cl, s_out, "job", &err), 0, "%s", err.msg);
    cr_assert_eq(cl.resume, 0);
    cr_assert_eq(cl.n_chunks, 0);
    kvf_chunklist_close(&cl);
    char *side = kvf_test_slurp(s_side, NULL);
    cr_assert_str_eq(side, "kvfctl-run job\n");
    free(side);
    s_write(s_side, "kvfctl-run job\njob.0 0 1\njob.7 2 3");  // the last line was being written
    cr_assert_eq(kvf_chunklist_open(&cl, s_out, "job", &err), 0, "%s", err.msg);
    cr_assert_eq(cl.resume, 1);
    cr_assert_eq(cl.n_chunks, 1);
    cr_assert_eq(cl.next_chunk, 1);
    kvf_chunklist_close(&cl);
}

Test(chunks, a_second_run_on_the_same_output_is_refused) {
    kvf_chunklist_t a, b;
    kvf_err_t err;
    cr_assert_eq(kvf_chunklist_open(&a, s_out, "job", &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_chunklist_open(&b, s_out, "job", &err), -1);
    cr_assert_eq(err.code, KVF_E_BUSY);
    cr_assert(strstr(err.msg, "another kvfctl run"), "%s", err.msg);
    kvf_chunklist_close(&b);
    char *side = kvf_test_slurp(s_side, NULL);
    cr_assert_str_eq(side, "kvfctl-run job\n", "the refused run must not touch the list");
    free(side);
    kvf_chunklist_close(&a);
    cr_assert_eq(kvf_chunklist_open(&b, s_out, "job", &err), 0, "free once the first closed: %s", err.msg);
    kvf_chunklist_close(&b);
}
