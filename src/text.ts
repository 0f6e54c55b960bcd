/**
 * Text from elsewhere (file names a remote sent, its error messages) made
 * safe for a terminal: control characters are shown as escapes, as OpenSSH
 * scp does, so a name cannot move the cursor, retitle the window or hide
 * what was printed before it.
 *
 * @example
 * printable("evil\x1b]0;pwned\x07.txt"); // "evil\\033]0;pwned\\007.txt"
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\udc80-\udcff]/gu;

/** Control characters, and the bytes of a name that is not UTF-8 (names.ts), as octal escapes. */
export function printable(s: string): string {
  return s.replace(CONTROL, (c) => "\\" + (c.charCodeAt(0) & 0xff).toString(8).padStart(3, "0"));
}
