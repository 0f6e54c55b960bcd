/**
 * YAML configuration (docs/config.md): /etc/escp.conf, then ~/.config/escp/escp.yaml (or the
 * file $ESCP_CONFIG names), then the command line; each overrides the ones before it.
 *
 *   const config = loadConfig();                                 // throws ConfigError
 *   const options = mergeConfig(args.options, args.explicit, config);
 *   if (args.mode === "config-check") stdout.write(formatConfig(options, args.explicit, config));
 */
import { readFileSync } from "node:fs";
import { homeDir } from "../system.ts";
import type { Node } from "yaml";

/** yaml is loaded when a configuration file is read or shown, not at every start (≈ 5 ms of it). */
const Y = (): typeof import("yaml") => require("yaml");
import {
  type Explicit,
  type Options,
  KiB,
  MiB,
  parseBlockSize,
  parseKeepalive,
  parsePorts,
  parseSockbuf,
  parseThreads,
  parseZstdLevel,
  ValueError,
} from "./args.ts";
import { toStderr } from "../stderr.ts";
import { errnoText } from "../native.ts";

/** The options a config file may set. */
export type ConfigOption = "cpumask" | "nodemask" | "threads" | "blockSize" | "ports" | "compress" | "zstdLevel" | "direct" | "log" | "keepaliveS" | "sockbuf";

export interface Config {
  values: Partial<Pick<Options, ConfigOption>>;
  /** "file:line" of the setting that won, for --config-check. */
  origin: Partial<Record<ConfigOption, string>>;
}

/** A config file escp cannot use; the message names the file and line: "escp: /etc/escp.conf:3: ...". */
export class ConfigError extends Error {}

interface KeySpec {
  option: ConfigOption;
  /** Turns the YAML value node into the option's value; throws ValueError. */
  read: (node: Node | null) => unknown;
  /** The value as it would be written in a config file. */
  show: (v: unknown) => string;
  /** Extra words for the --config-check comment. */
  note?: (v: unknown) => string;
}

function key<K extends ConfigOption>(
  option: K,
  read: (n: Node | null) => Options[K],
  show: (v: NonNullable<Options[K]>) => string = (v) => Y().stringify(v).trim(),
  note?: (v: NonNullable<Options[K]>) => string,
): KeySpec {
  return { option, read, show, note } as KeySpec;
}

/** Key names in config files, in the order --config-check prints them. */
const KEYS: Record<string, KeySpec> = {
  threads: key("threads", (n) => parseThreads(scalarText(n))),
  blocksize: key("blockSize", (n) => parseBlockSize(scalarText(n)), showSize),
  ports: key("ports", readPorts, ([a, b]) => (a === b ? `${a}` : `${a}-${b}`)),
  compress: key("compress", readBool),
  zstd_level: key("zstdLevel", (n) => parseZstdLevel(scalarText(n))),
  direct: key("direct", readBool),
  log: key("log", readPath),
  keepalive: key("keepaliveS", (n) => parseKeepalive(scalarText(n))),
  sockbuf: key("sockbuf", (n) => parseSockbuf(scalarText(n)), showSize),
  // Unquoted: readMask reads the digits as written, though YAML would call 0x2f a number.
  cpumask: key("cpumask", readMask, String, (m) => `CPUs ${ranges(m)}`),
  nodemask: key("nodemask", readMask, String, (m) => `NUMA nodes ${ranges(m)}`),
};

/** Every key a config file may use. */
export const CONFIG_KEYS: readonly string[] = Object.keys(KEYS);

/** The files loadConfig reads by default; $ESCP_CONFIG replaces the per-user one. */
export function defaultConfigPaths(env: Record<string, string | undefined> = process.env): string[] {
  return ["/etc/escp.conf", env.ESCP_CONFIG ?? "~/.config/escp/escp.yaml"];
}

/** Reads the files that exist, in order; later files override earlier ones. */
export function loadConfig(paths: string[] = defaultConfigPaths()): Config {
  const config: Config = { values: {}, origin: {} };
  for (const p of paths) {
    const path = p.startsWith("~/") ? homeDir() + p.slice(1) : p;
    const src = readIfExists(path);
    if (src !== undefined) readFile(path, src, config);
  }
  return config;
}

/** Options with every setting the user did not type taken from the config, if it has one. */
export function mergeConfig(options: Options, explicit: Explicit, config: Config): Options {
  const merged: Options = { ...options, sshOptions: [...options.sshOptions] };
  for (const { option } of Object.values(KEYS)) {
    const v = config.values[option];
    if (!explicit.has(option) && v !== undefined) Object.assign(merged, { [option]: v });
  }
  return merged;
}

/** The merged settings as a config file, each line saying where its value came from. */
export function formatConfig(options: Options, explicit: Explicit, config: Config): string {
  const rows = Object.entries(KEYS).map(([name, { option, show, note }]) => {
    const v = options[option];
    const from = explicit.has(option) ? "command line" : (config.origin[option] ?? "default");
    // Unset optional keys stay commented out so the output still loads as a config file.
    if (v === undefined) return [`# ${name}: (not set)`, from];
    return [`${name}: ${show(v)}`, note ? `${from} (${note(v)})` : from];
  });
  const width = Math.max(...rows.map(([s]) => s.length)) + 2;
  const lines = rows.map(([s, from]) => `${s.padEnd(width)}# ${from}`);
  return `# escp configuration: /etc/escp.conf, then the user's file, then the command line\n${lines.join("\n")}\n`;
}

