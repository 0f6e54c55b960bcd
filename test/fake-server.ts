/**
 * A hostile `escp --server` for pull-mode tests (test/hostile.test.ts).
 *
 * It speaks the real protocol with the real native library (handshake, keys,
 * sealed records), so everything it sends passes authentication: what the
 * local receiver sees is exactly what a compromised or malicious remote host
 * could send. It then sends whatever its scenario asks for: unsafe file
 * names, lying counts and sizes, oversized records, zstd bombs, data for
 * files it never announced.
 *
 * The scenario is the first source operand, so the test picks it with the
 * command line: `escp escp-test:<scenario>[=<arg>] <dst>/`, with ESCP_REMOTE
 * (or --remote-escp) naming a wrapper that runs `bun test/fake-server.ts`.
 *
 * The fake never decides anything on the receiver's behalf: after a fatal
 * attack it waits until the receiver drops stream 0 and exits, so the
 * receiver's own error is what the user (the test) sees.
 */
import fs from "node:fs";
import { ControlChannel } from "../src/session/control.ts";
import { listen, acceptStreams } from "../src/session/connect.ts";
import { native, ptr, Rec, nativeError, PROTO_VERSION, MAX_CTRL_BODY, type Pointer } from "../src/native.ts";
import * as protocol from "../src/protocol.ts";
import { encodeFiles, type FileEntry, type FileVerdict } from "../src/protocol.ts";
import { FileDigest } from "../src/transfer/digest.ts";

type Hello = Extract<import("../src/protocol.ts").ControlMessage, { type: "hello" }>;

const lib = native();
const F_COMPRESSED = 1;

// DONE/RESULT bodies: one verdict each, or a batch of them (the newer layout), whichever src/ speaks.
const P = protocol as Record<string, any>;
const encodeDone = (v: FileVerdict): Uint8Array => (P.encodeVerdicts ? P.encodeVerdicts([v]) : P.encodeVerdict(v));
const decodeResults = (b: Uint8Array): FileVerdict[] => (P.decodeVerdicts ? P.decodeVerdicts(b) : [P.decodeVerdict(b)]);

/** The fake's side of an established session: sends sealed or raw records on any stream. */
class Peer {
  /** Next seq this side sends on each stream (each HELLO was seq 0). */
  readonly seq: number[];
  private nextId = 0n;
  /** Files announced, and RESULTs received for them. */
  private announced = 0;
  private results = 0;
  constructor(
    readonly ch: ControlChannel,
    readonly conns: Pointer[],
    readonly hello: Hello,
  ) {
    this.seq = conns.map(() => 1);
  }

  get dataStreams(): number {
    return this.conns.length - 1;
  }

  id(): bigint {
    return this.nextId++;
  }

  /** One sealed record: authentic as far as the receiver can tell. */
  send(stream: number, type: number, body: Uint8Array | null, flags = 0): void {
    const r = lib.escp_send_record(this.conns[stream], type, flags, body && body.length ? ptr(body) : null, body?.length ?? 0);
    this.seq[stream]++;
    if (r < 0) throw new Error(`fake server: send on stream ${stream}: ${nativeError(r)}`);
  }

  /** Bytes written straight to a stream's socket, outside any record. */
  raw(stream: number, bytes: Uint8Array): void {
    const fd = lib.escp_conn_fd(this.conns[stream]);
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(fd, bytes, off, bytes.length - off);
  }

  /** A record header with the expected seq that announces `len` body bytes (no body follows). */
  header(stream: number, type: number, len: number, flags = 0): void {
    const h = Buffer.alloc(16);
    h[0] = type;
    h[1] = flags;
    h.writeUInt32BE(len >>> 0, 4);
    h.writeBigUInt64BE(BigInt(this.seq[stream]), 8);
    this.raw(stream, h);
  }

  announce(entries: FileEntry[]): void {
    this.send(0, Rec.FILES, encodeFiles(entries));
    this.announced += entries.length;
  }

  entry(path: string, size: number | bigint, id = this.id()): FileEntry {
    return { id, path, kind: "file", size: BigInt(size), mode: 0o644, mtimeNs: 0n, atimeNs: 0n, top: true };
  }

  data(stream: number, id: bigint, offset: bigint, block: Uint8Array, flags = 0): void {
    const body = Buffer.alloc(16 + block.length);
    body.writeBigUInt64BE(id, 0);
    body.writeBigUInt64BE(offset, 8);
    body.set(block, 16);
    this.send(stream, Rec.DATA, body, flags);
  }

