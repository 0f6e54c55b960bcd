/**
 * Data streams through ssh (issue 9, item 4): --tunnel, and the automatic
 * fallback when the data port cannot be reached. "Cannot be reached" is made
 * with ESCP_DATA_VIA, which the client uses instead of the server's address
 * for its direct connections: a port where nothing listens (refused at once)
 * or a listener that accepts and never answers (what a firewall that drops
 * packets looks like to the connect timeout). The tunnel itself forwards to the
 * server's real address from the remote side, so it is not affected.
 */
import { describe, test, expect, beforeAll, setDefaultTimeout } from "bun:test";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { hostname } from "node:os";
import { startSshd, runEscp, spawnEscp, tmpdir, makeFile, sameFile, freePort, SSH_HOST } from "./harness.ts";

setDefaultTimeout(120_000);
const MiB = 1 << 20;

beforeAll(async () => {
  await startSshd();
});

const FALLBACK = /^escp: data port \d+ on escp-test unreachable \((.*)\); falling back to --tunnel \(slower; give --tunnel to skip the attempt\)\n$/;

/** A port that accepts and stays silent, like a path that swallows packets; `held` are its connections. */
async function silentListener(): Promise<{ port: number; held: net.Socket[]; close(): void }> {
  const held: net.Socket[] = [];
  const silent = net.createServer((s) => void held.push(s.on("error", () => {})));
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  return {
    port: (silent.address() as net.AddressInfo).port,
    held,
    close: () => {
      for (const s of held) s.destroy();
      silent.close();
    },
  };
}

describe("--tunnel", () => {
  test("a push through the tunnel is byte-identical and needs no data port", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 20 * MiB + 12345, { seed: 1 });
    await makeFile(path.join(src, "g"), 7, { seed: 2 });
    // The direct address is dead: only the tunnel can carry the streams.
    const dead = await freePort();
    const r = await runEscp(["--tunnel", "-t", "3", path.join(src, "f"), path.join(src, "g"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${dead}` },
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(await sameFile(path.join(src, "g"), path.join(dst, "g"))).toBe(true);
  });

  test("a pull through the tunnel is byte-identical", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 9 * MiB + 1, { seed: 3 });
    const r = await runEscp(["--tunnel", `${SSH_HOST}:${src}/f`, `${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });
});

describe("every data port taken", () => {
  test("--tunnel and a copy on this host listen on a port the kernel picks; a direct push names the taken range", async () => {
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    const port = (taken.address() as net.AddressInfo).port;
    try {
      const src = tmpdir("src"), dst = tmpdir("dst");
      await makeFile(path.join(src, "f"), 3 * MiB + 5, { seed: 8 });
      const range = `${port}-${port}`;
      for (const [args, to] of [[["--tunnel"], `${SSH_HOST}:${dst}/t`], [[], `${dst}/local`]] as const) {
        const r = await runEscp([...args, "--port", range, path.join(src, "f"), to]);
        expect([r.code, r.stderr]).toEqual([0, ""]);
      }
      expect(await sameFile(path.join(src, "f"), path.join(dst, "t"))).toBe(true);
      expect(await sameFile(path.join(src, "f"), path.join(dst, "local"))).toBe(true);
      const direct = await runEscp(["--port", range, path.join(src, "f"), `${SSH_HOST}:${dst}/d`]);
      expect(direct.stderr).toBe(`escp: escp-test: cannot listen on ${hostname()} ports ${range}: every port of ${range} on 127.0.0.1 is taken (choose another range with --port first-last)\n`);
      expect(direct.code).toBe(1);
      expect(fs.existsSync(path.join(dst, "d"))).toBe(false);
    } finally {
      taken.close();
    }
  });
});

describe("fallback", () => {
  test("an sshd that refuses port forwarding (a key with no-port-forwarding) fails --tunnel saying so", async () => {
    const sshd = await startSshd();
    const dir = tmpdir("key"), key = path.join(dir, "id");
    expect(Bun.spawnSync(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key]).exitCode).toBe(0);
    const keys = path.join(sshd.tmp, "authorized_keys");
    const before = fs.readFileSync(keys, "utf8");
    fs.writeFileSync(keys, `${before}no-port-forwarding ${fs.readFileSync(`${key}.pub`, "utf8")}`);
    try {
      const src = tmpdir("src"), dst = tmpdir("dst");
      await makeFile(path.join(src, "f"), 1000, { seed: 6 });
      // The harness config says LogLevel ERROR; ssh tells a refused channel at INFO, its default.
      const r = await runEscp(["--tunnel", "-i", key, "-o", "LogLevel=INFO", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
      expect(r.stderr).toBe(`escp: ${SSH_HOST}'s sshd refuses port forwarding, which --tunnel needs (AllowTcpForwarding, or a key's no-port-forwarding): open the data port range instead\n`);
      expect(r.code).toBe(1);
    } finally {
      fs.writeFileSync(keys, before);
    }
  });

  test("a refused data port falls back to the tunnel and says so", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 10 * MiB + 3, { seed: 4 });
    const dead = await freePort();
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_DATA_VIA: `127.0.0.1:${dead}` } });
    expect(r.stderr).toMatch(FALLBACK);
    expect(r.stderr.match(FALLBACK)![1]).toMatch(new RegExp(`port ${dead}.*refused`, "i"));
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test("Ctrl-C while a data stream's handshake hangs stops escp at once (exit 130), not when the connect gives up", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 1000, { seed: 7 });
    const { port, held, close } = await silentListener();
    try {
      const t = spawnEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { ESCP_DATA_VIA: `127.0.0.1:${port}` });
      for (let i = 0; i < 200 && !held.length; i++) await Bun.sleep(25);
      expect(held.length).toBe(1); // stream 0 connected, waiting for a HELLO that never comes (3 s)
      const t0 = performance.now();
      t.p.kill("SIGINT");
      await t.p.exited;
      expect(performance.now() - t0).toBeLessThan(1500);
      expect(t.p.signalCode ?? String(t.p.exitCode)).toBe("SIGINT"); // ends by SIGINT, as a shell's 130
      expect(await t.stderr).toBe("escp: interrupted\n");
      expect(fs.readdirSync(dst)).toEqual([]);
    } finally {
      close();
    }
  });

  test("a data port that never answers falls back after the short connect timeout", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 4 * MiB, { seed: 5 });
    const { port, held, close } = await silentListener();
    try {
      const t0 = performance.now();
      const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_DATA_VIA: `127.0.0.1:${port}` } });
      const seconds = (performance.now() - t0) / 1000;
      expect(r.stderr).toMatch(FALLBACK);
      expect(r.stderr.match(FALLBACK)![1]).toMatch(/tim/i);
      expect(r.code).toBe(0);
      expect(held.length).toBe(1); // only stream 0 tried the direct way
      expect(seconds).toBeGreaterThan(3);
      expect(seconds).toBeLessThan(15);
      expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    } finally {
      close();
    }
  });

  test("-q keeps the fallback quiet", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 100, { seed: 6 });
    const r = await runEscp(["-q", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_DATA_VIA: `127.0.0.1:${await freePort()}` } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readFileSync(path.join(dst, "f")).length).toBe(100);
  });
});
