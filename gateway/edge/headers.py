"""Header rules of a proxy: hop-by-hop removal (RFC 9110 7.6.1) and X-Forwarded-* handling."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Request headers the gateway never copies: hop-by-hop (and HTTP2-Settings), framing it sets itself
#: (Content-Length, Host), Expect (the body is sent without waiting for 100 Continue) and
#: forwarding headers it rewrites.
REQUEST_DROP: Final = HOP_BY_HOP | {
    b"http2-settings",  # only meaningful with Upgrade: h2c, which is never honoured
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
}

#: Response headers the gateway never copies back: hop-by-hop, and framing the server
#: sets (the body is re-framed by Hypercorn when the upstream chunked it). Date and Server
#: are Hypercorn's own on every response; passed through as well they went out twice (nginx
#: hides the upstream's Date and Server the same way).
RESPONSE_DROP: Final = HOP_BY_HOP | {b"date", b"server"}


def match_host(host: bytes) -> str:
    """Lower-case host without port, for route matching."""
    if not host:
        return ""
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.partition(":")[0]


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a Connection header, which are hop-by-hop too."""
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def filter_response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    extra: frozenset[bytes] = frozenset()
    for name, value in headers:
        if name == b"connection":
            extra = extra | connection_tokens(value)
    drop = RESPONSE_DROP | extra if extra else RESPONSE_DROP
    return [(n, v) for n, v in headers if n not in drop]


class TrustedProxies:
    """Decides whether a peer's forwarding headers are believed; results are cached."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        if not self._networks:
            return False
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            result = False
        else:
            result = any(ip in network for network in self._networks)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[address] = result
        return result
