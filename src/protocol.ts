/**
 * What the two ends say to each other, above the records of ffi/: the JSON
 * control messages on the ssh pipe and the binary bodies of stream 0 (FILES,
 * DONE, RESULT, ERROR). Record framing, keys and sequence numbers live in C.
 *
 * @example
 * const body = encodeFiles([{ id: 0n, path: "a.txt", kind: "file", size: 5n, mode: 0o644, mtimeNs: 0n, atimeNs: 0n, top: true }]);
 * decodeFiles(body)[0].path; // "a.txt"
 */
import { dfgOnly } from "./jit.ts";
import { decodeName, encodeName, encodeNameInto } from "./names.ts";
import { NS_PER_S, splitNs } from "./times.ts";

/** One entry of the file list, as the sender announces it. */
export interface FileEntry {
  id: bigint;
  /** `/`-separated, relative to the transfer root; its first component names the source operand. */
  path: string;
  kind: "file" | "dir";
  size: bigint;
  mode: number;
  mtimeNs: bigint;
  atimeNs: bigint;
  /** True for the entry that stands for a source operand itself. */
  top: boolean;
  /** A top directory named as `dir/.`: scp puts its contents into an existing target directory. */
  merge?: boolean;
}

/** Transfer options both ends must agree on; sent in `hello`. */
export interface SessionOptions {
  recursive: boolean;
  preserve: boolean;
  compress: boolean;
  zstdLevel: number;
  direct: boolean;
  resume: boolean;
  verify: boolean;
  sparse: boolean;
  inplace: boolean;
  limitBps: number;
  keepaliveS: number;
  /** Socket buffer bytes per stream and direction (--sockbuf); 0 or absent = autotuning. */
  sockbuf?: number;
  /**
   * Files the connecting end can hold open at once (half its `ulimit -n`, see
   * fileWindow in transfer/side.ts); the sending end keeps at most the smaller of
   * this and its own announced and unjudged. Absent from older peers.
   */
  fileWindow?: number;
  verbose: number;
  log?: string;
}

export type ControlMessage =
  | {
      type: "hello";
      version: number;
      sid: string; // hex, 16 bytes
      key: string; // hex, 32 bytes
      serverRole: "sender" | "receiver";
      streams: number; // data streams wanted, at most; stream 0 comes on top
      blockSize: number;
      options: SessionOptions;
      target?: string; // push: the destination path on the server
      sources?: string[]; // pull: the source paths on the server
      multipleSources?: boolean; // push: several operands, so the target must be a directory
      ports: [number, number];
      /** With every port of `ports` taken, any free one will do: the client comes through ssh's forwarding (--tunnel) or from the same host (a local copy). */
      anyPort?: boolean;
      /** The client takes pings from the server too, every keepaliveS once the streams are up. */
      pings?: boolean;
    }
  /** `streams`: the data streams the session has, ≤ hello's (a sender that pulls knows its files). */
  /** `pings`: the server will ping from the moment its streams are up (hello asked it to). */
  /** `sources`: a sending server's sources once its patterns are expanded (a pull of `host:*.log` may be several). */
  | { type: "ready"; version: number; port: number; addr?: string; fileWindow?: number; streams: number; pings?: boolean; sources?: number }
  | { type: "error"; message: string; version?: number }
  | { type: "report"; summary: TransferSummary }
  /**
   * Every --keepalive seconds, client → server, and server → client when hello asked: a peer
   * silent for 3 intervals is gone. `acked`, once the streams are up: per stream, the bytes
   * the sender's kernel saw acknowledged (streams/stall.ts).
   */
  | { type: "ping"; acked?: number[] }
  /** escp -R → `escp --origin` on the source host: the copy to run there, as its command line. */
  | { type: "copy"; argv: string[] }
  | { type: "bye" };

/** Totals of one side, as shown to the user and in --json. */
export interface TransferSummary {
  files: number;
  bytes: number;
  /** Bytes the receiver already had (--resume) and that were not sent again. */
  bytesSkipped: number;
  bytesNetwork: number;
  bytesDisk: number;
  bytesCompressed: number;
  seconds: number;
  failures: { path: string; message: string }[];
  streams: number;
}

export const MAX_CONTROL_MESSAGE = 1 << 20;

const KIND_CODE = { file: 1, dir: 2 } as const;
const ENTRY_FIXED = 8 + 1 + 1 + 2 + 4 + 8 + 12 + 12; // id kind top pathLen mode size mtime atime (each s + ns)
const MAX_PATH_BYTES = 0xffff;

