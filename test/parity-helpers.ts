/**
 * Helpers for test/parity.test.ts: run the same operation with OpenSSH scp and
 * with escp, each in its own fresh directories, and compare what they leave.
 *
 *   const [ref, esc] = await both(
 *     (s) => write(`${s.src}/a`, "x"),                          // setup, once per side
 *     (s) => s.run([`${s.src}/a`, `${SSH_HOST}:${s.dst}/`]),    // the operation
 *   );
 *   expect(await snap(esc.side.dst)).toEqual(await snap(ref.side.dst));
 *
 * The reference is /usr/bin/scp in its default (SFTP) mode, or `scp -O` (the
 * legacy scp/rcp protocol) where a test says so: where the two scp modes
 * disagree, escp follows one of them and the test names which.
 *
 * Each side builds its own source tree, so that reading the source for one tool
 * (which updates access times under relatime) cannot change what the other sees.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { ESCP_BIN, run, tmpdir, startSshd, type RunOptions, type RunResult, type Sshd, limiter } from "./harness.ts";

export const SCP_BIN = "/usr/bin/scp";

export type Tool = "scp" | "scp-O" | "escp";

export interface Side {
  tool: Tool;
  /** This side's private directory; src and dst are empty directories inside it. */
  root: string;
  src: string;
  dst: string;
  /** Runs this side's tool (with -F <the test sshd's ssh_config>). */
  run(args: string[], opts?: RunOptions & { umask?: number; config?: string }): Promise<RunResult>;
}

export interface Outcome<T> {
  side: Side;
  out: T;
}

let sshd: Sshd | undefined;
let escpConfig: string | undefined;

/** The shared test sshd, and an escp config of our own (no user settings leak in). */
export async function setup(): Promise<Sshd> {
  sshd = await startSshd();
  if (!escpConfig) {
    escpConfig = path.join(tmpdir("escp-config"), "escp.yaml");
    // Data ports away from the default 1232-1242, which other test files running
    // at the same time use; two streams keep the 2-core CI machine responsive.
    const first = 40000 + (process.pid % 200) * 50;
    fs.writeFileSync(escpConfig, `ports: ${first}-${first + 49}\nthreads: 2\n`);
  }
  return sshd;
}

function withUmask(argv: string[], umask: number | undefined): string[] {
  if (umask === undefined) return argv;
  return ["/bin/sh", "-c", `umask ${umask.toString(8).padStart(3, "0")} && exec "$@"`, "sh", ...argv];
}

/** Runs one tool against the test sshd (opts.config replaces its ssh_config). */
export function runTool(tool: Tool, args: string[], opts: RunOptions & { umask?: number; config?: string } = {}): Promise<RunResult> {
  if (!sshd || !escpConfig) throw new Error("parity-helpers: call setup() in beforeAll");
  const cfg = opts.config ?? sshd.configPath;
  const env = { ESCP_CONFIG: escpConfig, ESCP_REMOTE: ESCP_BIN, ...opts.env };
  const argv =
    tool === "escp"
      ? [ESCP_BIN, "-F", cfg, ...args]
      : [SCP_BIN, "-F", cfg, ...(tool === "scp-O" ? ["-O"] : []), ...args];
  return run(withUmask(argv, opts.umask), { ...opts, env });
}

// A few scenarios at a time: each runs two tools, each tool ssh and a remote end.
// The suite is CPU-bound on a 2-core machine (an escp run costs ~0.2 s of CPU
// locally and ~0.3-0.5 s on the remote end; scp ~0.05 s): more at once does not help.
const MAX_PAIRS = Number(process.env.ESCP_PARITY_PAIRS ?? 6);
const slot = limiter(MAX_PAIRS);

function makeSide(tool: Tool): Side {
  const root = tmpdir(tool);
  const src = path.join(root, "src");
  const dst = path.join(root, "dst");
  fs.mkdirSync(src);
  fs.mkdirSync(dst);
  return { tool, root, src, dst, run: (args, opts) => runTool(tool, args, opts) };
}

/**
 * Runs setup then act for the reference tool and for escp, concurrently, each
 * in fresh directories. Returns [reference, escp].
 */
export async function both<T>(
  setupFn: (s: Side) => unknown,
  act: (s: Side) => Promise<T>,
  ref: Tool = "scp",
): Promise<[Outcome<T>, Outcome<T>]> {
  return slot(async () => {
    const sides = [makeSide(ref), makeSide("escp")];
    for (const s of sides) await setupFn(s);
    const outs = await Promise.all(sides.map((s) => act(s)));
    return [
      { side: sides[0]!, out: outs[0]! },
      { side: sides[1]!, out: outs[1]! },
    ];
  });
}

