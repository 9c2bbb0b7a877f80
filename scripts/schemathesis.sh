#!/usr/bin/env bash
# Property-based API testing with schemathesis (from PyPI, pinned) against the served
# /openapi.json of a reference deployment of this run's own:
#   - installs schemathesis==$SCHEMATHESIS_VERSION into a venv under ~/.cache/apq (once; later runs
#     reuse it and need no network); with QA_OFFLINE set and no venv yet, it skips and says so;
#   - starts `pipeline live` in a namespace and database of its own (purged on exit) and lets its
#     sensors run until the API serves stored rows and cached latest features;
#   - runs every check (`--checks all`), all phases (examples, coverage, fuzzing, stateful) with a
#     fixed seed, the bearer token and a bounded number of examples per operation.
# `scripts/schemathesis.sh install` only installs the tool (scripts/test-all.sh does that in the
# background while it builds).
# Ends with one line `schemathesis: N passed, M failed` (N: operations, and the stateful suite,
# without a failure; M: unique failures and errors, as schemathesis reports them); exits non-zero
# on any failure. Reports: reports/schemathesis/ (JUnit, the run log, the pipeline's log).
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

SCHEMATHESIS_VERSION=4.32.5
VENV="${SCHEMATHESIS_VENV:-$HOME/.cache/apq/schemathesis-$SCHEMATHESIS_VERSION}"
SEED="${SCHEMATHESIS_SEED:-20261202}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"
PYTHON="${PYTHON:-python3}"
out=reports/schemathesis
mkdir -p "$out"

say() { printf 'schemathesis: %s\n' "$*"; }
finish() { # passed failed status
  say "wall time $(( $(date +%s) - t0 )) s"
  echo "schemathesis: $1 passed, $2 failed"
  exit "$3"
}

# ---- the tool (pinned, installed once)
if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$"; then
  say "reusing $VENV"
elif [ -n "${QA_OFFLINE:-}" ]; then
  say "SKIP: QA_OFFLINE is set and schemathesis $SCHEMATHESIS_VERSION is not installed in $VENV (needs PyPI once)"
  finish 0 0 0
else
  say "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! { "$PYTHON" -m venv "$VENV" && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
           "schemathesis==$SCHEMATHESIS_VERSION"; } >"$out/install.log" 2>&1; then
    sed 's/^/  /' "$out/install.log" | tail -n 20
    say "installation failed (pip; needs network the first time)"
    finish 0 1 1
  fi
fi

[ "${1:-}" = install ] && { say "installed in $VENV ($(( $(date +%s) - t0 )) s)"; exit 0; }

# ---- a deployment of this run's own
scripts/infra.sh up >/dev/null 2>&1 || { say "infrastructure did not come up (scripts/infra.sh up)"; finish 0 1 1; }
# --workspace: a -p subset would compile the dependencies again (README, "CI time").
cargo build -q --workspace --all-targets || { say "build failed"; finish 0 1 1; }
token="schemathesis-$$"
livelog="$out/pipeline-live.log"
export APQ_NAMESPACE="schemathesis-$$"
export APQ_DATABASE_URL="${APQ_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/apq_schemathesis_$$}"
export APQ_AMQP_URL="${APQ_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# The fuzzer sends thousands of requests from one address, many of them deliberately without a
# valid token (the `ignored_auth` check): the per-token rate limit and the failed-authentication
# throttle are raised so they do not turn its probes into 429s (both have scenarios of their own).
APQ_API_TOKENS="$token" APQ_API_RATE_LIMIT_PER_SEC=100000 APQ_API_RATE_LIMIT_BURST=100000 \
APQ_API_AUTH_FAILURE_LIMIT=1000000 RUST_LOG=warn \
  target/debug/pipeline live --algorithm-a 1 --algorithm-b 1 --sensors 2 >"$livelog" 2>&1 &
live=$!
trap 'kill -INT "$live" 2>/dev/null; wait "$live" 2>/dev/null; target/debug/pipeline purge --drop-database >/dev/null 2>&1' EXIT

url=""
auth=(-H "Authorization: Bearer $token")
for _ in $(seq 1 150); do
  url="$(sed -n 's/.*live pipeline up: API \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$livelog" | head -n1)"
  # Seeded once sensor-1 has stored rows of both types and a cached latest Feature B.
  if [ -n "$url" ] \
     && curl -fsS --max-time 2 "${auth[@]}" "$url/v1/features?sensor_id=sensor-1&type=B&limit=1" 2>/dev/null | grep -q message_id \
     && curl -fsS --max-time 2 "${auth[@]}" -o /dev/null "$url/v1/sensors/sensor-1/features/latest?type=B" 2>/dev/null; then
    break
  fi
  kill -0 "$live" 2>/dev/null || { say "pipeline live exited; see $livelog"; finish 0 1 1; }
  sleep 0.2
done
[ -n "$url" ] || { say "pipeline live printed no address within 30 s; see $livelog"; finish 0 1 1; }
say "pipeline live at $url, seeded ($(( $(date +%s) - t0 )) s)"

# ---- the run
rm -f "$out"/junit.xml
# From inside the report folder, so the tool's own cache (.schemathesis/) lands there too.
(cd "$out" && "$VENV/bin/schemathesis" run "$url/openapi.json" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --seed "$SEED" \
  --max-examples "$EXAMPLES" \
  --workers 2 \
  --request-timeout 10 \
  --continue-on-failure \
  -H "Authorization: Bearer $token" \
  --report junit --report-junit-path junit.xml \
  >run.log 2>&1)
rc=$?
tail -n 30 "$out/run.log"

# Counts as schemathesis reports them: N = operations (and the stateful suite) that passed, from
# the JUnit report; M = the unique failures and errors of its closing summary line.
read -r passed failed < <("$VENV/bin/python" - "$out/junit.xml" "$out/run.log" <<'PY'
import re, sys, xml.etree.ElementTree as ET
try:
    suite = ET.parse(sys.argv[1]).getroot()
    bad = sum(1 for case in suite.iter("testcase") if case.find("failure") is not None or case.find("error") is not None)
    passed = sum(1 for _ in suite.iter("testcase")) - bad
except (OSError, ET.ParseError):
    passed, bad = 0, 1
closing = open(sys.argv[2], errors="replace").read().strip().splitlines()[-1:] or [""]
found = [int(n) for n in re.findall(r"(\d+) (?:failures?|errors?)\b", closing[0])]
print(passed, max(sum(found), bad))
PY
)
# An error of the tool itself (no report, a crash) counts as a failure even with no failed check.
if [ "$rc" -ne 0 ] && [ "${failed:-0}" -eq 0 ]; then failed=1; fi
finish "${passed:-0}" "${failed:-1}" "$([ "$rc" -eq 0 ] && [ "${failed:-1}" -eq 0 ] && echo 0 || echo 1)"
