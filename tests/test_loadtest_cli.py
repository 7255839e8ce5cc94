"""``quartgate loadtest``: Locust driven from a config's route table (docs/loadtest.md).

The runs go through the real command (``python -m gateway.cli loadtest``, which execs
``python -m gateway.loadtest``) against a real gateway under Hypercorn: the bundled demo
config in front of the bundled mock upstream, and a test upstream that records what it was
sent and waits as long as a request asks. The plan (what each route becomes) is tested
apart, on configs read by the gateway's own loader.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.loadtest.plan import BODY, PlanError, header_lines, pairs, plan
from tests.support.gateway import ROOT, GatewayProcess, dead_port, free_port
from tests.support.upstream import UpstreamServer
from tests.support.ws_upstream import WebSocketUpstream

KEY = "loadtest-key-0123456789"


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report(out: Path) -> dict[str, dict[str, str]]:
    with (out / "routes.csv").open(newline="") as file:
        return {row["route"]: row for row in csv.DictReader(file)}


def demo_config(tmp_path: Path, mock_upstream: str) -> str:
    """examples/gateway.toml pointed at this session's mock upstream, admin on a free port;
    its in-process blueprint (hello_app.py) is beside it, as in examples/."""
    shutil.copy(ROOT / "examples" / "hello_app.py", tmp_path / "hello_app.py")
    text = (ROOT / "examples" / "gateway.toml").read_text()
    text = text.replace("http://127.0.0.1:9001", mock_upstream)
    return text.replace("127.0.0.1:9901", f"127.0.0.1:{free_port()}")


def test_against_the_demo_every_route_is_loaded_and_reported(
    mock_upstream: str, make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = make_gateway(demo_config(tmp_path, mock_upstream))
    out = tmp_path / "report"
    done = loadtest("-c", str(gateway.config), "--host", gateway.url, "-u", "4", "-d", "2",
                    "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 routes, 4 users, 2 s against" in done.stdout
    assert " requests  0 failures  " in done.stderr  # the progress line
    rows = report(out)
    assert sorted(rows) == ["api", "echo", "hello", "items"]
    for name, row in rows.items():
        assert int(row["requests"]) > 0, row
        assert row["failures"] == "0", row
        assert f"\n{name.rjust(5)}" in "\n" + done.stdout  # the printed table has every route
    assert rows["echo"]["method"] == "POST"
    for name in ("api", "items", "echo"):  # proxied, server_timing = true in the example
        for column in ("gateway p50", "gateway p99", "upstream p50", "upstream p99"):
            assert float(rows[name][column]) >= 0, (name, column)
        assert float(rows[name]["upstream p50"]) > 0
    assert rows["hello"]["gateway p50"] == "-"
    assert "hello: no gateway/upstream share: an in-process app" in done.stdout
    stats = (out / "stats.csv").read_text()
    for name in rows:
        assert f",{name}," in stats
    assert "<html" in (out / "report.html").read_text()[:2000].lower()


@pytest.fixture
def policy_config(upstream: UpstreamServer, tmp_path: Path) -> str:
    key_sha = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
[gateway]
server_timing = true

[upstreams.test]
targets = ["http://127.0.0.1:{upstream.port}"]

[consumers.alice]
api_key_sha256 = ["{key_sha}"]

[[routes]]
name = "slow"
path = "/lt/slow/{{id}}/slow"
upstream = "test"

[[routes]]
name = "named"
path = "/lt/named/{{name}}"
upstream = "test"

[[routes]]
name = "secret"
path = "/lt/secret"
upstream = "test"
[routes.auth]
api_key = true
"""


