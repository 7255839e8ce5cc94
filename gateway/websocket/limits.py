"""A route's WebSocket limits and timers (``websocket = true`` or ``[routes.websocket]``),
and the words the gateway and its server engine use about a client's frames.

Each setting is declared once, here, with its default, bound and unit; gateway.config
derives the table's checks from this declaration.

What the server enforces on a client's frames, the same on both engines
(gateway/server/hypercorn_websocket.py, gateway/server/uvicorn_websocket.py):

- **Inflation is bounded by the route's ``max_message_size``.** A permessage-deflate
  message is inflated at most to the route's limit, then the connection is failed with
  **1009** (:func:`inflated_too_big`): a 100 KB frame that inflates to 100 MiB costs the
  worker at most the limit, never the 100 MiB. The route's limit reaches the server in the
  gateway's ``websocket.accept`` message (:data:`ACCEPT_MAX_MESSAGE_SIZE`; servers ignore
  keys they do not know), since the server negotiated the extension before the route was
  known.
- **A protocol violation gets a close frame**: 1002 (protocol error), 1007 (invalid
  UTF-8: :data:`INVALID_UTF8`) or 1009, one log line, then the connection is closed; the
  app is told with :data:`SERVER_FAILED` in its ``websocket.disconnect``, so that the
  session is recorded as closed by the gateway and the client is not closed twice.

An uncompressed message is not cut there: the server's own cap (16 MiB on both engines)
applies while it arrives, then the relay's check of ``max_message_size``
(gateway/websocket/relay.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from annotated_types import Ge, Gt


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """``[routes.websocket]``; ``websocket = true`` is all of these defaults."""

    #: Largest message (after reassembly of its fragments) either side may send, in bytes;
    #: beyond it the session is closed with 1009. The websockets library's own default.
    max_message_size: Annotated[int, Gt(0)] = 1024 * 1024
    #: Seconds without a message either way before the session is closed (1001); 0: never.
    #: Pings do not count: an idle session with keep-alive pings is still idle.
    idle_timeout: Annotated[float, Ge(0)] = 300.0
    #: Seconds between pings the gateway sends the upstream (a pong must come back within
    #: the same time, else the session ends with 1011); 0: no pings.
    ping_interval: Annotated[float, Ge(0)] = 0.0
    #: Seconds to open the upstream connection (TCP, TLS and the handshake): 504 beyond.
    connect_timeout: Annotated[float, Gt(0)] = 10.0


#: Key of the gateway's ``websocket.accept`` message: the route's ``max_message_size``.
ACCEPT_MAX_MESSAGE_SIZE: Final = "quartgate.max_message_size"
#: Key of a server's ``websocket.disconnect`` (true): the server failed the connection
#: (a protocol violation, a message too big) and has sent its close frame already.
SERVER_FAILED: Final = "quartgate.server_failed"
#: The close reason of a 1007 for a text message (or close reason) that is not UTF-8.
INVALID_UTF8: Final = "invalid UTF-8 text"


def inflated_too_big(limit: int) -> str:
    """The close reason of a 1009 for a compressed message that inflates past ``limit``."""
    return f"message over {limit} bytes once inflated"


def truncate(reason: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 5.5.1)."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode("utf-8", "ignore")


#: The limit when no accept set one (the servers' own default message size).
DEFAULT_LIMIT: Final = 16 * 1024 * 1024
