/**
 * Self-bootstrap (issue 9, item 1): a remote account without escp gets this
 * executable copied to ~/.cache/escp/VERSION-BUILD/escp on the first transfer, and
 * later transfers reuse it; a new build's install prunes old builds' copies. The remote account is a throwaway local user whose
 * PATH has no escp and whose home is a fresh directory; it logs in to the test
 * sshd with the harness key (sshd reads authorized_keys as that user, so the
 * run directory is made traversable).
 */
import { describe, test, expect, beforeAll, afterAll, setDefaultTimeout } from "bun:test";
import fs from "node:fs";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { startSshd, runEscp, run, runTmp, makeFile, sameFile, buildTag, plantBuilds, ESCP_BIN, REPO_ROOT, SSH_HOST, type Sshd } from "./harness.ts";
import { launchCommand, uploadCommand, findMarker, BOOTSTRAP_MARKER } from "../src/session/bootstrap.ts";
import { VERSION, CACHE_TAG } from "../src/version.ts";
import { PROTO_VERSION } from "../src/native.ts";

setDefaultTimeout(120_000);

const USER = `escpbt${process.pid}`;
let sshd: Sshd;
let home = "";
let uid = 0;
const TAG = buildTag();
const cached = () => path.join(home, ".cache/escp", TAG, "escp");
const host = () => `${USER}@${SSH_HOST}`;
/** Files in the cache directory other than escp and the library it maps (temporary files left behind). */
const leftovers = () => fs.readdirSync(path.dirname(cached())).filter((n) => n !== "escp" && n !== "libescp.so");

/** A directory the remote user owns, for destinations. */
function userDir(name: string): string {
  const d = fs.mkdtempSync(path.join(home, `${name}-`));
  fs.chownSync(d, uid, uid);
  return d;
}

function sh(cmd: string, env: Record<string, string> = {}, input?: Uint8Array) {
  return spawnSync("/bin/sh", ["-c", cmd], { env: { PATH: "/usr/bin:/bin", ...env }, input, encoding: "buffer" });
}

/**
 * The launch command run as when the client has hung up after its marker: the parent
 * of its `sh -c` (sshd's session, which bash's -c execs into it) is gone, so it stops
 * waiting for an upload.
 */
function launchOrphaned(cmd: string, env: Record<string, string> = {}) {
  // The parent is a subshell that exits once the command has started, and is reaped at once
  // (a zombie would still answer kill -0; one gone before the command starts makes its PPID 1).
  return sh(`(exec ${cmd} & sleep 0.2)`, env);
}

/**
 * An ssh program for -S that counts its runs and runs the remote command after `prefix`
 * (shell text), as the real ssh with the harness config.
 */
function countingSsh(dir: string, prefix = ""): { ssh: string; runs: () => number } {
  const log = path.join(dir, "ssh.log"), ssh = path.join(dir, "ssh");
  fs.writeFileSync(ssh, `#!/bin/bash\necho run >>${log}\nargs=("$@")\nlast=\${args[-1]}\nunset 'args[-1]'\nexec ssh "\${args[@]}" "${prefix}$last"\n`, { mode: 0o755 });
  return { ssh, runs: () => fs.readFileSync(log, "utf8").split("\n").length - 1 };
}

/** Making the throwaway account needs root (as in CI and the dev VM). */
const ROOT = process.getuid?.() === 0;

beforeAll(async () => {
  sshd = await startSshd();
  if (!ROOT) return;
  // sshd opens authorized_keys as the user logging in: every directory on the way
  // that the test run made (npm test's private ESCP_TEST_TMP among them) must let it pass.
  for (let d = sshd.tmp; d !== path.dirname(d) && fs.statSync(d).uid === 0 && !(fs.statSync(d).mode & 0o001); d = path.dirname(d)) {
    fs.chmodSync(d, fs.statSync(d).mode | 0o711);
  }
  fs.chmodSync(runTmp(), 0o711);
  fs.chmodSync(sshd.tmp, 0o711);
  fs.chmodSync(path.join(sshd.tmp, "authorized_keys"), 0o644);
  // Users of killed earlier runs.
  for (const line of fs.readFileSync("/etc/passwd", "utf8").split("\n")) {
    const m = /^escpbt(\d+):/.exec(line);
    if (m && !fs.existsSync(`/proc/${m[1]}`)) spawnSync("userdel", [`escpbt${m[1]}`]);
  }
  home = fs.mkdtempSync("/tmp/escp-boot-home-");
  const r = spawnSync("useradd", ["-M", "-d", home, "-s", "/bin/sh", "-p", "*", USER], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`useradd failed: ${r.stderr}`);
  uid = Number(spawnSync("id", ["-u", USER], { encoding: "utf8" }).stdout.trim());
  fs.chownSync(home, uid, uid);
  fs.chmodSync(home, 0o755);
  const which = await run(["ssh", "-F", sshd.configPath, host(), "command -v escp; echo PATH=$PATH"]);
  expect(which.stdout).toMatch(/^PATH=/); // no escp on the remote account's PATH
});

