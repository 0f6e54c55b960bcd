/**
 * Self-bootstrap (DESIGN §9): when the remote host has no escp that speaks
 * our protocol, escp copies its own executable there and runs it. Nothing
 * but a POSIX sh, uname, mkdir, cat/zstd/gzip, openssl/sha256sum and mv is needed remotely.
 *
 * The common case costs one ssh connection: the remote command is a small sh
 * snippet (launchCommand) that execs, in order,
 *   1. ~/.cache/escp/VERSION-BUILD/escp, a copy an earlier bootstrap of this very build left there;
 *   2. `escp` from PATH, if `escp --version` names our protocol;
 * and otherwise prints one line, BOOTSTRAP_MARKER plus what it saw (OS,
 * machine, zstd/gzip/sha256sum/openssl), and waits. No control frame starts
 * with that text (frames start with a 0 byte), so `bootstrapping` can tell the
 * two apart before the control channel sees anything. On the marker it
 * uploads this executable over a second ssh connection (compressed if the
 * remote can decompress; written to a temporary name, sha256 checked,
 * chmod 755, renamed into place, so concurrent first transfers each write
 * their own temporary file and the rename is atomic), and the waiting snippet
 * execs the copy as soon as it is in place, with the client's first bytes (its
 * `hello`) still unread on its stdin. If the snippet stopped waiting first, it
 * is run again (a third connection) and what the client wrote is replayed.
 * The client never notices, except for one line on stderr.
 *
 *   const p = bootstrapping(o, "host", (cmd) => Bun.spawn(["ssh", "host", cmd], ...));
 *   // p behaves like the ssh child of `escp --server`
 */
import type { Options } from "../cli/args.ts";
import fs from "node:fs";
import { VERSION, CACHE_DIR, CACHE_ROOT, CACHE_BUILD } from "../version.ts";
import { PROTO_VERSION } from "../native.ts";
import type { ServerProcess } from "./remote.ts";
import { toStderr } from "../stderr.ts";

/** First word of the line the snippet prints when the remote has no usable escp. */
export const BOOTSTRAP_MARKER = "escp-bootstrap-needed";
const MARKER_LINE = new RegExp(`${BOOTSTRAP_MARKER} (\\S+) (\\S+)((?: \\S+)*)\\r?\\n`);

/** Where the copy lives on the remote, relative to $HOME (as users are told; its machine may name it otherwise). */
export const CACHE_PATH = `${safePath(CACHE_DIR)}/escp`;
/** The remote's cache directory for this build, named for its own machine (version.ts CACHE_TAG). */
const CACHE_DIR_SH = `"$HOME/${safePath(CACHE_ROOT)}/${safePath(CACHE_BUILD)}-$(uname -m)"`;

/** Runs one command line on the remote host (the user's ssh, or the built-in one). */
export type RemoteRunner = (command: string) => ServerProcess;

/** An upload's temporary file in the cache directory, before its process id. */
const UPLOAD_TMP = ".escp.tmp.";
/** How long a failed launch's ssh may take to pass on the rest of the remote's stderr. */
const STDERR_WAIT_MS = 1000;

/** Seconds the snippet waits after the marker for an upload to begin (see launchCommand). */
const UPLOAD_GRACE_S = 10;

/**
 * The remote command that starts the escp found there with `args`, or prints the
 * marker and then waits for an upload (over another connection) to install one, and
 * starts that: the client's first bytes (its `hello`) are still unread on stdin, so a
 * first copy needs two ssh connections, not three (one password prompt less, and
 * ≈ 0.3 s). It waits while an upload's temporary file is there, and for
 * UPLOAD_GRACE_S before one appears; it gives up as soon as the ssh session is
 * gone, i.e. when the client hung up because it will not upload.
 *
 * A cached copy counts only at `size` bytes (this executable's, when known): one cut
 * short (a full disk, a damaged home) or replaced is installed again, not run. It
 * counts only as this user's, in a directory of this user's, neither writable by
 * anyone else: a ~/.cache/escp linked to another user's directory must not run their
 * program as us. One that is there but may not be run (a home mounted noexec) is said
 * so, unless an escp of ours on PATH can run instead.
 */
