/**
 * Opening the data streams of a remote session, straight to the remote's data
 * port or, with --tunnel, through ssh (DESIGN §9). When the data port cannot
 * be reached (a firewall drops or refuses it), escp says so and falls back to
 * the tunnel by itself after a short connect timeout.
 *
 * The tunnel is ssh's own port forwarding: one more ssh process,
 *   ssh [user's options] -L 127.0.0.1:LOCAL:ADDR:PORT HOST 'echo escp-tunnel-ready; exec cat >/dev/null'
 * where ADDR:PORT is where the server listens as the remote sees it. The
 * streams then connect to 127.0.0.1:LOCAL, so each one is a channel of that ssh
 * connection. Records keep escp's own encryption and authentication inside
 * (ssh's encryption comes on top: that is the price of the tunnel).
 *
 * Why forwarding rather than a relay process per stream: one connection and
 * one authentication (a password is asked for once, not N+1 times, and
 * sshd's MaxStartups is not hit with -t 64), the bytes never pass through
 * JavaScript, and the blocking native connects of connect.ts cannot deadlock
 * against a relay that would have to run on the same event loop. It needs
 * the sshd to allow TCP forwarding (AllowTcpForwarding, the default); when it
 * does not, the error says so.
 *
 * The remote command prints a line once ssh has set up the forwarding (ssh
 * binds the -L listener before it opens the session), and `cat` keeps the
 * session open until escp closes ssh's stdin or exits.
 */
import { sshArgs, type Options } from "../cli/args.ts";
import { native, cstr, ptr, nativeError, E } from "../native.ts";
import { Interrupted, unlessInterrupted, type SessionKeys } from "./connect.ts";
import { spawnSsh, useBuiltinSsh, type Remote } from "./remote.ts";
import { toStderr } from "../stderr.ts";

/** Connect timeout for the first stream when a fallback is possible: a dropped SYN must not cost long. */
export const FALLBACK_CONNECT_MS = 3000;
const STREAM_CONNECT_MS = 10_000;
const READY = "escp-tunnel-ready";
const READY_COMMAND = `echo ${READY}; exec cat >/dev/null`;

/**
 * Errors that mean "nothing answers at that address", as opposed to a peer that answered
 * wrongly: refused, no route, timed out; and a route that forbids it (a `prohibit` route or
 * a firewall's reject: EACCES, EPERM; a `blackhole` route: EINVAL), which ssh may still pass.
 */
const UNREACHABLE = new Set([-111 /* ECONNREFUSED */, -113 /* EHOSTUNREACH */, -101 /* ENETUNREACH */,
  -110 /* ETIMEDOUT */, -104 /* ECONNRESET */, -13 /* EACCES */, -1 /* EPERM */, -22 /* EINVAL */, E.TIMEOUT]);

export interface DataTarget {
  /** Where this side connects directly (the server's address, or ESCP_DATA_VIA). */
  direct: [string, number];
  /** Where the server listens, as seen from the remote host: the tunnel's far end. */
  server: [string, number];
}

/**
 * The session's 1 + `streams` connections: direct, else (or with --tunnel)
 * through ssh. The tunnel lives until `session` (the server's ssh) exits.
 */
export async function connectData(
  o: Options, host: Remote, to: DataTarget, keys: SessionKeys, session: { exited: Promise<number> }, streams: number,
): Promise<number[]> {
  const n = streams + 1;
  if (!o.tunnel) {
    const err = new Int32Array(1);
    const [addr, port] = to.direct;
    const first = native().escp_connect(cstr(addr), port, ptr(keys.master), ptr(keys.sid), 0, n, FALLBACK_CONNECT_MS, ptr(err));
    if (!first) unlessInterrupted(err[0]);
    if (first) {
      return connectFrom(addr, port, keys, n, [Number(first)], STREAM_CONNECT_MS, "",
        "(is the port range open in the firewall? use --tunnel, or choose another range with --port)");
    }
    const cause = nativeError(err[0]);
    if (!UNREACHABLE.has(err[0])) throw new Error(`cannot open data stream 0 to ${addr} port ${port}: ${cause}`);
    if (useBuiltinSsh(o)) {
      throw new Error(`data port ${port} on ${host.host} unreachable (${cause}), ` +
        `and falling back to --tunnel needs the system ssh program: open the port range, or use it (--ssh system)`);
    }
    if (!o.quiet) {
      toStderr(`escp: data port ${port} on ${host.host} unreachable (${cause}); falling back to --tunnel (slower; give --tunnel to skip the attempt)\n`);
    }
  }
  // The built-in client runs on our event loop, which the blocking connects below would stall.
  if (useBuiltinSsh(o)) throw new Error("--tunnel needs the system ssh program; the built-in ssh client cannot carry the data streams");
  const tunnel = await openTunnel(o, host, to.server);
  void session.exited.then(tunnel.close, tunnel.close);
  try {
    return connectFrom("127.0.0.1", tunnel.port, keys, n, [], STREAM_CONNECT_MS, " through the ssh tunnel");
  } catch (e) {
    if (e instanceof Interrupted) throw e;
    // The connects above held the event loop: what ssh said meanwhile is read now.
    for (let i = 0; i < 10 && !tunnel.stderr(); i++) await Bun.sleep(30);
    const said = tunnel.stderr();
    tunnel.close();
    // Then the handshake's "closed the connection" is no clue: this is the cause.
    if (/administratively prohibited|open failed/i.test(said)) {
      throw new Error(`${host.host}'s sshd refuses port forwarding, which --tunnel needs (AllowTcpForwarding, or a key's no-port-forwarding): open the data port range instead`);
    }
    throw new Error(`${(e as Error).message}${said ? ` (ssh: ${said})` : ""}`);
  }
}

