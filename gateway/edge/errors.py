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
    """A request the gateway answers itself, with ``status`` and a machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = list(headers)


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
    """Map an upstream failure to the status Envoy and nginx would answer with."""
    if isinstance(error, PoolExhausted):
        return GatewayError(
            503, "upstream_busy", f"upstream {upstream!r}: {error}", [(b"retry-after", b"1")]
        )
    if isinstance(error, NoHealthyTarget):  # Envoy's "no healthy upstream"
        wait = b"%d" % error.retry_after
        return GatewayError(
            503, "no_healthy_upstream", f"upstream {upstream!r}: {error}", [(b"retry-after", wait)]
        )
    if isinstance(error, UpstreamOverloaded):  # the per-upstream cap on requests in flight
        return GatewayError(
            503, "upstream_overloaded", f"upstream {upstream!r}: {error}", [(b"retry-after", b"1")]
        )
    if isinstance(error, RouteTimeout):  # the route's deadline across all tries
        return GatewayError(504, "route_timeout", str(error))
    if isinstance(error, UpstreamTimeout):
        return GatewayError(504, "upstream_timeout", f"upstream {upstream!r}: {error}")
    if isinstance(error, UpstreamConnectError):
        return GatewayError(502, "upstream_unreachable", f"upstream {upstream!r}: {error}")
    if isinstance(error, UpstreamInvalidResponse):  # Envoy's "upstream protocol error"
        return GatewayError(502, "upstream_invalid_response", f"upstream {upstream!r}: {error}")
    if isinstance(error, UpstreamProtocolError):
        return GatewayError(502, "upstream_reset", f"upstream {upstream!r}: {error}")
    return GatewayError(502, "bad_gateway", f"upstream {upstream!r}: {error}")


def error_body(code: str, detail: str, request_id: str) -> bytes:
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
