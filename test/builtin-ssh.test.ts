/**
 * The built-in ssh client (issue 9, item 3): when there is no `ssh` on PATH,
 * or with --ssh builtin, dist/escp logs in with the ssh2 package itself. It is
 * tested against the harness' real sshd: copies both ways, the automatic
 * fallback, keys from -i, ssh_config, ~/.ssh and the agent, and known_hosts
 * checking as OpenSSH does it (unknown keys refused in batch mode and without
 * a terminal, asked about on one; changed keys refused).
 *
 * The first part tests the pure pieces (ssh_config, known_hosts) in-process.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import {
  ESCP_BIN,
  SSH_HOST,
  SSH_HOST_NOKEY,
  SSH_USER,
  freePort,
  makeFile,
  run,
  runEscp,
  sameFile,
  startSshd,
  tmpdir,
  type RunOptions,
  type Sshd,
} from "./harness.ts";
import { defaultOptions, type Options } from "../src/cli/args.ts";
import {
  addKnownHost,
  checkHostKey,
  configLinesFor,
  fingerprint,
  hostFieldMatches,
  keyType,
  knownHostsName,
  parseConfigLine,
  resolveSettings,
  startBuiltinSsh,
  type Environment,
} from "../src/session/builtin-ssh.ts";

const has = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;

function keygen(file: string, passphrase = ""): string {
  const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", passphrase, "-C", "t", "-f", file]);
  if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
  return fs.readFileSync(`${file}.pub`, "utf8").trim();
}

function opts(extra: Partial<Options> = {}): Options {
  return { ...defaultOptions(), ...extra };
}

// ─────────────────────────── ssh_config, in-process ─────────────────────────

describe("ssh_config", () => {
  const home = tmpdir("home");
  const env: Environment = { home, localUser: "local", defaultConfigs: [path.join(home, ".ssh", "config")] };
  const cfg = path.join(home, "cfg");
  fs.writeFileSync(
    cfg,
    `# like the harness' config
Host escp-test
  HostName 127.0.0.1
  Port 2222
  User root
  IdentityFile ${home}/id_a

Host *.example.org !bad.example.org
  User = "alice"
  IdentityFile ~/.ssh/id_%h
  ProxyJump jump.example.org

Match exec "false"
  Port 1

Host *
  IdentitiesOnly yes
  UserKnownHostsFile ${home}/kh1 ~/kh2
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 7
  Port 2200
`,
  );

  test("lines: Key value, Key=value, quotes, comments", () => {
    expect(parseConfigLine("  Port=22 ", "x")).toEqual({ key: "port", args: ["22"], where: "x" });
    expect(parseConfigLine('IdentityFile "/a b/c" d', "x")?.args).toEqual(["/a b/c", "d"]);
    expect(parseConfigLine("# comment", "x")).toBeUndefined();
    expect(parseConfigLine("", "x")).toBeUndefined();
  });

  test("the matching Host blocks apply, first value wins, IdentityFile accumulates", () => {
    const s = resolveSettings(opts({ sshConfig: cfg }), { host: "escp-test" }, env);
    expect(s).toMatchObject({ alias: "escp-test", hostname: "127.0.0.1", port: 2222, user: "root", strict: "yes", batch: true, identitiesOnly: true, connectTimeoutS: 7 });
    expect(s.identityFiles.map((f) => f.path)).toEqual([`${home}/id_a`]);
    expect(s.userKnownHosts).toEqual([`${home}/kh1`, `${home}/kh2`]);
    expect(s.proxy).toBeUndefined();
  });

  test("the command line wins as with system ssh under scp: -o first, then the operand's user and port, then -P, -i, -B", () => {
    const o = opts({ sshConfig: cfg, sshPort: 23, identities: ["~/k"], sshOptions: ["User=bob", "Port 24", "StrictHostKeyChecking=accept-new"] });
    let s = resolveSettings(o, { host: "escp-test" }, env);
    expect(s).toMatchObject({ port: 24, user: "bob", strict: "accept-new" });
    expect(s.identityFiles.map((f) => f.path)).toEqual([`${home}/k`, `${home}/id_a`]);
    s = resolveSettings(o, { host: "escp-test", user: "carol", port: 25 }, env);
    expect(s).toMatchObject({ port: 24, user: "bob" }); // scp -o User=bob carol@h: ssh logs in as bob
    s = resolveSettings(opts({ sshConfig: cfg, sshPort: 23 }), { host: "escp-test", user: "carol", port: 25 }, env);
    expect(s).toMatchObject({ port: 25, user: "carol" });
    s = resolveSettings(opts({ sshConfig: cfg, sshPort: 23 }), { host: "escp-test" }, env);
    expect(s.port).toBe(23); // -P over the config file's Port 2222
  });

  test("patterns with negation, tokens, Match blocks skipped, ProxyJump noticed", () => {
    const s = resolveSettings(opts({ sshConfig: cfg }), { host: "www.example.org" }, env);
    expect(s).toMatchObject({ hostname: "www.example.org", user: "alice", port: 2200 });
    expect(s.identityFiles.map((f) => f.path)).toEqual([`${home}/.ssh/id_www.example.org`]);
    expect(s.proxy).toBe("ProxyJump jump.example.org");
    const bad = resolveSettings(opts({ sshConfig: cfg }), { host: "bad.example.org" }, env);
    expect(bad.user).toBe("local");
    expect(bad.proxy).toBeUndefined();
  });

  test("defaults: ~/.ssh/config, $USER, port 22, ask, ~/.ssh/id_* keys, ~/.ssh/known_hosts", () => {
    const s = resolveSettings(opts(), { host: "somewhere" }, env);
    expect(s).toMatchObject({ hostname: "somewhere", port: 22, user: "local", strict: "ask", batch: false, identitiesOnly: false });
    expect(s.identityFiles.map((f) => path.basename(f.path))).toEqual(["id_ed25519", "id_ecdsa", "id_rsa"]);
    expect(s.identityFiles.every((f) => !f.explicit)).toBe(true);
    expect(s.userKnownHosts[0]).toBe(`${home}/.ssh/known_hosts`);
    fs.mkdirSync(path.join(home, ".ssh"), { recursive: true });
    fs.writeFileSync(path.join(home, ".ssh", "config"), "Include extra.conf\n");
    fs.writeFileSync(path.join(home, ".ssh", "extra.conf"), "Host somewhere\n  HostName 10.1.2.3\n  Port 2022\n");
    expect(resolveSettings(opts(), { host: "somewhere" }, env)).toMatchObject({ hostname: "10.1.2.3", port: 2022 });
    expect(resolveSettings(opts({ batchMode: true, sshOptions: ["IdentityAgent none"] }), { host: "x" }, { ...env, authSock: "/a" })).toMatchObject({ batch: true, agent: undefined });
    expect(resolveSettings(opts(), { host: "x" }, { ...env, authSock: "/a" }).agent).toBe("/a");
  });

  test("a -F file that does not exist is an error, as in ssh", () => {
    expect(() => resolveSettings(opts({ sshConfig: path.join(home, "nope") }), { host: "x" }, env)).toThrow(/Can't open user config file/);
  });

  test("configLinesFor keeps only the lines for the host", () => {
    const lines = configLinesFor("Port 1\nHost a\n  User x\nHost b\n  User y\n", "f", "b", home, home);
    expect(lines.map((l) => `${l.key}=${l.args[0]}`)).toEqual(["port=1", "user=y"]);
  });
});

// ─────────────────────────── known_hosts, in-process ────────────────────────

describe("known_hosts", () => {
  const d = tmpdir("kh");
  const pubA = keygen(path.join(d, "a")).split(/\s+/);
  const pubB = keygen(path.join(d, "b")).split(/\s+/);
  const blobA = Buffer.from(pubA[1]!, "base64");
  const blobB = Buffer.from(pubB[1]!, "base64");

  test("names: bare host on port 22, [host]:port elsewhere, HostKeyAlias as is", () => {
    expect(knownHostsName("Example.ORG", 22)).toBe("example.org");
    expect(knownHostsName("127.0.0.1", 2222)).toBe("[127.0.0.1]:2222");
    expect(knownHostsName("127.0.0.1", 2222, "myalias")).toBe("myalias");
  });

  test("the fingerprint is ssh-keygen's", () => {
    const r = spawnSync("ssh-keygen", ["-l", "-E", "sha256", "-f", path.join(d, "a.pub")], { encoding: "utf8" });
    expect(r.stdout.split(/\s+/)[1]).toBe(fingerprint(blobA));
    expect(keyType(blobA)).toBe("ssh-ed25519");
  });

  test("plain, [host]:port, wildcard and negated patterns", () => {
    expect(hostFieldMatches("foo,[127.0.0.1]:2222", "[127.0.0.1]:2222")).toBe(true);
    expect(hostFieldMatches("[127.0.0.1]:2222", "[127.0.0.1]:2223")).toBe(false);
    expect(hostFieldMatches("[127.0.0.1]:2222", "127.0.0.1")).toBe(false);
    expect(hostFieldMatches("*.example.org,!evil.example.org", "www.example.org")).toBe(true);
    expect(hostFieldMatches("*.example.org,!evil.example.org", "evil.example.org")).toBe(false);
  });

  test("hashed entries from ssh-keygen -H match", () => {
    const f = path.join(d, "hashed");
    fs.writeFileSync(f, `[127.0.0.1]:2222 ${pubA[0]} ${pubA[1]}\nexample.org ${pubB[0]} ${pubB[1]}\n`);
    expect(spawnSync("ssh-keygen", ["-q", "-H", "-f", f]).status).toBe(0);
    expect(fs.readFileSync(f, "utf8")).not.toContain("example.org");
    expect(checkHostKey([f], "[127.0.0.1]:2222", blobA).status).toBe("known");
    expect(checkHostKey([f], "example.org", blobB).status).toBe("known");
    expect(checkHostKey([f], "[127.0.0.1]:2223", blobA).status).toBe("unknown");
    expect(checkHostKey([f], "example.org", blobA)).toMatchObject({ status: "changed", entry: { line: 2 } });
  });

  test("known, changed, revoked, unknown; missing files are no error", () => {
    const f = path.join(d, "plain");
    fs.writeFileSync(f, `# comment\n\nh1 ${pubA[0]} ${pubA[1]}\nh2 ${pubA[0]} ${pubA[1]}\n@revoked h3 ${pubB[0]} ${pubB[1]}\nh3 ${pubB[0]} ${pubB[1]}\n`);
    expect(checkHostKey([path.join(d, "none"), f], "h1", blobA)).toMatchObject({ status: "known", entry: { file: f, line: 3 } });
    expect(checkHostKey([f], "h2", blobB)).toMatchObject({ status: "changed", entry: { line: 4 } });
    expect(checkHostKey([f], "h3", blobB).status).toBe("revoked");
    expect(checkHostKey([f], "h4", blobA)).toEqual({ status: "unknown", otherTypes: [] });
  });

  test("addKnownHost writes entries ssh-keygen -F finds, plain or hashed", () => {
    const f = path.join(d, "sub", "known_hosts");
    addKnownHost(f, "[10.0.0.1]:2200", blobA, false);
    addKnownHost(f, "hashed.example", blobB, true);
    expect(fs.readFileSync(f, "utf8")).toStartWith(`[10.0.0.1]:2200 ssh-ed25519 ${pubA[1]}\n|1|`);
    for (const name of ["[10.0.0.1]:2200", "hashed.example"]) {
      expect(spawnSync("ssh-keygen", ["-F", name, "-f", f]).status).toBe(0);
    }
    expect(checkHostKey([f], "hashed.example", blobB).status).toBe("known");
  });
});

// ───────────────────────────── against sshd ─────────────────────────────────

let sshd: Sshd;
let hostLine: string; // "ssh-ed25519 AAAA..." of the test sshd

beforeAll(async () => {
  sshd = await startSshd();
  hostLine = fs.readFileSync(sshd.knownHosts, "utf8").split("\n")[0]!.split(/\s+/).slice(1, 3).join(" ");
});

const BUILTIN = ["--ssh", "builtin"];

/** An ssh_config of our own for host alias `t` (no agent, strict checking, batch mode) plus `extra` lines. */
function config(dir: string, extra = "", knownHosts = sshd.knownHosts): string {
  const f = path.join(dir, "ssh_config");
  fs.writeFileSync(
    f,
    `Host t
  HostName 127.0.0.1
  Port ${sshd.port}
  User ${SSH_USER}
${extra.replace(/^/gm, "  ")}
Host *
  IdentityAgent none
  UserKnownHostsFile ${knownHosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
`,
  );
  return f;
}

