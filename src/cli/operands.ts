/**
 * SOURCE and DESTINATION operands, read the way OpenSSH scp reads them
 * (scp.c, and colon(), parse_user_host_path(), parse_uri() in misc.c).
 *
 *   parseOperand("alice@[fe80::1]:data/x")
 *     // { kind: "remote", user: "alice", host: "fe80::1", path: "data/x" }
 *   parseOperand("./a:b")   // { kind: "local", path: "./a:b" }
 *   parseOperand("host:")   // { kind: "remote", host: "host", path: "" }
 */
import { decodeName, encodeName } from "../names.ts";

export type Operand = LocalOperand | RemoteOperand;
export type LocalOperand = { kind: "local"; path: string };
/** `path` "" is the remote home directory; a leading `~` is left for the remote to expand. */
export type RemoteOperand = { kind: "remote"; user?: string; host: string; port?: number; path: string };

/** A malformed operand; the message says what is wrong, without a program-name prefix. */
export class OperandError extends Error {}

const URI_SCHEME = "scp://";

/** Reads one command-line operand; throws OperandError when it cannot name anything. */
export function parseOperand(s: string): Operand {
  // scp tries the URI form first, then host:path; colon() finds "scp:" too, so order matters.
  if (s.startsWith(URI_SCHEME)) return parseUri(s);
  const at = colon(s);
  if (at < 0) return { kind: "local", path: s };
  return remote(s.slice(0, at), undefined, s.slice(at + 1), s);
}

export function isRemote(op: Operand): op is RemoteOperand {
  return op.kind === "remote";
}

/**
 * The operand as a user would type it, for messages. Remote operands come back in a form
 * parseOperand reads as the same operand: the URI form when a port or an odd user name needs it.
 */
export function formatOperand(op: Operand): string {
  if (op.kind === "local") return op.path;
  const host = op.host.includes(":") ? `[${op.host}]` : op.host;
  const plain = `${op.user === undefined ? "" : `${op.user}@`}${host}:${op.path}`;
  if (op.port === undefined && !/[:/]/.test(op.user ?? "") && !plain.startsWith(URI_SCHEME)) return plain;
  const user = op.user === undefined ? "" : `${uriEncode(op.user)}@`;
  const port = op.port === undefined ? "" : `:${op.port}`;
  return `${URI_SCHEME}${user}${host}${port}${op.path === "" ? "" : `/${uriEncode(op.path)}`}`;
}

/**
 * Index of the colon that ends the host part, or -1 for a local path. As in scp: a leading
 * colon, or a slash before any colon, makes it local; brackets protect IPv6 colons.
 */
function colon(s: string): number {
  if (s.startsWith(":")) return -1;
  let bracketed = s.startsWith("[");
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "@" && s[i + 1] === "[") bracketed = true;
    if (c === "]" && s[i + 1] === ":" && bracketed) return i + 1;
    if (c === ":" && !bracketed) return i;
    if (c === "/") return -1;
  }
  return -1;
}

/** `[user@]host` plus path; the last `@` splits user from host, as scp's strrchr does. */
function remote(userHost: string, port: number | undefined, path: string, whole: string): RemoteOperand {
  const at = userHost.lastIndexOf("@");
  const user = at < 0 ? "" : userHost.slice(0, at);
  const host = unbracket(userHost.slice(at + 1));
  return build(user, host, port, path, whole);
}

