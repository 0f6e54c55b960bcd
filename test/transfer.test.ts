/**
 * The foundation (issue 3): files pushed to the test sshd by the compiled
 * dist/escp, over encrypted multi-stream TCP, arrive verified and only then
 * under their names.
 */
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import fs from "node:fs";
import net from "node:net";
import { spawn } from "node:child_process";
import path from "node:path";
import { startSshd, run, runEscp, asNobody, tmpdir, makeFile, makeSparseFile, sameFile, sha256File, freePort, SSH_HOST, ESCP_BIN, GCM_NAME, gcmBackendsHere } from "./harness.ts";
import { startProxy } from "./proxy.ts";

const BLOCK = 1 << 20;

beforeAll(async () => {
  await startSshd();
});

/** Runs `fn` with a tmpfs (mount options `opts`) on `dir`, unmounted after. */
async function withTmpfs(dir: string, opts: string, fn: () => Promise<void>): Promise<void> {
  const m = await run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir]);
  expect(m.code).toBe(0);
  try {
    await fn();
  } finally {
    await run(["umount", "-l", dir]);
  }
}

function listNames(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

describe("push", () => {
  test("one file arrives byte for byte under its own name", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "one.bin"), 3 * BLOCK + 123, { seed: 1 });
    const r = await runEscp([path.join(src, "one.bin"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "one.bin"), path.join(dst, "one.bin"))).toBe(true);
    expect(listNames(dst)).toEqual(["one.bin"]);
  });

  test("a single file to a new name takes that name", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "a"), 5000, { seed: 2 });
    const r = await runEscp([path.join(src, "a"), `${SSH_HOST}:${dst}/renamed`]);
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "a"), path.join(dst, "renamed"))).toBe(true);
  });

  test("several files go into a directory", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const names = ["a.txt", "b.bin", "c with space"];
    for (const [i, n] of names.entries()) await makeFile(path.join(src, n), 1000 * (i + 1) + BLOCK * i, { seed: 10 + i });
    const r = await runEscp([...names.map((n) => path.join(src, n)), `${SSH_HOST}:${dst}`]);
    expect(r.code).toBe(0);
    expect(listNames(dst)).toEqual(names.sort());
    for (const n of names) expect(await sameFile(path.join(src, n), path.join(dst, n))).toBe(true);
  });

  test("edge sizes: 0, 1, block-1, block, block+1 bytes", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const sizes = [0, 1, 4095, 4096, 4097, BLOCK - 1, BLOCK, BLOCK + 1];
    for (const s of sizes) await makeFile(path.join(src, `f${s}`), s, { seed: s });
    const r = await runEscp([...sizes.map((s) => path.join(src, `f${s}`)), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (const s of sizes) {
      expect(fs.statSync(path.join(dst, `f${s}`)).size).toBe(s);
      expect(await sameFile(path.join(src, `f${s}`), path.join(dst, `f${s}`))).toBe(true);
    }
  });

  test("--nodirect and -t 1 give the same bytes", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "x"), 5 * BLOCK + 7, { seed: 5 });
    const r = await runEscp(["--nodirect", "-t", "1", path.join(src, "x"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "x"), path.join(dst, "x"))).toBe(true);
  });

  test("a sparse file just over 4 GiB keeps offsets past 2^32 intact", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const size = 4 * 1024 ** 3 + 3 * BLOCK + 17;
    // Data around the 2^32 boundary and at the very end, holes elsewhere.
    await makeSparseFile(path.join(src, "big"), size, { seed: 42, extents: [[0, BLOCK], [2 ** 32 - 4096, 2 * BLOCK], [size - 100, 100]] });
    const r = await runEscp(["-C", path.join(src, "big"), `${SSH_HOST}:${dst}/`], { timeoutMs: 300_000 });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.statSync(path.join(dst, "big")).size).toBe(size);
    expect(await sameFile(path.join(src, "big"), path.join(dst, "big"))).toBe(true);
  }, 300_000);

  test("--sparse: holes never travel and stay holes at the destination", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const size = 2 * 1024 ** 3;
    await makeSparseFile(path.join(src, "s"), size, { seed: 43, extents: [[10 * BLOCK, 2 * BLOCK], [size - 5000, 5000]] });
    const r = await runEscp(["--sparse", "--json", path.join(src, "s"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(summary.bytesNetwork).toBeLessThan(4 * BLOCK);
    const st = fs.statSync(path.join(dst, "s"));
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThan(8 * BLOCK);
    expect(await sameFile(path.join(src, "s"), path.join(dst, "s"))).toBe(true);
  });

  test("--sparse --verify: the read-back skips the holes the sender skipped (push and pull)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const size = 64 * BLOCK + 123;
    await makeSparseFile(path.join(src, "s"), size, { seed: 45, extents: [[3 * BLOCK + 10, BLOCK], [size - 5000, 5000]] });
    for (const [from, to] of [[path.join(src, "s"), `${SSH_HOST}:${dst}/pushed`], [`${SSH_HOST}:${path.join(src, "s")}`, `${dst}/pulled`]]) {
      const r = await runEscp(["--sparse", "--verify", from, to]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
    }
    for (const name of ["pushed", "pulled"]) {
      expect(fs.statSync(path.join(dst, name)).blocks * 512).toBeLessThan(8 * BLOCK);
      expect(await sameFile(path.join(src, "s"), path.join(dst, name))).toBe(true);
    }
  });

  test("--sparse --resume over a target with other times keeps its holes (kept blocks are not copied into them)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const size = 64 * BLOCK;
    await makeSparseFile(path.join(src, "s"), size, { seed: 46, extents: [[5 * BLOCK, BLOCK], [size - 100, 100]] });
    expect((await runEscp(["--sparse", path.join(src, "s"), `${SSH_HOST}:${dst}/`])).code).toBe(0);
    fs.utimesSync(path.join(src, "s"), new Date(), new Date(1_600_000_000_000)); // not skipped: its blocks are compared
    const r = await runEscp(["--sparse", "--resume", "--json", path.join(src, "s"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesSkipped).toBe(size);
    expect(fs.statSync(path.join(dst, "s")).blocks * 512).toBeLessThan(8 * BLOCK);
    expect(await sameFile(path.join(src, "s"), path.join(dst, "s"))).toBe(true);
  });

  test("--resume --verify --sparse over a complete 1 TiB sparse target hashes its holes without reading them: seconds, not hours", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const size = 2 ** 40;
    await makeSparseFile(path.join(src, "s"), size, { seed: 47, extents: [[0, 3 * BLOCK], [size / 2, 2 * BLOCK]] });
    expect((await runEscp(["-p", "--sparse", path.join(src, "s"), `${SSH_HOST}:${dst}/`])).code).toBe(0);
    const t0 = performance.now();
    const r = await runEscp(["-p", "--sparse", "--resume", "--verify", "--json", path.join(src, "s"), `${SSH_HOST}:${dst}/`], { timeoutMs: 60_000 });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesSkipped).toBe(size);
    expect(performance.now() - t0).toBeLessThan(30_000); // reading 1 TiB of zeros on both ends took minutes
    expect(fs.statSync(path.join(dst, "s")).blocks * 512).toBeLessThan(8 * BLOCK);
  });

  test("-p: times before 1677 and after 2262 arrive exact (ext4 keeps 1901 to 2446), push and pull", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const when = { old: "1901-12-14 00:00:00.25", late: "2300-01-01 12:00:00.123456789", dir: "2400-02-29 00:00:00.5" };
    fs.mkdirSync(path.join(src, "t"));
    for (const name of ["old", "late"]) {
      fs.writeFileSync(path.join(src, "t", name), name);
      expect((await run(["touch", "-d", when[name as "old" | "late"], path.join(src, "t", name)])).code).toBe(0);
    }
    expect((await run(["touch", "-d", when.dir, path.join(src, "t")])).code).toBe(0);
    const ns = (p: string) => fs.statSync(p, { bigint: true }).mtimeNs;
    for (const to of [`${SSH_HOST}:${dst}/push`, path.join(dst, "pull")]) {
      const from = to.startsWith(SSH_HOST) ? path.join(src, "t") : `${SSH_HOST}:${path.join(src, "t")}`;
      const r = await runEscp(["-rp", from, to]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const there = to.replace(`${SSH_HOST}:`, "");
      for (const name of ["old", "late"]) expect(ns(path.join(there, name))).toBe(ns(path.join(src, "t", name)));
      expect(ns(there)).toBe(ns(path.join(src, "t")));
    }
    expect(ns(path.join(src, "t", "late"))).toBeGreaterThan(1n << 63n); // past what int64 nanoseconds hold
  });

  test("a file the receiver refuses when it is announced is not sent (an existing directory at its name)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 256 * BLOCK, { seed: 17 });
    fs.mkdirSync(path.join(dst, "f"));
    const r = await runEscp(["-l", "400000", "--json", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`escp: ${dst}/f: Is a directory\n`);
    // What the streams had taken on before the refusal came back still goes (about a second of it).
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesNetwork).toBeLessThan(128 * BLOCK);
  });

  test.each([["append-only", "+a", "chattr -a"], ["immutable", "+i", "chattr -i"]])("an %s target is refused when announced, saying so, and is not sent", async (_, attr, fix) => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 256 * BLOCK, { seed: 21 });
    fs.writeFileSync(path.join(dst, "f"), "kept\n");
    expect(Bun.spawnSync(["chattr", attr, path.join(dst, "f")]).exitCode).toBe(0);
    try {
      const r = await runEscp(["-l", "400000", "--json", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
      expect(r.stderr).toBe(`escp: ${dst}/f: Operation not permitted (the file is ${_}: ${fix})\n`);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesNetwork).toBeLessThan(128 * BLOCK);
      expect(fs.readFileSync(path.join(dst, "f"), "utf8")).toBe("kept\n");
      expect(fs.readdirSync(dst)).toEqual(["f"]);
    } finally {
      Bun.spawnSync(["chattr", attr.replace("+", "-"), path.join(dst, "f")]);
    }
  });

  test("a device as the target is written into, never replaced (escp f host:/dev/null)", async () => {
    const src = tmpdir("src");
    await makeFile(path.join(src, "f"), 3 * BLOCK, { seed: 44 });
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:/dev/null`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.statSync("/dev/null").isCharacterDevice()).toBe(true);
    expect(fs.readdirSync("/dev").filter((n) => n.includes("escp-part"))).toEqual([]);
  });

  test.skipIf(process.getuid?.() !== 0)("a file mounted over (a bind mount, as in containers) is written into, as scp writes it, push and -r pull", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), under = path.join(tmpdir("under"), "conf");
    await makeFile(path.join(src, "conf"), 2 * BLOCK + 5, { seed: 49 });
    fs.writeFileSync(under, "x".repeat(3 * BLOCK)); // longer: what is past the new end goes
    fs.writeFileSync(path.join(dst, "conf"), "mount point\n");
    expect((await run(["mount", "--bind", under, path.join(dst, "conf")])).code).toBe(0);
    try {
      const push = await runEscp([path.join(src, "conf"), `${SSH_HOST}:${dst}/conf`]);
      expect([push.code, push.stderr]).toEqual([0, ""]);
      expect(await sameFile(path.join(src, "conf"), under)).toBe(true);
      fs.writeFileSync(under, "old\n");
      const pull = await runEscp(["-r", `${SSH_HOST}:${src}/.`, `${dst}/`]);
      expect([pull.code, pull.stderr]).toEqual([0, ""]);
      expect(await sameFile(path.join(src, "conf"), under)).toBe(true);
      expect(listNames(dst)).toEqual(["conf"]);
    } finally {
      await run(["umount", path.join(dst, "conf")]);
    }
  });

  test.skipIf(process.getuid?.() !== 0 || !Bun.which("losetup"))("--sparse into a block device is refused: the holes it does not send would keep the device's old data there", async () => {
    const src = tmpdir("src"), img = path.join(tmpdir("dev"), "img");
    await makeSparseFile(path.join(src, "s"), 4 * BLOCK, { seed: 48, extents: [[0, BLOCK]] });
    fs.writeFileSync(img, Buffer.alloc(4 * BLOCK, 0x5a));
    const l = Bun.spawnSync(["losetup", "-f", "--show", img]);
    const loop = l.stdout.toString().trim();
    expect(loop).toStartWith("/dev/loop");
    try {
      const r = await runEscp(["--sparse", path.join(src, "s"), `${SSH_HOST}:${loop}`]);
      expect(r.stderr).toBe(`escp: ${loop}: --sparse does not send the source's holes, where a device would keep its old data: copy it without --sparse\n`);
      expect(r.code).toBe(1);
      const plain = await runEscp([path.join(src, "s"), `${SSH_HOST}:${loop}`]);
      expect(plain.code).toBe(0);
    } finally {
      Bun.spawnSync(["losetup", "-d", loop]);
    }
    expect(await sameFile(path.join(src, "s"), img)).toBe(true);
  });

  test("a remote escp named with --remote-escp that is not there is named so, with -v too (ssh's debug lines are not quoted)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 10, { seed: 33 });
    for (const extra of [[], ["-v"]]) {
      const r = await runEscp([...extra, "--remote-escp", "/nonexistent/escp", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split("\n").at(-1)).toMatch(new RegExp(`^escp: ${SSH_HOST}: the escp named by --remote-escp or ESCP_REMOTE cannot be run there \\(.*/nonexistent/escp: (No such file or directory|not found)\\)$`));
    }
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("-q quiets ssh too: a host that cannot be reached says what it may be and how to see ssh's reason", async () => {
    const src = tmpdir("src");
    await makeFile(path.join(src, "f"), 10, { seed: 34 });
    const r = await runEscp(["-q", path.join(src, "f"), "nosuch.invalid:/tmp/"]);
    expect(r.stderr).toBe("escp: nosuch.invalid: the connection ended (ssh exited with status 255: ssh could not connect or log in, or lost the connection, or the remote escp was killed; without -q ssh says which) before the remote escp answered\n");
    expect(r.code).toBe(1);
  });

  test("a host whose ssh port refuses: ssh's reason once, then escp's line naming the host; --json keeps the reason", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 10, { seed: 35 });
    const port = await freePort();
    const r = await runEscp(["-P", String(port), path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    // ssh ends its lines with CR LF.
    expect(r.stderr.replace(/\r\n/g, "\n")).toBe(`ssh: connect to host 127.0.0.1 port ${port}: Connection refused\nescp: ${SSH_HOST}: ssh failed (above)\n`);
    expect(r.code).toBe(1);
    const j = await runEscp(["--json", "-P", String(port), path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(JSON.parse(j.stdout.trim().split("\n").at(-1)!)).toMatchObject({ event: "error", message: `${SSH_HOST}: ssh failed: ssh: connect to host 127.0.0.1 port ${port}: Connection refused`, exit: 1 });
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("a missing source is named on stderr and the exit status is 1", async () => {
    const dst = tmpdir("dst");
    const r = await runEscp(["/nonexistent/file", `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("/nonexistent/file");
    expect(r.stderr).toContain("No such file or directory");
  });
});

describe("relay", () => {
  test("a remote-to-remote copy is relayed through this host", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "tree", "a"), 3 * BLOCK + 1, { seed: 21 });
    await makeFile(path.join(src, "tree", "sub", "b"), 10, { seed: 22 });
    const r = await runEscp(["-r", `${SSH_HOST}:${src}/tree`, `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "tree", "a"), path.join(dst, "tree", "a"))).toBe(true);
    expect(await sameFile(path.join(src, "tree", "sub", "b"), path.join(dst, "tree", "sub", "b"))).toBe(true);
  });

  test("--json: each file starts and arrives once, named by its source, and one summary covers the relay", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "tree", "a"), 2 * BLOCK + 3, { seed: 35 });
    await makeFile(path.join(src, "tree", "sub", "b"), 10, { seed: 36 });
    const r = await runEscp(["--json", "-r", `${SSH_HOST}:${src}/tree`, `${SSH_HOST}:${dst}/`]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).not.toContain("escp-relay-");
    const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    const names = (kind: string) => events.filter((e) => e.event === kind).map((e) => e.path).sort();
    const want = [`${SSH_HOST}:${src}/tree/a`, `${SSH_HOST}:${src}/tree/sub/b`];
    expect([names("file_start"), names("file_done")]).toEqual([want, want]);
    expect(events.filter((e) => e.event === "summary")).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({ event: "summary", files: 2, bytes: 2 * BLOCK + 13, exit: 0 });
  });

  test("a pattern that matches several files is several sources: refused into a file name, not written there in turn", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (const [n, seed] of [["f1", 37], ["f2", 38]] as const) await makeFile(path.join(src, n), 100, { seed });
    fs.writeFileSync(path.join(dst, "file"), "old\n");
    const r = await runEscp([`${SSH_HOST}:${src}/f*`, `${SSH_HOST}:${dst}/file`]);
    expect(r.stderr).toBe(`escp: ${SSH_HOST}: ${dst}/file: Not a directory (several sources need an existing directory as destination)\n`);
    expect(r.code).toBe(1);
    expect(fs.readFileSync(path.join(dst, "file"), "utf8")).toBe("old\n");
  });

  test("a destination directory missing on the target host stops the pull at once, failing as a direct copy to it does", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), spool = tmpdir("spool");
    await makeFile(path.join(src, "f"), 64 * BLOCK, { seed: 39 });
    const to = `${SSH_HOST}:${dst}/missing/x`;
    const direct = await runEscp([path.join(src, "f"), to]);
    expect(direct.stderr).toBe(`escp: ${SSH_HOST}: ${dst}/missing: No such file or directory\n`);
    // At 5 MB/s the pull alone would take 13 s: the refusal comes long before.
    const t0 = performance.now();
    const r = await runEscp(["-3", "--json", "-l", "40000", `${SSH_HOST}:${src}/f`, to], { env: { TMPDIR: spool } });
    expect([r.code, r.stderr]).toEqual([1, direct.stderr]);
    expect(performance.now() - t0).toBeLessThan(8000);
    const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(events.at(-1)).toMatchObject({ event: "error", message: direct.stderr.slice("escp: ".length, -1) });
    expect(events.some((e) => e.event === "file_done" || e.event === "summary")).toBe(false);
    expect(fs.readdirSync(spool)).toEqual([]);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("a spool left by a relay killed with SIGKILL is removed by the next relay; a running relay's is not", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), tmp = tmpdir("spools");
    await makeFile(path.join(src, "f"), 2 * BLOCK, { seed: 28 });
    const gone = Bun.spawnSync(["true"]).pid; // a process that has ended: its pid names a dead relay
    const stale = path.join(tmp, `escp-relay-${gone}-AbCdEf`), live = path.join(tmp, `escp-relay-${process.pid}-GhIjKl`);
    for (const d of [stale, live]) await makeFile(path.join(d, ".big.escp-part"), BLOCK, { seed: 29 });
    const r = await runEscp([`${SSH_HOST}:${src}/f`, `${SSH_HOST}:${dst}/`], { env: { TMPDIR: tmp } });
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(fs.readdirSync(tmp)).toEqual([path.basename(live)]); // its own spool went too, as always
  });

  test("an empty TMPDIR spools in the system's temporary directory, not in the working directory", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), cwd = tmpdir("cwd");
    await makeFile(path.join(src, "f"), 2 * BLOCK, { seed: 24 });
    // A working directory nothing can be written into, root included.
    await withTmpfs(cwd, "ro,size=1m", async () => {
      const r = await runEscp([`${SSH_HOST}:${src}/f`, `${SSH_HOST}:${dst}/`], { env: { TMPDIR: "" }, cwd });
      expect([r.code, r.stderr]).toEqual([0, ""]);
      expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    });
  });

  test("a TMPDIR where no spool can be made is named with the way around it, in one line and as --json's error", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), missing = path.join(tmpdir("tmp"), "missing");
    await makeFile(path.join(src, "f"), 1000, { seed: 87 });
    const said = `escp: a copy between two remote hosts passes through ${missing} on this host, where no spool can be made (No such file or directory): ` +
      `point TMPDIR elsewhere, or use -R to send straight from ${SSH_HOST} to ${SSH_HOST}\n`;
    const r = await runEscp([`${SSH_HOST}:${src}/f`, `${SSH_HOST}:${dst}/`], { env: { TMPDIR: missing } });
    expect([r.code, r.stderr]).toEqual([1, said]);
    const json = await runEscp(["--json", `${SSH_HOST}:${src}/f`, `${SSH_HOST}:${dst}/`], { env: { TMPDIR: missing } });
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout.trim().split("\n").at(-1)!)).toMatchObject({ event: "error", message: said.slice("escp: ".length, -1) });
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("when this host's spool is full, the message says where it is and how to avoid it", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), spool = tmpdir("spool");
    await makeFile(path.join(src, "f"), 4 * BLOCK, { seed: 23 });
    await withTmpfs(spool, "size=1m", async () => {
      const r = await runEscp([`${SSH_HOST}:${src}/f`, `${SSH_HOST}:${dst}/`], { env: { TMPDIR: spool } });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/: No space left on device\n/);
      expect(r.stderr).toContain(`escp: warning: a copy between two remote hosts passes through ${spool} on this host, which is full: ` +
        `point TMPDIR elsewhere, or use -R to send straight from ${SSH_HOST} to ${SSH_HOST}\n`);
      expect(fs.readdirSync(dst)).toEqual([]);
    });
  });
});

