/*
 * io.c: aligned buffers, O_DIRECT opens with per-file fallback, opens and directory
 * operations that never leave a given directory, and small file helpers.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/fs.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/random.h>
#include <sys/xattr.h>
#include <linux/limits.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

void *escp__alloc(size_t size) {
  void *p = NULL;
  if (size == 0) size = ESCP_ALIGN;
  if (posix_memalign(&p, ESCP_ALIGN, size) != 0) return NULL;
  return p;
}

void escp__free(void *p) { free(p); }

ESCP_API void *escp_alloc_aligned(uint64_t size) {
  if (size > (uint64_t)SIZE_MAX - ESCP_ALIGN) return NULL;
  size_t n = (size_t)((size + ESCP_ALIGN - 1) & ~(uint64_t)(ESCP_ALIGN - 1));
  void *p = escp__alloc(n);
  if (p) memset(p, 0, n);
  return p;
}

ESCP_API void escp_free_aligned(void *p) { free(p); }

/* Adds O_DIRECT to an open fd.  fcntl checks that the filesystem supports it, and
 * unlike open(O_CREAT|O_EXCL|O_DIRECT) a refusal leaves no half-created file behind.
 * Not on FUSE: each request goes to a user-space filesystem anyway, so there is no
 * page cache to spare, and some (fusefat) lose writes when a file's O_DIRECT blocks
 * and its buffered unaligned tail arrive at once. */
static int try_direct(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return 0;
  if (fl & O_DIRECT) return 1;
  if (escp_on_fuse(fd)) return 0;
  return fcntl(fd, F_SETFL, fl | O_DIRECT) == 0;
}

/* Times as seconds and nanoseconds: in nanoseconds alone an int64 ends in 2262 (ext4 and
 * XFS keep times to 2446 and beyond) and begins in 1677. */
static void stat_fields(const struct stat *st, int64_t out[ESCP_STAT_SLOTS]) {
  out[0] = (int64_t)st->st_size;
  out[1] = (int64_t)st->st_mtim.tv_sec;
  out[2] = (int64_t)(st->st_mode & 07777);
  out[3] = (int64_t)st->st_dev;
  out[4] = (int64_t)st->st_ino;
  out[5] = (int64_t)st->st_atim.tv_sec;
  out[6] = (int64_t)(st->st_mode & S_IFMT);
  out[7] = (int64_t)st->st_mtim.tv_nsec;
  out[8] = (int64_t)st->st_atim.tv_nsec;
}

/* cachestat(2) (Linux 6.5): how much of a file the page cache holds, without
 * reading or mapping it, so the source's atime stays as it was (-p sends it).
 * Not in Debian 12's headers yet, hence the local definitions. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct escp_cachestat_range { uint64_t off, len; };
struct escp_cachestat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };

/* How many of [off, off+len) (len 0: to the end) the page cache holds, in pages; -1 if it cannot say. */
static int64_t cached_pages(int fd, uint64_t off, uint64_t len) {
  struct escp_cachestat_range range = {off, len};
  struct escp_cachestat cs;
  if (syscall(__NR_cachestat, fd, &range, &cs, 0) != 0) return -1;
  return (int64_t)cs.nr_cache;
}

/* Files above this are sampled, not counted whole: cachestat walks every cached page
 * (10-25 ms for 2 GiB here, on the sender's path to its first FILES record). */
#define CACHE_SAMPLE_OVER (64ull << 20)
#define CACHE_SAMPLES 16
#define CACHE_SAMPLE_LEN (1ull << 20)

/* True when (nearly) all of fd is in the page cache: reading it from there is
 * faster than O_DIRECT from the disk and evicts nothing.  A large file counts as
 * cached when evenly spread samples of it are; one that is only partly cached may
 * then be read through the cache, which costs speed, never correctness.
 * Older kernels: false. */
static int mostly_cached(int fd, const struct stat *st) {
  if (!S_ISREG(st->st_mode) || st->st_size == 0) return 0;
  uint64_t size = (uint64_t)st->st_size, page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t want = 0, have = 0;
  for (int i = 0; i < (size > CACHE_SAMPLE_OVER ? CACHE_SAMPLES : 1); i++) {
    uint64_t off = 0, len = size; /* whole file, or sample i of CACHE_SAMPLES, the last ending at EOF */
    if (size > CACHE_SAMPLE_OVER) {
      off = ((size - CACHE_SAMPLE_LEN) / (CACHE_SAMPLES - 1) * (uint64_t)i) & ~(page - 1);
      len = CACHE_SAMPLE_LEN;
    }
    int64_t n = cached_pages(fd, off, len);
    if (n < 0) return 0;
    have += (uint64_t)n;
    want += (len + page - 1) / page;
  }
  return have * 10 >= want * 9;
}

ESCP_API int escp_openat_read(int dirfd, const char *name, int64_t direct_min, int32_t *is_direct, int64_t st_out[ESCP_STAT_SLOTS]) {
  if (is_direct) *is_direct = 0;
  if (!name) return -EINVAL;
  /* Non-blocking until it is known to be a regular file: a name the walk saw as one may
   * be a FIFO by now, whose open would wait for a writer, deaf to signals. */
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return escp__errno("open %s", name);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int rc = escp__errno("fstat %s", name);
    close(fd);
    return rc;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return escp__err(-EINVAL, "open %s: Not a regular file now (it was one when its directory was read)", name);
  }
  fcntl(fd, F_SETFL, 0); /* one call: O_NONBLOCK is the only status flag set so far (O_DIRECT comes later) */
  if (st_out) stat_fields(&st, st_out);
  if (direct_min >= 0 && st.st_size >= direct_min && !mostly_cached(fd, &st) && try_direct(fd) && is_direct)
    *is_direct = 1;
  return fd;
}

ESCP_API int escp_open_read(const char *path, int direct, int32_t *is_direct) {
  return escp_openat_read(AT_FDCWD, path, direct ? 0 : -1, is_direct, NULL);
}

/* Fallback for kernels without openat2 (< 5.6): walk the components with O_NOFOLLOW,
 * refusing "..", so nothing outside dirfd can be reached (stricter than openat2: no
 * symlink is followed at all). */
