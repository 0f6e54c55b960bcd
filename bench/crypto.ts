/**
 * One-core throughput of the per-byte primitives escp's data plane can use:
 * AES-128-GCM seal and open (OpenSSL libcrypto as linked into escp's native
 * library, the system libcrypto with a reused context, Bun's node:crypto,
 * libgcrypt, intel-ipsec-mb's VAES/AVX-512 code), XXH3-128 and zstd level 1,
 * at 64 KiB, 256 KiB, 1 MiB, 4 MiB.
 *
 *   bun bench/crypto.ts            # prints the table, updates bench/RESULTS.md
 *   bun bench/crypto.ts --quick    # shorter trials
 *   bun bench/crypto.ts --json F   # also writes the rows as JSON to F (used by run.sh)
 *
 * Every variant first checks that its output decrypts (or matches another
 * implementation's) so a fast wrong primitive cannot win. Figures are GB/s
 * (10^9 bytes per second of plaintext), median of several timed trials, on
 * the main thread only (one core).
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gcmBackendsHere } from "../test/harness.ts";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..");
const { i32, u32, u64, i64, ptr: P, cstring, void: V } = FFIType;

export interface CryptoRow {
  what: string; // e.g. "AES-128-GCM seal"
  impl: string; // e.g. "OpenSSL (libescp, escp_gcm_seal)"
  size: number; // bytes per call
  gbps: number; // GB/s, best of the trials
  note?: string;
  ratio?: number; // compression ratio (zstd rows)
}

const SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
const KEY = new Uint8Array(randomBytes(16));
const NONCE = new Uint8Array(randomBytes(12));
const AAD = new Uint8Array(randomBytes(16)); // a record header is 16 bytes of AAD

interface Timing {
  trials: number;
  trialMs: number;
}

/**
 * Best GB/s of `trials` timed trials of at least trialMs each (after a warm-up).
 * Best, not median: on a shared VM, interference only ever slows a trial down.
 */
function measure(bytesPerCall: number, fn: () => void, t: Timing): number {
  const warmEnd = performance.now() + Math.min(100, t.trialMs);
  while (performance.now() < warmEnd) fn();
  const rates: number[] = [];
  for (let k = 0; k < t.trials; k++) {
    let calls = 0;
    const start = performance.now();
    let now = start;
    while (now - start < t.trialMs) {
      fn();
      calls++;
      now = performance.now();
    }
    rates.push((calls * bytesPerCall) / ((now - start) / 1000) / 1e9);
  }
  return Math.max(...rates);
}

function libescpPath(): string {
  const p = process.env.ESCP_LIB ?? path.join(REPO, "build", "libescp.so");
  if (!fs.existsSync(p)) throw new Error(`${p} not found: run scripts/build.sh first`);
  return p;
}

function loadEscp() {
  return dlopen(libescpPath(), {
    escp_gcm_backend: { args: [], returns: cstring },
    escp_gcm_seal: { args: [P, P, P, u32, P, u32, P], returns: i32 },
    escp_gcm_open: { args: [P, P, P, u32, P, u32, P], returns: i32 },
    escp_xxh128: { args: [P, u64, P], returns: V },
    escp_zstd_compress: { args: [P, u64, P, u64, i32], returns: i64 },
    escp_zstd_decompress: { args: [P, u64, P, u64], returns: i64 },
  }).symbols;
}

/** Reference ciphertext+tag from node:crypto, to check every other implementation against. */
function reference(plain: Uint8Array): { ct: Uint8Array; tag: Uint8Array } {
  const c = createCipheriv("aes-128-gcm", KEY, NONCE);
  c.setAAD(AAD);
  const ct = new Uint8Array(Buffer.concat([c.update(plain), c.final()]));
  return { ct, tag: new Uint8Array(c.getAuthTag()) };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;
}

type Impl = {
  name: string;
  note?: string;
  /** Seals buf in place, tag into tag. */
  seal(buf: Uint8Array, tag: Uint8Array): void;
  /** Opens buf in place; throws when the tag does not verify. */
  open(buf: Uint8Array, tag: Uint8Array): void;
  /** node:crypto cannot work in place: it returns a new buffer. */
  sealCopy?(buf: Uint8Array): { ct: Uint8Array; tag: Uint8Array };
  close?(): void;
};

