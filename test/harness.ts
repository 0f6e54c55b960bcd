/**
 * Test harness for escp's integration tests.
 *
 * Integration tests run the compiled binary (dist/escp) against a real
 * OpenSSH sshd listening on 127.0.0.1, so that what is tested is what users
 * run: system ssh starting `escp --server` on the "remote" (this same host).
 *
 *   import { startSshd, runEscp, tmpdir, makeFile, sameFile } from "./harness";
 *
 *   const sshd = await startSshd();            // once per test process
 *   const src = tmpdir("src"), dst = tmpdir("dst");
 *   await makeFile(`${src}/a.bin`, 10 << 20, { seed: 1 });
 *   const r = await runEscp([`${src}/a.bin`, `${sshd.host}:${dst}/`]);
 *   expect(r.code).toBe(0);
 *   expect(await sameFile(`${src}/a.bin`, `${dst}/a.bin`)).toBe(true);
 *
 * Everything lives in one per-run directory (ESCP_TEST_TMP or the system temp
 * dir, then escp-test-<pid>-XXXXXX). Nothing outlives the test process:
 * - sshd runs under `setpriv --pdeathsig TERM`, so it dies with the test
 *   process even when that is killed (bun test runs no process "exit" hooks);
 * - run directories of test processes that are gone are deleted when the
 *   next one starts (set ESCP_KEEP_TMP=1 to keep them for a post-mortem);
 * - scripts/test.sh also runs `bun test --no-orphans`.
 */
import { dlopen, FFIType } from "bun:ffi";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { VERSION } from "../src/version.ts";

// ───────────────────────────── paths and names ─────────────────────────────

/** Absolute path of the repository root. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/**
 * The compiled executable's cache directory name under ~/.cache/escp (VERSION-BUILD-MACHINE,
 * the build id scripts/build.sh writes, uname -m): where it bootstraps itself and keeps its library.
 */
export function buildTag(): string {
  return `${VERSION}-${fs.readFileSync(path.join(REPO_ROOT, "build", "build-id"), "utf8").trim()}-${os.machine()}`;
}

/**
 * Other builds' directories in a cache root (~/.cache/escp), each holding an `escp`
 * that fails if run, last used `daysAgo[name]` days ago; owned by `uid` if given.
 */
export function plantBuilds(root: string, daysAgo: Record<string, number>, uid?: number): void {
  for (const [name, days] of Object.entries(daysAgo)) {
    const d = path.join(root, name);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, "escp"), "#!/bin/sh\nexit 1\n", { mode: 0o755 });
    if (uid !== undefined) for (const p of [d, path.join(d, "escp"), root, path.dirname(root)]) fs.chownSync(p, uid, uid);
    const t = Date.now() / 1000 - days * 86400;
    fs.utimesSync(d, t, t);
  }
}
// ─────────────────────────── AES-128-GCM backends ───────────────────────────

/** ESCP_GCM's values and the names ffi/gcm.c reports for them (the -v log's `aes=`). */
export const GCM_NAME: Record<string, string> = { openssl: "OpenSSL", libgcrypt: "libgcrypt", "ipsec-mb": "ipsec-mb" };

/** The ESCP_GCM values this host can run, as the library under test decides them (ffi/gcm.c `escp_gcm_offered`). */
export function gcmBackendsHere(): string[] {
  // Left loaded: the statically linked OpenSSL inside would run its exit handlers at dlclose.
  const { symbols } = dlopen(process.env.ESCP_LIB ?? path.join(REPO_ROOT, "build", "libescp.so"), {
    escp_gcm_offered: { args: [], returns: FFIType.cstring },
  });
  return String(symbols.escp_gcm_offered()).split(" ").filter(Boolean);
}

/** Absolute path of the binary under test (ESCP_BIN overrides dist/escp). */
export const ESCP_BIN = path.resolve(process.env.ESCP_BIN ?? path.join(REPO_ROOT, "dist", "escp"));
/** ssh_config alias that logs in with the authorized throwaway key. */
export const SSH_HOST = "escp-test";
/** ssh_config alias whose only identity is NOT authorized: for auth-failure tests. */
export const SSH_HOST_NOKEY = "escp-test-nokey";
/** sshd must be started by absolute path (it re-executes itself). */
export const SSHD_PATH = "/usr/sbin/sshd";
/** The user the tests log in as (the current user; root in CI). */
export const SSH_USER = currentUser();

