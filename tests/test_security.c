// tests/test_security.c — CURVE with zauth on a real kvf-coordinator, a real
// kvf-worker (tiny-llama, cpu) and libkvf clients on loopback: allowed keys
// work end to end; an unknown key, a plain peer and a key of the wrong role
// get no reply at all; a client key may not DRAIN or SHUTDOWN (ERROR denied)
// and an operator key may; `kvfctl keygen` writes loadable zcert files; bad
// key flags stop the processes at start-up with a clear message.
#include <fcntl.h>
#include <sys/stat.h>

#include "client/libkvf.h"
#include "common/curve.h"
#include "test_coord_harness.h"
#include "test_util.h"

typedef struct {
    char root[256];
    char coord_pub[320], coord_sec[320];
    char worker_sec[320], client_sec[320], client2_sec[320], operator_sec[320], stranger_sec[320];
    char worker_dir[320], client_dir[320], operator_dir[320];
} keys_t;

static void s_keygen(const char *dir, const char *name, char *secret_out) {
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    kvf_err_t err;
    cr_assert_eq(kvf_curve_keygen(path, name, &err), 0, "%s", err.msg);
    if (secret_out) snprintf(secret_out, 320, "%s_secret", path);
}

// Public key file src copied into dir (what an operator does by hand).
static void s_allow(const char *dir, const char *src_dir, const char *name) {
    char from[320], to[320];
    snprintf(from, sizeof from, "%s/%s", src_dir, name);
    snprintf(to, sizeof to, "%s/%s", dir, name);
    size_t len = 0;
    char *text = kvf_test_slurp(from, &len);
    cr_assert_not_null(text);
    FILE *f = fopen(to, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(text, 1, len, f), len);
    fclose(f);
    free(text);
}

static void s_keys_make(keys_t *k) {
    if (!zmq_has("curve")) cr_skip_test("libzmq without CURVE");
    snprintf(k->root, sizeof k->root, "/tmp/kvf-sec-XXXXXX");
    cr_assert_not_null(mkdtemp(k->root));
    char priv[300];
    snprintf(priv, sizeof priv, "%s/private", k->root);
    snprintf(k->worker_dir, sizeof k->worker_dir, "%s/workers", k->root);
    snprintf(k->client_dir, sizeof k->client_dir, "%s/clients", k->root);
    snprintf(k->operator_dir, sizeof k->operator_dir, "%s/operators", k->root);
    cr_assert_eq(mkdir(priv, 0700), 0);
    cr_assert_eq(mkdir(k->worker_dir, 0755), 0);
    cr_assert_eq(mkdir(k->client_dir, 0755), 0);
    cr_assert_eq(mkdir(k->operator_dir, 0755), 0);
    s_keygen(priv, "coordinator", k->coord_sec);
    snprintf(k->coord_pub, sizeof k->coord_pub, "%s/coordinator", priv);
    s_keygen(priv, "w1", k->worker_sec);
    s_keygen(priv, "alice", k->client_sec);
    s_keygen(priv, "bob", k->client2_sec);
    s_keygen(priv, "root", k->operator_sec);
    s_keygen(priv, "mallory", k->stranger_sec);  // in no directory
    s_allow(k->worker_dir, priv, "w1");
    s_allow(k->client_dir, priv, "alice");
    s_allow(k->client_dir, priv, "bob");
    s_allow(k->operator_dir, priv, "root");
}

static void s_keys_remove(keys_t *k) {
    zdir_t *d = zdir_new(k->root, NULL);
    if (d) {
        zdir_remove(d, true);
        zdir_destroy(&d);
    }
}