// ───────────────────────────── building trees ──────────────────────────────

/** Writes a file (parents created), optionally with a mode and times (seconds). */
export function write(file: string, content: string | Buffer, opts: { mode?: number; mtime?: number; atime?: number } = {}): string {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
  if (opts.mode !== undefined) fs.chmodSync(file, opts.mode);
  if (opts.mtime !== undefined) fs.utimesSync(file, opts.atime ?? opts.mtime, opts.mtime);
  return file;
}

export function mkdir(dir: string, opts: { mode?: number; mtime?: number; atime?: number } = {}): string {
  fs.mkdirSync(dir, { recursive: true });
  if (opts.mode !== undefined) fs.chmodSync(dir, opts.mode);
  if (opts.mtime !== undefined) fs.utimesSync(dir, opts.atime ?? opts.mtime, opts.mtime);
  return dir;
}

// ───────────────────────────── comparing trees ─────────────────────────────

export interface SnapOptions {
  /** Permission bits (default true). */
  modes?: boolean;
  /** Modification times in whole seconds (scp -p keeps seconds only). */
  mtimes?: boolean;
  /** Access times in whole seconds. */
  atimes?: boolean;
  /** Leave out the mode bits of directories (their modes are compared separately). */
  dirModes?: boolean;
}

/** The short content digest snap() shows for a file with these bytes. */
export function digest(content: string | Buffer): string {
  return createHash("sha256").update(content).digest("hex").slice(0, 12);
}

/**
 * A sorted, readable description of everything under dir (dir itself left out):
 * one string per entry with its JSON-quoted relative path, type, mode, size,
 * content digest or symlink target, and optionally times. Every entry is
 * lstat'ed before any file is read, so reading cannot change the access times seen.
 */
export function snap(dir: string, opts: SnapOptions = {}): string[] {
  const { modes = true, mtimes = false, atimes = false, dirModes = true } = opts;
  // Names as bytes: one that is not UTF-8 must not read like another that is.
  const entries: Array<{ rel: Buffer; st: fs.Stats }> = [];
  const root = Buffer.from(dir);
  const under = (rel: Buffer, n: Buffer) => (rel.length ? Buffer.concat([rel, Buffer.from("/"), n]) : n);
  const full = (rel: Buffer) => Buffer.concat([root, Buffer.from("/"), rel]);
  const walk = (rel: Buffer) => {
    const names = fs.readdirSync(rel.length ? full(rel) : root, { encoding: "buffer" });
    const stats = names.map((n) => ({ rel: under(rel, n), st: fs.lstatSync(full(under(rel, n))) }));
    entries.push(...stats);
    for (const e of stats) if (e.st.isDirectory()) walk(e.rel);
  };
  walk(Buffer.alloc(0));
  const kind = (s: fs.Stats) =>
    s.isFile() ? "file" : s.isDirectory() ? "dir" : s.isSymbolicLink() ? "symlink" : s.isFIFO() ? "fifo" : "other";
  const named = (b: Buffer) => (Buffer.from(b.toString("utf8")).equals(b) ? b.toString("utf8") : `bytes ${b.toString("hex")}`);
  const out = entries.map(({ rel, st }) => {
    const parts = [JSON.stringify(named(rel)), kind(st)];
    if (modes && !(st.isSymbolicLink() || (st.isDirectory() && !dirModes))) parts.push((st.mode & 0o7777).toString(8).padStart(4, "0"));
    if (st.isFile()) {
      parts.push(`${st.size}B`, digest(fs.readFileSync(full(rel))));
    }
    if (st.isSymbolicLink()) parts.push(`-> ${named(fs.readlinkSync(full(rel), { encoding: "buffer" }))}`);
    if (mtimes && !st.isSymbolicLink()) parts.push(`m=${Math.floor(st.mtimeMs / 1000)}`);
    if (atimes && !st.isSymbolicLink()) parts.push(`a=${Math.floor(st.atimeMs / 1000)}`);
    return parts.join(" ");
  });
  return out.sort();
}

/** Whether a run failed the way escp promises: exit status 1 (scp's own status may be 1 or 255). */
export function failed(r: RunResult): boolean {
  return r.code !== 0;
}

/** Text of a run for assertion messages. */
export function show(r: RunResult): string {
  return `exit ${r.code}${r.timedOut ? " (timed out)" : ""}\nstderr: ${r.stderr}\nstdout: ${r.stdout}`;
}
