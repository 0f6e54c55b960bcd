/**
 * --help, the man page (docs/escp.1, written by scripts/gen-man.ts) and shell completion, all
 * rendered from OPTION_TABLE so that a new option appears in all three.
 *
 *   process.stdout.write(helpText());
 *   process.stdout.write(completion("bash"));   // source <(escp --completion bash)
 */
import pkg from "../../package.json" with { type: "json" };
import { GROUPS, type Group, OPTION_TABLE, type OptionSpec, type Shell } from "./args.ts";
import { CONFIG_KEYS } from "./config.ts";

/** Exit statuses, as documented in --help and escp(1). */
export const EXIT_STATUS: readonly [number, string][] = [
  [0, "every file arrived and its digest matched the source's"],
  [1, "a file failed, or a remote or connection error stopped the copy; the failed files are named on stderr"],
  [2, "the command line or a config file is wrong"],
  [130, "interrupted (SIGINT, SIGTERM or SIGHUP)"],
];

const WIDTH = 80;
const PROGRAM = "escp";

/** scp-style synopsis, wrapped like scp's usage message. */
export function usage(): string {
  const lead = `usage: ${PROGRAM} `;
  // Wrapped between synopsis words, so "[-b size]" never breaks.
  return wrap(synopsisWords(), WIDTH, lead, " ".repeat(lead.length)).join("\n") + "\n";
}

export function helpText(): string {
  const about =
    "Copy files between hosts like scp, over parallel AES-128-GCM TCP streams started over ssh. " +
    "Operands are local paths, [user@]host:[path] (IPv6 hosts in brackets) or " +
    "scp://[user@]host[:port][/path]; an empty remote path is the remote home directory.";
  const out = [usage(), ...wrap(about, WIDTH, "", "")];
  for (const [group, title] of Object.entries(GROUPS) as [Group, string][]) {
    out.push("", `${title}:`);
    for (const o of inGroup(group)) {
      const head = `  ${heading(o)}`;
      const indent = " ".repeat(28);
      const lines = head.length <= 26 ? wrap(o.help, WIDTH, head.padEnd(28), indent) : [head, ...wrap(o.help, WIDTH, indent, indent)];
      out.push(...lines);
    }
  }
  out.push("", "Exit status:");
  for (const [code, meaning] of EXIT_STATUS) out.push(...wrap(meaning, WIDTH, `  ${String(code).padEnd(5)}`, " ".repeat(7)));
  out.push(
    "",
    ...wrap(
      `Configuration: /etc/escp.conf, then ~/.config/escp/escp.yaml ($ESCP_CONFIG replaces it), then the options above. See escp(1).`,
      WIDTH,
      "",
      "",
    ),
  );
  return out.join("\n") + "\n";
}

