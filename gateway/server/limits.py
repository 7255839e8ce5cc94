"""What a server engine enforces before the app sees a request, as one value per worker.

The engine makes a :class:`ServerLimits` when its worker starts, hands it to the app it
builds (``create_app(..., limits=...)``), and its protocols read it on every connection;
the app fills it from ``[gateway]`` and a hot reload fills it again, so a reload applies
what it can reach (``header_timeout``, ``max_header_size``) on both engines, with no engine
reaching into the app and no app reaching into an engine. What a reload cannot change
(``hypercorn.toml``'s own settings: binds, workers, the keep-alive timeout) is read by the
engine once, at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.edge.refusals import HEADER_TIMEOUT, Refusal, raw_response

if TYPE_CHECKING:
    from gateway.config import GatewaySettings


@dataclass(slots=True)
class ServerLimits:
    """``[gateway]`` settings the engines enforce themselves; replaced on reload."""

    #: Seconds from a request head's first byte to its end; 0: no limit.
    header_timeout: float = 30.0
    #: Bytes of a request's header block (HTTP/2: its HEADERS and CONTINUATION frames).
    max_header_size: int = 16384
    #: The 408 a slow head gets, built for the current ``header_timeout``.
    head_timed_out: bytes = b""

    def __post_init__(self) -> None:
        self.head_timed_out = _timed_out(self.header_timeout)

    def apply(self, settings: GatewaySettings) -> None:
        """Take the values of a (new) config's ``[gateway]``."""
        if settings.header_timeout != self.header_timeout:
            self.header_timeout = settings.header_timeout
            self.head_timed_out = _timed_out(settings.header_timeout)
        self.max_header_size = settings.max_header_size

    @classmethod
    def of(cls, settings: GatewaySettings) -> ServerLimits:
        return cls(settings.header_timeout, settings.max_header_size)


def _timed_out(timeout: float) -> bytes:
    refusal: Refusal = HEADER_TIMEOUT
    return raw_response(refusal, f"no complete request head within {timeout:g} s")
