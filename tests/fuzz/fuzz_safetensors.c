// tests/fuzz/fuzz_safetensors.c — libFuzzer target over the safetensors parser
// (kvf_safetensors_open_file on the input, held in a memfd).
//
// Checks beyond the sanitizers, from safetensors.h: a refusal says why; an
// accepted file's tensors have a supported dtype, at most KVF_ST_MAX_DIMS
// non-negative dims, n_bytes = elements x dtype size, data inside the file's
// data area and not overlapping; find() returns each listed tensor by name; and
// every byte of every tensor is readable (converted to float32).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/safetensors.h"
#include "fuzz_memfd.h"

static void s_fail(const char *what, const kvf_err_t *err) {
    fprintf(stderr, "fuzz_safetensors: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    abort();
}

static size_t s_dtype_size(kvf_dtype dt) { return dt == KVF_DT_F32 ? 4 : 2; }

static int s_cmp_ptr(const void *a, const void *b) {
    const kvf_tensor_t *x = *(const kvf_tensor_t *const *)a, *y = *(const kvf_tensor_t *const *)b;
    uintptr_t p = (uintptr_t)x->data, q = (uintptr_t)y->data;
    if (p != q) return p < q ? -1 : 1;
    return x->n_bytes < y->n_bytes ? -1 : x->n_bytes > y->n_bytes;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    char path[64];
    kvf_fuzz_memfd_put(data, len, path, sizeof path);
    kvf_err_t err;
    kvf_safetensors_t *st = kvf_safetensors_open_file(path, &err);
    if (!st) {
        if (err.msg[0] == '\0') s_fail("open failed without a message", NULL);
        return 0;
    }
    // An accepted file has an 8-byte length and that much header before the data.
    if (len < 8) s_fail("accepted a file shorter than 8 bytes", NULL);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    if (hlen > len - 8) s_fail("accepted a header longer than the file", NULL);
    size_t data_size = len - 8 - (size_t)hlen;

    size_t n = kvf_safetensors_count(st);
    const kvf_tensor_t **sorted = calloc(n ? n : 1, sizeof *sorted);
    if (!sorted) abort();
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const kvf_tensor_t *t = kvf_safetensors_at(st, i);
        if (!t || !t->name || !t->file) s_fail("tensor without a name or file", NULL);
        if (t->dtype != KVF_DT_F32 && t->dtype != KVF_DT_F16 && t->dtype != KVF_DT_BF16)
            s_fail("tensor with an unsupported dtype", NULL);
        if (t->n_dims < 0 || t->n_dims > KVF_ST_MAX_DIMS) s_fail("tensor with too many dims", NULL);
        uint64_t numel = 1;
        for (int32_t d = 0; d < t->n_dims; d++) {
            if (t->shape[d] < 0) s_fail("negative dim", NULL);
            if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel)) s_fail("shape overflows", NULL);
        }
        if (numel * s_dtype_size(t->dtype) != t->n_bytes) s_fail("n_bytes is not elements x dtype size", NULL);
        if (t->n_bytes > data_size) s_fail("tensor larger than the data area", NULL);
        total += t->n_bytes;
        if (kvf_safetensors_find(st, t->name) != t) s_fail("find() does not return a listed tensor", NULL);
        int64_t shape[KVF_ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (kvf_safetensors_expect(st, t->name, t->n_dims, shape, &err) != t)
            s_fail("expect() refuses a tensor's own shape", &err);
        if (t->n_dims > 0) {
            shape[0] += 1;
            if (kvf_safetensors_expect(st, t->name, t->n_dims, shape, &err) != NULL)
                s_fail("expect() accepts a wrong shape", NULL);
        }
        float *f = malloc(numel ? numel * sizeof *f : 1);
        if (!f) abort();
        kvf_tensor_to_f32(t, f);
        free(f);
        sorted[i] = t;
    }
    if (total > data_size) s_fail("tensors hold more bytes than the data area", NULL);
    // Non-overlapping and all inside one data area of data_size bytes.
    qsort(sorted, n, sizeof *sorted, s_cmp_ptr);
    for (size_t i = 1; i < n; i++)
        if ((uintptr_t)sorted[i]->data < (uintptr_t)sorted[i - 1]->data + sorted[i - 1]->n_bytes)
            s_fail("tensors overlap", NULL);
    if (n > 0 && (uintptr_t)sorted[n - 1]->data + sorted[n - 1]->n_bytes - (uintptr_t)sorted[0]->data > data_size)
        s_fail("tensors span more than the data area", NULL);
    free(sorted);
    if (kvf_safetensors_find(st, "\x01no such tensor") != NULL) s_fail("find() invents a tensor", NULL);
    kvf_safetensors_destroy(&st);
    if (st) s_fail("destroy did not null the pointer", NULL);
    return 0;
}
