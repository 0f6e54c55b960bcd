import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultOptions, type Explicit, MiB, type Options, parseArgs, UsageError } from "../src/cli/args.ts";
import {
  ConfigError,
  defaultConfigPaths,
  formatConfig,
  loadConfig,
  maskBits,
  mergeConfig,
  parseMask,
} from "../src/cli/config.ts";

const dir = mkdtempSync(join(tmpdir(), "escp-config-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** Writes a config file and returns its path. */
function file(text: string): string {
  const path = join(dir, `c${n++}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** Options and explicit set as parseArgs gives them for these flags. */
function flags(...argv: string[]): { options: Options; explicit: Explicit } {
  const r = parseArgs([...argv, "a", "h:"]);
  if (r instanceof UsageError || r.mode !== "copy") throw new Error("bad test argv");
  return r;
}

function loadError(text: string): string {
  try {
    loadConfig([file(text)]);
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error("expected a ConfigError");
}

describe("loading", () => {
  test("reads every key into its option", () => {
    const c = loadConfig([
      file(
        [
          "cpumask: 0xff",
          "nodemask: '1'",
          "threads: 8",
          "blocksize: 4M",
          "ports: 2000-2010",
          "compress: true",
          "zstd_level: 3",
          "direct: false",
          "log: /var/log/escp.log",
          "keepalive: 10",
        ].join("\n"),
      ),
    ]);
    expect(c.values).toEqual({
      cpumask: "0xff",
      nodemask: "0x1",
      threads: 8,
      blockSize: 4 * MiB,
      ports: [2000, 2010],
      compress: true,
      zstdLevel: 3,
      direct: false,
      log: "/var/log/escp.log",
      keepaliveS: 10,
    });
  });

  test("files that do not exist are skipped", () => {
    expect(loadConfig([join(dir, "absent.yaml")]).values).toEqual({});
  });

  test("an empty or comment-only file sets nothing", () => {
    expect(loadConfig([file(""), file("# nothing yet\n")]).values).toEqual({});
  });

  test("ports may be a two-element list", () => {
    expect(loadConfig([file("ports: [3000, 3005]\n")]).values.ports).toEqual([3000, 3005]);
  });

  test("blocksize may be a plain number of bytes", () => {
    expect(loadConfig([file("blocksize: 524288\n")]).values.blockSize).toBe(512 * 1024);
  });

  test("a later file overrides an earlier one and the origin says which line", () => {
    const system = file("threads: 2\nports: 1000-1001\n");
    const user = file("# mine\nthreads: 16\n");
    const c = loadConfig([system, user]);
    expect(c.values.threads).toBe(16);
    expect(c.values.ports).toEqual([1000, 1001]);
    expect(c.origin.threads).toBe(`${user}:2`);
    expect(c.origin.ports).toBe(`${system}:2`);
  });

  test("ESCP_CONFIG replaces the per-user file but not the system one", () => {
    expect(defaultConfigPaths({ ESCP_CONFIG: "/tmp/x.yaml" })).toEqual(["/etc/escp.conf", "/tmp/x.yaml"]);
    expect(defaultConfigPaths({})).toEqual(["/etc/escp.conf", "~/.config/escp/escp.yaml"]);
  });
});

describe("errors name the file and line", () => {
  test("an unknown key", () => {
    const path = file("threads: 4\n\nthraeds: 8\n");
    expect(() => loadConfig([path])).toThrow(
      `escp: ${path}:3: unknown key 'thraeds' (known: threads, blocksize, ports, compress, zstd_level, direct, log, keepalive, sockbuf, cpumask, nodemask)`,
    );
  });

  test("a value out of range", () => {
    const path = file("# tuning\nthreads: 65\n");
    expect(() => loadConfig([path])).toThrow(`escp: ${path}:2: threads needs a number from 1 to 64, got '65'`);
  });

  test("a value of the wrong type", () => {
    expect(loadError("compress: yes\n")).toEndWith(":1: compress needs true or false, got 'yes'");
  });

  test("a number spelled in another base is not taken as a thread count", () => {
    expect(loadError("threads: 0x10\n")).toEndWith(":1: threads needs a number from 1 to 64, got '0x10'");
  });

  test("a blocksize that is not a multiple of 4K", () => {
    expect(loadError("blocksize: 1000\n")).toContain(":1: blocksize needs a size from 4K to 64M");
  });

  test("a key with no value", () => {
    expect(loadError("log:\n")).toEndWith(":1: log needs a file name, got ''");
  });

  test("YAML syntax errors", () => {
    expect(loadError("threads: 4\nports: [1,\n")).toMatch(/:3: /);
  });

  test("a repeated key", () => {
    expect(loadError("threads: 4\nthreads: 5\n")).toEndWith(":2: a key given twice");
  });

  test("a second document, a value without a key: said in a settings file's words, not the yaml library's", () => {
    expect(loadError("---\nthreads: 8\n---\nthreads: 9\n")).toEndWith(":3: a second document ('---'): the settings are one list of 'key: value' lines");
    expect(loadError("threads: 8\n: x\n")).toEndWith(":2: a value with no key before it (write 'key: value')");
  });

  test("a path that cannot be read is named with the C library's words", () => {
    expect(() => loadConfig([dir])).toThrow(`escp: cannot read ${dir}: Is a directory`);
  });

  test("a file that is not a mapping", () => {
    expect(loadError("- threads\n")).toEndWith(":1: expected 'key: value' lines");
  });
});

describe("masks", () => {
  test("bit 0 is CPU 0", () => {
    expect(maskBits(parseMask("0x1"))).toEqual([0]);
    expect(maskBits(parseMask("0x5"))).toEqual([0, 2]);
    expect(maskBits(parseMask("f0"))).toEqual([4, 5, 6, 7]);
  });

  test("masks wider than 64 bits keep every CPU", () => {
    expect(maskBits(parseMask("0x80000000000000000000000000000001"))).toEqual([0, 127]);
  });

  test("the digits are hex even when YAML would read them as decimal", () => {
    expect(loadConfig([file("cpumask: 11\n")]).values.cpumask).toBe("0x11");
  });

  test("an empty or non-hex mask is refused", () => {
    expect(() => parseMask("0")).toThrow();
    expect(() => parseMask("0xfg")).toThrow();
    expect(loadError("cpumask: zz\n")).toContain(":1: cpumask needs a non-zero hexadecimal mask");
  });
});

describe("merging", () => {
  const system = file("threads: 2\nblocksize: 2M\ncompress: true\n");
  const user = file("threads: 8\n");

  test("flags override the user file, which overrides the system file", () => {
    const { options, explicit } = flags("-t", "16");
    const merged = mergeConfig(options, explicit, loadConfig([system, user]));
    expect(merged.threads).toBe(16);
    expect(merged.blockSize).toBe(2 * MiB);
    expect(merged.compress).toBe(true);
  });

  test("the user file overrides the system file when no flag is given", () => {
    const { options, explicit } = flags();
    expect(mergeConfig(options, explicit, loadConfig([system, user])).threads).toBe(8);
  });

  test("a flag equal to the default still beats the config", () => {
    const { options, explicit } = flags("-t", "4");
    expect(mergeConfig(options, explicit, loadConfig([system, user])).threads).toBe(4);
  });

  test("--nodirect beats direct: true in a config", () => {
    const { options, explicit } = flags("--nodirect");
    expect(mergeConfig(options, explicit, loadConfig([file("direct: true\n")])).direct).toBe(false);
  });

  test("merging leaves the parsed options untouched", () => {
    const { options, explicit } = flags();
    mergeConfig(options, explicit, loadConfig([system]));
    expect(options).toEqual(defaultOptions());
  });
});

describe("formatConfig", () => {
  test("shows each value with where it came from", () => {
    const system = file("threads: 2\ncpumask: 0x2f\n");
    const { options, explicit } = flags("--port", "5000-5009");
    const config = loadConfig([system]);
    const out = formatConfig(mergeConfig(options, explicit, config), explicit, config);
    expect(out).toMatch(new RegExp(`^threads: 2 +# ${system}:1$`, "m"));
    expect(out).toMatch(/^ports: 5000-5009 +# command line$/m);
    expect(out).toMatch(/^blocksize: 1M +# default$/m);
    expect(out).toMatch(new RegExp(`^cpumask: 0x2f +# ${system}:2 \\(CPUs 0-3,5\\)$`, "m"));
    expect(out).toMatch(/^# log: \(not set\) +# default$/m);
  });

  test("its output loads back as a config with the same values", () => {
    const system = file("threads: 2\nblocksize: 512K\nlog: /tmp/a b.log\nnodemask: 3\n");
    const { options, explicit } = flags("-C");
    const config = loadConfig([system]);
    const merged = mergeConfig(options, explicit, config);
    const again = loadConfig([file(formatConfig(merged, explicit, config))]);
    expect(mergeConfig(defaultOptions(), new Set(), again)).toEqual(merged);
  });
});
