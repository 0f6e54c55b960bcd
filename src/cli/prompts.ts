/**
 * The terminal widgets escp uses from @clack/prompts, as an entry point of
 * its own (entrypoints.ts PROMPTS_URL): bundled with the rest, the package's
 * imports of node:readline and node:util would load at every start of either
 * end, while only a summary line on a terminal needs them.
 *
 *   const { log } = require(Bun.fileURLToPath(PROMPTS_URL)) as typeof import("./prompts.ts");
 */
export { log } from "@clack/prompts";
