// coordinator/auth.c — see auth.h.
#include "coordinator/auth.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/curve.h"
#include "common/log.h"

struct kvf_auth_s {
    zcert_t *cert;       // the coordinator's key pair
    zhashx_t *roles;     // public key (Z85) -> kvf_role bits, as a pointer-sized integer
    zactor_t *zauth;     // owns the zcertstore of every allowed key
    uint64_t dropped;    // messages dropped since the last log line
    int64_t last_log_ms;
};

// Adds every key file of dir with this role. Returns the number added, or -1.
static int s_load_dir(kvf_auth_t *a, const char *dir, uint32_t role, const char *flag, kvf_err_t *err) {
    DIR *d = opendir(dir);
    if (!d) return kvf_err_set(err, KVF_E_IO, "%s %s: %s", flag, dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
            kvf_log(KVF_LOG_WARN, "%s: %s is not a file: skipped", flag, path);
            continue;
        }
        size_t len = strlen(e->d_name);
        if (len > 7 && strcmp(e->d_name + len - 7, "_secret") == 0) {
            kvf_log(KVF_LOG_WARN, "%s: %s is a secret key file: only public ones belong here (its public key is used)",
                    flag, path);
        }
        char z85[KVF_CURVE_KEY_TXT];
        kvf_err_t e2;
        if (kvf_curve_load_public(path, z85, &e2) < 0) {
            closedir(d);
            return kvf_err_set(err, KVF_E_FORMAT, "%s: %s", flag, e2.msg);
        }
        uintptr_t bits = (uintptr_t)zhashx_lookup(a->roles, z85);
        zhashx_update(a->roles, z85, (void *)(bits | role));
        n++;
    }
    closedir(d);
    if (n == 0) kvf_log(KVF_LOG_WARN, "%s %s holds no keys", flag, dir);
    return n;
}

kvf_auth_t *kvf_auth_new(const char *secret_path, const char *worker_dir, const char *client_dir,
                         const char *operator_dir, kvf_err_t *err) {
    if (!zmq_has("curve")) {
        kvf_err_set(err, KVF_E_UNSUPPORTED, "--curve-secret: this libzmq was built without CURVE");
        return NULL;
    }
    kvf_auth_t *a = kvf_xcalloc(1, sizeof *a);
    a->roles = zhashx_new();
    a->cert = kvf_curve_load_secret(secret_path, err);
    if (!a->cert) goto fail;
    const char *dirs[3] = {worker_dir, client_dir, operator_dir};
    const uint32_t role[3] = {KVF_ROLE_WORKER, KVF_ROLE_CLIENT, KVF_ROLE_OPERATOR};
    const char *flag[3] = {"--worker-keys", "--client-keys", "--operator-keys"};
    int counts[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        if (!dirs[i]) continue;
        counts[i] = s_load_dir(a, dirs[i], role[i], flag[i], err);
        if (counts[i] < 0) goto fail;
    }
    if (zhashx_size(a->roles) == 0) {
        kvf_err_set(err, KVF_E_INVAL,
                    "--curve-secret without any allowed key: give --worker-keys, --client-keys or --operator-keys");
        goto fail;
    }
    // zauth gets fresh certs that carry only the public key and the role: what a
    // key file holds beyond that (metadata) never reaches the ZAP reply.
    zcertstore_t *store = zcertstore_new(NULL);
    for (void *item = zhashx_first(a->roles); item; item = zhashx_next(a->roles)) {
        const char *key = zhashx_cursor(a->roles);
        uint8_t pub[32], zero[32] = {0};
        if (!zmq_z85_decode(pub, key)) continue;
        zcert_t *c = zcert_new_from(pub, zero);
        zcertstore_insert(store, &c);
    }
    a->zauth = zactor_new(zauth, store);  // takes the store
    if (!a->zauth) {
        kvf_err_set(err, KVF_E_INTERNAL, "cannot start the zauth actor");
        goto fail;
    }
    kvf_log(KVF_LOG_INFO, "CURVE on: %d worker, %d client, %d operator keys allowed", counts[0], counts[1], counts[2]);
    return a;
fail:
    kvf_auth_destroy(&a);
    return NULL;
}

void kvf_auth_destroy(kvf_auth_t **self_p) {
    if (!self_p || !*self_p) return;
    kvf_auth_t *a = *self_p;
    zactor_destroy(&a->zauth);
    zhashx_destroy(&a->roles);
    zcert_destroy(&a->cert);
    free(a);
    *self_p = NULL;
}

zcert_t *kvf_auth_cert(const kvf_auth_t *a) { return a->cert; }

uint32_t kvf_auth_roles(const kvf_auth_t *a, const char *user_id) {
    if (!a || !user_id) return 0;
    return (uint32_t)(uintptr_t)zhashx_lookup(a->roles, user_id);
}

int kvf_auth_admit(kvf_auth_t *a, const char *user_id, int front, uint32_t *roles) {
    uint32_t r = kvf_auth_roles(a, user_id);
    *roles = r;
    uint32_t want = front ? (KVF_ROLE_CLIENT | KVF_ROLE_OPERATOR) : KVF_ROLE_WORKER;
    if (r & want) return 1;
    a->dropped++;
    int64_t now = zclock_mono();
    if (now - a->last_log_ms >= 1000) {
        kvf_log(KVF_LOG_WARN, "%s socket: %" PRIu64 " message(s) dropped from key %.40s, which is %s",
                front ? "front" : "back", a->dropped, user_id ? user_id : "(none)",
                r ? (front ? "a worker key (clients and operators only here)" : "not a worker key")
                  : "not allowed");
        a->dropped = 0;
        a->last_log_ms = now;
    }
    return 0;
}
