#!/usr/bin/env bash
# Captures one real body of every REST API response kind from `pipeline live` (a namespace and a
# database of its own, removed at the end) into features/api-responses.json, which
# scripts/gen-step-vocabulary.py shows in the step vocabulary (features/README.md).
# Needs RabbitMQ and PostgreSQL (scripts/infra.sh up) and `cargo build -p services`.
set -euo pipefail
cd "$(dirname "$0")/.."
ns="api-examples-$$"
export APQ_NAMESPACE="$ns" APQ_DATABASE_URL="postgres://postgres@127.0.0.1:5432/apq_api_examples_$$"
export APQ_AMQP_URL="${APQ_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" APQ_API_TOKENS=example-token RUST_LOG=error
log=$(mktemp)
target/debug/pipeline live --algorithm-a 1 --algorithm-b 1 --sensors 1 >"$log" 2>&1 &
live=$!
trap 'kill -INT $live 2>/dev/null; wait $live 2>/dev/null; target/debug/pipeline purge --drop-database >/dev/null 2>&1; rm -f "$log" "$log.out"' EXIT
url=""
for _ in $(seq 1 150); do
  url=$(sed -n 's/.*live pipeline up: API \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n1)
  [ -n "$url" ] && curl -fsS -H "Authorization: Bearer example-token" "$url/v1/features?sensor_id=sensor-1&limit=1" 2>/dev/null | grep -q message_id && break
  sleep 0.2
done
[ -n "$url" ] || { echo "pipeline live did not come up: $(tail -n 5 "$log")"; exit 1; }
sleep 1
auth=(-H "Authorization: Bearer example-token")
get() { curl -sS -o - -w '\n%{http_code}\n' "$@"; }
id=$(curl -fsS "${auth[@]}" "$url/v1/features?sensor_id=sensor-1&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["message_id"])')
{
  echo "GET /v1/sensors/{sensor_id}/features/latest?type=A"; get "${auth[@]}" "$url/v1/sensors/sensor-1/features/latest?type=A"
  echo "GET /v1/sensors/{sensor_id}/features/latest?type=B"; get "${auth[@]}" "$url/v1/sensors/sensor-1/features/latest?type=B"
  echo "GET /v1/features?sensor_id=…&limit=1 (a history page)"; get "${auth[@]}" "$url/v1/features?sensor_id=sensor-1&limit=1"
  echo "GET /v1/features/{message_id}"; get "${auth[@]}" "$url/v1/features/$id"
  echo "GET /v1/sensors/{sensor_id}/features/latest?type=Z (an invalid parameter)"; get "${auth[@]}" "$url/v1/sensors/sensor-1/features/latest?type=Z"
  echo "GET /v1/features/{message_id} without a token"; get "$url/v1/features/$id"
  echo "GET /v1/features/{unknown message_id}"; get "${auth[@]}" "$url/v1/features/00000000-0000-4000-8000-000000000000"
  echo "GET /healthz"; get "$url/healthz"
  echo "GET /readyz"; get "$url/readyz"
} >"$log.out"
# 429: one token, a burst beyond its bucket (200/s, burst 400 by default), sent at once; the
# first 429 answer of the burst is kept (a request sent after it would find a refilled bucket).
dir=$(mktemp -d)
curl -s --parallel --parallel-max 100 "${auth[@]}" -o "$dir/r_#1" \
  -w '%{http_code} %header{retry-after} %{filename_effective}\n' \
  "$url/v1/sensors/sensor-1/features/latest?type=A&n=[1-1500]" >"$dir/index" 2>/dev/null || true
read -r code retry file < <(awk '$1 == 429' "$dir/index" | head -n 1) || true
if [ -n "${file:-}" ]; then
  { echo "GET … beyond the token's rate limit (Retry-After: $retry)"; cat "$file"; printf '\n429\n'; } >>"$log.out"
fi
rm -rf "$dir"
python3 - "$log.out" <<'PY'
import json, sys, re
text = open(sys.argv[1]).read().split("\n")
out, i = [], 0
while i < len(text):
    title = text[i]
    if not title.startswith("GET"):
        i += 1; continue
    body_lines = []
    i += 1
    while i < len(text) and not re.fullmatch(r"\d{3}", text[i]):
        body_lines.append(text[i]); i += 1
    status = int(text[i]) if i < len(text) else 0
    i += 1
    raw = "\n".join(body_lines)
    headers = {}
    if "\r\n\r\n" in raw or raw.startswith("HTTP/"):
        head, _, raw = raw.partition("\r\n\r\n")
        for h in head.split("\r\n")[1:]:
            k, _, v = h.partition(":")
            if k.lower() in ("retry-after", "content-type"):
                headers[k.lower()] = v.strip()
    try:
        body = json.loads(raw)
    except Exception:
        body = raw
    out.append({"request": title, "status": status, "headers": headers, "body": body})
json.dump(out, open("features/api-responses.json", "w"), indent=2, ensure_ascii=False)
print("wrote features/api-responses.json:", ", ".join(str(o["status"]) for o in out))
PY