// A raw DEALER with CURVE, key pair from secret (NULL: plain), to endpoint.
static zsock_t *s_raw_peer(const keys_t *k, const char *endpoint, const char *secret, const char *identity) {
    kvf_err_t err;
    if (!secret) return peer_new(endpoint, identity);
    zcert_t *cert = kvf_curve_load_secret(secret, &err);
    cr_assert_not_null(cert, "%s", err.msg);
    char server[KVF_CURVE_KEY_TXT];
    cr_assert_eq(kvf_curve_load_public(k->coord_pub, server, &err), 0, "%s", err.msg);
    kvf_zmq_curve_t curve = {cert, server, NULL};
    zsock_t *s = kvf_zmq_dealer_connect_curve(endpoint, identity, 0, &curve, &err);
    cr_assert_not_null(s, "%s", err.msg);
    zcert_destroy(&cert);
    return s;
}

static pid_t s_spawn(const char *const *argv, int quiet) {
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (quiet) {
            int fd = open("/dev/null", O_WRONLY);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

// Waits up to ms for pid; its exit status, or -1 (then it is killed).
static int s_reap(pid_t pid, int ms) {
    for (int t = 0; t <= ms; t += 10) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

// Runs argv to completion (within 10 s); its exit status, stderr into err_text.
static int s_run(const char *const *argv, char *err_text, size_t cap) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 2);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < cap && (r = read(fds[0], err_text + len, cap - 1 - len)) > 0) len += (size_t)r;
    err_text[len] = 0;
    close(fds[0]);
    return s_reap(pid, 10000);
}

static int s_worker_state(kvf_client_t *cl, const char *id) {
    kvf_cluster_status_t *st = NULL;
    kvf_err_t err;
    cr_assert_eq(kvf_client_status(cl, &st, &err), 0, "%s", err.msg);
    int state = -1;
    for (uint32_t i = 0; i < st->n_workers; i++)
        if (!strcmp(st->workers[i].worker_id, id)) state = (int)st->workers[i].load.state;
    kvf_cluster_status_destroy(&st);
    return state;
}

static pid_t s_start_worker(const keys_t *k, const coord_proc_t *p, const char *model) {
    return s_spawn((const char *const[]){KVF_BIN_DIR "/kvf-worker", "--model", model, "--backend", "cpu",
                                         "--coordinator", p->back, "--worker-id", "w1", "--memory-budget", "64M",
                                         "--threads", "1", "--curve-secret", k->worker_sec, "--coordinator-key",
                                         k->coord_pub, NULL},
                   1);
}

// One text prompt, n tokens (EOS ignored), collected to its DONE within 20 s.
static void s_generate(kvf_client_t *cl, uint32_t n) {
    kvf_err_t err;
    kvf_request_t req = {.text = "Once upon a time", .sampling = kvf_sampling_default()};
    req.sampling.max_new_tokens = (int32_t)n;
    req.sampling.ignore_eos = 1;
    uint64_t rid = 0;
    cr_assert_eq(kvf_client_submit(cl, NULL, &req, 1, &rid, NULL, &err), 0, "%s", err.msg);
    uint32_t got = 0;
    for (;;) {
        kvf_event_t ev = {0};
        cr_assert_eq(kvf_client_next(cl, 20000, &ev, &err), 0, "%s", err.msg);
        cr_assert_eq(ev.rid, rid);
        cr_assert_neq(ev.type, KVF_EVENT_ERROR, "%s", ev.message);
        if (ev.type == KVF_EVENT_TOKENS) got += ev.n_ids;
        int done = ev.type == KVF_EVENT_DONE;
        if (done) cr_assert_eq(ev.completion_tokens, n);
        kvf_event_clear(&ev);
        if (done) break;
    }
    cr_assert_eq(got, n);
}

