/**
 * Source operands on the sending side: `~`, globs and backslash escapes are
 * expanded there, as scp's remote glob expands them (`escp 'host:logs/*.gz' .`),
 * and a pattern that matches nothing is an error naming it.
 */
import fs from "node:fs";
// Not node:path: Bun's replaces what is not UTF-8 in a name with U+FFFD (names.ts).
import path from "path-browserify";
import { expandHome, unknownUser } from "./target.ts";
import { decodeName, fsPath, lossyName } from "../names.ts";

export interface Sources {
  paths: string[];
  missing: { path: string; message: string }[];
}

/** What makes an operand a pattern for the remote's glob. */
export const GLOB = /[*?[]/;

export function expandSources(operands: string[]): Sources {
  const out: Sources = { paths: [], missing: [] };
  for (const given of operands) {
    if (unknownUser(given)) {
      out.missing.push({ path: given, message: "no such user" });
      continue;
    }
    const op = expandHome(given);
    if (!GLOB.test(op)) {
      out.paths.push(unescaped(op));
      continue;
    }
    const base = path.isAbsolute(op) ? "/" : ".";
    const found = new Set(new Bun.Glob(globPattern(path.isAbsolute(op) ? op.slice(1) : op)).scanSync({ cwd: base, dot: false, onlyFiles: false }));
    const matches = [...found].flatMap((m) => withBytes(base === "/" ? "/" + m : m)).sort();
    // As a shell would: the pattern's matches (a file literally named like it is one of
    // them); only a pattern that matches nothing may still name a file as it is.
    if (matches.length) out.paths.push(...matches);
    else if (fs.existsSync(fsPath(op))) out.paths.push(op);
    else out.missing.push({ path: op, message: "No such file or directory" });
  }
  return out;
}

/**
 * A pattern as glob(3) reads it (scp's remote glob), in Bun.Glob's terms: a backslash
 * makes any character plain (`My\ Docs/*.pdf`; Bun.Glob keeps `\ ` as two
 * characters), `**` is `*` (not any depth), and braces and a leading `!` are plain
 * characters (not alternatives, not a negation). A bracket expression goes as it is.
 *
 * @example
 * globPattern("My\\ Docs/**.pdf"); // "My Docs/*.pdf"
 */
export function globPattern(op: string): string {
  let out = "";
  for (let i = 0; i < op.length; i++) {
    const c = op[i];
    if (c === "\\" && i + 1 < op.length) {
      const next = op[++i];
      out += "*?[]{}!\\".includes(next) ? `\\${next}` : next;
    } else if (c === "[") {
      const bracket = bracketExpression(op, i);
      if (!bracket) {
        out += "\\[";
        continue;
      }
      out += bracket.glob;
      i = bracket.end;
    } else if (c === "*") {
      out += "*";
      while (op[i + 1] === "*") i++;
    } else {
      out += "{}!".includes(c) ? `\\${c}` : c;
    }
  }
  return out;
}

/** POSIX character classes as glob(3) has them, in ranges Bun.Glob reads. */
const CLASSES: Record<string, string> = {
  alpha: "a-zA-Z", digit: "0-9", alnum: "a-zA-Z0-9", lower: "a-z", upper: "A-Z", xdigit: "0-9a-fA-F", blank: " \t", space: " \t\n\r\f\v",
};

/**
 * The bracket expression at op[i] ("[") in Bun.Glob's terms, and the index of its
 * closing "]"; undefined when it has none (then "[" is a plain character). Only `!`
 * negates, as in OpenSSH's glob: a leading `^` is a character; a `]` first in it is
 * one of its characters; `[:alpha:]` and the other classes above become ranges.
 */
function bracketExpression(op: string, i: number): { glob: string; end: number } | undefined {
  let j = i + 1, glob = "[";
  if (op[j] === "!") glob += op[j++];
  else if (op[j] === "^") (glob += "\\^"), j++;
  if (op[j] === "]") glob += op[j++];
  for (; j < op.length; j++) {
    if (op[j] === "]") return { glob: glob + "]", end: j };
    const close = op[j] === "[" && op[j + 1] === ":" ? op.indexOf(":]", j + 2) : -1;
    const cls = close > 0 ? CLASSES[op.slice(j + 2, close)] : undefined;
    if (cls !== undefined) {
      glob += cls;
      j = close + 1;
    } else {
      glob += op[j];
    }
  }
  return undefined;
}

/**
 * A path without a pattern, its backslash escapes taken out as scp's remote glob
 * takes them out (`host:my\ file` is "my file"); a file whose name really has the
 * backslashes, and no file without them, is still found as written.
 *
 * @example
 * unescaped("logs/a\\ b.txt"); // "logs/a b.txt"
 */
function unescaped(op: string): string {
  if (!op.includes("\\")) return op;
  const plain = withoutEscapes(op);
  return fs.existsSync(fsPath(op)) && !fs.existsSync(fsPath(plain)) ? op : plain;
}

/**
 * `s` with each backslash escape taken out, as the remote's glob takes them out.
 *
 * @example
 * withoutEscapes("a\\ b\\.txt"); // "a b.txt"
 */
export function withoutEscapes(s: string): string {
  return s.replace(/\\(.)/gs, "$1");
}

/**
 * How many data streams a copy of these sources can use: one per block it
 * has to move (each file at least one), at most `threads`. Every stream costs
 * a worker on each side and a connection before the first byte moves, which
 * is most of a small copy's time on top of ssh; a directory may hold any
 * amount, so it gets them all. Stops at the first source that settles it,
 * so a glob of thousands of files costs a few stat calls.
 *
 * @example
 * streamsFor(["one-byte.txt"], 4, 1 << 20); // 1
 * streamsFor(["big.iso"], 4, 1 << 20);      // 4
 */
export function streamsFor(paths: string[], threads: number, blockSize: number): number {
  let blocks = 0;
  for (const p of paths) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(fsPath(p));
    } catch {} // a source that cannot be read is one file's failure, reported when it is sent
    if (st?.isDirectory()) return threads;
    blocks += Math.max(1, Math.ceil((st?.isFile() ? st.size : 0) / blockSize));
    if (blocks >= threads) return threads;
  }
  return Math.max(1, blocks);
}

/**
 * The paths Bun.Glob's match `m` stands for: Bun gives U+FFFD for each byte of a
 * name that is not UTF-8, so such a name is found again in its directory (every
 * name that reads like it: x\376 and x\377 both read "x\ufffd").
 */
function withBytes(m: string): string[] {
  if (!m.includes("\ufffd")) return [m];
  let paths = [m.startsWith("/") ? "/" : ""];
  for (const part of m.split("/").filter(Boolean)) {
    paths = paths.flatMap((dir) => {
      if (!part.includes("\ufffd")) return [dir + part + "/"];
      let names: string[] = [];
      try {
        names = fs.readdirSync(fsPath(dir || "."), { encoding: "buffer" }).map(decodeName);
      } catch {} // gone since the glob saw it: it matches nothing now
      return names.filter((n) => lossyName(n) === part).map((n) => dir + n + "/");
    });
  }
  return paths.map((p) => p.slice(0, -1));
}
