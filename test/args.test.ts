import { describe, expect, test } from "bun:test";
import { defaultOptions, MiB, type ParsedArgs, parseArgs, sshArgs, UsageError } from "../src/cli/args.ts";

/** The copy-mode result, failing the test on anything else. */
function copy(argv: string[]): Extract<ParsedArgs, { mode: "copy" }> {
  const r = parseArgs(argv);
  if (r instanceof UsageError) throw r;
  if (r.mode !== "copy") throw new Error(`expected copy mode, got ${r.mode}`);
  return r;
}

function usageError(argv: string[]): UsageError {
  const r = parseArgs(argv);
  if (!(r instanceof UsageError)) throw new Error(`expected a usage error, got ${JSON.stringify(r)}`);
  return r;
}

describe("defaults", () => {
  test("a plain copy gets the documented defaults and nothing explicit", () => {
    const r = copy(["a", "h:b"]);
    expect(r.options).toEqual(defaultOptions());
    expect(r.options.ports).toEqual([1232, 1242]);
    expect(r.options.threads).toBe(4);
    expect(r.options.blockSize).toBe(MiB);
    expect(r.options.direct).toBe(true);
    expect(r.options.keepaliveS).toBe(30);
    expect(r.options.ssh).toBe("system");
    expect(r.explicit.size).toBe(0);
  });

  test("the last operand is the target, the others are sources", () => {
    const r = copy(["a", "b", "h:dir"]);
    expect(r.sources).toEqual([
      { kind: "local", path: "a" },
      { kind: "local", path: "b" },
    ]);
    expect(r.target).toEqual({ kind: "remote", host: "h", path: "dir" });
  });
});

describe("short options", () => {
  test("bundled flags each take effect", () => {
    const r = copy(["-rpq", "a", "h:"]);
    expect([r.options.recursive, r.options.preserve, r.options.quiet]).toEqual([true, true, true]);
    expect([...r.explicit].sort()).toEqual(["preserve", "quiet", "recursive"]);
  });

  test("an option's value may be glued on or be the next word", () => {
    expect(copy(["-P22", "a", "h:"]).options.sshPort).toBe(22);
    expect(copy(["-P", "22", "a", "h:"]).options.sshPort).toBe(22);
  });

  test("a value option ends a bundle and takes the rest of it", () => {
    const r = copy(["-rP2222", "a", "h:"]);
    expect(r.options.recursive).toBe(true);
    expect(r.options.sshPort).toBe(2222);
  });

  test("-o is repeatable and keeps order, glued or not", () => {
    expect(copy(["-oFoo=bar", "-o", "Baz=qux", "a", "h:"]).options.sshOptions).toEqual(["Foo=bar", "Baz=qux"]);
  });

  test("-v counts its repetitions", () => {
    expect(copy(["-vvv", "-v", "a", "h:"]).options.verbose).toBe(4);
  });

  test("the later of -4 and -6 wins", () => {
    const r = copy(["-4", "-6", "a", "h:"]);
    expect([r.options.ipv4, r.options.ipv6]).toEqual([false, true]);
  });

  test("-T, -O, -s and -X sftp_option are accepted for scp compatibility", () => {
    expect(copy(["-TOs", "a", "h:"]).explicit.size).toBe(0);
    const r = copy(["-X", "nrequests=8", "-Xbuffer=65536", "-X", "buffer=32K", "a", "h:"]);
    expect(r.explicit.size).toBe(0);
    expect(r.sources).toEqual([{ kind: "local", path: "a" }]);
  });

  test("-X with anything but scp's buffer=N or nrequests=N, of 1 to 256K, is refused, as scp refuses it", () => {
    for (const bad of ["nonsense", "buffer=0", "buffer=300K", "nrequests=0", "nrequests=8K"]) {
      expect(usageError(["-X", bad, "a", "h:"]).message).toBe(`escp: -X needs buffer=N or nrequests=N, of 1 to 256K (scp's SFTP tuning, which escp ignores), got '${bad}'`);
    }
  });

  test("an unknown option is a usage error naming it", () => {
    expect(usageError(["-Z", "a", "h:"]).message).toBe("escp: unknown option '-Z' (see escp --help)");
  });

  test("an option missing its value is a usage error", () => {
    expect(usageError(["-P"]).message).toBe("escp: -P needs an argument");
  });
});

