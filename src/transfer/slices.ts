/**
 * Whole-file work on a session's main thread (hashing a file for --resume and
 * --verify, copying the blocks --resume kept) runs in slices: between them the
 * event loop answers the control channel, whose peer gives up after three
 * silent keepalive intervals (session/control.ts). A terabyte file is
 * minutes of such work; one slice is a few blocks.
 *
 * @example
 * for (let i = 0; i < blocks; i++) { hashBlock(i); await slice(); }
 */

/** Longest run between two turns of the event loop. */
const SLICE_MS = 50;

let since = performance.now();

/** Lets the event loop run if the current slice has lasted SLICE_MS. */
export async function slice(): Promise<void> {
  if (performance.now() - since < SLICE_MS) return;
  await new Promise<void>((resolve) => setImmediate(resolve));
  since = performance.now();
}
