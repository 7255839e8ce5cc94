"""Prometheus metrics: real traffic through a real gateway, then a scrape parsed by
prometheus-client's own text parser, with one worker and with several."""

from __future__ import annotations

import hashlib
import signal
import tomllib
from collections.abc import Callable

import httpx
import pytest

from gateway.config import parse_config
from gateway.edge.context import RequestContext
from gateway.observability.metrics import GatewayMetrics, MetricsObserver
from gateway.observability.runtime import Instruments
from gateway.observability.sections import MetricsSettings
from tests.support.gateway import GatewayProcess, dead_port
from tests.support.observability import Admin, series, value, wait_until
from tests.support.upstream import UpstreamServer

ROUTES = """
[upstreams.main]
targets = ["{upstream}"]

[upstreams.dead]
targets = ["http://127.0.0.1:{dead}"]
connect_timeout = 1.0

[[routes]]
name = "api"
path = "/api"
upstream = "main"

[[routes]]
name = "down"
path = "/down"
upstream = "dead"
"""

Start = Callable[..., GatewayProcess]


def config(upstream: UpstreamServer, admin: Admin, extra: str = "") -> str:
    routes = ROUTES.format(upstream=upstream.url, dead=dead_port())
    return admin.section() + extra + routes


def test_counters_and_histograms_follow_real_traffic(
    make_gateway: Start, upstream: UpstreamServer, engine: str
) -> None:
    admin = Admin()
    gateway = make_gateway(config(upstream, admin), engine=engine)
    before = admin.scrape()
    assert (
        value(before, "quartgate_requests_total", route="api", method="GET", status_class="2xx")
        == 0
    )
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(5):
            assert client.get("/api/ok").status_code == 200
        for _ in range(2):
            assert client.get("/api/status/503").status_code == 503
        assert client.post("/api/echo", content=b"x" * 1000).status_code == 200
        assert client.get("/api/slow", params={"delay": "0.3"}).status_code == 200
        for _ in range(3):
            assert client.get("/nowhere").status_code == 404
        client.request("BREW", "/api/ok")  # an unknown method token: served or refused
        assert client.get("/down/x").status_code == 502

    samples = admin.scrape()
    requests = "quartgate_requests_total"
    assert value(samples, requests, route="api", method="GET", status_class="2xx") == 6
    assert value(samples, requests, route="api", method="GET", status_class="5xx") == 2
    assert value(samples, requests, route="api", method="POST", status_class="2xx") == 1
    assert value(samples, requests, route="(none)", method="GET", status_class="4xx") == 3
    # BREW reaches the gateway under Hypercorn (h11 takes any token) and is counted as OTHER;
    # httptools (uvicorn) knows a fixed list of methods and answers 501 before the app, so
    # there it is in no metric, like any request the server's parser refuses.
    brew = 1 if engine == "hypercorn" else 0
    assert sum(series(samples, requests, method="OTHER").values()) == brew
    assert value(samples, requests, route="down", method="GET", status_class="5xx") == 1
    assert not series(samples, requests, method="BREW")

    # Whole-request histogram: every request counted, buckets cumulative, +Inf == count.
    duration = "quartgate_request_duration_seconds"
    api_count = value(samples, duration + "_count", route="api")
    assert api_count in (9, 10)  # 10 when the BREW request was proxied
    buckets = series(samples, duration + "_bucket", route="api")
    by_bound = sorted((float(dict(k)["le"]), v) for k, v in buckets.items())
    counts = [v for _, v in by_bound]
    assert counts == sorted(counts)
    assert by_bound[-1] == (float("inf"), api_count)
    # The 0.3 s request cannot be in the 0.25 s bucket (a lower bound, not a timing guess).
    assert value(samples, duration + "_bucket", route="api", le="0.25") <= api_count - 1
    assert value(samples, duration + "_sum", route="api") >= 0.3

    # The upstream part: one observation per request that reached the upstream.
    upstream_duration = "quartgate_upstream_duration_seconds"
    assert value(samples, upstream_duration + "_count", route="api", upstream="main") == api_count
    assert value(samples, upstream_duration + "_sum", route="api", upstream="main") >= 0.3
    assert value(samples, upstream_duration + "_count", route="(none)", upstream="(none)") == 0
    assert value(samples, duration + "_count", route="(none)") == 3 + (9 + brew - api_count)

    assert value(samples, "quartgate_request_body_bytes_total", route="api") == 1000
    assert value(samples, "quartgate_response_body_bytes_total", route="api") > 0
    errors = "quartgate_gateway_errors_total"
    assert value(samples, errors, route="(none)", code="route_not_found") == 3
    assert value(samples, errors, route="down", code="upstream_unreachable") == 1

    # Pool gauges: the keep-alive connection to the upstream is idle again, none waits.
    target = upstream.url
    pool = "quartgate_upstream_connections"
    assert value(samples, pool, upstream="main", target=target, state="idle") >= 1
    assert value(samples, pool, upstream="main", target=target, state="in_use") == 0
    assert value(samples, pool, upstream="main", target=target, state="waiting") == 0
    assert value(samples, "quartgate_upstream_target_healthy", upstream="main", target=target) == 1
    assert value(samples, "quartgate_upstream_target_drained", upstream="main", target=target) == 0

    # Build and config info: the version is the sha256 prefix of the file as loaded.
    version = hashlib.sha256(gateway.config.read_bytes()).hexdigest()[:12]
    info = series(samples, "quartgate_config_info", version=version)
    assert list(info.values()) == [1.0]
    assert dict(next(iter(info)))["source"] == str(gateway.config.resolve())
    assert series(samples, "quartgate_build_info", version="0.1.0")
    assert value(samples, "quartgate_ready") == 1
    assert value(samples, "process_resident_memory_bytes") > 0


