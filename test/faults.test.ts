/**
 * Never lose or corrupt data (issue 5): every fault ends with a clear
 * message and a non-zero exit, and no file under a target name that differs
 * from its source. One scenario per test, against dist/escp and the real sshd.
 */
import { describe, test, expect, beforeAll, afterEach, setDefaultTimeout } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { startSshd, runEscp, spawnEscp, run, asNobody, tmpdir, makeFile, sameFile, freePort, descendants, ESCP_BIN, SSH_HOST } from "./harness.ts";
import { startProxy } from "./proxy.ts";

setDefaultTimeout(120_000);
const MiB = 1 << 20;
let cfg = "";
let sshdPid = 0;

beforeAll(async () => {
  const sshd = await startSshd();
  cfg = sshd.configPath;
  sshdPid = sshd.pid;
});

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

function size(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return -1;
  }
}

/** Live `escp --server` processes started through this test file's sshd (other runs may share the machine). */
function serverPids(): number[] {
  return descendants(sshdPid).filter((pid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      return !stat.includes(") Z ") && fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes("--server");
    } catch {
      return false; // gone meanwhile
    }
  });
}

/** Whether pid still runs (a zombie has exited). */
function running(pid: number): boolean {
  try {
    return !fs.readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
  } catch {
    return false;
  }
}

/**
 * Waits until these receivers have exited. Followed by pid, not by sshd's
 * process tree: when the ssh connection goes first, sshd's session ends and
 * the receiver, re-parented, may still be removing its temporary files.
 */
function receiversExit(pids: number[], ms: number): Promise<void> {
  expect(pids.length).toBeGreaterThan(0);
  return waitFor(() => !pids.some(running), ms, "the receiver to exit");
}

/** The target either does not exist or is byte-identical to the source. */
async function intactOrAbsent(src: string, dst: string): Promise<boolean> {
  return !fs.existsSync(dst) || (await sameFile(src, dst));
}

/**
 * A 128 MiB push that has visibly started and is still far from done: the
 * scene for the interruption tests. -l holds it near 25 MB/s, because an
 * unthrottled push on a fast machine can finish, verified, between the poll
 * that sees 16 MiB and the signal, and then there is nothing to interrupt.
 */
async function pushUnderWay(seed: number) {
  const src = tmpdir("src"), dst = tmpdir("dst");
  const file = path.join(src, "f");
  await makeFile(file, 128 * MiB, { seed });
  const t = spawnEscp(["-l", "200000", file, `${SSH_HOST}:${dst}/`]);
  await waitFor(() => size(path.join(dst, ".f.escp-part")) > 16 * MiB, 60_000, "data to arrive");
  return { ...t, file, dst };
}

afterEach(async () => {
  // No receiver may outlive its transfer.
  await waitFor(() => serverPids().length === 0, 10_000, "remote escp --server processes to exit").catch(() => {});
});

describe("resume", () => {
  test("an interrupted 1 GiB push resumes and sends less than half the bytes again", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "big"), part = path.join(dst, ".big.escp-part");
    const total = 1024 * MiB;
    await makeFile(file, total, { seed: 51 });
    const first = spawnEscp(["--resume", file, `${SSH_HOST}:${dst}/`]);
    await waitFor(() => size(part) > 0.6 * total, 60_000, "60% of the file to arrive");
    const receivers = serverPids();
    first.p.kill("SIGKILL");
    await first.p.exited;
    await receiversExit(receivers, 10_000);
    expect(fs.existsSync(path.join(dst, "big"))).toBe(false);
    expect(size(part)).toBeGreaterThan(0.5 * total);
    const r = await runEscp(["--resume", "--json", file, `${SSH_HOST}:${dst}/`], { timeoutMs: 120_000 });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(summary.event).toBe("summary");
    expect(summary.bytes).toBe(total);
    expect(summary.bytesSkipped).toBeGreaterThan(0.5 * total);
    expect(summary.bytesNetwork).toBeLessThan(0.5 * total);
    expect(await sameFile(file, path.join(dst, "big"))).toBe(true);
    expect(fs.existsSync(part)).toBe(false);
  });

  test("a complete identical file is skipped without sending its data", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "f");
    await makeFile(file, 20 * MiB, { seed: 52 });
    expect((await runEscp(["-p", file, `${SSH_HOST}:${dst}/`])).code).toBe(0);
    const r = await runEscp(["-p", "--resume", "--json", file, `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(summary.bytesSkipped).toBe(20 * MiB);
    expect(summary.bytesNetwork).toBeLessThan(64 * 1024);
  });

  test("a partial file whose content differs is corrected, not trusted", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "f");
    await makeFile(file, 8 * MiB + 5, { seed: 53 });
    // A stale partial file: right prefix, one wrong block in the middle, and too long.
    const stale = Buffer.from(fs.readFileSync(file));
    stale[3 * MiB + 10] ^= 0xff;
    fs.writeFileSync(path.join(dst, ".f.escp-part"), Buffer.concat([stale, Buffer.alloc(MiB, 7)]));
    const r = await runEscp(["--resume", "--json", file, `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(summary.bytesSkipped).toBe(7 * MiB); // 8 whole blocks held, one of them wrong
    expect(await sameFile(file, path.join(dst, "f"))).toBe(true);
  });
});

/** What escp says when the remote escp, or the ssh carrying it, dies mid-transfer. */
const GONE = `lost connection to ${SSH_HOST}: the remote escp or its ssh connection went away mid-transfer`;

/**
 * Three 32 MiB files under way at 100 Mbit/s (about 8 s in all) when the remote
 * escp is killed: escp says it lost the connection, in one line, then names each
 * file that did not arrive, as scp names the one it was copying; nothing is left
 * under a final name but whole files.
 */
