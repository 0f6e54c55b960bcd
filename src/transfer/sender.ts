/**
 * The sending side of a session, wherever it runs (the local escp on push,
 * the remote `escp --server` on pull). Per file it decides: open, announce in
 * a FILES record, cut into blocks for the stream workers, check the file did
 * not change while it was read, send DONE with the digest of what was read,
 * and learn the receiver's verdict from RESULT. The bytes themselves only
 * ever pass through ffi/loops.c.
 */
import { native, cstrNow, ptr, nativeError, codeText, Rec, E, WORK_SIZE, DIRECT_MIN, STAT_SLOTS, statTimeNs } from "../native.ts";
import { encodeFiles, decodeVerdicts, decodeResume, STATUS_SKIPPED, ProtocolError, LEFT_INCOMPLETE, type FileEntry, type FileVerdict, type SessionOptions } from "../protocol.ts";
import { walkBatches, type WalkItem } from "../plan/walk.ts";
import { FileDigest, sameDigest } from "./digest.ts";
import { VerdictBatch } from "./verdicts.ts";
import { DirHandles, dirHandles } from "./dirs.ts";
import type { StreamPool, BlockDone } from "../streams/pool.ts";
import type { Events, TransferStats } from "../report.ts";
import { log } from "../log.ts";
import { dfgOnly } from "../jit.ts";
import { Collector } from "../heap.ts";
import { slice } from "./slices.ts";
import { nextDataBlock } from "./holes.ts";

/** recursive, direct, resume (wait for the receiver's RESUME offer, send only what it lacks) and sparse (holes never travel). */
export type SenderOptions = Pick<SessionOptions, "recursive" | "direct" | "resume" | "sparse" | "fileWindow" | "limitBps"> & { blockSize: number };

/** Files announced but not yet judged by the receiver, at most; bounds open fds and memory. */
export const WINDOW = 512;
const BATCH_ITEMS = 64;
const BATCH_BYTES = 8 << 20;
/** With -l, a batch takes at most about this long on its stream (its blocks' DONEs wait for its end). */
const PACED_BATCH_S = 0.5;
const ANNOUNCE_BATCH = 256;
const ANNOUNCE_BYTES = 16 << 20;

interface SendFile {
  id: bigint;
  path: string; // as the user named it (for messages)
  rel: string;
  fd: number;
  direct: boolean;
  size: bigint;
  mtimeNs: bigint;
  next: bigint; // next offset to hand to a worker
  outstanding: number; // blocks handed out, not yet reported
  sent: bigint;
  digest: FileDigest;
  error?: string;
  doneSent: boolean;
  ourDigest?: Uint8Array;
  /** A verdict that came before our DONE (the receiver refused the file): applied once DONE is out. */
  early?: FileVerdict;
  /**
   * Its size is what a read found, not what stat says: "made" (/proc's files say 0, and
   * change on every read), or "grown" (a file of 0 bytes at the open that reads as more:
   * being written; only its time is compared at the end, which its writer changes).
   */
  madeUp?: "made" | "grown";
  /** --resume: blocks the receiver already has (index → 1); cursor waits until the offer is complete. */
  have?: Uint8Array;
  awaitingOffer: boolean;
}

export class Sender {
  private nextId = 0n;
  private readonly inflight = new Map<bigint, SendFile>();
  private readonly cursors: SendFile[] = [];
  private announce: FileEntry[] = [];
  private announcedBytes = 0;
  private windowWaiter: (() => void) | undefined;
  private peerEnded: (() => void) | undefined;
  private fatal: Error | undefined;
  /** --resume offers, answered one at a time (offer). */
  private offers: Promise<void> = Promise.resolve();
  private readonly lib = native();
  /** Each file in flight is an open descriptor here and at the receiver: both ends' limits bound it. */
  private readonly window: number;
  /** Sources are opened relative to their directory: one path walk per directory, not per file. */
  private readonly dirs: DirHandles;
  private readonly dones: VerdictBatch;
  private readonly gc = new Collector();
  /** Per device: whether its filesystem makes files as they are read (escp_made_on_read). */
  private readonly pseudoDevs = new Map<bigint, boolean>();
  readonly stats: TransferStats = { files: 0, bytes: 0, skippedBytes: 0, failures: 0 };

