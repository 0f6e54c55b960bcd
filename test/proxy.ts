/**
 * A man-in-the-middle TCP proxy for the data streams: it forwards each
 * connection to the real receiver and can tamper with what passes, record by
 * record (it parses the 16-byte record headers of DESIGN §5, so it can aim at
 * a header, a body or a tag, or drop, duplicate, reorder and truncate).
 */
import net from "node:net";

/** What to forward instead of the record: buffers, in order, and numbers (ms to wait before the next one). */
export type Tamper = (ctx: { conn: number; index: number; record: Buffer }) => (Buffer | number)[] | "close";

export interface Proxy {
  port: number;
  connections: number;
  tampered: number;
  close(): void;
}

/** Preamble of each connection from the connecting side. */
const PREAMBLE = 32;

/**
 * Forwards 127.0.0.1:<port> → 127.0.0.1:<target>. Records sent by the
 * connecting side (after its preamble) pass through `tamper`; the other
 * direction is forwarded untouched. `beforeEach` runs before each upstream
 * connection is opened (to put strangers in the listener's queue first).
 */
export function startProxy(target: number, tamper: Tamper, beforeEach?: () => void): Promise<Proxy> {
  const p: Proxy = { port: 0, connections: 0, tampered: 0, close: () => server.close() };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const conn = p.connections++;
    beforeEach?.();
    const upstream = net.connect(target, "127.0.0.1");
    sockets.add(client).add(upstream);
    upstream.on("data", (d: Buffer) => client.write(d));
    upstream.on("end", () => client.end());
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
    let buf = Buffer.alloc(0);
    let preambleLeft = PREAMBLE;
    // Writes wait for earlier pauses (a number in a tamper's answer), so order is kept.
    let chain = Promise.resolve();
    const forward = (b: Buffer | number) => {
      chain = chain.then(() => (typeof b === "number" ? Bun.sleep(b) : void upstream.write(b)));
    };
    let index = 0;
    let closed = false;
    client.on("data", (d: Buffer) => {
      if (closed) return;
      buf = Buffer.concat([buf, d]);
      if (preambleLeft > 0) {
        const n = Math.min(preambleLeft, buf.length);
        forward(buf.subarray(0, n));
        buf = buf.subarray(n);
        preambleLeft -= n;
      }
      while (buf.length >= 16) {
        const len = buf.readUInt32BE(4);
        const total = 16 + len + 16;
        if (buf.length < total) break;
        const record = Buffer.from(buf.subarray(0, total));
        buf = buf.subarray(total);
        const out = tamper({ conn, index: index++, record });
        if (out === "close") {
          closed = true;
          p.tampered++;
          chain = chain.then(() => {
            upstream.end();
            client.destroy();
          });
          return;
        }
        if (out.length !== 1 || out[0] !== record) p.tampered++;
        for (const r of out) forward(r);
      }
    });
    client.on("end", () => void (chain = chain.then(() => void upstream.end())));
  });
  p.close = () => {
    server.close();
    for (const s of sockets) s.destroy();
  };
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ ...p, get port() { return (server.address() as net.AddressInfo).port; }, get connections() { return p.connections; }, get tampered() { return p.tampered; }, close: p.close })));
}