describe("-R: the source host copies straight to the target", () => {
  /**
   * What sshd runs as the source host's escp: this one, with an `ssh` first on its PATH
   * that knows the test sshd, as a source host's own ssh config would know the target.
   * Returns the env for the local escp and a directory that stays empty unless the
   * copy is spooled here (TMPDIR, where -3's relay would put it).
   */
  async function sourceHost(): Promise<{ env: Record<string, string>; spool: string; wrapper: string }> {
    const bin = tmpdir("bin"), spool = tmpdir("spool"), wrapper = path.join(bin, "escp");
    fs.mkdirSync(path.join(bin, "shim"));
    fs.writeFileSync(path.join(bin, "shim", "ssh"), `#!/bin/sh\nexec '${Bun.which("ssh")}' -F '${(await startSshd()).configPath}' "$@"\n`, { mode: 0o755 });
    // Not exec'd: the wrapper lives exactly as long as the source host's escp (see the last test).
    fs.writeFileSync(wrapper, `#!/bin/sh\nPATH='${path.join(bin, "shim")}':$PATH ESCP_REMOTE='${ESCP_BIN}' '${ESCP_BIN}' "$@"\n`, { mode: 0o755 });
    return { env: { ESCP_REMOTE: wrapper, TMPDIR: spool }, spool, wrapper };
  }

  test("a tree and a file arrive, the source host's events reach --json, nothing passes through here", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "tree", "a"), 3 * BLOCK + 1, { seed: 25 });
    await makeFile(path.join(src, "tree", "sub", "b c"), 10, { seed: 26 });
    await makeFile(path.join(src, "x:y"), 7, { seed: 27 });
    const { env, spool } = await sourceHost();
    const r = await runEscp(["-R", "-r", "--json", `${SSH_HOST}:${src}/tree`, `${SSH_HOST}:${src}/x:y`, `${SSH_HOST}:${dst}/`], { env });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    // The session is the source host's push, over its own data streams.
    expect(events[0]).toMatchObject({ event: "session", direction: "push", role: "sender", host: SSH_HOST });
    expect(events.at(-1)).toMatchObject({ event: "summary", files: 3, exit: 0 });
    expect(fs.readdirSync(spool)).toEqual([]);
    expect(await sameFile(path.join(src, "tree", "a"), path.join(dst, "tree", "a"))).toBe(true);
    expect(await sameFile(path.join(src, "tree", "sub", "b c"), path.join(dst, "tree", "sub", "b c"))).toBe(true);
    expect(await sameFile(path.join(src, "x:y"), path.join(dst, "x:y"))).toBe(true);
  });

  test("--ssh builtin: the built-in client starts the source host's escp and carries its events", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "d", "a"), BLOCK + 5, { seed: 33 });
    await makeFile(path.join(src, "d", "b"), 3, { seed: 34 });
    const { env, spool } = await sourceHost();
    const r = await runEscp(["--ssh", "builtin", "-R", "-r", "--json", `${SSH_HOST}:${src}/d`, `${SSH_HOST}:${dst}/`], { env });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!)).toMatchObject({ event: "summary", files: 2, exit: 0 });
    // Nothing in TMPDIR either: ssh2's native add-ons are left out of the build (scripts/build.sh),
    // which Bun would otherwise write there as .bun-*.node.
    expect(fs.readdirSync(spool)).toEqual([]);
    for (const f of ["a", "b"]) expect(await sameFile(path.join(src, "d", f), path.join(dst, "d", f))).toBe(true);
  });

  test("a missing source is named by the source host, the others arrive, exit 1", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 100, { seed: 28 });
    const r = await runEscp(["-R", `${SSH_HOST}:${src}/f`, `${SSH_HOST}:${src}/absent`, `${SSH_HOST}:${dst}/`], { env: (await sourceHost()).env });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`escp: ${src}/absent: No such file or directory\n`);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test("a source host that cannot reach the target: its ssh's message, then which host it came from, exit 1", async () => {
    const src = tmpdir("src");
    await makeFile(path.join(src, "f"), 10, { seed: 32 });
    const r = await runEscp(["-R", `${SSH_HOST}:${src}/f`, "nosuch.invalid:/tmp/"], { env: (await sourceHost()).env });
    expect(r.code).toBe(1);
    // ssh's cause once, in its words; each escp after it says only whose it was.
    expect(r.stderr).toMatch(new RegExp(`^ssh: [^\n]*nosuch\\.invalid[^\n]*\nescp: nosuch\\.invalid: ssh failed \\(above\\)\nescp: ${SSH_HOST}: the copy escp ran there for -R failed \\(above\\)\n$`));
  });

  test("-q: the source host's failures are still named, once", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 100, { seed: 39 });
    const { env } = await sourceHost();
    const r = await runEscp(["-q", "-R", `${SSH_HOST}:${src}/f`, `${SSH_HOST}:${src}/absent`, `${SSH_HOST}:${dst}/`], { env });
    expect([r.code, r.stderr]).toEqual([1, `escp: ${src}/absent: No such file or directory\n`]);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    const unreachable = await runEscp(["-q", "-R", `${SSH_HOST}:${src}/f`, "nosuch.invalid:/tmp/"], { env });
    expect(unreachable.code).toBe(1);
    // Its ssh got -q too, and said nothing; the source host's escp says as much, above the line that points at it.
    expect(unreachable.stderr).toMatch(new RegExp(`^escp: nosuch\\.invalid: the connection ended .*without -q ssh says which.*\nescp: ${SSH_HOST}: the copy escp ran there for -R failed \\(above\\)\n$`));
  });

  test("on a terminal: the source host's progress and summary are shown here, each failure once", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 6 * BLOCK, { seed: 30 });
    const { env } = await sourceHost();
    const argv = [ESCP_BIN, "-F", (await startSshd()).configPath, "-R", "-l", "16000", `${SSH_HOST}:${src}/f`, `${SSH_HOST}:${src}/absent`, `${SSH_HOST}:${dst}/`];
    const quoted = argv.map((a) => `'${a}'`).join(" ");
    const r = await run(["script", "-qefc", `stty cols 100 rows 40; exec ${quoted}`, "/dev/null"], { env, timeoutMs: 60_000 });
    expect(r.code).toBe(1);
    const out = r.stdout.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");
    expect(out.split(`${src}/absent: No such file or directory`)).toHaveLength(2);
    expect(out).toMatch(new RegExp(`${src}/f +\\d+% `)); // a progress line for the file
    expect(out).toMatch(/1 file, 6\.00MiB in [\d.]+ s, 1 failed/);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test("interrupted here, the copy stops there: no escp left running, no temporary file on the target", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "big"), 24 * BLOCK, { seed: 29 });
    const { env, wrapper } = await sourceHost();
    const child = spawn(ESCP_BIN, ["-F", (await startSshd()).configPath, "-R", "-l", "4000", `${SSH_HOST}:${src}/big`, `${SSH_HOST}:${dst}/`], {
      env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    // Ctrl-C ends escp by SIGINT once it has cleaned up (a shell reads that as 130).
    const exited = new Promise<number | null>((r) => child.on("exit", (code, sig) => r(sig === "SIGINT" ? 130 : code)));
    // Wait until the target holds the partial copy, then interrupt this end.
    const part = path.join(dst, ".big.escp-part");
    for (let i = 0; i < 300 && !fs.existsSync(part); i++) await Bun.sleep(50);
    expect(fs.existsSync(part)).toBe(true);
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(stderr).toContain("escp: interrupted");
    for (let i = 0; i < 100 && fs.readdirSync(dst).length > 0; i++) await Bun.sleep(50);
    expect(fs.readdirSync(dst)).toEqual([]);
    for (let i = 0; i < 100 && Bun.spawnSync(["pgrep", "-f", wrapper]).exitCode === 0; i++) await Bun.sleep(50);
    expect(Bun.spawnSync(["pgrep", "-f", wrapper]).stdout.toString()).toBe("");
  });

  test("the source host's escp killed mid-copy is said to have gone mid-copy, not to have failed to start", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "big"), 24 * BLOCK, { seed: 30 });
    const { env } = await sourceHost();
    const t = Bun.spawn([ESCP_BIN, "-F", (await startSshd()).configPath, "-R", "-l", "4000", `${SSH_HOST}:${src}/big`, `${SSH_HOST}:${dst}/`], {
      env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe",
    });
    const stderr = new Response(t.stderr).text();
    const part = path.join(dst, ".big.escp-part");
    for (let i = 0; i < 300 && !fs.existsSync(part); i++) await Bun.sleep(50);
    expect(fs.existsSync(part)).toBe(true);
    const origin = Bun.spawnSync(["pgrep", "-f", "--", `^${ESCP_BIN} --origin`]).stdout.toString().trim().split("\n").filter(Boolean);
    expect(origin.length).toBe(1);
    process.kill(Number(origin[0]), "SIGKILL");
    expect(await t.exited).toBe(1);
    expect(await stderr).toMatch(new RegExp(`escp: ${SSH_HOST}: the escp running the copy there \\(-R\\) or its ssh connection went away mid-copy \\(status \\d+\\)\\nescp: ${src}/big: not copied\\n$`));
    for (let i = 0; i < 100 && fs.readdirSync(dst).length > 0; i++) await Bun.sleep(50);
    expect(fs.readdirSync(dst)).toEqual([]);
  });
});

