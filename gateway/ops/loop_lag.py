"""Shedding when the worker itself is the bottleneck: the event loop's lag, watched.

When a worker has more to do than its core can do, every timer, read and write waits for
the loop, and a request admitted now only makes every other one later. The gateway
notices it the way an operating system notices a late interrupt: a timer set every
:data:`TICK` seconds fires late by the loop's backlog. Past ``[gateway] max_loop_lag``
(docs/overload.md) new public requests are refused with 503 ``gateway_overloaded`` and
``Retry-After`` before their body is read, while requests in flight, the admin bind
(``/healthz``, ``/readyz``, ``/metrics``, the admin API) and WebSocket sessions already open
keep being served; once the lag has been under half the bound for :data:`CALM` seconds,
requests are admitted again. One log line when an episode starts and one when it ends.

The cost on the hot path is one attribute read (:attr:`LoopLag.shedding`); the watch is one
timer per :data:`TICK` per worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

log = logging.getLogger("quartgate")

#: Seconds between two looks at the loop.
TICK: Final = 0.05
#: Seconds the lag must stay under half the bound before shedding stops.
CALM: Final = 1.0


class LoopLag:
    """The lag watch of one worker; ``shedding`` is what the request path reads."""

    __slots__ = (
        "_bound",
        "_calm_since",
        "_due",
        "_handle",
        "_loop",
        "_started_at",
        "lag",
        "max_seen",
        "refused",
        "shedding",
    )

    def __init__(self, bound: float) -> None:
        #: ``max_loop_lag`` in seconds; 0: never shed.
        self._bound = bound
        self.shedding = False
        #: The latest lag measured, and the largest this episode (seconds).
        self.lag = 0.0
        self.max_seen = 0.0
        #: Requests refused this episode (counted by the request path).
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._calm_since = 0.0
        self._started_at = 0.0

    @property
    def bound(self) -> float:
        return self._bound

    @bound.setter
    def bound(self, value: float) -> None:
        """A reload may change ``max_loop_lag``; 0 stops shedding at once."""
        self._bound = value
        if not value and self.shedding:
            self._end(self._loop.time() if self._loop is not None else 0.0)

    def start(self) -> None:
        """Start watching, in the serving loop."""
        if self._handle is not None:
            return
        self._loop = loop = asyncio.get_running_loop()
        self._due = loop.time() + TICK
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.lag = lag = now - self._due
        bound = self._bound
        if bound:
            if lag > bound:
                self._calm_since = now
                if not self.shedding:
                    self._begin(now, lag)
                self.max_seen = max(self.max_seen, lag)
            elif self.shedding:
                if lag > bound / 2:
                    self._calm_since = now
                elif now - self._calm_since >= CALM:
                    self._end(now)
        self._due = now + TICK
        self._handle = loop.call_at(self._due, self._tick)

    def _begin(self, now: float, lag: float) -> None:
        self.shedding = True
        self._started_at = now
        self.max_seen = lag
        self.refused = 0
        log.warning(
            "worker overloaded: event loop %.0f ms late (max_loop_lag %.0f ms); "
            "refusing new requests with 503 until it catches up",
            lag * 1000,
            self._bound * 1000,
        )

    def _end(self, now: float) -> None:
        self.shedding = False
        log.warning(
            "worker caught up after %.1f s: %d request(s) refused, the loop at most %.0f ms late",
            now - self._started_at,
            self.refused,
            self.max_seen * 1000,
        )
