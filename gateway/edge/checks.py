"""Checks that give every request exactly one meaning, on every server engine.

The server's parser (h11 under Hypercorn, httptools under uvicorn) lets through things
that different hops read differently. Each is refused here, before routing, so the route
is always chosen from what the upstream will receive:

- framing: ``Content-Length`` with ``Transfer-Encoding`` (RFC 9112 6.1), a
  ``Content-Length`` that is not one plain number, ``Transfer-Encoding`` in HTTP/1.0 or
  other than ``chunked``. The answer carries ``Connection: close`` (HTTP/1.x) so the
  server closes the connection and nothing after the request is parsed as another one;
- a request-target with ``#`` (a fragment is never sent; upstreams that drop it would act on
  another path than the one matched) or with bytes outside visible ASCII (an HTTP/2
  ``:path`` can carry spaces, tabs and control characters that would split an HTTP/1.1
  request line);
- control characters (0x00-0x1F except HTAB, and 0x7F) in header values, which h11 and
  HTTP/2 let through and an upstream may cut a header at;
- a Host (or HTTP/2 ``:authority``) that is not ``host[:port]`` (RFC 9110 7.2: a name of
  letters, digits and ``-._~!$&'()*+,;=``, or a bracketed IPv6 address): ``user@admin.test``,
  ``admin.test#x``, ``admin\\.test`` or a non-ASCII byte miss a host route and would reach
  another route's upstream in ``X-Forwarded-Host``, where a URL parser may read them as
  ``admin.test``. ``%`` is refused too (no upstream needs a percent-encoded host name).

:class:`EdgeChecks` is the stage that runs them all, after the header scan
(gateway/edge/head.py), for HTTP requests and WebSocket handshakes alike.

Tests: ``tests/test_protocol_client.py`` (raw sockets, a recording upstream),
``tests/test_edge_stages.py`` (the stage alone).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from gateway.asgi_types import Scope
from gateway.edge.errors import GatewayError
from gateway.edge.refusals import (
    BAD_REQUEST,
    CLOSE,
    CODING_NOT_IMPLEMENTED,
    HEAD_TOO_LARGE,
    METHOD_NOT_IMPLEMENTED,
    PAYLOAD_TOO_LARGE,
    TOO_MANY_HEADERS,
    WEBSOCKET_NOT_SUPPORTED,
    Refusal,
)
from routes.model import ALL_METHODS

if TYPE_CHECKING:
    from gateway.edge.head import RequestHead

#: A Host value: a registered name or an IPv4 address, or a bracketed IPv6 one; a port.
_HOST: Final = re.compile(
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]+|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])(?::[0-9]{0,5})?"
).fullmatch
#: A request-target's path and query on the wire: visible ASCII except "#".
_TARGET_BYTES: Final = re.compile(rb"[!-\"$-~]*").fullmatch


def bad_request(scope: Scope, detail: str, refusal: Refusal = BAD_REQUEST) -> GatewayError:
    """A refusal for an ambiguous request; over HTTP/1.x the connection closes after it."""
    return refusal.error(detail, [CLOSE] if scope.get("http_version") != "2" else [])


def check_framing(
    scope: Scope, content_length: bytes | None, transfer_encoding: bytes | None
) -> None:
    """Refuse a request whose body framing could be read two ways."""
    if transfer_encoding is not None:
        if content_length is not None:
            raise bad_request(scope, "both Content-Length and Transfer-Encoding sent")
        if scope.get("http_version") == "1.0":
            raise bad_request(scope, "Transfer-Encoding in an HTTP/1.0 request")
        if transfer_encoding.strip(b" \t").lower() != b"chunked":
            detail = "only Transfer-Encoding: chunked is supported"
            raise bad_request(scope, detail, CODING_NOT_IMPLEMENTED)
    elif content_length is not None:
        if content_length == b"conflict" or not content_length.isdigit():
            raise bad_request(scope, "invalid Content-Length")
        if len(content_length) > 18:  # no body is that large (and int() of it is costly)
            detail = f"request body of {len(content_length)} digits of bytes"
            raise bad_request(scope, detail, PAYLOAD_TOO_LARGE)


def check_target(scope: Scope) -> None:
    """Refuse a request-target with a fragment or bytes outside visible ASCII."""
    if _TARGET_BYTES(scope["raw_path"]) is None or _TARGET_BYTES(scope["query_string"]) is None:
        if b"#" in scope["raw_path"] or b"#" in scope["query_string"]:
            raise bad_request(scope, "fragment (#) in request target")
        raise bad_request(scope, "invalid character in request target")


def check_upgrade(scope: Scope, route: str) -> None:
    """A WebSocket upgrade that reached the HTTP path (a server that does not speak
    WebSocket itself passes it on as a plain request): 501 until routes proxy WebSockets.
    Other upgrades (h2c) are ignored: ``Upgrade`` is hop-by-hop and never forwarded."""
    for name, value in scope["headers"]:
        if name == b"upgrade" and b"websocket" in value.lower():
            if scope["method"] != "GET":
                raise bad_request(scope, "a WebSocket handshake must be a GET request")
            detail = f"route {route!r} does not proxy WebSocket connections"
            raise bad_request(scope, detail, WEBSOCKET_NOT_SUPPORTED)


def _handshake_refusal(scope: Scope, detail: str) -> GatewayError:
    """A handshake's refusal is an HTTP response to the upgrade; the server decides
    whether the connection stays."""
    return BAD_REQUEST.error(detail)


class EdgeChecks:
    """The edge-check stage: header limits, method, body framing, request-target, control
    characters, one Host. Built once per snapshot, once for HTTP requests and once for
    WebSocket handshakes, which differ only in wording and in what follows (a handshake
    carries no body at all: its own check, after these)."""

    __slots__ = ("_framing", "_max_count", "_max_size", "_refuse", "_too_large", "_too_many")

    def __init__(
        self,
        max_header_count: int,
        max_header_size: int,
        *,
        too_many: str,
        too_large: str,
        framing: bool,
        refuse: Callable[[Scope, str], GatewayError],
    ) -> None:
        self._max_count = max_header_count
        self._max_size = max_header_size
        self._too_many = too_many
        self._too_large = too_large
        self._framing = framing
        self._refuse = refuse

    @classmethod
    def for_requests(cls, max_header_count: int, max_header_size: int) -> EdgeChecks:
        return cls(
            max_header_count,
            max_header_size,
            too_many=f"more than {max_header_count} headers",
            too_large=f"headers over {max_header_size} bytes",
            framing=True,
            refuse=bad_request,
        )

    @classmethod
    def for_handshakes(cls, max_header_count: int, max_header_size: int) -> EdgeChecks:
        return cls(
            max_header_count,
            max_header_size,
            too_many="too many headers",
            too_large="headers too large",
            framing=False,
            refuse=_handshake_refusal,
        )

    def check(self, scope: Scope, head: RequestHead) -> None:
        """Refuse (raise :class:`GatewayError`) what could be read two ways; nothing after
        this stage may act on an ambiguous request."""
        if len(scope["headers"]) > self._max_count:
            raise TOO_MANY_HEADERS.error(self._too_many)
        if head.size > self._max_size:
            raise HEAD_TOO_LARGE.error(self._too_large)
        if scope["method"] not in ALL_METHODS:
            raise METHOD_NOT_IMPLEMENTED.error(f"method {scope['method']} is not supported")
        if self._framing and (
            head.content_length is not None or head.transfer_encoding is not None
        ):
            check_framing(scope, head.content_length, head.transfer_encoding)
        check_target(scope)
        if head.control_character:
            raise self._refuse(scope, "control character in a header value")
        if head.duplicate is not None:
            name = "Host" if head.duplicate == b"host" else "Authorization"
            raise self._refuse(scope, f"more than one {name} header")
        if head.host and _HOST(head.host) is None:
            raise self._refuse(scope, "invalid Host header (host[:port] expected)")
