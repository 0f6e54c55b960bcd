/**
 * The receiver's directory handles (src/transfer/dirs.ts) and the native
 * calls that use them: opened beneath the destination, bounded, and what a
 * file's last steps (escp_commit_file) do and report.
 */
import { describe, test, expect } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { DirHandles } from "../src/transfer/dirs.ts";
import { native, nativePath, cstr, ptr, MODE_KEEP, COMMIT_TIMES, COMMIT_UNNAMED, STAT_SLOTS, timesOf } from "../src/native.ts";
import { tmpdir } from "./harness.ts";

const lib = native();
const { O_RDONLY, O_DIRECTORY, O_WRONLY, O_CREAT, O_EXCL } = fs.constants;
const EXDEV = 18, EBADF = 9, ENOENT = 2, EISDIR = 21;

/** A fresh destination root holding the directories `dirs` (nested ones too), opened as the receiver opens it. */
function rootWith(...dirs: string[]): { root: string; rootFd: number } {
  const root = tmpdir("dirs");
  for (const d of dirs) fs.mkdirSync(path.join(root, d), { recursive: true });
  return { root, rootFd: fs.openSync(root, O_RDONLY | O_DIRECTORY) };
}

/** The inode a directory fd refers to, or a negative errno once it is closed. */
function inodeOf(fd: number): bigint | number {
  const out = new BigInt64Array(STAT_SLOTS);
  const r = lib.escp_fstat(fd, ptr(out));
  return r < 0 ? r : out[4];
}

/** The inode of the directory at `p`: what inodeOf gives for an fd still open on it. */
const inodeAt = (...p: string[]) => BigInt(fs.statSync(path.join(...p)).ino);

describe("directory handles", () => {
  test("a handle is the directory beneath the root, and the root itself for ''", () => {
    const { root, rootFd } = rootWith("a/b");
    const dirs = new DirHandles(rootFd);
    expect(dirs.get("")).toBe(rootFd);
    const fd = dirs.get("a/b");
    expect(fd).toBeGreaterThanOrEqual(0);
    expect(inodeOf(fd)).toBe(inodeAt(root, "a", "b"));
    expect(dirs.get("a/b")).toBe(fd); // cached, not opened again
    dirs.close();
    expect(inodeOf(fd)).toBe(-EBADF);
    fs.closeSync(rootFd);
  });

  test("a directory that is missing, or a link leading outside, is a negative errno", () => {
    const { root, rootFd } = rootWith(), outside = tmpdir("outside");
    fs.symlinkSync(outside, path.join(root, "out"));
    const dirs = new DirHandles(rootFd);
    expect(dirs.get("missing")).toBe(-ENOENT);
    expect(dirs.get("out")).toBe(-EXDEV);
    dirs.close();
    fs.closeSync(rootFd);
  });

  test("at most `max` handles stay open: the least recently used is closed first", () => {
    const { root, rootFd } = rootWith("a", "b", "c");
    const dirs = new DirHandles(rootFd, 2);
    const a = dirs.get("a"), b = dirs.get("b");
    expect(dirs.get("a")).toBe(a); // a is now the most recent
    dirs.get("c"); // evicts b
    expect(inodeOf(b)).toBe(-EBADF);
    expect(inodeOf(a)).toBe(inodeAt(root, "a"));
    const b2 = dirs.get("b"); // opened again, evicting a
    expect(inodeOf(b2)).toBe(inodeAt(root, "b"));
    expect(inodeOf(a)).toBe(-EBADF);
    dirs.close();
    fs.closeSync(rootFd);
  });
});

describe("pinned directory handles", () => {
  test("a pinned handle is not closed to make room; at most half the cache can be pinned", () => {
    const { root, rootFd } = rootWith("a", "b", "c", "d", "e");
    const dirs = new DirHandles(rootFd, 4);
    const a = dirs.get("a");
    expect(dirs.pin("a")).toBe(true);
    expect(dirs.pin("a")).toBe(true); // twice: open until two unpins
    dirs.get("b");
    expect(dirs.pin("b")).toBe(true);
    dirs.get("c");
    expect(dirs.pin("c")).toBe(false); // half of 4 are pinned already
    expect(dirs.pin("")).toBe(true); // the root is never closed anyway
    dirs.get("d");
    dirs.get("e"); // the cache is full: c, the oldest unpinned, goes, not a
    expect(inodeOf(a)).toBe(inodeAt(root, "a"));
    dirs.unpin("a");
    dirs.get("c"); // evicts d (a is still pinned once)
    expect(inodeOf(a)).toBe(inodeAt(root, "a"));
    dirs.unpin("a");
    dirs.get("d"); // a is the oldest unpinned now
    expect(inodeOf(a)).toBe(-EBADF);
    dirs.close();
    fs.closeSync(rootFd);
  });
});

