/**
 * Bounded garbage for long file lists. JavaScriptCore collects when a cycle
 * has allocated a share of the heap, so the per-file objects of a session
 * (entries, names, verdicts: a few KiB a file) let the heap, and with it the
 * resident set, climb for the first tens of thousands of files before it
 * levels off. A full collection every thousand files keeps the peak where
 * a short session leaves it (docs/performance.md § 4, memory).
 *
 * @example
 * const gc = new Collector();
 * for (const file of files) { handle(file); gc.tick(); }
 */
import { fullGC } from "bun:jsc";
import { dfgOnly } from "./jit.ts";

/**
 * Files between collections. Each costs 1-3 ms; every 1,024 files keeps the
 * garbage under ~4 MiB a thread for ~2 % of a 4 KiB-file session's CPU.
 */
export const GC_EVERY = 1024;

/** Counts files (or walk items) and runs a full collection every `every` of them. */
export class Collector {
  private n = 0;
  constructor(private readonly every = GC_EVERY) {}

  /** Counts `k` more; collects once `every` have passed since the last collection. */
  tick(k = 1): void {
    this.n += k;
    if (this.n < this.every) return;
    this.n = 0;
    fullGC();
  }
}

dfgOnly(Collector.prototype);