Test(security, curve_cluster_allows_known_keys_and_refuses_the_rest, .timeout = 60) {
    char model[1024];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    struct stat sb;
    if (stat(KVF_BIN_DIR "/kvf-worker", &sb) != 0) cr_skip_test("kvf-worker is not built");
    keys_t k;
    s_keys_make(&k);
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--model", model, "--heartbeat-ms", "100", "--dead-after-ms", "2000",
                                          "--curve-secret", k.coord_sec, "--worker-keys", k.worker_dir,
                                          "--client-keys", k.client_dir, "--operator-keys", k.operator_dir, NULL});
    pid_t w = s_start_worker(&k, &p, model);
    kvf_err_t err;
    kvf_client_t *alice = kvf_client_new_curve(p.front, k.client_sec, k.coord_pub, &err);
    cr_assert_not_null(alice, "%s", err.msg);
    kvf_client_set_timeout(alice, 3000);
    int64_t deadline = zclock_mono() + 30000;
    while (s_worker_state(alice, "w1") != KVF_WSTATE_READY) {
        cr_assert_lt(zclock_mono(), deadline, "the CURVE worker did not register within 30 s");
        zclock_sleep(50);
    }

    // A client key on the back socket, under the real worker's identity: its
    // REGISTER is dropped, and it must not take over what is sent to "w1".
    zsock_t *client_back = s_raw_peer(&k, p.back, k.client_sec, "w1");
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_REGISTER);
    m.u.reg.worker_id = kvf_str("fake-w2");
    m.u.reg.group_id = kvf_str("fake-w2");
    m.u.reg.model = kvf_str("fake");
    m.u.reg.backend = kvf_str("cpu");
    m.u.reg.device = -1;
    m.u.reg.tp_size = 1;
    m.u.reg.total_blocks = m.u.reg.free_blocks = m.u.reg.plan.kv_blocks = 10;
    m.u.reg.plan.block_size = 16;
    m.u.reg.max_batch_size = 8;
    m.u.reg.vocab_size = 32000;
    peer_send(client_back, &m);
    zclock_sleep(200);

    // A full generation through the encrypted front and back.
    s_generate(alice, 8);

    // Refused: a key in no directory, a plain peer, a worker key on the front
    // (and the client key on the back above). None gets any reply, encrypted or not.
    zsock_t *stranger = s_raw_peer(&k, p.front, k.stranger_sec, NULL);
    zsock_t *plain = s_raw_peer(&k, p.front, NULL, NULL);
    zsock_t *worker_front = s_raw_peer(&k, p.front, k.worker_sec, NULL);
    kvf_msg_init(&m, KVF_MSG_STATUS);
    peer_send(stranger, &m);
    peer_send(plain, &m);
    peer_send(worker_front, &m);
    // Meanwhile the allowed client is served as before.
    cr_assert_eq(s_worker_state(alice, "w1"), KVF_WSTATE_READY);
    peer_expect_silence(stranger, 1500);
    peer_expect_silence(plain, 100);
    peer_expect_silence(worker_front, 100);
    peer_expect_silence(client_back, 100);
    cr_assert_eq(s_worker_state(alice, "fake-w2"), -1, "a client key registered a worker");
    // The same through libkvf: an unknown key times out.
    kvf_client_t *mallory = kvf_client_new_curve(p.front, k.stranger_sec, k.coord_pub, &err);
    cr_assert_not_null(mallory, "%s", err.msg);
    kvf_client_set_timeout(mallory, 300);
    kvf_cluster_status_t *st = NULL;
    cr_assert_eq(kvf_client_status(mallory, &st, &err), -1);
    cr_assert_eq(err.code, KVF_E_TIMEOUT, "%s", err.msg);
    kvf_client_destroy(&mallory);
    zsock_destroy(&stranger);
    zsock_destroy(&plain);
    zsock_destroy(&worker_front);
    zsock_destroy(&client_back);

    // A worker killed and started again gets its identity back (no handover on
    // CURVE sockets: the closed connection frees it) and serves again.
    kill(w, SIGKILL);
    waitpid(w, NULL, 0);
    w = s_start_worker(&k, &p, model);
    s_generate(alice, 5);

    // A client key may not DRAIN or SHUTDOWN; the cluster goes on.
    cr_assert_eq(kvf_client_drain(alice, "w1", &err), -1);
    cr_assert_eq(err.code, KVF_E_DENIED, "%s", err.msg);
    cr_assert_eq(kvf_client_shutdown(alice, &err), -1);
    cr_assert_eq(err.code, KVF_E_DENIED, "%s", err.msg);
    cr_assert(strstr(err.msg, "operator"), "%s", err.msg);
    cr_assert_eq(coord_wait(&p, 200), -1, "the coordinator stopped on a client's SHUTDOWN");
    cr_assert_eq(s_worker_state(alice, "w1"), KVF_WSTATE_READY, "a client's DRAIN was obeyed");

    // An operator key may: the coordinator and the worker exit cleanly.
    kvf_client_t *root = kvf_client_new_curve(p.front, k.operator_sec, k.coord_pub, &err);
    cr_assert_not_null(root, "%s", err.msg);
    cr_assert_eq(kvf_client_shutdown(root, &err), 0, "%s", err.msg);
    cr_assert_eq(coord_wait(&p, 5000), 0, "the coordinator did not exit 0 after an operator's SHUTDOWN");
    cr_assert_eq(s_reap(w, 10000), 0, "the worker did not exit 0 after SHUTDOWN");
    kvf_client_destroy(&root);
    kvf_client_destroy(&alice);
    s_keys_remove(&k);
}