/** Runs dist/escp with HOME set to an empty directory, so the user's own ~/.ssh plays no part. */
function escp(args: string[], opt: RunOptions = {}) {
  const home = tmpdir("home");
  return run([ESCP_BIN, ...args], { ...opt, env: { HOME: home, SSH_AUTH_SOCK: undefined, ESCP_REMOTE: ESCP_BIN, ...opt.env } });
}

async function source(size = 300_000, seed = 1): Promise<string> {
  return makeFile(path.join(tmpdir("src"), "f.bin"), size, { seed });
}

describe("copies with --ssh builtin", () => {
  test("push through the harness config arrives byte for byte", async () => {
    const src = await makeFile(path.join(tmpdir("src"), "push.bin"), 5_000_000 + 7, { seed: 91 });
    const dst = tmpdir("dst");
    const r = await runEscp([...BUILTIN, src, `${SSH_HOST}:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(src, path.join(dst, "push.bin"))).toBe(true);
  });

  test("pull (escp escp-test:/path/file /local/dir/) arrives byte for byte", async () => {
    const src = await makeFile(path.join(tmpdir("remote"), "pull.bin"), 3_000_000 + 3, { seed: 92 });
    const dst = tmpdir("dst");
    const r = await runEscp([...BUILTIN, `${SSH_HOST}:${src}`, `${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(src, path.join(dst, "pull.bin"))).toBe(true);
  });

  test("what it does not do (-A, -S, -o ControlMaster) is a warning naming each, not dropped in silence; -q keeps it quiet", async () => {
    const src = await source(100_000, 97);
    const dst = tmpdir("dst");
    const asked = ["-S", "/nonexistent/ssh", "-A", "-o", "ControlMaster=auto", "-o", "User=root", "-o", "ControlPath=/tmp/cm-%C"];
    const r = await runEscp([...BUILTIN, ...asked, src, `${SSH_HOST}:${dst}/`]);
    expect([r.code, r.stderr]).toEqual([0, "escp: warning: the built-in ssh client ignores -S /nonexistent/ssh, -A, -o ControlMaster=auto, -o ControlPath=/tmp/cm-%C (OpenSSH's ssh reads them)\n"]);
    expect(await sameFile(src, path.join(dst, "f.bin"))).toBe(true);
    const q = await runEscp([...BUILTIN, "-q", ...asked, src, `${SSH_HOST}:${dst}/again`]);
    expect([q.code, q.stderr]).toEqual([0, ""]);
  });

  test("with no ssh on PATH the built-in client is used without being asked", async () => {
    const src = await source(200_000, 93);
    const dst = tmpdir("dst");
    const r = await runEscp(["-v", src, `${SSH_HOST}:${dst}/`], { env: { PATH: "/nonexistent-dir-only" } });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("using escp's built-in ssh client");
    expect(await sameFile(src, path.join(dst, "f.bin"))).toBe(true);
  });

  test("-i, -P and user@127.0.0.1 with no ssh_config at all", async () => {
    const src = await source(100_000, 94);
    const dst = tmpdir("dst");
    const common = ["-F", "/dev/null", "-P", String(sshd.port), "-o", `UserKnownHostsFile=${sshd.knownHosts}`, "-B"];
    const r = await escp([...BUILTIN, ...common, "-i", sshd.identity, src, `${SSH_USER}@127.0.0.1:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(src, path.join(dst, "f.bin"))).toBe(true);
    // Without -i there is no key (HOME is empty): refused.
    const n = await escp([...BUILTIN, ...common, src, `${SSH_USER}@127.0.0.1:${dst}/g.bin`]);
    expect(n.code).toBe(1);
    expect(n.stderr).toContain(`${SSH_USER}@127.0.0.1: Permission denied (publickey).`);
  });

  test("~/.ssh/config and the default key ~/.ssh/id_ed25519 are used without -F or -i", async () => {
    const home = tmpdir("home");
    fs.mkdirSync(path.join(home, ".ssh"), { mode: 0o700 });
    fs.copyFileSync(sshd.identity, path.join(home, ".ssh", "id_ed25519"));
    fs.chmodSync(path.join(home, ".ssh", "id_ed25519"), 0o600);
    fs.copyFileSync(sshd.knownHosts, path.join(home, ".ssh", "known_hosts"));
    fs.writeFileSync(path.join(home, ".ssh", "config"), `Host myhost\n  HostName 127.0.0.1\n  Port ${sshd.port}\n  User ${SSH_USER}\n  BatchMode yes\n`);
    const src = await source(100_000, 95);
    const dst = tmpdir("dst");
    const r = await escp([...BUILTIN, src, `myhost:${dst}/`], { env: { HOME: home } });
    expect(r.code).toBe(0);
    expect(await sameFile(src, path.join(dst, "f.bin"))).toBe(true);
  });

  test.skipIf(!has("ssh-agent") || !has("ssh-add"))("keys from ssh-agent (SSH_AUTH_SOCK)", async () => {
    const dir = tmpdir("agent");
    const sock = path.join(dir, "agent.sock");
    const agent = spawn("ssh-agent", ["-D", "-a", sock], { stdio: "ignore" });
    try {
      for (let i = 0; i < 100 && !fs.existsSync(sock); i++) await Bun.sleep(50);
      const add = spawnSync("ssh-add", [sshd.identity], { env: { ...process.env, SSH_AUTH_SOCK: sock }, encoding: "utf8" });
      expect(add.status).toBe(0);
      const cfg = path.join(dir, "cfg");
      fs.writeFileSync(cfg, `Host t\n  HostName 127.0.0.1\n  Port ${sshd.port}\n  User ${SSH_USER}\n  UserKnownHostsFile ${sshd.knownHosts}\n  BatchMode yes\n`);
      const src = await source(100_000, 96);
      const dst = tmpdir("dst");
      const r = await escp([...BUILTIN, "-F", cfg, src, `t:${dst}/`], { env: { SSH_AUTH_SOCK: sock } });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(await sameFile(src, path.join(dst, "f.bin"))).toBe(true);
      // IdentitiesOnly with another key file: the agent's key is not offered.
      const other = path.join(dir, "other");
      keygen(other);
      const n = await escp([...BUILTIN, "-F", cfg, "-o", "IdentitiesOnly=yes", "-i", other, src, `t:${dst}/g.bin`], { env: { SSH_AUTH_SOCK: sock } });
      expect(n.code).toBe(1);
      expect(n.stderr).toContain("Permission denied (publickey)");
    } finally {
      agent.kill();
    }
  });
});

describe("refusals", () => {
  test("a key the server does not accept: Permission denied (publickey), exit 1", async () => {
    const src = await source();
    const dst = tmpdir("dst");
    const r = await runEscp([...BUILTIN, src, `${SSH_HOST_NOKEY}:${dst}/`]);
    expect(r.code).toBe(1);
    // The cause once, as ssh words it; escp's line adds whose connection it was.
    expect(r.stderr).toBe(`${SSH_USER}@127.0.0.1: Permission denied (publickey).\nescp: ${SSH_HOST_NOKEY}: ssh failed (above)\n`);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("an encrypted key with no terminal to ask for its passphrase is skipped, not waited on", async () => {
    const dir = tmpdir("enc");
    const key = path.join(dir, "id");
    fs.copyFileSync(sshd.identity, key);
    fs.chmodSync(key, 0o600);
    expect(spawnSync("ssh-keygen", ["-q", "-p", "-f", key, "-N", "secret", "-P", ""]).status).toBe(0);
    const src = await source();
    const r = await escp([...BUILTIN, "-F", config(dir, `IdentityFile ${key}`), src, `t:${tmpdir("dst")}/`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Permission denied (publickey)");
  });

  test("unknown host key in batch mode: refused, naming the host and how to add the key", async () => {
    const dir = tmpdir("unknown");
    const kh = path.join(dir, "known_hosts");
    fs.writeFileSync(kh, "");
    const dst = tmpdir("dst");
    const src = await source();
    for (const extra of ["", "StrictHostKeyChecking ask"]) {
      const r = await escp([...BUILTIN, "-F", config(dir, `IdentityFile ${sshd.identity}\n${extra}`, kh), src, `t:${dst}/`]);
      expect(r.code).toBe(1);
      // The client's last line says it all; escp's after it only whose connection it was.
      const [last, ours] = r.stderr.trim().split("\n").slice(-2);
      expect(ours).toBe("escp: t: ssh failed (above)");
      expect(last).toStartWith("Host key verification failed");
      expect(last).toContain(`no host key is known for [127.0.0.1]:${sshd.port}`);
      expect(last).toContain(`ssh-keyscan -p ${sshd.port} -t ed25519 127.0.0.1 >> ${kh}`);
      expect(last).toContain("connect once with ssh");
      expect(last).toContain(fingerprint(Buffer.from(hostLine.split(" ")[1]!, "base64")));
    }
    expect(fs.readFileSync(kh, "utf8")).toBe("");
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test.skipIf(!has("setsid"))("unknown host key with StrictHostKeyChecking=ask but no terminal: refused", async () => {
    const dir = tmpdir("notty");
    const kh = path.join(dir, "known_hosts");
    fs.writeFileSync(kh, "");
    const cfg = config(dir, `IdentityFile ${sshd.identity}`, kh);
    const src = await source();
    const r = await run(["setsid", "-w", ESCP_BIN, ...BUILTIN, "-F", cfg, "-o", "StrictHostKeyChecking=ask", "-o", "BatchMode=no", src, `t:${tmpdir("dst")}/`], {
      env: { ESCP_REMOTE: ESCP_BIN },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Host key verification failed: no host key is known");
    expect(fs.readFileSync(kh, "utf8")).toBe("");
  });

  test("changed host key: REMOTE HOST IDENTIFICATION HAS CHANGED, refused even with accept-new", async () => {
    const dir = tmpdir("changed");
    const other = keygen(path.join(dir, "fake_host")).split(/\s+/);
    const kh = path.join(dir, "known_hosts");
    const content = `[127.0.0.1]:${sshd.port} ${other[0]} ${other[1]}\n`;
    fs.writeFileSync(kh, content);
    const dst = tmpdir("dst");
    const src = await source();
    for (const strict of ["yes", "accept-new", "ask"]) {
      const r = await escp([...BUILTIN, "-F", config(dir, `IdentityFile ${sshd.identity}`, kh), "-o", `StrictHostKeyChecking=${strict}`, src, `t:${dst}/`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!");
      expect(r.stderr).toContain(`Offending ED25519 key in ${kh}:1`);
      const [last, ours] = r.stderr.trim().split("\n").slice(-2);
      expect(ours).toBe("escp: t: ssh failed (above)");
      expect(last).toContain("Host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED");
      expect(last).toContain(`ssh-keygen -f '${kh}' -R '[127.0.0.1]:${sshd.port}'`);
    }
    expect(fs.readFileSync(kh, "utf8")).toBe(content);
    expect(fs.readdirSync(dst)).toEqual([]);
  });

  test("connection refused names the host and port, once", async () => {
    const port = await freePort();
    const r = await escp([...BUILTIN, "-F", "/dev/null", "-P", String(port), "-B", await source(), `127.0.0.1:/tmp/x`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`connect to host 127.0.0.1 port ${port}: Connection refused\nescp: 127.0.0.1: ssh failed (above)\n`);
  });

  test("-6 (or AddressFamily inet6) with an IPv4 address is refused as ssh refuses it, not connected over IPv4", async () => {
    for (const family of [["-6"], ["-o", "AddressFamily=inet6"]]) {
      const r = await escp([...BUILTIN, "-F", "/dev/null", ...family, "-P", String(sshd.port), "-B", await source(), `127.0.0.1:/tmp/x`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("Could not resolve hostname 127.0.0.1: Address family for hostname not supported");
    }
  });

  test("ConnectTimeout bounds a server that never greets", async () => {
    const silent = net.createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const t0 = Date.now();
      const r = await escp([...BUILTIN, "-F", "/dev/null", "-P", String(port), "-B", "-o", "ConnectTimeout=1", await source(), `127.0.0.1:/tmp/x`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`Connection to 127.0.0.1 port ${port} timed out`);
      expect(Date.now() - t0).toBeLessThan(15_000);
    } finally {
      silent.close();
    }
  });

  test("-J is refused with a clear message (the built-in client has no ProxyJump)", async () => {
    const r = await runEscp([...BUILTIN, "-J", "somewhere", await source(), `${SSH_HOST}:/tmp/x`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("cannot connect through ProxyJump somewhere");
  });
});

describe("known_hosts upkeep", () => {
  test("accept-new adds the key (hashed with HashKnownHosts), and strict checking then accepts it", async () => {
    const dir = tmpdir("acceptnew");
    const kh = path.join(dir, "sub", "known_hosts"); // the directory is created too
    const cfg = config(dir, `IdentityFile ${sshd.identity}\nHashKnownHosts yes`, kh);
    const src = await source();
    const dst = tmpdir("dst");
    const r = await escp([...BUILTIN, "-F", cfg, "-o", "StrictHostKeyChecking=accept-new", src, `t:${dst}/a`]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`Warning: Permanently added '[127.0.0.1]:${sshd.port}' (ED25519) to the list of known hosts.`);
    const text = fs.readFileSync(kh, "utf8");
    expect(text).toStartWith("|1|");
    expect(text.trim().split(" ").slice(1).join(" ")).toBe(hostLine);
    const again = await escp([...BUILTIN, "-F", cfg, src, `t:${dst}/b`]);
    expect(again.stderr).toBe("");
    expect(again.code).toBe(0);
    expect(await sameFile(src, path.join(dst, "b"))).toBe(true);
  });

  test("a known_hosts file hashed by ssh-keygen -H is accepted", async () => {
    const dir = tmpdir("hashed");
    const kh = path.join(dir, "known_hosts");
    fs.copyFileSync(sshd.knownHosts, kh);
    expect(spawnSync("ssh-keygen", ["-q", "-H", "-f", kh]).status).toBe(0);
    expect(fs.readFileSync(kh, "utf8")).not.toContain("127.0.0.1");
    const src = await source();
    const dst = tmpdir("dst");
    const r = await escp([...BUILTIN, "-F", config(dir, `IdentityFile ${sshd.identity}`, kh), src, `t:${dst}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });
});

// ─────────────────────── the ServerProcess, in-process ──────────────────────

describe("startBuiltinSsh", () => {
  const o = () => opts({ sshConfig: sshd.configPath, ssh: "builtin" });
  const text = (s: ReadableStream<Uint8Array>) => new Response(s).text();

  test("stdout, stderr and the exit status of the remote command come back", async () => {
    const p = startBuiltinSsh(o(), { host: SSH_HOST }, "cat; echo out; echo err >&2; exit 3");
    p.stdin.write(new TextEncoder().encode("in\n"));
    p.stdin.end();
    const [out, err, code] = await Promise.all([text(p.stdout), text(p.stderr), p.exited]);
    expect({ out, err, code }).toEqual({ out: "in\nout\n", err: "err\n", code: 3 });
  });

  test("stdin with flush() as backpressure carries 16 MiB intact, and one Options shares one connection", async () => {
    const logins = () => (sshd.log().match(/Accepted publickey/g) ?? []).length;
    const before = logins();
    const shared = o();
    const data = Buffer.alloc(16 << 20);
    for (let i = 0; i < data.length; i += 512) data[i] = (i / 512) & 255;
    const up = startBuiltinSsh(shared, { host: SSH_HOST }, "sha256sum");
    const out = text(up.stdout);
    for (let off = 0; off < data.length; off += 4 << 20) {
      up.stdin.write(data.subarray(off, off + (4 << 20)));
      await up.stdin.flush();
    }
    up.stdin.end();
    expect(await up.exited).toBe(0);
    expect((await out).split(" ")[0]).toBe(new Bun.CryptoHasher("sha256").update(data).digest("hex"));
    const second = startBuiltinSsh(shared, { host: SSH_HOST }, "echo again");
    expect(await text(second.stdout)).toBe("again\n");
    expect(await second.exited).toBe(0);
    expect(logins() - before).toBe(1);
  });

  test("kill() ends a running command at once", async () => {
    const p = startBuiltinSsh(o(), { host: SSH_HOST }, "sleep 60");
    await Bun.sleep(1000);
    const t0 = Date.now();
    p.kill();
    expect(await p.exited).toBe(143);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  test("a failed login is status 255 with OpenSSH's message on stderr", async () => {
    const p = startBuiltinSsh(o(), { host: SSH_HOST_NOKEY }, "true");
    const [out, err, code] = await Promise.all([text(p.stdout), text(p.stderr), p.exited]);
    expect({ out, err, code }).toEqual({ out: "", err: `${SSH_USER}@127.0.0.1: Permission denied (publickey).\n`, code: 255 });
  });
});

// ──────────────────────────── on a terminal ─────────────────────────────────

/**
 * Runs argv on a pseudo-terminal (script(1)); each time the screen shows
 * `when`, types `keys`. Returns what the terminal showed (escape codes removed).
 */
async function onTerminal(argv: string[], env: Record<string, string>, steps: [RegExp, string][]): Promise<{ code: number; text: string }> {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const child = spawn("script", ["-qec", `stty cols 120 rows 40; exec ${argv.map(q).join(" ")}`, "/dev/null"], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let raw = "";
  let seen = 0; // steps are looked for after the point where the previous one matched
  const todo = [...steps];
  const plain = () => raw.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
  child.stdout!.on("data", async (b: Buffer) => {
    raw += b.toString("utf8");
    const text = plain();
    const step = todo[0];
    if (step && step[0].test(text.slice(seen))) {
      todo.shift();
      seen = text.length;
      await Bun.sleep(300);
      for (const ch of step[1]) {
        child.stdin!.write(ch);
        await Bun.sleep(50);
      }
    }
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 45_000);
  const code = await new Promise<number>((r) => child.on("close", (c) => r(c ?? 255)));
  clearTimeout(timer);
  return { code, text: plain() };
}

describe.skipIf(!has("script"))("on a terminal", () => {
  test("an unknown host key is asked about with its SHA256 fingerprint: yes adds it, no refuses", async () => {
    const dir = tmpdir("ask");
    const kh = path.join(dir, "known_hosts");
    fs.writeFileSync(kh, "");
    const cfg = config(dir, `IdentityFile ${sshd.identity}`, kh);
    const src = await source();
    const dst = tmpdir("dst");
    const argv = [ESCP_BIN, ...BUILTIN, "-F", cfg, "-o", "StrictHostKeyChecking=ask", "-o", "BatchMode=no", src];
    const fp = fingerprint(Buffer.from(hostLine.split(" ")[1]!, "base64"));

    const no = await onTerminal([...argv, `t:${dst}/no`], { ESCP_REMOTE: ESCP_BIN }, [[/continue connecting/, "n\r"]]);
    expect(no.text).toContain(`The authenticity of host '[127.0.0.1]:${sshd.port}' can't be established.`);
    expect(no.text).toContain(`ED25519 key fingerprint is ${fp}.`);
    expect(no.text).toContain("Host key verification failed.");
    expect(no.code).toBe(1);
    expect(fs.readFileSync(kh, "utf8")).toBe("");

    const yes = await onTerminal([...argv, `t:${dst}/yes`], { ESCP_REMOTE: ESCP_BIN }, [[/continue connecting/, "y\r"]]);
    expect(yes.text).toContain("Permanently added");
    expect(yes.code).toBe(0);
    expect(fs.readFileSync(kh, "utf8")).toBe(`[127.0.0.1]:${sshd.port} ${hostLine}\n`);
    expect(await sameFile(src, path.join(dst, "yes"))).toBe(true);
    expect(fs.existsSync(path.join(dst, "no"))).toBe(false);
  });

  test("an encrypted key's passphrase is asked for", async () => {
    const dir = tmpdir("pass");
    const key = path.join(dir, "id");
    fs.copyFileSync(sshd.identity, key);
    fs.chmodSync(key, 0o600);
    expect(spawnSync("ssh-keygen", ["-q", "-p", "-f", key, "-N", "sesame", "-P", ""]).status).toBe(0);
    const src = await source();
    const dst = tmpdir("dst");
    const r = await onTerminal(
      [ESCP_BIN, ...BUILTIN, "-F", config(dir, `IdentityFile ${key}`), "-o", "BatchMode=no", src, `t:${dst}/`],
      { ESCP_REMOTE: ESCP_BIN },
      [[/Enter passphrase for key/, "sesame\r"]],
    );
    expect(r.text).toContain(`Enter passphrase for key '${key}'`);
    expect(r.code).toBe(0);
    expect(await sameFile(src, path.join(dst, "f.bin"))).toBe(true);
  });
});

