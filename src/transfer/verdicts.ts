/**
 * Per-file verdicts (DONE from the sender, RESULT from the receiver) wait here
 * and leave together, one record per batch of files: with many small files a
 * record, a seal and a send() per file would cost more than the files.
 *
 * @example
 * const done = new VerdictBatch(pool, Rec.DONE);
 * done.add(verdict); // ... more
 * done.flush();      // at the end of each batch of work
 */
import { encodeVerdicts, type FileVerdict } from "../protocol.ts";
import type { StreamPool } from "../streams/pool.ts";
import { dfgOnly } from "../jit.ts";

/** Verdicts per record: keeps a record well under the stream-0 body limit even with long messages. */
const MAX_PER_RECORD = 256;

export class VerdictBatch {
  private list: FileVerdict[] = [];

  constructor(
    private readonly pool: StreamPool,
    private readonly type: number,
  ) {}

  add(v: FileVerdict): void {
    this.list.push(v);
    if (this.list.length >= MAX_PER_RECORD) this.flush();
  }

  flush(): void {
    if (!this.list.length) return;
    const batch = this.list;
    this.list = [];
    this.pool.sendControl(this.type, encodeVerdicts(batch));
  }
}

dfgOnly(VerdictBatch.prototype);
