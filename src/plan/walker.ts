/**
 * The directory walker thread (see walkInWorker in walk.ts): runs the walk
 * and posts its items in batches, never more than two batches ahead of the
 * sender; null ends the walk.
 */
import { walk, useDirLibrary, type WalkItem, type WalkOptions } from "./walk.ts";
import { dirNative } from "../native.ts";
import { Collector } from "../heap.ts";
import { dfgOnly } from "../jit.ts";

const gc = new Collector();

declare const self: Worker;

let credit = 2;
let resume: (() => void) | undefined;

type ToWalker = "more" | { libPath: string } | { sources: string[]; opts: WalkOptions; batch: number };

self.onmessage = (ev: MessageEvent<ToWalker>) => {
  const m = ev.data;
  if (m === "more") {
    credit++;
    resume?.();
  } else if ("libPath" in m) {
    useDirLibrary(dirNative(m.libPath)); // prestartWalker: the library the main thread loaded
  } else {
    void run(m.sources, m.opts, m.batch);
  }
};

/** Posts a batch, at once when the sender has room for it, else (a promise) once it has. */
function send(items: WalkItem[] | null): Promise<void> | void {
  if (credit > 0) {
    credit--;
    self.postMessage(items);
    return;
  }
  return (async () => {
    while (credit === 0) await new Promise<void>((r) => (resume = r));
    credit--;
    self.postMessage(items);
  })();
}

async function run(sources: string[], opts: WalkOptions, size: number): Promise<void> {
  let batch: WalkItem[] = [];
  const emit = (item: WalkItem) => {
    batch.push(item);
    if (batch.length < size) return;
    gc.tick(batch.length);
    const full = batch;
    batch = [];
    return send(full);
  };
  dfgOnly(emit);
  await walk(sources, opts, emit);
  if (batch.length) await send(batch);
  await send(null);
}
