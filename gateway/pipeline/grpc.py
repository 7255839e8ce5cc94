"""gRPC at the edge (docs/grpc.md): what the gateway does differently when a request's
``content-type`` is ``application/grpc`` (or ``application/grpc+proto``, ...).

gRPC carries its outcome in trailers (``grpc-status``, ``grpc-message``), which reach a
client only over HTTP/2 on the Hypercorn engine (ASGI's ``http.response.trailers``). So:

- **Relay.** An HTTP/2 upstream's trailers follow the body to the client. A trailers-only
  answer (one HEADERS frame with END_STREAM: how grpcio reports an error before any
  message; a head with ``grpc-status``) is sent as a head with ``content-type`` and the
  gateway's own headers, then
  the upstream's metadata as trailers: Hypercorn cannot end a stream on its first HEADERS
  frame, and a gRPC client reads the status from the trailers either way. An upstream
  that ends a gRPC response without ``grpc-status`` gets one for it: INTERNAL.
- **Errors the gateway makes** (no route, auth, limits, a dead or slow upstream) are HTTP
  200 with ``grpc-status`` and ``grpc-message`` instead of a JSON body (a gRPC client reads
  an HTTP 404 or 503 as a bare UNIMPLEMENTED or UNAVAILABLE and loses the cause).
"""

from __future__ import annotations

from typing import Final

from gateway.asgi_types import Scope, Send
from gateway.edge.context import RequestContext

Headers = list[tuple[bytes, bytes]]

#: gRPC status codes (grpc/doc/statuscodes.md).
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
DEADLINE_EXCEEDED: Final = 4
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16

#: The HTTP status of an error the gateway answers -> the gRPC status it becomes. 429 and
#: 413 are RESOURCE_EXHAUSTED (a quota, a message too large), 504 DEADLINE_EXCEEDED; the
#: rest as gRPC's own HTTP mapping (grpc/doc/http-grpc-status-mapping.md) has them.
FROM_HTTP: Final = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    405: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: RESOURCE_EXHAUSTED,
    431: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

NO_STATUS: Final = [
    (b"grpc-status", b"%d" % INTERNAL),
    (b"grpc-message", b"upstream ended the response without grpc-status"),
]


def is_grpc(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.startswith(b"application/grpc")


def content_type(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == b"content-type":
            return value
    return None


def trailers_only(headers: Headers) -> bool:
    """A head with ``grpc-status`` is gRPC's Trailers-Only answer, whether or not the
    stream's end came in the same frame."""
    return any(name == b"grpc-status" for name, _ in headers)


def split_trailers_only(upstream: Headers) -> tuple[Headers, Headers]:
    """A trailers-only answer's headers as (head, trailers): its ``content-type`` heads the
    response, the rest (``grpc-status``, ``grpc-message``, metadata) is trailing metadata."""
    head = [(n, v) for n, v in upstream if n == b"content-type"]
    trailers = [(n, v) for n, v in upstream if n != b"content-type"]
    return head, trailers if any(n == b"grpc-status" for n, _ in trailers) else trailers + NO_STATUS


def with_status(trailers: Headers) -> Headers:
    """An upstream's trailers, with ``grpc-status`` INTERNAL when it sent none."""
    if any(name == b"grpc-status" for name, _ in trailers):
        return trailers
    return trailers + NO_STATUS


def message(text: str) -> bytes:
    """``grpc-message``: percent-encoded UTF-8 outside printable ASCII (the gRPC spec)."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def is_grpc_request(scope: Scope) -> bool:
    """The request says it is a gRPC call (its ``content-type``)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.startswith(b"application/grpc"))
    return False


def takes_trailers(scope: Scope) -> bool:
    """The client can be sent trailers: HTTP/2 on Hypercorn, and it sent ``te: trailers``."""
    if "http.response.trailers" not in scope.get("extensions", ()):
        return False
    return any(n == b"te" and b"trailers" in v.lower() for n, v in scope["headers"])


def status_of(http_status: int) -> int:
    return FROM_HTTP.get(http_status, UNAVAILABLE if http_status >= 500 else UNKNOWN)


def status(code: int, text: str) -> Headers:
    """The trailers of a call the gateway ends with ``code``."""
    return [(b"grpc-status", b"%d" % code), (b"grpc-message", message(text))]


async def send_trailers(send: Send, ctx: RequestContext, trailers: Headers) -> None:
    """End a relayed call with ``trailers``; its ``grpc-status`` goes to the access log."""
    for name, value in trailers:
        if name == b"grpc-status":
            ctx.grpc_status = int(value) if value.isdigit() else UNKNOWN
            break
    await send({"type": "http.response.trailers", "headers": trailers})


async def send_status(send: Send, scope: Scope, code: int, text: str, headers: Headers) -> None:
    """Answer a gRPC call with ``code`` and no message: HTTP 200, ``content-type``
    ``application/grpc``, the status in trailers (or, for a client that cannot take
    trailers, in the head, as a trailers-only answer)."""
    end = status(code, text)
    head = [(b"content-type", b"application/grpc"), *headers]
    if takes_trailers(scope):
        await send(
            {"type": "http.response.start", "status": 200, "headers": head, "trailers": True}
        )
        await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": end})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": head + end})
        await send({"type": "http.response.body", "body": b""})


_UNITS: Final = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def call_deadline(scope: Scope) -> float:
    """A gRPC call's ``grpc-timeout`` in seconds (``100m``: 0.1); 0.0 when it has none or
    it is malformed (1-8 digits and a unit, the gRPC spec)."""
    for name, value in scope["headers"]:
        if name == b"grpc-timeout":
            digits, unit = value[:-1], value[-1:]
            if 0 < len(digits) <= 8 and digits.isdigit() and unit in _UNITS:
                return int(digits) * _UNITS[unit]
            return 0.0
    return 0.0