  constructor(
    private readonly pool: StreamPool,
    private readonly opts: SenderOptions,
    private readonly events: Events,
  ) {
    this.dones = new VerdictBatch(pool, Rec.DONE);
    this.window = opts.fileWindow ?? WINDOW;
    // Directory handles come out of the same descriptors as the files in flight.
    this.dirs = new DirHandles(undefined, dirHandles(this.window));
    pool.onDone = (blocks) => this.blocksDone(blocks);
    // A worker finished a batch: feed it; announce early only if it would otherwise starve.
    pool.onIdle = () => this.pump(this.cursors.length === 0);
    pool.onRecord = (type, _flags, body) => this.record(type, body);
    pool.onFatal = (e) => this.die(e);
  }

  /** Sends every source; resolves when the receiver has judged every file. */
  async run(sources: string[]): Promise<void> {
    for await (const batch of walkBatches(sources, { recursive: this.opts.recursive })) {
      for (const item of batch) {
        this.check();
        this.take(item);
        if (this.announce.length >= ANNOUNCE_BATCH || this.announcedBytes >= ANNOUNCE_BYTES) this.pump(true);
        if (this.inflight.size >= this.window) {
          // Refill in large steps: waking per verdict would announce one file at a time.
          this.pump(true);
          while (this.inflight.size > this.window / 2) await this.verdicts();
        }
      }
    }
    this.dirs.close();
    this.pump(true);
    while (this.inflight.size > 0) await this.verdicts();
    await this.pool.finish();
    this.check();
    const ended = new Promise<void>((r) => (this.peerEnded = r));
    this.pool.sendControl(Rec.END, null);
    await ended;
    this.check();
  }

  /** Waits for the next verdict (or a fatal error, which it throws). */
  private async verdicts(): Promise<void> {
    this.check();
    await new Promise<void>((r) => (this.windowWaiter = r));
    this.check();
  }

  private take(item: WalkItem): void {
    this.gc.tick();
    if (item.kind === "error") {
      this.stats.failures++;
      this.events.failed(item.abs, item.message);
      return;
    }
    if (item.kind === "warning") {
      this.events.warning(`${item.abs}: ${item.message}`, true);
      return;
    }
    if (item.kind === "dir") {
      const st = item.stat;
      this.announce.push({
        id: this.nextId++, path: item.rel, kind: "dir", size: 0n, mode: st.mode, mtimeNs: st.mtimeNs, atimeNs: st.atimeNs, top: item.top, merge: item.merge,
      });
      return;
    }
    const slash = item.abs.lastIndexOf("/");
    const dfd = this.dirs.get(slash < 0 ? "." : item.abs.slice(0, slash) || "/");
    const isDirect = IS_DIRECT;
    // Size and times come from the open file, so a file replaced after the walk is seen as it is read.
    const st = STAT;
    let fd = dfd < 0 ? dfd : this.lib.escp_openat_read(dfd, cstrNow(item.abs.slice(slash + 1)), this.opts.direct ? DIRECT_MIN : -1, ptr(isDirect), ptr(st));
    if (fd < 0) {
      this.stats.failures++;
      this.events.failed(item.abs, dfd < 0 ? codeText(dfd) : nativeError(fd).replace(/^[^]*: (?=[A-Z])/, ""));
      return;
    }
    const mode = Number(st[2]) & 0o7777, mtimeNs = statTimeNs(st, 1), atimeNs = statTimeNs(st, 5), statSize = st[0];
    // A /proc file's size is 0, and a /sys file's 4096 is a page, not its length; what
    // they read as changes from one read to the next: such a file is read to its end once,
    // and that copy is what is announced and sent (read twice, the second read was cut
    // to the first one's length: a line lost, and "verified").
    const pseudo = this.madeOnRead(st[3], fd);
    if (pseudo) {
      const snap = this.lib.escp_snapshot(fd, BigInt(MADE_UP_MAX));
      this.lib.escp_close(fd);
      if (snap < 0) {
        this.stats.failures++;
        this.events.failed(item.abs, snap === -27 /* EFBIG */ ? `it reads as more than ${MADE_UP_MAX >> 20} MiB, though its size says ${statSize}: not copied` : codeText(snap));
        return;
      }
      fd = snap;
    }
    // A regular file of 0 bytes may be being written: read for what it holds now.
    const read = pseudo ? fstat(fd)[0] : statSize === 0n ? readSize(fd, statSize) : 0n;
    if (typeof read === "string") {
      this.lib.escp_close(fd);
      this.stats.failures++;
      this.events.failed(item.abs, read);
      return;
    }
    const entry: FileEntry = {
      id: this.nextId++, path: item.rel, kind: "file", size: pseudo ? read : read || statSize, mode, mtimeNs, atimeNs, top: item.top,
    };
    const f: SendFile = {
      id: entry.id, path: item.abs, rel: item.rel, fd, direct: !pseudo && isDirect[0] === 1, size: entry.size,
      mtimeNs: entry.mtimeNs, next: 0n, outstanding: 0, sent: 0n, digest: new FileDigest(), doneSent: false,
      awaitingOffer: this.opts.resume, madeUp: pseudo ? "made" : read > 0n ? "grown" : undefined,
    };
    this.inflight.set(f.id, f);
    this.announce.push(entry);
    this.announcedBytes += Number(entry.size);
    this.events.started(item.abs, Number(entry.size));
    if (log.enabled("debug")) log.debug("file start", { file: entry.id, path: item.abs, size: entry.size });
  }

