/**
 * The sender's plan: which files and directories each source operand stands
 * for, streamed as they are found so a million files never sit in one array.
 *
 * Follows OpenSSH scp: symbolic links are followed (the file or directory
 * they point to is sent), hard links are sent as separate files, and special
 * files (FIFOs, sockets, devices) are skipped with a warning. A directory
 * that links back to one of its ancestors is skipped to avoid a loop.
 *
 * @example
 * await walk(["src"], { recursive: true }, (item) => console.log(item.rel));
 */
import fs from "node:fs";
// Not node:path: Bun's replaces what is not UTF-8 in a name with U+FFFD (names.ts).
import path from "path-browserify";
import { native, nativePath, cstr, ptr, codeText, errnoText, type DirNative } from "../native.ts";
import { WALKER_URL } from "../entrypoints.ts";
import { prestart, takeWorker } from "../streams/spare.ts";
import { dfgOnly } from "../jit.ts";
import { decodeName, fsPath, workingDir } from "../names.ts";

export type WalkItem =
  /** A file's stat is left to the sender, which takes it from the open file. */
  | { kind: "file"; abs: string; rel: string; top: boolean }
  /** merge: the operand was `dir/.` (or `.`): its contents go into an existing target directory. */
  | { kind: "dir"; abs: string; rel: string; top: boolean; merge?: boolean; stat: DirStat }
  | { kind: "error"; abs: string; message: string }
  | { kind: "warning"; abs: string; message: string };

/** What the receiver needs of a directory (plain values: items cross from the walker thread). */
export interface DirStat {
  mode: number;
  mtimeNs: bigint;
  atimeNs: bigint;
}

export interface WalkOptions {
  recursive: boolean;
}

/**
 * Takes the walk's items in order. A promise returned pauses the walk until it
 * settles (the walker thread's back-pressure); returning nothing costs no await,
 * so items flow at the price of a function call, not of an async iteration.
 */
export type Emit = (item: WalkItem) => Promise<void> | void;

/** The walk itself, on the calling thread (the walker worker runs this; see walkInWorker). */
export async function walk(sources: string[], opts: WalkOptions, emit: Emit): Promise<void> {
  // Two source files of one name would land on one destination file: the first goes, as
  // cp and rsync have it (scp lets the last overwrite the first and says nothing).
  const files = new Map<string, { src: string; dev: bigint; ino: bigint }>();
  for (const src of sources) {
    let st: fs.BigIntStats;
    try {
      st = fs.statSync(fsPath(src), { bigint: true });
    } catch (e) {
      // An empty operand would print as a bare "escp: No such file or directory".
      await emit({ kind: "error", abs: src, message: src === "" ? `the source is an empty name: ${errText(e)}` : errText(e) });
      continue;
    }
    const name = topName(src);
    if (st.isDirectory()) {
      if (!opts.recursive) {
        await emit({ kind: "error", abs: src, message: "not a regular file (use -r to copy directories)" });
        continue;
      }
      await walkDir(emit, src, name, [], path.basename(src.replace(/\/+$/, "")) === ".");
    } else if (st.isFile()) {
      const first = files.get(name);
      if (first?.dev === st.dev && first.ino === st.ino) {
        await emit({ kind: "warning", abs: src, message: "source file given more than once" }); // as cp says
        continue;
      }
      if (first) {
        await emit({ kind: "error", abs: src, message: `${first.src} has the same name and goes there first: not copied` });
        continue;
      }
      files.set(name, { src, dev: st.dev, ino: st.ino });
      await emit({ kind: "file", abs: src, rel: name, top: true });
    } else {
      await emit({ kind: "error", abs: src, message: "not a regular file" });
    }
  }
}

/** Subdirectories whose listings are read ahead, concurrently, while the walk yields the ones before. */
const LIST_AHEAD = 8;
/** Listings read ahead and not yet walked, over the whole tree (bounds memory at any depth). */
const MAX_AHEAD = 32;
/** Entries of a directory read (and their types resolved) per step; a larger one is read as it is walked. */
const LIST_CHUNK = 1024;
/** Subdirectories of one directory kept by name while they are walked; more are read again (walkWide). */
const MAX_SUBDIRS = 1024;

