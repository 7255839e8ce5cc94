"""CI smoke run: Locust headless for 10 s through a real gateway to the bundled mock upstream.

Locust runs as a subprocess: importing it here would monkey-patch this process's sockets
with gevent (docs/known-defects.md). The run fails on any failed request; a second, short
run against an upstream that is down proves that the scenarios do count errors as failures.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from loadtests.servers import LOCUST_POLICY_OPTIONS, locust_gateway_config
from tests.support.gateway import ROOT, GatewayProcess, dead_port

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def run_locust(host: str, seconds: int, out: Path, *extra: str) -> dict[str, dict[str, str]]:
    prefix = out / "locust"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "--headless",
            "-f",
            str(LOCUSTFILE),
            "--host",
            host,
            "-u",
            "8",
            "-r",
            "8",
            "-t",
            f"{seconds}s",
            "--stop-timeout",
            "5",
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    stats = Path(f"{prefix}_stats.csv")
    assert stats.exists(), f"locust wrote no stats (exit {done.returncode}):\n{done.stderr}"
    with stats.open(newline="") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    rows["_exit"] = {"code": str(done.returncode), "stderr": done.stderr[-3000:]}
    return rows


def test_locust_scenarios_run_without_a_failed_request(
    mock_upstream: str, make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = make_gateway(locust_gateway_config(mock_upstream))
    rows = run_locust(gateway.url, 10, tmp_path, *LOCUST_POLICY_OPTIONS)
    total = rows["Aggregated"]
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert int(total["Failure Count"]) == 0, failures
    assert rows["_exit"]["code"] == "0", rows["_exit"]["stderr"]
    # Every scenario ran (policy routes too), each with the body size it checks.
    for name in ("/api/json", "/api/echo", "/api/bytes/1048576", "/items/{id}?query", "auth",
                 "ratelimit"):  # fmt: skip
        assert int(rows[name]["Request Count"]) > 0, f"scenario {name} did not run"
    assert float(rows["/api/json"]["Average Content Size"]) == 100
    assert float(rows["/api/echo"]["Average Content Size"]) == 4096
    assert float(rows["/api/bytes/1048576"]["Average Content Size"]) == 1 << 20


def test_locust_counts_gateway_errors_as_failures(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{dead_port()}"  # nothing listens: the gateway answers 502
    gateway = make_gateway(locust_gateway_config(down))
    rows = run_locust(gateway.url, 2, tmp_path, "--tags", "json")
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == int(total["Request Count"])
    assert rows["_exit"]["code"] != "0"
