/**
 * Where a received entry goes. The destination operand is resolved once, the
 * way scp resolves it (an existing directory receives the sources inside it;
 * otherwise a single source takes the destination's name), and every path the
 * sender sends is checked before it is used: it must be relative, with no
 * empty, `.` or `..` component and no NUL. All opens then go through
 * openat2(RESOLVE_BENEATH) relative to the destination directory, so even a
 * symlink planted inside it cannot lead out.
 *
 * @example
 * const t = resolveTarget("backup/", { multipleSources: false, home: "/root" });
 * t.place("a.txt"); // "a.txt", relative to t.rootFd
 */
import fs from "node:fs";
import { homeDir } from "../system.ts";
// Not node:path: Bun's replaces what is not UTF-8 in a name with U+FFFD (names.ts).
import path from "path-browserify";
import { dfgOnly } from "../jit.ts";
import { decodeName, fsPath, nameBytes } from "../names.ts";
import { errnoText } from "../native.ts";

export interface Target {
  /** The directory every entry is written beneath (absolute, for messages). */
  root: string;
  rootFd: number;
  /**
   * Relative path under root for an entry path; throws PathError if the path is
   * unsafe. merge: the entry is under a `dir/.` operand, whose contents go into an
   * existing target directory ("" is that directory itself).
   */
  place(entryPath: string, merge?: boolean): string;
  /** Human-readable destination of a relative path, for messages. */
  show(rel: string): string;
  /**
   * The target as given when it ends in "/" and does not exist yet: a directory
   * sent with -r is made under that name (as scp and cp -r do), anything else is
   * refused naming it.
   */
  newDir?: string;
}

export class PathError extends Error {}
export class TargetError extends Error {}

const MAX_PATH = 4096;
const MAX_NAME = 255;

/** Checks a sender-supplied path and returns its components. */
export function safeComponents(p: string): string[] {
  if (p.length === 0) throw new PathError("empty path");
  if (nameBytes(p) > MAX_PATH) throw new PathError(`path longer than ${MAX_PATH} bytes`);
  if (p.includes("\0")) throw new PathError("path contains a NUL byte");
  if (p.startsWith("/")) throw new PathError(`absolute path '${p}'`);
  const parts = p.split("/");
  for (const c of parts) {
    if (c === "" || c === "." || c === "..") throw new PathError(`path '${p}' has a '${c || "empty"}' component`);
    if (nameBytes(c) > MAX_NAME) throw new PathError(`a name in '${p.slice(0, 80)}...' is longer than ${MAX_NAME} bytes`);
  }
  return parts;
}

/** Expands `~` and `~user` and makes an empty path mean the home directory, as ssh's remote shell would. */
export function expandHome(p: string, home?: string): string {
  if (p === "" || p === "~") return home ?? homeDir();
  if (p.startsWith("~/")) return under(home ?? homeDir(), p.slice(2));
  const m = TILDE_USER.exec(p);
  const dir = m ? userHome(m[1]) : undefined;
  return dir === undefined ? p : under(dir, (m![2] ?? "").slice(1));
}

const TILDE_USER = /^~([^/]+)(\/.*)?$/;

/**
 * Whether `p` is a `~user` path whose user this host does not know, which
 * expandHome leaves as it is; as scp, such a path is refused, not taken as a
 * file named `~user` in the home directory.
 */
export function unknownUser(p: string): boolean {
  const m = TILDE_USER.exec(p);
  return m !== null && userHome(m[1]) === undefined;
}

function userHome(user: string): string | undefined {
  try {
    return fs.readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.split(":")[0] === user)?.split(":")[5];
  } catch {
    return undefined;
  }
}

/**
 * `rest` in the directory `home`, joined as the kernel will walk it: not normalised,
 * as path.join would, which read `lnk/../a` as `a` where lnk is a link, and dropped a
 * final `/.` (`~/dir/.` is dir's contents).
 */
function under(home: string, rest: string): string {
  const dir = home.replace(/\/+$/, "");
  return rest === "" ? home : `${dir}/${rest}`;
}

/** Links followed before giving up, as the kernel's path walk does (MAXSYMLINKS). */
const MAX_LINKS = 40;

/**
 * A destination file the user named that is a symbolic link is written through,
 * as scp and cp do: the file at the end of the links is replaced (by rename, in its
 * own directory) and the links stay; a link that leads nowhere names the file to
 * make. Where a link ends in something with no name (`/dev/stdout` on a pipe:
 * /proc/self/fd/1 → "pipe:[…]") there is no file to write at offsets.
 *
 * @example
 * throughLinks("/home/u/.bashrc"); // "/home/u/dotfiles/bashrc" when it links there
 */
