/**
 * Remote-to-remote copies (`escp a:x b:y`, and what `-3` asks for): relayed
 * through this host, as scp ≥ 8.7 does by default, so the two remotes need
 * no access to each other. The files pass through a private spool directory
 * here: pulled from the source host (times and modes kept) while the target host
 * is asked whether it takes the destination (a missing directory there stops the
 * pull at once), then pushed to the
 * target with the user's options, then removed. This needs local space for
 * the files of one copy; streaming the relay without the spool is future work
 * (docs/design-notes.md).
 */
import fs from "node:fs";
import { tmpDir } from "../system.ts";
// Not node:path: Bun's replaces what is not UTF-8 in a name with U+FFFD (names.ts).
import path from "path-browserify";
import type { Options } from "../cli/args.ts";
import { formatOperand, type Operand, type RemoteOperand } from "../cli/operands.ts";
import type { Report } from "../report.ts";
import { destinationRefusal, together, transfer, type TransferResult } from "./client.ts";
import { decodeName } from "../names.ts";
import { errnoText } from "../native.ts";

export async function relay(o: Options, sources: Operand[], target: Operand, report: Report, signal?: AbortSignal, several = sources.length > 1): Promise<TransferResult> {
  pruneSpools(tmpDir());
  const from = (sources.find((s) => s.kind === "remote") as RemoteOperand).host, to = (target as RemoteOperand).host;
  const around = `point TMPDIR elsewhere, or use -R to send straight from ${from} to ${to}`;
  // The target host is asked for its destination while the pull starts, as scp -3 opens
  // both at once: one it refuses (a missing directory) stops the pull in its first second,
  // and is what the user is told.
  const pull = new AbortController();
  const stop = () => pull.abort();
  signal?.addEventListener("abort", stop);
  const refusal = destinationRefusal(o, target as RemoteOperand, several, report).then((r) => (r && stop(), r));
  // Named for this process, so that a later relay can tell it was left by a kill -9.
  let spool: string;
  try {
    spool = fs.mkdtempSync(path.join(tmpDir(), `${SPOOL_PREFIX}${process.pid}-`));
  } catch (e) {
    const refused = await refusal;
    signal?.removeEventListener("abort", stop);
    return { failures: [], ...(refused ?? { error: `a copy between two remote hosts passes through ${tmpDir()} on this host, where no spool can be made (${errnoText(e)}): ${around}` }) };
  }
  const started = performance.now();
  const asSource = (p: string) => spoolSource(p, spool, sources as RemoteOperand[]);
  try {
    // A file in the spool has not arrived yet: its file_start and file_done are the push's.
    const inSpool = report.showPathsAs(asSource, false);
    const pulled = await transfer({ ...o, preserve: true }, sources, { kind: "local", path: spool }, report, pull.signal).finally(inSpool);
    // Interrupted, the user is not kept waiting for the answer.
    const refused = signal?.aborted ? undefined : await refusal;
    if (refused) {
      report.tally.forgetUnfinished(); // the target's refusal says it all: the pull's file is not news
      return { failures: [], ...refused };
    }
    // The user named two remote hosts: a full disk here needs saying where, and the way around it.
    if ([pulled.error ?? "", ...pulled.failures.map((f) => f.message)].some((m) => /No space left on device|Disk quota exceeded/.test(m))) {
      report.warning(`a copy between two remote hosts passes through ${path.dirname(spool)} on this host, which is full: ${around}`);
    }
    if (pulled.error || pulled.interrupted) return pulled;
    const names = fs.readdirSync(spool, { encoding: "buffer" }).map(decodeName).sort();
    if (names.length === 0) return pulled;
    // A pattern that matched several files is several sources: only into a directory.
    const fromSpool = report.showPathsAs(asSource);
    const pushed = await transfer(o, names.map((n) => ({ kind: "local", path: path.join(spool, n) }) as Operand), target, report, signal, several || names.length > 1).finally(fromSpool);
    // What reached the target, in the time the whole relay took.
    return { ...pushed, summary: pushed.summary && together([pushed.summary], started, report.failures), failures: report.failures };
  } finally {
    signal?.removeEventListener("abort", stop);
    fs.rmSync(spool, { recursive: true, force: true });
  }
}

const SPOOL_PREFIX = "escp-relay-";

function globMatches(pattern: string, name: string): boolean {
  try {
    return new Bun.Glob(pattern).match(name);
  } catch {
    return false; // not a pattern Bun can read: it matched nothing on the remote either
  }
}

/**
 * Where a file the pull put in the spool came from, for messages: `host:dir/name`
 * beside the source operand whose last name it starts with, or matches as a glob (a
 * `dir/.`'s contents sit in dir). Anything else is as given.
 *
 * @example
 * spoolSource("/tmp/escp-relay-9-x/tree/a", "/tmp/escp-relay-9-x", [{ kind: "remote", host: "h", path: "src/tree" }]);
 * // "h:src/tree/a"
 */
export function spoolSource(p: string, spool: string, sources: RemoteOperand[]): string {
  if (!p.startsWith(`${spool}/`)) return p;
  const rel = p.slice(spool.length + 1);
  const top = rel.split("/", 1)[0];
  const src = sources.find((s) => path.basename(s.path) === top) ?? sources.find((s) => globMatches(path.basename(s.path), top)) ?? sources[0];
  if (!src) return p;
  const dir = path.dirname(src.path);
  return formatOperand({ ...src, path: dir === "." ? rel : `${dir}/${rel}` });
}

/**
 * Removes this user's spools whose relay was killed (kill -9 leaves its
 * `finally` unrun): `escp-relay-PID-XXXXXX` where no process PID lives. A
 * spool of a relay still running is kept (and one whose PID was reused, until
 * that process ends).
 */
export function pruneSpools(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const uid = process.getuid?.();
  for (const name of names) {
    const m = SPOOL_NAME.exec(name);
    if (!m || alive(Number(m[1]))) continue;
    const spool = path.join(dir, name);
    try {
      if (fs.lstatSync(spool).uid === uid) fs.rmSync(spool, { recursive: true, force: true });
    } catch {} // gone meanwhile, or not ours to remove: the next relay tries again
  }
}

const SPOOL_NAME = new RegExp(`^${SPOOL_PREFIX}(\\d+)-`);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // someone else's
  }
}
