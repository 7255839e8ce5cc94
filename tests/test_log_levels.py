"""A client's 4xx is the access log's business: the error log (stderr) carries it only when
no access log is configured; 5xx always reach the error log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.gateway import GatewayProcess, free_port
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


LOGGED = (
    """
[logging]
level = "{level}"
format = "{format}"

[admin]
bind = "127.0.0.1:{admin_port}"
"""
    + ROUTES
)


def test_logging_sets_the_error_logs_level_and_json_format(
    make_gateway: Callable[..., GatewayProcess], engine: str
) -> None:
    """``[logging] format = "json"``: every line a worker writes, Hypercorn's own included,
    is one JSON object; ``level = "warning"`` leaves the INFO lines out."""
    gateway = make_gateway(
        LOGGED.format(level="warning", format="json", admin_port=free_port()), engine=engine
    )
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.get("/api/x")
    assert response.status_code == 502
    text = wait_until(
        lambda: "upstream_unreachable" in (t := gateway.logs()) and t, what="the 502's line"
    )
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert {e["level"] for e in entries} <= {"WARNING", "ERROR"}, entries
    (entry,) = [e for e in entries if "upstream_unreachable" in e["message"]]
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["logger"] == "quartgate" and isinstance(entry["pid"], int)
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert "Running on" not in text  # an INFO line


def test_each_listener_is_named_for_what_it_serves(
    make_gateway: Callable[..., GatewayProcess], engine: str
) -> None:
    """One line per listener: the public one says the engine, the admin one says it is
    the admin listener (they read alike: Hypercorn logs "Running on" for every bind)."""
    admin_port = free_port()
    gateway = make_gateway(
        LOGGED.format(level="info", format="text", admin_port=admin_port), engine=engine
    )
    text = wait_until(
        lambda: "Admin listener on" in (t := gateway.logs()) and "Running on" in t and t,
        what="the listener lines",
    )
    public = f"Running on http://127.0.0.1:{gateway.port} ({engine} engine, pid "
    admin = f"Admin listener on http://127.0.0.1:{admin_port} (probes, /metrics, admin API"
    assert text.count(public) == 1 and text.count(admin) == 1, text
    assert text.count("Running on") == 1 and "CTRL + C" not in text
    assert " INFO quartgate [-] Running on" in text  # Hypercorn's line in quartgate's format
