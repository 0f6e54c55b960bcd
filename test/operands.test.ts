import { describe, expect, test } from "bun:test";
import { formatOperand, isRemote, type Operand, OperandError, parseOperand } from "../src/cli/operands.ts";

describe("host:path operands", () => {
  test("host:path is remote", () => {
    expect(parseOperand("dtn:/data/x")).toEqual({ kind: "remote", host: "dtn", path: "/data/x" });
  });

  test("user@host:path carries the user", () => {
    expect(parseOperand("alice@dtn:x")).toEqual({ kind: "remote", user: "alice", host: "dtn", path: "x" });
  });

  test("the last @ separates user from host, as scp's strrchr does", () => {
    expect(parseOperand("a@b@dtn:x")).toEqual({ kind: "remote", user: "a@b", host: "dtn", path: "x" });
  });

  test("an empty user before @ means no user", () => {
    expect(parseOperand("@dtn:x")).toEqual({ kind: "remote", host: "dtn", path: "x" });
  });

  test("host: with nothing after the colon is the remote home", () => {
    expect(parseOperand("dtn:")).toEqual({ kind: "remote", host: "dtn", path: "" });
  });

  test("a leading ~ stays in the path for the remote to expand", () => {
    expect(parseOperand("dtn:~bob/x")).toEqual({ kind: "remote", host: "dtn", path: "~bob/x" });
  });

  test("only the first colon splits; later ones belong to the path", () => {
    expect(parseOperand("dtn:a:b")).toEqual({ kind: "remote", host: "dtn", path: "a:b" });
  });

  test("an operand that names no host is refused", () => {
    expect(() => parseOperand("alice@:x")).toThrow(OperandError);
  });

  test("a user name with a quote or space is refused, like scp's okname()", () => {
    expect(() => parseOperand("al'ice@dtn:x")).toThrow("not a valid user name");
  });
});

describe("IPv6 hosts", () => {
  test("[::1]:path unbrackets the address", () => {
    expect(parseOperand("[::1]:x")).toEqual({ kind: "remote", host: "::1", path: "x" });
  });

  test("user@[fe80::1]:path", () => {
    expect(parseOperand("bob@[fe80::1]:d/")).toEqual({ kind: "remote", user: "bob", host: "fe80::1", path: "d/" });
  });

  test("[::1]: is the home directory", () => {
    expect(parseOperand("[::1]:")).toEqual({ kind: "remote", host: "::1", path: "" });
  });

  test("a bracketed address without the colon after it is a local name", () => {
    expect(parseOperand("[::1]")).toEqual({ kind: "local", path: "[::1]" });
  });
});

describe("local operands", () => {
  test("a bare name is local", () => {
    expect(parseOperand("file")).toEqual({ kind: "local", path: "file" });
  });

  test("a slash before the first colon makes it local", () => {
    expect(parseOperand("./a:b")).toEqual({ kind: "local", path: "./a:b" });
    expect(parseOperand("/x/y:z")).toEqual({ kind: "local", path: "/x/y:z" });
  });

  test("a leading colon is part of a local name", () => {
    expect(parseOperand(":x")).toEqual({ kind: "local", path: ":x" });
  });

  test("- alone is a local name", () => {
    expect(parseOperand("-")).toEqual({ kind: "local", path: "-" });
  });
});

describe("scp:// URIs", () => {
  test("scp://host with no path is the remote home", () => {
    expect(parseOperand("scp://dtn")).toEqual({ kind: "remote", host: "dtn", path: "" });
  });

  test("user, host, port and path", () => {
    expect(parseOperand("scp://alice@dtn:2222/data/x")).toEqual({
      kind: "remote",
      user: "alice",
      host: "dtn",
      port: 2222,
      path: "data/x",
    });
  });

  test("the path after the host's slash is home-relative; a second slash makes it absolute", () => {
    expect(parseOperand("scp://dtn//etc/hosts")).toEqual({ kind: "remote", host: "dtn", path: "/etc/hosts" });
  });

  test("scp://host:port without a path is the home directory", () => {
    expect(parseOperand("scp://dtn:2222")).toEqual({ kind: "remote", host: "dtn", port: 2222, path: "" });
  });

  test("a percent-escaped byte that is not UTF-8 stays that byte (names.ts)", () => {
    expect(parseOperand("scp://dtn/caf%E9%C3%A9")).toEqual({ kind: "remote", host: "dtn", path: "caf\udce9é" });
  });

  test("user and path are percent-decoded, and + is a space as in OpenSSH", () => {
    expect(parseOperand("scp://a%40b@dtn/my%20dir/%C3%A9+x")).toEqual({
      kind: "remote",
      user: "a@b",
      host: "dtn",
      path: "my dir/é x",
    });
  });

  test("connection parameters after ; in the user part are ignored", () => {
    expect(parseOperand("scp://alice;fingerprint=x@dtn/f")).toEqual({
      kind: "remote",
      user: "alice",
      host: "dtn",
      path: "f",
    });
  });

  test("a bracketed IPv6 host with a port", () => {
    expect(parseOperand("scp://[::1]:22/x")).toEqual({ kind: "remote", host: "::1", port: 22, path: "x" });
  });

  test("an @ in the path does not start a user name", () => {
    expect(parseOperand("scp://dtn/a@b")).toEqual({ kind: "remote", host: "dtn", path: "a@b" });
  });

  test("a bad port is refused", () => {
    expect(() => parseOperand("scp://dtn:99999/x")).toThrow("port '99999'");
    expect(() => parseOperand("scp://dtn:/x")).toThrow(OperandError);
  });

  test("an empty user name is refused", () => {
    expect(() => parseOperand("scp://@dtn/x")).toThrow("empty user name");
  });

  test("a broken percent escape is refused", () => {
    expect(() => parseOperand("scp://dtn/a%zz")).toThrow("bad percent escape '%zz'");
  });

  test("a host name with invalid characters is refused", () => {
    expect(() => parseOperand("scp://d*tn/x")).toThrow("not a valid host name");
  });
});

describe("isRemote and formatOperand", () => {
  test("isRemote tells remote from local", () => {
    expect(isRemote(parseOperand("dtn:x"))).toBe(true);
    expect(isRemote(parseOperand("x"))).toBe(false);
  });

  test("remote operands are shown the way a user types them", () => {
    expect(formatOperand(parseOperand("alice@[fe80::1]:d"))).toBe("alice@[fe80::1]:d");
    expect(formatOperand(parseOperand("dtn:"))).toBe("dtn:");
    expect(formatOperand(parseOperand("some/file"))).toBe("some/file");
  });

  test("a port needs the URI form, which reads back as the same operand", () => {
    const ops: Operand[] = [
      { kind: "remote", user: "a.b", host: "dtn", port: 2222, path: "/x y+z/%" },
      { kind: "remote", host: "::1", port: 22, path: "" },
      { kind: "remote", user: "a:b", host: "dtn", path: "f" },
      { kind: "remote", host: "dtn", port: 2222, path: "caf\udce9/\ufeffx" }, // a name that is not UTF-8 (names.ts)
    ];
    for (const op of ops) expect(parseOperand(formatOperand(op))).toEqual(op);
  });
});
