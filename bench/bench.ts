/**
 * escp against scp, rsync, `cat | ssh`, `tar | ssh tar` and iperf3, in one run,
 * on the same data, through one real OpenSSH sshd on 127.0.0.1 (started by
 * test/harness.ts), and the report bench/RESULTS.md with every figure and the
 * targets of issue 7 marked MET or MISSED.
 *
 *   bash bench/run.sh            # full: 2 GiB file, 10,000 files, median of 3 (10,000 files: 5)
 *   bash bench/run.sh --quick    # under 2 minutes: 256 MiB, 1,000 files, 1 run
 *   bun bench/bench.ts [--quick] [--reps N] [--small-reps N] [--lat-reps N] [--size BYTES] [--files N]
 *                      [--only large,small,latency,startup,scale,iperf]
 *                      [--out FILE] [--crypto-json FILE] [--data DIR]
 *
 * Workloads: one large file file->file (page cache warmed by reading it once),
 * N files of 4 KiB in 100 directories with -r, one 1-byte file (latency).
 * Each repetition runs every tool once, in its own order (repOrder), so that noise
 * from other users of the machine falls on all of them alike; figures are
 * medians over repetitions. Every escp copy is compared byte for byte with
 * its source (cmp / diff -r): a wrong copy is a failure, printed and
 * reported, and its time is not used.
 */
import { spawnSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startSshd, makeFile, makeSparseFile, sameFile, pseudoRandom, freePort, ESCP_BIN, type Sshd } from "../test/harness.ts";
import { measure, remoteWrapper, median, max, min, machineInfo, loadavg, repOrder, type Measured, type Context } from "./lib.ts";
import { cryptoMarkdown, CRYPTO_BEGIN, CRYPTO_END, type CryptoRow } from "./crypto.ts";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..");
const BUN = path.join(REPO, "node_modules", ".bin", "bun");
const GCM = "aes128-gcm@openssh.com";
const MiB = 1 << 20, GiB = 1 << 30;

// ───────────────────────────── options ─────────────────────────────

const argv = process.argv.slice(2);
const flag = (n: string) => argv.includes(n);
const opt = (n: string) => {
  const i = argv.indexOf(n);
  return i >= 0 ? argv[i + 1] : undefined;
};
const QUICK = flag("--quick");
const REPS = Number(opt("--reps") ?? (QUICK ? 1 : 3));
const LAT_REPS = Number(opt("--lat-reps") ?? (QUICK ? 2 : 5));
/** The 10k-file runs last about a second and swing by a third from run to run on this VM: more of them, like the 1-byte ones. */
const SMALL_REPS = Number(opt("--small-reps") ?? (QUICK ? 1 : 5));
const repsOf = (w: string) => (w === "latency" ? LAT_REPS : w === "small" ? SMALL_REPS : REPS);
const BIG = Number(opt("--size") ?? (QUICK ? 256 * MiB : 2 * GiB));
const NFILES = Number(opt("--files") ?? (QUICK ? 1000 : 10_000));
const ONLY = new Set((opt("--only") ?? "iperf,large,small,latency,startup,scale").split(","));
if (QUICK) ONLY.delete("scale");
const OUT = path.resolve(opt("--out") ?? path.join(HERE, QUICK ? "RESULTS-quick.md" : "RESULTS.md"));
const CRYPTO_JSON = opt("--crypto-json");
const DATA = path.resolve(opt("--data") ?? process.env.ESCP_BENCH_DIR ?? "/var/tmp/escp-bench");
const SMALL_SIZE = 4096;
const DIRS = 100;

const log = (s: string) => process.stderr.write(s + "\n");
/** Shell-quotes only what needs it (the paths here are plain; the report stays readable). */
const q = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
const fmtBytes = (n: number) => (n >= GiB ? `${+(n / GiB).toFixed(2)} GiB` : `${+(n / MiB).toFixed(1)} MiB`);

// ───────────────────────────── data ─────────────────────────────

interface Data {
  big: string;
  small: string; // directory with DIRS subdirectories
  smallFiles: number;
  one: string; // 1 byte
  scaleBig?: string; // smaller large file for the memory-scaling check
  scaleSmall?: string;
  scaleSmallFiles?: number;
  scaleMany?: string; // 10× the small workload's files, for the other end of the memory-scaling check
  scaleManyFiles?: number;
  sparseSmall?: string; // 1 GiB sparse, SPARSE_DATA bytes of data
  sparseBig?: string; // 100 GiB sparse, same data
}

/** Data extents of the sparse files: 4 × 16 MiB spread over the file. */
const SPARSE_DATA = 64 * MiB;
async function makeSparse(file: string, size: number): Promise<void> {
  if (fs.existsSync(file) && fs.statSync(file).size === size) return;
  log(`  making ${file} (${fmtBytes(size)} sparse, ${fmtBytes(SPARSE_DATA)} of data)`);
  const ext: Array<[number, number]> = [0, 1, 2, 3].map((i) => [Math.floor((size / 4) * i / MiB) * MiB, 16 * MiB]);
  await makeSparseFile(file, size, { seed: `bench-sparse`, extents: ext });
}

async function makeTree(dir: string, files: number, seed: string): Promise<void> {
  const marker = `${dir}.complete`; // beside the tree, so it does not travel
  if (fs.existsSync(marker)) return;
  fs.rmSync(dir, { recursive: true, force: true });
  const perDir = Math.ceil(files / DIRS);
  const pool = pseudoRandom(files * SMALL_SIZE, seed);
  let n = 0;
  for (let d = 0; d < DIRS && n < files; d++) {
    const sub = path.join(dir, `d${String(d).padStart(3, "0")}`);
    fs.mkdirSync(sub, { recursive: true });
    for (let f = 0; f < perDir && n < files; f++, n++) {
      fs.writeFileSync(path.join(sub, `f${String(f).padStart(4, "0")}.bin`), pool.subarray(n * SMALL_SIZE, (n + 1) * SMALL_SIZE));
    }
  }
  fs.writeFileSync(marker, "");
}

