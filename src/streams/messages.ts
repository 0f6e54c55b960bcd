/** Messages between the main thread and stream workers (src/streams/worker.ts). */

export interface WorkerInit {
  kind: "init";
  role: "send" | "recv" | "control-rx";
  stream: number;
  conn: number; // escp_conn*
  libPath: string;
  blockSize: number;
  zstdLevel: number;
  cancel: SharedArrayBuffer; // Int32[1]: non-zero stops every loop
  counters: SharedArrayBuffer; // escp_counters per stream
  table?: SharedArrayBuffer; // recv: escp_fdslot[tableCap]
  tableCap?: number;
  tableGen?: SharedArrayBuffer; // recv: Int32[1], bumped when a slot is published
  cpumask?: string;
  nodemask?: string;
}

export type ToWorker =
  | { kind: "load"; libPath: string } // a spare worker (spare.ts) gets ready before its stream exists
  | WorkerInit
  | { kind: "batch"; items: Uint8Array } // escp_work[]
  | { kind: "finish" };

export type FromWorker =
  | { kind: "done"; stream: number; entries: Uint8Array } // escp_done[]
  | { kind: "need"; stream: number; id: bigint }
  | { kind: "ended"; stream: number }
  | { kind: "record"; stream: 0; type: number; flags: number; body: Uint8Array }
  | { kind: "error"; stream: number; code: number; message: string };
