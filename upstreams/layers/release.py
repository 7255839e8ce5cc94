"""Giving back a count when a response's body has ended (or at once, when it came whole).

A request holds its slot in a count (in flight at the upstream, outstanding at a target)
until the client has its body, not just its head: that is when the target is done with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from upstreams.messages import UpstreamResponse


class Holder(Protocol):
    def release(self) -> None: ...


def release_on_close(response: UpstreamResponse, holder: Holder) -> None:
    """Call ``holder.release()`` once, when ``response`` is closed (now if it is complete)."""
    if response.complete:
        holder.release()
    else:
        response.aclose = _Release(response.aclose, holder)


class _Release:
    """``response.aclose`` that releases first: one small object, no closure."""

    __slots__ = ("_aclose", "_done", "_holder")

    def __init__(self, aclose: Callable[[], Awaitable[None]], holder: Holder) -> None:
        self._aclose = aclose
        self._holder = holder
        self._done = False

    async def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._holder.release()
        await self._aclose()
