/**
 * Workers started before they are needed. A Bun Worker takes tens of
 * milliseconds to boot (a new JavaScript realm, then the native library),
 * which a 1-byte copy would otherwise wait for once per stream: the client
 * starts its workers while ssh logs in, the server while the streams
 * connect. Spare workers are unref'd, so they never keep a process alive.
 *
 * @example
 * prestart(WORKER_URL, 5, { kind: "load", libPath: nativePath() });
 * const w = takeWorker(WORKER_URL); // a spare if there is one, else a new Worker
 * dropSpares();                     // the session ended before using them all
 */
const spares = new Map<string, Worker[]>();

/** Bun's Worker (ref/unref, as a timer's); the DOM typing the project also loads lacks them. */
type BunWorker = Worker & { ref(): void; unref(): void };

/** Starts workers of `url` until `count` are spare, each sent `first` (e.g. to load the native library). */
export function prestart(url: string, count: number, first?: unknown): void {
  const list = spares.get(url) ?? [];
  while (list.length < count) {
    const w = new Worker(url) as BunWorker;
    w.unref();
    if (first !== undefined) w.postMessage(first);
    list.push(w);
  }
  spares.set(url, list);
}

/** A started worker of `url`, or a new one; the caller owns it (it keeps the process alive). */
export function takeWorker(url: string): Worker {
  const w = (spares.get(url)?.shift() ?? new Worker(url)) as BunWorker;
  w.ref();
  return w;
}

/** Terminates the spares nobody took. */
export function dropSpares(): void {
  for (const list of spares.values()) for (const w of list.splice(0)) w.terminate();
}