static int open_beneath_walk(int dirfd, const char *rel, int flags, mode_t mode) {
  char buf[PATH_MAX];
  size_t n = strlen(rel);
  if (n >= sizeof buf) return -ENAMETOOLONG;
  memcpy(buf, rel, n + 1);
  int cur = dirfd;
  char *s = buf;
  for (;;) {
    while (*s == '/') s++;
    char *slash = strchr(s, '/');
    char *next = NULL;
    if (slash) {
      *slash = 0;
      next = slash + 1;
      while (*next == '/') next++;
      if (*next == 0) next = NULL; /* trailing slash: s is the last component */
    }
    if (strcmp(s, "..") == 0) {
      if (cur != dirfd) close(cur);
      return -EXDEV;
    }
    int fd;
    if (next) {
      fd = openat(cur, *s ? s : ".", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    } else {
      fd = openat(cur, *s ? s : ".", flags | O_NOFOLLOW | O_CLOEXEC, mode);
    }
    int e = errno;
    if (cur != dirfd) close(cur);
    if (fd < 0) return -e;
    if (!next) return fd;
    cur = fd;
    s = next;
  }
}

static int open_beneath(int dirfd, const char *rel, int flags, mode_t mode) {
  static int no_openat2;
  if (!rel || !*rel) return -ENOENT;
  if (rel[0] == '/') return -EXDEV;
  if (!__atomic_load_n(&no_openat2, __ATOMIC_RELAXED)) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    for (;;) {
      long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
      if (fd >= 0) return (int)fd;
      if (errno == EINTR || errno == EAGAIN) continue; /* EAGAIN: rename race, retry */
      if (errno != ENOSYS) return -errno;
      break;
    }
    __atomic_store_n(&no_openat2, 1, __ATOMIC_RELAXED);
  }
  return open_beneath_walk(dirfd, rel, flags, mode);
}

ESCP_API int escp_openat_beneath(int dirfd, const char *rel, int flags, uint32_t mode, int direct,
                                 int32_t *is_direct) {
  if (is_direct) *is_direct = 0;
  if (flags & O_DIRECT) direct = 1;
  int fd = open_beneath(dirfd, rel, flags & ~O_DIRECT, (mode_t)mode);
  if (fd < 0) return escp__err(fd, "open %s beneath the destination: %s", rel ? rel : "(null)",
                               escp_strerror(fd));
  if (direct && !(flags & (O_PATH | O_DIRECTORY)) && try_direct(fd) && is_direct) *is_direct = 1;
  return fd;
}