  /** Sends a whole file honestly (announce, blocks round-robin over the data streams, DONE). */
  file(path: string, content: Uint8Array, opts: { announce?: boolean; id?: bigint; top?: boolean } = {}): bigint {
    const e = { ...this.entry(path, content.length, opts.id), top: opts.top ?? true };
    if (opts.announce !== false) this.announce([e]);
    const bs = this.hello.blockSize;
    const d = new FileDigest();
    const h = new Uint8Array(16);
    let s = 0;
    for (let off = 0; off < content.length; off += bs) {
      const block = content.subarray(off, Math.min(off + bs, content.length));
      lib.escp_xxh128(ptr(block), block.length, ptr(h));
      d.add(BigInt(off), block.length, h);
      this.data(1 + (s++ % this.dataStreams), e.id, BigInt(off), block);
    }
    this.done(e.id, BigInt(content.length), d.final());
    return e.id;
  }

  done(id: bigint, bytes: bigint, digest: Uint8Array = new Uint8Array(16)): void {
    this.send(0, Rec.DONE, encodeDone({ id, status: 0, bytes, digest, message: "" }));
  }

  /**
   * Ends the session as an honest sender does (a verdict for every file, then
   * END everywhere), reports, and waits for bye. With waitResults false, END
   * goes out at once, whatever is unfinished.
   */
  async finish(waitResults = true, failures: unknown = []): Promise<never> {
    const body = new Uint8Array(MAX_CTRL_BODY);
    const meta = new Uint32Array(2);
    const next = (): number => {
      const n = Number(lib.escp_recv_record(this.conns[0], ptr(body), body.length, ptr(meta)));
      if (n < 0) exit(0); // the receiver gave up: its message is the one that counts
      if (meta[0] === Rec.RESULT) this.results += decodeResults(body.subarray(0, n)).length;
      return meta[0];
    };
    while (waitResults && this.results < this.announced) if (next() === 0) exit(0);
    for (let s = 1; s < this.conns.length; s++) this.send(s, Rec.END, null);
    this.send(0, Rec.END, null);
    for (;;) {
      const t = next();
      if (t === Rec.END || t === 0) break;
    }
    this.ch.send({
      type: "report",
      summary: { files: 0, bytes: 0, bytesSkipped: 0, bytesNetwork: 0, bytesDisk: 0, bytesCompressed: 0, seconds: 0, failures: failures as [], streams: this.dataStreams },
    });
    await Promise.race([this.ch.receive(), Bun.sleep(10_000)]);
    return exit(0);
  }

  /** After a fatal attack: waits until the receiver drops stream 0 (or goes away), then leaves. */
  waitForDeath(): never {
    const body = new Uint8Array(MAX_CTRL_BODY);
    const meta = new Uint32Array(2);
    for (;;) {
      const n = Number(lib.escp_recv_record(this.conns[0], ptr(body), body.length, ptr(meta)));
      if (n < 0 || meta[0] === 0) return exit(0);
    }
  }
}

function exit(code: number): never {
  process.exit(code);
}

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

/** zstd frame of `size` zero bytes (tiny), with its content size in the header. */
function zstdBomb(size: number): Uint8Array {
  const src = new Uint8Array(size);
  const dst = new Uint8Array(64 * 1024 + (size >> 7));
  const n = Number(lib.escp_zstd_compress(ptr(src), src.length, ptr(dst), dst.length, 19));
  if (n < 0) throw new Error(`fake server: zstd: ${nativeError(n)}`);
  return dst.slice(0, n);
}

/**
 * The same bomb without the content size in its header (as a streaming
 * compressor writes it), so the receiver cannot refuse it up front and must
 * bound the decompression itself.
 */
function zstdBombNoSize(size: number): Uint8Array {
  const f = zstdBomb(size);
  // Frame: magic(4) | descriptor(1) | [window(1)] | [dictID] | [FCS] | blocks...
  const fhd = f[4];
  const fcsFlag = fhd >> 6, single = (fhd >> 5) & 1, dictFlag = fhd & 3;
  if (single) throw new Error("fake server: unexpected single-segment frame");
  const fcsSize = [0, 2, 4, 8][fcsFlag];
  const dictSize = [0, 1, 2, 4][dictFlag];
  const head = 4 + 1 + 1 + dictSize;
  const out = new Uint8Array(f.length - fcsSize);
  out.set(f.subarray(0, head), 0);
  out[4] = fhd & 0x3f; // FCS flag 0: no content size field
  out.set(f.subarray(head + fcsSize), head);
  return out;
}