  private madeOnRead(dev: bigint, fd: number): boolean {
    let pseudo = this.pseudoDevs.get(dev);
    if (pseudo === undefined) this.pseudoDevs.set(dev, (pseudo = this.lib.escp_made_on_read(fd) === 1));
    return pseudo;
  }

  /**
   * Announces pending entries (when flush), then feeds workers while they have
   * room. Entries wait to be announced in batches so that many small files
   * share one FILES record and one worker batch.
   */
  private pump(flush: boolean): void {
    if (this.fatal) return;
    if (flush && this.announce.length) {
      this.pool.sendControl(Rec.FILES, encodeFiles(this.announce));
      const announced = this.announce;
      this.announce = [];
      this.announcedBytes = 0;
      // Only announced files may have blocks in flight. Empty files have no blocks:
      // their DONE can go right away (after the offer, with --resume).
      for (const e of announced) {
        const f = e.kind === "file" ? this.inflight.get(e.id) : undefined;
        if (!f || f.awaitingOffer) continue;
        if (f.size === 0n) this.readFinished(f);
        else this.cursors.push(f);
      }
    }
    while (this.cursors.length && this.pool.hasRoom()) {
      const items = this.nextBatch();
      if (!items) break;
      this.pool.offer(items);
    }
    this.dones.flush();
  }

  private nextBatch(): Uint8Array | null {
    const buf = new Uint8Array(BATCH_ITEMS * WORK_SIZE);
    const dv = new DataView(buf.buffer);
    const bs = BigInt(this.opts.blockSize);
    let n = 0;
    let bytes = 0;
    const cap = this.batchBytes();
    while (n < BATCH_ITEMS && bytes < cap && this.cursors.length) {
      const f = this.cursors[0];
      if (f.next >= f.size) {
        this.cursors.shift();
        continue;
      }
      const len = f.size - f.next < bs ? Number(f.size - f.next) : this.opts.blockSize;
      const skipTo = this.skipTarget(f, len);
      if (skipTo > f.next) {
        f.next = skipTo;
        if (f.next >= f.size) {
          this.cursors.shift();
          if (f.outstanding === 0) this.readFinished(f);
        }
        continue;
      }
      const o = n * WORK_SIZE;
      dv.setBigUint64(o, f.id, true);
      dv.setBigUint64(o + 8, f.next, true);
      dv.setUint32(o + 16, len, true);
      dv.setInt32(o + 20, f.fd, true);
      dv.setInt32(o + 24, f.direct ? 1 : 0, true);
      f.next += BigInt(len);
      f.outstanding++;
      n++;
      bytes += len;
      if (f.next >= f.size) this.cursors.shift();
    }
    return n ? buf.slice(0, n * WORK_SIZE) : null;
  }

  /**
   * How many bytes the next batch may take: BATCH_BYTES, but one block at a
   * time once one file is all that is left and its rest would fill fewer
   * batches than there are streams, so that those blocks go out over every
   * stream (a 6 MiB file went as one batch on one stream: with -l, paced at a
   * quarter of the limit; and the end of every large file waited on one).
   */
  private batchBytes(): number {
    const full = this.fullBatch();
    if (this.cursors.length !== 1 || this.pool.dataStreams === 1) return full;
    const rest = Number(this.cursors[0].size - this.cursors[0].next);
    return rest > this.pool.dataStreams * full ? full : this.opts.blockSize;
  }

