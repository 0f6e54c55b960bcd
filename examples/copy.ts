/**
 * The library API in a few lines: copy a file with escp's engine and print
 * its progress. Run from the repository: `bun examples/copy.ts [SOURCE] [TARGET]`.
 * Without arguments it makes a 64 MiB file in a temporary directory and
 * copies it next to itself (a local copy: both ends on this host, still over
 * encrypted TCP streams).
 *
 * It prints one line per event it cares about and ends with the summary;
 * the exit status is escp's (0 when every file arrived verified).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { transfer, formatBytes } from "escp"; // package.json "exports": src/index.ts

let [source, target] = process.argv.slice(2);
if (!source || !target) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "escp-example-"));
  source = path.join(dir, "data.bin");
  target = path.join(dir, "copy.bin");
  const block = Buffer.alloc(1 << 20);
  const fd = fs.openSync(source, "w");
  for (let i = 0; i < 64; i++) fs.writeSync(fd, block.fill(i));
  fs.closeSync(fd);
}

// Ctrl-C interrupts the copy cleanly (partial files are removed).
const stop = new AbortController();
process.on("SIGINT", () => stop.abort());

const t = transfer(source, target, { threads: 2, signal: stop.signal });
for await (const ev of t) {
  switch (ev.event) {
    case "session":
      console.log(`session: ${ev.direction} to ${ev.host}, ${ev.streams} streams, escp ${ev.version}`);
      break;
    case "file_start":
      console.log(`start: ${ev.path} (${formatBytes(ev.size)})`);
      break;
    case "progress":
      console.log(`progress: ${formatBytes(ev.bytesDone)} of ${formatBytes(ev.bytesStarted)} at ${formatBytes(ev.rate)}/s`);
      break;
    case "file_done":
      console.log(`done: ${ev.path}`);
      break;
    case "file_failed":
      console.error(`failed: ${ev.path}: ${ev.message}`);
      break;
  }
}
const r = await t;
if (r.summary) {
  const s = r.summary;
  console.log(`summary: ${s.files} files, ${s.bytes} bytes in ${s.seconds.toFixed(2)} s, network ${s.bytesNetwork}, disk ${s.bytesDisk}, exit ${r.exitCode}`);
} else {
  console.error(`error: ${r.error}`);
}
// process.exit, not exitCode: after an interrupt the engine may still hold stream workers.
process.exit(r.exitCode);
