/**
 * escp's own ssh client (the ssh2 package), used when no `ssh` program is on
 * PATH or with `--ssh builtin`. It does what escp needs from ssh and no more:
 * run one command (`escp --server`) on the remote host with its stdin/stdout
 * as the control channel, and make that as safe as OpenSSH would:
 *
 * - the host key is checked against known_hosts like OpenSSH's default
 *   (StrictHostKeyChecking=ask): unknown keys are refused in batch mode or
 *   without a terminal, asked about on one; changed keys are always refused;
 * - authentication uses the agent (SSH_AUTH_SOCK / IdentityAgent), -i and
 *   IdentityFile keys (or ~/.ssh/id_*), and on a terminal passphrases,
 *   keyboard-interactive and passwords;
 * - a subset of ssh_config (-F file, else ~/.ssh/config and /etc/ssh/ssh_config)
 *   and of -o options applies; see docs/ssh.md for the list.
 *
 *   const child = startBuiltinSsh(o, { host: "alice@example.org" }, "escp --server");
 *   child.stdin.write(bytes); for await (const b of child.stdout) ...
 *   const status = await child.exited; // 255 if the connection or login failed
 *
 * Its failures end on one line that says what happened, as OpenSSH's do
 * ("alice@example.org: Permission denied (publickey).") and, where the user can
 * fix it, how (remote.ts repeats that last line as escp's error).
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import * as dns from "node:dns";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as tty from "node:tty";
import { BaseAgent, Client, OpenSSHAgent, utils, type ClientChannel, type ParsedKey } from "ssh2";
import type { Options } from "../cli/args.ts";
import type { Remote, ServerProcess } from "./remote.ts";

// ──────────────────────────────── when ─────────────────────────────────────

/** Whether startServer should use this client: asked for, or no ssh program to run. */

// ───────────────────────────── ssh_config ──────────────────────────────────

/** One `Keyword value` line of an ssh_config file or of a -o option. */
export interface ConfigLine {
  key: string; // lower case
  args: string[];
  where: string; // file:line, or "-o" for the command line
}

