// Tests of test/harness.ts itself, with the real sshd/ssh binaries. If these
// fail, every integration test's failure is suspect: look here first.
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  ESCP_BIN,
  REPO_ROOT,
  SSH_CONFIG,
  SSH_HOST,
  SSH_HOST_NOKEY,
  descendants,
  firstDifference,
  launchSshd,
  makeFile,
  makeSparseFile,
  portAccepts,
  pseudoRandom,
  run,
  sameFile,
  sha256File,
  ssh,
  startSshd,
  tmpdir,
  treeDiff,
} from "./harness";

setDefaultTimeout(60_000); // sshd start-up and ssh round trips on a loaded 2-core CI machine

describe("sshd", () => {
  test("starts, and ssh -F cfg escp-test echo ok prints ok", async () => {
    const s = await startSshd();
    expect(s.host).toBe(SSH_HOST);
    expect(SSH_CONFIG).toBe(s.configPath);
    expect(s.alive).toBe(true);
    expect(await portAccepts(s.port)).toBe(true);
    const r = await run(["ssh", "-F", s.configPath, SSH_HOST, "echo", "ok"], { timeoutMs: 30_000 });
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("ok\n");
    expect(r.code).toBe(0);
  });

  test("startSshd is idempotent within a process", async () => {
    const [a, b] = await Promise.all([startSshd(), startSshd()]);
    expect(a).toBe(b);
    expect(await startSshd()).toBe(a);
  });

  test("the session is a plain non-interactive one: no banner, stdin and exit status pass through", async () => {
    const r = await ssh(["cat; exit 7"], { input: "abc" });
    expect(r.stdout).toBe("abc");
    expect(r.code).toBe(7);
  });

  test("explicit address with -p and User also works (known_hosts has [127.0.0.1]:port)", async () => {
    const s = await startSshd();
    const r = await run(["ssh", "-F", s.configPath, "-p", String(s.port), `${s.user}@127.0.0.1`, "echo", "ok"], {
      timeoutMs: 30_000,
    });
    expect(r.stdout).toBe("ok\n");
    expect(r.code).toBe(0);
  });

  test("the nokey alias fails authentication", async () => {
    const s = await startSshd();
    const r = await run(["ssh", "-F", s.configPath, SSH_HOST_NOKEY, "echo", "ok"], { timeoutMs: 30_000 });
    expect(r.code).toBe(255);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("Permission denied");
  });

  test("stop() kills sshd: the port stops accepting", async () => {
    const s = await launchSshd(); // its own instance, so the shared one stays up
    const shared = await startSshd();
    expect(s.port).not.toBe(shared.port);
    expect(await portAccepts(s.port)).toBe(true);
    // An open session whose processes must go too.
    const pending = run(["ssh", "-F", s.configPath, SSH_HOST, "sleep", "300"], { timeoutMs: 60_000 });
    const isSleep = (pid: number) => {
      try {
        return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8") === "sleep\u0000300\u0000";
      } catch {
        return false;
      }
    };
    const deadline = Date.now() + 15_000;
    while (!descendants(s.pid).some(isSleep) && Date.now() < deadline) await Bun.sleep(50);
    const under = descendants(s.pid);
    expect(under.some(isSleep)).toBe(true);

    await s.stop();
    expect(s.alive).toBe(false);
    expect(await portAccepts(s.port)).toBe(false);
    for (const pid of [s.pid, ...under]) expect(fs.existsSync(`/proc/${pid}`) && !isZombie(pid)).toBe(false);
    expect((await pending).code).not.toBe(0);
    // The shared one is unaffected.
    expect(shared.alive).toBe(true);
    expect(await portAccepts(shared.port)).toBe(true);
  });
});

