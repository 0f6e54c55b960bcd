/**
 * Measuring one command for the benchmark: wall time, CPU and peak RSS of the
 * local side (/usr/bin/time), CPU of everything the shared sshd ran for it
 * (the delta of the sshd listener's reaped-children times in /proc, which
 * covers the sshd session process that does ssh's crypto as well as scp -t,
 * rsync --server, tar, cat or escp --server), and, for escp, the remote
 * `escp --server`'s own CPU and peak RSS through a wrapper that ESCP_REMOTE
 * names. Also a little statistics and machine information.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { descendants } from "../test/harness.ts";

export const TIME = "/usr/bin/time";
const TIME_FMT = "%e %U %S %M";
const HZ = 100; // USER_HZ: /proc times are in 1/100 s on Linux x86-64

export interface Measured {
  ok: boolean;
  code: number;
  wall: number; // seconds (monotonic clock around the whole command)
  user: number; // local side, seconds (the command and every child it waited for, e.g. ssh)
  sys: number;
  rssMiB: number; // local peak RSS of the largest process (getrusage maxrss)
  remoteCpu?: number; // seconds: all that sshd ran for this command (session + remote program)
  remoteEscp?: { user: number; sys: number; rssMiB: number; wall: number }; // escp --server itself
  otherCores?: number; // average CPUs busy with things other than this command during it (noise)
  steal?: number; // average CPUs stolen by the hypervisor during it
  stderr: string;
  error?: string; // set by the caller's verification when the copy is wrong
}

/** user+sys clock ticks of children reaped by pid (fields 16 and 17 of /proc/pid/stat). */
function reapedTicks(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // after "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    return Number(f[13]) + Number(f[14]);
  } catch {
    return NaN;
  }
}

/** System-wide CPU ticks: [busy, steal]. */
function cpuTicks(): [number, number] {
  const line = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = v as number[];
  return [user! + nice! + system! + irq! + softirq!, steal ?? 0];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Parses the last line of /usr/bin/time -f "%e %U %S %M" output. */
function parseTime(file: string): { wall: number; user: number; sys: number; rssMiB: number } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
  const lines = text.trim().split("\n").filter((l) => /^[\d.]+ [\d.]+ [\d.]+ \d+$/.test(l.trim()));
  const last = lines.pop();
  if (!last) return undefined;
  const [wall, user, sys, rss] = last.trim().split(" ").map(Number);
  return { wall: wall!, user: user!, sys: sys!, rssMiB: rss! / 1024 };
}

export interface Context {
  sshdPid: number;
  /** Directory where the escp remote wrapper drops its /usr/bin/time output. */
  remoteDir: string;
  tmp: string;
}

/** Writes the ESCP_REMOTE wrapper: runs escp --server under /usr/bin/time. */
export function remoteWrapper(ctx: Context, escpBin: string): string {
  const file = path.join(ctx.tmp, "escp-remote.sh");
  fs.mkdirSync(ctx.remoteDir, { recursive: true });
  fs.writeFileSync(
    file,
    `#!/bin/sh\n# bench/: the remote escp, measured (CPU, peak RSS) without changing what runs\n` +
      `exec ${TIME} -o "${ctx.remoteDir}/remote.$$" -f "${TIME_FMT}" "${escpBin}" "$@"\n`,
    { mode: 0o755 },
  );
  return file;
}

/**
 * Runs argv under /usr/bin/time; waits until sshd has reaped every session the
 * command started, so that the remote CPU is complete.
 */
export async function measure(ctx: Context, argv: string[], env: Record<string, string> = {}, timeoutMs = 600_000): Promise<Measured> {
  const tfile = path.join(ctx.tmp, `local.${process.pid}.${Date.now()}.time`);
  for (const f of fs.readdirSync(ctx.remoteDir)) fs.rmSync(path.join(ctx.remoteDir, f), { force: true });
  await waitSessionsGone(ctx.sshdPid, 5000);
  const remote0 = reapedTicks(ctx.sshdPid);
  const [busy0, steal0] = cpuTicks();
  const t0 = performance.now();
  const child = spawn(TIME, ["-o", tfile, "-f", TIME_FMT, ...argv], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const err: Buffer[] = [];
  child.stderr!.on("data", (b: Buffer) => err.push(b));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  const code: number = await new Promise((resolve) => child.on("close", (c, sig) => resolve(c ?? (sig ? 128 : 1))));
  clearTimeout(timer);
  const wall = (performance.now() - t0) / 1000;
  const [busy1, steal1] = cpuTicks();
  await waitSessionsGone(ctx.sshdPid, 10_000);
  const remote1 = reapedTicks(ctx.sshdPid);
  const local = parseTime(tfile);
  fs.rmSync(tfile, { force: true });
  let remoteEscp: Measured["remoteEscp"];
  for (const f of fs.readdirSync(ctx.remoteDir)) {
    const r = parseTime(path.join(ctx.remoteDir, f));
    if (r) remoteEscp = r; // one session per command
  }
  const user = local?.user ?? NaN, sys = local?.sys ?? NaN;
  const remoteCpu = (remote1 - remote0) / HZ;
  const ours = user + sys + (Number.isFinite(remoteCpu) ? remoteCpu : 0);
  const busy = (busy1 - busy0) / HZ;
  return {
    ok: code === 0 && !timedOut,
    code,
    wall,
    user,
    sys,
    rssMiB: local?.rssMiB ?? NaN,
    remoteCpu: Number.isFinite(remoteCpu) ? remoteCpu : undefined,
    remoteEscp,
    otherCores: Math.max(0, (busy - ours) / wall),
    steal: (steal1 - steal0) / HZ / wall,
    stderr: Buffer.concat(err).toString("utf8").slice(-2000) + (timedOut ? `\n(killed after ${timeoutMs / 1000} s)` : ""),
  };
}

/** Waits until the sshd listener has no children left (every session ended and reaped). */
export async function waitSessionsGone(sshdPid: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until && descendants(sshdPid).length > 0) await sleep(20);
}