// A protocol-level worker over CURVE (the harness's REGISTER, with a key).
static zsock_t *s_fake_worker(const keys_t *k, const coord_proc_t *p, const char *id) {
    zsock_t *s = s_raw_peer(k, p->back, k->worker_sec, id);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_REGISTER);
    m.u.reg.worker_id = kvf_str(id);
    m.u.reg.group_id = kvf_str(id);
    m.u.reg.model = kvf_str("fake");
    m.u.reg.backend = kvf_str("cpu");
    m.u.reg.device = -1;
    m.u.reg.tp_size = 1;
    m.u.reg.total_blocks = m.u.reg.free_blocks = m.u.reg.plan.kv_blocks = 100;
    m.u.reg.plan.block_size = 16;
    m.u.reg.plan.tokens_fit = 1600;
    m.u.reg.max_batch_size = 64;
    m.u.reg.vocab_size = 32000;
    peer_send(s, &m);
    kvf_msg_t w;
    peer_expect(s, KVF_MSG_WELCOME, &w);
    kvf_msg_clear(&w);
    return s;
}

static void s_expect_denied(zsock_t *s, const char *needle) {
    kvf_msg_t e;
    peer_expect(s, KVF_MSG_ERROR, &e);
    cr_assert_eq(e.u.error.rid, 0);
    cr_assert_eq(e.u.error.code, KVF_E_DENIED, "%s: %s", kvf_status_name((kvf_status)e.u.error.code),
                 e.u.error.message.ptr);
    cr_assert(strstr(e.u.error.message.ptr, needle), "%s", e.u.error.message.ptr);
    kvf_msg_clear(&e);
}

