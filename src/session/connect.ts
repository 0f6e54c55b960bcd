/**
 * Opening a session's TCP streams (0 = file list and verdicts, 1..N = data)
 * and the key material they are keyed from. The side that ran `--server`
 * listens; the side that started it connects. The handshake itself (preamble,
 * HELLO both ways, dropping strangers) is in ffi/net.c.
 */
import fs from "node:fs";
import { native, cstr, ptr, nativeError, E, type Pointer } from "../native.ts";
import { log } from "../log.ts";
import { formatBytes } from "../progress.ts";

export interface SessionKeys {
  sid: Uint8Array; // 16 bytes, public
  master: Uint8Array; // 32 bytes, secret: only on the ssh pipe, never on a command line
}

/** No core dumps and no ptrace for this process from here on: it is about to hold keys. */
function protectSecrets(): void {
  const r = native().escp_protect_secrets();
  if (r < 0) throw new Error(`cannot protect the session keys: ${nativeError(r)}`);
}

export function newKeys(): SessionKeys {
  protectSecrets();
  // Web Crypto's CSPRNG: the same source as node:crypto, without loading that module at start.
  return { sid: crypto.getRandomValues(new Uint8Array(16)), master: crypto.getRandomValues(new Uint8Array(32)) };
}

export interface Listener {
  fd: number;
  port: number;
}

/**
 * Listens on the first free port of the range; the error says what to do when
 * none is, naming this host by `host()` (called only then: it loads node:os).
 * `anyPort`: with the whole range taken, any free port will do (the client comes
 * through ssh's forwarding, or from this host: no firewall decides the port).
 */
export function listen(bindAddr: string, range: [number, number], host: () => string, anyPort = false): Listener {
  protectSecrets(); // the server parses the master key right after it listens
  const port = new Int32Array(1);
  let fd = native().escp_listen(cstr(bindAddr), range[0], range[1], ptr(port));
  if (fd === -98 /* EADDRINUSE */ && anyPort) {
    log.info("every port of the range is taken: listening on one the kernel picks", { range });
    fd = native().escp_listen(cstr(bindAddr), 0, 0, ptr(port));
  }
  if (fd < 0) {
    const cause = nativeError(fd);
    throw new Error(`cannot listen on ${host()} ports ${range[0]}-${range[1]}: ${cause} (choose another range with --port first-last)`);
  }
  return { fd, port: port[0] };
}

/**
 * Accepts the session's 1 + dataStreams connections; anything else that knocks is dropped.
 * Gives up when `controlFd` (the control connection, this server's stdin) ends: a client
 * killed before its streams connected must not leave us listening until the timeout.
 */
export function acceptStreams(l: Listener, keys: SessionKeys, dataStreams: number, timeoutMs: number, controlFd = -1): number[] {
  const n = dataStreams + 1;
  const out = new BigUint64Array(n);
  const dropped = new Int32Array(1);
  const r = native().escp_accept_streams(l.fd, ptr(keys.master), ptr(keys.sid), n, ptr(out), timeoutMs, ptr(dropped), controlFd);
  native().escp_close(l.fd);
  if (dropped[0] > 0) log.warn("dropped connections to the data port that were not this session's", { port: l.port, dropped: dropped[0] });
  if (r < 0) throw new Error(`waiting for the data connections on port ${l.port}: ${nativeError(r)}`);
  return Array.from(out, (p) => Number(p));
}

/**
 * A connect that a SIGINT or SIGTERM cut short (escp_watch_interrupts): the runtime has
 * yet to run the handlers that stop the copy, which the catcher lets it do.
 */
export class Interrupted extends Error {
  constructor() {
    super("interrupted");
  }
}

/** Throws Interrupted for a connect's ESCP_E_CANCEL. */
export function unlessInterrupted(code: number): void {
  if (code === E.CANCEL) throw new Interrupted();
}

/** Connects every stream; the error names host and port and what to try. */
export function connectStreams(addr: string, port: number, keys: SessionKeys, dataStreams: number, timeoutMs: number): number[] {
  const n = dataStreams + 1;
  const out = new BigUint64Array(n);
  // All streams at once (ffi/net.c): on a WAN each sequential connect would cost two round trips.
  const r = native().escp_connect_streams(cstr(addr), port, ptr(keys.master), ptr(keys.sid), 0, n, timeoutMs, ptr(out));
  unlessInterrupted(r);
  if (r < 0) {
    throw new Error(
      `cannot open the data streams to ${addr} port ${port}: ${nativeError(r)} ` +
        `(is the port range open in the firewall? choose another with --port)`,
    );
  }
  return Array.from(out, (p) => Number(p));
}

/**
 * Socket tuning for every stream: pacing splits -l evenly, keepalive notices
 * a vanished peer, and --sockbuf asks for fixed buffers on the data streams
 * (which turns the kernel's autotuning off for them). Returns a warning for
 * the user when the kernel would not grant those buffers.
 */
export function tuneStreams(conns: number[], limitBps: number, keepaliveS: number, sockbuf = 0): string | undefined {
  const granted = new Int32Array(2);
  const dataStreams = Math.max(1, conns.length - 1);
  let send = Infinity, receive = Infinity;
  conns.forEach((c, s) => {
    const pacing = s > 0 && limitBps > 0 ? Math.ceil(limitBps / dataStreams) : 0;
    const buf = s > 0 ? sockbuf : 0;
    native().escp_conn_tune(c as Pointer, buf, buf, pacing, keepaliveS, ptr(granted));
    if (s > 0) [send, receive] = [Math.min(send, granted[0]), Math.min(receive, granted[1])];
  });
  if (!sockbuf) return undefined;
  // Linux reports twice the size it was asked for (the other half is its bookkeeping),
  // of at most INT_MAX / 2: --sockbuf 1G is granted as 1 GiB less a byte.
  log.info("socket buffers", { asked: sockbuf, send: send / 2, receive: receive / 2 });
  const full = 2 * Math.min(sockbuf, 0x3fffffff);
  if (send >= full && receive >= full) return undefined;
  const wmax = sysctl("net/core/wmem_max"), rmax = sysctl("net/core/rmem_max");
  return `--sockbuf ${formatBytes(sockbuf)} was not granted: this kernel allows ${formatBytes(wmax)} to send and ` +
    `${formatBytes(rmax)} to receive (net.core.wmem_max, net.core.rmem_max), so the streams keep its autotuning; ` +
    `raise them with sysctl -w net.core.wmem_max=${sockbuf} net.core.rmem_max=${sockbuf}, or run escp as root`;
}

function sysctl(name: string): number {
  try {
    return Number(fs.readFileSync(`/proc/sys/${name}`, "utf8").trim());
  } catch {
    return NaN;
  }
}