function isZombie(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

describe("files", () => {
  test("makeFile is deterministic, and the seed selects the content", async () => {
    const d = tmpdir("makefile");
    const size = 3 * 1024 * 1024 + 12345; // crosses chunk boundaries, odd tail
    await makeFile(path.join(d, "a"), size, { seed: 42 });
    await makeFile(path.join(d, "b"), size, { seed: 42 });
    await makeFile(path.join(d, "c"), size, { seed: 43 });
    expect(fs.statSync(path.join(d, "a")).size).toBe(size);
    expect(await sameFile(path.join(d, "a"), path.join(d, "b"))).toBe(true);
    expect(await sameFile(path.join(d, "a"), path.join(d, "c"))).toBe(false);
    expect(await sha256File(path.join(d, "a"))).toBe(await sha256File(path.join(d, "b")));
    // Pinned: the content must not change between harness versions, or
    // tests comparing against stored digests would silently change meaning.
    await makeFile(path.join(d, "small"), 64, { seed: 1 });
    expect(await sha256File(path.join(d, "small"))).toBe(
      new Bun.CryptoHasher("sha256").update(pseudoRandom(64, 1)).digest("hex"),
    );
    // A prefix of a longer file is the shorter file.
    await makeFile(path.join(d, "short"), 1000, { seed: 42 });
    expect(await firstDifference(path.join(d, "a"), path.join(d, "short"))).toBe(1000);
    // Not all zeros, not trivially repetitive.
    const head = fs.readFileSync(path.join(d, "small"));
    expect(new Set(head).size).toBeGreaterThan(32);
  });

  test("pseudoRandom at an offset matches the file's bytes there", async () => {
    const d = tmpdir("offset");
    await makeFile(path.join(d, "f"), 5000, { seed: "s" });
    const all = fs.readFileSync(path.join(d, "f"));
    expect(pseudoRandom(777, "s", 1234).equals(all.subarray(1234, 1234 + 777))).toBe(true);
  });

  test("sha256File matches sha256sum", async () => {
    const d = tmpdir("sha");
    const f = await makeFile(path.join(d, "f"), 2 * 1024 * 1024 + 1, { seed: 7 });
    const r = await run(["sha256sum", f]);
    expect(r.stdout.split(" ")[0]).toBe(await sha256File(f));
  });

  test("firstDifference finds a single flipped byte", async () => {
    const d = tmpdir("diff");
    const a = await makeFile(path.join(d, "a"), 2 * 1024 * 1024 + 10, { seed: 9 });
    const b = path.join(d, "b");
    fs.copyFileSync(a, b);
    expect(await firstDifference(a, b)).toBeNull();
    const fd = fs.openSync(b, "r+");
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, 1_500_000);
    byte[0] ^= 1;
    fs.writeSync(fd, byte, 0, 1, 1_500_000);
    fs.closeSync(fd);
    expect(await firstDifference(a, b)).toBe(1_500_000);
    expect(await sameFile(a, b)).toBe(false);
  });

  test("makeSparseFile makes holes and the same bytes as makeFile in its extents", async () => {
    const d = tmpdir("sparse");
    const size = 5 * 1024 ** 3 + 3; // > 4 GiB
    const f = await makeSparseFile(path.join(d, "s"), size, { seed: 5, extents: [[4096, 8192], [size - 100, 100]] });
    const st = fs.statSync(f);
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThan(1024 * 1024);
    const fd = fs.openSync(f, "r");
    const got = Buffer.alloc(100);
    fs.readSync(fd, got, 0, 100, size - 100);
    fs.closeSync(fd);
    expect(got.equals(pseudoRandom(100, 5, size - 100))).toBe(true);
  });

  test("sameFile compares sparse files beyond 4 GiB", async () => {
    const d = tmpdir("big");
    const size = 4 * 1024 ** 3 + 4096;
    const a = await makeSparseFile(path.join(d, "a"), size, { extents: [[size - 4096, 4096]] });
    const b = await makeSparseFile(path.join(d, "b"), size, { extents: [[size - 4096, 4096]] });
    const c = await makeSparseFile(path.join(d, "c"), size, { extents: [[size - 4096, 4095]] });
    expect(await sameFile(a, b)).toBe(true);
    expect(await firstDifference(a, c)).toBe(size - 1);
    expect(await firstDifference(a, path.join(d, "a"))).toBeNull();
  });

  test("holes compare equal to written zeros; sha256File of a sparse file matches sha256sum", async () => {
    const d = tmpdir("holes");
    const size = 20 * 1024 * 1024 + 7;
    const sparse = await makeSparseFile(path.join(d, "sparse"), size, { seed: 3, extents: [[5_000_000, 3_000_000]] });
    const dense = path.join(d, "dense");
    fs.writeFileSync(dense, fs.readFileSync(sparse)); // same bytes, zeros written out
    expect(fs.statSync(dense).blocks).toBeGreaterThan(fs.statSync(sparse).blocks);
    expect(await sameFile(sparse, dense)).toBe(true);
    expect(await sameFile(dense, sparse)).toBe(true);
    const r = await run(["sha256sum", sparse]);
    expect(await sha256File(sparse)).toBe(r.stdout.split(" ")[0]!);
    expect(await sha256File(dense)).toBe(r.stdout.split(" ")[0]!);
    // A non-zero byte inside the other file's hole is found.
    const fd = fs.openSync(dense, "r+");
    fs.writeSync(fd, Buffer.from([1]), 0, 1, 12_345_678);
    fs.closeSync(fd);
    expect(await firstDifference(sparse, dense)).toBe(12_345_678);
    expect(await firstDifference(dense, sparse)).toBe(12_345_678);
  });

  test("treeDiff reports missing, extra and differing entries", async () => {
    const a = tmpdir("ta");
    const b = tmpdir("tb");
    for (const root of [a, b]) {
      await makeFile(path.join(root, "x/y/z"), 100, { seed: 1 });
      fs.symlinkSync("x/y/z", path.join(root, "link"));
    }
    expect(await treeDiff(a, b)).toEqual([]);
    await makeFile(path.join(b, "x/y/z"), 100, { seed: 2 });
    await makeFile(path.join(b, "extra"), 1);
    await makeFile(path.join(a, "only-a"), 1);
    const diffs = await treeDiff(a, b);
    expect(diffs).toContain(`extra: extra in ${b}`);
    expect(diffs).toContain(`only-a: missing in ${b}`);
    expect(diffs.some((l) => l.startsWith("x/y/z: content differs"))).toBe(true);
  });

  test("tmpdir gives fresh, distinct directories", () => {
    const a = tmpdir("same");
    const b = tmpdir("same");
    expect(a).not.toBe(b);
    expect(fs.readdirSync(a)).toEqual([]);
  });
});