Test(security, a_batch_is_its_submitters_and_the_operators, .timeout = 30) {
    keys_t k;
    s_keys_make(&k);
    coord_proc_t p;
    coord_start(&p, (const char *const[]){"--dead-after-ms", "20000", "--curve-secret", k.coord_sec, "--worker-keys",
                                          k.worker_dir, "--client-keys", k.client_dir, "--operator-keys",
                                          k.operator_dir, NULL});
    zsock_t *w = s_fake_worker(&k, &p, "fw");
    zsock_t *alice = s_raw_peer(&k, p.front, k.client_sec, NULL);
    uint64_t rids[2];
    client_submit(alice, "alices", 2, 4, 8, rids);
    kvf_msg_t a;
    for (int i = 0; i < 2; i++) {
        peer_expect(w, KVF_MSG_ASSIGN, &a);
        kvf_msg_clear(&a);
    }
    // Another client key may neither cancel nor attach to it, by batch or by rid.
    zsock_t *bob = s_raw_peer(&k, p.front, k.client2_sec, NULL);
    kvf_msg_t m;
    kvf_msg_init(&m, KVF_MSG_CANCEL);
    m.u.cancel.batch_id = kvf_str("alices");
    peer_send(bob, &m);
    s_expect_denied(bob, "another key");
    kvf_msg_init(&m, KVF_MSG_CANCEL);
    m.u.cancel.rid = rids[0];
    peer_send(bob, &m);
    s_expect_denied(bob, "another key");
    kvf_msg_init(&m, KVF_MSG_ATTACH);
    m.u.attach.batch_id = kvf_str("alices");
    peer_send(bob, &m);
    s_expect_denied(bob, "another key");
    peer_expect_silence(w, 100);  // nothing was cancelled at the worker
    // The same key on a new connection may attach (a restarted client).
    zsock_t *alice2 = s_raw_peer(&k, p.front, k.client_sec, NULL);
    peer_send(alice2, &m);
    kvf_msg_t ack;
    peer_expect(alice2, KVF_MSG_ACK, &ack);
    cr_assert_eq(ack.u.ack.n_rids, 2);
    kvf_msg_clear(&ack);
    // An operator may cancel it: the worker is told, the owner sees both end.
    zsock_t *root = s_raw_peer(&k, p.front, k.operator_sec, NULL);
    kvf_msg_init(&m, KVF_MSG_CANCEL);
    m.u.cancel.batch_id = kvf_str("alices");
    peer_send(root, &m);
    kvf_msg_t ok;
    peer_expect(root, KVF_MSG_OK, &ok);
    kvf_msg_clear(&ok);
    for (int i = 0; i < 2; i++) {
        kvf_msg_t c;
        peer_expect(w, KVF_MSG_CANCEL, &c);
        kvf_msg_clear(&c);
        kvf_msg_t d;
        peer_expect(alice2, KVF_MSG_DONE, &d);
        cr_assert_eq(d.u.done.finish_reason, KVF_FINISH_CANCELLED);
        kvf_msg_clear(&d);
    }
    // kvfctl: keys from the environment, or from its flags.
    char text[4096];
    setenv("KVF_CURVE_SECRET", k.client_sec, 1);
    setenv("KVF_COORDINATOR_KEY", k.coord_pub, 1);
    int rc = s_run((const char *const[]){KVF_BIN_DIR "/kvfctl", "--coordinator", p.front, "--timeout", "3000",
                                         "status", NULL},
                   text, sizeof text);
    cr_assert_eq(rc, 0, "kvfctl status with KVF_CURVE_SECRET: %s", text);
    rc = s_run((const char *const[]){KVF_BIN_DIR "/kvfctl", "--coordinator", p.front, "--curve-secret",
                                     k.client2_sec, "shutdown", NULL},
               text, sizeof text);
    cr_assert_eq(rc, 1, "%s", text);
    cr_assert(strstr(text, "denied"), "%s", text);
    unsetenv("KVF_CURVE_SECRET");
    unsetenv("KVF_COORDINATOR_KEY");
    zsock_destroy(&root);
    zsock_destroy(&alice2);
    zsock_destroy(&bob);
    zsock_destroy(&alice);
    zsock_destroy(&w);
    cr_assert_eq(coord_stop(&p), 0);
    s_keys_remove(&k);
}

