"""OpenTelemetry: one SERVER span per request, a CLIENT child for the upstream, parented by
the incoming traceparent; exported to the SDK's in-memory exporter."""

from __future__ import annotations

import tomllib

import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from gateway.app import create_app
from gateway.config import parse_config
from tests.support.upstream import UpstreamServer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def test_spans_follow_the_incoming_traceparent(upstream: UpstreamServer) -> None:
    text = f"""
[tracing]
exporter = "none"

[upstreams.main]
targets = ["{upstream.url}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
"""
    app = create_app(parse_config(tomllib.loads(text), "test.toml"))
    tracing = app.extensions["quartgate.observability"].tracing
    exporter = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    await app.startup()
    try:
        await _exchange(transport)
    finally:
        await app.shutdown()  # closes the upstream pools and the tracer provider

    spans = exporter.get_finished_spans()
    client_span = next(s for s in spans if s.kind is SpanKind.CLIENT)
    server = next(s for s in spans if s.kind is SpanKind.SERVER and s.name == "GET api")
    assert format(server.context.trace_id, "032x") == TRACE
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/api"
    assert client_span.parent is not None
    assert client_span.parent.span_id == server.context.span_id
    assert client_span.context.trace_id == server.context.trace_id
    assert client_span.start_time is not None and server.start_time is not None
    assert client_span.end_time is not None and server.end_time is not None
    assert server.start_time <= client_span.start_time <= client_span.end_time <= server.end_time
    # The upstream saw the same trace, with the CLIENT span as its parent.
    sent = [r for r in upstream.requests if r.target == "/api/otel-trace"][-1]
    _, trace_id, parent_id, _ = dict(sent.headers)["traceparent"].split("-")
    assert trace_id == TRACE
    assert parent_id == format(client_span.context.span_id, "016x")
    unmatched = [s for s in spans if s.kind is SpanKind.SERVER and s.name == "GET"]
    assert len(unmatched) == 1
    assert unmatched[0].parent is None  # no traceparent came: a new trace


async def _exchange(transport: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.get(
            "/api/otel-trace", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
        )
        assert response.status_code == 200
        missing = await client.get("/nowhere")
        assert missing.status_code == 404
