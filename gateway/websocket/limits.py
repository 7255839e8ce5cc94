"""A route's WebSocket limits and timers: ``websocket = true`` or ``[routes.websocket]``.

Each setting is declared once, here, with its default, bound and unit; gateway.config
derives the table's checks from this declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

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
