/**
 * Security of the data streams against a hostile network and strangers on
 * the data port, session keys, and the ssh side (issue 6; DESIGN §4, §5, §10).
 *
 * Everything runs the compiled dist/escp against the real sshd. A
 * man-in-the-middle proxy (below: it parses records in both directions, can
 * hold, drop, duplicate, reorder, alter, splice and cut them, and remembers
 * what it saw so that records can be moved between streams and sessions)
 * sits on the data streams: the client connects to it through
 * ESCP_DATA_VIA, and `--port P-P` pins the server's listener to P.
 *
 * Connection order through the proxy: conn 0 is stream 0 (file list and
 * verdicts), conn 1..N the data streams; record index 0 in each direction is
 * the HELLO (the connector's comes after its 32-byte plaintext preamble).
 *
 * One attack per test, named after it (OpenSSH regress style).
 */
import { describe, test, expect, beforeAll } from "bun:test";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { startSshd, runEscp, tmpdir, makeFile, sameFile, ESCP_BIN, SSH_HOST, limiter } from "./harness.ts";
import * as harness from "./harness.ts";
import { native, ptr } from "../src/native.ts";

const KiB = 1024, MiB = 1 << 20;
/** Small blocks: many records per stream, so there is something to aim at. */
const BLOCK = "64k";
const FILE_SIZE = 8 * MiB;

beforeAll(async () => {
  await startSshd();
});

// ───────────────────────────── the proxy ─────────────────────────────

type Dir = "up" | "down"; // up: connector → listener; down: listener → connector
interface Seen {
  conn: number;
  dir: Dir;
  index: number;
  record: Buffer;
}
/** What goes on in place of a record: records, or the connection closed after the `cut` bytes. */
type Out = Buffer[] | { cut: Buffer };
type Handler = (r: Seen, m: Mitm) => Out | Promise<Out>;

interface Mitm {
  port: number;
  /** Where it forwards to: the server's pinned data port. */
  target: number;
  /** The 32-byte plaintext preamble of each connection, in order. */
  preambles: Buffer[];
  /** Each connection's records by direction, as they arrived (before tampering). */
  records: Map<string, Buffer>;
  tampered: number;
  /** Resolves with a record once it has passed the proxy (or rejects after ms). */
  waitFor(conn: number, dir: Dir, index: number, ms?: number): Promise<Buffer>;
  close(): void;
}

const slot = limiter(Number(process.env.ESCP_TEST_PARALLEL ?? 3));

/**
 * A free port for a pinned listener, below the kernel's ephemeral range (so no
 * outgoing connection of a concurrent test can take it between now and the
 * listen) and never handed out twice by this file.
 */
const givenPorts = new Set<number>();
const EPHEMERAL_LOW = Number(fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || 32768;
async function uniquePort(): Promise<number> {
  const lo = Math.max(10_000, EPHEMERAL_LOW - 12_000);
  for (;;) {
    const p = lo + Math.floor(Math.random() * (EPHEMERAL_LOW - lo));
    if (givenPorts.has(p)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once("error", () => resolve(false));
      srv.listen(p, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (free) return givenPorts.add(p), p;
  }
}

const pass: Handler = (r) => [r.record];
const key = (conn: number, dir: Dir, index: number) => `${conn}/${dir}/${index}`;

/**
 * A TCP proxy 127.0.0.1:<port> → 127.0.0.1:<target> that hands every record
 * (both directions) to `handler`, in order per direction; the handler may
 * take its time (the direction waits). `beforeEach(conn)` runs before the
 * upstream connection is opened.
 */
function startMitm(target: number, handler: Handler = pass, beforeEach?: (conn: number, m: Mitm) => unknown): Promise<Mitm> {
  const sockets = new Set<net.Socket>();
  const waiters = new Map<string, ((b: Buffer) => void)[]>();
  let connections = 0;
  const m: Mitm = {
    port: 0,
    target,
    preambles: [],
    records: new Map(),
    tampered: 0,
    waitFor(conn, dir, index, ms = 10_000) {
      const k = key(conn, dir, index);
      const have = m.records.get(k);
      if (have) return Promise.resolve(have);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`proxy: record ${k} never came`)), ms);
        const list = waiters.get(k) ?? [];
        list.push((b) => (clearTimeout(t), resolve(b)));
        waiters.set(k, list);
      });
    },
    close() {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
  const pump = (conn: number, dir: Dir, from: net.Socket, to: net.Socket, preamble: number) => {
    let buf = Buffer.alloc(0);
    let index = 0;
    let chain = Promise.resolve();
    let cut = false;
    from.on("data", (d: Buffer) => {
      if (cut) return;
      buf = Buffer.concat([buf, d]);
      if (preamble > 0 && buf.length >= preamble) {
        const pre = Buffer.from(buf.subarray(0, preamble));
        buf = buf.subarray(preamble);
        m.preambles[conn] = pre;
        preamble = 0;
        chain = chain.then(() => void to.write(pre));
      }
      if (preamble > 0) return;
      while (buf.length >= 16) {
        const total = 16 + buf.readUInt32BE(4) + 16;
        if (buf.length < total) break;
        const r: Seen = { conn, dir, index: index++, record: Buffer.from(buf.subarray(0, total)) };
        buf = buf.subarray(total);
        chain = chain.then(async () => {
          if (cut) return;
          const k = key(r.conn, r.dir, r.index);
          m.records.set(k, r.record);
          for (const w of waiters.get(k) ?? []) w(r.record);
          waiters.delete(k);
          const out = await handler(r, m);
          if (!Array.isArray(out)) {
            // The receiving end sees a clean close after `cut` bytes; the sending end sees
            // nothing wrong (what it still sends is swallowed), as with a forged FIN.
            cut = true;
            m.tampered++;
            to.end(out.cut);
            return;
          }
          if (out.length !== 1 || out[0] !== r.record) m.tampered++;
          for (const b of out) to.write(b);
        });
      }
    });
    from.on("end", () => void chain.then(() => to.end()));
    from.on("error", () => to.destroy());
  };
  const server = net.createServer(async (client) => {
    const conn = connections++;
    sockets.add(client);
    client.pause();
    await beforeEach?.(conn, m);
    const upstream = net.connect(target, "127.0.0.1");
    sockets.add(upstream);
    pump(conn, "up", client, upstream, 32);
    pump(conn, "down", upstream, client, 0);
    client.resume();
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      m.port = (server.address() as net.AddressInfo).port;
      resolve(m);
    }),
  );
}

