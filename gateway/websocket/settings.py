"""A route's ``websocket`` key: ``true``, or a table of the settings below.

Each setting is declared once (name, type, default, bound) in :data:`KEYS`; the parser
derives its checks and messages from that declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from gateway.config import ConfigReader


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """``[routes.websocket]``; ``websocket = true`` is all of these defaults."""

    #: Largest message (after reassembly of its fragments) either side may send, in bytes;
    #: beyond it the session is closed with 1009. The websockets library's own default.
    max_message_size: int = 1024 * 1024
    #: Seconds without a message either way before the session is closed (1001); 0: never.
    #: Pings do not count: an idle session with keep-alive pings is still idle.
    idle_timeout: float = 300.0
    #: Seconds between pings the gateway sends the upstream (a pong must come back within
    #: the same time, else the session ends with 1011); 0: no pings.
    ping_interval: float = 0.0
    #: Seconds to open the upstream connection (TCP, TLS and the handshake): 504 beyond.
    connect_timeout: float = 10.0


#: name -> (type, bound): "positive" (> 0) or "non_negative" (>= 0).
KEYS: Final = {
    "max_message_size": (int, "positive"),
    "idle_timeout": (float, "non_negative"),
    "ping_interval": (float, "non_negative"),
    "connect_timeout": (float, "positive"),
}


def parse_websocket(reader: ConfigReader, raw: Any, prefix: str) -> WebSocketSettings | None:
    """``websocket = true`` / ``false`` / a table; None when WebSockets are off."""
    key = f"{prefix}.websocket"
    if isinstance(raw, bool):
        return WebSocketSettings() if raw else None
    if not isinstance(raw, dict):
        reader.problem(key, "must be true, false or a table")
        return None
    table = dict(raw)
    if not reader.take(table, key, "enabled", bool, True):
        reader.leftovers(table, key)
        return None
    default = WebSocketSettings()
    values: dict[str, Any] = {}
    for name, (kind, bound) in KEYS.items():
        check = _positive if bound == "positive" else _non_negative
        values[name] = reader.take(table, key, name, kind, getattr(default, name), check)
    reader.leftovers(table, key)
    return WebSocketSettings(**values)


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"
