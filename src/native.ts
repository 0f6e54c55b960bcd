/**
 * The native library (ffi/, built into build/libescp.so and embedded in
 * dist/escp): loading it and typing its symbols. Every byte of file data goes
 * through these functions; nothing in TypeScript touches data blocks.
 *
 * The library is embedded as a file. Inside the compiled executable that file
 * lives in Bun's virtual filesystem, which dlopen cannot read. The first run
 * writes it to ~/.cache/escp/TAG/libescp.so (beside the bootstrapped
 * executable on a remote host) and every run maps that file: copying 4.5 MB
 * into a memfd at each start cost ≈ 5 ms, on the remote end's path to `ready`.
 * Where that cache cannot serve (no home, or another user's; a read-only or
 * noexec one) the copy goes into a memfd, opened as /proc/self/fd/N. Workers
 * open the same path, so they share the one loaded copy.
 *
 * @example
 * const lib = native();
 * const key = new Uint8Array(16);
 * lib.escp_derive_key(master, sid, 0, 0, key);
 */
import { dlopen, FFIType, ptr, CString, type Pointer } from "bun:ffi";
import fs from "node:fs";
import { encodeName, encodeNameInto, hasEscapedBytes } from "./names.ts";
import { dfgOnly } from "./jit.ts";
import { NS_PER_S, splitNs } from "./times.ts";
import { CACHE_DIR, CACHE_ROOT, CACHE_TAG } from "./version.ts";
import { markUsed, pruneOtherBuilds } from "./cache.ts";
// @ts-ignore: a file import yields the path of the embedded (or built) library
import embeddedLib from "../build/libescp.so" with { type: "file" };

const { i32, u32, u64, i64, ptr: P, cstring, void: V } = FFIType;

/**
 * What a stream worker calls: the batch loops and the text of their errors. A
 * worker binds these few, not the whole table: five workers that bound it all
 * took 44 ms of CPU to start against 28 ms for these (docs/performance.md).
 */
const streamSymbols = {
  escp_strerror: { args: [i32], returns: cstring },
  escp_last_error: { args: [P, i32], returns: i32 },
  escp_send_record: { args: [P, u32, u32, P, u32], returns: i32 },
  escp_recv_record: { args: [P, P, u32, P], returns: i64 },
  escp_send_batch: { args: [P, P, u32, P, P, P], returns: i32 },
  escp_recv_batch: { args: [P, P, u32, P, u32, P, P, P, P], returns: i32 },
  escp_set_cpumask: { args: [cstring], returns: i32 },
  escp_set_nodemask: { args: [cstring], returns: i32 },
} as const;

/** What the directory walker calls (ffi/dirlist.c), bound alone on its thread for the same reason. */
const dirSymbols = {
  escp_strerror: { args: [i32], returns: cstring },
  escp_opendir: { args: [cstring], returns: i32 },
  escp_readdir: { args: [i32, P, u32], returns: i64 },
  escp_close: { args: [i32], returns: i32 },
} as const;

