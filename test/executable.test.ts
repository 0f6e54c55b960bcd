/**
 * One executable (issue 3, point 6): dist/escp copied alone into an empty
 * directory, with no Bun, npm or node_modules reachable, is sender and
 * receiver; its native library needs nothing but glibc.
 */
import { test, expect, beforeAll } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { run, tmpdir, makeFile, sameFile, buildTag, plantBuilds, ESCP_BIN, REPO_ROOT } from "./harness.ts";
import { PROTO_VERSION } from "../src/native.ts";

let lone = "";
const bare = { PATH: "/usr/bin:/bin", HOME: "/nonexistent" };

beforeAll(() => {
  const dir = tmpdir("lone");
  lone = path.join(dir, "escp");
  fs.copyFileSync(ESCP_BIN, lone);
  fs.chmodSync(lone, 0o755);
});

function envOnly(extra: Record<string, string> = {}): Record<string, string | undefined> {
  // run() merges with process.env: blank out everything that could lead back to Bun or the repo.
  const cleared = Object.fromEntries(Object.keys(process.env).map((k) => [k, undefined]));
  return { ...cleared, ...bare, ...extra };
}

test("--version and --help work from an empty directory with a bare environment", async () => {
  const v = await run([lone, "--version"], { cwd: path.dirname(lone), env: envOnly() });
  expect(v.code).toBe(0);
  expect(v.stdout).toMatch(/^escp \d+\.\d+\.\d+ \(protocol \d+\)\n$/);
  const h = await run([lone, "--help"], { cwd: path.dirname(lone), env: envOnly() });
  expect(h.code).toBe(0);
  expect(h.stdout).toContain("--resume");
});

test("a local copy runs sender and --server from the lone executable", async () => {
  const src = tmpdir("src"), dst = tmpdir("dst");
  await makeFile(path.join(src, "f"), 3 * 1024 * 1024 + 7, { seed: 90 });
  const r = await run([lone, path.join(src, "f"), `${dst}/`], { cwd: path.dirname(lone), env: envOnly() });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
});

test("from a working directory that was deleted, absolute paths copy as with scp; a relative one is named as missing", async () => {
  const src = tmpdir("src"), dst = tmpdir("dst"), gone = tmpdir("gone");
  await makeFile(path.join(src, "f"), 5000, { seed: 91 });
  // A shell that stays in its directory after it is removed, as a user's does.
  const sh = (cmd: string) => run(["sh", "-c", `cd ${gone} && rmdir ${gone} && ${cmd}`], { env: envOnly() });
  const abs = await sh(`${lone} ${path.join(src, "f")} ${dst}/`);
  expect([abs.code, abs.stderr]).toEqual([0, ""]);
  expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  fs.mkdirSync(gone);
  const rel = await sh(`${lone} f ${dst}/g`);
  expect([rel.code, rel.stderr]).toEqual([1, "escp: f: No such file or directory\n"]);
});

test("the directory escp runs in is not read for bunfig.toml or .env: a preload there does not run, an ESCP_LIB there is not loaded", async () => {
  // Bun's executables read both from the working directory unless built not to: in a
  // directory someone else can write (/tmp), their preload ran as the user running escp.
  const dir = tmpdir("cwd"), src = tmpdir("src"), dst = tmpdir("dst");
  fs.writeFileSync(path.join(dir, "bunfig.toml"), 'preload = ["./planted.js"]\n');
  fs.writeFileSync(path.join(dir, "planted.js"), `require("fs").writeFileSync(${JSON.stringify(path.join(dir, "RAN"))}, "");\n`);
  fs.writeFileSync(path.join(dir, ".env"), "ESCP_LIB=/nonexistent/libescp.so\n");
  await makeFile(path.join(src, "f"), 3 * 1024 * 1024 + 7, { seed: 91 });
  const r = await run([lone, path.join(src, "f"), `${dst}/`], { cwd: dir, env: envOnly() });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
  expect(fs.existsSync(path.join(dir, "RAN"))).toBe(false);
});

