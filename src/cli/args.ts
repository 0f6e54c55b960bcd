/**
 * The command line, read like scp's getopt: bundled flags (`-rpq`, `-P22`, `-oFoo=bar`),
 * long options (`--port=1232-1242` or `--port 1232-1242`), and options end at the first
 * operand or at `--`. OPTION_TABLE is the one list of options; help.ts renders --help, the
 * man page and shell completion from it.
 *
 *   parseArgs(["-rP22", "--threads=8", "dir", "alice@host:backup/"])
 *     // { mode: "copy", options: { recursive: true, sshPort: 22, threads: 8, ... },
 *     //   sources: [{ kind: "local", path: "dir" }],
 *     //   target: { kind: "remote", user: "alice", host: "host", path: "backup/" },
 *     //   explicit: Set { "recursive", "sshPort", "threads" } }
 */
import { OperandError, parseOperand, type Operand } from "./operands.ts";

export interface Options {
  recursive: boolean;
  preserve: boolean;
  quiet: boolean;
  verbose: number;
  compress: boolean;
  zstdLevel: number;
  threads: number;
  blockSize: number;
  sshPort?: number;
  /** -i, in order: ssh tries each (scp passes every one). */
  identities: string[];
  sshConfig?: string;
  sshOptions: string[];
  jump?: string;
  limitKbps?: number;
  cipher?: string;
  sshProgram?: string;
  ipv4: boolean;
  ipv6: boolean;
  forwardAgent: boolean;
  batchMode: boolean;
  relay3: boolean;
  /** -R: a remote-to-remote copy runs on the source host and goes straight to the target. */
  viaSource: boolean;
  resume: boolean;
  verify: boolean;
  sparse: boolean;
  direct: boolean;
  inplace: boolean;
  json: boolean;
  ports: [number, number];
  tunnel: boolean;
  bootstrap: boolean;
  remoteEscp?: string;
  ssh: "system" | "builtin";
  log?: string;
  keepaliveS: number;
  /** --sockbuf: bytes of socket buffer asked per stream and direction; unset = the kernel's autotuning. */
  sockbuf?: number;
  cpumask?: string;
  nodemask?: string;
}

/** Which options the user typed, so the config files fill in only the rest. */
export type Explicit = Set<keyof Options>;

export type Shell = "bash" | "zsh";

export type ParsedArgs =
  | { mode: "copy"; options: Options; sources: Operand[]; target: Operand; explicit: Explicit }
  | { mode: "server"; options: Options; explicit: Explicit }
  | { mode: "origin" }
  | { mode: "version" }
  | { mode: "help" }
  | { mode: "config-check"; options: Options; explicit: Explicit }
  | { mode: "completion"; shell: Shell };

/** Sections of --help and of the man page, in order. */
export const GROUPS = {
  scp: "scp-compatible options",
  ssh: "ssh options",
  transfer: "escp transfer options",
  output: "output and logging",
  integrity: "integrity and resume",
  advanced: "advanced",
} as const;
export type Group = keyof typeof GROUPS;

export interface OptionSpec {
  short?: string;
  long?: string;
  /** Name of the option's argument in help; flags have none. */
  arg?: string;
  /** The only values the argument may take (completion offers them). */
  choices?: readonly string[];
  /** What shell completion offers for the argument when there are no choices. */
  complete?: "file" | "command";
  repeatable?: boolean;
  group: Group;
  help: string;
  apply: (st: ParseState, value: string, name: string) => void;
}

export interface ParseState {
  options: Options;
  explicit: Explicit;
  mode?: "server" | "origin" | "version" | "help" | "config-check" | "completion";
  shell?: Shell;
}

/**
 * A command line escp cannot act on. The message is one line ready for stderr; showUsage
 * asks the caller to print the synopsis after it, as scp does for missing operands.
 */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly showUsage = false,
  ) {
    super(message);
    this.name = "UsageError";
  }
}

/** A bad option or config value; the message says what was expected ("a number from 1 to 64"). */
export class ValueError extends Error {}

export const KiB = 1024;
export const MiB = 1024 * KiB;

