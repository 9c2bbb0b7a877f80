#!/usr/bin/env bash
# The main job: local RabbitMQ/PostgreSQL up if needed, the reference services started by the
# harness (local profile, per-run namespace and database), the behaviour suite run, reports written
# to reports/. Extra arguments go to cucumber, e.g. `scripts/main.sh --tags @smoke`.
# For another deployment: QA_PROFILE=external QA_API_URL=… QA_API_TOKEN=… QA_AMQP_URL=… QA_DATABASE_URL=… scripts/main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QA_PROFILE:-local}" = local ]; then scripts/infra.sh up; fi
mkdir -p reports
status=0
cargo test --workspace --test cucumber -- "$@" 2>&1 | tee reports/cucumber.log || status=$?
echo
echo "reports of this run: reports/latest/ (-> reports/runs/<run id>/; earlier runs stay in reports/runs/)"
echo "  cucumber/junit.xml, cucumber/cucumber.json, cucumber/summary.json"
echo "  lineage/*.json (per-scenario lineage and reconciliation), convergence.json"
echo "  failures/<namespace>/ (failure bundles), sut-logs/<namespace>/ (service logs)"
exit $status