  /**
   * BATCH_BYTES, or under -l what a stream sends in PACED_BATCH_S: a batch reports its
   * blocks when it ends, so 8 MiB at 1.25 MB/s held every file in it (and its commit at
   * the receiver) for 6 s, work a kill then lost.
   */
  private fullBatch(): number {
    if (!(this.opts.limitBps > 0)) return BATCH_BYTES;
    const paced = Math.floor((this.opts.limitBps / this.pool.dataStreams) * PACED_BATCH_S);
    return Math.min(BATCH_BYTES, Math.max(this.opts.blockSize, paced));
  }

  /**
   * Where f's cursor may jump to without sending: past a block the receiver
   * already has (--resume), or past holes (--sparse: the receiver's file keeps
   * them, as its size is set at the end), or to the end of a file the receiver
   * refused. f.next when the block must travel.
   */
  private skipTarget(f: SendFile, len: number): bigint {
    if (f.early) return f.size; // the receiver refused the file: the rest of it would go nowhere
    const bs = BigInt(this.opts.blockSize);
    if (f.have?.[Number(f.next / bs)]) return f.next + BigInt(len);
    return this.opts.sparse && !this.opts.resume ? nextDataBlock(f.fd, f.next, bs, f.size) : f.next;
  }

  private blocksDone(blocks: BlockDone[]): void {
    for (const b of blocks) {
      const f = this.inflight.get(b.fileId);
      if (!f) continue;
      f.outstanding--;
      if (b.status < 0) {
        f.error ??= b.status === E.CHANGED ? "file changed while being read (it is shorter than when the copy started)" : codeText(b.status);
      } else {
        f.sent += BigInt(b.len);
        f.digest.add(b.offset, b.len, b.hash);
      }
      if (f.outstanding === 0 && f.next >= f.size) this.readFinished(f);
    }
    this.dones.flush();
  }

  /** Every block of f has been read and sent (or failed): tell the receiver what it should have. */
  private readFinished(f: SendFile): void {
    if (f.doneSent) return;
    f.doneSent = true;
    if (!f.error && f.madeUp !== "made") {
      const st = fstat(f.fd);
      if ((BigInt(st[0]) !== f.size && !f.madeUp) || statTimeNs(st, 1) !== f.mtimeNs) f.error = "file changed while being read (size or modification time differs)";
    }
    this.lib.escp_close(f.fd);
    const digest = f.digest.final();
    // "source\0cause", as RESULT's "destination\0cause": a pull's receiver names the file where it went wrong.
    const verdict: FileVerdict = { id: f.id, status: f.error ? E.CHANGED : 0, bytes: f.sent, digest, message: f.error ? `${f.path}\0${f.error}` : "" };
    f.ourDigest = digest;
    this.dones.add(verdict);
    if (f.early) this.result(f.early);
  }

  private record(type: number, body: Uint8Array): void {
    try {
      if (type === Rec.RESULT) for (const v of decodeVerdicts(body)) this.result(v);
      // One offer at a time, in order: hashing our side of one is whole-file work, in slices.
      else if (type === Rec.RESUME) this.offers = this.offers.then(() => this.offer(body)).catch((e) => this.die(e as Error));
      else if (type === Rec.END) this.peerEnded?.();
      else if (type === Rec.ERROR) this.die(new Error(new TextDecoder().decode(body)));
      else this.die(new Error(`receiver sent an unexpected record type ${type} on stream 0`));
    } catch (e) {
      this.die(e as Error);
    }
  }

  private result(v: FileVerdict): void {
    const f = this.inflight.get(v.id);
    if (!f) {
      // A directory the receiver refused: we keep no state for directories.
      if (v.status !== 0) this.receiverFailure(v);
      return;
    }
    if (v.status === STATUS_SKIPPED && f.awaitingOffer) {
      // --resume: the receiver has this file complete and identical.
      this.inflight.delete(v.id);
      this.lib.escp_close(f.fd);
      f.digest.discard();
      this.stats.files++;
      this.stats.bytes += Number(f.size);
      this.stats.skippedBytes += Number(f.size);
      this.events.finished(f.path, Number(f.size));
      log.debug("file done: the receiver has it already", { file: f.id });
      this.windowWaiter?.();
      return;
    }
    if (f.awaitingOffer && v.status < 0) {
      // --resume: refused before its offer, which will now never come; nothing of it travels.
      f.awaitingOffer = false;
      f.early = v;
      f.next = f.size;
      this.readFinished(f);
      return;
    }
    if (!f.doneSent) {
      f.early = v; // its blocks are still in flight; the receiver drops them
      return;
    }
    this.inflight.delete(v.id);
    const ours = f.ourDigest;
    let problem = f.error;
    if (!problem && v.status !== 0) {
      this.receiverFailure(v);
    } else if (!problem && (!ours || !sameDigest(ours, v.digest) || v.bytes !== f.size)) {
      problem = "integrity check failed: the receiver's digest differs from the sender's";
    }
    if (problem) {
      // Ours comes first (the source changed); the receiver's says what that left at the target.
      if (v.status !== 0 && v.message.endsWith(LEFT_INCOMPLETE)) problem += `; ${LEFT_INCOMPLETE}`;
      this.stats.failures++;
      this.events.failed(f.path, problem, f.id);
    } else if (v.status === 0) {
      this.stats.files++;
      this.stats.bytes += Number(f.size);
      this.events.finished(f.path, Number(f.size));
      if (log.enabled("debug")) log.debug("file done: verified by the receiver", { file: f.id, bytes: f.sent });
    }
    this.windowWaiter?.();
  }

