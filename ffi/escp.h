/*
 * escp native library: the per-byte half of escp.  TypeScript (Bun FFI) owns
 * files and sessions; everything that touches every byte lives here.
 *
 * One header, one concern per source file:
 *   crypto.c    records, HKDF-SHA256, XXH3-128 digests, errors
 *   gcm.c       AES-128-GCM: OpenSSL, intel-ipsec-mb or the system's libgcrypt, the fastest here
 *   io.c        aligned buffers, O_DIRECT opens with fallback, path-safe opens
 *   net.c       listen/accept/connect, preamble + HELLO handshake, tuning
 *   loops.c     fused per-stream send and receive loops (one call, many blocks)
 *   pipeline.c  a disk I/O helper thread per stream direction (read-ahead, write-behind)
 *   compress.c  zstd block compression with bounded decompression
 *   affinity.c  CPU and NUMA placement
 *
 * Conventions: functions return >= 0 on success and a negative code on
 * failure: -errno for system errors, or one of the ESCP_E_* codes below.
 * escp_strerror() turns any code into text; escp_last_error() returns the
 * calling thread's detail for the last failure (e.g. "stream 3: tag mismatch
 * on record seq 17").  All wire integers are big-endian.
 *
 * Wire format (../shared/DESIGN.md section 5):
 *   record  = header(16, the AAD) || body(len, AES-128-GCM) || tag(16)
 *   header  = type u8 | flags u8 | rsv u16 (0) | len u32 | seq u64
 *   nonce   = u32be(stream * 2 + dir) || u64be(seq)
 *   seq     = 0 for each direction's HELLO, then exactly +1 per record
 *   preamble (connector -> listener, plaintext, before its HELLO):
 *             "ESCP" | u16 version | u16 0 | u32 stream | u32 nstreams | sid[16]
 *   HELLO body = sid[16] || u32be stream   (both directions)
 *   DATA body  = u64 file_id || u64 offset || block (zstd frame if COMPRESSED)
 */
#ifndef ESCP_H
#define ESCP_H
#include <stdint.h>
#include <stddef.h>

#define ESCP_PROTO_VERSION 2
#define ESCP_HDR_LEN 16        /* type u8, flags u8, rsv u16, len u32, seq u64 */
#define ESCP_TAG_LEN 16
#define ESCP_PREAMBLE_LEN 32   /* "ESCP" u16 version u16 rsv u32 stream u32 nstreams sid[16] */
#define ESCP_DATA_PREFIX 16    /* DATA body: file_id u64, offset u64, then the block */
#define ESCP_ALIGN 4096
#define ESCP_MAX_CTRL_BODY ((1u << 20) + 64) /* largest non-DATA record body */

enum escp_rec_type {
  ESCP_REC_HELLO = 1, ESCP_REC_FILES = 2, ESCP_REC_DATA = 3, ESCP_REC_DONE = 4,
  ESCP_REC_RESULT = 5, ESCP_REC_RESUME = 6, ESCP_REC_ERROR = 7, ESCP_REC_END = 8,
};
#define ESCP_F_COMPRESSED 0x01

enum escp_err {
  ESCP_E_AUTH = -10001,     /* tag did not verify: altered, spliced or wrong key */
  ESCP_E_SEQ = -10002,      /* seq not previous+1: dropped, replayed or reordered */
  ESCP_E_TRUNC = -10003,    /* EOF before END */
  ESCP_E_PROTO = -10004,    /* malformed: bad type, len over the limit, bad preamble */
  ESCP_E_NEEDFILE = -10005, /* DATA for a file id not (yet) in the fd table */
  ESCP_E_DECOMP = -10006,   /* zstd frame invalid or larger than the block size */
  ESCP_E_TIMEOUT = -10007,
  ESCP_E_CHANGED = -10008,  /* source shorter than announced: changed while read */
  ESCP_E_RANGE = -10009,    /* DATA outside the announced file size */
  ESCP_E_CANCEL = -10010,   /* *cancel became non-zero */
  ESCP_E_VERSION = -10011,  /* preamble speaks another protocol version */
  ESCP_E_BUSY = -10012,     /* the temporary file is locked: another escp writes this target */
  ESCP_E_NOTOURS = -10013,  /* --resume: the temporary file is another user's, or linked, and stays */
  ESCP_E_KEPT = -10014,     /* the temporary name holds another user's file, or one made since we began: kept */
  ESCP_E_INPLACE_BUSY = -10015,  /* --inplace: the target is write-locked: another escp writes it */
  ESCP_E_PART_GONE = -10016,     /* the temporary file was removed before its commit */
  ESCP_E_PART_REPLACED = -10017, /* another file took the temporary name before the commit */
  ESCP_E_DIR_GONE = -10018,      /* the target's directory was removed */
  ESCP_E_TARGET_GONE = -10019,   /* --inplace: the target was removed or replaced before its commit */
};

