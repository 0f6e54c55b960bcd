/**
 * The connecting escp: decides the direction from the operands, starts the
 * other end (`escp --server` over ssh, or as a local child for a local copy),
 * hands it the session keys on the ssh pipe, opens the streams and runs the
 * sender or the receiver. Its exit status is scp's: 0 only if every file
 * arrived verified.
 */
import fs from "node:fs";
import type { Options } from "../cli/args.ts";
import type { Operand } from "../cli/operands.ts";
import { ControlChannel, watchSilence } from "./control.ts";
import { relay } from "./relay.ts";
import { fromSource } from "./origin.ts";
import { startServer, forwardStderr, connectionFailure, StartFailure, type Plan, type ServerProcess } from "./remote.ts";
import { StallWatch } from "../streams/stall.ts";
import { newKeys, connectStreams, tuneStreams, Interrupted, type SessionKeys } from "./connect.ts";
import { connectData } from "./tunnel.ts";
import { PROTO_VERSION, gcmBackend, prepareGcm, nativeSource, native } from "../native.ts";
import { StreamPool, prestartStreamWorkers, ConnectionLost, LOST_WORDS } from "../streams/pool.ts";
import { dropSpares } from "../streams/spare.ts";
import { prestartWalker } from "../plan/walk.ts";
import { streamsFor } from "../plan/sources.ts";
import { makeSide, summarize, fileWindow, streamsFilesAllow, streamsMemoryAllows, streamsTargetTakes, type Side } from "../transfer/side.ts";
import { resolveTarget, sameAsDestination, TargetError } from "../plan/target.ts";
import { Request } from "../plan/request.ts";
import { failuresOf, type Report, type Failure } from "../report.ts";
import { log } from "../log.ts";
import { printable } from "../text.ts";
import { isIP } from "node:net";
import { hex, ProtocolError, type SessionOptions, type ControlMessage, type TransferSummary } from "../protocol.ts";
import { toStderr } from "../stderr.ts";

/** What a transfer came to: the summary when it ran, the fatal error when it could not. */
export interface TransferResult {
  summary?: TransferSummary;
  /** Per-file failures, each also reported through events.failed. */
  failures: Failure[];
  /** A failure of the whole session (host unreachable, stream broken...), one line. */
  error?: string;
  /** What stderr shows for error when its cause was printed there already (ssh's own line): escp's part only. */
  errorLine?: string;
  /** The operands cannot be combined (exit status 2, like a usage error). */
  usage?: boolean;
  interrupted?: boolean;
}

/** Works out who sends and who receives; operands scp cannot combine are usage errors. */
export function planTransfer(sources: Operand[], target: Operand): Plan | string {
  const remoteSources = sources.filter((s) => s.kind === "remote");
  if (target.kind === "remote") {
    if (remoteSources.length) return "remote-to-remote copies go through relay()";
    return { dir: "push", host: target, sources: sources.map((s) => s.path), target: target.path };
  }
  if (remoteSources.length === 0) return { dir: "local", sources: sources.map((s) => s.path), target: target.path };
  if (bySession(sources).length > 1) return "sources from several places are copied by transfer() one place at a time";
  return { dir: "pull", host: remoteSources[0] as Extract<Operand, { kind: "remote" }>, sources: sources.map((s) => s.path), target: target.path };
}

/** Sources in runs that one session can carry: local ones, or ones on the same host as the same user. */
function bySession(sources: Operand[]): Operand[][] {
  const key = (s: Operand) => (s.kind === "local" ? "" : `${s.user ?? ""}@${s.host}:${s.port ?? ""}`);
  const groups: Operand[][] = [];
  for (const s of sources) {
    const g = groups.find((g) => key(g[0]) === key(s));
    if (g) g.push(s);
    else groups.push([s]);
  }
  return groups;
}

/**
 * A destination on this host is taken as written, as scp and cp take it: the shell
 * expanded any ~ the user meant, so one that reaches us was quoted and names a file
 * "~" (the other end would read it as the home directory); an empty one names
 * nothing (`host:` means the home directory only on a remote host).
 */