const symbols = {
  ...streamSymbols,
  ...dirSymbols,
  escp_hkdf_sha256: { args: [P, u32, P, u32, P, u32, P, u32], returns: i32 },
  escp_derive_key: { args: [P, P, u32, u32, P], returns: i32 },
  escp_xxh128: { args: [P, u64, P], returns: V },
  escp_protect_secrets: { args: [], returns: i32 },
  escp_digest_new: { args: [], returns: P },
  escp_digest_update: { args: [P, P, u64], returns: V },
  escp_digest_final: { args: [P, P], returns: V },
  escp_gcm_backend: { args: [], returns: cstring },
  escp_gcm_prepare: { args: [], returns: V },
  escp_gcm_seal: { args: [P, P, P, u32, P, u32, P], returns: i32 },
  escp_gcm_open: { args: [P, P, P, u32, P, u32, P], returns: i32 },
  escp_alloc_aligned: { args: [u64], returns: P },
  escp_free_aligned: { args: [P], returns: V },
  escp_open_read: { args: [cstring, i32, P], returns: i32 },
  escp_openat_read: { args: [i32, cstring, i64, P, P], returns: i32 },
  escp_openat_beneath: { args: [i32, cstring, i32, u32, i32, P], returns: i32 },
  escp_create_part: { args: [i32, cstring, i32, u32, P], returns: i32 },
  escp_clear_stale_part: { args: [i32, cstring], returns: i32 },
  escp_open_resume_part: { args: [i32, cstring], returns: i32 },
  escp_open_inplace: { args: [i32, cstring, i32, u32, i32, P], returns: i32 },
  escp_create_unnamed: { args: [i32, i32, u32, P], returns: i32 },
  escp_mkdirat_beneath: { args: [i32, cstring, u32], returns: i32 },
  escp_renameat_beneath: { args: [i32, cstring, cstring], returns: i32 },
  escp_unlinkat_beneath: { args: [i32, cstring, i32], returns: i32 },
  escp_fstat: { args: [i32, P], returns: i32 },
  escp_made_on_read: { args: [i32], returns: i32 },
  escp_snapshot: { args: [i32, i64], returns: i32 },
  escp_dir_ignores_case: { args: [i32], returns: i32 },
  escp_on_fuse: { args: [i32], returns: i32 },
  escp_is_mount_root: { args: [i32, cstring], returns: i32 },
  escp_fstatat: { args: [i32, cstring, P], returns: i32 },
  escp_may_write: { args: [i32, cstring], returns: i32 },
  escp_dir_replaceable: { args: [i32], returns: i32 },
  escp_sticky_denies: { args: [i32, cstring], returns: i32 },
  escp_futimens: { args: [i32, P], returns: i32 },
  escp_watch_interrupts: { args: [i32], returns: V },
  escp_fchmod: { args: [i32, u32], returns: i32 },
  escp_reopen_read: { args: [i32, i32], returns: i32 },
  escp_tty_foreground: { args: [i32], returns: i32 },
  escp_commit_file: { args: [i32, u32, i32, P, i32, cstring, cstring], returns: i32 },
  escp_ftruncate: { args: [i32, i64], returns: i32 },
  escp_zero_unwritten: { args: [i32, P, u64, u64, i64], returns: i32 },
  escp_fdatasync: { args: [i32], returns: i32 },
  escp_seek_data: { args: [i32, i64], returns: i64 },
  escp_seek_hole: { args: [i32, i64], returns: i64 },
  escp_pread: { args: [i32, P, u64, i64], returns: i64 },
  escp_hash_range: { args: [i32, i64, u64, P], returns: i32 },
  escp_listen: { args: [cstring, i32, i32, P], returns: i32 },
  escp_accept_streams: { args: [i32, P, P, u32, P, i32, P, i32], returns: i32 },
  escp_connect: { args: [cstring, i32, P, P, u32, u32, i32, P], returns: P },
  escp_connect_streams: { args: [cstring, i32, P, P, u32, u32, i32, P], returns: i32 },
  escp_conn_tune: { args: [P, i32, i32, u64, i32, P], returns: i32 },
  escp_conn_fd: { args: [P], returns: i32 },
  escp_tcp_bytes: { args: [i32, P], returns: i32 },
  escp_conn_shutdown: { args: [P], returns: V },
  escp_conn_free: { args: [P], returns: V },
  escp_zstd_compress: { args: [P, u64, P, u64, i32], returns: i64 },
  escp_zstd_decompress: { args: [P, u64, P, u64], returns: i64 },
} as const;

export type Native = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
export type StreamNative = ReturnType<typeof dlopen<typeof streamSymbols>>["symbols"];
export type DirNative = ReturnType<typeof dlopen<typeof dirSymbols>>["symbols"];

/** Record types and flags (ffi/escp.h). */
export const Rec = { HELLO: 1, FILES: 2, DATA: 3, DONE: 4, RESULT: 5, RESUME: 6, ERROR: 7, END: 8 } as const;
export const E = {
  AUTH: -10001, SEQ: -10002, TRUNC: -10003, PROTO: -10004, NEEDFILE: -10005, DECOMP: -10006,
  TIMEOUT: -10007, CHANGED: -10008, RANGE: -10009, CANCEL: -10010, VERSION: -10011, BUSY: -10012, NOTOURS: -10013, KEPT: -10014,
  INPLACE_BUSY: -10015, PART_GONE: -10016, PART_REPLACED: -10017, DIR_GONE: -10018, TARGET_GONE: -10019,
} as const;
export const PROTO_VERSION = 2;
export const ALIGN = 4096;
/** Files smaller than this are read and written through the page cache: O_DIRECT's set-up costs more than it saves. */
export const DIRECT_MIN = 1 << 20;
export const WORK_SIZE = 32;
export const DONE_SIZE = 40;
export const COUNTERS_SIZE = 64;
export const FDSLOT_SIZE = 40;
/** escp_fdslot.fd sentinels (escp.h): a worker creates the file; is creating it; main took it back uncreated; is creating it while another waits. */
export const FD_CREATE = -0x80000000, FD_CREATING = -0x7fffffff, FD_CLAIMED = -0x7ffffffe, FD_AWAITED = -0x7ffffffd;
/** escp_fstat's fields (ESCP_STAT_SLOTS): size, mtime s, mode, dev, ino, atime s, type, mtime ns, atime ns. */
export const STAT_SLOTS = 9;
/** A time in escp_fstat's fields (slot 1: mtime, 5: atime) in nanoseconds, as a bigint: past 2262 too. */
export function statTimeNs(out: BigInt64Array, slot: 1 | 5): bigint {
  return out[slot] * NS_PER_S + out[slot === 1 ? 7 : 8];
}

