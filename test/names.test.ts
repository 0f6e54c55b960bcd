// File names as bytes (src/names.ts): what is not UTF-8 survives the trip through strings.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { decodeName, encodeName, fsPath, hasEscapedBytes, nameBytes, prefixOfBytes } from "../src/names.ts";
import { partBase } from "../src/transfer/receiver.ts";
import { safeComponents } from "../src/plan/target.ts";
import { printable } from "../src/text.ts";

const bytes = (...b: number[]) => new Uint8Array(b);

describe("names that are not UTF-8", () => {
  test("valid UTF-8 decodes as UTF-8, astral characters included, and encodes back", () => {
    for (const s of ["plain.txt", "ünïcødé ✓ 日本", "emoji 😀 \u{10ffff}", ""]) {
      const b = new TextEncoder().encode(s);
      expect(decodeName(b)).toBe(s);
      expect(hasEscapedBytes(s)).toBe(false);
      expect(encodeName(s)).toEqual(b);
    }
  });

  test("each byte that does not decode becomes U+DC80-U+DCFF, and goes back to that byte", () => {
    expect(decodeName(bytes(0x63, 0x61, 0x66, 0xe9))).toBe("caf\udce9");
    // a UTF-16 surrogate written as UTF-8, an overlong '/', a lone continuation, a cut sequence
    expect(decodeName(bytes(0xed, 0xa0, 0x80))).toBe("\udced\udca0\udc80");
    expect(decodeName(bytes(0xc0, 0xaf))).toBe("\udcc0\udcaf");
    expect(decodeName(bytes(0x80, 0x41))).toBe("\udc80A");
    expect(decodeName(bytes(0x41, 0xe6, 0x97))).toBe("A\udce6\udc97");
    // valid sequences around an invalid byte stay characters
    expect(decodeName(bytes(0xc3, 0xa9, 0xff, 0xc3, 0xa9))).toBe("é\udcffé");
  });

  test("every byte string survives decode and encode unchanged", () => {
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 256;
    for (let i = 0; i < 2000; i++) {
      const b = Uint8Array.from({ length: 1 + (i % 40) }, next);
      expect(encodeName(decodeName(b))).toEqual(b);
    }
  });

  test("a name that begins with U+FEFF keeps it (a decoder drops a leading BOM unless told not to)", () => {
    const b = bytes(0xef, 0xbb, 0xbf, 0x61);
    expect(decodeName(b)).toBe("\ufeffa");
    expect(decodeName(bytes(0xef, 0xbb, 0xbf, 0xff))).toBe("\ufeff\udcff");
    expect(encodeName(decodeName(b))).toEqual(b);
  });

  test("two names that differ only in bytes that do not decode stay two names", () => {
    expect(decodeName(bytes(0x78, 0xfe))).not.toBe(decodeName(bytes(0x78, 0xff)));
  });

  test("a name's length is its bytes' (a receiver refuses names over 255 bytes)", () => {
    expect(nameBytes(decodeName(new Uint8Array(255).fill(0xe9)))).toBe(255);
    expect(nameBytes("é\udce9😀")).toBe(2 + 1 + 4);
    expect(() => safeComponents(`d/${decodeName(new Uint8Array(255).fill(0xe9))}`)).not.toThrow();
    expect(() => safeComponents(`d/${decodeName(new Uint8Array(256).fill(0xe9))}`)).toThrow(/longer than 255 bytes/);
  });

  test("a start of a name by bytes ends between characters", () => {
    expect(prefixOfBytes("日本語", 7)).toBe("日本");
    expect(prefixOfBytes("a\udce9😀b", 5)).toBe("a\udce9");
    expect(prefixOfBytes("a\udce9😀b", 6)).toBe("a\udce9😀");
    expect(prefixOfBytes("abc", 10)).toBe("abc");
  });

  test("temporary names fit in 255 bytes, and two long names that begin alike get two", () => {
    expect(partBase("f")).toBe(".f.escp-part");
    const long = "日".repeat(85), other = "日".repeat(84) + "本", latin = decodeName(new Uint8Array(255).fill(0xe9));
    for (const n of [long, other, latin, "x".repeat(244), "x".repeat(245)]) {
      expect(nameBytes(partBase(n))).toBeLessThanOrEqual(255);
      expect(partBase(n)).toBe(partBase(n)); // fixed, so --resume finds it again
    }
    expect(partBase("x".repeat(244))).toBe(`.${"x".repeat(244)}.escp-part`);
    expect(partBase(long)).not.toBe(partBase(other));
  });

  test("node:fs gets the bytes, not U+FFFD", () => {
    expect(fsPath("a/b")).toBe("a/b");
    expect(fsPath("caf\udce9")).toEqual(Buffer.from([0x63, 0x61, 0x66, 0xe9]));
  });

  test("printed, such a byte is an octal escape, as a control character is", () => {
    expect(printable("caf\udce9.txt")).toBe("caf\\351.txt");
    expect(printable("😀\x1b")).toBe("😀\\033");
  });

  test("a command line's bytes reach escp whole (Bun's process.argv has U+FFFD for them)", () => {
    const script = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "escp-names-")), "args.ts");
    fs.writeFileSync(script, `import { rawArgs, encodeName } from ${JSON.stringify(path.resolve(import.meta.dir, "../src/names.ts"))};
console.log(rawArgs(process.argv.slice(2)).map((a) => Buffer.from(encodeName(a)).toString("hex")).join(" "));`);
    const r = spawnSync("sh", ["-c", `exec "$0" "$1" plain "$(printf 'caf\\351')" "ok é"`, process.execPath, script], { encoding: "utf8" });
    expect(r.stderr).toBe("");
    const hex = (s: string) => Buffer.from(s).toString("hex");
    expect(r.stdout.trim().split(" ")).toEqual([hex("plain"), "636166e9" /* caf\\351 */, hex("ok é")]);
    fs.rmSync(path.dirname(script), { recursive: true });
  });
});
