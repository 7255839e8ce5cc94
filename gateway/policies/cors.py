"""``[routes.cors]``: cross-origin requests, with preflights answered at the gateway.

- Origins: exact (``https://app.example.com``), wildcard subdomains
  (``https://*.example.com`` matches ``https://a.example.com`` and ``https://a.b.example.com``
  but not ``https://example.com``), or ``"*"``.
- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
  answered 204 by the gateway and never reaches the upstream; from an origin, method or
  header that is not allowed it is answered 403 (``cors_forbidden``).
- An actual request from an allowed origin gets ``Access-Control-Allow-Origin`` (the origin
  itself; ``*`` only when any origin is allowed and credentials are not), ``Vary: Origin``,
  and ``-Allow-Credentials`` / ``-Expose-Headers`` as configured; the headers are on error
  responses too, so a browser can read a 401 or 429. CORS headers an upstream sent are
  replaced. A request from another origin is forwarded without CORS headers (the browser
  then refuses it), as Envoy and Kong do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from annotated_types import Ge

from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError, Reply

DEFAULT_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_CORS_RESPONSE: Final = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-max-age",
    }
)


@dataclass(frozen=True, slots=True)
class CorsSettings:
    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = DEFAULT_METHODS
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    #: Seconds a browser may cache a preflight's answer.
    max_age: Annotated[int, Ge(0)] = 600
    #: Whether the route itself serves OPTIONS (a non-preflight OPTIONS is then forwarded).
    route_options: bool = True


def valid_origin(origin: str) -> bool:
    """``*``, or ``scheme://host[:port]`` with an optional ``*.`` host prefix."""
    if origin == "*":
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep and scheme in ("http", "https") and rest and "/" not in rest)


class CorsPolicy:
    def __init__(self, settings: CorsSettings) -> None:
        self.any_origin = "*" in settings.allow_origins
        self.exact = frozenset(o.encode() for o in settings.allow_origins if "*" not in o)
        # "https://*.example.com" -> ("https://", ".example.com[:port]")
        self.wildcards = tuple(
            (o[: o.index("*")].encode(), o[o.index("*") + 1 :].encode())
            for o in settings.allow_origins
            if o != "*" and "://*." in o
        )
        self.credentials = settings.allow_credentials
        self.methods = frozenset(m.encode() for m in settings.allow_methods)
        self.any_header = "*" in settings.allow_headers
        self.headers = frozenset(h.encode() for h in settings.allow_headers)
        self.allow_methods = ", ".join(settings.allow_methods).encode()
        self.allow_headers = ", ".join(settings.allow_headers).encode()
        self.expose = ", ".join(settings.expose_headers).encode()
        self.max_age = str(settings.max_age).encode()
        self.route_options = settings.route_options

    def allowed(self, origin: bytes) -> bool:
        if self.any_origin or origin.lower() in self.exact:
            return True
        origin = origin.lower()
        for scheme, suffix in self.wildcards:
            if origin.startswith(scheme) and origin.endswith(suffix):
                label = origin[len(scheme) : len(origin) - len(suffix)]
                if label and b"/" not in label and b":" not in label and b"@" not in label:
                    return True
        return False

    def _allow_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self.any_origin and not self.credentials:
            return [(b"access-control-allow-origin", b"*")]
        out = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out

    async def on_request(self, ctx: RequestContext) -> None:
        origin = None
        request_method = None
        request_headers = b""
        for name, value in ctx.scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                request_method = value
            elif name == b"access-control-request-headers":
                request_headers = value
        preflight = ctx.scope["method"] == "OPTIONS" and request_method is not None
        if origin is None:
            if ctx.scope["method"] == "OPTIONS" and not self.route_options:
                raise _not_allowed()
            return
        if preflight:
            assert request_method is not None
            self._preflight(origin, request_method, request_headers)
        if ctx.scope["method"] == "OPTIONS" and not self.route_options:
            raise _not_allowed()
        if self.allowed(origin):
            headers = self._allow_origin(origin)
            if self.expose:
                headers.append((b"access-control-expose-headers", self.expose))
            ctx.response_headers += headers

    def _preflight(self, origin: bytes, method: bytes, requested: bytes) -> None:
        if not self.allowed(origin):
            raise GatewayError(403, "cors_forbidden", "origin not allowed")
        if method.strip().upper() not in self.methods:
            raise GatewayError(403, "cors_forbidden", "method not allowed by CORS policy")
        names = [h.strip().lower() for h in requested.split(b",") if h.strip()]
        if not self.any_header and any(n not in self.headers for n in names):
            raise GatewayError(403, "cors_forbidden", "request header not allowed by CORS policy")
        headers = self._allow_origin(origin)
        if not any(n == b"vary" for n, _ in headers):
            headers.append((b"vary", b"Origin"))
        headers += [
            (b"access-control-allow-methods", self.allow_methods),
            (b"access-control-max-age", self.max_age),
        ]
        if names:
            allow = b", ".join(names) if self.any_header else self.allow_headers
            headers.append((b"access-control-allow-headers", allow))
        raise Reply(204, headers)

    def on_response(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        # The gateway's CORS answer replaces whatever the upstream said about CORS.
        if any(n in _CORS_RESPONSE for n, _ in headers):
            mine = [h for h in ctx.response_headers if h[0] in _CORS_RESPONSE]
            headers[:] = [h for h in headers if h[0] not in _CORS_RESPONSE]
            headers += mine  # ctx.response_headers were appended before; keep one copy


def _not_allowed() -> GatewayError:
    return GatewayError(405, "method_not_allowed", "method OPTIONS is not allowed on this route")
