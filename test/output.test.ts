/**
 * What users see: the progress display on a terminal (run under `script`, a
 * pseudo-terminal, and replayed on a small screen model), -q and non-terminal
 * silence, --json events and their figures, and the -v / --log debug logs.
 * All copies are local (both ends on this host, no sshd), so this file is quick.
 */
import { test, expect, describe } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { ESCP_BIN, SSH_HOST, asNobody, run, runEscp, startSshd, tmpdir, makeFile, sameFile } from "./harness.ts";
import { renderLines, Tally, TtyProgress, formatBytes, formatEta } from "../src/progress.ts";
import { Report, summaryLines, failedLine, type TransferEvent, type SummaryEvent } from "../src/report.ts";
import { formatLine } from "../src/log.ts";
import { spoolSource } from "../src/session/relay.ts";

const MiB = 1 << 20;

/**
 * Runs escp with stdout and stderr on a pseudo-terminal `cols` wide; returns the raw bytes written to it.
 * With `ssh`, as runEscp does: the test sshd's config first, the remote escp is this one.
 */
async function inTerminal(args: string[], cols = 100, ssh?: { config: string }): Promise<{ code: number; raw: string }> {
  const argv = [ESCP_BIN, ...(ssh ? ["-F", ssh.config] : []), ...args];
  const quoted = argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(" ");
  // script(1) gives the command a pty; its own exit status is the command's (-e).
  const r = await run(["script", "-qefc", `stty cols ${cols} rows 40; exec ${quoted}`, "/dev/null"], {
    timeoutMs: 60_000,
    env: { ESCP_REMOTE: ESCP_BIN },
  });
  return { code: r.code, raw: r.stdout };
}

/**
 * The screen a terminal shows after `raw`: printable text, \r, \n, erase to
 * end of line (ESC [ K), cursor up (ESC [ n A); colours and other escapes are
 * dropped. Enough to check that the progress display leaves no debris.
 */
function screen(raw: string, cols: number): string[] {
  const rows: string[][] = [[]];
  let y = 0, x = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (c === "\x1b") {
      const m = /^\x1b\[([0-9;?]*)([A-Za-z])/.exec(raw.slice(i));
      if (!m) continue;
      i += m[0].length - 1;
      const n = Number(m[1] || 1);
      if (m[2] === "K") rows[y].length = Math.min(rows[y].length, x);
      else if (m[2] === "A") y = Math.max(0, y - n);
      else if (m[2] === "J") {
        // From the cursor to the end of the screen.
        rows[y].length = Math.min(rows[y].length, x);
        rows.length = y + 1;
      }
      continue;
    }
    if (c === "\r") x = 0;
    else if (c === "\n") {
      y++;
      rows[y] ??= [];
    } else {
      if (x >= cols) {
        // Auto-wrap, as a terminal does: a line as wide as the screen would break the display.
        y++;
        x = 0;
      }
      rows[y] ??= [];
      while (rows[y].length < x) rows[y].push(" ");
      rows[y][x++] = c;
    }
  }
  return rows.map((r) => r.join("").trimEnd()).filter((r, i, a) => r !== "" || i < a.length - 1);
}

