/**
 * The sender's walk (src/plan/walk.ts): every file once, each directory
 * before what it holds, links followed as scp follows them, with directory
 * listings read ahead and in parallel (large directories, many siblings,
 * deep trees).
 */
import { describe, test, expect } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fullGC, heapStats } from "bun:jsc";
import { walk, dirBuffersMade, type WalkItem } from "../src/plan/walk.ts";
import { tmpdir } from "./harness.ts";

async function collect(sources: string[]): Promise<WalkItem[]> {
  const out: WalkItem[] = [];
  await walk(sources, { recursive: true }, (item) => void out.push(item));
  return out;
}

/** Checks the order the receiver relies on; returns the rel paths of files and of directories. */
function checkOrder(items: WalkItem[]): { files: string[]; dirs: string[] } {
  const seen = new Set<string>();
  const files: string[] = [], dirs: string[] = [];
  const subdirStarted = new Set<string>();
  for (const i of items) {
    if (i.kind !== "file" && i.kind !== "dir") continue;
    const parent = path.posix.dirname(i.rel);
    if (i.rel.includes("/")) expect(seen.has(parent)).toBe(true); // the directory came first
    if (i.kind === "file") {
      // a directory's files come before any of its subdirectories
      expect(subdirStarted.has(parent)).toBe(false);
      files.push(i.rel);
    } else {
      if (i.rel.includes("/")) subdirStarted.add(parent);
      seen.add(i.rel);
      dirs.push(i.rel);
    }
  }
  return { files: files.sort(), dirs: dirs.sort() };
}

