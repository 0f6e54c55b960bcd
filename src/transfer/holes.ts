/**
 * --sparse: holes never travel. The sender skips every block that holds no
 * data, and --verify's read-back skips the same blocks of the written file
 * (the receiver wrote each block that came whole, holes left as holes), so
 * both digests cover the same blocks.
 *
 * @example
 * for (let off = 0n; off < size; off += bs) {
 *   off = nextDataBlock(fd, off, bs, size);
 *   if (off >= size) break;
 *   // … block at off …
 * }
 */
import { native } from "../native.ts";

const ENXIO = 6n;

/** The first block at or after `at` (a block boundary) with data in it; `size` when only a hole is left. */
export function nextDataBlock(fd: number, at: bigint, blockSize: bigint, size: bigint): bigint {
  const data = BigInt(native().escp_seek_data(fd, at));
  if (data === -ENXIO) return size;
  return data >= at + blockSize ? (data / blockSize) * blockSize : at;
}