ESCP_API int escp_reopen_read(int fd, int direct) {
  char at[40];
  snprintf(at, sizeof at, "/proc/self/fd/%d", fd);
  int rd = open(at, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (rd < 0) return escp__errno("reopen fd %d", fd);
  if (direct) (void)try_direct(rd);
  return rd;
}

/* Splits rel into its parent (opened beneath dirfd) and its last component. */
static int open_parent(int dirfd, const char *rel, char *last, size_t last_cap) {
  if (!rel || !*rel) return -ENOENT;
  if (rel[0] == '/') return -EXDEV;
  size_t n = strlen(rel);
  while (n > 1 && rel[n - 1] == '/') n--;
  size_t i = n;
  while (i > 0 && rel[i - 1] != '/') i--;
  size_t ln = n - i;
  if (ln == 0 || ln >= last_cap) return -ENAMETOOLONG;
  memcpy(last, rel + i, ln);
  last[ln] = 0;
  if (strcmp(last, ".") == 0 || strcmp(last, "..") == 0) return -EINVAL;
  if (i == 0) {
    int d = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    return d < 0 ? -errno : d;
  }
  char parent[PATH_MAX];
  if (i >= sizeof parent) return -ENAMETOOLONG;
  memcpy(parent, rel, i);
  parent[i] = 0;
  return open_beneath(dirfd, parent, O_PATH | O_DIRECTORY, 0);
}

/* Like open_parent but returns dirfd itself (not a dup) when rel has no '/'. */
static int parent_fd(int dirfd, const char *rel, char *last, size_t cap, int *owned) {
  *owned = 0;
  if (!rel || !*rel) return -ENOENT;
  if (rel[0] == '/') return -EXDEV;
  const char *sl = strchr(rel, '/');
  if (!sl || sl[1] == 0) {
    size_t n = sl ? (size_t)(sl - rel) : strlen(rel);
    if (n == 0 || n >= cap) return -ENAMETOOLONG;
    memcpy(last, rel, n);
    last[n] = 0;
    if (strcmp(last, ".") == 0 || strcmp(last, "..") == 0) return -EINVAL;
    return dirfd;
  }
  int fd = open_parent(dirfd, rel, last, cap);
  if (fd >= 0) *owned = 1;
  return fd;
}

/* One entry of a directory: not empty, no '/', not "." or "..".  The calls that take
 * such a name act in dirfd itself and can reach nothing outside it. */
static int one_name(const char *name) {
  return name && *name && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* Effective uid, asked once: a receiver asks per file. */
static uid_t my_euid(void) {
  static uid_t me = (uid_t)-1;
  if (me == (uid_t)-1) me = geteuid();
  return me;
}

/* Temporary names are fixed (`.NAME.escp-part`: the next run, or --resume, finds a
 * killed run's), so two escp copying to one target at once meet there.  Each holds a
 * write lock (an OFD lock, fcntl F_OFD_SETLK) on its temporary file from creation to
 * rename; the lock dies with its descriptors however the process ends.  A write lock
 * needs the file open for writing, so only someone who may write the file can make it
 * look busy (with flock, any user who could read a root's leftover partial held it and
 * stopped root's copies).  A file write-locked by this user is another escp's, at work:
 * it is neither removed nor renamed (ESCP_E_BUSY); one found unlocked, read-locked, or
 * another user's is not (a planted one held locked would refuse every copy to that
 * name; a real one of another user's fails at its rename, which checks its name).
 * Where the filesystem has no locks (ENOLCK, EOPNOTSUPP), files go unlocked, as before. */
static int write_locked(int fd) {
  struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
  return fcntl(fd, F_OFD_GETLK, &q) == 0 && q.l_type == F_WRLCK;
}

static int busy_part(int fd) {
  struct stat st;
  return write_locked(fd) && fstat(fd, &st) == 0 && st.st_uid == my_euid() ? ESCP_E_BUSY : 0;
}

/* Write-locks fd (open for writing): 1 when another open file holds a lock in the way,
 * else 0 (also where the filesystem has no locks). */
static int lock_refused(int fd) {
  struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
  return fcntl(fd, F_OFD_SETLK, &l) != 0 && (errno == EAGAIN || errno == EACCES);
}

/* Locks fd (open for writing): 0, or ESCP_E_BUSY when another escp of ours holds it. */
static int lock_part(int fd) {
  return lock_refused(fd) ? busy_part(fd) : 0;
}

/* --inplace has no temporary file: the target itself is locked, the same way, from
 * its open (before --sparse empties it) to its commit, so that a second copy into it
 * fails instead of mixing its blocks with the first's (ESCP_E_INPLACE_BUSY).  Any
 * write lock there counts, whoever holds it: it takes the file open for writing, and
 * whoever may write the target can spoil a copy into it anyway (with the rule of
 * temporary files, two copies by root into a user's file both went ahead).  A read
 * lock, which any reader may take, does not stop the copy (it goes unlocked). */
static int lock_target(int fd) {
  return lock_refused(fd) && write_locked(fd) ? ESCP_E_INPLACE_BUSY : 0;
}

/* Whether dirfd's directory has been removed (a file made in it fails with ENOENT). */
static int dir_removed(int dirfd) {
  struct stat d;
  return fstat(dirfd, &d) == 0 && d.st_nlink == 0;
}

/* -errno of a failed create in dirfd, told apart where the directory itself is gone. */
static int create_failure(int dirfd) {
  int e = errno;
  return e == ENOENT && dir_removed(dirfd) ? ESCP_E_DIR_GONE : -e;
}

/* Whether the open fd is what `name` in dirfd is now. */
static int is_named(int fd, int dirfd, const char *name) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && fstatat(dirfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

/* When this process began, by the clock file times are stamped with (the coarse one). */
static struct timespec began;
__attribute__((constructor)) static void note_start(void) { clock_gettime(CLOCK_REALTIME_COARSE, &began); }

static int changed_since_start(const struct stat *st) {
  return st->st_ctim.tv_sec > began.tv_sec || (st->st_ctim.tv_sec == began.tv_sec && st->st_ctim.tv_nsec >= began.tv_nsec);
}

/* Removes a stale temporary file at name: one of this user's, left by a run that ended
 * before this one began.  Anything at the name that is another user's (root must not
 * delete a file of that name a user keeps, nor anyone a planted one in a sticky
 * directory), or that changed since this process began (a file of that very name the
 * tree being copied holds, copied a moment ago; another copy's), is left alone:
 * ESCP_E_KEPT, and the caller takes another name.  ESCP_E_BUSY while another escp
 * writes it; else 0 (also when nothing is there).  Opens nothing but a regular file. */
ESCP_API int escp_clear_stale_part(int dirfd, const char *name) {
  if (!one_name(name)) return -EINVAL;
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return 0; /* nothing there */
  if (st.st_uid != my_euid()) return ESCP_E_KEPT;
  int fd = S_ISREG(st.st_mode) ? openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) : -1;
  if (fd < 0) return unlinkat(dirfd, name, 0), 0; /* our link or FIFO, or unreadable to us */
  int rc = busy_part(fd);
  if (!rc && changed_since_start(&st)) rc = ESCP_E_KEPT;
  if (!rc && is_named(fd, dirfd, name)) unlinkat(dirfd, name, 0);
  close(fd);
  return rc;
}

/* A short name of our own for an instant's link (commit_unnamed) where the temporary
 * name is taken and kept (ESCP_E_KEPT): random, and made with linkat's O_EXCL. */
static void instant_name(char *out, size_t cap) {
  uint32_t r = 0;
  if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r = (uint32_t)getpid() * 2654435761u ^ (uint32_t)clock();
  snprintf(out, cap, ".escp-link.%08x", r);
}

ESCP_API int escp_create_part(int dirfd, const char *name, int direct, uint32_t mode, int32_t *is_direct) {
  if (is_direct) *is_direct = 0;
  if (!one_name(name)) return -EINVAL;
  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  const mode_t m = mode ? (mode_t)(mode & 07777) : 0600;
  int fd = openat(dirfd, name, flags, m);
  if (fd < 0 && errno == EEXIST) {
    int busy = escp_clear_stale_part(dirfd, name);
    if (busy) return busy;
    fd = openat(dirfd, name, flags, m);
  }
  if (fd < 0) return create_failure(dirfd);
  int busy = lock_part(fd); /* only if another escp locked it in the instant since */
  if (busy) return close(fd), busy;
  if (direct && try_direct(fd) && is_direct) *is_direct = 1;
  return fd;
}

ESCP_API int escp_open_inplace(int dirfd, const char *name, int flags, uint32_t mode, int direct, int32_t *is_direct) {
  int fd = escp_openat_beneath(dirfd, name, O_WRONLY | O_CREAT, mode, direct, is_direct);
  if (fd == -ENOENT && dir_removed(dirfd)) return ESCP_E_DIR_GONE;
  if (fd < 0) return fd;
  struct stat st;
  int rc = !(flags & ESCP_INPLACE_OURS) && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? lock_target(fd) : 0;
  return rc ? (close(fd), rc) : fd;
}

/* --resume continues the temporary file a killed run left, so it is opened, not made
 * anew.  Only a file this user made is continued: another user's (who could change it
 * after it is checked and renamed into place) is left alone, as escp_clear_stale_part
 * leaves it (ESCP_E_KEPT: the caller takes another name); one of ours with other links
 * (a hard link at the name would carry the copy into the file it names) is removed and
 * a fresh one made.  Never follows a link; a FIFO opens without waiting (O_NONBLOCK)
 * and is reported by the caller, who checks the type. */
ESCP_API int escp_open_resume_part(int dirfd, const char *name) {
  if (!one_name(name)) return -EINVAL;
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid != my_euid()) return ESCP_E_KEPT;
  int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0 && errno == ELOOP) { /* a symbolic link of ours: never followed, replaced */
    if (unlinkat(dirfd, name, 0) != 0) return errno == EPERM || errno == EACCES ? ESCP_E_NOTOURS : -errno;
    return escp_create_part(dirfd, name, 0, 0600, NULL);
  }
  if (fd < 0) return -errno;
  if (fstat(fd, &st) != 0) return close(fd), -errno;
  if (!S_ISREG(st.st_mode) || (st.st_nlink == 1 && st.st_uid == my_euid())) {
    int busy = S_ISREG(st.st_mode) ? lock_part(fd) : 0; /* another escp resuming it now */
    return busy ? (close(fd), busy) : fd;
  }
  int busy = lock_part(fd);
  if (!busy && is_named(fd, dirfd, name) && unlinkat(dirfd, name, 0) != 0) busy = -errno;
  close(fd);
  if (busy == -EPERM || busy == -EACCES) return ESCP_E_NOTOURS;
  return busy ? busy : escp_create_part(dirfd, name, 0, 0600, NULL);
}