async function makeBig(file: string, size: number): Promise<void> {
  if (fs.existsSync(file) && fs.statSync(file).size === size) return;
  log(`  making ${file} (${fmtBytes(size)})`);
  await makeFile(file, size, { seed: `bench-${size}` });
}

/** Reads a file (or tree) once so that the page cache holds it. */
function warm(p: string): void {
  const st = fs.statSync(p);
  if (st.isDirectory()) {
    for (const e of fs.readdirSync(p)) warm(path.join(p, e));
    return;
  }
  const fd = fs.openSync(p, "r");
  const buf = Buffer.allocUnsafe(4 * MiB);
  try {
    while (fs.readSync(fd, buf) > 0);
  } finally {
    fs.closeSync(fd);
  }
}

async function prepareData(): Promise<Data> {
  fs.mkdirSync(DATA, { recursive: true });
  const src = path.join(DATA, "src");
  fs.mkdirSync(src, { recursive: true });
  const d: Data = {
    big: path.join(src, `big-${BIG}.bin`),
    small: path.join(src, `small-${NFILES}`),
    smallFiles: NFILES,
    one: path.join(src, "one-byte.bin"),
  };
  if (ONLY.has("large")) await makeBig(d.big, BIG);
  if (ONLY.has("small")) {
    log(`  making ${d.small} (${NFILES} files)`);
    await makeTree(d.small, NFILES, "bench-small");
  }
  fs.writeFileSync(d.one, "x");
  if (ONLY.has("scale")) {
    d.scaleBig = path.join(src, `big-${256 * MiB}.bin`);
    d.scaleSmallFiles = Math.max(100, Math.round(NFILES / 10));
    d.scaleSmall = path.join(src, `small-${d.scaleSmallFiles}`);
    await makeBig(d.scaleBig, 256 * MiB);
    await makeTree(d.scaleSmall, d.scaleSmallFiles, "bench-small-scale");
    d.scaleManyFiles = NFILES * 10;
    d.scaleMany = path.join(src, `small-${d.scaleManyFiles}`);
    log(`  making ${d.scaleMany} (${d.scaleManyFiles} files)`);
    await makeTree(d.scaleMany, d.scaleManyFiles, "bench-many");
    d.sparseSmall = path.join(src, "sparse-1GiB.bin");
    d.sparseBig = path.join(src, "sparse-100GiB.bin");
    await makeSparse(d.sparseSmall, GiB);
    await makeSparse(d.sparseBig, 100 * GiB);
  }
  return d;
}

// ───────────────────────────── tools ─────────────────────────────

type Workload = "large" | "small" | "latency" | "startup" | "scale";

interface Tool {
  name: string;
  escp: boolean;
  /** The command line; src is a file or directory, dst the destination directory. */
  cmd(src: string, dst: string): string[];
  /** Without verification (ssh true, escp --version). */
  noCopy?: boolean;
}

let CFG = "";
let HOST = "";
let WRAPPER = "";
/** A private copy of dist/escp: others may rebuild dist/escp while the benchmark runs. */
let BIN = ESCP_BIN;

function escp(name: string, opts: string[]): Tool {
  return { name, escp: true, cmd: (src, dst) => [BIN, "-F", CFG, ...opts, src, `${HOST}:${dst}/`] };
}

function largeTools(): Tool[] {
  return [
    escp("escp", []),
    escp("escp -C", ["-C"]),
    escp("escp -t 1", ["-t", "1"]),
    escp("escp -t 2", ["-t", "2"]),
    escp("escp -t 4", ["-t", "4"]),
    escp("escp -t 8", ["-t", "8"]),
    escp("escp --nodirect", ["--nodirect"]),
    { name: "scp", escp: false, cmd: (s, d) => ["scp", "-F", CFG, s, `${HOST}:${d}/`] },
    { name: "scp -c aes128-gcm", escp: false, cmd: (s, d) => ["scp", "-F", CFG, "-c", GCM, s, `${HOST}:${d}/`] },
    { name: "rsync -a", escp: false, cmd: (s, d) => ["rsync", "-a", "-e", `ssh -F ${CFG}`, s, `${HOST}:${d}/`] },
    {
      name: "cat | ssh (aes128-gcm)", escp: false,
      cmd: (s, d) => ["bash", "-c", `cat ${q(s)} | ssh -F ${q(CFG)} -c ${GCM} ${HOST} ${q(`cat > ${q(path.join(d, path.basename(s)))}`)}`],
    },
    {
      name: "tar | ssh tar", escp: false,
      cmd: (s, d) => ["bash", "-c", `tar cf - -C ${q(path.dirname(s))} ${q(path.basename(s))} | ssh -F ${q(CFG)} ${HOST} ${q(`tar xf - -C ${q(d)}`)}`],
    },
    // Local baselines, no network: what the disk and the page cache give.
    { name: "dd O_DIRECT read (local)", escp: false, noCopy: true, cmd: (s) => ["dd", `if=${s}`, "of=/dev/null", "bs=1M", "iflag=direct", "status=none"] },
    { name: "dd O_DIRECT write (local)", escp: false, cmd: (s, d) => ["dd", `if=${s}`, `of=${path.join(d, path.basename(s))}`, "bs=1M", "oflag=direct", "status=none"] },
    { name: "cp (local, page cache)", escp: false, cmd: (s, d) => ["cp", s, `${d}/`] },
  ];
}

function smallTools(): Tool[] {
  return [
    escp("escp -r", ["-r"]),
    { name: "scp -r", escp: false, cmd: (s, d) => ["scp", "-F", CFG, "-r", s, `${HOST}:${d}/`] },
    { name: "rsync -a", escp: false, cmd: (s, d) => ["rsync", "-a", "-e", `ssh -F ${CFG}`, s, `${HOST}:${d}/`] },
    {
      name: "tar | ssh tar", escp: false,
      cmd: (s, d) => ["bash", "-c", `tar cf - -C ${q(path.dirname(s))} ${q(path.basename(s))} | ssh -F ${q(CFG)} ${HOST} ${q(`tar xf - -C ${q(d)}`)}`],
    },
  ];
}