def test_several_workers_add_up(make_gateway: Start, upstream: UpstreamServer, engine: str) -> None:
    admin = Admin()
    gateway = make_gateway(config(upstream, admin), workers=2, engine=engine)
    pids = workers_seen(admin, want=2)
    # Fresh connections spread over the workers; every scrape, whichever worker answers
    # it, must see the sum of all of them.
    sent = 40
    for _ in range(sent):
        response = httpx.get(gateway.url + "/api/ok", headers={"connection": "close"})
        assert response.status_code == 200
    for _ in range(6):
        samples = admin.scrape(fresh=True)
        got = value(
            samples, "quartgate_requests_total", route="api", method="GET", status_class="2xx"
        )
        assert got == sent
        assert value(samples, "quartgate_request_duration_seconds_count", route="api") == sent
        inf = value(samples, "quartgate_request_duration_seconds_bucket", route="api", le="+Inf")
        assert inf == sent
    # Gauges of live workers: each worker has its own pool, and the build info is one series.
    assert len(series(samples, "quartgate_build_info")) == 1
    assert len(pids) == 2


def test_reloads_are_counted_once_whatever_the_workers(
    make_gateway: Start, upstream: UpstreamServer, engine: str
) -> None:
    """SIGHUP goes to the master, which checks the file and counts the result once; an
    admin reload is counted by the worker that was asked, the others follow uncounted."""
    admin = Admin()
    text = config(upstream, admin)
    gateway = make_gateway(text, workers=2, engine=engine)
    workers_seen(admin, want=2)

    def reloads(result: str, want: int) -> bool:
        # Any worker may answer; each must see the same totals.
        got = [
            value(admin.scrape(fresh=True), "quartgate_config_reloads_total", result=result)
            for _ in range(4)
        ]
        return got == [want] * 4

    gateway.config.write_text(text + "# edited\n")
    gateway.signal(signal.SIGHUP)
    wait_until(lambda: gateway.logs().count("config reloaded") == 2, what="both workers")
    gateway.signal(signal.SIGHUP)
    wait_until(lambda: gateway.logs().count("config reloaded") == 4, what="both workers")
    wait_until(lambda: reloads("success", 2), what="2 successful reloads, not 4")

    gateway.config.write_text(text + "[[routes]]\npath = 7\n")
    gateway.signal(signal.SIGHUP)  # refused by the master: no worker ever sees it
    wait_until(lambda: "config reload refused" in gateway.logs(), what="the refusal")
    wait_until(lambda: reloads("failure", 1), what="the master's refusal counted once")

    assert admin.post("/admin/reload", fresh=True).status_code == 400
    gateway.config.write_text(text)
    assert admin.post("/admin/reload", fresh=True).status_code == 200
    wait_until(lambda: gateway.logs().count("config reloaded") == 6, what="both workers")
    wait_until(lambda: reloads("success", 3) and reloads("failure", 2), what="admin reloads")


def workers_seen(admin: Admin, want: int) -> set[int]:
    """Distinct worker pids answering /healthz over fresh connections (bounded tries)."""
    pids: set[int] = set()

    def check() -> bool:
        pids.add(admin.get("/healthz", token=None, fresh=True).json()["pid"])
        return len(pids) >= want

    wait_until(check, timeout=20, what=f"{want} workers to answer")
    return pids


def test_metrics_disabled_or_no_admin_means_no_observer() -> None:
    base = '[upstreams.main]\ntargets = ["http://127.0.0.1:9"]\n[[routes]]\npath = "/"\n'
    base += 'upstream = "main"\n'
    disabled = '[admin]\nbind = "127.0.0.1:9901"\n[metrics]\nenabled = false\n' + base
    for text in (base, disabled):
        obs = Instruments(parse_config(tomllib.loads(text)))
        assert obs.observers == ()
        assert obs.metrics is None


@pytest.mark.parametrize("method", ["GET", "BREW", "X" * 100])
async def test_label_children_are_cached_and_bounded(method: str) -> None:
    """Per request: cached children, and a method token never becomes a label of its own."""
    metrics = GatewayMetrics(MetricsSettings(), "v1")
    observer = MetricsObserver(metrics)
    for _ in range(3):
        ctx = RequestContext({"method": method, "headers": []}, b"id", b"h", 0.0)
        ctx.status = 204
        observer.request_finished(ctx)
    assert len(observer._by_request) == 1
    ((_, label_method, _),) = observer._by_request
    assert label_method == (method if method == "GET" else "OTHER")
    text = metrics.exposition().decode()
    line = f'quartgate_requests_total{{method="{label_method}",route="(none)",status_class="2xx"}}'
    assert line + " 3.0" in text


async def test_each_app_has_its_own_registry() -> None:
    """Two apps in one process keep separate registries (no global state)."""
    a = MetricsObserver(GatewayMetrics(MetricsSettings(), "a"))
    b_metrics = GatewayMetrics(MetricsSettings(), "b")
    ctx = RequestContext({"method": "GET", "headers": []}, b"id", b"h", 0.0)
    ctx.status = 200
    a.request_finished(ctx)
    assert "quartgate_requests_total{" not in b_metrics.exposition().decode()