async function killedAmidFiles(pull: boolean, seed: number) {
  const src = tmpdir("src"), dst = tmpdir("dst");
  const names = ["a", "b", "c"];
  for (const [i, n] of names.entries()) await makeFile(path.join(src, n), 32 * MiB, { seed: seed + i });
  const ends = pull ? [...names.map((n) => `${SSH_HOST}:${src}/${n}`), `${dst}/`] : [...names.map((n) => path.join(src, n)), `${SSH_HOST}:${dst}/`];
  const t = spawnEscp(["-l", "100000", ...ends]);
  await waitFor(() => size(path.join(dst, ".a.escp-part")) > 4 * MiB, 60_000, "data to arrive");
  for (const pid of serverPids()) process.kill(pid, "SIGKILL");
  expect(await t.p.exited).toBe(1);
  const lines = (await t.stderr).split("\n");
  expect(lines[0]).toBe(`escp: ${GONE}`);
  const missing = [];
  for (const n of names) {
    if (!fs.existsSync(path.join(dst, n))) missing.push(n);
    else expect(await sameFile(path.join(src, n), path.join(dst, n))).toBe(true);
  }
  expect(missing).toContain("a");
  // Each by the name the user knows it by here: the source pushed, the destination pulled into.
  const shown = (n: string) => (pull ? path.join(dst, n) : path.join(src, n));
  expect(lines.slice(1)).toEqual([...missing.map((n) => `escp: ${shown(n)}: not copied`), ""]);
}

describe("killed processes", () => {
  test("SIGKILL of the remote receiver amid a push of three files: the lost connection in a line, then each file not copied", async () => {
    await killedAmidFiles(false, 160);
  });

  test("SIGKILL of the remote sender amid a pull of three files: the lost connection in a line, then each file not copied", async () => {
    await killedAmidFiles(true, 170);
  });

  test("SIGKILL of the remote receiver fails the transfer and leaves no corrupt file", async () => {
    const t = await pushUnderWay(54);
    const { file, dst } = t;
    for (const pid of serverPids()) process.kill(pid, "SIGKILL");
    const code = await t.p.exited;
    expect(code).toBe(1);
    expect(await t.stderr).toStartWith(`escp: ${GONE}\n`);
    expect(await intactOrAbsent(file, path.join(dst, "f"))).toBe(true);
  });

  test("SIGKILL of the remote receiver amid many small files: one line naming the host, no temporary names, only whole files", async () => {
    // Verdicts go out on stream 0 while blocks complete: a write to the dead stream 0
    // happens inside a worker's message handler and must end the session, not escape.
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let d = 0; d < 20; d++) for (let f = 0; f < 200; f++) await makeFile(path.join(src, "m", `d${d}`, `f${f}`), 4096, { seed: d * 1000 + f });
    const t = spawnEscp(["-r", "-l", "20000", path.join(src, "m"), `${SSH_HOST}:${dst}/`]);
    const arrived = () => fs.readdirSync(path.join(dst, "m"), { recursive: true }).filter((n) => /f\d+$/.test(String(n))).length;
    await waitFor(() => fs.existsSync(path.join(dst, "m")) && arrived() > 200, 60_000, "files to arrive");
    for (const pid of serverPids()) process.kill(pid, "SIGKILL");
    expect(await t.p.exited).toBe(1);
    const lines = (await t.stderr).trim().split("\n");
    expect(lines.every((l) => l.startsWith("escp: ")), lines.join("\n")).toBe(true);
    expect(lines[0], lines.join("\n")).toStartWith(`escp: lost connection to ${SSH_HOST}: `);
    // The files under way: the first few named, the rest counted.
    expect(lines.slice(1).every((l, i) => (i < 10 ? /: not copied$/ : /^escp: \d+ more files? not copied$/).test(l)), lines.join("\n")).toBe(true);
    expect(lines.length).toBeLessThanOrEqual(12);
    // Files of one block are written unnamed and linked in once verified: the receiver's
    // death leaves nothing half-written under any name.
    const names = fs.readdirSync(path.join(dst, "m"), { recursive: true }).map(String);
    expect(names.filter((n) => n.includes("escp-part"))).toEqual([]);
    for (const n of names.filter((n) => /f\d+$/.test(n))) expect(await sameFile(path.join(src, "m", n), path.join(dst, "m", n))).toBe(true);
  });

  test("SIGKILL of the sender makes the receiver exit and remove its temporary file", async () => {
    const t = await pushUnderWay(55);
    const { dst } = t;
    const receivers = serverPids();
    t.p.kill("SIGKILL");
    await receiversExit(receivers, 10_000);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("Ctrl-C stops both sides quickly, exits 130 and removes temporary files", async () => {
    const t = await pushUnderWay(56);
    const { dst } = t;
    const receivers = serverPids();
    const sent = Date.now();
    t.p.kill("SIGINT");
    expect(await t.p.exited).toBe(130);
    expect(Date.now() - sent).toBeLessThan(2500);
    await receiversExit(receivers, 5_000);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("Ctrl-C in a shell loop of copies stops the loop: escp ends by the signal once it has cleaned up", async () => {
    // bash goes on after a child that caught SIGINT and exited; it stops when the child died of it.
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 128 * MiB, { seed: 59 });
    const script = 'for i in 1 2 3; do "$0" -F "$1" -l 200000 "$2" "$3"; done; echo finished';
    const sh = Bun.spawn(["bash", "-c", script, ESCP_BIN, cfg, path.join(src, "f"), `${SSH_HOST}:${dst}/`], {
      env: { ...process.env, ESCP_REMOTE: ESCP_BIN },
      stdout: "pipe",
      stderr: "pipe",
    });
    await waitFor(() => size(path.join(dst, ".f.escp-part")) > 16 * MiB, 60_000, "data to arrive");
    const escp = descendants(sh.pid).find((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith(`${ESCP_BIN}\0`));
    expect(escp).toBeDefined();
    const receivers = serverPids();
    // What a terminal's Ctrl-C does: the signal to the shell and to its foreground child.
    process.kill(sh.pid, "SIGINT");
    process.kill(escp!, "SIGINT");
    const out = await new Response(sh.stdout).text();
    expect(await sh.exited).toBe(130);
    expect(out).toBe("");
    await receiversExit(receivers, 5_000);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("a hang-up (SIGHUP: the terminal or login closed) of a pull stops it as Ctrl-C does, removing the local temporary file", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 128 * MiB, { seed: 57 });
    const t = spawnEscp(["-l", "200000", `${SSH_HOST}:${path.join(src, "f")}`, `${dst}/`]);
    await waitFor(() => size(path.join(dst, ".f.escp-part")) > 16 * MiB, 60_000, "data to arrive");
    const senders = serverPids();
    t.p.kill("SIGHUP");
    expect(await t.p.exited).toBe(130);
    expect(await t.stderr).toBe("escp: interrupted\n");
    await receiversExit(senders, 5_000);
    expect(fs.readdirSync(dst)).toEqual([]);
  });
});

describe("broken streams", () => {
  test("a data stream cut mid-transfer fails cleanly instead of hanging", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "f");
    await makeFile(file, 64 * MiB, { seed: 57 });
    const port = await freePort();
    const proxy = await startProxy(port, ({ conn, index, record }) => (conn === 2 && index === 5 ? "close" : [record]));
    const started = Date.now();
    const r = await runEscp(["--port", `${port}-${port}`, file, `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${proxy.port}` },
    });
    proxy.close();
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/stream 2/);
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(fs.readdirSync(dst)).toEqual([]);
  });
});

