/**
 * `escp --server`: the remote end, started by the connecting escp over ssh
 * (or as a local child). It reads `hello` from stdin, listens, says `ready`,
 * accepts the streams and then sends or receives. It lives only as long as
 * its stdin: when the ssh session ends it removes its temporary files and
 * exits, so no receiver is ever left behind.
 */
import { hostName } from "../system.ts";
import { ControlChannel, watchSilence } from "./control.ts";
import { StallWatch } from "../streams/stall.ts";
import { listen, acceptStreams, tuneStreams } from "./connect.ts";
import { PROTO_VERSION, gcmBackend, prepareGcm, nativeSource } from "../native.ts";
import { StreamPool, prestartStreamWorkers } from "../streams/pool.ts";
import { prestartWalker } from "../plan/walk.ts";
import { makeSide, summarize, fileWindow, streamsFilesAllow, streamsMemoryAllows, streamsTargetTakes, type Side } from "../transfer/side.ts";
import { resolveTarget } from "../plan/target.ts";
import { expandSources, streamsFor } from "../plan/sources.ts";
import { Report } from "../report.ts";
import { log } from "../log.ts";
import type { ControlMessage } from "../protocol.ts";
import { toStderr } from "../stderr.ts";

/** The control channel arrives on stdin (ssh's, or the local client's pipe). */
const STDIN_FD = 0;

export async function runServer(): Promise<number> {
  // A FileSink, not process.stdout: making that stream costs ≈ 3 ms, and the first
  // frame written (`ready`) would wait for it.
  const out = Bun.stdout.writer();
  // A write into a pipe whose reader went (the connecting escp gave up on us while we
  // were stopped, then our ping) fails with EPIPE: that is the lifeline's end too.
  let gone: () => void = () => process.exit(1);
  const write = (b: Uint8Array) => {
    try {
      out.write(b);
      Promise.resolve(out.flush()).catch(() => gone());
    } catch {
      gone();
    }
  };
  try {
    return await serve(new ControlChannel(Bun.stdin.stream(), write, "the connecting escp"), (f) => (gone = f));
  } finally {
    await Promise.resolve(out.flush()).catch(() => {}); // the last frame (an error, the report) reaches the pipe before we exit
  }
}

