/**
 * One Bun Worker per TCP stream. Each worker sits in a blocking native call
 * that moves a batch of blocks (ffi/loops.c), then reports what happened to
 * each block to the main thread. It never decides a file's fate.
 *
 * Roles:
 *  - send: work batches in, done entries out; "finish" sends the END record.
 *  - recv: loops until END; waits (Atomics) when data names a file the main
 *    thread has not opened yet.
 *  - control-rx: stream 0's incoming records, handed to the main thread whole.
 */
import {
  streamNative, ptr, nativeError, Rec, E, DONE_SIZE, LOOP_OPTS_SIZE, MAX_CTRL_BODY, type Pointer, type StreamNative,
} from "../native.ts";
import type { WorkerInit, ToWorker, FromWorker } from "./messages.ts";
import { Collector } from "../heap.ts";

declare const self: Worker;

let init: WorkerInit;
let lib: StreamNative;
let loopOpts: BigUint64Array;
let cancel: Int32Array;
let counters: BigUint64Array;

const post = (m: FromWorker, transfer?: ArrayBuffer[]) => self.postMessage(m, transfer ?? []);

/**
 * A full collection of this worker's heap every 4,096 blocks (heap.ts). Each batch
 * leaves garbage here (the message, the done entries' buffer, detached once
 * transferred, a record's copy), and JavaScriptCore let each worker's heap grow
 * over the first ~100k files, a few MiB of resident set per worker, five workers
 * an end (100k 4 KiB files, local / remote peak: 83-86 / 79-80 MiB without,
 * 80 / 74 with; 1k files: 73 / 67 either way). Every 1,024 blocks saves a little
 * more for 10-15 % more CPU at 300k files; every 4,096 costs nothing measurable.
 */
const gc = new Collector(4096);
/** A stream-0 record counts as this many blocks (a FILES record stands for up to 256 files). */
const RECORD_WEIGHT = 16;

function setup(m: WorkerInit): void {
  init = m;
  lib ??= streamNative(m.libPath);
  if (m.cpumask) lib.escp_set_cpumask(Buffer.from(m.cpumask + "\0"));
  if (m.nodemask) lib.escp_set_nodemask(Buffer.from(m.nodemask + "\0"));
  cancel = new Int32Array(m.cancel);
  counters = new BigUint64Array(m.counters, m.stream * 64, 8);
  // escp_loop_opts: u32 block_size, i32 zstd_level, volatile int32_t *cancel
  loopOpts = new BigUint64Array(LOOP_OPTS_SIZE / 8);
  new DataView(loopOpts.buffer).setUint32(0, m.blockSize, true);
  new DataView(loopOpts.buffer).setInt32(4, m.zstdLevel, true);
  loopOpts[1] = BigInt(ptr(cancel));
}

function fail(code: number): void {
  post({ kind: "error", stream: init.stream, code, message: nativeError(code, lib) });
}

const pending: ToWorker[] = [];
let running = false;

self.onmessage = (ev: MessageEvent<ToWorker>) => {
  const m = ev.data;
  if (m.kind === "load") {
    lib = streamNative(m.libPath);
    return;
  }
  if (m.kind === "init") {
    setup(m);
    if (m.role === "recv") void receiveLoop();
    if (m.role === "control-rx") void controlLoop();
    return;
  }
  pending.push(m);
  if (!running) void sendLoop();
};

/** Processes queued batches in order; yields between them so new messages arrive. */
async function sendLoop(): Promise<void> {
  running = true;
  while (pending.length) {
    const m = pending.shift()!;
    if (m.kind === "batch") {
      const n = m.items.byteLength / 32;
      const done = new Uint8Array(n * DONE_SIZE);
      const r = lib.escp_send_batch(init.conn as Pointer, ptr(m.items), n, ptr(done), ptr(loopOpts), ptr(counters));
      if (r < 0) {
        fail(r);
        break;
      }
      post({ kind: "done", stream: init.stream, entries: done }, [done.buffer as ArrayBuffer]);
      gc.tick(n);
    } else if (m.kind === "finish") {
      const r = lib.escp_send_record(init.conn as Pointer, Rec.END, 0, null, 0);
      if (r < 0) fail(r);
      else post({ kind: "ended", stream: init.stream });
    }
    await Promise.resolve();
  }
  running = false;
}

const RECV_BATCH = 64;

async function receiveLoop(): Promise<void> {
  const done = new Uint8Array(RECV_BATCH * DONE_SIZE);
  const state = new Int32Array(1);
  const needId = new BigUint64Array(1);
  const gen = new Int32Array(init.tableGen!);
  const tab = ptr(new Uint8Array(init.table!));
  for (;;) {
    const seen = Atomics.load(gen, 0);
    const n = lib.escp_recv_batch(
      init.conn as Pointer, tab, init.tableCap!, ptr(done), RECV_BATCH, ptr(loopOpts), ptr(counters), ptr(state), ptr(needId),
    );
    if (n < 0) return fail(n);
    if (n > 0) {
      const copy = done.slice(0, n * DONE_SIZE);
      post({ kind: "done", stream: init.stream, entries: copy }, [copy.buffer]);
      gc.tick(n);
    }
    if (state[0] === 1) return post({ kind: "ended", stream: init.stream });
    if (state[0] === 2) {
      // The main thread bumps gen after publishing files; cancel also wakes us. Only a
      // long wait is news to it (it checks that the id is one it will announce).
      if (Atomics.wait(gen, 0, seen, 1000) === "timed-out") post({ kind: "need", stream: init.stream, id: needId[0] });
      if (Atomics.load(cancel, 0)) return fail(E.CANCEL);
    }
  }
}

async function controlLoop(): Promise<void> {
  const body = new Uint8Array(MAX_CTRL_BODY);
  const meta = new Uint32Array(2);
  for (;;) {
    const n = Number(lib.escp_recv_record(init.conn as Pointer, ptr(body), body.length, ptr(meta)));
    if (n < 0) return fail(n);
    const type = meta[0];
    post({ kind: "record", stream: 0, type, flags: meta[1], body: body.slice(0, n) });
    gc.tick(RECORD_WEIGHT);
    if (type === Rec.END) return;
    await Promise.resolve();
  }
}
