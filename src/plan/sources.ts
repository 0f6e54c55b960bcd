/**
 * Source operands on the sending side: globs are expanded there, as a
 * remote shell expands them for scp (`escp 'host:logs/*.gz' .`), and a
 * pattern that matches nothing is an error naming it.
 */
import fs from "node:fs";
import path from "node:path";

export interface Sources {
  paths: string[];
  missing: { path: string; message: string }[];
}

const GLOB = /[*?[]/;

export function expandSources(operands: string[]): Sources {
  const out: Sources = { paths: [], missing: [] };
  for (const op of operands) {
    if (!GLOB.test(op)) {
      out.paths.push(op);
      continue;
    }
    const base = path.isAbsolute(op) ? "/" : ".";
    const matches = [...new Bun.Glob(path.isAbsolute(op) ? op.slice(1) : op).scanSync({ cwd: base, dot: false, onlyFiles: false })]
      .map((m) => (base === "/" ? "/" + m : m))
      .sort();
    // As a shell would: the pattern's matches (a file literally named like it is one of
    // them); only a pattern that matches nothing may still name a file as it is.
    if (matches.length) out.paths.push(...matches);
    else if (fs.existsSync(op)) out.paths.push(op);
    else out.missing.push({ path: op, message: "No such file or directory" });
  }
  return out;
}
