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
 * for await (const item of walk(["src"], { recursive: true })) console.log(item.rel);
 */
import fs from "node:fs";
import path from "node:path";
import { native } from "../native.ts";
import { WALKER_URL } from "../entrypoints.ts";
import { prestart, takeWorker } from "../streams/spare.ts";

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

/** The walk itself, on the calling thread (the walker worker runs this; see walkInWorker). */
export async function* walk(sources: string[], opts: WalkOptions): AsyncGenerator<WalkItem> {
  for (const src of sources) {
    let st: fs.BigIntStats;
    try {
      st = fs.statSync(src, { bigint: true });
    } catch (e) {
      yield { kind: "error", abs: src, message: errnoText(e) };
      continue;
    }
    const name = topName(src);
    if (st.isDirectory()) {
      if (!opts.recursive) {
        yield { kind: "error", abs: src, message: "not a regular file (use -r to copy directories)" };
        continue;
      }
      yield* walkDir(src, name, st, [st], path.basename(src.replace(/\/+$/, "")) === ".");
    } else if (st.isFile()) {
      yield { kind: "file", abs: src, rel: name, top: true };
    } else {
      yield { kind: "error", abs: src, message: "not a regular file" };
    }
  }
}

async function* walkDir(abs: string, rel: string, st: fs.BigIntStats, ancestors: fs.BigIntStats[], merge = false): AsyncGenerator<WalkItem> {
  const dirStat = { mode: Number(st.mode & 0o7777n), mtimeNs: st.mtimeNs, atimeNs: st.atimeNs };
  yield { kind: "dir", abs, rel, top: ancestors.length === 1, merge, stat: dirStat };
  let dir: fs.Dir;
  try {
    dir = await fs.promises.opendir(abs, { bufferSize: 256 });
  } catch (e) {
    yield { kind: "error", abs, message: errnoText(e) };
    return;
  }
  const subdirs: [string, string, fs.BigIntStats][] = [];
  for await (const d of dir) {
    const childAbs = path.join(abs, d.name);
    const childRel = `${rel}/${d.name}`;
    // The directory entry's type spares a stat per file; links and unknown types are resolved.
    if (d.isFile()) {
      yield { kind: "file", abs: childAbs, rel: childRel, top: false };
      continue;
    }
    let cst: fs.BigIntStats;
    try {
      cst = fs.statSync(childAbs, { bigint: true });
    } catch (e) {
      yield { kind: "error", abs: childAbs, message: errnoText(e) };
      continue;
    }
    if (cst.isFile()) yield { kind: "file", abs: childAbs, rel: childRel, top: false };
    else if (cst.isDirectory()) {
      if (ancestors.some((a) => a.dev === cst.dev && a.ino === cst.ino)) {
        yield { kind: "warning", abs: childAbs, message: "directory loop through a symbolic link, skipped" };
      } else subdirs.push([childAbs, childRel, cst]);
    } else yield { kind: "warning", abs: childAbs, message: "not a regular file, skipped" };
  }
  // Files of a directory first, then its subdirectories: the receiver sees each
  // directory before anything inside it, and the open handle count stays at one.
  for (const [a, r, s] of subdirs) yield* walkDir(a, r, s, [...ancestors, s]);
}

/** The name a source operand takes at the destination, as scp names it. */
function topName(src: string): string {
  const trimmed = src.replace(/\/+$/, "");
  const base = path.basename(trimmed || "/");
  return base === "" || base === "." || base === ".." ? path.basename(path.resolve(src)) || "root" : base;
}

/** The C library's wording of an errno ("No such file or directory"), as scp prints it. */
export function errnoText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err.errno === "number") return String(native().escp_strerror(-Math.abs(err.errno)));
  return err instanceof Error ? err.message : String(e);
}

/** Boots the walker thread ahead of time (see spare.ts). */
export function prestartWalker(): void {
  prestart(WALKER_URL, 1);
}

/** Items per message from the walker thread; it stays at most two batches ahead. */
const WALK_BATCH = 512;

/**
 * The walk on its own thread, so directory iteration overlaps the main
 * thread's per-file work; items arrive in batches, and the walker waits
 * whenever two batches are not yet consumed (bounded memory for any tree).
 */
export async function* walkInWorker(sources: string[], opts: WalkOptions): AsyncGenerator<WalkItem> {
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
      yield* batch;
    }
  } finally {
    w.terminate();
  }
}