function jsonLines(stdout: string): TransferEvent[] {
  return stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

describe("progress on a terminal", () => {
  test("one file: name, percent, rate and ETA while it runs; one clean summary line at the end", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "progress-one.bin"), 48 * MiB, { seed: 1 });
    // -l keeps the copy at ~1.5 s so the display is drawn several times (every 200 ms).
    const { code, raw } = await inTerminal(["-l", "256000", path.join(src, "progress-one.bin"), dst + "/"], 100);
    expect(code).toBe(0);
    expect(raw).toMatch(/progress-one\.bin +\d{1,3}% +[\d.]+[KMG]?i?B +[\d.]+[KMG]?i?B\/s \d\d:\d\d ETA/);
    expect(raw).toContain("\x1b[K");
    const lines = screen(raw, 100);
    // Everything the display drew is gone; what stays is the summary, in one line that fits.
    expect(lines.join("\n")).not.toContain("ETA");
    expect(lines.length).toBe(1);
    expect(lines[0]).toMatch(/^\S+  1 file, 48\.0MiB in [\d.]+ s · [\d.]+[KMG]iB\/s \([\d.]+ [kMG]bit\/s\) · 4 streams/);
    expect(lines[0].length).toBeLessThan(100);
    expect(await sameFile(path.join(src, "progress-one.bin"), path.join(dst, "progress-one.bin"))).toBe(true);
  });

  test("many files: a total line under the file line, both redrawn in place and erased", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let i = 0; i < 6; i++) await makeFile(path.join(src, `f${i}.bin`), 8 * MiB, { seed: 10 + i });
    const { code, raw } = await inTerminal(["-r", "-l", "256000", src, dst + "/"], 80);
    expect(code).toBe(0);
    expect(raw).toMatch(/\d+\/6 files +[\d.]+[KMG]?i?B\/48\.0MiB +\d+% /);
    expect(raw).toContain("\x1b[1A"); // back up to the file line: two lines updated in place
    const lines = screen(raw, 80);
    expect(lines.join("\n")).not.toMatch(/ETA|files +[\d.]/);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^\S+  6 files, 48\.0MiB in /);
    // Never wider than the terminal, so a redraw never wraps.
    for (const frame of raw.split(/\r|\n/)) expect(frame.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "").length).toBeLessThanOrEqual(80);
  });

  test("a failure is printed on its own line and named in the summary", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "good.bin"), MiB, { seed: 3 });
    // Wide enough that no message wraps, whatever the length of the test's temporary paths.
    const { code, raw } = await inTerminal([path.join(src, "good.bin"), path.join(src, "missing.bin"), dst + "/"], 400);
    expect(code).toBe(1);
    const lines = screen(raw, 400);
    expect(lines).toContain(`escp: ${path.join(src, "missing.bin")}: No such file or directory`);
    expect(lines.at(-2)).toMatch(/^\S+  1 file, 1\.00MiB in [\d.]+ s, 1 failed/);
    expect(lines.at(-1)).toBe(`│  failed: ${path.join(src, "missing.bin")}`);
  });

  test("-q on a terminal prints nothing when all goes well", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "q.bin"), 4 * MiB, { seed: 4 });
    const { code, raw } = await inTerminal(["-q", path.join(src, "q.bin"), dst + "/"]);
    expect(code).toBe(0);
    expect(raw).toBe("");
    expect(await sameFile(path.join(src, "q.bin"), path.join(dst, "q.bin"))).toBe(true);
  });
});

describe("not a terminal", () => {
  test("stdout that is not a terminal gets nothing on success, stderr neither", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "p.bin"), 4 * MiB, { seed: 5 });
    const r = await runEscp([path.join(src, "p.bin"), dst + "/"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe("");
  });

  test("errors still reach stderr, one line each, with -q", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const r = await runEscp(["-q", path.join(src, "nope"), dst + "/"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(`escp: ${path.join(src, "nope")}: No such file or directory\n`);
  });

  test("a directory that cannot be made is one line, with a count of what it held; --json lists each", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (const f of ["sub/f1", "sub/f2", "sub/deep/g1"]) await makeFile(path.join(src, "tree", f), 100);
    await makeFile(path.join(src, "tree", "ok"), 100);
    fs.mkdirSync(path.join(dst, "tree"));
    fs.writeFileSync(path.join(dst, "tree", "sub"), "a file where the directory goes\n");
    const sub = path.join(dst, "tree", "sub");
    const r = await runEscp(["-r", path.join(src, "tree"), dst + "/"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`escp: ${sub}: exists and is not a directory\nescp: ${sub}: 4 entries under it not copied either\n`);
    expect(fs.readFileSync(path.join(dst, "tree", "ok")).length).toBe(100);
    const j = await runEscp(["--json", "-r", path.join(src, "tree"), dst + "/"]);
    const failed = j.stdout.trim().split("\n").map((l) => JSON.parse(l)).filter((e) => e.event === "file_failed").map((e) => e.path);
    expect(failed.sort()).toEqual([sub, `${sub}/deep`, `${sub}/deep/g1`, `${sub}/f1`, `${sub}/f2`]);
  });
});