const scenarios: Record<string, (p: Peer, arg: string) => Promise<void> | void> = {
  /** Handled before the streams (main): `ready` names a stream count hello did not ask for. */
  badstreams() {},
  /** Handled before the streams (main): `ready` with other fields (arg: JSON) of the wrong shape. */
  badready() {},
  /** A well-behaved sender: proves the fake speaks the protocol. */
  async honest(p) {
    p.file("hello.txt", new TextEncoder().encode("hello from the fake server\n"));
    p.file("blocks.bin", bytes(3 * p.hello.blockSize + 1234, 3));
    await p.finish();
  },
  /** Names with `..` that climb out of the destination, next to a file that is fine. */
  async dotdot(p) {
    p.file("../canary/pwned", bytes(100));
    p.file("ok.txt", bytes(10));
    p.file("sub/../../canary/pwned2", bytes(100));
    p.file("..", bytes(5));
    await p.finish();
  },
  /** An absolute path (arg: where it points, e.g. the test's canary directory). */
  async absolute(p, arg) {
    p.file(arg || "/tmp/escp-pwned", bytes(100));
    p.file("ok.txt", bytes(10));
    await p.finish();
  },
  /** NUL inside a name (C would stop at it), and names with empty or `.` components. */
  async nul(p) {
    p.file("ok\0../../canary/pwned", bytes(100));
    p.file("a//b", bytes(10));
    p.file("./c", bytes(10));
    p.file("", bytes(10));
    p.file("ok.txt", bytes(10));
    await p.finish();
  },
  /** Terminal control sequences in names (set the title, clear the screen, ring the bell). */
  async ctrlchars(p) {
    p.file("\x1b]0;owned\x07\x1b[2J\x1b[31m/../x", bytes(10));
    p.file("ok\x1b[1A\r\x08\x9b2J/../y", bytes(10));
    p.file("ok.txt", bytes(10));
    await p.finish();
  },
  /** A 300-byte name and a 60000-byte path. */
  async longname(p) {
    p.file("n".repeat(300), bytes(10));
    p.file(Array.from({ length: 600 }, () => "d".repeat(99)).join("/"), bytes(10));
    p.file("ok.txt", bytes(10));
    await p.finish();
  },
  /** A FILES record that claims 10^9 entries in a 44-byte body. */
  manyfiles(p) {
    const body = Buffer.from(encodeFiles([p.entry("a", 1)]));
    body.writeUInt32BE(1_000_000_000, 0);
    p.send(0, Rec.FILES, body);
    p.waitForDeath();
  },
  /** A file of 2^63 bytes. */
  hugesize(p) {
    p.announce([p.entry("huge", 1n << 63n)]);
    p.waitForDeath();
  },
  /** A record header on a data stream announcing a body of 4 GiB - 16 bytes. */
  hugerecord(p) {
    const e = p.entry("f", 1 << 20);
    p.announce([e]);
    p.header(1, Rec.DATA, 0xfffffff0);
    p.waitForDeath();
  },
  /** The same on stream 0. */
  hugecontrol(p) {
    p.header(0, Rec.FILES, 0xfffffff0);
    p.waitForDeath();
  },
  /** A compressed DATA block that expands to 256 MiB, far beyond the block size. */
  zstdbomb(p) {
    const e = p.entry("bomb", 1n << 40n);
    p.announce([e]);
    p.data(1, e.id, 0n, zstdBomb(256 << 20), F_COMPRESSED);
    p.waitForDeath();
  },
  /** The same bomb without a content size in the frame header. */
  zstdbombnosize(p) {
    const e = p.entry("bomb", 1n << 40n);
    p.announce([e]);
    p.data(1, e.id, 0n, zstdBombNoSize(256 << 20), F_COMPRESSED);
    p.waitForDeath();
  },
  /** A compressed FILES record that expands to 256 MiB. */
  filesbomb(p) {
    p.send(0, Rec.FILES, zstdBombNoSize(256 << 20), F_COMPRESSED);
    p.waitForDeath();
  },
  /** DATA for a file id that is never announced, then the session ends as if all were well. */
  async unannounced(p) {
    p.file("ok.txt", bytes(10));
    p.data(1, 123456789n, 0n, bytes(4096));
    await p.finish();
  },
  /** DATA past the announced size of a file. */
  overrun(p) {
    const e = p.entry("small", 10);
    p.announce([e]);
    p.data(1, e.id, 0n, bytes(4096));
    p.waitForDeath();
  },
  /** A second block for a file after its DONE settled it. */
  aftersettled(p) {
    const id = p.file("ok.txt", bytes(10));
    // Let the receiver settle it first (RESULT comes back on stream 0).
    const body = new Uint8Array(MAX_CTRL_BODY);
    const meta = new Uint32Array(2);
    lib.escp_recv_record(p.conns[0], ptr(body), body.length, ptr(meta));
    p.data(1, id, 0n, bytes(10));
    p.waitForDeath();
  },
  /** The same file id announced twice (a second file under an id in use). */
  dupid(p) {
    const e = p.entry("one", 10);
    p.announce([e]);
    p.announce([{ ...e, path: "two" }]);
    p.waitForDeath();
  },
  /** DONE for a file never announced. */
  strangedone(p) {
    p.done(999n, 10n);
    p.waitForDeath();
  },
  /** A control record type where none belongs (RESUME is unused; HELLO again). */
  badtype(p) {
    p.send(0, Rec.HELLO, new Uint8Array(20));
    p.waitForDeath();
  },
  /** A path through a symlink that already exists in the destination (arg: the link's name). */
  async through(p, arg) {
    p.announce([{ ...p.entry(arg || "evil", 0), kind: "dir", mode: 0o755 }]);
    p.file(`${arg || "evil"}/x`, bytes(100), { top: false });
    p.file("ok.txt", bytes(10));
    await p.finish();
  },
  /** Over the symlink at the target name itself: the file must replace the link, not write through it. */
  async overlink(p, arg) {
    p.file(arg || "link", bytes(100, 9));
    await p.finish();
  },
  /**
   * More files in flight than the receiver's file table has slots (4096): id 0
   * and id 4096 share a slot. Then a block for file 0.
   */
  collide(p) {
    const batch: FileEntry[] = [];
    for (let i = 0; i <= 4096; i++) batch.push(p.entry(`f${i}`, 10));
    p.announce(batch);
    p.data(1, 0n, 0n, bytes(10));
    p.waitForDeath();
  },
  /** An honest file, then a final report whose failures are arg (JSON), whatever its shape. */
  async badreport(p, arg) {
    p.file(`badreport=${arg}`, bytes(10)); // the name asked for
    await p.finish(true, JSON.parse(arg));
  },
  /** The file asked for, then two that were not (CVE-2019-6111: a shell startup file, a script). */
  async unasked(p) {
    p.file("unasked", bytes(10));
    p.file(".bashrc", new TextEncoder().encode("echo pwned\n"));
    p.file("evil.sh", bytes(10));
    await p.finish();
  },
  /** A directory, and a file in it, to a copy without -r (arg: the directory's name). */
  async unaskeddir(p, arg) {
    p.announce([{ ...p.entry(arg || ".ssh", 0), kind: "dir", mode: 0o700 }]);
    p.file(`${arg || ".ssh"}/authorized_keys`, new TextEncoder().encode("ssh-ed25519 AAAA attacker\n"), { top: false });
    await p.finish();
  },
  /** A top directory flagged as `dir/.` (its contents straight into the target) that was not asked for. */
  async unaskedmerge(p) {
    p.announce([{ ...p.entry("x", 0), kind: "dir", mode: 0o755, merge: true }]);
    p.file("x/.bashrc", new TextEncoder().encode("echo pwned\n"), { top: false });
    await p.finish();
  },
  /** Announces many files and finishes none of them, then ends the session. */
  async flood(p, arg) {
    const n = Number(arg || 20000);
    for (let done = 0; done < n; ) {
      const batch: FileEntry[] = [];
      for (let i = 0; i < 2000 && done < n; i++, done++) batch.push(p.entry(`f${done}`, 1 << 20));
      p.announce(batch);
    }
    await p.finish(false);
  },
};