function latencyTools(): Tool[] {
  return [
    escp("escp", []),
    { name: "scp", escp: false, cmd: (s, d) => ["scp", "-F", CFG, s, `${HOST}:${d}/`] },
    { name: "rsync -a", escp: false, cmd: (s, d) => ["rsync", "-a", "-e", `ssh -F ${CFG}`, s, `${HOST}:${d}/`] },
    {
      name: "cat | ssh (aes128-gcm)", escp: false,
      cmd: (s, d) => ["bash", "-c", `cat ${q(s)} | ssh -F ${q(CFG)} -c ${GCM} ${HOST} ${q(`cat > ${q(path.join(d, path.basename(s)))}`)}`],
    },
    { name: "ssh true (no copy)", escp: false, noCopy: true, cmd: () => ["ssh", "-F", CFG, HOST, "true"] },
  ];
}

// ───────────────────────────── running ─────────────────────────────

interface Series {
  workload: Workload;
  tool: Tool;
  src: string;
  bytes: number; // payload bytes per run
  files: number;
  runs: Measured[];
}

const failures: string[] = [];
let ctx: Context;
let DST = "";

let TRASH = "";
let trashed = 0;

/**
 * An empty destination for the next run. A tree (what -r runs leave) is set aside,
 * not deleted: ext4 will not reuse an inode freed in the last minute or so and scans
 * past each one (recently_deleted, seen at the top of a perf profile), so files
 * created right after deleting 10,000 others cost up to 1 ms each whatever the tool.
 * The set-aside trees go at the end (emptyTrash).
 */
function cleanDst(): void {
  const tree = fs.existsSync(DST) && fs.readdirSync(DST, { withFileTypes: true }).some((d) => d.isDirectory());
  if (tree) {
    fs.mkdirSync(TRASH, { recursive: true });
    fs.renameSync(DST, path.join(TRASH, `run${trashed++}`));
  } else {
    fs.rmSync(DST, { recursive: true, force: true });
  }
  fs.mkdirSync(DST, { recursive: true });
}

function emptyTrash(): void {
  fs.rmSync(TRASH, { recursive: true, force: true });
}

async function verify(src: string): Promise<string | undefined> {
  const dst = path.join(DST, path.basename(src));
  if (path.basename(src).startsWith("sparse-")) {
    // reading 100 GiB of holes would take minutes: compare data extents, holes as zeros (harness)
    if (!fs.existsSync(dst)) return `${dst} does not exist`;
    return (await sameFile(src, dst)) ? undefined : `${dst} differs from ${src} (extent-wise comparison)`;
  }
  if (!fs.existsSync(dst)) return `${dst} does not exist`;
  if (fs.statSync(src).isDirectory()) {
    const r = spawnSync("diff", ["-rq", src, dst], { encoding: "utf8" });
    return r.status === 0 ? undefined : `diff -r ${src} ${dst}: ${(r.stdout + r.stderr).trim().split("\n").slice(0, 5).join("; ")}`;
  }
  const r = spawnSync("cmp", [src, dst], { encoding: "utf8" });
  return r.status === 0 ? undefined : `cmp ${src} ${dst}: ${(r.stdout + r.stderr).trim() || `exit ${r.status}`}`;
}

/** Runs a series once and records it; a warm-up run is only logged (see the rep loop). */
async function runOnce(s: Series, label: string, warmUp = false): Promise<void> {
  cleanDst();
  spawnSync("sync", ["-f", DST]);
  const env: Record<string, string> = s.tool.escp ? { ESCP_REMOTE: WRAPPER } : {};
  const m = await measure(ctx, s.tool.cmd(s.src, DST), env, s.workload === "large" ? 900_000 : 300_000);
  const line = `  ${label} ${s.workload.padEnd(7)} ${s.tool.name.padEnd(24)} ${m.wall.toFixed(2).padStart(7)} s`;
  if (warmUp) {
    log(`${line}  (warm-up, not counted)`);
    return;
  }
  if (!m.ok) m.error = `exit status ${m.code}: ${m.stderr.trim().split("\n").slice(-3).join(" | ")}`;
  else if (!s.tool.noCopy) m.error = await verify(s.src);
  if (m.error) {
    const msg = `${s.workload} / ${s.tool.name}${s.tool.escp ? " (escp!)" : ""}: ${m.error}`;
    failures.push(msg);
    log(`  FAIL ${msg}`);
  }
  s.runs.push(m);
  const rate = s.bytes >= MiB ? `${(s.bytes / 1e6 / m.wall).toFixed(0)} MB/s` : s.files > 1 ? `${(s.files / m.wall).toFixed(0)} files/s` : "";
  log(
    `${line} ${rate.padStart(12)}` +
      `  cpu ${(m.user + m.sys).toFixed(2)}+${(m.remoteCpu ?? NaN).toFixed(2)} s  rss ${m.rssMiB.toFixed(0)}/${m.remoteEscp ? m.remoteEscp.rssMiB.toFixed(0) : "-"} MiB` +
      `  bg ${(m.otherCores ?? 0).toFixed(2)} cores${m.error ? "  FAIL" : ""}`,
  );
}

interface Iperf {
  runs: { mbps: number; senderCpu: number; receiverCpu: number }[];
  seconds: number;
  cmd: string;
}