describe("the data port", () => {
  test("strangers on the data port are dropped while the transfer succeeds", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 16 * BLOCK, { seed: 7 });
    const port = await freePort();
    // In front of every real stream connection, two strangers reach the listener first:
    // one sends a right-looking preamble and garbage, one stays silent.
    let strangers = 0, dropped = 0;
    const stranger = (junk: boolean) => {
      strangers++;
      const s = net.connect(port, "127.0.0.1", () => {
        if (!junk) return;
        const pre = Buffer.alloc(32);
        pre.write("ESCP", 0);
        pre.writeUInt16BE(1, 4);
        s.write(Buffer.concat([pre, Buffer.alloc(200, 0x41)]));
      });
      s.on("error", () => {});
      s.on("close", () => dropped++);
      s.resume();
    };
    const proxy = await startProxy(port, ({ record }) => [record], () => {
      stranger(true);
      stranger(false);
    });
    const r = await runEscp(["--port", `${port}-${port}`, path.join(src, "f"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${proxy.port}` },
    });
    proxy.close();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(strangers).toBe(10); // 2 per stream, 5 streams
    expect(dropped).toBeGreaterThanOrEqual(5); // the junk ones at least; silent ones may outlive the session
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test("records cut into pieces in transit (a header split, a pause between) still arrive intact", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let f = 0; f < 60; f++) await makeFile(path.join(src, "t", `f${f}`), 10 + f * 37, { seed: 300 + f });
    await makeFile(path.join(src, "t", "big"), 2 * BLOCK + 5, { seed: 299 });
    const port = await freePort();
    // Each record leaves as its first 5 header bytes, a pause, the other 11, a pause, the rest:
    // the receiver sees partial headers both when it blocks for one and when it looks for more.
    const proxy = await startProxy(port, ({ record }) => [record.subarray(0, 5), 2, record.subarray(5, 16), 1, record.subarray(16)]);
    const r = await runEscp(["-r", "--port", `${port}-${port}`, path.join(src, "t"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${proxy.port}` },
    });
    proxy.close();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(proxy.tampered).toBeGreaterThan(60);
    for (let f = 0; f < 60; f++) expect(await sameFile(path.join(src, "t", `f${f}`), path.join(dst, "t", `f${f}`))).toBe(true);
    expect(await sameFile(path.join(src, "t", "big"), path.join(dst, "t", "big"))).toBe(true);
  });

  test("the data streams after the first connect together, not one round trip after another", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 4 * BLOCK, { seed: 17 });
    const port = await freePort();
    // Every answer from the receiver reaches escp 300 ms late, as over a long path.
    // A client that connected stream by stream would open each only after the answer
    // to the one before; one that connects them together opens them all first.
    const opened: number[] = [], answered: number[] = [];
    const server = net.createServer((client) => {
      const conn = opened.push(performance.now()) - 1;
      const upstream = net.connect(port, "127.0.0.1");
      client.on("data", (d) => upstream.write(d));
      upstream.on("data", (d) => setTimeout(() => {
        answered[conn] ??= performance.now();
        client.write(d);
      }, 300));
      client.on("end", () => upstream.end());
      upstream.on("end", () => setTimeout(() => client.end(), 300));
      for (const s of [client, upstream]) s.on("error", () => { client.destroy(); upstream.destroy(); });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const via = (server.address() as net.AddressInfo).port;
    const r = await runEscp(["-t", "4", "--port", `${port}-${port}`, path.join(src, "f"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${via}` },
    });
    server.close();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(opened.length).toBe(5);
    // Streams 1-4 were all open before any of them had its answer.
    expect(Math.max(...opened.slice(1))).toBeLessThan(Math.min(...answered.slice(1)));
  });

  /**
   * Pushes 8 blocks through a proxy on the data port that flips one bit, `byte` into
   * record `index` of connection `conn` from the connecting side (record 0 is its HELLO).
   */
  async function pushFlipping(seed: number, conn: number, index: number, byte: number) {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 8 * BLOCK, { seed });
    const port = await freePort();
    const proxy = await startProxy(port, (ctx) => {
      if (ctx.conn !== conn || ctx.index !== index) return [ctx.record];
      const r = Buffer.from(ctx.record);
      r[byte] ^= 0x01;
      return [r];
    });
    const r = await runEscp(["--port", `${port}-${port}`, path.join(src, "f"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_DATA_VIA: `127.0.0.1:${proxy.port}` },
    });
    proxy.close();
    return { r, dst, tampered: proxy.tampered };
  }

  test("a record altered in flight fails the transfer and leaves no file", async () => {
    // The body of the 2nd data record of data stream 1.
    const { r, dst, tampered } = await pushFlipping(8, 1, 2, 40);
    expect(tampered).toBe(1);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/authentication|integrity/i);
    expect(fs.existsSync(path.join(dst, "f"))).toBe(false);
    expect(listNames(dst)).toEqual([]);
  });

  test("a data stream whose handshake an on-path attacker alters fails the copy without the firewall hint (the port answered)", async () => {
    const { r, dst, tampered } = await pushFlipping(9, 1, 0, 20); // stream 1's HELLO
    expect(tampered).toBe(1);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("cannot open the data streams");
    expect(r.stderr).not.toContain("firewall");
    expect(listNames(dst)).toEqual([]);
  });
});

describe("-l (bandwidth limit)", () => {
  test("a file of a few blocks moves at about the limit: never faster, and over every stream, not one", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 8 * BLOCK, { seed: 31 });
    // 16,000 Kbit/s = 2 MB/s, paced a quarter on each of 4 streams: 8 MiB takes 4.2 s when its
    // blocks are spread over the streams, 16.8 s on one (as it went while a batch held 8 MiB).
    const t0 = performance.now();
    const r = await runEscp(["-l", "16000", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { timeoutMs: 60_000 });
    const seconds = (performance.now() - t0) / 1000;
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(seconds).toBeGreaterThan(3.5);
    expect(seconds).toBeLessThan(9);
  });

  test("a tree's files are committed as they arrive, not a batch's worth at a time", async () => {
    // 40,000 Kbit/s = 5 MB/s, 1.25 on each of 4 streams: a batch of 8 MiB would hold its files
    // (and their commit at the receiver) for 6.7 s; half a second's worth arrives in under 3.
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let i = 0; i < 40; i++) await makeFile(path.join(src, "t", `f${i}`), 900 * 1024, { seed: 600 + i });
    const t0 = performance.now();
    const p = Bun.spawn([ESCP_BIN, "-F", (await startSshd()).configPath, "-r", "-l", "40000", path.join(src, "t"), `${SSH_HOST}:${dst}/`], {
      env: { ...process.env, ESCP_REMOTE: ESCP_BIN }, stdout: "ignore", stderr: "pipe",
    });
    const stderr = new Response(p.stderr).text();
    const arrived = () => (fs.existsSync(path.join(dst, "t")) ? fs.readdirSync(path.join(dst, "t")).filter((n) => !n.startsWith(".")).length : 0);
    while (arrived() === 0 && performance.now() - t0 < 20_000) await Bun.sleep(50);
    const first = (performance.now() - t0) / 1000;
    expect(await p.exited).toBe(0);
    expect(await stderr).toBe("");
    expect(first).toBeLessThan(3);
    expect(arrived()).toBe(40);
  });

  test("a file smaller than the streams' first TCP windows still moves no faster than the limit", async () => {
    // The kernel lets each stream's first window through unpaced (on loopback ten 64 KiB
    // segments): with SO_MAX_PACING_RATE alone 4 MiB at 1 MB/s over 4 streams took ≈ 2.9 s.
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 4 * BLOCK, { seed: 32 });
    const r = await runEscp(["--json", "-l", "8000", path.join(src, "f"), `${SSH_HOST}:${dst}/`], { timeoutMs: 60_000 });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(summary.streams).toBe(4);
    expect(summary.seconds).toBeGreaterThan((4 * BLOCK) / 1e6);
    expect(summary.seconds).toBeLessThan(7);
  });
});

describe("how many data streams", () => {
  const memAvailable = Number(/MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync("/proc/meminfo", "utf8"))![1]) * 1024;
  test.skipIf(memAvailable > 60 * 2 ** 30)("streams whose buffers would not fit in half the memory available are not opened: fewer, with a warning that says so (push and pull)", async () => {
    // 64 streams of 64 MiB blocks, compressed: 64 x 5 x 2 x 64 MiB = 40 GiB of buffers asked for.
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let i = 0; i < 64; i++) fs.writeFileSync(path.join(src, `f${i}`), `${i}\n`);
    for (const [from, to] of [[src, `${SSH_HOST}:${dst}/push`], [`${SSH_HOST}:${src}`, path.join(dst, "pull")]]) {
      const r = await runEscp(["--json", "-r", "-t", "64", "-b", "64M", "-C", from, to]);
      expect(r.code).toBe(0);
      const m = /^escp: warning: 64 streams of -b 64M with -C would take 40\.0GiB of buffers, and this host has \S+ of memory available: using (\d+) streams\n$/.exec(r.stderr);
      expect(m, r.stderr).not.toBeNull();
      const session = r.stdout.split("\n").map((l) => JSON.parse(l || "{}")).find((e) => e.event === "session");
      expect(session.streams).toBe(Number(m![1]));
      expect(session.streams).toBeLessThan(64);
      expect(fs.readdirSync(to.replace(`${SSH_HOST}:`, "")).length).toBe(64);
    }
  });

  test("pulling, the sending server opens one per block it has, at most -t, and all of -t for a directory", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "d", "one"), 1, { seed: 23 });
    await makeFile(path.join(src, "two"), BLOCK + 1, { seed: 24 });
    const streams = async (args: string[]) => {
      const r = await runEscp(["--json", ...args]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout.split("\n")[0]!).streams;
    };
    expect(await streams([`${SSH_HOST}:${src}/d/one`, `${dst}/one`])).toBe(1);
    expect(await streams([`${SSH_HOST}:${src}/two`, `${dst}/two`])).toBe(2);
    expect(await streams(["-r", `${SSH_HOST}:${src}/d`, `${dst}/`])).toBe(4);
    expect(await sameFile(path.join(src, "d", "one"), path.join(dst, "one"))).toBe(true);
    expect(await sameFile(path.join(src, "two"), path.join(dst, "two"))).toBe(true);
    expect(await sameFile(path.join(src, "d", "one"), path.join(dst, "d", "one"))).toBe(true);
  });
});

describe("AES-128-GCM implementations", () => {
  test("ends that chose different implementations (OpenSSL, libgcrypt, intel-ipsec-mb) copy both ways", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), back = tmpdir("back"), logs = tmpdir("log");
    await makeFile(path.join(src, "f"), 5 * BLOCK + 77, { seed: 12 });
    // Each backend here against the next, round the ring: every one on both ends.
    const backends = gcmBackendsHere();
    for (const [i, here] of backends.entries()) {
      const there = backends[(i + 1) % backends.length]!;
      const remote = path.join(logs, `remote-${there}.sh`);
      fs.writeFileSync(remote, `#!/bin/sh\nESCP_GCM=${there} exec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
      const log = path.join(logs, `${here}.log`);
      const env = { ESCP_GCM: here, ESCP_REMOTE: remote };
      const push = await runEscp(["--log", log, path.join(src, "f"), `${SSH_HOST}:${dst}/${here}`], { env });
      expect(push.stderr).toBe("");
      expect(push.code).toBe(0);
      expect(await sameFile(path.join(src, "f"), path.join(dst, here))).toBe(true);
      const pull = await runEscp(["--log", log, `${SSH_HOST}:${dst}/${here}`, `${back}/`], { env });
      expect(pull.code).toBe(0);
      expect(await sameFile(path.join(src, "f"), path.join(back, here))).toBe(true);
      // Each end logged the implementation it used: they really differed.
      const text = fs.readFileSync(log, "utf8");
      expect(text.match(new RegExp(`streams connected .*aes="?${GCM_NAME[here]} `, "g"))?.length).toBe(2);
      expect(text.match(new RegExp(`streams accepted .*aes="?${GCM_NAME[there]} `, "g"))?.length).toBe(2);
    }
  });
});

