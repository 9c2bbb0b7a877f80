#!/usr/bin/env bash
# CI load smoke (seconds, loose gates): the `load` runner with the floor SLA profile and the
# smoke workload, on debug builds, against services it starts itself on the local infrastructure:
#   - `pipeline live` (namespace load-smoke, database apq_load_smoke; default rate limit, so the
#     limiter gate sees 429s) for the REST gates; the goose users are throttled to 150 requests/s,
#     under the one token's 200/s, so the rest_rate_limited gate (at most half 429) measures the
#     API and not its limiter; `live` is restarted if it exits at start-up (below);
#   - a private pipeline per run (load-<run>, apq_load_<run>, removed at the end) for the
#     pipeline gates (load starts those processes itself).
#   - the Gherkin SLA specs tagged `@load and @smoke` (features/sla), run by `load spec`.
# Ends with exactly one line `load-smoke: N passed, M failed` (gates); exits non-zero on failure.
# Reports: reports/load/<timestamp>/. Extra arguments go to `load`.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
say() { printf 'load-smoke: %s\n' "$*"; }
failures=()  # one line per failed gate or check, repeated above the last line (CI shows the tail)
failed_gates() { # sla-summary.json: one line per failed gate
  python3 - "$1" 2>/dev/null <<'PY'
import json, sys
for g in json.load(open(sys.argv[1]))["gates"]:
    if g["verdict"] == "fail":
        print(f"{g['name']}: observed {g.get('observed')} vs {g['threshold']}; {g['detail']}")
PY
}
finish() { # passed failed status
  local l
  for l in "${failures[@]}"; do say "FAILED $l"; done
  say "wall time $(( $(date +%s) - t0 )) s"
  echo "load-smoke: $1 passed, $2 failed"
  exit "$3"
}

scripts/infra.sh up >/dev/null 2>&1 || { say "infrastructure did not come up (scripts/infra.sh up)"; finish 0 1 1; }
# A no-op after scripts/test-all.sh's build; --workspace: a -p subset would compile the
# dependencies again (README, "CI time").
cargo build -q --workspace --all-targets || { say "build failed"; finish 0 1 1; }

mkdir -p reports/load
token=smoke-token
livelog=reports/load/smoke-pipeline-live.log
# A namespace and database of this run's own, purged on exit.
run_ns="load-smoke-$$"
export APQ_NAMESPACE="$run_ns"
export APQ_DATABASE_URL="${APQ_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/apq_load_smoke_$$}"
amqp_url="${APQ_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
start_live() {
  APQ_NAMESPACE="$run_ns" APQ_AMQP_URL="$amqp_url" APQ_API_TOKENS=$token RUST_LOG=error \
    target/debug/pipeline live --algorithm-a 1 --algorithm-b 1 --sensors 2 >>"$livelog" 2>&1 &
  live=$!
}
# host:port of a URL (default port $2)
hostport() { local a=${1#*://}; a=${a%%[/?]*}; a=${a##*@}; case $a in *:*) echo "$a" ;; *) echo "$a:$2" ;; esac; }
# Waits (at most $1 s) until RabbitMQ and PostgreSQL accept TCP connections; says what it waited for.
wait_deps() {
  local until=$(( $(date +%s) + $1 )) dep
  for dep in "RabbitMQ $(hostport "$amqp_url" 5672)" "PostgreSQL $(hostport "$APQ_DATABASE_URL" 5432)"; do
    set -- $dep
    while ! (exec 3<>"/dev/tcp/${2%:*}/${2##*:}") 2>/dev/null; do
      [ "$(date +%s)" -ge "$until" ] && { say "waited for $1 $2: still not accepting connections"; return 1; }
      sleep 0.5
    done
    say "waited for $1 $2: accepting connections"
  done
}
: >"$livelog"
start_live
trap 'kill -INT "$live" 2>/dev/null; wait "$live" 2>/dev/null; target/debug/pipeline purge --drop-database >/dev/null 2>&1' EXIT

# `live` exits at start-up when the broker or the database does not accept connections yet (a
# busy machine, a broker still booting): start it again until a 90 s deadline, waiting for both
# in between, and keep every attempt's output in $livelog (reports/ survives the run).
url=""; attempt=1; deadline=$(( $(date +%s) + 90 ))
while :; do
  url="$(sed -n 's/.*live pipeline up: API \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$livelog" | tail -n1)"
  # Ready once the API serves stored history of sensor-1 (the REST gates read it).
  if [ -n "$url" ] && curl -fsS --max-time 2 -H "Authorization: Bearer $token" "$url/v1/features?sensor_id=sensor-1&limit=1" | grep -q message_id; then
    break
  fi
  if ! kill -0 "$live" 2>/dev/null; then
    say "pipeline live exited at start-up (attempt $attempt); its last lines:"
    tail -n 8 "$livelog" | sed 's/^/load-smoke:   /'
    [ "$(date +%s)" -ge "$deadline" ] && { say "giving up after $attempt attempts (90 s); see $livelog"; finish 0 1 1; }
    wait_deps $(( deadline - $(date +%s) )) || { say "see $livelog"; finish 0 1 1; }
    attempt=$((attempt + 1)); url=""
    echo "--- attempt $attempt ---" >>"$livelog"
    start_live
  fi
  [ "$(date +%s)" -ge "$deadline" ] && { say "pipeline live not ready within 90 s (attempt $attempt); see $livelog"; finish 0 1 1; }
  sleep 0.2
done
say "pipeline live at $url ($(( $(date +%s) - t0 )) s)"

newest() { ls -1d reports/load/2*/ 2>/dev/null | sort | tail -n1; }
before="$(newest)"
target/debug/load --host "$url" --token "$token" --sensors sensor-1,sensor-2 \
  --gates rest,pipeline --sla floor --workload smoke \
  --users 4 --increase-rate 4 --run-time 5s --throttle-requests 150 --quiet --no-print-metrics \
  --services-bin target/debug/pipeline "$@"
rc=$?

run_dir="$(newest)"
summary="${run_dir}sla-summary.json"
if [ -n "$run_dir" ] && [ "$run_dir" != "$before" ] && [ -f "$summary" ]; then
  read -r p f < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["passed"], d["failed"])' "$summary")
  while IFS= read -r l; do failures+=("gate $l"); done < <(failed_gates "$summary")
