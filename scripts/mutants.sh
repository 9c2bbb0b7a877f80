#!/usr/bin/env bash
# Mutation score of services/ (issue #12), with cargo-mutants in two tiers:
#   tier 1  every mutant against the services crate's own tests (unit + integration tests on the
#           real broker and database): seconds per mutant, and most mutants die here;
#   tier 2  only the mutants tier 1 missed, against the behaviour suite
#           (`cargo test --workspace --test cucumber`, the reference pipeline started from the mutated
#           code): minutes per mutant, so it runs on the few that need it.
# A mutant is caught when either tier's tests fail; a timeout counts as caught (the tests noticed a
# hang) and is reported apart. Unviable mutants (that do not build) are not in the score.
#
# Usage:
#   scripts/mutants.sh sample              a fixed sample: round-robin shard 0 of 64 (every 64th
#                                          mutant of services/, all files); ≤ 10 min on a built tree
#   scripts/mutants.sh full [k/n]          every mutant, or shard k of n (0-based; the CI matrix)
#   scripts/mutants.sh score DIR...        merge finished runs (e.g. CI shards), print the score
# Environment: MUTANTS_TIER1_ONLY=1 skips tier 2; MUTANTS_OUT (default reports/mutants/<mode>).
#
# It mutates services/src IN PLACE (so the checkout's target/ is reused and only services and its
# dependants rebuild): it refuses to start when services/ has uncommitted changes, and restores
# services/src from git on exit, even when interrupted. Don't edit services/ while it runs.
# Ends with `mutants: N passed, N failed` (passed = caught, failed = missed) and exits 0 whatever
# the score (the score is a figure to read, the gate is the README's recorded level).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-}
shift || true

