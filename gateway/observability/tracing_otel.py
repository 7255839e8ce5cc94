"""OpenTelemetry tracing (optional: the ``otel`` extra, ``pip install -e '.[otel]'``).

One SERVER span per request, parented by the incoming ``traceparent``, and one CLIENT child
span for the upstream exchange. Both are made when the request has finished, from the times
the request context recorded, so tracing adds no await and no work before the response; the
SDK's batch processor exports them from its own thread.

The proxy records the ``traceparent`` it sent upstream in ``ctx.traceparent`` (W3C
propagation, ``[gateway] traceparent``): the CLIENT span takes that span id, and a trace
the gateway started takes that trace id, so the upstream's own spans hang under the CLIENT
span. This module is imported only when ``[tracing]`` is configured.
"""

from __future__ import annotations

import random
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.edge.context import RequestContext
from gateway.observability.sections import TracingSettings
from gateway.version import __version__

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class _PresetIds(IdGenerator):
    """Random ids, except ids set just before a span is started (see module doc)."""

    def __init__(self) -> None:
        self.next_span_id: int | None = None
        self.next_trace_id: int | None = None

    def generate_span_id(self) -> int:
        preset = self.next_span_id
        if preset is not None:
            self.next_span_id = None
            return preset
        return random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        preset = self.next_trace_id
        if preset is not None:
            self.next_trace_id = None
            return preset
        return random.getrandbits(128) or 1


class TracingObserver:
    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        self._ids = _PresetIds()
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": settings.service_name, "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(settings.sample)),
            id_generator=self._ids,
        )
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif settings.exporter == "console":
            self.provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        self.tracer = self.provider.get_tracer("quartgate", __version__)

    def request_finished(self, ctx: RequestContext) -> None:
        loop_now = time.perf_counter()
        now_ns = time.time_ns()

        def wall(moment: float) -> int:
            return now_ns - int((loop_now - moment) * 1e9)

        scope = ctx.scope
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in _TRACE_HEADERS:
                carrier[name.decode("ascii")] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        sent = _sent_traceparent(ctx)
        if sent is not None and not trace.get_current_span(parent).get_span_context().is_valid:
            self._ids.next_trace_id = _hex(sent[3:35])  # the trace the proxy started
        method = scope["method"]
        route = ctx.route.name if ctx.route is not None else ""
        span = self.tracer.start_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=wall(ctx.start),
            attributes=_server_attributes(ctx, route),
        )
        self._ids.next_trace_id = None
        if span.is_recording() and ctx.upstream_start:
            self._ids.next_span_id = _hex(sent[36:52]) if sent is not None else None
            self._upstream_span(ctx, span, wall)
        if ctx.status >= 500 or ctx.status == 0:
            span.set_status(Status(StatusCode.ERROR, ctx.error or None))
        span.end(end_time=now_ns)

    def _upstream_span(self, ctx: RequestContext, parent: trace.Span, wall: Any) -> None:
        attributes: dict[str, Any] = {"quartgate.upstream": ctx.upstream}
        if ctx.upstream_target:
            attributes["url.full"] = ctx.upstream_target + ctx.scope["raw_path"].decode("latin-1")
        if ctx.retries:
            attributes["http.request.resend_count"] = ctx.retries
        child = self.tracer.start_span(
            f"{ctx.scope['method']} {ctx.upstream}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            start_time=wall(ctx.upstream_start),
            attributes=attributes,
        )
        self._ids.next_span_id = None
        if ctx.error.startswith("upstream") or ctx.error == "no_healthy_upstream":
            child.set_status(Status(StatusCode.ERROR, ctx.error))
        elif ctx.status:
            child.set_attribute("http.response.status_code", ctx.status)
        child.end(end_time=wall(ctx.upstream_start + ctx.upstream_time))

    def close(self) -> None:
        self.provider.shutdown()


def _server_attributes(ctx: RequestContext, route: str) -> dict[str, Any]:
    scope = ctx.scope
    attributes: dict[str, Any] = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope["scheme"],
        "http.response.status_code": ctx.status,
        "client.address": ctx.client_ip,
        "network.protocol.version": scope.get("http_version", "1.1"),
        "quartgate.request_id": ctx.request_id.decode("ascii", "replace"),
    }
    if route:
        attributes["http.route"] = ctx.route.spec.path if ctx.route is not None else route
        attributes["quartgate.route"] = route
    if ctx.error:
        attributes["error.type"] = ctx.error
    return attributes


def _sent_traceparent(ctx: RequestContext) -> bytes | None:
    sent = getattr(ctx, "traceparent", None)
    if isinstance(sent, bytes) and len(sent) >= 55 and _hex(sent[3:35]) and _hex(sent[36:52]):
        return sent
    return None


def _hex(value: bytes) -> int | None:
    try:
        return int(value, 16) or None
    except ValueError:
        return None
