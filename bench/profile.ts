/**
 * Where the time goes in one escp transfer: per-thread CPU of both escp
 * processes (sampled from /proc/PID/task/TID/stat while they run) and, when
 * `perf` is installed, a system-wide cpu-clock profile with call graphs,
 * summarised by process/thread name, by shared object and by symbol. A copy
 * of the native library with symbols (same sources and flags as
 * scripts/build-native.sh, not stripped) is loaded through ESCP_LIB on both
 * sides so that perf can name its functions. Also a start-up timeline of a
 * 1-byte copy (strace -f -ttt on both sides) for the latency.
 *
 *   bun bench/profile.ts [--size BYTES] [--opts "-t 4"] [--out bench/PROFILE.md]
 *
 * Writes bench/PROFILE.md; docs/performance.md discusses it.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startSshd, makeFile, descendants, ESCP_BIN } from "../test/harness.ts";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(process.env.ESCP_SRC ?? path.join(HERE, ".."));
const argv = process.argv.slice(2);
const opt = (n: string) => {
  const i = argv.indexOf(n);
  return i >= 0 ? argv[i + 1] : undefined;
};
const SIZE = Number(opt("--size") ?? 2 ** 31);
const OPTS = (opt("--opts") ?? "").split(" ").filter(Boolean);
const OUT = path.resolve(opt("--out") ?? path.join(HERE, "PROFILE.md"));
const DATA = path.resolve(process.env.ESCP_BENCH_DIR ?? "/var/tmp/escp-bench");
const log = (s: string) => process.stderr.write(s + "\n");
const has = (t: string) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0;

/** scripts/build-native.sh's library, with frame pointers and its symbol table kept, so perf can name its functions. */
function buildProfLib(out: string): void {
  const r = spawnSync(path.join(REPO, "scripts", "build-native.sh"), [out], {
    encoding: "utf8",
    env: { ...process.env, KEEP_SYMBOLS: "1", CFLAGS_EXTRA: "-g -fno-omit-frame-pointer" },
  });
  if (r.status !== 0) throw new Error(`building ${out}: ${r.stderr}`);
}

interface ThreadCpu {
  comm: string;
  ticks: number;
  user: number;
  sys: number;
}

/** Last seen user/sys ticks of every thread of pid (threads that exit keep their last sample). */
function sampleThreads(pid: number, into: Map<number, ThreadCpu>): void {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return;
  }
  for (const t of tids) {
    try {
      const s = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
      const comm = s.slice(s.indexOf("(") + 1, s.lastIndexOf(")"));
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      const user = Number(f[11]), sys = Number(f[12]);
      into.set(Number(t), { comm, ticks: user + sys, user, sys });
    } catch {
      /* thread gone */
    }
  }
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "";
  }
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ").trim();
  } catch {
    return "";
  }
}

