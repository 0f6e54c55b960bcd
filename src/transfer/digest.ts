/**
 * A file's digest (DESIGN §6): XXH3-128 over (offset ‖ length ‖ h_i) of its
 * blocks in offset order. Blocks finish out of order across streams, so they
 * wait here until the run from the file's start is contiguous; memory is
 * bounded by how far the streams run apart, not by the file's size.
 *
 * @example
 * const d = new FileDigest();
 * d.add(0n, 4096, h0); d.add(4096n, 10, h1);
 * d.final(); // Uint8Array(16)
 */
import { native, ptr, type Pointer } from "../native.ts";
import { dfgOnly } from "../jit.ts";

export class FileDigest {
  /** Native streaming state, made when a second tuple comes: most files have one block. */
  private state: Pointer | null = null;
  /** Tuples folded so far; while it is 1, the lone tuple's fields wait here. */
  private folded = 0;
  private loneOff = 0n;
  private loneLen = 0;
  private loneHash: Uint8Array | undefined;
  private done = false;
  private next = 0n;
  /** Blocks that came before the ones ahead of them; made for the first such block. */
  private waiting: Map<bigint, { len: number; hash: Uint8Array }> | undefined;

  /** Bytes folded in so far (the contiguous prefix). */
  get contiguous(): bigint {
    return this.next;
  }

  add(offset: bigint, len: number, hash: Uint8Array): void {
    if (offset !== this.next) {
      (this.waiting ??= new Map()).set(offset, { len, hash: hash.slice() });
      return;
    }
    this.fold(len, hash);
    for (let b = this.waiting?.get(this.next); b && this.waiting; b = this.waiting.get(this.next)) {
      this.waiting.delete(this.next);
      this.fold(b.len, b.hash);
    }
  }

  /**
   * The digest. Blocks still waiting behind a gap (holes with --sparse, or
   * blocks that never came) are folded in offset order, so both sides agree
   * exactly when they hold the same blocks.
   */
  final(): Uint8Array {
    const out = new Uint8Array(16);
    if (this.done) return out;
    if (this.waiting?.size) {
      for (const off of [...this.waiting.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
        const b = this.waiting.get(off);
        if (!b) continue; // folded already, behind an earlier one
        this.next = off;
        this.add(off, b.len, b.hash);
      }
    }
    this.done = true;
    if (this.state) {
      native().escp_digest_final(this.state, ptr(out));
      this.state = null;
    } else if (this.folded === 1) {
      // XXH3's streaming digest equals its one-shot digest of the same bytes.
      native().escp_xxh128(ptr(tuple(this.loneOff, this.loneLen, this.loneHash!)), 32, ptr(out));
    } else {
      native().escp_xxh128(ptr(TUPLE), 0, ptr(out));
    }
    return out;
  }

  /** Frees the native state of a digest that will never be finished. */
  discard(): void {
    this.final();
  }

  /** Appends (next ‖ len ‖ hash) and moves next on. */
  private fold(len: number, hash: Uint8Array): void {
    if (this.folded === 0) {
      this.loneOff = this.next;
      this.loneLen = len;
      this.loneHash = hash.slice(); // callers may reuse their buffer for the next block
    } else {
      if (this.folded === 1) {
        this.state = native().escp_digest_new() as Pointer;
        native().escp_digest_update(this.state, ptr(tuple(this.loneOff, this.loneLen, this.loneHash!)), 32);
        this.loneHash = undefined;
      }
      native().escp_digest_update(this.state, ptr(tuple(this.next, len, hash)), 32);
    }
    this.folded++;
    this.next += BigInt(len);
  }
}

/** Scratch for one tuple: it is hashed or copied into the state before the next is written. */
const TUPLE = new Uint8Array(32);
const TUPLE_VIEW = new DataView(TUPLE.buffer);

/** offset and len big-endian (DESIGN §6), then the block's hash; BigInt writes only past 2^53. */
function tuple(offset: bigint, len: number, hash: Uint8Array): Uint8Array {
  const o = Number(offset);
  if (o <= Number.MAX_SAFE_INTEGER) {
    TUPLE_VIEW.setUint32(0, Math.floor(o / 0x100000000));
    TUPLE_VIEW.setUint32(4, o >>> 0);
  } else {
    TUPLE_VIEW.setBigUint64(0, offset);
  }
  TUPLE_VIEW.setUint32(8, 0);
  TUPLE_VIEW.setUint32(12, len);
  TUPLE.set(hash, 16);
  return TUPLE;
}

export function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

dfgOnly(FileDigest.prototype, sameDigest, tuple);
