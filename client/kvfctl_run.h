// client/kvfctl_run.h — `kvfctl run IN.jsonl -o OUT.jsonl`: an offline batch
// through the coordinator, one output line per input request, in input order.
//
// The input is read as it goes and submitted in chunks (opts.chunk requests,
// or fewer when their prompts pass a few MiB), with at most opts.max_inflight
// requests submitted and unfinished at once, so a file of any size never makes
// one giant message and never floods the coordinator's queue (a request refused
// as BUSY is submitted again once earlier results drain). Each chunk is a batch
// of its own: with opts.batch_id ID, chunk k is batch "ID.k"; otherwise the
// coordinator names them.
// With opts.batch_id and an output file, OUT.batches lists the chunks and the
// input requests of each. A run that finds OUT.batches of the same ID resumes
// (after a kvfctl or coordinator restart): the lines already in OUT stay and
// are not requested again, the chunks are attached again (ATTACH) and what no
// chunk holds any more is submitted anew, so every request gets exactly one
// line. Delete OUT.batches (or pick another ID) to start over.
// A coordinator that restarts under a running kvfctl is noticed (STATUS after a
// silence) and its batches are attached again; one that does not answer is
// waited for up to 5 minutes.
// A line that cannot be parsed, or a request the coordinator refuses, becomes an
// error line (see kvfctl_jsonl.h); the rest goes on. Results are written as
// soon as every earlier line is written. Progress goes to stderr: a redrawn bar
// on a terminal, otherwise a plain line every few seconds.
#ifndef KVF_KVFCTL_RUN_H
#define KVF_KVFCTL_RUN_H

#include <stddef.h>
#include <stdint.h>

#include "client/libkvf.h"
#include "common/error.h"

typedef struct {
    const char *in_path;    // "-" reads stdin
    const char *out_path;   // "-" writes stdout
    const char *batch_id;   // prefix of the chunks' batch ids; NULL: the coordinator picks them
    size_t chunk;           // requests per SUBMIT (0: 256)
    size_t max_inflight;    // submitted and unfinished at once (0: 4096)
    int progress;           // -1: bar when stderr is a terminal, else plain lines; 0: none; 1: plain lines
    int progress_every_ms;  // plain-line interval (0: 5000)
} kvf_run_opts_t;

typedef struct {
    uint64_t lines;          // requests read (= output lines written)
    uint64_t ok, errors;
    uint64_t prompt_tokens, completion_tokens;
    double seconds;
    uint64_t batches;        // chunks submitted
    uint64_t resubmitted;    // requests submitted again after a BUSY refusal
    char batch_id[128];      // the first chunk's batch id
} kvf_run_stats_t;

// Runs the batch. Returns 0 when every request has its output line (error lines
// included); -1 with err set when the run could not finish: an unreadable input
// or unwritable output (KVF_E_IO), a coordinator that does not answer
// (KVF_E_TIMEOUT), or an interrupt (KVF_E_CANCELLED: the batch is cancelled).
// *stats (may be NULL) is filled in both cases.
int kvf_ctl_run(kvf_client_t *client, const kvf_run_opts_t *opts, kvf_run_stats_t *stats, kvf_err_t *err);

#endif
