/**
 * Directory handles for the receiver. Each destination directory is opened
 * once, beneath the destination root (openat2 RESOLVE_BENEATH, O_PATH), and
 * a file in it is then inspected, created and renamed by its bare name
 * relative to that handle: one path walk per directory instead of four per
 * file, which is most of the per-file cost of many small files.
 *
 * The cache is bounded (a receiver holds at most `max` directory descriptors
 * besides the root, whatever the tree looks like); a handle that was closed
 * is simply opened again on its next use. A handle a stream worker will
 * create a file in is pinned until that is settled; at most half the cache
 * can be pinned, so the bound holds.
 *
 * @example
 * const dirs = new DirHandles(rootFd);
 * const fd = dirs.get("a/b");   // a directory fd, or a negative errno
 * if (fd >= 0) lib.escp_fstatat(fd, cstr("file"), ptr(out));
 * dirs.close();
 */
import fs from "node:fs";
import { native, cstr } from "../native.ts";

const { O_PATH, O_DIRECTORY } = fs.constants as Record<string, number>;

export class DirHandles {
  /** Least recently used first (a Map keeps insertion order). */
  private readonly fds = new Map<string, number>();
  /** Pins per directory (see pin). */
  private readonly pins = new Map<string, number>();

  constructor(private readonly rootFd: number, private readonly max = 64) {}

  /** The fd of directory `rel` ("" is the root), opened beneath the root; a negative errno if it cannot be. */
  get(rel: string): number {
    if (rel === "") return this.rootFd;
    const fd = this.fds.get(rel);
    if (fd !== undefined) {
      this.fds.delete(rel);
      this.fds.set(rel, fd);
      return fd;
    }
    const lib = native();
    const opened = lib.escp_openat_beneath(this.rootFd, cstr(rel), O_PATH | O_DIRECTORY, 0, 0, null);
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

  /** Closes every handle but the root. */
  close(): void {
    for (const fd of this.fds.values()) native().escp_close(fd);
    this.fds.clear();
  }
}
