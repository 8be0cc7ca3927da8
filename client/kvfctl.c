// client/kvfctl.c — the kvfleet operator and user CLI: a thin main over libkvf.
//
//   kvfctl [--coordinator EP] [--timeout MS] COMMAND ...
//     status [--json]
//     run IN.jsonl -o OUT.jsonl [--batch-id ID] [--chunk N] [--max-inflight N] [--progress auto|bar|plain|none]
//     generate "PROMPT" [--prompt-ids 1,2,3] [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S] [--json]
//     cancel ID [--batch]
//     drain WORKER
//     shutdown
//     keygen DIR/NAME
//   CURVE: --curve-secret FILE --coordinator-key FILE (or $KVF_CURVE_SECRET,
//   $KVF_COORDINATOR_KEY); deploy/SECURITY.md.
// Exit status: 0 success, 1 failure (unreachable coordinator, refused request,
// unreadable input), 2 bad usage, 130 interrupted.
#include <czmq.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/kvfctl_jsonl.h"
#include "client/kvfctl_run.h"
#include "client/kvfctl_status.h"
#include "client/libkvf.h"
#include "common/alloc.h"
#include "common/args.h"
#include "common/curve.h"
#include "proto/codec.h"

#define S_USAGE_EXIT 2

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: kvfctl [--coordinator EP] [--timeout MS] COMMAND ...\n"
            "  --coordinator EP   coordinator front endpoint (default $KVF_COORDINATOR or %s)\n"
            "  --timeout MS       how long to wait for the coordinator's replies (default %d)\n"
            "  --curve-secret FILE      CURVE: our secret key file (default $KVF_CURVE_SECRET)\n"
            "  --coordinator-key FILE   CURVE: the coordinator's public key file (default $KVF_COORDINATOR_KEY)\n"
            "commands:\n"
            "  status [--json]                       workers, KV blocks, load, plan; cluster totals and queue\n"
            "  run IN.jsonl -o OUT.jsonl [--batch-id ID] [--chunk N] [--max-inflight N]\n"
            "      [--progress auto|bar|plain|none]  run a JSONL batch (native or OpenAI batch lines)\n"
            "  generate PROMPT [--prompt-ids IDS] [--max-tokens N] [--temperature T] [--top-p P]\n"
            "      [--top-k K] [--min-p P] [--seed S] [--json]\n"
            "                                        one generation, streamed as it is produced\n"
            "  cancel ID [--batch]                   cancel a request id (a number) or a batch id\n"
            "  drain WORKER                          let a worker finish its work and take nothing new\n"
            "  shutdown                              stop the coordinator and every worker\n"
            "  keygen DIR/NAME                       write a CURVE key pair: DIR/NAME (public, to copy into\n"
            "                                        the coordinator's allowed-key directory) and DIR/NAME_secret\n",
            KVF_CLIENT_DEFAULT_ENDPOINT, KVF_CLIENT_DEFAULT_TIMEOUT_MS);
}

static int s_bad(const char *fmt, const char *arg) {
    fprintf(stderr, "kvfctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(kvfctl --help for usage)\n");
    return S_USAGE_EXIT;
}

static int s_fail(const char *what, const kvf_err_t *e) {
    fprintf(stderr, "kvfctl %s: %s (%s)\n", what, e->msg, kvf_status_name(e->code));
    return e->code == KVF_E_CANCELLED ? 130 : 1;
}

// ---------------------------------------------------------------- status

static int s_cmd_status(kvf_client_t *c, int argc, char **argv) {
    int as_json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) as_json = 1;
        else return s_bad("status: unknown argument '%s'", argv[i]);
    }
    kvf_cluster_status_t *st = NULL;
    kvf_err_t e;
    if (kvf_client_status(c, &st, &e) < 0) return s_fail("status", &e);
    if (as_json) {
        json_t *j = kvf_ctl_status_json(st);
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
    } else {
        kvf_ctl_status_print(stdout, st);
    }
    kvf_cluster_status_destroy(&st);
    return 0;
}

// ---------------------------------------------------------------- run

