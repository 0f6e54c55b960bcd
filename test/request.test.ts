/**
 * What a pull asked for (src/plan/request.ts): the names a remote sender may
 * announce, as OpenSSH's scp checks them ("filename does not match request").
 * The whole check, with a lying remote behind the real sshd, is in hostile.test.ts.
 */
import { describe, test, expect } from "bun:test";
import { Request } from "../src/plan/request.ts";
import type { FileEntry } from "../src/protocol.ts";

const file = (path: string, top = true): Pick<FileEntry, "path" | "kind" | "top" | "merge"> => ({ path, kind: "file", top });
const dir = (path: string, top = true, merge?: boolean) => ({ path, kind: "dir" as const, top, merge });

describe("top-level names", () => {
  test("a plain operand admits its last name only, with or without a trailing slash", () => {
    const r = new Request(["logs/app.log", "/srv/data/"], true);
    expect(r.refuses(file("app.log"))).toBeUndefined();
    expect(r.refuses(dir("data"))).toBeUndefined();
    expect(r.refuses(file("logs"))).toBe("does not match the request");
    expect(r.refuses(file(".bashrc"))).toBe("does not match the request");
  });

  test("a backslash-escaped operand admits the name the remote reads (and the name as written)", () => {
    const r = new Request(["My\\ Docs"], true);
    expect(r.refuses(dir("My Docs"))).toBeUndefined();
    expect(r.refuses(dir("My\\ Docs"))).toBeUndefined();
    expect(r.refuses(dir("My"))).toBe("does not match the request");
  });

  test("a pattern admits what it matches as glob(3) does: a leading dot only by a leading dot", () => {
    const r = new Request(["logs/*.gz", "img/photo-?.jpg"], false);
    expect(r.refuses(file("a.gz"))).toBeUndefined();
    expect(r.refuses(file("photo-1.jpg"))).toBeUndefined();
    expect(r.refuses(file(".hidden.gz"))).toBe("does not match the request");
    expect(r.refuses(file("a.txt"))).toBe("does not match the request");
    const dots = new Request([".*rc"], false);
    expect(dots.refuses(file(".bashrc"))).toBeUndefined();
    expect(dots.refuses(file("x.rc"))).toBe("does not match the request");
  });

  test("braces are plain characters, as in the remote's glob", () => {
    const r = new Request(["{a,b}.txt"], false);
    expect(r.refuses(file("a.txt"))).toBe("does not match the request");
    expect(r.refuses(file("{a,b}.txt"))).toBeUndefined();
  });

  test("operands whose last name the remote decides (home, ~, ..) admit any one name, never a path", () => {
    for (const op of ["", "~", "~user", "..", "dir/..", "/"]) {
      const r = new Request([op], true);
      expect(r.refuses(dir("root"))).toBeUndefined();
      expect(r.refuses(file("x/.bashrc"))).toBe("does not match the request");
    }
  });

  test("an operand's escapes come out before its last name is read, as the remote reads it (`d1/\\.`, `d1\\/`, `sub/\\.\\.`)", () => {
    expect(new Request(["d1/\\."], true).refuses(dir("d1", true, true))).toBeUndefined();
    expect(new Request(["d1\\/"], true).refuses(dir("d1"))).toBeUndefined();
    expect(new Request(["sub/\\.\\."], true).refuses(dir("parent"))).toBeUndefined();
    // A pattern before the last name does not make the last name one: its escapes come out too.
    expect(new Request(["d[1]/my\\ file"], false).refuses(file("my file"))).toBeUndefined();
    expect(new Request(["d*/a\\\\b"], false).refuses(file("a\\b"))).toBeUndefined();
  });

  test("a `dir/.` operand admits a directory whose contents go straight into the target; nothing else does", () => {
    expect(new Request(["src/."], true).refuses(dir("src", true, true))).toBeUndefined();
    expect(new Request(["src"], true).refuses(dir("src", true, true))).toBe("does not match the request");
  });
});

describe("directories and what is below them", () => {
  test("without -r, a directory or a path below a name is refused", () => {
    const r = new Request(["data"], false);
    expect(r.refuses(dir("data"))).toBe("is a directory, and -r was not given");
    expect(r.refuses(file("data/x", false))).toBe("is below the name asked for, and -r was not given");
  });

  test("with -r, paths below a directory that was announced are admitted, and only those", () => {
    const r = new Request(["data", "notes.txt"], true);
    expect(r.refuses(file("data/x", false))).toBe("does not match the request"); // before its directory
    expect(r.refuses(dir("data"))).toBeUndefined();
    expect(r.refuses(file("data/sub/x", false))).toBeUndefined();
    expect(r.refuses(file("notes.txt"))).toBeUndefined();
    expect(r.refuses(file("notes.txt/x", false))).toBe("does not match the request"); // a file is no directory
    expect(r.refuses(file(".ssh/authorized_keys", false))).toBe("does not match the request");
  });
});
