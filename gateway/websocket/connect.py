"""Opening the upstream side of a session: pick a target, handshake, map failures to JSON.

The upstream side is the ``websockets`` library's asyncio client (docs/websocket.md says
why): it does the HTTP/1.1 upgrade, frames, fragments, pings and the closing handshake, and
bounds what it buffers (``max_size``, ``max_queue``, ``write_limit``). Targets are picked by
the upstream's own balancing algorithm among the targets that are up (healthy, not
drained, breaker closed); a handshake failure counts against a target's breaker as a
failed HTTP request does.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Origin, Subprotocol

from gateway.edge.errors import GatewayError
from gateway.edge.headers import HOP_BY_HOP
from gateway.websocket.limits import WebSocketSettings
from upstreams.balancer import hash_bytes, make_balancer
from upstreams.errors import NoHealthyTarget, connect_failure
from upstreams.layers.picking import Picker
from upstreams.target import Target
from upstreams.upstream import Upstream

#: How many frames the upstream connection buffers before it stops reading from the
#: upstream (the library's default is 16): with ``max_message_size`` this bounds a
#: session's memory when the client reads slowly.
MAX_QUEUE: Final = 4
#: Seconds the upstream gets to answer a close frame before its TCP connection is dropped
#: (also how long a failed upstream, such as a ping timeout, takes to be noticed as closed).
CLOSE_TIMEOUT: Final = 2.0
#: Response headers of the upstream's 101 never passed to the client: the client's own
#: handshake is answered by the gateway's server.
ACCEPT_DROP: Final = HOP_BY_HOP | {
    b"date",
    b"server",
    b"content-length",
    b"sec-websocket-accept",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
_HOST: Final = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class Refused:
    """The upstream answered the handshake with an HTTP response: relayed as it is."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Connector:
    """Opens upstream WebSocket connections for one upstream, built once per snapshot."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        # Its own balancer: sessions are spread apart from the upstream's HTTP requests.
        balancer = make_balancer(upstream.spec.balancer, upstream.targets)
        self._picker = Picker(upstream.spec, upstream.targets, balancer)
        self._ssl = ssl.create_default_context()

    async def open(
        self,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        settings: WebSocketSettings,
        *,
        host: bytes | None,
        client: str,
        subprotocols: Sequence[str],
        origin: str | None,
    ) -> tuple[ClientConnection, Target] | Refused:
        """A connection to a target that accepted the handshake, or its HTTP refusal.

        Raises :class:`GatewayError` (502, 503, 504) when no target could be reached.
        """
        if host and _HOST.fullmatch(host.decode("latin-1")) is None:
            # The client's Host goes into the upstream URI (preserve_host): nothing but a
            # host and port may (a "user@" part would become an Authorization header).
            raise GatewayError(400, "bad_request", "invalid Host header for preserve_host")
        upstream = self.upstream
        tried: list[Target] = []
        attempts = 2 if len(upstream.targets) > 1 else 1
        key = hash_bytes(client.encode("latin-1"))
        loop = asyncio.get_running_loop()
        while True:
            try:
                target = self._picker.pick(key, tried)
            except NoHealthyTarget as error:
                raise GatewayError(
                    503,
                    "no_healthy_upstream",
                    f"upstream {upstream.name!r}: every target is drained or unhealthy",
                    [(b"retry-after", b"%d" % error.retry_after)],
                ) from None
            breaker = target.breaker
            if breaker is not None:
                breaker.dispatch()
            try:
                result = await self._handshake(
                    target, path, headers, settings, host, subprotocols, origin
                )
            except GatewayError as error:
                if breaker is not None:
                    breaker.failure(loop.time(), error.detail)
                tried.append(target)
                if error.code != "upstream_unreachable" or len(tried) >= attempts:
                    raise
                continue
            except BaseException:
                if breaker is not None:
                    breaker.abandon()
                raise
            if breaker is not None:
                status = result.status if isinstance(result, Refused) else 101
                if status >= 500:
                    breaker.failure(loop.time(), f"status {status}")
                else:
                    breaker.success(loop.time())
            return result if isinstance(result, Refused) else (result, target)

    async def _handshake(
        self,
        target: Target,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        settings: WebSocketSettings,
        host: bytes | None,
        subprotocols: Sequence[str],
        origin: str | None,
    ) -> ClientConnection | Refused:
        spec = target.spec
        secure = spec.scheme == "https"
        if host:
            authority = host.decode("latin-1")  # checked in open()
        elif ":" in spec.host:
            authority = f"[{spec.host}]:{spec.port}"  # an IPv6 literal
        else:
            authority = f"{spec.host}:{spec.port}"
        # The target URL's path goes first, as for HTTP requests (upstreams/layers/per_try.py).
        uri = f"{'wss' if secure else 'ws'}://{authority}{spec.path}{path.decode('ascii')}"
        public = f"upstream {self.upstream.name!r}"  # what the client reads: no address
        name = f"{public} ({target.url})"
        interval = settings.ping_interval or None
        try:
            return await connect(
                uri,
                host=spec.host,
                port=spec.port,
                ssl=self._ssl if secure else None,
                server_hostname=spec.host if secure else None,
                proxy=None,  # never a proxy from the environment
                additional_headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                user_agent_header=None,  # the client's own, in ``headers``
                subprotocols=[Subprotocol(p) for p in subprotocols] or None,
                origin=Origin(origin) if origin is not None else None,
                compression=None,  # CPU and ~100 KiB per session for a LAN hop (docs)
                open_timeout=settings.connect_timeout,
                ping_interval=interval,
                ping_timeout=interval,
                close_timeout=CLOSE_TIMEOUT,
                max_size=settings.max_message_size,
                max_queue=MAX_QUEUE,
            )
        except InvalidStatus as error:
            response = error.response
            kept = [
                (n.lower().encode("latin-1"), v.encode("latin-1"))
                for n, v in response.headers.raw_items()
            ]
            kept = [(n, v) for n, v in kept if n not in ACCEPT_DROP]
            return Refused(response.status_code, kept, bytes(response.body or b""))
        except TimeoutError:
            reason = f"no WebSocket handshake within {settings.connect_timeout:g} s"
            raise GatewayError(
                504, "upstream_timeout", f"{public}: {reason}", log_detail=f"{name}: {reason}"
            ) from None
        except OSError as error:
            raise GatewayError(
                502,
                "upstream_unreachable",
                f"{public}: {connect_failure(error)}",
                log_detail=f"{name}: cannot connect: {error}",
            ) from None
        except InvalidHandshake as error:
            # The library's text quotes the upstream's bytes: the operator's log has them.
            raise GatewayError(
                502,
                "upstream_invalid_response",
                f"{public}: invalid WebSocket handshake",
                log_detail=f"{name}: invalid WebSocket handshake: {error}",
            ) from None


def accept_headers(connection: ClientConnection) -> list[tuple[bytes, bytes]]:
    """The upstream's 101 headers worth passing on (Set-Cookie, its own headers)."""
    response = connection.response
    if response is None:
        return []
    headers = [
        (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in response.headers.raw_items()
    ]
    return [(n, v) for n, v in headers if n not in ACCEPT_DROP]
