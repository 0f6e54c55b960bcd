/**
 * Fuzzing (issue 6): the parsers that read what a peer sends.
 *
 * TypeScript (property tests with a seeded generator, random and mutated
 * inputs): decodeFiles / decodeVerdict / decodeResume may only ever return or
 * throw ProtocolError, and never allocate on a count the body cannot hold;
 * safeComponents accepts exactly the paths that stay beneath the destination.
 *
 * C (ffi/fuzz/, under ASan and UBSan): the record receive path, the
 * handshake and bounded zstd, each fuzzed for a few seconds with libFuzzer
 * when clang has it, else with ffi/fuzz/driver.c (random mutation). Inputs
 * that once crashed live in ffi/fuzz/regressions/<harness>/ and run every
 * time. scripts/fuzz.sh runs the same harnesses for longer.
 *
 * ESCP_FUZZ_SEED=<n> replays the TypeScript part with one seed;
 * ESCP_FUZZ_SECONDS=<s> sets the time per C harness (default 6);
 * ESCP_FUZZ_ENGINE=libfuzzer|driver picks the engine (default: libFuzzer if clang has it).
 */
import { describe, test, expect, beforeAll } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { spawnSync, spawn } from "node:child_process";
import * as protocol from "../src/protocol.ts";
import { decodeFiles, encodeFiles, decodeResume, encodeResume, ProtocolError, type FileEntry, type FileVerdict } from "../src/protocol.ts";
import { safeComponents, resolveTarget, PathError } from "../src/plan/target.ts";
import { tmpdir, REPO_ROOT } from "./harness.ts";

// DONE/RESULT bodies: one verdict, or a batch (the newer layout), whichever src/protocol.ts has.
const P = protocol as Record<string, any>;
const BATCHED = typeof P.decodeVerdicts === "function";
const encodeVerdicts = (vs: FileVerdict[]): Uint8Array => (BATCHED ? P.encodeVerdicts(vs) : P.encodeVerdict(vs[0]));
const decodeVerdicts = (b: Uint8Array): FileVerdict[] => (BATCHED ? P.decodeVerdicts(b) : [P.decodeVerdict(b)]);

const SEED = Number(process.env.ESCP_FUZZ_SEED ?? Date.now() % 1_000_000);
const SECONDS = Number(process.env.ESCP_FUZZ_SECONDS ?? 6);

/** xorshift32: the same seed gives the same inputs (the seed is in every failure message). */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  return {
    int: (n: number) => next() % Math.max(1, n),
    bytes: (n: number) => Buffer.from(Array.from({ length: n }, () => next() & 0xff)),
    pick: <T>(a: readonly T[]) => a[next() % a.length],
    chance: (p: number) => next() / 2 ** 32 < p,
  };
}

/** One random structural change: flip, set, insert, delete, truncate, or plant a big number. */
function mutate(r: ReturnType<typeof rng>, b: Buffer): Buffer {
  const x = Buffer.from(b);
  switch (r.int(7)) {
    case 0:
      if (x.length) x[r.int(x.length)] ^= 1 << r.int(8);
      return x;
    case 1:
      if (x.length) x[r.int(x.length)] = r.int(256);
      return x;
    case 2: {
      const at = r.int(x.length + 1);
      return Buffer.concat([x.subarray(0, at), r.bytes(1 + r.int(50)), x.subarray(at)]);
    }
    case 3: {
      const at = r.int(x.length + 1);
      return Buffer.concat([x.subarray(0, at), x.subarray(at + 1 + r.int(50))]);
    }
    case 4:
      return x.subarray(0, r.int(x.length + 1));
    case 5:
      if (x.length >= 4) x.writeUInt32BE(r.pick([0xffffffff, 0x80000000, 1_000_000_000, 65536, 2]), r.int(x.length - 3));
      return x;
    default:
      if (x.length >= 8) x.writeBigUInt64BE(r.pick([0xffffffffffffffffn, 1n << 63n, (1n << 62n) + 1n, 0n]), r.int(x.length - 7));
      return x;
  }
}

const NAME_PARTS = ["a", "b.txt", ".", "..", "", "/", "\0", "é", "\u202e", "\x1b[2J", " ", "x".repeat(300), "...", ".hidden"];

function randomEntry(r: ReturnType<typeof rng>, id: bigint): FileEntry {
  const parts = Array.from({ length: 1 + r.int(4) }, () => r.pick(NAME_PARTS));
  return {
    id,
    path: parts.join(r.chance(0.8) ? "/" : ""),
    kind: r.chance(0.8) ? "file" : "dir",
    size: BigInt(r.int(1 << 30)) * BigInt(1 + r.int(1000)),
    mode: r.int(0o10000),
    mtimeNs: BigInt(r.int(2 ** 31)) * 1_000_000_000n,
    atimeNs: BigInt(r.int(2 ** 31)),
    top: r.chance(0.5),
  };
}

