/**
 * Starting the other end of a session: `escp --server` on the remote host
 * through the user's ssh (so ~/.ssh/config, agents, ProxyJump and
 * ControlMaster apply), or this same program as a local child for a local
 * copy. Also what the user is told when that fails.
 *
 * On a remote host the command is bootstrap.ts's snippet: the escp cached in
 * ~/.cache/escp/VERSION-BUILD, else `escp` from PATH if it speaks our protocol,
 * else this executable is copied there first (--no-bootstrap forbids that).
 * --remote-escp PATH (or ESCP_REMOTE) names the remote escp outright.
 */
import type { Options } from "../cli/args.ts";
import { sshArgs } from "../cli/args.ts";
import type { ControlMessage } from "../protocol.ts";
import type * as BuiltinSsh from "./builtin-ssh.ts";
import { bootstrapping, CACHE_PATH } from "./bootstrap.ts";
import { encodeFrame } from "./control.ts";
import { BUILTIN_SSH_URL } from "../entrypoints.ts";
import { toStderr } from "../stderr.ts";
import { errnoText } from "../native.ts";

export type Remote = { user?: string; host: string; port?: number };
export type Plan =
  | { dir: "push"; host: Remote; sources: string[]; target: string }
  | { dir: "pull"; host: Remote; sources: string[]; target: string }
  | { dir: "local"; sources: string[]; target: string };

/** The other end's process: its stdio is the control channel, its stderr goes to the user. */
export interface ServerProcess {
  stdin: { write(b: Uint8Array): unknown; flush(): unknown; end(): unknown };
  stdout: ReadableStream<Uint8Array>;
  stderr: ReadableStream<Uint8Array>;
  exited: Promise<number>;
  kill(): void;
  /** Set when the other end could not be started at all (e.g. bootstrap refused): the whole message. */
  failure?: string;
  /** The remote program the user named (--remote-escp, ESCP_REMOTE), if any. */
  named?: string;
  /** What withKeepalive's pings say, once the session has more to say than `{"type":"ping"}`. */
  pingWith?: () => ControlMessage;
}

