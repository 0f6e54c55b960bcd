/**
 * A hostile peer (issue 6, DESIGN §5 and §10): in pull mode the local escp is
 * the receiver and the remote decides every name, size and byte it is sent.
 * test/fake-server.ts plays that remote: it runs behind the real sshd, does
 * the real handshake with the real native library and then sends crafted
 * records that all pass authentication. Each attack must be refused with a
 * clear error, in bounded time and memory, with nothing written outside the
 * destination (a canary directory beside it stays empty) and no temporary
 * files left behind.
 *
 * The last tests do the same against the real `escp --server` in push mode
 * for symlinks that already exist in the destination.
 *
 * One attack per test, named after it (OpenSSH regress style).
 */
import { describe, test, expect, beforeAll } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { startSshd, run, runEscp, tmpdir, makeFile, sameFile, ESCP_BIN, SSH_HOST, REPO_ROOT, limiter } from "./harness.ts";
import * as harness from "./harness.ts";

const BUN = process.execPath;
/** A hostile attempt must be over in this long (the normal case takes under a second). */
const BOUND_MS = 10_000;
/** A hostile attempt may not grow the receiver by more than this over an honest transfer. */
const RSS_SLACK_KB = 160 * 1024;
/** Data ports below the ephemeral range, so concurrent tests' outgoing connections never hold them. */
const PORTS = "21000-31999";
const TIME = fs.existsSync("/usr/bin/time") ? "/usr/bin/time" : undefined;

const slot = limiter(Number(process.env.ESCP_TEST_PARALLEL ?? 3));

let wrapper = "";
let baselineKb = 0;