static int s_cmd_run(kvf_client_t *c, int argc, char **argv) {
    kvf_run_opts_t o = {.progress = -1};
    kvf_err_t e;
    int64_t v;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && val) o.out_path = argv[++i];
        else if (strcmp(a, "--batch-id") == 0 && val) o.batch_id = argv[++i];
        else if (strcmp(a, "--chunk") == 0 && val) {
            if (kvf_args_int(a, argv[++i], 1, 100000, &v, &e) < 0) return s_bad("%s", e.msg);
            o.chunk = (size_t)v;
        } else if (strcmp(a, "--max-inflight") == 0 && val) {
            if (kvf_args_int(a, argv[++i], 1, 10000000, &v, &e) < 0) return s_bad("%s", e.msg);
            o.max_inflight = (size_t)v;
        } else if (strcmp(a, "--progress") == 0 && val) {
            const char *p = argv[++i];
            if (strcmp(p, "auto") == 0) o.progress = -1;
            else if (strcmp(p, "bar") == 0 || strcmp(p, "plain") == 0) o.progress = 1;
            else if (strcmp(p, "none") == 0) o.progress = 0;
            else return s_bad("run: --progress takes auto, bar, plain or none, not '%s'", p);
        } else if (a[0] == '-' && a[1] != 0) {
            return s_bad("run: unknown or incomplete option '%s'", a);
        } else if (!o.in_path) {
            o.in_path = a;
        } else {
            return s_bad("run: unexpected argument '%s'", a);
        }
    }
    if (!o.in_path) return s_bad("run: no input file%s", "");
    if (!o.out_path) return s_bad("run: no output file (-o OUT.jsonl)%s", "");
    kvf_run_stats_t st;
    int rc = kvf_ctl_run(c, &o, &st, &e);
    double tps = st.seconds > 0 ? (double)st.completion_tokens / st.seconds : 0;
    fprintf(stderr,
            "kvfctl run: %llu requests (%llu ok, %llu errors) in %.2f s; %llu prompt + %llu generated tokens; "
            "%.1f generated tokens/s; batch %s; output %s\n",
            (unsigned long long)st.lines, (unsigned long long)st.ok, (unsigned long long)st.errors, st.seconds,
            (unsigned long long)st.prompt_tokens, (unsigned long long)st.completion_tokens, tps,
            st.batch_id[0] ? st.batch_id : "-", o.out_path);
    if (st.resubmitted)
        fprintf(stderr, "kvfctl run: %llu requests resubmitted after the queue was full\n",
                (unsigned long long)st.resubmitted);
    if (rc < 0) return s_fail("run", &e);
    return 0;
}

// ---------------------------------------------------------------- generate

