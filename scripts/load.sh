#!/usr/bin/env bash
# Runs the goose load runner (`load`, crate load) against the REST API with the given options
# (goose's and load's own), e.g.
#   scripts/load.sh --users 5 --increase-rate 5 --run-time 30s
#   scripts/load.sh --gates rest,pipeline --users 50 --increase-rate 10 --run-time 10m   # nightly
# Used by `make load-sla` (the CI smoke is scripts/load-smoke.sh). `--gates pipeline` starts its own
# services (private namespace and database); LOAD_SLA_PROFILE=floor|target picks the thresholds.
#   API_URL       target (default $QA_API_URL, else http://127.0.0.1:8000). If nothing answers
#                 GET $API_URL/readyz with 200, `pipeline live` is started for the run (on the
#                 RabbitMQ/PostgreSQL of APQ_AMQP_URL / APQ_DATABASE_URL or their local defaults),
#                 the load targets the API address it prints, and it is stopped afterwards.
#   QA_API_TOKEN  bearer token (default dev-token; also the token the started API accepts).
# Exits with the load runner's status: 0 = SLAs met, 99 = an SLA was breached, else an error.
# Reports: reports/load/<timestamp>/ (written by `load`).
set -euo pipefail
cd "$(dirname "$0")/.."

API_URL="${API_URL:-${QA_API_URL:-http://127.0.0.1:8000}}"
export QA_API_TOKEN="${QA_API_TOKEN:-dev-token}"
say() { printf 'load: %s\n' "$*"; }
ready() { curl -fsS -o /dev/null --max-time 2 "$API_URL/readyz"; }

say "building (release)"
cargo build --release -p services --bin pipeline -p load --bin load

started=""
cleanup() { if [ -n "$started" ]; then say "stopping pipeline live (pid $started)"; kill "$started" 2>/dev/null || true; wait "$started" 2>/dev/null || true; fi; }
trap cleanup EXIT

if ready; then
  say "API already answering at $API_URL"
else
  mkdir -p reports/load
  livelog=reports/load/pipeline-live.log
  say "nothing answers $API_URL/readyz: starting pipeline live (log: $livelog)"
  APQ_API_TOKENS="${APQ_API_TOKENS:-$QA_API_TOKEN}" target/release/pipeline live >"$livelog" 2>&1 &
  started=$!
  API_URL=""
  for _ in $(seq 1 120); do
    # live picks a free port and prints "live pipeline up: API http://127.0.0.1:<port> ..."
    API_URL="$(sed -n 's/.*live pipeline up: API \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$livelog" | head -n1)"
    [ -n "$API_URL" ] && ready && break
    kill -0 "$started" 2>/dev/null || { say "pipeline live exited; see $livelog"; started=""; exit 2; }
    sleep 0.5
  done
  [ -n "$API_URL" ] && ready || { say "pipeline live not ready after 60 s; see $livelog"; exit 2; }
  say "pipeline live (pid $started) serving $API_URL"
fi

say "target/release/load --host $API_URL $*"
set +e
target/release/load --host "$API_URL" --services-bin target/release/pipeline "$@"
rc=$?
set -e
case "$rc" in
  0) say "SLAs met" ;;
  99) say "SLA BREACHED (exit 99)" ;;
  *) say "load runner failed (exit $rc)" ;;
esac
exit "$rc"