def test_the_upstream_share_is_the_upstreams_and_segments_are_filled(
    upstream: UpstreamServer,
    make_gateway: Callable[..., GatewayProcess],
    policy_config: str,
    tmp_path: Path,
) -> None:
    gateway = make_gateway(policy_config)
    out = tmp_path / "report"
    seen = len(upstream.requests)
    done = loadtest("-c", str(gateway.config), "--host", gateway.url, "-u", "2", "-d", "2",
                    "--path", "slow=/lt/slow/{id}/slow?delay=0.03", "--param", "name=alice",
                    "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped secret: behind [routes.auth]: give credentials with --header" in done.stdout
    rows = report(out)
    assert sorted(rows) == ["named", "slow"]
    # The upstream waited 30 ms before every head: its share says so, the client's too.
    assert float(rows["slow"]["upstream p50"]) >= 30, rows["slow"]
    assert float(rows["slow"]["p50 ms"]) >= 30, rows["slow"]
    sent = [r.target for r in upstream.requests[seen:] if r.target.startswith("/lt/")]
    named = [t for t in sent if t.startswith("/lt/named/")]
    slow = [t for t in sent if t.startswith("/lt/slow/")]
    assert named and set(named) == {"/lt/named/alice"}  # --param fills {name}
    assert len({t.split("/")[3] for t in slow}) > 1  # {id}: a number that changes
    assert all(t.endswith("/slow?delay=0.03") for t in slow)
    assert not any(t.startswith("/lt/secret") for t in sent)


def test_credentials_include_the_routes_behind_auth(
    upstream: UpstreamServer,
    make_gateway: Callable[..., GatewayProcess],
    policy_config: str,
    tmp_path: Path,
) -> None:
    gateway = make_gateway(policy_config)
    out = tmp_path / "report"
    seen = len(upstream.requests)
    done = loadtest("-c", str(gateway.config), "--host", gateway.url, "-u", "2", "-d", "1",
                    "--header", f"x-api-key: {KEY}", "--weight", "slow=0",
                    "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped slow: --weight 0" in done.stdout
    rows = report(out)
    assert int(rows["secret"]["requests"]) > 0 and rows["secret"]["failures"] == "0"
    secret = [r for r in upstream.requests[seen:] if r.target == "/lt/secret"]
    assert secret and all(("x-consumer-username", "alice") in r.headers for r in secret)


def test_a_route_that_fails_fails_the_run(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = make_gateway(f"""
[upstreams.down]
targets = ["http://127.0.0.1:{dead_port()}"]

[[routes]]
name = "down"
path = "/down"
upstream = "down"
""")
    out = tmp_path / "report"
    done = loadtest("-c", str(gateway.config), "--host", gateway.url, "-u", "2", "-d", "1",
                    "--out", str(out))  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    row = report(out)["down"]
    assert int(row["requests"]) > 0 and row["failures"] == row["requests"]
    assert "GET /down: 502" in (out / "failures.csv").read_text()
    assert "down: no gateway/upstream share: server_timing is off for it" in done.stdout


@pytest.fixture
def ws_upstream() -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream().start()
    yield server
    server.stop()


def test_websocket_routes_are_sessions_when_asked_for(
    ws_upstream: WebSocketUpstream, make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = make_gateway(f"""
[upstreams.ws]
targets = ["{ws_upstream.url}"]

[[routes]]
name = "ws"
path = "/ws"
upstream = "ws"
websocket = true
""")
    config = str(gateway.config)
    without = loadtest("-c", config, "--host", gateway.url, "-d", "1")
    assert without.returncode == 2
    assert "skipped ws: a WebSocket route: --websocket includes it" in without.stdout
    assert "no route left to load" in without.stderr
    out = tmp_path / "report"
    done = loadtest("-c", config, "--host", gateway.url, "-u", "2", "-d", "1", "--websocket",
                    "--path", "ws=/ws/echo", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    row = report(out)["ws"]
    assert row["method"] == "WS" and int(row["requests"]) > 0 and row["failures"] == "0"
    # The sessions reached the upstream, and the client closed them (1000).
    assert ws_upstream.closed.get(timeout=10) == ("/ws/echo", 1000, "")


def test_bad_options_and_configs_exit_2_naming_the_cause(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[routes]]\nname = "a"\npath = "/a"\nupstream = "nowhere"\n')
    done = loadtest("-c", str(config), "--host", "http://127.0.0.1:1")
    assert done.returncode == 2
    assert str(config) in done.stderr and "nowhere" in done.stderr
    config.write_text(
        '[upstreams.u]\ntargets = ["http://127.0.0.1:1"]\n'
        '[[routes]]\nname = "a"\npath = "/a"\nupstream = "u"\n'
    )
    done = loadtest("-c", str(config), "--host", "http://127.0.0.1:1", "--weight", "b=2")
    assert done.returncode == 2
    assert "--weight: no route named 'b'" in done.stderr
    done = loadtest("-c", str(config), "--host", "http://127.0.0.1:1", "--header", "nocolon")
    assert done.returncode == 2 and "expected 'Name: value'" in done.stderr


PLAN_CONFIG = """
[gateway]
server_timing = true

[upstreams.u]
targets = ["http://127.0.0.1:1"]

[upstreams.app]
app = "tests.support.inprocess_apps:bare_asgi"

[[routes]]
name = "posted"
path = "/orders/{id}/lines/{line}"
methods = ["POST", "PUT"]
upstream = "u"

[[routes]]
name = "hosted"
path = "/"
host = "*.example.com"
upstream = "u"
server_timing = false

[[routes]]
name = "inproc"
path = "/app"
upstream = "app"

[[routes]]
name = "ws"
path = "/ws"
upstream = "u"
websocket = true
"""


def test_the_plan_makes_each_route_a_request_its_clients_would_send(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(PLAN_CONFIG)
    config = load_config(path)
    planned = plan(config, weights={"hosted": "3"})
    tasks = {task.route: task for task in planned.tasks}
    assert planned.skipped == {"ws": "a WebSocket route: --websocket includes it"}
    posted = tasks["posted"]
    assert (posted.method, posted.body) == ("POST", BODY)
    assert posted.headers == {"Content-Type": "application/json"}
    assert posted.target(4, {"line": "x"}) == "/orders/5/lines/x"
    assert posted.target(1004, {}) == "/orders/5/lines/5"  # a number that cycles
    assert posted.untimed == ""
    hosted = tasks["hosted"]
    assert (hosted.method, hosted.weight, hosted.body) == ("GET", 3, None)
    assert hosted.headers == {"Host": "loadtest.example.com"}
    assert hosted.untimed == "server_timing is off for it"
    assert tasks["inproc"].untimed == "an in-process app: no upstream hop to time"
    ws = {t.route: t for t in plan(config, websocket=True).tasks}["ws"]
    assert (ws.method, ws.websocket, ws.body) == ("WS", True, None)


def test_plan_options_are_checked() -> None:
    assert pairs(["a=1", "b=x=y"], "--param") == {"a": "1", "b": "x=y"}
    assert header_lines(["X-Api-Key:  k "]) == {"X-Api-Key": "k"}
    for bad in (["a"], ["=1"]):
        with pytest.raises(PlanError, match="expected NAME=VALUE"):
            pairs(bad, "--param")
    with pytest.raises(PlanError, match="expected 'Name: value'"):
        header_lines([": v"])