export function launchCommand(args: string, size?: number): string {
  const noexec = `echo "escp: $c cannot be run there (is its filesystem mounted noexec?): install escp on the PATH there, or name one with --remote-escp PATH" >&2; exit 126`;
  // One find (-H: through links) for owner, mode and size of both, printing what fails: it
  // is on every copy's path.
  const mine = `-user "$u" ! -perm -0020 ! -perm -0002 \\( -type d -o -type f${size === undefined ? "" : ` -size ${size}c`} \\)`;
  const script =
    `d=${CACHE_DIR_SH}; c="$d/escp"; u=$(id -u); ` +
    // A host without find (no findutils) is asked the size alone, as before.
    `ok() { [ -f "$c" ] && [ -x "$c" ] && if command -v find >/dev/null 2>&1; then [ -z "$(find -H "$d" "$c" -prune ! \\( ${mine} \\) 2>&1)" ]; ` +
    (size === undefined ? `fi; }; ` : `else [ "$(wc -c <"$c")" -eq ${size} ]; fi; } 2>/dev/null; `) +
    // Executable by its mode, and yet not by us: the filesystem's mount forbids it.
    `ne() { [ -f "$c" ] && [ ! -x "$c" ] && [ -n "$(find "$c" -prune -perm -0100 2>/dev/null)" ]; }; ` +
    `if ok; then exec "$c" ${args}; fi; ` +
    // An escp on PATH that never answers (not ours) must not hold the session for ever.
    `v=; if command -v timeout >/dev/null 2>&1; then v="timeout -k 1 10"; fi; ` +
    `if command -v escp >/dev/null 2>&1 && $v escp --version </dev/null 2>/dev/null | grep -F "(protocol ${PROTO_VERSION})" >/dev/null; ` +
    `then exec escp ${args}; fi; ` +
    `if ne; then ${noexec}; fi; ` +
    `t=; for p in zstd gzip sha256sum openssl; do if command -v $p >/dev/null 2>&1; then t="$t $p"; fi; done; ` +
    // The session is over when our parent or its parent (sshd's session processes, or the
    // login shell that did not exec us and sshd) has exited: gone, or a zombie not yet reaped.
    // Asked before the marker: once it is out, the client may hang up at once.
    `g=$(ps -o ppid= -p $PPID 2>/dev/null); g=\${g##* }; ` +
    `echo "${BOOTSTRAP_MARKER} $(uname -s) $(uname -m)$t"; ` +
    `n=0; while ! ok; do ` +
    `if ne; then ${noexec}; fi; ` +
    `[ "$(ps -o stat= -p "$PPID,$g" 2>/dev/null | grep -cv "^ *Z")" = 2 ] || exit 0; ` +
    // After the grace, only an upload at work (its file written to in the last minute) is
    // waited for: a killed one's file, or a session ssh keeps open (ControlMaster), is not.
    `if [ $n -ge ${UPLOAD_GRACE_S * 5} ] && [ -z "$(find "$d" -maxdepth 1 -name "${UPLOAD_TMP}*" -mmin -1 2>/dev/null)" ]; then exit 0; fi; ` +
    // Fractional sleep is not POSIX; where it fails, a whole second.
    `sleep 0.2 2>/dev/null || sleep 1; n=$((n + 1)); done; ` +
    `exec "$c" ${args}`;
  return shSnippet(script);
}

