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
  /** Tuples folded so far (0, 1, or more: then they are in state). */
  private folded = 0;
  private done = false;
  private next = 0n;
  private readonly waiting = new Map<bigint, { len: number; hash: Uint8Array }>();
  private readonly tuple = Buffer.alloc(32);

  /** Bytes folded in so far (the contiguous prefix). */
  get contiguous(): bigint {
    return this.next;
  }

  add(offset: bigint, len: number, hash: Uint8Array): void {
    this.waiting.set(offset, { len, hash });
    for (let b = this.waiting.get(this.next); b; b = this.waiting.get(this.next)) {
      this.waiting.delete(this.next);
      // XXH3's streaming digest equals its one-shot digest of the same bytes, so a
      // lone tuple waits in `tuple` and is hashed in one call by final().
      if (this.folded === 1) {
        this.state = native().escp_digest_new() as Pointer;
        native().escp_digest_update(this.state, ptr(this.tuple), 32);
      }
      this.tuple.writeBigUInt64BE(this.next, 0);
      this.tuple.writeBigUInt64BE(BigInt(b.len), 8);
      this.tuple.set(b.hash, 16);
      if (this.state) native().escp_digest_update(this.state, ptr(this.tuple), 32);
      this.folded++;
      this.next += BigInt(b.len);
      if (b.len === 0) break;
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
    for (const off of [...this.waiting.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
      const b = this.waiting.get(off);
      if (!b) continue; // folded already, behind an earlier one
      this.next = off;
      this.add(off, b.len, b.hash);
    }
    this.done = true;
    if (this.state) native().escp_digest_final(this.state, ptr(out));
    else native().escp_xxh128(ptr(this.tuple), this.folded * 32, ptr(out));
    this.state = null;
    return out;
  }

  /** Frees the native state of a digest that will never be finished. */
  discard(): void {
    this.final();
  }
}

export function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

dfgOnly(FileDigest.prototype, sameDigest);
