/**
 * Progress as the user sees it: the running tally of files (from the
 * started/finished/failed events), the byte rate (from the shared stream
 * counters the client samples every 200 ms), and the terminal display built
 * from both. Nothing here is on the data path: the display only reads what
 * the events left behind, and draws at most once per progress event.
 *
 * On a terminal it looks like scp, plus a total line once there is more
 * than one file:
 *
 *   data/run42/part-0007.h5                       63%  645MiB  1.12GiB/s  00:01 ETA
 *   7/120 files  6.91GiB/12.0GiB  57%  1.12GiB/s  00:04 ETA
 *
 * Both lines are redrawn in place (carriage return, cursor up one line,
 * erase to end of line after the new text, so nothing blinks), fit the
 * terminal's current width, and are erased when the transfer ends.
 *
 * @example
 * const tally = new Tally();
 * tally.started("a.bin", 100);
 * tally.sample({ bytesDisk: 40, bytesNetwork: 40, bytesCompressed: 40, seconds: 0.2 });
 * new TtyProgress(process.stdout, tally).draw();
 */
import { printable } from "./text.ts";
import type { ProgressSnapshot } from "./report.ts";
import { dfgOnly } from "./jit.ts";

/** A file being transferred: what started() said. */
interface Active {
  path: string;
  size: number;
}

/** How far the transfer is, from the events and the counters. */
export class Tally {
  filesStarted = 0;
  filesDone = 0;
  filesFailed = 0;
  bytesStarted = 0;
  bytesFinished = 0;
  /** Bytes of failed files (counted as consumed: they were read or refused). */
  bytesFailed = 0;
  last: ProgressSnapshot = { bytesDisk: 0, bytesNetwork: 0, bytesCompressed: 0, seconds: 0 };
  private readonly active = new Map<string, Active>();
  /** (seconds, bytesDisk) pairs of the last few seconds; the session's start counts as one. */
  private readonly samples: { t: number; b: number }[] = [{ t: 0, b: 0 }];
  /** When the disk counter last moved (seconds since the session started). */
  private movedAt = 0;

  started(path: string, size: number): void {
    this.filesStarted++;
    this.bytesStarted += size;
    this.active.set(path, { path, size });
  }

  finished(path: string, size: number): void {
    this.filesDone++;
    this.bytesFinished += size;
    // A file skipped by --resume may finish without a start.
    if (!this.active.delete(path)) {
      this.filesStarted++;
      this.bytesStarted += size;
    }
  }

  failed(path: string): void {
    this.filesFailed++;
    const a = this.active.get(path);
    if (a) {
      this.active.delete(path);
      this.bytesFailed += a.size;
    }
  }

  sample(p: ProgressSnapshot): void {
    if (p.bytesDisk !== this.last.bytesDisk) this.movedAt = p.seconds;
    this.last = p;
    this.samples.push({ t: p.seconds, b: p.bytesDisk });
    // Keep about RATE_WINDOW_S of history: the rate follows changes within seconds.
    while (this.samples.length > 2 && p.seconds - this.samples[1].t >= RATE_WINDOW_S) this.samples.shift();
  }

  /** Bytes per second over the last few seconds (0 before two samples). */
  get rate(): number {
    const a = this.samples[0];
    const b = this.samples[this.samples.length - 1];
    return b.t > a.t ? Math.max(0, (b.b - a.b) / (b.t - a.t)) : 0;
  }

  /** Seconds since the byte counters last moved. */
  get stalledFor(): number {
    return this.last.seconds - this.movedAt;
  }

  /** Bytes of the files known so far that are done, by the larger of verdicts and the disk counter. */
  get bytesDone(): number {
    return Math.min(this.bytesStarted, Math.max(this.bytesFinished + this.bytesFailed, this.last.bytesDisk));
  }

  /** Files with neither verdict yet. */
  get inFlight(): number {
    return this.active.size;
  }

  /** Files started that will get no verdict, and are no failure of theirs: a pull called off (relay.ts). */
  forgetUnfinished(): void {
    this.active.clear();
  }

  /** The paths of the files with neither verdict yet, oldest first. */
  unfinished(): string[] {
    return [...this.active.keys()];
  }

  /**
   * The file the bytes are going into now, and how many of its bytes are
   * through: the oldest unfinished file the disk counter has not passed yet.
   * Files are read in the order they start, so this is exact for one file
   * and close for many.
   */
  current(): { path: string; size: number; done: number } | undefined {
    let left = this.last.bytesDisk - this.bytesFinished - this.bytesFailed;
    let lastSeen: Active | undefined;
    let n = 0;
    for (const a of this.active.values()) {
      lastSeen = a;
      if (left < a.size || ++n > 256) return { path: a.path, size: a.size, done: Math.max(0, Math.min(a.size, left)) };
      left -= a.size;
    }
    return lastSeen && { path: lastSeen.path, size: lastSeen.size, done: lastSeen.size };
  }
}

const RATE_WINDOW_S = 3;
/** After this long without a byte, the ETA says so (as scp's "- stalled -"). */
const STALLED_S = 5;

/** Where the display goes: a terminal (stdout) or anything that acts like one in the tests. */
export interface Terminal {
  write(s: string): unknown;
  columns?: number;
  /** False while the job is in the background (Ctrl-Z then bg, or &): nothing is drawn over the shell's prompt then. */
  foreground?(): boolean;
}

