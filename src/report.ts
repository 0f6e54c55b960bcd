/**
 * What the user is told: per-file events from either side of the transfer,
 * failures as one line each on stderr ("escp: path: cause", as scp words
 * them), progress, and the summary. Each failure is printed once even when
 * both ends learn of it (they share file ids).
 *
 * Every event becomes one TransferEvent object. Where it goes depends on
 * the options:
 * - `json`: one line of JSON on stdout per event (docs/json.md);
 * - `tty` (stdout is a terminal, neither -q nor --json): the in-place
 *   progress display of progress.ts, then one summary line;
 * - `listener`: the library API (src/index.ts) gets every event object;
 * - otherwise nothing but failures and warnings on stderr, and with -q only
 *   failures and the warnings of sources left out (loud).
 *
 * @example
 * const ev = new Report({ quiet: false, json: false });
 * ev.failed("/data/a", "Permission denied");
 */
import { printable } from "./text.ts";
import type { TransferSummary } from "./protocol.ts";
import { Tally, TtyProgress, formatBytes, formatBits, type Terminal } from "./progress.ts";
import { log } from "./log.ts";
import { native } from "./native.ts";
import { VERSION } from "./version.ts";
import { dfgOnly } from "./jit.ts";
import { PROMPTS_URL } from "./entrypoints.ts";
import { toStderr } from "./stderr.ts";

/** The hooks the sender and receiver call; the server collects them for its report. */
export interface Events {
  started(path: string, size: number): void;
  finished(path: string, size: number): void;
  failed(subject: string, cause: string, id?: bigint): void;
  /** loud: a source left out (a FIFO, a loop), said even under -q, as scp does. */
  warning(message: string, loud?: boolean): void;
}

/** The session as the client sees it once the streams are up. */
export interface SessionInfo {
  host: string;
  direction: "push" | "pull" | "local";
  streams: number;
  blockSize: number;
  port: number;
}

/** Counters of all streams so far (bytes), read from shared memory every 200 ms. */
export interface ProgressSnapshot {
  bytesDisk: number;
  bytesNetwork: number;
  bytesCompressed: number;
  seconds: number;
}

/** What one side counted: files and bytes delivered (verified), of which skippedBytes never travelled. */
export interface TransferStats {
  files: number;
  bytes: number;
  skippedBytes: number;
  failures: number;
}

/** The display's terminal: stdout, drawn on only while the job is in the foreground. */
function stdoutTerminal(): Terminal {
  return {
    write: (s) => process.stdout.write(s),
    get columns() {
      return process.stdout.columns;
    },
    foreground: () => native().escp_tty_foreground(1) !== 0,
  };
}

export interface ReportOptions {
  quiet: boolean;
  json: boolean;
  /** Draw progress and the summary line on stdout (the CLI passes stdout.isTTY). Ignored with quiet or json. */
  tty?: boolean;
  /** Receives every event (the library API). */
  listener?: (e: TransferEvent) => void;
  /** Where the terminal display goes (tests); default process.stdout. */
  terminal?: Terminal;
}

export interface Failure {
  path: string;
  message: string;
  /** The file's id in the session, when the failing side knew it (decimal). */
  id?: string;
}

/**
 * The failures in the other end's final report, checked: it crosses the network,
 * and a remote that is not honest could send anything there. undefined when it is
 * not a list of { path, message, id? } strings.
 */
export function failuresOf(summary: unknown): Failure[] | undefined {
  const list = (summary as { failures?: unknown } | null | undefined)?.failures;
  if (!Array.isArray(list)) return undefined;
  const ok = list.every((f) => f !== null && typeof f === "object" && typeof f.path === "string" && typeof f.message === "string" && (f.id === undefined || (typeof f.id === "string" && /^\d{1,20}$/.test(f.id))));
  return ok ? (list as Failure[]) : undefined;
}

/** Exit statuses, as scp's (src/main.ts uses the same numbers): 0 only if every file arrived verified. */
export const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const;
export type ExitStatus = (typeof EXIT)[keyof typeof EXIT];

/** The exit status a transfer's outcome calls for. */
export function exitStatus(r: { error?: string; usage?: boolean; interrupted?: boolean; failures: unknown[] }): ExitStatus {
  if (r.interrupted) return EXIT.interrupted;
  if (r.error) return r.usage ? EXIT.usage : EXIT.failed;
  return r.failures.length ? EXIT.failed : EXIT.ok;
}

// ── the events, as --json prints them and the library delivers them (docs/json.md) ──

