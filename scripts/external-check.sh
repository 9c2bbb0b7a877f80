#!/usr/bin/env bash
# Proves the external profile is non-destructive, against a deployment started by hand: the
# reference services (`pipeline live`) in a namespace and database of their own. Before the run,
# the deployment's DLQ holds two dead letters (one put there directly, one the deployment
# dead-lettered itself) and its table holds a row of a sensor that is not the harness's. The whole
# behaviour suite then runs with QA_PROFILE=external. Afterwards both dead letters must still be
# in the DLQ, and the rows outside the harness's own sensors must be exactly those of before.
# Ends with `external-check: N passed, M failed`; exits non-zero on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf 'external-check: %s\n' "$*"; }
passed=0; failed=0
check() { if eval "$2"; then passed=$((passed + 1)); say "ok   $1"; else failed=$((failed + 1)); say "FAIL $1"; fi; }
finish() { echo "external-check: $passed passed, $failed failed"; [ "$failed" = 0 ] && [ "$passed" -gt 0 ]; exit $?; }

# --workspace: a -p subset would compile the dependencies again (README, "CI time").
cargo build -q --workspace --all-targets || { failed=1; say "build failed"; finish; }
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
probe="$target/debug/qa-probe"
# A probe's error is one line: a backtrace (RUST_BACKTRACE set by CI) would push the checks out
# of the log tail CI shows.
export RUST_LIB_BACKTRACE=0
mkdir -p reports/external
ns="ext-check-$$"
db="apq_ext_check_$$"
token="ext-token-$$"
export QA_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export QA_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
livelog="reports/external/pipeline-live.log"

# The "deployment": started by hand, no sensors of its own (nothing else writes while we count).
APQ_NAMESPACE="$ns" APQ_AMQP_URL="$QA_AMQP_URL" APQ_DATABASE_URL="$QA_DATABASE_URL" APQ_API_TOKENS="$token" \
APQ_API_RATE_LIMIT_PER_SEC=5000 APQ_API_RATE_LIMIT_BURST=10000 RUST_LOG=error \
  "$target/debug/sut-pipeline" live --algorithm-a 1 --algorithm-b 1 --sensors 0 >"$livelog" 2>&1 &
live=$!
cleanup() {
  kill -INT "$live" 2>/dev/null; wait "$live" 2>/dev/null
  APQ_NAMESPACE="$ns" APQ_AMQP_URL="$QA_AMQP_URL" APQ_DATABASE_URL="$QA_DATABASE_URL" \
    "$target/debug/sut-pipeline" purge --drop-database >/dev/null 2>&1
}
trap cleanup EXIT
url=""
for _ in $(seq 1 150); do
  url="$(sed -n 's/.*live pipeline up: API \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$livelog" | head -n1)"
  [ -n "$url" ] && break
  kill -0 "$live" 2>/dev/null || break
  sleep 0.2 # polling the deployment's start-up log
done
[ -n "$url" ] || { say "pipeline live did not come up:"; tail -n 20 "$livelog"; failed=1; finish; }

dlq="$ns.audio_stream.dlq"
# Mandatory publishes: a queue that does not exist is an error here, not a silent drop.
check "a dead letter goes straight into the deployment's DLQ" \
  '"$probe" publish "$dlq" pre-existing-dead-letter "{\"put\":\"in the DLQ before the run\"}"'
check "a malformed chunk goes to the deployment's work queue" '"$probe" publish "$ns.audio_stream" deployment-dead-letter "not json"'
for _ in $(seq 1 100); do [ "$("$probe" depth "$dlq" 2>/dev/null)" = 2 ] && break; sleep 0.1; done # the deployment dead-letters asynchronously
check "the deployment's DLQ holds 2 messages before the run" '[ "$("$probe" depth "$dlq")" = 2 ]'
seed_row() { # a row of a sensor the harness does not own
  psql -q -h 127.0.0.1 -U postgres -d "$db" -c "INSERT INTO features (message_id, feature_type, sensor_id, source_message_id, sequence, captured_at, processed_by, features) VALUES (gen_random_uuid(), 'A', 'staging-sensor', gen_random_uuid(), 0, now(), 'staging', '{}')"
}
check "a row of a sensor that is not the harness's is in the deployment's table" seed_row
before=$("$probe" rows-outside "no-such-prefix-")

QA_PROFILE=external QA_NAMESPACE="$ns" QA_API_URL="$url" QA_API_TOKEN="$token" QA_REPORT_DIR=reports/external \
  cargo test -q --workspace --test cucumber 2>&1 | tee reports/external/cucumber.log | tail -n 6
suite=${PIPESTATUS[0]}
run_id=$(sed -n 's/^harness: run \([0-9a-f]*\) ready.*/\1/p' reports/external/cucumber.log | head -n1)
check "the behaviour suite passes against the deployment (external profile)" '[ "$suite" = 0 ]'
check "the external run skipped @writes-db and @needs-sut-control with reasons" \
  'grep -q "tagged @writes-db" reports/external/cucumber.log && grep -q "tagged @needs-sut-control" reports/external/cucumber.log'
say "after the run the DLQ holds $("$probe" depth "$dlq" 2>&1) message(s)"
check "a dead letter put in the DLQ before the run is still there" '"$probe" holds "$dlq" pre-existing-dead-letter'
check "a dead letter the deployment made before the run is still there" '"$probe" holds "$dlq" deployment-dead-letter'
after=$([ -n "$run_id" ] && "$probe" rows-outside "$run_id-")
check "rows outside the harness's sensors: $before before, ${after:-?} after (run $run_id)" '[ -n "$run_id" ] && [ "$before" = "$after" ]'
finish