/** The remote command that stores stdin (compressed by `method`) as the cached escp. */
export function uploadCommand(method: Method, sha256: string | undefined, size: number): string {
  const decompress = method === "zstd" ? "zstd -dcq" : method === "gzip" ? "gzip -dc" : "cat";
  // Without a SHA-256 tool the size is checked; zstd and gzip check their own frames too.
  // openssl first: it uses the CPU's SHA instructions, coreutils' sha256sum (9.1) does not
  // (119 MB: 0.1 against 0.58 s here, a quarter of a first copy's upload).
  const check = sha256
    ? `s=; if command -v openssl >/dev/null 2>&1; then s=$(openssl dgst -sha256 <"$t" 2>/dev/null) && s=\${s##* } || s=; fi; ` +
      `if [ -z "$s" ]; then s=$(sha256sum "$t") || exit 1; s=\${s%% *}; fi; ` +
      `if [ "$s" != ${sha256} ]; then echo "digest mismatch: sha256 $s, expected ${sha256}" >&2; exit 1; fi; `
    : `n=$(wc -c <"$t") || exit 1; ` +
      `if [ $n -ne ${size} ]; then echo "size mismatch: $n bytes, expected ${size}" >&2; exit 1; fi; `;
  const script =
    // A missing home is not made for the cache (scp leaves it alone; relative paths would land there).
    `if [ -z "$HOME" ] || [ ! -d "$HOME" ]; then echo "no home directory (\${HOME:-HOME is not set}) there to keep it in" >&2; exit 1; fi; ` +
    `umask 022; d=${CACHE_DIR_SH}; mkdir -p "$d" || exit 1; ` +
    // The launch runs only a copy in a directory of ours that no one else may write.
    `if [ ! -O "$d" ]; then echo "$d is not yours: remove it" >&2; exit 1; fi; chmod go-w "$d" || exit 1; ` +
    // A killed upload's temporary file, untouched for an hour, is nobody's now (by age, not by
    // process id: a home shared over NFS holds other hosts' uploads too).
    `find "$d" -maxdepth 1 -name "${UPLOAD_TMP}*" -mmin +60 -exec rm -f {} + 2>/dev/null; ` +
    // $$ is unique among live processes on the host: concurrent uploads never share a file.
    `t="$d/${UPLOAD_TMP}$$"; trap "rm -f \\"$t\\"" 0; ` +
    `${decompress} >"$t" || exit 1; ` +
    check +
    `chmod 755 "$t" && mv -f "$t" "$d/escp" || exit 1`;
  return shSnippet(script);
}

/** Runs the script with sh whatever the login shell is (csh, fish): single quotes mean the same in all. */
function shSnippet(script: string): string {
  if (script.includes("'")) throw new Error("internal: quote in a remote sh snippet");
  return `sh -c '${script}'`;
}

function safePath(s: string): string {
  if (!/^[\w.+/-]+$/.test(s)) throw new Error(`internal: cache directory ${JSON.stringify(s)} is not a safe path`);
  return s;
}

/** This program's executable, if it is the compiled one (a script run by bun cannot copy itself). */
export function selfExecutable(): string | undefined {
  return Bun.main.startsWith("/$bunfs") ? process.execPath : undefined;
}

type Method = "zstd" | "gzip" | "raw";

/** What the snippet reported about the remote. */
export interface RemoteInfo {
  os: string;
  machine: string;
  tools: Set<string>;
}

/** The snippet's marker line in `text`: what it says, and the offset just past it. */
export function findMarker(text: string): { info: RemoteInfo; end: number } | undefined {
  const m = MARKER_LINE.exec(text);
  if (!m) return undefined;
  return { info: { os: m[1], machine: m[2], tools: new Set(m[3].trim().split(/\s+/).filter(Boolean)) }, end: m.index + m[0].length };
}

const MACHINES: Record<string, string> = { x86_64: "x64", amd64: "x64", aarch64: "arm64", arm64: "arm64" };

/** Why this executable cannot serve the remote, or undefined if it can. */
function incompatible(info: RemoteInfo): string | undefined {
  const os = info.os.toLowerCase();
  if (os !== process.platform || MACHINES[info.machine] !== process.arch) {
    return `it is ${info.os} ${info.machine} and this escp is built for ${process.platform} ${process.arch}`;
  }
  return undefined;
}

interface Payload {
  /** The pieces in order, each compressed on its own (see preparePayload). */
  pieces: Promise<Uint8Array>[];
  method: Method;
  sha256: string | undefined;
  size: number;
}

/** Bytes of the executable per independently compressed piece. */
const PIECE = 8 << 20;

/**
 * The executable, compressed with what the remote can undo (zstd, else gzip, else as it
 * is), as 8 MiB pieces compressed each on its own and all at once on the thread pool:
 * `zstd -d` and `gzip -d` read concatenated frames (members) as one stream, so the upload
 * sends the first piece while the others are being compressed, on every core. zstd -3 of
 * 119 MB: 0.64 s as one frame, 0.36 s as pieces on 2 cores, for the same 54 MB.
 */