describe("file creation on the receiver", () => {
  test("the stream workers create the files of a -r push, not the main thread; a one-block file without a name", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), logs = tmpdir("log");
    for (let d = 0; d < 4; d++) for (let f = 0; f < 25; f++) await makeFile(path.join(src, "t", `d${d}`, `f${f}`), 100 + f, { seed: d * 100 + f });
    await makeFile(path.join(src, "t", "empty"), 0, { seed: 1 });
    await makeFile(path.join(src, "t", "two-blocks"), 300_000, { seed: 2 });
    const trace = path.join(logs, "strace");
    const remote = path.join(logs, "remote.sh");
    fs.writeFileSync(remote, `#!/bin/sh\nexec strace -f -qq -e trace=openat,openat2,linkat,renameat -o ${trace} ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    const r = await runEscp(["-r", "-b", "256k", path.join(src, "t"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: remote } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (let d = 0; d < 4; d++) for (let f = 0; f < 25; f++) {
      expect(await sameFile(path.join(src, "t", `d${d}`, `f${f}`), path.join(dst, "t", `d${d}`, `f${f}`))).toBe(true);
    }
    expect(await sameFile(path.join(src, "t", "two-blocks"), path.join(dst, "t", "two-blocks"))).toBe(true);
    expect(fs.statSync(path.join(dst, "t", "empty")).size).toBe(0);
    // strace -f: "TID openat(dirfd, \".f0.escp-part\", O_WRONLY|O_CREAT|O_EXCL...", or for an
    // unnamed file "TID openat(dirfd, \".\", O_WRONLY|O_CLOEXEC|O_TMPFILE, 0644)". The
    // process's first line is its main thread.
    const lines = fs.readFileSync(trace, "utf8").split("\n").filter(Boolean);
    const main = lines[0].split(/\s+/)[0];
    const tid = (l: string) => l.split(/\s+/)[0];
    const named = lines.filter((l) => /escp-part", O_WRONLY\|O_CREAT/.test(l)).map((l) => [tid(l), /"\.([^"]+)\.escp-part"/.exec(l)![1]]);
    const unnamed = lines.filter((l) => /openat\(\d+, "\.", O_WRONLY\|O_CLOEXEC\|O_TMPFILE/.test(l));
    expect(unnamed.filter((l) => tid(l) !== main).length).toBe(100); // every one-block file
    expect(unnamed.filter((l) => tid(l) === main)).toEqual([]);
    expect(named.filter(([t]) => t !== main).map(([, name]) => name)).toEqual(["two-blocks"]); // kept by name for --resume
    expect(named.filter(([t]) => t === main).map(([, name]) => name)).toEqual(["empty"]); // no block would create it
    // Unnamed files are linked in under their names: no temporary name, no rename. (A call
    // strace shows as "<unfinished ...>" ends on a "<... linkat resumed>" line.)
    expect(lines.filter((l) => / linkat\(/.test(l)).length).toBe(100);
    expect(lines.filter((l) => /linkat/.test(l) && /= -1 /.test(l))).toEqual([]);
    expect(lines.filter((l) => / renameat\(/.test(l)).length).toBe(2); // two-blocks and empty
  });

  test("-p: a file is created with its final mode unless that lets others write (then private first), and ends with it exactly", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), logs = tmpdir("log");
    const modes: Record<string, number> = { plain: 0o644, exec: 0o755, shared: 0o666, suid: 0o4755, none: 0o000 };
    for (const [name, mode] of Object.entries(modes)) {
      await makeFile(path.join(src, "m", name), 50, { seed: mode });
      fs.chmodSync(path.join(src, "m", name), mode);
    }
    fs.chmodSync(path.join(src, "m"), 0o750);
    const trace = path.join(logs, "strace");
    const remote = path.join(logs, "remote.sh");
    fs.writeFileSync(remote, `#!/bin/sh\numask 022\nexec strace -f -qq -e trace=openat,fchmod -o ${trace} ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    const r = await runEscp(["-rp", path.join(src, "m"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: remote } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (const [name, mode] of Object.entries(modes)) expect(fs.statSync(path.join(dst, "m", name)).mode & 0o7777).toBe(mode);
    const lines = fs.readFileSync(trace, "utf8").split("\n");
    // Files of one block are created unnamed: "openat(7, \".\", O_WRONLY|O_CLOEXEC|O_TMPFILE, 0644".
    const created = lines.flatMap((l) => /"\.", O_WRONLY\|O_CLOEXEC\|O_TMPFILE, (0\d+)/.exec(l)?.[1] ?? []).sort();
    expect(created).toEqual(["0600", "0644", "0644", "0755", "0755"]); // none, plain and shared, exec and suid
    // Only the files created with another mode are changed before the rename (and, -p, the directory at the end).
    // A call another thread interrupts shows as "fchmod(9, 0666 <unfinished ...>", without its ")".
    const chmods = lines.flatMap((l) => / fchmod\(\d+, (\d+)/.exec(l)?.[1] ?? []).sort();
    expect(chmods).toEqual(["000", "04755", "0666", "0750"]);
  });
});