describe("two copies to one target at once", () => {
  test("the one that comes second is refused (the temporary file is locked); the first's success means its file", async () => {
    // Temporary names are fixed: the second used to replace the first's temporary file,
    // and the first's rename then put the second's half-written file in place.
    const src = tmpdir("src"), dst = tmpdir("dst");
    const a = await makeFile(path.join(src, "a"), 64 * MiB, { seed: 76 });
    const b = await makeFile(path.join(src, "b"), 64 * MiB, { seed: 77 });
    const target = path.join(dst, "t");
    fs.copyFileSync(a, target);
    const first = spawnEscp(["-l", "200000", b, `${SSH_HOST}:${target}`]);
    await waitFor(() => size(path.join(dst, ".t.escp-part")) > 0, 30_000, "the first copy's data");
    const second = spawnEscp([a, `${SSH_HOST}:${target}`]);
    expect(await second.p.exited).toBe(1);
    expect(await second.stderr).toBe(`escp: ${target}: another escp is copying to this file now (its temporary file is locked)\n`);
    expect(await first.p.exited).toBe(0);
    expect(await first.stderr).toBe("");
    expect(await sameFile(b, target)).toBe(true);
    expect(fs.readdirSync(dst)).toEqual(["t"]);
  });
});

describe("two --inplace copies to one target at once", () => {
  // --inplace has no temporary file to lock: both used to write the target at once, exit 0,
  // and leave it holding blocks of each source.
  const LOCKED = "write-locked by another process, most likely an escp copying into it now: left as it is";

  test("the second is refused, with --resume too; the first's success means its file; hard links in one copy are not refused (push)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const a = await makeFile(path.join(src, "a"), 64 * MiB, { seed: 91 });
    const b = await makeFile(path.join(src, "b"), 64 * MiB, { seed: 92 });
    const target = path.join(dst, "t");
    const first = spawnEscp(["--inplace", "-l", "100000", b, `${SSH_HOST}:${target}`]);
    await waitFor(() => size(target) > 0, 30_000, "the first copy's data");
    for (const extra of [[], ["--resume"]]) {
      const second = await runEscp(["--inplace", ...extra, a, `${SSH_HOST}:${target}`]);
      expect(second.stderr).toBe(`escp: ${target}: ${LOCKED}\n`);
      expect(second.code).toBe(1);
    }
    expect(await first.p.exited).toBe(0);
    expect(await first.stderr).toBe("");
    expect(await sameFile(b, target)).toBe(true);
    expect(fs.readdirSync(dst)).toEqual(["t"]);
    // Two names of one file, written in place by one copy, share its lock (-r of a tree of links).
    fs.mkdirSync(path.join(src, "tree"));
    fs.writeFileSync(path.join(src, "tree", "x"), "linked\n");
    fs.linkSync(path.join(src, "tree", "x"), path.join(src, "tree", "y"));
    fs.mkdirSync(path.join(dst, "tree"));
    fs.linkSync(target, path.join(dst, "tree", "x"));
    fs.linkSync(target, path.join(dst, "tree", "y"));
    const links = await runEscp(["-r", "--inplace", path.join(src, "tree"), `${SSH_HOST}:${dst}/`]);
    expect([links.code, links.stderr]).toEqual([0, ""]);
    expect(fs.readFileSync(target, "utf8")).toBe("linked\n");
  });

  test("the second is refused (pull); the lock goes with a copy killed with -9, and the next copy completes", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const a = await makeFile(path.join(src, "a"), 64 * MiB, { seed: 93 });
    const b = await makeFile(path.join(src, "b"), 64 * MiB, { seed: 94 });
    const target = path.join(dst, "t");
    const first = spawnEscp(["--inplace", "-l", "100000", `${SSH_HOST}:${b}`, target]);
    await waitFor(() => size(target) > 0, 30_000, "the first copy's data");
    const second = await runEscp(["--inplace", "--sparse", `${SSH_HOST}:${a}`, target]); // --sparse once emptied it: it must not touch it, locked
    expect(second.stderr).toBe(`escp: ${target}: ${LOCKED}\n`);
    expect(second.code).toBe(1);
    expect(size(target)).toBeGreaterThan(0);
    first.p.kill("SIGKILL");
    await first.p.exited;
    const third = await runEscp(["--inplace", `${SSH_HOST}:${a}`, target]);
    expect([third.code, third.stderr]).toEqual([0, ""]);
    expect(await sameFile(a, target)).toBe(true);
    expect(fs.readdirSync(dst)).toEqual(["t"]);
  });
});

