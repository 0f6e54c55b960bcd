/**
 * A file's digest (src/transfer/digest.ts, DESIGN §6): XXH3-128 over the
 * (offset ‖ length ‖ h_i) tuples of its blocks in offset order. Both ends of
 * a session, and ends of different escp builds, must agree on it whatever
 * order the blocks finish in, and however the digest is computed.
 */
import { describe, test, expect } from "bun:test";
import { FileDigest } from "../src/transfer/digest.ts";
import { native, ptr, type Pointer } from "../src/native.ts";

/** The definition, straight: the native streaming state over every tuple in order. */
function reference(blocks: { offset: bigint; len: number; hash: Uint8Array }[]): Uint8Array {
  const lib = native();
  const state = lib.escp_digest_new() as Pointer;
  const tuple = Buffer.alloc(32);
  for (const b of [...blocks].sort((x, y) => (x.offset < y.offset ? -1 : 1))) {
    tuple.writeBigUInt64BE(b.offset, 0);
    tuple.writeBigUInt64BE(BigInt(b.len), 8);
    tuple.set(b.hash, 16);
    lib.escp_digest_update(state, ptr(tuple), 32);
  }
  const out = new Uint8Array(16);
  lib.escp_digest_final(state, ptr(out));
  return out;
}

function blocks(n: number, size = 4096): { offset: bigint; len: number; hash: Uint8Array }[] {
  return Array.from({ length: n }, (_, i) => ({
    offset: BigInt(i * size),
    len: i === n - 1 ? 100 : size,
    hash: crypto.getRandomValues(new Uint8Array(16)),
  }));
}

function digestOf(list: { offset: bigint; len: number; hash: Uint8Array }[]): Uint8Array {
  const d = new FileDigest();
  for (const b of list) d.add(b.offset, b.len, b.hash);
  return d.final();
}

describe("file digest", () => {
  test("an empty file's digest is the streaming digest of nothing", () => {
    expect(digestOf([])).toEqual(reference([]));
  });

  test("a one-block file's digest (hashed in one call) equals the streaming digest", () => {
    const one = blocks(1);
    expect(digestOf(one)).toEqual(reference(one));
  });

  test("blocks that finish out of order give the digest of the blocks in order", () => {
    for (const n of [2, 3, 17]) {
      const list = blocks(n);
      const shuffled = [...list].reverse();
      expect(digestOf(shuffled)).toEqual(reference(list));
      expect(digestOf(list)).toEqual(reference(list));
    }
  });

  test("a gap (a hole with --sparse) is folded in offset order at the end", () => {
    const all = blocks(5);
    for (const keep of [[0, 2, 3], [1, 2], [3], [0, 4], [2, 0, 4, 3]]) {
      const list = keep.map((i) => all[i]);
      expect(digestOf(list)).toEqual(reference(list));
    }
  });

  test("offsets past 4 GiB and past 2^53 are encoded in full", () => {
    const h = () => crypto.getRandomValues(new Uint8Array(16));
    for (const base of [(1n << 32n) - 4096n, 5n << 30n, (1n << 53n) - 4096n, 1n << 60n]) {
      const list = [{ offset: base, len: 4096, hash: h() }, { offset: base + 4096n, len: 7, hash: h() }];
      expect(digestOf(list)).toEqual(reference(list)); // a gap before base: folded at the end
      expect(digestOf([list[1]])).toEqual(reference([list[1]])); // one block, hashed in one call
    }
  });

  test("a caller may reuse one buffer for every block's hash (as --verify's re-read does)", () => {
    const list = blocks(3);
    const d = new FileDigest(), h = new Uint8Array(16);
    for (const b of list) {
      h.set(b.hash);
      d.add(b.offset, b.len, h);
    }
    expect(d.final()).toEqual(reference(list));
    const early = new FileDigest();
    for (const b of [list[2], list[1], list[0]]) {
      h.set(b.hash);
      early.add(b.offset, b.len, h);
    }
    expect(early.final()).toEqual(reference(list));
  });

  test("different blocks give different digests", () => {
    const a = blocks(1), b = [{ ...a[0], hash: a[0].hash.map((v, i) => (i === 0 ? v ^ 1 : v)) }];
    expect(digestOf(a)).not.toEqual(digestOf(b));
  });
});
