"""scripts/run-demo.sh run for real: it refuses a taken port before starting anything, and a
TERM or INT sent to the script's pid alone stops the demo upstream and the gateway, leaving
no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import ROOT, free_port, wait_for_port
from tests.support.observability import wait_until

SCRIPT = ROOT / "scripts" / "run-demo.sh"

# The script is given port numbers (QUARTGATE_DEMO_PORT, ..._UPSTREAM_PORT), as an operator
# gives them, and starts its servers itself: free_port() is the one way in, race and all
# (a lost race is the script's own "port taken" refusal, which fails the test loudly).


def demo_env(port: int, upstream_port: int, admin_port: int = 0) -> dict[str, str]:
    return dict(
        os.environ,
        QUARTGATE_DEMO_PORT=str(port),
        QUARTGATE_DEMO_UPSTREAM_PORT=str(upstream_port),
        QUARTGATE_DEMO_ADMIN_PORT=str(admin_port or free_port()),
        PYTHONUNBUFFERED="1",
    )


def is_free(port: int) -> bool:
    """Whether a server could bind the port now (SO_REUSEADDR, as servers do)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def live_in_session(sid: int) -> list[str]:
    """Processes of the session that are still running (zombies are dead), as 'pid cmd'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # exited while we looked
            continue
        state, _ppid, _pgrp, session = stat.rpartition(")")[2].split()[:4]
        if int(session) == sid and state != "Z":
            found.append(f"{entry.name} {cmdline}")
    return found


def listen(port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket()
    if reuse_port:  # as another loadtests.mock_upstream would hold it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("taken", "reuse_port"),
    [("upstream", False), ("upstream", True), ("gateway", False)],
)
def test_a_taken_port_stops_the_demo_with_one_line(taken: str, reuse_port: bool) -> None:
    with listen(0, reuse_port=reuse_port) as holder:
        held, other = holder.getsockname()[1], free_port()
        port, upstream_port = (other, held) if taken == "upstream" else (held, other)
        script = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=demo_env(port, upstream_port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        stdout, stderr = script.communicate(timeout=120)
        assert script.returncode == 1, stdout + stderr
        lines = [line for line in stderr.splitlines() if line.startswith("run-demo:")]
        assert len(lines) == 1, stderr
        name = "demo upstream" if taken == "upstream" else "gateway"
        assert f"port {held} ({name})" in lines[0]
        assert f"ss -ltnp 'sport = :{held}'" in lines[0]
        # Nothing was started: no server output, the other port was never taken, and no
        # process of the script's session outlives it.
        assert "Running on" not in stdout + stderr
        assert "mock upstream listening" not in stdout + stderr
        assert is_free(other)
        assert live_in_session(script.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_script_stops_both_children(tmp_path: Path, sig: signal.Signals) -> None:
    port, upstream_port, admin_port = free_port(), free_port(), free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        # A session of its own: the signal goes to the script's pid only, never to a group.
        script = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=demo_env(port, upstream_port, admin_port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            wait_for_port(upstream_port, deadline, script, log)
            wait_for_port(port, deadline, script, log)
            # The demo answers through the gateway, from the upstream on the chosen port.
            response = httpx.get(f"http://127.0.0.1:{port}/api/json", timeout=30)
            assert response.status_code == 200, response.text
            assert response.json()["name"] == "quartgate demo"
            assert httpx.get(f"http://127.0.0.1:{port}/hello/you", timeout=30).status_code == 200
            # The example shows the admin listener and the access log too.
            admin = f"http://127.0.0.1:{admin_port}"
            counted = 'quartgate_requests_total{method="GET",route="api",status_class="2xx"}'
            wait_until(lambda: counted in httpx.get(admin + "/metrics", timeout=30).text)
            assert httpx.get(admin + "/readyz", timeout=30).status_code == 200
            wait_until(lambda: '"GET /api/json HTTP/1.1" 200' in log.read_text())
            children = [p for p in live_in_session(script.pid) if int(p.split()[0]) != script.pid]
            assert any("loadtests.mock_upstream" in p for p in children), children
            assert any("quartgate serve" in p for p in children), children

            os.kill(script.pid, sig)
            try:
                returncode = script.wait(60)
            except subprocess.TimeoutExpired:  # say what was still running, and its log
                left = live_in_session(script.pid)
                pytest.fail(f"the demo did not stop within 60 s: {left}\n{log.read_text()}")
        finally:
            if script.poll() is None:
                os.killpg(script.pid, signal.SIGKILL)
                script.wait()
    assert returncode == 128 + sig, log.read_text()
    assert live_in_session(script.pid) == [], log.read_text()
    assert is_free(port) and is_free(upstream_port)


def test_when_the_gateway_exits_the_upstream_is_stopped_too() -> None:
    port, upstream_port = free_port(), free_port()
    script = subprocess.Popen(
        ["bash", str(SCRIPT), "--workers", "many"],  # quartgate serve refuses it at once
        cwd=ROOT,
        env=demo_env(port, upstream_port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output, _ = script.communicate(timeout=120)
    assert script.returncode == 2, output  # argparse's usage error, passed on
    assert "mock upstream listening" in output  # it had started ...
    assert live_in_session(script.pid) == [], output  # ... and was stopped
    assert is_free(upstream_port)


def test_a_child_that_dies_stops_the_other_and_the_script(tmp_path: Path) -> None:
    port, upstream_port, admin_port = free_port(), free_port(), free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        script = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=demo_env(port, upstream_port, admin_port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            wait_for_port(upstream_port, deadline, script, log)
            wait_for_port(port, deadline, script, log)
            (upstream,) = [
                int(p.split()[0]) for p in live_in_session(script.pid) if "mock_upstream" in p
            ]
            os.kill(upstream, signal.SIGKILL)  # the demo upstream crashes
            returncode = script.wait(60)
        finally:
            if script.poll() is None:
                os.killpg(script.pid, signal.SIGKILL)
                script.wait()
    assert returncode == 128 + signal.SIGKILL, log.read_text()  # the child's status
    assert "stopping: no new connections" in log.read_text()  # stopped, not killed
    assert live_in_session(script.pid) == [], log.read_text()
    assert is_free(port)