describe("walk", () => {
  test("a wide, deep tree: every file once, each directory before its contents", async () => {
    const root = path.join(tmpdir("walk"), "top");
    const want: string[] = [], wantDirs = ["top"];
    // 40 siblings (more than are read ahead at once), each 3 levels deep, and one
    // directory larger than a listing chunk.
    for (let a = 0; a < 40; a++) {
      for (let b = 0; b < 3; b++) {
        const d = path.join(root, `a${a}`, `b${b}`, "c");
        fs.mkdirSync(d, { recursive: true });
        for (let f = 0; f < 3; f++) {
          fs.writeFileSync(path.join(d, `f${f}`), "x");
          want.push(`top/a${a}/b${b}/c/f${f}`);
        }
        wantDirs.push(`top/a${a}/b${b}`, `top/a${a}/b${b}/c`);
      }
      fs.writeFileSync(path.join(root, `a${a}`, "g"), "y");
      want.push(`top/a${a}/g`);
      wantDirs.push(`top/a${a}`);
    }
    fs.mkdirSync(path.join(root, "big"));
    for (let f = 0; f < 2600; f++) {
      fs.writeFileSync(path.join(root, "big", `n${f}`), "");
      want.push(`top/big/n${f}`);
    }
    fs.mkdirSync(path.join(root, "big", "zsub"));
    fs.writeFileSync(path.join(root, "big", "zsub", "last"), "");
    want.push("top/big/zsub/last");
    wantDirs.push("top/big", "top/big/zsub");
    const items = await collect([root]);
    expect(items.filter((i) => i.kind === "error" || i.kind === "warning")).toEqual([]);
    const { files, dirs } = checkOrder(items);
    expect(files).toEqual(want.sort());
    expect(dirs).toEqual(wantDirs.sort());
  });

  test("a promise from the taker pauses the walk until it settles (back-pressure)", async () => {
    const root = path.join(tmpdir("walk"), "p");
    fs.mkdirSync(path.join(root, "d"), { recursive: true });
    for (let f = 0; f < 20; f++) fs.writeFileSync(path.join(root, "d", `f${f}`), "");
    const got: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const done = walk([root], { recursive: true }, (item) => {
      got.push(item.kind === "file" || item.kind === "dir" ? item.rel : item.kind);
      if (got.length === 5) return gate;
    });
    await Bun.sleep(50);
    expect(got.length).toBe(5); // nothing more while the fifth item's promise is pending
    release();
    await done;
    expect(got.length).toBe(22); // p, p/d and 20 files
  });

  test("links are followed as scp follows them; loops, specials and dangling links are reported", async () => {
    const base = tmpdir("walk");
    const root = path.join(base, "t");
    fs.mkdirSync(path.join(root, "real", "inner"), { recursive: true });
    fs.writeFileSync(path.join(root, "real", "inner", "f"), "1");
    fs.writeFileSync(path.join(root, "file"), "2");
    fs.symlinkSync("file", path.join(root, "tofile"));
    fs.symlinkSync("real", path.join(root, "todir"));
    fs.symlinkSync("..", path.join(root, "real", "up")); // a loop back to t
    fs.symlinkSync("nowhere", path.join(root, "dangling"));
    expect(spawnSync("mkfifo", [path.join(root, "fifo")]).status).toBe(0);
    const items = await collect([root]);
    const { files, dirs } = checkOrder(items);
    expect(files).toEqual(["t/file", "t/real/inner/f", "t/todir/inner/f", "t/tofile"]);
    expect(dirs).toEqual(["t", "t/real", "t/real/inner", "t/todir", "t/todir/inner"]);
    const notes = items.filter((i) => i.kind === "error" || i.kind === "warning").map((i) => [i.kind, path.relative(base, i.abs), "message" in i ? i.message : ""]);
    expect(notes.sort()).toEqual([
      ["error", "t/dangling", "No such file or directory"],
      ["warning", "t/fifo", "not a regular file, skipped"],
      ["warning", "t/real/up", "directory loop through a symbolic link, skipped"],
      ["warning", "t/todir/up", "directory loop through a symbolic link, skipped"],
    ]);
  });

  /** Cells of `type` the walk of `root` holds (after a full collection) when it is halfway through its `items` items. */
  async function heldHalfway(root: string, items: number, type = "Object"): Promise<number> {
    const objects = () => {
      fullGC();
      return heapStats().objectTypeCounts[type] ?? 0;
    };
    const before = objects();
    let seen = 0, during = 0;
    await walk([root], { recursive: true }, () => {
      if (++seen === Math.floor(items / 2)) during = objects();
    });
    expect(seen).toBe(items);
    return during - before;
  }

  test("a wide directory's subdirectories wait as names: its listing is not kept while they are walked", async () => {
    const root = path.join(tmpdir("walk"), "wide");
    const N = 6000;
    for (let i = 0; i < N; i++) fs.mkdirSync(path.join(root, `d${i}`), { recursive: true });
    // Halfway through the subdirectories, long after the root's listing was read. Keeping
    // it (an entry object per subdirectory, and the handle's own per-entry objects) adds ~2N;
    // what may remain is the chunk of 1,024 being walked (walkWide).
    expect(await heldHalfway(root, N + 1)).toBeLessThan(N / 4);
  });

  test("a very wide directory's subdirectory names are read again in chunks, not all held while they are walked", async () => {
    const base = tmpdir("walk"), root = path.join(base, "very-wide");
    const N = 5000;
    for (let i = 0; i < N; i++) fs.mkdirSync(path.join(root, `subdirectory-${i}`), { recursive: true });
    // Holding every name until its turn keeps ~N/2 strings halfway; chunks of 1,024 keep fewer.
    expect(await heldHalfway(root, N + 1, "string")).toBeLessThan(N / 4);
    // Files among them, in it and below, and a link to a directory elsewhere: each once, in order.
    for (let i = 0; i < N; i += 1000) fs.writeFileSync(path.join(root, `file-${i}`), "");
    fs.writeFileSync(path.join(root, "subdirectory-4999", "inner"), "");
    fs.mkdirSync(path.join(base, "elsewhere"));
    fs.writeFileSync(path.join(base, "elsewhere", "x"), "");
    fs.symlinkSync(path.join(base, "elsewhere"), path.join(root, "linked"));
    const { files, dirs } = checkOrder(await collect([root]));
    expect(dirs.length).toBe(N + 2);
    expect(new Set(dirs).size).toBe(N + 2);
    expect(files).toEqual([
      ...[0, 1000, 2000, 3000, 4000].map((i) => `very-wide/file-${i}`), "very-wide/linked/x", "very-wide/subdirectory-4999/inner",
    ].sort());
  });

  test("a very wide directory replaced between its two readings is reported, not walked from the newcomer", async () => {
    const base = tmpdir("walk"), root = path.join(base, "wide");
    for (let i = 0; i < 1100; i++) fs.mkdirSync(path.join(root, `d${i}`), { recursive: true });
    fs.writeFileSync(path.join(root, "file"), "");
    const items: WalkItem[] = [];
    await walk([root], { recursive: true }, (item) => {
      items.push(item);
      if (item.kind === "file" && item.rel === "wide/file") {
        // Its files are out; its subdirectories come from a second reading, of whatever is there now.
        fs.renameSync(root, path.join(base, "moved"));
        fs.mkdirSync(path.join(root, "newcomer"), { recursive: true });
      }
    });
    const errors = items.filter((i) => i.kind === "error");
    expect(errors).toEqual([{ kind: "error", abs: root, message: "not the same directory any more (changed during the walk)" }]);
    expect(items.filter((i) => i.kind === "dir").map((i) => i.rel)).toEqual(["wide"]);
  });

  test("a large directory met again through a loop is not left open", async () => {
    const root = path.join(tmpdir("walk"), "big");
    fs.mkdirSync(root);
    for (let i = 0; i < 1100; i++) fs.writeFileSync(path.join(root, `f${i}`), "");
    fs.symlinkSync(".", path.join(root, "loop")); // its listing is read (in chunks) before the loop is seen
    const fds = () => fs.readdirSync("/proc/self/fd").length;
    const before = fds();
    const items = await collect([root]);
    expect(items.filter((i) => i.kind === "warning").map((i) => i.abs)).toEqual([path.join(root, "loop")]);
    expect(fds()).toBe(before);
  });

  test("many small directories share a few listing buffers instead of one each", async () => {
    const root = path.join(tmpdir("walk"), "many");
    const N = 2000;
    for (let i = 0; i < N; i++) {
      fs.mkdirSync(path.join(root, `d${i}`), { recursive: true });
      fs.writeFileSync(path.join(root, `d${i}`, "f"), "");
    }
    const before = dirBuffersMade();
    expect((await collect([root])).length).toBe(2 * N + 1);
    // At most the listings read ahead at once, and the directories open on the way down.
    expect(dirBuffersMade() - before).toBeLessThan(64);
  });

  test("a large directory is read a chunk at a time: its names are not all held while it is walked", async () => {
    const root = path.join(tmpdir("walk"), "flat");
    fs.mkdirSync(root);
    const N = 8000;
    for (let i = 0; i < N; i++) fs.writeFileSync(path.join(root, `file-${i}`), "");
    // A listing read whole would hold an object per name (N, and more); chunks are
    // 1,024 names, and the one before the current may not be collected yet.
    expect(await heldHalfway(root, N + 1)).toBeLessThan(N / 2);
  });
});
