"""A client's 4xx is the access log's business: the error log (stderr) carries it only when
no access log is configured; 5xx always reach the error log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.gateway import GatewayProcess
from tests.support.observability import wait_until

ROUTES = """
[upstreams.dead]
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "api"
path = "/api"
upstream = "dead"
"""


def test_4xx_go_to_the_access_log_not_the_error_log(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    config = f'[access_log]\npath = "{log}"\nflush_interval = 0.05\n' + ROUTES
    gateway = make_gateway(config)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/nowhere").status_code == 404
        assert client.get("/api/x").status_code == 502
    text = wait_until(
        lambda: (t := log.read_text() if log.exists() else "").count("\n") >= 2 and t,
        what="two access log lines",
    )
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["path"], e["status"]) for e in entries] == [("/nowhere", 404), ("/api/x", 502)]
    stderr = gateway.logs()
    assert "route_not_found" not in stderr
    assert "upstream_unreachable" in stderr  # a 5xx is the operator's business


def test_without_an_access_log_4xx_still_leave_a_line(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway(ROUTES)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/nowhere").status_code == 404
    wait_until(lambda: "route_not_found" in gateway.logs(), what="the 404 in the error log")