function literalTarget(plan: Plan): Plan | string {
  if (plan.dir === "push") return plan;
  if (plan.target === "") return "the destination is an empty name: No such file or directory";
  return plan.target.startsWith("~") ? { ...plan, target: `./${plan.target}` } : plan;
}

/** Like scp, sources from several places are copied one place after the other into the target directory. */
async function inTurn(o: Options, groups: Operand[][], target: Operand, report: Report, signal?: AbortSignal): Promise<TransferResult> {
  const started = performance.now(), ran: TransferSummary[] = [];
  for (const g of groups) {
    const one = await transfer(o, g, target, report, signal, true);
    if (one.interrupted || one.usage) return one;
    if (one.summary) ran.push(one.summary);
    if (one.error) {
      // This place failed; the others still get copied.
      report.failed("", one.error, undefined, one.errorLine);
      report.notCopied();
    }
  }
  return { summary: together(ran, started, report.failures), failures: report.failures };
}

/** One summary for sessions run one after the other: what they moved, and the time from the first's start. */
export function together(parts: TransferSummary[], startedMs: number, failures: Failure[]): TransferSummary {
  const sum = (k: "files" | "bytes" | "bytesSkipped" | "bytesNetwork" | "bytesDisk" | "bytesCompressed") => parts.reduce((n, p) => n + p[k], 0);
  return {
    files: sum("files"), bytes: sum("bytes"), bytesSkipped: sum("bytesSkipped"), bytesNetwork: sum("bytesNetwork"),
    bytesDisk: sum("bytesDisk"), bytesCompressed: sum("bytesCompressed"),
    seconds: (performance.now() - startedMs) / 1000, failures, streams: Math.max(0, ...parts.map((p) => p.streams)),
  };
}

/**
 * Copies sources to target with the same engine as the command line; events
 * hear about every file, and `signal` interrupts (temporary files are removed
 * unless --resume keeps them).
 */
