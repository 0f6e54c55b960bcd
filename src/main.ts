/**
 * escp's entry point: the one executable is both the command users type and
 * the `--server` end that ssh starts on the other host.
 *
 *   cli (args, config) → session (client or server) → plan → streams → report
 */
import { parseArgs, UsageError, type Options, type Explicit } from "./cli/args.ts";
import { helpText, usage, completion } from "./cli/help.ts";
import { loadConfig, mergeConfig, formatConfig, ConfigError } from "./cli/config.ts";
import { runClient, EXIT_USAGE, EXIT_FAILED } from "./session/client.ts";
import { runServer } from "./session/server.ts";
import { VERSION } from "./version.ts";
import { PROTO_VERSION } from "./native.ts";

async function main(argv: string[]): Promise<number> {
  const parsed = parseArgs(argv);
  if (parsed instanceof UsageError) {
    process.stderr.write(`${parsed.message}\n${parsed.showUsage ? usage() : ""}`);
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
    case "config-check": {
      const config = loadConfig();
      process.stdout.write(formatConfig(mergeConfig(parsed.options, parsed.explicit, config), parsed.explicit, config));
      return 0;
    }
    case "copy":
      return runClient(withConfig(parsed.options, parsed.explicit), parsed.sources, parsed.target);
  }
}

/** Flags win over ~/.config/escp/escp.yaml, which wins over /etc/escp.conf. */
function withConfig(options: Options, explicit: Explicit): Options {
  return mergeConfig(options, explicit, loadConfig());
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`${e instanceof Error && !e.message.startsWith("escp:") ? "escp: " : ""}${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(e instanceof ConfigError ? EXIT_USAGE : EXIT_FAILED);
  },
);
