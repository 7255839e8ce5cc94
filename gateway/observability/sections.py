"""``[admin]``, ``[metrics]``, ``[access_log]`` and ``[tracing]``: each setting declared once,
with its default and bound; gateway.config validates the tables against these declarations.

Each table is optional. A missing table means the feature is off and costs nothing per
request; ``[admin]`` is what turns on the admin bind (health, readiness, metrics, admin API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Final

from annotated_types import Gt, Interval

#: Request-duration buckets (seconds): from a fast in-datacenter hop to a slow upstream.
DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
ACCESS_LOG_FORMATS = ("json", "text")
#: ``[logging]``: the error log's level and line format.
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TRACING_EXPORTERS = ("otlp", "console", "none")


#: ``[admin] readiness``.
READINESS: Final = ("instance", "upstreams")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """``[admin]``: the private listener for probes, metrics and the admin API."""

    #: HOST:PORT of the admin listener; never one of the public binds.
    bind: str = "127.0.0.1:9901"
    #: Bearer token for ``/admin/*``; empty means the admin API is off (probes still work).
    token: str = field(default="", repr=False)
    #: What ``/readyz`` answers for: ``"instance"`` (this instance can serve: a config is
    #: loaded and it is not draining, as Kong's and Envoy's readiness mean) or
    #: ``"upstreams"`` (also every upstream has a healthy, undrained target).
    readiness: str = "instance"

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
    sample: Annotated[float, Interval(ge=0, le=1)] = 1.0
    #: Lines waiting to be written beyond this are dropped and counted.
    buffer: Annotated[int, Gt(0)] = 100_000
    #: How often the writer thread wakes to write what is queued (seconds).
    flush_interval: Annotated[float, Gt(0)] = 0.2


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
    sample: Annotated[float, Interval(ge=0, le=1)] = 1.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``[logging]``: the error log (standard error): quartgate's lines and the server's."""

    #: The least severe level written: "debug", "info", "warning" or "error".
    level: str = "info"
    #: "text" (one human-readable line) or "json" (one JSON object per line).
    format: str = "text"


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    logging: LoggingSettings = LoggingSettings()
    admin: AdminSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    access_log: AccessLogSettings | None = None
    tracing: TracingSettings | None = None