const char *escp_strerror(int code);
/* Copies the calling thread's last failure detail into buf (NUL-terminated); returns its length. */
int escp_last_error(char *buf, int cap);

/* ---- crypto.c ---------------------------------------------------------- */
int escp_hkdf_sha256(const uint8_t *ikm, uint32_t ikm_len, const uint8_t *salt, uint32_t salt_len,
                     const uint8_t *info, uint32_t info_len, uint8_t *out, uint32_t out_len);
/* Record key for stream s, direction d (0 = connector->listener, 1 = listener->connector):
 * HKDF-SHA256(master, salt = sid, info = "escp/1 key" || u32be(s) || u8(d)), 16 bytes. */
int escp_derive_key(const uint8_t master[32], const uint8_t sid[16], uint32_t stream, uint32_t dir,
                    uint8_t key_out[16]);
/* XXH3-128 of buf, written big-endian (high64 then low64) into out[16]. */
void escp_xxh128(const void *buf, uint64_t len, uint8_t out[16]);
/* No core dumps, no ptrace or /proc/PID/mem access by other processes of the user:
 * called once at start-up, before any key exists. */
int escp_protect_secrets(void);
/* Streaming XXH3-128 (file digests fold (offset||length||h_i) tuples in offset order). */
void *escp_digest_new(void);
void escp_digest_update(void *state, const void *buf, uint64_t len);
void escp_digest_final(void *state, uint8_t out[16]); /* frees state */
/* Which AES-128-GCM implementation this process uses, e.g. "ipsec-mb 1.3.0", "libgcrypt 1.10.1"
 * or "OpenSSL 3.0.19" (measured once per process; ESCP_GCM=openssl|ipsec-mb|libgcrypt forces one). */
const char *escp_gcm_backend(void);
/* Starts that measurement on a thread of its own and returns at once. */
void escp_gcm_prepare(void);
/* The ESCP_GCM values this host can run, space-separated (e.g. "openssl ipsec-mb libgcrypt"):
 * the one list of what each implementation needs of the CPU and the system. */
const char *escp_gcm_offered(void);
/* One-shot AES-128-GCM in place, for tests and benchmarks: nonce 12 bytes, tag 16 bytes. */
int escp_gcm_seal(const uint8_t key[16], const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len,
                  uint8_t *buf, uint32_t len, uint8_t tag[16]);
int escp_gcm_open(const uint8_t key[16], const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len,
                  uint8_t *buf, uint32_t len, const uint8_t tag[16]);

/* ---- io.c -------------------------------------------------------------- */
void *escp_alloc_aligned(uint64_t size); /* ESCP_ALIGN-aligned, zeroed */
void escp_free_aligned(void *p);
/* Opens path for reading; with direct != 0 tries O_DIRECT first and falls back to a
 * buffered open when the filesystem refuses (EINVAL), or when the file is already in
 * the page cache (cachestat(2), Linux >= 6.5: reading it there is faster and evicts
 * nothing; the file is neither read nor mapped, so its atime stays).  *is_direct
 * says which it got.
 * Returns fd or -errno. */
int escp_open_read(const char *path, int direct, int32_t *is_direct);
/* The same for name relative to dirfd (AT_FDCWD: as open(2)), and the open file's
 * escp_fstat fields in st_out (if not NULL): one call per source file.  O_DIRECT is
 * tried only for files of at least direct_min bytes (< 0: never): for a small file its
 * set-up (cachestat, two fcntl) costs more than the page cache it would save. */
#define ESCP_STAT_SLOTS 9 /* int64 fields escp_fstat fills */
int escp_openat_read(int dirfd, const char *name, int64_t direct_min, int32_t *is_direct, int64_t st_out[ESCP_STAT_SLOTS]);
/* Opens rel beneath dirfd without ever leaving it (openat2 RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS; rel must be relative).  flags/mode as for open(2).  If direct
 * and flags allow, O_DIRECT is tried first with fallback; *is_direct reports it. */