function threadTable(title: string, m: Map<number, ThreadCpu>, wall: number): string[] {
  const groups = new Map<string, { n: number; user: number; sys: number }>();
  for (const t of m.values()) {
    const name = t.comm.replace(/\d+$/, "N");
    const g = groups.get(name) ?? { n: 0, user: 0, sys: 0 };
    g.n++;
    g.user += t.user / 100;
    g.sys += t.sys / 100;
    groups.set(name, g);
  }
  const rows = [...groups.entries()].sort((a, b) => b[1].user + b[1].sys - (a[1].user + a[1].sys));
  const total = rows.reduce((s, [, g]) => s + g.user + g.sys, 0);
  const L = [`**${title}**: ${total.toFixed(2)} CPU s over ${wall.toFixed(2)} s wall`, "", "| thread (comm) | threads | user s | sys s | share |", "| --- | ---: | ---: | ---: | ---: |"];
  for (const [name, g] of rows) {
    if (g.user + g.sys < 0.005) continue;
    L.push(`| ${name} | ${g.n} | ${g.user.toFixed(2)} | ${g.sys.toFixed(2)} | ${((100 * (g.user + g.sys)) / total).toFixed(0)} % |`);
  }
  return [...L, ""];
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(DATA, "prof-"));
  const bin = path.join(tmp, "escp");
  fs.copyFileSync(ESCP_BIN, bin);
  fs.chmodSync(bin, 0o755);
  const lib = path.join(tmp, "libescp-sym.so");
  log("profile: building the native library with symbols");
  buildProfLib(lib);
  const src = path.join(DATA, "src", `big-${SIZE}.bin`);
  if (!fs.existsSync(src) || fs.statSync(src).size !== SIZE) await makeFile(src, SIZE, { seed: `bench-${SIZE}` });
  spawnSync("cat", [src], { stdio: ["ignore", "ignore", "ignore"] }); // warm
  const dst = path.join(tmp, "dst");
  fs.mkdirSync(dst);
  const sshd = await startSshd();
  const wrapper = path.join(tmp, "remote.sh");
  fs.writeFileSync(wrapper, `#!/bin/sh\nESCP_LIB=${lib} exec ${bin} "$@"\n`, { mode: 0o755 });
  const env = { ...process.env, ESCP_LIB: lib, ESCP_REMOTE: wrapper };
  const escpArgs = [bin, "-F", sshd.configPath, ...OPTS, src, `${sshd.host}:${dst}/`];
  const usePerf = has("perf");
  const perfData = path.join(tmp, "perf.data");
  const full = usePerf ? ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-a", "-g", "-o", perfData, "--", ...escpArgs] : escpArgs;

  log(`profile: ${escpArgs.join(" ")}${usePerf ? " (under perf record -a -g)" : ""}`);
  const t0 = performance.now();
  const child = spawn(full[0]!, full.slice(1), { env, stdio: ["ignore", "ignore", "inherit"] });
  const local = new Map<number, ThreadCpu>(), remote = new Map<number, ThreadCpu>();
  let localPid = 0, remotePid = 0;
  const exited = new Promise<number>((r) => child.on("close", (c) => r(c ?? 1)));
  let done = false;
  void exited.then(() => (done = true));
  while (!done) {
    if (!localPid) localPid = [child.pid!, ...descendants(child.pid!)].find((p) => cmdline(p).startsWith(bin)) ?? 0;
    if (!remotePid) remotePid = descendants(sshd.pid).find((p) => cmdline(p).startsWith(`${bin} --server`)) ?? 0;
    if (localPid) sampleThreads(localPid, local);
    if (remotePid) sampleThreads(remotePid, remote);
    await new Promise((r) => setTimeout(r, 25));
  }
  const code = await exited;
  const wall = (performance.now() - t0) / 1000;
  const same = spawnSync("cmp", [src, path.join(dst, path.basename(src))]).status === 0;
  log(`profile: exit ${code}, ${wall.toFixed(2)} s, copy ${same ? "identical" : "DIFFERENT"}`);
  if (code !== 0 || !same) {
    // A profile of a failed copy would say nothing true about the data path; keep the last good report.
    await sshd.stop();
    throw new Error(`the profiled copy failed (exit ${code}${same ? "" : ", copy differs"}); ${OUT} left as it was`);
  }

  const L: string[] = [];
  L.push(`# escp profile`);
  L.push("");
  L.push(`Generated by \`bun bench/profile.ts\` on ${new Date().toISOString()}; see docs/performance.md for the discussion.`);
  L.push("");
  L.push(`Transfer: \`escp ${OPTS.join(" ")} ${(SIZE / 2 ** 30).toFixed(2)} GiB file escp-test:DIR/\` over the loopback sshd, ` +
    `${wall.toFixed(2)} s wall (${(SIZE / 1e6 / wall).toFixed(0)} MB/s${usePerf ? ", slowed a little by perf" : ""}), exit ${code}, copy byte-identical.`);
  L.push("");
  L.push(`## Per-thread CPU (from /proc/PID/task/TID/stat, sampled every 25 ms)`);
  L.push("");
  L.push(`Thread names are Bun's: the stream workers' JS threads and the native loops they call run on "Worker"-named threads ` +
    `(or the name Bun gives them); "HeapHelper"/"JIT" threads are JavaScriptCore's GC and compiler; the main thread carries the process name.`);
  L.push("");
  L.push(...threadTable(`local escp (sender, pid ${localPid})`, local, wall));
  L.push(...threadTable(`remote escp --server (receiver, pid ${remotePid})`, remote, wall));

  if (usePerf) {
    const pids = [localPid, remotePid].filter(Boolean).join(",");
    const report = (sort: string, n: number, extra: string[] = []) => {
      const r = spawnSync("perf", ["report", "-i", perfData, "--no-children", "--sort", sort, "--stdio", "-g", "none", "--percent-limit", "0.4", ...extra], { encoding: "utf8", maxBuffer: 64 << 20 });
      return r.stdout.split("\n").filter((l) => l.trim() && !l.startsWith("#")).slice(0, n).map((l) => l.replace(/\s+$/, ""));
    };
    L.push(`## perf: cpu-clock samples, whole system, while the transfer ran`);
    L.push("");
    L.push("Everything on the machine, by process/thread name and shared object (`perf report --sort comm,dso`): shows what else ran (noise).");
    L.push("");
    L.push("```");
    L.push(...report("comm,dso", 25));
    L.push("```");
    L.push("");
    L.push(`The two escp processes only (\`--pid ${pids} --sort pid,comm,dso\`):`);
    L.push("");
    L.push("```");
    L.push(...report("pid,comm,dso", 25, ["--pid", pids]));
    L.push("```");
    L.push("");
    L.push(`Their top symbols (\`--pid ${pids} --sort dso,sym\`; libescp-sym.so is escp's native library with symbols, with libcrypto, intel-ipsec-mb, xxhash and zstd statically inside; percentages are of all samples):`);
    L.push("");
    L.push("```");
    L.push(...report("dso,sym", 45, ["--pid", pids]));
    L.push("```");
    L.push("");
    L.push("Inclusive time (`--children`) of the system calls and native functions the escp processes spent it in, as a share of all their samples:");
    L.push("");
    const inc = spawnSync("perf", ["report", "-i", perfData, "--children", "--pid", pids, "--sort", "sym", "--stdio", "-g", "none", "--percent-limit", "0.05"], { encoding: "utf8", maxBuffer: 64 << 20 });
    const rows: [number, string][] = [];
    let totalSelf = 0;
    for (const l of inc.stdout.split("\n")) {
      const m = /^\s+([\d.]+)%\s+([\d.]+)%\s+\[(.)\]\s+(\S+)/.exec(l);
      if (!m) continue;
      totalSelf += Number(m[2]);
      const sym = m[4]!;
      if (/^__x64_sys_|^_aesni_|^aesni_gcm|^XXH3_|^ZSTD_compress|^escp_(send|recv)_batch$|^gcm_ghash|^__memmove|^__memcpy/.test(sym)) rows.push([Number(m[1]), sym]);
    }
    L.push("| inclusive % of escp samples | function |");
    L.push("| ---: | --- |");
    for (const [pc, sym] of rows.slice(0, 25)) L.push(`| ${(totalSelf ? (100 * pc) / totalSelf : pc).toFixed(1)} | ${sym} |`);
    L.push("");
  }

  // Start-up timeline of a 1-byte copy.
  if (has("strace")) {
    const one = path.join(tmp, "one");
    fs.writeFileSync(one, "x");
    const rtrace = path.join(tmp, "remote.strace"), ltrace = path.join(tmp, "local.strace");
    const rw = path.join(tmp, "remote-strace.sh");
    fs.writeFileSync(rw, `#!/bin/sh\nexec strace -f -ttt -e trace=execve,listen,accept4,exit_group -e signal=none -o ${rtrace} ${bin} "$@"\n`, { mode: 0o755 });
    spawnSync("strace", ["-f", "-ttt", "-e", "trace=execve,connect,exit_group", "-e", "signal=none", "-o", ltrace,
      bin, "-F", sshd.configPath, one, `${sshd.host}:${dst}/`], { env: { ...process.env, ESCP_REMOTE: rw } });
    const lines = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, "utf8").split("\n").filter(Boolean) : []);
    const lt = lines(ltrace), rt = lines(rtrace);
    const ts = (l: string) => Number(l.split(/\s+/)[1]);
    if (lt.length) {
      const t0l = ts(lt[0]!);
      const ev: [number, string][] = [];
      const first = (arr: string[], re: RegExp, label: string, last = false) => {
        const hits = arr.filter((l) => re.test(l));
        const l = last ? hits.pop() : hits[0];
        if (l) ev.push([ts(l) - t0l, label]);
      };
      first(lt, /execve\(".*escp"/, "local escp exec");
      first(lt, /execve\("\/usr\/bin\/ssh"/, "local escp runs ssh");
      first(lt, /connect\(\d+, \{sa_family=AF_INET, sin_port=htons\(22|connect\(\d+, \{sa_family=AF_INET, sin_port=htons\(\d{5}\)/, "ssh connects to sshd");
      first(rt, /execve\(/, "remote escp --server exec (after ssh auth and the login shell)");
      first(rt, /listen\(/, "remote listens (data port)");
      first(lt, /connect\(\d+, \{sa_family=AF_INET, sin_port=htons\(12[34]\d\)/, "local connects stream 0");
      first(lt, /connect\(\d+, \{sa_family=AF_INET, sin_port=htons\(12[34]\d\)/, "local connects last stream", true);
      first(rt, /exit_group/, "remote exits");
      first(lt, /exit_group/, "local exits", true);
      ev.sort((a, b) => a[0] - b[0]);
      L.push(`## Start-up timeline of a 1-byte copy (strace -f -ttt, both sides; strace slows it a little)`);
      L.push("");
      L.push("| t (s) | event |");
      L.push("| ---: | --- |");
      for (const [t, e] of ev) L.push(`| ${t.toFixed(3)} | ${e} |`);
      L.push("");
    }
  }
  fs.writeFileSync(OUT, L.join("\n"));
  log(`profile: wrote ${path.relative(process.cwd(), OUT)}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  await sshd.stop();
  process.exit(0);
}

main().catch((e) => {
  log(`profile: ${(e as Error).stack ?? e}`);
  process.exit(2);
});
