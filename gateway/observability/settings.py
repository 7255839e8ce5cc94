"""``[admin]``, ``[metrics]``, ``[access_log]`` and ``[tracing]``: typed, validated once.

Each table is optional. A missing table means the feature is off and costs nothing per
request; ``[admin]`` is what turns on the admin bind (health, readiness, metrics, admin API).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import ConfigReader

#: Request-duration buckets (seconds): from a fast in-datacenter hop to a slow upstream.
DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
ACCESS_LOG_FORMATS = ("json", "text")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """``[admin]``: the private listener for probes, metrics and the admin API."""

    #: HOST:PORT of the admin listener; never one of the public binds.
    bind: str = "127.0.0.1:9901"
    #: Bearer token for ``/admin/*``; empty means the admin API is off (probes still work).
    token: str = field(default="", repr=False)

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``[metrics]``: Prometheus metrics on the admin listener's ``/metrics``."""

    enabled: bool = True
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    """``[access_log]``: one line per request, written by a background thread."""

    #: A file (appended to, reopened when rotated) or "-" for standard output.
    path: str = "-"
    format: str = "json"
    #: Share of requests logged with status < 500 (0..1); 5xx are always logged.
    sample: float = 1.0
    #: Lines waiting to be written beyond this are dropped and counted.
    buffer: int = 100_000
    #: How often the writer thread wakes to write what is queued (seconds).
    flush_interval: float = 0.2


#: quartgate is not on a package index: the extra installs from the checkout.
OTEL_MISSING = "needs OpenTelemetry: in the quartgate checkout, pip install -e '.[otel]'"


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """``[tracing]``: OpenTelemetry spans (needs the ``otel`` extra: ``pip install '.[otel]'``)."""

    service_name: str = "quartgate"
    #: "otlp" (the OTLP/HTTP exporter, configured by the OTEL_EXPORTER_OTLP_* variables),
    #: "console", or "none" (spans made but not exported: for an SDK set up elsewhere).
    exporter: str = "otlp"
    #: Share of new traces sampled; a sampled incoming ``traceparent`` is always followed.
    sample: float = 1.0


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    admin: AdminSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    access_log: AccessLogSettings | None = None
    tracing: TracingSettings | None = None


def parse_observability(reader: ConfigReader, data: dict[str, Any]) -> ObservabilitySettings:
    """Pop and validate the observability tables from the top level of a config."""
    admin = _admin(reader, data.pop("admin")) if "admin" in data else None
    metrics = _metrics(reader, data.pop("metrics", {}))
    access_log = _access_log(reader, data.pop("access_log")) if "access_log" in data else None
    tracing = _tracing(reader, data.pop("tracing")) if "tracing" in data else None
    if tracing is not None:
        try:
            import opentelemetry.sdk  # noqa: F401
        except ImportError:
            reader.problem("tracing", OTEL_MISSING)
    return ObservabilitySettings(admin, metrics, access_log, tracing)


def _admin(reader: ConfigReader, raw: Any) -> AdminSettings | None:
    table = reader.table(raw, "admin")
    if table is None:
        return None
    d = AdminSettings()
    bind = reader.take(table, "admin", "bind", str, d.bind, _host_port)
    token = reader.take(table, "admin", "token", str, "")
    token_env = reader.take(table, "admin", "token_env", str, "")
    reader.leftovers(table, "admin")
    if token and token_env:
        reader.problem("admin.token_env", "give either token or token_env, not both")
    elif token_env:
        # Read once, at load, like every other setting: the config object is the truth after.
        token = os.environ.get(token_env, "")
        if not token:
            reader.problem("admin.token_env", f"environment variable {token_env} is empty")
    if token and len(token) < 16:
        reader.problem("admin.token", "must be at least 16 characters")
    return AdminSettings(bind, token)


def _metrics(reader: ConfigReader, raw: Any) -> MetricsSettings:
    table = reader.table(raw, "metrics")
    if table is None:
        return MetricsSettings()
    d = MetricsSettings()
    enabled = reader.take(table, "metrics", "enabled", bool, d.enabled)
    buckets = reader.take(table, "metrics", "buckets", list, list(d.buckets), _buckets)
    reader.leftovers(table, "metrics")
    return MetricsSettings(enabled, tuple(float(b) for b in buckets))


def _access_log(reader: ConfigReader, raw: Any) -> AccessLogSettings | None:
    table = reader.table(raw, "access_log")
    if table is None:
        return None
    d = AccessLogSettings()
    p = "access_log"
    settings = AccessLogSettings(
        path=reader.take(table, p, "path", str, d.path, _not_empty),
        format=reader.take(table, p, "format", str, d.format, _one_of(ACCESS_LOG_FORMATS)),
        sample=reader.take(table, p, "sample", float, d.sample, _ratio),
        buffer=reader.take(table, p, "buffer", int, d.buffer, _positive),
        flush_interval=reader.take(table, p, "flush_interval", float, d.flush_interval, _positive),
    )
    reader.leftovers(table, p)
    return settings


def _tracing(reader: ConfigReader, raw: Any) -> TracingSettings | None:
    table = reader.table(raw, "tracing")
    if table is None:
        return None
    d = TracingSettings()
    settings = TracingSettings(
        service_name=reader.take(table, "tracing", "service_name", str, d.service_name, _not_empty),
        exporter=reader.take(
            table, "tracing", "exporter", str, d.exporter, _one_of(("otlp", "console", "none"))
        ),
        sample=reader.take(table, "tracing", "sample", float, d.sample, _ratio),
    )
    reader.leftovers(table, "tracing")
    return settings


def _host_port(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT with a port from 1 to 65535"
    return None


def _buckets(value: list[Any]) -> str | None:
    ok = value and all(isinstance(b, int | float) and not isinstance(b, bool) for b in value)
    if (
        not ok
        or any(b <= 0 for b in value)
        or sorted(value) != value
        or len(set(value)) < len(value)
    ):
        return "must be a non-empty, strictly increasing list of positive numbers"
    return None


def _ratio(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check
