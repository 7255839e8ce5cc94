"""An ASGI HTTP scope as a server hands it to the gateway, for the tests that call the
gateway's app, its request path or its stages directly with a stub receive and send."""

from __future__ import annotations

from typing import Any


def http_scope(
    raw_path: bytes = b"/api/x",
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("192.0.2.10", 40000),
    http_version: str = "1.1",
) -> dict[str, Any]:
    """The keys the gateway reads, for ``raw_path`` with no query string; ``headers`` is
    a Host of "gw" unless given. ``client`` defaults to a documentation address (RFC 5737)."""
    return {
        "type": "http",
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "headers": [(b"host", b"gw")] if headers is None else headers,
        "client": client,
    }
