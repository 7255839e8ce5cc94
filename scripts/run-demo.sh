#!/usr/bin/env bash
# Set up, then run the gateway on http://127.0.0.1:8080 with examples/gateway.toml in front
# of the bundled demo upstream (loadtests/mock_upstream.py on 127.0.0.1:9001).
# Try: curl localhost:8080/api/json ; curl localhost:8080/hello/you
# Ctrl-C, or kill -TERM / kill -INT of this script's pid, stops both and waits for them.
# Other ports: QUARTGATE_DEMO_PORT (gateway), QUARTGATE_DEMO_UPSTREAM_PORT (demo upstream),
# QUARTGATE_DEMO_ADMIN_PORT (probes and /metrics, 9901).
# A port already in use stops the script before anything starts (it never picks another).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${QUARTGATE_DEMO_PORT:-8080}
upstream_port=${QUARTGATE_DEMO_UPSTREAM_PORT:-9001}
admin_port=${QUARTGATE_DEMO_ADMIN_PORT:-9901}

bash scripts/setup.sh

# Bind-test both ports the way the servers will (SO_REUSEADDR): a listener already there,
# even one sharing the port with SO_REUSEPORT, makes this fail, and the demo never starts.
for pair in "$upstream_port:demo upstream" "$port:gateway" "$admin_port:admin"; do
  p=${pair%%:*}
  if ! .venv/bin/python -c '
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null; then
    echo "run-demo: port $p (${pair#*:}) on 127.0.0.1 is already in use: see who holds it" \
      "with ss -ltnp 'sport = :$p', or choose another with" \
      "QUARTGATE_DEMO_PORT / QUARTGATE_DEMO_UPSTREAM_PORT / QUARTGATE_DEMO_ADMIN_PORT" >&2
    exit 1
  fi
done

config=examples/gateway.toml
tmp=""
if [ "$upstream_port" != 9001 ] || [ "$admin_port" != 9901 ]; then
  # The same example pointed at the other ports; hello_app.py, which is imported from the
  # config's folder, is then found through PYTHONPATH.
  tmp=$(mktemp -d)
  config=$tmp/gateway.toml
  sed -e "s/127\.0\.0\.1:9001/127.0.0.1:$upstream_port/" \
    -e "s/127\.0\.0\.1:9901/127.0.0.1:$admin_port/" examples/gateway.toml >"$config"
  export PYTHONPATH="$PWD/examples${PYTHONPATH:+:$PYTHONPATH}"
fi

children=()  # the demo upstream, then the gateway
sleeper=""   # the pause of the watch loop at the end
stop() {
  # Children started with & ignore SIGINT (bash without job control), so TERM it is: the
  # gateway first (a graceful drain, its requests in flight still reach the upstream), then
  # the upstream; each waited for.
  local i
  if [ -n "$sleeper" ]; then
    kill "$sleeper" 2>/dev/null || true
    wait "$sleeper" 2>/dev/null || true
  fi
  for ((i = ${#children[@]} - 1; i >= 0; i--)); do
    kill -TERM "${children[i]}" 2>/dev/null || true
    wait "${children[i]}" 2>/dev/null || true
  done
  children=()
  [ -z "$tmp" ] || rm -rf "$tmp"
}
trap 'stop' EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

.venv/bin/python -m loadtests.mock_upstream --port "$upstream_port" &
children+=($!)
for _ in $(seq 200); do  # up to 10 s, until it accepts connections or exits
  kill -0 "${children[0]}" 2>/dev/null || break
  (: </dev/tcp/127.0.0.1/"$upstream_port") 2>/dev/null && break
  sleep 0.05
done
if ! kill -0 "${children[0]}" 2>/dev/null \
  || ! (: </dev/tcp/127.0.0.1/"$upstream_port") 2>/dev/null; then
  echo "run-demo: the demo upstream did not start on 127.0.0.1:$upstream_port (output above)" >&2
  exit 1
fi

.venv/bin/quartgate serve -c "$config" --server-config hypercorn.toml \
  --bind "127.0.0.1:$port" "$@" &
children+=($!)

# Until either exits (then the other is stopped, and its status is the script's) or a signal
# arrives (the traps above). Not one long `wait -n`: CI saw bash 5.2 sit in it after an INT,
# its trap never run and both children left running. A wait on a short sleep bounds such a
# miss to half a second: a trap that did not cut the wait short runs when it ends.
while :; do
  for pid in "${children[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" || status=$?
      exit "$status"
    fi
  done
  sleep 0.5 &
  sleeper=$!
  wait "$sleeper" || true
  sleeper=""
done
