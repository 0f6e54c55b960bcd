/**
 * File names as the kernel has them: bytes, not always UTF-8. A name that is
 * not valid UTF-8 (Latin-1 from an old system, a truncated sequence) keeps
 * each byte that does not decode as a lone surrogate U+DC80-U+DCFF, as
 * Python's "surrogateescape" does, so it survives the trip through
 * JavaScript strings, the file list and the other end, and is created
 * there with the same bytes, as scp creates it. Valid UTF-8 never decodes
 * to a lone surrogate, so the mapping is exact both ways.
 *
 * @example
 * const s = decodeName(new Uint8Array([0x63, 0x61, 0x66, 0xe9])); // "caf\udce9"
 * encodeName(s);   // Uint8Array [0x63, 0x61, 0x66, 0xe9]
 * fsPath(s);       // a Buffer of those bytes, for node:fs
 */

import fs from "node:fs";
import { dfgOnly } from "./jit.ts";

// ignoreBOM: a name may begin with U+FEFF, which a decoder would otherwise drop.
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const lossy = new TextDecoder("utf-8", { ignoreBOM: true });
const utf8 = new TextEncoder();
/** A byte kept from an undecodable name (with /u, a surrogate pair never matches). */
const ESCAPED = /[\udc80-\udcff]/u;

/** The name `b` holds, its undecodable bytes as U+DC80-U+DCFF. */
export function decodeName(b: Uint8Array): string {
  try {
    return strict.decode(b);
  } catch {
    return decodeEscaping(b);
  }
}

/** Whether code point `c` stands for an undecodable byte (then the byte is c - 0xDC00). */
function isEscape(c: number): boolean {
  return c >= 0xdc80 && c <= 0xdcff;
}

/** The bytes of `s`, each U+DC80-U+DCFF back to the byte it stands for. */
export function encodeName(s: string): Uint8Array {
  if (!ESCAPED.test(s)) return utf8.encode(s);
  const out: number[] = [];
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (isEscape(c)) out.push(c - 0xdc00);
    else for (const x of utf8.encode(ch)) out.push(x);
  }
  return Uint8Array.from(out);
}

/** Writes the bytes of `s` at the start of `out`, which has room for 3 per UTF-16 unit; returns how many. */
export function encodeNameInto(s: string, out: Uint8Array): number {
  if (!ESCAPED.test(s)) return utf8.encodeInto(s, out).written;
  const b = encodeName(s);
  out.set(b);
  return b.length;
}

/** Whether `s` holds bytes of a name that is not UTF-8 (then only encodeName gives its bytes). */
export function hasEscapedBytes(s: string): boolean {
  return ESCAPED.test(s);
}

/** How many bytes the name `s` stands for (Buffer.byteLength counts an escaped byte as U+FFFD's 3). */
export function nameBytes(s: string): number {
  return ESCAPED.test(s) ? encodeName(s).length : Buffer.byteLength(s);
}

/** The longest start of `s`, in whole characters, whose bytes are at most `max`. */
export function prefixOfBytes(s: string, max: number): string {
  let bytes = 0, end = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    const n = c < 0x80 || isEscape(c) ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    if (bytes + n > max) break;
    bytes += n;
    end += ch.length;
  }
  return s.slice(0, end);
}

/** The working directory with its bytes (process.cwd() has U+FFFD for what is not UTF-8). */
export function workingDir(): string {
  try {
    return decodeName(fs.readlinkSync("/proc/self/cwd", { encoding: "buffer" }));
  } catch {
    return process.cwd();
  }
}

/** `s` as node:fs takes it: the string itself, or its bytes when it holds escaped ones. */
export function fsPath(s: string): string | Buffer {
  return ESCAPED.test(s) ? Buffer.from(encodeName(s)) : s;
}

/**
 * This process's arguments with their bytes (from /proc/self/cmdline): Bun's
 * process.argv replaces what is not UTF-8 with U+FFFD, so a file named in
 * Latin-1 on the command line (or by a shell glob) could not be found.
 */
export function rawArgs(argv: string[]): string[] {
  if (!argv.some((a) => a.includes("\ufffd"))) return argv;
  try {
    const cmdline = fs.readFileSync("/proc/self/cmdline");
    const parts: string[] = [];
    let start = 0;
    for (let i = 0; i < cmdline.length; i++) {
      if (cmdline[i] !== 0) continue;
      parts.push(decodeName(cmdline.subarray(start, i)));
      start = i + 1;
    }
    const tail = parts.slice(parts.length - argv.length);
    // The same arguments, unless something was added or taken away on the way.
    return tail.length === argv.length && tail.every((a, i) => lossyName(a) === argv[i]) ? tail : argv;
  } catch {
    return argv;
  }
}

/** `s` as Bun shows it where it decodes bytes itself (process.argv, Bun.Glob): U+FFFD for each escaped byte. */
export function lossyName(s: string): string {
  return lossy.decode(encodeName(s));
}

/** The slow path: maximal valid UTF-8 sequences decode, every other byte is escaped. */
function decodeEscaping(b: Uint8Array): string {
  let out = "";
  let i = 0;
  while (i < b.length) {
    const n = sequenceLength(b, i);
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + b[i]);
      i++;
    } else {
      out += strict.decode(b.subarray(i, i + n));
      i += n;
    }
  }
  return out;
}

/** Bytes of the valid UTF-8 sequence at b[i], or 0 if there is none (RFC 3629's table). */
function sequenceLength(b: Uint8Array, i: number): number {
  const c = b[i];
  if (c < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf) => i + k < b.length && b[i + k] >= lo && b[i + k] <= hi;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    const [lo, hi] = c === 0xe0 ? [0xa0, 0xbf] : c === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const [lo, hi] = c === 0xf0 ? [0x90, 0xbf] : c === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

dfgOnly(decodeName, encodeName, encodeNameInto, hasEscapedBytes, nameBytes);