export function throughLinks(named: string): string {
  let p = named;
  for (let hops = 0; hops < MAX_LINKS; hops++) {
    let to: string;
    try {
      to = decodeName(fs.readlinkSync(fsPath(p), { encoding: "buffer" }));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EINVAL" || code === "ENOENT") return p; // not a link, or nothing there yet
      throw new TargetError(`${p}: ${errnoText(e)}`);
    }
    // /proc/PID/fd/N (/dev/stdout, /dev/fd/N) is an open file, not a name: a pipe, a deleted
    // file, a descriptor of whichever process resolves it. There is no name to rename over.
    // Relative ones resolve from where the link really is, not from the path as typed.
    const dir = realDir(path.dirname(p));
    if (/^\/proc\/[^/]+\/fd$/.test(dir)) {
      throw new TargetError(`${named}: Illegal seek (it leads to an open file, ${to}, which escp cannot write at offsets: name a file)`);
    }
    p = to.startsWith("/") ? to : path.join(dir, to);
  }
  throw new TargetError(`${named}: Too many levels of symbolic links`);
}

/** The directory `d` with every link in it resolved (d exists: a link in it was just read). */
function realDir(d: string): string {
  try {
    return decodeName(fs.realpathSync(fsPath(d), { encoding: "buffer" }));
  } catch (e) {
    throw new TargetError(`${d}: ${errnoText(e)}`);
  }
}

/**
 * Why a local copy's source must not go to `dest`: it is the very file (or directory)
 * it would be copied onto, as cp refuses it ("'f' and './f' are the same file").
 * Copied, it would be replaced by a copy of itself: a new inode, which its other hard
 * links do not share. Undefined when it may go, or when either cannot be looked at
 * (the copy reports that).
 *
 * @example
 * sameAsDestination("notes.txt", "."); // "the same file as its destination notes.txt: not copied"
 */
export function sameAsDestination(src: string, dest: string): string | undefined {
  try {
    const s = fs.statSync(fsPath(src), { bigint: true });
    const name = path.basename(src.replace(/\/+$/, ""));
    let to = dest;
    let d = fs.statSync(fsPath(dest), { bigint: true });
    if (d.isDirectory() && name !== ".") {
      to = path.join(dest, name);
      d = fs.statSync(fsPath(to), { bigint: true });
    }
    return s.dev === d.dev && s.ino === d.ino ? `the same file as its destination ${to}: not copied` : undefined;
  } catch {
    return undefined;
  }
}

export function resolveTarget(dest: string, o: { multipleSources: boolean; home?: string }): Target {
  if (unknownUser(dest)) throw new TargetError(`${dest}: no such user`);
  const target = expandHome(dest, o.home);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(fsPath(target));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new TargetError(`${target}: ${errnoText(e)}`);
  }
  let root: string;
  let rename: string | undefined;
  if (st?.isDirectory()) {
    root = target;
  } else if (o.multipleSources) {
    throw new TargetError(`${target}: ${st ? "Not a directory" : "No such file or directory"} (several sources need an existing directory as destination)`);
  } else if (st && target.endsWith("/")) {
    throw new TargetError(`${target}: Not a directory`);
  } else {
    const bare = throughLinks(target.replace(/\/+$/, ""));
    if (!bare) throw new TargetError(`${target}: No such file or directory`);
    root = path.dirname(bare);
    rename = path.basename(bare);
  }
  let rootFd: number;
  try {
    rootFd = fs.openSync(fsPath(root), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  } catch (e) {
    throw new TargetError(`${root}: ${errnoText(e)}`);
  }
  // path.join(root, rel) for the rel place() returns (no empty, "." or ".." names): the
  // normalised root with its slash, computed once ("dst/" for "./dst", "" for ".").
  const prefix = path.join(root, "_").slice(0, -1);
  const t: Target = {
    root,
    rootFd,
    place(entryPath, merge = false) {
      const parts = safeComponents(entryPath);
      if (!rename && !merge) return entryPath; // checked, and already what the parts would join to
      if (rename) parts[0] = rename;
      else parts.shift();
      return parts.join("/");
    },
    show(rel) {
      return rel ? prefix + rel : path.join(root, rel);
    },
    newDir: !st && target.endsWith("/") ? target : undefined,
  };
  dfgOnly(t);
  return t;
}

dfgOnly(safeComponents);