else
  p=0; f=1; say "no summary written (exit $rc)"; failures+=("gate runner: no summary written (exit $rc)")
fi
# The latency waterfall (issue #15) must be in the report and add up: one more check.
if [ -f "$summary" ] && python3 - "$summary" "${run_dir}index.html" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = d.get("waterfall")
html = open(sys.argv[2]).read() if sys.argv[2] else ""
if not w or w["complete"] == 0:
    sys.exit("load-smoke: no latency waterfall in the report (no paced chunk complete)")
if abs(w["residual_mean_ms"]) > 0.01 or abs(w["residual_tail_ms"]) > 0.01:
    sys.exit(f"load-smoke: waterfall segments do not add up: residual {w['residual_mean_ms']} / {w['residual_tail_ms']} ms")
if 'id="waterfall"' not in html:
    sys.exit("load-smoke: the HTML report has no waterfall section")
e = w["end_to_end"]
big = sorted(w["segments"], key=lambda s: -s["p99_ms"])[:3]
print(f"load-smoke: waterfall of {w['complete']} chunks: end to end p50 {e['p50_ms']:.1f} / p99 {e['p99_ms']:.1f} ms; largest p99 segments: "
      + ", ".join(f"{s['key']} {s['p99_ms']:.1f} ms" for s in big))
PY
then p=$((p + 1)); else f=$((f + 1)); failures+=("latency waterfall check (message above)"); fi
# A harness error (exit 1) counts as a failure even if every gate written so far passed.
[ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && { f=1; failures+=("gate runner exited $rc with every gate passed (a harness error; see above)"); }

# The Gherkin SLA specs tagged @smoke (features/sla): a private reference API with 4 sensors,
# latest readers in this process and split over 2 worker processes (merged exactly), and a
# paced run through a private pipeline. Same reports and exit codes as the gate runner.
say "SLA specs (@load and @smoke) ($(( $(date +%s) - t0 )) s)"
before="$(newest)"
target/debug/load --sla floor --workload smoke --services-bin target/debug/pipeline \
  spec --tags '@load and @smoke' --local-sensors 4 features/sla
src=$?
spec_dir="$(newest)"
if [ -n "$spec_dir" ] && [ "$spec_dir" != "$before" ] && [ -f "${spec_dir}sla-summary.json" ]; then
  read -r sp sf < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["passed"], d["failed"])' "${spec_dir}sla-summary.json")
  while IFS= read -r l; do failures+=("spec gate $l"); done < <(failed_gates "${spec_dir}sla-summary.json")
else
  sp=0; sf=1; say "the specs wrote no summary (exit $src)"; failures+=("SLA specs: no summary written (exit $src)")
fi
[ "$src" -ne 0 ] && [ "$sf" -eq 0 ] && { sf=1; failures+=("SLA specs exited $src with every gate passed (a harness error; see above)"); }
p=$((p + sp)); f=$((f + sf))
[ "$src" -ne 0 ] && rc=$src
finish "$p" "$f" "$([ "$rc" -eq 0 ] && echo 0 || echo 1)"
