/**
 * The workers' addresses. They are computed here, beside main.ts, because
 * the compiled executable bundles every module into main's place: only a URL
 * relative to src/ is right both under `bun src/main.ts` and in dist/escp.
 * Each is also an entry point of `bun build --compile` (scripts/build.sh).
 */
export const WORKER_URL = new URL("./streams/worker.ts", import.meta.url).href;
export const WALKER_URL = new URL("./plan/walker.ts", import.meta.url).href;
