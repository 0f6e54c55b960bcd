/**
 * File times as escp carries them: nanoseconds since 1970 as a bigint, of any size.
 * In an int64 of nanoseconds they would end in 2262 and begin in 1677, and
 * filesystems keep times past both (ext4 from 1901 to 2446): on the wire and to the
 * kernel they go as seconds and nanoseconds.
 *
 * @example
 * splitNs(-500_000_000n); // [-1n, 500_000_000n]: half a second before 1970
 */

export const NS_PER_S = 1_000_000_000n;

/** Whole seconds (rounded down) and the nanoseconds past them (0 ≤ ns < 1e9). */
export function splitNs(ns: bigint): [bigint, bigint] {
  const s = ns / NS_PER_S - (ns % NS_PER_S < 0n ? 1n : 0n);
  return [s, ns - s * NS_PER_S];
}