// ───────────────────────────── helpers ─────────────────────────────

interface Copy {
  code: number;
  stderr: string;
  timedOut: boolean;
  ms: number;
  src: string;
  dst: string;
  proxy: Mitm;
}

/** A transfer through the proxy: push by default, or pull (the server sends, data flows down). */
function copy(handler: Handler = pass, o: CopyOptions = {}): Promise<Copy> {
  return slot(() => copyNow(handler, o));
}

interface CopyOptions {
  pull?: boolean;
  size?: number;
  args?: string[];
  beforeEach?: (conn: number, m: Mitm) => unknown;
  env?: Record<string, string>;
  seed?: number;
}

async function copyNow(
  handler: Handler = pass,
  o: CopyOptions = {},
): Promise<Copy> {
  const src = tmpdir("src"), dst = tmpdir("dst");
  await makeFile(path.join(src, "f"), o.size ?? FILE_SIZE, { seed: o.seed ?? 6 });
  const port = await uniquePort();
  const proxy = await startMitm(port, handler, o.beforeEach);
  const ends = o.pull ? [`${SSH_HOST}:${src}/f`, `${dst}/`] : [path.join(src, "f"), `${SSH_HOST}:${dst}/`];
  const t0 = performance.now();
  const r = await runEscp(["-q", "-b", BLOCK, "--port", `${port}-${port}`, ...(o.args ?? []), ...ends], {
    env: { ESCP_DATA_VIA: `127.0.0.1:${proxy.port}`, ...o.env },
    timeoutMs: 30_000,
  });
  const ms = performance.now() - t0;
  proxy.close();
  return { code: r.code, stderr: r.stderr, timedOut: r.timedOut, ms, src, dst, proxy };
}

async function listSoon(dir: string, want: string[] = [], ms = 3000): Promise<string[]> {
  const until = Date.now() + ms;
  for (;;) {
    const names = fs.readdirSync(dir).sort();
    if (JSON.stringify(names) === JSON.stringify(want) || Date.now() > until) return names;
    await Bun.sleep(50);
  }
}

/** The transfer failed, said why and on which stream, and left no file (final or temporary). */
async function expectCaught(c: Copy, stream: number, why: RegExp) {
  expect(c.timedOut).toBe(false);
  expect(c.proxy.tampered).toBeGreaterThan(0);
  expect(c.code).not.toBe(0);
  expect(c.stderr).toMatch(new RegExp(`\\bstream ${stream}\\b`));
  expect(c.stderr).toMatch(why);
  expect(await listSoon(c.dst)).toEqual([]);
}

async function expectDelivered(c: Copy) {
  expect(c.timedOut).toBe(false);
  expect(c.stderr).toBe("");
  expect(c.code).toBe(0);
  expect(await sameFile(path.join(c.src, "f"), path.join(c.dst, "f"))).toBe(true);
  expect(fs.readdirSync(c.dst)).toEqual(["f"]);
}

const AUTH = /failed authentication \(altered, spliced or wrong key\)/;
const SEQ = /where \d+ was expected \(dropped, replayed or reordered\)/;
// The receiver saw the stream end early and said so; ours may have seen the rest go after it.
const TRUNC = new RegExp(`^escp: lost connection to ${SSH_HOST}: stream 1 closed mid-transfer \\(seen by ${SSH_HOST}(; here, stream \\d+ (closed|was reset) mid-transfer)?\\)$`, "m");

/** Returns a copy of r with bit `bit` of byte `at` flipped (negative at: from the end). */
function flip(r: Buffer, at: number, bit = 0): Buffer {
  const b = Buffer.from(r);
  b[at < 0 ? b.length + at : at] ^= 1 << bit;
  return b;
}

/** Aims at data stream 1, connector → listener, record `index`. */
const at = (index: number, f: (r: Buffer) => Out): Handler => (s) =>
  s.conn === 1 && s.dir === "up" && s.index === index ? f(s.record) : [s.record];

// ───────────────────────────── hostile network ─────────────────────────────

