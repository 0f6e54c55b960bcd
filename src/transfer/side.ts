/**
 * One end of a transfer, whichever process it runs in: the sender walks and
 * sends the sources, the receiver settles files under the target. The client
 * and the server both run exactly one of these over their stream pool.
 */
import fs from "node:fs";
import { formatBytes } from "../progress.ts";
import { native } from "../native.ts";
import { Sender, WINDOW } from "./sender.ts";
import { Receiver } from "./receiver.ts";
import type { StreamPool } from "../streams/pool.ts";
import type { Events, TransferStats } from "../report.ts";
import type { SessionOptions, TransferSummary } from "../protocol.ts";
import type { Target } from "../plan/target.ts";
import type { Request } from "../plan/request.ts";

export interface Side {
  run(): Promise<void>;
  readonly stats: TransferStats;
  /** After an interrupt or fatal error: temporary files go (unless --resume keeps them). */
  cleanup(): void;
}

/** request: a pull's, what its remote sender may announce; a push's receiver trusts the client that started it. */
export type SideSpec = { role: "receiver"; target: Target; request?: Request } | { role: "sender"; sources: string[] };

/** session.fileWindow is the other end's (see fileWindow); the sender keeps the smaller of both. */
export function makeSide(spec: SideSpec, pool: StreamPool, session: SessionOptions, blockSize: number, events: Events): Side {
  const opts = { ...session, blockSize, fileWindow: sharedWindow(fileWindow(pool.dataStreams), session.fileWindow) };
  if (spec.role === "receiver") return new Receiver(pool, spec.target, { ...opts, request: spec.request }, events);
  const sender = new Sender(pool, opts, events);
  return { run: () => sender.run(spec.sources), stats: sender.stats, cleanup: () => {} };
}

/** The figures both the report message and the user's summary carry. */
export function summarize(side: Side, pool: StreamPool, startedMs: number, failures: TransferSummary["failures"]): TransferSummary {
  return {
    files: side.stats.files,
    bytes: side.stats.bytes,
    bytesSkipped: side.stats.skippedBytes,
    ...pool.totals(),
    seconds: (performance.now() - startedMs) / 1000,
    failures,
    streams: pool.dataStreams,
  };
}

/**
 * How many files this process can hold open at once for a transfer of `streams`
 * data streams: each file in flight is an open descriptor on both ends, so half
 * of `ulimit -n` less what the runtime and directory handles take and what each
 * stream takes (its socket, its worker's), between 8 and the sender's WINDOW.
 * The sending end uses the smaller of both ends' (SessionOptions.fileWindow).
 */
export function fileWindow(streams: number): number {
  return Math.max(8, Math.min(WINDOW, Math.floor(openFilesLimit() / 2) - 64 - FDS_PER_STREAM * (streams + 1)));
}

/** Descriptors a session takes whatever its streams (the runtime's, a few directories and files), and each stream's. */
const BASE_FDS = 32, FDS_PER_STREAM = 4;

/**
 * The most of `streams` data streams `ulimit -n` leaves room for, with why when they
 * are fewer (a warning, as for memory): a copy that asked for more than the descriptors
 * allow gets fewer, instead of files failing with "Too many open files". 0: not even one.
 */
export function streamsFilesAllow(streams: number): { streams: number; why?: string } {
  const limit = openFilesLimit(), fit = Math.max(0, Math.floor((limit - BASE_FDS) / FDS_PER_STREAM) - 1);
  if (fit < 1) return { streams: 0, why: `too few file descriptors: ulimit -n is ${limit}, and a copy needs ${BASE_FDS + 2 * FDS_PER_STREAM} or more` };
  if (fit >= streams) return { streams };
  return { streams: fit, why: `ulimit -n is ${limit}, which leaves room for ${fit} of the ${streams} streams asked for: using ${fit} (raise it with ulimit -n)` };
}

/**
 * The data streams a copy into `target` may use: one when it is on FUSE, where a
 * user-space filesystem may need each file written front to back (fusefat drops
 * blocks written out of order and reports success; others refuse them), which one
 * stream does; `streams` elsewhere.
 *
 * @example
 * streamsTargetTakes(resolveTarget("/mnt/usb/", { multipleSources: false }), 4); // 1 on fusefat
 */