/** Splits an ssh_config line into keyword and arguments (`Key value`, `Key=value`, "quoted words"). */
export function parseConfigLine(line: string, where: string): ConfigLine | undefined {
  const s = line.trim();
  if (!s || s.startsWith("#")) return undefined;
  const m = /^([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+|$)(.*)$/.exec(s);
  if (!m) throw new Error(`${where}: cannot read this line: ${s}`);
  const args: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  for (let w; (w = re.exec(m[2]!)); ) args.push(w[1] ?? w[2]!);
  return { key: m[1]!.toLowerCase(), args, where };
}

/** ssh's pattern matching: `*` and `?` wildcards, case-insensitive. */
export function globMatch(s: string, pattern: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`, "i").test(s);
}

/** A comma- or space-separated pattern list with `!negations`, as in Host lines and known_hosts. */
export function matchPatternList(s: string, patterns: string[]): boolean {
  let hit = false;
  for (const p of patterns.flatMap((x) => x.split(",")).filter(Boolean)) {
    if (p.startsWith("!")) {
      if (globMatch(s, p.slice(1))) return false;
    } else if (globMatch(s, p)) hit = true;
  }
  return hit;
}

/**
 * The lines of ssh_config `text` that apply to `host` (the name as typed), in
 * order: those before the first Host, those in matching Host blocks, and
 * `Match all` blocks. Other Match criteria are not evaluated (their blocks are
 * skipped). Include is followed (relative paths are under ~/.ssh, or /etc/ssh
 * for the system file).
 */
export function configLinesFor(text: string, file: string, host: string, includeDir: string, home: string, depth = 0): ConfigLine[] {
  const out: ConfigLine[] = [];
  let active = true;
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = parseConfigLine(raw, `${file}:${i + 1}`);
    if (!line) return;
    if (line.key === "host") {
      active = matchPatternList(host.toLowerCase(), line.args);
    } else if (line.key === "match") {
      active = line.args.length === 1 && line.args[0]!.toLowerCase() === "all";
    } else if (line.key === "include") {
      if (!active || depth > 16) return;
      for (const arg of line.args) {
        let p = arg.startsWith("~/") ? path.join(home, arg.slice(2)) : arg;
        if (!path.isAbsolute(p)) p = path.join(includeDir, p);
        const files = /[*?[]/.test(p) ? [...new Bun.Glob(path.basename(p)).scanSync({ cwd: path.dirname(p), absolute: true })].sort() : [p];
        for (const f of files) {
          let t: string;
          try {
            t = fs.readFileSync(f, "utf8");
          } catch {
            continue;
          }
          out.push(...configLinesFor(t, f, host, includeDir, home, depth + 1));
        }
      }
    } else if (active) out.push(line);
  });
  return out;
}

/** Everything the connection needs, resolved from the options, -o, ssh_config and defaults. */
export interface SshSettings {
  /** The host as typed (an ssh_config alias, perhaps). */
  alias: string;
  /** What to connect to (HostName). */
  hostname: string;
  port: number;
  user: string;
  identityFiles: { path: string; explicit: boolean }[];
  identitiesOnly: boolean;
  /** ssh-agent socket, if one is to be used. */
  agent?: string;
  userKnownHosts: string[];
  globalKnownHosts: string[];
  strict: "yes" | "no" | "accept-new" | "ask";
  batch: boolean;
  connectTimeoutS?: number;
  aliveIntervalS: number;
  aliveCountMax: number;
  hostKeyAlias?: string;
  family: 0 | 4 | 6;
  hashKnownHosts: boolean;
  pubkey: boolean;
  password: boolean;
  kbdInteractive: boolean;
  ciphers?: string[];
  /** ProxyJump / ProxyCommand / -J: not supported, so the caller refuses. */
  proxy?: string;
  verbose: number;
  quiet: boolean;
}

export interface Environment {
  home: string;
  localUser: string;
  /** ssh_config files read when -F is not given, in order (user's, then system's). */
  defaultConfigs?: string[];
  authSock?: string;
}

export function localEnvironment(): Environment {
  const home = process.env.HOME || os.homedir();
  return {
    home,
    localUser: localUserName(),
    defaultConfigs: [path.join(home, ".ssh", "config"), "/etc/ssh/ssh_config"],
    authSock: process.env.SSH_AUTH_SOCK,
  };
}

function localUserName(): string {
  if (process.env.USER) return process.env.USER;
  if (process.env.LOGNAME) return process.env.LOGNAME;
  const uid = process.getuid?.() ?? -1;
  try {
    for (const line of fs.readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (Number(f[2]) === uid && f[0]) return f[0];
    }
  } catch {}
  return os.userInfo().username;
}

/** The ssh_config keywords resolveSettings reads; docs/ssh.md lists them. */
const READ_KEYWORDS = new Set([
  "hostname", "user", "port", "identityfile", "identitiesonly", "identityagent", "userknownhostsfile", "globalknownhostsfile",
  "stricthostkeychecking", "hashknownhosts", "hostkeyalias", "batchmode", "connecttimeout", "serveraliveinterval",
  "serveralivecountmax", "addressfamily", "ciphers", "pubkeyauthentication", "passwordauthentication",
  "kbdinteractiveauthentication", "challengeresponseauthentication", "loglevel", "proxyjump", "proxycommand",
]);

/**
 * What the command line asks of ssh that this client does not do: said, not dropped
 * in silence (a copy that seems to run as asked, without the agent or the control
 * master it was given). The ssh_config files may hold anything; only what was typed counts.
 */
export function ignoredOptions(o: Options): string[] {
  const out: string[] = [];
  if (o.sshProgram !== undefined) out.push(`-S ${o.sshProgram}`);
  if (o.forwardAgent) out.push("-A");
  for (const opt of o.sshOptions) {
    const l = parseConfigLine(opt, `-o ${opt}`);
    if (l && !READ_KEYWORDS.has(l.key)) out.push(`-o ${opt}`);
  }
  return out;
}

const yes = (v: string | undefined) => v !== undefined && /^(yes|true)$/i.test(v);
const no = (v: string | undefined) => v !== undefined && /^(no|false)$/i.test(v);

/**
 * Resolves the connection settings as OpenSSH would: for each keyword the first
 * value obtained wins, from the command line (operand, -P, -i, -o ...), then
 * the ssh_config files in order; IdentityFile accumulates.
 */
export function resolveSettings(o: Options, target: Remote, env: Environment = localEnvironment()): SshSettings {
  const cmdline: ConfigLine[] = [];
  for (const opt of o.sshOptions) {
    const l = parseConfigLine(opt, `-o ${opt}`);
    if (l) cmdline.push(l);
  }
  const configFiles = o.sshConfig !== undefined ? (o.sshConfig === "none" ? [] : [o.sshConfig]) : (env.defaultConfigs ?? []);
  const fileLines: ConfigLine[] = [];
  for (const f of configFiles) {
    let text: string;
    try {
      text = fs.readFileSync(f, "utf8");
    } catch (e) {
      if (f === o.sshConfig) throw new Error(`Can't open user config file ${f}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "No such file or directory" : (e as Error).message}`);
      continue;
    }
    const dir = f.startsWith("/etc/ssh/") ? "/etc/ssh" : path.join(env.home, ".ssh");
    fileLines.push(...configLinesFor(text, f, target.host, dir, env.home));
  }
  const all = [...cmdline, ...fileLines];
  const first = (key: string): ConfigLine | undefined => all.find((l) => l.key === key && l.args.length > 0);
  const get = (key: string): string | undefined => first(key)?.args[0];
  const num = (key: string, min: number, max: number): number | undefined => {
    const l = first(key);
    if (!l) return undefined;
    const n = Number(l.args[0]);
    if (!/^\d+$/.test(l.args[0]!) || n < min || n > max) throw new Error(`${l.where}: ${l.args[0]} is not a valid value for ${key}`);
    return n;
  };

  const alias = target.host;
  const hostnameRaw = get("hostname");
  const hostname = hostnameRaw ? hostnameRaw.replace(/%h/g, alias).replace(/%%/g, "%") : alias;
  // As system ssh under scp: a -o Port or User comes before the -p and -l that carry -P,
  // the operand's user and an scp:// port, and ssh keeps the first value it sees.
  const given = (key: string) => cmdline.some((l) => l.key === key && l.args.length > 0);
  const port = (given("port") ? num("port", 1, 65535) : undefined) ?? target.port ?? o.sshPort ?? num("port", 1, 65535) ?? 22;
  const user = (given("user") ? get("user") : undefined) ?? target.user ?? get("user") ?? env.localUser;
  const expand = (s: string) =>
    s
      .replace(/^~(?=\/|$)/, env.home)
      .replace(/%([%dhnpruli])/g, (_, c: string) =>
        c === "%" ? "%" : c === "d" ? env.home : c === "h" ? hostname : c === "n" ? alias : c === "p" ? String(port)
          : c === "r" ? user : c === "u" ? env.localUser : c === "l" ? os.hostname() : String(process.getuid?.() ?? ""));

  const identityFiles: SshSettings["identityFiles"] = [];
  for (const id of o.identities) identityFiles.push({ path: expand(id), explicit: true });
  for (const l of all) if (l.key === "identityfile") for (const a of l.args) if (a !== "none") identityFiles.push({ path: expand(a), explicit: true });
  if (identityFiles.length === 0) {
    for (const n of ["id_ed25519", "id_ecdsa", "id_rsa"]) identityFiles.push({ path: path.join(env.home, ".ssh", n), explicit: false });
  }
  const dedup = identityFiles.filter((f, i) => identityFiles.findIndex((g) => g.path === f.path) === i);

  const agentOpt = get("identityagent");
  let agent: string | undefined = env.authSock;
  if (agentOpt !== undefined) agent = agentOpt === "none" ? undefined : agentOpt === "SSH_AUTH_SOCK" ? env.authSock : expand(agentOpt.replace(/^\$SSH_AUTH_SOCK$/, env.authSock ?? ""));
  if (agent === "") agent = undefined;

  const files = (key: string, defaults: string[]) => {
    const l = first(key);
    if (!l) return defaults;
    return l.args.filter((a) => a !== "none").map(expand);
  };
  const userKnownHosts = files("userknownhostsfile", [path.join(env.home, ".ssh", "known_hosts"), path.join(env.home, ".ssh", "known_hosts2")]);
  const globalKnownHosts = files("globalknownhostsfile", ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]);

  const shk = get("stricthostkeychecking")?.toLowerCase();
  const strict: SshSettings["strict"] =
    shk === undefined || shk === "ask" ? "ask" : shk === "yes" || shk === "true" ? "yes" : shk === "accept-new" ? "accept-new" : shk === "no" || shk === "off" || shk === "false" ? "no" : "ask";
  const batch = o.batchMode || yes(get("batchmode"));

  const af = get("addressfamily")?.toLowerCase();
  const family: SshSettings["family"] = o.ipv4 ? 4 : o.ipv6 ? 6 : af === "inet" ? 4 : af === "inet6" ? 6 : 0;

  // The command line's ServerAliveInterval (from -o, then --keepalive) wins over ssh_config's, as with system ssh.
  const cmdAlive = cmdline.find((l) => l.key === "serveraliveinterval");
  const aliveIntervalS = cmdAlive ? Number(cmdAlive.args[0]) || 0 : o.keepaliveS > 0 ? o.keepaliveS : (num("serveraliveinterval", 0, 86400 * 365) ?? 0);

  const proxyJump = o.jump ?? get("proxyjump");
  const proxyCommand = get("proxycommand");
  const proxy = proxyJump !== undefined && proxyJump !== "none" ? `ProxyJump ${proxyJump}` : proxyCommand !== undefined && proxyCommand !== "none" ? `ProxyCommand ${first("proxycommand")!.args.join(" ")}` : undefined;

  const cipherList = o.cipher ?? get("ciphers");
  return {
    alias,
    hostname,
    port,
    user,
    identityFiles: dedup,
    identitiesOnly: yes(get("identitiesonly")),
    agent,
    userKnownHosts,
    globalKnownHosts,
    strict,
    batch,
    connectTimeoutS: num("connecttimeout", 0, 86400 * 365) || undefined,
    aliveIntervalS,
    aliveCountMax: num("serveralivecountmax", 0, 1 << 20) ?? 3,
    hostKeyAlias: get("hostkeyalias"),
    family,
    hashKnownHosts: yes(get("hashknownhosts")),
    pubkey: !no(get("pubkeyauthentication")),
    password: !no(get("passwordauthentication")),
    kbdInteractive: !no(get("kbdinteractiveauthentication")) && !no(get("challengeresponseauthentication")),
    ciphers: cipherList && !/^[+^-]/.test(cipherList) ? cipherList.split(",").filter(Boolean) : undefined, // +/-/^ edits of the defaults: keep ours
    proxy,
    verbose: o.verbose,
    quiet: o.quiet || /^quiet$/i.test(get("loglevel") ?? ""),
  };
}

