"""Counts over a sliding time window, in one-second buckets: O(1) to add and to read."""

from __future__ import annotations


class SlidingCounts:
    """Two counters (``total`` and ``marked``) over the last ``window`` seconds.

    The window moves in whole seconds: a bucket per second, a ring of them, and running sums,
    so adding and reading never scan. ``marked`` is what the caller counts out of ``total``
    (failures out of requests, retries out of requests).
    """

    __slots__ = ("_marked", "_second", "_size", "_totals", "marked", "total")

    def __init__(self, window: float) -> None:
        self._size = max(1, round(window))
        self._totals = [0] * self._size
        self._marked = [0] * self._size
        self._second = 0
        self.total = 0
        self.marked = 0

    def advance(self, now: float) -> None:
        """Forget the buckets that slid out of the window by ``now`` (loop time, seconds)."""
        second = int(now)
        if second == self._second:
            return
        steps = min(second - self._second, self._size)
        self._second = second
        totals, marked, size = self._totals, self._marked, self._size
        for offset in range(steps):
            index = (second - offset) % size
            self.total -= totals[index]
            self.marked -= marked[index]
            totals[index] = 0
            marked[index] = 0

    def add(self, now: float, *, total: int = 0, marked: int = 0) -> None:
        self.advance(now)
        index = self._second % self._size
        self._totals[index] += total
        self._marked[index] += marked
        self.total += total
        self.marked += marked

    def clear(self) -> None:
        self._totals = [0] * self._size
        self._marked = [0] * self._size
        self.total = 0
        self.marked = 0
