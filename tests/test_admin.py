"""The admin listener: probes, token-protected admin API, drains, reloads, and the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import (
    ENGINES,
    ROOT,
    GatewayProcess,
    bound_socket,
    dead_port,
    free_port,
    port_of,
)
from tests.support.observability import TOKEN, Admin, value, wait_until
from tests.support.upstream import UpstreamServer

ROUTES = """
[upstreams.main]
targets = ["{upstream}", "http://127.0.0.1:{spare}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
"""

#: One live target only: with the spare (down) one, round robin would fail every other try.
ONE = """
[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
"""

Start = Callable[..., GatewayProcess]


@pytest.fixture(scope="module", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest,
    upstream: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, Admin]]:
    """One gateway per engine for the read-only checks (the admin listener on its own
    bind, served by the same server as the public one); tests that change state start
    their own."""
    admin = Admin()
    config = tmp_path_factory.mktemp("admin") / "gateway.toml"
    config.write_text(admin.section() + ROUTES.format(upstream=upstream.url, spare=dead_port()))
    process = GatewayProcess(config, engine=request.param).start()
    yield process, admin
    assert process.stop() == 0, process.logs()


def test_probes_need_no_token(gateway: tuple[GatewayProcess, Admin]) -> None:
    _, admin = gateway
    health = admin.get("/healthz", token=None)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = admin.get("/readyz", token=None)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "reasons": []}
    assert admin.get("/metrics", token=None).status_code == 200
    assert httpx.head(admin.url + "/healthz").status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong-token-0123456789"}, 401),
        ({"authorization": f"Bearer {TOKEN}x"}, 401),
        ({"authorization": f"Basic {TOKEN}"}, 401),
        ({"authorization": f"Bearer {TOKEN}"}, 200),
        ({"authorization": f"bearer {TOKEN}"}, 200),
    ],
)
def test_admin_api_requires_the_token(
    gateway: tuple[GatewayProcess, Admin], headers: dict[str, str], code: int
) -> None:
    _, admin = gateway
    for path in ("/admin/routes", "/admin/upstreams", "/admin/config"):
        response = httpx.get(admin.url + path, headers=headers)
        assert response.status_code == code, (path, response.text)
        if code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"] == "unauthorized"
    response = httpx.post(admin.url + "/admin/drain", headers=headers)
    if code == 401:
        assert response.status_code == 401
    else:
        assert response.status_code == 200
        assert httpx.post(admin.url + "/admin/undrain", headers=headers).status_code == 200


def test_admin_paths_do_not_exist_on_the_public_port(
    gateway: tuple[GatewayProcess, Admin],
) -> None:
    process, _ = gateway
    auth = {"authorization": f"Bearer {TOKEN}"}
    for path in ("/metrics", "/healthz", "/readyz", "/admin/routes"):
        response = httpx.get(process.url + path, headers=auth)
        assert response.status_code == 404, path
        assert response.json()["error"] == "route_not_found"


def test_routes_upstreams_and_config(
    gateway: tuple[GatewayProcess, Admin], upstream: UpstreamServer
) -> None:
    process, admin = gateway
    assert httpx.get(process.url + "/api/warm").status_code == 200
    routes = admin.get("/admin/routes").json()["routes"]
    assert routes == [
        {
            "name": "api",
            "host": None,
            "path": "/api",
            "methods": None,
            "upstream": "main",
            "strip_prefix": False,
            "prefix_rewrite": None,
            "preserve_host": False,
        }
    ]
    (main,) = admin.get("/admin/upstreams").json()["upstreams"]
    assert main["name"] == "main"
    assert main["kind"] == "http1"
    first, second = main["targets"]
    assert first["url"] == upstream.url
    assert first["healthy"] is True
    assert first["drained"] is False
    pool = first["pool"]
    assert set(pool) == {"in_use", "idle", "waiting"}
    assert pool["in_use"] + pool["idle"] >= 1
    assert second["url"].startswith("http://127.0.0.1:")
    config = admin.get("/admin/config").json()
    assert config["source"] == str(process.config.resolve())
    assert config["version"] == hashlib.sha256(process.config.read_bytes()).hexdigest()[:12]
    assert config["draining"] is False
    assert admin.get("/admin/nothing").status_code == 404
    assert admin.post("/admin/routes").status_code == 405


def test_gateway_drain_fails_readiness_but_keeps_serving(
    make_gateway: Start, upstream: UpstreamServer
) -> None:
    admin = Admin()
    gateway = make_gateway(admin.section() + ONE.format(upstream=upstream.url))
    assert admin.get("/readyz", token=None).status_code == 200
    assert admin.post("/admin/drain").json() == {"draining": True, "ready": False}
    ready = admin.get("/readyz", token=None)
    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["gateway is draining"]
    assert httpx.get(gateway.url + "/api/x").status_code == 200  # traffic still served
    assert admin.post("/admin/undrain").json() == {"draining": False, "ready": True}
    assert admin.get("/readyz", token=None).status_code == 200


def test_draining_every_target_fails_readiness_and_requests(
    make_gateway: Start, upstream: UpstreamServer
) -> None:
    admin = Admin()
    spare = dead_port()
    text = admin.section("upstreams") + ROUTES.format(upstream=upstream.url, spare=spare)
    gateway = make_gateway(text)
    # The spare target is down (nothing listens): draining it leaves the good one in turn.
    drained = admin.post(f"/admin/upstreams/main/targets/127.0.0.1:{spare}/drain")
    assert drained.json() == {
        "upstream": "main",
        "target": f"http://127.0.0.1:{spare}",
        "drained": True,
    }
    for _ in range(6):
        assert httpx.get(gateway.url + "/api/x").status_code == 200
    assert admin.get("/readyz", token=None).status_code == 200
    host_port = upstream.url.removeprefix("http://")
    assert admin.post(f"/admin/upstreams/main/targets/{host_port}/drain").status_code == 200
    ready = admin.get("/readyz", token=None)
    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["upstream 'main' has no healthy, undrained target"]
    refused = httpx.get(gateway.url + "/api/x")
    assert refused.status_code == 503
    assert refused.json()["error"] == "no_healthy_upstream"
    targets = admin.get("/admin/upstreams").json()["upstreams"][0]["targets"]
    assert [t["drained"] for t in targets] == [True, True]
    assert admin.post(f"/admin/upstreams/main/targets/{host_port}/undrain").status_code == 200
    assert admin.get("/readyz", token=None).status_code == 200
    assert httpx.get(gateway.url + "/api/x").status_code == 200
    assert admin.post("/admin/upstreams/main/targets/10.9.9.9:1/drain").status_code == 404
    assert admin.post("/admin/upstreams/nope/targets/x:1/drain").status_code == 404
    assert admin.get(f"/admin/upstreams/main/targets/{host_port}/drain").status_code == 405


def test_readiness_follows_active_health_checks(make_gateway: Start, tmp_path: Path) -> None:
    admin = Admin()
    with bound_socket() as sock:  # refuses connections until the late upstream listens on it
        port = port_of(sock)
        text = admin.section("upstreams") + (
            f'[upstreams.main]\ntargets = ["http://127.0.0.1:{port}"]\n'
            "[upstreams.main.health]\n"
            'path = "/ok"\ninterval = 0.2\ntimeout = 1.0\n'
            "unhealthy_threshold = 1\nhealthy_threshold = 1\n"
            '[[routes]]\nname = "api"\npath = "/api"\nupstream = "main"\n'
        )
        make_gateway(text)

        def status() -> int:
            return admin.get("/readyz", token=None).status_code

        wait_until(lambda: status() == 503, what="readiness to fail with every target down")
        late = UpstreamServer(sock=sock)
        late.start()
        try:
            wait_until(lambda: status() == 200, what="readiness once the target is up")
        finally:
            late.stop()


def test_reload_applies_a_valid_config_and_keeps_the_old_on_error(
    make_gateway: Start, upstream: UpstreamServer, engine: str
) -> None:
    admin = Admin()
    text = admin.section() + ONE.format(upstream=upstream.url)
    gateway = make_gateway(text, engine=engine)
    assert httpx.get(gateway.url + "/new/x").status_code == 404
    before = admin.get("/admin/config").json()["version"]
    gateway.config.write_text(text + '[[routes]]\nname = "new"\npath = "/new"\nupstream = "main"\n')
    reloaded = admin.post("/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    body = reloaded.json()
    assert body["previous_version"] == before
    assert body["version"] == hashlib.sha256(gateway.config.read_bytes()).hexdigest()[:12]
    assert httpx.get(gateway.url + "/new/x").status_code == 200

    gateway.config.write_text(text + "[[routes]]\npath = 7\n")
    refused = admin.post("/admin/reload")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_config"
    assert any("routes[1].path" in p for p in refused.json()["problems"])
    assert httpx.get(gateway.url + "/new/x").status_code == 200  # the old config stays
    assert admin.get("/admin/config").json()["version"] == body["version"]
    samples = admin.scrape()
    assert value(samples, "quartgate_config_reloads_total", result="success") == 1
    assert value(samples, "quartgate_config_reloads_total", result="failure") == 1


def test_several_workers_share_drains_and_reloads(
    make_gateway: Start, upstream: UpstreamServer, engine: str
) -> None:
    admin = Admin()
    text = admin.section() + ONE.format(upstream=upstream.url)
    gateway = make_gateway(text, workers=2, engine=engine)
    pids: set[int] = set()

    def both_workers() -> bool:
        pids.add(admin.get("/healthz", token=None, fresh=True).json()["pid"])
        return len(pids) == 2

    wait_until(both_workers, timeout=20, what="both workers to answer")
    assert admin.post("/admin/drain", fresh=True).status_code == 200
    # Whichever worker answers, it reads the shared decision before answering.
    for _ in range(30):
        assert admin.get("/readyz", token=None, fresh=True).status_code == 503
    assert admin.post("/admin/undrain", fresh=True).status_code == 200

    gateway.config.write_text(text + '[[routes]]\nname = "new"\npath = "/new"\nupstream = "main"\n')
    assert admin.post("/admin/reload", fresh=True).status_code == 200

    def all_reloaded() -> bool:
        answers = [
            httpx.get(gateway.url + "/new/x", headers={"connection": "close"}).status_code
            for _ in range(10)
        ]
        return answers == [200] * 10

    wait_until(all_reloaded, what="every worker to reload")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_routes_prints_the_table(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[upstreams.main]\ntargets = ["http://127.0.0.1:9001", '
        '{ url = "http://127.0.0.1:9002", weight = 3 }]\n'
        '[[routes]]\nname = "users"\npath = "/users/{id}"\nmethods = ["GET"]\nupstream = "main"\n'
        'timeout = 2.0\n[routes.cors]\nallow_origins = ["*"]\n[routes.retry]\nattempts = 2\n'
        '[[routes]]\nname = "root"\npath = "/"\nupstream = "main"\nstrip_prefix = true\n'
    )
    done = run_cli("routes", "-c", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = ["ROUTE", "HOST", "PATH", "METHODS", "UPSTREAM", "REWRITE", "POLICIES"]
    assert lines[0].split() == header
    assert lines[1].split() == [
        "users",
        "*",
        "/users/{id}",
        "GET,HEAD,OPTIONS",  # CORS on: preflights reach the policy that answers them
        "main",
        "(http://127.0.0.1:9001,",
        "http://127.0.0.1:9002",
        "[weight",
        "3])",
        "-",
        "cors,retry,timeout=2s",
    ]
    assert lines[2].split()[:3] == ["root", "*", "/"]
    assert lines[2].split()[-2:] == ["strip_prefix", "-"]


def test_cli_check_reports_observability_problems(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[admin]\nbind = "nowhere"\ntoken = "short"\n'
        '[access_log]\nformat = "xml"\nsample = 2\n'
        '[upstreams.main]\ntargets = ["http://127.0.0.1:9001"]\n'
        '[[routes]]\npath = "/"\nupstream = "main"\n'
    )
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 1
    for key in ("admin.bind", "admin.token", "access_log.format", "access_log.sample"):
        assert f"{config}: {key}: " in done.stderr


def test_serve_refuses_an_admin_port_that_is_public(tmp_path: Path) -> None:
    port = dead_port()  # never bound by serve: it refuses the config first
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[admin]\nbind = "127.0.0.1:{port}"\n'
        '[upstreams.main]\ntargets = ["http://127.0.0.1:9001"]\n'
        '[[routes]]\npath = "/"\nupstream = "main"\n'
    )
    done = run_cli("serve", "-c", str(config), "--bind", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert "admin.bind" in done.stderr


def test_without_a_token_the_admin_api_is_off(
    make_gateway: Start, upstream: UpstreamServer
) -> None:
    port = free_port()  # [admin] bind takes a port, not a socket (tests/support/observability.py)
    text = f'[admin]\nbind = "127.0.0.1:{port}"\n' + ONE.format(upstream=upstream.url)
    make_gateway(text)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/healthz").status_code == 200
    off = httpx.post(base + "/admin/reload", headers={"authorization": "Bearer anything"})
    assert off.status_code == 404
    assert off.json()["error"] == "admin_api_disabled"


def test_by_default_readiness_is_the_instances_not_its_upstreams(
    make_gateway: Start, upstream: UpstreamServer
) -> None:
    """One backend with every target drained fails its own requests (503), not the whole
    instance's readiness: a load balancer keeps the gateway for the other routes. Draining
    the gateway still fails it."""
    admin = Admin()
    gateway = make_gateway(
        admin.section() + ROUTES.format(upstream=upstream.url, spare=dead_port())
    )
    for target in admin.get("/admin/upstreams").json()["upstreams"][0]["targets"]:
        host_port = target["url"].removeprefix("http://")
        assert admin.post(f"/admin/upstreams/main/targets/{host_port}/drain").status_code == 200
    assert httpx.get(gateway.url + "/api/x").json()["error"] == "no_healthy_upstream"
    ready = admin.get("/readyz", token=None)
    assert (ready.status_code, ready.json()["reasons"]) == (200, [])
    assert admin.post("/admin/drain").json() == {"draining": True, "ready": False}
    ready = admin.get("/readyz", token=None)
    assert (ready.status_code, ready.json()["reasons"]) == (503, ["gateway is draining"])


async def test_a_scrape_that_races_another_worker_is_retried_then_503() -> None:
    """With several workers a scrape reads files the others write; a failed read is tried
    again, and after three failures the answer is a JSON 503, never a bare 500."""
    from types import SimpleNamespace

    from gateway.observability.sections import AdminSettings
    from gateway.ops.admin import SCRAPE_TRIES, AdminApp

    failures = [ValueError("read beyond file size")] * (SCRAPE_TRIES - 1)

    def exposition() -> bytes:
        if failures:
            raise failures.pop()
        return b"quartgate_up 1\n"

    obs = SimpleNamespace(
        settings=SimpleNamespace(admin=AdminSettings(token="a-token-of-sixteen")),
        metrics=SimpleNamespace(exposition=exposition),
        sync=lambda: None,
    )
    app = AdminApp(obs)  # type: ignore[arg-type]

    async def scrape() -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": "/metrics"}, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], body

    assert await scrape() == (200, b"quartgate_up 1\n")  # two failures, then served
    failures.extend([ValueError("still racing")] * SCRAPE_TRIES)
    status, body = await scrape()
    assert status == 503
    assert json.loads(body)["error"] == "metrics_unavailable"