// ───────────────────────────── known_hosts ─────────────────────────────────

/** The key type inside an ssh public key blob ("ssh-ed25519"). */
export function keyType(blob: Buffer): string {
  if (blob.length < 4) return "";
  const n = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + n).toString("latin1");
}

/** OpenSSH's name for a key type in messages: ED25519, ECDSA, RSA. */
export function keyTypeLabel(type: string): string {
  if (type === "ssh-ed25519") return "ED25519";
  if (type.startsWith("ecdsa-")) return "ECDSA";
  if (type === "ssh-rsa") return "RSA";
  if (type === "ssh-dss") return "DSA";
  return type.toUpperCase();
}

/** `SHA256:…` as ssh-keygen -l and OpenSSH's prompts show it. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

/** The name a host's keys are filed under: `host`, `[host]:port` off port 22, or the HostKeyAlias. */
export function knownHostsName(hostname: string, port: number, alias?: string): string {
  if (alias) return alias.toLowerCase();
  const h = hostname.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/** Whether a known_hosts host field (patterns, or a hashed `|1|salt|hash`) names `name`. */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith("|1|")) {
    const [salt, hash] = field.slice(3).split("|");
    if (!salt || !hash) return false;
    return createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64") === hash;
  }
  return matchPatternList(name, field.split(","));
}

export interface KnownKey {
  file: string;
  line: number;
  marker?: string;
  type: string;
  blob: Buffer;
}

/** The keys filed for `name` in the given known_hosts files (missing files are skipped). */
export function knownKeysFor(files: string[], name: string): KnownKey[] {
  const out: KnownKey[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch {
      continue;
    }
    text.split("\n").forEach((raw, i) => {
      const s = raw.trim();
      if (!s || s.startsWith("#")) return;
      const f = s.split(/\s+/);
      const marker = f[0]!.startsWith("@") ? f.shift() : undefined;
      if (f.length < 3 || !hostFieldMatches(f[0]!, name)) return;
      const blob = Buffer.from(f[2]!, "base64");
      out.push({ file, line: i + 1, marker, type: keyType(blob) || f[1]!, blob });
    });
  }
  return out;
}

export type HostKeyStatus =
  | { status: "known"; entry: KnownKey }
  | { status: "revoked"; entry: KnownKey }
  | { status: "changed"; entry: KnownKey }
  | { status: "unknown"; otherTypes: string[] };