/** The library's directory calls: the walker thread binds only these (useDirLibrary). */
let dirLib: DirNative | undefined;

/** On the walker thread: the calls of the library the main thread loaded (nativePath()). */
export function useDirLibrary(lib: DirNative): void {
  dirLib = lib;
}

function lib(): DirNative {
  return (dirLib ??= native());
}

/** getdents64 chunk per open directory (ffi/dirlist.c): ~800 names of 20 bytes. */
const DIR_BUF = 32 << 10;
const DT_DIR = 4, DT_REG = 8, DT_LNK = 10, DT_UNKNOWN = 0;

/** An open directory, read a chunk at a time: its memory is the chunk, however many names it holds. */
interface DirReader {
  fd: number;
  buf: Uint8Array;
  at: number;
  end: number;
}

/**
 * Buffers of closed readers, for the next directories: a new one each, for a walk
 * of 30,000 small directories, was ~1 GB through the allocator and, as garbage
 * waiting to be swept, 6 MiB more of the sender's resident set.
 */
const spareBufs: Uint8Array[] = [];
let bufsMade = 0;

function openReader(fd: number): DirReader {
  let buf = spareBufs.pop();
  if (!buf) {
    buf = new Uint8Array(DIR_BUF);
    bufsMade++;
  }
  return { fd, buf, at: 0, end: 0 };
}

/** Closes a reader early; readEntries closes one itself at the end of its directory or on a failure. */
function closeDir(dir: DirReader): void {
  if (dir.fd < 0) return;
  lib().escp_close(dir.fd);
  dir.fd = -1;
  if (spareBufs.length < MAX_AHEAD) spareBufs.push(dir.buf);
}

/** Directory buffers allocated by this thread's walks so far (for tests: they are reused). */
export function dirBuffersMade(): number {
  return bufsMade;
}

/** A directory entry, its type resolved (following links, as scp does). */
interface Entry {
  name: string;
  kind: "file" | "dir" | "other" | "error";
  message?: string;
}

/** A directory's identity (the loop check) and what the receiver needs of it. */
interface DirId extends DirStat {
  dev: bigint;
  ino: bigint;
}

/**
 * A directory's own stat, its first entries, and the handle to read the rest
 * from (if any). The stat is taken with the listing, not kept from the parent's:
 * a wide directory's subdirectories then wait as names alone (with their stats,
 * 10,000 of them held ~3 MB of the walker's heap).
 */
interface Listing {
  self?: DirId;
  entries: Entry[];
  rest?: DirReader;
  error?: string;
}

let ahead = 0;

/**
 * Reads up to LIST_CHUNK entries, passing over those of type `skip` (DT_REG or DT_DIR:
 * a pass that wants only the others need not decode them); the ones whose type the
 * directory entry does not give (links, DT_UNKNOWN) are stat'ed concurrently. On a
 * network filesystem each of those is a round trip: issuing them together, and
 * listing several directories at once (walkDir; a directory's own stat comes with
 * its listing), is what makes the walk parallel.
 */
async function readEntries(dir: DirReader, abs: string, skip = -1): Promise<{ entries: Entry[]; more: boolean }> {
  const entries: Entry[] = [];
  const stats: Promise<void>[] = [];
  const more = readChunk(dir, abs, skip, entries, stats);
  await Promise.all(stats);
  return { entries, more };
}

/**
 * readEntries' loop, synchronous so that noFTL reaches it (see jit.ts): the FTL
 * compiles of the walk's loops were part of what grew the sender's resident set with
 * the file count (docs/performance.md § 3 item 3). False at the directory's end.
 */