score() { # dir... : merge the tiers/shards under each dir and print the score
  python3 - "$@" <<'PY'
import json, os, sys
def read(path):
    try:
        with open(path) as f:
            return {l.rstrip("\n") for l in f if l.strip()}
    except FileNotFoundError:
        return set()
caught, timeout, missed, unviable, runs = set(), set(), set(), set(), 0
for d in sys.argv[1:]:
    t1 = os.path.join(d, "tier1", "mutants.out")
    t2 = os.path.join(d, "tier2", "mutants.out")
    if not os.path.isdir(t1):
        continue
    runs += 1
    caught |= read(f"{t1}/caught.txt")
    timeout |= read(f"{t1}/timeout.txt")
    unviable |= read(f"{t1}/unviable.txt")
    # Tier 2 re-tests tier 1's misses only (its output also lists the other mutants it was told
    # to skip, as caught: those are not its results). A tier-1 miss stands unless tier 2 caught
    # it, so an interrupted tier 2 leaves the mutants it did not reach missed, not uncounted.
    m1 = read(f"{t1}/missed.txt")
    missed |= m1
    caught |= read(f"{t2}/caught.txt") & m1
    timeout |= read(f"{t2}/timeout.txt") & m1
if runs == 0:
    sys.exit("mutants: no finished run under " + " ".join(sys.argv[1:]))
missed -= caught | timeout
detected = caught | timeout
viable = len(detected) + len(missed)
pct = 100.0 * len(detected) / viable if viable else 0.0
print(f"mutation score (services/): {len(detected)} of {viable} viable mutants caught = {pct:.1f}% "
      f"({len(caught - timeout)} by a failing test, {len(timeout - caught)} by a timeout; "
      f"{len(missed)} missed; {len(unviable)} unviable, not counted)")
if missed:
    print("survivors (missed by the unit, integration and behaviour tests):")
    for m in sorted(missed):
        print("  " + m)
summary = {"caught": len(detected), "timeouts": len(timeout - caught), "missed": len(missed),
           "unviable": len(unviable), "viable": viable, "score_percent": round(pct, 1),
           "survivors": sorted(missed)}
with open(os.path.join(sys.argv[1], "score.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"mutants: {len(detected)} passed, {len(missed)} failed")
PY
}

case "$mode" in
  sample) shard="0/64"; out=${MUTANTS_OUT:-reports/mutants/sample} ;;
  full) shard=${1:-}; out=${MUTANTS_OUT:-reports/mutants/full${shard:+-${shard/\//-of-}}} ;;
  score) [ $# -gt 0 ] || { echo "usage: $0 score DIR..." >&2; exit 2; }; score "$@"; exit 0 ;;
  *) sed -n '2,23p' "$0" >&2; exit 2 ;;
esac

if grep -rqF -- '~ changed by cargo-mutants ~' services/src; then
  echo "mutants: services/src still holds a mutant from an interrupted run; restore it with: git checkout -- services/src" >&2
  exit 2
fi
if ! command -v cargo-mutants >/dev/null 2>&1; then
  echo "== installing cargo-mutants (cargo install --locked cargo-mutants)"
  cargo install --locked cargo-mutants
fi
if ! git diff --quiet -- services/ || ! git diff --cached --quiet -- services/; then
  echo "mutants: services/ has uncommitted changes; commit or stash them first (mutants run in place)" >&2
  exit 2
fi
restore() { git -C "$root" checkout -q -- services/src; }
trap restore EXIT INT TERM
scripts/infra.sh up >/dev/null

rm -rf "$out"; mkdir -p "$out/tier1" "$out/tier2"
common=(-p services --in-place --no-shuffle --sharding round-robin ${shard:+--shard "$shard"})
start=$(date +%s)
# What of cargo-mutants' output to show: misses, timeouts and its summary lines.
shown='^(MISSED|TIMEOUT|Found [0-9]+ mutant|[0-9]+ mutants? tested|Unmutated baseline)'
echo "== tier 1: services' own tests (shard ${shard:-all})"
# Exit codes 2 (missed) and 3 (timeouts) are results, not errors; 4 is a failing baseline.
rc=0; cargo mutants "${common[@]}" --test-package services --output "$out/tier1" >"$out/tier1.log" 2>&1 || rc=$?
grep -E "$shown" "$out/tier1.log" || true
[ "$rc" = 0 ] || [ "$rc" = 2 ] || [ "$rc" = 3 ] || { echo "mutants: tier 1 failed (cargo-mutants exit $rc; see $out/tier1.log)"; echo "mutants: 0 passed, 1 failed"; exit 1; }
echo "tier 1 took $(( $(date +%s) - start )) s"

if [ -z "${MUTANTS_TIER1_ONLY:-}" ] && [ -s "$out/tier1/mutants.out/missed.txt" ]; then
  echo "== tier 2: the $(wc -l < "$out/tier1/mutants.out/missed.txt") mutants tier 1 missed, against the behaviour suite"
  # Exactly tier 1's misses: --iterate skips every mutant its output dir lists as caught, so it
  # is told that every other mutant of the crate is. (Not --shard with --iterate: that shards the
  # not-yet-caught mutants anew, a different set; not --re: cargo-mutants 27 lets "delete field"
  # mutants through any --re.) Checked against cargo-mutants' own listing before anything runs.
  mkdir -p "$out/tier2/mutants.out"
  cargo mutants -p services --list 2>/dev/null | sort >"$out/tier2/all-mutants.txt"
  sort "$out/tier1/mutants.out/missed.txt" >"$out/tier2/targets.txt"
  comm -23 "$out/tier2/all-mutants.txt" "$out/tier2/targets.txt" >"$out/tier2/mutants.out/caught.txt"
  : >"$out/tier2/mutants.out/unviable.txt"
  listed=$(cargo mutants -p services --list --iterate --output "$out/tier2" 2>/dev/null | sort)
  if [ "$listed" != "$(cat "$out/tier2/targets.txt")" ]; then
    echo "mutants: tier 2 would not test exactly tier 1's misses; it lists:"; echo "$listed" | sed 's/^/  /'
    echo "mutants: 0 passed, 1 failed"; exit 1
  fi
  # cargo-mutants' own baseline would run the mutated package's tests (services), not the suite:
  # run the unmutated suite here instead (a broken environment must not pass for caught mutants),
  # and give each mutant 3x its time (at least 5 min) before calling it a timeout.
  t2=$(date +%s)
  echo "tier 2 baseline: the unmutated behaviour suite"
  if ! cargo test --workspace --test cucumber >"$out/tier2-baseline.log" 2>&1; then
    echo "mutants: the behaviour suite fails without a mutant (see $out/tier2-baseline.log); no tier 2"
    echo "mutants: 0 passed, 1 failed"; exit 1
  fi
  took=$(( $(date +%s) - t2 )); timeout=$(( took * 3 > 300 ? took * 3 : 300 ))
  echo "tier 2 baseline passed in $took s; timeout per mutant $timeout s"
  rc=0
  cargo mutants -p services --in-place --no-shuffle --iterate --baseline=skip --timeout "$timeout" \
    --test-package steps --cargo-test-arg=--test=cucumber \
    --output "$out/tier2" >"$out/tier2.log" 2>&1 || rc=$?
  grep -E "$shown" "$out/tier2.log" || true
  [ "$rc" = 0 ] || [ "$rc" = 2 ] || [ "$rc" = 3 ] || { echo "mutants: tier 2 failed (cargo-mutants exit $rc; see $out/tier2.log)"; echo "mutants: 0 passed, 1 failed"; exit 1; }
  echo "tier 2 took $(( $(date +%s) - t2 )) s"
else
  rmdir "$out/tier2" 2>/dev/null || true
fi
echo "== wall time $(( $(date +%s) - start )) s; results under $out/"
score "$out"
