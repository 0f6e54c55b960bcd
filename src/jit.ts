/**
 * JavaScriptCore tiering for the per-file code. Its top tier (FTL) spends
 * 5-50 ms of a JIT thread on each hot function it compiles; our per-file
 * functions run a few µs per file, so on a 2-core host that compile time
 * outweighs what FTL code saves until a session has moved hundreds of
 * thousands of files. They stay in the DFG tier instead (docs/performance.md).
 * An async function that awaits is compiled as a body function of its own, which
 * noFTL on the async function does not reach: a hot loop in one belongs in a
 * synchronous function it calls (walk.ts readChunk, emitEntries).
 *
 * @example
 * dfgOnly(Receiver.prototype, decodeFiles);
 */
import { noFTL } from "bun:jsc";

/** Keeps the given functions, and the methods of the given prototypes, out of the FTL tier. */
export function dfgOnly(...targets: (object | ((...args: any[]) => any))[]): void {
  for (const t of targets) {
    if (typeof t === "function") {
      noFTL(t as (...args: any[]) => any);
      continue;
    }
    for (const k of Object.getOwnPropertyNames(t)) {
      const d = Object.getOwnPropertyDescriptor(t, k);
      if (k !== "constructor" && typeof d?.value === "function") noFTL(d.value);
      if (typeof d?.get === "function") noFTL(d.get);
    }
  }
}