function readChunk(dir: DirReader, abs: string, skip: number, entries: Entry[], stats: Promise<void>[]): boolean {
  while (entries.length < LIST_CHUNK) {
    if (dir.at >= dir.end) {
      // Synchronous: this is the walker's own thread, and one call reads hundreds of names.
      const n = Number(lib().escp_readdir(dir.fd, ptr(dir.buf), dir.buf.length));
      if (n <= 0) closeDir(dir);
      if (n < 0) throw new Error(strerror(n));
      if (n === 0) return false;
      dir.at = 0;
      dir.end = n;
    }
    const type = dir.buf[dir.at], len = dir.buf[dir.at + 1];
    if (type === skip) {
      dir.at += 2 + len;
      continue;
    }
    const name = decodeName(dir.buf.subarray(dir.at + 2, dir.at + 2 + len));
    dir.at += 2 + len;
    const e: Entry = { name, kind: type === DT_REG ? "file" : type === DT_DIR ? "dir" : "other" };
    entries.push(e);
    if (type !== DT_LNK && type !== DT_UNKNOWN) continue;
    stats.push(fs.promises.stat(fsPath(path.join(abs, name)), { bigint: true }).then(
      (st) => {
        e.kind = st.isFile() ? "file" : st.isDirectory() ? "dir" : "other";
      },
      (err) => {
        e.kind = "error";
        e.message = errText(err);
      },
    ));
  }
  return true;
}

async function list(abs: string): Promise<Listing> {
  let self: DirId;
  try {
    const st = await fs.promises.stat(fsPath(abs), { bigint: true });
    // Replaced since its parent was listed: what is there now is what counts.
    if (!st.isDirectory()) return { entries: [], error: "not a directory any more (changed during the walk)" };
    self = { dev: st.dev, ino: st.ino, mode: Number(st.mode & 0o7777n), mtimeNs: st.mtimeNs, atimeNs: st.atimeNs };
  } catch (e) {
    return { entries: [], error: errText(e) };
  }
  const fd = lib().escp_opendir(cstr(abs));
  if (fd < 0) return { self, entries: [], error: strerror(fd) };
  const dir = openReader(fd);
  try {
    const { entries, more } = await readEntries(dir, abs);
    return { self, entries, rest: more ? dir : undefined };
  } catch (e) {
    return { self, entries: [], error: errText(e) };
  }
}

/**
 * Emits directory `abs` and its files; returns its subdirectories' names (none, and
 * `wide`, when there are more than MAX_SUBDIRS), or nothing if it is not walked further.
 */
async function walkFiles(
  emit: Emit, abs: string, rel: string, ancestors: DirId[], merge: boolean, listing: Promise<Listing> | undefined,
): Promise<{ above: DirId[]; subdirs: string[]; wide: boolean } | undefined> {
  const l = await (listing ?? list(abs));
  const { self, error } = l;
  let entries = l.entries, rest = l.rest;
  // The listing's promise stays reachable from the walk above us: it must not keep these.
  l.entries = [];
  l.rest = undefined;
  if (!self) {
    await emit({ kind: "error", abs, message: error! });
    return;
  }
  if (ancestors.some((a) => a.dev === self.dev && a.ino === self.ino)) {
    if (rest) closeDir(rest);
    await emit({ kind: "warning", abs, message: "directory loop through a symbolic link, skipped" });
    return;
  }
  const paused = emit({ kind: "dir", abs, rel, top: ancestors.length === 0, merge, stat: { mode: self.mode, mtimeNs: self.mtimeNs, atimeNs: self.atimeNs } });
  if (paused) await paused;
  if (error) {
    await emit({ kind: "error", abs, message: error });
    return;
  }
  const seen: Seen = { subdirs: [], wide: false };
  const inside = entryPrefix(abs);
  for (;;) {
    for (let i = 0; i < entries.length;) {
      const step = emitEntries(emit, entries, i, inside, rel, seen);
      i = step.next;
      if (step.paused) await step.paused;
    }
    if (!rest) break;
    // Past MAX_SUBDIRS, the subdirectories' names are read again later (walkWide): not now.
    const next = await readEntries(rest, abs, seen.wide ? DT_DIR : -1).catch((e) => ({ entries: [] as Entry[], more: false, error: errText(e) }));
    if ("error" in next) await emit({ kind: "error", abs, message: next.error });
    entries = next.entries;
    if (!next.more) rest = undefined;
  }
  return { above: [...ancestors, self], subdirs: seen.subdirs, wide: seen.wide };
}

