// client/kvfctl_chunks.c — see kvfctl_chunks.h.
#include "client/kvfctl_chunks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/alloc.h"

// Counts path's complete lines and cuts anything after the last one.
static int s_out_lines(const char *path, uint64_t *lines, kvf_err_t *err) {
    *lines = 0;
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? 0 : kvf_err_set(err, KVF_E_IO, "cannot read %s: %s", path, strerror(errno));
    long end = 0, pos = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF) {
        pos++;
        if (ch == '\n') {
            (*lines)++;
            end = pos;
        }
    }
    fclose(f);
    if (end != pos && truncate(path, end) != 0)
        return kvf_err_set(err, KVF_E_IO, "cannot cut the partial last line of %s: %s", path, strerror(errno));
    return 0;
}

// The number k of a chunk named "ID.k", or -1.
static long long s_chunk_number(const char *name, const char *id) {
    size_t l = strlen(id);
    if (strncmp(name, id, l) != 0 || name[l] != '.') return -1;
    char *end;
    long long k = strtoll(name + l + 1, &end, 10);
    return *end == 0 && k >= 0 ? k : -1;
}

// Reads the list at path; 1 when it is id's (chunks filled), 0 otherwise.
static int s_read(kvf_chunklist_t *cl, const char *path, const char *id) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0, ccap = 0;
    ssize_t len = getline(&line, &cap, f);
    char head[256];
    snprintf(head, sizeof head, "kvfctl-run %s\n", id);
    int ours = len > 0 && strcmp(line, head) == 0;
    while (ours && (len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') break;  // cut short by a kill: that chunk is not known
        char *save = NULL, *tok = strtok_r(line, " \n", &save);
        if (!tok) continue;
        kvf_chunk_t c = {kvf_xstrdup(tok), NULL, 0};
        size_t icap = 0;
        while ((tok = strtok_r(NULL, " \n", &save))) {
            if (c.n == icap) {
                icap = icap ? icap * 2 : 64;
                c.idx = kvf_xrealloc(c.idx, icap * sizeof *c.idx);
            }
            c.idx[c.n++] = strtoull(tok, NULL, 10);
        }
        if (cl->n_chunks == ccap) {
            ccap = ccap ? ccap * 2 : 16;
            cl->chunks = kvf_xrealloc(cl->chunks, ccap * sizeof *cl->chunks);
        }
        cl->chunks[cl->n_chunks++] = c;
        long long k = s_chunk_number(c.name, id);
        if (k >= 0 && (uint64_t)k + 1 > cl->next_chunk) cl->next_chunk = (uint64_t)k + 1;
    }
    free(line);
    fclose(f);
    return ours;
}

int kvf_chunklist_open(kvf_chunklist_t *cl, const char *out_path, const char *id, kvf_err_t *err) {
    memset(cl, 0, sizeof *cl);
    char side[4200];
    snprintf(side, sizeof side, "%s.batches", out_path);
    // Append mode until the lock is held: another run's list must not be cut.
    cl->f = fopen(side, "a");
    if (!cl->f) return kvf_err_set(err, KVF_E_IO, "cannot create %s: %s", side, strerror(errno));
    if (flock(fileno(cl->f), LOCK_EX | LOCK_NB) != 0)
        return kvf_err_set(err, errno == EWOULDBLOCK ? KVF_E_BUSY : KVF_E_IO, "%s: %s", side,
                           errno == EWOULDBLOCK ? "another kvfctl run is writing this output" : strerror(errno));
    cl->resume = s_read(cl, side, id);
    if (cl->resume) return s_out_lines(out_path, &cl->done, err);
    for (size_t i = 0; i < cl->n_chunks; i++) {
        free(cl->chunks[i].name);
        free(cl->chunks[i].idx);
    }
    cl->n_chunks = 0;
    cl->next_chunk = 0;
    if (ftruncate(fileno(cl->f), 0) != 0) return kvf_err_set(err, KVF_E_IO, "%s: %s", side, strerror(errno));
    fprintf(cl->f, "kvfctl-run %s\n", id);
    if (fflush(cl->f) != 0) return kvf_err_set(err, KVF_E_IO, "writing %s: %s", side, strerror(errno));
    return 0;
}

void kvf_chunklist_note(kvf_chunklist_t *cl, const char *name, const uint64_t *idx, size_t n) {
    if (!cl->f) return;
    fprintf(cl->f, "%s", name);
    for (size_t i = 0; i < n; i++) fprintf(cl->f, " %llu", (unsigned long long)idx[i]);
    fputc('\n', cl->f);
    if (fflush(cl->f) != 0) fprintf(stderr, "kvfctl run: writing the chunk list: %s\n", strerror(errno));
}

void kvf_chunklist_close(kvf_chunklist_t *cl) {
    for (size_t i = 0; i < cl->n_chunks; i++) {
        free(cl->chunks[i].name);
        free(cl->chunks[i].idx);
    }
    free(cl->chunks);
    if (cl->f) fclose(cl->f);
    memset(cl, 0, sizeof *cl);
}
