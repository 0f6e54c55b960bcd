/**
 * What both ends agree on before files move (src/transfer/side.ts): the
 * number of files in flight is the smaller of both ends' windows, and a
 * window the other end sends that is not a whole number of at least 1
 * cannot lift this end's bound.
 */
import { test, expect } from "bun:test";
import { fileWindow, sharedWindow, streamsFilesAllow, openFilesLimit } from "../src/transfer/side.ts";

test("the sender keeps the smaller window; nonsense from the other end is ignored", () => {
  const own = fileWindow(4);
  expect(own).toBeGreaterThanOrEqual(8);
  expect(sharedWindow(own, 8)).toBe(8);
  expect(sharedWindow(own, own + 1000)).toBe(own);
  for (const bad of [Number.NaN, 0, -5, 2.5, "20", null, undefined, Infinity]) expect(sharedWindow(own, bad)).toBe(own);
});

test("more streams leave fewer descriptors for files; never more streams than the descriptors allow", () => {
  expect(fileWindow(64)).toBeLessThanOrEqual(fileWindow(1));
  const allowed = streamsFilesAllow(1e6);
  expect(allowed.streams).toBeGreaterThanOrEqual(1);
  expect(allowed.streams).toBeLessThan(openFilesLimit() / 3);
  expect(allowed.why).toBe(`ulimit -n is ${openFilesLimit()}, which leaves room for ${allowed.streams} of the 1000000 streams asked for: using ${allowed.streams} (raise it with ulimit -n)`);
  expect(streamsFilesAllow(1)).toEqual({ streams: 1 });
});