/** A directory's subdirectories as its entries go by: their names, or `wide` past MAX_SUBDIRS. */
interface Seen {
  subdirs: string[];
  wide: boolean;
}

/**
 * Emits entries from `from` on, keeping subdirectories' names in `seen`, until one emit
 * asks for a pause; returns where to go on from, and that pause. Synchronous, for the
 * same reason as readChunk.
 */
function emitEntries(
  emit: Emit, entries: Entry[], from: number, inside: string, rel: string, seen: Seen,
): { next: number; paused?: Promise<void> } {
  for (let i = from; i < entries.length; i++) {
    const e = entries[i];
    if (e.kind === "dir") {
      if (!seen.wide) seen.subdirs.push(e.name);
      if (seen.subdirs.length > MAX_SUBDIRS) {
        seen.wide = true;
        seen.subdirs.length = 0;
      }
      continue;
    }
    const childAbs = inside + e.name;
    let paused: Promise<void> | void;
    if (e.kind === "file") paused = emit({ kind: "file", abs: childAbs, rel: `${rel}/${e.name}`, top: false });
    else if (e.kind === "error") paused = emit({ kind: "error", abs: childAbs, message: e.message! });
    else paused = emit({ kind: "warning", abs: childAbs, message: "not a regular file, skipped" });
    if (paused) return { next: i + 1, paused };
  }
  return { next: entries.length };
}

/**
 * Walks directory `abs` (named `rel` at the destination) below `ancestors`, the
 * directories above it: its files first, then its subdirectories, so the
 * receiver sees each directory before anything inside it.
 */
async function walkDir(
  emit: Emit, abs: string, rel: string, ancestors: DirId[], merge = false, listing?: Promise<Listing>,
): Promise<void> {
  // A separate frame: an async function's suspended frame keeps its temporaries,
  // and this one's would keep the directory's last chunk of entries while the whole
  // subtree below is walked.
  const opened = await walkFiles(emit, abs, rel, ancestors, merge, listing);
  if (!opened) return;
  const { above, subdirs, wide } = opened;
  if (wide) await walkWide(emit, abs, rel, above);
  else await walkSubdirs(emit, abs, rel, above, subdirs);
}

/**
 * The subdirectories of a directory that has more than MAX_SUBDIRS, from a second
 * reading of it, a chunk at a time: their names, all decoded at once and held
 * while the subtrees below were walked, cost the sender ~6 MiB of resident set
 * for 30,000 of them.
 */
async function walkWide(emit: Emit, abs: string, rel: string, above: DirId[]): Promise<void> {
  const self = above[above.length - 1];
  const again = await list(abs);
  let rest = again.rest;
  if (again.error || !again.self || again.self.dev !== self.dev || again.self.ino !== self.ino) {
    if (rest) closeDir(rest);
    await emit({ kind: "error", abs, message: again.error ?? "not the same directory any more (changed during the walk)" });
    return;
  }
  let names = dirNames(again.entries);
  again.entries = []; // this frame keeps `again` while the subtrees are walked
  for (;;) {
    await walkSubdirs(emit, abs, rel, above, names);
    if (!rest) return;
    const next = await readDirNames(rest, abs);
    names = next.names;
    if (!next.more) rest = undefined;
  }
}

/** The subdirectories' names in the next chunk of `dir`; the chunk's entries are not kept. */
async function readDirNames(dir: DirReader, abs: string): Promise<{ names: string[]; more: boolean }> {
  // A failure was reported by the first reading of the directory.
  const { entries, more } = await readEntries(dir, abs, DT_REG).catch(() => ({ entries: [] as Entry[], more: false }));
  return { names: dirNames(entries), more };
}

function dirNames(entries: Entry[]): string[] {
  return entries.filter((e) => e.kind === "dir").map((e) => e.name);
}

