/**
 * Directory handles. The receiver opens each destination directory once,
 * beneath the destination root (openat2 RESOLVE_BENEATH, O_PATH), and then
 * inspects, creates and renames a file in it by its bare name relative to
 * that handle: one path walk per directory instead of four per file, which
 * is most of the per-file cost of many small files. The sender opens its
 * sources the same way, relative to their directories (without a root:
 * paths as given, links followed, as scp reads them).
 *
 * The cache is bounded (a receiver holds at most `max` directory descriptors
 * besides the root, whatever the tree looks like); a handle that was closed
 * is simply opened again on its next use. A handle a stream worker will
 * create a file in is pinned until that is settled; at most half the cache
 * can be pinned, so the bound holds.
 *
 * @example
 * const dirs = new DirHandles(rootFd);   // new DirHandles() on the sending side
 * const fd = dirs.get("a/b");   // a directory fd, or a negative errno
 * if (fd >= 0) lib.escp_fstatat(fd, cstr("file"), ptr(out));
 * dirs.close();
 */
import fs from "node:fs";
import { native, cstr } from "../native.ts";
import { dfgOnly } from "../jit.ts";
import { fsPath } from "../names.ts";

const { O_PATH, O_DIRECTORY } = fs.constants as Record<string, number>;
const NO_ROOT = -1;

/** How many directory handles to keep beside `window` files in flight: as many, up to 64. */
export function dirHandles(window: number): number {
  return Math.max(4, Math.min(64, window));
}

export class DirHandles {
  /** Least recently used first (a Map keeps insertion order). */
  private readonly fds = new Map<string, number>();
  /** Pins per directory (see pin). */
  private readonly pins = new Map<string, number>();

  /** rootFd: directories are opened beneath it ("" is the root itself); none: paths as given. */
  constructor(private readonly rootFd = NO_ROOT, private readonly max = 64) {}

  /** The fd of directory `rel`; a negative errno if it cannot be opened. */
  get(rel: string): number {
    if (rel === "" && this.rootFd !== NO_ROOT) return this.rootFd;
    const fd = this.fds.get(rel);
    if (fd !== undefined) {
      this.fds.delete(rel);
      this.fds.set(rel, fd);
      return fd;
    }
    const lib = native();
    const opened = this.open(rel);
    if (opened < 0) return opened;
    if (this.fds.size >= this.max) {
      for (const [old, ofd] of this.fds) {
        if (this.pins.has(old)) continue;
        this.fds.delete(old);
        lib.escp_close(ofd);
        break;
      }
    }
    this.fds.set(rel, opened);
    return opened;
  }

  /**
   * Keeps the handle of `rel` (which get() just returned) open until as many unpin
   * calls; false, and nothing pinned, when half the cache is pinned already.
   */
  pin(rel: string): boolean {
    if (rel === "") return true;
    const n = this.pins.get(rel) ?? 0;
    if (n === 0 && this.pins.size >= this.max / 2) return false;
    this.pins.set(rel, n + 1);
    return true;
  }

  unpin(rel: string): void {
    const n = this.pins.get(rel) ?? 0;
    if (n <= 1) this.pins.delete(rel);
    else this.pins.set(rel, n - 1);
  }

  private open(rel: string): number {
    if (this.rootFd !== NO_ROOT) return native().escp_openat_beneath(this.rootFd, cstr(rel), O_PATH | O_DIRECTORY, 0, 0, null);
    try {
      return fs.openSync(fsPath(rel), O_PATH | O_DIRECTORY);
    } catch (e) {
      return -Math.abs((e as NodeJS.ErrnoException).errno ?? 5 /* EIO */);
    }
  }

  /** Closes every handle but the root. */
  close(): void {
    for (const fd of this.fds.values()) native().escp_close(fd);
    this.fds.clear();
  }
}

dfgOnly(DirHandles.prototype);