function escpImpl(): Impl {
  const e = loadEscp();
  const k = ptr(KEY), n = ptr(NONCE), a = ptr(AAD);
  return {
    name: `libescp's choice here, ${String(e.escp_gcm_backend())} (escp_gcm_seal/open)`,
    note: "what the data plane uses (ffi/gcm.c measures the ones this CPU can run and keeps the fastest); one-shot: new context + key schedule per call (the data plane keeps one per direction)",
    seal(buf, tag) {
      if (e.escp_gcm_seal(k, n, a, AAD.length, ptr(buf), buf.length, ptr(tag)) !== 0) throw new Error("escp_gcm_seal failed");
    },
    open(buf, tag) {
      if (e.escp_gcm_open(k, n, a, AAD.length, ptr(buf), buf.length, ptr(tag)) !== 0) throw new Error("escp_gcm_open: tag mismatch");
    },
  };
}

/** The system libcrypto.so.3 (same OpenSSL 3.0 as libescp links statically), one context reused as the data plane does. */
function opensslReusedImpl(): Impl | string {
  let lib;
  try {
    lib = dlopen("libcrypto.so.3", {
      EVP_CIPHER_CTX_new: { args: [], returns: P },
      EVP_CIPHER_CTX_free: { args: [P], returns: V },
      EVP_CIPHER_fetch: { args: [P, cstring, P], returns: P },
      EVP_CipherInit_ex: { args: [P, P, P, P, P, i32], returns: i32 },
      EVP_CipherUpdate: { args: [P, P, P, P, i32], returns: i32 },
      EVP_CipherFinal_ex: { args: [P, P, P], returns: i32 },
      EVP_CIPHER_CTX_ctrl: { args: [P, i32, i32, P], returns: i32 },
      OpenSSL_version: { args: [i32], returns: cstring },
    }).symbols;
  } catch (e) {
    return `libcrypto.so.3 not loadable: ${(e as Error).message}`;
  }
  const L = lib;
  const cipher = L.EVP_CIPHER_fetch(null, Buffer.from("AES-128-GCM\0"), null);
  const enc = L.EVP_CIPHER_CTX_new(), dec = L.EVP_CIPHER_CTX_new();
  if (!cipher || !enc || !dec) return "EVP_CIPHER_fetch(AES-128-GCM) failed";
  L.EVP_CipherInit_ex(enc, cipher, null, ptr(KEY), null, 1);
  L.EVP_CipherInit_ex(dec, cipher, null, ptr(KEY), null, 0);
  const outl = new Int32Array(1), fin = new Uint8Array(32);
  const EVP_CTRL_AEAD_GET_TAG = 0x10, EVP_CTRL_AEAD_SET_TAG = 0x11;
  const version = String(L.OpenSSL_version(0));
  return {
    name: `${version.split(" ").slice(0, 2).join(" ")} (system libcrypto.so.3, EVP context reused)`,
    note: "what escp's record path does per record: set IV, AAD, update, final",
    seal(buf, tag) {
      const x = enc;
      if (L.EVP_CipherInit_ex(x, null, null, null, ptr(NONCE), -1) !== 1) throw new Error("init");
      L.EVP_CipherUpdate(x, null, ptr(outl), ptr(AAD), AAD.length);
      L.EVP_CipherUpdate(x, ptr(buf), ptr(outl), ptr(buf), buf.length);
      L.EVP_CipherFinal_ex(x, ptr(fin), ptr(outl));
      L.EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, ptr(tag));
    },
    open(buf, tag) {
      const x = dec;
      L.EVP_CipherInit_ex(x, null, null, null, ptr(NONCE), -1);
      L.EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, 16, ptr(tag));
      L.EVP_CipherUpdate(x, null, ptr(outl), ptr(AAD), AAD.length);
      L.EVP_CipherUpdate(x, ptr(buf), ptr(outl), ptr(buf), buf.length);
      if (L.EVP_CipherFinal_ex(x, ptr(fin), ptr(outl)) !== 1) throw new Error("EVP open: tag mismatch");
    },
    close() {
      L.EVP_CIPHER_CTX_free(enc);
      L.EVP_CIPHER_CTX_free(dec);
    },
  };
}

