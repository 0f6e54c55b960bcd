/**
 * Spare workers (src/streams/spare.ts): started ahead of need, handed out
 * once each, and never what keeps a process from exiting.
 */
import { describe, test, expect } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { prestart, takeWorker, dropSpares } from "../src/streams/spare.ts";
import { tmpdir } from "./harness.ts";

/** A worker that answers each message but "warm" with the count of messages it has seen. */
function echoWorker(): string {
  const file = path.join(tmpdir("spare"), "echo.ts");
  fs.writeFileSync(file, 'let n = 0;\nself.onmessage = (e) => { n++; if (e.data !== "warm") self.postMessage([e.data, n]); };\n');
  return Bun.pathToFileURL(file).href;
}

const ask = (w: Worker, m: unknown) =>
  new Promise<unknown>((resolve) => {
    w.onmessage = (e) => resolve(e.data);
    w.postMessage(m);
  });

describe("spare workers", () => {
  test("a prestarted worker has already received its first message when it is taken", async () => {
    const url = echoWorker();
    prestart(url, 2, "warm");
    const a = takeWorker(url), b = takeWorker(url);
    expect(a).not.toBe(b);
    expect(await ask(a, "x")).toEqual(["x", 2]);
    expect(await ask(b, "y")).toEqual(["y", 2]);
    const fresh = takeWorker(url); // none left: a new one, which saw nothing before
    expect(await ask(fresh, "z")).toEqual(["z", 1]);
    for (const w of [a, b, fresh]) w.terminate();
  });

  test("spares nobody took do not keep a process alive", async () => {
    const url = echoWorker();
    const script = path.join(tmpdir("spare"), "main.ts");
    fs.writeFileSync(script, `import { prestart } from ${JSON.stringify(path.resolve("src/streams/spare.ts"))};\nprestart(${JSON.stringify(url)}, 3, "warm");\nconsole.log("started");\n`);
    const p = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => p.kill("SIGKILL"), 10_000);
    const code = await p.exited;
    clearTimeout(timer);
    expect(await new Response(p.stdout).text()).toBe("started\n");
    expect(code).toBe(0);
  });

  test("dropSpares ends the spares, and later takes start new workers", async () => {
    const url = echoWorker();
    prestart(url, 1, "warm");
    dropSpares();
    const w = takeWorker(url);
    expect(await ask(w, "q")).toEqual(["q", 1]);
    w.terminate();
  });
});