interface Stamp {
  /** When the event happened: ISO 8601, UTC, milliseconds. */
  time: string;
}
export interface SessionEvent extends Stamp, SessionInfo {
  event: "session";
  /** escp's version. */
  version: string;
  /** What this escp does: sender (push, local) or receiver (pull). */
  role: "sender" | "receiver";
}
export interface FileStartEvent extends Stamp {
  event: "file_start";
  path: string;
  size: number;
}
export interface FileDoneEvent extends Stamp {
  event: "file_done";
  path: string;
  size: number;
}
export interface FileFailedEvent extends Stamp {
  event: "file_failed";
  path: string;
  message: string;
  id?: string;
}
export interface WarningEvent extends Stamp {
  event: "warning";
  message: string;
}
export interface ProgressEvent extends Stamp, ProgressSnapshot {
  event: "progress";
  filesStarted: number;
  filesDone: number;
  filesFailed: number;
  bytesStarted: number;
  bytesDone: number;
  /** Bytes per second (disk counter) over the last few seconds. */
  rate: number;
}
export interface SummaryEvent extends Stamp, Omit<TransferSummary, "failures"> {
  event: "summary";
  /** Average bytes per second: bytes / seconds. */
  rate: number;
  /** How many files failed; `failed` lists them. */
  failures: number;
  failed: Failure[];
  /** The exit status escp returns. */
  exit: number;
}
export interface ErrorEvent extends Stamp {
  event: "error";
  /** One line: why the session could not run or went on no longer. */
  message: string;
  exit: number;
  interrupted?: boolean;
  usage?: boolean;
  /** Files that failed before the session ended. */
  failed: Failure[];
}
export type TransferEvent =
  | SessionEvent
  | FileStartEvent
  | FileDoneEvent
  | FileFailedEvent
  | WarningEvent
  | ProgressEvent
  | SummaryEvent
  | ErrorEvent;

/** How many unfinished files a failed session names on stderr (all are in --json). */
const NAMED_NOT_COPIED = 10;

/** --json progress lines come at most this often (the library's listener gets every sample). */
const JSON_PROGRESS_MS = 1000;

/** Collects events; prints failures as they happen unless told to only collect (the server). */
export class Report implements Events {
  /** The exit status a transfer's outcome calls for (exitStatus). */
  static readonly exitStatus = exitStatus;
  readonly failures: Failure[] = [];
  readonly tally = new Tally();
  private readonly seen = new Set<string>();
  private readonly display: TtyProgress | undefined;
  private readonly timers: ReturnType<typeof setInterval>[] = [];
  private lastJsonProgress = -Infinity;
  private ended = false;
  private role: "sender" | "receiver" = "sender";
  private stdoutClosed = false;
  /** Sessions so far: file ids are a session's own (a relay or several hosts run more than one). */
  private sessions = 0;
  /** How a path is shown: a relay shows the source host's path, not its spool's. */
  private shownAs = (p: string) => p;
  private fileEvents = true;
  /** Failed paths printed on stderr, and how many failures under each were not (failed). */
  private readonly printed = new Set<string>();
  private readonly unprinted = new Map<string, number>();

  constructor(
    private readonly opts: ReportOptions,
    private readonly print = true,
  ) {
    if (print && opts.tty && !opts.quiet && !opts.json) this.display = new TtyProgress(opts.terminal ?? stdoutTerminal(), this.tally);
  }

  session(info: SessionInfo): void {
    this.sessions++;
    this.role = info.direction === "pull" ? "receiver" : "sender";
    log.info("session start", { ...info, role: this.role });
    this.emit({ event: "session", time: now(), version: VERSION, role: this.role, ...info });
  }

  /**
   * Calls `sample` every `ms` and reports the snapshot as progress until the
   * report ends (close()), so a session that fails midway leaves no timer.
   */
  poll(ms: number, sample: () => ProgressSnapshot): ReturnType<typeof setInterval> {
    const t = setInterval(() => {
      if (this.ended) return clearInterval(t);
      this.progress(sample());
    }, ms);
    this.timers.push(t);
    return t;
  }

  progress(p: ProgressSnapshot): void {
    if (this.ended) return;
    this.tally.sample(p);
    this.display?.draw();
    if (!this.opts.listener && !(this.opts.json && this.print)) return;
    const t = this.tally;
    const ev: ProgressEvent = {
      event: "progress", time: now(), ...p,
      filesStarted: t.filesStarted, filesDone: t.filesDone, filesFailed: t.filesFailed,
      bytesStarted: t.bytesStarted, bytesDone: t.bytesDone, rate: Math.round(t.rate),
    };
    log.trace("progress", { disk: p.bytesDisk, network: p.bytesNetwork, files: t.filesDone });
    this.opts.listener?.(ev);
    if (p.seconds * 1000 - this.lastJsonProgress >= JSON_PROGRESS_MS) {
      this.lastJsonProgress = p.seconds * 1000;
      this.json(ev);
    }
  }

