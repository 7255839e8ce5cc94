#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), lint, type-check, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Test-only: Debian's Chromium, headless, for the dashboard's tests (tests/test_dashboard.py).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "test: installing Debian package chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# Test-only: the public HTTP cache test suite (http-tests/cache-tests, pinned) and Node to
# run it, for tests/test_cache_tests_suite.py; into .venv, nothing global but Node itself.
CACHE_TESTS_VERSION=0.4.5
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "test: installing Debian packages nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
suite=.venv/cache-tests/node_modules/http-cache-tests
if [ "$(node -p "require('./$suite/package.json').version" 2>/dev/null)" != "$CACHE_TESTS_VERSION" ]; then
  echo "test: installing http-cache-tests@$CACHE_TESTS_VERSION"
  mkdir -p .venv/cache-tests
  npm install --silent --no-audit --no-fund --omit=dev --prefix .venv/cache-tests \
    "http-cache-tests@$CACHE_TESTS_VERSION" >/dev/null
fi
echo "== ruff"
.venv/bin/ruff check gateway routes upstreams loadtests tests
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