describe("a hostile network on the data streams", () => {
  test.concurrent("control: the proxy alone changes nothing", async () => {
    const c = await copy();
    await expectDelivered(c);
    expect(c.proxy.tampered).toBe(0);
  });

  test.concurrent("one bit flipped in a header's flags fails authentication (the header is the AAD)", async () => {
    // 0x01 is COMPRESSED: the record would otherwise go to the decompressor.
    await expectCaught(await copy(at(2, (r) => [flip(r, 1)])), 1, /stream 1: record seq 2 failed authentication/);
  });

  test.concurrent("one bit flipped in a header's length fails authentication", async () => {
    // len = 16 + 64 KiB = 0x10010: clearing bit 16 makes the receiver take 16 body bytes.
    await expectCaught(await copy(at(2, (r) => [flip(r, 5, 0)])), 1, /stream 1: record seq 2 failed authentication/);
  });

  test.concurrent("one bit flipped in a header's seq is a sequence error", async () => {
    await expectCaught(await copy(at(2, (r) => [flip(r, 15, 0)])), 1, /stream 1: record seq 3 where 2 was expected/);
  });

  test.concurrent("one bit flipped in a body fails authentication", async () => {
    await expectCaught(await copy(at(2, (r) => [flip(r, 40, 3)])), 1, /stream 1: record seq 2 failed authentication/);
  });

  test.concurrent("one bit flipped in a tag fails authentication", async () => {
    await expectCaught(await copy(at(2, (r) => [flip(r, -1, 7)])), 1, /stream 1: record seq 2 failed authentication/);
  });

  test.concurrent("a dropped record is a sequence error", async () => {
    await expectCaught(await copy(at(2, () => [])), 1, /stream 1: record seq 3 where 2 was expected/);
  });

  test.concurrent("a duplicated (replayed) record is a sequence error", async () => {
    await expectCaught(await copy(at(2, (r) => [r, r])), 1, /stream 1: record seq 2 where 3 was expected/);
  });

  test.concurrent("two records swapped is a sequence error", async () => {
    let held: Buffer | undefined;
    const c = await copy((s) => {
      if (s.conn !== 1 || s.dir !== "up") return [s.record];
      if (s.index === 2) return (held = s.record), [];
      if (s.index === 3) return [s.record, held!];
      return [s.record];
    });
    await expectCaught(c, 1, /stream 1: record seq 3 where 2 was expected/);
  });

  // A proxy that goes on acknowledging and passes nothing on: TCP never times out, and
  // both ends waited for ever. Each end's pings say what its kernel saw acknowledged.
  const STALLED = /stream \d+: \d+ bytes the other end sent have not arrived in \d+ s, though the connection is open/;
  const held = (conn: number, dir: "up" | "down", from: number): Handler => (s) =>
    s.conn === conn && s.dir === dir && s.index >= from ? [] : [s.record];
  test.concurrent("a data stream held open that passes nothing on fails the push after three keepalive intervals", async () => {
    const c = await copy(held(1, "up", 2), { args: ["--keepalive", "2"] });
    await expectCaught(c, 1, STALLED);
    expect(c.ms).toBeLessThan(20_000);
  });

  test.concurrent("a data stream that passes nothing from its first record on: the time the message names is how long it was held, not the time since the first ping", async () => {
    const c = await copy(held(1, "up", 1), { args: ["--keepalive", "2"] });
    await expectCaught(c, 1, STALLED);
    const said = Number(/have not arrived in (\d+) s/.exec(c.stderr)![1]);
    // Counted from the first ping (2 s in) it said 6 s after 8 s: the time it names is now the time it was held.
    expect(said).toBeGreaterThanOrEqual(7);
    expect(c.ms).toBeLessThan(said * 1000 + 3000);
  });

  test.concurrent("a data stream held open that passes nothing on fails the pull after three keepalive intervals", async () => {
    const c = await copy(held(1, "down", 2), { pull: true, args: ["--keepalive", "2"] });
    await expectCaught(c, 1, STALLED);
    expect(c.ms).toBeLessThan(20_000);
  });

  test.concurrent("verdicts held on their way back (stream 0) fail the push instead of hanging it", async () => {
    const c = await copy(held(0, "down", 1), { args: ["--keepalive", "2"] });
    expect(c.timedOut).toBe(false);
    expect(c.code).toBe(1);
    expect(c.stderr).toMatch(/stream 0: \d+ bytes the other end sent have not arrived/);
    expect(c.ms).toBeLessThan(20_000);
  });

  test.concurrent("a stream cut between two records before END is truncation, and the file is named as not copied", async () => {
    const c = await copy(at(3, () => ({ cut: Buffer.alloc(0) })));
    await expectCaught(c, 1, TRUNC);
    expect(c.stderr).toContain(`\nescp: ${path.join(c.src, "f")}: not copied\n`);
  });

  test.concurrent("a stream cut in the middle of a record is truncation, and the file is named as not copied", async () => {
    const c = await copy(at(3, (r) => ({ cut: r.subarray(0, 1000) })));
    await expectCaught(c, 1, TRUNC);
    expect(c.stderr).toContain(`\nescp: ${path.join(c.src, "f")}: not copied\n`);
  });

  test.concurrent("a record spliced in from another stream (same seq) fails authentication", async () => {
    // Stream 2's record 3 replaces stream 1's record 3: same seq, same type, another key.
    const c = await copy(async (s, m) => {
      if (s.conn === 1 && s.dir === "up" && s.index === 3) return [await m.waitFor(2, "up", 3)];
      return [s.record];
    });
    await expectCaught(c, 1, /stream 1: record seq 3 failed authentication/);
  });

  test.concurrent("a record spliced in from an earlier session (same stream, same seq) fails authentication", async () => {
    const earlier = await copy();
    await expectDelivered(earlier);
    const old = earlier.proxy.records.get(key(1, "up", 3))!;
    expect(old).toBeDefined();
    await expectCaught(await copy(at(3, () => [old])), 1, /stream 1: record seq 3 failed authentication/);
  });

  test.concurrent("garbage injected between records is refused", async () => {
    const junk = Buffer.alloc(100, 0xa5);
    await expectCaught(await copy(at(2, (r) => [junk, r])), 1, /stream 1: record seq \d+ where 2 was expected|stream 1: .*malformed/);
  });

  test.concurrent("a bit flipped in stream 0's file list fails authentication on stream 0", async () => {
    const c = await copy((s) => (s.conn === 0 && s.dir === "up" && s.index === 1 ? [flip(s.record, 20)] : [s.record]));
    await expectCaught(c, 0, /stream 0: record seq 1 failed authentication/);
  });

  test.concurrent("pull: a bit flipped in a record from the listener fails authentication at the local receiver", async () => {
    const c = await copy((s) => (s.conn === 1 && s.dir === "down" && s.index === 2 ? [flip(s.record, 40)] : [s.record]), { pull: true });
    await expectCaught(c, 1, /stream 1: record seq 2 failed authentication/);
  });

  test.concurrent("pull: a record from the listener dropped is a sequence error at the local receiver", async () => {
    const c = await copy((s) => (s.conn === 1 && s.dir === "down" && s.index === 2 ? [] : [s.record]), { pull: true });
    await expectCaught(c, 1, SEQ);
  });
});