describe("long options", () => {
  test("--port takes its value after = or as the next word", () => {
    expect(copy(["--port=2000-2010", "a", "h:"]).options.ports).toEqual([2000, 2010]);
    expect(copy(["--port", "2000-2010", "a", "h:"]).options.ports).toEqual([2000, 2010]);
  });

  test("a single --port means a range of one", () => {
    expect(copy(["--port", "5000", "a", "h:"]).options.ports).toEqual([5000, 5000]);
  });

  test("a backwards port range is refused", () => {
    expect(usageError(["--port=10-5", "a", "h:"]).message).toContain("--port needs a port or a range");
  });

  test("negated flags set their option to false", () => {
    const r = copy(["--nodirect", "--no-bootstrap", "a", "h:"]);
    expect([r.options.direct, r.options.bootstrap]).toEqual([false, false]);
    expect(r.explicit.has("direct")).toBe(true);
  });

  test("a flag given a value is a usage error", () => {
    expect(usageError(["--resume=yes", "a", "h:"]).message).toBe("escp: --resume takes no value, got 'yes'");
  });

  test("an unknown long option is a usage error naming it", () => {
    expect(usageError(["--resmue", "a", "h:"]).message).toBe("escp: unknown option '--resmue' (see escp --help)");
  });

  test("--ssh accepts only system or builtin", () => {
    expect(copy(["--ssh", "builtin", "a", "h:"]).options.ssh).toBe("builtin");
    expect(usageError(["--ssh=putty", "a", "h:"]).message).toBe(
      "escp: --ssh needs one of system, builtin, got 'putty'",
    );
  });

  test("escp flags all reach their options", () => {
    const r = copy([
      "--resume", "--verify", "--sparse", "--inplace", "--json", "--tunnel", "-C", "-3", "-A", "-B",
      "--remote-escp", "/opt/escp", "--log", "/tmp/l", "--keepalive", "0", "--zstd-level", "19",
      "-c", "aes128-gcm@openssh.com", "-i", "id", "-F", "cfg", "-J", "gw", "-S", "myssh", "-l", "8000",
      "a", "h:",
    ]);
    expect(r.options).toMatchObject({
      resume: true, verify: true, sparse: true, inplace: true, json: true, tunnel: true, compress: true,
      relay3: true, forwardAgent: true, batchMode: true, remoteEscp: "/opt/escp", log: "/tmp/l",
      keepaliveS: 0, zstdLevel: 19, cipher: "aes128-gcm@openssh.com", identities: ["id"], sshConfig: "cfg",
      jump: "gw", sshProgram: "myssh", limitKbps: 8000,
    });
  });
});

describe("numbers", () => {
  test("threads must be a number from 1 to 64", () => {
    expect(usageError(["-t", "x", "a", "h:"]).message).toBe("escp: -t needs a number from 1 to 64, got 'x'");
    expect(usageError(["--threads=0", "a", "h:"]).message).toBe("escp: --threads needs a number from 1 to 64, got '0'");
    expect(usageError(["-t65", "a", "h:"])).toBeInstanceOf(UsageError);
    expect(copy(["-t64", "a", "h:"]).options.threads).toBe(64);
  });

  test("a negative or fractional number is refused", () => {
    expect(usageError(["-t", "-1", "a", "h:"]).message).toContain("got '-1'");
    expect(usageError(["-t", "2.5", "a", "h:"]).message).toContain("got '2.5'");
  });

  test("ssh port must be from 1 to 65535", () => {
    expect(usageError(["-P", "0", "a", "h:"]).message).toBe("escp: -P needs a port from 1 to 65535, got '0'");
  });

  test("zstd level must be from 1 to 19", () => {
    expect(usageError(["--zstd-level", "20", "a", "h:"]).message).toContain("from 1 to 19");
  });
});

describe("block size", () => {
  test("accepts K, M and plain byte counts", () => {
    expect(copy(["-b", "1M", "a", "h:"]).options.blockSize).toBe(MiB);
    expect(copy(["-b512K", "a", "h:"]).options.blockSize).toBe(512 * 1024);
    expect(copy(["--blocksize=4194304", "a", "h:"]).options.blockSize).toBe(4 * MiB);
    expect(copy(["-b", "64m", "a", "h:"]).options.blockSize).toBe(64 * MiB);
  });

  test("accepts the 4 KiB and 64 MiB limits and refuses beyond them", () => {
    expect(copy(["-b", "4K", "a", "h:"]).options.blockSize).toBe(4096);
    expect(usageError(["-b", "128M", "a", "h:"])).toBeInstanceOf(UsageError);
    expect(usageError(["-b", "0", "a", "h:"])).toBeInstanceOf(UsageError);
  });

  test("refuses a size that is not a multiple of 4096", () => {
    expect(usageError(["-b", "5000", "a", "h:"]).message).toBe(
      "escp: -b needs a size from 4K to 64M in multiples of 4K, such as 1M, got '5000'",
    );
  });

  test("refuses an unknown unit", () => {
    expect(usageError(["-b", "1T", "a", "h:"])).toBeInstanceOf(UsageError);
  });
});

describe("operands and --", () => {
  test("-- ends the options so a file may start with a dash", () => {
    const r = copy(["-r", "--", "-weird", "h:"]);
    expect(r.sources).toEqual([{ kind: "local", path: "-weird" }]);
    expect(r.options.recursive).toBe(true);
  });

  test("options end at the first operand, as in scp", () => {
    const r = copy(["a", "-r", "h:"]);
    expect(r.sources).toEqual([
      { kind: "local", path: "a" },
      { kind: "local", path: "-r" },
    ]);
    expect(r.options.recursive).toBe(false);
  });

  test("no operands is a usage error that asks for the synopsis", () => {
    const e = usageError(["-r"]);
    expect(e.message).toBe("escp: missing a source and a destination");
    expect(e.showUsage).toBe(true);
  });

  test("a single operand is a usage error", () => {
    expect(usageError(["a"]).message).toBe("escp: missing a destination");
  });

  test("a malformed operand is a usage error", () => {
    expect(usageError(["a", "scp://h:0/x"]).message).toContain("is not a valid scp:// URI");
  });
});

