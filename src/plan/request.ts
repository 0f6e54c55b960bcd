/**
 * What a pull asked for, against what the remote sender announces: a remote that
 * is not honest (compromised, or not escp) must not write names the user did not
 * ask for (`~/.bashrc`, `.ssh/authorized_keys` beside the file asked for) or
 * directories without -r. OpenSSH's scp checks the same since 8.0 (CVE-2019-6111:
 * "filename does not match request").
 *
 * A top-level name must be the last name of an operand as the remote reads it
 * (backslash escapes taken out), or match it as a glob(3) pattern, which leaves
 * names that begin with a dot to patterns that begin with one. An operand whose
 * last name the remote decides (`host:`, `~`, `..`) admits any one name; `dir/.`
 * admits its contents. Anything below a top-level name needs -r and that name
 * announced as a directory first.
 *
 * @example
 * const asked = new Request(["logs/*.gz", "notes.txt"], false);
 * asked.refuses({ path: "a.gz", kind: "file", top: true });    // undefined
 * asked.refuses({ path: ".bashrc", kind: "file", top: true }); // "does not match the request"
 */
import path from "path-browserify";
import { GLOB, globPattern, withoutEscapes } from "./sources.ts";
import type { FileEntry } from "../protocol.ts";

export class Request {
  private readonly names = new Set<string>();
  private readonly patterns: Bun.Glob[] = [];
  private readonly dotPatterns: Bun.Glob[] = [];
  private readonly anyName: boolean;
  private readonly merges: boolean;
  /** Top-level directories announced so far: what later paths may lie below. */
  private readonly tops = new Set<string>();

  constructor(operands: string[], private readonly recursive: boolean) {
    let anyName = false, merges = false;
    for (const op of operands) {
      // The remote takes the escapes out of an operand without a pattern (`d1/\.` is `d1/.`,
      // `d1\/` is `d1/`), unless a file has the name as written: both spellings count.
      const last = path.basename(op.replace(/\/+$/, ""));
      const spellings = GLOB.test(last) || !op.includes("\\") ? [op] : [op, withoutEscapes(op)];
      for (const spelling of spellings) {
        const trimmed = spelling.replace(/\/+$/, "");
        const base = path.basename(trimmed);
        if (base === ".") merges = true;
        if (trimmed === "" || base === "." || base === ".." || (base.startsWith("~") && !trimmed.includes("/"))) anyName = true;
        else this.names.add(base);
      }
      if (!GLOB.test(last)) continue;
      this.names.add(withoutEscapes(last));
      try {
        const glob = new Bun.Glob(globPattern(last));
        (last.startsWith(".") || last.startsWith("\\.") ? this.dotPatterns : this.patterns).push(glob);
      } catch {
        // Not a pattern Bun can read: the remote matched nothing with it either.
      }
    }
    this.anyName = anyName;
    this.merges = merges;
  }

  /** Why the entry is not what was asked for, or undefined when it is. */
  refuses(e: Pick<FileEntry, "path" | "kind" | "top" | "merge">): string | undefined {
    const slash = e.path.indexOf("/");
    if (!e.top) {
      if (!this.recursive) return "is below the name asked for, and -r was not given";
      return slash > 0 && this.tops.has(e.path.slice(0, slash)) ? undefined : "does not match the request";
    }
    if (slash >= 0) return "does not match the request";
    if (e.kind === "dir" && !this.recursive) return "is a directory, and -r was not given";
    if (e.merge ? !this.merges : !this.matches(e.path)) return "does not match the request";
    if (e.kind === "dir") this.tops.add(e.path);
    return undefined;
  }

  private matches(name: string): boolean {
    if (this.anyName || this.names.has(name)) return true;
    const globs = name.startsWith(".") ? this.dotPatterns : this.patterns;
    return globs.some((g) => g.match(name));
  }
}