/* Whether an unnamed file can be given a name by whoever runs us: AT_EMPTY_PATH needs
 * CAP_DAC_READ_SEARCH (before Linux 6.10), /proc/self/fd/N works for anyone. */
static int can_link_fd(void) {
  static int known = -1;
  if (known < 0) known = access("/proc/self/fd", X_OK) == 0;
  return known;
}

ESCP_API int escp_create_unnamed(int dirfd, int direct, uint32_t mode, int32_t *is_direct) {
  if (is_direct) *is_direct = 0;
  if (!can_link_fd()) return -EOPNOTSUPP;
  const mode_t m = mode ? (mode_t)(mode & 07777) : 0600;
  int fd = openat(dirfd, ".", O_WRONLY | O_TMPFILE | O_CLOEXEC, m);
  if (fd < 0) {
    /* Kernels before 3.11 take O_TMPFILE for O_DIRECTORY (EISDIR); NFS and others refuse it. */
    int e = errno;
    return e == EOPNOTSUPP || e == EISDIR || e == EINVAL ? -EOPNOTSUPP : create_failure(dirfd);
  }
  if (direct && try_direct(fd) && is_direct) *is_direct = 1;
  return fd;
}

/* Gives the open unnamed file fd the name `name` in dirfd (a link: -EEXIST when taken). */
static int link_fd(int fd, int dirfd, const char *name) {
  static int empty_path_refused;
  if (!__atomic_load_n(&empty_path_refused, __ATOMIC_RELAXED)) {
    if (linkat(fd, "", dirfd, name, AT_EMPTY_PATH) == 0) return 0;
    if (errno != ENOENT || dir_removed(dirfd)) return create_failure(dirfd);
    /* ENOENT: no CAP_DAC_READ_SEARCH */
    __atomic_store_n(&empty_path_refused, 1, __ATOMIC_RELAXED);
  }
  char p[32];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  return linkat(AT_FDCWD, p, dirfd, name, AT_SYMLINK_FOLLOW) == 0 ? 0 : create_failure(dirfd);
}

ESCP_API int escp_mkdirat_beneath(int dirfd, const char *rel, uint32_t mode) {
  char last[NAME_MAX + 1];
  int owned;
  int pfd = parent_fd(dirfd, rel, last, sizeof last, &owned);
  if (pfd < 0) return escp__err(pfd, "mkdir %s: %s", rel ? rel : "(null)", escp_strerror(pfd));
  int rc = 0;
  if (mkdirat(pfd, last, (mode_t)mode) != 0) {
    rc = -errno;
    if (rc == -EEXIST) {
      /* A directory already, or a symbolic link to one that stays beneath dirfd
       * (as scp writes through it); a link leading out still fails below. */
      int d = open_beneath(dirfd, rel, O_PATH | O_DIRECTORY, 0);
      if (d >= 0) {
        close(d);
        rc = 1;
      } else if (d == -EXDEV) {
        rc = d;
      }
    }
    if (rc < 0) escp__err(rc, "mkdir %s: %s", rel, escp_strerror(rc));
  }
  if (owned) close(pfd);
  return rc;
}

ESCP_API int escp_renameat_beneath(int dirfd, const char *from, const char *to) {
  char l1[NAME_MAX + 1], l2[NAME_MAX + 1];
  int o1, o2;
  int p1 = parent_fd(dirfd, from, l1, sizeof l1, &o1);
  if (p1 < 0) return escp__err(p1, "rename %s: %s", from ? from : "(null)", escp_strerror(p1));
  int p2 = parent_fd(dirfd, to, l2, sizeof l2, &o2);
  if (p2 < 0) {
    if (o1) close(p1);
    return escp__err(p2, "rename to %s: %s", to ? to : "(null)", escp_strerror(p2));
  }
  int rc = renameat(p1, l1, p2, l2) == 0 ? 0 : escp__errno("rename %s to %s", from, to);
  if (o1) close(p1);
  if (o2) close(p2);
  return rc;
}

ESCP_API int escp_unlinkat_beneath(int dirfd, const char *rel, int is_dir) {
  char last[NAME_MAX + 1];
  int owned;
  int pfd = parent_fd(dirfd, rel, last, sizeof last, &owned);
  if (pfd < 0) return escp__err(pfd, "unlink %s: %s", rel ? rel : "(null)", escp_strerror(pfd));
  int rc = unlinkat(pfd, last, is_dir ? AT_REMOVEDIR : 0) == 0 ? 0 : escp__errno("unlink %s", rel);
  if (owned) close(pfd);
  return rc;
}

/* Added to escp.h: the "symlink beneath dirfd" that its comment mentions. */
ESCP_API int escp_symlinkat_beneath(int dirfd, const char *target, const char *rel) {
  char last[NAME_MAX + 1];
  int owned;
  if (!target) return -EINVAL;
  int pfd = parent_fd(dirfd, rel, last, sizeof last, &owned);
  if (pfd < 0) return escp__err(pfd, "symlink %s: %s", rel ? rel : "(null)", escp_strerror(pfd));
  int rc = symlinkat(target, pfd, last) == 0 ? 0 : escp__errno("symlink %s", rel);
  if (owned) close(pfd);
  return rc;
}

ESCP_API int escp_fstat(int fd, int64_t out[ESCP_STAT_SLOTS]) {
  struct stat st;
  if (fstat(fd, &st) != 0) return escp__errno("fstat fd %d", fd);
  stat_fields(&st, out);
  return 0;
}

/* A single name, never followed: nothing outside dirfd can be reached. ENOENT is an
 * answer here (nothing there yet), not an error worth a message. */
ESCP_API int escp_fstatat(int dirfd, const char *name, int64_t out[ESCP_STAT_SLOTS]) {
  struct stat st;
  if (!one_name(name)) return -EINVAL;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return -errno;
  stat_fields(&st, out);
  return 0;
}

/* fs.protected_regular (0, 1 or 2), read once; 0 if it cannot be read. */
static int protected_regular(void) {
  static int rule = -1;
  if (rule < 0) {
    FILE *f = fopen("/proc/sys/fs/protected_regular", "re");
    if (!f || fscanf(f, "%d", &rule) != 1 || rule < 0) rule = 0;
    if (f) fclose(f);
  }
  return rule;
}

/* Whether this process may write `name` in dirfd, as open(O_WRONLY) would decide it
 * (effective ids, ACLs, read-only mounts): 0 or -errno. For the receiver, which
 * replaces a file by renaming over it, so that a file scp could not write is not
 * replaced either. */