export async function transfer(
  o: Options, sources: Operand[], target: Operand, report: Report, signal?: AbortSignal,
  /** Part of a larger copy: the target must be a directory even for one source. */
  several = sources.length > 1,
): Promise<TransferResult> {
  const groups = bySession(sources);
  if (groups.length > 1) return inTurn(o, groups, target, report, signal);
  if (target.kind === "remote" && sources.some((s) => s.kind === "remote")) {
    return o.viaSource ? fromSource(o, sources, target, report, signal, several) : relay(o, sources, target, report, signal, several);
  }
  const planned = planTransfer(sources, target);
  if (typeof planned === "string") return { failures: [], error: planned, usage: true };
  let plan = literalTarget(planned);
  if (typeof plan === "string") return { failures: [], error: plan };
  if (plan.dir === "local") {
    const target = plan.target;
    const apart = plan.sources.filter((src) => {
      const same = sameAsDestination(src, target);
      if (same) report.failed(src, same);
      return !same;
    });
    if (!apart.length) return { failures: report.failures };
    plan = { ...plan, sources: apart };
  }
  log.open({ role: plan.dir === "pull" ? "receiver" : "sender", verbose: o.verbose, file: o.log });
  const where = plan.dir === "local" ? "localhost" : plan.host.host;
  // What the other end says is prefixed with its host; a local copy's other end is this host.
  const said = (m: string) => (plan.dir === "local" ? m : `${where}: ${m}`);
  // A local receiver checks its destination before anything is started remotely.
  let localTarget;
  if (plan.dir === "pull") {
    try {
      localTarget = resolveTarget(plan.target, { multipleSources: several });
    } catch (e) {
      return { failures: [], error: (e as Error).message };
    }
  }
  // As the sender we know what there is to move; pulling, the server tells us in `ready`.
  // No more streams than our descriptors allow (and the server's, which may answer with fewer).
  const threads = localTarget ? streamsTargetTakes(localTarget, o.threads) : o.threads;
  const files = streamsFilesAllow(plan.dir === "pull" ? threads : streamsFor(plan.sources, threads, o.blockSize));
  if (files.streams < 1) return { failures: [], error: files.why };
  if (files.why) report.warning(files.why);
  const memory = streamsMemoryAllows(files.streams, o.blockSize, o.compress);
  if (memory.streams < 1) return { failures: [], error: memory.why };
  if (memory.why) report.warning(memory.why);
  const asked = memory.streams;
  log.info("starting the other end", { direction: plan.dir, host: plan.dir === "local" ? undefined : plan.host.host, sources: plan.sources, target: plan.target, streams: asked, blockSize: o.blockSize });
  const child = startServer(o, plan);
  // Our workers boot, and the AES-GCM implementation is chosen (a few ms), while ssh logs in.
  prestartStreamWorkers(asked);
  if (plan.dir !== "pull") prestartWalker(plan.sources, { recursive: o.recursive });
  prepareGcm();
  const { ch, stderrTail } = controlOf(child, o, where, report);
  const keys = newKeys();
  const session = sessionOptions(o, asked);
  ch.send(hello(o, plan, keys, session, asked, several));
  let pool: StreamPool | undefined;
  let side: Side | undefined;
  let stopWatching = () => {};
  let interrupted = false;
  let wake: () => void = () => {};
  const aborted = new Promise<never>((_, reject) => (wake = () => reject(new Error("interrupted"))));
  aborted.catch(() => {});
  const interrupt = () => {
    interrupted = true;
    pool?.abort();
    side?.cleanup();
    child.kill();
    wake();
  };
  signal?.addEventListener("abort", interrupt);
  try {
    const ready = await readyOf(await Promise.race([ch.receive(), aborted]), child, where, stderrTail, said);
    if (plan.dir === "pull" && !several && (ready.sources ?? 0) > 1) {
      // A remote pattern that matched several: as for several operands, only into a directory
      // (written to one name, each would have replaced the one before).
      fs.closeSync(localTarget!.rootFd);
      try {
        localTarget = resolveTarget(plan.target, { multipleSources: true });
      } catch (e) {
        throw new Error(`${(e as Error).message}; ${plan.sources.map(printable).join(" ")} matched ${ready.sources} there`);
      }
    }
    log.info("other end ready", { port: ready.port, addr: ready.addr, streams: ready.streams });
    const streams = ready.streams;
    // What the other end put in `ready`, as it was: any value, any characters.
    const answered = (value: unknown, as: string) => new Error(`${where}: the other end answered with ${printable(String(JSON.stringify(value)))} ${as}`);
    if (!Number.isInteger(streams) || streams < 1 || streams > asked) throw answered(streams, `data streams, not 1 to ${asked}`);
    if (!Number.isInteger(ready.port) || ready.port < 1 || ready.port > 65535) throw answered(ready.port, "as its data port, not 1 to 65535");
    if (ready.addr !== undefined && (typeof ready.addr !== "string" || !isIP(ready.addr))) throw answered(ready.addr, "as its address, not an IP address");
    const [addr, port] = dataAddress(plan.dir === "local" ? "127.0.0.1" : ready.addr ?? plan.host.host, ready.port);
    // Remote: straight to the data port, or through ssh (--tunnel, or by itself when that port is unreachable).
    // The connects hold this thread: Ctrl-C ends them from the native side (escp_watch_interrupts).
    native().escp_watch_interrupts(1);
    let conns: number[];
    try {
      conns = plan.dir === "local"
        ? connectStreams(addr, port, keys, streams, 10_000)
        : await connectData(o, plan.host, { direct: [addr, port], server: [ready.addr ?? "127.0.0.1", ready.port] }, keys, child, streams);
    } finally {
      native().escp_watch_interrupts(0);
    }
    keys.master.fill(0);
    log.info("streams connected", { streams: conns.length - 1, port, aes: gcmBackend(), lib: nativeSource() });
    const capped = tuneStreams(conns, session.limitBps, o.keepaliveS, session.sockbuf);
    if (capped) report.warning(capped);
    const role = plan.dir === "pull" ? "receiver" : "sender";
    pool = new StreamPool(conns, role, { blockSize: o.blockSize, zstdLevel: o.compress ? o.zstdLevel : 0, cpumask: o.cpumask, nodemask: o.nodemask });
    const started = performance.now();
    report.session({ host: where, direction: plan.dir, streams, blockSize: o.blockSize, port: ready.port });
    // Progress reads the workers' shared counters; it never touches the data path.
    const progress = report.poll(PROGRESS_MS, () => ({ ...pool!.totals(), seconds: (performance.now() - started) / 1000 }));
    // The server's verdict may arrive while we still work (a fatal error on its side).
    // Meanwhile it pings; a server that stops (SIGSTOP, a hung host) would otherwise
    // leave a pull waiting forever on streams whose kernel still answers.
    let silent: (e: Error) => void = () => {};
    const silence = watchSilence(o.keepaliveS, () => {
      pool?.abort();
      silent(new Error(`${where}: no word from the remote escp for ${3 * o.keepaliveS} s (stopped, or its host hung?): giving up`));
    }, ready.pings === true);
    stopWatching = silence.stop;
    // Words, but no bytes: a data path that holds the streams open and passes nothing on.
    const stall = new StallWatch(conns, o.keepaliveS, (why) => {
      pool?.abort();
      silent(new Error(`${where}: ${why}`));
    });
    child.pingWith = () => ({ type: "ping", acked: stall.acked() });
    const serverEnd = Promise.race([
      nextWord(ch, silence, stall),
      new Promise<never>((_, reject) => (silent = reject)),
    ]).finally(() => silence.stop());
    serverEnd.catch(() => {}); // taken where it is awaited; a session that failed otherwise may never await it
    // The server's fileWindow bounds what we send it at once; ours went to it in hello.
    const forSide = { ...session, fileWindow: ready.fileWindow };
    const request = plan.dir === "pull" ? new Request(plan.sources, o.recursive) : undefined;
    side = makeSide(role === "receiver" ? { role, target: localTarget!, request } : { role, sources: plan.sources }, pool, forSide, o.blockSize, report);
    const work = Promise.race([side.run(), aborted]);
    const workError = work.then(() => undefined, (e: Error) => e);
    const first = await Promise.race([workError.then((e) => ({ e })), serverEnd.then((m) => ({ m }))]);
    let remote: ControlMessage | null | undefined;
    if ("m" in first && first.m?.type === "error") {
      // The server gave up (its disk, its stream): stop ours and say why it did.
      pool.abort();
      side?.cleanup();
      throw new Error(isHangup(first.m.message) ? lostConnection(where, `${first.m.message} (seen by ${where})`) : said(first.m.message));
    }
    const err = await workError;
    // What the remote sent broke the protocol (a name not asked for, ids out of order):
    // the cause is here, whatever it does next.
    if (err instanceof ProtocolError) throw new Error(`${where}: protocol error: ${err.message}`);
    if (err) {
      // Our streams broke; the server usually knows the cause (e.g. a record that failed authentication).
      remote = await Promise.race([serverEnd, Bun.sleep(3000).then(() => undefined)]);
      if (remote?.type === "error") throw new Error(rootCause(where, remote.message, err, said));
      if (remote === null) {
        // It went without a word on the channel (killed, or its ssh was): what it said on
        // stderr reaches the user first. That our streams then broke adds nothing; what
        // we refused in what it sent (a record over the limit) is the cause.
        await Promise.race([Promise.all([stderrTail.done, child.exited]), Bun.sleep(STDERR_GRACE_MS)]);
        if (!(err instanceof ConnectionLost || isHangup(err.message))) throw err;
        throw new Error(lostConnection(where, "the remote escp or its ssh connection went away mid-transfer"));
      }
      throw err;
    }
    remote = await serverEnd;
    // Every file is verified by now (side.run() ended well), but what only the report carries
    // (a pull's unreadable sources, -p's directory times) is unknown: still a failure.
    if (!remote) throw await connectionFailure(where, child, stderrTail, "after every file was copied and verified, before the remote escp's final report");
    if (remote.type === "error") throw new Error(said(remote.message));
    if (remote.type === "report") {
      const failures = failuresOf(remote.summary);
      if (!failures) throw new Error(`${where}: protocol error: the remote escp's final report is not one escp writes`);
      report.merge(failures);
    }
    ch.send({ type: "bye" });
    clearInterval(progress);
    const summary = summarize(side, pool, started, report.failures);
    pool.close();
    child.stdin.end();
    // What the other end printed (a skipped FIFO, a warning) comes on ssh's stderr, which
    // sshd reads apart from the report: it reaches the user before we exit, as with scp.
    // The other end exits on `bye`; a stuck ssh does not hold us longer than this.
    // Reaping ssh, not only reading it to the end, puts its CPU time in ours (time(1), getrusage).
    await Promise.race([Promise.all([stderrTail.done, child.exited]), Bun.sleep(STDERR_GRACE_MS)]);
    return { summary, failures: report.failures };
  } catch (e) {
    if (e instanceof Interrupted) await Bun.sleep(100); // the runtime runs our SIGINT handler (interrupt, above)
    log.error(interrupted ? "interrupted" : `session failed: ${(e as Error).message}`);
    pool?.close(); // a library caller's process must not be kept alive by our workers
    side?.cleanup();
    child.kill();
    // A data stream's failure says only "stream 0: ..."; the user needs the host it was with.
    const message = (e as Error).message;
    const error = e instanceof ConnectionLost ? lostConnection(where, `${message} (seen here)`)
      : /^stream \d+: /.test(message) ? `${where}: ${message}` : message;
    return interrupted ? { failures: report.failures, interrupted } : { failures: report.failures, error, errorLine: e instanceof StartFailure ? e.line : undefined };
  } finally {
    stopWatching();
    dropSpares();
    signal?.removeEventListener("abort", interrupt);
  }
}

