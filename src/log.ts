/**
 * The debug log: what each end did and when, for a post-mortem. It is off
 * unless asked for: `-v` (repeatable) writes /tmp/escp.log.sender or
 * /tmp/escp.log.receiver by the role this process plays (the end running the
 * Sender writes .sender), `--log FILE` writes FILE instead. The server gets
 * both settings in hello.options, so each host logs its own end.
 *
 * One line per event, appended with one write(2) so two processes sharing a
 * file (a local copy with --log) never interleave within a line:
 *
 *   2025-11-25T19:57:00.123Z INFO  sender[4121] session start host=localhost direction=local streams=4
 *   2025-11-25T19:57:00.140Z DEBUG receiver[4133] file=3 file start path="dst/a.bin" size=50000000
 *   2025-11-25T19:57:00.201Z ERROR sender[4121] stream=2 stream failed: Connection reset by peer
 *
 * Levels: error, warn and info are written whenever logging is on; debug
 * (per file) from -v, trace from -vv. Logging never throws: a log that cannot
 * be opened is reported once on stderr and the transfer goes on.
 *
 * @example
 * import { log } from "./log.ts";
 * log.open({ role: "sender", verbose: 1 });
 * log.info("streams connected", { port: 1232, streams: 4 });
 * log.debug("file start", { file: 7n, path: "a.bin", size: 10 });
 */
import fs from "node:fs";
import { toStderr } from "./stderr.ts";
import { errnoText } from "./native.ts";

export type Level = "error" | "warn" | "info" | "debug" | "trace";
export type Role = "sender" | "receiver";

const RANK: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };

/** Extra facts for a line: `stream` and `file` (ids) come first, the rest as key=value. */
export type LogFields = { stream?: number; file?: bigint | number | string } & Record<string, unknown>;

export interface LogSettings {
  role: Role;
  /** -v count: 0 = off unless `file` is given, 1 = debug, 2+ = trace. */
  verbose: number;
  /** --log FILE: where to write (at least info level). */
  file?: string;
}

const APPEND = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND;

/**
 * Opens a log at a name in /tmp for appending only if it is this user's: never
 * through a symlink someone planted there, never into another user's file.
 */
function openOwn(path: string): number {
  const fd = fs.openSync(path, APPEND | fs.constants.O_NOFOLLOW, 0o600);
  if (fs.fstatSync(fd).uid === process.geteuid?.()) return fd;
  fs.closeSync(fd);
  throw Object.assign(new Error(`${path} belongs to another user`), { code: "EPERM" });
}

/** Where -v writes without --log (another user's file there: the same name with ".UID" added). */
export function defaultLogPath(role: Role): string {
  return `/tmp/escp.log.${role}`;
}

export class Logger {
  private fd = -1;
  private max = -1;
  private role: Role | "escp" = "escp";
  private path: string | undefined;

  /** Starts (or redirects, or stops) logging for this process; returns the file written, if any. */
  open(s: LogSettings): string | undefined {
    const max = s.verbose >= 2 ? RANK.trace : s.verbose >= 1 ? RANK.debug : s.file ? RANK.info : -1;
    this.role = s.role;
    this.max = max;
    const path = max < 0 ? undefined : (s.file ?? defaultLogPath(s.role));
    if (path === this.path && (this.fd >= 0 || !path)) return path;
    this.close();
    this.max = max;
    if (!path) return undefined;
    try {
      this.fd = s.file ? fs.openSync(path, APPEND, 0o600) : openOwn(path);
      this.path = path;
    } catch (e) {
      // The shared /tmp name is another user's: this user's own name beside it.
      if (!s.file) {
        const own = `${path}.${process.geteuid?.()}`;
        try {
          this.fd = openOwn(own);
          this.path = own;
          return own;
        } catch {}
      }
      this.max = -1;
      toStderr(`escp: warning: cannot write the log ${path}: ${errnoText(e)}\n`);
      return undefined;
    }
    return path;
  }

  /** The file being written, or undefined when logging is off. */
  get file(): string | undefined {
    return this.fd >= 0 ? this.path : undefined;
  }

  enabled(level: Level): boolean {
    return this.fd >= 0 && RANK[level] <= this.max;
  }

  error(message: string, fields?: LogFields): void {
    this.write("error", message, fields);
  }
  warn(message: string, fields?: LogFields): void {
    this.write("warn", message, fields);
  }
  info(message: string, fields?: LogFields): void {
    this.write("info", message, fields);
  }
  debug(message: string, fields?: LogFields): void {
    this.write("debug", message, fields);
  }
  trace(message: string, fields?: LogFields): void {
    this.write("trace", message, fields);
  }

  close(): void {
    if (this.fd >= 0) {
      try {
        fs.closeSync(this.fd);
      } catch {}
    }
    this.fd = -1;
    this.path = undefined;
    this.max = -1;
  }

  private write(level: Level, message: string, fields?: LogFields): void {
    if (!this.enabled(level)) return;
    try {
      fs.writeSync(this.fd, formatLine(new Date(), level, `${this.role}[${process.pid}]`, message, fields));
    } catch {
      // A full disk must not stop the transfer for the sake of its log.
    }
  }
}

/** One log line, newline included; exported for the tests. */
export function formatLine(when: Date, level: Level, who: string, message: string, fields?: LogFields): string {
  let head = `${when.toISOString()} ${level.toUpperCase().padEnd(5)} ${who}`;
  let tail = "";
  if (fields) {
    const { stream, file, ...rest } = fields;
    if (stream !== undefined) head += ` stream=${stream}`;
    if (file !== undefined) head += ` file=${file}`;
    for (const [k, v] of Object.entries(rest)) {
      if (v === undefined) continue;
      tail += ` ${k}=${formatValue(v)}`;
    }
  }
  return `${head} ${message.replace(/\n/g, "\\n")}${tail}\n`;
}

function formatValue(v: unknown): string {
  if (typeof v === "string") return /^[\w./:@+,-]+$/.test(v) ? v : JSON.stringify(v);
  if (typeof v === "bigint" || typeof v === "number" || typeof v === "boolean") return String(v);
  if (v instanceof Error) return JSON.stringify(v.message);
  try {
    return JSON.stringify(v, (_, x) => (typeof x === "bigint" ? x.toString() : x));
  } catch {
    return JSON.stringify(String(v));
  }
}

/** This process's log (one per process: each end of a session is its own process). */
export const log = new Logger();