/** The in-place display on a terminal; draw() on each progress event, clear() before anything else is printed. */
export class TtyProgress {
  private lines = 0;
  private lastFrame = "";

  constructor(
    private readonly out: Terminal,
    private readonly tally: Tally,
  ) {}

  /** Whether the job is in the terminal's foreground (else nothing is drawn). */
  inForeground(): boolean {
    return this.out.foreground?.() !== false;
  }

  draw(): void {
    if (!this.inForeground()) return;
    // One column less than the terminal's: a line that fills it would wrap on some, and the redraw would climb one line too few.
    const width = Math.max(1, (this.out.columns || 80) - 1);
    const rows = renderLines(this.tally, width);
    if (!rows.length) return;
    const frame = rows.join("\n");
    if (frame === this.lastFrame && this.lines === rows.length) return;
    // Back to the start of what we drew last time, then overwrite; \x1b[K erases what is left of each old line.
    let s = this.lines > 1 ? `\r\x1b[${this.lines - 1}A` : "\r";
    // \r before \n: a terminal whose driver does not add it (raw mode) still starts the line at column 0.
    s += rows.map((r) => `${r}\x1b[K`).join("\r\n");
    // Fewer lines than last time (the last file done, two lines become one): the old ones below go too.
    if (rows.length < this.lines) s += "\x1b[J";
    this.out.write(s);
    this.lines = rows.length;
    this.lastFrame = frame;
  }

  /** Erases the display, leaving the cursor where it started. */
  clear(): void {
    if (!this.lines) return;
    if (!this.inForeground()) return void (this.lines = 0); // what is on screen now is the shell's
    let s = "\r\x1b[K";
    for (let i = 1; i < this.lines; i++) s += "\x1b[1A\r\x1b[K";
    this.out.write(s);
    this.lines = 0;
    this.lastFrame = "";
  }
}

/** The display's lines for a terminal `width` columns wide (each at most width characters). */
export function renderLines(t: Tally, width: number): string[] {
  const cur = t.current();
  if (!cur && t.filesStarted === 0) return [];
  const rate = t.rate;
  const stalled = t.stalledFor >= STALLED_S;
  const rows: string[] = [];
  if (cur) {
    const pct = cur.size > 0 ? Math.floor((100 * cur.done) / cur.size) : 100;
    const fields = [` ${`${pct}%`.padStart(4)}`, ` ${formatBytes(cur.done).padStart(7)}`, ` ${`${formatBytes(rate)}/s`.padStart(10)}`, ` ${stalled ? "- stalled -" : `${formatEta(cur.size - cur.done, rate)} ETA`}`];
    rows.push(fit(printable(cur.path), fields, width));
  }
  if (t.filesStarted > 1) {
    const done = t.bytesDone;
    const pct = t.bytesStarted > 0 ? Math.floor((100 * done) / t.bytesStarted) : 100;
    const failed = t.filesFailed ? ` (${t.filesFailed} failed)` : "";
    const fields = [
      `${t.filesDone}/${t.filesStarted} files${failed}`, `${formatBytes(done)}/${formatBytes(t.bytesStarted)}`, `${pct}%`,
      `${formatBytes(rate)}/s`, stalled ? "- stalled -" : `${formatEta(t.bytesStarted - done, rate)} ETA`,
    ];
    let n = fields.length;
    while (n > 1 && fields.slice(0, n).join("  ").length > width) n--;
    rows.push(cut(fields.slice(0, n).join("  "), width));
  }
  return rows;
}

/**
 * name, padded or cut from the left ("…tail"), then the fields (each with its
 * leading space) that fit width: a narrow terminal loses them whole, the last
 * first, never a digit of one.
 */
function fit(name: string, fields: string[], width: number): string {
  const chars = [...name];
  let n = fields.length;
  let right = fields.join("");
  while (n > 1 && width - right.length < Math.min(4, chars.length)) right = fields.slice(0, --n).join("");
  const room = width - right.length;
  if (room < 1) return cut(right.trimStart(), width);
  const shown = chars.length > room ? (room > 1 ? "…" + chars.slice(-(room - 1)).join("") : "…") : name;
  return shown.padEnd(room) + right;
}

/** text, or as much of it as fits in width with "…" for the rest: never a number cut without a sign. */
function cut(text: string, width: number): string {
  return text.length <= width ? text : text.slice(0, Math.max(0, width - 1)) + "…".slice(0, width);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 1536 → "1.50KiB": three significant digits, binary units (as scp's KB/MB, named exactly). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) n = 0;
  let u = 0;
  while (n >= 1000 && u < UNITS.length - 1) {
    n /= 1024;
    u++;
  }
  if (u === 0) return `${Math.round(n)}B`;
  return `${n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2)}${UNITS[u]}`;
}

/** Seconds left at `rate` as mm:ss or h:mm:ss; "--:--" when there is no rate yet. */
export function formatEta(bytesLeft: number, rate: number): string {
  if (bytesLeft <= 0) return "00:00";
  if (!(rate > 0)) return "--:--";
  return formatDuration(bytesLeft / rate);
}

export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const mmss = `${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  return h ? `${h}:${mmss}` : mmss;
}

/** A rate in bits per second, as network people quote it: "9.41 Gbit/s". */
export function formatBits(bytesPerSecond: number): string {
  let v = bytesPerSecond * 8;
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[u]}`;
}

dfgOnly(Tally.prototype);
