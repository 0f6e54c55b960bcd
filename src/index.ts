/**
 * escp as a library: the same engine as the command line (session/client.ts),
 * with the command line's defaults, its operand syntax and its events.
 *
 *   import { transfer } from "escp";
 *
 *   const t = transfer(["data/run42"], "dtn.example.org:/archive/", { recursive: true });
 *   for await (const ev of t) {
 *     if (ev.event === "progress") console.log(`${ev.bytesDone} of ${ev.bytesStarted} bytes`);
 *     if (ev.event === "file_failed") console.error(`${ev.path}: ${ev.message}`);
 *   }
 *   const r = await t;            // or t.result
 *   if (!r.ok) process.exitCode = r.exitCode;
 *
 * transfer() never throws and its result never rejects: a bad operand or
 * option, an unreachable host or an interrupt all come back as a result
 * with `error` (and the exit status the command line would give). Events
 * are the objects `escp --json` prints, one per line (docs/json.md); they
 * arrive by iterating the Transfer (start iterating right away: an iterator
 * sees the events from its creation on), or as an EventEmitter:
 * `t.on("event", fn)` for all, or `t.on("file_done", fn)` by name (the
 * session-level "error" event is emitted by name only when someone listens
 * for it, so an unheard one never throws).
 *
 * Unlike the command line, nothing is printed: no progress, no failure
 * lines, and the other end's stderr (ssh's messages) only when it reports an
 * error, as with -q. Set `config: true` to read /etc/escp.conf and
 * ~/.config/escp/escp.yaml as the command line does.
 */
import { EventEmitter } from "node:events";
import { defaultOptions, parseThreads, parseZstdLevel, parseBlockSize, parseKeepalive, ValueError, type Options } from "./cli/args.ts";
import { parseOperand, OperandError, type Operand } from "./cli/operands.ts";
import { loadConfig, mergeConfig, ConfigError } from "./cli/config.ts";
import { transfer as runTransfer } from "./session/client.ts";
import { Report, exitStatus, EXIT, type TransferEvent, type SummaryEvent, type Failure, type ExitStatus } from "./report.ts";

export type {
  TransferEvent,
  SessionEvent,
  FileStartEvent,
  FileDoneEvent,
  FileFailedEvent,
  WarningEvent,
  ProgressEvent,
  SummaryEvent,
  ErrorEvent,
  Failure,
  ExitStatus,
} from "./report.ts";
export type { Options } from "./cli/args.ts";
export type { Operand } from "./cli/operands.ts";
export { EXIT } from "./report.ts";
export { formatBytes, formatDuration } from "./progress.ts";
export { VERSION } from "./version.ts";

/** A source or the target: scp's syntax ("host:path", "user@host:path", "scp://host:port/path", a local path) or an Operand. */
export type Location = string | Operand;

/**
 * The command line's options by their Options names (see `escp --help`);
 * anything left out has the command line's default.
 */
export interface TransferOptions extends Partial<Options> {
  /** Read /etc/escp.conf and ~/.config/escp/escp.yaml (options given here still win). Default false. */
  config?: boolean;
  /** Aborting it interrupts the transfer (as Ctrl-C does escp): the result has `interrupted`. */
  signal?: AbortSignal;
}

/** What a transfer came to. */
export interface TransferResult {
  /** Every file arrived and was verified. */
  ok: boolean;
  /** What `escp` would exit with: 0 ok, 1 some or all failed, 2 usage, 130 interrupted. */
  exitCode: ExitStatus;
  /** The figures, when the session ran to its end (also with failed files). */
  summary?: SummaryEvent;
  /** Every file that failed, each once. */
  failures: Failure[];
  /** Why the session as a whole failed or could not start: one line. */
  error?: string;
  /** The operands or options were unusable (exit status 2). */
  usage?: boolean;
  interrupted?: boolean;
}

type EventName = TransferEvent["event"];
type EventOf<K extends EventName> = Extract<TransferEvent, { event: K }>;

/** Typed listeners: `t.on("file_done", (e) => e.size)`; "event" hears every event. */
export interface Transfer {
  on<K extends EventName>(name: K, listener: (e: EventOf<K>) => void): this;
  on(name: "event", listener: (e: TransferEvent) => void): this;
  once<K extends EventName>(name: K, listener: (e: EventOf<K>) => void): this;
  once(name: "event", listener: (e: TransferEvent) => void): this;
  off<K extends EventName>(name: K, listener: (e: EventOf<K>) => void): this;
  off(name: "event", listener: (e: TransferEvent) => void): this;
}

/** A running transfer: an async iterable of its events, an EventEmitter of them, and a promise of its result. */
export class Transfer extends EventEmitter implements AsyncIterable<TransferEvent>, PromiseLike<TransferResult> {
  /** Settles (never rejects) once the transfer is over and its last event was delivered. */
  readonly result: Promise<TransferResult>;
  private readonly stop = new AbortController();
  private over = false;

  /** @internal use transfer() */
  constructor(start: (t: Transfer, signal: AbortSignal) => Promise<TransferResult>, signal?: AbortSignal) {
    super();
    if (signal?.aborted) this.stop.abort();
    else signal?.addEventListener("abort", () => this.stop.abort(), { once: true });
    // Started on the next turn, so that iterators and listeners set up right after transfer() miss nothing.
    this.result = new Promise<void>((r) => setImmediate(r))
      .then(() => start(this, this.stop.signal))
      .finally(() => {
        this.over = true;
      });
  }