describe("what a copy writes, removed while it runs", () => {
  // Each was reported as "another escp is copying to this file now".
  test("its temporary file, its directory, or (--inplace) the target: said so, exit 1, nothing left (push)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const a = await makeFile(path.join(src, "f"), 64 * MiB, { seed: 95 });
    const sub = path.join(dst, "sub");
    const cases: [string[], string, string, string][] = [
      [[], path.join(dst, "f"), path.join(dst, ".f.escp-part"), "its temporary file was removed during the copy"],
      [[], path.join(sub, "f"), sub, "its directory was removed during the copy"],
      [["--inplace"], path.join(dst, "f"), path.join(dst, "f"), "it was removed or replaced during the copy"],
    ];
    for (const [extra, target, removed, why] of cases) {
      fs.mkdirSync(sub, { recursive: true });
      const t = spawnEscp([...extra, "-l", "200000", a, `${SSH_HOST}:${target}`]);
      await waitFor(() => size(removed) > 0 && (removed !== sub || size(path.join(sub, ".f.escp-part")) > 0), 30_000, "data to arrive");
      fs.rmSync(removed, { recursive: true });
      expect(await t.stderr).toBe(`escp: ${target}: ${why}\n`);
      expect(await t.p.exited).toBe(1);
      expect(fs.readdirSync(dst)).toEqual(removed === sub ? [] : ["sub"]);
    }
  });
});

describe("a temporary file another escp holds", () => {
  test("a one-block file onto it fails naming the target and why, not the temporary name; the target is kept", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const a = await makeFile(path.join(src, "a"), 1000, { seed: 79 });
    const big = await makeFile(path.join(src, "big"), 64 * MiB, { seed: 80 });
    fs.writeFileSync(path.join(dst, "t"), "old\n");
    const holder = spawnEscp(["-l", "200000", big, path.join(dst, "t")]);
    await waitFor(() => size(path.join(dst, ".t.escp-part")) > 0, 30_000, "the other copy's data");
    const r = await runEscp([a, path.join(dst, "t")]);
    expect(r.stderr).toBe(`escp: ${path.join(dst, "t")}: another escp is copying to this file now (its temporary file is locked)\n`);
    expect(r.code).toBe(1);
    expect(fs.readFileSync(path.join(dst, "t"), "utf8")).toBe("old\n");
    expect(await holder.p.exited).toBe(0);
    expect(await sameFile(big, path.join(dst, "t"))).toBe(true);
  });
});

describe.skipIf(process.getuid?.() !== 0)("a temporary file another user holds", () => {
  test("a lock another user takes on root's leftover partial (readable: no write access) does not stop root's copies", async () => {
    // flock needs only read access: with it, any user could hold the name and refuse every copy to it.
    const src = tmpdir("src"), dst = fs.mkdtempSync("/tmp/escp-held-"); // a path nobody can reach
    fs.chmodSync(dst, 0o755);
    const a = await makeFile(path.join(src, "t"), 3 * MiB, { seed: 81 });
    const part = path.join(dst, ".t.escp-part");
    fs.writeFileSync(part, Buffer.alloc(MiB));
    fs.chmodSync(part, 0o644);
    const holder = Bun.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "flock", "-s", part, "sleep", "30"]);
    try {
      await waitFor(() => Bun.spawnSync(["flock", "-n", "-x", part, "true"]).exitCode !== 0, 5_000, "nobody's lock");
      for (const args of [[], ["--resume"]]) {
        const r = await runEscp([...args, a, `${SSH_HOST}:${dst}/`]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(await sameFile(a, path.join(dst, "t"))).toBe(true);
      }
    } finally {
      holder.kill();
      fs.rmSync(dst, { recursive: true, force: true });
    }
  });
});

describe("sources that misbehave", () => {
  test("a file that grows while it is read is reported, not silently truncated", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "growing");
    await makeFile(file, 256 * MiB, { seed: 58 });
    const t = spawnEscp(["-t", "1", file, `${SSH_HOST}:${dst}/`]);
    await waitFor(() => size(path.join(dst, ".growing.escp-part")) > 0, 60_000, "data to arrive");
    fs.appendFileSync(file, Buffer.alloc(MiB, 1));
    expect(await t.p.exited).toBe(1);
    expect(await t.stderr).toMatch(/growing: file changed while being read/);
    expect(fs.existsSync(path.join(dst, "growing"))).toBe(false);
  });

  test("--inplace: a source that shrinks while it is read says the target it was written into is left incomplete (push)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "shrinking"), target = path.join(dst, "shrinking");
    await makeFile(file, 64 * MiB, { seed: 59 });
    await makeFile(target, 64 * MiB, { seed: 60 });
    const t = spawnEscp(["--inplace", "-t", "1", "-l", "80000", file, `${SSH_HOST}:${dst}/`]);
    const head = () => {
      const b = Buffer.alloc(4096), fd = fs.openSync(target, "r");
      fs.readSync(fd, b, 0, 4096, 0);
      fs.closeSync(fd);
      return b;
    };
    const before = head();
    await waitFor(() => !head().equals(before), 60_000, "data to arrive");
    fs.truncateSync(file, 10 * MiB);
    expect(await t.p.exited).toBe(1);
    expect(await t.stderr).toMatch(/shrinking: file changed while being read .*; written in place, it is left incomplete\n$/);
  });

  test("pull: a remote file that grows while it is read is named by its remote path", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "growing");
    await makeFile(file, 256 * MiB, { seed: 59 });
    const t = spawnEscp(["-t", "1", `${SSH_HOST}:${file}`, `${dst}/`]);
    await waitFor(() => size(path.join(dst, ".growing.escp-part")) > 0, 60_000, "data to arrive");
    fs.appendFileSync(file, Buffer.alloc(MiB, 1));
    expect(await t.p.exited).toBe(1);
    expect(await t.stderr).toContain(`escp: ${file}: file changed while being read`);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("an unreadable source is named, the others are still copied, exit status 1", async () => {
    // root reads anything: this local copy runs as nobody so the permission bites.
    await asNobody(async ({ src, dst, escp }) => {
      await makeFile(path.join(src, "a"), 1000, { seed: 1 });
      await makeFile(path.join(src, "secret"), 1000, { seed: 2, mode: 0o000 });
      await makeFile(path.join(src, "se\ncret"), 1000, { seed: 4, mode: 0o000 }); // the cause still parted from the name
      await makeFile(path.join(src, "b"), 1000, { seed: 3 });
      const r = await escp([path.join(src, "a"), path.join(src, "secret"), path.join(src, "se\ncret"), path.join(src, "b"), `${dst}/`]);
      expect(r.stderr).toBe(`escp: ${path.join(src, "secret")}: Permission denied\nescp: ${path.join(src, "se\\012cret")}: Permission denied\n`);
      expect(r.code).toBe(1);
      expect(fs.readdirSync(dst).sort()).toEqual(["a", "b"]);
    });
  });
});

