/**
 * The workers' addresses. Each worker is also an entry point of
 * `bun build --compile` (scripts/build.sh), embedded under /$bunfs/root/ by
 * its path below src/. Inside the executable they must be named there:
 * with --bytecode, import.meta.url keeps the build machine's source path,
 * which a host that only has the executable does not have (and a host that
 * has it would run those sources, not the embedded ones). Under
 * `bun src/main.ts` they are the sources beside this file.
 */
const base = Bun.main.startsWith("/$bunfs/") ? "file:///$bunfs/root/" : new URL("./", import.meta.url).href;

export const WORKER_URL = new URL("streams/worker.ts", base).href;
export const WALKER_URL = new URL("plan/walker.ts", base).href;