async function preparePayload(exe: string, tools: Set<string>): Promise<Payload> {
  const raw = await Bun.file(exe).bytes();
  const sha256 = tools.has("sha256sum") || tools.has("openssl") ? new Bun.CryptoHasher("sha256").update(raw).digest("hex") : undefined;
  const slices: Uint8Array[] = [];
  for (let off = 0; off < raw.length; off += PIECE) slices.push(raw.subarray(off, off + PIECE));
  const method: Method = tools.has("zstd") ? "zstd" : tools.has("gzip") ? "gzip" : "raw";
  // node:zlib is loaded only when a copy is sent (≈ 8 ms of every start otherwise).
  const zlib = method === "gzip" ? (require("node:zlib") as typeof import("node:zlib")) : undefined;
  const pieces = slices.map((slice) =>
    method === "zstd" ? Bun.zstdCompress(slice, { level: 3 })
      : zlib ? new Promise<Uint8Array>((res, rej) => zlib.gzip(slice, { level: 6 }, (e, b) => (e ? rej(e) : res(b))))
      : Promise.resolve(slice));
  // An upload that stops early leaves the rest unawaited: their failures are not news.
  for (const p of pieces) p.catch(() => {});
  return { pieces, method, sha256, size: raw.length };
}

/** A ReadableStream fed by hand. */
class Feed {
  private c!: ReadableStreamDefaultController<Uint8Array>;
  readonly stream = new ReadableStream<Uint8Array>({ start: (c) => void (this.c = c) });
  push(b: Uint8Array): void {
    try {
      this.c.enqueue(b);
    } catch {}
  }
  close(): void {
    try {
      this.c.close();
    } catch {}
  }
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<string> {
  try {
    return await new Response(stream).text();
  } catch {
    return "";
  }
}

function lastLines(text: string, n = 3): string {
  return text.trim().split("\n").slice(-n).join("; ").trim();
}

/** How the remote's first output reads: escp talking, the marker (and what came after it), or something else. */
type Head = { kind: "escp" | "other"; bytes: Buffer; done: boolean } | { kind: "marker"; info: RemoteInfo; rest: Buffer };

/** Reads until the output so far (starting with `buf`) says which Head it is. */
async function readHead(it: AsyncIterator<Uint8Array>, buf: Buffer = Buffer.alloc(0)): Promise<Head> {
  for (;;) {
    if (buf.length) {
      if (buf[0] === 0) return { kind: "escp", bytes: buf, done: false };
      if (buf.includes(0) || buf.length > 65536) return { kind: "other", bytes: buf, done: false };
      const marker = findMarker(buf.toString("latin1")); // latin1: one char a byte, so `end` is a byte offset
      if (marker) return { kind: "marker", info: marker.info, rest: buf.subarray(marker.end) };
    }
    const r = await it.next().catch(() => ({ done: true as const, value: undefined }));
    if (r.done) return { kind: "other", bytes: buf, done: true };
    buf = Buffer.concat([buf, r.value]);
  }
}

/**
 * Starts the remote end with `launchCommand(mode)` (--server, or --origin for
 * -R) and bootstraps it if needed. The result looks like one ssh child: what the client writes before
 * the remote escp answers is kept and replayed to the retried one. When no
 * escp can be started, stdout ends and `failure` says why (connectionFailure
 * in remote.ts reports it).
 */
export function bootstrapping(o: Options, where: string, run: RemoteRunner, mode = "--server"): ServerProcess & { failure?: string } {
  const exe = selfExecutable();
  const command = launchCommand(mode, exe === undefined ? undefined : fs.statSync(exe).size);
  const written: Uint8Array[] = [];
  let decided = false; // the remote escp (or something that is not the marker) answered
  let inputEnded = false;
  let killed = false;
  let live: ServerProcess | undefined = run(command); // where stdin goes now
  let upload: ServerProcess | undefined;
  const out = new Feed();
  const err = new Feed();
  let setExit!: (code: number) => void;
  const exited = new Promise<number>((r) => (setExit = r));

  const proc: ServerProcess & { failure?: string } = {
    stdin: {
      write(b: Uint8Array) {
        if (!decided) written.push(Uint8Array.from(b));
        try {
          live?.stdin.write(b);
        } catch {}
      },
      flush() {
        try {
          return live?.stdin.flush();
        } catch {}
      },
      end() {
        inputEnded = true;
        try {
          return live?.stdin.end();
        } catch {}
      },
    },
    stdout: out.stream,
    stderr: err.stream,
    exited,
    kill() {
      killed = true;
      live?.kill();
      upload?.kill();
    },
  };

  const fail = (message: string, code: number) => {
    proc.failure = message;
    out.close();
    err.close();
    setExit(code);
  };

  /** Where a remote command's output goes: its stderr to ours as it comes, its stdout read by readHead. */
  const follow = (p: ServerProcess) => ({
    errDone: (async () => {
      for await (const c of p.stderr as any as AsyncIterable<Uint8Array>) err.push(c);
    })().catch(() => {}),
    it: (p.stdout as any as AsyncIterable<Uint8Array>)[Symbol.asyncIterator](),
  });

  void (async () => {
    let p = live!;
    let { errDone, it } = follow(p);
    const ended = async () => {
      p.kill();
      const code = await p.exited;
      // Its last words, if they come soon: under ControlMaster the stream stays open as long
      // as the remote command runs, which the master keeps alive.
      await Promise.race([errDone, Bun.sleep(STDERR_WAIT_MS)]);
      return code;
    };
    let head = await readHead(it);
    if (head.kind === "marker") {
      // The snippet now waits for a copy to appear, our first bytes unread on its stdin.
      const why = killed ? "interrupted" : ((await install(head.info)) ?? (killed ? "interrupted" : undefined));
      if (why) return fail(why, await ended());
      head = await readHead(it, head.rest);
      if (head.kind === "other" && head.done && !head.bytes.length) {
        // It stopped waiting before the copy was in place: start it again, with what we wrote.
        await ended();
        if (killed) return fail("interrupted", 1);
        p = live = run(command);
        ({ errDone, it } = follow(p));
        for (const b of written) p.stdin.write(b);
        p.stdin.flush();
        if (inputEnded) p.stdin.end();
        head = await readHead(it);
      }
      if (head.kind === "marker") return fail(`escp was copied to ${where} (~/${CACHE_PATH}) but did not start there`, await ended());
    }
    // escp runs there (or something printed text: the control channel will say what).
    decided = true;
    written.length = 0;
    if (head.bytes.length) out.push(head.bytes);
    if (!head.done) {
      try {
        for (let r = await it.next(); !r.done; r = await it.next()) out.push(r.value);
      } catch {}
    }
    out.close();
    await errDone;
    err.close();
    setExit(await p.exited);
  })().catch((e) => fail(`${where}: ${(e as Error).message}`, 1));

  /** Copies this executable into the remote's cache; returns why it could not. */
  async function install(info: RemoteInfo): Promise<string | undefined> {
    if (!o.bootstrap) return `escp is not installed on ${where}: install it or drop --no-bootstrap`;
    const bad = incompatible(info);
    if (bad) return `escp is not installed on ${where} and this one cannot run there (${bad}): install escp there or name it with --remote-escp PATH`;
    if (!exe) {
      return `escp is not installed on ${where}, and this escp runs from source (bun src/main.ts), so it cannot copy itself there: ` +
        `use the built executable (bash scripts/build.sh makes dist/escp), install escp there, or name it with --remote-escp PATH`;
    }
    const payload = await preparePayload(exe, info.tools);
    if (!o.quiet) {
      const mb = (payload.size / 1e6).toFixed(0);
      toStderr(
        `escp: ${where} has no escp ${VERSION} (protocol ${PROTO_VERSION}): installing this one as ~/${CACHE_PATH}` +
          ` (${mb} MB${payload.method === "raw" ? "" : `, sent compressed with ${payload.method}`})\n`,
      );
    }
    const up = (upload = run(uploadCommand(payload.method, payload.sha256, payload.size)));
    const upErr = collect(up.stderr);
    void collect(up.stdout);
    for (const piece of payload.pieces) {
      let data: Uint8Array;
      try {
        data = await piece;
      } catch (e) {
        up.kill();
        await up.exited;
        upload = undefined;
        return `cannot install escp on ${where}: compressing it with ${payload.method} failed: ${(e as Error).message}`;
      }
      try {
        up.stdin.write(data);
        await up.stdin.flush();
      } catch {
        break; // the remote side went away; its status and stderr say why
      }
    }
    try {
      await up.stdin.end();
    } catch {}
    const code = await up.exited;
    upload = undefined;
    if (code !== 0) {
      const text = lastLines(await upErr);
      return `cannot install escp on ${where} as ~/${CACHE_PATH}: ${text || `the upload exited with status ${code}`} ` +
        `(install escp on the PATH there, or name one with --remote-escp PATH)`;
    }
    return undefined;
  }

  return proc;
}