afterAll(() => {
  if (ROOT) spawnSync("userdel", [USER]);
  if (home) fs.rmSync(home, { recursive: true, force: true });
});

describe("the remote command", () => {
  // The snippet's decisions, run by the local sh with a chosen HOME and PATH.
  const fake = (dir: string, name: string, script: string) => {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, name), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
  };

  test("prefers the cached copy, then a PATH escp of our protocol, else prints the marker", () => {
    const t = fs.mkdtempSync(path.join(runTmp(), "snippet-"));
    const cmd = launchCommand("--server");
    const bin = path.join(t, "bin");
    // Nothing installed: the marker, with what the host has.
    let r = launchOrphaned(cmd, { HOME: t });
    const out = r.stdout.toString();
    const info = findMarker(out)?.info;
    expect(info).toBeDefined();
    expect(findMarker(out)!.end).toBe(out.indexOf("\n") + 1); // what follows the line is the client's
    expect(info!.os).toBe("Linux");
    expect(info!.machine).toBe(spawnSync("uname", ["-m"], { encoding: "utf8" }).stdout.trim());
    expect(info!.tools.has("sha256sum")).toBe(true);
    // An escp of another protocol on PATH is not used.
    fake(bin, "escp", `[ "$1" = --version ] && echo "escp 9.9 (protocol ${PROTO_VERSION + 1})" && exit 0; echo WRONG`);
    r = launchOrphaned(cmd, { HOME: t, PATH: `${bin}:/usr/bin:/bin` });
    expect(r.stdout.toString()).toStartWith(BOOTSTRAP_MARKER);
    // One of ours is.
    fake(bin, "escp", `[ "$1" = --version ] && echo "escp 0.0.9 (protocol ${PROTO_VERSION})" && exit 0; echo "path escp $*"`);
    r = sh(cmd, { HOME: t, PATH: `${bin}:/usr/bin:/bin` });
    expect(r.stdout.toString()).toBe("path escp --server\n");
    // The cached copy wins over both.
    fake(path.join(t, ".cache/escp", CACHE_TAG), "escp", `echo "cached escp $*"`);
    r = sh(cmd, { HOME: t, PATH: `${bin}:/usr/bin:/bin` });
    expect(r.stdout.toString()).toBe("cached escp --server\n");
  });

  test("after the marker the snippet waits for the copy and starts it, the client's first bytes unread", async () => {
    const t = fs.mkdtempSync(path.join(runTmp(), "wait-"));
    const p = Bun.spawn(["/bin/sh", "-c", launchCommand("--server")], { env: { PATH: "/usr/bin:/bin", HOME: t }, stdin: "pipe", stdout: "pipe" });
    p.stdin.write("hello\n");
    await p.stdin.flush();
    const it = p.stdout[Symbol.asyncIterator]();
    let text = "";
    while (!text.includes("\n")) text += Buffer.from((await it.next()).value!).toString();
    expect(findMarker(text)).toBeDefined();
    await Bun.sleep(600); // a few of its rounds of waiting
    // The upload's rename, as it would be: the waiting snippet execs the copy.
    const dir = path.join(t, ".cache/escp", CACHE_TAG);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, ".escp.tmp.1"), `#!/bin/sh\necho "cached escp $*"; exec cat\n`, { mode: 0o755 });
    fs.renameSync(path.join(dir, ".escp.tmp.1"), path.join(dir, "escp"));
    p.stdin.end();
    for (let r = await it.next(); !r.done; r = await it.next()) text += Buffer.from(r.value).toString();
    expect(await p.exited).toBe(0);
    expect(text.slice(text.indexOf("\n") + 1)).toBe("cached escp --server\nhello\n");
  });

  test("the upload checks the digest before the copy takes its name", () => {
    const t = fs.mkdtempSync(path.join(runTmp(), "upload-"));
    const payload = new TextEncoder().encode("#!/bin/sh\necho hi\n");
    const sha = new Bun.CryptoHasher("sha256").update(payload).digest("hex");
    const dest = path.join(t, ".cache/escp", CACHE_TAG);
    // Wrong digest: refused, nothing left behind.
    let r = sh(uploadCommand("raw", "0".repeat(64), payload.length), { HOME: t }, payload);
    expect(r.status).not.toBe(0);
    expect(r.stderr.toString()).toMatch(/digest mismatch/);
    expect(fs.readdirSync(dest)).toEqual([]);
    // Right digest, gzip-compressed: installed, mode 755.
    r = sh(uploadCommand("gzip", sha, payload.length), { HOME: t }, Bun.gzipSync(payload));
    expect(r.status).toBe(0);
    expect(fs.readdirSync(dest)).toEqual(["escp"]);
    expect(fs.statSync(path.join(dest, "escp")).mode & 0o777).toBe(0o755);
    expect(fs.readFileSync(path.join(dest, "escp"))).toEqual(Buffer.from(payload));
    // No sha256sum: the size is checked instead.
    r = sh(uploadCommand("raw", undefined, payload.length + 1), { HOME: t }, payload);
    expect(r.stderr.toString()).toMatch(/size mismatch/);
  });

  test("the upload checks the digest with openssl or sha256sum, whichever works", () => {
    const t = fs.mkdtempSync(path.join(runTmp(), "hashers-"));
    const payload = new TextEncoder().encode("#!/bin/sh\necho hi\n");
    const sha = new Bun.CryptoHasher("sha256").update(payload).digest("hex");
    const dest = path.join(t, ".cache/escp", CACHE_TAG, "escp");
    // A PATH of exactly these tools (each found where this host keeps it), plus `extra` scripts.
    const tools = (name: string, have: string[], extra: Record<string, string> = {}) => {
      const bin = path.join(t, name);
      fs.mkdirSync(bin);
      for (const tool of have) {
        const where = spawnSync("/bin/sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
        expect(where).not.toBe(""); // scripts/setup.sh installs each
        fs.symlinkSync(where, path.join(bin, tool));
      }
      for (const [tool, script] of Object.entries(extra)) fake(bin, tool, script);
      return bin;
    };
    const base = ["sh", "mkdir", "cat", "chmod", "mv", "rm", "uname"];
    const cases = [
      { why: "openssl alone", PATH: tools("openssl-only", [...base, "openssl"]) },
      { why: "an openssl that fails, then sha256sum", PATH: tools("broken-openssl", [...base, "sha256sum"], { openssl: "exit 1" }) },
    ];
    for (const { why, PATH } of cases) {
      fs.rmSync(dest, { force: true });
      let r = sh(uploadCommand("raw", "0".repeat(64), payload.length), { HOME: t, PATH }, payload);
      expect({ why, err: r.stderr.toString() }).toEqual({ why, err: expect.stringMatching(/^digest mismatch: sha256 [0-9a-f]{64}, expected 0{64}\n$/) });
      expect(fs.existsSync(dest)).toBe(false);
      r = sh(uploadCommand("raw", sha, payload.length), { HOME: t, PATH }, payload);
      expect({ why, status: r.status, err: r.stderr.toString() }).toEqual({ why, status: 0, err: "" });
      expect(fs.readFileSync(dest)).toEqual(Buffer.from(payload));
    }
  });

  test("the upload takes the executable compressed in pieces: concatenated zstd frames or gzip members", () => {
    const t = fs.mkdtempSync(path.join(runTmp(), "pieces-"));
    const payload = Buffer.concat([Buffer.from("#!/bin/sh\necho hi\n"), randomBytes(3 << 20)]);
    const sha = new Bun.CryptoHasher("sha256").update(payload).digest("hex");
    const pieces = [payload.subarray(0, 1 << 20), payload.subarray(1 << 20, 2 << 20), payload.subarray(2 << 20)];
    const dest = path.join(t, ".cache/escp", CACHE_TAG, "escp");
    for (const [method, squeeze] of [["zstd", (b: Buffer) => Bun.zstdCompressSync(b)], ["gzip", (b: Buffer) => Bun.gzipSync(new Uint8Array(b))]] as const) {
      fs.rmSync(dest, { force: true });
      const r = sh(uploadCommand(method, sha, payload.length), { HOME: t }, Buffer.concat(pieces.map((p) => squeeze(p))));
      expect(r.stderr.toString()).toBe("");
      expect(r.status).toBe(0);
      expect(fs.readFileSync(dest).equals(payload)).toBe(true);
    }
  });
});

