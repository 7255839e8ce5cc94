"""The ways sending to an upstream can fail.

They carry no HTTP status: mapping a failure to a status is the gateway's decision
(``gateway/edge/errors.py``), made in one place.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every failure to get a (complete) response from an upstream."""

    #: True when no byte of a response was received, so the request may be replayed.
    before_response: bool = True
    #: The target URL of the try that failed; "" when no target was tried.
    sent_to: str = ""
    #: How many times the request was sent again before it failed (for logs and metrics).
    retries: int = 0


class UpstreamConnectError(UpstreamError):
    """The target refused the connection or could not be reached."""


class UpstreamTimeout(UpstreamError):
    """Connect, write or read did not finish within its configured timeout."""

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class UpstreamProtocolError(UpstreamError):
    """The upstream reset the connection or sent something that is not valid HTTP/1.1."""


class UpstreamClosed(UpstreamProtocolError):
    """The connection ended (FIN or RST) before a single byte of the response arrived.

    On a reused connection this is the stale keep-alive race; the pool may replay the
    request on a new connection when nothing can have happened (``upstreams/pool.py``).
    """


class UpstreamInvalidResponse(UpstreamProtocolError):
    """Bytes that are not a valid HTTP/1.1 response. Never replayed, never retried: the
    upstream received the request and answered something."""

    before_response = False


class PoolExhausted(UpstreamError):
    """No pooled connection became free within ``pool_timeout``."""


class NoHealthyTarget(UpstreamError):
    """Every target of the upstream is drained (or failing its health checks)."""

    #: Seconds after which a target may be back (for ``Retry-After``).
    retry_after: float = 1.0


class UpstreamOverloaded(UpstreamError):
    """The upstream already has ``max_requests`` requests in flight."""


class RouteTimeout(UpstreamError):
    """The route's total deadline (``timeout``) passed before a response head arrived."""