beforeAll(async () => {
  await startSshd();
  // What sshd runs as the "remote escp": the fake, from this checkout, with this bun.
  const dir = tmpdir("fake-remote");
  wrapper = path.join(dir, "escp-fake");
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec '${BUN}' '${path.join(REPO_ROOT, "test", "fake-server.ts")}' "$@"\n`, { mode: 0o755 });
  baselineKb = (await pull("honest")).maxRssKb;
});

interface Pulled {
  code: number;
  stderr: string;
  timedOut: boolean;
  ms: number;
  maxRssKb: number;
  root: string;
  dst: string;
  canary: string;
  /** The most entries the destination held at once (sampled every 20 ms). */
  peakEntries: number;
}

/**
 * `escp escp-test:<scenario> <root>/dst/` against the fake server, under
 * /usr/bin/time for the receiver's peak RSS. <root>/canary sits beside the
 * destination; `prepare` may plant things in both first.
 */
function pull(scenario: string, prepare?: (p: { root: string; dst: string; canary: string }) => void, asked = [`${SSH_HOST}:*`]): Promise<Pulled> {
  return slot(() => pullNow(scenario, prepare, asked));
}

/**
 * `asked`: further operands, so that the names the scenario sends were asked for (`*`
 * by default): the attacks on the names themselves must meet the receiver's checks
 * of each name, not the check of the request that comes after them.
 */
async function pullNow(scenario: string, prepare: ((p: { root: string; dst: string; canary: string }) => void) | undefined, asked: string[]): Promise<Pulled> {
  const root = tmpdir("pull");
  const dst = path.join(root, "dst"), canary = path.join(root, "canary");
  fs.mkdirSync(dst);
  fs.mkdirSync(canary);
  prepare?.({ root, dst, canary });
  const spec = scenario.replace(/\{canary\}/g, canary);
  const options = asked.filter((a) => a.startsWith("-")), operands = asked.filter((a) => !a.startsWith("-"));
  const argv = [ESCP_BIN, "-F", harness.SSH_CONFIG!, "--port", PORTS, ...options, `${SSH_HOST}:${spec}`, ...operands, `${dst}/`];
  let peakEntries = 0;
  const sampler = setInterval(() => {
    try {
      peakEntries = Math.max(peakEntries, fs.readdirSync(dst).length);
    } catch {}
  }, 20);
  const t0 = performance.now();
  const r = await run(TIME ? [TIME, "-f", "escp-maxrss-kb %M", ...argv] : argv, {
    env: { ESCP_REMOTE: wrapper },
    timeoutMs: BOUND_MS + 5000,
  });
  const ms = performance.now() - t0;
  clearInterval(sampler);
  const m = /escp-maxrss-kb (\d+)\s*$/.exec(r.stderr);
  const stderr = m ? r.stderr.slice(0, m.index) : r.stderr;
  const code = TIME && /^Command exited with non-zero status (\d+)$/m.test(stderr) ? Number(/non-zero status (\d+)/.exec(stderr)![1]) : r.code;
  return { code, stderr: stderr.replace(/^Command exited with non-zero status \d+\n?/m, ""), timedOut: r.timedOut, ms, maxRssKb: m ? Number(m[1]) : 0, root, dst, canary, peakEntries };
}

/** Every file under dir (relative), symlinks not followed. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory()) walk(path.join(d, e.name), r);
    }
  };
  walk(dir, "");
  return out.sort();
}

/** What every refused attack must leave: a failed exit in bounded time, a clean destination, an untouched canary. */
/** A file's text, or a short note that it was overwritten (no binary dump in a failure). */
function text(file: string): string {
  const b = fs.readFileSync(file);
  return /^[\x20-\x7e]*$/.test(b.toString("latin1")) ? b.toString() : `<overwritten: ${b.length} bytes of binary>`;
}

function expectRefused(p: Pulled, message: RegExp, dstAfter: string[] = []) {
  expect(p.timedOut).toBe(false);
  expect(p.code).not.toBe(0);
  expect(p.stderr).toMatch(message);
  expect(p.ms).toBeLessThan(BOUND_MS);
  expect(tree(p.canary)).toEqual([]);
  expect(tree(p.dst)).toEqual(dstAfter);
  if (TIME && baselineKb) expect(p.maxRssKb).toBeLessThan(baselineKb + RSS_SLACK_KB);
}

describe("a hostile remote in pull mode", () => {
  test.concurrent("control: the fake server speaks the protocol well enough to deliver files", async () => {
    const p = await pull("honest");
    expect(p.stderr).toBe("");
    expect(p.code).toBe(0);
    expect(tree(p.dst)).toEqual(["blocks.bin", "hello.txt"]);
    expect(fs.readFileSync(path.join(p.dst, "hello.txt"), "utf8")).toBe("hello from the fake server\n");
    expect(baselineKb === 0 || p.maxRssKb > 0).toBe(true);
  });

  test.concurrent("names with '..' components are refused and nothing lands beside the destination", async () => {
    const p = await pull("dotdot");
    expectRefused(p, /refused: path '\.\.\/canary\/pwned' has a '\.\.' component/, ["ok.txt"]);
    expect(p.stderr).toMatch(/refused: path 'sub\/\.\.\/\.\.\/canary\/pwned2' has a '\.\.' component/);
    expect(p.stderr).toMatch(/refused: path '\.\.' has a '\.\.' component/);
  });

  test.concurrent("an absolute file name is refused", async () => {
    const p = await pull("absolute={canary}/pwned");
    expectRefused(p, /refused: absolute path '\/.*\/canary\/pwned'/, ["ok.txt"]);
  });

  test.concurrent("a NUL byte, an empty component and a '.' component are refused", async () => {
    const p = await pull("nul");
    expectRefused(p, /refused: path contains a NUL byte/, ["ok.txt"]);
    expect(p.stderr).toMatch(/refused: path 'a\/\/b' has a 'empty' component/);
    expect(p.stderr).toMatch(/refused: path '\.\/c' has a '\.' component/);
    expect(p.stderr).toMatch(/refused: empty path/);
  });

  test.concurrent("a 300-byte name and a 60000-byte path are refused", async () => {
    const p = await pull("longname");
    expectRefused(p, /is longer than 255 bytes/, ["ok.txt"]);
    expect(p.stderr).toMatch(/path longer than 4096 bytes/);
  });

  test.concurrent("terminal control sequences in a remote file name are not printed raw", async () => {
    const p = await pull("ctrlchars");
    expectRefused(p, /refused/, ["ok.txt"]);
    // ESC, BEL, CR, BS and the C1 CSI (U+009B) from the remote must not reach the terminal as such.
    expect(p.stderr).not.toMatch(/[\x1b\x07\x08\r\u009b]/);
  });

  test.concurrent("a server that names more data streams than were asked for, or not a number, is refused", async () => {
    expectRefused(await pull("badstreams=5"), /the other end answered with 5 data streams, not 1 to 4/);
    expectRefused(await pull("badstreams=0"), /the other end answered with 0 data streams, not 1 to 4/);
    expectRefused(await pull('badstreams="2"'), /the other end answered with "2" data streams, not 1 to 4/);
  });

  test.concurrent("a ready with a data port or address of the wrong shape is refused in one line, escapes not printed raw", async () => {
    expectRefused(await pull('badready={"port":"abc"}'), /^escp: escp-test: the other end answered with "abc" as its data port, not 1 to 65535\n$/);
    const p = await pull('badready={"addr":"\\u001b]0;PWNED\\u0007x"}');
    expectRefused(p, /^escp: escp-test: the other end answered with .*PWNED.* as its address, not an IP address\n$/);
    expect(p.stderr).not.toMatch(/[\x1b\x07]/);
  });

  test.concurrent("a final report of the wrong shape is one line, not a runtime error; the file asked for stays", async () => {
    for (const failures of ['[{"path":null,"message":"x"}]', '"abc"', "[null]", '[{"path":"p","message":{}}]', '[{"path":"p","message":"m","id":"x"}]']) {
      const p = await pull(`badreport=${failures}`, undefined, []);
      expectRefused(p, /^escp: escp-test: protocol error: the remote escp's final report is not one escp writes\n$/, ["badreport=" + failures]);
    }
  });

  test.concurrent("a file list claiming 10^9 files is refused without allocating for them", async () => {
    const p = await pull("manyfiles");
    expectRefused(p, /FILES record claims 1000000000 entries in \d+ bytes/);
  });

  test.concurrent("a file claiming 2^63 bytes is refused", async () => {
    const p = await pull("hugesize");
    expectRefused(p, /claims a size of 9223372036854775808 bytes/);
  });

  test.concurrent("a data record claiming a 4 GiB body is refused before it is read", async () => {
    const p = await pull("hugerecord");
    expectRefused(p, /stream 1: DATA record seq 1 announces 4294967280 bytes, over the limit/);
  });

  test.concurrent("a stream-0 record claiming a 4 GiB body is refused before it is read", async () => {
    const p = await pull("hugecontrol");
    expectRefused(p, /stream 0: FILES record seq 1 announces 4294967280 bytes, over the limit/);
  });

  test.concurrent("a zstd bomb in a DATA block (256 MiB from a few KiB) is refused", async () => {
    const p = await pull("zstdbomb");
    expectRefused(p, /stream 1: record seq 1 .*compressed block is invalid or larger than the block size/);
  });

  test.concurrent("a zstd bomb without a content size in its frame header is refused", async () => {
    const p = await pull("zstdbombnosize");
    expectRefused(p, /stream 1: record seq 1 .*compressed block is invalid or larger than the block size/);
  });

  test.concurrent("a zstd bomb in a compressed FILES record is refused", async () => {
    const p = await pull("filesbomb");
    expectRefused(p, /FILES record does not decompress/);
  });

  test.concurrent("data past a file's announced size is refused", async () => {
    const p = await pull("overrun");
    expectRefused(p, /stream 1: record seq 1 writes \[0, 4096\) of file 0, which has 10 bytes/);
  });

  test.concurrent("data for a file after its verdict is refused", async () => {
    const p = await pull("aftersettled");
    // ok.txt was complete and verified before the violation: it may stay.
    expectRefused(p, /data for file id 0, which is not being received/, ["ok.txt"]);
  });

  test.concurrent("a file id announced twice is refused", async () => {
    const p = await pull("dupid");
    expectRefused(p, /file id 0 announced out of order/);
  });

  test.concurrent("a DONE for a file never announced is refused", async () => {
    const p = await pull("strangedone");
    expectRefused(p, /DONE for unknown file id 999/);
  });

  test.concurrent("a record type that does not belong on stream 0 is refused", async () => {
    const p = await pull("badtype");
    expectRefused(p, /unexpected record type 1 on stream 0/);
  });

  test.concurrent("a remote path through a destination symlink that leads outside is refused", async () => {
    const p = await pull("through=evil", ({ dst, canary }) => fs.symlinkSync(canary, path.join(dst, "evil")), ["-r", `${SSH_HOST}:*`]);
    expectRefused(p, /dst\/evil: a symbolic link on the way leads outside the destination: refused\n.*dst\/evil: 1 entry under it not copied either\n/, ["evil", "ok.txt"]);
  });

  test.concurrent("a remote file named like a destination symlink replaces the link, not its target", async () => {
    let victim = "";
    const p = await pull("overlink=link", ({ dst, root }) => {
      victim = path.join(root, "victim");
      fs.writeFileSync(victim, "precious");
      fs.symlinkSync(victim, path.join(dst, "link"));
    });
    expect(p.code).toBe(0);
    expect(text(victim)).toBe("precious");
    expect(fs.lstatSync(path.join(p.dst, "link")).isFile()).toBe(true);
    expect(fs.statSync(path.join(p.dst, "link")).size).toBe(100);
  });

  test.concurrent("names that were not asked for end the pull before they are written (CVE-2019-6111: ~/.bashrc)", async () => {
    const p = await pull("unasked", ({ dst }) => fs.writeFileSync(path.join(dst, ".bashrc"), "# mine\n"), []);
    // The file asked for is named as not copied unless it was settled first.
    const settled = fs.existsSync(path.join(p.dst, "unasked"));
    expect(p.stderr).toBe(`escp: ${SSH_HOST}: protocol error: .bashrc does not match the request\n${settled ? "" : `escp: ${p.dst}/unasked: not copied\n`}`);
    expect(p.code).toBe(1);
    expect(fs.readFileSync(path.join(p.dst, ".bashrc"), "utf8")).toBe("# mine\n");
    // The file asked for is there if it was settled before the name after it came; nothing else is.
    expect(tree(p.dst).filter((n) => n !== "unasked")).toEqual([".bashrc"]);
  });

  test.concurrent("a directory sent to a copy without -r ends it before anything is made (~/.ssh/authorized_keys)", async () => {
    for (const name of [".ssh", "unaskeddir"]) {
      const p = await pull(`unaskeddir=${name}`, undefined, []);
      expect(p.stderr).toBe(`escp: ${SSH_HOST}: protocol error: ${name} is a directory, and -r was not given\n`);
      expect(p.code).toBe(1);
      expect(tree(p.dst)).toEqual([]);
    }
  });

  test.concurrent("a directory's contents sent straight into the target, as for `dir/.`, when no `dir/.` was asked for", async () => {
    const p = await pull("unaskedmerge", undefined, ["-r"]);
    expect(p.stderr).toBe(`escp: ${SSH_HOST}: protocol error: x does not match the request\n`);
    expect(p.code).toBe(1);
    expect(tree(p.dst)).toEqual([]);
  });

  test.concurrent("announcing 6000 files that never finish keeps the receiver's open files bounded", async () => {
    // The honest sender keeps at most 512 files in flight and the receiver's file
    // table has 4096 slots: a remote that announces more must be stopped before
    // the receiver holds a temporary file (and a descriptor) for each.
    const p = await pull("flood=6000");
    expect(p.timedOut).toBe(false);
    expect(p.code).not.toBe(0);
    expect(tree(p.dst)).toEqual([]);
    expect(p.peakEntries).toBeLessThanOrEqual(4096);
    expect(p.stderr).not.toMatch(/Too many open files/);
  });

  test.concurrent("data for a file the remote never announces ends the session instead of hanging", async () => {
    const p = await pull("unannounced");
    expectRefused(p, /file id 123456789/, ["ok.txt"]);
  });

  test.concurrent("more files in flight than the receiver's file table holds ends the session instead of stalling", async () => {
    const p = await pull("collide");
    expectRefused(p, /file/);
  });
});

describe("symlinks already in the destination (push to the real escp --server)", () => {
  test.concurrent("a directory symlink in the destination that points outside is not written through", async () => {
    const src = tmpdir("src"), root = tmpdir("dst");
    const dst = path.join(root, "dst"), outside = path.join(root, "outside");
    fs.mkdirSync(dst);
    fs.mkdirSync(outside);
    fs.symlinkSync(outside, path.join(dst, "evil"));
    fs.mkdirSync(path.join(src, "evil"));
    await makeFile(path.join(src, "evil", "x"), 1000, { seed: 1 });
    const r = await slot(() => runEscp(["--port", PORTS, "-r", path.join(src, "evil"), `${SSH_HOST}:${dst}/`]));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/evil/);
    expect(tree(outside)).toEqual([]);
    expect(fs.lstatSync(path.join(dst, "evil")).isSymbolicLink()).toBe(true);
  });

  test.concurrent("a relative symlink planted at the temporary name is not followed", async () => {
    // Another local user who can write the destination plants .f.escp-part -> keep.txt.
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 5000, { seed: 2 });
    fs.writeFileSync(path.join(dst, "keep.txt"), "precious");
    fs.symlinkSync("keep.txt", path.join(dst, ".f.escp-part"));
    const r = await slot(() => runEscp(["--port", PORTS, path.join(src, "f"), `${SSH_HOST}:${dst}/`]));
    expect(text(path.join(dst, "keep.txt"))).toBe("precious");
    if (r.code === 0) {
      expect(fs.lstatSync(path.join(dst, "f")).isFile()).toBe(true);
      expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    }
  });

  test.concurrent("an absolute symlink planted at the temporary name does not lead outside", async () => {
    const src = tmpdir("src"), root = tmpdir("dst");
    const dst = path.join(root, "dst"), victim = path.join(root, "victim");
    fs.mkdirSync(dst);
    fs.writeFileSync(victim, "precious");
    await makeFile(path.join(src, "f"), 5000, { seed: 3 });
    fs.symlinkSync(victim, path.join(dst, ".f.escp-part"));
    const r = await slot(() => runEscp(["--port", PORTS, path.join(src, "f"), `${SSH_HOST}:${dst}/`]));
    expect(text(victim)).toBe("precious");
    if (r.code === 0) expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test.concurrent("--resume: a symlink planted at the temporary name is replaced, not followed, and the copy goes ahead", async () => {
    const src = tmpdir("src"), root = tmpdir("dst");
    const dst = path.join(root, "dst"), victim = path.join(root, "victim");
    fs.mkdirSync(dst);
    fs.writeFileSync(victim, "precious");
    await makeFile(path.join(src, "f"), 3 * 1024 * 1024 + 5, { seed: 4 });
    fs.symlinkSync(victim, path.join(dst, ".f.escp-part"));
    const r = await slot(() => runEscp(["--port", PORTS, "--resume", path.join(src, "f"), `${SSH_HOST}:${dst}/`]));
    expect(text(victim)).toBe("precious");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(fs.readdirSync(dst)).toEqual(["f"]);
  });
});
