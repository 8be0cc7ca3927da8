// tests/test_common.c — logging, errors, argument parsing, zmq helpers.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/error.h"
#include "common/log.h"
#include "common/zmqutil.h"

Test(args, sizes_with_suffixes) {
    uint64_t v;
    kvf_err_t err;
    cr_assert_eq(kvf_args_size("--memory-budget", "512", &v, &err), 0);
    cr_assert_eq(v, 512);
    cr_assert_eq(kvf_args_size("--memory-budget", "4K", &v, &err), 0);
    cr_assert_eq(v, 4096);
    cr_assert_eq(kvf_args_size("--memory-budget", "80G", &v, &err), 0);
    cr_assert_eq(v, 80ull << 30);
    cr_assert_eq(kvf_args_size("--memory-budget", "3MiB", &v, &err), 0);
    cr_assert_eq(v, 3ull << 20);
    cr_assert_eq(kvf_args_size("--memory-budget", "12X", &v, &err), -1);
    cr_assert(strstr(err.msg, "--memory-budget"));
    cr_assert_eq(kvf_args_size("--memory-budget", "-1", &v, &err), -1);
    cr_assert_eq(kvf_args_size("--memory-budget", "99999999999T", &v, &err), -1);
    cr_assert_eq(kvf_args_size("--memory-budget", "", &v, &err), -1);
}

Test(args, ints_and_doubles) {
    int64_t i;
    double d;
    kvf_err_t err;
    cr_assert_eq(kvf_args_int("--n", "42", 0, 100, &i, &err), 0);
    cr_assert_eq(i, 42);
    cr_assert_eq(kvf_args_int("--n", "101", 0, 100, &i, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(kvf_args_int("--n", "4x", 0, 100, &i, &err), -1);
    cr_assert_eq(kvf_args_double("--t", "0.7", 0, 2, &d, &err), 0);
    cr_assert_float_eq(d, 0.7, 1e-12);
    cr_assert_eq(kvf_args_double("--t", "nan", 0, 2, &d, &err), -1);
    cr_assert_eq(kvf_args_double("--t", "-0.5", 0, 2, &d, &err), -1);
}

Test(args, id_lists) {
    int32_t *ids;
    size_t n;
    kvf_err_t err;
    cr_assert_eq(kvf_args_ids("--prompt-ids", "1, 2,3", &ids, &n, &err), 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[2], 3);
    free(ids);
    cr_assert_eq(kvf_args_ids("--prompt-ids", "", &ids, &n, &err), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(kvf_args_ids("--prompt-ids", "1,,2", &ids, &n, &err), -1);
    cr_assert_eq(kvf_args_ids("--prompt-ids", "1,-2", &ids, &n, &err), -1);
    cr_assert_eq(kvf_args_ids("--prompt-ids", "99999999999", &ids, &n, &err), -1);
    cr_assert(strstr(err.msg, "--prompt-ids"));
}

Test(error, names_and_messages) {
    cr_assert_str_eq(kvf_status_name(KVF_E_TOO_LONG), "too_long");
    cr_assert_str_eq(kvf_status_name((kvf_status)999), "unknown");
    kvf_err_t err;
    cr_assert_eq(kvf_err_set(&err, KVF_E_FORMAT, "%s: bad %d", "x.safetensors", 7), -1);
    cr_assert_eq(err.code, KVF_E_FORMAT);
    cr_assert_str_eq(err.msg, "x.safetensors: bad 7");
    cr_assert_eq(kvf_err_set(NULL, KVF_E_FORMAT, "ignored"), -1);
    kvf_err_clear(&err);
    cr_assert_eq(err.code, KVF_OK);
}

Test(log, levels) {
    kvf_log_level_t l;
    cr_assert_eq(kvf_log_parse_level("debug", &l), 0);
    cr_assert_eq(l, KVF_LOG_DEBUG);
    cr_assert_eq(kvf_log_parse_level("loud", &l), -1);
    unsetenv("KVF_LOG_LEVEL");
    kvf_log_setup("test", 3, KVF_LOG_WARN);
    cr_assert(kvf_log_enabled(KVF_LOG_ERROR));
    cr_assert(!kvf_log_enabled(KVF_LOG_INFO));
}

Test(zmq, router_drops_oversized_and_reports_lost_peer) {
    kvf_err_t err;
    zsock_t *router = kvf_zmq_router_bind("tcp://127.0.0.1:*", 1024, &err);
    cr_assert_not_null(router, "%s", err.msg);
    const char *ep = zsock_last_endpoint(router);
    zsock_t *dealer = kvf_zmq_dealer_connect(ep, "d1", 0, &err);
    cr_assert_not_null(dealer, "%s", err.msg);
    // An oversized message makes libzmq drop that peer's connection; another
    // peer is still served.
    char *big = calloc(1, 4096);
    zsock_send(dealer, "b", big, (size_t)4096);
    free(big);
    zclock_sleep(100);
    zsock_t *good = kvf_zmq_dealer_connect(ep, "d2", 0, &err);
    cr_assert_not_null(good, "%s", err.msg);
    zsock_send(good, "s", "hello");
    zsock_set_rcvtimeo(router, 3000);
    char *id = NULL, *body = NULL;
    cr_assert_eq(zsock_recv(router, "ss", &id, &body), 0);
    cr_assert_str_eq(id, "d2");
    cr_assert_str_eq(body, "hello");
    zstr_free(&id);
    zstr_free(&body);
    // A send to an unknown identity fails with PEER_LOST instead of vanishing.
    const void *frames[2] = {"nobody", "x"};
    size_t lens[2] = {6, 1};
    cr_assert_eq(kvf_zmq_send(router, frames, lens, 2, &err), -1);
    cr_assert_eq(err.code, KVF_E_PEER_LOST);
    zsock_destroy(&good);
    zsock_destroy(&dealer);
    zsock_destroy(&router);
}
