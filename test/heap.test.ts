import { test, expect } from "bun:test";
import { fullGC, heapSize } from "bun:jsc";
import { Collector } from "../src/heap.ts";

test("a collector frees garbage on the tick that completes its count, not before", () => {
  let held: object[] | undefined = Array.from({ length: 200_000 }, (_, i) => ({ i, s: `name-${i}` }));
  fullGC();
  const withGarbage = heapSize();
  expect(held.length).toBe(200_000);
  held = undefined; // garbage from here on; only a collection notices
  const gc = new Collector(100);
  gc.tick(60);
  gc.tick(39);
  expect(heapSize()).toBe(withGarbage);
  gc.tick();
  expect(heapSize()).toBeLessThan(withGarbage - 8_000_000);
});