describe("--json", () => {
  test("session, file_start, file_done and summary with the right byte counts", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    const sizes = [3 * MiB + 7, 0, 12345];
    for (const [i, n] of sizes.entries()) await makeFile(path.join(src, `j${i}`), n, { seed: 20 + i });
    const r = await runEscp(["--json", "-r", src, dst + "/"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const events = jsonLines(r.stdout);
    for (const e of events) expect(Date.parse(e.time)).toBeGreaterThan(0);
    const session = events[0];
    expect(session).toMatchObject({ event: "session", direction: "local", role: "sender", host: "localhost", streams: 4, blockSize: MiB });
    expect(typeof (session as any).port).toBe("number");
    expect(typeof (session as any).version).toBe("string");
    const done = events.filter((e) => e.event === "file_done") as any[];
    expect(done.map((e) => [path.basename(e.path), e.size]).sort()).toEqual(sizes.map((n, i) => [`j${i}`, n]).sort());
    expect(events.filter((e) => e.event === "file_start")).toHaveLength(3);
    for (const p of events.filter((e) => e.event === "progress") as any[]) {
      for (const k of ["bytesDisk", "bytesNetwork", "bytesCompressed", "seconds", "filesDone", "filesStarted", "bytesDone", "bytesStarted", "rate"]) {
        expect(typeof p[k]).toBe("number");
      }
    }
    const s = events.at(-1) as SummaryEvent;
    const total = sizes.reduce((a, b) => a + b, 0);
    expect(s).toMatchObject({ event: "summary", files: 3, bytes: total, bytesSkipped: 0, bytesDisk: total, bytesCompressed: total, failures: 0, failed: [], streams: 4, exit: 0 });
    expect(s.bytesNetwork).toBeGreaterThanOrEqual(total);
    expect(s.seconds).toBeGreaterThan(0);
    expect(s.rate).toBe(Math.round(total / s.seconds));
    for (const [i] of sizes.entries()) expect(await sameFile(path.join(src, `j${i}`), path.join(dst, path.basename(src), `j${i}`))).toBe(true);
  });

  test("a copy opens a data stream per block it moves, at most -t; a directory gets all of -t", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "one"), 1, { seed: 21 });
    await makeFile(path.join(src, "two"), MiB + 1, { seed: 22 });
    const streams = async (args: string[]) => {
      const r = await runEscp(["--json", ...args]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const events = jsonLines(r.stdout);
      expect((events.at(-1) as SummaryEvent).streams).toBe((events[0] as any).streams);
      return (events[0] as any).streams;
    };
    expect(await streams([path.join(src, "one"), dst + "/a"])).toBe(1);
    expect(await streams([path.join(src, "one"), path.join(src, "two"), dst + "/"])).toBe(3);
    expect(await streams(["-t", "2", path.join(src, "two"), dst + "/b"])).toBe(2);
    expect(await streams(["-r", src, dst + "/c"])).toBe(4);
    for (const [from, to] of [["one", "a"], ["one", "one"], ["two", "two"], ["two", "b"], ["one", "c/one"], ["two", "c/two"]]) {
      expect(await sameFile(path.join(src, from!), path.join(dst, to!))).toBe(true);
    }
  });

  test("a reader that stops early (| head -1) ends the events, not the copy", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(src, `f${i}`), `file ${i}\n`);
    const r = await run(["bash", "-c", `'${ESCP_BIN}' --json -r '${src}' '${dst}/' | head -1; echo "escp exit \${PIPESTATUS[0]}"`], { timeoutMs: 60_000 });
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/^\{"event":"session",.*\}\nescp exit 0\n$/);
    const out = path.join(dst, path.basename(src));
    expect(fs.readdirSync(out).sort()).toEqual(fs.readdirSync(src).sort());
    for (let i = 0; i < 300; i++) expect(fs.readFileSync(path.join(out, `f${i}`), "utf8")).toBe(`file ${i}\n`);
  });

  test("failures: file_failed, then a summary that names them, exit status 1", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "ok"), 1000, { seed: 30 });
    const r = await runEscp(["--json", path.join(src, "ok"), path.join(src, "absent"), dst + "/"]);
    expect(r.code).toBe(1);
    const events = jsonLines(r.stdout);
    expect(events.find((e) => e.event === "file_failed")).toMatchObject({ path: path.join(src, "absent"), message: "No such file or directory" });
    expect(events.at(-1)).toMatchObject({ event: "summary", files: 1, bytes: 1000, failures: 1, exit: 1, failed: [{ path: path.join(src, "absent") }] });
    expect(r.stderr).toBe(`escp: ${path.join(src, "absent")}: No such file or directory\n`);
  });

  test("sources from several places: one summary counts them all, and ends the events even when the last place fails", async () => {
    await startSshd();
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "here"), 2000, { seed: 40 });
    await makeFile(path.join(src, "there"), 3 << 20, { seed: 41 });
    const both = await runEscp(["--json", path.join(src, "here"), `${SSH_HOST}:${src}/there`, dst + "/"]);
    expect([both.code, both.stderr]).toEqual([0, ""]);
    const events = jsonLines(both.stdout);
    expect(events.filter((e) => e.event === "summary")).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({ event: "summary", files: 2, bytes: 2000 + (3 << 20), failures: 0, exit: 0 });
    const lastFails = await runEscp(["--json", "-o", "ConnectTimeout=5", `${SSH_HOST}:${src}/there`, path.join(src, "here"), "nosuch.invalid:/x", dst + "/"]);
    expect(lastFails.code).toBe(1);
    const after = jsonLines(lastFails.stdout);
    expect(after.at(-1)).toMatchObject({ event: "summary", files: 2, failures: 1, exit: 1 });
    expect((after.at(-1) as SummaryEvent).failed[0].message).toMatch(/^nosuch\.invalid: ssh failed/);
  });

  test("a session that cannot run ends with an error event", async () => {
    const src = tmpdir("src");
    await makeFile(path.join(src, "x"), 10, { seed: 31 });
    const r = await runEscp(["--json", path.join(src, "x"), "/nonexistent-escp-dir/sub/x"]);
    expect(r.code).toBe(1);
    const events = jsonLines(r.stdout);
    expect(events.at(-1)).toMatchObject({ event: "error", exit: 1, failed: [] });
    expect((events.at(-1) as any).message).toContain("/nonexistent-escp-dir");
  });
});

