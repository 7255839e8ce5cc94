"""The gateway's own refusals of a malformed or oversized request: one table, one builder.

Three places refuse a request before any route is chosen: the edge checks in the request
path (gateway/edge/checks.py, on every engine), the Hypercorn guard (what h11 and Hypercorn
refuse or time out themselves, gateway/server/protocol_guard.py) and the uvicorn engine's
protocol (what httptools refuses, gateway/server/uvicorn_http.py). Each takes its status,
machine-readable code, reason phrase and default wording from :data:`REFUSALS`, and the
servers' raw HTTP/1.1 answers are built by :func:`raw_response` from the same JSON body as
every other error (:func:`gateway.edge.errors.error_body`), so a client reads one shape
whichever layer refused it. docs/hardening.md lists each with the test that provokes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gateway.edge.errors import GatewayError, Shed, error_body

CLOSE: Final = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class Refusal:
    """One kind of refusal: the answer's status, code, reason phrase and usual wording."""

    status: int
    code: str
    reason: str
    detail: str

    def error(
        self, detail: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> GatewayError:
        """The refusal as the request path raises it (error mapping answers it)."""
        return GatewayError(self.status, self.code, detail or self.detail, headers)

    def shed(self) -> Shed:
        """The refusal of a request shed under overload: ``Retry-After: 1``, logged quietly."""
        return Shed(self.status, self.code, self.detail, [(b"retry-after", b"1")])


BAD_REQUEST: Final = Refusal(
    400, "bad_request", "Bad Request", "malformed HTTP/1.1 request (refused by the HTTP parser)"
)
HEADER_TIMEOUT: Final = Refusal(
    408, "request_header_timeout", "Request Timeout", "no complete request head in time"
)
BODY_TIMEOUT: Final = Refusal(
    408, "request_timeout", "Request Timeout", "the request body stopped arriving"
)
PAYLOAD_TOO_LARGE: Final = Refusal(
    413, "payload_too_large", "Content Too Large", "request body too large"
)
HEAD_TOO_LARGE: Final = Refusal(
    431, "headers_too_large", "Request Header Fields Too Large", "request head too large"
)
TOO_MANY_HEADERS: Final = Refusal(
    431, "too_many_headers", "Request Header Fields Too Large", "too many headers"
)
METHOD_NOT_IMPLEMENTED: Final = Refusal(
    501, "method_not_implemented", "Not Implemented", "unknown request method"
)
GATEWAY_OVERLOADED: Final = Refusal(
    503,
    "gateway_overloaded",
    "Service Unavailable",
    "the gateway is overloaded (its event loop is behind); retry shortly",
)
CODING_NOT_IMPLEMENTED: Final = Refusal(
    501, "not_implemented", "Not Implemented", "transfer coding not implemented (only chunked is)"
)
WEBSOCKET_NOT_SUPPORTED: Final = Refusal(
    501, "websocket_not_supported", "Not Implemented", "the route does not proxy WebSockets"
)

#: Every refusal above, by code: what the docs and tests enumerate.
REFUSALS: Final = {
    r.code: r
    for r in (
        BAD_REQUEST,
        HEADER_TIMEOUT,
        BODY_TIMEOUT,
        PAYLOAD_TOO_LARGE,
        HEAD_TOO_LARGE,
        TOO_MANY_HEADERS,
        METHOD_NOT_IMPLEMENTED,
        CODING_NOT_IMPLEMENTED,
        WEBSOCKET_NOT_SUPPORTED,
        GATEWAY_OVERLOADED,
    )
}

#: A server's own refusal of a status the table lacks is answered as a 400.
_BY_STATUS: Final = {400: BAD_REQUEST, 431: HEAD_TOO_LARGE, 501: CODING_NOT_IMPLEMENTED}


def for_status(status: int) -> Refusal:
    """The refusal a server's parser meant by ``status`` (h11: 400, 431 or 501)."""
    return _BY_STATUS.get(status, BAD_REQUEST)


def raw_response(refusal: Refusal, detail: str | None = None, request_id: str = "") -> bytes:
    """The whole HTTP/1.1 answer a server writes itself, then it closes the connection."""
    body = error_body(refusal.code, detail or refusal.detail, request_id)
    head = b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        refusal.status,
        refusal.reason.encode("ascii"),
        len(body),
    )
    return head + b"connection: close\r\n\r\n" + body


def headers_for(body: bytes) -> list[tuple[bytes, bytes]]:
    """Response headers of a JSON refusal body that closes the connection."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        CLOSE,
    ]