/** Walks the subdirectories `names` of `abs`, their listings read ahead. */
async function walkSubdirs(emit: Emit, abs: string, rel: string, above: DirId[], subdirs: string[]): Promise<void> {
  const listed: (Promise<Listing> | undefined)[] = [];
  const inside = entryPrefix(abs);
  for (let i = 0; i < subdirs.length; i++) {
    for (let j = i; j < Math.min(subdirs.length, i + LIST_AHEAD) && ahead < MAX_AHEAD; j++) {
      if (listed[j]) continue;
      ahead++;
      listed[j] = list(inside + subdirs[j]);
    }
    const name = subdirs[i];
    const mine = listed[i];
    listed[i] = undefined;
    if (mine) mine.finally(() => ahead--);
    await walkDir(emit, inside + name, `${rel}/${name}`, above, false, mine);
  }
}

/**
 * What path.join(abs, name) is for every name a directory lists (none holds "/",
 * none is "." or ".."): abs + prefix, one join a directory instead of one a name.
 */
function entryPrefix(abs: string): string {
  return path.join(abs, "_").slice(0, -1);
}

/** The name a source operand takes at the destination, as scp names it. */
function topName(src: string): string {
  const trimmed = src.replace(/\/+$/, "");
  const base = path.basename(trimmed || "/");
  return base === "" || base === "." || base === ".." ? path.basename(path.resolve(workingDir(), src)) || "root" : base;
}

/** errnoText and codeText with this thread's library. */
function errText(e: unknown): string {
  return errnoText(e, lib());
}

function strerror(code: number): string {
  return codeText(code, lib());
}

/** Plain operands (no -r) up to this many are walked on the calling thread. */
const WALK_HERE_MAX = 64;

/**
 * Whether a walk runs on the calling thread: a few plain operands take a stat
 * each, less than the ~12 ms of CPU a walker thread costs to boot (a 1-byte
 * copy's walker was a third of the sending end's start-up threads).
 */
function walksHere(sources: string[], opts: WalkOptions): boolean {
  return !opts.recursive && sources.length <= WALK_HERE_MAX;
}

/** Boots the walker thread ahead of time (see spare.ts), if this walk will need one. */
export function prestartWalker(sources: string[], opts: WalkOptions): void {
  if (!walksHere(sources, opts)) prestart(WALKER_URL, 1, { libPath: nativePath() });
}

/** The walk's items in batches: on the walker thread (walkInWorker), or here for a few plain operands. */
export async function* walkBatches(sources: string[], opts: WalkOptions): AsyncGenerator<WalkItem[]> {
  if (!walksHere(sources, opts)) return yield* walkInWorker(sources, opts);
  const items: WalkItem[] = [];
  await walk(sources, opts, (item) => void items.push(item));
  yield items;
}

/** Items per message from the walker thread; it stays at most two batches ahead. */
const WALK_BATCH = 512;

/**
 * The walk on its own thread, so directory iteration overlaps the main
 * thread's per-file work; items arrive in batches (and are handed on as
 * batches: one await per 512 items), and the walker waits whenever two
 * batches are not yet consumed (bounded memory for any tree).
 */
async function* walkInWorker(sources: string[], opts: WalkOptions): AsyncGenerator<WalkItem[]> {
  const w = takeWorker(WALKER_URL);
  const batches: (WalkItem[] | null)[] = [];
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  w.onmessage = (ev: MessageEvent<WalkItem[] | null>) => {
    batches.push(ev.data);
    wake?.();
  };
  w.onerror = (ev) => {
    failure = new Error(`directory walker crashed: ${ev.message}`);
    wake?.();
  };
  w.postMessage({ sources, opts, batch: WALK_BATCH });
  try {
    for (;;) {
      while (!batches.length && !failure) await new Promise<void>((r) => (wake = r));
      if (failure) throw failure;
      const batch = batches.shift()!;
      if (batch === null) return;
      w.postMessage("more");
      yield batch;
    }
  } finally {
    w.terminate();
  }
}

dfgOnly(walk, readEntries, readChunk, emitEntries, list, walkFiles, walkDir);
