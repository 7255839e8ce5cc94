"""``quartgate loadtest``: Locust, as a library, driven by the route table (docs/loadtest.md).

Headless: ``--users`` users (one keep-alive connection each, no think time, as the bundled
scenarios in ``loadtests/locustfile.py``) for ``--duration`` seconds, a progress line each
second, then per route the client's p50/p99 beside the gateway's and the upstream's share
read from each response's ``Server-Timing`` (``server_timing = true`` on the gateway; a
route without it says so). A response of 400 or more counts as a failure: a load test of a
route that answers 404 measures nothing. Written to ``--out``: ``routes.csv`` (the table),
Locust's ``stats.csv`` and ``failures.csv``, and Locust's HTML report ``report.html``.

Run in its own interpreter (``python -m gateway.loadtest``, which ``quartgate loadtest``
execs): Locust patches the standard library with gevent as it is imported, and that must
come before anything else imports ``ssl`` or ``socket``.
"""

from __future__ import annotations

import contextlib
import csv
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import FastHttpUser, constant
from locust.env import Environment
from locust.html import get_html_report
from locust.stats import StatsCSV
from websockets.sync.client import connect

from gateway.loadtest.plan import Plan, RouteTask

#: route -> Server-Timing part ("gateway", "upstream") -> durations in ms
Timings = dict[str, dict[str, list[float]]]
COLUMNS = (
    "route", "method", "path", "requests", "failures", "req/s",
    "p50 ms", "p99 ms", "gateway p50", "gateway p99", "upstream p50", "upstream p99",
)  # fmt: skip


def server_timing(value: str) -> dict[str, float]:
    """``gateway;dur=0.4, upstream;dur=3.1`` as ``{"gateway": 0.4, "upstream": 3.1}``; a
    later metric of the same name wins (the gateway's follows an upstream's own)."""
    found: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (piece.strip() for piece in metric.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if key.strip() == "dur":
                with contextlib.suppress(ValueError):
                    found[name] = float(number)
    return found


def user_class(plan: Plan, host: str, params: Mapping[str, str], timings: Timings) -> type:
    """A Locust user with one task per planned route, weighted."""

    def task_of(route: RouteTask) -> Callable[[Any], None]:
        if route.websocket:
            return _session_task(route, host, params)

        def run(user: Any) -> None:
            user.counter += 1
            path = route.target(user.counter, params)
            with user.client.request(
                route.method,
                path,
                name=route.route,
                headers=route.headers,
                data=route.body,
                catch_response=True,
            ) as response:
                if response.status_code >= 400 or response.status_code == 0:
                    response.failure(f"{route.method} {path}: {response.status_code}")
                    return
                header = response.headers.get("server-timing")
                if header:
                    parts = server_timing(header)
                    for name in ("gateway", "upstream"):
                        if name in parts:
                            timings[route.route][name].append(parts[name])

        run.__name__ = f"route_{route.route}"
        return run

    class RouteUser(FastHttpUser):
        wait_time = constant(0)
        max_retries = 0  # a refused or reset connection is a failure, never retried

        def on_start(self) -> None:
            self.counter = 0

    RouteUser.host = host
    RouteUser.tasks = {task_of(route): route.weight for route in plan.tasks}  # type: ignore[assignment]
    return RouteUser


def _session_task(route: RouteTask, host: str, params: Mapping[str, str]) -> Callable[[Any], None]:
    """A WebSocket route's task: open a session through the gateway, close it; the time
    is the handshake's, reported to Locust as a ``WS`` request."""
    base = "ws" + host.removeprefix("http")  # http:// -> ws://, https:// -> wss://

    def run(user: Any) -> None:
        user.counter += 1
        path = route.target(user.counter, params)
        started = time.perf_counter()
        failure: Exception | None = None
        try:
            with connect(base + path, additional_headers=route.headers, open_timeout=10):
                elapsed = time.perf_counter() - started
        except Exception as error:  # every failure is the route's: reported to Locust
            elapsed, failure = time.perf_counter() - started, error
        user.environment.events.request.fire(
            request_type="WS",
            name=route.route,
            response_time=elapsed * 1000,
            response_length=0,
            exception=failure,
            context={},
        )

    run.__name__ = f"route_{route.route}"
    return run


def run(
    plan: Plan, host: str, *, users: int, duration: float, params: Mapping[str, str], out: Path
) -> int:
    """Run the plan; print and write the report. 0 when every request succeeded."""
    timings: Timings = defaultdict(lambda: defaultdict(list))
    env = Environment(user_classes=[user_class(plan, host, params, timings)], host=host)
    runner = env.create_local_runner()
    started = last = time.monotonic()
    last_count = 0
    runner.start(users, spawn_rate=users)
    try:
        while (elapsed := time.monotonic() - started) < duration:
            gevent.sleep(min(1.0, duration - elapsed))
            total, now = env.stats.total, time.monotonic()
            rate = (total.num_requests - last_count) / max(now - last, 1e-9)
            last, last_count = now, total.num_requests
            print(
                f"  {now - started:5.1f}s  {runner.user_count} users  "
                f"{total.num_requests} requests  {total.num_failures} failures  "
                f"{rate:.0f} req/s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        runner.quit()
    elapsed = time.monotonic() - started
    rows = [_row(route, env, timings, elapsed) for route in plan.tasks]
    print(_table(rows))
    for route in plan.tasks:
        if route.route not in timings:
            why = route.untimed or (
                "no Server-Timing came back: does the gateway at --host serve this config?"
            )
            print(f"{route.route}: no gateway/upstream share: {why}")
    out.mkdir(parents=True, exist_ok=True)
    _write(out, rows, env)
    print(f"wrote {out}/routes.csv, stats.csv, failures.csv, report.html")
    return 1 if env.stats.total.num_failures else 0


def _row(route: RouteTask, env: Environment, timings: Timings, elapsed: float) -> list[str]:
    entry = env.stats.get(route.route, route.method)
    parts = timings.get(route.route, {})
    row = [route.route, route.method, route.path, str(entry.num_requests)]
    row += [str(entry.num_failures), f"{entry.num_requests / elapsed:.1f}"]
    if entry.num_requests:
        row += [str(entry.get_response_time_percentile(p)) for p in (0.5, 0.99)]
    else:
        row += ["-", "-"]
    for name in ("gateway", "upstream"):
        row += _percentiles(parts.get(name, []))
    return row


def _percentiles(values: list[float]) -> list[str]:
    if not values:
        return ["-", "-"]
    if len(values) == 1:
        return [f"{values[0]:.2f}"] * 2
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [f"{statistics.median(values):.2f}", f"{cuts[98]:.2f}"]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(COLUMNS, *rows, strict=False)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True))
             for line in (COLUMNS, *rows)]  # fmt: skip
    return "\n".join(lines)


def _write(out: Path, rows: list[list[str]], env: Environment) -> None:
    with (out / "routes.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    locust_csv = StatsCSV(env, [0.5, 0.9, 0.99])
    with (out / "stats.csv").open("w", newline="") as file:
        locust_csv.requests_csv(csv.writer(file))
    with (out / "failures.csv").open("w", newline="") as file:
        locust_csv.failures_csv(csv.writer(file))
    report = get_html_report(env, show_download_link=False)  # type: ignore[no-untyped-call]
    (out / "report.html").write_text(report)