describe("names that are not UTF-8", () => {
  test("a source named on the command line in Latin-1 is found, and arrives with that name", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const name = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "caf\351"
    fs.writeFileSync(Buffer.concat([Buffer.from(`${src}/`), name]), "latin-1\n");
    const sshd = await startSshd();
    const r = await run(["sh", "-c", `exec "$0" -F "$1" "$2/$(printf 'caf\\351')" "$3"`, ESCP_BIN, sshd.configPath, src, `${SSH_HOST}:${dst}/`], {
      env: { ESCP_REMOTE: ESCP_BIN },
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readdirSync(dst, { encoding: "buffer" })).toEqual([name]);
  });

  test("-r .. names the directory with its bytes when the working directory's name is not UTF-8", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const name = Buffer.from([0x64, 0xe9]); // "d\351"
    const sub = Buffer.concat([Buffer.from(`${src}/`), name, Buffer.from("/sub")]);
    fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(Buffer.concat([sub, Buffer.from("/f")]), "x\n");
    const sshd = await startSshd();
    const r = await run(["sh", "-c", `cd "$1/$(printf 'd\\351')/sub" && exec "$0" -F "$2" -r .. "$3"`, ESCP_BIN, src, sshd.configPath, `${SSH_HOST}:${dst}/`], {
      env: { ESCP_REMOTE: ESCP_BIN },
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readdirSync(dst, { encoding: "buffer" })).toEqual([name]);
  });
});

describe("small files on the wire", () => {
  test("many small files share socket calls: far fewer sends and receives than records", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), logs = tmpdir("log");
    for (let d = 0; d < 10; d++) for (let f = 0; f < 100; f++) await makeFile(path.join(src, "s", `d${d}`, `f${f}`), 1000 + f, { seed: d * 100 + f });
    const sshd = await startSshd();
    const local = path.join(logs, "local"), remote = path.join(logs, "remote"), wrapper = path.join(logs, "remote.sh");
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec strace -f -qq -e trace=sendto,recvfrom -o ${remote} ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    const r = await run(["strace", "-f", "-qq", "-e", "trace=sendto", "-o", local, ESCP_BIN, "-F", sshd.configPath, "-r", path.join(src, "s"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_REMOTE: wrapper },
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (const d of [0, 9]) expect(await sameFile(path.join(src, "s", `d${d}`, "f99"), path.join(dst, "s", `d${d}`, "f99"))).toBe(true);
    // 1,000 DATA records of about 1 KiB: one send() and two recv()s each before, a few dozen
    // records per call now (the rest are control records: file lists, verdicts, END).
    const count = (file: string, call: string) => fs.readFileSync(file, "utf8").split("\n").filter((l) => l.includes(` ${call}(`)).length;
    expect(count(local, "sendto")).toBeLessThan(250);
    expect(count(remote, "recvfrom")).toBeLessThan(250);
  });
});

