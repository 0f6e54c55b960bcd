/**
 * The workers' addresses, and those of the modules loaded only when needed
 * (the built-in ssh client, the terminal widgets). Each is also an entry point
 * of `bun build --compile` (scripts/build.sh), embedded under /$bunfs/root/ by
 * its path below src/. Inside the executable they must be named there:
 * with --bytecode, import.meta.url keeps the build machine's source path,
 * which a host that only has the executable does not have (and a host that
 * has it would run those sources, not the embedded ones). Under
 * `bun src/main.ts` they are the sources beside this file.
 */
const base = Bun.main.startsWith("/$bunfs/") ? "file:///$bunfs/root/" : new URL("./", import.meta.url).href;

export const WORKER_URL = new URL("streams/worker.ts", base).href;
export const WALKER_URL = new URL("plan/walker.ts", base).href;
/**
 * These two are entry points of their own because a bundle loads every node
 * module that any part of it imports, at start, even when only a part required
 * lazily uses it: node:crypto, node:net, node:tty and node:dns for the built-in
 * ssh client, node:readline and node:util for @clack/prompts' widgets, ≈ 4 ms
 * at each start of either end of every copy, which most runs never use.
 */
export const BUILTIN_SSH_URL = new URL("session/builtin-ssh.ts", base).href;
export const PROMPTS_URL = new URL("cli/prompts.ts", base).href;
