/**
 * The control channel: 4-byte big-endian length + UTF-8 JSON, at most 1 MiB,
 * over the ssh pipe (or a local child's stdio). It carries only session
 * set-up and the final report; file data never passes here.
 *
 * Anything on the pipe that is not a frame (a login banner, "command not
 * found") is reported with the text that was read, so the user sees why.
 * Text before the first frame (a shell startup file that prints, on every
 * login) is passed to `onText` and skipped, where scp and rsync give up.
 *
 * @example
 * const ch = new ControlChannel(proc.stdout, (b) => proc.stdin.write(b));
 * ch.send({ type: "bye" });
 * const msg = await ch.receive();
 */
import { MAX_CONTROL_MESSAGE, type ControlMessage } from "../protocol.ts";

/** One control message as it travels: a 4-byte big-endian length, then the JSON. */
export function encodeFrame(m: ControlMessage): Uint8Array {
  const { type, ...rest } = m;
  const json = Buffer.from(JSON.stringify({ type, ...rest }), "utf8"); // type first: FRAME_START
  const frame = Buffer.alloc(4 + json.length);
  frame.writeUInt32BE(json.length, 0);
  json.copy(frame, 4);
  return new Uint8Array(frame.buffer, frame.byteOffset, frame.length);
}

/** How every control message's JSON begins (JSON.stringify of an object whose first key is type). */
const FRAME_START = Buffer.from('{"type":"');

export class ControlChannel {
  private buf = Buffer.alloc(0);
  private waiting: ((m: ControlMessage | null) => void)[] = [];
  private queue: (ControlMessage | null)[] = [];
  private failure: Error | undefined;
  private closed = false;
  private framed = false;

  constructor(
    source: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>,
    private readonly write: (b: Uint8Array) => void,
    private readonly peer: string,
    private readonly onText: (text: string) => void = () => {},
  ) {
    void this.pump(source);
  }

  send(m: ControlMessage): void {
    this.write(encodeFrame(m));
  }

  /** Next message, or null when the pipe closed. Throws on a malformed frame. */
  receive(): Promise<ControlMessage | null> {
    if (this.failure) return Promise.reject(this.failure);
    const m = this.queue.shift();
    if (m !== undefined) return Promise.resolve(m);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.waiting.push((msg) => (this.failure ? reject(this.failure) : resolve(msg)));
    });
  }

  private deliver(m: ControlMessage | null): void {
    const w = this.waiting.shift();
    if (w) w(m);
    else this.queue.push(m);
  }

  private async pump(source: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const chunk of source as AsyncIterable<Uint8Array>) {
        this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : Buffer.from(chunk);
        if (!this.framed && !this.skipText()) continue;
        while (this.buf.length >= 4) {
          const len = this.buf.readUInt32BE(0);
          if (len > MAX_CONTROL_MESSAGE || this.buf[0] !== 0) throw this.garbage();
          if (this.buf.length < 4 + len) break;
          const text = this.buf.subarray(4, 4 + len).toString("utf8");
          this.buf = this.buf.subarray(4 + len);
          let msg: ControlMessage;
          try {
            msg = JSON.parse(text);
          } catch {
            throw new Error(`${this.peer} sent a malformed control message`);
          }
          if (!msg || typeof msg !== "object" || typeof (msg as any).type !== "string") {
            throw new Error(`${this.peer} sent a control message without a type`);
          }
          this.framed = true;
          this.deliver(msg);
        }
      }
      if (this.buf.length) throw this.garbage();
    } catch (e) {
      this.failure = e instanceof Error ? e : new Error(String(e));
    }
    this.closed = true;
    while (this.waiting.length) this.deliver(null);
  }

  /**
   * Before the first frame: drops printable text ahead of one (a frame starts with
   * its length's zero byte, then `{"type":`). False while there may be more text to
   * come; throws what garbage() says when it is not text or runs past 64 KiB.
   */
  private skipText(): boolean {
    if (this.buf[0] === 0) return true;
    const at = this.buf.indexOf(FRAME_START);
    const text = this.buf.subarray(0, at < 4 ? this.buf.length : at - 4);
    if (text.includes(0) || text.length > 65536) throw this.garbage();
    if (at < 4 || this.buf[at - 4] !== 0) return false;
    this.onText(text.toString("utf8").replace(/[^\x20-\x7e]+/g, " ").trim());
    this.buf = this.buf.subarray(at - 4);
    return true;
  }

  private garbage(): Error {
    const text = this.buf.subarray(0, 200).toString("utf8").replace(/[^\x20-\x7e]+/g, " ").trim();
    return new Error(
      `${this.peer} printed text where escp expected its protocol: "${text}" ` +
        `(a login banner or shell startup output? make non-interactive shells silent)`,
    );
  }
}

/**
 * Keepalive on the control channel: each end that pings sends `{"type":"ping"}`
 * every `keepaliveS` seconds (the client from its hello on, remote.ts
 * withKeepalive; the server once its streams are up, if the hello asked), and
 * the other end gives it up after three silent intervals. A watch arms on the
 * first ping, so a peer that never pings (an older escp) is waited for as
 * before, or at once when the peer said it will ping (`armed`). Time during
 * which our own event loop was blocked (a long FFI call such as accepting the
 * streams) does not count as silence: we were not listening.
 *
 * @example
 * const silence = watchSilence(30, () => giveUp("no word for 90 s"));
 * for (;;) { const m = await ch.receive(); silence.heard(m); if (!m) break; }
 * silence.stop();
 */
export function watchSilence(keepaliveS: number, giveUp: () => void, armed = false): { heard(m: ControlMessage | null): void; stop(): void } {
  if (!(keepaliveS > 0)) return { heard() {}, stop() {} };
  const limitMs = 3 * keepaliveS * 1000;
  const tickMs = Math.min(1000, keepaliveS * 500);
  let last = performance.now();
  let lastTick = last;
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - lastTick > 2 * tickMs + 250) last = now; // we were blocked, not the peer silent
    lastTick = now;
    if (armed && now - last > limitMs) giveUp();
  }, tickMs);
  (timer as any).unref?.();
  return {
    heard(m) {
      last = performance.now();
      if ((m as { type?: string } | null)?.type === "ping") armed = true;
    },
    stop: () => clearInterval(timer),
  };
}
