"""Failures as values with a status, and the one place they become JSON responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from gateway.asgi_types import Send
from upstreams.errors import (
    NoHealthyTarget,
    PoolExhausted,
    RouteTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamTimeout,
)

log = logging.getLogger("quartgate")


class GatewayError(Exception):
    """A request the gateway answers itself, with ``status`` and a machine-readable ``code``.

    ``detail`` goes to the client; ``log_detail``, when given, to the log line instead (an
    upstream failure names the target's address there, never in the response).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        log_detail: str | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = list(headers)
        self.log_detail = log_detail if log_detail is not None else detail
        if quiet:
            self.quiet = True

    #: Logged at debug, not as a warning per request: a refusal whose episode is logged
    #: once elsewhere (load shedding, gateway/ops/loop_lag.py; the adaptive limiter).
    quiet = False


class Shed(GatewayError):
    """A request refused because the worker is overloaded (its episode is logged once)."""

    quiet = True


class Reply(Exception):
    """A response a policy gives itself, not an error (a CORS preflight, for instance)."""

    def __init__(
        self, status: int, headers: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers = list(headers)
        self.body = body


class ClientDisconnected(Exception):
    """The client went away; there is nobody to answer."""


def from_upstream(error: UpstreamError, upstream: str) -> GatewayError:
    """Map an upstream failure to the status Envoy and nginx would answer with.

    The client reads the upstream's name and the kind of failure (``error.public``); the
    log line also has the target's address (``str(error)``, ``sent_to``).
    """
    status, code, retry_after = _upstream_status(error)
    if isinstance(error, RouteTimeout):  # its text already names the upstream
        detail, logged = error.public, str(error)
    else:
        detail = f"upstream {upstream!r}: {error.public}"
        logged = f"upstream {upstream!r}: {error}"
    if error.sent_to and error.sent_to not in logged:
        logged += f" (target {error.sent_to})"
    headers = [(b"retry-after", retry_after)] if retry_after is not None else []
    quiet = isinstance(error, UpstreamOverloaded) and error.summarised
    return GatewayError(status, code, detail, headers, log_detail=logged, quiet=quiet)


def _upstream_status(error: UpstreamError) -> tuple[int, str, bytes | None]:
    """``(status, code, Retry-After)`` of an upstream failure."""
    if isinstance(error, PoolExhausted):
        return 503, "upstream_busy", b"1"
    if isinstance(error, NoHealthyTarget):  # Envoy's "no healthy upstream"
        return 503, "no_healthy_upstream", b"%d" % error.retry_after
    if isinstance(error, UpstreamOverloaded):  # the per-upstream cap on requests in flight
        return 503, "upstream_overloaded", b"1"
    if isinstance(error, RouteTimeout):  # the route's deadline across all tries
        return 504, "route_timeout", None
    if isinstance(error, UpstreamTimeout):
        return 504, "upstream_timeout", None
    if isinstance(error, UpstreamConnectError):
        return 502, "upstream_unreachable", None
    if isinstance(error, UpstreamInvalidResponse):  # Envoy's "upstream protocol error"
        return 502, "upstream_invalid_response", None
    if isinstance(error, UpstreamProtocolError):
        return 502, "upstream_reset", None
    return 502, "bad_gateway", None


def error_body(code: str, detail: str, request_id: str) -> bytes:
    """The JSON error body. A refusal the server writes before the app (a head that timed
    out, one the parser refused) has no request id: the key is left out, not empty."""
    if not request_id:
        return json.dumps({"error": code, "detail": detail}).encode()
    return json.dumps({"error": code, "detail": detail, "request_id": request_id}).encode()


async def send_error(
    send: Send, error: GatewayError, request_id: str, id_header: bytes = b"x-request-id"
) -> None:
    body = error_body(error.code, error.detail, request_id)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (id_header, request_id.encode("latin-1")),
        *error.headers,
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