/** What known_hosts says of the key `blob` the host presented, as OpenSSH decides it. */
export function checkHostKey(files: string[], name: string, blob: Buffer): HostKeyStatus {
  const entries = knownKeysFor(files, name);
  const type = keyType(blob);
  const revoked = entries.find((e) => e.marker === "@revoked" && e.blob.equals(blob));
  if (revoked) return { status: "revoked", entry: revoked };
  const plain = entries.filter((e) => e.marker === undefined);
  const same = plain.find((e) => e.blob.equals(blob));
  if (same) return { status: "known", entry: same };
  const changed = plain.find((e) => e.type === type);
  if (changed) return { status: "changed", entry: changed };
  return { status: "unknown", otherTypes: [...new Set(plain.map((e) => e.type))] };
}

/** Appends `name type key` (hashed if asked) to a known_hosts file, creating it and its directory. */
export function addKnownHost(file: string, name: string, blob: Buffer, hash: boolean): void {
  let host = name;
  if (hash) {
    const salt = randomBytes(20);
    host = `|1|${salt.toString("base64")}|${createHmac("sha1", salt).update(name).digest("base64")}`;
  }
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  let prefix = "";
  try {
    const fd = fs.openSync(file, "r");
    try {
      const st = fs.fstatSync(fd);
      if (st.size > 0) {
        const b = Buffer.alloc(1);
        fs.readSync(fd, b, 0, 1, st.size - 1);
        if (b[0] !== 0x0a) prefix = "\n";
      }
    } finally {
      fs.closeSync(fd);
    }
  } catch {}
  fs.appendFileSync(file, `${prefix}${host} ${keyType(blob)} ${blob.toString("base64")}\n`, { mode: 0o600 });
}

// ──────────────────────────────── the tty ──────────────────────────────────

/** The controlling terminal, for questions (as OpenSSH asks on /dev/tty, not stdin). */
function openTty(): { input: tty.ReadStream; output: tty.WriteStream; close(): void } | undefined {
  let fd: number;
  try {
    fd = fs.openSync("/dev/tty", "r+");
  } catch {
    return undefined;
  }
  if (!tty.isatty(fd)) {
    fs.closeSync(fd);
    return undefined;
  }
  const input = new tty.ReadStream(fd);
  const output = new tty.WriteStream(fd);
  return {
    input,
    output,
    close() {
      input.destroy();
    },
  };
}

/** Whether there is a terminal to ask on (and we may ask). */
function canAsk(s: SshSettings): boolean {
  if (s.batch) return false;
  try {
    const fd = fs.openSync("/dev/tty", "r+");
    const ok = tty.isatty(fd);
    fs.closeSync(fd);
    return ok;
  } catch {
    return false;
  }
}

async function askYesNo(preamble: string, question: string): Promise<boolean> {
  const t = openTty();
  if (!t) return false;
  try {
    const { confirm, isCancel } = await import("@clack/prompts");
    t.output.write(preamble);
    const r = await confirm({ message: question, input: t.input, output: t.output, initialValue: false });
    return !isCancel(r) && r === true;
  } finally {
    t.close();
  }
}

async function askSecret(message: string, echo = false): Promise<string | undefined> {
  const t = openTty();
  if (!t) return undefined;
  try {
    const { password, text, isCancel } = await import("@clack/prompts");
    const r = echo ? await text({ message, input: t.input, output: t.output }) : await password({ message, input: t.input, output: t.output });
    return isCancel(r) ? undefined : String(r ?? "");
  } finally {
    t.close();
  }
}

// ──────────────────────────────── streams ──────────────────────────────────

/** A ReadableStream fed by pushes, that asks its producer to pause when its reader falls 1 MiB behind. */
class Pipe {
  readonly stream: ReadableStream<Uint8Array>;
  private ctl!: ReadableStreamDefaultController<Uint8Array>;
  private closed = false;
  onPull?: () => void;
  constructor() {
    this.stream = new ReadableStream<Uint8Array>(
      {
        start: (c) => {
          this.ctl = c;
        },
        pull: () => this.onPull?.(),
        cancel: () => {
          this.closed = true;
        },
      },
      new ByteLengthQueuingStrategy({ highWaterMark: 1 << 20 }) as QueuingStrategy<Uint8Array>,
    );
  }
  /** Queues b; false when the producer should pause until onPull. */
  push(b: Uint8Array): boolean {
    if (this.closed) return true;
    this.ctl.enqueue(b);
    return (this.ctl.desiredSize ?? 1) > 0;
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.ctl.close();
    } catch {}
  }
}

// ─────────────────────────────── connecting ────────────────────────────────

class SshFailure extends Error {}

const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: "Connection refused",
  ETIMEDOUT: "Connection timed out",
  EHOSTUNREACH: "No route to host",
  ENETUNREACH: "Network is unreachable",
  ECONNRESET: "Connection reset by peer",
  EADDRNOTAVAIL: "Cannot assign requested address",
};

