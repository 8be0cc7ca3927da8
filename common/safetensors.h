// common/safetensors.h — read-only access to Hugging Face safetensors files.
//
// Files are mmapped; the header length and JSON are validated against the file
// size before anything is trusted. A model is one file (model.safetensors) or
// several listed by model.safetensors.index.json.
#ifndef KVF_SAFETENSORS_H
#define KVF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum {
    KVF_DT_F32 = 0,
    KVF_DT_F16 = 1,
    KVF_DT_BF16 = 2,
} kvf_dtype;

#define KVF_ST_MAX_DIMS 4

typedef struct {
    const char *name;         // owned by the set
    kvf_dtype dtype;
    int32_t n_dims;
    int64_t shape[KVF_ST_MAX_DIMS];
    const void *data;         // into the mmapped file; n_bytes long
    size_t n_bytes;
    const char *file;         // the file that holds it (owned by the set)
} kvf_tensor_t;

typedef struct kvf_safetensors_s kvf_safetensors_t;

// Opens every safetensors file of a model directory (single or index-sharded).
// Returns a new set owned by the caller, or NULL with err set: a missing file,
// a truncated file, a header that is not JSON, offsets outside the file or
// overlapping, an unsupported dtype — each names the file and, where it can,
// the tensor.
kvf_safetensors_t *kvf_safetensors_open_dir(const char *dir, kvf_err_t *err);

// Opens one file.
kvf_safetensors_t *kvf_safetensors_open_file(const char *path, kvf_err_t *err);

// Unmaps everything and frees the set; accepts NULL; nulls *self_p.
void kvf_safetensors_destroy(kvf_safetensors_t **self_p);

// The tensor of this name, or NULL.
const kvf_tensor_t *kvf_safetensors_find(const kvf_safetensors_t *st, const char *name);

// Number of tensors and the i-th one (for listing).
size_t kvf_safetensors_count(const kvf_safetensors_t *st);
const kvf_tensor_t *kvf_safetensors_at(const kvf_safetensors_t *st, size_t i);

// Looks up name and checks that its shape is exactly shape[0..n_dims-1];
// returns it, or NULL with err naming the tensor (missing, or its shape vs the
// expected one).
const kvf_tensor_t *kvf_safetensors_expect(const kvf_safetensors_t *st, const char *name, int n_dims,
                                           const int64_t *shape, kvf_err_t *err);

// Converts a tensor's elements to float32 into out (n elements = product of shape).
void kvf_tensor_to_f32(const kvf_tensor_t *t, float *out);

// Element conversions.
float kvf_bf16_to_f32(uint16_t h);
float kvf_f16_to_f32(uint16_t h);
uint16_t kvf_f32_to_bf16(float f);   // round to nearest even
uint16_t kvf_f32_to_f16(float f);    // round to nearest even

// Writes tensors to a new single safetensors file (used by kvf-mkmodel and tests).
// names[i], dtypes[i], shapes[i] (n_dims[i] dims), data[i] (raw bytes in that dtype).
int kvf_safetensors_write(const char *path, int n, const char *const *names, const kvf_dtype *dtypes,
                          const int *n_dims, const int64_t (*shapes)[KVF_ST_MAX_DIMS],
                          const void *const *data, kvf_err_t *err);

#endif