export function defaultOptions(): Options {
  return {
    recursive: false,
    preserve: false,
    quiet: false,
    verbose: 0,
    compress: false,
    // Level 1: zstd's fastest, ~0.5 GB/s per core, is already the bottleneck on fast links.
    zstdLevel: 1,
    threads: 4,
    blockSize: MiB,
    sshOptions: [],
    ipv4: false,
    ipv6: false,
    forwardAgent: false,
    batchMode: false,
    identities: [],
    relay3: false,
    viaSource: false,
    resume: false,
    verify: false,
    sparse: false,
    direct: true,
    inplace: false,
    json: false,
    ports: [1232, 1242],
    tunnel: false,
    bootstrap: true,
    ssh: "system",
    keepaliveS: 30,
  };
}

function integer(min: number, max: number, what = "a number"): (s: string) => number {
  return (s) => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || n < min || n > max) throw new ValueError(`${what} from ${min} to ${max}`);
    return n;
  };
}

export const parseThreads = integer(1, 64);
export const parseZstdLevel = integer(1, 19);
/** Seconds between ssh keepalives; 0 leaves them to ssh_config. */
export const parseKeepalive = integer(0, 86400);
const parseSshPort = integer(1, 65535, "a port");
// scp's own bounds for -l.
const parseLimit = integer(1, 100 * 1024 * 1024);

const SIZE_UNITS: Record<string, number> = { "": 1, k: KiB, m: MiB, g: 1024 * MiB };

/** "1M", "512K", "4194304" → bytes; NaN when it is not a size. */
function sizeBytes(s: string): number {
  const m = /^(\d+)([kmg]?)(?:i?b)?$/i.exec(s);
  return m ? Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()] : NaN;
}

/** A block size: a multiple of 4 KiB (O_DIRECT alignment) from 4 KiB to 64 MiB. */
export function parseBlockSize(s: string): number {
  const n = sizeBytes(s);
  if (!(n >= 4 * KiB && n <= 64 * MiB && n % (4 * KiB) === 0)) {
    throw new ValueError("a size from 4K to 64M in multiples of 4K, such as 1M");
  }
  return n;
}

/** A socket buffer size: 64 KiB to 1 GiB. */
export function parseSockbuf(s: string): number {
  const n = sizeBytes(s);
  if (!(n >= 64 * KiB && n <= 1024 * MiB)) throw new ValueError("a size from 64K to 1G, such as 32M");
  return n;
}

/** "1232-1242" → [1232, 1242]; "1232" → [1232, 1232]. */
export function parsePorts(s: string): [number, number] {
  const m = /^(\d+)(?:-(\d+))?$/.exec(s);
  const first = Number(m?.[1]);
  const last = Number(m?.[2] ?? m?.[1]);
  if (!m || first < 1 || last > 65535 || first > last) {
    throw new ValueError("a port or a range first-last from 1 to 65535, such as 1232-1242");
  }
  return [first, last];
}

function oneOf<T extends string>(choices: readonly T[]): (s: string) => T {
  return (s) => {
    if (!(choices as readonly string[]).includes(s)) throw new ValueError(`one of ${choices.join(", ")}`);
    return s as T;
  };
}

const SSH_KINDS = ["system", "builtin"] as const;
const SHELLS = ["bash", "zsh"] as const;

type Apply = OptionSpec["apply"];

function flag<K extends keyof Options>(key: K, value: Options[K]): Apply {
  return (st) => {
    st.options[key] = value;
    st.explicit.add(key);
  };
}

function value<K extends keyof Options>(key: K, parse: (s: string) => Options[K]): Apply {
  return (st, v) => {
    st.options[key] = parse(v);
    st.explicit.add(key);
  };
}

/** A repeatable option whose values all go on, in order. */
function append(key: "identities" | "sshOptions"): Apply {
  return (st, v) => {
    st.options[key].push(v);
    st.explicit.add(key);
  };
}

const text = (s: string) => s;
const ignore: Apply = () => {};

