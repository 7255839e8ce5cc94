#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), lint, type-check, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check gateway routes upstreams loadtests tests
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