/**
 * Connects streams conns.length..n-1 after the ones given, all at once; frees all of them
 * on failure. `hint` follows the error only when nothing answered (a firewall may be why),
 * not when a peer answered wrongly.
 */
function connectFrom(addr: string, port: number, keys: SessionKeys, n: number, conns: number[], timeoutMs: number, via: string, hint = ""): number[] {
  const out = new BigUint64Array(n);
  conns.forEach((c, s) => (out[s] = BigInt(c)));
  const r = native().escp_connect_streams(cstr(addr), port, ptr(keys.master), ptr(keys.sid), conns.length, n, timeoutMs, ptr(out));
  unlessInterrupted(r);
  if (r < 0) throw new Error(`cannot open the data streams to ${addr} port ${port}${via}: ${nativeError(r)}${hint && UNREACHABLE.has(r) ? ` ${hint}` : ""}`);
  return Array.from(out, (p) => Number(p));
}

interface Tunnel {
  /** The local end: 127.0.0.1:port. */
  port: number;
  /** The last lines ssh wrote on stderr. */
  stderr(): string;
  close(): void;
}

/** The ssh arguments of the tunnel: the user's, with forwarding allowed and one -L added. */
export function tunnelArgs(o: Options, host: Remote, local: number, [addr, port]: [string, number]): string[] {
  const a = sshArgs(o, host).map((x) => (x === "-oClearAllForwardings=yes" ? "-oClearAllForwardings=no" : x));
  const far = addr.includes(":") ? `[${addr}]` : addr;
  a.splice(a.indexOf("--"), 0, "-oExitOnForwardFailure=yes", "-L", `127.0.0.1:${local}:${far}:${port}`);
  return a;
}

async function openTunnel(o: Options, host: Remote, server: [string, number]): Promise<Tunnel> {
  const ssh = o.sshProgram ?? "ssh";
  for (let attempt = 1; ; attempt++) {
    const local = await freeLocalPort();
    let proc: ReturnType<typeof spawnSsh>;
    try {
      proc = spawnSsh(ssh, [...tunnelArgs(o, host, local, server), READY_COMMAND]);
    } catch (e) {
      throw new Error(`cannot start ${ssh} for the tunnel: ${(e as Error).message}`);
    }
    let errText = "";
    const errDone = (async () => {
      for await (const c of proc.stderr as any as AsyncIterable<Uint8Array>) errText = (errText + Buffer.from(c).toString("utf8")).slice(-4096);
    })().catch(() => {});
    const stderr = () => errText.trim().split("\n").slice(-3).join("; ").trim();
    if (await waitReady(proc.stdout)) {
      let closed = false;
      const close = () => {
        if (closed) return;
        closed = true;
        process.off("exit", close);
        try {
          proc.kill();
        } catch {}
      };
      process.on("exit", close);
      proc.unref();
      return { port: local, stderr, close };
    }
    const code = await proc.exited;
    await errDone;
    // Someone took the local port between our check and ssh's bind: try another.
    if (attempt < 3 && /already in use|cannot listen|local forwarding/i.test(errText)) continue;
    throw new Error(`cannot open an ssh tunnel to ${host.host} for the data streams: ${stderr() || `ssh exited with status ${code}`}`);
  }
}

/** True once the remote printed READY; false if ssh ended first. Keeps draining afterwards. */
async function waitReady(stdout: ReadableStream<Uint8Array>): Promise<boolean> {
  const it = (stdout as any as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  let text = "";
  for (;;) {
    const r = await it.next().catch(() => ({ done: true as const, value: undefined }));
    if (r.done) return false;
    text = (text + Buffer.from(r.value).toString("latin1")).slice(-4096);
    if (text.includes(READY)) {
      void (async () => {
        while (!(await it.next()).done);
      })().catch(() => {});
      return true;
    }
  }
}

/** A TCP port on 127.0.0.1 that is free now. */
function freeLocalPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const net = require("node:net") as typeof import("node:net"); // only --tunnel needs it
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as import("node:net").AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