/** The control channel on the other end's stdio; what it prints on stderr reaches the user. */
function controlOf(child: ServerProcess, o: Options, where: string, report: Report) {
  const stderrTail = forwardStderr(child.stderr, o, () => report.makeRoom());
  const ch = new ControlChannel(child.stdout, (b) => {
    try {
      child.stdin.write(b);
      child.stdin.flush();
    } catch {}
  }, where, (text) => {
    if (!o.quiet) toStderr(`escp: warning: ${where} printed "${text.slice(0, 200)}" before escp started (a shell startup file? make non-interactive shells silent)\n`);
  });
  return { ch, stderrTail };
}

function sessionOptions(o: Options, streams: number): SessionOptions {
  return {
    recursive: o.recursive, preserve: o.preserve, compress: o.compress, zstdLevel: o.zstdLevel, direct: o.direct,
    resume: o.resume, verify: o.verify, sparse: o.sparse, inplace: o.inplace,
    limitBps: o.limitKbps ? (o.limitKbps * 1000) / 8 : 0, keepaliveS: o.keepaliveS, sockbuf: o.sockbuf ?? 0,
    verbose: o.verbose, log: o.log, fileWindow: fileWindow(streams),
  };
}

function hello(o: Options, plan: Plan, keys: SessionKeys, session: SessionOptions, streams: number, several: boolean): ControlMessage {
  return {
    type: "hello", version: PROTO_VERSION, sid: hex(keys.sid), key: hex(keys.master),
    serverRole: plan.dir === "pull" ? "sender" : "receiver", streams, blockSize: o.blockSize,
    options: session, ports: o.ports, anyPort: plan.dir === "local" || o.tunnel || undefined,
    target: plan.dir === "pull" ? undefined : plan.target,
    sources: plan.dir === "pull" ? plan.sources : undefined,
    multipleSources: several,
    pings: true,
  };
}