/** `onGone` takes what to do when the control channel's far end is found gone. */
async function serve(ch: ControlChannel, onGone: (f: () => void) => void): Promise<number> {
  // Every copy has stream 0 and at least one data stream: their workers boot (~12 ms)
  // while hello is read and answered, not after the streams have connected.
  prestartStreamWorkers(1);
  const hello = await ch.receive();
  if (!hello) return 1;
  if (hello.type !== "hello") {
    // A ping first: the hello before it went to something else (a startup file reading stdin).
    const lost = hello.type === "ping" ? " (did a shell startup file there read escp's input?)" : "";
    ch.send({ type: "error", message: `expected hello, got ${hello.type}${lost}` });
    return 1;
  }
  if (hello.version !== PROTO_VERSION) {
    ch.send({ type: "error", version: PROTO_VERSION, message: `protocol version mismatch: this escp speaks ${PROTO_VERSION}, the local one ${hello.version}` });
    return 1;
  }
  // The AES-GCM implementation is chosen on another core while we get to accepting the streams.
  prepareGcm();
  log.open({ role: hello.serverRole, verbose: hello.options.verbose, file: hello.options.log });
  log.info("hello", { role: hello.serverRole, streams: hello.streams, blockSize: hello.blockSize, ports: hello.ports, target: hello.target, sources: hello.sources });
  const report = new Report({ quiet: true, json: false }, false);
  let pool: StreamPool | undefined;
  let side: Side | undefined;
  let pinging: ReturnType<typeof setInterval> | undefined;
  let stall: StallWatch | undefined;
  // The ssh session is our lifeline: when it goes, so do we (and our temporary files).
  let finished = false;
  /** Ends this process now, removing temporary files (unless --resume keeps them). */
  const giveUp = (why?: string): never => {
    if (why) toStderr(`escp --server: ${why}\n`);
    pool?.abort();
    side?.cleanup();
    process.exit(1);
  };
  onGone(() => giveUp());
  // The client kills its local --server child with SIGTERM; a hang-up comes with a lost terminal.
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(sig, () => giveUp());
  const lifeline = (async () => {
    // The connecting escp hung or vanished behind a live ssh connection.
    const silence = watchSilence(hello.options.keepaliveS, () => giveUp(`no word from the connecting escp for ${3 * hello.options.keepaliveS} s: giving up`));
    for (;;) {
      const m = await ch.receive().catch(() => null);
      silence.heard(m);
      if (m?.type === "ping") stall?.heard(m.acked);
      if (m === null || m.type === "bye") break;
    }
    silence.stop();
    if (!finished) giveUp();
  })();
  try {
    const target = hello.serverRole === "receiver"
      ? resolveTarget(hello.target ?? "", { multipleSources: !!hello.multipleSources })
      : undefined;
    const sources = expandSources(hello.serverRole === "sender" ? hello.sources ?? [] : []);
    const threads = target ? streamsTargetTakes(target, hello.streams) : hello.streams;
    const files = streamsFilesAllow(target ? threads : streamsFor(sources.paths, threads, hello.blockSize));
    if (files.streams < 1) throw new Error(files.why);
    if (files.why) report.warning(`${hostName()}: ${files.why}`);
    const memory = streamsMemoryAllows(files.streams, hello.blockSize, hello.options.compress, 0.6);
    if (memory.streams < 1) throw new Error(`${hostName()}: ${memory.why}`);
    if (memory.why) report.warning(`${hostName()}: ${memory.why}`);
    const streams = memory.streams;
    const bindAddr = sshServerAddress() ?? "127.0.0.1";
    const l = listen(bindAddr, hello.ports, hostName, hello.anyPort === true);
    log.info("listening", { addr: bindAddr, port: l.port, streams });
    const pings = !!hello.pings && hello.options.keepaliveS > 0;
    ch.send({ type: "ready", version: PROTO_VERSION, port: l.port, addr: bindAddr, fileWindow: fileWindow(streams), streams, pings, sources: target ? undefined : sources.paths.length });
    // Our workers boot while `ready` travels and the streams connect (spare.ts); before
    // it, creating them would hold `ready` back (a few ms each on this thread).
    prestartStreamWorkers(streams);
    if (hello.serverRole === "sender") prestartWalker(sources.paths, { recursive: hello.options.recursive });
    const keys = { sid: Buffer.from(hello.sid, "hex"), master: Buffer.from(hello.key, "hex") };
    const conns = acceptStreams(l, keys, streams, 30_000, STDIN_FD);
    keys.master.fill(0);
    log.info("streams accepted", { streams: conns.length - 1, port: l.port, aes: gcmBackend(), lib: nativeSource() });
    const capped = tuneStreams(conns, hello.options.limitBps, hello.options.keepaliveS, hello.options.sockbuf);
    if (capped) report.warning(`${hostName()}: ${capped}`);
    const started = performance.now();
    pool = new StreamPool(conns, hello.serverRole, { blockSize: hello.blockSize, zstdLevel: hello.options.compress ? hello.options.zstdLevel : 0 });
    // Words, but no bytes (streams/stall.ts): the client is told why, and we end.
    stall = new StallWatch(conns, hello.options.keepaliveS, (why) => {
      ch.send({ type: "error", message: `${hostName()}: ${why}` });
      giveUp();
    });
    // A client that takes pings gives up on us after three silent intervals (control.ts):
    // that is how a pull learns its sender was stopped, which the data streams never tell.
    if (pings) {
      pinging = setInterval(() => ch.send({ type: "ping", acked: stall!.acked() }), hello.options.keepaliveS * 1000);
      (pinging as any).unref?.();
    }
    for (const s of sources.missing) report.failed(s.path, s.message);
    side = makeSide(target ? { role: "receiver", target } : { role: "sender", sources: sources.paths }, pool, hello.options, hello.blockSize, report);
    await side.run();
    finished = true;
    log.info("session end", { files: side.stats.files, bytes: side.stats.bytes, failures: report.failures.length });
    ch.send({ type: "report", summary: summarize(side, pool, started, report.failures) });
  } catch (e) {
    log.error(`session failed: ${(e as Error).message}`);
    finished = true;
    side?.cleanup();
    pool?.abort();
    ch.send({ type: "error", message: (e as Error).message } satisfies ControlMessage);
  }
  clearInterval(pinging);
  await lifeline;
  return 0;
}

/** The address the ssh client reached us on: the data streams use the same one. */
function sshServerAddress(): string | undefined {
  const parts = (process.env.SSH_CONNECTION ?? "").split(" ");
  return parts.length === 4 ? parts[2] : undefined;
}