// The codecs below run once per file on both ends: DataView's accessors are compiled
// inline by the JIT, where Buffer's read/write methods cost a call each (10,000
// small files spent ~80 ms of the receiver's main thread in readBigUInt64BE and Buffer).

/** Serialises a batch of entries into one FILES body (big-endian, see docs/protocol.md). */
export function encodeFiles(entries: FileEntry[]): Uint8Array {
  let cap = 4;
  for (const e of entries) cap += ENTRY_FIXED + e.path.length * 3; // UTF-8 takes at most 3 bytes per UTF-16 unit
  const out = new Uint8Array(cap);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, entries.length);
  let o = 4;
  for (const e of entries) {
    const written = encodeNameInto(e.path, out.subarray(o + ENTRY_FIXED));
    if (written > MAX_PATH_BYTES) throw new RangeError(`${e.path.slice(0, 100)}...: path of ${written} bytes is over the limit of ${MAX_PATH_BYTES}`);
    dv.setBigUint64(o, e.id);
    out[o + 8] = KIND_CODE[e.kind];
    out[o + 9] = e.top ? (e.merge ? 2 : 1) : 0;
    dv.setUint16(o + 10, written);
    dv.setUint32(o + 12, e.mode >>> 0);
    dv.setBigUint64(o + 16, e.size);
    setTime(dv, o + 24, e.mtimeNs);
    setTime(dv, o + 36, e.atimeNs);
    o += ENTRY_FIXED + written;
  }
  return out.slice(0, o);
}

/** A time as i64 seconds and u32 nanoseconds since 1970 (src/times.ts). */
function setTime(dv: DataView, at: number, ns: bigint): void {
  const [s, n] = splitNs(ns);
  dv.setBigInt64(at, s);
  dv.setUint32(at + 8, Number(n));
}

function getTime(dv: DataView, at: number): bigint {
  const ns = dv.getUint32(at + 8);
  if (ns >= 1e9) throw new ProtocolError(`FILES entry has a time with ${ns} nanoseconds`);
  return dv.getBigInt64(at) * NS_PER_S + BigInt(ns);
}

/** Parses a FILES body; throws ProtocolError on anything malformed. Paths are checked by plan/target. */
export function decodeFiles(body: Uint8Array): FileEntry[] {
  const { dv, n } = listOf(body, ENTRY_FIXED, "FILES");
  const out: FileEntry[] = [];
  let o = 4;
  for (let i = 0; i < n; i++) {
    if (o + ENTRY_FIXED > body.length) throw new ProtocolError("FILES entry truncated");
    const kindCode = body[o + 8];
    const kind = kindCode === 1 ? "file" : kindCode === 2 ? "dir" : undefined;
    if (!kind) throw new ProtocolError(`FILES entry has unknown type ${kindCode}`);
    const pathLen = dv.getUint16(o + 10);
    if (o + ENTRY_FIXED + pathLen > body.length) throw new ProtocolError("FILES entry path truncated");
    const size = dv.getBigUint64(o + 16);
    if (size > 1n << 62n) throw new ProtocolError(`FILES entry claims a size of ${size} bytes`);
    out.push({
      id: dv.getBigUint64(o),
      kind,
      top: body[o + 9] >= 1,
      merge: body[o + 9] === 2 || undefined,
      mode: dv.getUint32(o + 12),
      size,
      mtimeNs: getTime(dv, o + 24),
      atimeNs: getTime(dv, o + 36),
      path: decodeName(body.subarray(o + ENTRY_FIXED, o + ENTRY_FIXED + pathLen)),
    });
    o += ENTRY_FIXED + pathLen;
  }
  if (o !== body.length) throw new ProtocolError("FILES record has trailing bytes");
  return out;
}

/** DONE (sender → receiver) and RESULT (receiver → sender) share one layout. */
export interface FileVerdict {
  id: bigint;
  status: number; // 0 = ok, else a negative native code or -errno
  bytes: bigint; // DONE: bytes actually sent; RESULT: bytes written
  digest: Uint8Array; // 16 bytes
  message: string;
}

const VERDICT_FIXED = 8 + 4 + 4 + 8 + 16; // id status msgLen bytes digest
const NO_BYTES = new Uint8Array(0);
const MAX_MESSAGE_BYTES = 4096;

