// common/curve.c — see curve.h.
#include "curve.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static const char s_zero_key[] = "0000000000000000000000000000000000000000";

// zcert_load returns NULL without saying why; find out for the message.
static int s_readable(const char *path, kvf_err_t *err) {
    if (access(path, R_OK) == 0) return 0;
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", path);
    if (access(secret, R_OK) == 0) return 0;
    return kvf_err_set(err, KVF_E_IO, "cannot read key file %s: %s", path, strerror(errno));
}

zcert_t *kvf_curve_load_secret(const char *path, kvf_err_t *err) {
    if (!path || !*path) {
        kvf_err_set(err, KVF_E_INVAL, "no key file given");
        return NULL;
    }
    if (s_readable(path, err) < 0) return NULL;
    zcert_t *cert = zcert_load(path);
    if (!cert) {
        kvf_err_set(err, KVF_E_FORMAT, "%s is not a CURVE key file (make one with kvfctl keygen)", path);
        return NULL;
    }
    if (strcmp(zcert_secret_txt(cert), s_zero_key) == 0) {
        zcert_destroy(&cert);
        kvf_err_set(err, KVF_E_INVAL, "%s holds no secret key: give the NAME_secret file of the pair", path);
        return NULL;
    }
    // zcert read NAME_secret when it exists beside NAME: that is the file to check.
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", path);
    struct stat sb;
    const char *file = stat(secret, &sb) == 0 ? secret : path;
    if (stat(file, &sb) == 0 && (sb.st_mode & 077))
        kvf_log(KVF_LOG_WARN, "secret key file %s is readable by others (mode %03o): chmod 600 it", file,
                (unsigned)(sb.st_mode & 0777));
    return cert;
}

int kvf_curve_load_public(const char *path, char z85[KVF_CURVE_KEY_TXT], kvf_err_t *err) {
    if (!path || !*path) return kvf_err_set(err, KVF_E_INVAL, "no key file given");
    if (s_readable(path, err) < 0) return -1;
    zcert_t *cert = zcert_load(path);
    if (!cert) return kvf_err_set(err, KVF_E_FORMAT, "%s is not a CURVE key file (make one with kvfctl keygen)", path);
    snprintf(z85, KVF_CURVE_KEY_TXT, "%s", zcert_public_txt(cert));
    zcert_destroy(&cert);
    return 0;
}

int kvf_curve_keygen(const char *path, const char *name, kvf_err_t *err) {
    if (!path || !*path) return kvf_err_set(err, KVF_E_INVAL, "keygen needs DIR/NAME");
    char secret[4096];
    if (snprintf(secret, sizeof secret, "%s_secret", path) >= (int)sizeof secret)
        return kvf_err_set(err, KVF_E_INVAL, "key path too long");
    struct stat sb;
    if (stat(path, &sb) == 0 || stat(secret, &sb) == 0)
        return kvf_err_set(err, KVF_E_INVAL, "%s or %s already exists: not overwriting a key", path, secret);
    if (!zmq_has("curve")) return kvf_err_set(err, KVF_E_UNSUPPORTED, "this libzmq was built without CURVE");
    zcert_t *cert = zcert_new();
    if (!cert) return kvf_err_set(err, KVF_E_INTERNAL, "cannot make a key pair");
    if (name && *name) zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "kvfctl keygen");
    // Secret first, private from the start: the umask keeps it 0600 as it is written.
    mode_t old = umask(077);
    int rc = zcert_save_secret(cert, secret);
    umask(old);
    if (rc == 0) rc = zcert_save_public(cert, path);
    zcert_destroy(&cert);
    if (rc != 0) {
        int e = errno;
        unlink(secret);
        return kvf_err_set(err, KVF_E_IO, "cannot write %s: %s", path, strerror(e));
    }
    chmod(secret, 0600);
    return 0;
}