// ───────────────────────────── strangers ─────────────────────────────

/** A connection to port that writes `bytes` (if any) and reports when the other side closed it. */
function stranger(port: number, bytes?: Buffer): { closed: Promise<number>; socket: net.Socket } {
  const t0 = performance.now();
  const socket = net.connect(port, "127.0.0.1", () => {
    if (bytes) socket.write(bytes);
  });
  socket.on("error", () => {});
  socket.resume();
  const closed = new Promise<number>((r) => socket.on("close", () => r(performance.now() - t0)));
  return { closed, socket };
}

function preamble(o: { magic?: string; version?: number; stream?: number; nstreams?: number; sid?: Buffer } = {}): Buffer {
  const p = Buffer.alloc(32);
  p.write(o.magic ?? "ESCP", 0, "latin1");
  p.writeUInt16BE(o.version ?? 1, 4);
  p.writeUInt32BE(o.stream ?? 0, 8);
  p.writeUInt32BE(o.nstreams ?? 5, 12);
  (o.sid ?? crypto.randomBytes(16)).copy(p, 16);
  return p;
}

/** A HELLO record for (stream, seq 0), sealed as the protocol says but under `key16`. */
function helloUnder(key16: Buffer, sid: Buffer, stream: number): Buffer {
  const hdr = Buffer.alloc(16);
  hdr[0] = 1;
  hdr.writeUInt32BE(20, 4);
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(stream * 2, 0);
  const body = Buffer.alloc(20);
  sid.copy(body, 0);
  body.writeUInt32BE(stream, 16);
  const c = crypto.createCipheriv("aes-128-gcm", key16, nonce);
  c.setAAD(hdr);
  const ct = Buffer.concat([c.update(body), c.final()]);
  return Buffer.concat([hdr, ct, c.getAuthTag()]);
}

describe("strangers on the data port", () => {
  test.concurrent("a connection that sends nothing does not hold up the transfer and is closed", async () => {
    const silent: Promise<number>[] = [];
    const c = await copy(pass, { beforeEach: (_conn, m) => void silent.push(stranger(m.target).closed) });
    await expectDelivered(c);
    expect(silent.length).toBe(5);
    // Closed at the latest when the session's streams are all in (or after 3 s of silence).
    for (const ms of await Promise.all(silent)) expect(ms).toBeLessThan(4000);
  });

  test.concurrent("wrong preambles (magic, version, session id, stream index, stream count) are dropped at once", async () => {
    const closed: Promise<number>[] = [];
    const c = await copy(pass, {
      beforeEach: (conn, m) => {
        const sid = conn > 0 ? m.preambles[0].subarray(16, 32) : undefined;
        const bad = [
          preamble({ magic: "SSH-", sid }),
          preamble({ version: 2, sid }),
          preamble({ stream: conn }), // a random session id
          preamble({ stream: 99, sid }),
          preamble({ stream: conn, nstreams: 50, sid }),
        ];
        for (const p of bad) closed.push(stranger(m.target, Buffer.concat([p, Buffer.alloc(52, 0x41)])).closed);
      },
    });
    await expectDelivered(c);
    expect(closed.length).toBe(25);
    for (const ms of await Promise.all(closed)) expect(ms).toBeLessThan(2500);
  });

  test.concurrent("the right preamble with a HELLO under a wrong key is dropped and the real stream still connects", async () => {
    // An on-path attacker knows the session id (it is plaintext) and races the real
    // connection for the same stream index; only the key can tell them apart.
    const closed: number[] = [];
    const c = await copy(pass, {
      beforeEach: async (conn, m) => {
        if (conn === 0) return;
        const sid = m.preambles[0].subarray(16, 32);
        const bytes = Buffer.concat([preamble({ stream: conn, sid }), helloUnder(crypto.randomBytes(16), sid, conn)]);
        closed.push(await stranger(m.target, bytes).closed);
      },
    });
    await expectDelivered(c);
    expect(closed.length).toBe(4);
    for (const ms of closed) expect(ms).toBeLessThan(2500);
  });

  test.concurrent("the right preamble with a HELLO replayed from an earlier session is dropped", async () => {
    const earlier = await copy();
    await expectDelivered(earlier);
    const oldHello = earlier.proxy.records.get(key(1, "up", 0))!;
    const closed: number[] = [];
    const c = await copy(pass, {
      beforeEach: async (conn, m) => {
        if (conn !== 1) return;
        const sid = m.preambles[0].subarray(16, 32);
        closed.push(await stranger(m.target, Buffer.concat([preamble({ stream: 1, sid }), oldHello])).closed);
      },
    });
    await expectDelivered(c);
    expect(closed.length).toBe(1);
    expect(closed[0]).toBeLessThan(2500);
  });

  test.concurrent("300 connections at once before the real ones do not stop the transfer, and all are closed", async () => {
    const closed: Promise<number>[] = [];
    const c = await copy(pass, {
      beforeEach: async (conn, m) => {
        if (conn !== 0) return;
        const opened: Promise<void>[] = [];
        for (let i = 0; i < 300; i++) {
          const bytes = i % 3 === 0 ? undefined : i % 3 === 1 ? Buffer.from("GET / HTTP/1.0\r\n\r\n") : preamble();
          const s = stranger(m.target, bytes);
          closed.push(s.closed);
          opened.push(new Promise((r) => (s.socket.once("connect", () => r()), s.socket.once("close", () => r()))));
        }
        await Promise.all(opened);
      },
    });
    await expectDelivered(c);
    expect(c.ms).toBeLessThan(20_000);
    const times = await Promise.race([Promise.all(closed), Bun.sleep(5000).then(() => null)]);
    expect(times).not.toBeNull();
    expect(closed.length).toBe(300);
  });

  test.concurrent("strangers that were dropped are logged by the listener", async () => {
    const log = path.join(tmpdir("log"), "escp.log");
    const c = await copy(pass, {
      size: MiB,
      args: ["--log", log],
      beforeEach: (conn, m) => {
        if (conn === 1) stranger(m.target, Buffer.concat([preamble({ magic: "JUNK" }), Buffer.alloc(52)]));
      },
    });
    await expectDelivered(c);
    // The server logs its own end to the same file (same host here).
    expect(fs.existsSync(log)).toBe(true);
    expect(fs.readFileSync(log, "utf8")).toMatch(/dropped/i);
  });

  test.concurrent("once its streams are in, the listener accepts no more connections", async () => {
    let refused = "not tried";
    const c = await copy(async (s, m) => {
      if (s.conn === 1 && s.dir === "up" && s.index === 1) {
        // Every stream is connected before any data flows; the listening socket is then closed.
        for (let i = 0; i < 40 && refused !== "refused"; i++) {
          refused = await new Promise<string>((r) => {
            const x = net.connect(m.target, "127.0.0.1");
            x.on("connect", () => (x.destroy(), r("accepted")));
            x.on("error", (e: NodeJS.ErrnoException) => r(e.code === "ECONNREFUSED" ? "refused" : String(e.code)));
          });
          if (refused !== "refused") await Bun.sleep(50);
        }
      }
      return [s.record];
    });
    await expectDelivered(c);
    expect(refused).toBe("refused");
  });
});