// ───────────────────────────── statistics ─────────────────────────────

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

export function max(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? Math.max(...v) : NaN;
}

export function min(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? Math.min(...v) : NaN;
}

// ───────────────────────────── machine ─────────────────────────────

function cmdOut(argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
  return `${r.stdout ?? ""}${r.stderr ?? ""}`.trim();
}

export function machineInfo(escpBin: string, bunBin: string, dataDir: string): Record<string, string> {
  const cpu = fs.readFileSync("/proc/cpuinfo", "utf8");
  const model = /model name\s*:\s*(.*)/.exec(cpu)?.[1] ?? "?";
  const flags = (/flags\s*:\s*(.*)/.exec(cpu)?.[1] ?? "").split(" ");
  const want = ["aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f"];
  const family = /cpu family\s*:\s*(\d+)/.exec(cpu)?.[1], modelNo = /model\s*:\s*(\d+)/.exec(cpu)?.[1];
  const osr = (() => {
    try {
      return /PRETTY_NAME="([^"]+)"/.exec(fs.readFileSync("/etc/os-release", "utf8"))?.[1] ?? "?";
    } catch {
      return "?";
    }
  })();
  const sysctl = (p: string) => {
    try {
      return fs.readFileSync(p, "utf8").trim().replace(/\s+/g, " ");
    } catch {
      return "?";
    }
  };
  return {
    os: osr,
    kernel: os.release(),
    nproc: String(os.cpus().length),
    cpu: `${model} (family ${family} model ${modelNo}; ${want.filter((f) => flags.includes(f)).join(" ")})`,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    ssh: cmdOut(["ssh", "-V"]),
    rsync: cmdOut(["rsync", "--version"]).split("\n")[0] ?? "?",
    iperf3: cmdOut(["iperf3", "--version"]).split("\n")[0] ?? "?",
    tar: cmdOut(["tar", "--version"]).split("\n")[0] ?? "?",
    bun: cmdOut([bunBin, "--version"]),
    escp: cmdOut([escpBin, "--version"]),
    "tcp congestion control": sysctl("/proc/sys/net/ipv4/tcp_congestion_control"),
    "net.core.rmem_max / wmem_max": `${sysctl("/proc/sys/net/core/rmem_max")} / ${sysctl("/proc/sys/net/core/wmem_max")}`,
    "tcp_rmem / tcp_wmem": `${sysctl("/proc/sys/net/ipv4/tcp_rmem")} / ${sysctl("/proc/sys/net/ipv4/tcp_wmem")}`,
    filesystem: cmdOut(["df", "--output=source,fstype,target", dataDir]).split("\n").pop()?.trim().replace(/\s+/g, " ") ?? "?",
  };
}

export function loadavg(): string {
  return os.loadavg().map((x) => x.toFixed(2)).join(" ");
}

/**
 * The order of a workload's n tools in rep `rep`: at place p, tool (rep + p·k) mod n, k
 * being the rep-th step coprime with n. Each rep starts with another tool (rotating the
 * whole list had put the first 1-byte copy of every rep right after the 10k-file tar,
 * ~60 ms slower), and each tool follows another one in each rep, as far as there are
 * such steps (n = 15: 8; n = 4: 2, and then the third rep repeats the first's neighbours,
 * not its start): rotating by one place kept every tool's predecessor, so the first
 * tool (the default escp, the targets' row)
 * followed `cp` in every rep but the first (2.08 / 2.03 s there, against 1.66 / 1.82 s
 * for the same settings as `escp -t 4` in the same reps).
 */
export function repOrder(n: number, rep: number): number[] {
  const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);
  const steps = [...Array(n).keys()].filter((k) => k > 0 && gcd(k, n) === 1);
  const k = steps.length ? steps[rep % steps.length] : 1;
  return [...Array(n).keys()].map((p) => (rep + p * k) % n);
}