async function runIperf(secs: number, it: Iperf): Promise<void> {
  let server: ReturnType<typeof spawn> | undefined;
  let port = 0;
  try {
    let out = "";
    // A server that never answers (its port taken between freePort and its bind) is
    // replaced by one on another port: a benchmark run lost its iperf3 figure to that.
    for (let attempt = 0; attempt < 30; attempt++) {
      if (attempt % 10 === 0) {
        server?.kill();
        port = await freePort();
        server = spawn("iperf3", ["-s", "-1", "-B", "127.0.0.1", "-p", String(port)], { stdio: "ignore" });
      }
      await new Promise((r) => setTimeout(r, 150));
      const r = spawnSync("iperf3", ["-c", "127.0.0.1", "-p", String(port), "-t", String(secs), "-J"], { encoding: "utf8", timeout: (secs + 30) * 1000 });
      out = r.stdout;
      if (r.status === 0) break;
      if (!/Connection refused|unable to connect/i.test(out + r.stderr)) break;
    }
    const j = JSON.parse(out);
    if (j.error) throw new Error(j.error);
    const mbps = j.end.sum_received.bits_per_second / 8 / 1e6;
    it.runs.push({ mbps, senderCpu: j.end.cpu_utilization_percent?.host_total, receiverCpu: j.end.cpu_utilization_percent?.remote_total });
    log(`  iperf3 single stream ${mbps.toFixed(0)} MB/s`);
  } catch (e) {
    failures.push(`iperf3: ${(e as Error).message}`);
    log(`  iperf3 failed: ${(e as Error).message}`);
  } finally {
    server?.kill();
  }
}

// ───────────────────────────── summary ─────────────────────────────

interface Summary {
  wall: number;
  wallMin: number;
  wallMax: number;
  ok: number;
  n: number;
  rate: number; // MB/s or files/s
  localCpu: number;
  remoteCpu: number;
  cpuPerGB: number;
  rssLocal: number; // max over runs
  rssRemote: number;
  bg: number;
}

function summarize(s: Series): Summary {
  const good = s.runs.filter((r) => !r.error);
  const wall = median(good.map((r) => r.wall));
  const cpu = good.map((r) => r.user + r.sys);
  const rcpu = good.map((r) => r.remoteCpu ?? NaN);
  const gb = s.bytes / 1e9;
  return {
    wall,
    wallMin: min(good.map((r) => r.wall)),
    wallMax: max(good.map((r) => r.wall)),
    ok: good.length,
    n: s.runs.length,
    rate: s.workload === "small" || s.workload === "scale" && s.files > 1 ? s.files / wall : s.bytes / 1e6 / wall,
    localCpu: median(cpu),
    remoteCpu: median(rcpu),
    cpuPerGB: median(good.map((r) => (r.user + r.sys + (r.remoteCpu ?? NaN)) / gb)),
    rssLocal: max(s.runs.map((r) => r.rssMiB)),
    rssRemote: max(s.runs.map((r) => r.remoteEscp?.rssMiB ?? NaN)),
    bg: median(s.runs.map((r) => r.otherCores ?? NaN)),
  };
}

const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "–");
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "–");
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "–");
const f3 = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "–");

function shellLine(a: string[]): string {
  return a.map((x) => (/^[\w@%+=:,./-]+$/.test(x) ? x : q(x))).join(" ");
}

// ───────────────────────────── main ─────────────────────────────

let COMMIT = "";

function commitInfo(): string {
  if (process.env.ESCP_BENCH_SOURCE) return process.env.ESCP_BENCH_SOURCE;
  const git = (a: string[]) => spawnSync("git", ["-C", REPO, ...a], { encoding: "utf8" }).stdout?.trim() ?? "";
  const dirty = git(["status", "--porcelain", "--", "src", "ffi"]) ? " (src/ or ffi/ had uncommitted changes)" : "";
  return `${git(["rev-parse", "--short", "HEAD"])} ${git(["log", "-1", "--format=%s"])}${dirty}`;
}