int escp_openat_beneath(int dirfd, const char *rel, int flags, uint32_t mode, int direct, int32_t *is_direct);
/* The file fd is, opened again for reading (through /proc/self/fd: not by a name someone
 * may have given to another file since), with O_DIRECT where it can be had if direct.
 * fd or -errno. */
int escp_reopen_read(int fd, int direct);
/* mkdir rel beneath dirfd (parent opened with RESOLVE_BENEATH): 0 when it made it.  EEXIST of a
 * directory, or of a symbolic link to a directory beneath dirfd, is success too: 1. */
int escp_mkdirat_beneath(int dirfd, const char *rel, uint32_t mode);
/* Creates the temporary file `name` (one component) in dirfd for writing: with mode
 * (less the umask; 0 means 0600), O_EXCL|O_NOFOLLOW, so a link planted there is never
 * followed; a stale file of that name (a killed run's) is removed and the create
 * retried once; anything else there stays (ESCP_E_KEPT, see escp_clear_stale_part).
 * O_DIRECT is tried when direct.  The file is write-locked (an OFD lock) until its
 * commit's rename or its writer's end: one of this user's that is write-locked already
 * is another escp's, writing the same target now, and is left alone (ESCP_E_BUSY).
 * Returns fd or -errno. */
int escp_create_part(int dirfd, const char *name, int direct, uint32_t mode, int32_t *is_direct);
/* Creates an unnamed file in dirfd for writing (O_TMPFILE), as escp_create_part does a
 * named one; escp_commit_file with ESCP_COMMIT_UNNAMED names it.  -EOPNOTSUPP where the
 * filesystem or kernel has no O_TMPFILE or the file could not be named later (no
 * /proc/self/fd): create a named one instead.  Else fd or -errno. */
int escp_create_unnamed(int dirfd, int direct, uint32_t mode, int32_t *is_direct);
/* --resume: opens the temporary file `name` (one component) in dirfd to continue it,
 * making it if missing, locked as escp_create_part locks.  Another user's is left alone
 * (ESCP_E_KEPT); one of ours with other links is not continued but replaced by a new
 * one.  fd or -errno / ESCP_E_*. */
int escp_open_resume_part(int dirfd, const char *name);
/* --inplace: opens the target `name` (one component) in dirfd for writing, made if
 * missing (with mode, less the umask), as escp_openat_beneath opens, and write-locks it
 * as escp_create_part locks a temporary file, until its commit or its writer's end: a
 * target someone holds write-locked is another escp's, writing it now, and is left
 * alone (ESCP_E_INPLACE_BUSY).  flags: ESCP_INPLACE_OURS does not lock it (the caller
 * writes it in place already, under another name: a hard link, and holds its lock).
 * It is never emptied here: with --sparse it may be the very file the sender reads
 * (escp_zero_unwritten clears what no block replaced, at its end).  fd or -errno / ESCP_E_*. */
int escp_open_inplace(int dirfd, const char *name, int flags, uint32_t mode, int direct, int32_t *is_direct);
#define ESCP_INPLACE_OURS 2
/* Removes a stale temporary file `name` (one component) in dirfd: this user's, older
 * than this process.  0 (also when nothing is there); ESCP_E_BUSY while another escp
 * holds it; ESCP_E_KEPT for anything else there (another user's; made since we began),
 * which stays: take another name. */
int escp_clear_stale_part(int dirfd, const char *name);
/* rename/unlink/symlink beneath dirfd, same rule. */
int escp_renameat_beneath(int dirfd, const char *from, const char *to);
int escp_unlinkat_beneath(int dirfd, const char *rel, int is_dir);
/* (added) creates symlink rel -> target; target is stored as given, never followed. */
int escp_symlinkat_beneath(int dirfd, const char *target, const char *rel);
/* fstat: out[0]=size out[1]=mtime seconds out[2]=mode (st_mode & 07777) out[3]=dev out[4]=ino
 * out[5]=atime seconds out[6]=type bits out[7]=mtime nanoseconds out[8]=atime nanoseconds */