ESCP_API int escp_may_write(int dirfd, const char *name) {
  if (!one_name(name)) return escp__err(-EINVAL, "%s: not a single name", name ? name : "(null)");
  if (faccessat(dirfd, name, W_OK, AT_EACCESS) != 0) {
    int e = -errno;
    return escp__err(e, "%s", e == -EPERM ? "Operation not permitted (the file is immutable: chattr -i)" : escp_strerror(e));
  }
  /* access(2) lets an append-only file be written; the rename over it would fail, after all the data. */
  struct statx x;
  if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_TYPE, &x) == 0 && (x.stx_attributes & STATX_ATTR_APPEND))
    return escp__err(-EPERM, "Operation not permitted (the file is append-only: chattr -a)");
  /* The kernel refuses scp's open of it (O_CREAT, even for root) where fs.protected_regular
   * says so: another user's file, in a sticky directory that is not theirs and others may
   * write (1: everyone; 2: its group too), as a file planted in /tmp to receive root's data.
   * The rename that replaces it is not asked, so it is asked here. */
  struct stat d, f;
  int rule = protected_regular();
  if (rule > 0 && fstat(dirfd, &d) == 0 && (d.st_mode & S_ISVTX) && fstatat(dirfd, name, &f, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISREG(f.st_mode) && f.st_uid != d.st_uid && f.st_uid != my_euid() &&
      ((d.st_mode & S_IWOTH) || (rule >= 2 && (d.st_mode & S_IWGRP))))
    return escp__err(-EACCES, "Permission denied (another user's file in a sticky directory others may write: "
                              "fs.protected_regular refuses writing it, to scp too)");
  return 0;
}

/* Once per directory of the receiver: -errno when this process may not rename files
 * into dirfd; 1 when it may but dirfd is sticky (/tmp's bit) and another user's, so
 * that another user's file there cannot be renamed over (escp_sticky_denies, per
 * file); else 0.  Root may (CAP_FOWNER). */
ESCP_API int escp_dir_replaceable(int dirfd) {
  struct stat d;
  if (faccessat(dirfd, ".", W_OK, AT_EACCESS) != 0) return -errno;
  return my_euid() != 0 && fstat(dirfd, &d) == 0 && (d.st_mode & S_ISVTX) && d.st_uid != my_euid();
}

/* In a directory escp_dir_replaceable found sticky: -EPERM when name is another user's
 * file (the rename over it would fail after all its data had come), else 0. */
ESCP_API int escp_sticky_denies(int dirfd, const char *name) {
  struct stat f;
  if (!one_name(name) || fstatat(dirfd, name, &f, AT_SYMLINK_NOFOLLOW) != 0) return 0;
  return f.st_uid == my_euid() ? 0 : -EPERM;
}

ESCP_API int escp_futimens(int fd, const int64_t times[4]) {
  struct timespec ts[2] = {{.tv_sec = times[0], .tv_nsec = times[1]}, {.tv_sec = times[2], .tv_nsec = times[3]}};
  return futimens(fd, ts) == 0 ? 0 : escp__errno("futimens fd %d", fd);
}

ESCP_API int escp_fchmod(int fd, uint32_t mode) {
  return fchmod(fd, (mode_t)mode) == 0 ? 0 : escp__errno("fchmod fd %d", fd);
}

/* Why tmp in dirfd is no longer the file being committed: someone removed its directory,
 * or removed it or put another file there; that file, write-locked by this user, is
 * another escp's (one that began after ours was removed).  With --inplace tmp is the
 * target itself, and the data went into a file no longer under its name. */
static int name_lost(int dirfd, const char *tmp, const char *name) {
  struct stat st;
  int there = fstatat(dirfd, tmp, &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!there && dir_removed(dirfd)) return escp__err(ESCP_E_DIR_GONE, "the directory of %s was removed", tmp);
  if (strcmp(tmp, name) == 0) return escp__err(ESCP_E_TARGET_GONE, "%s was removed or replaced", tmp);
  if (!there) return escp__err(ESCP_E_PART_GONE, "%s was removed", tmp);
  int other = S_ISREG(st.st_mode) ? openat(dirfd, tmp, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) : -1;
  int busy = other >= 0 ? busy_part(other) : 0;
  if (other >= 0) close(other);
  return busy ? escp__err(busy, "%s is another escp's now", tmp) : escp__err(ESCP_E_PART_REPLACED, "%s was replaced", tmp);
}

/* The last steps of a commit: close fd (where NFS and quotas report late write errors),
 * then rename tmp (if any) over name, but only while tmp is still this file: the lock
 * is held, through a duplicate of fd, until the rename is done.  On failure `linked`
 * (a link the commit made) is removed. */
static int close_and_rename(int fd, int rc, int dirfd, const char *tmp, const char *name, const char *linked) {
  int held = tmp ? dup(fd) : -1;
  if (close(fd) != 0 && !rc) rc = escp__errno("close %s", tmp ? tmp : name);
  if (!rc && tmp && held >= 0 && !is_named(held, dirfd, tmp)) rc = name_lost(dirfd, tmp, name);
  /* tmp is name for a file written or kept in place (--inplace, --resume): a rename onto
   * itself does nothing, but a read-only filesystem refuses even that. */
  if (!rc && tmp && strcmp(tmp, name) != 0 && renameat(dirfd, tmp, dirfd, name) != 0)
    rc = escp__errno("rename %s to %s", tmp, name);
  if (rc && linked) unlinkat(dirfd, linked, 0);
  if (held >= 0) close(held);
  return rc;
}

/* commit of an unnamed file (ESCP_COMMIT_UNNAMED): it is linked before the close, as
 * closing it would free it. Straight under name when nothing is there; else under tmp
 * (a stale one, or a link planted there, is removed, never followed) and renamed over
 * name, so that an existing target is replaced at once, as with a named temporary. A
 * failure after a link removes that link: nothing half-done keeps a name. */
static int commit_unnamed(int fd, int rc, int dirfd, const char *tmp, const char *name) {
  const char *at = name, *linked = NULL;
  char instant[32];
  if (!rc) {
    rc = link_fd(fd, dirfd, name);
    if (rc == -EEXIST) {
      at = tmp;
      (void)lock_part(fd); /* named now: another escp meeting it there must see it is ours */
      rc = link_fd(fd, dirfd, tmp);
      if (rc == -EEXIST && !(rc = escp_clear_stale_part(dirfd, tmp))) rc = link_fd(fd, dirfd, tmp);
      for (int i = 0; rc == ESCP_E_KEPT || (rc == -EEXIST && at == instant && i < 4); i++) {
        instant_name(instant, sizeof instant);
        rc = link_fd(fd, dirfd, at = instant);
      }
    }
    if (rc) escp__err(rc, "link %s: %s", at, escp_strerror(rc));
    else linked = at;
  }
  return close_and_rename(fd, rc, dirfd, linked && linked != name ? linked : NULL, name, linked);
}

