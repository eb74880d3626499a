#!/usr/bin/env bash
# Install everything the microscope needs into .venv on a fresh Debian machine.
# Usage: scripts/bootstrap.sh [runtime|dev]
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-runtime}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
need_deb() {  # install Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> apt-get install ${missing[*]}"
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Python 3.11+ with venv.
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  need_deb python3 python3-venv python3-dev
  PY=python3
fi

# Real photos for the demo dataset come from these Debian packages (never committed).
need_deb tuxpaint-stamps-default plasma-workspace-wallpapers mate-backgrounds wamerican fonts-dejavu-core
if [ "$mode" = dev ]; then
  # Debian's chromium for Playwright page tests; docker-compose validates the compose file.
  need_deb chromium docker-compose wrk  # wrk: the load test in tests/reliability
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
extras="worker"
[ "$mode" = dev ] && extras="worker,dev"
stamp=".venv/.installed-$extras-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> pip install -e .[$extras] (torch comes from local wheels; ~2 min the first time)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[$extras]"
  touch "$stamp"
fi

# htmx is vendored from the npm registry at set-up (not committed).
vendor=frontend/static/vendor
if [ ! -f "$vendor/htmx.min.js" ]; then
  mkdir -p "$vendor"
  if command -v npm >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && npm pack --silent htmx.org@2.0.4 >/dev/null 2>&1); then
      tar -xzf "$tmp"/htmx.org-2.0.4.tgz -C "$tmp"
      cp "$tmp/package/dist/htmx.min.js" "$vendor/htmx.min.js"
    else
      echo "warning: could not fetch htmx from npm; pages work without live updates" >&2
    fi
    rm -rf "$tmp"
  else
    echo "warning: npm not found; pages work without htmx live updates" >&2
  fi
fi
echo "==> .venv ready"