describe("escp_commit_file and escp_fstatat", () => {
  test("mode, times, close and rename in one call; the file keeps its content", () => {
    const dir = tmpdir("commit");
    const dfd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
    const fd = lib.escp_openat_beneath(dfd, cstr(".f.escp-part"), O_WRONLY | O_CREAT | O_EXCL, 0o600, 0, null);
    fs.writeSync(fd, "hello");
    const mtime = 1_600_000_000_123_456_789n, atime = 1_500_000_000_000_000_001n;
    expect(lib.escp_commit_file(fd, 0o640, 1, ptr(timesOf(atime, mtime)), dfd, cstr(".f.escp-part"), cstr("f"))).toBe(0);
    expect(fs.existsSync(path.join(dir, ".f.escp-part"))).toBe(false);
    const st = fs.statSync(path.join(dir, "f"), { bigint: true });
    expect(Number(st.mode) & 0o7777).toBe(0o640);
    expect(st.mtimeNs).toBe(mtime);
    expect(fs.readFileSync(path.join(dir, "f"), "utf8")).toBe("hello");
    expect(inodeOf(fd)).toBe(-EBADF); // closed
    const out = new BigInt64Array(STAT_SLOTS);
    expect(lib.escp_fstatat(dfd, cstr("f"), ptr(out))).toBe(0);
    expect(out[0]).toBe(5n);
    expect(Number(out[2])).toBe(0o640);
    expect(lib.escp_fstatat(dfd, cstr("nothing"), ptr(out))).toBe(-ENOENT);
    expect(lib.escp_fstatat(dfd, cstr("../f"), ptr(out))).toBeLessThan(0); // one name only
    fs.closeSync(dfd);
  });

  test("a file created with its final mode keeps it through commit (MODE_KEEP: no fchmod)", () => {
    const dir = tmpdir("commit");
    const dfd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
    const umask = process.umask();
    const isDirect = new Int32Array(1);
    const fd = lib.escp_create_part(dfd, cstr(".k.escp-part"), 0, 0o751, ptr(isDirect));
    expect(fd).toBeGreaterThanOrEqual(0);
    expect(fs.statSync(path.join(dir, ".k.escp-part")).mode & 0o7777).toBe(0o751 & ~umask);
    fs.writeSync(fd, "kept");
    expect(lib.escp_commit_file(fd, MODE_KEEP, 0, null, dfd, cstr(".k.escp-part"), cstr("k"))).toBe(0);
    expect(fs.statSync(path.join(dir, "k")).mode & 0o7777).toBe(0o751 & ~umask);
    // mode 0 asks for the private default
    const fd0 = lib.escp_create_part(dfd, cstr(".z.escp-part"), 0, 0, ptr(isDirect));
    expect(fs.statSync(path.join(dir, ".z.escp-part")).mode & 0o7777).toBe(0o600 & ~umask);
    lib.escp_close(fd0);
    fs.closeSync(dfd);
  });

  test("a rename that fails is reported, the file is still closed and the temporary name kept for the caller", () => {
    const dir = tmpdir("commit");
    fs.mkdirSync(path.join(dir, "taken", "sub"), { recursive: true }); // a non-empty directory at the target name
    const dfd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
    const fd = lib.escp_openat_beneath(dfd, cstr(".taken.escp-part"), O_WRONLY | O_CREAT | O_EXCL, 0o600, 0, null);
    expect(lib.escp_commit_file(fd, 0o644, 0, null, dfd, cstr(".taken.escp-part"), cstr("taken"))).toBe(-EISDIR);
    expect(inodeOf(fd)).toBe(-EBADF);
    expect(fs.existsSync(path.join(dir, ".taken.escp-part"))).toBe(true);
    fs.closeSync(dfd);
  });
});

