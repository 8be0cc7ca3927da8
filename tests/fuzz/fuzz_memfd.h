// tests/fuzz/fuzz_memfd.h — the loaders under fuzz take a path; this puts the
// input in an anonymous in-memory file (memfd) and names it /proc/self/fd/N, so
// that nothing touches the disk and every run opens the file afresh.
#ifndef KVF_FUZZ_MEMFD_H
#define KVF_FUZZ_MEMFD_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

// Replaces the memfd's contents with len bytes and writes its path into path.
// The memfd is created once and reused; aborts when the system refuses it (a
// harness failure, not a finding).
static inline void kvf_fuzz_memfd_put(const uint8_t *data, size_t len, char *path, size_t path_size) {
    static int fd = -1;
    if (fd < 0) {
        fd = memfd_create("kvf-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
    }
    if (ftruncate(fd, 0) != 0) abort();
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, data + done, len - done, (off_t)done);
        if (w <= 0) abort();
        done += (size_t)w;
    }
    snprintf(path, path_size, "/proc/self/fd/%d", fd);
}

#endif
