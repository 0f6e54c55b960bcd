/**
 * `escp -R a:x b:y`, scp -R's way between two remote hosts: this escp starts
 * escp on the source host (found or bootstrapped there as a server is) and
 * hands it the copy as a command line; that one pushes straight to the
 * target over its own ssh and data streams. The bytes never pass through
 * here, so two data-transfer nodes copy at their own speed, and nothing is
 * spooled on this host as a relay (-3, the default) must. The source host
 * needs its own way into the target: its keys, or the agent -A lends it.
 *
 * The source host's escp reports in --json: its events drive this end's
 * progress display and summary (or go as they are to a --json reader), its
 * stderr reaches the user as it comes, and its exit status becomes ours.
 * The command line travels on stdin, not through
 * the remote shell, so no quoting stands between a file's name and escp; the
 * end of stdin means the escp that asked is gone (interrupted, killed, its
 * connection lost), and stops the copy there, temporary files removed.
 *
 * @example
 * // here, for `escp -R -r dtn1:/data dtn2:/archive/`:
 * await fromSource(o, [{ kind: "remote", host: "dtn1", path: "/data" }], { kind: "remote", host: "dtn2", path: "/archive/" }, report);
 * // on dtn1, `escp --origin`:
 * const order = await receiveCopy(); // { argv: ["-r", "--json", "--", "/data", "dtn2:/archive/"], gone }
 */
import { defaultOptions, type Options } from "../cli/args.ts";
import { formatOperand, parseOperand, type Operand, type RemoteOperand } from "../cli/operands.ts";
import { expandSources } from "../plan/sources.ts";
import { EXIT, type Report, type TransferEvent } from "../report.ts";
import type { TransferSummary } from "../protocol.ts";
import type { TransferResult } from "./client.ts";
import { ControlChannel, encodeFrame } from "./control.ts";
import { connectionFailure, forwardStderr, KEPT_QUIET, startRemote } from "./remote.ts";

/** Given -q, the escp there prints only failures, each named once and counted here as shown: those and ssh's errors go through. */
const FAILURES_THERE = new RegExp(`${KEPT_QUIET.source}|^escp: (?!warning: )`, "im");