/** The roff source of escp(1). */
export function manPage(): string {
  const r: string[] = [
    `.TH ESCP 1 "" "${PROGRAM} ${pkg.version}" "User Commands"`,
    ".SH NAME",
    `${PROGRAM} \\- fast, encrypted remote file copy`,
    ".SH SYNOPSIS",
    ".nh", // an option's name is not to be broken at a hyphen ("ssh_op-tion"),
    ".ad l", // nor spread over the line
    ".B escp",
    ...synopsisWords().slice(0, -2).map(manSynopsisWord),
    ".I source ... target",
    ".ad",
    ".hy",
    ".SH DESCRIPTION",
    ".B escp",
    "copies files between hosts the way",
    ".BR scp (1)",
    "does, and takes the same options, so it can stand in for it.",
    "It uses ssh only to start",
    ".B escp \\-\\-server",
    "on the remote host and to hand it fresh session keys;",
    "the data then travels over several parallel TCP streams, each encrypted and",
    "authenticated with AES\\-128\\-GCM, with page\\-aligned buffers and O_DIRECT disk I/O.",
    "Every file is checked end to end with an XXH3\\-128 digest of what was read and",
    "of what was written, and is renamed into place only when the two match.",
    "As with scp, an existing file the user may not write (read\\-only, or another",
    "user's) is not replaced; and since the rename needs the directory, a writable",
    "file in a read\\-only directory is written only with",
    ".BR \\-\\-inplace .",
    "Without",
    ".BR \\-p ,",
    "new files and directories get the source's mode less the umask and a replaced",
    "file keeps its mode, as with scp \\-O; a read\\-only directory is made writable",
    "to be filled and gets its mode at the end.",
    ".PP",
    "Each",
    ".I source",
    "and the",
    ".I target",
    "is a local path,",
    ".RI [ user @] host :[ path ]",
    "(an IPv6 address in brackets, as in",
    ".BR [::1]:file ),",
    "or",
    ".RI scp://[ user @] host [: port ][/ path ].",
    "A path that has a slash before its first colon is local, so",
    ".B ./a:b",
    "names a local file.",
    "An empty remote path is the remote home directory, and a relative one is taken",
    "from there; in the URI form the path after the host's slash is relative too",
    "(as in OpenSSH), so",
    ".B scp://host//tmp/x",
    "names /tmp/x.",
    "Copies between two remote hosts are relayed through the local host: the files",
    "are pulled into a temporary directory there (it needs room for them), then",
    "pushed, so with",
    ".B \\-l",
    "such a copy takes twice as long as one leg;",
    ".B \\-R",
    "sends straight from the source host.",
    ".PP",
    "The remote host needs no installation: if it has no escp that speaks the same",
    "protocol version, escp copies its own executable there over the ssh connection.",
    "The remote end listens on the first free port of the",
    ".B \\-\\-port",
    "range; when no port is reachable, use",
    ".BR \\-\\-tunnel .",
    ".SH OPTIONS",
    "Options must come before the operands;",
    ".B \\-\\-",
    "ends them.",
    "Short options may be bundled, as in",
    ".BR \\-rpP22 .",
  ];
  for (const [group, title] of Object.entries(GROUPS) as [Group, string][]) {
    r.push(`.SS ${title[0].toUpperCase()}${title.slice(1)}`);
    for (const o of inGroup(group)) r.push(".TP", manHeading(o), roffText(o.help));
  }
  r.push(
    ".SH FILES",
    ".TP",
    ".I /etc/escp.conf",
    "system configuration (YAML)",
    ".TP",
    ".I ~/.config/escp/escp.yaml",
    "per\\-user configuration; it overrides the system file, and options override both.",
    `Keys: ${CONFIG_KEYS.join(", ")}.`,
    "Masks are hexadecimal with bit 0 for CPU (or NUMA node) 0.",
    "An unknown key or a bad value is an error naming the file and line;",
    ".B escp \\-\\-config\\-check",
    "shows the result and where each value came from.",
    ".TP",
    ".I /tmp/escp.log.sender, /tmp/escp.log.receiver",
    "logs written with",
    ".B \\-v",
    "unless",
    ".B \\-\\-log",
    "names another file.",
    ".SH ENVIRONMENT",
    ".TP",
    ".B ESCP_CONFIG",
    "a configuration file to read instead of",
    ".IR \\%~/.config/escp/escp.yaml .",
    ".TP",
    ".B ESCP_GCM",
    ".BR openssl ,",
    ".B ipsec-mb",
    "or",
    ".BR libgcrypt :",
    "the AES\\-128\\-GCM implementation to use, instead of the fastest on this host",
    "(measured at start; ipsec-mb only on CPUs with VAES and AVX\\-512,",
    "libgcrypt only where the system has libgcrypt.so.20).",
    ".SH EXIT STATUS",
  );
  for (const [code, meaning] of EXIT_STATUS) r.push(".TP", `.B ${code}`, roffText(meaning));
  r.push(
    ".SH EXAMPLES",
    "Copy a directory to a remote host with 8 streams:",
    ".PP",
    ".RS",
    ".B escp \\-r \\-t 8 results/ alice@dtn.example.org:/data/",
    ".RE",
    ".PP",
    "Resume an interrupted pull through a jump host, when only ssh gets through:",
    ".PP",
    ".RS",
    ".B escp \\-\\-resume \\-\\-tunnel \\-J gw.example.org dtn:/data/big.tar .",
    ".RE",
    ".SH SEE ALSO",
    ".BR scp (1),",
    ".BR ssh (1),",
    ".BR ssh_config (5)",
  );
  return r.join("\n") + "\n";
}

/** A completion script; `source <(escp --completion bash)` or the zsh equivalent loads it. */
export function completion(shell: Shell): string {
  return shell === "bash" ? bashCompletion() : zshCompletion();
}

function bashCompletion(): string {
  const names = OPTION_TABLE.flatMap(optionNames);
  // One case arm per distinct completion, listing the options that take it.
  const arms = new Map<string, string[]>();
  for (const o of OPTION_TABLE.filter((o) => o.arg)) {
    const action = o.choices
      ? `COMPREPLY=($(compgen -W "${o.choices.join(" ")}" -- "$cur"))`
      : o.complete === "file"
        ? `COMPREPLY=($(compgen -f -- "$cur"))`
        : o.complete === "command"
          ? `COMPREPLY=($(compgen -c -- "$cur"))`
          : "COMPREPLY=()";
    arms.set(action, [...(arms.get(action) ?? []), ...optionNames(o)]);
  }
  const cases = [...arms].map(([action, opts]) => `    ${opts.join("|")}) ${action}; return ;;`);
  return [
    "# bash completion for escp; load it with: source <(escp --completion bash)",
    "_escp() {",
    '  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}',
    '  case "$prev" in',
    ...cases,
    "  esac",
    '  if [[ "$cur" == -* ]]; then',
    `    COMPREPLY=($(compgen -W "${names.join(" ")}" -- "$cur"))`,
    "  else",
    '    COMPREPLY=($(compgen -f -- "$cur"))',
    "  fi",
    "}",
    "complete -o filenames -F _escp escp",
    "",
  ].join("\n");
}

