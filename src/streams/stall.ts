/**
 * A data path that keeps its connections open but stops delivering: a proxy, a
 * port forward or a load balancer between the ends that goes on acknowledging
 * what it no longer passes on. TCP keepalive and TCP_USER_TIMEOUT never fire
 * (every segment is acknowledged), the control channel's pings still flow over
 * ssh, and both ends would wait for ever.
 *
 * So each end's pings carry, per stream, the bytes its kernel has seen
 * acknowledged (TCP_INFO), and the other end compares them with the bytes its
 * own kernel has received on that stream. Directly connected, acknowledged never
 * exceeds received (a slow reader closes the window, it does not acknowledge);
 * when it does and nothing more arrives for three keepalive intervals, the path
 * has stalled, and the copy fails instead of hanging.
 *
 * @example
 * const stall = new StallWatch(conns, 30, (why) => fail(why));
 * send({ type: "ping", acked: stall.acked() }); // each ping out
 * stall.heard(m.acked);                         // each ping in
 */
import { native, ptr, type Pointer } from "../native.ts";

export class StallWatch {
  private readonly received: number[];
  private readonly since: number[];
  private readonly out = new BigUint64Array(2);
  private stalled = false;

  constructor(
    private readonly conns: number[], // escp_conn*
    private readonly keepaliveS: number,
    private readonly onStall: (why: string) => void,
  ) {
    const now = performance.now();
    this.received = conns.map((c) => this.tcp(c)[1]);
    this.since = conns.map(() => now);
  }

  /** Bytes the other end acknowledged, per stream: what our pings carry. Each is also a look at what arrived. */
  acked(): number[] {
    return this.conns.map((c, i) => {
      const [acked, received] = this.tcp(c);
      this.arrived(i, received, performance.now());
      return acked;
    });
  }

  /** The other end's `acked`, from one of its pings (anything else is ignored). */
  heard(peerAcked: unknown): void {
    if (this.stalled || !(this.keepaliveS > 0) || !Array.isArray(peerAcked)) return;
    const now = performance.now();
    for (let i = 0; i < this.conns.length && i < peerAcked.length; i++) {
      const received = this.tcp(this.conns[i])[1];
      if (this.arrived(i, received, now)) continue;
      // One more is the FIN of a stream its sender has finished (it takes a sequence number).
      const owed = Number(peerAcked[i]) - received;
      const quiet = (now - this.since[i]) / 1000;
      if (owed > 1 && quiet >= 3 * this.keepaliveS) {
        this.stalled = true;
        this.onStall(
          `stream ${i}: ${owed} bytes the other end sent have not arrived in ${Math.round(quiet)} s, ` +
            `though the connection is open (something on the data path holds them: a proxy or firewall?)`,
        );
        return;
      }
    }
  }

  /** Whether stream i received more since the last look; the quiet time counts from the last look that saw more. */
  private arrived(i: number, received: number, now: number): boolean {
    if (received === this.received[i]) return false;
    this.received[i] = received;
    this.since[i] = now;
    return true;
  }

  private tcp(conn: number): [number, number] {
    const lib = native();
    if (lib.escp_tcp_bytes(lib.escp_conn_fd(conn as Pointer), ptr(this.out)) < 0) return [0, 0];
    return [Number(this.out[0]), Number(this.out[1])];
  }
}
