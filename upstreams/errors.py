"""The ways sending to an upstream can fail.

They carry no HTTP status: mapping a failure to a status is the gateway's decision
(``gateway/edge/errors.py``), made in one place.
"""

from __future__ import annotations

import errno
import os


class UpstreamError(Exception):
    """Base of every failure to get a (complete) response from an upstream.

    The message (``str(error)``) is for the operator's log and may name the target's
    address; :attr:`public` is what a client may be told: the same failure without it.
    """

    #: True when no byte of a response was received, so the request may be replayed.
    before_response: bool = True
    #: The target URL of the try that failed; "" when no target was tried.
    sent_to: str = ""
    #: How many times the request was sent again before it failed (for logs and metrics).
    retries: int = 0

    def __init__(self, message: str = "", *, public: str | None = None) -> None:
        super().__init__(message)
        self._public = public

    @property
    def public(self) -> str:
        """The failure as a client may read it: no address, host or port of a target."""
        return self._public if self._public is not None else str(self)


class UpstreamConnectError(UpstreamError):
    """The target refused the connection or could not be reached."""


class UpstreamTimeout(UpstreamError):
    """Connect, write or read did not finish within its configured timeout."""

    def __init__(self, message: str, *, phase: str, public: str | None = None) -> None:
        super().__init__(message, public=public if public is not None else f"{phase} timed out")
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
    """The upstream already has ``max_requests`` requests in flight, or is over its adaptive
    concurrency limit."""

    #: True when the refusing layer logs its refusals itself (the adaptive limiter's line
    #: once per 10 s with their count): then the request's own line is at debug.
    summarised = False


class RouteTimeout(UpstreamError):
    """The route's total deadline (``timeout``) passed before a response head arrived."""


def connect_failure(error: OSError) -> str:
    """A failed connect as a client may read it: the errno's text, never the address
    (asyncio's own message is ``Connect call failed ('10.0.0.7', 8080)``)."""
    if error.errno is not None:
        if error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return "connect failed: " + os.strerror(error.errno).lower()
    return "connect failed"
