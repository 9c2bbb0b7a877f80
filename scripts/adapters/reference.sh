#!/usr/bin/env bash
# Example SUT adapter (fixtures/contracts/adapter.md, protocol version 1) for the reference
# implementation. A template for teams wrapping their own: keep the checks, replace the last line
# with one `exec` per component, e.g.
#   case "$component" in data-writer) exec java -jar my-writer.jar ;; … esac
# Always `exec`: the harness sends SIGTERM/SIGKILL to the process it started, so that process must
# be the component itself, not a shell waiting for it.
# REFERENCE_PIPELINE_BIN (absolute path of services' `pipeline` binary) is this adapter's own
# setting, not part of the protocol. Usage:
#   REFERENCE_PIPELINE_BIN=$PWD/target/debug/pipeline QA_SUT_COMMAND=$PWD/scripts/adapters/reference.sh \
#     cargo test --workspace --test cucumber -- --tags @needs-sut-control
set -euo pipefail

die() { printf 'reference adapter: %s\n' "$*" >&2; exit 64; }

component="${1-}"
case "$component" in
  algorithm-a | algorithm-b | data-writer | rest-api | sensor) required="APQ_AMQP_URL APQ_NAMESPACE APQ_INSTANCE_ID" ;;
  # The one-shot database set-up (schema as owner, least-privilege roles); it exits when done.
  migrate) required="APQ_DATABASE_URL APQ_DB_WRITER_ROLE APQ_DB_READER_ROLE" ;;
  *) die "unknown component '$component' (expected algorithm-a, algorithm-b, data-writer, rest-api, sensor or migrate)" ;;
esac
# Empty counts as missing: an empty namespace would consume the un-namespaced (real) queues.
for var in $required; do
  [ -n "${!var-}" ] || die "required variable $var is not set (the harness passes it)"
done
bin="${REFERENCE_PIPELINE_BIN-}"
[ -n "$bin" ] || die "REFERENCE_PIPELINE_BIN is not set (e.g. \$PWD/target/debug/pipeline after cargo build -p services)"
if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
  die "REFERENCE_PIPELINE_BIN=$bin is not an executable file"
fi
# One line in the component's log, so a run can tell it went through this adapter.
printf 'reference adapter: starting %s as %s\n' "$component" "${APQ_INSTANCE_ID:-one-shot}" >&2
exec "$bin" "$component"