// ───────────────────────────── keys ─────────────────────────────

/** A remote escp that keeps a copy of its control channel input (the hello, with the key). */
function tapWrapper(): { wrapper: string; capture: string } {
  const dir = tmpdir("tap");
  const capture = path.join(dir, "control.bin");
  const wrapper = path.join(dir, "escp-tap");
  fs.writeFileSync(wrapper, `#!/bin/sh\ntee -a '${capture}' | '${ESCP_BIN}' "$@"\n`, { mode: 0o755 });
  return { wrapper, capture };
}

/** The hello messages (sid and master key, hex) in a control-channel capture. */
function hellos(capture: string): { sid: string; key: string }[] {
  const b = fs.existsSync(capture) ? fs.readFileSync(capture) : Buffer.alloc(0);
  const out: { sid: string; key: string }[] = [];
  for (let o = 0; o + 4 <= b.length; ) {
    const len = b.readUInt32BE(o);
    if (o + 4 + len > b.length) break;
    const m = JSON.parse(b.subarray(o + 4, o + 4 + len).toString("utf8"));
    if (m.type === "hello") out.push({ sid: m.sid, key: m.key });
    o += 4 + len;
  }
  return out;
}

/** Every readable cmdline and environ on the host that contains one of needles. */
function procHits(needles: Buffer[]): string[] {
  const hits: string[] = [];
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    for (const f of ["cmdline", "environ"]) {
      let b: Buffer;
      try {
        b = fs.readFileSync(`/proc/${pid}/${f}`);
      } catch {
        continue;
      }
      if (needles.some((n) => b.includes(n))) hits.push(`/proc/${pid}/${f}: ${b.toString("latin1").replace(/\0/g, " ").slice(0, 200)}`);
    }
  }
  return hits;
}

function keyForms(hexKey: string): Buffer[] {
  const raw = Buffer.from(hexKey, "hex");
  return [Buffer.from(hexKey), Buffer.from(hexKey.toUpperCase()), Buffer.from(raw.toString("base64").replace(/=+$/, "")), Buffer.from(raw.toString("base64url")), raw];
}