/** -X: what scp takes (buffer=N, nrequests=N) is ignored; anything else is refused, as scp refuses it. */
/** scp's -X: checked as scp checks it (buffer= takes a K or M suffix; both 1 to 256K), then ignored. */
const sftpOption: Apply = (_st, v) => {
  const m = /^(buffer|nrequests)=(\d+)([kKmM]?)$/.exec(v ?? "");
  const n = m ? Number(m[2]) * (m[3] === "" ? 1 : /k/i.test(m[3]) ? 1024 : 1 << 20) : NaN;
  if (!m || (m[1] === "nrequests" && m[3] !== "") || !(n >= 1 && n <= 256 * 1024)) {
    throw new ValueError("buffer=N or nrequests=N, of 1 to 256K (scp's SFTP tuning, which escp ignores)");
  }
};

function mode(m: NonNullable<ParseState["mode"]>): Apply {
  return (st, _v, name) => {
    if (st.mode !== undefined && st.mode !== m) {
      throw new UsageError(`escp: ${name} cannot be combined with --${st.mode}`);
    }
    st.mode = m;
  };
}

function remoteToRemote(viaSource: boolean): Apply {
  // As scp's -3 and -R: the later one wins.
  return (st) => {
    st.options.viaSource = viaSource;
    st.options.relay3 = !viaSource;
    st.explicit.add("viaSource").add("relay3");
  };
}

function addressFamily(v4: boolean): Apply {
  // Like ssh's AddressFamily, the later of -4 and -6 wins.
  return (st) => {
    st.options.ipv4 = v4;
    st.options.ipv6 = !v4;
    st.explicit.add("ipv4").add("ipv6");
  };
}

