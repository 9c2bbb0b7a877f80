#!/usr/bin/env bash
# Proves the SUT adapter protocol (fixtures/contracts/adapter.md) is complete: every scenario
# tagged @needs-sut-control (scaling, kills, restarts, rate limiting) runs through the example
# adapter scripts/adapters/reference.sh, configured only by the documented variables plus the
# adapter's own REFERENCE_PIPELINE_BIN, and every component the run started went through it.
# Of the chaos scenarios (a pipeline of their own on private servers, started the same way) the
# one tagged @adapter runs here; the rest would add minutes without exercising the protocol more.
# Ends with `adapter-check: N passed, M failed`; exits non-zero on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf 'adapter-check: %s\n' "$*"; }
passed=0; failed=0
check() { if eval "$2"; then passed=$((passed + 1)); say "ok   $1"; else failed=$((failed + 1)); say "FAIL $1"; fi; }

# --workspace: a -p subset would compile the dependencies again (README, "CI time").
cargo build -q --workspace --all-targets || { echo "adapter-check: 0 passed, 1 failed"; exit 1; }
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p reports/adapter
rm -f reports/adapter/latest
REFERENCE_PIPELINE_BIN="$target/debug/sut-pipeline" QA_SUT_COMMAND="$PWD/scripts/adapters/reference.sh" \
QA_REPORT_DIR=reports/adapter \
  cargo test -q --workspace --test cucumber -- --tags "@needs-sut-control and (not @chaos or @adapter)" 2>&1 | tee reports/adapter/cucumber.log | tail -n 4
suite=${PIPESTATUS[0]}
summary=reports/adapter/latest/cucumber/summary.json
read -r p f < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["passed"], d["failed"])' "$summary" 2>/dev/null || echo "0 1")
check "all @needs-sut-control scenarios pass through the adapter ($p passed, $f failed)" '[ "$suite" = 0 ] && [ "$p" -ge 8 ] && [ "$f" = 0 ]'
logs=$(find reports/adapter/latest/sut-logs -name '*.log' 2>/dev/null | wc -l)
through=$(grep -l '^reference adapter: starting' -r reports/adapter/latest/sut-logs 2>/dev/null | wc -l)
check "every component process started through the adapter ($through of $logs)" '[ "$logs" -gt 0 ] && [ "$through" = "$logs" ]'
echo "adapter-check: $passed passed, $failed failed"
[ "$failed" = 0 ]