function zshCompletion(): string {
  const specs = OPTION_TABLE.flatMap((o) => {
    const names = optionNames(o);
    const exclude = names.length > 1 && !o.repeatable ? `(${names.join(" ")})` : "";
    const star = o.repeatable ? "*" : "";
    const desc = `[${zshQuote(o.help)}]`;
    return names.map((n) => {
      if (!o.arg) return `'${exclude}${star}${n}${desc}'`;
      const suffix = n.startsWith("--") ? "=" : "+";
      const action = o.choices
        ? `(${o.choices.join(" ")})`
        : o.complete === "file"
          ? "_files"
          : o.complete === "command"
            ? "_command_names -e"
            : " ";
      return `'${exclude}${star}${n}${suffix}${desc}:${o.arg}:${action}'`;
    });
  });
  return [
    "#compdef escp",
    "# zsh completion for escp: save as _escp in a directory of $fpath, or: source <(escp --completion zsh)",
    "_escp() {",
    "  _arguments -s -S \\",
    ...specs.map((s) => `    ${s} \\`),
    "    '*:file:_files'",
    "}",
    'if [[ "$funcstack[1]" == _escp ]]; then _escp "$@"; else compdef _escp escp; fi',
    "",
  ].join("\n");
}

function inGroup(group: Group): OptionSpec[] {
  return OPTION_TABLE.filter((o) => o.group === group);
}

function optionNames(o: OptionSpec): string[] {
  return [o.short && `-${o.short}`, o.long && `--${o.long}`].filter((n): n is string => !!n);
}

function argName(o: OptionSpec): string {
  return o.choices ? o.choices.join("|") : o.arg!;
}

/** "-t, --threads threads" */
function heading(o: OptionSpec): string {
  const names = optionNames(o).join(", ");
  return o.arg ? `${names} ${argName(o)}` : names;
}

/**
 * Words of the synopsis: bundled flags, then short options with arguments, then long options,
 * then the operands. Internal and informational options (the advanced group) are left out.
 */
function synopsisWords(): string[] {
  const shown = OPTION_TABLE.filter((o) => o.group !== "advanced");
  const byLetter = (a: OptionSpec, b: OptionSpec) =>
    a.short!.toLowerCase().localeCompare(b.short!.toLowerCase()) || a.short!.localeCompare(b.short!);
  const flags = shown.filter((o) => o.short && !o.arg).sort(byLetter);
  const shortArgs = shown.filter((o) => o.short && o.arg).sort(byLetter);
  const longOnly = shown.filter((o) => !o.short);
  return [
    `[-${flags.map((o) => o.short).join("")}]`,
    ...shortArgs.map((o) => `[-${o.short} ${argName(o)}]`),
    ...longOnly.map((o) => (o.arg ? `[--${o.long} ${argName(o)}]` : `[--${o.long}]`)),
    "source ...",
    "target",
  ];
}

/** "[-b size]" → ".RB [ \-b\n.IR size ]" style lines for the man SYNOPSIS. */
function manSynopsisWord(word: string): string {
  const m = /^\[(\S+)(?: (.+))?\]$/.exec(word)!;
  const name = roffDashes(m[1]);
  // "\ " is a space no line breaks at: "[-F ssh_config]" stays on one line.
  return m[2] === undefined ? `.RB [ ${name} ]` : `[\\fB${name}\\fR\\ \\fI${roffEscape(m[2])}\\fR]`;
}

function manHeading(o: OptionSpec): string {
  const names = optionNames(o).map((n) => `\\fB${roffDashes(n)}\\fR`).join(", ");
  return o.arg ? `${names} \\fI${roffEscape(argName(o))}\\fR` : names;
}

function roffEscape(s: string): string {
  return s.replace(/\\/g, "\\e");
}

function roffDashes(s: string): string {
  return s.replace(/-/g, "\\-");
}

/** Help prose as a roff text line: option-like dashes become \-, and a leading dot is protected. */
function roffText(s: string): string {
  const t = roffEscape(s).replace(/(^|[\s([,])(-+)(?=[\w-])/g, (_m, pre: string, d: string) => pre + roffDashes(d));
  return /^[.']/.test(t) ? `\\&${t}` : t;
}

/** For a single-quoted _arguments spec: brackets end the description unless escaped. */
function zshQuote(s: string): string {
  return s.replace(/[[\]\\]/g, "\\$&").replace(/'/g, "'\\''");
}

/** Greedy word wrap; the first line starts with `first`, the others with `rest`. */
function wrap(text: string | string[], width: number, first: string, rest: string): string[] {
  const lines: string[] = [];
  let line = first;
  let empty = true;
  for (const word of typeof text === "string" ? text.split(/ +/) : text) {
    if (!empty && line.length + 1 + word.length > width) {
      lines.push(line);
      line = rest;
      empty = true;
    }
    line += (empty ? "" : " ") + word;
    empty = false;
  }
  lines.push(line);
  return lines;
}