int escp_fstat(int fd, int64_t out[ESCP_STAT_SLOTS]);
/* 1 when fd's filesystem makes a file's content as it is read (procfs, sysfs, debugfs,
 * tracefs, securityfs, configfs, cgroup): its size in stat says nothing about it. */
int escp_made_on_read(int fd);
/* Reads fd from its start to its end into a new memfd (close-on-exec) and returns it: what
 * escp_made_on_read's files read as now, sent from one read (they change with every read).
 * -EFBIG past max bytes, or -errno. */
int escp_snapshot(int fd, int64_t max);
/* 1 when `name` in dirfd is the root of a mount (a file bind-mounted over, as containers
 * do with config files): no rename can replace it, so it is written in place. */
int escp_is_mount_root(int dirfd, const char *name);
/* 1 when fd is on a FUSE filesystem: user-space ones may need a file written front to
 * back (fusefat drops blocks written out of order without an error; others refuse them). */
int escp_on_fuse(int fd);
/* 1 when names in dirfd are told apart without regard to case (FAT, exFAT, HFS+, a
 * FUSE FAT driver, an ext4/f2fs directory with +F), so that "A" and "a" are one file.
 * On FUSE, SMB, 9p, ntfs3 and vboxsf, whose type does not say, it asks the directory:
 * it makes and removes a file named .escp-case-probe-PID there. */
int escp_dir_ignores_case(int dirfd);
/* lstat of one name (no '/') in dirfd, same fields; -ENOENT when nothing is there. */
int escp_fstatat(int dirfd, const char *name, int64_t out[ESCP_STAT_SLOTS]);
/* faccessat(W_OK, AT_EACCESS) of one name in dirfd: 0 or -errno. */
int escp_may_write(int dirfd, const char *name);
/* Whether files may be renamed into dirfd: -errno (not writable), 1 (yes, but it is
 * sticky and another user's: ask escp_sticky_denies per file), 0 (yes); 0 or 1 for root. */
int escp_dir_replaceable(int dirfd);
/* In a directory escp_dir_replaceable found sticky: -EPERM when name is another user's
 * file (no rename over it, not even by a user who may write it), else 0. */
int escp_sticky_denies(int dirfd, const char *name);
/* futimens: times = {atime seconds, nanoseconds, mtime seconds, nanoseconds}; fchmod */
int escp_futimens(int fd, const int64_t times[4]);
int escp_fchmod(int fd, uint32_t mode);
/* fchmod (unless mode is ESCP_MODE_KEEP: the file was created with its final mode),
 * futimens to times (flags & ESCP_COMMIT_TIMES; as escp_futimens), close, then
 * renameat(dirfd, tmp -> name); fd is always closed.  With ESCP_COMMIT_UNNAMED fd is an escp_create_unnamed file: linked as
 * name before the close (as tmp and renamed over name when name exists; tmp is left
 * nowhere on failure).  tmp and name are single components.  ESCP_COMMIT_REPLACES: the
 * file replaces a regular file at name, whose owner, group and extended attributes
 * (ACLs, user.*, trusted.*, the SELinux label) it takes first, each as far as this
 * process may, since scp writes into that file and keeps them.  ESCP_COMMIT_OLD_MODE
 * (with REPLACES): and its mode, looked at then (set-id bits only where root gave the
 * file the old one's owner and group); mode is for a name found empty or not a regular
 * file by then.  Returns 0 or -errno of the first failing step. */
#define ESCP_MODE_KEEP 0xFFFFFFFFu
#define ESCP_COMMIT_TIMES 1
#define ESCP_COMMIT_UNNAMED 2
#define ESCP_COMMIT_REPLACES 4
#define ESCP_COMMIT_OLD_MODE 8
int escp_commit_file(int fd, uint32_t mode, int flags, const int64_t times[4], int dirfd, const char *tmp,
                     const char *name);
int escp_ftruncate(int fd, int64_t size);
/* --inplace --sparse, before the file is cut to `size`: every block of block_size that
 * no data replaced (written[i] == 0, i < nblocks) is zeroed below min(its size, size),
 * as a hole where the filesystem punches one (FALLOC_FL_PUNCH_HOLE), else written with
 * zeros; the blocks that came are untouched.  0 or -errno. */
