/**
 * The stream worker's address. It is computed here, beside main.ts, because
 * the compiled executable bundles every module into main's place: only a URL
 * relative to src/ is right both under `bun src/main.ts` and in dist/escp.
 */
export const WORKER_URL = new URL("./streams/worker.ts", import.meta.url).href;