describe("logs", () => {
  test("a --log that cannot be written is a warning in the C library's words, and the copy goes on", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), log = path.join(tmpdir("logs"), "missing", "x.log");
    await makeFile(path.join(src, "f"), 1000, { seed: 42 });
    const r = await runEscp(["--log", log, path.join(src, "f"), `${dst}/`]);
    expect(r.code).toBe(0);
    expect(r.stderr).toStartWith(`escp: warning: cannot write the log ${log}: No such file or directory\n`);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  });

  test("--log FILE: both ends append timestamped lines with their role, stream and file ids", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst"), logs = tmpdir("logs");
    await makeFile(path.join(src, "l.bin"), 4 * MiB, { seed: 40 });
    const file = path.join(logs, "escp.log");
    const r = await runEscp(["-v", "--log", file, path.join(src, "l.bin"), path.join(src, "gone"), dst + "/"]);
    expect(r.code).toBe(1);
    const lines = fs.readFileSync(file, "utf8").trim().split("\n");
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (ERROR|WARN |INFO |DEBUG|TRACE) (sender|receiver)\[\d+\] /);
    const text = lines.join("\n");
    expect(text).toMatch(/sender\[\d+\] .*streams connected streams=4 port=\d+/);
    expect(text).toMatch(/receiver\[\d+\] .*listening .*port=\d+/);
    expect(text).toMatch(/receiver\[\d+\] .*streams accepted/);
    expect(text).toMatch(/sender\[\d+\] .*file failed: No such file or directory .*path=.*gone/);
    expect(text).toMatch(/sender\[\d+\] .*session end files=1 bytes=4194304/);
    // -v: a line per file on each end, under the file's id in the session.
    expect(text).toMatch(/DEBUG sender\[\d+\] file=(\d+) file start path=\S*l\.bin size=4194304/);
    expect(text).toMatch(/DEBUG receiver\[\d+\] file=\d+ file start path=\S*l\.bin size=4194304/);
    expect(text).toMatch(/DEBUG receiver\[\d+\] file=\d+ file done: verified and renamed/);
    expect(text).toMatch(/DEBUG sender\[\d+\] file=\d+ file done: verified by the receiver/);
  });

  test("-v writes /tmp/escp.log.sender and /tmp/escp.log.receiver", async () => {
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "v.bin"), MiB, { seed: 41 });
    const size = (f: string) => (fs.existsSync(f) ? fs.statSync(f).size : 0);
    const before = [size("/tmp/escp.log.sender"), size("/tmp/escp.log.receiver")];
    const r = await runEscp(["-v", path.join(src, "v.bin"), dst + "/"]);
    expect(r.code).toBe(0);
    expect(r.stdout + r.stderr).toBe("");
    const added = (f: string, from: number) => fs.readFileSync(f, "utf8").slice(from);
    const sender = added("/tmp/escp.log.sender", before[0]);
    const receiver = added("/tmp/escp.log.receiver", before[1]);
    expect(sender).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z INFO  sender\[\d+\] /m);
    expect(sender).toContain("session start");
    expect(receiver).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z INFO  receiver\[\d+\] hello /m);
    expect(receiver).toContain("session end files=1");
  });

  test("-v by a user for whom the /tmp log names are another user's writes NAME.UID, without a warning", async () => {
    for (const f of ["/tmp/escp.log.sender", "/tmp/escp.log.receiver"]) if (!fs.existsSync(f)) fs.writeFileSync(f, "", { mode: 0o600 });
    for (const f of ["/tmp/escp.log.sender.65534", "/tmp/escp.log.receiver.65534"]) fs.rmSync(f, { force: true });
    await asNobody(async ({ src, dst, escp }) => {
      await makeFile(path.join(src, "v.bin"), 1000, { seed: 42 });
      const r = await escp(["-v", path.join(src, "v.bin"), dst + "/"]);
      expect(r.stdout + r.stderr).toBe("");
      expect(r.code).toBe(0);
    });
    expect(fs.statSync("/tmp/escp.log.sender").uid).toBe(0);
    expect(fs.readFileSync("/tmp/escp.log.sender.65534", "utf8")).toContain("session start");
    expect(fs.readFileSync("/tmp/escp.log.receiver.65534", "utf8")).toContain("session end files=1");
  });

  test("log lines: ISO time, level, role and pid, stream and file ids first", () => {
    const line = formatLine(new Date(0), "debug", "sender[7]", "file start", { file: 3n, stream: 2, path: "a b", size: 5 });
    expect(line).toBe(`1970-01-01T00:00:00.000Z DEBUG sender[7] stream=2 file=3 file start path="a b" size=5\n`);
  });
});

