/**
 * The main thread's side of the streams: one worker per TCP stream, the
 * shared memory they report through (counters, cancel flag, the receiver's
 * file table), and stream 0's outgoing records, which the main thread seals
 * and sends itself (they are small; its incoming half has a worker).
 *
 * @example
 * const pool = new StreamPool(conns, "sender", { blockSize, zstdLevel });
 * pool.onDone = (entries) => ...;
 * pool.offer(batch);
 */
import {
  native, nativePath, nativeError, ptr, Rec, E, COUNTERS_SIZE, FDSLOT_SIZE, FD_CREATE, FD_CREATING, FD_CLAIMED, FD_AWAITED, SLOT_DIRECT, SLOT_UNNAMED, type Pointer,
} from "../native.ts";
import { WORKER_URL } from "../entrypoints.ts";
import type { FromWorker, ToWorker, WorkerInit } from "./messages.ts";
import { log } from "../log.ts";
import { prestart, takeWorker } from "./spare.ts";
import { dfgOnly } from "../jit.ts";

export interface PoolOptions {
  blockSize: number;
  zstdLevel: number;
  cpumask?: string;
  nodemask?: string;
}

/** Per-block outcome decoded from escp_done. */
export interface BlockDone {
  fileId: bigint;
  offset: bigint;
  len: number;
  status: number;
  hash: Uint8Array;
}

export interface StreamCounters {
  bytesDisk: number;
  bytesNetwork: number;
  bytesCompressed: number;
}

/** Receiver file table capacity: more than the sender's window of open files, a power of two. */
export const TABLE_CAP = 4096;
const SLOT_MASK = BigInt(TABLE_CAP - 1);
/** An escp_fdslot is FDSLOT_SIZE (40) bytes: 5 u64 or 10 i32. */
const SLOT_U64 = FDSLOT_SIZE / 8, SLOT_I32 = FDSLOT_SIZE / 4;

/** Boots the workers of a pool of `streams` data streams ahead of time, less any already booting (see spare.ts). */
export function prestartStreamWorkers(streams: number): void {
  prestart(WORKER_URL, streams + 1, { kind: "load", libPath: nativePath() } satisfies ToWorker);
}

export class StreamPool {
  readonly cancel = new SharedArrayBuffer(4);
  readonly counters: SharedArrayBuffer;
  readonly table = new SharedArrayBuffer(TABLE_CAP * FDSLOT_SIZE);
  readonly tableGen = new SharedArrayBuffer(4);
  /** The table and its generation, seen as the fields' types (one view each, not one per call). */
  private readonly slotU64 = new BigUint64Array(this.table);
  private readonly slotI32 = new Int32Array(this.table);
  private readonly gen = new Int32Array(this.tableGen);
  private readonly workers: Worker[] = [];
  private readonly outstanding: number[] = [];
  private readonly endedStreams = new Set<number>();
  private endWaiters: (() => void)[] = [];
  private fatal: Error | undefined;

  onDone: (blocks: BlockDone[]) => void = () => {};
  onRecord: (type: number, flags: number, body: Uint8Array) => void = () => {};
  onNeed: (id: bigint, stream: number) => void = () => {};
  onFatal: (e: Error) => void = () => {};
  /** Called when a send worker can take another batch. */
  onIdle: () => void = () => {};

  constructor(
    private readonly conns: number[],
    private readonly role: "sender" | "receiver",
    opts: PoolOptions,
  ) {
    this.counters = new SharedArrayBuffer(conns.length * COUNTERS_SIZE);
    const libPath = nativePath();
    conns.forEach((conn, stream) => {
      const w = takeWorker(WORKER_URL);
      const init: WorkerInit = {
        kind: "init",
        role: stream === 0 ? "control-rx" : role === "sender" ? "send" : "recv",
        stream,
        conn,
        libPath,
        blockSize: opts.blockSize,
        zstdLevel: opts.zstdLevel,
        cancel: this.cancel,
        counters: this.counters,
        table: this.table,
        tableCap: TABLE_CAP,
        tableGen: this.tableGen,
        cpumask: opts.cpumask,
        nodemask: opts.nodemask,
      };
      w.onmessage = (ev: MessageEvent<FromWorker>) => {
        // What a handler throws (stream 0 broken under a FILES or DONE record, a full
        // disk...) ends the session with that message, never as an uncaught exception.
        try {
          this.handle(ev.data);
        } catch (e) {
          this.die(e instanceof Error ? e : new Error(String(e)));
        }
      };
      w.onerror = (ev) => this.die(new Error(`stream ${stream} worker crashed: ${ev.message}`));
      w.postMessage(init);
      this.workers.push(w);
      this.outstanding.push(0);
    });
  }

