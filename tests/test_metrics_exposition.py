"""What a scrape of /metrics actually carries: the content type docs/observability.md names,
and no ``_created`` series, dropped per app without touching prometheus-client's global
switch."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client import CollectorRegistry, Counter, generate_latest

from gateway.edge.context import RequestContext
from gateway.observability.metrics import GatewayMetrics, MetricsObserver
from gateway.observability.sections import MetricsSettings
from tests.support.gateway import ROOT, GatewayProcess
from tests.support.observability import Admin
from tests.support.upstream import UpstreamServer

Start = Callable[..., GatewayProcess]


def test_a_real_scrape_sends_the_documented_format_without_created_series(
    make_gateway: Start, upstream: UpstreamServer
) -> None:
    admin = Admin()
    text = admin.section() + (
        f'[upstreams.main]\ntargets = ["{upstream.url}"]\n'
        '[[routes]]\nname = "api"\npath = "/api"\nupstream = "main"\n'
    )
    gateway = make_gateway(text)
    assert httpx.get(gateway.url + "/api/ok", timeout=30).status_code == 200
    assert httpx.get(gateway.url + "/nowhere", timeout=30).status_code == 404

    response = admin.get("/metrics", token=None)
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type == "text/plain; version=1.0.0; charset=utf-8"
    assert f"`{content_type}`" in (ROOT / "docs" / "observability.md").read_text()
    body = response.text
    assert 'quartgate_requests_total{method="GET",route="api",status_class="2xx"} 1.0' in body
    assert 'quartgate_request_duration_seconds_count{route="api"} 1.0' in body
    assert "_created" not in body


def test_created_series_are_dropped_for_this_app_only() -> None:
    metrics = GatewayMetrics(MetricsSettings(), "v1")
    MetricsObserver(metrics).request_finished(_finished_request())
    exposition = metrics.exposition().decode()
    assert "quartgate_requests_total{" in exposition
    assert "quartgate_request_duration_seconds_bucket{" in exposition
    assert "_created" not in exposition

    # Another registry in the same process still gets prometheus-client's default.
    other = CollectorRegistry()
    Counter("elsewhere", "A counter outside the gateway.", registry=other).inc()
    assert "elsewhere_created " in generate_latest(other).decode()


def _finished_request() -> RequestContext:
    ctx = RequestContext({"method": "GET", "headers": []}, b"id", b"h", 0.0)
    ctx.status = 200
    return ctx
