/** bench/: the order the benchmark runs a workload's tools in, rep after rep (bench/lib.ts repOrder). */
import { describe, expect, test } from "bun:test";
import { repOrder } from "../bench/lib.ts";

/** The tool each tool follows in one rep (the first follows nothing). */
function predecessors(order: number[]): Map<number, number> {
  return new Map(order.slice(1).map((t, p) => [t, order[p]]));
}

describe("repOrder", () => {
  test("every rep runs every tool once", () => {
    for (const n of [1, 2, 4, 5, 15]) {
      for (let rep = 0; rep < 6; rep++) expect([...repOrder(n, rep)].sort((a, b) => a - b)).toEqual([...Array(n).keys()]);
    }
  });

  test("each rep starts with another tool", () => {
    for (const n of [4, 5, 15]) expect(new Set([0, 1, 2].map((rep) => repOrder(n, rep)[0])).size).toBe(3);
  });

  test("the default escp (first in the list) does not follow the same tool in any two of the large file's three reps", () => {
    // 15 large-file tools, 3 reps: a rotation by one put the last one (cp) before the first in reps 2 and 3
    const before = [0, 1, 2].map((rep) => predecessors(repOrder(15, rep)).get(0));
    expect(new Set(before.filter((t) => t !== undefined)).size).toBe(before.filter((t) => t !== undefined).length);
  });

  test("no tool follows the same one twice over 5 reps of 15 tools or 4 reps of 5", () => {
    for (const [n, reps] of [[15, 5], [5, 4]]) {
      const seen = new Set<string>();
      for (let rep = 0; rep < reps; rep++) {
        for (const [t, p] of predecessors(repOrder(n, rep))) {
          expect(seen.has(`${p}>${t}`)).toBe(false);
          seen.add(`${p}>${t}`);
        }
      }
    }
  });
});
