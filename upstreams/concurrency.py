"""How many requests an upstream can serve at once, learned from its latency.

``[upstreams.NAME.adaptive_concurrency]`` (docs/overload.md). The rule is a gradient, in
the family of Netflix's Gradient2 and Envoy's adaptive concurrency filter: once per sample
window, with ``rtt`` the window's median time to a response head and ``min_rtt`` what the
upstream takes when nothing queues in front of it,

    gradient = clamp(tolerance * min_rtt / rtt, 0.5, 1.0)
    target   = limit * gradient + sqrt(limit)        # headroom: a short queue is fine

and the limit moves toward ``target`` (smoothed, faster down than up), within
``[min_limit, max_limit]``. While latency stays under ``tolerance * min_rtt`` the gradient is
1 and the limit grows by the headroom; once requests queue at the upstream the gradient
falls with the queue and the limit with it. A gradient rather than Vegas' fixed steps,
because a limit far too high (a cold start at ``initial_limit``, a backend that slowed
down) must come down in a few windows, not one request per window.

The pitfalls the users of Envoy's filter and of Netflix's library reported, and what is
done about each here:

- **503s while min-RTT is re-measured** (envoy#8337, #9007): Envoy pins concurrency to a
  floor for the measurement and refuses the rest. Here ``min_rtt`` is re-measured first
  from requests that met a short queue anyway (each sample carries the in-flight count it
  started with); only when none did in a whole interval (sustained saturation) is a probe
  made, at a quarter of the limit, and the requests it holds back wait in the admission
  queue instead of being refused.
- **A limit that never recovers** (envoy#38338): nothing here holds the limit down but the
  latency of recent windows; the headroom term always lets it grow while latency is good.
- **False shedding at low QPS and at cold start** (envoy#16392, #33739): a window with
  fewer than ``min_samples`` samples changes nothing (it is extended), and a limit is only
  raised or lowered from what requests measured; at cold start it is ``initial_limit``.
- **Limits that grow without bound** (concurrency-limits#134): the limit grows only in a
  window where it was used (in flight reached half of it), and never past ``max_limit``.
- **Cancelled or shed requests in the samples** (concurrency-limits#146, #176): a sample
  is a request whose response head arrived on its first try; cancelled, refused and
  retried requests and health checks are not samples. A timeout is not a sample either,
  but it counts as a sign of overload: a window with one lowers the limit.

And one that is a gateway's own: **the worker's lateness read as the upstream's.** A sample
is timed by the worker's event loop, so when the worker itself is the bottleneck (its loop
runs late: gateway/ops/loop_lag.py) every sample is longer by that lateness, and a limit
lowered for it only starves the upstream (measured: at 5x a backend's capacity, one
Hypercorn worker served 43% of it). A window in which the loop ran later than
:func:`late_bound` (the lateness that alone could push a sample past ``tolerance``) says
nothing about the upstream and changes nothing, save for a timeout in it; its samples do
not count toward ``min_rtt`` either.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Annotated

from annotated_types import Ge, Gt, Le


@dataclass(frozen=True, slots=True)
class AdaptiveConcurrencySpec:
    """``[upstreams.NAME.adaptive_concurrency]``: its presence turns the limiter on."""

    #: The limit never goes below this many requests in flight.
    min_limit: Annotated[int, Ge(1)] = 2
    #: ... nor above this many.
    max_limit: Annotated[int, Ge(1)] = 1000
    #: The limit before any window has been measured.
    initial_limit: Annotated[int, Ge(1)] = 20
    #: Seconds of samples per window (the limit changes at most once a window).
    window: Annotated[float, Gt(0)] = 0.25
    #: Fewer samples than this in a window change nothing: the window goes on.
    min_samples: Annotated[int, Ge(1)] = 10
    #: Latency up to this multiple of min_rtt is no reason to lower the limit.
    tolerance: Annotated[float, Ge(1)] = 1.5
    #: Seconds between re-measures of min_rtt, each moved by up to ``jitter`` of it.
    min_rtt_interval: Annotated[float, Gt(0)] = 30.0
    jitter: Annotated[float, Ge(0), Le(1)] = 0.25
    #: Requests that may wait for a free place when the limit is reached; 0: none wait.
    max_queue: Annotated[int, Ge(0)] = 64
    #: Seconds a request may wait there before it is refused (503 upstream_overloaded).
    queue_timeout: Annotated[float, Gt(0)] = 0.05


#: What a window's limit moves by toward its target: a fifth of the way up, half down.
SMOOTH_UP = 0.2
SMOOTH_DOWN = 0.5
#: A timeout in a window multiplies the limit by this.
ON_TIMEOUT = 0.9
#: Loop lateness (s) under which a sample is always the upstream's (timer jitter, a GC).
LATE_FLOOR = 0.005


def late_bound(spec: AdaptiveConcurrencySpec, min_rtt: float) -> float:
    """How late the worker's loop may run while a sample is still read as the upstream's:
    the lateness that, added to ``min_rtt``, stays within ``tolerance`` of it."""
    return max((spec.tolerance - 1.0) * min_rtt, LATE_FLOOR)


class Gradient:
    """The limit of one upstream in one worker: fed samples, read at admission.

    Pure logic with the clock passed in (``now``, seconds), so its rules are tested alone.
    """

    __slots__ = (
        "_late",
        "_low_count",
        "_low_min",
        "_max_used",
        "_next_remeasure",
        "_samples",
        "_timeouts",
        "_window_end",
        "limit",
        "min_rtt",
        "probing",
        "spec",
    )

    def __init__(self, spec: AdaptiveConcurrencySpec, now: float) -> None:
        self.spec = spec
        #: Requests allowed in flight now (fractional: it moves smoothly; admission floors it).
        self.limit = float(min(max(spec.initial_limit, spec.min_limit), spec.max_limit))
        #: Seconds to a response head with nothing queued; 0 until first measured.
        self.min_rtt = 0.0
        #: True while a probe holds in flight to a quarter of the limit to re-measure min_rtt.
        self.probing = False
        self._samples: list[float] = []
        #: Samples that started with a short queue (in flight <= a quarter of the limit)
        #: since the last re-measure, and the fastest of them: what min_rtt is taken from.
        self._low_count = 0
        self._low_min = math.inf
        self._timeouts = 0
        self._max_used = 0
        #: The latest loop lateness seen this window exceeded late_bound: a window to drop.
        self._late = False
        self._window_end = now + spec.window
        # The first re-measure comes soon: a cold start under load measures a queue.
        self._next_remeasure = now + 8 * spec.window

    @property
    def admit_limit(self) -> int:
        """In flight allowed at admission: the limit, or a quarter of it while probing."""
        limit = max(self.spec.min_limit, math.floor(self.limit))
        return max(1, limit // 4) if self.probing else limit

    def started(self, in_flight: int) -> None:
        """A request was admitted; ``in_flight`` counts it."""
        if in_flight > self._max_used:
            self._max_used = in_flight

    def sample(self, rtt: float, in_flight_at_start: int, now: float, late: float = 0.0) -> None:
        """A first try's response head arrived ``rtt`` s after it was admitted, while the
        worker's loop ran ``late`` s late (its latest measure)."""
        self._samples.append(rtt)
        if late > late_bound(self.spec, self.min_rtt):
            self._late = True  # the window will say nothing about the upstream
        elif in_flight_at_start <= max(1, math.floor(self.limit) // 4):
            self._low_count += 1
            if rtt < self._low_min:
                self._low_min = rtt
        if now >= self._window_end and len(self._samples) >= self.spec.min_samples:
            self._close_window(now)

    def timed_out(self) -> None:
        """A request ran out of time at the upstream: a sign of overload, not a sample."""
        self._timeouts += 1

    # ---- windows -------------------------------------------------------------------------

    def _close_window(self, now: float) -> None:
        spec = self.spec
        samples = self._samples
        if self._late and not self._timeouts:
            self._next_window(now)  # the worker's lateness, not the upstream's latency
            return
        samples.sort()
        rtt = samples[len(samples) // 2]
        if now >= self._next_remeasure or self.probing:
            self._remeasure(now)
        elif self.min_rtt == 0.0 or samples[0] < self.min_rtt:
            self.min_rtt = samples[0]  # a faster answer than any before: the floor moves
        limit = self.limit
        if self._timeouts:
            target = limit * ON_TIMEOUT
        else:
            gradient = min(1.0, max(0.5, spec.tolerance * self.min_rtt / rtt)) if rtt else 1.0
            target = limit * gradient + math.sqrt(limit)
        if target > limit:
            if self._max_used * 2 >= limit:  # only a limit that was used may grow
                limit += (target - limit) * SMOOTH_UP
        else:
            limit += (target - limit) * SMOOTH_DOWN
        self.limit = min(float(spec.max_limit), max(float(spec.min_limit), limit))
        self._next_window(now)

    def _next_window(self, now: float) -> None:
        self._samples.clear()
        self._timeouts = 0
        self._max_used = 0
        self._late = False
        self._window_end = now + self.spec.window

    def _remeasure(self, now: float) -> None:
        """Take min_rtt afresh from samples that met a short queue; probe for them when
        there were none (in flight held at a quarter of the limit until there are)."""
        if self._low_count >= self.spec.min_samples:
            self.min_rtt = self._low_min
            self.probing = False
            self._low_count = 0
            self._low_min = math.inf
            self._next_remeasure = now + self._interval()
        else:
            self.probing = True  # held until enough samples meet a short queue

    def _interval(self) -> float:
        spec = self.spec
        return spec.min_rtt_interval * (1.0 + spec.jitter * (2.0 * random.random() - 1.0))