describe("unnamed files (escp_create_unnamed, commit with COMMIT_UNNAMED)", () => {
  /** An unnamed file in `dir` holding `text`, as a stream worker makes a one-block file. */
  function unnamed(dfd: number, text: string, mode = 0o644): number {
    const fd = lib.escp_create_unnamed(dfd, 0, mode, null);
    expect(fd).toBeGreaterThanOrEqual(0);
    fs.writeSync(fd, text);
    return fd;
  }

  test("it has no name until commit links it under the target name, with mode and times", () => {
    const dir = tmpdir("unnamed");
    const dfd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
    const fd = unnamed(dfd, "hello", 0o600);
    expect(fs.readdirSync(dir)).toEqual([]);
    const mtime = 1_600_000_000_123_456_789n;
    expect(lib.escp_commit_file(fd, 0o640, COMMIT_TIMES | COMMIT_UNNAMED, ptr(timesOf(mtime, mtime)), dfd, cstr(".f.escp-part"), cstr("f"))).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["f"]);
    const st = fs.statSync(path.join(dir, "f"), { bigint: true });
    expect(Number(st.mode) & 0o7777).toBe(0o640);
    expect(st.mtimeNs).toBe(mtime);
    expect(st.nlink).toBe(1n);
    expect(fs.readFileSync(path.join(dir, "f"), "utf8")).toBe("hello");
    expect(inodeOf(fd)).toBe(-EBADF);
    fs.closeSync(dfd);
  });

  test("an existing target, or a link planted at the temporary name, is replaced, never written through", () => {
    const dir = tmpdir("unnamed"), outside = tmpdir("outside");
    fs.writeFileSync(path.join(dir, "f"), "old content, longer");
    fs.writeFileSync(path.join(outside, "victim"), "precious");
    fs.symlinkSync(path.join(outside, "victim"), path.join(dir, ".f.escp-part"));
    const before = fs.statSync(path.join(dir, "f")).ino;
    const dfd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
    expect(lib.escp_commit_file(unnamed(dfd, "new"), MODE_KEEP, COMMIT_UNNAMED, null, dfd, cstr(".f.escp-part"), cstr("f"))).toBe(0);
    expect(fs.readFileSync(path.join(dir, "f"), "utf8")).toBe("new");
    expect(fs.statSync(path.join(dir, "f")).ino).not.toBe(before); // replaced whole, not truncated and rewritten
    expect(fs.readdirSync(dir)).toEqual(["f"]);
    expect(fs.readFileSync(path.join(outside, "victim"), "utf8")).toBe("precious");
    fs.closeSync(dfd);
  });

  test("a commit that fails leaves no name behind, and the target as it was", () => {
    const dir = tmpdir("unnamed");
    fs.mkdirSync(path.join(dir, "taken", "sub"), { recursive: true });
    const dfd = fs.openSync(dir, O_RDONLY | O_DIRECTORY);
    const fd = unnamed(dfd, "data");
    expect(lib.escp_commit_file(fd, 0o644, COMMIT_UNNAMED, null, dfd, cstr(".taken.escp-part"), cstr("taken"))).toBe(-EISDIR);
    expect(inodeOf(fd)).toBe(-EBADF);
    expect(fs.readdirSync(dir)).toEqual(["taken"]);
    expect(fs.readdirSync(path.join(dir, "taken"))).toEqual(["sub"]);
    // one name only, as for a named file
    expect(lib.escp_commit_file(unnamed(dfd, "x"), 0o644, COMMIT_UNNAMED, null, dfd, cstr(".x.escp-part"), cstr("../x"))).toBeLessThan(0);
    expect(fs.readdirSync(dir)).toEqual(["taken"]);
    fs.closeSync(dfd);
  });

  test("where linking the descriptor itself is refused, it is linked through /proc/self/fd", () => {
    // Linux lets only the creds that opened a file (or CAP_DAC_READ_SEARCH) link it with
    // AT_EMPTY_PATH (before 6.10: CAP_DAC_READ_SEARCH only): a file made as root and
    // committed as nobody takes the other way.
    if (process.getuid?.() !== 0) return;
    const dir = tmpdir("unnamed");
    fs.chownSync(dir, 65534, 65534);
    const script = path.join(tmpdir("script"), "drop.ts");
    fs.writeFileSync(script, `
      import { dlopen, FFIType, ptr } from "bun:ffi";
      import fs from "node:fs";
      const { i32, u32, cstring } = FFIType;
      const lib = dlopen(${JSON.stringify(nativePath())}, {
        escp_create_unnamed: { args: [i32, i32, u32, "ptr"], returns: i32 },
        escp_commit_file: { args: [i32, u32, i32, "ptr", i32, cstring, cstring], returns: i32 },
      }).symbols;
      const libc = dlopen("libc.so.6", { setresuid: { args: [u32, u32, u32], returns: i32 }, setresgid: { args: [u32, u32, u32], returns: i32 } }).symbols;
      const dfd = fs.openSync(${JSON.stringify(dir)}, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      const fd = lib.escp_create_unnamed(dfd, 0, 0o644, null);
      fs.writeSync(fd, "via proc");
      fs.fchownSync(fd, 65534, 65534); // as if nobody had made it (protected_hardlinks: only an owner may link)
      if (libc.setresgid(65534, 65534, 65534) !== 0 || libc.setresuid(65534, 65534, 65534) !== 0) throw new Error("setresuid");
      const c = (s) => Buffer.from(s + "\0");
      console.log(lib.escp_commit_file(fd, 0xffffffff, ${COMMIT_UNNAMED}, null, dfd, c(".g.escp-part"), c("g")));
    `);
    const r = Bun.spawnSync([process.execPath, script], { stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString().trim()).toBe("0");
    expect(fs.readFileSync(path.join(dir, "g"), "utf8")).toBe("via proc");
    expect(fs.readdirSync(dir)).toEqual(["g"]);
  });
});