int escp_zero_unwritten(int fd, const uint8_t *written, uint64_t nblocks, uint64_t block_size, int64_t size);
int escp_fdatasync(int fd);
int escp_close(int fd);
/* ---- dirlist.c: a directory's names in bounded chunks ------------------- */
/* open(path, O_DIRECTORY): fd or -errno (close it with escp_close). */
int escp_opendir(const char *path);
/* The next entries as [u8 d_type][u8 length][name bytes] each, "." and ".." left out:
 * bytes used, 0 at the end, -errno on failure.  cap >= 512. */
int64_t escp_readdir(int fd, uint8_t *out, uint32_t cap);
/* SEEK_DATA/SEEK_HOLE; returns offset or -errno (-ENXIO past the last data). */
int64_t escp_seek_data(int fd, int64_t from);
int64_t escp_seek_hole(int fd, int64_t from);
/* Reads len bytes at off into buf (loops until len or EOF; an unaligned request on an
 * O_DIRECT fd goes through a buffered reopen): used by --verify and resume digests.
 * Returns bytes read or -errno.  To read past the page cache, call escp_drop_cache first. */
int64_t escp_pread(int fd, void *buf, uint64_t len, int64_t off);
/* XXH3-128 of [off, off+len) of fd, read in ESCP_ALIGN chunks through an internal buffer;
 * a range that lies in a hole (SEEK_DATA) is not read: it is len zeros.
 * 0, or -ENODATA when EOF comes first (out is then the digest of the bytes that exist). */
int escp_hash_range(int fd, int64_t off, uint64_t len, uint8_t out[16]);
/* (added) posix_fadvise(DONTNEED) for [off, off+len) (len 0 = to the end): 0 or -errno. */
int escp_drop_cache(int fd, int64_t off, int64_t len);
/* (added) Reserves len bytes for a new, empty file (fallocate; filesystems without it are
 * not an error).  -ENOSPC at once, allocating nothing, when len is over the free space:
 * a fallocate that fails keeps what it took on ext4, so the whole filesystem would be
 * full for everyone until the file is removed.  On tmpfs only the space is checked:
 * there fallocate clears every page first (0.5 s for 2 GiB, while the streams wait). */
int escp_reserve(int fd, int64_t len);

/* ---- net.c ------------------------------------------------------------- */
typedef struct escp_conn escp_conn;
/* Listens on the first free port of [port_lo, port_hi] on bind_addr ("0.0.0.0", "::",
 * "127.0.0.1"...); 0-0 is any port the kernel picks.  Returns the listening fd,
 * *port_out the port, or -errno (-EADDRINUSE when the whole range is taken). */
int escp_listen(const char *bind_addr, int port_lo, int port_hi, int32_t *port_out);
/* Accepts exactly nstreams authenticated connections (stream indexes 0..nstreams-1).
 * (timeout_ms <= 0: no overall limit.)
 * Pending connections are handled concurrently (poll); any connection whose preamble
 * (magic, version, sid, stream < nstreams, stream not yet taken) or first record (a
 * HELLO that verifies under the stream's key with seq 0) is wrong, or that stays
 * silent for 3 s, is closed and counted in *dropped.  Each accepted connection gets a
 * HELLO back.  out[i] is the conn for stream i.  Gives up after timeout_ms:
 * ESCP_E_TIMEOUT, or when watch_fd (the control connection; -1: none) reaches its end:
 * ESCP_E_CANCEL.  Closes nothing on success; the listening fd stays open. */
int escp_accept_streams(int lfd, const uint8_t master[32], const uint8_t sid[16], uint32_t nstreams,
                        escp_conn **out, int timeout_ms, int32_t *dropped, int watch_fd);
/* With on = 1, until a call with 0: a SIGINT or SIGTERM (still passed on to the handler
 * that was there) makes the connects below give up within 100 ms with ESCP_E_CANCEL:
 * they hold the thread, and a runtime that handles signals on it cannot act meanwhile.
 * Call it after the runtime's own handlers are in place; 0 puts them back as they were. */
void escp_watch_interrupts(int on);
/* Connects to host:port (numeric or name, v4/v6), sends the preamble and a HELLO for
 * `stream`, waits for the listener's HELLO.  NULL on failure with *err set. */
escp_conn *escp_connect(const char *host, int port, const uint8_t master[32], const uint8_t sid[16],
                        uint32_t stream, uint32_t nstreams, int timeout_ms, int32_t *err);