/** Many verdicts share one DONE or RESULT record: small files would otherwise cost a record each. */
export function encodeVerdicts(vs: FileVerdict[]): Uint8Array {
  // Most verdicts carry no message: they share one empty array.
  // Messages name files: their bytes travel as a name's do (names.ts).
  const msgs: Uint8Array[] = new Array(vs.length);
  let total = 4;
  for (let i = 0; i < vs.length; i++) {
    const m = vs[i].message;
    msgs[i] = m ? encodeName(m).subarray(0, MAX_MESSAGE_BYTES) : NO_BYTES;
    total += VERDICT_FIXED + msgs[i].length;
  }
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, vs.length);
  let o = 4;
  for (let i = 0; i < vs.length; i++) {
    const v = vs[i];
    dv.setBigUint64(o, v.id);
    dv.setInt32(o + 8, v.status);
    dv.setUint32(o + 12, msgs[i].length);
    dv.setBigUint64(o + 16, v.bytes);
    out.set(v.digest, o + 24);
    out.set(msgs[i], o + VERDICT_FIXED);
    o += VERDICT_FIXED + msgs[i].length;
  }
  return out;
}

export function decodeVerdicts(body: Uint8Array): FileVerdict[] {
  const { dv, n } = listOf(body, VERDICT_FIXED, "DONE/RESULT");
  const out: FileVerdict[] = [];
  let o = 4;
  for (let i = 0; i < n; i++) {
    if (o + VERDICT_FIXED > body.length) throw new ProtocolError("DONE/RESULT verdict truncated");
    const msgLen = dv.getUint32(o + 12);
    if (o + VERDICT_FIXED + msgLen > body.length) throw new ProtocolError("DONE/RESULT message truncated");
    out.push({
      id: dv.getBigUint64(o),
      status: dv.getInt32(o + 8),
      bytes: dv.getBigUint64(o + 16),
      digest: body.slice(o + 24, o + 40),
      message: msgLen ? decodeName(body.subarray(o + VERDICT_FIXED, o + VERDICT_FIXED + msgLen)) : "",
    });
    o += VERDICT_FIXED + msgLen;
  }
  if (o !== body.length) throw new ProtocolError("DONE/RESULT record has trailing bytes");
  return out;
}

/**
 * A list body (u32 count, then items of at least `fixed` bytes each): the count
 * is checked against the body before anything is allocated on its say-so.
 */
function listOf(body: Uint8Array, fixed: number, what: string): { dv: DataView; n: number } {
  if (body.length < 4) throw new ProtocolError(`${what} record too short`);
  const dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const n = dv.getUint32(0);
  if (n * fixed > body.length - 4) throw new ProtocolError(`${what} record claims ${n} entries in ${body.length} bytes`);
  return { dv, n };
}

/** The peer broke the protocol: always fatal for the session. */
export class ProtocolError extends Error {}

/**
 * How a receiver's RESULT message for a file written in place (--inplace, a file
 * mounted over) ends when its failure left the target damaged: a sender that failed
 * the file for its own reason (the source changed) adds it to what it reports.
 */
export const LEFT_INCOMPLETE = "written in place, it is left incomplete";

export function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

/** RESULT status for a file the receiver already has, identical: nothing was sent. */
export const STATUS_SKIPPED = 1;

/**
 * RESUME (receiver → sender, --resume): digests of the blocks the receiver
 * already holds for a file, blocks first..first+count-1. The sender resends
 * only blocks whose digest differs; `last` closes the list for that file.
 */
export interface ResumeOffer {
  id: bigint;
  first: number;
  hashes: Uint8Array; // count × 16
  last: boolean;
}

/** Hashes per RESUME record: keeps each record under the stream-0 body limit. */
export const RESUME_CHUNK = 32768;

export function encodeResume(r: ResumeOffer): Uint8Array {
  const out = Buffer.alloc(20 + r.hashes.length);
  out.writeBigUInt64BE(r.id, 0);
  out.writeUInt32BE(r.first, 8);
  out.writeUInt32BE(r.hashes.length / 16, 12);
  out[16] = r.last ? 1 : 0;
  out.set(r.hashes, 20);
  return out;
}

export function decodeResume(body: Uint8Array): ResumeOffer {
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (b.length < 20) throw new ProtocolError("RESUME record too short");
  const count = b.readUInt32BE(12);
  if (b.length !== 20 + count * 16) throw new ProtocolError(`RESUME record claims ${count} digests in ${b.length} bytes`);
  return { id: b.readBigUInt64BE(0), first: b.readUInt32BE(8), hashes: new Uint8Array(b.subarray(20)), last: b[16] === 1 };
}

dfgOnly(encodeFiles, decodeFiles, encodeVerdicts, decodeVerdicts, listOf);