test("the lone executable runs its embedded workers when the build tree is out of sight", async () => {
  // A host that received only dist/escp has no sources at the build path: the stream
  // workers and the walker must come from the executable, never from that path.
  const src = tmpdir("src"), dst = tmpdir("dst");
  await makeFile(path.join(src, "d", "a"), 2 * 1024 * 1024 + 3, { seed: 91 });
  await makeFile(path.join(src, "d", "b"), 10, { seed: 92 });
  const script = 'mount -t tmpfs none "$1" && shift && exec "$@"';
  const r = await run(["unshare", "-m", "sh", "-c", script, "sh", REPO_ROOT, lone, "-C", "-r", path.join(src, "d"), `${dst}/`], {
    cwd: path.dirname(lone), env: envOnly(),
  });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  for (const f of ["a", "b"]) expect(await sameFile(path.join(src, "d", f), path.join(dst, "d", f))).toBe(true);
});

/** Files of another user (uid 65534) need root to make. */
const ROOT = process.getuid?.() === 0;

/** The native library each end mapped, from a --log file (lib= on "streams connected" and "streams accepted"). */
function librariesLogged(log: string): string[] {
  return [...fs.readFileSync(log, "utf8").matchAll(/ lib=(\S+)/g)].map((m) => m[1]);
}

test("the native library is written once to ~/.cache/escp/TAG and mapped from there by both ends", async () => {
  const home = tmpdir("home"), src = tmpdir("src"), dst = tmpdir("dst"), log = path.join(tmpdir("log"), "escp.log");
  await makeFile(path.join(src, "f"), 1000, { seed: 93 });
  const cached = path.join(home, ".cache", "escp", buildTag(), "libescp.so");
  for (const round of [1, 2]) {
    fs.rmSync(log, { force: true });
    const r = await run([lone, "--log", log, path.join(src, "f"), `${dst}/f${round}`], { cwd: path.dirname(lone), env: envOnly({ HOME: home }) });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(librariesLogged(log)).toEqual([cached, cached]);
  }
  expect(Buffer.compare(fs.readFileSync(cached), fs.readFileSync(path.join(REPO_ROOT, "build", "libescp.so")))).toBe(0);
  expect(fs.statSync(cached).mode & 0o777).toBe(0o644);
  expect(fs.readdirSync(path.dirname(cached))).toEqual(["libescp.so"]); // no temporary file left
});

test("a build's first start on a host removes old builds' cache directories, keeping the two used last", async () => {
  const home = tmpdir("home"), src = tmpdir("src"), dst = tmpdir("dst");
  await makeFile(path.join(src, "f"), 10, { seed: 98 });
  const root = path.join(home, ".cache", "escp");
  plantBuilds(root, { "0.0.1-aaaaaaaaaaaa": 90, "0.0.2-bbbbbbbbbbbb": 60, "0.0.3-cccccccccccc": 30, "0.0.4-dddddddddddd": 20 });
  const r = await run([lone, path.join(src, "f"), `${dst}/`], { cwd: path.dirname(lone), env: envOnly({ HOME: home }) });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(fs.readdirSync(root).sort()).toEqual(["0.0.3-cccccccccccc", "0.0.4-dddddddddddd", buildTag()]);
  // A later start of an older build marks it used: it is not the one to go next.
  const ours = path.join(root, buildTag()), t = Date.now() / 1000 - 2 * 86400;
  fs.utimesSync(ours, t, t);
  const again = await run([lone, path.join(src, "f"), `${dst}/g`], { cwd: path.dirname(lone), env: envOnly({ HOME: home }) });
  expect(again.code).toBe(0);
  expect(Date.now() - fs.statSync(ours).mtimeMs).toBeLessThan(60_000);
});