/** Calls f; anything thrown must be a ProtocolError. */
function onlyProtocolErrors<T>(what: string, input: Buffer, f: () => T): T | undefined {
  try {
    return f();
  } catch (e) {
    if (e instanceof ProtocolError) return undefined;
    throw new Error(`${what} threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message} on ${input.toString("hex").slice(0, 200)} (ESCP_FUZZ_SEED=${SEED})`);
  }
}

describe(`TypeScript parsers under random input (ESCP_FUZZ_SEED=${SEED})`, () => {
  test("decodeFiles: random bodies return or throw ProtocolError, never more entries than fit", () => {
    const r = rng(SEED);
    for (let i = 0; i < 20_000; i++) {
      const b = r.bytes(r.int(160));
      if (b.length >= 4 && r.chance(0.5)) b.writeUInt32BE(r.int(8), 0); // plausible counts too
      const out = onlyProtocolErrors("decodeFiles", b, () => decodeFiles(b));
      if (out) expect(out.length).toBeLessThanOrEqual(Math.max(0, (b.length - 4) / 40));
    }
  });

  test("decodeFiles: mutated real file lists return or throw ProtocolError, and what returns is bounded", () => {
    const r = rng(SEED + 1);
    for (let i = 0; i < 5_000; i++) {
      const entries = Array.from({ length: 1 + r.int(5) }, (_, k) => randomEntry(r, BigInt(k)));
      const good = Buffer.from(encodeFiles(entries));
      let b: Buffer = good;
      for (let k = 1 + r.int(3); k > 0; k--) b = mutate(r, b);
      const out = onlyProtocolErrors("decodeFiles", b, () => decodeFiles(b));
      if (!out) continue;
      expect(out.length).toBeLessThanOrEqual((b.length - 4) / 48);
      for (const e of out) {
        expect(e.size <= 1n << 62n).toBe(true);
        expect(e.kind === "file" || e.kind === "dir").toBe(true);
      }
    }
  });

  test("FILES carries times before 1677 and after 2262 (int64 nanoseconds' ends) exactly, and refuses 1e9 nanoseconds", () => {
    const times = [-10_000_000_000_000_000_001n, -500_000_000n, 0n, 10_413_792_000_123_456_789n, 9_223_372_036_854_775_808n];
    const entries = times.map((t, i): FileEntry => ({ id: BigInt(i), path: `f${i}`, kind: "file", size: 1n, mode: 0o644, mtimeNs: t, atimeNs: -t, top: true }));
    const back = decodeFiles(encodeFiles(entries));
    expect(back.map((e) => e.mtimeNs)).toEqual(times);
    expect(back.map((e) => e.atimeNs)).toEqual(times.map((t) => -t));
    const b = Buffer.from(encodeFiles(entries.slice(0, 1)));
    b.writeUInt32BE(1_000_000_000, 4 + 24 + 8); // the mtime's nanoseconds
    expect(() => decodeFiles(b)).toThrow(ProtocolError);
  });

  test("decodeFiles: a count the body cannot hold is refused at once, whatever the count", () => {
    const one = Buffer.from(encodeFiles([randomEntry(rng(SEED + 2), 0n)]));
    for (const n of [2, 1000, 1_000_000_000, 0xffffffff]) {
      const b = Buffer.from(one);
      b.writeUInt32BE(n, 0);
      const t0 = performance.now();
      expect(() => decodeFiles(b)).toThrow(ProtocolError);
      expect(performance.now() - t0).toBeLessThan(50);
    }
  });

  test("decodeFiles(encodeFiles(x)) is x", () => {
    const r = rng(SEED + 3);
    for (let i = 0; i < 2_000; i++) {
      const entries = Array.from({ length: r.int(6) }, (_, k) => randomEntry(r, BigInt(k * 7)));
      expect(decodeFiles(encodeFiles(entries))).toEqual(entries);
    }
  });

  test("DONE/RESULT verdicts and RESUME: random and mutated bodies return or throw ProtocolError", () => {
    const r = rng(SEED + 4);
    const verdict = () => ({ id: BigInt(r.int(1e9)), status: 0 - r.int(20000), bytes: BigInt(r.int(2 ** 31)), digest: r.bytes(16), message: r.pick(NAME_PARTS) });
    for (let i = 0; i < 20_000; i++) {
      let b: Buffer;
      if (r.chance(0.4)) {
        b = r.bytes(r.int(120));
        if (b.length >= 4 && r.chance(0.5)) b.writeUInt32BE(r.int(4), 0);
      } else if (r.chance(0.5)) {
        b = mutate(r, Buffer.from(encodeVerdicts(Array.from({ length: BATCHED ? 1 + r.int(3) : 1 }, verdict))));
      } else {
        const n = r.int(5);
        b = mutate(r, Buffer.from(encodeResume({ id: BigInt(r.int(1e9)), first: r.int(1e6), hashes: r.bytes(16 * n), last: r.chance(0.5) })));
      }
      const vs = onlyProtocolErrors("decoding DONE/RESULT", b, () => decodeVerdicts(b));
      if (vs) {
        expect(vs.length).toBeLessThanOrEqual(Math.max(1, b.length / 40));
        for (const v of vs) expect(v.digest.length).toBe(16);
      }
      const res = onlyProtocolErrors("decodeResume", b, () => decodeResume(b));
      if (res) expect(res.hashes.length).toBe(b.length - 20);
    }
  });

  test("DONE/RESULT: a verdict count the body cannot hold is refused at once", () => {
    if (!BATCHED) return; // one verdict per record: there is no count to lie about
    const one = Buffer.from(encodeVerdicts([{ id: 1n, status: 0, bytes: 10n, digest: new Uint8Array(16), message: "" }]));
    for (const n of [2, 1_000_000_000, 0xffffffff]) {
      const b = Buffer.from(one);
      b.writeUInt32BE(n, 0);
      const t0 = performance.now();
      expect(() => decodeVerdicts(b)).toThrow(ProtocolError);
      expect(performance.now() - t0).toBeLessThan(50);
    }
  });

  test("verdicts survive encoding: decode(encode(x)) is x", () => {
    const r = rng(SEED + 7);
    for (let i = 0; i < 2_000; i++) {
      const vs = Array.from({ length: BATCHED ? r.int(5) + (BATCHED ? 0 : 1) : 1 }, () => ({
        id: BigInt(r.int(1e9)), status: 0 - r.int(20000), bytes: BigInt(r.int(2 ** 31)), digest: new Uint8Array(r.bytes(16)), message: r.pick(["", "a", "x\0y", "é"]),
      }));
      expect(decodeVerdicts(encodeVerdicts(vs))).toEqual(vs);
    }
  });

  test("safeComponents accepts exactly the relative paths that stay beneath the destination", () => {
    const r = rng(SEED + 5);
    const root = "/dest/root";
    for (let i = 0; i < 50_000; i++) {
      const p = Array.from({ length: r.int(6) }, () => r.pick(NAME_PARTS)).join(r.chance(0.7) ? "/" : r.pick(["", "//", "/./", "/../"]));
      let parts: string[] | undefined;
      try {
        parts = safeComponents(p);
      } catch (e) {
        if (!(e instanceof PathError)) throw new Error(`safeComponents threw ${(e as Error).message} on ${JSON.stringify(p)}`);
      }
      const resolved = path.posix.resolve(root, p);
      const beneath = resolved.startsWith(root + "/");
      if (parts) {
        // Accepted: beneath the root, the same path, no component that means something else.
        expect(beneath).toBe(true);
        expect(parts.join("/")).toBe(p);
        expect(resolved).toBe(path.posix.join(root, ...parts));
        for (const c of parts) {
          expect(["", ".", ".."]).not.toContain(c);
          expect(c.includes("\0")).toBe(false);
          expect(Buffer.byteLength(c)).toBeLessThanOrEqual(255);
        }
      } else if (beneath && p && !p.includes("\0") && !p.startsWith("/") && p.length <= 4096) {
        // Refused though it resolves beneath: only for a '.', '..' or empty component or a long name.
        expect(p.split("/").some((c) => c === "" || c === "." || c === ".." || Buffer.byteLength(c) > 255)).toBe(true);
      }
    }
  });

  test("a target's place() keeps every accepted path beneath the destination, renamed or not", () => {
    const dir = tmpdir("place");
    fs.mkdirSync(path.join(dir, "existing"));
    const intoDir = resolveTarget(path.join(dir, "existing"), { multipleSources: false });
    const renamed = resolveTarget(path.join(dir, "newname"), { multipleSources: false });
    const r = rng(SEED + 6);
    for (let i = 0; i < 10_000; i++) {
      const p = Array.from({ length: 1 + r.int(5) }, () => r.pick(NAME_PARTS)).join("/");
      for (const t of [intoDir, renamed]) {
        let rel: string | undefined;
        try {
          rel = t.place(p);
        } catch (e) {
          if (!(e instanceof PathError)) throw e;
        }
        if (rel === undefined) continue;
        if (!path.posix.resolve(t.root, rel).startsWith(t.root + "/") || rel.split("/").some((c) => c === "" || c === "." || c === "..")) {
          throw new Error(`place(${JSON.stringify(p)}) = ${JSON.stringify(rel)} leaves ${t.root} (ESCP_FUZZ_SEED=${SEED})`);
        }
      }
    }
    fs.closeSync(intoDir.rootFd);
    fs.closeSync(renamed.rootFd);
  });
});

