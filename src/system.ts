/**
 * The few facts about this host that node:os gives, loaded when first asked
 * for: loading node:os costs ≈ 0.6 ms at every start of either end, on the
 * path of a 1-byte copy, and most runs never ask (only `~` in a path, an
 * error message naming the host, a relay's spool directory).
 *
 *   expandHome("~/x", homeDir());
 */
type Os = typeof import("node:os");
const os = (): Os => require("node:os");

export const homeDir = (): string => os().homedir();
export const hostName = (): string => os().hostname();
export const tmpDir = (): string => os().tmpdir();