function currentUser(): string {
  // Bun's os.userInfo().username says "unknown" here; ask the passwd database.
  const uid = process.getuid?.() ?? -1;
  const r = spawnSync("id", ["-un"], { encoding: "utf8" });
  if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  try {
    for (const line of fs.readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (Number(f[2]) === uid && f[0]) return f[0];
    }
  } catch {
    /* fall through */
  }
  return process.env.USER ?? process.env.LOGNAME ?? (uid === 0 ? "root" : os.userInfo().username);
}

/**
 * Path of the generated ssh_config of the running shared sshd (see startSshd),
 * or undefined while none runs. A live binding: read it after startSshd().
 */
export let SSH_CONFIG: string | undefined;

const MiB = 1 << 20;

// ───────────────────────────── temp directories ────────────────────────────

const TMP_BASE = path.resolve(process.env.ESCP_TEST_TMP ?? os.tmpdir());
const RUN_PREFIX = "escp-test-";
let runDir: string | undefined;

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Deletes run directories left by test processes that no longer exist. */
function sweepStaleRunDirs(): void {
  if (process.env.ESCP_KEEP_TMP) return;
  let names: string[];
  try {
    names = fs.readdirSync(TMP_BASE);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^escp-test-(\d+)-[A-Za-z0-9]{6}$/.exec(name);
    if (!m || Number(m[1]) === process.pid || pidAlive(Number(m[1]))) continue;
    try {
      fs.rmSync(path.join(TMP_BASE, name), { recursive: true, force: true });
    } catch {
      /* another run may be sweeping the same directory */
    }
  }
}

/** This process's run directory, created on first use. */
export function runTmp(): string {
  if (runDir && fs.existsSync(runDir)) return runDir;
  fs.mkdirSync(TMP_BASE, { recursive: true });
  sweepStaleRunDirs();
  runDir = fs.mkdtempSync(path.join(TMP_BASE, `${RUN_PREFIX}${process.pid}-`));
  return runDir;
}

/** A fresh, empty directory for one test (name is only a readable prefix). */
export function tmpdir(name = "t"): string {
  const safe = name.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 60) || "t";
  return fs.mkdtempSync(path.join(runTmp(), `${safe}-`));
}

// ─────────────────────────────── processes ─────────────────────────────────

export interface RunResult {
  /** Exit status; 128 + signal number when killed by a signal (as a shell says). */
  code: number;
  stdout: string;
  stderr: string;
  /** Name of the signal that killed the process, if one did. */
  signal: NodeJS.Signals | null;
  /** True when the process was killed because it ran past timeoutMs. */
  timedOut: boolean;
}

export interface RunOptions {
  cwd?: string;
  /** Added to (and overriding) the inherited environment; undefined deletes. */
  env?: Record<string, string | undefined>;
  /** Written to stdin, which is then closed. Without it stdin is /dev/null. */
  input?: string | Uint8Array;
  /** Kill the process (and its descendants) after this long. Default 60 s, half
   *  the per-test timeout, so a hang fails the test with its output. */
  timeoutMs?: number;
}