/**
 * A hex CPU or NUMA-node mask, "0xff" or "ff". Bit 0 is CPU (node) 0, the order of
 * sched_setaffinity and taskset; EScp reads the bytes reversed, which is a bug, not a format.
 */
export function parseMask(text: string): bigint {
  const mask = /^(0x)?[0-9a-f]+$/i.test(text) ? BigInt(/^0x/i.test(text) ? text : `0x${text}`) : 0n;
  if (mask === 0n) throw new ValueError("a non-zero hexadecimal mask such as 0xff (bit 0 is CPU or node 0)");
  return mask;
}

/** Indices of the set bits: maskBits(0x5n) is [0, 2]. */
export function maskBits(mask: bigint): number[] {
  const bits: number[] = [];
  for (let i = 0; mask >> BigInt(i) !== 0n; i++) if ((mask >> BigInt(i)) & 1n) bits.push(i);
  return bits;
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    // Another user's HOME (su without -, a setuid wrapper): ssh reads its files from the
    // passwd entry and copies; so does escp, saying what it could not read.
    if (code === "EACCES") {
      toStderr(`escp: warning: cannot read ${path} (permission denied): its settings are not used\n`);
      return undefined;
    }
    throw new ConfigError(`escp: cannot read ${path}: ${errnoText(e)}`);
  }
}

/** The yaml library's errors that name its own API or terms, in the words of a settings file. */
const YAML_ERRORS: Record<string, string> = {
  MULTIPLE_DOCS: "a second document ('---'): the settings are one list of 'key: value' lines",
  DUPLICATE_KEY: "a key given twice",
};

function readFile(path: string, src: string, config: Config): void {
  const lines = new (Y().LineCounter)();
  const doc = Y().parseDocument(src, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number) => `${path}:${lines.linePos(offset).line}`;
  const err = doc.errors[0];
  if (err) throw new ConfigError(`escp: ${at(err.pos[0])}: ${YAML_ERRORS[err.code] ?? err.message}`);
  const root = doc.contents;
  if (root === null) return; // empty, or only comments
  if (!Y().isMap(root)) {
    throw new ConfigError(`escp: ${at(root.range?.[0] ?? 0)}: expected 'key: value' lines`);
  }
  for (const pair of root.items) {
    const keyNode = pair.key as Node | null;
    const key = Y().isScalar(keyNode) && keyNode.value !== null ? String(keyNode.value) : "";
    const spec = Object.hasOwn(KEYS, key) ? KEYS[key] : undefined;
    const where = at(keyNode?.range?.[0] ?? root.range?.[0] ?? 0);
    if (!spec) {
      if (key === "") throw new ConfigError(`escp: ${where}: a value with no key before it (write 'key: value')`);
      throw new ConfigError(`escp: ${where}: unknown key '${key}' (known: ${CONFIG_KEYS.join(", ")})`);
    }
    const valueNode = pair.value as Node | null;
    try {
      config.values[spec.option] = spec.read(valueNode) as never;
    } catch (e) {
      if (!(e instanceof ValueError)) throw e;
      const raw = valueNode?.range ? src.slice(valueNode.range[0], valueNode.range[1]) : "";
      const line = valueNode?.range ? at(valueNode.range[0]) : where;
      throw new ConfigError(`escp: ${line}: ${key} needs ${e.message}, got '${raw}'`);
    }
    config.origin[spec.option] = where;
  }
}

/**
 * A scalar's text as written: a number keeps its spelling, so "threads: 0x10" or "8.0" is
 * refused instead of being quietly read as 16 or 8.
 */
function scalarText(n: Node | null): string {
  if (Y().isScalar(n) && typeof n.value === "string") return n.value;
  if (Y().isScalar(n) && typeof n.value === "number") return n.source ?? String(n.value);
  return "";
}

function readPorts(n: Node | null): [number, number] {
  if (Y().isSeq(n) && n.items.length === 2) return parsePorts(n.items.map((i) => scalarText(i as Node)).join("-"));
  return parsePorts(scalarText(n));
}

function readBool(n: Node | null): boolean {
  if (Y().isScalar(n) && typeof n.value === "boolean") return n.value;
  throw new ValueError("true or false");
}

function readPath(n: Node | null): string {
  const s = scalarText(n);
  if (s === "") throw new ValueError("a file name");
  return s;
}

/** Normalised to "0x…"; the hex digits are read as written ("11" is 0x11, not eleven). */
function readMask(n: Node | null): string {
  return `0x${parseMask(scalarText(n)).toString(16)}`;
}

function showSize(n: number): string {
  if (n % MiB === 0) return `${n / MiB}M`;
  return n % KiB === 0 ? `${n / KiB}K` : String(n);
}

/** "0x2f" → "0-3,5". */
function ranges(mask: string): string {
  const out: string[] = [];
  const bits = maskBits(BigInt(mask));
  for (let i = 0; i < bits.length; ) {
    let j = i;
    while (j + 1 < bits.length && bits[j + 1] === bits[j] + 1) j++;
    out.push(i === j ? `${bits[i]}` : `${bits[i]}-${bits[j]}`);
    i = j + 1;
  }
  return out.join(",");
}
