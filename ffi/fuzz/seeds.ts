/**
 * Writes a starting corpus for each fuzz harness of ffi/fuzz/ (the input
 * formats are described at the top of each harness):
 *
 *   bun ffi/fuzz/seeds.ts build/fuzz/corpus
 *
 * makes build/fuzz/corpus/{fuzz_records,fuzz_handshake,fuzz_zstd}/seed-*.
 * Each seed is a well-formed case of one path (a good transfer, each way of
 * breaking a record, a zstd bomb, strangers at the door...), so that even the
 * feedback-less driver starts from every branch worth mutating.
 */
import fs from "node:fs";
import path from "node:path";
import { native, ptr } from "../../src/native.ts";

const out = process.argv[2] ?? "build/fuzz/corpus";
const u8 = (...b: number[]) => Buffer.from(b);
const u16 = (v: number) => Buffer.from([v >> 8, v & 0xff]);
const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; };
const u64 = (v: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(v); return b; };
const cat = (...p: Buffer[]) => Buffer.concat(p);

/** fuzz_records: a sealed record op (kind 0) with a mutation code 0..7. */
const sealed = (type: number, flags: number, body: Buffer, how = 0, ...operand: Buffer[]) =>
  cat(u8(how & 7), u8(type, flags), u16(body.length), body, ...operand);
/** DATA for a table file: kind 6. */
const tableData = (file: number, off: number, len: number, fill: number) => cat(u8(0xc0, file), u32(off), u16(len), u8(fill));
/** A compressed DATA block of n bytes of fill (kind 0 with 0x10; 0x08: no content size). */
const bomb = (id: bigint, off: bigint, n: number, fill: number, noSize = false) =>
  cat(u8(0x10 | (noSize ? 0x08 : 0)), u8(3, 0), u16(21), u64(id), u64(off), u32(n), u8(fill));
const END = u8(0xa0);
const raw = (b: Buffer) => cat(u8(0x80, b.length), b);

function filesBody(n: number, pathText: string, size: bigint): Buffer {
  const p = Buffer.from(pathText);
  const e = Buffer.alloc(40);
  e.writeBigUInt64BE(0n, 0);
  e[8] = 1;
  e.writeUInt16BE(p.length, 10);
  e.writeUInt32BE(0o644, 12);
  e.writeBigUInt64BE(size, 16);
  return cat(u32(n), e, p);
}

const records: Record<string, Buffer> = {
  "data-good": cat(u8(0), tableData(1, 0, 10, 0x41), tableData(2, 0, 4096, 1), tableData(2, 4096, 4096, 2), tableData(2, 8192, 4101, 3), END),
  "data-need": cat(u8(0), tableData(3, 0, 4096, 7), END),
  "data-range": cat(u8(0), tableData(1, 5, 10, 1), END),
  "data-bomb": cat(u8(0), bomb(2n, 0n, 1 << 20, 0), END),
  "data-bomb-nosize": cat(u8(0), bomb(2n, 0n, 3 << 20, 0, true), END),
  "data-small-zstd": cat(u8(2), bomb(3n, 0n, 65536, 9), END),
  "data-flip-header": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 1, u8(9)), END),
  "data-flip-tag": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 2, u8(3)), END),
  "data-skip": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 3), END),
  "data-replay": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 4), tableData(1, 0, 10, 1), END),
  "data-other-stream": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 5), END),
  "data-other-dir": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 6), END),
  "data-len-4g": cat(u8(0), sealed(3, 0, cat(u64(1n), u64(0n), Buffer.alloc(10, 1)), 7, u32(0xfffffff0)), END),
  "data-error-record": cat(u8(0), sealed(7, 0, Buffer.from("disk full")), END),
  "data-compressed-flag-plain": cat(u8(0), sealed(3, 1, cat(u64(1n), u64(0n), Buffer.alloc(10, 1))), END),
  "data-garbage": cat(u8(0), raw(Buffer.alloc(40, 0xa5)), END),
  "data-truncated": cat(u8(0), tableData(2, 0, 4096, 1), raw(Buffer.from([3, 0, 0, 0, 0, 0, 0x10, 0x10, 0, 0, 0, 0, 0, 0, 0, 2]))),
  "data-big-block": cat(u8(6), tableData(3, 0, 65535, 1), tableData(3, 65536, 60000, 2), END),
  "control-files": cat(u8(1), sealed(2, 0, filesBody(1, "a.txt", 10n)), sealed(4, 0, Buffer.alloc(40)), END),
  "control-files-lie": cat(u8(1), sealed(2, 0, filesBody(1000000000, "a", 1n)), END),
  "control-len-4g": cat(u8(1), sealed(2, 0, Buffer.alloc(8), 7, u32(0xfffffff0))),
  "control-end-then-more": cat(u8(1), END, sealed(2, 0, Buffer.alloc(4))),
  "control-bad-type": cat(u8(1), sealed(0, 0, Buffer.alloc(4)), sealed(9, 0, Buffer.alloc(4))),
};