function nodeImpl(): Impl {
  const key = Buffer.from(KEY), iv = Buffer.from(NONCE), aad = Buffer.from(AAD);
  return {
    name: `Bun ${Bun.version} node:crypto (BoringSSL)`,
    note: "createCipheriv per message (a new IV needs a new cipher object); output is a new buffer",
    seal(buf, tag) {
      const c = createCipheriv("aes-128-gcm", key, iv);
      c.setAAD(aad);
      const out = c.update(buf);
      c.final();
      buf.set(out);
      tag.set(c.getAuthTag());
    },
    sealCopy(buf) {
      const c = createCipheriv("aes-128-gcm", key, iv);
      c.setAAD(aad);
      const out = c.update(buf);
      c.final();
      return { ct: out, tag: c.getAuthTag() };
    },
    open(buf, tag) {
      const d = createDecipheriv("aes-128-gcm", key, iv);
      d.setAAD(aad);
      d.setAuthTag(tag);
      const out = d.update(buf);
      d.final(); // throws on a bad tag
      buf.set(out);
    },
  };
}

function gcryptImpl(): Impl | string {
  let lib;
  try {
    lib = dlopen("libgcrypt.so.20", {
      gcry_check_version: { args: [cstring], returns: cstring },
      gcry_control: { args: [i32, i32], returns: u32 },
      gcry_cipher_open: { args: [P, i32, i32, u32], returns: u32 },
      gcry_cipher_close: { args: [P], returns: V },
      gcry_cipher_setkey: { args: [P, P, u64], returns: u32 },
      gcry_cipher_setiv: { args: [P, P, u64], returns: u32 },
      gcry_cipher_authenticate: { args: [P, P, u64], returns: u32 },
      gcry_cipher_encrypt: { args: [P, P, u64, P, u64], returns: u32 },
      gcry_cipher_decrypt: { args: [P, P, u64, P, u64], returns: u32 },
      gcry_cipher_gettag: { args: [P, P, u64], returns: u32 },
      gcry_cipher_checktag: { args: [P, P, u64], returns: u32 },
    }).symbols;
  } catch (e) {
    return `libgcrypt.so.20 not loadable (apt-get install libgcrypt20): ${(e as Error).message}`;
  }
  const G = lib;
  const version = String(G.gcry_check_version(null));
  G.gcry_control(37 /* GCRYCTL_DISABLE_SECMEM */, 0);
  G.gcry_control(38 /* GCRYCTL_INITIALIZATION_FINISHED */, 0);
  const GCRY_CIPHER_AES128 = 7, GCRY_CIPHER_MODE_GCM = 9; // gcrypt.h: GCRY_CIPHER_AES128 = GCRY_CIPHER_AES = 7
  const hd = new BigUint64Array(1);
  const open = (): any => {
    const e = G.gcry_cipher_open(ptr(hd), GCRY_CIPHER_AES128, GCRY_CIPHER_MODE_GCM, 0);
    if (e !== 0) throw new Error(`gcry_cipher_open: error ${e}`);
    const h = Number(hd[0]);
    if (G.gcry_cipher_setkey(h as any, ptr(KEY), 16) !== 0) throw new Error("gcry_cipher_setkey");
    return h;
  };
  const enc = open(), dec = open();
  return {
    name: `libgcrypt ${version} (handle reused)`,
    note: "setiv, authenticate(AAD), encrypt in place, gettag",
    seal(buf, tag) {
      G.gcry_cipher_setiv(enc, ptr(NONCE), 12);
      G.gcry_cipher_authenticate(enc, ptr(AAD), AAD.length);
      const rc = G.gcry_cipher_encrypt(enc, ptr(buf), buf.length, null, 0);
      if (rc !== 0) throw new Error(`gcry_cipher_encrypt: error 0x${rc.toString(16)}`);
      G.gcry_cipher_gettag(enc, ptr(tag), 16);
    },
    open(buf, tag) {
      G.gcry_cipher_setiv(dec, ptr(NONCE), 12);
      G.gcry_cipher_authenticate(dec, ptr(AAD), AAD.length);
      G.gcry_cipher_decrypt(dec, ptr(buf), buf.length, null, 0);
      if (G.gcry_cipher_checktag(dec, ptr(tag), 16) !== 0) throw new Error("gcry_cipher_checktag: tag mismatch");
    },
    close() {
      G.gcry_cipher_close(enc);
      G.gcry_cipher_close(dec);
    },
  };
}