Test(security, kvfctl_keygen_writes_a_loadable_pair, .timeout = 30) {
    if (!zmq_has("curve")) cr_skip_test("libzmq without CURVE");
    char dir[] = "/tmp/kvf-keygen-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[300], secret[320], text[2048];
    snprintf(path, sizeof path, "%s/node7", dir);
    snprintf(secret, sizeof secret, "%s_secret", path);
    cr_assert_eq(s_run((const char *const[]){KVF_BIN_DIR "/kvfctl", "keygen", path, NULL}, text, sizeof text), 0,
                 "%s", text);
    zcert_t *pub = zcert_load(path);
    zcert_t *sec = zcert_load(secret);
    cr_assert_not_null(pub);
    cr_assert_not_null(sec);
    cr_assert_str_eq(zcert_public_txt(pub), zcert_public_txt(sec));
    cr_assert_str_neq(zcert_public_txt(sec), "0000000000000000000000000000000000000000");
    cr_assert_str_neq(zcert_secret_txt(sec), "0000000000000000000000000000000000000000");
    cr_assert_str_eq(zcert_meta(sec, "name"), "node7");
    zcert_destroy(&pub);
    zcert_destroy(&sec);
    // The public file alone carries no secret; the secret file is private.
    char pub_only[320];
    snprintf(pub_only, sizeof pub_only, "%s/copy", dir);
    FILE *f = fopen(pub_only, "wb");
    size_t len = 0;
    char *body = kvf_test_slurp(path, &len);
    cr_assert_not_null(body);
    fwrite(body, 1, len, f);
    fclose(f);
    free(body);
    zcert_t *copy = zcert_load(pub_only);
    cr_assert_not_null(copy);
    cr_assert_str_eq(zcert_secret_txt(copy), "0000000000000000000000000000000000000000");
    zcert_destroy(&copy);
    struct stat sb;
    cr_assert_eq(stat(secret, &sb), 0);
    cr_assert_eq(sb.st_mode & 077, 0, "secret file mode %o", (unsigned)(sb.st_mode & 0777));
    // Never overwrites a key.
    cr_assert_eq(s_run((const char *const[]){KVF_BIN_DIR "/kvfctl", "keygen", path, NULL}, text, sizeof text), 1);
    cr_assert(strstr(text, "already exists"), "%s", text);
    zdir_t *d = zdir_new(dir, NULL);
    zdir_remove(d, true);
    zdir_destroy(&d);
}

Test(security, bad_key_flags_fail_at_start_up, .timeout = 30) {
    keys_t k;
    s_keys_make(&k);
    char text[4096];
    // A public key file (with no NAME_secret beside it) where the secret one belongs.
    char pub_only[400];
    snprintf(pub_only, sizeof pub_only, "%s/alice", k.client_dir);
    int rc = s_run((const char *const[]){KVF_BIN_DIR "/kvf-coordinator", "--front", "tcp://127.0.0.1:*", "--back",
                                         "tcp://127.0.0.1:*", "--curve-secret", pub_only, "--client-keys",
                                         k.client_dir, NULL},
                   text, sizeof text);
    cr_assert_eq(rc, 1, "%s", text);
    cr_assert(strstr(text, "no secret key"), "%s", text);
    // Allowed keys without CURVE would be a silent no-op: refused.
    rc = s_run((const char *const[]){KVF_BIN_DIR "/kvf-coordinator", "--front", "tcp://127.0.0.1:*", "--back",
                                     "tcp://127.0.0.1:*", "--client-keys", k.client_dir, NULL},
               text, sizeof text);
    cr_assert_eq(rc, 1, "%s", text);
    cr_assert(strstr(text, "need --curve-secret"), "%s", text);
    // A file in an allowed-key directory that is not a key.
    char junk[400];
    snprintf(junk, sizeof junk, "%s/notes.txt", k.client_dir);
    FILE *f = fopen(junk, "w");
    fputs("not a key\n", f);
    fclose(f);
    rc = s_run((const char *const[]){KVF_BIN_DIR "/kvf-coordinator", "--front", "tcp://127.0.0.1:*", "--back",
                                     "tcp://127.0.0.1:*", "--curve-secret", k.coord_sec, "--client-keys",
                                     k.client_dir, NULL},
               text, sizeof text);
    cr_assert_eq(rc, 1, "%s", text);
    cr_assert(strstr(text, "notes.txt"), "%s", text);
    // A worker with half the key flags, or a missing key file: refused before the model loads.
    struct stat sb;
    if (stat(KVF_BIN_DIR "/kvf-worker", &sb) == 0) {
        rc = s_run((const char *const[]){KVF_BIN_DIR "/kvf-worker", "--model", "/nonexistent", "--backend", "cpu",
                                         "--coordinator", "tcp://127.0.0.1:1", "--curve-secret", k.worker_sec, NULL},
                   text, sizeof text);
        cr_assert_eq(rc, 1, "%s", text);
        cr_assert(strstr(text, "go together"), "%s", text);
        rc = s_run((const char *const[]){KVF_BIN_DIR "/kvf-worker", "--model", "/nonexistent", "--backend", "cpu",
                                         "--coordinator", "tcp://127.0.0.1:1", "--curve-secret", "/nonexistent/k",
                                         "--coordinator-key", k.coord_pub, NULL},
                   text, sizeof text);
        cr_assert_eq(rc, 1, "%s", text);
        cr_assert(strstr(text, "/nonexistent/k"), "%s", text);
    }
    // kvfctl with a key that does not exist: a clear message, no hang.
    rc = s_run((const char *const[]){KVF_BIN_DIR "/kvfctl", "--coordinator", "tcp://127.0.0.1:1", "--curve-secret",
                                     "/nonexistent/k", "--coordinator-key", k.coord_pub, "status", NULL},
               text, sizeof text);
    cr_assert_neq(rc, 0, "%s", text);
    cr_assert(strstr(text, "/nonexistent/k"), "%s", text);
    s_keys_remove(&k);
}