/* Connects streams from..nstreams-1 of a session: stream 0 (when from is 0) as
 * escp_connect does, then the others to the address stream 0 reached (out[0], given when
 * from > 0), their TCP handshakes and HELLOs overlapping, so the setup costs about four
 * round trips whatever the stream count.  out[s] = escp_conn* of stream s.  Returns 0, or
 * a negative code with every connection in out[] closed (given ones too) and the error set. */
int escp_connect_streams(const char *host, int port, const uint8_t master[32], const uint8_t sid[16],
                         uint32_t from, uint32_t nstreams, int timeout_ms, uint64_t *out);
/* Asks for sndbuf/rcvbuf bytes (0 = leave), pacing in bytes/s (0 = none: SO_MAX_PACING_RATE,
 * and every send on c then waits until the rate has paid for it), TCP keepalive so that a
 * vanished peer is noticed in about keepalive_s seconds; reports what was granted. */
int escp_conn_tune(escp_conn *c, int32_t sndbuf, int32_t rcvbuf, uint64_t pacing_bps, int32_t keepalive_s,
                   int32_t granted[2]);
int escp_conn_fd(escp_conn *c);
/* Bytes of the TCP connection fd the peer acknowledged (out[0]) and this end received
 * (out[1]), from the kernel (TCP_INFO, Linux >= 4.1; else 0): 0 or -errno. */
int escp_tcp_bytes(int fd, uint64_t out[2]);
void escp_conn_shutdown(escp_conn *c); /* unblocks any thread in send/recv on it */
void escp_conn_free(escp_conn *c);     /* closes the socket, wipes keys */
/* Seals one record (type, flags, body) with the next send seq and writes it whole. */
int escp_send_record(escp_conn *c, uint32_t type, uint32_t flags, const uint8_t *body, uint32_t len);
/* Reads one record, checks seq == previous+1 and the tag, decrypts body into body_out.
 * Returns body length; meta_out[0]=type meta_out[1]=flags.  A body longer than cap is
 * ESCP_E_PROTO (nothing is allocated on the peer's say-so).  EOF before END: ESCP_E_TRUNC.
 * After END, a clean EOF returns 0 with meta_out[0] = 0.  A record that escp_recv_batch
 * kept (state 2, or a non-DATA record, see there) is returned first.
 * After escp_conn_shutdown, blocked or later calls return ESCP_E_CANCEL. */
int64_t escp_recv_record(escp_conn *c, uint8_t *body_out, uint32_t cap, uint32_t meta_out[2]);

/* ---- loops.c ----------------------------------------------------------- */
/* One unit of sender work: a block of a file. */
typedef struct {
  uint64_t file_id;
  uint64_t offset;   /* multiple of ESCP_ALIGN */
  uint32_t len;      /* <= block size */
  int32_t fd;        /* opened by escp_open_read */
  int32_t direct;    /* fd has O_DIRECT */
  int32_t rsv;
} escp_work;         /* 32 bytes */

/* What happened to one block, on either side. */
typedef struct {
  uint64_t file_id;
  uint64_t offset;
  uint32_t len;
  int32_t status;    /* 0 or a negative code (per-block failure: the stream goes on) */
  uint8_t hash[16];  /* XXH3-128 of the plaintext block, big-endian */
} escp_done;         /* 40 bytes */

/* Per-stream counters, shared with the main thread for progress (read-only there). */
typedef struct {
  uint64_t bytes_disk;       /* plaintext bytes read (sender) or written (receiver) */
  uint64_t bytes_network;    /* record bytes on the wire, headers and tags included */
  uint64_t bytes_compressed; /* DATA payload bytes after compression (== disk when off) */
  uint64_t blocks;
  uint64_t records;
  uint64_t zstd_skipped;     /* sender, -C: blocks not offered to zstd (see loops.c compress_worth) */
  uint64_t rsv[2];
} escp_counters;             /* 64 bytes */

/* Receiver's file table: main thread publishes, stream workers look up. Slot index =
 * file_id & (cap-1), cap a power of two.  Main writes size, fd, direct (and dirfd,
 * name), then id_plus1 (= file_id + 1) last with release semantics; 0 = empty.
 * fd == ESCP_FD_CREATE: the stream worker that receives the file's first block creates
 * it (escp_create_part(dirfd, name, direct, mode)) and stores the result in fd: the new fd,
 * or -errno, which that block and every later one report as their status.  The main
 * thread keeps dirfd open and name alive until it has claimed fd back.  direct is a set
 * of bits: ESCP_SLOT_DIRECT (try O_DIRECT; after the create, whether it was granted) and
 * ESCP_SLOT_UNNAMED (create it with escp_create_unnamed if the filesystem can; after the
 * create, whether it did). */