describe("open files", () => {
  test("under ulimit -n 256 a -r push of 600 files in 300 directories succeeds: the sender keeps fewer open", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let d = 0; d < 300; d++) for (const f of ["a", "b"]) await makeFile(path.join(src, "w", `d${d}`, f), 1 + d, { seed: d });
    const sshd = await startSshd();
    const r = await run(["sh", "-c", 'ulimit -n 256 && exec "$@"', "sh", ESCP_BIN, "-F", sshd.configPath, "-r", path.join(src, "w"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_REMOTE: ESCP_BIN },
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (const d of [0, 150, 299]) expect(await sameFile(path.join(src, "w", `d${d}`, "b"), path.join(dst, "w", `d${d}`, "b"))).toBe(true);
    expect(fs.readdirSync(path.join(dst, "w")).length).toBe(300);
  });

  test("a receiver under ulimit -n 256 gets the same push whole: it tells the sender how many files it can hold", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), bin = tmpdir("bin");
    for (let d = 0; d < 300; d++) for (const f of ["a", "b"]) await makeFile(path.join(src, "w", `d${d}`, f), 1 + d, { seed: 7 + d });
    const remote = path.join(bin, "remote.sh");
    fs.writeFileSync(remote, `#!/bin/sh\nulimit -n 256 && exec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    const r = await runEscp(["-r", path.join(src, "w"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: remote } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (const d of [0, 150, 299]) expect(await sameFile(path.join(src, "w", `d${d}`, "a"), path.join(dst, "w", `d${d}`, "a"))).toBe(true);
    expect(fs.readdirSync(path.join(dst, "w")).length).toBe(300);
  });
});

describe("temporary files", () => {
  test("a stale partial file from a killed run is replaced, not appended to, without --resume", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), BLOCK + 77, { seed: 10 });
    fs.writeFileSync(path.join(dst, ".f.escp-part"), Buffer.alloc(3 * BLOCK, 0x5a), { mode: 0o644 });
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(listNames(dst)).toEqual(["f"]);
  });

  test("a tree holding a file and one named as its temporary file copies both, push and pull, into new and existing directories", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    // .a.escp-part comes first in the list; big enough to be in flight while a starts, and the small pair committed before.
    const files = { a: 3 * BLOCK + 9, ".a.escp-part": 2 * BLOCK + 5, b: 50, ".b.escp-part": 7 };
    let seed = 400;
    for (const [name, n] of Object.entries(files)) await makeFile(path.join(src, "t", name), n, { seed: seed++ });
    for (const [from, to] of [[path.join(src, "t"), `${SSH_HOST}:${dst}/push/`], [`${SSH_HOST}:${path.join(src, "t")}`, `${dst}/pull/`]]) {
      fs.mkdirSync(to.replace(`${SSH_HOST}:`, ""));
      for (const round of ["new", "existing"]) {
        const r = await runEscp(["-r", from, to]);
        expect(r.stderr, round).toBe("");
        expect(r.code).toBe(0);
        const there = path.join(to.replace(`${SSH_HOST}:`, ""), "t");
        expect(listNames(there)).toEqual(Object.keys(files).sort());
        for (const name of Object.keys(files)) expect(await sameFile(path.join(src, "t", name), path.join(there, name)), `${there}/${name}`).toBe(true);
      }
    }
  });

  test("--inplace removes the partial file a killed run left beside the target, with --resume too", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), BLOCK + 3, { seed: 18 });
    for (const args of [["--inplace"], ["--inplace", "--resume"]]) {
      fs.writeFileSync(path.join(dst, ".f.escp-part"), Buffer.alloc(BLOCK, 7));
      fs.utimesSync(path.join(dst, ".f.escp-part"), 1_600_000_000, 1_600_000_000);
      const r = await runEscp([...args, path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(listNames(dst), args.join(" ")).toEqual(["f"]);
      expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    }
  });

  test("--resume over a target cut short (a stopped scp or cp) or longer keeps its matching blocks and sends the rest (push, pull)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const big = await makeFile(path.join(src, "big"), 5 * BLOCK, { seed: 19 });
    const bytes = fs.readFileSync(big);
    fs.writeFileSync(path.join(src, "short"), bytes.subarray(0, 3 * BLOCK + BLOCK / 2));
    for (const [dir, run] of [["push", (f: string, d: string) => [path.join(src, f), `${SSH_HOST}:${d}/`]], ["pull", (f: string, d: string) => [`${SSH_HOST}:${path.join(src, f)}`, `${d}/`]]] as const) {
      const to = path.join(dst, dir);
      fs.mkdirSync(to);
      fs.writeFileSync(path.join(to, "big"), bytes.subarray(0, 2 * BLOCK + 100)); // two whole blocks, and part of a third
      fs.writeFileSync(path.join(to, "short"), bytes); // the source was cut to 3.5 blocks since
      for (const [name, skipped] of [["big", 2 * BLOCK], ["short", 3 * BLOCK + BLOCK / 2]] as const) {
        const r = await runEscp(["--resume", "--json", ...run(name, to)]);
        expect([r.code, r.stderr], `${dir} ${name}`).toEqual([0, ""]);
        expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesSkipped, `${dir} ${name}`).toBe(skipped);
        expect(await sameFile(path.join(src, name), path.join(to, name))).toBe(true);
      }
      expect(listNames(to)).toEqual(["big", "short"]);
    }
  });

  test("--resume that finds the target complete removes the partial file a killed run left beside it", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 3 * BLOCK, { seed: 16 });
    expect((await runEscp(["-p", path.join(src, "f"), `${SSH_HOST}:${dst}/`])).code).toBe(0); // same size and mtime to the ns
    fs.writeFileSync(path.join(dst, ".f.escp-part"), Buffer.alloc(BLOCK + 5, 7));
    const r = await runEscp(["--resume", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(listNames(dst)).toEqual(["f"]);
  });
  test("--resume never writes through a hard link planted at the temporary name: the linked file is left as it was", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 3 * BLOCK + 77, { seed: 17 });
    const victim = Buffer.concat([fs.readFileSync(path.join(src, "f")).subarray(0, BLOCK), Buffer.alloc(BLOCK, 0x33)]);
    fs.writeFileSync(path.join(dst, "victim"), victim);
    fs.linkSync(path.join(dst, "victim"), path.join(dst, ".f.escp-part"));
    const r = await runEscp(["--resume", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readFileSync(path.join(dst, "victim")).equals(victim)).toBe(true);
    expect(fs.statSync(path.join(dst, "victim")).nlink).toBe(1);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(listNames(dst)).toEqual(["f", "victim"]);
  });

  test("--resume --verify over a complete, identical target leaves it as it is: same inode, links and holes, nothing sent", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeSparseFile(path.join(src, "f"), 6 * BLOCK, { seed: 19, extents: [[BLOCK, 1000], [4 * BLOCK, BLOCK + 5]] });
    expect((await runEscp(["-p", "--sparse", path.join(src, "f"), `${SSH_HOST}:${dst}/`])).code).toBe(0);
    fs.linkSync(path.join(dst, "f"), path.join(dst, "other-link"));
    const before = fs.statSync(path.join(dst, "f"));
    const r = await runEscp(["--resume", "--verify", "--json", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesSkipped).toBe(6 * BLOCK);
    const after = fs.statSync(path.join(dst, "f"));
    expect({ ino: after.ino, nlink: after.nlink, blocks: after.blocks, mtime: after.mtimeMs }).toEqual({ ino: before.ino, nlink: 2, blocks: before.blocks, mtime: before.mtimeMs });
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(listNames(dst)).toEqual(["f", "other-link"]);
  });

  test("--resume --verify over identical targets writes nothing in their directory: a read-only mount passes, push and pull", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), ro = tmpdir("ro");
    await makeFile(path.join(src, "f"), 6 * BLOCK - 7, { seed: 86 });
    fs.copyFileSync(path.join(src, "f"), path.join(dst, "f"));
    fs.utimesSync(path.join(dst, "f"), 1e9, 1e9); // not the source's time: -p below has one to set
    fs.writeFileSync(path.join(src, "empty"), "");
    fs.writeFileSync(path.join(dst, "empty"), "");
    const dirTime = fs.statSync(dst).mtimeMs;
    expect((await runEscp(["--resume", "--verify", path.join(src, "f"), `${SSH_HOST}:${dst}/`])).code).toBe(0);
    expect(fs.statSync(dst).mtimeMs).toBe(dirTime);
    expect((await run(["mount", "--bind", "-o", "ro", dst, ro])).code).toBe(0);
    try {
      for (const args of [[path.join(src, "f"), path.join(src, "empty"), `${SSH_HOST}:${ro}/`], [`${SSH_HOST}:${path.join(src, "f")}`, `${SSH_HOST}:${path.join(src, "empty")}`, `${ro}/`]]) {
        const r = await runEscp(["--resume", "--verify", ...args]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
      }
      // -p would set the kept target's time, which the mount refuses: said so, and the target is the file, not a temporary one.
      const p = await runEscp(["-p", "--resume", path.join(src, "f"), `${SSH_HOST}:${ro}/`]);
      expect([p.code, p.stderr]).toEqual([1, `escp: ${ro}/f: Read-only file system\n`]);
      // A target that does differ still needs the directory, and says why it cannot have it.
      fs.appendFileSync(path.join(src, "f"), "x");
      const r = await runEscp(["--resume", "--verify", path.join(src, "f"), `${SSH_HOST}:${ro}/`]);
      expect(r.stderr).toBe(`escp: ${ro}/f: Read-only file system\n`);
      expect(r.code).toBe(1);
    } finally {
      await run(["umount", ro]);
    }
    expect(listNames(dst)).toEqual(["empty", "f"]);
  });

  test("--resume --sparse over a same-size target keeps the holes: the copy is not preallocated", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeSparseFile(path.join(src, "s"), 64 * BLOCK, { seed: 92, extents: [[0, BLOCK]] });
    fs.copyFileSync(path.join(src, "s"), path.join(dst, "s"));
    await run(["fallocate", "--dig-holes", path.join(dst, "s")]);
    const fd = fs.openSync(path.join(dst, "s"), "r+");
    fs.writeSync(fd, "X", 100);
    fs.closeSync(fd);
    const r = await runEscp(["--resume", "--sparse", path.join(src, "s"), `${SSH_HOST}:${dst}/`]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(await sameFile(path.join(src, "s"), path.join(dst, "s"))).toBe(true);
    expect(fs.statSync(path.join(dst, "s")).blocks * 512).toBeLessThan(4 * BLOCK);
  });

  test("--resume -p over identical content with another time sets the time on the target itself", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 2 * BLOCK + 9, { seed: 20 });
    fs.utimesSync(path.join(src, "f"), 1_500_000_000, 1_600_000_000);
    fs.copyFileSync(path.join(src, "f"), path.join(dst, "f"));
    const ino = fs.statSync(path.join(dst, "f")).ino;
    const r = await runEscp(["--resume", "-p", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.statSync(path.join(dst, "f")).ino).toBe(ino);
    expect(fs.statSync(path.join(dst, "f")).mtimeMs).toBe(1_600_000_000_000);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(listNames(dst)).toEqual(["f"]);
  });

  test.skipIf(process.getuid?.() !== 0)("--resume as root does not continue a partial file another user owns, nor remove it: it starts over beside it, and the copy is root's", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 3 * BLOCK + 77, { seed: 18 });
    const part = path.join(dst, ".f.escp-part");
    fs.writeFileSync(part, fs.readFileSync(path.join(src, "f")).subarray(0, 2 * BLOCK));
    fs.chownSync(part, 65534, 65534);
    const r = await runEscp(["--resume", "--json", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.trim().split("\n").at(-1)!).bytesSkipped).toBe(0);
    expect(fs.statSync(path.join(dst, "f")).uid).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    // Theirs stays as it was: root removes no other user's file (a copy without --resume does not either).
    expect(listNames(dst)).toEqual([".f.escp-part", "f"]);
    expect(fs.statSync(part).uid).toBe(65534);
    expect(fs.statSync(part).size).toBe(2 * BLOCK);
  });
});

describe("--inplace", () => {
  test("push: an existing target is written where it is (same inode, longer old content cut, its mode kept); a new one is created", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "old"), BLOCK + 5000, { seed: 11 });
    await makeFile(path.join(src, "new"), 700, { seed: 12 });
    fs.writeFileSync(path.join(dst, "old"), Buffer.alloc(3 * BLOCK, 0x5a), { mode: 0o640 });
    fs.chmodSync(path.join(dst, "old"), 0o640);
    fs.linkSync(path.join(dst, "old"), path.join(dst, "other-link"));
    const ino = fs.statSync(path.join(dst, "old")).ino;
    const r = await runEscp(["--inplace", path.join(src, "old"), path.join(src, "new"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.statSync(path.join(dst, "old")).ino).toBe(ino);
    expect(fs.statSync(path.join(dst, "old")).mode & 0o7777).toBe(0o640);
    expect(await sameFile(path.join(src, "old"), path.join(dst, "old"))).toBe(true);
    expect(await sameFile(path.join(src, "old"), path.join(dst, "other-link"))).toBe(true); // one file, seen by both names
    expect(await sameFile(path.join(src, "new"), path.join(dst, "new"))).toBe(true);
    expect(listNames(dst)).toEqual(["new", "old", "other-link"]);
  });

  test("--sparse: the old content where the source has holes is gone (push and pull, -C too)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeSparseFile(path.join(src, "m"), 4 * BLOCK, { seed: 49, extents: [[0, BLOCK], [3 * BLOCK, BLOCK]] });
    for (const [extra, from, to] of [[[], path.join(src, "m"), `${SSH_HOST}:${dst}/`], [["-C"], `${SSH_HOST}:${path.join(src, "m")}`, `${dst}/`]]) {
      await makeFile(path.join(dst, "m"), 4 * BLOCK, { seed: 50 });
      const ino = fs.statSync(path.join(dst, "m")).ino;
      const r = await runEscp(["--inplace", "--sparse", ...(extra as string[]), from as string, to as string]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(fs.statSync(path.join(dst, "m")).ino).toBe(ino);
      expect(await sameFile(path.join(src, "m"), path.join(dst, "m"))).toBe(true);
    }
  });

  test("--sparse onto the very source file (this host through ssh, same path) leaves it whole; a longer target's old blocks become holes", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const m = await makeSparseFile(path.join(src, "m"), 6 * BLOCK + 5, { seed: 51, extents: [[BLOCK, BLOCK], [4 * BLOCK, 2 * BLOCK + 5]] });
    const before = await sha256File(m);
    // The sender reads the file the receiver writes: once emptied up front, it was left empty (exit 0 or
    // "changed while being read", as without --sparse: the writes of the same bytes change its time).
    for (const [from, to] of [[m, `${SSH_HOST}:${m}`], [`${SSH_HOST}:${m}`, m]]) {
      await runEscp(["--inplace", "--sparse", from, to]);
      expect(await sha256File(m)).toBe(before);
    }
    const t = await makeFile(path.join(dst, "m"), 9 * BLOCK, { seed: 52 });
    const r = await runEscp(["--inplace", "--sparse", m, `${SSH_HOST}:${t}`]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(await sameFile(m, t)).toBe(true);
    expect(fs.statSync(t).blocks * 512).toBeLessThan(4 * BLOCK); // 3 blocks and 5 bytes of data
  });

  test("pull -rp: files are written in place, with the source's mode and times", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "t", "a"), 3000, { seed: 13 });
    await makeFile(path.join(src, "t", "sub", "b"), 2 * BLOCK + 1, { seed: 14 });
    fs.chmodSync(path.join(src, "t", "a"), 0o600);
    fs.utimesSync(path.join(src, "t", "sub", "b"), 1_500_000_000, 1_600_000_000);
    fs.mkdirSync(path.join(dst, "t", "sub"), { recursive: true });
    fs.writeFileSync(path.join(dst, "t", "a"), "an older, longer a; it was here before the copy");
    const ino = fs.statSync(path.join(dst, "t", "a")).ino;
    const r = await runEscp(["--inplace", "-rp", `${SSH_HOST}:${path.join(src, "t")}`, `${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.statSync(path.join(dst, "t", "a")).ino).toBe(ino);
    expect(fs.statSync(path.join(dst, "t", "a")).mode & 0o7777).toBe(0o600);
    expect(fs.statSync(path.join(dst, "t", "sub", "b")).mtimeMs).toBe(1_600_000_000_000);
    for (const f of ["a", "sub/b"]) expect(await sameFile(path.join(src, "t", f), path.join(dst, "t", f))).toBe(true);
    expect(listNames(path.join(dst, "t"))).toEqual(["a", "sub"]);
  });

  test("with --resume, the whole blocks the target already holds are not sent again", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 4 * BLOCK + 10, { seed: 15 });
    fs.writeFileSync(path.join(dst, "f"), fs.readFileSync(path.join(src, "f")).subarray(0, 3 * BLOCK));
    const ino = fs.statSync(path.join(dst, "f")).ino;
    const r = await runEscp(["--inplace", "--resume", "--json", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(summary.bytesSkipped).toBe(3 * BLOCK);
    expect(fs.statSync(path.join(dst, "f")).ino).toBe(ino);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(listNames(dst)).toEqual(["f"]);
  });

});

