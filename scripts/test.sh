#!/usr/bin/env bash
# `npm test`: install what is missing, build dist/escp, run every test under
# test/ with bun, and end with the one line CI reads:
#     N passed, N failed[, N skipped]
# counted from the JUnit report (build/junit.xml; bun's console log in
# build/test-output.log). Exits non-zero if a test failed, a test file failed
# to load, bun test failed or was killed, a step before it failed, or no test
# ran.
#
# Extra arguments go to `bun test` (e.g. `npm test -- test/harness.test.ts`).
# Environment:
#   ESCP_TEST_TIMEOUT       the whole bun test run, seconds (default: what is
#                           left of 9.5 minutes after setup and build)
#   ESCP_TEST_CASE_TIMEOUT  one test, milliseconds (default 120000)
#   ESCP_KEEP_TMP=1         keep the test files (under $ESCP_TEST_TMP)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JUNIT=build/junit.xml
LOG=build/test-output.log
mkdir -p build
rm -f "$JUNIT" "$LOG"

# Prints the closing line. $1 = failures to add to what the report says (test
# files that failed to load, a run that did not finish). Counts come from the
# JUnit report or, when bun wrote none (killed by the timeout), from its log.
summarize() {
  node - "$JUNIT" "$LOG" "${1:-0}" <<'JS'
const fs = require("fs");
const [junit, log, extra] = process.argv.slice(2);
let passed = 0, failed = 0, skipped = 0;
if (fs.existsSync(junit) && fs.statSync(junit).size > 0) {
  const xml = fs.readFileSync(junit, "utf8");
  for (const m of xml.matchAll(/<testcase\b[^>]*?(?:\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const body = m[1] || "";
    if (/<(failure|error)\b/.test(body)) failed++;
    else if (/<skipped\b/.test(body)) skipped++;
    else passed++;
  }
} else if (fs.existsSync(log)) {
  for (const m of fs.readFileSync(log, "utf8").matchAll(/^\((pass|fail|skip|todo)\) /gm)) {
    if (m[1] === "pass") passed++;
    else if (m[1] === "fail") failed++;
    else skipped++;
  }
}
failed += Number(extra) || 0;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
JS
}

# A step before the tests failed: record it as one failed test case, so that
# the JUnit report and the closing line both say so.
fail_step() {
  local name=$1 status=$2
  printf 'test.sh: %s failed (exit %s)\n' "$name" "$status" >&2
  cat >"$JUNIT" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="npm test" tests="1" failures="1">
  <testsuite name="scripts/test.sh" tests="1" failures="1">
    <testcase name="${name}" classname="scripts/test.sh">
      <failure message="${name} failed with exit status ${status}" />
    </testcase>
  </testsuite>
</testsuites>
XML
  summarize 0
  exit 1
}

bash scripts/setup.sh </dev/null || fail_step "scripts/setup.sh" $?
bash scripts/build.sh </dev/null || fail_step "scripts/build.sh" $?

# Test files go under one directory per run, removed afterwards.
ESCP_TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/escp-test-run.XXXXXX") || fail_step "mktemp" $?
export ESCP_TEST_TMP
cleanup() { [[ -n ${ESCP_KEEP_TMP:-} ]] || rm -rf "$ESCP_TEST_TMP"; }
trap cleanup EXIT

# `npm test` must finish within 10 minutes, whatever hangs: bun test gets what
# is left of 570 s (at least 60 s); timeout then kills its whole process group.
budget=${ESCP_TEST_TIMEOUT:-$((570 - SECONDS))}
[[ -n ${ESCP_TEST_TIMEOUT:-} ]] || ((budget >= 60)) || budget=60
# --no-orphans: no sshd, ssh or escp outlives the run.
timeout -k 15 "$budget" \
  ./node_modules/.bin/bun test --no-orphans \
  --timeout="${ESCP_TEST_CASE_TIMEOUT:-120000}" \
  --reporter=junit --reporter-outfile="$JUNIT" "$@" </dev/null 2>&1 | tee "$LOG"
bun_status=${PIPESTATUS[0]}

extra=0
if [[ ! -s $JUNIT ]]; then
  # Killed before it wrote the report: count what the log shows, plus the run.
  if [[ $bun_status -eq 124 || $bun_status -eq 137 ]]; then
    echo "test.sh: bun test did not finish within ${budget}s and was killed" >&2
  else
    echo "test.sh: bun test exited with status $bun_status and wrote no JUnit report" >&2
  fi
  extra=1
else
  # Files that failed to load appear only in bun's own summary (" N error[s]").
  load_errors=$(tail -n 20 "$LOG" | sed -n 's/^ *\([0-9][0-9]*\) errors\{0,1\}$/\1/p' | tail -n 1)
  extra=${load_errors:-0}
fi
line=$(summarize "$extra") || { echo "test.sh: could not read $JUNIT" >&2; line="0 passed, 1 failed"; }
read -r passed _ failed _ <<<"${line//,/}"

status=0
if [[ $bun_status -ne 0 ]]; then
  status=1
  if [[ $failed -eq 0 ]]; then
    # Something failed that is not a test case: count it, so the line says so.
    echo "test.sh: bun test exited with status $bun_status" >&2
    line=$(summarize $((extra + 1)))
  fi
fi
if [[ $((passed + failed)) -eq 0 ]]; then
  echo "test.sh: no test ran" >&2
  status=1
fi
[[ $failed -eq 0 ]] || status=1
echo "$line"
exit "$status"