async function main(): Promise<number> {
  if (!process.argv.includes("--server")) {
    process.stderr.write("usage: bun test/fake-server.ts --server   (scenario = the first source operand)\n");
    return 2;
  }
  const ch = new ControlChannel(Bun.stdin.stream(), (b) => void process.stdout.write(b), "the connecting escp");
  const hello = await ch.receive();
  if (!hello || hello.type !== "hello") return 1;
  const spec = hello.sources?.[0] ?? "honest";
  const eq = spec.indexOf("=");
  const name = (eq < 0 ? spec : spec.slice(0, eq)).replace(/^.*\//, "");
  const arg = eq < 0 ? "" : spec.slice(eq + 1);
  const scenario = scenarios[name];
  if (!scenario || hello.serverRole !== "sender") {
    ch.send({ type: "error", message: `fake server: no scenario '${name}' for role ${hello.serverRole}` });
    await Bun.sleep(200);
    return 1;
  }
  const l = listen("127.0.0.1", hello.ports, () => "fake");
  if (name === "badstreams" || name === "badready") {
    // A stream count the client did not ask for, or other fields of ready (arg: JSON): it must refuse before connecting any.
    const fields = name === "badstreams" ? { streams: JSON.parse(arg) } : JSON.parse(arg);
    ch.send({ type: "ready", version: PROTO_VERSION, port: l.port, addr: "127.0.0.1", streams: hello.streams, ...fields });
    await ch.receive().catch(() => null);
    return 1;
  }
  ch.send({ type: "ready", version: PROTO_VERSION, port: l.port, addr: "127.0.0.1", streams: hello.streams });
  const keys = { sid: Buffer.from(hello.sid, "hex"), master: Buffer.from(hello.key, "hex") };
  const conns = acceptStreams(l, keys, hello.streams, 20_000).map((c) => c as Pointer);
  keys.master.fill(0);
  await scenario(new Peer(ch, conns, hello), arg);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`fake server: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
  },
);