/** escp_futimens' times (seconds and nanoseconds of each) from nanoseconds since 1970. */
export function timesOf(atimeNs: bigint, mtimeNs: bigint): BigInt64Array {
  return BigInt64Array.from([...splitNs(atimeNs), ...splitNs(mtimeNs)]);
}

/** escp_commit_file's mode when the file was created with its final mode (ESCP_MODE_KEEP). */
export const MODE_KEEP = 0xffffffff;
/**
 * escp_commit_file's flags: set the times (-p); the file is unnamed (escp_create_unnamed); it
 * replaces a file, whose owner, group and attributes it takes; and its mode, as it is then.
 */
export const COMMIT_TIMES = 1, COMMIT_UNNAMED = 2, COMMIT_REPLACES = 4, COMMIT_OLD_MODE = 8;
/** escp_open_inplace's flag: take no lock (this copy holds it, under another name). */
export const INPLACE_OURS = 2;
/** escp_fdslot.direct bits: O_DIRECT; may be (once created: was) created unnamed. */
export const SLOT_DIRECT = 1, SLOT_UNNAMED = 2;
export const LOOP_OPTS_SIZE = 16;
/** Largest stream-0 record body either side accepts (ESCP_MAX_CTRL_BODY). */
export const MAX_CTRL_BODY = (1 << 20) + 64;

let lib: Native | undefined;
let loadedFrom = "";
let loadedSource = "";

/** The loaded library; loads it on first use (per thread), from `path` if given (ESCP_LIB: a fresh build's, for tests). */
export function native(path?: string): Native {
  if (!lib) {
    const given = path ?? process.env.ESCP_LIB ?? (embeddedLib.startsWith("/$bunfs") ? undefined : embeddedLib);
    if (given) return load(given, given);
    const cached = cachedLibrary();
    if (cached) {
      try {
        return load(`/proc/${process.pid}/fd/${cached.fd}`, cached.file);
      } catch {
        fs.closeSync(cached.fd); // a home mounted noexec: the memfd, then
      }
    }
    return load(memfdLibrary(), "memfd");
  }
  return lib;
}

function load(path: string, source: string): Native {
  lib = dlopen(path, symbols).symbols;
  loadedFrom = path;
  loadedSource = source;
  return lib;
}

const MFD_CLOEXEC = 1;

/** The embedded library as a file in a memfd: nothing left on disk, ≈ 5 ms a start. */
function memfdLibrary(): string {
  const libc = dlopen("libc.so.6", { memfd_create: { args: [cstring, u32], returns: i32 } });
  const fd = libc.symbols.memfd_create(Buffer.from("escp-native\0"), MFD_CLOEXEC); // not for ssh
  if (fd < 0) throw new Error("escp: cannot create a memfd for the native library");
  fs.writeFileSync(fd, fs.readFileSync(embeddedLib));
  return `/proc/${process.pid}/fd/${fd}`;
}

/**
 * ~/.cache/escp/TAG/libescp.so, written there on first use (a temporary name,
 * then a rename: never half a library under the final name), opened and then
 * checked; it is mapped as /proc/PID/fd/N of that descriptor, so what is mapped
 * is what was checked, whoever may rename things in the directories above it.
 * Only in a home that exists (it is never made) and is ours: sudo may keep
 * another user's HOME. undefined when the cache cannot serve (a read-only or
 * full home).
 */