  /**
   * --resume: the receiver lists digests of blocks it holds; ours are computed
   * from the source (local reads only), and matching blocks are never sent.
   */
  private async offer(body: Uint8Array): Promise<void> {
    const r = decodeResume(body);
    const f = this.inflight.get(r.id);
    if (!f || !f.awaitingOffer) throw new ProtocolError(`RESUME for file id ${r.id}, which awaits none`);
    const bs = BigInt(this.opts.blockSize);
    const blocks = Number((f.size + bs - 1n) / bs);
    f.have ??= new Uint8Array(blocks);
    const ours = new Uint8Array(16);
    for (let i = 0; i < r.hashes.length / 16; i++) {
      const idx = r.first + i;
      if (idx >= blocks || this.fatal) break;
      const off = BigInt(idx) * bs;
      const len = f.size - off < bs ? f.size - off : bs;
      if (this.lib.escp_hash_range(f.fd, off, len, ptr(ours)) < 0) continue; // unreadable now: just send it
      const theirs = r.hashes.subarray(i * 16, i * 16 + 16);
      if (sameDigest(ours, theirs)) {
        f.have[idx] = 1;
        f.digest.add(off, Number(len), theirs);
        this.stats.skippedBytes += Number(len);
      }
      await slice();
    }
    if (!r.last || this.fatal) return;
    f.awaitingOffer = false;
    if (f.size === 0n) this.readFinished(f);
    else this.cursors.push(f);
    this.pump(false);
  }

  /** The receiver's RESULT message is "destination\0cause". */
  private receiverFailure(v: FileVerdict): void {
    const [subject, cause] = v.message.includes("\0") ? v.message.split("\0", 2) : ["", v.message || codeText(v.status)];
    this.stats.failures++;
    this.events.failed(subject, cause, v.id);
  }

  private die(e: Error): void {
    this.fatal ??= e;
    this.windowWaiter?.();
    this.peerEnded?.();
  }

  private check(): void {
    if (this.fatal) throw this.fatal;
  }
}

/** A file whose size is 0, or made as read, is read this far, at most: to learn how much it holds, or to keep what it made. */
const MADE_UP_MAX = 64 << 20;
const MADE_UP_BUF = new Uint8Array(64 << 10);

/**
 * What a read of fd from its start finds, in bytes: for a regular file whose size
 * is 0 at the open, which a writer may be filling (scp reads to the end; sent as
 * size 0 it arrived empty and "verified"). Why not, past MADE_UP_MAX or when the
 * read fails.
 */
function readSize(fd: number, statSize: bigint): bigint | string {
  let total = 0;
  for (;;) {
    const n = Number(native().escp_pread(fd, ptr(MADE_UP_BUF), MADE_UP_BUF.length, BigInt(total)));
    if (n < 0) return codeText(n);
    if (n === 0) return BigInt(total);
    total += n;
    if (total > MADE_UP_MAX) return `it reads as more than ${MADE_UP_MAX >> 20} MiB, though its size says ${statSize}: not copied`;
  }
}

/** Scratch for the native calls of one file at a time on this thread (read before the next call). */
const STAT = new BigInt64Array(STAT_SLOTS), IS_DIRECT = new Int32Array(1);

/** escp_fstat's fields of an open fd (native.ts STAT_SLOTS), in a scratch array valid until the next call. */
export function fstat(fd: number): BigInt64Array {
  const out = STAT;
  const r = native().escp_fstat(fd, ptr(out));
  if (r < 0) throw new Error(nativeError(r));
  return out;
}

dfgOnly(Sender.prototype, fstat, readSize);
