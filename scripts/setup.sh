#!/usr/bin/env bash
# Set up everything quartgate needs on a Debian machine with Python 3.11:
# Debian packages the tests and benchmarks start for real (nginx, redis-server, wrk),
# a virtualenv in .venv, and the package with its test, load-test and otel extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The packages' own services are not wanted: tests start their own on free ports.
  for svc in nginx redis-server; do
    (command -v systemctl >/dev/null && $SUDO systemctl stop "$svc" 2>/dev/null) || true
    (command -v service >/dev/null && $SUDO service "$svc" stop >/dev/null 2>&1) || true
  done
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip's own failures fail the script (pipefail); only its noise about absent local indexes is hidden.
quiet_pip() { .venv/bin/python -m pip "$@" --disable-pip-version-check 2>&1 | { grep -v "^WARNING: Location" || true; }; }
# Installing prints setuptools' build warnings every time, so it runs only when something
# it depends on changed: pyproject.toml or this script (the extras are on the line below),
# or when the packages do not import from the venv (-I: not from the working directory).
stamp=.venv/.quartgate-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
  || ! .venv/bin/python -I -c "import gateway, routes, upstreams" 2>/dev/null; then
  rm -f "$stamp"
  quiet_pip install -q --upgrade pip
  quiet_pip install -q -e ".[test,loadtest,otel,fast]"
  .venv/bin/python -m pip check >/dev/null
  echo "$want" >"$stamp"
fi
