// coordinator/main.c — kvf-coordinator: parse the command line, bind, print the
// bound endpoints, serve until SIGINT/SIGTERM or an operator's SHUTDOWN.
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <czmq.h>

#include "common/args.h"
#include "common/log.h"
#include "coordinator/coord.h"

static volatile sig_atomic_t s_interrupted = 0;

static void s_on_signal(int sig) {
    (void)sig;
    s_interrupted = 1;
}

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: kvf-coordinator [options]\n"
            "  --front ENDPOINT          client socket (default tcp://127.0.0.1:5555; tcp://HOST:* picks a port)\n"
            "  --back ENDPOINT           worker socket (default tcp://127.0.0.1:5556)\n"
            "  --model DIR               load DIR/tokenizer.json to tokenize text prompts\n"
            "  --heartbeat-ms N          worker heartbeat interval (default 500)\n"
            "  --dead-after-ms N         silence after which a worker is dead (default 3000)\n"
            "  --queue-cap N             requests held while nothing fits (default 100000)\n"
            "  --watermark-blocks N      KV blocks kept free on every worker (default 0)\n"
            "  --max-batch N             requests in one SUBMIT (default 100000)\n"
            "  --max-prompt-tokens N     tokens in one prompt (default 1048576)\n"
            "  --max-msg-size BYTES      largest message (default 64M; K/M/G suffixes)\n"
            "  --max-retained N          finished batches kept for ATTACH after the client left (default 1024)\n"
            "  --max-redispatch N        a request taken back from dying or refusing workers more often fails\n"
            "                            (default 16)\n"
            "  --journal PATH            SQLite job journal: resume its unfinished batches, journal new ones\n"
            "                            (default: none)\n"
            "  --max-new-tokens N        output tokens one request may ask for (default 1048576)\n"
            "  --curve-secret FILE       CURVE on both sockets with this secret key file (kvfctl keygen);\n"
            "                            only the keys below may connect (deploy/SECURITY.md)\n"
            "  --worker-keys DIR         public keys of the workers allowed on the back socket\n"
            "  --client-keys DIR         public keys of the clients allowed on the front socket\n"
            "  --operator-keys DIR       public keys allowed on the front that may also DRAIN and SHUTDOWN\n"
            "  --log-level LEVEL         error|warn|info|debug (default info)\n"
            "Prints \"front ENDPOINT back ENDPOINT\" once both sockets are bound.\n");
}

int main(int argc, char **argv) {
    kvf_coord_cfg_t cfg;
    kvf_coord_cfg_default(&cfg);
    kvf_log_level_t level = KVF_LOG_INFO;
    kvf_err_t err;
    kvf_err_clear(&err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            s_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kvf-coordinator: %s needs a value (or is unknown)\n", a);
            s_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        uint64_t sz = 0;
        int rc = 0;
        if (!strcmp(a, "--front")) {
            cfg.front = v;
        } else if (!strcmp(a, "--back")) {
            cfg.back = v;
        } else if (!strcmp(a, "--model")) {
            cfg.model_dir = v;
        } else if (!strcmp(a, "--journal")) {
            cfg.journal = v;
        } else if (!strcmp(a, "--heartbeat-ms")) {
            if ((rc = kvf_args_int(a, v, 1, 3600000, &n, &err)) == 0) cfg.heartbeat_ms = (uint32_t)n;
        } else if (!strcmp(a, "--dead-after-ms")) {
            if ((rc = kvf_args_int(a, v, 2, 86400000, &n, &err)) == 0) cfg.dead_after_ms = (uint32_t)n;
        } else if (!strcmp(a, "--queue-cap")) {
            if ((rc = kvf_args_int(a, v, 0, 100000000, &n, &err)) == 0) cfg.queue_cap = (uint32_t)n;
        } else if (!strcmp(a, "--watermark-blocks")) {
            if ((rc = kvf_args_int(a, v, 0, 1000000000, &n, &err)) == 0) cfg.watermark = (uint32_t)n;
        } else if (!strcmp(a, "--max-batch")) {
            if ((rc = kvf_args_int(a, v, 1, 100000000, &n, &err)) == 0) cfg.max_batch = (uint32_t)n;
        } else if (!strcmp(a, "--max-prompt-tokens")) {
            if ((rc = kvf_args_int(a, v, 1, 1000000000, &n, &err)) == 0) cfg.max_prompt_tokens = (uint32_t)n;
        } else if (!strcmp(a, "--max-retained")) {
            if ((rc = kvf_args_int(a, v, 0, 1000000, &n, &err)) == 0) cfg.max_retained = (uint32_t)n;
        } else if (!strcmp(a, "--max-new-tokens")) {
            if ((rc = kvf_args_int(a, v, 1, 1000000000, &n, &err)) == 0) cfg.max_new_tokens = (uint32_t)n;
        } else if (!strcmp(a, "--curve-secret")) {
            cfg.curve_secret = v;
        } else if (!strcmp(a, "--worker-keys")) {
            cfg.worker_keys = v;
        } else if (!strcmp(a, "--client-keys")) {
            cfg.client_keys = v;
        } else if (!strcmp(a, "--operator-keys")) {
            cfg.operator_keys = v;
        } else if (!strcmp(a, "--max-redispatch")) {
            if ((rc = kvf_args_int(a, v, 0, 1000000, &n, &err)) == 0) cfg.max_redispatch = (uint32_t)n;
        } else if (!strcmp(a, "--max-msg-size")) {
            if ((rc = kvf_args_size(a, v, &sz, &err)) == 0) {
                if (sz < 1024 || sz > (1ull << 30)) {
                    fprintf(stderr, "kvf-coordinator: --max-msg-size must be between 1K and 1G\n");
                    return 2;
                }
                cfg.max_msg_size = (int64_t)sz;
            }
        } else if (!strcmp(a, "--log-level")) {
            if (kvf_log_parse_level(v, &level) < 0) {
                fprintf(stderr, "kvf-coordinator: --log-level: expected error, warn, info or debug\n");
                return 2;
            }
        } else {
            fprintf(stderr, "kvf-coordinator: unknown option %s\n", a);
            s_usage(stderr);
            return 2;
        }
        if (rc < 0) {
            fprintf(stderr, "kvf-coordinator: %s\n", err.msg);
            return 2;
        }
    }
    kvf_log_setup("coord", -1, level);
    // Our own handler (czmq's would also set a flag, but a second global is one too many).
    zsys_handler_set(NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    kvf_coord_t *c = kvf_coord_new(&cfg, &err);
    if (!c) {
        fprintf(stderr, "kvf-coordinator: %s\n", err.msg);
        return 1;
    }
    printf("front %s back %s\n", kvf_coord_front_endpoint(c), kvf_coord_back_endpoint(c));
    fflush(stdout);
    int rc = kvf_coord_run(c, &s_interrupted, &err);
    if (rc < 0) fprintf(stderr, "kvf-coordinator: %s\n", err.msg);
    kvf_coord_destroy(&c);
    return rc < 0 ? 1 : 0;
}
