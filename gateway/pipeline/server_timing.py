"""Where a proxied request's time went, up to its response head: the gateway's or the
upstream's (``Server-Timing``, docs/observability.md).

Measured once per proxied request, when the response head goes out (one ``perf_counter()``),
from what the request already carries: when it arrived (``ctx.start``), when its first try
was sent and how long the tries took to a head (``ctx.upstream_start``,
``ctx.upstream_time``), and from the response, the connect of the try that answered and,
after retries, when that try began. The parts add up to the time to the head, never
negative, because each is a stretch of one ``perf_counter()`` timeline cut at these marks:

- ``upstream``: the try that answered, from its send to its head (its connect included);
- ``upstream-connect``: of that, opening its connection (only when it opened one);
- ``retries``: the tries before it, their back-off included (only after retries);
- ``gateway``: the rest: edge checks, policies, reading a buffered body, the admission
  queue, building the head; everything that is the gateway's and not the upstream's;
- ``total``: the request's arrival to its head, the sum of the three (connect is inside
  ``upstream``).

They go to the access log and the ``quartgate_gateway_duration_seconds`` histogram always,
and into a ``Server-Timing`` response header when the route says so (W3C Server Timing:
``name;dur=milliseconds``; an upstream's own ``Server-Timing`` is kept beside it).
"""

from __future__ import annotations

from time import perf_counter

from gateway.edge.context import RequestContext
from upstreams.messages import UpstreamResponse


def measure(ctx: RequestContext, response: UpstreamResponse, now: float = 0.0) -> None:
    """Cut the request's time to its response head (``now``, default: this instant) into
    its parts, on ``ctx``."""
    now = now or perf_counter()
    ctx.head_time = now - ctx.start
    ctx.gateway_time = max(0.0, ctx.head_time - ctx.upstream_time)
    if response.answered_try_at:
        ctx.retry_time = max(0.0, response.answered_try_at - ctx.upstream_start)
    ctx.connect_time = response.connect_time


def header(ctx: RequestContext) -> tuple[bytes, bytes]:
    """The ``Server-Timing`` header of what :func:`measure` found."""
    retry = ctx.retry_time
    parts = [
        b"gateway;dur=%.2f" % (ctx.gateway_time * 1000),
        b"upstream;dur=%.2f" % ((ctx.upstream_time - retry) * 1000),
    ]
    if ctx.connect_time:
        parts.append(b"upstream-connect;dur=%.2f" % (ctx.connect_time * 1000))
    if ctx.retries:
        parts.append(b'retries;dur=%.2f;desc="%d"' % (retry * 1000, ctx.retries))
    parts.append(b"total;dur=%.2f" % (ctx.head_time * 1000))
    return b"server-timing", b", ".join(parts)