/* Extended attributes a new file takes from the one it replaces.  Not security.capability
 * (a write clears it: new content must not inherit a privilege) nor the integrity hashes. */
static int inherited_xattr(const char *key) {
  return strncmp(key, "user.", 5) == 0 || strncmp(key, "trusted.", 8) == 0 ||
         strncmp(key, "system.posix_acl_", 17) == 0 || strcmp(key, "security.selinux") == 0;
}

/* ESCP_COMMIT_REPLACES: owner and group first (chown clears setuid bits, which the fchmod
 * after it restores), then the attributes; what this process may not set stays ours,
 * as a file it made.  old is the file at name now; it is reached through /proc/self/fd,
 * never following a link at name (the l* calls). */
static void take_identity(int fd, int dirfd, const char *name, const struct stat *old) {
  /* Ours was made with our ids (or the group of a setgid directory, which then is old's too). */
  if ((old->st_uid != my_euid() || old->st_gid != getegid()) && fchown(fd, old->st_uid, old->st_gid) != 0)
    (void)fchown(fd, (uid_t)-1, old->st_gid); /* not root: a group we are in */
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name) >= (int)sizeof path) return;
  ssize_t n = llistxattr(path, NULL, 0);
  if (n <= 0) return;
  char *keys = malloc((size_t)n), *val = malloc(XATTR_SIZE_MAX);
  if (keys && val && (n = llistxattr(path, keys, (size_t)n)) > 0) {
    for (char *k = keys; k < keys + n; k += strlen(k) + 1) {
      if (!inherited_xattr(k)) continue;
      ssize_t v = lgetxattr(path, k, val, XATTR_SIZE_MAX);
      if (v >= 0) (void)fsetxattr(fd, k, val, (size_t)v, 0);
    }
  }
  free(keys);
  free(val);
}

/* The old file's mode for the file that replaces it.  Its set-id bits only as root and
 * only where the new file now has the old one's owner and group, as root's write into
 * that file would keep them (anyone else's write clears them). */
static uint32_t mode_of_replaced(const struct stat *now, const struct stat *old) {
  uint32_t mode = (uint32_t)(old->st_mode & 07777);
  if (my_euid() != 0 || !now || now->st_uid != old->st_uid || now->st_gid != old->st_gid)
    mode &= ~(uint32_t)(S_ISUID | S_ISGID);
  return mode;
}

/* The receiver's last steps for a verified file, fused so that the main thread
 * makes one call per file: mode (and, with ESCP_COMMIT_TIMES, the times) on the open
 * file, close (where NFS and quotas report late write errors), then the rename of
 * tmp over name inside dirfd (or, ESCP_COMMIT_UNNAMED, the link that names it). Both
 * names are single components. fd is closed whatever happens; the first failing
 * step is the one reported. */
ESCP_API int escp_commit_file(int fd, uint32_t mode, int flags, const int64_t times[4], int dirfd, const char *tmp,
                              const char *name) {
  /* An ACL taken from the old file sets mode bits too: the mode is set after it, and a file
   * made with its final mode (ESCP_MODE_KEEP) gets that mode back. */
  struct stat made, old, st;
  int known = 0; /* st holds the file as it is now */
  if ((flags & ESCP_COMMIT_REPLACES) && one_name(name)) {
    /* Not with OLD_MODE: there the old file's mode replaces it, or, the old file gone,
     * no ACL was taken that could have changed it. */
    if (mode == ESCP_MODE_KEEP && !(flags & ESCP_COMMIT_OLD_MODE) && fstat(fd, &made) == 0)
      mode = (uint32_t)(made.st_mode & 07777);
    /* Owner and mode from one look at what is there now: from two moments, a user who
     * can write the directory got root's copy with their file's setuid mode by removing
     * their file while the data travelled. */
    if (fstatat(dirfd, name, &old, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(old.st_mode)) {
      take_identity(fd, dirfd, name, &old);
      if (flags & ESCP_COMMIT_OLD_MODE) {
        known = fstat(fd, &st) == 0;
        mode = mode_of_replaced(known ? &st : NULL, &old);
      }
    }
  }
  /* A file it already has (--inplace into another user's file, which only its owner may chmod). */
  if (!known) known = mode != ESCP_MODE_KEEP && fstat(fd, &st) == 0;
  int same = known && (st.st_mode & 07777) == mode;
  int rc = mode == ESCP_MODE_KEEP || same || fchmod(fd, (mode_t)mode) == 0 ? 0 : escp__errno("fchmod %s", tmp);
  /* A filesystem that keeps no modes (FAT, exFAT; its FUSE drivers say ENOSYS) refuses
   * even the owner: the file keeps what it has, as a new file there does. */
  if (rc == -ENOSYS || rc == -EOPNOTSUPP || (rc == -EPERM && known && st.st_uid == my_euid())) rc = 0;
  if (!rc && (flags & ESCP_COMMIT_TIMES)) rc = times ? escp_futimens(fd, times) : -EINVAL;
  if (!rc && (!one_name(tmp) || !one_name(name))) rc = escp__err(-EINVAL, "rename %s: not a single name", tmp);
  if (flags & ESCP_COMMIT_UNNAMED) return commit_unnamed(fd, rc, dirfd, tmp, name);
  return close_and_rename(fd, rc, dirfd, tmp, name, NULL);
}

/* Whether the FUSE filesystem holding fd is a FAT one (fusefat, fuse.exfat): its type
 * in /proc/self/mountinfo, "fuse.SUBTYPE", on the line of fd's device.  exfat-fuse and
 * ntfs-3g both say plain "fuseblk" (and NTFS keeps case): those are asked instead. */
static int fuse_is_fat(int fd) {
  struct stat st;
  FILE *f = fstat(fd, &st) == 0 ? fopen("/proc/self/mountinfo", "re") : NULL;
  if (!f) return 0;
  char dev[32], line[4096];
  snprintf(dev, sizeof dev, " %u:%u ", major(st.st_dev), minor(st.st_dev));
  int fat = 0;
  while (!fat && fgets(line, sizeof line, f)) {
    const char *sep = strstr(line, " - ");
    if (!sep || !strstr(line, dev) || strstr(line, dev) > sep) continue;
    const char *type = sep + 3;
    size_t n = strcspn(type, " ");
    fat = n > 8 && strncmp(type, "fuse.", 5) == 0 && strncmp(type + n - 3, "fat", 3) == 0;
  }
  fclose(f);
  return fat;
}

/* Whether this kernel can fold case in ext4 or f2fs directories at all (CONFIG_UNICODE). */
static int kernel_folds(void) {
  static int known = -1;
  if (known < 0) known = access("/sys/fs/ext4/features/casefold", F_OK) == 0 || access("/sys/fs/f2fs/features/casefold", F_OK) == 0;
  return known;
}

/* Whether dirfd's directory finds a file under its name with the case of every letter
 * swapped: a file made for the question, looked up that way, and removed.  For the
 * filesystems whose type does not say (another machine's or a user-space driver's
 * rules: exfat-fuse and ntfs-3g are both plain "fuseblk", an SMB share, WSL's drvfs).
 * Not by inode: exfat-fuse numbers the two names' inodes apart.  A directory where
 * escp may not make the file cannot be asked, and is taken to keep case. */
static int probe_ignores_case(int dirfd) {
  char name[48], swapped[48];
  snprintf(name, sizeof name, ".escp-case-probe-%d", (int)getpid());
  for (size_t i = 0; i <= strlen(name); i++) {
    char c = name[i];
    swapped[i] = c >= 'a' && c <= 'z' ? (char)(c - 32) : c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
  }
  struct stat st;
  if (fstatat(dirfd, swapped, &st, AT_SYMLINK_NOFOLLOW) == 0) return 0; /* there already: no answer */
  int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  close(fd);
  int folds = fstatat(dirfd, swapped, &st, AT_SYMLINK_NOFOLLOW) == 0;
  unlinkat(dirfd, name, 0);
  return folds;
}

ESCP_API int escp_dir_ignores_case(int dirfd) {
  struct statfs fs;
  if (fstatfs(dirfd, &fs) != 0) return 0;
  switch ((unsigned long)fs.f_type) {
  case MSDOS_SUPER_MAGIC: case EXFAT_SUPER_MAGIC: case 0x482b /* hfsplus */: return 1;
  case FUSE_SUPER_MAGIC: return fuse_is_fat(dirfd) || probe_ignores_case(dirfd);
  case 0xFF534D42 /* cifs */: case 0xFE534D42 /* smb2, smb3 */: case V9FS_MAGIC /* 9p: WSL's drvfs, VM shares */:
  case 0x7366746e /* ntfs3: nocase */: case 0x786f4256 /* vboxsf */:
    return probe_ignores_case(dirfd);
  case EXT4_SUPER_MAGIC: case F2FS_SUPER_MAGIC: if (kernel_folds()) break; /* fall through */
  default: return 0;
  }
  /* ext4 and f2fs fold case per directory (chattr +F); dirfd may be an O_PATH one. */
  int d = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), flags = 0;
  if (d < 0) return 0;
  int folds = ioctl(d, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_CASEFOLD_FL);
  close(d);
  return folds;
}