describe("modes", () => {
  test("--help wins over what follows it", () => {
    expect(parseArgs(["-r", "--help", "--bogus"])).toEqual({ mode: "help" });
    expect(parseArgs(["-h"])).toEqual({ mode: "help" });
  });

  test("--version", () => {
    expect(parseArgs(["--version"])).toEqual({ mode: "version" });
  });

  test("--server keeps the options and takes no operands", () => {
    const r = parseArgs(["--server", "-v"]);
    expect(r).toMatchObject({ mode: "server", options: { verbose: 1 } });
    expect(usageError(["--server", "x"]).message).toBe("escp: --server takes no operands, got 'x'");
  });

  test("--config-check carries options and which of them were typed", () => {
    const r = parseArgs(["--config-check", "-t", "8"]);
    if (r instanceof UsageError || r.mode !== "config-check") throw new Error("expected config-check");
    expect(r.options.threads).toBe(8);
    expect(r.explicit.has("threads")).toBe(true);
  });

  test("--completion names a shell", () => {
    expect(parseArgs(["--completion", "zsh"])).toEqual({ mode: "completion", shell: "zsh" });
    expect(usageError(["--completion=fish"]).message).toBe("escp: --completion needs one of bash, zsh, got 'fish'");
  });

  test("two different modes cannot be combined", () => {
    expect(usageError(["--server", "--config-check"]).message).toBe(
      "escp: --config-check cannot be combined with --server",
    );
  });
});

describe("sshArgs", () => {
  test("hardening options come first, then -p, -l, -- and the host", () => {
    expect(sshArgs(defaultOptions(), { user: "al", host: "h" })).toEqual([
      "-x",
      "-oPermitLocalCommand=no",
      "-oClearAllForwardings=yes",
      "-oRemoteCommand=none",
      "-oRequestTTY=no",
      "-oServerAliveInterval=30",
      "-oForwardAgent=no",
      "-l",
      "al",
      "--",
      "h",
    ]);
  });

  test("ssh options from the command line are passed in ssh's own spelling", () => {
    const o = copy(["-46AB", "-vv", "-q", "-c", "aes", "-i", "id", "-F", "cfg", "-J", "gw", "-oA=1", "-oB=2", "-P", "2222", "a", "h:"]).options;
    const a = sshArgs(o, { host: "h" });
    expect(a).toContain("-6");
    expect(a).not.toContain("-4");
    expect(a.join(" ")).toContain("-A -c aes -i id -F cfg -J gw -oBatchMode=yes -o A=1 -o B=2 -v -v -q");
    expect(a.slice(-4)).toEqual(["-p", "2222", "--", "h"]);
  });

  test("every -i reaches ssh in order, and -B comes before -o so that it wins (ssh keeps the first value)", () => {
    const a = sshArgs(copy(["-i", "k1", "-B", "-o", "BatchMode=no", "-i", "k2", "a", "h:"]).options, { host: "h" }).join(" ");
    expect(a).toContain("-i k1 -i k2");
    expect(a).toContain("-oBatchMode=yes -o BatchMode=no");
  });

  test("a second -J is refused naming the comma form, as ssh refuses scp's second -J", () => {
    expect(() => copy(["-J", "a", "-J", "b", "x", "h:"])).toThrow(/-J may be given once: chain jump hosts with commas \(-J a,b\)/);
    expect(copy(["-J", "a,b", "x", "h:"]).options.jump).toBe("a,b");
  });

  test("scp's -D sftp_server_path and -2 are accepted and ignored", () => {
    const o = copy(["-2", "-D", "/usr/lib/openssh/sftp-server", "-r", "x", "h:"]).options;
    expect(o.recursive).toBe(true);
    expect(copy(["-2Dx", "y", "h:"]).sources).toEqual([{ kind: "local", path: "y" }]); // -D took "x"
  });

  test("a port in the operand wins over -P", () => {
    const o = { ...defaultOptions(), sshPort: 2222 };
    expect(sshArgs(o, { host: "h", port: 22 }).slice(-4)).toEqual(["-p", "22", "--", "h"]);
  });

  test("a host that looks like an option stays an operand after --", () => {
    expect(sshArgs(defaultOptions(), { host: "-oProxyCommand=x" }).slice(-2)).toEqual(["--", "-oProxyCommand=x"]);
  });

  test("keepalive 0 leaves ServerAliveInterval to ssh's config", () => {
    const o = { ...defaultOptions(), keepaliveS: 0 };
    expect(sshArgs(o, { host: "h" }).join(" ")).not.toContain("ServerAliveInterval");
  });
});