static int s_cmd_generate(kvf_client_t *c, int argc, char **argv) {
    kvf_request_t req = {.sampling = kvf_sampling_default()};
    int as_json = 0;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    kvf_err_t e;
    int64_t v;
    double d;
    int rc = S_USAGE_EXIT;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            as_json = 1;
        } else if (strcmp(a, "--max-tokens") == 0 && val) {
            if (kvf_args_int(a, argv[++i], 1, INT32_MAX, &v, &e) < 0) goto bad;
            req.sampling.max_new_tokens = (int32_t)v;
        } else if (strcmp(a, "--temperature") == 0 && val) {
            if (kvf_args_double(a, argv[++i], 0, 100, &d, &e) < 0) goto bad;
            req.sampling.temperature = (float)d;
        } else if (strcmp(a, "--top-p") == 0 && val) {
            if (kvf_args_double(a, argv[++i], 0, 1, &d, &e) < 0) goto bad;
            req.sampling.top_p = (float)d;
        } else if (strcmp(a, "--min-p") == 0 && val) {
            if (kvf_args_double(a, argv[++i], 0, 1, &d, &e) < 0) goto bad;
            req.sampling.min_p = (float)d;
        } else if (strcmp(a, "--top-k") == 0 && val) {
            if (kvf_args_int(a, argv[++i], 0, INT32_MAX, &v, &e) < 0) goto bad;
            req.sampling.top_k = (int32_t)v;
        } else if (strcmp(a, "--seed") == 0 && val) {
            if (kvf_args_int(a, argv[++i], 0, INT64_MAX, &v, &e) < 0) goto bad;
            req.sampling.seed = (uint64_t)v;
        } else if (strcmp(a, "--prompt-ids") == 0 && val) {
            free(ids);
            ids = NULL;
            if (kvf_args_ids(a, argv[++i], &ids, &n_ids, &e) < 0) goto bad;
        } else if (a[0] == '-' && a[1] == '-') {
            rc = s_bad("generate: unknown or incomplete option '%s'", a);
            goto out;
        } else if (!req.text) {
            req.text = a;
        } else {
            rc = s_bad("generate: unexpected argument '%s' (quote the prompt)", a);
            goto out;
        }
    }
    if (ids && n_ids) {
        if (req.text) {
            rc = s_bad("generate: give a prompt or --prompt-ids, not both%s", "");
            goto out;
        }
        req.prompt_ids = ids;
        req.n_prompt_ids = n_ids;
    } else if (!req.text) {
        rc = s_bad("generate: no prompt%s", "");
        goto out;
    }
    if (kvf_sampling_validate(&req.sampling, &e) < 0) goto bad;

    uint64_t rid = 0;
    if (kvf_client_submit(c, NULL, &req, 1, &rid, NULL, &e) < 0) {
        rc = s_fail("generate", &e);
        goto out;
    }
    json_t *out_ids = json_array();
    char *text = NULL;
    size_t text_len = 0;
    FILE *mem = open_memstream(&text, &text_len);
    rc = 1;
    int64_t last = zclock_mono();
    for (;;) {
        kvf_event_t ev = {0};
        if (zsys_interrupted) {
            kvf_client_cancel(c, rid, NULL, NULL);
            fprintf(stderr, "\nkvfctl generate: interrupted, request %llu cancelled\n", (unsigned long long)rid);
            rc = 130;
            break;
        }
        if (kvf_client_next(c, 500, &ev, &e) < 0) {
            if (e.code == KVF_E_TIMEOUT || e.code == KVF_E_IO) {
                if (e.code == KVF_E_TIMEOUT && zclock_mono() - last > 10000) {
                    // A long silence: make sure the coordinator is still there.
                    kvf_cluster_status_t *st = NULL;
                    if (kvf_client_status(c, &st, &e) < 0 && e.code == KVF_E_TIMEOUT) {
                        rc = s_fail("generate", &e);
                        break;
                    }
                    kvf_cluster_status_destroy(&st);
                    last = zclock_mono();
                }
                continue;
            }
            fprintf(stderr, "kvfctl generate: %s\n", e.msg);
            continue;
        }
        last = zclock_mono();
        if (ev.rid != rid) {
            kvf_event_clear(&ev);
            continue;
        }
        if (ev.type == KVF_EVENT_TOKENS) {
            fputs(ev.text, mem);
            for (uint32_t i = 0; i < ev.n_ids; i++) json_array_append_new(out_ids, json_integer(ev.ids[i]));
            if (!as_json) {
                fputs(ev.text, stdout);
                fflush(stdout);
            }
        } else if (ev.type == KVF_EVENT_DONE) {
            fclose(mem);
            mem = NULL;
            if (as_json) {
                char *clean = kvf_jsonl_utf8_clean(text, text_len);
                json_t *o = json_pack("{s:I, s:s, s:O, s:i, s:i, s:s}", "rid", (json_int_t)rid, "text", clean,
                                      "output_ids", out_ids, "prompt_tokens", (int)ev.prompt_tokens,
                                      "completion_tokens", (int)ev.completion_tokens, "finish_reason",
                                      kvf_finish_name(ev.finish_reason));
                free(clean);
                if (o) json_dumpf(o, stdout, JSON_COMPACT);
                json_decref(o);
            }
            fputc('\n', stdout);
            if (!as_json)
                fprintf(stderr, "[%s: %u prompt + %u generated tokens]\n", kvf_finish_name(ev.finish_reason),
                        ev.prompt_tokens, ev.completion_tokens);
            rc = 0;
            kvf_event_clear(&ev);
            break;
        } else {
            fprintf(stderr, "%skvfctl generate: %s (%s)\n", as_json ? "" : "\n", ev.message,
                    kvf_status_name(ev.code));
            kvf_event_clear(&ev);
            break;
        }
        kvf_event_clear(&ev);
    }
    if (mem) fclose(mem);
    free(text);
    json_decref(out_ids);
out:
    free(ids);
    return rc;
bad:
    free(ids);
    return s_bad("generate: %s", e.msg);
}

// ---------------------------------------------------------------- cancel, drain, shutdown

static int s_cmd_cancel(kvf_client_t *c, int argc, char **argv) {
    const char *id = NULL;
    int batch = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0) batch = 1;
        else if (argv[i][0] == '-') return s_bad("cancel: unknown option '%s'", argv[i]);
        else if (!id) id = argv[i];
        else return s_bad("cancel: unexpected argument '%s'", argv[i]);
    }
    if (!id) return s_bad("cancel: which request or batch?%s", "");
    uint64_t rid = 0;
    if (!batch) {
        char *end = NULL;
        unsigned long long v = strtoull(id, &end, 10);
        if (*id && *end == 0 && v > 0) rid = v;
    }
    kvf_err_t e;
    if (kvf_client_cancel(c, rid, id, &e) < 0) return s_fail("cancel", &e);
    printf("cancelled %s %s\n", rid ? "request" : "batch", id);
    return 0;
}

