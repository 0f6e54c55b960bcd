/**
 * The library API (src/index.ts): the example program, run as a user would
 * run it, and transfer() in this process — events by iterator and by
 * EventEmitter, the result, and errors that come back as results.
 */
import { test, expect, describe } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { REPO_ROOT, run, tmpdir, makeFile, sameFile } from "./harness.ts";
import { transfer, resolveOptions, type TransferEvent } from "../src/index.ts";

const MiB = 1 << 20;
const BUN = process.execPath;

describe("examples/copy.ts", () => {
  test("copies a file and prints its session, progress and summary", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const from = path.join(src, "example.bin"), to = path.join(dst, "copied.bin");
    await makeFile(from, 24 * MiB + 3, { seed: 60 });
    const r = await run([BUN, path.join(REPO_ROOT, "examples/copy.ts"), from, to], { cwd: tmpdir("cwd") });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^session: local to localhost, 2 streams, escp \d+\.\d+\.\d+/);
    expect(lines).toContain(`start: ${from} (24.0MiB)`);
    expect(lines).toContain(`done: ${from}`);
    expect(lines.at(-1)).toMatch(new RegExp(`^summary: 1 files, ${24 * MiB + 3} bytes in [\\d.]+ s, network \\d+, disk ${24 * MiB + 3}, exit 0$`));
    expect(await sameFile(from, to)).toBe(true);
  });

  test("exits with escp's status when the copy fails", async () => {
    const dst = tmpdir("dst");
    const r = await run([BUN, path.join(REPO_ROOT, "examples/copy.ts"), path.join(dst, "no-such-file"), path.join(dst, "x")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`failed: ${path.join(dst, "no-such-file")}: No such file or directory`);
  });
});

describe("transfer()", () => {
  test("iterator and EventEmitter see the same events; the result carries the summary", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "a"), 3 * MiB, { seed: 61 });
    await makeFile(path.join(src, "b"), 1000, { seed: 62 });
    const t = transfer([path.join(src, "a"), path.join(src, "b")], dst + "/", { threads: 2 });
    const heard: TransferEvent["event"][] = [];
    const done: string[] = [];
    t.on("event", (e) => heard.push(e.event));
    t.on("file_done", (e) => done.push(path.basename(e.path)));
    const seen: TransferEvent[] = [];
    for await (const e of t) seen.push(e);
    const r = await t;
    expect(seen.map((e) => e.event)).toEqual(heard);
    expect(seen[0]).toMatchObject({ event: "session", direction: "local", streams: 2, role: "sender" });
    expect(seen.at(-1)).toMatchObject({ event: "summary", files: 2, bytes: 3 * MiB + 1000, exit: 0 });
    expect(done.sort()).toEqual(["a", "b"]);
    expect(r).toMatchObject({ ok: true, exitCode: 0, failures: [] });
    expect(r.summary).toBe(seen.at(-1) as any);
    expect(await sameFile(path.join(src, "a"), path.join(dst, "a"))).toBe(true);
  });

  test("failed files: ok false, exit code 1, each failure once", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "here"), 10, { seed: 63 });
    const r = await transfer([path.join(src, "here"), path.join(src, "gone")], dst + "/");
    expect(r.ok).toBe(false);
    expect(r.exitCode).toBe(1);
    expect(r.failures).toEqual([{ path: path.join(src, "gone"), message: "No such file or directory" }]);
    expect(r.summary).toMatchObject({ files: 1, failures: 1 });
  });

  test("bad operands and options come back as usage errors, never as exceptions", async () => {
    const dst = tmpdir("dst");
    const r1 = await transfer("a", "scp://host:99999/x");
    expect(r1).toMatchObject({ ok: false, exitCode: 2, usage: true });
    expect(r1.error).toBeTruthy();
    const events: TransferEvent[] = [];
    const t = transfer("a", dst, { threads: 0 });
    t.on("error", (e) => events.push(e));
    expect(await t).toMatchObject({ exitCode: 2, usage: true, error: "threads needs a number from 1 to 64, got 0" });
    expect(events).toHaveLength(1);
    expect((await transfer([], dst)).error).toBe("no sources given");
    // An unheard "error" event does not throw.
    expect((await transfer("a", dst, { blockSize: 1000 })).exitCode).toBe(2);
  });

  test("abort() interrupts: exit code 130", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "slow"), 64 * MiB, { seed: 64 });
    const t = transfer(path.join(src, "slow"), dst + "/", { limitKbps: 80_000 }); // ~10 MB/s: several seconds
    t.on("progress", (e) => e.bytesDisk > 0 && t.abort());
    const r = await t;
    expect(r).toMatchObject({ ok: false, exitCode: 130, interrupted: true, error: "interrupted" });
    expect(fs.existsSync(path.join(dst, "slow"))).toBe(false);
  });

  test("options default as on the command line, with quiet on", () => {
    const o = resolveOptions({ recursive: true });
    expect(o).toMatchObject({ recursive: true, quiet: true, threads: 4, blockSize: MiB, ports: [1232, 1242] });
  });
});
