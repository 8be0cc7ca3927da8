// tests/test_coord_journal.c — coordinator/journal.{h,c}: what is written comes
// back after a reopen (requests, prompts, sampling, delivered tokens and text,
// results, errors), rids continue above the journal's, a process that dies
// with a transaction open loses only that transaction, released batches are
// gone, and a file that is not a journal is refused with an error.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/journal.h"
#include "proto/msg.h"

static char s_dir[64];

static void s_setup(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/kvf-journal-XXXXXX");
    cr_assert_not_null(mkdtemp(s_dir));
}

static void s_teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0) cr_log_warn("could not remove %s", s_dir);
}

static void s_path(char *buf, size_t len) { snprintf(buf, len, "%s/j.db", s_dir); }

// A batch "b1" of three requests with distinct prompts and sampling.
static kvf_batch_t *s_batch(kvf_reqtable_t *t, const char *id) {
    kvf_err_t err;
    kvf_batch_t *b = kvf_reqtable_batch_new(t, id, "client", 6, 3, &err);
    cr_assert_not_null(b, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        int32_t *p = malloc(4 * sizeof *p);
        for (int k = 0; k < 4; k++) p[k] = 100 * i + k;
        kvf_sampling_t s = kvf_sampling_default();
        s.temperature = 0.5f * (float)i;
        s.seed = 1000 + (uint64_t)i;
        s.max_new_tokens = 10 + i;
        s.n_stop_ids = i;
        for (int k = 0; k < i; k++) s.stop_ids[k] = 7 + k;
        char tag[16];
        snprintf(tag, sizeof tag, "tag-%d", i);
        kvf_reqtable_add(t, b, tag, &p, 4, &s);
        cr_assert_null(p);
    }
    return b;
}

TestSuite(journal, .init = s_setup, .fini = s_teardown);