/** Runs the copy of `sources` (all on one host) to `target` on that host, as escp -R. */
export async function fromSource(
  o: Options, sources: Operand[], target: RemoteOperand, report: Report, signal?: AbortSignal, several = sources.length > 1,
): Promise<TransferResult> {
  const host = sources[0] as RemoteOperand;
  const where = host.host;
  // Several places copied in turn (client.ts inTurn): each must go into the target directory.
  const into = several && target.path !== "" && !target.path.endsWith("/") ? { ...target, path: `${target.path}/` } : target;
  // It always reports in --json: a --json reader here gets its events as they are; otherwise
  // they drive this end's progress display, summary and library events.
  const argv = [...copyFlags({ ...o, json: true }), "--", ...sources.map((s) => asLocalOperand(s.path)), formatOperand(into)];
  const child = startRemote(o, host, "--origin");
  const stderrTail = forwardStderr(child.stderr, o, () => report.makeRoom(), FAILURES_THERE);
  let summary: TransferSummary | undefined;
  let failedThere = false; // its session failed as a whole (it printed why)
  let answered = false; // it started the copy (its first event came)
  const stdoutDone = (async () => {
    const lines = (child.stdout as any as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    if (o.json) {
      for (let r = await lines.next(); !r.done; r = await lines.next()) {
        answered = true;
        process.stdout.write(r.value);
      }
      return;
    }
    let text = "";
    for (let r = await lines.next(); !r.done; r = await lines.next()) {
      answered = true;
      text += Buffer.from(r.value).toString("utf8");
      const complete = text.lastIndexOf("\n") + 1;
      for (const line of text.slice(0, complete).split("\n")) {
        if (!line) continue;
        const ev = replayLine(report, line);
        if (ev?.event === "summary") summary = ev.summary;
        if (ev?.event === "error") failedThere = true;
      }
      text = text.slice(complete);
    }
  })().catch(() => {});
  child.stdin.write(encodeFrame({ type: "copy", argv }));
  child.stdin.flush();
  const stop = () => child.kill();
  signal?.addEventListener("abort", stop);
  try {
    const code = await child.exited;
    await Promise.all([stdoutDone, stderrTail.done]);
    if (signal?.aborted || code === EXIT.interrupted) return { failures: report.failures, interrupted: true };
    if (code === EXIT.ok) return { summary, failures: report.failures };
    // It named every failure itself, on the stderr we passed on.
    if (code === EXIT.failed) {
      // Its message names the target, not where it ran: say that it came from there.
      if (failedThere) return { failures: report.failures, error: `${where}: the copy escp ran there for -R failed (above)` };
      return { summary, failures: report.failures.length ? report.failures : [{ path: formatOperand(host), message: `the copy on ${where} failed` }] };
    }
    if (code === EXIT.usage) return { failures: report.failures, error: `${where}: escp there refused the copy's command line`, usage: true };
    // Mid-copy, the escp there or an ssh hop was killed: not a start-up failure.
    if (answered) return { failures: report.failures, error: `${where}: the escp running the copy there (-R) or its ssh connection went away mid-copy (status ${code})` };
    const failure = await connectionFailure(where, child, stderrTail);
    return { failures: report.failures, error: failure.message, errorLine: failure.line };
  } finally {
    signal?.removeEventListener("abort", stop);
    child.stdin.end();
  }
}

/** Shows one of the source host's events here; what the caller needs of it comes back. Other text goes on as it is. */
function replayLine(report: Report, line: string): { event: "summary"; summary: TransferSummary } | { event: "error" } | undefined {
  let ev: TransferEvent;
  try {
    ev = JSON.parse(line);
  } catch {
    process.stdout.write(`${line}\n`);
    return;
  }
  switch (ev.event) {
    case "session":
      report.session({ host: ev.host, direction: ev.direction, streams: ev.streams, blockSize: ev.blockSize, port: ev.port });
      return;
    case "progress":
      report.progress({ bytesDisk: ev.bytesDisk, bytesNetwork: ev.bytesNetwork, bytesCompressed: ev.bytesCompressed, seconds: ev.seconds });
      return;
    case "file_start":
      report.started(ev.path, ev.size);
      return;
    case "file_done":
      report.finished(ev.path, ev.size);
      return;
    case "file_failed":
      report.failed(ev.path, ev.message, undefined, true);
      return;
    case "summary": {
      const { event: _e, time: _t, rate: _r, failures: _n, failed, exit: _x, ...totals } = ev;
      return { event: "summary", summary: { ...totals, failures: failed } };
    }
    case "error":
      return { event: "error" };
  }
}

/**
 * The source host's half: the copy's command line from stdin, and a promise
 * that settles when stdin ends. Null when what came is not a copy.
 */
export async function receiveCopy(): Promise<{ argv: string[]; gone: Promise<void> } | null> {
  const ch = new ControlChannel(Bun.stdin.stream(), () => {}, "the connecting escp");
  const m = await ch.receive().catch(() => null);
  if (m?.type !== "copy" || !Array.isArray(m.argv) || !m.argv.every((a) => typeof a === "string")) return null;
  const gone = (async () => {
    // Keepalive pings until the connecting escp goes.
    while ((await ch.receive().catch(() => null)) !== null);
  })();
  return { argv: m.argv, gone };
}

/**
 * The sources as the source host's escp must read them: relative to the home
 * directory (where ssh starts commands), `~` expanded and globs matched there
 * as a server does for a pull; a pattern that matches nothing stays, to fail
 * by its name.
 */
export function sourcesHere(sources: Operand[]): Operand[] {
  const { paths, missing } = expandSources(sources.map((s) => s.path));
  return [...paths, ...missing.map((m) => m.path)].map((p) => ({ kind: "local", path: p }));
}

/** A source host's path as an operand its escp reads as local (a relative `a:b` would name a host). */
function asLocalOperand(p: string): string {
  if (p === "") return "~";
  return parseOperand(p).kind === "local" ? p : `./${p}`;
}

/** The options that shape the copy, as flags, where they differ from escp's defaults; ssh's are for the first hop only, as scp's. */
function copyFlags(o: Options): string[] {
  const d = defaultOptions();
  const f: string[] = [];
  const on = (set: boolean, ...flag: string[]) => set && f.push(...flag);
  on(o.recursive, "-r");
  on(o.preserve, "-p");
  on(o.quiet, "-q");
  for (let i = 0; i < o.verbose; i++) f.push("-v");
  on(o.json, "--json");
  on(o.compress, "-C");
  on(o.zstdLevel !== d.zstdLevel, "--zstd-level", String(o.zstdLevel));
  on(o.threads !== d.threads, "-t", String(o.threads));
  on(o.blockSize !== d.blockSize, "-b", String(o.blockSize));
  on(o.limitKbps !== undefined, "-l", String(o.limitKbps));
  on(o.ports[0] !== d.ports[0] || o.ports[1] !== d.ports[1], "--port", `${o.ports[0]}-${o.ports[1]}`);
  on(o.sockbuf !== undefined, "--sockbuf", String(o.sockbuf));
  on(o.tunnel, "--tunnel");
  on(o.sparse, "--sparse");
  on(!o.direct, "--nodirect");
  on(o.resume, "--resume");
  on(o.verify, "--verify");
  on(o.inplace, "--inplace");
  on(o.keepaliveS !== d.keepaliveS, "--keepalive", String(o.keepaliveS));
  on(!o.bootstrap, "--no-bootstrap");
  return f;
}