/**
 * intel-ipsec-mb's VAES/AVX-512 AES-128-GCM from the system's libIPSec_MB.so.1 (the
 * library libescp links statically), key schedule and hash keys made once, as
 * ffi/gcm.c does, on the CPUs ffi/gcm.c offers it on.
 */
function ipsecMbImpl(): Impl | string {
  if (!gcmBackendsHere().includes("ipsec-mb")) return "intel-ipsec-mb's VAES/AVX-512 code: libescp does not offer it on this CPU";
  let lib;
  try {
    const gcm = { args: [P, P, P, P, u64, P, P, u64, P, u64], returns: V } as const;
    lib = dlopen("libIPSec_MB.so.1", {
      imb_get_version_str: { args: [], returns: cstring },
      aes_keyexp_128_enc_avx512: { args: [P, P], returns: V },
      aes_gcm_precomp_128_vaes_avx512: { args: [P], returns: V },
      aes_gcm_enc_128_vaes_avx512: gcm,
      aes_gcm_dec_128_vaes_avx512: gcm,
    }).symbols;
  } catch (e) {
    return `libIPSec_MB.so.1 not loadable (apt-get install libipsec-mb1): ${(e as Error).message}`;
  }
  const M = lib;
  // struct gcm_key_data (1008 bytes, loaded 64 bytes at a time) and gcm_context_data (88)
  const keyData = new Uint8Array(1008 + 64);
  const kd = ptr(keyData, (64 - (ptr(keyData) % 64)) % 64);
  const ctx = new Uint8Array(128), want = new Uint8Array(16);
  M.aes_keyexp_128_enc_avx512(ptr(KEY), kd);
  M.aes_gcm_precomp_128_vaes_avx512(kd);
  return {
    name: `intel-ipsec-mb ${String(M.imb_get_version_str())} VAES/AVX-512 (system libIPSec_MB.so.1, key data reused)`,
    note: "aes_gcm_enc/dec_128_vaes_avx512 in place, what ffi/gcm.c calls",
    seal(buf, tag) {
      M.aes_gcm_enc_128_vaes_avx512(kd, ptr(ctx), ptr(buf), ptr(buf), buf.length, ptr(NONCE), ptr(AAD), AAD.length, ptr(tag), 16);
    },
    open(buf, tag) {
      M.aes_gcm_dec_128_vaes_avx512(kd, ptr(ctx), ptr(buf), ptr(buf), buf.length, ptr(NONCE), ptr(AAD), AAD.length, ptr(want), 16);
      if (!equal(want, tag)) throw new Error("intel-ipsec-mb open: tag mismatch");
    },
    close() {
      keyData.fill(0); // also keeps it alive while kd points into it
    },
  };
}

/** Checks an implementation against node:crypto's output and that open() rejects a flipped bit. */
function verify(impl: Impl, size: number): void {
  const plain = new Uint8Array(randomBytes(size));
  const ref = reference(plain);
  const buf = plain.slice();
  const tag = new Uint8Array(16);
  impl.seal(buf, tag);
  if (!equal(buf, ref.ct) || !equal(tag, ref.tag)) throw new Error(`${impl.name}: ciphertext or tag differs from node:crypto's at ${size} bytes`);
  const back = buf.slice();
  impl.open(back, tag);
  if (!equal(back, plain)) throw new Error(`${impl.name}: open did not give back the plaintext at ${size} bytes`);
  const bad = buf.slice();
  bad[size >> 1] ^= 1;
  let rejected = false;
  try {
    impl.open(bad, tag);
  } catch {
    rejected = true;
  }
  if (!rejected) throw new Error(`${impl.name}: open accepted a flipped bit`);
}

