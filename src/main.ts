/**
 * escp's entry point: the one executable is both the command users type and
 * the `--server` end that ssh starts on the other host.
 *
 *   cli (args, config) → session (client or server) → plan → streams → report
 */
import fs from "node:fs";
import { parseArgs, UsageError, type Options, type Explicit } from "./cli/args.ts";
import type { Operand } from "./cli/operands.ts";
import { helpText, usage, completion } from "./cli/help.ts";
import { loadConfig, mergeConfig, formatConfig, ConfigError } from "./cli/config.ts";
import { transfer } from "./session/client.ts";
import { Report } from "./report.ts";
import { runServer } from "./session/server.ts";
import { receiveCopy, sourcesHere } from "./session/origin.ts";
import { VERSION } from "./version.ts";
import { PROTO_VERSION } from "./native.ts";
import { rawArgs } from "./names.ts";
import { toStderr } from "./stderr.ts";

async function main(argv: string[]): Promise<number> {
  const parsed = parseArgs(argv);
  if (parsed instanceof UsageError) {
    toStderr(`${parsed.message}\n${parsed.showUsage ? usage() : ""}`);
    return EXIT_USAGE;
  }
  switch (parsed.mode) {
    case "version":
      process.stdout.write(`escp ${VERSION} (protocol ${PROTO_VERSION})\n`);
      return 0;
    case "help":
      process.stdout.write(helpText());
      return 0;
    case "completion":
      process.stdout.write(completion(parsed.shell));
      return 0;
    case "server":
      return runServer();
    case "origin": {
      // escp -R on another host handed us its copy: run it as if typed here, until that escp goes.
      const order = await receiveCopy();
      const copyArgs = order && parseArgs(order.argv);
      if (!copyArgs || copyArgs instanceof UsageError || copyArgs.mode !== "copy") {
        toStderr(`escp --origin: ${copyArgs instanceof UsageError ? copyArgs.message : "expected a copy's command line on stdin"}\n`);
        return EXIT_USAGE;
      }
      return copy(withConfig(copyArgs.options, copyArgs.explicit), sourcesHere(copyArgs.sources), copyArgs.target, order.gone);
    }
    case "config-check": {
      const config = loadConfig();
      process.stdout.write(formatConfig(mergeConfig(parsed.options, parsed.explicit, config), parsed.explicit, config));
      return 0;
    }
    case "copy":
      return copy(withConfig(parsed.options, parsed.explicit), parsed.sources, parsed.target);
  }
}

/** Exit statuses, as scp's: 0 only if every file arrived verified. */
export const EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130;

/** `until`: settles when the copy must stop as if interrupted (escp --origin: the escp that asked is gone). */
async function copy(o: Options, sources: Operand[], target: Operand, until?: Promise<void>): Promise<number> {
  // Progress and the summary line only on a terminal; -q and --json turn them off (report.ts).
  // TERM=dumb (Emacs' shell, some CI logs) shows the display's cursor movements as text.
  const tty = !o.quiet && !o.json && process.env.TERM !== "dumb" && stdoutIsTerminal();
  const report = new Report({ quiet: o.quiet, json: o.json, tty });
  // Without a listener a closed stdout (EPIPE) would end the process mid-copy, temporary files left.
  // Only these write there (-R passes on what the source host's escp printed).
  if (tty || o.json || o.viaSource) process.stdout.on("error", () => report.outputClosed());
  const stop = new AbortController();
  const interrupt = (sig?: NodeJS.Signals) => {
    interruptedBy ??= sig;
    stop.abort();
  };
  // A hang-up too: a closed terminal or login must not leave a pull's temporary file behind.
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, interrupt);
  void until?.then(() => interrupt());
  const r = await transfer(o, sources, target, report, stop.signal);
  const code = Report.exitStatus(r);
  if (r.interrupted || r.error) {
    report.error(r.interrupted ? "interrupted" : r.error!, code, { interrupted: r.interrupted, usage: r.usage }, r.errorLine);
    return code;
  }
  if (r.summary) report.summary(r.summary, code);
  else report.close();
  return code;
}

/**
 * Whether stdout is a terminal, without making process.stdout when it cannot
 * be one (a pipe, a file, closed): that stream costs ≈ 3 ms, before ssh starts.
 */
function stdoutIsTerminal(): boolean {
  try {
    return fs.fstatSync(1).isCharacterDevice() && process.stdout.isTTY === true;
  } catch {
    return false;
  }
}

/** Flags win over ~/.config/escp/escp.yaml, which wins over /etc/escp.conf. */
function withConfig(options: Options, explicit: Explicit): Options {
  return mergeConfig(options, explicit, loadConfig());
}

/** The signal that stopped the copy, if one did. */
let interruptedBy: NodeJS.Signals | undefined;

main(rawArgs(process.argv.slice(2))).then(
  (code) => {
    // Cleaned up after Ctrl-C: now ended by it, so that the shell running us stops too
    // (a `for` loop of copies, a script), as it does for a program that did not catch
    // it; the shell's status is 130 all the same.
    if (interruptedBy === "SIGINT" && code === EXIT_INTERRUPTED) {
      process.removeAllListeners("SIGINT");
      process.kill(process.pid, "SIGINT");
    }
    process.exit(code);
  },
  (e) => {
    toStderr(`${e instanceof Error && !e.message.startsWith("escp:") ? "escp: " : ""}${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(e instanceof ConfigError ? EXIT_USAGE : EXIT_FAILED);
  },
);