// ---------------------------------------------------------------- deploy/kvf-node --curve-dir

#include <netinet/in.h>
#include <sys/socket.h>

static int s_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

Test(security, kvf_node_curve_dir_keys_every_process, .timeout = 90) {
    if (!zmq_has("curve")) cr_skip_test("libzmq without CURVE");
    char model[1024];
    KVF_FIXTURE_PATH(model, "tiny-llama");
    struct stat sb;
    if (stat(KVF_BIN_DIR "/kvf-worker", &sb) != 0) cr_skip_test("kvf-worker is not built");
    char dir[] = "/tmp/kvf-node-sec-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    int fp = s_free_port(), bp;
    do bp = s_free_port();
    while (bp == fp);
    // Each step exits with its own status; the node is stopped whatever happens.
    char script[4096];
    snprintf(script, sizeof script,
             "N='%s/deploy/kvf-node'; B='%s'; D='%s'\n"
             "trap '\"$N\" stop --run-dir \"$D/run\" --timeout 10 >/dev/null 2>&1' EXIT\n"
             "\"$N\" keygen --curve-dir \"$D/keys\" >/dev/null || exit 10\n"
             "\"$N\" keygen --curve-dir \"$D/keys\" >/dev/null 2>&1 && exit 11\n"
             "\"$N\" start --model '%s' --backend cpu --workers 1 --front-port %d --back-port %d --run-dir \"$D/run\" "
             "--bin-dir \"$B\" --timeout 60 --curve-dir \"$D/keys\" --threads 1 --memory-budget 64M >/dev/null || exit 12\n"
             "\"$N\" status --run-dir \"$D/run\" --bin-dir \"$B\" | grep -q ' ready ' || exit 13\n"
             "\"$B/kvfctl\" --coordinator tcp://127.0.0.1:%d --timeout 500 status >/dev/null 2>&1 && exit 14\n"
             "( . \"$D/run/node.env\"; export KVF_CURVE_SECRET KVF_COORDINATOR_KEY;\n"
             "  \"$B/kvfctl\" --coordinator \"$KVF_COORDINATOR\" generate 'Once upon' --max-tokens 3 --json ) "
             "| grep -q '\"completion_tokens\":3' || exit 15\n"
             "exit 0\n",
             KVF_SOURCE_DIR, KVF_BIN_DIR, dir, model, fp, bp, fp);
    char text[8192];
    int rc = s_run((const char *const[]){"/bin/bash", "-c", script, NULL}, text, sizeof text);
    cr_assert_eq(rc, 0, "step %d failed (10 keygen, 11 keygen overwrote, 12 start, 13 status, 14 plain kvfctl "
                        "served, 15 generate with the node's operator key): %s",
                 rc, text);
    zdir_t *d = zdir_new(dir, NULL);
    if (d) {
        zdir_remove(d, true);
        zdir_destroy(&d);
    }
}
