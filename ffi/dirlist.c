/*
 * dirlist.c: a directory's names in bounded chunks, for the sender's walk.
 *
 * Bun's fs.Dir reads a whole directory when it is opened and keeps an object
 * per entry (≈ 330 bytes each: 110 MB of walker for 200,000 names in one
 * directory), and a data-transfer node's directories hold millions.  Here the
 * walker asks for one buffer's worth at a time (getdents64), so its memory is
 * the buffer, whatever the directory holds.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* As the kernel lays out getdents64 records. */
struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

ESCP_API int escp_opendir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  return fd >= 0 ? fd : -errno;
}

/* Reads the next entries into out, packed as [u8 d_type][u8 name length][name] each
 * ("." and ".." left out), and returns the bytes used: 0 at the end of the directory,
 * -errno on failure.  The kernel's records are longer than ours, so they are read into
 * out and packed in place, front to back. */
ESCP_API int64_t escp_readdir(int fd, uint8_t *out, uint32_t cap) {
  if (cap < 512) return -EINVAL;
  for (;;) {
    long n = syscall(SYS_getdents64, fd, out, (size_t)cap);
    if (n < 0) return -errno;
    if (n == 0) return 0;
    size_t w = 0;
    for (long r = 0; r < n;) {
      const struct linux_dirent64 *d = (const struct linux_dirent64 *)(out + r);
      unsigned short reclen = d->d_reclen;
      if (reclen <= offsetof(struct linux_dirent64, d_name) || r + reclen > n) return -EIO; /* not the kernel's */
      unsigned char type = d->d_type;
      const char *name = d->d_name;
      size_t len = strnlen(name, (size_t)reclen - offsetof(struct linux_dirent64, d_name));
      if (len == 0 || len > 255) return -EIO;
      if (!(name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.')))) {
        /* w + 2 <= r + offsetof(d_name): the header never overwrites this record's name */
        out[w] = type;
        out[w + 1] = (uint8_t)len;
        memmove(out + w + 2, name, len);
        w += 2 + len;
      }
      r += reclen;
    }
    if (w) return (int64_t)w; /* a chunk of only "." and "..": read on */
  }
}
