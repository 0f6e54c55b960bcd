/**
 * What the user is told: per-file events from either side of the transfer,
 * failures as one line each on stderr ("escp: path: cause", as scp words
 * them), and the summary. Each failure is printed once even when both ends
 * learn of it (they share file ids).
 *
 * @example
 * const ev = new Report({ quiet: false, json: false });
 * ev.failed("/data/a", "Permission denied");
 */
import type { TransferSummary } from "./protocol.ts";

/** The hooks the sender and receiver call; the server collects them for its report. */
export interface Events {
  started(path: string, size: number): void;
  finished(path: string, size: number): void;
  failed(subject: string, cause: string, id?: bigint): void;
  warning(message: string): void;
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

export interface ReportOptions {
  quiet: boolean;
  json: boolean;
}

export interface Failure {
  path: string;
  message: string;
  id?: string;
}

/** Collects events; prints failures as they happen unless told to only collect (the server). */
export class Report implements Events {
  readonly failures: Failure[] = [];
  private readonly seen = new Set<string>();

  constructor(
    private readonly opts: ReportOptions,
    private readonly print = true,
  ) {}

  session(info: SessionInfo): void {
    this.json({ event: "session", ...info });
  }

  progress(p: ProgressSnapshot): void {
    this.json({ event: "progress", ...p });
  }

  started(path: string, size: number): void {
    this.json({ event: "file_start", path, size });
  }

  finished(path: string, size: number): void {
    this.json({ event: "file_done", path, size });
  }

  failed(subject: string, cause: string, id?: bigint): void {
    const key = id === undefined ? `p:${subject}:${cause}` : `i:${id}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.failures.push({ path: subject, message: cause, id: id?.toString() });
    this.json({ event: "file_failed", path: subject, message: cause });
    if (this.print) process.stderr.write(`escp: ${subject ? subject + ": " : ""}${cause}\n`);
  }

  warning(message: string): void {
    if (this.print && !this.opts.quiet) process.stderr.write(`escp: warning: ${message}\n`);
  }

  /** Failures the peer found that we have not printed yet. */
  merge(remote: Failure[]): void {
    for (const f of remote) this.failed(f.path, f.message, f.id === undefined ? undefined : BigInt(f.id));
  }

  summary(s: TransferSummary): void {
    this.json({ event: "summary", ...s, failures: this.failures.length, failed: this.failures });
  }

  private json(o: object): void {
    if (this.opts.json && this.print) process.stdout.write(JSON.stringify(o, (_, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
  }
}
