/**
 * Old builds' directories in ~/.cache/escp. Each build keeps its files in a
 * directory of its own (version.ts CACHE_DIR: the native library, and on a
 * remote host the bootstrapped executable, ~110 MB), so without pruning every
 * upgrade would leave one behind on every host it ever copied to.
 *
 * A directory's mtime says when its build last ran: every start marks it
 * (at most once an hour, so a start costs a stat, not a write). When a build
 * makes its directory (its first start on this host), the other builds'
 * directories go, except the two used last (hosts reached by clients of
 * mixed versions would otherwise upload 52 MB at every switch) and any used
 * within a day (a client of that build may be installing it right now).
 * Only directories named like a version, owned by us, in a ~/.cache/escp of
 * ours that nobody else can write to: nothing else there is touched, but for
 * what a start killed while it removed one left (`.pruning-NAME-PID`).
 *
 *   markUsed(`${home}/.cache/escp/${CACHE_TAG}`);
 *   pruneOtherBuilds(`${home}/.cache/escp`, CACHE_TAG, uid);
 */
import fs from "node:fs";

/** Other builds' directories kept however old, the most recently used first. */
export const KEEP_OTHERS = 2;
/** A directory used more recently than this is never removed. */
export const IN_USE_MS = 24 * 3600_000;
const MARK_EVERY_MS = 3600_000;
/** VERSION, VERSION-BUILD or VERSION-BUILD-MACHINE (0.1.0, 0.1.0-430312b91eb6, 0.1.0-dev-x86_64). */
const BUILD_DIR = /^\d+\.\d+\.\d+(?:-[\w.+-]+)?$/;

/** Records that the build owning `dir` ran now. Failure (a read-only home) only costs pruning accuracy. */
export function markUsed(dir: string, now = Date.now()): void {
  try {
    if (fs.statSync(dir).mtimeMs < now - MARK_EVERY_MS) fs.utimesSync(dir, now / 1000, now / 1000);
  } catch {
    // nothing to mark
  }
}

/** Removes the other builds' directories under `root` that are neither recent nor among the last used. Returns their names. */
export function pruneOtherBuilds(root: string, ours: string, uid: number, now = Date.now()): string[] {
  try {
    const st = fs.lstatSync(root);
    if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o022) !== 0) return [];
    const others = fs.readdirSync(root).filter((name) => name !== ours && BUILD_DIR.test(name))
      .map((name) => ({ name, st: fs.lstatSync(`${root}/${name}`, { throwIfNoEntry: false }) }))
      .filter(({ st }) => st?.isDirectory() && st.uid === uid)
      .sort((a, b) => b.st!.mtimeMs - a.st!.mtimeMs);
    const removed: string[] = [];
    // What a start killed while it removed a build left behind.
    for (const name of fs.readdirSync(root)) {
      const pid = /^\.pruning-.+-(\d+)$/.exec(name)?.[1];
      if (pid && !fs.existsSync(`/proc/${pid}`)) fs.rmSync(`${root}/${name}`, { recursive: true, force: true });
    }
    for (const { name, st } of others.slice(KEEP_OTHERS)) {
      if (st!.mtimeMs >= now - IN_USE_MS) continue;
      // Out of the way first: a directory being emptied looks just used (its mtime is now), and
      // another start pruning at this moment would keep it, and remove one that was used.
      const doomed = `${root}/.pruning-${name}-${process.pid}`;
      try {
        fs.renameSync(`${root}/${name}`, doomed);
      } catch {
        continue; // the other start took it
      }
      fs.rmSync(doomed, { recursive: true, force: true });
      removed.push(name);
    }
    return removed;
  } catch {
    return []; // another start pruning at the same moment, or a home we cannot write
  }
}