describe("the other end's messages", () => {
  test("a warning the other end prints reaches the user even when it comes after the report", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), logs = tmpdir("log");
    await makeFile(path.join(src, "t", "f"), 10, { seed: 71 });
    expect(Bun.spawnSync(["mkfifo", path.join(src, "t", "pipe")]).exitCode).toBe(0);
    // The remote escp's stderr reaches ssh half a second late, long after its report on stdout.
    const remote = path.join(logs, "remote.sh");
    fs.writeFileSync(remote, `#!/bin/bash\nexec 2> >(sleep 0.5; cat >&2)\nexec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    const r = await runEscp(["-r", `${SSH_HOST}:${path.join(src, "t")}`, `${dst}/`], { env: { ESCP_REMOTE: remote } });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`${path.join(src, "t", "pipe")}: not a regular file, skipped`);
    expect(await sameFile(path.join(src, "t", "f"), path.join(dst, "t", "f"))).toBe(true);
  });

  test("text a shell startup file prints before escp starts is skipped with a warning (scp and rsync give up); text and no escp is still an error", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), bin = tmpdir("bin");
    await makeFile(path.join(src, "f"), 3 * BLOCK, { seed: 73 });
    const noisy = path.join(bin, "noisy.sh"), only = path.join(bin, "only-text.sh");
    fs.writeFileSync(noisy, `#!/bin/sh\necho "Last login: Fri Nov 27 on pts/0"\necho "Welcome to the cluster"\nexec ${ESCP_BIN} "$@"\n`, { mode: 0o755 });
    fs.writeFileSync(only, `#!/bin/sh\necho "This account is restricted"\nexit 1\n`, { mode: 0o755 });
    for (const [from, to] of [[path.join(src, "f"), `${SSH_HOST}:${dst}/pushed`], [`${SSH_HOST}:${path.join(src, "f")}`, path.join(dst, "pulled")]]) {
      const r = await runEscp([from, to], { env: { ESCP_REMOTE: noisy } });
      expect(r.stderr).toBe(`escp: warning: ${SSH_HOST} printed "Last login: Fri Nov 27 on pts/0 Welcome to the cluster" before escp started (a shell startup file? make non-interactive shells silent)\n`);
      expect(r.code).toBe(0);
    }
    for (const name of ["pushed", "pulled"]) expect(await sameFile(path.join(src, "f"), path.join(dst, name))).toBe(true);
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/never`], { env: { ESCP_REMOTE: only } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`escp: ${SSH_HOST} printed text where escp expected its protocol: "This account is restricted"`);
    expect(fs.existsSync(path.join(dst, "never"))).toBe(false);
  });

  test("a remote that echoes escp's input back (a forced command such as cat) is named for what it did", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), bin = tmpdir("bin");
    await makeFile(path.join(src, "f"), 10, { seed: 74 });
    const echo = path.join(bin, "echo.sh");
    fs.writeFileSync(echo, "#!/bin/sh\nexec cat\n", { mode: 0o755 });
    const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: echo }, timeoutMs: 30_000 });
    expect(r.stderr).toBe(`escp: ${SSH_HOST} sent back escp's own first message instead of starting escp (a forced command in authorized_keys?)\n`);
    expect(r.code).toBe(1);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("escp waits for its ssh to exit, so time(1) counts ssh's CPU in escp's", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), bin = tmpdir("bin");
    await makeFile(path.join(src, "f"), 10, { seed: 72 });
    // An ssh that, after the session, closes its output and then works for ~0.5 s of CPU:
    // an escp that left at the end of ssh's output would not have waited for that.
    const ssh = path.join(bin, "busy-ssh");
    fs.writeFileSync(ssh, `#!/bin/bash\nssh "$@"; rc=$?\nexec >&- 2>&-\nn=0\nwhile ((n < 200000)); do n=$((n + 1)); done\nexit $rc\n`, { mode: 0o755 });
    const r = await run(["/usr/bin/time", "-f", "escp-cpu %U %S", ESCP_BIN, "-F", (await startSshd()).configPath, "-S", ssh, path.join(src, "f"), `${SSH_HOST}:${dst}/`], {
      env: { ESCP_REMOTE: ESCP_BIN }, timeoutMs: 60_000,
    });
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    const m = /escp-cpu ([\d.]+) ([\d.]+)/.exec(r.stderr);
    expect(m).not.toBeNull();
    expect(Number(m![1]) + Number(m![2])).toBeGreaterThan(0.3);
  });
});