describe("session keys", () => {
  test.concurrent("the master key is on no command line, in no environment and in no log, during a transfer", async () => {
    const tap = tapWrapper();
    const logFile = path.join(tmpdir("log"), "escp.log");
    const logs = [logFile, "/tmp/escp.log.sender", "/tmp/escp.log.receiver"];
    const before = new Map(logs.map((l) => [l, fs.existsSync(l) ? fs.statSync(l).size : 0]));
    const hits: string[] = [];
    let samples = 0;
    let running = true;
    const sampler = (async () => {
      while (running) {
        const h = hellos(tap.capture);
        if (h.length) {
          hits.push(...procHits(keyForms(h[0].key)));
          samples++;
        }
        await Bun.sleep(25);
      }
    })();
    // Slow stream 1 down so that the sampler sees the whole transfer.
    const c = await copy(async (s) => (s.conn === 1 && s.dir === "up" && s.index > 0 ? (await Bun.sleep(8), [s.record]) : [s.record]), {
      args: ["-vv", "--log", logFile],
      env: { ESCP_REMOTE: tap.wrapper },
    });
    running = false;
    await sampler;
    expect(c.code).toBe(0);
    expect(await sameFile(path.join(c.src, "f"), path.join(c.dst, "f"))).toBe(true);
    const h = hellos(tap.capture);
    expect(h.length).toBe(1);
    expect(samples).toBeGreaterThanOrEqual(3); // it looked during the transfer (each look scans /proc: fewer on a loaded machine)
    expect(hits).toEqual([]);
    // -vv output (ssh's debug lines and escp's own), the --log file both ends wrote, and
    // the default -v logs if anything was written there meanwhile.
    expect(fs.existsSync(logFile) && fs.statSync(logFile).size > 0).toBe(true);
    for (const form of keyForms(h[0].key)) expect(Buffer.from(c.stderr).includes(form)).toBe(false);
    for (const l of logs) {
      if (!fs.existsSync(l) || fs.statSync(l).size === before.get(l)) continue;
      const text = fs.readFileSync(l).subarray(before.get(l));
      for (const form of keyForms(h[0].key)) expect(text.includes(form)).toBe(false);
    }
  });

  test.concurrent("the escp processes that hold session keys cannot dump core", async () => {
    // Checked while data flows: both ends have their keys by then.
    const seen: string[] = [];
    const c = await copy(async (s) => {
      if (s.conn === 1 && s.dir === "up" && s.index === 1) {
        for (const pid of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
          let argv: string[];
          try {
            argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
          } catch {
            continue;
          }
          if (argv[0] !== ESCP_BIN) continue;
          const limits = fs.readFileSync(`/proc/${pid}/limits`, "utf8");
          const core = /^Max core file size\s+(\S+)/m.exec(limits)?.[1];
          seen.push(`${argv.includes("--server") ? "server" : "client"} core=${core}`);
        }
      }
      return [s.record];
    }, { size: MiB });
    await expectDelivered(c);
    // This file's tests run concurrently: other escp processes may show up too; all must say 0.
    expect(seen.some((x) => x.startsWith("client"))).toBe(true);
    expect(seen.some((x) => x.startsWith("server"))).toBe(true);
    expect(seen.filter((x) => !x.endsWith("core=0"))).toEqual([]);
  });

  test.concurrent("every session has a fresh random session id and master key", async () => {
    const tap = tapWrapper();
    const a = await copy(pass, { size: MiB, env: { ESCP_REMOTE: tap.wrapper } });
    const b = await copy(pass, { size: MiB, env: { ESCP_REMOTE: tap.wrapper } });
    await expectDelivered(a);
    await expectDelivered(b);
    const [ha, hb] = hellos(tap.capture);
    expect(ha.key).toMatch(/^[0-9a-f]{64}$/);
    expect(ha.sid).toMatch(/^[0-9a-f]{32}$/);
    expect(ha.key).not.toBe(hb.key);
    expect(ha.sid).not.toBe(hb.sid);
    // The preambles on the wire carry the session id of the hello, the same on every stream.
    for (const [x, hx] of [[a, ha], [b, hb]] as const) {
      expect(x.proxy.preambles.length).toBe(5);
      x.proxy.preambles.forEach((p, i) => {
        expect(p.subarray(16, 32).toString("hex")).toBe(hx.sid);
        expect(p.readUInt32BE(8)).toBe(i);
      });
    }
    // The same plaintext HELLO position gives unrelated bytes in the two sessions.
    expect(a.proxy.records.get(key(1, "up", 0))!.equals(b.proxy.records.get(key(1, "up", 0))!)).toBe(false);
  });

  test.concurrent("every stream and direction has its own key and nonce prefix, so no record opens elsewhere", () => {
    const lib = native();
    const master = crypto.randomBytes(32), sid = crypto.randomBytes(16);
    const keys = new Map<string, string>();
    for (let s = 0; s < 9; s++) {
      for (const d of [0, 1]) {
        const k = new Uint8Array(16);
        expect(lib.escp_derive_key(ptr(master), ptr(sid), s, d, ptr(k))).toBe(0);
        keys.set(`${s}/${d}`, Buffer.from(k).toString("hex"));
      }
    }
    expect(new Set(keys.values()).size).toBe(18);
    // The key schedule is HKDF-SHA256(master, salt = sid, info = "escp/1 key" || u32 s || u8 d).
    const info = Buffer.concat([Buffer.from("escp/1 key"), Buffer.from([0, 0, 0, 3, 1])]);
    const expected = Buffer.from(crypto.hkdfSync("sha256", master, sid, info, 16)).toString("hex");
    expect(keys.get("3/1")).toBe(expected);
    // A record sealed on stream 1 connector → listener (prefix 2) does not open as listener → connector (prefix 3).
    const hdr = Buffer.alloc(16);
    hdr[0] = 3;
    hdr.writeUInt32BE(32, 4);
    hdr.writeBigUInt64BE(5n, 8);
    const seal = (s: number, d: number) => {
      const nonce = Buffer.alloc(12);
      nonce.writeUInt32BE(s * 2 + d, 0);
      nonce.writeBigUInt64BE(5n, 4);
      const body = Buffer.alloc(32, 7);
      const tag = new Uint8Array(16);
      expect(lib.escp_gcm_seal(ptr(Buffer.from(keys.get(`${s}/${d}`)!, "hex")), ptr(nonce), ptr(hdr), 16, ptr(body), 32, ptr(tag))).toBe(0);
      return { body, tag };
    };
    const open = (s: number, d: number, r: { body: Buffer; tag: Uint8Array }) => {
      const nonce = Buffer.alloc(12);
      nonce.writeUInt32BE(s * 2 + d, 0);
      nonce.writeBigUInt64BE(5n, 4);
      return lib.escp_gcm_open(ptr(Buffer.from(keys.get(`${s}/${d}`)!, "hex")), ptr(nonce), ptr(hdr), 16, ptr(Buffer.from(r.body)), 32, ptr(r.tag));
    };
    const r = seal(1, 0);
    expect(open(1, 0, r)).toBe(0);
    expect(open(1, 1, r)).toBe(-10001); // reflected
    expect(open(2, 0, r)).toBe(-10001); // spliced to another stream
  });
});

// ───────────────────────────── the ssh side ─────────────────────────────

/** The harness's ssh_config with another known_hosts file and without StrictHostKeyChecking. */
function sshConfigWith(knownHosts: string): string {
  const cfg = fs
    .readFileSync(harness.SSH_CONFIG!, "utf8")
    .replace(/^\s*UserKnownHostsFile .*$/m, `  UserKnownHostsFile ${knownHosts}`)
    .replace(/^\s*StrictHostKeyChecking .*\n/m, "");
  const file = path.join(tmpdir("sshcfg"), "ssh_config");
  fs.writeFileSync(file, cfg, { mode: 0o600 });
  return file;
}

