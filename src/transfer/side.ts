/**
 * One end of a transfer, whichever process it runs in: the sender walks and
 * sends the sources, the receiver settles files under the target. The client
 * and the server both run exactly one of these over their stream pool.
 */
import { Sender } from "./sender.ts";
import { Receiver } from "./receiver.ts";
import type { StreamPool } from "../streams/pool.ts";
import type { Events, TransferStats } from "../report.ts";
import type { SessionOptions, TransferSummary } from "../protocol.ts";
import type { Target } from "../plan/target.ts";

export interface Side {
  run(): Promise<void>;
  readonly stats: TransferStats;
  /** After an interrupt or fatal error: temporary files go (unless --resume keeps them). */
  cleanup(): void;
}

export type SideSpec = { role: "receiver"; target: Target } | { role: "sender"; sources: string[] };

export function makeSide(spec: SideSpec, pool: StreamPool, session: SessionOptions, blockSize: number, events: Events): Side {
  const opts = { ...session, blockSize };
  if (spec.role === "receiver") return new Receiver(pool, spec.target, opts, events);
  const sender = new Sender(pool, opts, events);
  return { run: () => sender.run(spec.sources), stats: sender.stats, cleanup: () => {} };
}

/** The figures both the report message and the user's summary carry. */
export function summarize(side: Side, pool: StreamPool, startedMs: number, failures: TransferSummary["failures"]): TransferSummary {
  return {
    files: side.stats.files,
    bytes: side.stats.bytes,
    bytesSkipped: side.stats.skippedBytes,
    ...pool.totals(),
    seconds: (performance.now() - startedMs) / 1000,
    failures,
    streams: pool.dataStreams,
  };
}