async function main(): Promise<void> {
  const t0 = Date.now();
  COMMIT = commitInfo();
  for (const t of ["scp", "rsync", "iperf3", "ssh", "cmp", "diff", "tar"]) {
    if (spawnSync("sh", ["-c", `command -v ${t}`]).status !== 0) throw new Error(`${t} not found: run scripts/setup.sh`);
  }
  if (!fs.existsSync("/usr/bin/time")) throw new Error("/usr/bin/time not found: apt-get install time");
  if (!fs.existsSync(ESCP_BIN)) throw new Error(`${ESCP_BIN} not found: run scripts/build.sh`);

  log(`bench: ${QUICK ? "quick" : "full"} run, ${REPS} repetition(s), large file ${fmtBytes(BIG)}, ${NFILES} small files; data in ${DATA}`);
  const loadStart = loadavg();
  const data = await prepareData();
  const sshd: Sshd = await startSshd();
  CFG = sshd.configPath;
  HOST = sshd.host;
  const tmp = path.join(DATA, "tmp");
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  DST = path.join(DATA, "dst");
  TRASH = path.join(DATA, "trash");
  emptyTrash();
  BIN = path.join(tmp, "escp");
  fs.copyFileSync(ESCP_BIN, BIN);
  fs.chmodSync(BIN, 0o755);
  ctx = { sshdPid: sshd.pid, remoteDir: path.join(tmp, "remote"), tmp };
  WRAPPER = remoteWrapper(ctx, BIN);
  log(`  sshd pid ${sshd.pid} on 127.0.0.1:${sshd.port}, ssh_config ${CFG}`);

  const series: Series[] = [];
  const add = (workload: Workload, tools: Tool[], src: string, bytes: number, files: number) => {
    for (const tool of tools) series.push({ workload, tool, src, bytes, files, runs: [] });
  };
  if (ONLY.has("large")) {
    log("  warming the page cache with the large file");
    warm(data.big);
    add("large", largeTools(), data.big, BIG, 1);
  }
  if (ONLY.has("small")) {
    warm(data.small);
    add("small", smallTools(), data.small, NFILES * SMALL_SIZE, NFILES);
  }
  if (ONLY.has("latency")) add("latency", latencyTools(), data.one, 1, 1);
  if (ONLY.has("scale") && data.scaleBig && data.scaleSmall) {
    warm(data.scaleBig);
    warm(data.scaleSmall);
    add("scale", [escp("escp (256 MiB file)", [])], data.scaleBig, 256 * MiB, 1);
    add("scale", [escp(`escp -r (${data.scaleSmallFiles} files)`, ["-r"])], data.scaleSmall, data.scaleSmallFiles! * SMALL_SIZE, data.scaleSmallFiles!);
    warm(data.scaleMany!);
    add("scale", [escp(`escp -r (${data.scaleManyFiles} files)`, ["-r"])], data.scaleMany!, data.scaleManyFiles! * SMALL_SIZE, data.scaleManyFiles!);
    add("scale", [escp("escp --sparse (1 GiB sparse)", ["--sparse"])], data.sparseSmall!, SPARSE_DATA, 1);
    add("scale", [escp("escp --sparse (100 GiB sparse)", ["--sparse"])], data.sparseBig!, SPARSE_DATA, 1);
  }
  const startup: Series = {
    workload: "startup", tool: { name: "escp --version", escp: false, noCopy: true, cmd: () => [BIN, "--version"] },
    src: "", bytes: 0, files: 0, runs: [],
  };

  const shellRc: Measured[] = [];
  const iperf: Iperf = { runs: [], seconds: QUICK ? 2 : 5, cmd: "" };
  iperf.cmd = `iperf3 -s -1 -B 127.0.0.1 -p PORT & iperf3 -c 127.0.0.1 -p PORT -t ${iperf.seconds} -J`;

  const reps = Math.max(REPS, ONLY.has("latency") ? LAT_REPS : 0, ONLY.has("small") ? SMALL_REPS : 0);
  for (let rep = 0; rep < reps; rep++) {
    log(`rep ${rep + 1}/${reps} (load ${loadavg()})`);
    if (ONLY.has("iperf") && rep < REPS) await runIperf(iperf.seconds, iperf);
    const todo = series.filter((s) => rep < repsOf(s.workload));
    for (const w of new Set(todo.map((s) => s.workload))) {
      const group = todo.filter((s) => s.workload === w);
      const order = repOrder(group.length, rep);
      // The first run after another workload paid for it: this VM returns the page cache
      // the last large copy freed to the host, and re-touching those pages is slow (a
      // 10k-file copy right after copying and deleting 2 GiB: 1.3-10 s against 1.1-1.5).
      // repOrder puts escp first in rep 1, so that run was always escp's. An uncounted run
      // of the group's first series takes the cost instead.
      if (group.length > 1) await runOnce(group[order[0]], `[${rep + 1}]`, true);
      for (const i of order) await runOnce(group[i], `[${rep + 1}]`);
    }
    if (ONLY.has("startup")) await runStartup(startup);
    if (ONLY.has("latency")) await runShellRc(shellRc);
  }
  cleanDst();
  emptyTrash();
  const loadEnd = loadavg();
  const minutes = (Date.now() - t0) / 60000;

  let crypto: { rows: CryptoRow[]; skipped: string[] } | undefined;
  if (CRYPTO_JSON && fs.existsSync(CRYPTO_JSON)) crypto = JSON.parse(fs.readFileSync(CRYPTO_JSON, "utf8"));

  const md = report({ series, startup, iperf, data, loadStart, loadEnd, minutes, crypto, shellRc });
  fs.writeFileSync(OUT, md);
  log(`bench: wrote ${path.relative(process.cwd(), OUT)} after ${minutes.toFixed(1)} min`);
  if (failures.length) {
    log(`bench: ${failures.length} FAILURE(S):`);
    for (const f of failures) log(`  ${f}`);
  }
  await sshd.stop();
  process.exit(failures.some((f) => f.includes("(escp!)")) ? 1 : 0);
}

/**
 * What the remote login shell costs before it runs a command. sshd runs
 * commands (escp --server, rsync --server, cat, tar, and scp's sftp-server,
 * as Debian's stock sshd_config names it) through the user's shell, and
 * Debian's bash then reads ~/.bashrc (it does when SSH_CLIENT is set).
 * Measured as that shell would start: bash -c true with SSH_CLIENT set and
 * SHLVL unset.
 */
async function runShellRc(out: Measured[]): Promise<void> {
  const shell = os.userInfo().shell || "/bin/sh";
  const m = await measure(ctx, ["env", "-u", "SHLVL", "SSH_CLIENT=127.0.0.1 50000 22", shell, "-c", "true"]);
  out.push(m);
}

async function runStartup(s: Series): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const m = await measure(ctx, [BIN, "--version"]);
    if (!m.ok) failures.push(`escp --version: exit ${m.code}`);
    s.runs.push(m);
  }
}

// ───────────────────────────── report ─────────────────────────────

interface ReportInput {
  series: Series[];
  startup: Series;
  iperf: Iperf;
  data: Data;
  loadStart: string;
  loadEnd: string;
  minutes: number;
  crypto?: { rows: CryptoRow[]; skipped: string[] };
  shellRc: Measured[];
}

