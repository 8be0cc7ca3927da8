// common/error.h — status codes and an error record that carries a message.
//
// Functions return int (0 ok, -1 fail) or a kvf_status where the caller branches
// on the cause. Where a failure needs words for the user (a file name, a tensor
// name, a field), the function also takes an optional kvf_err_t* and fills it.
#ifndef KVF_ERROR_H
#define KVF_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KVF_OK = 0,
    KVF_E_INVAL,         // bad argument or bad input from a user
    KVF_E_NOMEM,         // host or device allocation failed
    KVF_E_NOMEM_BLOCKS,  // no free KV blocks for this request
    KVF_E_TOO_LONG,      // prompt or output longer than allowed
    KVF_E_IO,            // file or socket error
    KVF_E_FORMAT,        // malformed file or message
    KVF_E_PROTO,         // protocol violation (wrong type, version, sequence)
    KVF_E_UNSUPPORTED,   // valid but not supported (architecture, dtype)
    KVF_E_PEER_LOST,     // a worker, rank or client went away
    KVF_E_BUSY,          // queue full: try again later
    KVF_E_CANCELLED,     // cancelled by a client or operator
    KVF_E_NOT_FOUND,     // no such request, worker or tensor
    KVF_E_DEVICE,        // CUDA, cuBLAS or NCCL failure
    KVF_E_TIMEOUT,       // a peer did not answer in time
    KVF_E_DENIED,        // not allowed for this key/role
    KVF_E_INTERNAL,      // a bug: an invariant broke
    KVF_STATUS_COUNT
} kvf_status;

// The stable lower-case name of a status ("too_long"); "unknown" when out of range.
const char *kvf_status_name(kvf_status s);

// A status plus a human-readable message. Storage owned by the caller.
typedef struct {
    kvf_status code;
    char msg[512];
} kvf_err_t;

// Sets *err (when err is not NULL) and returns -1, so that callers can write
// `return kvf_err_set(err, KVF_E_FORMAT, "%s: bad header", path);`.
int kvf_err_set(kvf_err_t *err, kvf_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Clears *err (when not NULL) to KVF_OK and an empty message.
void kvf_err_clear(kvf_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