export const OPTION_TABLE: readonly OptionSpec[] = [
  // scp-compatible
  { short: "3", group: "scp", apply: remoteToRemote(false),
    help: "copy between two remote hosts through this host (the default, as with scp 8.7 and later)" },
  { short: "l", long: "limit", arg: "limit", group: "scp", apply: value("limitKbps", parseLimit),
    help: "limit the bandwidth to this many Kbit/s, shared by all streams" },
  { short: "O", group: "scp", apply: ignore,
    help: "accepted for scp compatibility and ignored: escp has one protocol" },
  { short: "p", long: "preserve", group: "scp", apply: flag("preserve", true),
    help: "preserve modification times and modes of the original files" },
  { short: "R", group: "scp", apply: remoteToRemote(true),
    help: "copy between two remote hosts by running escp on the source host, which sends straight to the target (it needs its own ssh access there; -A lends it your agent)" },
  { short: "r", long: "recursive", group: "scp", apply: flag("recursive", true),
    help: "copy directories recursively" },
  { short: "s", group: "scp", apply: ignore,
    help: "accepted for scp compatibility and ignored: escp does not use SFTP" },
  { short: "D", arg: "sftp_server_path", group: "scp", apply: ignore,
    help: "accepted for scp compatibility and ignored: escp does not use SFTP" },
  { short: "2", group: "scp", apply: ignore,
    help: "accepted for scp compatibility and ignored: ssh speaks only protocol 2" },
  { short: "T", group: "scp", apply: ignore,
    help: "accepted for scp compatibility and ignored: escp always checks the names a remote sends" },
  { short: "X", arg: "sftp_option", repeatable: true, group: "scp", apply: sftpOption,
    help: "accepted for scp compatibility and ignored: SFTP tuning, and escp does not use SFTP" },

  // ssh
  { short: "4", group: "ssh", apply: addressFamily(true), help: "use IPv4 addresses only" },
  { short: "6", group: "ssh", apply: addressFamily(false), help: "use IPv6 addresses only" },
  { short: "A", group: "ssh", apply: flag("forwardAgent", true), help: "let ssh forward the authentication agent" },
  { short: "B", group: "ssh", apply: flag("batchMode", true),
    help: "batch mode: never ask for passwords or passphrases" },
  { short: "c", arg: "cipher", group: "ssh", apply: value("cipher", text),
    help: "cipher for the ssh connection (the data streams always use AES-128-GCM)" },
  { short: "F", arg: "ssh_config", complete: "file", group: "ssh", apply: value("sshConfig", text),
    help: "per-user configuration file for ssh" },
  { short: "i", arg: "identity_file", complete: "file", repeatable: true, group: "ssh", apply: append("identities"),
    help: "private key file for ssh public key authentication; may be repeated" },
  { short: "J", arg: "destination", group: "ssh",
    apply: (st, v, name) => {
      // ssh permits one -J (its comma-separated list chains hosts); scp passes every -J and ssh then refuses.
      if (st.options.jump !== undefined) throw new UsageError(`escp: ${name} may be given once: chain jump hosts with commas (-J a,b)`);
      st.options.jump = v;
      st.explicit.add("jump");
    },
    help: "connect through this jump host (ssh -J; hosts separated by commas are chained)" },
  { short: "o", arg: "ssh_option", repeatable: true, group: "ssh", apply: append("sshOptions"),
    help: "pass an option to ssh in ssh_config format, such as -o Compression=no; may be repeated" },
  { short: "P", arg: "port", group: "ssh", apply: value("sshPort", parseSshPort),
    help: "port of the remote ssh server" },
  { short: "S", arg: "program", complete: "command", group: "ssh", apply: value("sshProgram", text),
    help: "program to run instead of ssh; it must accept ssh's options" },
  { long: "ssh", arg: "kind", choices: SSH_KINDS, group: "ssh", apply: value("ssh", oneOf(SSH_KINDS)),
    help: "system runs the ssh program (default; honours ~/.ssh/config and the agent), builtin uses escp's own client" },
  { long: "keepalive", arg: "seconds", group: "ssh", apply: value("keepaliveS", parseKeepalive),
    help: "seconds between keepalive probes on the ssh connection (default 30); given to ssh as -o ServerAliveInterval, so it overrides ssh_config's, and 0 leaves the choice to ssh_config" },

  // escp transfer
  { short: "t", long: "threads", arg: "threads", group: "transfer", apply: value("threads", parseThreads),
    help: "number of parallel TCP streams, each with its own I/O thread, 1 to 64 (default 4); a copy of fewer blocks opens one per block" },
  { short: "b", long: "blocksize", arg: "size", group: "transfer", apply: value("blockSize", parseBlockSize),
    help: "bytes per read, record and write: 4K to 64M in multiples of 4K, with an optional K, M or G (default 1M)" },
  { short: "C", long: "compress", group: "transfer", apply: flag("compress", true),
    help: "compress blocks with zstd (blocks that do not shrink travel as they are; in a file that keeps not shrinking only every 16th block is tried)" },
  { long: "zstd-level", arg: "level", group: "transfer", apply: value("zstdLevel", parseZstdLevel),
    help: "zstd level for -C, 1 (fastest, default) to 19" },
  { long: "port", arg: "first[-last]", group: "transfer", apply: value("ports", parsePorts),
    help: "TCP ports the remote end may listen on for the data streams; it takes the first free one (default 1232-1242); with --tunnel, or for a copy on this host, any free port when all are taken" },
  { long: "sockbuf", arg: "size", group: "transfer", apply: value("sockbuf", parseSockbuf),
    help: "socket buffer per stream, such as 32M for a long fast path (default: the kernel's autotuning); escp says when the kernel grants less" },
  { long: "tunnel", group: "transfer", apply: flag("tunnel", true),
    help: "carry the data streams inside the ssh connection; slower, but needs no open port (used automatically when the port range is closed)" },
  { long: "sparse", group: "transfer", apply: flag("sparse", true),
    help: "skip holes in sparse source files and leave them as holes at the destination (with --inplace the target's old bytes there are cleared at the end; a block device is refused)" },
  { long: "nodirect", group: "transfer", apply: flag("direct", false),
    help: "use the page cache instead of O_DIRECT for file reads and writes" },

  // output and logging
  { short: "q", long: "quiet", group: "output", apply: flag("quiet", true),
    help: "quiet: no progress meter and no ssh warnings, only errors" },
  { short: "v", long: "verbose", repeatable: true, group: "output",
    apply: (st) => {
      st.options.verbose++;
      st.explicit.add("verbose");
    },
    help: "verbose: log to /tmp/escp.log.sender and /tmp/escp.log.receiver (.UID added where those are another user's; or --log) and make ssh verbose; repeat for more" },
  { long: "json", group: "output", apply: flag("json", true),
    help: "print newline-delimited JSON events and a final summary instead of the progress meter" },
  { long: "log", arg: "file", complete: "file", group: "output", apply: value("log", text),
    help: "write the log to file, on each host (the remote end writes that path on its host)" },

  // integrity and resume
  { long: "resume", group: "integrity", apply: flag("resume", true),
    help: "skip files already complete at the destination (same size and mtime) and send only the blocks that differ from what is there: a partial file a stopped escp left, or a target of any size (one a stopped scp or cp cut short)" },
  { long: "verify", group: "integrity", apply: flag("verify", true),
    help: "with --resume, also compare the contents of complete files before skipping them" },
  { long: "inplace", group: "integrity", apply: flag("inplace", true),
    help: "write straight into the target files instead of renaming a verified temporary file over them, which keeps their hard links; a failed copy can leave a damaged target (a file that is a mount point is always written so)" },

  // advanced
  { long: "no-bootstrap", group: "advanced", apply: flag("bootstrap", false),
    help: "fail instead of copying escp to the remote when it has no escp of the same protocol version" },
  { long: "remote-escp", arg: "path", group: "advanced", apply: value("remoteEscp", text),
    help: "run path as escp on the remote host" },
  { long: "config-check", group: "advanced", apply: mode("config-check"),
    help: "print the configuration from the config files and options, with where each value came from, and exit" },
  { long: "completion", arg: "shell", choices: SHELLS, group: "advanced",
    apply: (st, v, name) => {
      mode("completion")(st, v, name);
      st.shell = oneOf(SHELLS)(v);
    },
    help: "print a completion script for bash or zsh and exit" },
  { long: "server", group: "advanced", apply: mode("server"),
    help: "run as the remote end of a copy; escp starts this itself over ssh" },
  { long: "origin", group: "advanced", apply: mode("origin"),
    help: "run the copy an escp -R hands over on stdin, until that escp goes; escp starts this itself over ssh" },
  { long: "version", group: "advanced", apply: mode("version"), help: "print the version and exit" },
  { short: "h", long: "help", group: "advanced", apply: mode("help"), help: "print this help and exit" },
];

