"""The live dashboard on the admin listener: ``GET /dashboard`` (docs/console.md).

Three static files in the package (``gateway/ops/static/``: the page, its script and its
style; no build step, nothing fetched from elsewhere) and one JSON document,
``GET /dashboard/data``, that the page polls once a second. The data is the gateway's own
Prometheus metrics read back as a scrape reads them (:meth:`GatewayMetrics.families`), so
with several workers it is their sum whichever worker answers, the same numbers
``/metrics`` gives; the names of routes and upstreams come from the config in force. The
document holds running totals and histogram buckets, not rates: the page takes the
difference of two polls for requests/s and the p50/p99 of the last second (as Prometheus's
``rate`` and ``histogram_quantile`` do), so no worker keeps a window for it.

Read-only without a token, as ``/metrics`` is. The page's actions (reload, drain or
undrain a target) are calls to the admin API with the token the operator types in; the
page holds it for the browser tab only (``sessionStorage``) and sends it as a bearer header,
never a cookie, so another site cannot make the browser act with it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

from gateway.observability.metrics import NO_ROUTE

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gateway.state import GatewayState

#: path -> (file in gateway/ops/static, content type)
FILES = {
    "/dashboard": ("dashboard.html", b"text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}
DATA = "/dashboard/data"
#: Same-origin scripts and styles only, never framed: the page runs nothing it did not serve.
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def static_files() -> dict[str, tuple[bytes, bytes]]:
    """path -> (content type, body), read from the package once."""
    folder = resources.files("gateway.ops") / "static"
    return {path: (kind, (folder / name).read_bytes()) for path, (name, kind) in FILES.items()}


def snapshot(families: Iterable[Metric], state: GatewayState, version: str) -> dict[str, Any]:
    """The dashboard's data: running totals by route and by upstream and target."""
    samples: Samples = defaultdict(list)
    for family in families:
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    names = [spec.name for spec in state.config.routes]  # in the config's order
    if any(labels.get("route") == NO_ROUTE for labels, _ in samples["quartgate_requests_total"]):
        names.append(NO_ROUTE)  # requests no route matched (404s) have a row too
    routes = [
        {
            "name": name,
            "requests": _sum(samples, "quartgate_requests_total", route=name),
            "status": _by(samples, "quartgate_requests_total", "status_class", route=name),
            "errors": _by(samples, "quartgate_gateway_errors_total", "code", route=name),
            "duration": _histogram(samples, "quartgate_request_duration_seconds", name),
            "upstream": _histogram(samples, "quartgate_upstream_duration_seconds", name),
            "gateway": _histogram(samples, "quartgate_gateway_duration_seconds", name),
        }
        for name in names
    ]
    upstreams = [_upstream(samples, name) for name in state.upstreams]
    upstreams += [
        {"name": name, "kind": "app", "targets": []} for name in state.config.app_upstreams
    ]
    reloads = _by(samples, "quartgate_config_reloads_total", "result")
    config = next((labels for labels, v in samples["quartgate_config_info"] if v == 1), {})
    return {
        "time": time.time(),
        "version": version,
        "config": {
            "version": config.get("version", ""),
            "source": config.get("source", ""),
            "loaded_at": _one(samples, "quartgate_config_last_reload_success_timestamp_seconds"),
            "reloads": {result: int(count) for result, count in reloads.items()},
        },
        "ready": _one(samples, "quartgate_ready") == 1,
        "loop_lag": _one(samples, "quartgate_event_loop_lag_seconds"),
        "routes": routes,
        "upstreams": upstreams,
    }


def _upstream(samples: Samples, name: str) -> dict[str, Any]:
    targets: dict[str, dict[str, Any]] = {}

    def target(url: str) -> dict[str, Any]:
        found = targets.get(url)
        if found is None:
            found = targets[url] = {"url": url, "healthy": True, "drained": False}
            found |= {"breaker": None, "in_use": 0, "idle": 0, "waiting": 0}
        return found

    for labels, value in samples["quartgate_upstream_target_healthy"]:
        if labels.get("upstream") == name:
            target(labels["target"])["healthy"] = value == 1
    for labels, value in samples["quartgate_upstream_target_drained"]:
        if labels.get("upstream") == name:
            target(labels["target"])["drained"] = value == 1
    for labels, value in samples["quartgate_upstream_circuit_breaker_state"]:
        if labels.get("upstream") == name and value == 1:
            target(labels["target"])["breaker"] = labels["state"]
    for labels, value in samples["quartgate_upstream_connections"]:
        if labels.get("upstream") == name:
            target(labels["target"])[labels["state"]] = int(value)
    limit = _sum(samples, "quartgate_upstream_concurrency_limit", upstream=name, default=None)
    return {
        "name": name,
        "kind": "http",
        "responses": _by(samples, "quartgate_upstream_responses_total", "status", upstream=name),
        "concurrency": None
        if limit is None
        else {
            "limit": limit,
            "in_flight": _sum(samples, "quartgate_upstream_concurrency_in_flight", upstream=name),
            "queued": _sum(samples, "quartgate_upstream_concurrency_queued", upstream=name),
            "refused": _sum(samples, "quartgate_upstream_concurrency_refused_total", upstream=name),
        },
        "targets": sorted(targets.values(), key=lambda t: str(t["url"])),
    }


def _matching(
    samples: Samples, name: str, labels: dict[str, str]
) -> Iterable[tuple[dict[str, str], float]]:
    for found, value in samples.get(name, ()):
        if all(found.get(key) == want for key, want in labels.items()):
            yield found, value


def _sum(samples: Samples, name: str, default: float | None = 0, **labels: str) -> Any:
    values = [value for _, value in _matching(samples, name, labels)]
    return sum(values) if values else default


def _by(samples: Samples, name: str, key: str, **labels: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for found, value in _matching(samples, name, labels):
        totals[found[key]] += value
    return dict(sorted(totals.items()))


def _one(samples: Samples, name: str) -> float | None:
    values = [value for _, value in samples.get(name, ())]
    return max(values) if values else None


def _histogram(samples: Samples, name: str, route: str) -> dict[str, Any]:
    """Cumulative bucket counts of one route (summed over any other label), ``+Inf`` last."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in _matching(samples, name + "_bucket", {"route": route}):
        buckets[float(labels["le"])] += value
    bounds = sorted(buckets)
    return {
        "le": [bound if math.isfinite(bound) else None for bound in bounds],  # None: +Inf
        "counts": [buckets[bound] for bound in bounds],
        "sum": _sum(samples, name + "_sum", route=route),
    }