  get dataStreams(): number {
    return this.conns.length - 1;
  }

  /** Seals and sends one stream-0 record from the main thread. */
  sendControl(type: number, body: Uint8Array | null): void {
    const n = native();
    const r = n.escp_send_record(this.conns[0] as Pointer, type, 0, body && body.length ? ptr(body) : null, body?.length ?? 0);
    if (r < 0) throw streamFailure(0, r, nativeError(r));
  }

  /** Gives a batch of escp_work items to the least busy send worker; false if all are full. */
  offer(items: Uint8Array): boolean {
    let best = -1;
    for (let s = 1; s < this.workers.length; s++) {
      if (this.outstanding[s] < 2 && (best < 0 || this.outstanding[s] < this.outstanding[best])) best = s;
    }
    if (best < 0) return false;
    this.outstanding[best]++;
    this.workers[best].postMessage({ kind: "batch", items } satisfies ToWorker, [items.buffer as ArrayBuffer]);
    return true;
  }

  hasRoom(): boolean {
    return this.outstanding.some((n, s) => s > 0 && n < 2);
  }

  /** Sender: END on every data stream, resolved once all are sent. */
  finish(): Promise<void> {
    for (let s = 1; s < this.workers.length; s++) this.workers[s].postMessage({ kind: "finish" } satisfies ToWorker);
    return this.allEnded();
  }

  /** Resolves when every data stream has ended (sent END, or received it). */
  allEnded(): Promise<void> {
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.endedStreams.size >= this.dataStreams) return Promise.resolve();
    return new Promise((resolve, reject) => this.endWaiters.push(() => (this.fatal ? reject(this.fatal) : resolve())));
  }

  /** Receiver: makes file `id` writable by the stream workers through fd; call published() after a batch. */
  publish(id: bigint, size: bigint, fd: number, direct: boolean): void {
    this.fill(id, size, fd, direct, -1, 0n);
  }

  /**
   * Receiver: file `id` is to be created by the stream worker that receives its first
   * block, as `name` in the directory dirfd (escp_create_part), or, if `unnamed` and the
   * filesystem can, without a name (escp_create_unnamed; see createdUnnamed). Both must
   * stay valid until claimFd; name must stay referenced (its address is in the table).
   */
  publishCreate(id: bigint, size: bigint, dirfd: number, name: Buffer, direct: boolean, mode: number, unnamed = false): void {
    this.fill(id, size, FD_CREATE, direct, dirfd, BigInt(ptr(name)), mode, unnamed);
  }

  /**
   * Receiver: the fd a worker created for `id` (published with publishCreate), or -errno
   * if it could not; FD_CLAIMED if no block came, and then no worker will create it now.
   */
  claimFd(id: bigint): number {
    const at = this.slotOf(id) * SLOT_I32 + 4;
    for (;;) {
      const fd = Atomics.load(this.slotI32, at);
      if (fd === FD_CREATE && Atomics.compareExchange(this.slotI32, at, FD_CREATE, FD_CLAIMED) === FD_CREATE) return FD_CLAIMED;
      if (fd !== FD_CREATE && fd !== FD_CREATING && fd !== FD_AWAITED) return fd;
    }
  }

  /** Receiver, after claimFd and before unpublish: whether the worker created `id` unnamed. */
  createdUnnamed(id: bigint): boolean {
    return (this.slotI32[this.slotOf(id) * SLOT_I32 + 5] & SLOT_UNNAMED) !== 0;
  }

  private slotOf(id: bigint): number {
    return Number(id & SLOT_MASK);
  }

  /** escp_fdslot (escp.h): u64 id_plus1, u64 size, i32 fd, direct, dirfd, mode, u64 name. */
  private fill(id: bigint, size: bigint, fd: number, direct: boolean, dirfd: number, name: bigint, mode = 0, unnamed = false): void {
    const s = this.slotOf(id), u = s * SLOT_U64, w = s * SLOT_I32;
    this.slotU64[u + 1] = size;
    this.slotI32[w + 4] = fd;
    this.slotI32[w + 5] = (direct ? SLOT_DIRECT : 0) | (unnamed ? SLOT_UNNAMED : 0);
    this.slotI32[w + 6] = dirfd;
    this.slotI32[w + 7] = mode;
    this.slotU64[u + 4] = name;
    Atomics.store(this.slotU64, u, id + 1n);
  }

  /** Wakes workers waiting for files: once per FILES record, not per file (each wake costs a context switch). */
  published(): void {
    Atomics.add(this.gen, 0, 1);
    Atomics.notify(this.gen, 0);
  }

  unpublish(id: bigint): void {
    Atomics.compareExchange(this.slotU64, this.slotOf(id) * SLOT_U64, id + 1n, 0n);
  }

  totals(): StreamCounters {
    const c = new BigUint64Array(this.counters);
    const t = { bytesDisk: 0, bytesNetwork: 0, bytesCompressed: 0 };
    for (let s = 0; s < this.conns.length; s++) {
      t.bytesDisk += Number(c[s * 8]);
      t.bytesNetwork += Number(c[s * 8 + 1]);
      t.bytesCompressed += Number(c[s * 8 + 2]);
    }
    return t;
  }

  /** Stops every loop: sets the cancel flag and shuts the sockets so blocked calls return. */
  abort(): void {
    Atomics.store(new Int32Array(this.cancel), 0, 1);
    Atomics.notify(new Int32Array(this.tableGen), 0);
    for (const c of this.conns) native().escp_conn_shutdown(c as Pointer);
  }

  /** Ends the workers and frees the connections; call once, at the end. */
  close(): void {
    this.abort();
    for (const w of this.workers) w.terminate();
    // Workers may still be inside a native call until the shutdown reaches them; the
    // process exits right after, so the connections are left to the kernel.
  }

  private handle(m: FromWorker): void {
    switch (m.kind) {
      case "done":
        if (this.role === "sender") this.outstanding[m.stream]--;
        this.onDone(decodeDone(m.entries));
        if (this.role === "sender") this.onIdle();
        break;
      case "record":
        this.onRecord(m.type, m.flags, m.body);
        break;
      case "need":
        this.onNeed(m.id, m.stream);
        break;
      case "ended":
        this.endedStreams.add(m.stream);
        if (this.endedStreams.size >= this.dataStreams) this.wakeEnders();
        break;
      case "error":
        if (Atomics.load(new Int32Array(this.cancel), 0)) return; // our own abort, not news
        this.die(streamFailure(m.stream, m.code, m.message));
        break;
    }
  }

  private die(e: Error): void {
    if (this.fatal) return;
    this.fatal = e;
    this.abort();
    this.wakeEnders();
    this.onFatal(e);
  }

  private wakeEnders(): void {
    const w = this.endWaiters;
    this.endWaiters = [];
    w.forEach((f) => f());
  }
}