static int s_cmd_drain(kvf_client_t *c, int argc, char **argv) {
    if (argc != 1 || argv[0][0] == '-') return s_bad("drain: give exactly one worker id%s", "");
    kvf_err_t e;
    if (kvf_client_drain(c, argv[0], &e) < 0) return s_fail("drain", &e);
    printf("draining %s\n", argv[0]);
    return 0;
}

static int s_cmd_shutdown(kvf_client_t *c, int argc, char **argv) {
    if (argc != 0) return s_bad("shutdown: unexpected argument '%s'", argv[0]);
    kvf_err_t e;
    if (kvf_client_shutdown(c, &e) < 0) return s_fail("shutdown", &e);
    printf("shutdown requested\n");
    return 0;
}

// ---------------------------------------------------------------- keygen

static int s_cmd_keygen(int argc, char **argv) {
    if (argc != 1 || argv[0][0] == '-') return s_bad("keygen: give exactly one DIR/NAME%s", "");
    const char *slash = strrchr(argv[0], '/');
    kvf_err_t e;
    if (kvf_curve_keygen(argv[0], slash ? slash + 1 : argv[0], &e) < 0) return s_fail("keygen", &e);
    printf("wrote %s (public) and %s_secret (keep it private)\n", argv[0], argv[0]);
    return 0;
}

// ---------------------------------------------------------------- main

int main(int argc, char **argv) {
    const char *endpoint = getenv("KVF_COORDINATOR");
    if (!endpoint || !*endpoint) endpoint = KVF_CLIENT_DEFAULT_ENDPOINT;
    int timeout_ms = KVF_CLIENT_DEFAULT_TIMEOUT_MS;
    const char *curve_secret = getenv("KVF_CURVE_SECRET");
    const char *coordinator_key = getenv("KVF_COORDINATOR_KEY");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            s_usage(stdout);
            return 0;
        } else if (strcmp(a, "--coordinator") == 0 && i + 1 < argc) {
            endpoint = argv[++i];
        } else if (strcmp(a, "--curve-secret") == 0 && i + 1 < argc) {
            curve_secret = argv[++i];
        } else if (strcmp(a, "--coordinator-key") == 0 && i + 1 < argc) {
            coordinator_key = argv[++i];
        } else if (strcmp(a, "--timeout") == 0 && i + 1 < argc) {
            int64_t v;
            kvf_err_t e;
            if (kvf_args_int(a, argv[++i], 1, 3600000, &v, &e) < 0) return s_bad("%s", e.msg);
            timeout_ms = (int)v;
        } else {
            return s_bad("unknown or incomplete option '%s'", a);
        }
    }
    if (i >= argc) {
        s_usage(stderr);
        return S_USAGE_EXIT;
    }
    const char *cmd = argv[i++];
    int (*fn)(kvf_client_t *, int, char **) = NULL;
    if (strcmp(cmd, "status") == 0) fn = s_cmd_status;
    else if (strcmp(cmd, "run") == 0) fn = s_cmd_run;
    else if (strcmp(cmd, "generate") == 0) fn = s_cmd_generate;
    else if (strcmp(cmd, "cancel") == 0) fn = s_cmd_cancel;
    else if (strcmp(cmd, "drain") == 0) fn = s_cmd_drain;
    else if (strcmp(cmd, "shutdown") == 0) fn = s_cmd_shutdown;
    else if (strcmp(cmd, "keygen") == 0) return s_cmd_keygen(argc - i, argv + i);
    else if (strcmp(cmd, "help") == 0) {
        s_usage(stdout);
        return 0;
    } else {
        return s_bad("unknown command '%s'", cmd);
    }
    kvf_err_t e;
    kvf_client_t *c = kvf_client_new_curve(endpoint, curve_secret, coordinator_key, &e);
    if (!c) {
        fprintf(stderr, "kvfctl: %s\n", e.msg);
        return S_USAGE_EXIT;
    }
    kvf_client_set_timeout(c, timeout_ms);
    int rc = fn(c, argc - i, argv + i);
    kvf_client_destroy(&c);
    return rc;
}