describe("over ssh", () => {
  test("a pull in --json: this end receives, names destinations, counts the same", async () => {
    await startSshd();
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "r.bin"), 5 * MiB + 1, { seed: 50 });
    const r = await runEscp(["--json", `${SSH_HOST}:${src}/r.bin`, dst + "/"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const events = jsonLines(r.stdout);
    expect(events[0]).toMatchObject({ event: "session", role: "receiver", direction: "pull", host: SSH_HOST });
    expect(events.find((e) => e.event === "file_done")).toMatchObject({ path: path.join(dst, "r.bin"), size: 5 * MiB + 1 });
    expect(events.at(-1)).toMatchObject({ event: "summary", files: 1, bytes: 5 * MiB + 1, bytesDisk: 5 * MiB + 1, exit: 0 });
  });

  test("a push on a terminal: progress, the receiver's failure on its own line, the summary naming it", async () => {
    const sshd = await startSshd();
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "ok.bin"), 16 * MiB, { seed: 51 });
    await makeFile(path.join(src, "clash"), 1000, { seed: 52 });
    fs.mkdirSync(path.join(dst, "clash", "sub"), { recursive: true }); // the receiver cannot rename a file over it
    const { code, raw } = await inTerminal(["-l", "256000", path.join(src, "ok.bin"), path.join(src, "clash"), `${SSH_HOST}:${dst}/`], 400, { config: sshd.configPath });
    expect(code).toBe(1);
    expect(raw).toMatch(/ok\.bin +\d+% /);
    const lines = screen(raw, 400);
    expect(lines.some((l) => /^escp: .*clash: .*Is a directory$/.test(l))).toBe(true);
    expect(lines.at(-2)).toMatch(/^\S+  1 file, 16\.0MiB in [\d.]+ s, 1 failed/);
    expect(lines.at(-1)).toBe(`│  failed: ${path.join(dst, "clash")}`);
    expect(lines.join("\n")).not.toContain("ETA");
  });
});