/** The command that starts the other end: ssh to the host, or this same program locally. */
export function startServer(o: Options, plan: Plan): ServerProcess {
  const self = selfCommand();
  if (plan.dir === "local") {
    return withKeepalive(Bun.spawn([...self, "--server"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" }), o.keepaliveS);
  }
  return startRemote(o, plan.host, "--server");
}

/** escp on `host` run with `mode` (--server, --origin): the one named, cached or found there, else bootstrapped. */
export function startRemote(o: Options, host: Remote, mode: string): ServerProcess {
  const remote = o.remoteEscp ?? (process.env.ESCP_REMOTE || undefined);
  const ssh = o.sshProgram ?? "ssh";
  // Every command this session runs on the host (the server, a bootstrap upload) goes through here.
  const run = (command: string): ServerProcess =>
    useBuiltinSsh(o) ? builtinSsh().startBuiltinSsh(o, host, command) : spawnSsh(ssh, [...sshArgs(o, host), command]);
  const started = remote !== undefined ? run(`${shellQuote(remote)} ${mode}`) : bootstrapping(o, host.host, run, mode);
  return Object.assign(withKeepalive(started, o.keepaliveS), { named: remote });
}

/** Runs the ssh program (ssh, or -S's); one that cannot be run at all is named, with why. */
export function spawnSsh(ssh: string, args: string[]) {
  try {
    return Bun.spawn([ssh, ...args], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  } catch (e) {
    throw new Error(`${ssh}: cannot run the ssh program: ${errnoText(e)}${ssh === "ssh" ? "" : " (-S names it)"}`);
  }
}

/** The built-in client when asked for (--ssh builtin) or when there is no ssh program. */
export function useBuiltinSsh(o: Options): boolean {
  return o.ssh === "builtin" || (o.sshProgram === undefined && !Bun.which("ssh"));
}

/**
 * The built-in client's module, loaded on first use: ssh2 and its native parts
 * cost every start-up ~15 MB and tens of milliseconds, and most runs use the
 * system ssh. It is an entry point of its own (entrypoints.ts).
 */
function builtinSsh(): typeof BuiltinSsh {
  return require(Bun.fileURLToPath(BUILTIN_SSH_URL));
}

/** This program as a command line: the compiled executable, or bun + the entry script. */
export function selfCommand(): string[] {
  // Not Bun.main when uncompiled: a program that imports escp as a library is not escp.
  return Bun.main.startsWith("/$bunfs") ? [process.execPath] : [process.execPath, Bun.fileURLToPath(new URL("../main.ts", import.meta.url))];
}

function shellQuote(s: string): string {
  return /^[\w./~-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** `{"type":"ping"}` as a control frame: the server ignores it except as a sign of life. */
const PING = encodeFrame({ type: "ping" });

/**
 * Control-channel keepalive: once the client has written (its hello), a ping
 * every `seconds` tells the server we are still there. A server that hears
 * nothing for three intervals gives up (server.ts), so a client that hangs or
 * vanishes behind a live ssh connection leaves no receiver behind. A server
 * that predates pings ignores them.
 */
export function withKeepalive(p: ServerProcess, seconds: number): ServerProcess {
  if (!(seconds > 0)) return p;
  let timer: ReturnType<typeof setInterval> | undefined;
  let stopped = false;
  const stop = () => {
    stopped = true;
    if (timer) clearInterval(timer);
    timer = undefined;
  };
  void p.exited.then(stop, stop);
  const out: ServerProcess = {
    stdin: {
      write(b: Uint8Array) {
        const r = p.stdin.write(b);
        if (!timer && !stopped) {
          const ping = () => {
            try {
              p.stdin.write(out.pingWith ? encodeFrame(out.pingWith()) : PING);
              p.stdin.flush();
            } catch {
              stop();
            }
          };
          // One right away, so the server knows from the start that we ping.
          ping();
          timer = setInterval(ping, seconds * 1000);
          (timer as any).unref?.();
        }
        return r;
      },
      flush: () => p.stdin.flush(),
      end() {
        stop();
        return p.stdin.end();
      },
    },
    stdout: p.stdout,
    stderr: p.stderr,
    exited: p.exited,
    kill() {
      stop();
      p.kill();
    },
    get failure() {
      return p.failure;
    },
  };
  return out;
}

/** What the other end's stderr keeps under -q: what reads as an ssh error, and escp's word of a source left out (Report.warning's loud). */
export const KEPT_QUIET = /error|denied|refused|not found|^escp: warning: .*, skipped$/im;

/**
 * Passes the other end's stderr (ssh's messages, the server's warnings) through, keeping
 * the tail for diagnosis. `makeRoom` erases the progress display first, so that the text
 * starts on a line of its own and the next redraw does not write over it. With -q only
 * what matches `kept` goes through: by default what reads as an ssh error.
 */
export function forwardStderr(
  stream: ReadableStream<Uint8Array>,
  o: Options,
  makeRoom: () => void,
  kept = KEPT_QUIET,
): StderrTail {
  const tail = { text: "", shown: "", done: Promise.resolve(), quiet: o.quiet };
  tail.done = (async () => {
    for await (const chunk of stream as any as AsyncIterable<Uint8Array>) {
      const s = Buffer.from(chunk).toString("utf8");
      tail.text = (tail.text + s).slice(-4096);
      if (o.quiet && !kept.test(s)) continue;
      tail.shown = (tail.shown + s).slice(-4096);
      makeRoom();
      toStderr(s);
    }
  })();
  return tail;
}

/** The end of the other end's stderr: all of it (text), and what of it the user was shown. */
export interface StderrTail {
  text: string;
  shown: string;
  done: Promise<void>;
  quiet?: boolean;
}

/**
 * Why the other end could not be started or went quiet. `line`, when set, is what
 * stderr shows in place of the message: the user has just read its cause there in
 * ssh's own words, and escp adds only whose it was.
 */
export class StartFailure extends Error {
  constructor(message: string, readonly line?: string) {
    super(message);
  }
}

export async function connectionFailure(
  where: string,
  child: { exited: Promise<number>; failure?: string; named?: string },
  tail: StderrTail,
  when = "before the remote escp answered",
): Promise<StartFailure> {
  return new StartFailure(...(await explain(where, child, tail, when)));
}

async function explain(
  where: string,
  child: { exited: Promise<number>; failure?: string; named?: string },
  tail: StderrTail,
  when: string,
): Promise<[string, string?]> {
  const code = await child.exited;
  await tail.done;
  if (child.failure) return [child.failure];
  const last = lastSaid(tail.text);
  if (/command not found|No such file or directory|not found/.test(last) && /escp/.test(last)) {
    return [child.named !== undefined
      ? `${where}: the escp named by --remote-escp or ESCP_REMOTE cannot be run there (${last})`
      : `${where}: escp is not installed there (${last}); name it with --remote-escp PATH`];
  }
  // The bootstrap snippet's own message (bootstrap.ts), or the remote escp's: it says it all.
  if (last.startsWith("escp: ")) return [`${where}: ${last.slice("escp: ".length)}`];
  if (code === 255 && last) return [`${where}: ssh failed: ${last}`, lastSaid(tail.shown) === last ? `${where}: ssh failed (above)` : undefined];
  // Without a word from either, ssh itself (or -S's program) may be what ended; 255 is
  // also how ssh tells that the remote escp was killed.
  // -q makes ssh itself quiet too (as scp's does): it may have said nothing about a failed login.
  const why = code !== 255 ? code
    : tail.quiet ? "255: ssh could not connect or log in, or lost the connection, or the remote escp was killed; without -q ssh says which"
    : "255: the remote escp was killed, or the connection was lost";
  if (!last) return [`${where}: the connection ended (ssh exited with status ${why}) ${when}`];
  // The shell could not run the cached copy (damaged, or another machine's): a new one is sent once it is gone.
  const damaged = (code === 126 || code === 127) && last.includes(CACHE_PATH) ? ` (remove ~/${CACHE_PATH} there, and escp installs a new copy)` : "";
  return [`${where}: the remote command exited (status ${code}) ${when}: ${last}${damaged}`];
}

/**
 * The last line worth quoting of what ssh and the remote printed: not ssh -v's
 * "debug1:" lines and byte counts, nor a shell's underline of the word it failed
 * on (fish: ^~~~~).
 */
function lastSaid(text: string): string {
  const chatter = /^(debug\d: |Transferred: sent \d|Bytes per second: sent )/;
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => /[A-Za-z0-9]/.test(l) && !chatter.test(l));
  return lines.at(-1) ?? "";
}
