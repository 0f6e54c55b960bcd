/**
 * The receiver's lifecycle (issue 9, item 5): the remote `escp --server`
 * never outlives its session. It exits when the ssh session ends, when the
 * connecting escp stops answering behind a live ssh connection (control
 * channel keepalive, --keepalive), and after a fatal error; its port is
 * released; concurrent transfers to one host do not collide.
 *
 * Remote processes are found under this test's own sshd (other test files
 * run their own), by the `--server` in their command line.
 */
import { describe, test, expect, beforeAll, setDefaultTimeout } from "bun:test";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { startSshd, runEscp, spawnEscp, tmpdir, makeFile, makeSparseFile, sameFile, portAccepts, descendants, ESCP_BIN, SSH_HOST, type Sshd } from "./harness.ts";
import { startProxy } from "./proxy.ts";

setDefaultTimeout(120_000);
const MiB = 1 << 20;
let sshd: Sshd;

beforeAll(async () => {
  sshd = await startSshd();
});

function cmdline(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** The remote ends (escp --server) running under our sshd. */
function servers(): number[] {
  return descendants(sshd.pid).filter((p) => cmdline(p).includes("--server") && alive(p));
}

/** Local TCP ports of pid's sockets (listening or connected). */
function portsOf(pid: number): Set<number> {
  const inodes = new Set<string>();
  try {
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    }
  } catch {}
  const ports = new Set<number>();
  for (const table of ["tcp", "tcp6"]) {
    let text = "";
    try {
      text = fs.readFileSync(`/proc/${pid}/net/${table}`, "utf8");
    } catch {}
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && inodes.has(f[9])) ports.add(parseInt(f[1].split(":")[1], 16));
    }
  }
  return ports;
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<number> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await Bun.sleep(50);
  }
  return (performance.now() - t0) / 1000;
}

function size(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return -1;
  }
}

/** Waits for a running escp to reach a point; if it does not, fails with what that escp said. */
async function waitForEscp(t: { p: { kill(): void }; stderr: Promise<string> }, cond: () => boolean, ms: number, what: string) {
  try {
    await waitFor(cond, ms, what);
  } catch (e) {
    t.p.kill();
    throw new Error(`${(e as Error).message}; escp said: ${await t.stderr}`);
  }
}

/**
 * `n` consecutive ports that are free now, below the ephemeral range (where
 * outgoing connections take their local ports and could make one busy).
 */
async function freePorts(n: number): Promise<number> {
  for (;;) {
    const first = 20000 + Math.floor(Math.random() * 12000);
    const servers: net.Server[] = [];
    let ok = true;
    for (let p = first; p < first + n && ok; p++) {
      const srv = net.createServer();
      ok = await new Promise<boolean>((r) => {
        srv.once("error", () => r(false));
        srv.listen(p, "127.0.0.1", () => r(true));
      });
      if (ok) servers.push(srv);
    }
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    if (ok) return first;
  }
}