  /** Interrupts the transfer; partial files are removed (kept with `resume`). */
  abort(): void {
    this.stop.abort();
  }

  then<A = TransferResult, B = never>(
    onResolved?: ((r: TransferResult) => A | PromiseLike<A>) | null,
    onRejected?: ((e: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    return this.result.then(onResolved, onRejected);
  }

  /** @internal delivers one event to listeners and iterators. */
  deliver(ev: TransferEvent): void {
    try {
      this.emit("event", ev);
      if (ev.event !== "error" || this.listenerCount("error") > 0) this.emit(ev.event, ev);
    } catch (e) {
      // A listener's bug must not corrupt the transfer's state: it surfaces as an uncaught error instead.
      queueMicrotask(() => {
        throw e;
      });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<TransferEvent> {
    const queue: TransferEvent[] = [];
    let head = 0;
    let wake: (() => void) | undefined;
    const onEvent = (ev: TransferEvent) => {
      queue.push(ev);
      wake?.();
    };
    const detach = () => this.off("event", onEvent);
    this.on("event", onEvent);
    // The result settles after `over` is set: wake a waiting next() to end the iteration.
    void this.result.then(() => wake?.());
    return {
      next: async (): Promise<IteratorResult<TransferEvent>> => {
        while (head >= queue.length && !this.over) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        if (head < queue.length) {
          const value = queue[head++];
          if (head > 1024 && head * 2 > queue.length) queue.splice(0, head), (head = 0);
          return { value, done: false };
        }
        detach();
        return { value: undefined, done: true };
      },
      return: async (): Promise<IteratorResult<TransferEvent>> => {
        detach();
        return { value: undefined, done: true };
      },
    };
  }
}

/**
 * Copies `sources` to `target` as `escp [options] sources... target` would.
 *
 * @example
 * const r = await transfer("a.bin", "/tmp/copy/");
 * r.ok; // true
 * r.summary?.bytes; // size of a.bin
 */
export function transfer(sources: Location | Location[], target: Location, options: TransferOptions = {}): Transfer {
  return new Transfer(async (t, signal) => {
    const report = new Report({ quiet: true, json: false, tty: false, listener: (ev) => t.deliver(ev) }, false);
    const fail = (message: string, usage: boolean): TransferResult => {
      const exit = usage ? EXIT.usage : EXIT.failed;
      report.error(message, exit, { usage });
      return { ok: false, exitCode: exit, failures: report.failures, error: message, usage: usage || undefined };
    };
    let o: Options, from: Operand[], to: Operand;
    try {
      o = resolveOptions(options);
      from = (Array.isArray(sources) ? sources : [sources]).map(operand);
      to = operand(target);
    } catch (e) {
      if (e instanceof OperandError || e instanceof ValueError || e instanceof ConfigError) return fail((e as Error).message, true);
      return fail(`internal error: ${(e as Error)?.message ?? e}`, false);
    }
    if (!from.length) return fail("no sources given", true);
    try {
      const r = await runTransfer(o, from, to, report, signal);
      const exit = exitStatus(r);
      if (r.interrupted || r.error) {
        const message = r.interrupted ? "interrupted" : r.error!;
        report.error(message, exit, { interrupted: r.interrupted, usage: r.usage });
        return { ok: false, exitCode: exit, failures: r.failures, error: message, usage: r.usage, interrupted: r.interrupted };
      }
      let summary: SummaryEvent | undefined;
      const take = (ev: TransferEvent) => ev.event === "summary" && (summary = ev);
      t.on("event", take);
      if (r.summary) report.summary(r.summary, exit);
      else report.close();
      t.off("event", take);
      return { ok: exit === EXIT.ok, exitCode: exit, summary, failures: r.failures };
    } catch (e) {
      // The engine reports its failures in its result; anything thrown is a bug, still told as a result.
      return fail(`internal error: ${(e as Error)?.stack ?? e}`, false);
    }
  }, options.signal);
}

function operand(l: Location): Operand {
  return typeof l === "string" ? parseOperand(l) : l;
}

/** defaultOptions(), then the config files if asked, then what the caller gave; values checked as the command line checks them. */
export function resolveOptions(given: TransferOptions = {}): Options {
  const { config, signal: _signal, ...rest } = given;
  const explicit = new Set<keyof Options>();
  const o: Options = { ...defaultOptions(), quiet: true };
  for (const [k, v] of Object.entries(rest) as [keyof Options, unknown][]) {
    if (v === undefined) continue;
    (o as any)[k] = v;
    explicit.add(k);
  }
  explicit.add("quiet");
  check("threads", o.threads, (v) => parseThreads(String(v)));
  check("zstdLevel", o.zstdLevel, (v) => parseZstdLevel(String(v)));
  check("blockSize", o.blockSize, (v) => parseBlockSize(String(v)));
  check("keepaliveS", o.keepaliveS, (v) => parseKeepalive(String(v)));
  if (!Array.isArray(o.ports) || o.ports.length !== 2 || !(o.ports[0] >= 1 && o.ports[0] <= o.ports[1] && o.ports[1] <= 65535)) {
    throw new ValueError(`ports needs a range [first, last] from 1 to 65535, got ${JSON.stringify(o.ports)}`);
  }
  return config ? mergeConfig(o, explicit, loadConfig()) : o;
}

function check(name: string, v: unknown, parse: (v: unknown) => unknown): void {
  try {
    parse(v);
  } catch (e) {
    if (e instanceof ValueError) throw new ValueError(`${name} needs ${e.message}, got ${JSON.stringify(v)}`);
    throw e;
  }
}