// ─────────────────────────── native harnesses ───────────────────────────

const HARNESSES = ["fuzz_records", "fuzz_handshake", "fuzz_zstd"] as const;
const FUZZ_DIR = path.join(REPO_ROOT, "build", "fuzz");
let built: { engine: string } | { error: string } = { error: "not built" };

/** Runs a command to its end without blocking the event loop (harnesses run side by side). */
function runAsync(argv: string[], opts: { cwd?: string; timeoutMs: number }): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: opts.cwd, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    const keep = (d: Buffer) => (output = (output + d.toString()).slice(-20_000));
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    const t = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs);
    child.on("close", (code) => (clearTimeout(t), resolve({ code, output })));
  });
}

describe("native parsers under a fuzzer (ffi/fuzz, ASan + UBSan)", () => {
  beforeAll(() => {
    const b = spawnSync("bash", [path.join(REPO_ROOT, "ffi", "fuzz", "build.sh"), process.env.ESCP_FUZZ_ENGINE ?? "auto"], { cwd: REPO_ROOT, encoding: "utf8", timeout: 180_000 });
    if (b.status !== 0) {
      built = { error: `ffi/fuzz/build.sh failed (${b.status}): ${b.stderr.slice(-2000)}` };
      return;
    }
    const s = spawnSync(process.execPath, [path.join(REPO_ROOT, "ffi", "fuzz", "seeds.ts"), path.join(FUZZ_DIR, "corpus")], { cwd: REPO_ROOT, encoding: "utf8" });
    if (s.status !== 0) {
      built = { error: `ffi/fuzz/seeds.ts failed: ${s.stderr}` };
      return;
    }
    built = { engine: fs.readFileSync(path.join(FUZZ_DIR, "engine"), "utf8").trim() };
  }, 200_000);

  test("the harnesses build", () => {
    if ("error" in built) throw new Error(built.error);
    expect(["libfuzzer", "driver"]).toContain(built.engine);
  });

  for (const h of HARNESSES) {
    test.concurrent(`${h}: every regression input and seed runs clean`, async () => {
      if ("error" in built) throw new Error(built.error);
      const inputs = [path.join(FUZZ_DIR, "corpus", h), path.join(REPO_ROOT, "ffi", "fuzz", "regressions", h)]
        .filter((d) => fs.existsSync(d))
        .flatMap((d) => fs.readdirSync(d).filter((f) => !f.startsWith(".") && !f.endsWith(".md")).map((f) => path.join(d, f)));
      expect(inputs.length).toBeGreaterThan(0);
      const r = await runAsync([path.join(FUZZ_DIR, h), "-timeout=20", ...inputs], { timeoutMs: 60_000 });
      if (r.code !== 0) throw new Error(`${h} crashed on a known input:\n${r.output}`);
    }, 90_000);

    test.concurrent(`${h}: ${SECONDS} s of fuzzing finds no crash`, async () => {
      if ("error" in built) throw new Error(built.error);
      const work = tmpdir(`fuzz-${h}`);
      const corpus = path.join(work, "corpus");
      fs.mkdirSync(corpus);
      const r = await runAsync(
        [path.join(FUZZ_DIR, h), `-max_total_time=${SECONDS}`, "-max_len=8192", "-timeout=20", "-rss_limit_mb=2048",
          `-artifact_prefix=${work}/`, "-print_final_stats=1", corpus, path.join(FUZZ_DIR, "corpus", h)],
        { timeoutMs: (SECONDS + 60) * 1000 },
      );
      const crashes = fs.readdirSync(work).filter((f) => /^(crash|leak|timeout|oom)-/.test(f));
      if (r.code !== 0 || crashes.length) {
        throw new Error(`${h} found ${crashes.join(", ") || "a failure"} (kept in ${work}; add it to ffi/fuzz/regressions/${h}/):\n${r.output}`);
      }
    }, (SECONDS + 90) * 1000);
  }
});