ESCP_API int escp_made_on_read(int fd) {
  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) return 0;
  switch ((unsigned long)fs.f_type) {
  case PROC_SUPER_MAGIC: case SYSFS_MAGIC: case DEBUGFS_MAGIC: case TRACEFS_MAGIC: case SECURITYFS_MAGIC:
  case 0x62656570 /* configfs */: case CGROUP_SUPER_MAGIC: case CGROUP2_SUPER_MAGIC:
    return 1;
  default:
    return 0;
  }
}

ESCP_API int escp_snapshot(int fd, int64_t max) {
  int snap = (int)syscall(SYS_memfd_create, "escp-snapshot", MFD_CLOEXEC);
  if (snap < 0) return escp__errno("memfd_create");
  char buf[64 << 10];
  int64_t total = 0;
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, (off_t)total);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = -errno;
      close(snap);
      return e;
    }
    if (n == 0) return snap;
    if (total + n > max) {
      close(snap);
      return -EFBIG;
    }
    for (ssize_t done = 0; done < n;) {
      ssize_t w = write(snap, buf + done, (size_t)(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        int e = escp__errno("snapshot write");
        close(snap);
        return e;
      }
      done += w;
    }
    total += n;
  }
}

ESCP_API int escp_is_mount_root(int dirfd, const char *name) {
  struct statx stx;
  if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, 0, &stx) != 0) return 0;
  return (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

ESCP_API int escp_on_fuse(int fd) {
  struct statfs fs;
  return fstatfs(fd, &fs) == 0 && fs.f_type == FUSE_SUPER_MAGIC;
}

ESCP_API int escp_ftruncate(int fd, int64_t size) {
  return ftruncate(fd, (off_t)size) == 0 ? 0 : escp__errno("ftruncate fd %d", fd);
}

/* Zeros [off, off+len) of fd: a hole where the filesystem punches one, else written. */
static int zero_range(int fd, off_t off, off_t len) {
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) == 0) return 0;
  if (errno != EOPNOTSUPP && errno != ENOSYS) return escp__errno("punch a hole in fd %d", fd);
  static const char zeros[64 << 10];
  for (off_t done = 0; done < len;) {
    ssize_t n = pwrite(fd, zeros, (size_t)(len - done < (off_t)sizeof zeros ? len - done : (off_t)sizeof zeros), off + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? escp__errno("write zeros to fd %d", fd) : escp__err(-EIO, "write zeros to fd %d: wrote nothing", fd);
    done += n;
  }
  return 0;
}

ESCP_API int escp_zero_unwritten(int fd, const uint8_t *written, uint64_t nblocks, uint64_t block_size, int64_t size) {
  struct stat st;
  if (fstat(fd, &st) != 0) return escp__errno("fstat fd %d", fd);
  /* Past the file's end, or past the new size (cut next), no old byte can stay. */
  uint64_t end = (uint64_t)(st.st_size < size ? st.st_size : size);
  for (uint64_t i = 0; i < nblocks && i * block_size < end;) {
    const uint8_t *gap = memchr(written + i, 0, nblocks - i);
    if (!gap) break;
    uint64_t from = (uint64_t)(gap - written), to = from;
    while (to < nblocks && !written[to]) to++;
    uint64_t lo = from * block_size, hi = to * block_size < end ? to * block_size : end;
    if (lo < hi) {
      int rc = zero_range(fd, (off_t)lo, (off_t)(hi - lo));
      if (rc) return rc;
    }
    i = to;
  }
  return 0;
}