describe("a HOME this user may not read", () => {
  test("(another user's, as after su without -) is warned about and the copy goes ahead, as scp's does", async () => {
    await asNobody(async ({ src, dst }) => {
      await makeFile(path.join(src, "a"), 1000, { seed: 4 });
      const home = fs.mkdtempSync("/tmp/escp-home-"); // root's, 0700: nobody cannot look inside
      try {
        const r = await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ESCP_BIN, path.join(src, "a"), `${dst}/`], { env: { HOME: home } });
        expect(r.stderr).toBe(`escp: warning: cannot read ${home}/.config/escp/escp.yaml (permission denied): its settings are not used\n`);
        expect(r.code).toBe(0);
        expect(await sameFile(path.join(src, "a"), path.join(dst, "a"))).toBe(true);
      } finally {
        fs.rmSync(home, { recursive: true, force: true });
      }
    });
  });
});

// root may write anything: these local copies run as nobody, as a user's own would.
describe("the destination's permissions, for a user who is not root", () => {
  test("a read-only file of several blocks, not a multiple of 4 KiB, arrives whole and read-only, with and without -p", async () => {
    // Its unaligned last block is written through a second descriptor (O_DIRECT), which a 0444 file would refuse.
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 3 * MiB - 5, { seed: 71, mode: 0o444 });
      for (const [args, name] of [[[], "plain"], [["-p"], "kept"]] as const) {
        const r = await escp([...args, a, path.join(dst, name)]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(await sameFile(a, path.join(dst, name))).toBe(true);
        expect(fs.statSync(path.join(dst, name)).mode & 0o7777).toBe(0o444);
      }
    });
  });

  test("an existing file the user may not write is not replaced (read-only, or another user's), as scp is refused", async () => {
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 1000, { seed: 72 });
      const readOnly = path.join(dst, "ro"), othersFile = path.join(dst, "roots");
      const old = "old\n".repeat(250); // the source's size: --resume offers its blocks before it is refused
      fs.writeFileSync(readOnly, old, { mode: 0o444 });
      fs.chownSync(readOnly, 65534, 65534);
      fs.writeFileSync(othersFile, old, { mode: 0o644 }); // root's, in a directory nobody may write
      for (const target of [readOnly, othersFile]) {
        fs.utimesSync(target, 1e9, 1e9); // not the source's time, which --resume alone would take as the same file
        for (const args of [[], ["--resume"]]) {
          const r = await escp([...args, a, target]);
          expect(r.stderr).toBe(`escp: ${target}: Permission denied\n`);
          expect(r.code).toBe(1);
          expect(fs.readFileSync(target, "utf8")).toBe(old);
        }
      }
      expect(fs.readdirSync(dst).sort()).toEqual(["ro", "roots"]); // no temporary file left
      // Content it already has: nothing to write, so nothing refused.
      fs.copyFileSync(a, othersFile);
      const same = await escp(["--resume", "--verify", a, othersFile]);
      expect(same.stderr).toBe("");
      expect(same.code).toBe(0);
    });
  });

  test("a writable file in a read-only directory is refused naming --inplace, which then rewrites it", async () => {
    // scp writes into the file; escp replaces it by a rename, which the directory must allow.
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 2 * MiB + 3, { seed: 73 });
      const dir = path.join(dst, "d"), target = path.join(dir, "f");
      fs.mkdirSync(dir);
      fs.writeFileSync(target, "old\n", { mode: 0o666 });
      fs.chownSync(dir, 65534, 65534);
      fs.chownSync(target, 65534, 65534);
      fs.chmodSync(dir, 0o555);
      const r = await escp([a, target]);
      expect(r.stderr).toMatch(new RegExp(`^escp: ${target}: Permission denied: its directory is not writable .*--inplace.*\\n$`));
      expect(r.code).toBe(1);
      expect(fs.readFileSync(target, "utf8")).toBe("old\n");
      const again = await escp(["--inplace", a, target]);
      expect(again.code).toBe(0);
      expect(await sameFile(a, target)).toBe(true);
      expect(fs.readdirSync(dir)).toEqual(["f"]);
    });
  });

  test("another user's writable file in a sticky directory is refused naming --inplace, which then rewrites it", async () => {
    // The rename over it would fail (sticky bit) after all its data had come.
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 2 * MiB + 3, { seed: 75 });
      const dir = path.join(dst, "shared"), target = path.join(dir, "f");
      fs.mkdirSync(dir);
      fs.chmodSync(dir, 0o1777);
      fs.writeFileSync(target, "old\n");
      fs.chmodSync(target, 0o666);
      const r = await escp([a, target]);
      expect(r.stderr).toMatch(new RegExp(`^escp: ${target}: Operation not permitted: its directory is sticky .*--inplace.*\\n$`));
      expect(r.code).toBe(1);
      expect(fs.readFileSync(target, "utf8")).toBe("old\n");
      expect(fs.readdirSync(dir)).toEqual(["f"]);
      const again = await escp(["--inplace", a, target]);
      expect(again.stderr).toBe("");
      expect(again.code).toBe(0);
      expect(await sameFile(a, target)).toBe(true);
      expect(fs.statSync(target).uid).toBe(0);
    });
  });

  test("--resume over such a file of the source's size is refused at its first differing block, not after all of them; no partial file stays", async () => {
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 96 * MiB, { seed: 76 });
      const dir = path.join(dst, "shared"), target = path.join(dir, "f");
      fs.mkdirSync(dir);
      fs.chmodSync(dir, 0o1777);
      await makeFile(target, 96 * MiB, { seed: 77 });
      fs.chmodSync(target, 0o666);
      // -l 400 Mbit/s: the refusal, however late a loaded machine hears it, comes long before half the file has gone.
      const r = await escp(["--resume", "--json", "-t", "1", "-l", "400000", a, target]);
      expect(r.stderr).toMatch(new RegExp(`^escp: ${target}: Operation not permitted: its directory is sticky .*--inplace.*\n$`));
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesNetwork).toBeLessThan(48 * MiB);
      expect(fs.readdirSync(dir)).toEqual(["f"]);
    });
  });

  test("--resume over a target of the user's they may write but not read (0200): nothing to offer, so all of it is sent", async () => {
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 3 * MiB, { seed: 79 });
      const target = path.join(dst, "f");
      await makeFile(target, 3 * MiB, { seed: 80 }); // the source's size: its blocks would be offered
      fs.chownSync(target, 65534, 65534);
      fs.chmodSync(target, 0o200);
      const r = await escp(["--resume", a, target]);
      expect([r.code, r.stderr]).toEqual([0, ""]);
      fs.chmodSync(target, 0o600);
      expect(await sameFile(a, target)).toBe(true);
    });
  });

  test("a setuid file of the user's own loses its setuid bits when replaced, as a write clears them", async () => {
    await asNobody(async ({ src, dst, escp }) => {
      const a = await makeFile(path.join(src, "a"), 1000, { seed: 74 });
      const target = path.join(dst, "tool");
      fs.writeFileSync(target, "old\n");
      fs.chownSync(target, 65534, 65534);
      fs.chmodSync(target, 0o6755);
      const r = await escp([a, target]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(await sameFile(a, target)).toBe(true);
      expect(fs.statSync(target).mode & 0o7777).toBe(0o755);
    });
  });
});