/** Compressible test data: log-like lines from a small vocabulary (zstd -1 gets ~4-6x on it). */
function compressible(size: number): Uint8Array {
  const words = "escp copies files over parallel encrypted streams block offset digest record stream worker tag nonce"
    .split(" ");
  const out = new Uint8Array(size);
  let o = 0, x = 0x9e3779b9, t = 1.7e12;
  const next = () => {
    // xorshift32: every bit is usable (an LCG's low bits repeat with short periods)
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  while (o < size) {
    t += next() % 1000;
    const line = `${new Date(t).toISOString()} ${words[next() % words.length]} ${words[next() % words.length]} id=${next() % 100000}\n`;
    const b = Buffer.from(line);
    out.set(b.subarray(0, Math.min(b.length, size - o)), o);
    o += b.length;
  }
  return out;
}

export function runCrypto(opts: { quick?: boolean; log?: (s: string) => void } = {}): { rows: CryptoRow[]; skipped: string[] } {
  const log = opts.log ?? ((s: string) => process.stderr.write(s + "\n"));
  const t: Timing = opts.quick ? { trials: 3, trialMs: 80 } : { trials: 5, trialMs: 250 };
  const rows: CryptoRow[] = [];
  const skipped: string[] = [];
  const impls: Impl[] = [escpImpl()];
  for (const mk of [opensslReusedImpl, gcryptImpl, ipsecMbImpl]) {
    const r = mk();
    if (typeof r === "string") skipped.push(r);
    else impls.push(r);
  }
  impls.push(nodeImpl());

  for (const impl of impls) {
    for (const size of SIZES) verify(impl, size);
    for (const size of SIZES) {
      const buf = new Uint8Array(randomBytes(size));
      const tag = new Uint8Array(16);
      const seal = measure(size, () => impl.seal(buf, tag), t);
      // open needs a valid tag for the current buffer: seal once, then open a fresh copy each call
      const plain = new Uint8Array(randomBytes(size));
      const sealed = plain.slice();
      const stag = new Uint8Array(16);
      impl.seal(sealed, stag);
      const work = new Uint8Array(size);
      const open = measure(size, () => {
        work.set(sealed); // memcpy at ~10+ GB/s: included, and the same for every implementation
        impl.open(work, stag);
      }, t);
      rows.push({ what: "AES-128-GCM seal", impl: impl.name, size, gbps: seal, note: impl.note });
      rows.push({ what: "AES-128-GCM open", impl: impl.name, size, gbps: open, note: impl.note + "; includes a memcpy of the sealed record per call" });
      log(`  ${impl.name.padEnd(58)} ${fmtSize(size).padStart(7)}  seal ${seal.toFixed(2)} GB/s  open ${open.toFixed(2)} GB/s`);
    }
    impl.close?.();
  }

  const e = loadEscp();
  for (const size of SIZES) {
    const buf = new Uint8Array(randomBytes(size));
    const out = new Uint8Array(16);
    const g = measure(size, () => e.escp_xxh128(ptr(buf), size, ptr(out)), t);
    rows.push({ what: "XXH3-128", impl: "xxHash via libescp (escp_xxh128)", size, gbps: g });
    log(`  XXH3-128 ${fmtSize(size).padStart(7)}  ${g.toFixed(2)} GB/s`);
  }
  for (const [kind, make] of [["random (incompressible)", (n: number) => new Uint8Array(randomBytes(n))], ["log-like text", compressible]] as const) {
    for (const size of SIZES) {
      const src = make(size);
      const cap = size + (size >> 7) + 1024;
      const dst = new Uint8Array(cap);
      const back = new Uint8Array(size);
      const n = Number(e.escp_zstd_compress(ptr(src), size, ptr(dst), cap, 1));
      if (n <= 0) throw new Error(`escp_zstd_compress failed: ${n}`);
      const m = Number(e.escp_zstd_decompress(ptr(dst), n, ptr(back), size));
      if (m !== size || !equal(back, src)) throw new Error("escp_zstd round trip differs");
      const c = measure(size, () => e.escp_zstd_compress(ptr(src), size, ptr(dst), cap, 1), t);
      const d = measure(size, () => e.escp_zstd_decompress(ptr(dst), n, ptr(back), size), t);
      const ratio = size / n;
      rows.push({ what: "zstd -1 compress", impl: `libescp, ${kind}`, size, gbps: c, note: `ratio ${ratio.toFixed(2)}`, ratio });
      rows.push({ what: "zstd decompress", impl: `libescp, ${kind}`, size, gbps: d, note: `ratio ${ratio.toFixed(2)}`, ratio });
      log(`  zstd -1 ${kind.padEnd(24)} ${fmtSize(size).padStart(7)}  compress ${c.toFixed(2)} GB/s  decompress ${d.toFixed(2)} GB/s  ratio ${ratio.toFixed(2)}`);
    }
  }
  return { rows, skipped };
}

export function fmtSize(n: number): string {
  return n >= 1 << 20 ? `${n / (1 << 20)} MiB` : `${n / 1024} KiB`;
}

/** Markdown for RESULTS.md: one row per (primitive, implementation), one column per size. */
export function cryptoMarkdown(rows: CryptoRow[], skipped: string[]): string {
  const keys: string[] = [];
  const byKey = new Map<string, CryptoRow[]>();
  for (const r of rows) {
    const k = `${r.what}\u0000${r.impl}`;
    if (!byKey.has(k)) {
      byKey.set(k, []);
      keys.push(k);
    }
    byKey.get(k)!.push(r);
  }
  const lines = [
    `| primitive | implementation | ${SIZES.map(fmtSize).join(" | ")} | note |`,
    `| --- | --- | ${SIZES.map(() => "---:").join(" | ")} | --- |`,
  ];
  for (const k of keys) {
    const rs = byKey.get(k)!;
    const cells = SIZES.map((s) => {
      const r = rs.find((x) => x.size === s);
      return r ? r.gbps.toFixed(2) : "–";
    });
    const note = rs[0]!.ratio !== undefined ? `ratio ${rs.map((r) => r.ratio!.toFixed(1)).join(" / ")}` : (rs[0]!.note ?? "");
    lines.push(`| ${rs[0]!.what} | ${rs[0]!.impl} | ${cells.join(" | ")} | ${note} |`);
  }
  const gcm = rows.filter((r) => r.what.startsWith("AES") && r.size === 1 << 20);
  const best = (w: string) => gcm.filter((r) => r.what === w).sort((a, b) => b.gbps - a.gbps)[0];
  const bs = best("AES-128-GCM seal"), bo = best("AES-128-GCM open");
  const out = [
    "GB/s = 10^9 bytes of plaintext per second on one core (the benchmark's main thread), best of the timed trials (interference on a shared VM only slows a trial down).",
    "Each implementation is first checked against node:crypto's ciphertext and tag, and for rejecting a flipped bit.",
    "",
    ...lines,
  ];
  if (bs && bo) out.push("", `Fastest at 1 MiB: seal ${bs.impl} (${bs.gbps.toFixed(2)} GB/s), open ${bo.impl} (${bo.gbps.toFixed(2)} GB/s).`);
  for (const s of skipped) out.push("", `Skipped: ${s}`);
  return out.join("\n");
}

export const CRYPTO_BEGIN = "<!-- crypto:begin -->";
export const CRYPTO_END = "<!-- crypto:end -->";

if (import.meta.main) {
  const args = process.argv.slice(2);
  const quick = args.includes("--quick");
  const ji = args.indexOf("--json");
  process.stderr.write(`crypto: one-core throughput${quick ? " (quick)" : ""}\n`);
  const { rows, skipped } = runCrypto({ quick });
  const md = cryptoMarkdown(rows, skipped);
  if (ji >= 0 && args[ji + 1]) {
    fs.writeFileSync(args[ji + 1]!, JSON.stringify({ rows, skipped, quick, at: new Date().toISOString() }, null, 2));
  } else {
    // Alone: refresh the crypto section of RESULTS.md (or start one).
    const file = path.join(HERE, "RESULTS.md");
    const section = `${CRYPTO_BEGIN}\n${md}\n${CRYPTO_END}`;
    let text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "# escp benchmark results\n";
    const a = text.indexOf(CRYPTO_BEGIN), b = text.indexOf(CRYPTO_END);
    if (a >= 0 && b > a) text = text.slice(0, a) + section + text.slice(b + CRYPTO_END.length);
    else text += `\n## Crypto primitives (bench/crypto.ts)\n\n${section}\n`;
    fs.writeFileSync(file, text);
    process.stderr.write(`crypto: table written to ${path.relative(process.cwd(), file)}\n`);
  }
  console.log(md);
}
