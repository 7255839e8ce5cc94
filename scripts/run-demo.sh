#!/usr/bin/env bash
# Set up, then run the gateway on http://127.0.0.1:8080 with examples/gateway.toml in front
# of the bundled demo upstream (loadtests/mock_upstream.py on 127.0.0.1:9001).
# Try: curl localhost:8080/api/json ; curl localhost:8080/hello/you ; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m loadtests.mock_upstream --port 9001 &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
.venv/bin/quartgate serve -c examples/gateway.toml --server-config hypercorn.toml "$@"