const SHORT = new Map(OPTION_TABLE.filter((o) => o.short).map((o) => [o.short!, o]));
const LONG = new Map(OPTION_TABLE.filter((o) => o.long).map((o) => [o.long!, o]));

/** Reads argv (without the executable); a UsageError is returned, not thrown. */
export function parseArgs(argv: string[]): ParsedArgs | UsageError {
  try {
    return parse(argv);
  } catch (e) {
    if (e instanceof UsageError) return e;
    throw e;
  }
}

function parse(argv: string[]): ParsedArgs {
  const st: ParseState = { options: defaultOptions(), explicit: new Set() };
  let i = 0;
  while (i < argv.length) {
    const a = argv[i];
    if (a === "--") {
      i++;
      break;
    }
    // As in scp, the first operand ends the options; "-" alone is an operand.
    if (a.startsWith("--")) i = takeLong(argv, i, st);
    else if (a.startsWith("-") && a.length > 1) i = takeShort(argv, i, st);
    else break;
    if (st.mode === "help" || st.mode === "version") return { mode: st.mode };
  }
  return finish(st, argv.slice(i));
}

/** Applies one `--name[=value]` (value possibly in the next word); returns the next index. */
function takeLong(argv: string[], i: number, st: ParseState): number {
  const a = argv[i];
  const eq = a.indexOf("=");
  const name = eq < 0 ? a : a.slice(0, eq);
  const spec = LONG.get(name.slice(2));
  if (!spec) throw new UsageError(`escp: unknown option '${name}' (see escp --help)`);
  if (!spec.arg) {
    if (eq >= 0) throw new UsageError(`escp: ${name} takes no value, got '${a.slice(eq + 1)}'`);
    run(spec, st, "", name);
    return i + 1;
  }
  if (eq >= 0) {
    run(spec, st, a.slice(eq + 1), name);
    return i + 1;
  }
  run(spec, st, argument(argv, i + 1, name), name);
  return i + 2;
}

