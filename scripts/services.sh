#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer; start or
# install them where absent. Used by the test command.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "==> installing PostgreSQL"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q postgresql >/dev/null
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  echo "==> starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || as_root pg_ctlcluster "$ver" main start
  for _ in $(seq 30); do port_open 5432 && break; sleep 1; done
fi
if ! port_open 6379; then
  if ! command -v redis-server >/dev/null; then
    echo "==> installing Redis"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q redis-server >/dev/null
  fi
  echo "==> starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 30); do port_open 6379 && break; sleep 1; done
fi
port_open 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
port_open 6379 || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
# Trust auth is the default here; a user's machine may need PGUSER/PGPASSWORD set.
echo "==> PostgreSQL and Redis are up"
