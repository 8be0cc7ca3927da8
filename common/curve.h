// common/curve.h — CURVE key files (czmq zcert format) for every kvfleet process.
//
// A key pair is two files written by zcert_save: NAME holds the public key
// (and may be copied anywhere), NAME_secret holds both keys and stays with its
// owner. `kvfctl keygen DIR/NAME` makes them; deploy/SECURITY.md says where
// each goes. Nothing here encrypts or authenticates by itself: libzmq does,
// once the keys are set on a socket (common/zmqutil.h), and the coordinator's
// zauth actor checks client keys (coordinator/auth.h).
#ifndef KVF_CURVE_H
#define KVF_CURVE_H

#include <czmq.h>

#include "error.h"

#define KVF_CURVE_KEY_TXT 41  // a Z85 key (40 characters) and its NUL

// Loads our own key pair from a secret file (NAME_secret; given NAME, zcert
// reads NAME_secret beside it). Returns a new cert owned by the caller
// (zcert_destroy), or NULL with err set: missing or unreadable file, not a
// zcert file, or a public-only file (no secret key).
zcert_t *kvf_curve_load_secret(const char *path, kvf_err_t *err);

// Reads the public key of a cert file (NAME or NAME_secret) into z85 (40
// characters and a NUL). 0, or -1 with err set.
int kvf_curve_load_public(const char *path, char z85[KVF_CURVE_KEY_TXT], kvf_err_t *err);

// Makes a new key pair and writes path (public) and path_secret (mode 0600);
// name, when not NULL, is stored as the cert's "name" metadata. Refuses to
// overwrite existing files. 0, or -1 with err set.
int kvf_curve_keygen(const char *path, const char *name, kvf_err_t *err);

#endif