export function streamsTargetTakes(target: Target, streams: number): number {
  return streams > 1 && native().escp_on_fuse(target.rootFd) === 1 ? 1 : streams;
}

/** Blocks a data stream holds at once each way: ESCP_PIPE_DEPTH read ahead or written behind, and the one at work. */
const BLOCKS_PER_STREAM = 5;
/** Buffers this small are not weighed against the host's memory (-t 4 -b 1M takes 20 MiB). */
const SMALL_BUFFERS = 256 * 2 ** 20;

/**
 * The most of `streams` data streams whose buffers fit in `share` of the memory this
 * host has available (its MemAvailable, or less under a cgroup's limit), rather than an
 * out-of-memory kill mid-copy: `-t 64 -b 64M -C` asks for 40 GiB. With why, when they
 * are fewer; 0 when not even one fits. The client takes half; the server a little more,
 * so that streams the client already cut on the same host are not cut again because
 * the free memory moved in between.
 */
export function streamsMemoryAllows(streams: number, blockSize: number, compress: boolean, share = 0.5): { streams: number; why?: string } {
  const each = BLOCKS_PER_STREAM * (blockSize + 8192) * (compress ? 2 : 1);
  if (streams * each <= SMALL_BUFFERS) return { streams };
  const available = memoryAvailable(), budget = available * share;
  const fit = Math.min(streams, Math.floor(budget / each));
  if (fit >= streams) return { streams };
  const have = `this host has ${formatBytes(available)} of memory available`;
  const ask = `-b ${blockSize % 2 ** 20 ? `${blockSize / 1024}K` : `${blockSize / 2 ** 20}M`}${compress ? " with -C" : ""}`;
  if (fit < 1) return { streams: 0, why: `${ask} takes ${formatBytes(each)} of buffers per stream, and ${have}: use a smaller -b` };
  return { streams: fit, why: `${streams} streams of ${ask} would take ${formatBytes(streams * each)} of buffers, and ${have}: using ${fit} streams` };
}

/** Bytes of memory this process may still take: MemAvailable, less where a cgroup (v2 or v1) limits it. */
function memoryAvailable(): number {
  const read = (p: string) => {
    try {
      return fs.readFileSync(p, "utf8");
    } catch {
      return "";
    }
  };
  let avail = Number(/MemAvailable:\s+(\d+) kB/.exec(read("/proc/meminfo"))?.[1] ?? 0) * 1024 || Infinity;
  for (const line of read("/proc/self/cgroup").split("\n")) {
    const [, controllers, where] = line.split(":");
    const dir = controllers === "" ? `/sys/fs/cgroup${where}` : controllers === "memory" ? `/sys/fs/cgroup/memory${where}` : undefined;
    if (!dir) continue;
    const [limit, used] = controllers === "" ? ["memory.max", "memory.current"] : ["memory.limit_in_bytes", "memory.usage_in_bytes"];
    const left = Number(read(`${dir}/${limit}`) || NaN) - Number(read(`${dir}/${used}`) || NaN);
    if (left >= 0) avail = Math.min(avail, left); // "max", or no such file: NaN, no limit
  }
  return avail;
}

/**
 * The smaller of `ours` and the other end's window, when that is a whole number
 * of at least 1; anything else is ignored (NaN from a hostile server would
 * otherwise lift the bound on open files).
 *
 * @example
 * sharedWindow(512, 64);         // 64
 * sharedWindow(512, Number.NaN); // 512
 */
export function sharedWindow(ours: number, theirs: unknown): number {
  return Number.isInteger(theirs) && (theirs as number) >= 1 ? Math.min(ours, theirs as number) : ours;
}

/** The soft RLIMIT_NOFILE of this process (Bun raises it to the hard limit at start), or 1024. */
export function openFilesLimit(): number {
  return (limit ??= readLimit());
}
let limit: number | undefined;

function readLimit(): number {
  try {
    const line = fs.readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith("Max open files"));
    const soft = line?.split(/\s{2,}/)[1];
    return soft === "unlimited" ? 1 << 20 : Number(soft) || 1024;
  } catch {
    return 1024;
  }
}