/** A push that is still running a few seconds from now: -l keeps it at ~8 MB/s. */
async function slowPush(extra: string[] = []) {
  const src = tmpdir("src"), dst = tmpdir("dst");
  await makeFile(path.join(src, "f"), 96 * MiB, { seed: 7 });
  const t = spawnEscp(["-l", "64000", ...extra, path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
  await waitForEscp(t, () => size(path.join(dst, ".f.escp-part")) > 4 * MiB, 60_000, "data to arrive");
  return { ...t, src, dst };
}

describe("the remote end exits", () => {
  test("when the local escp is killed: within seconds, port released, no temporary file", async () => {
    const port = await freePorts(2);
    const { p, dst } = await slowPush(["--port", `${port}-${port}`]);
    const [server] = servers();
    expect(server).toBeDefined();
    expect(portsOf(server).has(port)).toBe(true);
    const ssh = descendants(p.pid).filter((c) => cmdline(c)[0] === "ssh");
    p.kill("SIGKILL");
    // By pid: once sshd's session process goes, the server is init's child, no longer ours to list.
    const took = await waitFor(() => !alive(server), 10_000, "the remote escp to exit");
    expect(took).toBeLessThan(5);
    await waitFor(() => ssh.every((c) => !alive(c)), 10_000, "the orphaned ssh to exit");
    expect(await portAccepts(port)).toBe(false);
    expect(fs.readdirSync(dst)).toEqual([]);
    // The port is free for the next transfer.
    const src2 = tmpdir("src");
    await makeFile(path.join(src2, "g"), MiB, { seed: 8 });
    const r = await runEscp(["--port", `${port}-${port}`, path.join(src2, "g"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });

  test("when the local escp stops answering but ssh stays up (keepalive timeout)", async () => {
    const { p, stderr, dst } = await slowPush(["--keepalive", "2"]);
    const [server, ...others] = servers();
    expect(server).toBeDefined();
    expect(others).toEqual([]);
    p.kill("SIGSTOP"); // hung: ssh and every TCP connection stay open, only the pings stop
    try {
      const took = await waitFor(() => !alive(server), 20_000, "the remote escp to give up");
      expect(took).toBeGreaterThan(3.5); // 3 intervals of 2 s, less up to one since the last ping
      expect(took).toBeLessThan(12);
      expect(fs.readdirSync(dst)).toEqual([]);
    } finally {
      p.kill("SIGCONT");
    }
    expect(await p.exited).toBe(1);
    expect(await stderr).toMatch(/no word from the connecting escp for 6 s/);
  });

  test("when the local escp is killed before the data streams connect: at once, not after the accept timeout", async () => {
    // The streams go to a listener that takes them and says nothing: the server waits in accept.
    const holder = net.createServer(() => {});
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", r));
    const held = new Promise<void>((r) => holder.once("connection", () => r()));
    try {
      const src = tmpdir("src"), dst = tmpdir("dst");
      await makeFile(path.join(src, "f"), MiB, { seed: 10 });
      const t = spawnEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { ESCP_DATA_VIA: `127.0.0.1:${(holder.address() as net.AddressInfo).port}` });
      await held;
      const [server] = servers();
      expect(server).toBeDefined();
      t.p.kill("SIGKILL");
      const took = await waitFor(() => !alive(server), 20_000, "the remote escp to exit");
      expect(took).toBeLessThan(5); // the accept timeout is 30 s
      expect(fs.readdirSync(dst)).toEqual([]);
    } finally {
      holder.close();
    }
  });

  test("when the local escp exits after a fatal error on the remote", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 8 * MiB, { seed: 9 });
    const port = await freePorts(2);
    // One bit flipped in flight: the receiver's authentication check fails.
    const proxy = await startProxy(port, ({ conn, index, record }) => {
      if (conn === 1 && index === 2) {
        const r = Buffer.from(record);
        r[40] ^= 1;
        return [r];
      }
      return [record];
    });
    const r = await runEscp(["--port", `${port}-${port}`, path.join(src, "f"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${proxy.port}` },
    });
    proxy.close();
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/authentication|integrity/i);
    const took = await waitFor(() => servers().length === 0, 10_000, "the remote escp to exit");
    expect(took).toBeLessThan(3);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("when the session fails before any stream connects", async () => {
    const src = tmpdir("src");
    await makeFile(path.join(src, "f"), 10, { seed: 10 });
    const r = await runEscp([path.join(src, "f"), path.join(src, "f"), `${SSH_HOST}:/nonexistent/dir/`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^escp: escp-test: .*nonexistent/);
    await waitFor(() => servers().length === 0, 5_000, "the remote escp to exit");
  });
});

describe("the local end gives up", () => {
  // --verify too: the receiver (this end) reads the file back, the remote's thread stays free to ping.
  test.each([["a pull", []], ["a --verify pull", ["--verify"]]])("on %s whose remote escp stops answering (SIGSTOP): after three keepalive intervals, nothing left", async (_, extra) => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 96 * MiB, { seed: 11 });
    const t = spawnEscp([...(extra as string[]), "--keepalive", "2", "-l", "64000", `${SSH_HOST}:${path.join(src, "f")}`, `${dst}/`]);
    await waitForEscp(t, () => size(path.join(dst, ".f.escp-part")) > 4 * MiB, 60_000, "data to arrive");
    const [server] = servers();
    expect(server).toBeDefined();
    process.kill(server, "SIGSTOP"); // its kernel still answers on every connection: only the pings stop
    try {
      const t0 = performance.now();
      expect(await t.p.exited).toBe(1);
      const took = (performance.now() - t0) / 1000;
      expect(took).toBeGreaterThan(3.5); // 3 intervals of 2 s, less up to one since the last ping
      expect(took).toBeLessThan(12);
      expect(await t.stderr).toBe(`escp: ${SSH_HOST}: no word from the remote escp for 6 s (stopped, or its host hung?): giving up\nescp: ${dst}/f: not copied\n`);
      expect(fs.readdirSync(dst)).toEqual([]);
    } finally {
      process.kill(server, "SIGCONT");
    }
    await waitFor(() => !alive(server), 10_000, "the continued remote escp to exit");
  });
});

describe("the connection ends after the last file", () => {
  // A remote escp whose connection dies right before its final report: every file is in
  // place and verified, yet what only that report carries is lost, so the exit is 1.
  test("before the remote's final report: exit 1 saying every file was verified (push, pull), files whole", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), bin = tmpdir("bin");
    await makeFile(path.join(src, "a"), 3 * MiB + 5, { seed: 31 });
    await makeFile(path.join(src, "b"), 10, { seed: 32 });
    const cut = path.join(bin, "cut-report.ts");
    fs.writeFileSync(cut, `
const child = Bun.spawn([${JSON.stringify(ESCP_BIN)}, ...process.argv.slice(2)], { stdin: "inherit", stdout: "pipe", stderr: "inherit" });
let buf = Buffer.alloc(0);
for await (const chunk of child.stdout) {
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
    const n = 4 + buf.readUInt32BE(0);
    if (JSON.parse(buf.subarray(4, n).toString()).type === "report") { child.kill("SIGKILL"); process.exit(255); }
    process.stdout.write(buf.subarray(0, n));
    buf = buf.subarray(n);
  }
}
process.exit(await child.exited);
`);
    const remote = path.join(bin, "remote.sh");
    fs.writeFileSync(remote, `#!/bin/sh\nexec '${process.execPath}' '${cut}' "$@"\n`, { mode: 0o755 });
    fs.mkdirSync(path.join(dst, "pull"));
    for (const [from, to] of [[[path.join(src, "a"), path.join(src, "b")], `${SSH_HOST}:${dst}/`], [[`${SSH_HOST}:${path.join(src, "a")}`, `${SSH_HOST}:${path.join(src, "b")}`], `${dst}/pull/`]] as const) {
      const r = await runEscp([...from, to], { env: { ESCP_REMOTE: remote } });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`escp: ${SSH_HOST}: the connection ended (ssh exited with status 255: the remote escp was killed, or the connection was lost) after every file was copied and verified, before the remote escp's final report\n`);
    }
    for (const d of [dst, path.join(dst, "pull")]) for (const f of ["a", "b"]) expect(await sameFile(path.join(src, f), path.join(d, f))).toBe(true);
    expect(fs.readdirSync(dst).sort()).toEqual(["a", "b", "pull"]);
  });
});

describe("the remote end, continued after the local one gave up on it", () => {
  test("removes its temporary file and exits (its next ping meets a closed pipe)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 256 * MiB, { seed: 13 });
    const t = spawnEscp(["--keepalive", "1", "-l", "200000", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    await waitForEscp(t, () => size(path.join(dst, ".f.escp-part")) > 0, 60_000, "data to arrive");
    const [server] = servers();
    expect(server).toBeDefined();
    process.kill(server, "SIGSTOP");
    try {
      expect(await t.p.exited).toBe(1);
      expect(await t.stderr).toContain("no word from the remote escp");
    } finally {
      process.kill(server, "SIGCONT");
    }
    await waitFor(() => !alive(server), 10_000, "the continued remote escp to exit");
    expect(fs.readdirSync(dst)).toEqual([]);
  });
});

describe("long whole-file work is not silence", () => {
  // --resume hashes what each end holds of an 8 GiB file (holes: no disk, still
  // seconds of hashing) on its main thread; the other end, hearing no ping for
  // three 1 s intervals, gave up on a healthy session.
  test.each([["pull"], ["push"]])("a --resume %s of an 8 GiB file completes with --keepalive 1", async (direction) => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const size = 8 * 1024 * MiB;
    const file = path.join(src, "big");
    await makeSparseFile(file, size, { seed: 12, extents: [[size - MiB, MiB]] });
    const part = path.join(dst, ".big.escp-part");
    fs.writeFileSync(part, "");
    fs.truncateSync(part, size - MiB); // what a killed run left: holes too
    const [from, to] = direction === "pull" ? [`${SSH_HOST}:${file}`, `${dst}/`] : [file, `${SSH_HOST}:${dst}/`];
    const r = await runEscp(["--keepalive", "1", "--resume", from, to], { timeoutMs: 120_000 });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readdirSync(dst)).toEqual(["big"]);
    expect(await sameFile(file, path.join(dst, "big"))).toBe(true);
  }, 150_000);
});

describe("ports", () => {
  test("two transfers to one host at the same time take different ports and both succeed", async () => {
    const port = await freePorts(2);
    const range = `${port}-${port + 1}`;
    const srcA = tmpdir("src"), srcB = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(srcA, "a"), 8 * MiB, { seed: 11 });
    await makeFile(path.join(srcB, "b"), 32 * MiB, { seed: 12 });
    // A's receiver must still be listening when B's starts (a receiver closes its
    // listener once its streams are in, and then the port may serve the next one):
    // A's direct connection goes to a listener that never answers, and A is
    // stopped there, so its receiver waits on its port for the streams.
    const held: net.Socket[] = [];
    const silent = net.createServer((c) => void held.push(c.on("error", () => {})));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const a = spawnEscp(["--port", range, path.join(srcA, "a"), `${SSH_HOST}:${dst}/`], {
      ESCP_DATA_VIA: `127.0.0.1:${(silent.address() as net.AddressInfo).port}`,
    });
    try {
      await waitForEscp(a, () => held.length > 0, 30_000, "A to try its data port");
      a.p.kill("SIGSTOP");
      const [serverA] = servers();
      expect(portsOf(serverA).has(port)).toBe(true);
      const b = spawnEscp(["-l", "64000", "--port", range, path.join(srcB, "b"), `${SSH_HOST}:${dst}/`]);
      await waitForEscp(b, () => size(path.join(dst, ".b.escp-part")) > 0, 30_000, "B to start");
      const serverB = servers().find((s) => s !== serverA)!;
      expect(portsOf(serverB).has(port + 1)).toBe(true);
      a.p.kill("SIGCONT"); // A times out on the silent port and goes through the tunnel
      expect([await a.p.exited, await b.p.exited]).toEqual([0, 0]);
      expect(await a.stderr).toMatch(/falling back to --tunnel/);
      expect(await b.stderr).toBe("");
    } finally {
      a.p.kill("SIGCONT");
      for (const c of held) c.destroy();
      silent.close();
    }
    expect(await sameFile(path.join(srcA, "a"), path.join(dst, "a"))).toBe(true);
    expect(await sameFile(path.join(srcB, "b"), path.join(dst, "b"))).toBe(true);
  });

  test("a busy port is skipped; a range with no free port is a clear error", async () => {
    const port = await freePorts(2);
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(port, "127.0.0.1", r));
    try {
      const src = tmpdir("src"), dst = tmpdir("dst");
      await makeFile(path.join(src, "f"), MiB, { seed: 13 });
      const ok = await runEscp(["--port", `${port}-${port + 1}`, path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
      expect(ok.stderr).toBe("");
      expect(ok.code).toBe(0);
      const full = await runEscp(["--port", `${port}-${port}`, path.join(src, "f"), `${SSH_HOST}:${dst}/g`]);
      expect(full.code).toBe(1);
      expect(full.stderr).toMatch(new RegExp(`cannot listen on .* ports ${port}-${port}: .*--port`));
      await waitFor(() => servers().length === 0, 5_000, "the remote escp to exit");
    } finally {
      busy.close();
    }
  });
});