/** Pids of every descendant of pid (children first found, then theirs). */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[] = [];
  try {
    entries = fs.readdirSync("/proc");
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${e}/stat`, "utf8");
    } catch {
      continue;
    }
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const list = children.get(ppid);
    if (list) list.push(Number(e));
    else children.set(ppid, [Number(e)]);
  }
  const out: number[] = [];
  const queue = [...(children.get(pid) ?? [])];
  while (queue.length) {
    const p = queue.shift()!;
    out.push(p);
    queue.push(...(children.get(p) ?? []));
  }
  return out;
}

/** Sends signal to pid and all its descendants. */
export function killTree(pid: number, signal: NodeJS.Signals = "SIGTERM"): void {
  for (const p of [pid, ...descendants(pid)]) {
    try {
      process.kill(p, signal);
    } catch {
      /* already gone */
    }
  }
}

const SIGNUMS = os.constants.signals as Record<string, number>;

/**
 * A local copy as user nobody, for what root would get past (permissions,
 * kernel limits): `fn` gets a src/ nobody can read and a dst/ nobody can
 * write, in a directory outside the private per-run temp dirs (nobody cannot
 * reach those), removed afterwards; `escp(args)` runs dist/escp as nobody.
 *
 *   await asNobody(async ({ src, dst, escp }) => { ...; const r = await escp([a, `${dst}/`]); });
 */
export async function asNobody<T>(
  fn: (d: { src: string; dst: string; escp: (args: string[]) => Promise<RunResult> }) => Promise<T>,
): Promise<T> {
  const base = fs.mkdtempSync("/tmp/escp-nobody-");
  try {
    fs.chmodSync(base, 0o755);
    const src = path.join(base, "src"), dst = path.join(base, "dst");
    fs.mkdirSync(src, { mode: 0o755 });
    fs.mkdirSync(dst);
    fs.chmodSync(dst, 0o777);
    const escp = (args: string[]) =>
      run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ESCP_BIN, ...args], { env: { HOME: base } });
    return await fn({ src, dst, escp });
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
}

/**
 * This machine's root login runs `pyenv init` from ~/.bashrc, and its `pyenv rehash`
 * races with itself when several ssh sessions start at once, saying so on stderr.
 * That is the host's shell talking, not escp or scp: where a test expects a tool to
 * say nothing, these lines (and only these) are dropped first.
 */
export function withoutLoginNoise(text: string): string {
  return text.split(/(?<=\n)/).filter((l) => !/^(pyenv: cannot rehash: |rm: cannot remove '[^']*\/\.pyenv\/shims\/)/.test(l)).join("");
}

/** Runs a command (argv[0] is a path or a name on PATH) and collects its output. */
export function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...opts.env })) {
    if (v !== undefined) env[k] = v;
  }
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(argv[0]!, argv.slice(1), {
        cwd: opts.cwd,
        env,
        stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      });
    } catch (e) {
      reject(e);
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on("data", (b: Buffer) => out.push(b));
    child.stderr!.on("data", (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid) killTree(child.pid, "SIGKILL");
    }, opts.timeoutMs ?? 60_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      const enoent = (e as NodeJS.ErrnoException).code === "ENOENT";
      reject(enoent ? new Error(`cannot run ${argv[0]}: not found${argv[0] === ESCP_BIN ? " (run `npm run build`)" : ""}`) : e);
    });
    if (opts.input !== undefined) {
      child.stdin!.on("error", () => {}); // the child may exit without reading
      child.stdin!.end(opts.input);
    }
    let settled = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({
        code: code ?? 128 + (signal ? (SIGNUMS[signal] ?? 0) : 0),
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        signal,
        timedOut,
      });
    };
    child.on("close", finish);
    // A leftover grandchild holding stdout/stderr open must not hang the test:
    // give the pipes 2 s after the process itself exited.
    child.on("exit", (code, signal) => {
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish(code, signal);
      }, 2000).unref?.();
    });
  });
}

/**
 * Runs dist/escp. While an sshd started by startSshd() runs, `-F <its ssh_config>`
 * comes first, so `escp-test:path` names the local sshd. ESCP_REMOTE tells the
 * client where the remote side's escp is (the same binary).
 */
export function runEscp(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const pre = current?.alive ? ["-F", current.configPath] : [];
  return run([ESCP_BIN, ...pre, ...args], {
    ...opts,
    env: { ESCP_REMOTE: ESCP_BIN, ...opts.env },
  });
}

/** Starts escp in the background, set up as runEscp runs it, so that a test can interrupt it. */
export function spawnEscp(args: string[], env: Record<string, string> = {}) {
  const pre = current?.alive ? ["-F", current.configPath] : [];
  const p = Bun.spawn([ESCP_BIN, ...pre, ...args], {
    env: { ...process.env, ESCP_REMOTE: ESCP_BIN, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { p, stderr: new Response(p.stderr).text(), stdout: new Response(p.stdout).text() };
}

/** Runs `ssh -F <cfg> <host> args...` against the shared sshd (started if needed). */
export async function ssh(args: string[], opts: RunOptions & { host?: string } = {}): Promise<RunResult> {
  const s = await startSshd();
  return run(["ssh", "-F", s.configPath, opts.host ?? s.host, ...args], { timeoutMs: 30_000, ...opts });
}

// ──────────────────────────────── sshd ─────────────────────────────────────

export interface Sshd {
  port: number;
  /** ssh_config alias that authenticates: "escp-test". */
  host: string;
  /** ssh_config alias that fails authentication: "escp-test-nokey". */
  hostNoKey: string;
  user: string;
  /** The generated client ssh_config (pass with ssh -F / escp -F). */
  configPath: string;
  /** This sshd's private directory: keys, configs, sshd.log, known_hosts. */
  tmp: string;
  /** Authorized client private key, for tests that pass -i. */
  identity: string;
  knownHosts: string;
  pid: number;
  readonly alive: boolean;
  /** What sshd logged so far (-e, LogLevel VERBOSE): attach it to failures. */
  log(): string;
  /** Kills sshd and every process under it (sessions, remote escp), waits for it. */
  stop(): Promise<void>;
}

let current: Sshd | undefined;
let pending: Promise<Sshd> | undefined;
const live = new Set<Sshd>();

/**
 * The shared sshd of this test process: started on first call, the same one
 * afterwards (a new one if the previous one was stopped). Tests may stop() it
 * in afterAll; if none does, it dies with the test process.
 */
export function startSshd(): Promise<Sshd> {
  if (current?.alive) return Promise.resolve(current);
  if (!pending) {
    pending = launchSshd().then(
      (s) => {
        current = s;
        SSH_CONFIG = s.configPath;
        pending = undefined;
        return s;
      },
      (e) => {
        pending = undefined;
        throw e;
      },
    );
  }
  return pending;
}

/** A free TCP port on 127.0.0.1 (free now; sshd may still lose a race for it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function portAccepts(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(2000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":")) {
    const p = path.join(dir || ".", name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  for (const p of [`/usr/bin/${name}`, `/bin/${name}`]) if (fs.existsSync(p)) return p;
  return undefined;
}

function keygen(file: string, comment: string): string {
  const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], {
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`ssh-keygen failed for ${file}: ${r.error ?? r.stderr}`);
  return fs.readFileSync(`${file}.pub`, "utf8").trim();
}


/**
 * Debian's stock sshd_config runs scp's SFTP server as a program, which sshd
 * starts through the user's login shell like any command; internal-sftp
 * would give scp a start-up no stock host gives it, and skew the side-by-side
 * comparisons (bench/, the 1-byte latency) in its favour.
 */
const SFTP_SERVER = fs.existsSync("/usr/lib/openssh/sftp-server") ? "/usr/lib/openssh/sftp-server" : "internal-sftp";
function sshdConfig(dir: string, port: number): string {
  return `# generated by test/harness.ts for one test run
ListenAddress 127.0.0.1:${port}
AddressFamily inet
HostKey ${dir}/host_ed25519
PidFile ${dir}/sshd.pid
AuthorizedKeysFile ${dir}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitUserRC no
PermitUserEnvironment no
X11Forwarding no
AllowTcpForwarding yes
PermitTunnel no
PrintMotd no
PrintLastLog no
Banner none
UseDNS no
LoginGraceTime 30
MaxAuthTries 6
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
AcceptEnv LANG LC_* ESCP_*
Subsystem sftp ${SFTP_SERVER}
`;
}

function sshConfig(dir: string, port: number): string {
  // IdentityFile accumulates across matching blocks, so it appears only in
  // host-specific blocks; everything else is shared via "Host *".
  return `# generated by test/harness.ts for one test run
Host ${SSH_HOST}
  HostName 127.0.0.1
  Port ${port}
  User ${SSH_USER}
  IdentityFile ${dir}/id_ed25519

Host ${SSH_HOST_NOKEY}
  HostName 127.0.0.1
  Port ${port}
  User ${SSH_USER}
  IdentityFile ${dir}/id_unauthorized

# Explicit addresses (tests of user@host:, -P, scp://host:port/) use the good key.
Host 127.0.0.1 localhost
  User ${SSH_USER}
  IdentityFile ${dir}/id_ed25519

Host *
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile ${dir}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  HashKnownHosts no
  BatchMode yes
  PasswordAuthentication no
  KbdInteractiveAuthentication no
  ControlMaster no
  ControlPath none
  ConnectTimeout 10
  ServerAliveInterval 10
  ServerAliveCountMax 6
  AddressFamily inet
  LogLevel ERROR
`;
}

/**
 * Starts a new, independent sshd (startSshd() shares one; use this only when a
 * test needs its own, e.g. to stop it).
 */
export async function launchSshd(): Promise<Sshd> {
  if (!fs.existsSync(SSHD_PATH)) throw new Error(`${SSHD_PATH} not found: run scripts/setup.sh (openssh-server)`);
  if (!which("ssh") || !which("ssh-keygen")) throw new Error("ssh/ssh-keygen not found: run scripts/setup.sh (openssh-client)");
  if (process.getuid?.() === 0) fs.mkdirSync("/run/sshd", { recursive: true, mode: 0o755 }); // privilege separation dir

  const dir = fs.mkdtempSync(path.join(runTmp(), "sshd-"));
  const hostPub = keygen(path.join(dir, "host_ed25519"), "escp-test-host");
  const clientPub = keygen(path.join(dir, "id_ed25519"), "escp-test-client");
  keygen(path.join(dir, "id_unauthorized"), "escp-test-unauthorized");
  fs.writeFileSync(path.join(dir, "authorized_keys"), `${clientPub}\n`, { mode: 0o600 });
  const [keyType, keyData] = hostPub.split(/\s+/);
  const setpriv = which("setpriv");

  let lastError = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const cfg = path.join(dir, "sshd_config");
    const configPath = path.join(dir, "ssh_config");
    const knownHosts = path.join(dir, "known_hosts");
    const logPath = path.join(dir, "sshd.log");
    fs.writeFileSync(cfg, sshdConfig(dir, port), { mode: 0o600 });
    fs.writeFileSync(configPath, sshConfig(dir, port), { mode: 0o600 });
    fs.writeFileSync(
      knownHosts,
      `[127.0.0.1]:${port} ${keyType} ${keyData}\n[localhost]:${port} ${keyType} ${keyData}\n`,
      { mode: 0o600 },
    );
    const logFd = fs.openSync(logPath, "a");
    const sshdArgs = [SSHD_PATH, "-D", "-e", "-f", cfg];
    // --pdeathsig: sshd gets SIGTERM when this process dies, however it dies.
    const argv = setpriv ? [setpriv, "--pdeathsig", "TERM", ...sshdArgs] : sshdArgs;
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", logFd, logFd] });
    fs.closeSync(logFd);
    child.unref(); // sshd must not keep a script that is done from exiting
    let exited = false;
    const exitedP = new Promise<void>((r) => {
      child.once("exit", () => {
        exited = true;
        r();
      });
      child.once("error", (e) => {
        exited = true;
        lastError = String(e);
        r();
      });
    });
    const log = () => {
      try {
        return fs.readFileSync(logPath, "utf8");
      } catch {
        return "";
      }
    };

    // Wait for the listener.
    const deadline = Date.now() + 10_000;
    let up = false;
    while (!exited && Date.now() < deadline) {
      if (await portAccepts(port)) {
        up = true;
        break;
      }
      await sleep(50);
    }
    if (!up) {
      if (child.pid && !exited) killTree(child.pid, "SIGKILL");
      await exitedP;
      lastError ||= `sshd did not listen on 127.0.0.1:${port}:\n${log()}`;
      if (/Address already in use|Cannot bind/i.test(log())) continue; // lost the port race: retry
      throw new Error(lastError);
    }

    const pid = child.pid!;
    const sshd: Sshd = {
      port,
      host: SSH_HOST,
      hostNoKey: SSH_HOST_NOKEY,
      user: SSH_USER,
      configPath,
      tmp: dir,
      identity: path.join(dir, "id_ed25519"),
      knownHosts,
      pid,
      get alive() {
        return !exited;
      },
      log,
      async stop() {
        live.delete(sshd);
        if (current === sshd) {
          current = undefined;
          SSH_CONFIG = undefined;
        }
        if (exited) return;
        // Sessions first, so that sshd can reap them (an orphaned zombie would
        // stay forever under an init that does not reap), then sshd itself.
        const under = descendants(pid);
        for (const p of under) {
          try {
            process.kill(p, "SIGTERM");
          } catch {
            /* gone */
          }
        }
        const until = Date.now() + 1000;
        while (Date.now() < until && under.some((p) => fs.existsSync(`/proc/${p}`))) await sleep(20);
        killTree(pid, "SIGTERM");
        const killer = setTimeout(() => killTree(pid, "SIGKILL"), 5000);
        await exitedP;
        clearTimeout(killer);
      },
    };
    live.add(sshd);

    // The port may belong to someone else who won the race: ssh checks the host key.
    const check = await run(["ssh", "-F", configPath, SSH_HOST, "true"], { timeoutMs: 20_000 });
    if (check.code !== 0) {
      await sshd.stop();
      lastError = `ssh -F ${configPath} ${SSH_HOST} true failed (${check.code}): ${check.stderr}\nsshd log:\n${log()}`;
      if (/Host key verification failed|REMOTE HOST IDENTIFICATION/i.test(check.stderr)) continue;
      throw new Error(lastError);
    }
    return sshd;
  }
  throw new Error(`could not start sshd after 5 attempts: ${lastError}`);
}

// Outside `bun test` (e.g. bench scripts run with `bun run`), exit hooks do run.
process.on("exit", () => {
  for (const s of live) if (s.alive) killTree(s.pid, "SIGKILL");
  if (runDir && !process.env.ESCP_KEEP_TMP) {
    try {
      fs.rmSync(runDir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
});

// ───────────────────────────────── files ───────────────────────────────────

function seedKey(seed: number | string): Buffer {
  return createHash("sha256").update(`escp-test-seed:${seed}`).digest().subarray(0, 16);
}

/** AES-128-CTR keystream positioned at byte offset `at` (a multiple of 16). */
function keystream(seed: number | string, at: number) {
  const iv = Buffer.alloc(16);
  const block = BigInt(at / 16);
  iv.writeBigUInt64BE(block >> 64n, 0);
  iv.writeBigUInt64BE(block & 0xffffffffffffffffn, 8);
  return createCipheriv("aes-128-ctr", seedKey(seed), iv);
}

const ZEROS = Buffer.alloc(MiB);

/**
 * Deterministic pseudo-random bytes: byte i of the stream for `seed` is the
 * same whatever offset/length is asked for (AES-128-CTR keystream).
 */
export function pseudoRandom(length: number, seed: number | string = 0, offset = 0): Buffer {
  const start = offset - (offset % 16);
  const skip = offset - start;
  const c = keystream(seed, start);
  const parts: Buffer[] = [];
  let left = length + skip;
  while (left > 0) {
    const n = Math.min(left, MiB);
    parts.push(c.update(ZEROS.subarray(0, n)));
    left -= n;
  }
  return Buffer.concat(parts).subarray(skip, skip + length);
}

export interface MakeFileOptions {
  /** Selects the content; same seed and size, same bytes. Default 0. */
  seed?: number | string;
  /** File mode (chmod after writing). */
  mode?: number;
  /** Modification time (Date or seconds since the epoch). */
  mtime?: Date | number;
}

async function finish(file: string, opts: MakeFileOptions): Promise<void> {
  if (opts.mode !== undefined) await fsp.chmod(file, opts.mode);
  if (opts.mtime !== undefined) await fsp.utimes(file, opts.mtime, opts.mtime);
}

/**
 * Creates (or replaces) `file` with `size` deterministic pseudo-random bytes,
 * written in 1 MiB chunks (GB/s; fine for multi-GiB files). Parent
 * directories are created. Returns the path.
 */
export async function makeFile(file: string, size: number, opts: MakeFileOptions = {}): Promise<string> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const fh = await fsp.open(file, "w");
  try {
    const c = keystream(opts.seed ?? 0, 0);
    for (let off = 0; off < size; off += MiB) {
      const n = Math.min(MiB, size - off);
      const chunk = c.update(ZEROS.subarray(0, n));
      let done = 0;
      while (done < n) done += (await fh.write(chunk, done, n - done, off + done)).bytesWritten;
    }
  } finally {
    await fh.close();
  }
  await finish(file, opts);
  return file;
}

/**
 * Creates a sparse file of `size` bytes: holes everywhere except the given
 * extents ([offset, length] pairs), which hold the bytes makeFile would have
 * put there for the same seed. Returns the path.
 */
export async function makeSparseFile(
  file: string,
  size: number,
  opts: MakeFileOptions & { extents?: Array<[number, number]> } = {},
): Promise<string> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const fh = await fsp.open(file, "w");
  try {
    await fh.truncate(size);
    for (const [start, len] of opts.extents ?? []) {
      const end = Math.min(start + len, size);
      for (let off = start; off < end; off += MiB) {
        const n = Math.min(MiB, end - off);
        const chunk = pseudoRandom(n, opts.seed ?? 0, off);
        let done = 0;
        while (done < n) done += (await fh.write(chunk, done, n - done, off + done)).bytesWritten;
      }
    }
  } finally {
    await fh.close();
  }
  await finish(file, opts);
  return file;
}

// Reading a hole makes the kernel allocate zeroed page-cache pages (slow on
// this VM: ~300 MB/s), so comparisons and digests read only the data extents
// (found with lseek SEEK_DATA/SEEK_HOLE through bun:ffi) and use zeros for holes.
type LseekFn = (fd: number, off: number, whence: number) => number | bigint;
let lseekFn: LseekFn | null | undefined;
async function getLseek(): Promise<LseekFn | null> {
  if (lseekFn !== undefined) return lseekFn;
  try {
    const { dlopen, FFIType } = await import("bun:ffi");
    const lib = dlopen("libc.so.6", {
      lseek: { args: [FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64 },
    });
    lseekFn = lib.symbols.lseek as unknown as LseekFn;
  } catch {
    lseekFn = null;
  }
  return lseekFn;
}
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** A file opened for reading whose holes read as zeros without touching the disk. */
class SparseReader {
  private constructor(
    readonly fh: fsp.FileHandle,
    readonly size: number,
    /** Sorted, disjoint [start, end) ranges that may hold non-zero data. */
    readonly extents: Array<[number, number]>,
  ) {}

  static async open(file: string): Promise<SparseReader> {
    const fh = await fsp.open(file, "r");
    const size = (await fh.stat()).size;
    const extents: Array<[number, number]> = [];
    const lseek = await getLseek();
    if (!lseek || size === 0) {
      if (size > 0) extents.push([0, size]);
    } else {
      let pos = 0;
      while (pos < size) {
        const data = Number(lseek(fh.fd, pos, SEEK_DATA));
        if (data < 0 || data >= size) break; // ENXIO: only a hole is left
        let hole = Number(lseek(fh.fd, data, SEEK_HOLE));
        if (hole < 0 || hole > size) hole = size;
        extents.push([data, hole]);
        pos = hole;
      }
    }
    return new SparseReader(fh, size, extents);
  }

  /** Smallest position >= pos that lies in a data extent (size if none). */
  nextData(pos: number): number {
    for (const [a, b] of this.extents) {
      if (b <= pos) continue;
      return Math.max(a, pos);
    }
    return this.size;
  }

  /** Fills buf[0..n) with bytes pos..pos+n (zeros past EOF); returns bytes before EOF. */
  async read(buf: Buffer, pos: number, n: number): Promise<number> {
    buf.fill(0, 0, n);
    const end = Math.min(pos + n, this.size);
    for (const [a, b] of this.extents) {
      if (b <= pos) continue;
      if (a >= end) break;
      const from = Math.max(a, pos);
      const to = Math.min(b, end);
      let got = 0;
      while (got < to - from) {
        const { bytesRead } = await this.fh.read(buf, from - pos + got, to - from - got, from + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    }
    return Math.max(0, end - pos);
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * Offset of the first byte where a and b differ (the shorter length if one is
 * a prefix of the other), or null if they are identical. Works on any size;
 * ranges that are holes in both files are skipped without reading.
 */
export async function firstDifference(a: string, b: string): Promise<number | null> {
  const ra = await SparseReader.open(a);
  try {
    const rb = await SparseReader.open(b);
    try {
      const limit = Math.min(ra.size, rb.size);
      const ba = Buffer.allocUnsafe(MiB);
      const bb = Buffer.allocUnsafe(MiB);
      let pos = 0;
      while (pos < limit) {
        const next = Math.min(ra.nextData(pos), rb.nextData(pos), limit);
        if (next > pos) {
          pos = next; // zeros in both
          continue;
        }
        const n = Math.min(MiB, limit - pos);
        await Promise.all([ra.read(ba, pos, n), rb.read(bb, pos, n)]);
        if (ba.compare(bb, 0, n, 0, n) !== 0) {
          for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return pos + i;
        }
        pos += n;
      }
      return ra.size === rb.size ? null : limit;
    } finally {
      await rb.close();
    }
  } finally {
    await ra.close();
  }
}

/** Whether files a and b have identical bytes. */
export async function sameFile(a: string, b: string): Promise<boolean> {
  return (await firstDifference(a, b)) === null;
}

/** Hex SHA-256 of a file's contents, streamed (holes hashed as zeros, not read). */
export async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  const r = await SparseReader.open(file);
  try {
    const buf = Buffer.allocUnsafe(MiB);
    for (let pos = 0; pos < r.size; ) {
      const next = r.nextData(pos);
      if (next > pos) {
        for (let left = next - pos; left > 0; left -= MiB) h.update(ZEROS.subarray(0, Math.min(MiB, left)));
        pos = next;
        continue;
      }
      const n = Math.min(MiB, r.size - pos);
      await r.read(buf, pos, n);
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    await r.close();
  }
  return h.digest("hex");
}

export interface TreeDiffOptions {
  /** Also compare permission bits (as scp -p preserves them). */
  modes?: boolean;
  /** Also compare mtimes of regular files, to the second. */
  mtimes?: boolean;
}

/**
 * Differences between directory trees a and b (paths relative to the roots):
 * missing/extra entries, type, size, content, symlink target, and optionally
 * modes and mtimes. Empty when the trees are the same. Symlinks are not followed.
 */
export async function treeDiff(a: string, b: string, opts: TreeDiffOptions = {}): Promise<string[]> {
  const diffs: string[] = [];
  const kind = (s: fs.Stats) =>
    s.isFile() ? "file" : s.isDirectory() ? "dir" : s.isSymbolicLink() ? "symlink" : "other";
  async function walk(rel: string): Promise<void> {
    const pa = path.join(a, rel);
    const pb = path.join(b, rel);
    const [sa, sb] = await Promise.all([fsp.lstat(pa), fsp.lstat(pb).catch(() => null)]);
    const name = rel || ".";
    if (!sb) return void diffs.push(`${name}: missing in ${b}`);
    if (kind(sa) !== kind(sb)) return void diffs.push(`${name}: ${kind(sa)} vs ${kind(sb)}`);
    if (opts.modes && (sa.mode & 0o7777) !== (sb.mode & 0o7777))
      diffs.push(`${name}: mode ${(sa.mode & 0o7777).toString(8)} vs ${(sb.mode & 0o7777).toString(8)}`);
    if (sa.isSymbolicLink()) {
      const [ta, tb] = await Promise.all([fsp.readlink(pa), fsp.readlink(pb)]);
      if (ta !== tb) diffs.push(`${name}: symlink -> ${ta} vs -> ${tb}`);
    } else if (sa.isFile()) {
      if (sa.size !== sb.size) diffs.push(`${name}: size ${sa.size} vs ${sb.size}`);
      else {
        const d = await firstDifference(pa, pb);
        if (d !== null) diffs.push(`${name}: content differs at byte ${d}`);
      }
      if (opts.mtimes && Math.floor(sa.mtimeMs / 1000) !== Math.floor(sb.mtimeMs / 1000))
        diffs.push(`${name}: mtime ${sa.mtime.toISOString()} vs ${sb.mtime.toISOString()}`);
    } else if (sa.isDirectory()) {
      const [ea, eb] = await Promise.all([fsp.readdir(pa), fsp.readdir(pb)]);
      const setA = new Set(ea);
      for (const e of eb.filter((e) => !setA.has(e)).sort()) diffs.push(`${path.join(rel, e)}: extra in ${b}`);
      for (const e of ea.sort()) await walk(path.join(rel, e));
    }
  }
  await walk("");
  return diffs;
}

/**
 * At most n of the calls it wraps run at once: concurrent tests share a
 * machine with few cores, and each transfer is two processes and an ssh.
 *
 *   const slot = limiter(3);
 *   await slot(() => runEscp([...]));
 */
export function limiter(n: number) {
  let active = 0;
  const queue: (() => void)[] = [];
  return async <T>(f: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((r) => queue.push(r));
    active++;
    try {
      return await f();
    } finally {
      active--;
      queue.shift()?.();
    }
  };
}