/** Applies a cluster like `-rpP22`; an option taking a value ends the cluster. */
function takeShort(argv: string[], i: number, st: ParseState): number {
  const a = argv[i];
  for (let j = 1; j < a.length; j++) {
    const name = `-${a[j]}`;
    const spec = SHORT.get(a[j]);
    if (!spec) throw new UsageError(`escp: unknown option '${name}' (see escp --help)`);
    if (!spec.arg) {
      run(spec, st, "", name);
      continue;
    }
    if (j + 1 < a.length) {
      run(spec, st, a.slice(j + 1), name);
      return i + 1;
    }
    run(spec, st, argument(argv, i + 1, name), name);
    return i + 2;
  }
  return i + 1;
}

function argument(argv: string[], i: number, name: string): string {
  if (i >= argv.length) throw new UsageError(`escp: ${name} needs an argument`);
  return argv[i];
}

function run(spec: OptionSpec, st: ParseState, v: string, name: string): void {
  try {
    spec.apply(st, v, name);
  } catch (e) {
    if (e instanceof ValueError) throw new UsageError(`escp: ${name} needs ${e.message}, got '${v}'`);
    throw e;
  }
}

function finish(st: ParseState, operands: string[]): ParsedArgs {
  const { options, explicit } = st;
  if (st.mode !== undefined && operands.length > 0) {
    throw new UsageError(`escp: --${st.mode} takes no operands, got '${operands[0]}'`);
  }
  if (st.mode === "server" || st.mode === "config-check") return { mode: st.mode, options, explicit };
  if (st.mode === "origin") return { mode: "origin" };
  if (st.mode === "completion") return { mode: "completion", shell: st.shell! };
  if (operands.length < 2) {
    const what = operands.length === 0 ? "a source and a destination" : "a destination";
    throw new UsageError(`escp: missing ${what}`, true);
  }
  try {
    const parsed = operands.map(parseOperand);
    return { mode: "copy", options, sources: parsed.slice(0, -1), target: parsed[parsed.length - 1], explicit };
  } catch (e) {
    if (e instanceof OperandError) throw new UsageError(`escp: ${e.message}`);
    throw e;
  }
}

/**
 * Arguments for the system ssh, as scp's do_cmd() builds them: everything after the program
 * name up to the host. The caller appends the remote command.
 *
 *   sshArgs({ ...defaultOptions(), sshPort: 2222 }, { user: "al", host: "h" })
 *     // ["-x", "-oPermitLocalCommand=no", ..., "-oForwardAgent=no", "-p", "2222", "-l", "al", "--", "h"]
 */
export function sshArgs(o: Options, target: { user?: string; host: string; port?: number }): string[] {
  // First, so no user -o can undo them (ssh keeps the first value it sees for an option):
  // a LocalCommand, a RemoteCommand, a tty or forwardings would all corrupt the control channel.
  const a = ["-x", "-oPermitLocalCommand=no", "-oClearAllForwardings=yes", "-oRemoteCommand=none", "-oRequestTTY=no"];
  if (o.ipv4) a.push("-4");
  if (o.ipv6) a.push("-6");
  if (o.forwardAgent) a.push("-A");
  if (o.cipher !== undefined) a.push("-c", o.cipher);
  for (const id of o.identities) a.push("-i", id);
  if (o.sshConfig !== undefined) a.push("-F", o.sshConfig);
  if (o.jump !== undefined) a.push("-J", o.jump);
  // Before the user's -o, as scp puts it: -B wins over -o BatchMode=no.
  if (o.batchMode) a.push("-oBatchMode=yes");
  for (const opt of o.sshOptions) a.push("-o", opt);
  for (let i = 0; i < o.verbose; i++) a.push("-v");
  if (o.quiet) a.push("-q");
  // Last, so the user's -A or -o settings win over these defaults.
  if (o.keepaliveS > 0) a.push(`-oServerAliveInterval=${o.keepaliveS}`);
  a.push("-oForwardAgent=no");
  // A port in an scp:// operand wins over -P, as in scp.
  const port = target.port ?? o.sshPort;
  if (port !== undefined) a.push("-p", String(port));
  if (target.user !== undefined) a.push("-l", target.user);
  a.push("--", target.host);
  return a;
}