// fuzz_handshake: listener (config bit 0 = 0, streams in bits 2-3) or connector (bit 0 = 1).
const stranger = (flags: number, bytes: Buffer) => cat(u8(flags, bytes.length), bytes);
const handshake: Record<string, Buffer> = {
  "listener-alone": u8(0),
  "listener-4-streams": u8(12),
  "listener-silent": cat(u8(4), stranger(0, Buffer.alloc(0))),
  "listener-junk": cat(u8(4), stranger(1, Buffer.from("GET / HTTP/1.0\r\n\r\n"))),
  "listener-preamble-then-junk": cat(u8(4), stranger(3, Buffer.alloc(52, 0x41))),
  "listener-preamble-silent": cat(u8(4), stranger(2, Buffer.alloc(0)), stranger(6, Buffer.alloc(10))),
  "listener-hello-header": cat(u8(0), stranger(3, cat(u8(1, 0, 0, 0), u32(20), u64(0n), Buffer.alloc(36)))),
  "listener-many": cat(u8(8), ...Array.from({ length: 8 }, (_, i) => stranger(i & 3, Buffer.alloc(i * 9, i)))),
  "connector-exact": u8(3),
  "connector-one-bit": cat(u8(3), Buffer.alloc(40), u8(1)),
  "connector-extra": cat(u8(3), Buffer.alloc(52), Buffer.alloc(16, 7)),
  "connector-junk": cat(u8(1), Buffer.alloc(52, 0x33)),
  "connector-short": cat(u8(1), u8(1, 0, 0, 0)),
};

function zstd(src: Buffer, level = 3): Buffer {
  const dst = Buffer.alloc(src.length + 1024);
  const n = Number(native().escp_zstd_compress(ptr(src), src.length, ptr(dst), dst.length, level));
  if (n < 0) throw new Error("zstd failed");
  return dst.subarray(0, n);
}
const text = Buffer.from("escp copies files like scp over parallel AES-128-GCM streams. ".repeat(40));
const zstdSeeds: Record<string, Buffer> = {
  "frame-fits": cat(u16(65535), zstd(text)),
  "frame-too-big": cat(u16(100), zstd(text)),
  "frame-zeros": cat(u16(4096), zstd(Buffer.alloc(60000))),
  "two-frames": cat(u16(65535), zstd(text), zstd(text.subarray(0, 100))),
  "skippable": cat(u16(1000), u8(0x50, 0x2a, 0x4d, 0x18), u8(4, 0, 0, 0), u8(1, 2, 3, 4), zstd(text.subarray(0, 500))),
  "not-zstd": cat(u16(1000), text.subarray(0, 200)),
};

for (const [dir, seeds] of [["fuzz_records", records], ["fuzz_handshake", handshake], ["fuzz_zstd", zstdSeeds]] as const) {
  const d = path.join(out, dir);
  fs.mkdirSync(d, { recursive: true });
  for (const [name, b] of Object.entries(seeds)) fs.writeFileSync(path.join(d, `seed-${name}`), b);
}
console.log(`seeds written to ${out}`);