  /**
   * Shows every path `f` maps until the returned function is called: a relay
   * names files by where they come from, not by its spool. Without
   * `fileEvents`, files starting and arriving are not events meanwhile (the
   * relay's pull brings them only as far as its spool); failures still are.
   */
  showPathsAs(f: (p: string) => string, fileEvents = true): () => void {
    this.shownAs = f;
    this.fileEvents = fileEvents;
    return () => {
      this.shownAs = (p) => p;
      this.fileEvents = true;
    };
  }

  started(path: string, size: number): void {
    path = this.shownAs(path);
    this.tally.started(path, size);
    // Per file: the event (and its time stamp) only when someone takes it.
    if (this.listened && this.fileEvents) this.emit({ event: "file_start", time: now(), path, size });
  }

  finished(path: string, size: number): void {
    path = this.shownAs(path);
    this.tally.finished(path, size);
    if (this.listened && this.fileEvents) this.emit({ event: "file_done", time: now(), path, size });
  }

  /**
   * `shown`: true if the user saw it already (escp -R: on the source host's stderr,
   * passed on); text to print in place of the cause if they saw the cause (ssh's line).
   */
  failed(subject: string, cause: string, id?: bigint, shown: boolean | string = false): void {
    subject = this.shownAs(subject);
    const key = id === undefined ? `p:${subject}:${cause}` : `i:${this.sessions}:${id}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.tally.failed(subject);
    this.failures.push({ path: subject, message: cause, id: id?.toString() });
    log.warn(`file failed: ${cause}`, { file: id, path: subject });
    this.emit({ event: "file_failed", time: now(), path: subject, message: cause, id: id?.toString() });
    if (!this.print || shown === true) return;
    // A directory that could not be made fails everything in it: one line says so, as
    // scp's does, not one per file; close() gives the count, --json has each.
    const above = this.failedAbove(subject);
    if (above !== undefined) {
      this.unprinted.set(above, (this.unprinted.get(above) ?? 0) + 1);
      return;
    }
    this.printed.add(subject);
    this.stderr(`escp: ${subject ? subject + ": " : ""}${typeof shown === "string" ? shown : cause}\n`);
  }

  /** The printed failure that `p` lies under, if any. */
  private failedAbove(p: string): string | undefined {
    for (let i = p.lastIndexOf("/"); i > 0; i = p.lastIndexOf("/", i - 1)) {
      if (this.printed.has(p.slice(0, i))) return p.slice(0, i);
    }
    return undefined;
  }

  warning(message: string, loud = false): void {
    log.warn(message);
    this.emit({ event: "warning", time: now(), message });
    // A server (print off) has no report field for warnings: its stderr reaches the
    // user through ssh, where the client applies -q (KEPT_QUIET).
    if (!this.print || !this.opts.quiet || loud) this.stderr(`escp: warning: ${message}\n`);
  }

  /** Failures the peer found that we have not printed yet. */
  merge(remote: Failure[]): void {
    for (const f of remote) this.failed(f.path, f.message, f.id === undefined ? undefined : BigInt(f.id));
  }

  /** The transfer ran: its figures (one line on a terminal, an event otherwise). */
  summary(s: TransferSummary, exit: number = this.failures.length ? EXIT.failed : EXIT.ok): void {
    this.close();
    const ev: SummaryEvent = {
      event: "summary", time: now(), ...s, rate: s.seconds > 0 ? Math.round(s.bytes / s.seconds) : 0,
      failures: this.failures.length, failed: this.failures, exit,
    };
    log.info("session end", { files: s.files, bytes: s.bytes, network: s.bytesNetwork, disk: s.bytesDisk, seconds: s.seconds.toFixed(3), failures: this.failures.length });
    this.emit(ev);
    // In the background (bg, &), not over the shell's prompt: scp prints nothing there either.
    if (this.display?.inForeground()) {
      const width = Math.max(40, ((this.opts.terminal ?? process.stdout).columns || 80) - 3);
      const text = summaryLines(ev, width).join("\n");
      const output = (this.opts.terminal ?? process.stdout) as import("node:stream").Writable;
      // Loaded for this one line on a terminal, not at every start (entrypoints.ts).
      const { log: clackLog } = require(Bun.fileURLToPath(PROMPTS_URL)) as typeof import("./cli/prompts.ts");
      if (this.failures.length) clackLog.warn(`${text}\n${failedLine(this.failures, width)}`, { spacing: 0, output });
      else clackLog.success(text, { spacing: 0, output });
    }
  }

  /**
   * The session failed as a whole (or was interrupted): ends the display, says
   * why on stderr (`line` if the cause is on stderr already, e.g. ssh's own),
   * names the files it left unfinished and tells --json and the library.
   */
  error(message: string, exit: number, how: { interrupted?: boolean; usage?: boolean } = {}, line = message): void {
    this.close();
    log.error(`session failed: ${message}`, { exit });
    if (this.print) this.stderr(`escp: ${line}\n`);
    if (!how.interrupted) this.notCopied();
    this.emit({ event: "error", time: now(), message, exit, ...how, failed: this.failures });
  }

  /**
   * A failed session's files that were under way: each fails, and the first few are
   * named on stderr, as scp names the file it was copying; a count stands for the rest.
   */
  notCopied(): void {
    const paths = this.tally.unfinished();
    paths.forEach((p, i) => this.failed(p, "not copied", undefined, i >= NAMED_NOT_COPIED));
    const more = paths.length - NAMED_NOT_COPIED;
    if (more > 0 && this.print) this.stderr(`escp: ${more} more ${more === 1 ? "file" : "files"} not copied\n`);
  }

  /** Stops progress (timers, display); later progress samples are ignored. */
  close(): void {
    this.ended = true;
    for (const t of this.timers) clearInterval(t);
    this.timers.length = 0;
    this.display?.clear();
    for (const [dir, n] of this.unprinted) this.stderr(`escp: ${dir}: ${n} ${n === 1 ? "entry" : "entries"} under it not copied either\n`);
    this.unprinted.clear();
  }

  /** Erases the progress display before another program's text on our stderr (ssh's, the remote escp's); the next sample redraws it. */
  makeRoom(): void {
    this.display?.clear();
  }

  /** Erases the progress display before a message on stderr; the next sample redraws it. */
  private stderr(s: string): void {
    this.display?.clear();
    toStderr(printable(s.replace(/\n$/, "")) + "\n");
  }

  /** A library listener or --json output takes events. */
  private get listened(): boolean {
    return !!this.opts.listener || (!!this.opts.json && this.print);
  }

  private emit(ev: TransferEvent): void {
    this.opts.listener?.(ev);
    this.json(ev);
  }

  /**
   * Whoever read our stdout went away (`escp --json … | head -1`): the copy
   * goes on without output, as scp's does (its progress never goes to a pipe).
   */
  outputClosed(): void {
    this.stdoutClosed = true;
  }

  private json(o: object): void {
    if (this.opts.json && this.print && !this.stdoutClosed) process.stdout.write(JSON.stringify(o, (_, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
  }
}

function now(): string {
  return new Date().toISOString();
}

/**
 * What is left on the terminal after a transfer: one line, most important
 * first, parts that do not fit `width` left out:
 *   3 files, 1.50GiB in 12.3 s · 125MiB/s (1.05 Gbit/s) · 4 streams · network 1.50GiB, disk 1.50GiB, compressed 1.50GiB
 * The stream counters (EScp's bytes_network, bytes_disk, bytes_compressed)
 * get a second line when they do not fit and say something the first line
 * does not: compression saved bytes, or --resume skipped some.
 */
export function summaryLines(s: SummaryEvent, width: number): string[] {
  const files = `${s.files} ${s.files === 1 ? "file" : "files"}, ${formatBytes(s.bytes)} in ${s.seconds < 10 ? s.seconds.toFixed(2) : s.seconds.toFixed(1)} s`;
  const skipped = s.bytesSkipped ? ` (${formatBytes(s.bytesSkipped)} already there)` : "";
  const failed = s.failures ? `, ${s.failures} failed` : "";
  const counters = `network ${formatBytes(s.bytesNetwork)}, disk ${formatBytes(s.bytesDisk)}, compressed ${formatBytes(s.bytesCompressed)}`;
  const parts = [
    `${formatBytes(s.rate)}/s (${formatBits(s.rate)})`,
    `${s.streams} ${s.streams === 1 ? "stream" : "streams"}`,
    counters,
  ];
  let line = files + skipped + failed;
  for (const p of parts) {
    if (line.length + 3 + p.length > width) {
      const telling = s.bytesSkipped > 0 || s.bytesCompressed < 0.99 * s.bytesDisk;
      return telling ? [line, counters] : [line];
    }
    line += ` · ${p}`;
  }
  return [line];
}

/** "failed: a.bin, b/c.txt and 3 more", within width. */
export function failedLine(failures: Failure[], width: number): string {
  let line = "failed:";
  let i = 0;
  for (; i < failures.length; i++) {
    const name = printable(failures[i].path || failures[i].message);
    const more = failures.length - i - 1;
    const next = `${line}${i ? "," : ""} ${name}`;
    if (next.length + (more ? ` and ${more} more`.length : 0) > width && i > 0) break;
    line = next;
  }
  return i < failures.length ? `${line} and ${failures.length - i} more` : line;
}

dfgOnly(Report.prototype);
