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
    }
  /** `streams`: the data streams the session has, ≤ hello's (a sender that pulls knows its files). */
  | { type: "ready"; version: number; port: number; addr?: string; fileWindow?: number; streams: number }
  | { type: "error"; message: string; version?: number }
  | { type: "report"; summary: TransferSummary }
  /** Client → server every --keepalive seconds: a silent client for 3 intervals is gone. */
  | { type: "ping" }
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
const utf8 = new TextDecoder();
const ENTRY_FIXED = 8 + 1 + 1 + 2 + 4 + 8 + 8 + 8; // id kind top pathLen mode size mtime atime

/** Serialises a batch of entries into one FILES body (big-endian, see docs/protocol.md). */
export function encodeFiles(entries: FileEntry[]): Uint8Array {
  const paths = entries.map((e) => Buffer.from(e.path, "utf8"));
  const total = paths.reduce((n, p) => n + ENTRY_FIXED + p.length, 4);
  const out = Buffer.alloc(total);
  out.writeUInt32BE(entries.length, 0);
  let o = 4;
  entries.forEach((e, i) => {
    out.writeBigUInt64BE(e.id, o);
    out[o + 8] = KIND_CODE[e.kind];
    out[o + 9] = e.top ? (e.merge ? 2 : 1) : 0;
    out.writeUInt16BE(paths[i].length, o + 10);
    out.writeUInt32BE(e.mode >>> 0, o + 12);
    out.writeBigUInt64BE(e.size, o + 16);
    out.writeBigInt64BE(e.mtimeNs, o + 24);
    out.writeBigInt64BE(e.atimeNs, o + 32);
    paths[i].copy(out, o + ENTRY_FIXED);
    o += ENTRY_FIXED + paths[i].length;
  });
  return out;
}

/** Parses a FILES body; throws ProtocolError on anything malformed. Paths are checked by plan/target. */
export function decodeFiles(body: Uint8Array): FileEntry[] {
  const { b, n } = listOf(body, ENTRY_FIXED, "FILES");
  const out: FileEntry[] = [];
  let o = 4;
  for (let i = 0; i < n; i++) {
    if (o + ENTRY_FIXED > b.length) throw new ProtocolError("FILES entry truncated");
    const kindCode = b[o + 8];
    const kind = kindCode === 1 ? "file" : kindCode === 2 ? "dir" : undefined;
    if (!kind) throw new ProtocolError(`FILES entry has unknown type ${kindCode}`);
    const pathLen = b.readUInt16BE(o + 10);
    if (o + ENTRY_FIXED + pathLen > b.length) throw new ProtocolError("FILES entry path truncated");
    const size = b.readBigUInt64BE(o + 16);
    if (size > 1n << 62n) throw new ProtocolError(`FILES entry claims a size of ${size} bytes`);
    const pathBytes = b.subarray(o + ENTRY_FIXED, o + ENTRY_FIXED + pathLen);
    const path = utf8.decode(pathBytes);
    out.push({
      id: b.readBigUInt64BE(o),
      kind,
      top: b[o + 9] >= 1,
      merge: b[o + 9] === 2 || undefined,
      mode: b.readUInt32BE(o + 12),
      size,
      mtimeNs: b.readBigInt64BE(o + 24),
      atimeNs: b.readBigInt64BE(o + 32),
      path,
    });
    o += ENTRY_FIXED + pathLen;
  }
  if (o !== b.length) throw new ProtocolError("FILES record has trailing bytes");
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
const NO_BYTES = Buffer.alloc(0);

/** Many verdicts share one DONE or RESULT record: small files would otherwise cost a record each. */
export function encodeVerdicts(vs: FileVerdict[]): Uint8Array {
  // Most verdicts carry no message: they share one empty buffer.
  const msgs = vs.map((v) => (v.message ? Buffer.from(v.message, "utf8").subarray(0, 4096) : NO_BYTES));
  const out = Buffer.alloc(msgs.reduce((n, m) => n + VERDICT_FIXED + m.length, 4));
  out.writeUInt32BE(vs.length, 0);
  let o = 4;
  vs.forEach((v, i) => {
    out.writeBigUInt64BE(v.id, o);
    out.writeInt32BE(v.status, o + 8);
    out.writeUInt32BE(msgs[i].length, o + 12);
    out.writeBigUInt64BE(v.bytes, o + 16);
    out.set(v.digest, o + 24);
    msgs[i].copy(out, o + VERDICT_FIXED);
    o += VERDICT_FIXED + msgs[i].length;
  });
  return out;
}

export function decodeVerdicts(body: Uint8Array): FileVerdict[] {
  const { b, n } = listOf(body, VERDICT_FIXED, "DONE/RESULT");
  const out: FileVerdict[] = [];
  let o = 4;
  for (let i = 0; i < n; i++) {
    if (o + VERDICT_FIXED > b.length) throw new ProtocolError("DONE/RESULT verdict truncated");
    const msgLen = b.readUInt32BE(o + 12);
    if (o + VERDICT_FIXED + msgLen > b.length) throw new ProtocolError("DONE/RESULT message truncated");
    out.push({
      id: b.readBigUInt64BE(o),
      status: b.readInt32BE(o + 8),
      bytes: b.readBigUInt64BE(o + 16),
      digest: Uint8Array.prototype.slice.call(b, o + 24, o + 40),
      message: msgLen ? utf8.decode(b.subarray(o + VERDICT_FIXED, o + VERDICT_FIXED + msgLen)) : "",
    });
    o += VERDICT_FIXED + msgLen;
  }
  if (o !== b.length) throw new ProtocolError("DONE/RESULT record has trailing bytes");
  return out;
}

/**
 * A list body (u32 count, then items of at least `fixed` bytes each): the count
 * is checked against the body before anything is allocated on its say-so.
 */
function listOf(body: Uint8Array, fixed: number, what: string): { b: Buffer; n: number } {
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (b.length < 4) throw new ProtocolError(`${what} record too short`);
  const n = b.readUInt32BE(0);
  if (n * fixed > b.length - 4) throw new ProtocolError(`${what} record claims ${n} entries in ${b.length} bytes`);
  return { b, n };
}

/** The peer broke the protocol: always fatal for the session. */
export class ProtocolError extends Error {}

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