ESCP_API int escp_fdatasync(int fd) { return fdatasync(fd) == 0 ? 0 : escp__errno("fdatasync fd %d", fd); }

ESCP_API int escp_close(int fd) {
  if (close(fd) == 0) return 0;
  if (errno == EINTR) return 0; /* Linux closes the fd anyway */
  return escp__errno("close fd %d", fd);
}

ESCP_API int64_t escp_seek_data(int fd, int64_t from) {
  off_t r = lseek(fd, (off_t)from, SEEK_DATA);
  return r < 0 ? -errno : (int64_t)r;
}

ESCP_API int64_t escp_seek_hole(int fd, int64_t from) {
  off_t r = lseek(fd, (off_t)from, SEEK_HOLE);
  return r < 0 ? -errno : (int64_t)r;
}

/* Added to escp.h: preallocation (falls back to nothing where unsupported) and page-cache
 * dropping for a range (the "drop_cache" of escp_pread's comment). */
ESCP_API int escp_reserve(int fd, int64_t len) {
  if (len <= 0) return 0;
  struct statvfs v; /* a filesystem of no blocks (fusefat, some FUSE ones) does not say what is free */
  if (fstatvfs(fd, &v) == 0 && v.f_frsize && v.f_blocks && ((uint64_t)len + v.f_frsize - 1) / v.f_frsize > v.f_bavail)
    return escp__err(-ENOSPC, "%lld bytes do not fit in the %llu free", (long long)len,
                     (unsigned long long)v.f_bavail * v.f_frsize);
  struct statfs fs; /* tmpfs: nothing to gain, a page-clearing pass to lose (escp.h) */
  if (fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) return 0;
  if (fallocate(fd, 0, 0, (off_t)len) == 0) return 0;
  if (errno == EOPNOTSUPP || errno == ENOSYS) return 0;
  return escp__errno("fallocate fd %d", fd);
}

ESCP_API int escp_drop_cache(int fd, int64_t off, int64_t len) {
  int e = posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
  return e ? -e : 0;
}

static int reopen_buffered(int fd, int flags) {
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  int r = open(p, flags | O_CLOEXEC);
  return r < 0 ? -errno : r;
}

static int is_direct_fd(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_DIRECT);
}

/* Full pread (loops on short reads, stops at EOF).  Returns bytes or -errno. */
static int64_t pread_full(int fd, void *buf, uint64_t len, int64_t off) {
  uint64_t got = 0;
  while (got < len) {
    size_t want = (size_t)((len - got) > (1u << 30) ? (1u << 30) : (len - got));
    ssize_t r = pread(fd, (char *)buf + got, want, (off_t)(off + (int64_t)got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) break;
    got += (uint64_t)r;
  }
  return (int64_t)got;
}

ESCP_API int64_t escp_pread(int fd, void *buf, uint64_t len, int64_t off) {
  int64_t r = pread_full(fd, buf, len, off);
  if (r == -EINVAL && is_direct_fd(fd)) {
    /* unaligned request on an O_DIRECT fd: read it through a buffered reopen */
    int b = reopen_buffered(fd, O_RDONLY);
    if (b < 0) return escp__err(b, "pread fd %d: %s", fd, escp_strerror(b));
    r = pread_full(b, buf, len, off);
    close(b);
  }
  if (r < 0) escp__err((int)r, "pread fd %d at %lld: %s", fd, (long long)off, escp_strerror((int)r));
  return r;
}

/* The digest of len zero bytes, as escp_hash_range gives it, remembered for the last
 * length asked (a file's blocks share one; its last one is another). */
static void zeros_digest(uint64_t len, uint8_t out[16]) {
  static const uint8_t zeros[64 << 10];
  static __thread uint64_t known_len;
  static __thread uint8_t known[16];
  if (known_len != len) {
    void *st = escp_digest_new();
    if (!st) {
      memset(out, 0, 16);
      return;
    }
    for (uint64_t done = 0; done < len; done += sizeof zeros)
      escp_digest_update(st, zeros, len - done < sizeof zeros ? len - done : sizeof zeros);
    escp_digest_final(st, known);
    known_len = len;
  }
  memcpy(out, known, 16);
}

/* Whether [off, off+len) of fd lies in one hole, inside the file: it reads as zeros,
 * and a sparse file of 1 TiB is hashed (--resume's offers, --verify) without reading
 * the terabyte of zeros.  Where the filesystem cannot tell (SEEK_DATA answers off),
 * the range is read. */
static int in_hole(int fd, int64_t off, uint64_t len) {
  struct stat st;
  if (len == 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || off < 0 || off + (int64_t)len > st.st_size) return 0;
  off_t d = lseek(fd, off, SEEK_DATA);
  return d >= 0 ? d >= off + (int64_t)len : errno == ENXIO;
}

ESCP_API int escp_hash_range(int fd, int64_t off, uint64_t len, uint8_t out[16]) {
  if (in_hole(fd, off, len)) return zeros_digest(len, out), 0;
  const size_t chunk = 1u << 20;
  int b = -1, rfd = fd;
  if (is_direct_fd(fd) && (off % ESCP_ALIGN) != 0) {
    b = reopen_buffered(fd, O_RDONLY);
    if (b < 0) return escp__err(b, "hash fd %d: %s", fd, escp_strerror(b));
    rfd = b;
  }
  int direct = is_direct_fd(rfd);
  uint8_t *buf = escp__alloc(chunk);
  void *st = escp_digest_new();
  int rc = 0;
  if (!buf || !st) {
    rc = -ENOMEM;
    goto out;
  }
  uint64_t done = 0;
  while (done < len) {
    uint64_t want = len - done < chunk ? len - done : chunk;
    uint64_t rd = direct ? (want + ESCP_ALIGN - 1) & ~(uint64_t)(ESCP_ALIGN - 1) : want;
    int64_t r = pread_full(rfd, buf, rd, off + (int64_t)done);
    if (r < 0) {
      rc = escp__err((int)r, "hash fd %d at %lld: %s", fd, (long long)(off + (int64_t)done),
                     escp_strerror((int)r));
      break;
    }
    uint64_t use = (uint64_t)r < want ? (uint64_t)r : want;
    escp_digest_update(st, buf, use);
    done += use;
    if (use < want) {
      rc = -ENODATA; /* EOF inside the range: out is the digest of what exists */
      break;
    }
  }
out:
  if (st) escp_digest_final(st, out);
  else memset(out, 0, 16);
  escp__free(buf);
  if (b >= 0) close(b);
  return rc;
}