describe("ssh host keys are ssh's business", () => {
  for (const client of ["system", "builtin"] as const) {
    test.concurrent(`${client} ssh: an unknown host key stops escp (it never turns host key checking off)`, async () => {
      const known = path.join(tmpdir("kh"), "known_hosts");
      fs.writeFileSync(known, "");
      const src = tmpdir("src"), dst = tmpdir("dst");
      await makeFile(path.join(src, "f"), 1000);
      const r = await harness.run([ESCP_BIN, "-F", sshConfigWith(known), "--ssh", client, path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: ESCP_BIN }, timeoutMs: 30_000 });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/Host key verification failed|host key .*(unknown|not known)|authenticity of host/i);
      expect(fs.readdirSync(dst)).toEqual([]);
      expect(fs.readFileSync(known, "utf8")).toBe("");
    });

    test.concurrent(`${client} ssh: a changed host key stops escp`, async () => {
      const dir = tmpdir("kh");
      const known = path.join(dir, "known_hosts");
      const other = Bun.spawnSync(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "other")]);
      expect(other.exitCode).toBe(0);
      const pub = fs.readFileSync(path.join(dir, "other.pub"), "utf8").split(" ").slice(0, 2).join(" ");
      const port = /Port (\d+)/.exec(fs.readFileSync(harness.SSH_CONFIG!, "utf8"))![1];
      fs.writeFileSync(known, `[127.0.0.1]:${port} ${pub}\n`);
      const src = tmpdir("src"), dst = tmpdir("dst");
      await makeFile(path.join(src, "f"), 1000);
      const r = await harness.run([ESCP_BIN, "-F", sshConfigWith(known), "--ssh", client, path.join(src, "f"), `${SSH_HOST}:${dst}/`], { env: { ESCP_REMOTE: ESCP_BIN }, timeoutMs: 30_000 });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/REMOTE HOST IDENTIFICATION HAS CHANGED/);
      expect(fs.readdirSync(dst)).toEqual([]);
    });
  }

  test.concurrent("-o StrictHostKeyChecking=accept-new reaches ssh: the policy is the user's choice", async () => {
    const known = path.join(tmpdir("kh"), "known_hosts");
    fs.writeFileSync(known, "");
    const src = tmpdir("src"), dst = tmpdir("dst");
    await makeFile(path.join(src, "f"), 1000, { seed: 4 });
    const r = await harness.run(
      [ESCP_BIN, "-F", sshConfigWith(known), "-o", "StrictHostKeyChecking=accept-new", path.join(src, "f"), `${SSH_HOST}:${dst}/`],
      { env: { ESCP_REMOTE: ESCP_BIN }, timeoutMs: 30_000 },
    );
    expect(r.code).toBe(0);
    expect(await sameFile(path.join(src, "f"), path.join(dst, "f"))).toBe(true);
    expect(fs.readFileSync(known, "utf8")).toMatch(/ssh-ed25519 /);
  });
});