/** The other end's answer to hello, which must be `ready`: anything else is why the session cannot start. */
async function readyOf(
  m: ControlMessage | null, child: ServerProcess, where: string, stderrTail: ReturnType<typeof forwardStderr>, said: (m: string) => string,
): Promise<Extract<ControlMessage, { type: "ready" }>> {
  if (!m) throw await connectionFailure(where, child, stderrTail);
  if (m.type === "error") throw new Error(said(m.message));
  if (m.type === "hello") throw new Error(`${where} sent back escp's own first message instead of starting escp (a forced command in authorized_keys?)`);
  if (m.type !== "ready") throw new Error(`${where}: expected ready, got ${m.type}`);
  return m;
}

/**
 * Why `target`'s host would refuse it as a destination, if it would: its escp is
 * started and greeted as for a push, and left as soon as it answers (`ready` means it
 * took the target; closing its stdin then ends it). A relay asks as its pull starts,
 * as scp -3 fails before the data moves: a missing directory there is said in the
 * words of a direct copy, at the cost of one more login to that host.
 */
export async function destinationRefusal(o: Options, target: Extract<Operand, { kind: "remote" }>, several: boolean, report: Report): Promise<Pick<TransferResult, "error" | "errorLine"> | undefined> {
  const plan: Plan = { dir: "push", host: target, sources: [], target: target.path };
  const where = target.host;
  const child = startServer(o, plan);
  const { ch, stderrTail } = controlOf(child, o, where, report);
  const keys = newKeys();
  ch.send(hello(o, plan, keys, sessionOptions(o, 1), 1, several));
  keys.master.fill(0);
  try {
    await readyOf(await ch.receive(), child, where, stderrTail, (m) => `${where}: ${m}`);
    return undefined;
  } catch (e) {
    return { error: (e as Error).message, errorLine: e instanceof StartFailure ? e.line : undefined };
  } finally {
    child.stdin.end();
    await Promise.race([child.exited, Bun.sleep(STDERR_GRACE_MS)]);
    child.kill();
  }
}

