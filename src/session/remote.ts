/**
 * Starting the other end of a session: `escp --server` on the remote host
 * through the user's ssh (so ~/.ssh/config, agents, ProxyJump and
 * ControlMaster apply), or this same program as a local child for a local
 * copy. Also what the user is told when that fails.
 */
import type { Options } from "../cli/args.ts";
import { sshArgs } from "../cli/args.ts";

export type Remote = { user?: string; host: string; port?: number };
export type Plan =
  | { dir: "push"; host: Remote; sources: string[]; target: string }
  | { dir: "pull"; host: Remote; sources: string[]; target: string }
  | { dir: "local"; sources: string[]; target: string };

/** The other end's process: its stdio is the control channel, its stderr goes to the user. */
export interface ServerProcess {
  stdin: { write(b: Uint8Array): unknown; flush(): unknown; end(): unknown };
  stdout: ReadableStream<Uint8Array>;
  stderr: ReadableStream<Uint8Array>;
  exited: Promise<number>;
  kill(): void;
}

/** The command that starts the other end: ssh to the host, or this same program locally. */
export function startServer(o: Options, plan: Plan): ServerProcess {
  const self = selfCommand();
  if (plan.dir === "local") {
    return Bun.spawn([...self, "--server"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  }
  const remote = o.remoteEscp ?? process.env.ESCP_REMOTE ?? "escp";
  const ssh = o.sshProgram ?? "ssh";
  return Bun.spawn([ssh, ...sshArgs(o, plan.host), `${shellQuote(remote)} --server`], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
}

/** This program as a command line: the compiled executable, or bun + the entry script. */
export function selfCommand(): string[] {
  return Bun.main.startsWith("/$bunfs") ? [process.execPath] : [process.execPath, Bun.main];
}

function shellQuote(s: string): string {
  return /^[\w./~-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Passes the other end's stderr (ssh's messages, the server's warnings) through, keeping the tail for diagnosis. */
export function forwardStderr(stream: ReadableStream<Uint8Array>, o: Options): { text: string; done: Promise<void> } {
  const tail = { text: "", done: Promise.resolve() };
  tail.done = (async () => {
    for await (const chunk of stream as any as AsyncIterable<Uint8Array>) {
      const s = Buffer.from(chunk).toString("utf8");
      tail.text = (tail.text + s).slice(-4096);
      if (!o.quiet || /error|denied|refused|not found/i.test(s)) process.stderr.write(s);
    }
  })();
  return tail;
}

export async function connectionFailure(where: string, child: { exited: Promise<number> }, tail: { text: string; done: Promise<void> }): Promise<string> {
  const code = await child.exited;
  await tail.done;
  const last = tail.text.trim().split("\n").pop() ?? "";
  if (/command not found|No such file or directory|not found/.test(last) && /escp/.test(last)) {
    return `${where}: escp is not installed there (${last.trim()}); name it with --remote-escp PATH`;
  }
  if (code === 255) return `${where}: ssh failed${last ? `: ${last}` : ""}`;
  return `${where}: the remote escp exited (status ${code}) before the transfer started${last ? `: ${last}` : ""}`;
}