function report(r: ReportInput): string {
  const get = (w: Workload, name: string) => r.series.find((s) => s.workload === w && s.tool.name === name);
  const sum = (w: Workload, name: string) => {
    const s = get(w, name);
    return s ? summarize(s) : undefined;
  };
  const L: string[] = [];
  const sizeLabel = fmtBytes(BIG);
  L.push(`# escp benchmark results`);
  L.push("");
  L.push(
    `Written by \`${QUICK ? "bash bench/run.sh --quick" : "npm run bench"}\` on ${new Date().toISOString().replace(/\.\d+Z$/, "Z")} ` +
      `(${r.minutes.toFixed(1)} min). ${QUICK ? "**Quick mode**: smaller data and one run each; figures are indicative only. " : ""}` +
      `Medians of ${REPS} run(s) per tool (small files: ${SMALL_REPS}, 1-byte latency: ${LAT_REPS}); MB/s = 10^6 bytes/s.`,
  );
  L.push("");

  // Issue 3 item 10: the first figure.
  const e = sum("large", "escp"), s = sum("large", "scp");
  L.push(`## First figure: one ${sizeLabel} file, escp vs scp (issue 3, item 10)`);
  L.push("");
  if (e && s) {
    L.push(`| | MB/s | median wall s |`);
    L.push(`| --- | ---: | ---: |`);
    L.push(`| escp (defaults: -t 4, 1 MiB blocks, O_DIRECT) | ${f0(e.rate)} | ${f2(e.wall)} |`);
    L.push(`| scp (default cipher) | ${f0(s.rate)} | ${f2(s.wall)} |`);
    L.push(`| **ratio escp / scp** | **${f2(e.rate / s.rate)}×** | |`);
  } else L.push("(large-file workload not run)");
  L.push("");

  // Failures first: a fast wrong copy is no result.
  if (failures.length) {
    L.push(`## FAILURES`);
    L.push("");
    for (const f of failures) L.push(`- **${f}**`);
    L.push("");
  } else {
    L.push(`Every copy was compared with its source (cmp / diff -r): all identical, no failures.`);
    L.push("");
  }

  // Targets of issue 7.
  L.push(`## Targets (issue 7)`);
  L.push("");
  L.push(`| target | measured | ratio | needed | verdict |`);
  L.push(`| --- | --- | ---: | ---: | --- |`);
  const targets: { name: string; measured: string; ratio: number; need: number; le?: boolean; note?: string }[] = [];
  const ipf = median(r.iperf.runs.map((x) => x.mbps));
  if (e) {
    const ratioT = (name: string, label: string, need: number) => {
      const o = sum("large", name);
      if (o) targets.push({ name: `${sizeLabel} file: escp ≥ ${need}× ${label}`, measured: `${f0(e.rate)} vs ${f0(o.rate)} MB/s`, ratio: e.rate / o.rate, need });
    };
    ratioT("scp", "scp (default cipher)", 3.5);
    ratioT("scp -c aes128-gcm", "scp -c aes128-gcm", 2.5);
    ratioT("cat | ssh (aes128-gcm)", "`cat | ssh` (aes128-gcm)", 2);
    if (Number.isFinite(ipf)) targets.push({ name: `${sizeLabel} file: escp ≥ 0.4× iperf3 single stream`, measured: `${f0(e.rate)} vs ${f0(ipf)} MB/s`, ratio: e.rate / ipf, need: 0.4 });
  }
  const es = sum("small", "escp -r");
  if (es) {
    const rs = sum("small", "rsync -a"), ts = sum("small", "tar | ssh tar");
    if (rs) targets.push({ name: `${NFILES} × 4 KiB files: escp -r ≥ 4× rsync -a`, measured: `${f0(es.rate)} vs ${f0(rs.rate)} files/s`, ratio: es.rate / rs.rate, need: 4 });
    if (ts) targets.push({ name: `${NFILES} × 4 KiB files: escp -r ≥ 1× tar | ssh tar`, measured: `${f0(es.rate)} vs ${f0(ts.rate)} files/s`, ratio: es.rate / ts.rate, need: 1 });
  }
  const el = sum("latency", "escp"), sl = sum("latency", "scp");
  if (el && sl) targets.push({ name: "1-byte file: escp wall ≤ 1.2× scp", measured: `${f3(el.wall)} vs ${f3(sl.wall)} s`, ratio: el.wall / sl.wall, need: 1.2, le: true });
  // memory: -t 4 and 1 MiB blocks = the defaults ("escp", "escp -t 4", "escp -r")
  const t4 = r.series.filter((x) => x.tool.escp && (x.tool.name === "escp" || x.tool.name === "escp -t 4" || x.tool.name === "escp -r") && x.workload !== "latency");
  if (t4.length) {
    const lr = max(t4.map((x) => summarize(x).rssLocal)), rr = max(t4.map((x) => summarize(x).rssRemote));
    targets.push({ name: "peak RSS, local side, -t 4 -b 1M ≤ 256 MiB", measured: `${f0(lr)} MiB (max over large and small runs)`, ratio: lr / 256, need: 1, le: true });
    targets.push({ name: "peak RSS, remote side, -t 4 -b 1M ≤ 256 MiB", measured: `${f0(rr)} MiB (max over large and small runs)`, ratio: rr / 256, need: 1, le: true });
  }
  const scaleBig = r.series.find((x) => x.workload === "scale" && x.tool.name.startsWith("escp (256"));
  const [scaleSmall, scaleMany] = r.series.filter((x) => x.workload === "scale" && x.tool.name.startsWith("escp -r"));
  const bigS = get("large", "escp"), smallS = get("small", "escp -r");
  if (scaleBig && bigS) {
    const a = summarize(scaleBig), b = summarize(bigS);
    const g = Math.max(b.rssLocal / a.rssLocal, b.rssRemote / a.rssRemote);
    targets.push({ name: `RSS flat (±10 %) from 256 MiB to ${sizeLabel} file (target range: 1 GiB to 100 GiB sparse)`, measured: `local ${f0(a.rssLocal)}→${f0(b.rssLocal)}, remote ${f0(a.rssRemote)}→${f0(b.rssRemote)} MiB`, ratio: g, need: 1.1, le: true });
  }
  // Files: from the fewest to each larger count measured, so that the widest step is judged too.
  for (const many of [smallS, scaleMany]) {
    if (!scaleSmall || !many) continue;
    const a = summarize(scaleSmall), b = summarize(many);
    const g = Math.max(b.rssLocal / a.rssLocal, b.rssRemote / a.rssRemote);
    targets.push({ name: `RSS flat (±10 %) from ${scaleSmall.files} to ${many.files} files (target range: 1,000 to 1,000,000)`, measured: `local ${f0(a.rssLocal)}→${f0(b.rssLocal)}, remote ${f0(a.rssRemote)}→${f0(b.rssRemote)} MiB`, ratio: g, need: 1.1, le: true });
  }
  const sp1 = r.series.find((x) => x.tool.name === "escp --sparse (1 GiB sparse)");
  const sp100 = r.series.find((x) => x.tool.name === "escp --sparse (100 GiB sparse)");
  if (sp1 && sp100) {
    const a = summarize(sp1), b = summarize(sp100);
    const g = Math.max(b.rssLocal / a.rssLocal, b.rssRemote / a.rssRemote);
    targets.push({ name: "RSS flat (±10 %) from 1 GiB to 100 GiB sparse (--sparse, 64 MiB of data each)", measured: `local ${f0(a.rssLocal)}→${f0(b.rssLocal)}, remote ${f0(a.rssRemote)}→${f0(b.rssRemote)} MiB`, ratio: g, need: 1.1, le: true });
  }
  const sc = sum("large", "scp");
  if (e && sc) targets.push({ name: "CPU (user+sys, both sides) per GB ≤ 0.5× scp's", measured: `${f2(e.cpuPerGB)} vs ${f2(sc.cpuPerGB)} s/GB`, ratio: e.cpuPerGB / sc.cpuPerGB, need: 0.5, le: true });
  for (const t of targets) {
    const met = t.le ? t.ratio <= t.need : t.ratio >= t.need;
    L.push(`| ${t.name.replace(/\|/g, "\\|")} | ${t.measured} | ${f2(t.ratio)}× | ${t.le ? "≤" : "≥"} ${t.need}× | ${met ? "MET" : "**MISSED**"} |`);
  }
  L.push("");
  L.push(`RSS is the peak resident set (getrusage maxrss via /usr/bin/time) of the local escp and of the remote \`escp --server\` ` +
    `(through an ESCP_REMOTE wrapper that runs it under /usr/bin/time). CPU is user+sys of the local command with every child it waited for ` +
    `(so ssh is included) plus everything sshd ran for the session (the sshd session process that does ssh's own crypto, and the remote program), ` +
    `taken from the sshd listener's reaped-children times in /proc; per GB of file data.`);
  L.push("");

  // Machine
  L.push(`## Machine`);
  L.push("");
  const info = machineInfo(BIN, BUN, DATA);
  L.push(`| | |`);
  L.push(`| --- | --- |`);
  info["escp measured"] = COMMIT;
  for (const [k, v] of Object.entries(info)) L.push(`| ${k} | ${v.replace(/\|/g, "\\|")} |`);
  L.push(`| load average (1/5/15 min) at start / end | ${r.loadStart} / ${r.loadEnd} |`);
  L.push("");
  L.push(
    `Noise: this is a shared 2-vCPU VM; other sessions' builds and tests may run at the same time. Each table has a "bg cores" column: ` +
      `the CPUs busy with anything other than the measured command during its run (system-wide busy time from /proc/stat minus the command's own ` +
      `local and remote CPU, divided by wall time). Above ~0.2 the run was disturbed; ratios come from interleaved runs, so both sides of a ratio ` +
      `saw similar disturbance, but absolute figures are lower than on a quiet machine. Within each repetition every workload starts ` +
      `with an uncounted warm-up run of the tool it will measure first: the first run after another workload paid for it (this VM hands ` +
      `the page cache a deleted 2 GiB output freed back to the host, and touching those pages again is slow).`,
  );
  L.push("");

  // Tables
  const table = (w: Workload, title: string, unit: "MB/s" | "files/s" | "s") => {
    const ss = r.series.filter((x) => x.workload === w);
    if (!ss.length) return;
    L.push(`## ${title}`);
    L.push("");
    L.push(`| tool | median wall s | ${unit === "s" ? "min–max s" : unit} | local CPU s | remote CPU s | CPU s/GB | local RSS MiB | remote escp RSS MiB | bg cores | ok/runs |`);
    L.push(`| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`);
    for (const x of ss) {
      const m = summarize(x);
      const rate = unit === "s" ? `${f3(m.wallMin)}–${f3(m.wallMax)}` : f0(m.rate);
      const cpg = w === "latency" ? "–" : f2(m.cpuPerGB);
      L.push(`| ${x.tool.name.replace(/\|/g, "\\|")} | ${unit === "s" ? f3(m.wall) : f2(m.wall)} | ${rate} | ${f2(m.localCpu)} | ${f2(m.remoteCpu)} | ${cpg} | ${f0(m.rssLocal)} | ${f0(m.rssRemote)} | ${f2(m.bg)} | ${m.ok}/${m.n} |`);
    }
    L.push("");
  };
  table("large", `One ${sizeLabel} file, file → file over the loopback sshd (page cache warm)`, "MB/s");
  if (e) {
    const d = sum("large", "escp --nodirect");
    const rows: string[] = [];
    if (d) rows.push(`escp default (O_DIRECT) vs --nodirect (page cache): ${f0(e.rate)} vs ${f0(d.rate)} MB/s; CPU ${f2(e.cpuPerGB)} vs ${f2(d.cpuPerGB)} s/GB.`);
    const ts = ["escp -t 1", "escp -t 2", "escp -t 4", "escp -t 8"].map((n) => [n, sum("large", n)] as const).filter((x) => x[1]);
    if (ts.length) rows.push(`Streams: ${ts.map(([n, m]) => `${n.replace("escp ", "")} ${f0(m!.rate)}`).join(", ")} MB/s.`);
    const c = sum("large", "escp -C");
    if (c) rows.push(`-C (zstd level 1) on incompressible data: ${f0(c.rate)} MB/s (blocks that do not shrink travel as they are; after 4 such blocks of a file in a row, a stream tries only every 16th).`);
    if (Number.isFinite(ipf)) rows.push(`iperf3 single TCP stream on loopback, same run: ${f0(ipf)} MB/s (median of ${r.iperf.runs.length}; ${r.iperf.seconds} s each).`);
    const dr = sum("large", "dd O_DIRECT read (local)"), dw = sum("large", "dd O_DIRECT write (local)"), cp = sum("large", "cp (local, page cache)");
    if (dr && dw) rows.push(`Disk (virtio, the same one for source and destination): O_DIRECT read ${f0(dr.rate)} MB/s, O_DIRECT write ${f0(dw.rate)} MB/s (dd bs=1M); cp through the page cache ${cp ? f0(cp.rate) : "–"} MB/s. escp's default writes O_DIRECT, so its rate is capped by this disk's write rate (both ends share it); it reads a source the page cache already holds through the cache (cachestat), as the other tools do.`);
    for (const x of rows) L.push(`- ${x}`);
    L.push("");
  }
  table("small", `${NFILES} files of 4 KiB in ${DIRS} directories, recursive`, "files/s");
  table("latency", "One 1-byte file (latency, ssh start-up included)", "s");
  if (r.shellRc.length && el && sl) {
    const rc = median(r.shellRc.map((x) => x.wall)), rcCpu = median(r.shellRc.map((x) => x.user + x.sys));
    const shell = os.userInfo().shell || "/bin/sh";
    L.push(
      `Remote login shell: sshd runs every tool's remote end through ${shell} (escp --server, rsync, cat, tar, and scp's ` +
        `/usr/lib/openssh/sftp-server, the SFTP subsystem as Debian's stock sshd_config has it), which here reads ~/.bashrc ` +
        `(Debian's bash does so for ssh commands). ` +
        `That shell start-up alone costs ${f3(rc)} s wall, ${f3(rcCpu)} s CPU (median of ${r.shellRc.length}: \`SSH_CLIENT=… ${shell} -c true\`); ` +
        `every tool above pays it once, scp included, as it would on a stock Debian host.`,
    );
    L.push("");
  }

  // Startup
  if (r.startup.runs.length) {
    const st = r.startup.runs.filter((x) => x.ok);
    L.push(`## The executable (issue 9, item 2)`);
    L.push("");
    const size = fs.statSync(ESCP_BIN).size;
    L.push(`| | |`);
    L.push(`| --- | --- |`);
    L.push(`| dist/escp size | ${size} bytes (${fmtBytes(size)}) |`);
    L.push(`| \`escp --version\` wall (median of ${st.length}) | ${f3(median(st.map((x) => x.wall)))} s (min ${f3(min(st.map((x) => x.wall)))} s) |`);
    L.push(`| \`escp --version\` peak RSS | ${f1(max(st.map((x) => x.rssMiB)))} MiB |`);
    L.push(`| \`escp --version\` CPU (user+sys) | ${f3(median(st.map((x) => x.user + x.sys)))} s |`);
    L.push("");
    const ldd = (p: string) => spawnSync("ldd", [p], { encoding: "utf8" }).stdout.trim();
    const lib = process.env.ESCP_LIB ?? path.join(REPO, "build", "libescp.so");
    L.push("```");
    L.push(`$ ldd dist/escp   # ${ESCP_BIN}`);
    L.push(ldd(ESCP_BIN));
    if (fs.existsSync(lib)) {
      L.push(`$ ldd build/libescp.so   # the library embedded in dist/escp`);
      L.push(ldd(lib));
    }
    L.push("```");
    L.push("");
  }

  // Memory scaling
  const sc2 = r.series.filter((x) => x.workload === "scale");
  if (sc2.length) {
    L.push(`## Memory scaling (escp defaults)`);
    L.push("");
    L.push(`| run | median wall s | local RSS MiB | remote RSS MiB |`);
    L.push(`| --- | ---: | ---: | ---: |`);
    const rows: [string, Series | undefined][] = [
      [sc2[0]!.tool.name, sc2[0]], [`escp (${sizeLabel} file)`, bigS], [sc2[1]?.tool.name ?? "", sc2[1]], [`escp -r (${NFILES} files)`, smallS],
      [scaleMany?.tool.name ?? "", scaleMany],
      ...sc2.filter((x) => x !== sc2[0] && x !== sc2[1] && x !== scaleMany).map((x) => [x.tool.name, x] as [string, Series]),
    ];
    for (const [n, x] of rows) {
      if (!x) continue;
      const m = summarize(x);
      L.push(`| ${n} | ${f2(m.wall)} | ${f0(m.rssLocal)} | ${f0(m.rssRemote)} |`);
    }
    L.push("");
    L.push(`The issue asks for flat memory from 1,000 to 1,000,000 files and from 1 GiB to 100 GiB sparse. The sparse pair is checked over the full range (with --sparse only the 64 MiB of data travels); for files this run checks 1,000 to 100,000 (two 10× steps), what fits its time budget.`);
    L.push("");
  }

  // Crypto
  L.push(`## Crypto primitives (bench/crypto.ts)`);
  L.push("");
  L.push(CRYPTO_BEGIN);
  L.push(r.crypto ? cryptoMarkdown(r.crypto.rows, r.crypto.skipped) : "(not run: `bun bench/crypto.ts` fills this in)");
  L.push(CRYPTO_END);
  L.push("");

  // Commands
  L.push(`## Commands`);
  L.push("");
  L.push(`sshd: \`test/harness.ts\` startSshd() (OpenSSH sshd on 127.0.0.1 with throwaway keys); \`CFG\` is its ssh_config, \`escp-test\` its host alias. ` +
    `escp runs with \`ESCP_REMOTE=WRAPPER\`, a script that execs \`/usr/bin/time -o FILE -f "%e %U %S %M" dist/escp "$@"\` on the remote side. ` +
    `Every local command runs as \`/usr/bin/time -f "%e %U %S %M" COMMAND\`; the destination directory is emptied (and \`sync -f\`) before each run.`);
  L.push("");
  L.push("```sh");
  const shown = new Set<string>();
  for (const x of r.series) {
    const a = x.tool.cmd(x.src, DST);
    const cmd = a[0] === "bash" && a[1] === "-c" ? a[2]! : shellLine(a);
    const line = cmd.split(CFG).join("CFG").split(DATA).join("$DATA");
    const key = `${x.workload}:${line}`;
    if (shown.has(key)) continue;
    shown.add(key);
    L.push(`# ${x.workload}: ${x.tool.name}`);
    L.push(line);
  }
  L.push(`# iperf3`);
  L.push(r.iperf.cmd);
  L.push("```");
  L.push("");
  L.push(`Data (\`$DATA\` = ${DATA}): ${path.basename(r.data.big)} (${fmtBytes(BIG)}, pseudo-random, incompressible), ` +
    `${path.basename(r.data.small)}/ (${NFILES} files of 4 KiB in ${DIRS} directories), one-byte.bin. ` +
    `The large file and the small-file tree are read once before the runs (page cache warm); nothing is dropped from the page cache.`);
  L.push("");
  return L.join("\n");
}

main().catch((e) => {
  log(`bench: ${(e as Error).stack ?? e}`);
  process.exit(2);
});