/** TCP to host:port, each address in turn, as ssh does; errors read like ssh's. */
async function connectTcp(s: SshSettings, debug: (m: string) => void): Promise<net.Socket> {
  let addrs: { address: string; family: number }[];
  try {
    addrs = await dns.promises.lookup(s.hostname, { all: true, family: s.family });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "ENOTFOUND" || code === "EAI_NONAME" ? "Name or service not known" : code === "EAI_AGAIN" ? "Temporary failure in name resolution" : (e as Error).message;
    throw new SshFailure(`Could not resolve hostname ${s.hostname}: ${why}`);
  }
  // An address literal comes back as it is, whatever family was asked for: -6 of 127.0.0.1
  // must fail as ssh's getaddrinfo does, not connect over IPv4.
  if (s.family) addrs = addrs.filter((a) => a.family === s.family);
  if (addrs.length === 0) throw new SshFailure(`Could not resolve hostname ${s.hostname}: Address family for hostname not supported`);
  let last = "";
  for (const a of addrs) {
    debug(`debug1: Connecting to ${s.hostname} [${a.address}] port ${s.port}.`);
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const sock = net.connect({ host: a.address, port: s.port, family: a.family });
        const timer = s.connectTimeoutS
          ? setTimeout(() => {
              sock.destroy();
              reject(Object.assign(new Error("timeout"), { code: "ETIMEDOUT" }));
            }, s.connectTimeoutS * 1000)
          : undefined;
        sock.once("connect", () => {
          clearTimeout(timer);
          sock.removeAllListeners("error");
          resolve(sock);
        });
        sock.once("error", (e) => {
          clearTimeout(timer);
          reject(e);
        });
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? "";
      last = `connect to host ${s.hostname} port ${s.port}: ${ERRNO_TEXT[code] ?? (e as Error).message}`;
      debug(`debug1: ${last}`);
    }
  }
  throw new SshFailure(last || `connect to host ${s.hostname} port ${s.port}: no address`);
}

/** Host key algorithms with the types known_hosts has for this host first, as OpenSSH orders them. */
function hostKeyAlgorithms(knownTypes: string[]): string[] | undefined {
  if (knownTypes.length === 0) return undefined;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { DEFAULT_SERVER_HOST_KEY } = require("ssh2/lib/protocol/constants.js") as { DEFAULT_SERVER_HOST_KEY: string[] };
  const algosOf = (t: string) => (t === "ssh-rsa" ? ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] : [t]);
  const preferred = knownTypes.flatMap(algosOf).filter((a) => DEFAULT_SERVER_HOST_KEY.includes(a));
  return [...new Set([...preferred, ...DEFAULT_SERVER_HOST_KEY])];
}

/** Agent keys through ssh2, keeping to a given set (IdentitiesOnly) and never failing the login. */
class KeyListAgent extends BaseAgent<ParsedKey> {
  constructor(
    private readonly inner: OpenSSHAgent,
    private readonly keys: ParsedKey[],
  ) {
    super();
  }
  getIdentities(cb: (err: Error | undefined, keys?: ParsedKey[]) => void): void {
    cb(undefined, this.keys);
  }
  sign(pubKey: ParsedKey, data: Buffer, options: any, cb?: any): void {
    if (typeof options === "function") (this.inner as any).sign(pubKey, data, options);
    else (this.inner as any).sign(pubKey, data, options, cb);
  }
}

function agentKeys(agent: OpenSSHAgent): Promise<ParsedKey[]> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve([]), 5000);
    agent.getIdentities((err, keys) => {
      clearTimeout(timer);
      const parsed: ParsedKey[] = [];
      for (const k of err || !keys ? [] : keys) {
        const p = typeof (k as ParsedKey).getPublicSSH === "function" ? (k as ParsedKey) : utils.parseKey(k as unknown as Buffer);
        if (p && !(p instanceof Error) && !Array.isArray(p)) parsed.push(p);
      }
      resolve(parsed);
    });
  });
}

/** The public key blob of an identity file: from FILE.pub, else from the unencrypted private key. */
function identityPublicBlob(file: string): Buffer | undefined {
  for (const [p, pass] of [[`${file}.pub`, undefined], [file, undefined]] as const) {
    try {
      const k = utils.parseKey(fs.readFileSync(p), pass);
      const key = Array.isArray(k) ? k[0] : k;
      if (key && !(key instanceof Error)) return key.getPublicSSH();
    } catch {}
  }
  return undefined;
}

type Attempt = { kind: "none" } | { kind: "agent" } | { kind: "file"; path: string; explicit: boolean } | { kind: "kbd" } | { kind: "password"; n: number };

const METHOD_OF: Record<Attempt["kind"], string> = { none: "none", agent: "publickey", file: "publickey", kbd: "keyboard-interactive", password: "password" };

/** Where a connection's messages go: the stderr of a process using it. */
interface User {
  say(line: string): void;
  /** The connection is gone: end this process with the message and 255. */
  fail(message?: string): void;
}

/**
 * One authenticated ssh connection to a host. The commands of one session
 * (a bootstrap upload, then the server) share it as channels, so the user is
 * asked about the host key or a passphrase once; it closes when no command has
 * used it for a moment.
 */
class Connection {
  readonly ready: Promise<Client>;
  dead = false;
  private client?: Client;
  private readonly users = new Set<User>();
  private idle?: ReturnType<typeof setTimeout>;
  settings?: SshSettings;

  constructor(o: Options, target: Remote, env: Environment, first: User) {
    this.users.add(first);
    this.ready = this.open(o, target, env);
    this.ready.catch(() => {
      this.dead = true;
    });
  }

  private say(line: string): void {
    const u = this.users.values().next().value;
    u?.say(line);
  }

  attach(u: User): void {
    clearTimeout(this.idle);
    this.users.add(u);
  }

  detach(u: User, now = false): void {
    this.users.delete(u);
    if (this.users.size) return;
    clearTimeout(this.idle);
    if (now) this.close();
    else {
      this.idle = setTimeout(() => this.close(), 1500);
      (this.idle as any).unref?.();
    }
  }

  close(): void {
    this.dead = true;
    try {
      this.client?.end();
    } catch {}
    const c = this.client;
    setTimeout(() => c?.destroy(), 1000).unref?.();
  }