// Root copies into a directory another local user may write (a sticky /tmp, a shared
// project directory); that user races the receiver there.
describe.skipIf(process.getuid?.() !== 0)("another local user on the receiving host", () => {
  /** Starts a slow push of an 8 MiB file into a sticky directory holding nobody's setuid `tool`; `during` runs once the copy's temporary file is there. */
  async function racedPush(during: (target: string) => void): Promise<{ code: number; stderr: string; target: string; src: string }> {
    const src = tmpdir("src"), dir = path.join(tmpdir("dst"), "shared");
    fs.mkdirSync(dir);
    fs.chmodSync(dir, 0o1777);
    const a = await makeFile(path.join(src, "tool"), 8 * 1024 * 1024, { seed: 301, mode: 0o755 });
    const target = path.join(dir, "tool");
    fs.writeFileSync(target, "#!/bin/sh\n");
    fs.chownSync(target, 65534, 65534);
    fs.chmodSync(target, 0o4755);
    const copy = runEscp(["-l", "16000", a, `${SSH_HOST}:${dir}/`]);
    const part = path.join(dir, ".tool.escp-part");
    for (let i = 0; i < 500 && !fs.existsSync(part); i++) await Bun.sleep(10);
    expect(fs.existsSync(part)).toBe(true);
    during(target);
    const r = await copy;
    return { code: r.code, stderr: r.stderr, target, src: a };
  }

  test("a setuid file of theirs removed while root's copy travels does not make root's copy setuid", async () => {
    const r = await racedPush((target) => fs.unlinkSync(target));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(r.src, r.target)).toBe(true);
    const st = fs.statSync(r.target);
    expect(st.uid).toBe(0);
    expect(st.mode & 0o7777).toBe(0o755 & ~process.umask());
  });

  test("a setuid file of theirs left in place stays theirs, with root's content, as scp's write into it", async () => {
    const r = await racedPush(() => {});
    expect(r.code).toBe(0);
    expect(await sameFile(r.src, r.target)).toBe(true);
    const st = fs.statSync(r.target);
    expect(st.uid).toBe(65534);
    expect(st.mode & 0o7777).toBe(0o4755);
  });

  test("their file at root's temporary name stays theirs, untouched; root's copy takes another name", async () => {
    const src = tmpdir("src"), dir = path.join(tmpdir("dst"), "shared");
    fs.mkdirSync(dir);
    fs.chmodSync(dir, 0o1777);
    const big = await makeFile(path.join(src, "big"), 3 * 1024 * 1024, { seed: 305 });
    const small = await makeFile(path.join(src, "small"), 100, { seed: 306 });
    fs.writeFileSync(path.join(dir, "small"), "old"); // a one-block file needs the temporary name only to replace one
    for (const name of [".big.escp-part", ".small.escp-part"]) {
      fs.writeFileSync(path.join(dir, name), "theirs, from long ago\n");
      fs.chownSync(path.join(dir, name), 65534, 65534);
    }
    const r = await runEscp([big, small, `${SSH_HOST}:${dir}/`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await sameFile(big, path.join(dir, "big"))).toBe(true);
    expect(await sameFile(small, path.join(dir, "small"))).toBe(true);
    for (const name of [".big.escp-part", ".small.escp-part"]) {
      expect(fs.readFileSync(path.join(dir, name), "utf8")).toBe("theirs, from long ago\n");
      expect(fs.statSync(path.join(dir, name)).uid).toBe(65534);
    }
    expect(fs.readdirSync(dir).sort()).toEqual([".big.escp-part", ".small.escp-part", "big", "small"]);
  });

  /** A --resume push whose target holds the source's first half; `during` runs once the copy has begun. */
  async function racedResume(during: (target: string) => void): Promise<{ code: number; stderr: string; target: string; src: string }> {
    const src = tmpdir("src"), dir = tmpdir("dst");
    const a = await makeFile(path.join(src, "r"), 16 * 1024 * 1024, { seed: 302 });
    const target = path.join(dir, "r");
    const old = Buffer.concat([fs.readFileSync(a).subarray(0, 8 * 1024 * 1024), crypto.randomBytes(8 * 1024 * 1024)]);
    fs.writeFileSync(target, old);
    fs.utimesSync(target, new Date(2020, 0, 1), new Date(2020, 0, 1));
    const copy = runEscp(["--resume", "-l", "16000", a, `${SSH_HOST}:${dir}/`]);
    const part = path.join(dir, ".r.escp-part");
    for (let i = 0; i < 500 && !fs.existsSync(part); i++) await Bun.sleep(10);
    expect(fs.existsSync(part)).toBe(true);
    await Bun.sleep(300); // its held blocks offered
    during(target);
    const r = await copy;
    return { code: r.code, stderr: r.stderr, target, src: a };
  }

  test("--resume: a target written to after its blocks were offered fails the file instead of passing its new bytes off as the source's", async () => {
    const r = await racedResume((target) => {
      const fd = fs.openSync(target, "r+");
      fs.writeSync(fd, "INJECTED BY ANOTHER PROCESS", 0);
      fs.closeSync(fd);
    });
    expect(r.stderr).toBe(`escp: ${r.target}: the file there changed while --resume used the blocks it held; copy it again\n`);
    expect(r.code).toBe(1);
    expect(fs.readFileSync(r.target, "utf8").startsWith("INJECTED BY ANOTHER PROCESS")).toBe(true); // theirs, not passed off as ours
    const again = await runEscp(["--resume", r.src, `${SSH_HOST}:${path.dirname(r.target)}/`]);
    expect(again.code).toBe(0);
    expect(await sameFile(r.src, r.target)).toBe(true);
  });

  /** Runs `body` with the sysctl fs.NAME set to value, restored after. */
  async function withSysctl(name: string, value: string, body: () => Promise<void>): Promise<void> {
    const at = `/proc/sys/fs/${name}`, was = fs.readFileSync(at, "utf8").trim();
    fs.writeFileSync(at, value);
    try {
      await body();
    } finally {
      fs.writeFileSync(at, was);
    }
  }

  test("fs.protected_symlinks: their link named as the destination in a sticky /tmp-like directory is not followed, as for scp", async () => {
    const src = tmpdir("src"), base = tmpdir("dst"), shared = path.join(base, "shared"), safe = path.join(base, "rootonly");
    fs.mkdirSync(shared);
    fs.chmodSync(shared, 0o1777);
    fs.mkdirSync(safe, { mode: 0o700 });
    fs.writeFileSync(path.join(safe, "conf"), "root's\n", { mode: 0o600 });
    fs.symlinkSync(path.join(safe, "conf"), path.join(shared, "out"));
    fs.lchownSync(path.join(shared, "out"), 65534, 65534);
    fs.writeFileSync(path.join(src, "f"), "new\n");
    await withSysctl("protected_symlinks", "1", async () => {
      const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${shared}/out`]);
      // The kernel's own refusal, met when escp first looks through the link.
      expect(r.stderr).toBe(`escp: ${SSH_HOST}: ${shared}/out: Permission denied\n`);
      expect(r.code).toBe(1);
    });
    expect(fs.readFileSync(path.join(safe, "conf"), "utf8")).toBe("root's\n");
    // Where the rule is off, the link is followed, as by scp.
    await withSysctl("protected_symlinks", "0", async () => {
      const r = await runEscp([path.join(src, "f"), `${SSH_HOST}:${shared}/out`]);
      expect(r.code).toBe(0);
    });
    expect(fs.readFileSync(path.join(safe, "conf"), "utf8")).toBe("new\n");
  });

  test("fs.protected_regular: their file planted at the name in a sticky /tmp-like directory does not receive root's copy, as the kernel refuses scp", async () => {
    const src = tmpdir("src"), shared = path.join(tmpdir("dst"), "shared"), target = path.join(shared, "secret");
    fs.mkdirSync(shared);
    fs.chmodSync(shared, 0o1777);
    fs.writeFileSync(target, "");
    fs.chmodSync(target, 0o666);
    fs.chownSync(target, 65534, 65534);
    fs.writeFileSync(path.join(src, "secret"), "root's secret\n");
    await withSysctl("protected_regular", "1", async () => {
      for (const args of [[path.join(src, "secret"), `${SSH_HOST}:${shared}/`], [path.join(src, "secret"), shared]]) {
        const r = await runEscp(args);
        expect(r.stderr).toBe(`escp: ${target}: Permission denied (another user's file in a sticky directory others may write: fs.protected_regular refuses writing it, to scp too)\n`);
        expect(r.code).toBe(1);
        expect(fs.readFileSync(target, "utf8")).toBe("");
      }
    });
    expect(fs.readdirSync(shared)).toEqual(["secret"]);
  });

  test("--resume: a FIFO put in the target's place does not hang the receiver", async () => {
    const r = await racedResume((target) => {
      fs.renameSync(target, `${target}.moved`);
      expect(Bun.spawnSync(["mkfifo", target]).exitCode).toBe(0);
    });
    expect(r.stderr).toBe(`escp: ${r.target}: the file there changed while --resume used the blocks it held; copy it again\n`);
    expect(r.code).toBe(1);
  }, 60_000);
});
