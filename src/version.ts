/** The program version (package.json) — the bootstrap cache on remote hosts is keyed by it. */
import pkg from "../package.json" with { type: "json" };
export const VERSION: string = pkg.version;