/**
 * A stream's connection went away before its END: the network broke, or the
 * process at the other end did. The user gets plain words; the native detail
 * (record, byte counts) is in the log.
 */
export class ConnectionLost extends Error {}

/** How a connection can go, by the native code that tells it. */
const LOST: Record<number, string> = {
  [E.TRUNC]: "closed",
  [-104 /* ECONNRESET */]: "was reset",
  [-103 /* ECONNABORTED: the socket destroyed on its host (ss -K) */]: "was cut",
  [-32 /* EPIPE */]: "closed",
  [-110 /* ETIMEDOUT: keepalive */]: "timed out",
};

/** Words that say a stream's connection went, as streamFailure puts them (this end's or the other's). */
export const LOST_WORDS = /^stream \d+ (closed|was reset|was cut|timed out) mid-transfer$/;

/** The error for a stream that failed with native `code`; `detail`, the native text, is logged. */
export function streamFailure(stream: number, code: number, detail: string): Error {
  log.error(`stream failed: ${detail}`, { stream, code });
  const how = LOST[code];
  return how ? new ConnectionLost(`stream ${stream} ${how} mid-transfer`) : new Error(detail);
}

function decodeDone(entries: Uint8Array): BlockDone[] {
  const dv = new DataView(entries.buffer, entries.byteOffset, entries.byteLength);
  const out: BlockDone[] = [];
  for (let o = 0; o < entries.byteLength; o += 40) {
    out.push({
      fileId: dv.getBigUint64(o, true),
      offset: dv.getBigUint64(o + 8, true),
      len: dv.getUint32(o + 16, true),
      status: dv.getInt32(o + 20, true),
      hash: entries.slice(o + 24, o + 40),
    });
  }
  return out;
}

export { Rec };

dfgOnly(StreamPool.prototype, decodeDone);