Test(journal, what_was_written_comes_back_after_a_reopen) {
    char path[128];
    s_path(path, sizeof path);
    kvf_err_t err;
    kvf_journal_t *j = kvf_journal_new(path, &err);
    cr_assert_not_null(j, "%s", err.msg);
    kvf_reqtable_t *t = kvf_reqtable_new(16);
    kvf_batch_t *b = s_batch(t, "b1");
    snprintf(b->owner, sizeof b->owner, "%s", "rq:rC%0Bk}{/r*9Lm&:Sv%L7tW<yZ0sV4u*mf^s");  // a CURVE key (Z85)
    cr_assert_eq(kvf_journal_batch(j, b, &err), 0, "%s", err.msg);
    const int32_t ids1[] = {5, 6}, ids2[] = {7};
    cr_assert_eq(kvf_journal_tokens(j, b->reqs[0]->rid, ids1, 2, "ab", 2, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_journal_tokens(j, b->reqs[0]->rid, ids2, 1, "c\xc3\xa9", 3, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_journal_tokens(j, b->reqs[1]->rid, ids1, 2, "xy", 2, &err), 0, "%s", err.msg);
    b->reqs[1]->finish_reason = KVF_FINISH_STOP;
    cr_assert_eq(kvf_journal_finish(j, b->reqs[1], &err), 0, "%s", err.msg);
    kvf_req_set_error(b->reqs[2], KVF_E_TOO_LONG, "much too long");
    b->reqs[2]->finish_reason = KVF_FINISH_ERROR;
    cr_assert_eq(kvf_journal_finish(j, b->reqs[2], &err), 0, "%s", err.msg);
    cr_assert_gt(kvf_journal_pending(j), 0);
    cr_assert_eq(kvf_journal_commit(j, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_journal_pending(j), 0);
    uint64_t rids[3] = {b->reqs[0]->rid, b->reqs[1]->rid, b->reqs[2]->rid};
    kvf_journal_destroy(&j);
    cr_assert_null(j);
    kvf_reqtable_destroy(&t);

    j = kvf_journal_new(path, &err);
    cr_assert_not_null(j, "%s", err.msg);
    t = kvf_reqtable_new(16);
    uint32_t nb = 0, nu = 0;
    cr_assert_eq(kvf_journal_load(j, t, &nb, &nu, &err), 0, "%s", err.msg);
    cr_assert_eq(nb, 1);
    cr_assert_eq(nu, 1);
    b = kvf_reqtable_batch(t, "b1");
    cr_assert_not_null(b);
    cr_assert_eq(b->n, 3);
    cr_assert_eq(b->n_finished, 2);
    cr_assert_eq(b->client_ok, 0, "a reloaded batch waits for ATTACH");
    cr_assert_str_eq(b->owner, "rq:rC%0Bk}{/r*9Lm&:Sv%L7tW<yZ0sV4u*mf^s", "the submitting key owns the batch after a restart");
    cr_assert_gt(t->next_rid, rids[2], "rids must continue above the journal's");
    for (int i = 0; i < 3; i++) {
        kvf_req_t *r = b->reqs[i];
        cr_assert_eq(r->rid, rids[i]);
        cr_assert_eq(r->index, (uint32_t)i);
        cr_assert_eq(kvf_reqtable_get(t, rids[i]), r);
        char tag[16];
        snprintf(tag, sizeof tag, "tag-%d", i);
        cr_assert_str_eq(r->tag, tag);
        cr_assert_eq(r->n_prompt, 4);
        for (int k = 0; k < 4; k++) cr_assert_eq(r->prompt[k], 100 * i + k);
        cr_assert_float_eq(r->sampling.temperature, 0.5f * (float)i, 1e-6);
        cr_assert_eq(r->sampling.seed, 1000 + (uint64_t)i);
        cr_assert_eq(r->sampling.max_new_tokens, 10 + i);
        cr_assert_eq(r->sampling.n_stop_ids, i);
        for (int k = 0; k < i; k++) cr_assert_eq(r->sampling.stop_ids[k], 7 + k);
    }
    kvf_req_t *r0 = b->reqs[0];
    cr_assert_eq(r0->state, KVF_REQ_NEW);
    cr_assert_eq(r0->n_out, 3);
    cr_assert(r0->out[0] == 5 && r0->out[1] == 6 && r0->out[2] == 7);
    cr_assert_eq(r0->text_len, 5);
    cr_assert_str_eq(r0->text, "abc\xc3\xa9");
    cr_assert_eq(b->reqs[1]->state, KVF_REQ_FINISHED);
    cr_assert_eq(b->reqs[1]->finish_reason, KVF_FINISH_STOP);
    cr_assert_eq(b->reqs[1]->n_out, 2);
    cr_assert_eq(b->reqs[2]->state, KVF_REQ_FINISHED);
    cr_assert_eq(b->reqs[2]->finish_reason, KVF_FINISH_ERROR);
    cr_assert_eq(b->reqs[2]->error_code, KVF_E_TOO_LONG);
    cr_assert_str_eq(b->reqs[2]->error, "much too long");

    // Released: gone after the next reopen.
    cr_assert_eq(kvf_journal_release(j, "b1", &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_journal_commit(j, &err), 0, "%s", err.msg);
    kvf_journal_destroy(&j);
    kvf_reqtable_destroy(&t);
    j = kvf_journal_new(path, &err);
    cr_assert_not_null(j, "%s", err.msg);
    t = kvf_reqtable_new(16);
    cr_assert_eq(kvf_journal_load(j, t, &nb, &nu, &err), 0, "%s", err.msg);
    cr_assert_eq(nb, 0);
    cr_assert_eq(kvf_reqtable_size(t), 0);
    kvf_journal_destroy(&j);
    kvf_reqtable_destroy(&t);
}

Test(journal, a_process_killed_with_a_transaction_open_loses_only_that_transaction) {
    char path[128];
    s_path(path, sizeof path);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        kvf_err_t err;
        kvf_journal_t *j = kvf_journal_new(path, &err);
        if (!j) _exit(2);
        kvf_reqtable_t *t = kvf_reqtable_new(16);
        kvf_batch_t *b = s_batch(t, "b1");
        const int32_t ids[] = {1, 2, 3};
        if (kvf_journal_batch(j, b, &err) < 0 || kvf_journal_tokens(j, b->reqs[0]->rid, ids, 3, "one", 3, &err) < 0 ||
            kvf_journal_commit(j, &err) < 0)
            _exit(3);
        // Open, never committed: a SIGKILL now.
        if (kvf_journal_tokens(j, b->reqs[0]->rid, ids, 2, "two", 3, &err) < 0) _exit(4);
        b->reqs[1]->finish_reason = KVF_FINISH_LENGTH;
        if (kvf_journal_finish(j, b->reqs[1], &err) < 0) _exit(5);
        raise(SIGKILL);
        _exit(6);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the writer did not get to its kill (status %d)", st);
    kvf_err_t err;
    kvf_journal_t *j = kvf_journal_new(path, &err);
    cr_assert_not_null(j, "%s", err.msg);
    kvf_reqtable_t *t = kvf_reqtable_new(16);
    uint32_t nb = 0, nu = 0;
    cr_assert_eq(kvf_journal_load(j, t, &nb, &nu, &err), 0, "%s", err.msg);
    cr_assert_eq(nb, 1);
    cr_assert_eq(nu, 3, "the uncommitted finish must be lost");
    kvf_batch_t *b = kvf_reqtable_batch(t, "b1");
    cr_assert_not_null(b);
    cr_assert_eq(b->reqs[0]->n_out, 3, "only the committed tokens come back");
    cr_assert_str_eq(b->reqs[0]->text, "one");
    kvf_journal_destroy(&j);
    kvf_reqtable_destroy(&t);
}

Test(journal, a_file_that_is_not_a_journal_is_refused_with_an_error) {
    char path[128];
    s_path(path, sizeof path);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 512; i++) fputs("this is not an SQLite database. ", f);
    fclose(f);
    kvf_err_t err;
    kvf_err_clear(&err);
    kvf_journal_t *j = kvf_journal_new(path, &err);
    cr_assert_null(j);
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert(strstr(err.msg, path), "the error names the file: %s", err.msg);
    char dir_path[128];
    snprintf(dir_path, sizeof dir_path, "%s/no/such/dir/j.db", s_dir);
    cr_assert_null(kvf_journal_new(dir_path, &err));
    cr_assert_eq(err.code, KVF_E_IO);
    cr_assert_null(kvf_journal_new("", &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
}

Test(journal, one_process_at_a_time) {
    char path[128];
    s_path(path, sizeof path);
    kvf_err_t err;
    kvf_journal_t *j = kvf_journal_new(path, &err);
    cr_assert_not_null(j, "%s", err.msg);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        kvf_journal_t *k = kvf_journal_new(path, &err);
        _exit(k == NULL && err.code == KVF_E_IO && strstr(err.msg, "another coordinator") ? 0 : 1);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a second process opened a journal in use");
    kvf_journal_destroy(&j);
    j = kvf_journal_new(path, &err);
    cr_assert_not_null(j, "free again once closed: %s", err.msg);
    kvf_journal_destroy(&j);
}