function build(user: string, host: string, port: number | undefined, path: string, whole: string): RemoteOperand {
  if (host === "") throw new OperandError(`'${whole}' names no host`);
  // scp's okname(): these characters cannot be in a user name and would confuse a remote shell.
  if (/['"` #]|[^\x00-\x7f]/.test(user)) throw new OperandError(`'${user}' in '${whole}' is not a valid user name`);
  const op: RemoteOperand = { kind: "remote", host, path };
  if (user !== "") op.user = user;
  if (port !== undefined) op.port = port;
  return op;
}

function unbracket(host: string): string {
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/**
 * scp://[user[;params]@]host[:port][/path]. As in OpenSSH the path after the first slash is
 * relative to the remote home (scp://h//etc is /etc), user and path are percent-decoded and
 * `+` means space. Unlike OpenSSH, the user part ends at the first slash (RFC 3986 authority),
 * so `scp://h/a@b` is the file "a@b" on h, and a bracketed IPv6 host is accepted.
 */
function parseUri(s: string): RemoteOperand {
  const bad = (why: string) => new OperandError(`'${s}' is not a valid scp:// URI: ${why}`);
  let rest = s.slice(URI_SCHEME.length);
  const slash = rest.indexOf("/");
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  let user = "";
  const at = authority.lastIndexOf("@");
  if (at >= 0) {
    // OpenSSH ignores ";connection-params" after the user name; so do we.
    user = authority.slice(0, at).split(";")[0];
    if (user === "") throw bad("empty user name");
    user = uriDecode(user, bad);
    rest = rest.slice(at + 1);
  }
  const { host, delim, after } = splitHost(rest, bad);
  let port: number | undefined;
  let path = "";
  if (delim === ":" && after !== "") {
    const end = after.indexOf("/");
    const digits = end < 0 ? after : after.slice(0, end);
    port = Number(digits);
    if (!/^\d+$/.test(digits) || port < 1 || port > 65535) throw bad(`port '${digits}' is not from 1 to 65535`);
    path = end < 0 ? "" : after.slice(end + 1);
  } else if (delim === "/") {
    path = after;
  }
  return build(user, host, port, uriDecode(path, bad), s);
}

/** misc.c hpdelim2(): host, then the ':' or '/' after it (if any) and what follows. */
function splitHost(s: string, bad: (why: string) => Error): { host: string; delim: string; after: string } {
  let end: number;
  let host: string;
  if (s.startsWith("[")) {
    end = s.indexOf("]") + 1;
    if (end === 0) throw bad("'[' without ']'");
    host = s.slice(1, end - 1);
    if (!/^[0-9A-Fa-f:.]+(%[\w.-]+)?$/.test(host)) throw bad(`'${host}' is not an IPv6 address`);
  } else {
    end = s.search(/[:/]/);
    if (end < 0) end = s.length;
    host = s.slice(0, end);
    // misc.c valid_domain(): letters, digits, '-', '_' and single dots.
    if (host !== "" && (!/^[\w.-]+$/.test(host) || host.includes(".."))) {
      throw bad(`'${host}' is not a valid host name`);
    }
  }
  if (host === "") throw bad("no host");
  const delim = s[end] ?? "";
  if (delim !== "" && delim !== ":" && delim !== "/") throw bad(`unexpected '${delim}' after the host`);
  return { host, delim, after: s.slice(end + 1) };
}

const URI_PLAIN = /[A-Za-z0-9\-_.!~*'()/]/;

function uriDecode(s: string, bad: (why: string) => Error): string {
  const stray = /%(?![0-9A-Fa-f]{2})/.exec(s);
  if (stray) throw bad(`bad percent escape '${s.slice(stray.index, stray.index + 3)}'`);
  // Decode each run of escapes as one byte string so multi-byte UTF-8 names survive, and
  // bytes that are not UTF-8 stay those bytes (names.ts).
  return s.replace(/\+/g, " ").replace(/(?:%[0-9A-Fa-f]{2})+/g, (run) =>
    decodeName(Uint8Array.from(run.slice(1).split("%"), (h) => parseInt(h, 16))),
  );
}

/** encodeURIComponent's escaping, "/" kept, of the name's bytes (encodeURIComponent throws on a name that is not UTF-8). */
function uriEncode(s: string): string {
  return Array.from(encodeName(s), (b) => (URI_PLAIN.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`)).join("");
}