function cachedLibrary(): { fd: number; file: string } | undefined {
  const home = process.env.HOME;
  const uid = process.geteuid?.();
  // A home whose name is not UTF-8 reaches us lossy (U+FFFD): it names another directory.
  if (!home?.startsWith("/") || home.includes("\ufffd") || uid === undefined) return undefined;
  const st = fs.statSync(home, { throwIfNoEntry: false });
  if (!st?.isDirectory() || st.uid !== uid) return undefined;
  const dir = `${home}/${CACHE_DIR}`, file = `${dir}/libescp.so`;
  const size = Bun.file(embeddedLib).size;
  try {
    let fd = openOurs(file, uid, size);
    if (fd < 0) {
      fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
      const tmp = `${file}.${process.pid}.part`;
      try {
        fs.writeFileSync(tmp, fs.readFileSync(embeddedLib), { mode: 0o644, flag: "wx" });
        fs.renameSync(tmp, file);
      } finally {
        fs.rmSync(tmp, { force: true });
      }
      fd = openOurs(file, uid, size);
      if (fd >= 0) pruneOtherBuilds(`${home}/${CACHE_ROOT}`, CACHE_TAG, uid);
    } else {
      markUsed(dir);
    }
    return fd < 0 ? undefined : { fd, file };
  } catch {
    return undefined;
  }
}

/**
 * An open descriptor of `file` if it is ours alone: a regular file (not a link)
 * of `size` bytes, owned by `uid`, writable by nobody else, as ssh wants its
 * own files; another user able to change it could run code as us. Else -1.
 */
function openOurs(file: string, uid: number, size: number): number {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return -1;
  }
  const st = fs.fstatSync(fd);
  if (st.isFile() && st.uid === uid && (st.mode & 0o022) === 0 && st.size === size) return fd;
  fs.closeSync(fd);
  return -1;
}

/** A stream worker's few symbols of the library the main thread loaded from `path` (nativePath()). */
export function streamNative(path: string): StreamNative {
  return dlopen(path, streamSymbols).symbols;
}

/** The walker thread's few symbols of the library loaded from `path` (nativePath()). */
export function dirNative(path: string): DirNative {
  return dlopen(path, dirSymbols).symbols;
}

/** The path workers should load (the main thread's, so one copy is shared). */
export function nativePath(): string {
  native();
  return loadedFrom;
}

/** Where the loaded library came from, for the log: the cached file, "memfd", or the path given. */
export function nativeSource(): string {
  native();
  return loadedSource;
}

/** Text for a native return code plus the thread's detail, e.g. "stream 2: ...". */
export function nativeError(code: number, n: Pick<StreamNative, "escp_last_error" | "escp_strerror"> = native()): string {
  const buf = new Uint8Array(512);
  const len = n.escp_last_error(buf, buf.length);
  const detail = len > 0 ? new TextDecoder().decode(buf.subarray(0, len)) : "";
  // The detail (set by the failing call on this thread) already ends with the cause.
  return detail || String(n.escp_strerror(code));
}

/** Text for a code that another thread produced (a block's status): no thread detail applies. */
export function codeText(code: number, n: Pick<StreamNative, "escp_strerror"> = native()): string {
  return String(n.escp_strerror(code));
}

/**
 * The C library's wording of a node:fs error ("No such file or directory"), as scp
 * prints it, without node's "ENOENT: no such file or directory, open '/x'" around it.
 * `n`: the library this thread has (the walker's holds only the directory calls).
 */
export function errnoText(e: unknown, n?: Pick<StreamNative, "escp_strerror">): string {
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err.errno === "number") return codeText(-Math.abs(err.errno), n);
  return err instanceof Error ? err.message : String(e);
}

/** Starts choosing the AES-128-GCM implementation (ffi/gcm.c) on a thread of its own. */
export function prepareGcm(): void {
  native().escp_gcm_prepare();
}

/** The AES-128-GCM implementation this process chose (ffi/gcm.c), e.g. "libgcrypt 1.10.1". */
export function gcmBackend(): string {
  return String(native().escp_gcm_backend());
}

/** NUL-terminated bytes for cstring arguments: UTF-8, or a name's own bytes (names.ts). */
export function cstr(s: string): Buffer {
  return hasEscapedBytes(s) ? Buffer.from(encodeName(s + "\0")) : Buffer.from(s + "\0", "utf8");
}

const scratchName = Buffer.alloc(4096);

/**
 * cstr into a buffer reused by every call on this thread: for a name the native
 * call reads at once and never keeps (one allocation less per file).
 */
export function cstrNow(s: string): Buffer {
  if (s.length >= scratchName.length / 3) return cstr(s); // may not fit as UTF-8
  const n = encodeNameInto(s, scratchName);
  scratchName[n] = 0;
  return scratchName;
}

export { ptr, CString, type Pointer };

dfgOnly(native, cstr, cstrNow);