  /** Connects, checks the host key, logs in. Rejects with an SshFailure whose message is the one line to show. */
  private async open(o: Options, target: Remote, env: Environment): Promise<Client> {
    const s = (this.settings = resolveSettings(o, target, env));
    const say = (m: string) => this.say(m);
    const debug = (level: number, m: string) => {
      if (s.verbose >= level) say(m);
    };
    const d1 = (m: string) => debug(1, m);
    const warn = (m: string) => {
      if (!s.quiet) say(m);
    };
    if (o.ssh !== "builtin") d1("debug1: no ssh program on PATH: using escp's built-in ssh client");
    if (s.proxy) throw new SshFailure(`the built-in ssh client cannot connect through ${s.proxy}: install OpenSSH's ssh, or copy without the proxy`);
    const ignored = ignoredOptions(o);
    if (ignored.length) warn(`escp: warning: the built-in ssh client ignores ${ignored.join(", ")} (OpenSSH's ssh reads ${ignored.length === 1 ? "it" : "them"})`);

    let ciphers: string[] | undefined;
    if (s.ciphers) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { SUPPORTED_CIPHER } = require("ssh2/lib/protocol/constants.js") as { SUPPORTED_CIPHER: string[] };
      // Like a list that names ciphers this ssh lacks (chacha20-poly1305 in Bun): use the ones it has.
      ciphers = s.ciphers.filter((c) => SUPPORTED_CIPHER.includes(c));
      if (!ciphers.length) throw new SshFailure(`Unknown cipher type '${s.ciphers.join(",")}' (the built-in ssh client knows ${SUPPORTED_CIPHER.join(", ")})`);
    }

    // Keys: the agent's (only those of the identity files with IdentitiesOnly), then the files the agent lacks.
    let agent: OpenSSHAgent | undefined;
    let fromAgent: ParsedKey[] = [];
    if (s.pubkey && s.agent && fs.existsSync(s.agent)) {
      agent = new OpenSSHAgent(s.agent);
      fromAgent = await agentKeys(agent);
      if (s.identitiesOnly) {
        const wanted = s.identityFiles.map((f) => identityPublicBlob(f.path)).filter((b): b is Buffer => !!b);
        fromAgent = fromAgent.filter((k) => wanted.some((b) => b.equals(k.getPublicSSH())));
      }
      d1(`debug1: agent ${s.agent}: ${fromAgent.length} usable key(s)`);
    }
    const inAgent = (file: string) => {
      const b = identityPublicBlob(file);
      return !!b && fromAgent.some((k) => b.equals(k.getPublicSSH()));
    };
    const interactive = canAsk(s);
    const attempts: Attempt[] = [{ kind: "none" }];
    if (s.pubkey) {
      if (fromAgent.length) attempts.push({ kind: "agent" });
      for (const f of s.identityFiles) if (!inAgent(f.path)) attempts.push({ kind: "file", ...f });
    }
    if (interactive && s.kbdInteractive) attempts.push({ kind: "kbd" });
    if (interactive && s.password) for (let n = 1; n <= 3; n++) attempts.push({ kind: "password", n });

    const name = knownHostsName(s.hostname, s.port, s.hostKeyAlias);
    const knownFiles = [...s.userKnownHosts, ...s.globalKnownHosts];
    const knownTypes = [...new Set(knownKeysFor(knownFiles, name).filter((e) => !e.marker).map((e) => e.type))];

    if (this.dead) throw new SshFailure("killed");
    const sock = await connectTcp(s, d1);
    if (this.dead) {
      sock.destroy();
      throw new SshFailure("killed");
    }