test.skipIf(!ROOT)("a cached library that is not ours alone is replaced, never mapped", async () => {
  const home = tmpdir("home"), src = tmpdir("src"), dst = tmpdir("dst"), log = path.join(tmpdir("log"), "escp.log");
  await makeFile(path.join(src, "f"), 1000, { seed: 94 });
  const lib = path.join(REPO_ROOT, "build", "libescp.so");
  const cached = path.join(home, ".cache", "escp", buildTag(), "libescp.so");
  fs.mkdirSync(path.dirname(cached), { recursive: true });
  // Another user's file of the right size: mapped, it would not even load.
  fs.writeFileSync(cached, Buffer.alloc(fs.statSync(lib).size, 0x5a));
  fs.chownSync(cached, 65534, 65534);
  const r = await run([lone, "--log", log, path.join(src, "f"), `${dst}/`], { cwd: path.dirname(lone), env: envOnly({ HOME: home }) });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(librariesLogged(log)).toEqual([cached, cached]);
  expect(fs.statSync(cached).uid).toBe(process.getuid!());
  expect(Buffer.compare(fs.readFileSync(cached), fs.readFileSync(lib))).toBe(0);
});

test.skipIf(!ROOT)("another user's home (sudo keeping HOME) is left alone: the library goes into a memfd", async () => {
  const home = tmpdir("home"), src = tmpdir("src"), dst = tmpdir("dst"), log = path.join(tmpdir("log"), "escp.log");
  await makeFile(path.join(src, "f"), 1000, { seed: 97 });
  fs.chownSync(home, 65534, 65534);
  const r = await run([lone, "--log", log, path.join(src, "f"), `${dst}/`], { cwd: path.dirname(lone), env: envOnly({ HOME: home }) });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(librariesLogged(log)).toEqual(["memfd", "memfd"]);
  expect(fs.readdirSync(home)).toEqual([]);
  expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
});

test("a home mounted noexec cannot map the cached library: the memfd serves", async () => {
  const home = tmpdir("home"), src = tmpdir("src"), dst = tmpdir("dst"), log = path.join(tmpdir("log"), "escp.log");
  await makeFile(path.join(src, "f"), 1000, { seed: 96 });
  const script = 'mount -t tmpfs -o noexec none "$HOME" && exec "$@"';
  const r = await run(["unshare", "-m", "sh", "-c", script, "sh", lone, "--log", log, path.join(src, "f"), `${dst}/`], {
    cwd: path.dirname(lone), env: envOnly({ HOME: home }),
  });
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(librariesLogged(log)).toEqual(["memfd", "memfd"]);
  expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
});

test("a home that does not exist is not created for the cache", async () => {
  const home = path.join(tmpdir("gone"), "home"), src = tmpdir("src"), dst = tmpdir("dst");
  await makeFile(path.join(src, "f"), 10, { seed: 95 });
  const r = await run([lone, path.join(src, "f"), `${dst}/`], { cwd: path.dirname(lone), env: envOnly({ HOME: home }) });
  expect(r.code).toBe(0);
  expect(fs.existsSync(home)).toBe(false);
});

test("the embedded native library needs only glibc", async () => {
  const r = await run(["ldd", path.join(REPO_ROOT, "build", "libescp.so")]);
  expect(r.code).toBe(0);
  const libs = r.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/)[0]);
  for (const l of libs) expect(l).toMatch(/^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|\/lib64\/ld-linux-x86-64\.so\.2)$/);
});

test("a connecting escp of another protocol version is told both versions", async () => {
  const hello = Buffer.from(JSON.stringify({ type: "hello", version: 99, sid: "00", key: "00", serverRole: "receiver", streams: 1, blockSize: 1 << 20, options: {}, ports: [1232, 1242] }));
  const frame = Buffer.alloc(4 + hello.length);
  frame.writeUInt32BE(hello.length, 0);
  hello.copy(frame, 4);
  const r = await run([ESCP_BIN, "--server"], { input: frame });
  const len = Buffer.from(r.stdout, "latin1").readUInt32BE(0);
  const reply = JSON.parse(r.stdout.slice(4, 4 + len));
  expect(reply.type).toBe("error");
  expect(reply.message).toContain(`protocol version mismatch: this escp speaks ${PROTO_VERSION}, the local one 99`);
  expect(r.code).not.toBe(0);
});
