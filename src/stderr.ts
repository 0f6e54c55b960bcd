/**
 * Writes to this process's stderr. A stderr that cannot be written (a closed pipe,
 * `2>/dev/full`, an ssh channel gone) loses the text, not the copy: unheard, a write
 * error would end the process mid-copy, before its cleanup, with temporary files left.
 * The listener goes on at the first write, since making process.stderr costs a few ms
 * at start-up, which a copy that prints nothing need not pay.
 *
 * @example
 * toStderr("escp: warning: ...\n");
 */
let guarded = false;

export function toStderr(text: string): void {
  if (!guarded) {
    process.stderr.on("error", () => {});
    guarded = true;
  }
  process.stderr.write(text);
}