    return new Promise<Client>((resolve, rejectP) => {
      let failure: string | undefined;
      const fail = (line: string) => {
        failure ??= line;
      };
      // ConnectTimeout also bounds the wait for the server's greeting and key, as in OpenSSH.
      let bannerTimer = s.connectTimeoutS
        ? setTimeout(() => {
            say("Connection timed out during banner exchange");
            fail(`Connection to ${s.hostname} port ${s.port} timed out`);
            sock.destroy();
          }, s.connectTimeoutS * 1000)
        : undefined;

      let lastError: (Error & { level?: string }) | undefined;
      let methodsLeft: string[] = [];
      let usedMethod = "";
      let authenticated = false;

      const hostVerifier = (blob: Buffer, verify: (ok: boolean) => void) => {
        clearTimeout(bannerTimer);
        bannerTimer = undefined;
        const refuse = (msg: string) => {
          fail(msg);
          verify(false);
        };
        const type = keyType(blob);
        const label = keyTypeLabel(type);
        const fp = fingerprint(blob);
        d1(`debug1: Server host key: ${type} ${fp}`);
        const st = checkHostKey(knownFiles, name, blob);
        const addFile = s.userKnownHosts[0];
        const tilde = (p: string) => (p.startsWith(`${env.home}/`) ? `~${p.slice(env.home.length)}` : p);
        const add = () => {
          if (!addFile) return;
          try {
            addKnownHost(addFile, name, blob, s.hashKnownHosts);
            warn(`Warning: Permanently added '${name}' (${label}) to the list of known hosts.`);
          } catch (e) {
            warn(`Failed to add the host to the list of known hosts (${addFile}): ${(e as Error).message}`);
          }
        };
        switch (st.status) {
          case "known":
            d1(`debug1: Host '${name}' is known and matches the ${label} host key.`);
            d1(`debug1: Found key in ${st.entry.file}:${st.entry.line}`);
            return verify(true);
          case "revoked":
            say("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@       WARNING: REVOKED HOST KEY DETECTED!               @\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@");
            return refuse(`Host key verification failed: the ${label} key of ${name} (${fp}) is marked as revoked in ${st.entry.file}:${st.entry.line}`);
          case "changed": {
            const where = `${st.entry.file}:${st.entry.line}`;
            say(
              [
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
                "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
                "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
                "Someone could be eavesdropping on you right now (man-in-the-middle attack)!",
                "It is also possible that a host key has just been changed.",
                `The fingerprint for the ${label} key sent by the remote host is`,
                `${fp}.`,
                "Please contact your system administrator.",
                `Add correct host key in ${st.entry.file} to get rid of this message.`,
                `Offending ${label} key in ${where}`,
              ].join("\n"),
            );
            if (s.strict === "no") {
              warn("Warning: connecting anyway (StrictHostKeyChecking=no).");
              return verify(true);
            }
            return refuse(
              `Host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED for ${name} (it now offers ${label} key ${fp}; the old key is in ${where}). ` +
                `If the change is expected, remove the old key with: ssh-keygen -f '${st.entry.file}' -R '${name}'`,
            );
          }
          case "unknown": {
            const other = st.otherTypes.length ? ` (known_hosts has only ${st.otherTypes.map(keyTypeLabel).join(", ")} keys for it)` : "";
            if (s.strict === "no" || s.strict === "accept-new") {
              add();
              return verify(true);
            }
            const scanType = type.startsWith("ecdsa") ? "ecdsa" : type.replace(/^ssh-/, "");
            const hint =
              `Host key verification failed: no host key is known for ${name}${other}; it offered ${label} key ${fp}. ` +
              `If that is its key, add it with: ssh-keyscan ${s.port === 22 ? "" : `-p ${s.port} `}-t ${scanType} ${s.hostname} >> ${tilde(addFile ?? "~/.ssh/known_hosts")}` +
              " (or connect once with ssh)";
            if (s.strict === "yes") {
              say(`No ${label} host key is known for ${name} and you have requested strict checking.`);
              return refuse(hint);
            }
            if (!interactive) return refuse(hint);
            const preamble =
              `The authenticity of host '${name}${s.hostKeyAlias ? ` (${s.hostname})` : ""}' can't be established${other}.\n` +
              `${label} key fingerprint is ${fp}.\n`;
            askYesNo(preamble, "Are you sure you want to continue connecting?").then(
              (ok) => {
                if (!ok) return refuse("Host key verification failed.");
                add();
                verify(true);
              },
              () => refuse("Host key verification failed."),
            );
            return;
          }
        }
      };

      const loadKey = async (file: string, explicit: boolean): Promise<ParsedKey | undefined> => {
        let data: Buffer;
        try {
          data = fs.readFileSync(file);
        } catch (e) {
          if (explicit) warn(`Warning: Identity file ${file} not accessible: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "No such file or directory" : (e as Error).message}.`);
          return undefined;
        }
        let k = utils.parseKey(data);
        for (let tries = 0; k instanceof Error && /passphrase|encrypted/i.test(k.message) && tries < 3; tries++) {
          if (!interactive) {
            d1(`debug1: skipping ${file}: it needs a passphrase and there is no terminal to ask for it`);
            return undefined;
          }
          const pass = await askSecret(`Enter passphrase for key '${file}':`);
          if (pass === undefined || pass === "") return undefined;
          k = utils.parseKey(data, pass);
          if (k instanceof Error) say(`Bad passphrase, try again for ${file}`);
        }
        if (k instanceof Error) {
          d1(`debug1: cannot use ${file}: ${k.message}`);
          return undefined;
        }
        const key = Array.isArray(k) ? k[0] : k;
        return key && key.isPrivateKey() ? key : undefined;
      };

      const authHandler = (left: string[] | null, _partial: boolean | null, next: (m: unknown) => void): void => {
        if (left) {
          methodsLeft = left;
          d1(`debug1: Authentications that can continue: ${left.join(",")}`);
        }
        const step = async (): Promise<unknown> => {
          for (let a = attempts.shift(); a; a = attempts.shift()) {
            if (left && !left.includes(METHOD_OF[a.kind])) continue;
            switch (a.kind) {
              case "none":
                return { type: "none", username: s.user };
              case "agent":
                usedMethod = "publickey";
                d1("debug1: Offering public keys from the agent");
                return { type: "agent", username: s.user, agent: new KeyListAgent(agent!, fromAgent) };
              case "file": {
                const key = await loadKey(a.path, a.explicit);
                if (!key) continue;
                usedMethod = "publickey";
                d1(`debug1: Offering public key: ${a.path} ${keyTypeLabel(key.type)} ${fingerprint(key.getPublicSSH())}`);
                return { type: "publickey", username: s.user, key };
              }
              case "kbd":
                usedMethod = "keyboard-interactive";
                return {
                  type: "keyboard-interactive",
                  username: s.user,
                  prompt: (_n: string, instructions: string, _l: string, prompts: { prompt: string; echo?: boolean }[], done: (a: string[]) => void) => {
                    void (async () => {
                      if (instructions) say(instructions.replace(/\n$/, ""));
                      const answers: string[] = [];
                      for (const p of prompts) answers.push((await askSecret(p.prompt.trim(), !!p.echo)) ?? "");
                      done(answers);
                    })();
                  },
                };
              case "password": {
                const pw = await askSecret(`${s.user}@${s.hostname}'s password:`);
                if (pw === undefined) continue;
                usedMethod = "password";
                return { type: "password", username: s.user, password: pw };
              }
            }
          }
          return false;
        };
        step().then(next, () => next(false));
      };

      const c = (this.client = new Client());
      c.on("error", (e: Error & { level?: string }) => {
        if (e.level === "agent") return d1(`debug1: agent: ${e.message}`);
        if (e.level === "client-authentication" && /sign/i.test(e.message)) return d1(`debug1: ${e.message}`);
        lastError = e;
        debug(2, `debug2: ${e.level ?? "error"}: ${e.message}`);
      });
      c.on("banner", (msg: string) => {
        if (!s.quiet) say(msg.replace(/\n$/, ""));
      });
      c.on("ready", () => {
        authenticated = true;
        d1(`debug1: Authenticated to ${s.hostname} ([${sock.remoteAddress}]:${s.port}) using "${usedMethod}".`);
        resolve(c);
      });
      c.on("close", () => {
        clearTimeout(bannerTimer);
        this.dead = true;
        const e = lastError;
        if (!authenticated) {
          let line = failure;
          if (!line && e?.level === "client-authentication") line = `${s.user}@${s.hostname}: Permission denied (${methodsLeft.join(",") || "publickey"}).`;
          if (!line && e?.level === "client-timeout") line = `Connection to ${s.hostname} port ${s.port} timed out`;
          if (!line && (e?.level === "handshake" || e?.level === "protocol")) line = `Unable to negotiate with ${s.hostname} port ${s.port}: ${e.message}`;
          line ??= `Connection closed by ${sock.remoteAddress ?? s.hostname} port ${s.port}${e ? ` (${e.message})` : ""}`;
          return rejectP(new SshFailure(line));
        }
        // Dropped after login: every command still running ends with the reason, as ssh would.
        const line = e?.level === "client-timeout" ? `Timeout, server ${s.hostname} not responding.` : `Connection to ${s.hostname} closed${e ? `: ${e.message}` : " by remote host."}`;
        for (const u of [...this.users]) u.fail(line);
      });

      const algorithms: Record<string, string[]> = {};
      const hk = hostKeyAlgorithms(knownTypes);
      if (hk) algorithms.serverHostKey = hk;
      if (ciphers) algorithms.cipher = ciphers;
      c.connect({
        sock,
        username: s.user,
        hostVerifier: hostVerifier as any,
        authHandler: authHandler as any,
        readyTimeout: 0, // ConnectTimeout is ours; a host key question may take the user a while
        keepaliveInterval: s.aliveIntervalS * 1000,
        keepaliveCountMax: s.aliveCountMax,
        algorithms: Object.keys(algorithms).length ? (algorithms as any) : undefined,
        debug: s.verbose >= 3 ? (m: string) => say(`debug3: ${m}`) : undefined,
      });
    });
  }
}

