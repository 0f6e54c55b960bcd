import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OPTION_TABLE } from "../src/cli/args.ts";
import { completion, EXIT_STATUS, helpText, manPage, usage } from "../src/cli/help.ts";

const root = join(import.meta.dir, "..");
const bun = process.execPath;
const dir = mkdtempSync(join(tmpdir(), "escp-help-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const names = OPTION_TABLE.flatMap((o) => [o.short && `-${o.short}`, o.long && `--${o.long}`].filter(Boolean) as string[]);

/** Runs a bash snippet after loading the bash completion script; returns its stdout. */
function bash(snippet: string): string {
  const r = Bun.spawnSync(["bash", "-c", `source /dev/stdin <<'EOF'\n${completion("bash")}EOF\n${snippet}`]);
  expect(r.stderr.toString()).toBe("");
  return r.stdout.toString();
}

describe("--help", () => {
  test("mentions every option of the table", () => {
    const help = helpText();
    for (const n of names) expect(help).toMatch(new RegExp(`(^|[ ,])${n}([ ,]|$)`, "m"));
  });

  test("every option line has its help text", () => {
    const help = helpText().replace(/\s+/g, " ");
    for (const o of OPTION_TABLE) expect(help).toContain(o.help);
  });

  test("starts with an scp-style synopsis ending in the operands", () => {
    expect(helpText().startsWith("usage: escp [-")).toBe(true);
    expect(usage()).toContain("source ... target");
  });

  test("lines fit in 80 columns", () => {
    for (const line of helpText().split("\n")) expect(line.length).toBeLessThanOrEqual(80);
  });

  test("documents the exit statuses", () => {
    const help = helpText();
    for (const [code] of EXIT_STATUS) expect(help).toMatch(new RegExp(`^  ${code} `, "m"));
    expect(EXIT_STATUS.map(([c]) => c)).toEqual([0, 1, 2, 130]);
  });
});

describe("man page", () => {
  test("bun scripts/gen-man.ts writes exactly the committed docs/escp.1", () => {
    const out = join(dir, "escp.1");
    const r = Bun.spawnSync([bun, join(root, "scripts/gen-man.ts"), out]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(out, "utf8")).toBe(readFileSync(join(root, "docs/escp.1"), "utf8"));
  });

  test("documents every option", () => {
    const page = manPage();
    for (const n of names) expect(page).toContain(`\\fB${n.replace(/-/g, "\\-")}\\fR`);
  });

  test("the synopsis keeps each [option argument] on one line, unhyphenated and not spread", () => {
    const synopsis = manPage().split(".SH SYNOPSIS\n")[1]!.split(".SH DESCRIPTION")[0]!;
    expect(synopsis).toStartWith(".nh\n.ad l\n");
    expect(synopsis).toContain("[\\fB\\-F\\fR\\ \\fIssh_config\\fR]");
    const nroff = Bun.which("nroff");
    if (!nroff) return; // the roff above is what keeps them together; nroff shows it where it is installed
    const shown = Bun.spawnSync([nroff, "-man", "-rLL=80n", join(root, "docs/escp.1")], { env: { ...process.env, LC_ALL: "C" } }).stdout.toString();
    const lines = shown.replace(/.\x08/g, "").split("SYNOPSIS")[1]!.split("DESCRIPTION")[0]!.split("\n").map((l) => l.trim());
    expect(lines.join(" ")).toContain("[-F ssh_config]");
    for (const l of lines) expect(l).not.toMatch(/\[[^\]]*$|  /); // no "[-F" left open at a line's end, no spread spaces
  });

  test("has the usual sections", () => {
    const page = manPage();
    for (const s of ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES", "EXIT STATUS", "SEE ALSO"]) {
      expect(page).toMatch(new RegExp(`^\\.SH ${s}$`, "m"));
    }
  });
});

describe("completion", () => {
  test("bash: completes --re to the options that start with it", () => {
    const out = bash('COMP_WORDS=(escp --re); COMP_CWORD=1; _escp; printf "%s\\n" "${COMPREPLY[@]}"');
    expect(out.split("\n").filter(Boolean).sort()).toEqual(["--recursive", "--remote-escp", "--resume"]);
  });

  test("bash: offers the choices of --ssh", () => {
    const out = bash('COMP_WORDS=(escp --ssh ""); COMP_CWORD=2; _escp; printf "%s\\n" "${COMPREPLY[@]}"');
    expect(out).toBe("system\nbuiltin\n");
  });

  test("bash: registers the function for escp", () => {
    expect(bash("complete -p escp")).toBe("complete -o filenames -F _escp escp\n");
  });

  test("zsh: defines _escp with an _arguments spec for --resume", () => {
    const script = completion("zsh");
    expect(script.startsWith("#compdef escp\n")).toBe(true);
    expect(script).toContain("_escp() {");
    expect(script).toMatch(/'--resume\[[^\]]+\]'/);
  });

  test("zsh: lists every option", () => {
    const script = completion("zsh");
    for (const n of names) expect(script).toMatch(new RegExp(`'(\\([^)]*\\))?\\*?${n}[+=\\[]`));
  });
});
