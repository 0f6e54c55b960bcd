/**
 * What both ends agree on before files move (src/transfer/side.ts): the
 * number of files in flight is the smaller of both ends' windows, and a
 * window the other end sends that is not a whole number of at least 1
 * cannot lift this end's bound.
 */
import { test, expect } from "bun:test";
import { fileWindow, sharedWindow } from "../src/transfer/side.ts";

test("the sender keeps the smaller window; nonsense from the other end is ignored", () => {
  const own = fileWindow();
  expect(own).toBeGreaterThanOrEqual(16);
  expect(sharedWindow(16)).toBe(16);
  expect(sharedWindow(own + 1000)).toBe(own);
  for (const bad of [Number.NaN, 0, -5, 2.5, "20", null, undefined, Infinity]) expect(sharedWindow(bad)).toBe(own);
});