describe("a stderr that cannot be written", () => {
  test("2>/dev/full loses the warnings, not the copy (push, pull)", async () => {
    const sshd = await startSshd();
    const src = tmpdir("src"), dst = tmpdir("dst");
    fs.mkdirSync(path.join(src, "t"));
    await makeFile(path.join(src, "t", "a"), 3 * MiB + 1, { seed: 53 });
    expect(Bun.spawnSync(["mkfifo", path.join(src, "t", "fifo")]).exitCode).toBe(0); // warned about, skipped
    for (const [from, to] of [[path.join(src, "t"), `${SSH_HOST}:${dst}/push`], [`${SSH_HOST}:${src}/t`, `${dst}/pull`]]) {
      const r = await run(["sh", "-c", 'exec "$0" "$@" 2>/dev/full', ESCP_BIN, "-F", sshd.configPath, "-r", from, to], { env: { ESCP_REMOTE: ESCP_BIN } });
      expect(r.code).toBe(0);
      expect(await sameFile(path.join(src, "t", "a"), path.join(to.replace(/^.*:/, ""), "a"))).toBe(true);
    }
  });
});

describe("rendering", () => {
  test("lines fit the width; long names are cut from the left", () => {
    const t = new Tally();
    t.started("/a/very/long/directory/name/that/goes/on/and/on/file.bin", 1000 * MiB);
    t.sample({ bytesDisk: 0, bytesNetwork: 0, bytesCompressed: 0, seconds: 0 });
    t.sample({ bytesDisk: 250 * MiB, bytesNetwork: 250 * MiB, bytesCompressed: 250 * MiB, seconds: 1 });
    const [line] = renderLines(t, 60);
    expect(line.length).toBe(60);
    expect(line).toMatch(/^….*on\/file\.bin +25% +250MiB +250MiB\/s 00:03 ETA$/);
    t.started("b.bin", 10);
    expect(renderLines(t, 60)[1]).toBe("0/2 files  250MiB/0.98GiB  24%  250MiB/s  00:03 ETA");
  });

  test("on a narrow terminal fields go whole, the last first, never a digit of one; every line fits, down to one column", () => {
    const t = new Tally();
    t.started("/data/run-2026/sample.h5", 1000 * MiB);
    t.sample({ bytesDisk: 0, bytesNetwork: 0, bytesCompressed: 0, seconds: 0 });
    t.sample({ bytesDisk: 450 * MiB, bytesNetwork: 450 * MiB, bytesCompressed: 450 * MiB, seconds: 10 });
    t.started("b", 200 * MiB);
    const whole = (line: string, fields: string[]) => fields.filter((f) => line.includes(f)).length;
    for (let width = 1; width <= 80; width++) {
      const [file, total] = renderLines(t, width);
      expect(file.length).toBeLessThanOrEqual(width);
      expect(total.length).toBeLessThanOrEqual(width);
      // A percentage is shown whole or not at all: 45% of the file, 37% of all (a cut one read 5% and 3%).
      if (width >= 8) expect(file).toMatch(/ 45%/);
      expect(file).not.toMatch(/(^|[^4])5%/);
      expect(total).not.toMatch(/(^|[^3])7%|1\.$|Gi$|MiB\/$/);
      if (width >= 30) expect(whole(total, ["0/2 files", "450MiB/1.17GiB", "37%"])).toBe(3);
    }
    expect(renderLines(t, 32)).toEqual(["…mple.h5  45%  450MiB  45.0MiB/s", "0/2 files  450MiB/1.17GiB  37%"]);
  });

  test("a display narrower than 21 columns still redraws in place: its lines do not wrap", () => {
    const out: string[] = [];
    const t = new Tally();
    const d = new TtyProgress({ write: (s) => out.push(s), columns: 12 }, t);
    t.started("a", 10 * MiB);
    t.started("b", 10 * MiB);
    for (let s = 1; s <= 3; s++) {
      t.sample({ bytesDisk: s * MiB, bytesNetwork: s * MiB, bytesCompressed: s * MiB, seconds: s });
      d.draw();
    }
    // Every line fits 11 columns, so the terminal shows the last frame's two lines, not a trail of old ones.
    expect(screen(out.join(""), 12).filter((l) => l.trim() !== "")).toHaveLength(2);
  });

  test("a stalled transfer says so instead of an ETA", () => {
    const t = new Tally();
    t.started("s.bin", 100);
    for (let s = 0; s <= 6; s++) t.sample({ bytesDisk: 10, bytesNetwork: 10, bytesCompressed: 10, seconds: s });
    expect(renderLines(t, 80)[0]).toContain("- stalled -");
  });

  /** A 50-column display of files a and b (10 bytes each), 5 bytes through after a second, drawn once; what it wrote goes to `out`. */
  function twoFiles(foreground?: () => boolean) {
    const out: string[] = [];
    const t = new Tally();
    const d = new TtyProgress({ write: (s) => out.push(s), columns: 50, foreground }, t);
    t.started("a", 10);
    t.started("b", 10);
    t.sample({ bytesDisk: 5, bytesNetwork: 5, bytesCompressed: 5, seconds: 1 });
    d.draw();
    return { out, t, d };
  }

  test("the display redraws in place and erases itself", () => {
    const { out, t, d } = twoFiles();
    d.draw(); // nothing changed: nothing written
    t.sample({ bytesDisk: 15, bytesNetwork: 15, bytesCompressed: 15, seconds: 2 });
    d.draw();
    d.clear();
    expect(out).toHaveLength(3);
    expect(out[1].startsWith("\r\x1b[1A")).toBe(true);
    expect(screen(out.slice(0, 2).join(""), 50)).toEqual([
      "b                50%      5B       8B/s 00:01 ETA",
      "0/2 files  15B/20B  75%  8B/s  00:01 ETA",
    ]);
    expect(screen(out.join(""), 50).join("")).toBe("");
  });

  test("when the last file is done and two lines become one, the second is erased too", () => {
    const { out, t, d } = twoFiles();
    t.sample({ bytesDisk: 20, bytesNetwork: 20, bytesCompressed: 20, seconds: 2 });
    t.finished("a", 10);
    t.finished("b", 10);
    d.draw();
    expect(screen(out.join(""), 50)).toEqual(["2/2 files  20B/20B  100%  10B/s  00:00 ETA"]);
    d.clear();
    expect(screen(out.join(""), 50).join("")).toBe("");
  });

  test("in the background (bg, &) nothing is drawn, nor erased over the shell's prompt", () => {
    let fg = true;
    const { out, t, d } = twoFiles(() => fg);
    expect(out).toHaveLength(1);
    fg = false;
    t.sample({ bytesDisk: 8, bytesNetwork: 8, bytesCompressed: 8, seconds: 2 });
    d.draw();
    d.clear();
    expect(out).toHaveLength(1);
    fg = true;
    d.draw(); // back in the foreground: drawn afresh on a new line of its own
    expect(out).toHaveLength(2);
    expect(out[1].startsWith("\r\x1b[")).toBe(false);
  });

  test("formats", () => {
    expect(formatBytes(0)).toBe("0B");
    expect(formatBytes(999)).toBe("999B");
    expect(formatBytes(1536)).toBe("1.50KiB");
    expect(formatBytes(48 * MiB)).toBe("48.0MiB");
    expect(formatBytes(1.5 * 1024 * MiB)).toBe("1.50GiB");
    expect(formatEta(100, 0)).toBe("--:--");
    expect(formatEta(3700, 1)).toBe("1:01:40");
  });

  test("the summary drops what does not fit, and keeps telling counters on a second line", () => {
    const s: SummaryEvent = {
      event: "summary", time: "", files: 2, bytes: 100 * MiB, bytesSkipped: 0, bytesNetwork: 40 * MiB, bytesDisk: 100 * MiB,
      bytesCompressed: 40 * MiB, seconds: 2, rate: 50 * MiB, streams: 4, failures: 0, failed: [], exit: 0,
    };
    expect(summaryLines(s, 200)).toEqual(["2 files, 100MiB in 2.00 s · 50.0MiB/s (419 Mbit/s) · 4 streams · network 40.0MiB, disk 100MiB, compressed 40.0MiB"]);
    expect(summaryLines(s, 80)).toEqual(["2 files, 100MiB in 2.00 s · 50.0MiB/s (419 Mbit/s) · 4 streams", "network 40.0MiB, disk 100MiB, compressed 40.0MiB"]);
    expect(summaryLines({ ...s, bytesCompressed: 100 * MiB }, 80)).toHaveLength(1);
    const five = ["aaaa", "bbbb", "cccc", "dddd", "eeee"].map((p) => ({ path: p, message: "" }));
    expect(failedLine(five, 30)).toBe("failed: aaaa, bbbb and 3 more");
    expect(failedLine(five, 200)).toBe("failed: aaaa, bbbb, cccc, dddd, eeee");
  });

  test("each failure is told once, whichever end reports it", () => {
    const events: TransferEvent[] = [];
    const r = new Report({ quiet: true, json: false, listener: (e) => events.push(e) }, false);
    r.failed("dst/x", "Permission denied", 4n);
    r.merge([{ path: "dst/x", message: "Permission denied", id: "4" }]);
    expect(r.failures).toEqual([{ path: "dst/x", message: "Permission denied", id: "4" }]);
    expect(events.map((e) => e.event)).toEqual(["file_failed"]);
  });

  test("file ids are a session's own: the same id failing in the next session (a relay's push) is told too", () => {
    const r = new Report({ quiet: true, json: false }, false);
    const session = { host: "h", direction: "pull" as const, streams: 1, blockSize: 1 << 20, port: 1232 };
    r.session(session);
    r.failed("spool/a", "file changed while being read", 1n);
    r.session({ ...session, direction: "push" });
    r.failed("dst/b", "No space left on device", 1n);
    expect(r.failures.map((f) => f.path)).toEqual(["spool/a", "dst/b"]);
  });

  test("a relay's pull names files where they come from, not by its spool", () => {
    const spool = "/tmp/escp-relay-7-AbCdEf";
    const r = new Report({ quiet: true, json: false }, false);
    const sources = [{ kind: "remote", host: "src", path: "data/tree" }, { kind: "remote", host: "src", path: "logs/*.gz" }] as const;
    const restore = r.showPathsAs((p) => spoolSource(p, spool, [...sources]));
    r.failed(`${spool}/tree/sub/x`, "file changed while being read", 1n);
    r.failed(`${spool}/a.gz`, "file changed while being read", 2n);
    restore();
    r.failed("dst/y", "Permission denied", 3n);
    expect(r.failures.map((f) => f.path)).toEqual(["src:data/tree/sub/x", "src:logs/a.gz", "dst/y"]);
  });
});