/** The open connections of each session (keyed by its Options object), by user@host:port. */
const connections = new WeakMap<Options, Map<string, Connection>>();

/**
 * Runs `command` on the remote host over the built-in ssh client, as `ssh host
 * command` would. Returns at once; the connection is made in the background
 * (or reused: the same Options and host share one) and a failure shows as
 * stderr text ending in one line that says what happened, closed stdout and
 * stderr, and exit status 255, as with ssh. Otherwise exited is the remote
 * command's exit status.
 */
export function startBuiltinSsh(o: Options, target: Remote, command: string, env: Environment = localEnvironment()): ServerProcess {
  const out = new Pipe();
  const err = new Pipe();
  let resolveExit!: (n: number) => void;
  const exited = new Promise<number>((r) => (resolveExit = r));
  let chan: ClientChannel | undefined;
  let pending: Uint8Array[] | undefined = [];
  let wantEnd = false;
  let finished = false;
  let full = false; // the channel asked us to wait for 'drain'
  const drained: (() => void)[] = [];
  const wake = () => {
    full = false;
    for (const r of drained.splice(0)) r();
  };

  const say = (line: string) => err.push(Buffer.from(`${line}\n`));
  const user: User = { say, fail: (m) => finish(255, m) };
  const finish = (code: number, message?: string, closeNow = false) => {
    if (finished) return;
    finished = true;
    if (message) say(message);
    out.close();
    err.close();
    conn?.detach(user, closeNow);
    wake();
    resolveExit(code);
  };

  const key = `${target.user ?? ""}@${target.host}:${target.port ?? ""}`;
  let byHost = connections.get(o);
  if (!byHost) connections.set(o, (byHost = new Map()));
  let conn = byHost.get(key);
  if (conn && !conn.dead) conn.attach(user);
  else byHost.set(key, (conn = new Connection(o, target, env, user)));

  conn.ready.then(
    (client) => {
      if (finished) return;
      client.exec(command, (e, ch) => {
        if (e) return finish(255, `exec request failed on channel 0: ${e.message}`);
        if (finished) return void ch.close();
        chan = ch;
        let status: number | undefined;
        ch.on("exit", (code: number | null) => {
          status = typeof code === "number" ? code : 255;
        });
        ch.on("data", (b: Buffer) => {
          if (!out.push(b)) ch.pause();
        });
        out.onPull = () => ch.resume();
        ch.stderr.on("data", (b: Buffer) => {
          if (!err.push(b)) ch.stderr.pause();
        });
        err.onPull = () => ch.stderr.resume();
        ch.on("error", () => {});
        ch.on("close", () => finish(status ?? 255, status === undefined ? `Connection to ${conn!.settings?.hostname ?? target.host} closed by remote host.` : undefined));
        ch.on("drain", wake);
        for (const b of pending ?? []) if (!ch.write(b)) full = true;
        pending = undefined;
        if (!full) wake();
        if (wantEnd) ch.end();
      });
    },
    (e) => {
      if (e instanceof SshFailure && e.message === "killed") return finish(143);
      finish(255, (e as Error).message);
    },
  );

  return {
    stdin: {
      write(b: Uint8Array) {
        if (finished) return 0;
        if (chan) {
          try {
            if (!chan.write(b)) full = true;
          } catch {}
        } else pending?.push(Uint8Array.from(b));
        return b.byteLength;
      },
      /** Resolves when what was written has gone into the connection's window (ssh2 buffers the rest), or the command ended. */
      flush(): Promise<void> | undefined {
        if (finished || (chan && !full)) return undefined;
        return new Promise<void>((r) => drained.push(r));
      },
      end() {
        wantEnd = true;
        if (chan) {
          try {
            chan.end();
          } catch {}
        }
      },
    },
    stdout: out.stream,
    stderr: err.stream,
    exited,
    kill() {
      try {
        chan?.close();
      } catch {}
      // Like killing ssh: this command's connection goes (at once, unless another command still uses it).
      finish(143, undefined, true);
    },
  };
}
