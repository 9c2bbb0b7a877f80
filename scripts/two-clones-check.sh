#!/usr/bin/env bash
# Two checkouts sharing one target directory, run at the same time, each run their own feature
# files and write their own reports (paths are resolved at run time, never compiled in). Clone B
# drops one feature file, so its scenario count tells whose features it ran. Clones HEAD (commit
# first to check uncommitted work). Each runs a fast subset of features (the full behaviour suite
# already ran in this CI; what is checked here is isolation between checkouts, not behaviour).
# Ends with `two-clones: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf 'two-clones: %s\n' "$*"; }
passed=0; failed=0
check() { if eval "$2"; then passed=$((passed + 1)); say "ok   $1"; else failed=$((failed + 1)); say "FAIL $1"; fi; }
work=$(mktemp -d "${TMPDIR:-/tmp}/apq-two-clones.XXXXXX")
# The clones share this checkout's target directory (dependencies are built already). Cargo names
# a workspace crate's artifacts the same whatever its checkout, so afterwards this checkout's own
# sources are touched: its next build recompiles its workspace crates instead of taking the
# clones' artifacts (HEAD's code) for up to date.
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
restore() {
  rm -rf "$work"
  find contract services harness steps load -name '*.rs' -exec touch {} + 2>/dev/null
}
trap restore EXIT
for c in a b; do git clone -q --local "$PWD" "$work/$c" || { echo "two-clones: 0 passed, 1 failed"; exit 1; }; done
dropped=features/contracts.feature
dropped_n=$(grep -c '^\s*Scenario' "$work/b/$dropped")
rm "$work/b/$dropped"
# Sequential builds into the shared target directory, then concurrent runs.
t0=$(date +%s)
for c in a b; do
  # Only what the suite needs; --workspace: a -p subset would compile the dependencies again.
  (cd "$work/$c" && CARGO_TARGET_DIR="$target" cargo test -q --workspace --test cucumber --no-run >"$work/$c.build.log" 2>&1) || { tail -n 30 "$work/$c.build.log"; echo "two-clones: 0 passed, 1 failed"; exit 1; }
done
t1=$(date +%s); say "built both clones in $((t1 - t0)) s"
# The glob is resolved in each clone's own checkout; it names the dropped file, which B lacks.
subset='features/{contracts,pipeline,data_writer,rest_api}.feature'
for c in a b; do
  (cd "$work/$c" && CARGO_TARGET_DIR="$target" QA_CONCURRENCY=4 cargo test -q --workspace --test cucumber -- --input "$subset" --tags "not @fuzz and not @chaos" >"$work/$c.log" 2>&1; echo $? >"$work/$c.rc") &
done
wait
say "ran both clones in $(( $(date +%s) - t1 )) s"
summary() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["passed"], d["failed"])' "$work/$1/reports/latest/cucumber/summary.json" 2>/dev/null || echo "0 1"; }
read -r pa fa < <(summary a); read -r pb fb < <(summary b)
check "clone A passes ($pa passed, $fa failed)" '[ "$(cat "$work/a.rc")" = 0 ] && [ "$fa" = 0 ] && [ "$pa" -gt 0 ]'
check "clone B passes ($pb passed, $fb failed)" '[ "$(cat "$work/b.rc")" = 0 ] && [ "$fb" = 0 ] && [ "$pb" -gt 0 ]'
check "each ran its own features (A - B = $((pa - pb)), the $dropped_n scenarios B dropped)" '[ $((pa - pb)) = "$dropped_n" ]'
check "each wrote its reports into its own checkout" '[ -d "$work/a/reports/runs" ] && [ -d "$work/b/reports/runs" ] && [ "$(ls "$work/a/reports/runs")" != "$(ls "$work/b/reports/runs")" ]'
for c in a b; do
  [ "$(cat "$work/$c.rc")" = 0 ] || { say "clone $c failed:"; grep -E -A4 '✘|Step (failed|panicked)' "$work/$c.log" | head -n 60; tail -n 8 "$work/$c.log"; }
done
echo "two-clones: $passed passed, $failed failed"
[ "$failed" = 0 ]