describe("runEscp", () => {
  test("runs <repo>/dist/escp with -F first and ESCP_REMOTE set", async () => {
    expect(ESCP_BIN).toBe(path.join(REPO_ROOT, "dist", "escp"));
    // Substitute a fake binary that echoes what it got, via ESCP_BIN in a child bun.
    const d = tmpdir("fake");
    const fake = path.join(d, "escp");
    fs.writeFileSync(fake, '#!/bin/sh\nprintf "%s\\n" "$@"\necho "REMOTE=$ESCP_REMOTE"\ncat\n', { mode: 0o755 });
    const s = await startSshd();
    const script = path.join(d, "probe.ts");
    fs.writeFileSync(
      script,
      `import { startSshd, runEscp } from ${JSON.stringify(path.join(REPO_ROOT, "test", "harness.ts"))};\n` +
        `const before = await runEscp(["x"]);\n` +
        `await startSshd();\n` +
        `const after = await runEscp(["a b", "escp-test:dst"], { input: "IN" });\n` +
        `console.log(JSON.stringify({ before, after }));\n`,
    );
    const r = await run([process.execPath, script], { env: { ESCP_BIN: fake, ESCP_TEST_TMP: d }, timeoutMs: 60_000 });
    expect(r.stderr).toBe("");
    expect(r.timedOut).toBe(false); // the probe's own sshd must not keep it alive
    const { before, after } = JSON.parse(r.stdout);
    expect(before.stdout).toBe(`x\nREMOTE=${fake}\n`);
    expect(after.stdout).toMatch(new RegExp(`^-F\\n${d}/escp-test-\\d+-\\w+/sshd-\\w+/ssh_config\\na b\\nescp-test:dst\\nREMOTE=${fake}\\nIN$`));
    expect(after.code).toBe(0);
    expect(s.alive).toBe(true);
  }, 90_000);

  test("a missing binary is a clear error", async () => {
    await expect(run(["/nonexistent/escp"])).rejects.toThrow(/not found/);
  });

  test("timeoutMs kills the process tree", async () => {
    const t0 = Date.now();
    const r = await run(["sh", "-c", "sleep 30 & sleep 30; wait"], { timeoutMs: 500 });
    expect(r.timedOut).toBe(true);
    expect(r.signal).toBe("SIGKILL");
    expect(Date.now() - t0).toBeLessThan(10_000);
  });
});
