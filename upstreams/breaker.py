"""Passive health: a circuit breaker per target, fed by the outcomes of real requests.

A target is ejected when ``consecutive_failures`` requests in a row failed, or when the
failure rate over the last ``window`` seconds reaches ``failure_rate`` (once at least
``min_requests`` were seen). It stays out for a back-off period that doubles with each
ejection (``ejection_time``, 2x, 4x, ... up to ``max_ejection_time``), then turns half-open:
up to ``half_open_requests`` real requests probe it; a success closes the breaker, a
failure ejects it again for longer. This is Envoy's outlier detection with the
half-open step of a classic breaker.

A failure is what the gateway itself would answer 502/503/504 for: no connection, a
reset or a timeout before the response head, or a 502/503/504 from the target. An
application's 500 is its answer, not a sign the target is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from annotated_types import Ge, Gt, Interval

from upstreams.window import SlidingCounts

log = logging.getLogger("quartgate.upstreams")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
#: Statuses from a target that count as its failure.
FAILURE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """``[upstreams.NAME.breaker]``; the defaults are what an empty table gives."""

    #: Eject after this many failures in a row; 0 turns the rule off.
    consecutive_failures: Annotated[int, Ge(0)] = 5
    #: Eject when this fraction of the requests in ``window`` failed; 0 turns the rule off.
    failure_rate: Annotated[float, Interval(ge=0, le=1)] = 0.5
    #: Seconds over which the failure rate is measured.
    window: Annotated[float, Ge(1), "seconds"] = 10.0
    #: The failure rate is judged only once the window holds this many requests.
    min_requests: Annotated[int, Gt(0)] = 20
    #: First ejection, in seconds; each ejection in a row doubles it.
    ejection_time: Annotated[float, Gt(0)] = 30.0
    #: Longest ejection, in seconds.
    max_ejection_time: Annotated[float, Gt(0)] = 300.0
    #: Requests let through at once to probe a half-open target.
    half_open_requests: Annotated[int, Gt(0)] = 1


class Breaker:
    """One target's breaker. ``admits`` is what the balancer reads: False while ejected."""

    __slots__ = (
        "_consecutive",
        "_ejections",
        "_on_change",
        "_probes",
        "_recovered_at",
        "_spec",
        "_timer",
        "_window",
        "admits",
        "name",
        "reopens_at",
        "state",
    )

    def __init__(self, spec: BreakerSpec, name: str, on_change: Callable[[], None]) -> None:
        self._spec = spec
        self.name = name
        self._on_change = on_change
        self.state = CLOSED
        self.admits = True
        #: Loop time at which an open breaker turns half-open (for Retry-After).
        self.reopens_at = 0.0
        self._consecutive = 0
        self._window = SlidingCounts(spec.window) if spec.failure_rate > 0 else None
        self._probes = 0
        self._ejections = 0
        self._recovered_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ---- outcomes ------------------------------------------------------------------------

    def dispatch(self) -> None:
        """A request is about to go to the target (counts half-open probes)."""
        if self.state is HALF_OPEN:
            self._probes += 1
            if self._probes >= self._spec.half_open_requests:
                self.admits = False
                self._on_change()

    def success(self, now: float) -> None:
        if self.state is CLOSED:
            self._consecutive = 0
            if self._window is not None:
                self._window.add(now, total=1)
        elif self.state is HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._close(now)

    def failure(self, now: float, reason: str) -> None:
        spec = self._spec
        if self.state is CLOSED:
            self._consecutive += 1
            if spec.consecutive_failures and self._consecutive >= spec.consecutive_failures:
                self._open(now, f"{self._consecutive} failures in a row, last: {reason}")
                return
            window = self._window
            if window is not None:
                window.add(now, total=1, marked=1)
                if window.total >= spec.min_requests and (
                    window.marked >= spec.failure_rate * window.total
                ):
                    self._open(
                        now,
                        f"{window.marked} of {window.total} requests failed in "
                        f"{spec.window:g}s, last: {reason}",
                    )
        elif self.state is HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._open(now, f"half-open probe failed: {reason}")

    def abandon(self) -> None:
        """A request ended with no outcome (the client went away): free its probe slot."""
        if self.state is HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            if not self.admits:
                self.admits = True
                self._on_change()

    # ---- transitions ---------------------------------------------------------------------

    def _open(self, now: float, reason: str) -> None:
        spec = self._spec
        if self.state is CLOSED and now - self._recovered_at > spec.max_ejection_time:
            self._ejections = 0  # healthy for a long while: start the back-off again
        self._ejections += 1
        duration = min(spec.max_ejection_time, spec.ejection_time * 2 ** (self._ejections - 1))
        self.state = OPEN
        self.admits = False
        self.reopens_at = now + duration
        self._probes = 0
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(duration, self._half_open)
        log.warning("target %s ejected for %gs: %s", self.name, duration, reason)
        self._on_change()

    def _half_open(self) -> None:
        self._timer = None
        self.state = HALF_OPEN
        self.admits = True
        self._probes = 0
        log.info("target %s half-open: probing with real requests", self.name)
        self._on_change()

    def _close(self, now: float) -> None:
        self.state = CLOSED
        self.admits = True
        self._consecutive = 0
        self._recovered_at = now
        if self._window is not None:
            self._window.clear()
        log.info("target %s recovered: breaker closed", self.name)
        self._on_change()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Stop the half-open timer (the upstream is going away)."""
        self._cancel_timer()