#define ESCP_SLOT_DIRECT  1
#define ESCP_SLOT_UNNAMED 2
#define ESCP_FD_CREATE   INT32_MIN        /* published, not created yet */
#define ESCP_FD_CREATING (INT32_MIN + 1)  /* a worker is creating it */
#define ESCP_FD_CLAIMED  (INT32_MIN + 2)  /* the main thread took it back uncreated: never create */
#define ESCP_FD_AWAITED  (INT32_MIN + 3)  /* being created, and another stream sleeps on it (futex) */
typedef struct {
  uint64_t id_plus1;
  uint64_t size;
  int32_t fd;
  int32_t direct;
  int32_t dirfd;
  int32_t mode;              /* the file's creation mode (escp_create_part) */
  const char *name;
} escp_fdslot;               /* 40 bytes */

typedef struct {
  uint32_t block_size;       /* multiple of ESCP_ALIGN */
  int32_t zstd_level;        /* 0 = no compression */
  volatile int32_t *cancel;  /* checked between records */
} escp_loop_opts;

/* Sender: for each item, pread (O_DIRECT into an aligned buffer when item.direct; blocks
 * over 256 KiB are read ahead on the stream's helper thread while earlier ones are sealed
 * and sent),
 * XXH3-128, optionally zstd (kept only if smaller), AES-GCM in place, send as one DATA
 * record.  A read error or short read marks that item's status and sends nothing for
 * it.  done[i] describes items[i].  Returns n, or a negative code when the stream
 * itself failed (socket error, cancel). */
int escp_send_batch(escp_conn *c, const escp_work *items, uint32_t n, escp_done *done,
                    const escp_loop_opts *o, escp_counters *ctr);
/* Receiver: reads records until max_done blocks are written, END arrives, or a DATA
 * record names a file that is not in the table.  Each DATA is verified (seq, tag),
 * decompressed (bounded by block_size), hashed and pwritten to its slot's fd
 * (unaligned tails through a buffered reopen of the same file when the fd is
 * O_DIRECT); blocks over 256 KiB are written behind on the stream's helper thread
 * while the next records arrive, and every write has finished when the call returns
 * (so a file's fd may be closed as soon as all its blocks are reported).
 * *state: 0 = more to come, 1 = END received, 2 = waiting for a file id
 * (the record is kept and retried on the next call; *need_id says which).
 * Returns the number of done entries, or a negative code for a fatal stream error
 * (ESCP_E_AUTH, ESCP_E_SEQ, ESCP_E_TRUNC, ESCP_E_RANGE, ESCP_E_DECOMP, -errno).
 * A write error is per block (done[i].status = -errno; the stream goes on).
 * A record other than DATA or END is ESCP_E_PROTO, but it stays kept in the conn so
 * that escp_recv_record can still return it (e.g. to read an ERROR message). */
int escp_recv_batch(escp_conn *c, escp_fdslot *tab, uint32_t cap, escp_done *done, uint32_t max_done,
                    const escp_loop_opts *o, escp_counters *ctr, int32_t *state, uint64_t *need_id);

/* ---- compress.c -------------------------------------------------------- */
/* zstd one-shot helpers used by FILES batches; dst_cap bounds the output. */
int64_t escp_zstd_compress(const void *src, uint64_t len, void *dst, uint64_t dst_cap, int level);
int64_t escp_zstd_decompress(const void *src, uint64_t len, void *dst, uint64_t dst_cap);

/* ---- affinity.c -------------------------------------------------------- */
/* Pins the calling thread to the CPUs in mask (bit i = CPU i, hex string like "0xf" or
 * "ff00"); nodemask likewise for set_mempolicy(MPOL_BIND).  Empty string = leave. */
int escp_set_cpumask(const char *hexmask);
int escp_set_nodemask(const char *hexmask);

/* ---- tty.c ------------------------------------------------------------- */
/* 1 while this process's group owns terminal fd's foreground (or fd is no terminal): the
 * progress display is drawn only then, as scp's. */
int escp_tty_foreground(int fd);

#endif