/** The server's next message that is not a ping; each one, ping or not, is a sign of life. */
async function nextWord(ch: ControlChannel, silence: ReturnType<typeof watchSilence>, stall: StallWatch): Promise<ControlMessage | null> {
  for (;;) {
    const m = await ch.receive();
    silence.heard(m);
    if (m?.type !== "ping") return m;
    stall.heard(m.acked);
  }
}

/** How long a finished session waits for the rest of the other end's messages. */
const STDERR_GRACE_MS = 2000;

/** How often the progress display is refreshed from the stream counters. */
const PROGRESS_MS = 200;

/**
 * An error that only says a connection went away: a consequence, rarely the cause.
 * Besides our words for it (LOST_WORDS), an older remote escp's.
 */
function isHangup(message: string): boolean {
  return LOST_WORDS.test(message) || /connection closed|Connection reset|Broken pipe|cancelled/i.test(message);
}

/** The line for a session that broke: the host, then where and how, in plain words (scp says "lost connection"). */
function lostConnection(where: string, how: string): string {
  return `lost connection to ${where}: ${how}`;
}

/**
 * Both ends saw the session break: the one that names a cause (a record that
 * failed authentication, a full disk) wins over a mere hang-up. When both only
 * saw hang-ups, either may be the first, so both are shown.
 */
function rootCause(where: string, theirs: string, ours: Error, said: (m: string) => string): string {
  const theirsLost = isHangup(theirs), oursLost = ours instanceof ConnectionLost || isHangup(ours.message);
  if (theirsLost && oursLost) {
    return lostConnection(where, theirs === ours.message ? `${theirs} (seen by both ends)` : `${theirs} (seen by ${where}; here, ${ours.message})`);
  }
  return theirsLost ? ours.message : said(theirs);
}

/**
 * Where the data streams connect. ESCP_DATA_VIA=host:port sends them through
 * something in between (the tests' tampering proxy; a port forward): the
 * records are end-to-end authenticated, so a middle box can only break them.
 */
function dataAddress(addr: string, port: number): [string, number] {
  const via = process.env.ESCP_DATA_VIA;
  if (!via) return [addr, port];
  const i = via.lastIndexOf(":");
  return [via.slice(0, i).replace(/^\[|\]$/g, ""), Number(via.slice(i + 1))];
}

