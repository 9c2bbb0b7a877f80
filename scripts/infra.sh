#!/usr/bin/env bash
# Makes RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432, trust) available.
#   up      use them if running; start them if installed; else docker compose if an engine runs;
#           else install them with apt-get (Debian) and start them. Idempotent.
#   down    stop the locally installed servers (never touches a docker engine's containers).
#   status  print what is up.
# Every action is printed; failure exits non-zero with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'infra: %s\n' "$*"; }
die() { printf 'infra: ERROR: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds name
  for _ in $(seq 1 "$(( $2 * 5 ))"); do port_open "$1" && return 0; sleep 0.2; done
  die "$3 did not open 127.0.0.1:$1 within $2 s"
}
docker_engine() { command -v docker >/dev/null 2>&1 && timeout 5 docker info >/dev/null 2>&1; }
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$1 is missing and this is not a Debian-like machine; install it yourself"
  [ "$(id -u)" = 0 ] || die "$1 is missing; installing it needs root (sudo $0 up)"
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "$@" >/dev/null
}
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

rabbit_up() {
  if port_open 5672; then say "rabbitmq: already running on 127.0.0.1:5672"; return; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if docker_engine; then say "rabbitmq: starting with docker compose"; docker compose up -d rabbitmq; wait_port 5672 90 rabbitmq; return; fi
    apt_install rabbitmq-server
  fi
  say "rabbitmq: starting (rabbitmq-server -detached)"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 120 rabbitmq
  timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
  say "rabbitmq: up"
}

postgres_trust_loopback() { # a fresh Debian install asks for passwords over TCP; the project expects trust on loopback
  local hba="/etc/postgresql/$1/main/pg_hba.conf"
  if [ -f "$hba" ] && ! grep -q 'audio-pipeline-qa' "$hba"; then
    say "postgresql: allowing trust auth on loopback in $hba"
    { echo "# audio-pipeline-qa: local development and CI connect over loopback without a password"
      echo "host all all 127.0.0.1/32 trust"; echo "host all all ::1/128 trust"; cat "$hba"; } > "$hba.new"
    mv "$hba.new" "$hba"; chown postgres:postgres "$hba" 2>/dev/null || true
  fi
}

postgres_up() {
  if port_open 5432; then say "postgresql: already running on 127.0.0.1:5432"; return; fi
  local fresh=0
  if [ -z "$(pg_version)" ]; then
    if docker_engine; then say "postgresql: starting with docker compose"; docker compose up -d postgres; wait_port 5432 90 postgresql; return; fi
    apt_install postgresql; fresh=1
  fi
  local v; v=$(pg_version)
  [ "$fresh" = 1 ] && postgres_trust_loopback "$v"
  if pg_ctlcluster "$v" main status >/dev/null 2>&1; then
    # where systemd runs (a fresh Debian machine) apt-get install already started the cluster, before the
    # pg_hba edit above: reload so the edit applies (a start would be a no-op under systemd, the old pg_hba in force)
    say "postgresql: cluster $v/main is already running; reloading its configuration"
    pg_ctlcluster "$v" main reload
  else
    say "postgresql: starting cluster $v/main"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || pg_ctlcluster "$v" main start
  fi
  wait_port 5432 60 postgresql
  say "postgresql: up"
}

check_access() {
  if command -v psql >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 \
      || die "postgresql is up but user postgres cannot log in over 127.0.0.1 without a password (expected trust auth)"
  fi
}

case "${1:-status}" in
  up) rabbit_up; postgres_up; check_access; say "ready: amqp://guest:guest@127.0.0.1:5672/%2f and postgres://postgres@127.0.0.1:5432" ;;
  down)
    if command -v rabbitmqctl >/dev/null 2>&1 && port_open 5672; then say "rabbitmq: stopping"; rabbitmqctl stop >/dev/null 2>&1 || true; fi
    v=$(pg_version); if [ -n "$v" ] && port_open 5432; then say "postgresql: stopping $v/main"; pg_ctlcluster --skip-systemctl-redirect "$v" main stop 2>/dev/null || pg_ctlcluster "$v" main stop; fi ;;
  status)
    port_open 5672 && say "rabbitmq: up (127.0.0.1:5672)" || say "rabbitmq: down"
    port_open 5432 && say "postgresql: up (127.0.0.1:5432)" || say "postgresql: down" ;;
  *) die "usage: $0 up|down|status" ;;
esac
