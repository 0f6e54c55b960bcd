/**
 * Pruning ~/.cache/escp (src/cache.ts): other builds' directories go when a
 * new build first runs, except the last used and the recently used; nothing
 * that is not a build directory of ours is touched.
 */
import { test, expect } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { markUsed, pruneOtherBuilds, KEEP_OTHERS, IN_USE_MS } from "../src/cache.ts";
import { tmpdir, plantBuilds } from "./harness.ts";

const DAY = 24 * 3600_000;
const uid = process.getuid!();
const ROOT = uid === 0;

/** A cache root holding build directories last used `ageDays` ago. */
function cacheWith(builds: Record<string, number>): string {
  const root = path.join(tmpdir("home"), ".cache", "escp");
  plantBuilds(root, builds);
  return root;
}

test("a new build removes the builds not used lately, beyond the two used last", () => {
  const now = Date.now();
  const root = cacheWith({ "0.1.0-aaaaaaaaaaaa": 30, "0.1.0-bbbbbbbbbbbb": 20, "0.1.0-cccccccccccc": 10, "0.1.0-dddddddddddd": 5, "0.1.0-new": 0 });
  expect(KEEP_OTHERS).toBe(2);
  expect(pruneOtherBuilds(root, "0.1.0-new", uid, now).sort()).toEqual(["0.1.0-aaaaaaaaaaaa", "0.1.0-bbbbbbbbbbbb"]);
  expect(fs.readdirSync(root).sort()).toEqual(["0.1.0-cccccccccccc", "0.1.0-dddddddddddd", "0.1.0-new"]);
});

test("a build used within the last day is kept however many others there are", () => {
  const now = Date.now();
  const recent = (IN_USE_MS / DAY) * 0.5;
  const root = cacheWith({ "0.0.9": 40, "0.1.0-a": recent, "0.1.0-b": recent, "0.1.0-c": recent, "0.1.0-new": 0 });
  expect(pruneOtherBuilds(root, "0.1.0-new", uid, now)).toEqual(["0.0.9"]);
  expect(fs.readdirSync(root).sort()).toEqual(["0.1.0-a", "0.1.0-b", "0.1.0-c", "0.1.0-new"]);
});

test("only directories named like a version are pruned: other names, files and symbolic links stay", () => {
  const now = Date.now();
  const root = cacheWith({ "0.1.0-a": 1, "0.1.0-b": 1, notes: 90, "0.1.0-old": 90 });
  const elsewhere = tmpdir("elsewhere");
  fs.writeFileSync(path.join(elsewhere, "keep"), "y");
  fs.symlinkSync(elsewhere, path.join(root, "0.0.1-link"));
  fs.writeFileSync(path.join(root, "0.0.2-file"), "z");
  expect(pruneOtherBuilds(root, "0.1.0-new", uid, now)).toEqual(["0.1.0-old"]);
  expect(fs.readdirSync(root).sort()).toEqual(["0.0.1-link", "0.0.2-file", "0.1.0-a", "0.1.0-b", "notes"]);
  expect(fs.readdirSync(elsewhere)).toEqual(["keep"]);
});

test("a cache directory others can write to is not pruned", () => {
  const now = Date.now();
  const root = cacheWith({ "0.1.0-a": 90, "0.1.0-b": 90, "0.1.0-c": 90 });
  fs.chmodSync(root, 0o777);
  expect(pruneOtherBuilds(root, "0.1.0-new", uid, now)).toEqual([]);
  expect(fs.readdirSync(root).length).toBe(3);
});

test.skipIf(!ROOT)("another user's build directory is not pruned", () => {
  const now = Date.now();
  const root = cacheWith({ "0.1.0-a": 1, "0.1.0-b": 1, "0.1.0-theirs": 90 });
  fs.chownSync(path.join(root, "0.1.0-theirs"), 65534, 65534);
  expect(pruneOtherBuilds(root, "0.1.0-new", uid, now)).toEqual([]);
});

test("a start marks its build's directory used, at most once an hour", () => {
  const now = Date.now();
  const root = cacheWith({ "0.1.0-a": 3, "0.1.0-b": 0 });
  const a = path.join(root, "0.1.0-a"), b = path.join(root, "0.1.0-b");
  const before = fs.statSync(b).mtimeMs;
  markUsed(a, now);
  markUsed(b, now + 60_000);
  expect(Math.abs(fs.statSync(a).mtimeMs - now)).toBeLessThan(1000);
  expect(fs.statSync(b).mtimeMs).toBe(before);
});

test("what a start killed while it removed a build left is removed by the next, unless that start still runs", () => {
  const root = cacheWith({ "0.1.0-a": 1, "0.1.0-new": 0 });
  const dead = path.join(root, ".pruning-0.0.1-999999999"), alive = path.join(root, `.pruning-0.0.2-${process.pid}`);
  for (const d of [dead, alive]) fs.mkdirSync(path.join(d, "sub"), { recursive: true });
  expect(pruneOtherBuilds(root, "0.1.0-new", uid)).toEqual([]);
  expect(fs.readdirSync(root).sort()).toEqual([path.basename(alive), "0.1.0-a", "0.1.0-new"]);
});

test("two starts pruning the same cache at once both finish, and between them remove exactly what one would", async () => {
  // Each old build holds many files, so that the two recursive removals overlap.
  const old = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`0.0.${i}`, 90 - i]));
  const root = cacheWith({ ...old, "0.1.0-a": 1, "0.1.0-b": 2, "0.1.0-new": 0 });
  for (const name of Object.keys(old)) {
    for (let d = 0; d < 20; d++) {
      fs.mkdirSync(path.join(root, name, `d${d}`));
      for (let f = 0; f < 50; f++) fs.writeFileSync(path.join(root, name, `d${d}`, `f${f}`), "x");
    }
    const t = Date.now() / 1000 - old[name]! * 86400; // filling it made it look used now
    fs.utimesSync(path.join(root, name), t, t);
  }
  const at = Date.now() + 500;
  const script = `import { pruneOtherBuilds } from ${JSON.stringify(path.resolve(import.meta.dir, "../src/cache.ts"))};
    while (Date.now() < ${at});
    console.log(JSON.stringify(pruneOtherBuilds(${JSON.stringify(root)}, "0.1.0-new", ${uid})));`;
  const runs = [0, 1].map(() => Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" }));
  const outs = await Promise.all(runs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
  for (const o of outs) {
    expect(o.err).toBe("");
    expect(o.code).toBe(0);
  }
  expect(fs.readdirSync(root).sort()).toEqual(["0.1.0-a", "0.1.0-b", "0.1.0-new"]);
  const removed = outs.flatMap((o) => JSON.parse(o.out) as string[]);
  expect(new Set(removed)).toEqual(new Set(Object.keys(old)));
});