describe("socket buffers (--sockbuf)", () => {
  test("the buffers asked for are granted on both ends and logged", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), logs = tmpdir("log");
    await makeFile(path.join(src, "f"), 4 * BLOCK + 5, { seed: 8 });
    const local = path.join(logs, "escp.log");
    const r = await runEscp(["--sockbuf", "3M", "--log", local, path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    const lines = fs.readFileSync(local, "utf8").split("\n").filter((l) => l.includes("socket buffers"));
    // Both processes append to the one file (local and remote are the same host here).
    expect(lines.length).toBe(2);
    for (const l of lines) expect(l).toMatch(/asked=3145728 send=3145728 receive=3145728/);
  });

  test("--sockbuf 1G, the most it takes, is granted to root without a word (the kernel grants 1 GiB less a byte)", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 2 * BLOCK, { seed: 10 });
    const r = await runEscp(["--sockbuf", "1G", path.join(src, "f"), `${SSH_HOST}:${dst}/`]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test("buffers the kernel will not grant are named with the sysctl to raise, and the copy still succeeds", async () => {
    // root may exceed net.core.[rw]mem_max (SO_RCVBUFFORCE): this local copy runs as nobody.
    await asNobody(async ({ src, dst, escp }) => {
      await makeFile(path.join(src, "f"), 2 * BLOCK, { seed: 9 });
      const r = await escp(["--sockbuf", "1G", path.join(src, "f"), `${dst}/`]);
      expect(r.code).toBe(0);
      expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
      const warnings = r.stderr.trim().split("\n");
      expect(warnings.length).toBe(2); // this end and the other (a local copy has both here)
      for (const w of warnings) {
        expect(w).toMatch(/^escp: warning: (.*: )?--sockbuf 1\.00GiB was not granted: this kernel allows .* \(net\.core\.wmem_max, net\.core\.rmem_max\)/);
        expect(w).toContain("sysctl -w net.core.wmem_max=1073741824 net.core.rmem_max=1073741824");
      }
    });
  });
});

/** An empty filesystem of `blocks` blocks, made by mkfs (the image's path is added) and mounted as mount(image, mountPoint) says: its mount point. */
function mountImage(name: string, blocks: number, mkfs: string[], mount: (img: string, at: string) => string[]): string {
  const dir = tmpdir(name), img = path.join(dir, "img"), at = path.join(dir, "mnt");
  fs.mkdirSync(at);
  fs.closeSync(fs.openSync(img, "w"));
  fs.truncateSync(img, blocks * BLOCK);
  expect(Bun.spawnSync([...mkfs, img]).exitCode).toBe(0);
  expect(Bun.spawnSync(mount(img, at)).exitCode).toBe(0);
  return at;
}

/** Copies A, a, Big and BIG into mnt/case: one of each pair arrives whole, the other is named as not copied. */
async function caseTwinsRefused(mnt: string): Promise<void> {
  const src = tmpdir("src");
  fs.mkdirSync(path.join(src, "t"));
  fs.writeFileSync(path.join(src, "t", "A"), "upper\n");
  fs.writeFileSync(path.join(src, "t", "a"), "lower\n");
  await makeFile(path.join(src, "t", "Big"), 3 * BLOCK, { seed: 22 });
  await makeFile(path.join(src, "t", "BIG"), 3 * BLOCK, { seed: 23 });
  const r = await runEscp(["-r", path.join(src, "t"), `${SSH_HOST}:${mnt}/case`]);
  expect(r.code).toBe(1);
  const lines = r.stderr.trim().split("\n").sort();
  expect(lines.length).toBe(2);
  for (const l of lines) expect(l).toMatch(new RegExp(`^escp: ${mnt}/case/(a|A|Big|BIG): this filesystem ignores case, and ${mnt}/case/(a|A|Big|BIG), copied before it, has the same name here: not copied$`));
  // Whichever of each pair came first is there, whole, under its own name.
  for (const pair of [["A", "a"], ["Big", "BIG"]]) {
    const kept = pair.find((n) => !r.stderr.includes(`${mnt}/case/${n}:`))!;
    expect(await sameFile(path.join(src, "t", kept), path.join(mnt, "case", kept))).toBe(true);
  }
  // The two kept, and no probe file left behind.
  expect(fs.readdirSync(path.join(mnt, "case")).length).toBe(2);
}

// A FAT filesystem through FUSE (fusefat), as on a USB stick: names that differ only in
// case are one file there, it keeps no modes, and it mishandled O_DIRECT writes.
const fatReady = process.getuid?.() === 0 && fs.existsSync("/dev/fuse") && Bun.which("fusefat") !== null && Bun.which("mkfs.vfat") !== null;
describe.skipIf(!fatReady)("into a FAT filesystem (fusefat)", () => {
  let mnt = "";
  beforeAll(() => {
    mnt = mountImage("fat", 96, ["mkfs.vfat"], (img, at) => ["fusefat", "-o", "rw+", img, at]);
  });
  afterAll(() => {
    if (mnt) Bun.spawnSync(["umount", mnt]);
  });

  test("names that differ only in case: the first is copied, the others named as not copied, exit 1", async () => {
    await caseTwinsRefused(mnt);
  });

  test("files of several blocks with an unaligned end arrive whole, and -p --resume over them succeeds", async () => {
    const src = tmpdir("src");
    for (const [n, size] of [["f1", BLOCK + 1], ["f3", 3 * BLOCK - 5]] as const) await makeFile(path.join(src, n), size, { seed: size });
    for (const args of [[], ["-p", "--resume"]]) {
      const r = await runEscp([...args, path.join(src, "f1"), path.join(src, "f3"), `${SSH_HOST}:${mnt}/`]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      for (const n of ["f1", "f3"]) expect(await sameFile(path.join(src, n), path.join(mnt, n))).toBe(true);
    }
  });

  test("a file of many blocks arrives whole over the default streams, pushed and pulled (fusefat drops blocks written out of order)", async () => {
    // Data then zeros, as the failure showed: the blocks after the first went missing or moved, exit 0.
    const src = tmpdir("src"), file = path.join(src, "z");
    await makeFile(file, 2_000_000, { seed: 84 });
    fs.appendFileSync(file, Buffer.alloc(3_000_000));
    for (let i = 0; i < 3; i++) {
      for (const [from, to] of [[file, `${SSH_HOST}:${mnt}/z`], [`${SSH_HOST}:${file}`, `${mnt}/z`]]) {
        fs.rmSync(path.join(mnt, "z"), { force: true });
        const r = await runEscp([from, to]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(await sameFile(file, path.join(mnt, "z"))).toBe(true);
      }
    }
  });

  test("a FUSE directory below the target's root (the streams are not cut there): each file is read back, never left wrong", async () => {
    const src = tmpdir("src"), file = path.join(src, path.basename(mnt), "big");
    fs.mkdirSync(path.dirname(file));
    await makeFile(file, 12 * BLOCK + 3, { seed: 88 });
    for (let i = 0; i < 3; i++) {
      fs.rmSync(path.join(mnt, "big"), { force: true });
      const r = await runEscp(["-r", "-t", "8", path.dirname(file), `${SSH_HOST}:${path.dirname(mnt)}/`]);
      // Whole, or refused saying why and what to do: fusefat loses some of several streams' writes.
      if (r.code === 0) expect(await sameFile(file, path.join(mnt, "big"))).toBe(true);
      else expect(r.stderr).toMatch(/big: .*\(on FUSE, where the writes of several streams can be lost or refused: copy into it with -t 1\)\n$/);
      if (r.code !== 0) expect(fs.existsSync(path.join(mnt, "big"))).toBe(false);
    }
  });

  test("--resume over a same-size target there sends what differs in order, so the file ends whole (push, pull)", async () => {
    const src = tmpdir("src"), file = path.join(src, "r");
    await makeFile(file, 6 * BLOCK, { seed: 89 });
    for (const [from, to] of [[file, `${SSH_HOST}:${mnt}/`], [`${SSH_HOST}:${file}`, `${mnt}/`]]) {
      const changed = Buffer.from(fs.readFileSync(file));
      changed[3 * BLOCK + 100] ^= 0xff;
      fs.writeFileSync(path.join(mnt, "r"), changed);
      fs.utimesSync(path.join(mnt, "r"), 1e9, 1e9);
      const r = await runEscp(["--resume", from, to]);
      expect([r.code, r.stderr]).toEqual([0, ""]);
      expect(await sameFile(file, path.join(mnt, "r"))).toBe(true);
    }
  });

  test("--inplace and --sparse write there too (fusefat refuses any ftruncate, even to the size a file has)", async () => {
    const src = tmpdir("src");
    await makeFile(path.join(src, "i"), 3 * BLOCK + 5, { seed: 93 });
    for (const args of [["--inplace"], ["--sparse"]]) {
      fs.rmSync(path.join(mnt, "i"), { force: true });
      const r = await runEscp([...args, path.join(src, "i"), `${SSH_HOST}:${mnt}/`]);
      expect([r.code, r.stderr]).toEqual([0, ""]);
      expect(await sameFile(path.join(src, "i"), path.join(mnt, "i"))).toBe(true);
    }
  });

  test("a FAT32 that reports no size (statfs: 0 blocks, 0 free) still takes files: free space unknown is not none", async () => {
    const fat32 = mountImage("fat32", 96, ["mkfs.vfat", "-F", "32"], (img, at) => ["fusefat", "-o", "rw+", img, at]);
    try {
      expect(fs.statfsSync(fat32).blocks).toBe(0);
      const src = tmpdir("src");
      await makeFile(path.join(src, "f"), 3 * BLOCK, { seed: 85 });
      const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${fat32}/`]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(await sameFile(path.join(src, "f"), path.join(fat32, "f"))).toBe(true);
    } finally {
      Bun.spawnSync(["umount", fat32]);
    }
  });
});

// exFAT through exfat-fuse on a loop device: the mount says only "fuseblk", so the
// destination directory is asked whether it tells "A" from "a".
const exfatReady = fatReady && Bun.which("mount.exfat-fuse") !== null && Bun.which("mkfs.exfat") !== null && Bun.which("losetup") !== null;
describe.skipIf(!exfatReady)("into an exFAT filesystem (exfat-fuse, a plain fuseblk mount)", () => {
  let mnt = "", loop = "";
  beforeAll(() => {
    mnt = mountImage("exfat", 64, ["mkfs.exfat"], (img, at) => {
      const l = Bun.spawnSync(["losetup", "-f", "--show", img]); // it takes only a block device
      expect(l.exitCode).toBe(0);
      loop = l.stdout.toString().trim();
      return ["mount.exfat-fuse", loop, at];
    });
  });
  afterAll(() => {
    if (mnt) Bun.spawnSync(["umount", mnt]);
    if (loop) Bun.spawnSync(["losetup", "-d", loop]);
  });

  test("names that differ only in case: the first is copied, the others named as not copied, exit 1", async () => {
    // What makes it a question: the mount's type names no filesystem.
    const line = fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n").find((l) => l.includes(` ${mnt} `));
    expect(line).toMatch(/ - fuseblk /);
    await caseTwinsRefused(mnt);
  });
});

// NTFS through ntfs-3g on an image file: a FUSE mount too ("fuse"), whose new names keep
// their case (NTFS's POSIX namespace), so asking must not refuse "a" after "A".
const ntfsReady = fatReady && Bun.which("ntfs-3g") !== null && Bun.which("mkntfs") !== null;
describe.skipIf(!ntfsReady)("into an NTFS filesystem (ntfs-3g, a FUSE mount that keeps case)", () => {
  let mnt = "";
  beforeAll(() => {
    mnt = mountImage("ntfs", 16, ["mkntfs", "-F", "-Q"], (img, at) => ["ntfs-3g", img, at]);
  });
  afterAll(() => {
    if (mnt) Bun.spawnSync(["umount", mnt]);
  });

  test("names that differ only in case all arrive, and no probe file stays", async () => {
    const src = tmpdir("src");
    fs.mkdirSync(path.join(src, "t"));
    for (const n of ["A", "a", "Big", "BIG"]) fs.writeFileSync(path.join(src, "t", n), `${n}\n`);
    const r = await runEscp(["-r", path.join(src, "t"), `${SSH_HOST}:${mnt}/case`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readdirSync(path.join(mnt, "case")).sort()).toEqual(["A", "BIG", "Big", "a"]);
    for (const n of ["A", "a", "Big", "BIG"]) expect(fs.readFileSync(path.join(mnt, "case", n), "utf8")).toBe(`${n}\n`);
  });
});