describe.skipIf(!ROOT)("bootstrap over ssh", () => {
  test("--no-bootstrap refuses with a clear error", async () => {
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1000, { seed: 1 });
    const r = await runEscp(["--no-bootstrap", path.join(src, "f"), `${host()}:${userDir("dst")}/`], { env: { ESCP_REMOTE: undefined } });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`escp: escp is not installed on ${SSH_HOST}: install it or drop --no-bootstrap\n`);
    expect(fs.existsSync(cached())).toBe(false);
    // The remote command, which waited for an upload after its marker, saw the session end
    // (its login shell, /bin/sh, waits for it rather than exec it) and is gone too, well
    // before the grace it gives an upload to begin.
    let left = "";
    for (let i = 0; i < 30; i++) {
      left = spawnSync("pgrep", ["-a", "-u", USER, "-f", BOOTSTRAP_MARKER], { encoding: "utf8" }).stdout;
      if (!left) break;
      await Bun.sleep(100);
    }
    expect(left).toBe("");
  });

  test("--no-bootstrap over a shared ssh connection (ControlMaster) fails at once, not when the master lets the remote command go", async () => {
    const sock = path.join(fs.mkdtempSync(path.join(runTmp(), "cm-")), "s");
    const shared = ["-o", `ControlPath=${sock}`];
    const master = spawnSync("ssh", ["-F", sshd.configPath, "-o", "ControlMaster=yes", "-o", "ControlPersist=60", ...shared, "-fN", host()]);
    expect(master.status).toBe(0);
    try {
      const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
      await makeFile(path.join(src, "f"), 1000, { seed: 11 });
      const t0 = performance.now();
      const r = await runEscp(["--no-bootstrap", "-o", "ControlMaster=no", ...shared, path.join(src, "f"), `${host()}:${userDir("dst")}/`], { env: { ESCP_REMOTE: undefined } });
      expect(r.stderr).toBe(`escp: escp is not installed on ${SSH_HOST}: install it or drop --no-bootstrap\n`);
      expect(r.code).toBe(1);
      expect(performance.now() - t0).toBeLessThan(5000); // it waited out the remote command's 10 s grace
    } finally {
      spawnSync("ssh", ["-F", sshd.configPath, ...shared, "-O", "exit", host()]);
    }
  });

  test("escp run from source refuses to bootstrap and says what to do", async () => {
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1000, { seed: 1 });
    const r = await run([process.execPath, path.join(REPO_ROOT, "src/main.ts"), "-F", sshd.configPath, path.join(src, "f"), `${host()}:${userDir("dst")}/`], {
      env: { ESCP_REMOTE: undefined },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/escp is not installed on escp-test, and this escp runs from source .*--remote-escp PATH/);
    expect(fs.existsSync(cached())).toBe(false);
  });

  test("the first transfer installs escp in ~/.cache/escp/VERSION and says so once, over two ssh connections", async () => {
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 3 << 20, { seed: 2 });
    const dst = userDir("dst");
    // The probe that waits, and the upload.
    const { ssh, runs } = countingSsh(src);
    const r = await runEscp(["-S", ssh, path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
    // One line; the compression is whatever the host can undo (zstd, gzip or none).
    const said = `escp: ${SSH_HOST} has no escp ${VERSION} (protocol ${PROTO_VERSION}): installing this one as ~/.cache/escp/${TAG}/escp`;
    expect(r.stderr.startsWith(said)).toBe(true);
    expect(r.stderr.slice(said.length)).toMatch(/^ \(\d+ MB(, sent compressed with (zstd|gzip))?\)\n$/);
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    const st = fs.statSync(cached());
    expect(st.mode & 0o777).toBe(0o755);
    expect(st.uid).toBe(uid);
    expect(await sameFile(ESCP_BIN, cached())).toBe(true);
    expect(leftovers()).toEqual([]);
    expect(runs()).toBe(2);
  });

  test("the next transfer reuses it: no upload, no message", async () => {
    const before = fs.statSync(cached());
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1 << 20, { seed: 3 });
    const dst = userDir("dst");
    const t0 = performance.now();
    const r = await runEscp([path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
    const seconds = (performance.now() - t0) / 1000;
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    const after = fs.statSync(cached());
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    expect(seconds).toBeLessThan(10); // no 110 MB upload (which the unchanged inode proves too)
    // A pull runs the cached copy too.
    const back = fs.mkdtempSync(path.join(runTmp(), "back-"));
    const p = await runEscp([`${host()}:${dst}/f`, `${back}/`], { env: { ESCP_REMOTE: undefined } });
    expect(p.stderr).toBe("");
    expect(p.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(back, "f"))).toBe(true);
  });

  test("a remote command that cannot wait for the upload (no working ps) is run again: three connections, same result", async () => {
    fs.rmSync(path.join(home, ".cache"), { recursive: true, force: true });
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1 << 20, { seed: 6 });
    const dst = userDir("dst");
    // A failing ps first on the remote PATH.
    const bin = path.join(src, "bin");
    fs.mkdirSync(bin);
    fs.chmodSync(src, 0o755);
    fs.writeFileSync(path.join(bin, "ps"), "#!/bin/sh\nexit 1\n", { mode: 0o755 });
    const { ssh, runs } = countingSsh(src, `PATH=${bin}:\\$PATH; export PATH; `);
    const r = await runEscp(["-q", "-S", ssh, path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(await sameFile(ESCP_BIN, cached())).toBe(true);
    expect(runs()).toBe(3);
  });

  test("two concurrent first transfers both succeed and leave one intact copy", async () => {
    fs.rmSync(path.join(home, ".cache"), { recursive: true, force: true });
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "a"), 2 << 20, { seed: 4 });
    await makeFile(path.join(src, "b"), 2 << 20, { seed: 5 });
    const dst = userDir("dst");
    const [ra, rb] = await Promise.all(["a", "b"].map((n) =>
      runEscp(["-q", path.join(src, n), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } })));
    expect([ra.code, ra.stderr, rb.code, rb.stderr]).toEqual([0, "", 0, ""]);
    expect(await sameFile(path.join(src, "a"), path.join(dst, "a"))).toBe(true);
    expect(await sameFile(path.join(src, "b"), path.join(dst, "b"))).toBe(true);
    expect(await sameFile(ESCP_BIN, cached())).toBe(true);
    expect(fs.statSync(cached()).mode & 0o777).toBe(0o755);
    expect(leftovers()).toEqual([]);
  });

  test("a cached copy cut short is installed again, not run", async () => {
    // As a full disk or a damaged home leaves it: executable, and a SIGBUS when run.
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1 << 20, { seed: 7 });
    const dst = userDir("dst");
    expect((await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } })).code).toBe(0);
    fs.truncateSync(cached(), 50 << 20);
    const r = await runEscp([path.join(src, "f"), `${host()}:${dst}/g`], { env: { ESCP_REMOTE: undefined } });
    expect(r.stderr).toStartWith(`escp: ${SSH_HOST} has no escp ${VERSION} (protocol ${PROTO_VERSION}): installing this one`);
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "g"))).toBe(true);
    expect(await sameFile(ESCP_BIN, cached())).toBe(true);
  });

  test("a cache on a filesystem mounted noexec is named at once, with what to do, and not sent again", async () => {
    fs.rmSync(path.join(home, ".cache"), { recursive: true, force: true });
    const cache = path.join(home, ".cache");
    fs.mkdirSync(cache);
    expect(spawnSync("mount", ["-t", "tmpfs", "-o", "noexec,size=200m", "tmpfs", cache]).status).toBe(0);
    try {
      fs.chownSync(cache, uid, uid);
      const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
      await makeFile(path.join(src, "f"), 1000, { seed: 8 });
      const dst = userDir("dst");
      const said = `escp: ${SSH_HOST}: ${cached()} cannot be run there (is its filesystem mounted noexec?): install escp on the PATH there, or name one with --remote-escp PATH\n`;
      // The first run sends it and finds it cannot run it; the next says so at once.
      const first = await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
      expect(first.stderr).toStartWith(said);
      expect(first.code).toBe(1);
      const t0 = performance.now();
      const again = await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
      expect(again.stderr).toStartWith(said);
      expect(again.code).toBe(1);
      expect(performance.now() - t0).toBeLessThan(5000);
      expect(fs.readdirSync(dst)).toEqual([]);
    } finally {
      spawnSync("umount", [cache]);
    }
  });

  test("a home that does not exist there is not made for the cache: the install fails saying so, and what to do", async () => {
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1000, { seed: 9 });
    const dst = userDir("dst");
    const gone = path.join(home, "no-such-home");
    const { ssh } = countingSsh(src, `HOME=${gone}; export HOME; `);
    const r = await runEscp(["-q", "-S", ssh, path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot install escp on ${SSH_HOST} as ~/.cache/escp/${TAG}/escp: no home directory (${gone}) there to keep it in (install escp on the PATH there, or name one with --remote-escp PATH)\n`);
    expect(fs.existsSync(gone)).toBe(false);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("a copy in another user's directory (~/.cache/escp linked there) is not run as this user, whatever its size", async () => {
    const theirs = fs.mkdtempSync(path.join(runTmp(), "theirs-"));
    fs.chmodSync(theirs, 0o755);
    const ran = path.join(theirs, "ran");
    const planted = path.join(theirs, TAG, "escp");
    fs.mkdirSync(path.dirname(planted));
    fs.writeFileSync(planted, `#!/bin/sh\ntouch ${ran}\nexit 1\n`, { mode: 0o755 });
    fs.truncateSync(planted, fs.statSync(ESCP_BIN).size); // the size of ours: all the old check asked
    for (const p of [theirs, path.dirname(planted), planted]) fs.chownSync(p, 65534, 65534);
    fs.rmSync(path.join(home, ".cache"), { recursive: true, force: true });
    fs.mkdirSync(path.join(home, ".cache"));
    fs.chownSync(path.join(home, ".cache"), uid, uid);
    fs.symlinkSync(theirs, path.join(home, ".cache/escp"));
    try {
      const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
      await makeFile(path.join(src, "f"), 1000, { seed: 9 });
      const r = await runEscp(["-q", path.join(src, "f"), `${host()}:${userDir("dst")}/`], { env: { ESCP_REMOTE: undefined } });
      expect(fs.existsSync(ran)).toBe(false);
      expect(r.stderr).toContain(`${TAG} is not yours: remove it`);
      expect(r.code).toBe(1);
    } finally {
      fs.rmSync(path.join(home, ".cache"), { recursive: true, force: true });
    }
  });

  test("a cached copy the shell cannot run (damaged, of the right size) says to remove it", async () => {
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1000, { seed: 10 });
    const dst = userDir("dst");
    expect((await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } })).code).toBe(0);
    const size = fs.statSync(cached()).size;
    fs.truncateSync(cached(), 0);
    fs.truncateSync(cached(), size);
    const r = await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/g`], { env: { ESCP_REMOTE: undefined } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`Exec format error \\(remove ~/\\.cache/escp/${TAG.replace(/\./g, "\\.")}/escp there, and escp installs a new copy\\)\n$`));
    fs.rmSync(cached());
    expect((await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/g`], { env: { ESCP_REMOTE: undefined } })).code).toBe(0);
  });

  test("installing a new build removes old builds' copies from the host, keeping the two used last", async () => {
    const root = path.join(home, ".cache/escp");
    fs.rmSync(path.dirname(cached()), { recursive: true, force: true });
    const old = ["0.0.1-aaaaaaaaaaaa", "0.0.2-bbbbbbbbbbbb", "0.0.3-cccccccccccc"];
    plantBuilds(root, { [old[0]]: 90, [old[1]]: 60, [old[2]]: 30 }, uid);
    const src = fs.mkdtempSync(path.join(runTmp(), "src-"));
    await makeFile(path.join(src, "f"), 1000, { seed: 6 });
    const dst = userDir("dst");
    const r = await runEscp(["-q", path.join(src, "f"), `${host()}:${dst}/`], { env: { ESCP_REMOTE: undefined } });
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(fs.readdirSync(root).sort()).toEqual([...old.slice(1), TAG]);
  });
});
