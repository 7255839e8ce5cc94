"""The seam every sender shares: ``send(request)`` gives an awaitable response.

Two kinds stand behind it. A target's own sender (an HTTP/1.1
:class:`~upstreams.pool.ConnectionPool`, an HTTP/2 :class:`~upstreams.h2.H2Sender`) is a
:class:`Sender`: it also tells about its connections. A layer (``upstreams/layers/``) wraps
another sender to add one concern: retries, the in-flight cap, the breaker, counting;
:func:`stack` composes them, listed top to bottom, so a composition reads in order.

``send`` returns the awaitable rather than being declared ``async``, so that a layer with
nothing to do for a request hands back the next layer's coroutine and costs no frame.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.spec import TargetSpec

Sending: TypeAlias = Coroutine[Any, Any, UpstreamResponse]


@dataclass(frozen=True, slots=True)
class PoolStats:
    in_use: int
    idle: int
    waiting: int


class Sends(Protocol):
    """Anything that sends a request: a target's sender or a layer over one."""

    def send(self, request: UpstreamRequest) -> Sending: ...


class Sender(Sends, Protocol):
    """Sends to one target, and can tell about its connections."""

    target: TargetSpec

    def stats(self) -> PoolStats | None: ...

    async def aclose(self) -> None: ...


# ---- layers: a sender over a sender --------------------------------------------------------


class Layer(Sends, Protocol):
    """A sender that adds one concern and sends through ``inner``."""

    inner: Sends


def stack(*layers: Layer | None, bottom: Sends) -> Sends:
    """``layers[0]`` over ``layers[1]`` ... over ``bottom``; None entries are left out."""
    sender = bottom
    for layer in reversed(layers):
        if layer is not None:
            layer.inner = sender
            sender = layer
    return sender
