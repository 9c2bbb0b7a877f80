#!/usr/bin/env bash
# Benchmarks (figures, not gates) on this machine, printed as ratios by `load bench`:
#   (1) goose vs wrk vs Locust on GET latest with the same connections;
#   (2) pipeline end-to-end chunks/s at 0 loss vs the raw broker's single-queue publish+consume
#       rate for the same message size, hop-normalized;
#   (3) DataWriter rows/s vs a raw multi-row INSERT into the same table;
#   (4) REST latest p99 at 50% of its max rate (API pinned to CPU 0, wrk/oha pinned to CPU 1).
# Installs wrk (apt-get), Locust (pip, venv target/locust-venv) and oha (cargo install, target/tools)
# when missing; builds release
# binaries of `services` and `load` only. Extra arguments go to `load bench` (--quick, --only 1,4,
# --connections N, --secs N). Uses the local RabbitMQ/PostgreSQL (scripts/infra.sh up).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'bench: %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

scripts/infra.sh up
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt-get)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk
fi
VENV=target/locust-venv
if [ ! -x "$VENV/bin/locust" ]; then
  say "installing Locust into $VENV (pip)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check locust
fi
OHA=target/tools/bin/oha
if [ ! -x "$OHA" ]; then
  # The open-loop generator of (4); a release build from crates.io (~5 min once).
  say "installing oha into target/tools (cargo install)"
  cargo install --quiet --locked --root target/tools oha
fi
say "building release binaries (services, load)"
cargo build --release -q -p services --bin pipeline -p load --bin load
target/release/load --services-bin target/release/pipeline bench --locust "$VENV/bin/locust" --oha "$OHA" "$@"
status=$?
# Hostile-input throughput: inputs checked per second with the whole oracle (publish, canary,
# accounting, logs, rows, API, memory), debug services, the three channels' campaigns at once.
say "hostile input (fixed seed, 600 inputs through the oracle)"
QA_REPORT_DIR=reports/bench-fuzz cargo test -q --workspace --test cucumber -- --tags @fuzz >reports/bench-fuzz.log 2>&1
grep -E '^hostile input:|^scenarios:' reports/bench-fuzz.log | cut -c1-160
python3 - <<'PY'
import json, re, glob, os
runs = sorted(glob.glob("reports/bench-fuzz/runs/*/fuzz.json"), key=os.path.getmtime)
wall = re.findall(r"behaviour suite wall time: ([0-9.]+)s", open("reports/bench-fuzz.log").read())
if runs and wall:
    d = json.load(open(runs[-1]))
    print(f"bench: hostile input {d['inputs']} inputs in {float(wall[-1]):.1f} s = {d['inputs']/float(wall[-1]):.1f} inputs/s "
          f"(three campaigns at once; {d['inputs_per_second']:.1f}/s each)")
PY
exit $status