describe("few file descriptors (ulimit -n)", () => {
  /** escp under `ulimit -n n`; with `remote`, the remote escp too. */
  const limited = (n: number, args: string[], remote = false) => {
    const dir = tmpdir("bin"), wrapper = path.join(dir, "limited.sh");
    fs.writeFileSync(wrapper, `#!/bin/bash\nulimit -n ${n} && exec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    return run(["bash", "-c", `ulimit -n ${n} && exec "$0" "$@"`, ESCP_BIN, "-F", cfg, ...args], {
      env: { ESCP_REMOTE: remote ? wrapper : ESCP_BIN },
    });
  };

  test("too few for any copy: one line that says so, on either end, nothing copied", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 1000, { seed: 78 });
    const here = await limited(32, [path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(here.stderr).toBe("escp: too few file descriptors: ulimit -n is 32, and a copy needs 40 or more\n");
    expect(here.code).toBe(1);
    const dir = tmpdir("bin"), wrapper = path.join(dir, "remote.sh");
    fs.writeFileSync(wrapper, `#!/bin/bash\nulimit -n 32 && exec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    const remote = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: wrapper } });
    expect(remote.stderr).toBe(`escp: ${SSH_HOST}: too few file descriptors: ulimit -n is 32, and a copy needs 40 or more\n`);
    expect(remote.code).toBe(1);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("-t 8 under ulimit -n 48 on both ends: fewer streams, said in a warning, and every file of a 2,000-file tree arrives (push, pull)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let d = 0; d < 40; d++) for (let f = 0; f < 50; f++) fs.mkdirSync(path.join(src, "t", `d${d}`), { recursive: true }), fs.writeFileSync(path.join(src, "t", `d${d}`, `f${f}`), `${d}/${f}\n`);
    // Said once, by this end: the other end is asked for no more streams than this one allows.
    const fewer = "escp: warning: ulimit -n is 48, which leaves room for 3 of the 8 streams asked for: using 3 (raise it with ulimit -n)\n";
    const push = await limited(48, ["-t", "8", "-r", path.join(src, "t"), `${SSH_HOST}:${dst}/push`], true);
    expect(push.stderr).toBe(fewer);
    expect(push.code).toBe(0);
    const pull = await limited(48, ["-t", "8", "-r", `${SSH_HOST}:${path.join(src, "t")}`, path.join(dst, "pull")], true);
    expect(pull.stderr).toBe(fewer);
    expect(pull.code).toBe(0);
    for (const side of ["push", "pull"]) {
      expect(fs.readdirSync(path.join(dst, side)).length).toBe(40);
      expect(fs.readFileSync(path.join(dst, side, "d39", "f49"), "utf8")).toBe("39/49\n");
      expect(fs.readdirSync(path.join(dst, side, "d17")).length).toBe(50);
    }
  });
});

describe("memory for buffers (a cgroup's limit)", () => {
  /** A memory cgroup of `bytes` (v2, or v1's memory controller) below this process's own, removed after the test. */
  const cgroups: string[] = [];
  afterEach(async () => {
    // The other end's escp may still be exiting when the local one has: a busy cgroup cannot be removed.
    for (const dir of cgroups.splice(0)) {
      await waitFor(() => fs.readFileSync(path.join(dir, "cgroup.procs"), "utf8") === "", 10_000, `${dir} to empty`);
      fs.rmdirSync(dir);
    }
  });
  const memoryCgroup = (bytes: number): string => {
    const lines = fs.readFileSync("/proc/self/cgroup", "utf8").split("\n").map((l) => l.split(":"));
    const v1 = lines.find((l) => l[1] === "memory"), v2 = lines.find((l) => l[1] === "");
    const dir = v1 ? `/sys/fs/cgroup/memory${v1[2]}/escp-test-${process.pid}-${cgroups.length}` : `/sys/fs/cgroup${v2![2]}/escp-test-${process.pid}-${cgroups.length}`;
    fs.mkdirSync(dir);
    cgroups.push(dir);
    fs.writeFileSync(path.join(dir, v1 ? "memory.limit_in_bytes" : "memory.max"), String(bytes));
    return dir;
  };
  /** A script that runs escp inside `cgroup`: as the local command, and as ESCP_REMOTE for the other end. */
  const confined = (cgroup: string) => {
    const wrapper = path.join(tmpdir("bin"), "confined.sh");
    fs.writeFileSync(wrapper, `#!/bin/sh\necho $$ > ${cgroup}/cgroup.procs && exec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    return wrapper;
  };

  test("a -b whose buffers do not fit even once is refused in one line, on either end, nothing copied", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 1000, { seed: 81 });
    const wrapper = confined(memoryCgroup(400 * MiB));
    const cause = /takes 320MiB of buffers per stream, and this host has \d+MiB of memory available: use a smaller -b\n$/;
    const here = await run([wrapper, "-F", cfg, "-b", "64M", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(here.stderr).toMatch(new RegExp(`^escp: -b 64M ${cause.source}`));
    expect(here.code).toBe(1);
    const there = await runEscp(["-b", "64M", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: wrapper } });
    expect(there.stderr).toMatch(new RegExp(`^escp: ${SSH_HOST}: [^:]+: -b 64M ${cause.source}`));
    expect(there.code).toBe(1);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("streams whose buffers would not all fit: as many as fit, with a warning, and the file arrives whole", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 160 * MiB, { seed: 82 });
    const wrapper = confined(memoryCgroup(400 * MiB));
    const r = await runEscp(["-b", "16M", "-t", "8", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: wrapper } });
    expect(r.stderr).toMatch(/^escp: warning: [^:]+: 8 streams of -b 16M would take 640MiB of buffers, and this host has \d+MiB of memory available: using [1-3] streams\n$/);
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });
});

describe("the receiving disk", () => {
  test("disk full names the file and ENOSPC; files that fit are intact, no partial file stays", async () => {
    const src = tmpdir("src");
    const mnt = tmpdir("full");
    const m = await run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt]);
    expect(m.code).toBe(0);
    try {
      await makeFile(path.join(src, "small1"), MiB, { seed: 61 });
      await makeFile(path.join(src, "small2"), MiB, { seed: 62 });
      await makeFile(path.join(src, "huge"), 40 * MiB, { seed: 63 });
      const r = await runEscp(["-t", "1", path.join(src, "small1"), path.join(src, "small2"), path.join(src, "huge"), `${SSH_HOST}:${mnt}/`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`${mnt}/huge: .*No space left on device`));
      expect(await sameFile(path.join(src, "small1"), path.join(mnt, "small1"))).toBe(true);
      expect(await sameFile(path.join(src, "small2"), path.join(mnt, "small2"))).toBe(true);
      expect(fs.readdirSync(mnt).sort()).toEqual(["small1", "small2"]);
    } finally {
      await run(["umount", "-l", mnt]);
    }
  });

  test("a file the full disk refuses at its start is not sent on to its end", async () => {
    const src = tmpdir("src");
    const mnt = tmpdir("full");
    // Holes read as zeros: 2 GiB to send, which a 4 MiB disk refuses at once (its space is reserved first).
    const big = path.join(src, "big");
    fs.closeSync(fs.openSync(big, "w"));
    fs.truncateSync(big, 2 * 1024 * MiB);
    expect((await run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt])).code).toBe(0);
    try {
      const ways = [[big, `${SSH_HOST}:${mnt}/`], [`${SSH_HOST}:${big}`, `${mnt}/`]];
      for (const args of [...ways, ...ways.map((w) => ["--verify", ...w])]) {
        const r = await runEscp(["--json", ...args]);
        expect(r.stderr).toMatch(new RegExp(`${mnt}/big: .*No space left on device`));
        expect(r.code).toBe(1);
        const summary = JSON.parse(r.stdout.trim().split("\n").pop()!);
        expect(summary.failures).toBe(1);
        expect(summary.bytesNetwork).toBeLessThan(1024 * MiB); // of 2 GiB: stopped early (a busy machine delays the refusal)
        expect(fs.readdirSync(mnt)).toEqual([]);
      }
    } finally {
      await run(["umount", "-l", mnt]);
    }
  });

  test("--inplace on a full disk says the target it wrote into is left incomplete (push, pull; new and existing target)", async () => {
    const src = tmpdir("src");
    const mnt = tmpdir("full");
    await makeFile(path.join(src, "big"), 10 * MiB, { seed: 68 });
    expect((await run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt])).code).toBe(0);
    try {
      fs.writeFileSync(path.join(mnt, "old"), "old content\n");
      for (const [from, to] of [[path.join(src, "big"), `${SSH_HOST}:${mnt}/new`], [`${SSH_HOST}:${path.join(src, "big")}`, `${mnt}/old`]]) {
        const r = await runEscp(["--inplace", from, to]);
        expect(r.stderr).toBe(`escp: ${to.replace(/^[^:]*:/, "")}: No space left on device; written in place, it is left incomplete\n`);
        expect(r.code).toBe(1);
      }
      expect(fs.readdirSync(mnt).sort()).toEqual(["new", "old"]);
    } finally {
      await run(["umount", "-l", mnt]);
    }
  });

  test("--resume on a full disk keeps the partial file it can continue, not empty ones for the files it never reached (push, pull)", async () => {
    const src = tmpdir("src");
    const mnt = tmpdir("full");
    const names = ["f1", "f2", "f3", "f4"];
    for (const [i, n] of names.entries()) await makeFile(path.join(src, n), 3 * MiB, { seed: 70 + i });
    expect((await run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt])).code).toBe(0);
    try {
      for (const [from, to] of [[names.map((n) => path.join(src, n)), `${SSH_HOST}:${mnt}/`], [names.map((n) => `${SSH_HOST}:${path.join(src, n)}`), `${mnt}/`]] as const) {
        const r = await runEscp(["--resume", "-t", "1", ...from, to]);
        expect(r.code).toBe(1);
        expect(r.stderr).toContain("No space left on device");
        expect(await sameFile(path.join(src, "f1"), path.join(mnt, "f1"))).toBe(true);
        // f2 got the last MiB of space: that block is worth continuing from.
        const parts = fs.readdirSync(mnt).filter((n) => n.endsWith(".escp-part"));
        expect(parts).toEqual([".f2.escp-part"]);
        expect(size(path.join(mnt, ".f2.escp-part"))).toBeGreaterThanOrEqual(MiB);
        for (const n of fs.readdirSync(mnt)) fs.rmSync(path.join(mnt, n));
      }
    } finally {
      await run(["umount", "-l", mnt]);
    }
  });

  test("a destination directory made unwritable mid-transfer fails the file with the cause, and names the temporary file it cannot remove", async () => {
    // Root ignores permissions, but not the immutable attribute (ext4's chattr +i).
    const src = tmpdir("src"), dst = tmpdir("dst");
    const file = path.join(src, "f");
    await makeFile(file, 256 * MiB, { seed: 67 });
    const t = spawnEscp(["-t", "1", file, `${SSH_HOST}:${dst}/`]);
    await waitFor(() => size(path.join(dst, ".f.escp-part")) > 8 * MiB, 60_000, "data to arrive");
    expect((await run(["chattr", "+i", dst])).code).toBe(0);
    try {
      expect(await t.p.exited).toBe(1);
      // Nor can its temporary file go: the message names it.
      expect(await t.stderr).toMatch(new RegExp(`${dst}/f: .*Operation not permitted; its temporary file ${dst}/\\.f\\.escp-part is left behind \\(Operation not permitted\\)\n$`));
      expect(fs.existsSync(path.join(dst, "f"))).toBe(false);
    } finally {
      await run(["chattr", "-i", dst]);
    }
  });

  test("--verify reads the written file back before it takes the target name", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "v"), 5 * MiB + 3, { seed: 64 });
    const r = await runEscp(["--verify", path.join(src, "v"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "v"), path.join(dst, "v"))).toBe(true);
  });
});

describe("the control connection", () => {
  test("a remote escp that crashes on start is reported with its exit", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 10, { seed: 65 });
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: "/bin/false" } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/escp-test: .*(exited|status 1)/);
  });

  test("an ssh program (-S) that cannot be run is named with why, in one line", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 10, { seed: 67 });
    const notExecutable = path.join(src, "not-a-program");
    fs.writeFileSync(notExecutable, "", { mode: 0o644 });
    for (const [program, why] of [["/nonexistent/ssh", "No such file or directory"], [notExecutable, "Permission denied"]]) {
      const r = await runEscp(["-S", program, path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
      expect(r.stderr).toBe(`escp: ${program}: cannot run the ssh program: ${why} (-S names it)\n`);
      expect(r.code).toBe(1);
    }
  });

  test("a remote escp killed before it answers is not reported as an ssh failure", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), bin = tmpdir("bin");
    await makeFile(path.join(src, "f"), 10, { seed: 69 });
    const killed = path.join(bin, "killed.sh");
    fs.writeFileSync(killed, "#!/bin/bash\nkill -KILL $$\n", { mode: 0o755 }); // as a SIGKILLed escp: no word, ssh exits 255
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: killed } });
    expect(r.stderr).toBe(`escp: ${SSH_HOST}: the connection ended (ssh exited with status 255: the remote escp was killed, or the connection was lost) before the remote escp answered\n`);
    expect(r.code).toBe(1);
  });

  test("an ssh program that ends without a word is not blamed on the remote escp", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 10, { seed: 68 });
    const r = await runEscp(["-S", "/bin/false", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
    expect(r.stderr).toBe(`escp: ${SSH_HOST}: the connection ended (ssh exited with status 1) before the remote escp answered\n`);
    expect(r.code).toBe(1);
  });

  test("the ssh connection dropping mid-transfer fails the transfer", async () => {
    const t = await pushUnderWay(66);
    const { file, dst } = t;
    const ssh = descendants(t.p.pid).filter((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("ssh"));
    expect(ssh.length).toBe(1);
    const receivers = serverPids();
    process.kill(ssh[0], "SIGKILL");
    expect(await t.p.exited).toBe(1);
    expect(await t.stderr).toStartWith(`escp: ${GONE}\n`);
    await receiversExit(receivers, 10_000);
    expect(await intactOrAbsent(file, path.join(dst, "f"))).toBe(true);
  });
});
