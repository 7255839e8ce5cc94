"""Choosing a target for each request, among those that are up.

Every balancer answers ``pick(key, avoid)``: a target that is up and not in ``avoid`` (the
targets a retry already tried), else any target that is up, else None (then the upstream
answers 503). The common case, all targets up and nothing to avoid, costs O(1) for round
robin and hashing and one short pass for the weighted kinds.
"""

from __future__ import annotations

import hashlib
from bisect import bisect
from collections.abc import Sequence
from typing import Protocol

from upstreams.target import Target

BALANCERS = ("round_robin", "weighted", "least_outstanding", "hash")


class Balancer(Protocol):
    def pick(self, key: int, avoid: Sequence[Target]) -> Target | None: ...


def _any_up(items: Sequence[Target]) -> Target | None:
    for item in items:
        if item.up:
            return item
    return None


class Single:
    """One target: a retry goes to the same target."""

    def __init__(self, item: Target) -> None:
        self._item = item

    def pick(self, key: int, avoid: Sequence[Target]) -> Target | None:
        return self._item if self._item.up else None


class RoundRobin:
    """Each target in turn; a target that is down is skipped.

    A retry does not move the turn on, so a failing target does not get every first try.
    """

    def __init__(self, items: Sequence[Target]) -> None:
        self._items = list(items)
        self._next = 0

    def pick(self, key: int, avoid: Sequence[Target]) -> Target | None:
        items = self._items
        start = self._next
        if not avoid:
            self._next = (start + 1) % len(items)
            item = items[start]
            if item.up:
                return item
        n = len(items)
        for step in range(n):
            item = items[(start + step) % n]
            if item.up and item not in avoid:
                return item
        return _any_up(items)


class SmoothWeighted:
    """Nginx's smooth weighted round robin over the targets that are up.

    Weights 5,1,1 give a,a,b,a,c,a,a: spread out, not five a's then b, c.
    """

    def __init__(self, items: Sequence[Target]) -> None:
        self._items = list(items)
        self._weights = [item.weight for item in items]
        self._current = [0] * len(items)

    def pick(self, key: int, avoid: Sequence[Target]) -> Target | None:
        if avoid:  # a retry: the best other target now, without moving the schedule on
            up = [
                (self._current[i] + item.weight, i)
                for i, item in enumerate(self._items)
                if item.up and item not in avoid
            ]
            return self._items[max(up)[1]] if up else _any_up(self._items)
        current = self._current
        best = -1
        total = 0
        for i, item in enumerate(self._items):
            if not item.up:
                continue
            weight = self._weights[i]
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return _any_up(self._items)
        current[best] -= total
        return self._items[best]


class LeastOutstanding:
    """The target with the fewest requests in flight per unit of weight.

    Ties go round robin, so an idle upstream still spreads its load.
    """

    def __init__(self, items: Sequence[Target]) -> None:
        self._items = list(items)
        self._next = 0

    def pick(self, key: int, avoid: Sequence[Target]) -> Target | None:
        items = self._items
        n = len(items)
        start = self._next
        if not avoid:
            self._next = (start + 1) % n
        best: Target | None = None
        best_score = 0.0
        for step in range(n):
            item = items[(start + step) % n]
            if not item.up or (avoid and item in avoid):
                continue
            score = (item.outstanding + 1) / item.weight
            if best is None or score < best_score:
                best = item
                best_score = score
        return best if best is not None else _any_up(items)


class HashRing:
    """Consistent hashing (a ring with ``POINTS`` points per unit of weight).

    Adding a target to n moves about 1/(n+1) of the keys; a target that is down hands its
    keys to the next targets on the ring, and gets them back when it is up again. The ring
    hash is BLAKE2b, not Python's ``hash()``, so every worker maps a key the same way.
    """

    POINTS = 160

    def __init__(self, items: Sequence[Target]) -> None:
        self._items = list(items)
        points = sorted(
            (hash_bytes(f"{item.url}#{i}".encode()), index)
            for index, item in enumerate(items)
            for i in range(self.POINTS * item.weight)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [self._items[index] for _, index in points]

    def pick(self, key: int, avoid: Sequence[Target]) -> Target | None:
        owners = self._owners
        i = bisect(self._hashes, key)
        if i == len(owners):
            i = 0
        owner = owners[i]
        if owner.up and not avoid:
            return owner
        if _any_up(self._items) is None:
            return None
        size = len(owners)
        for step in range(size):
            owner = owners[(i + step) % size]
            if owner.up and owner not in avoid:
                return owner
        return _any_up(self._items)


def hash_bytes(value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "big")


def make_balancer(kind: str, items: Sequence[Target]) -> Balancer:
    if kind == "hash":
        return HashRing(items)  # even with one target: keys stay put when one is added
    if len(items) == 1:
        return Single(items[0])
    if kind == "least_outstanding":
        return LeastOutstanding(items)
    if kind == "weighted" or (kind == "round_robin" and len({t.weight for t in items}) > 1):
        return SmoothWeighted(items)
    if kind == "round_robin":
        return RoundRobin(items)
    raise ValueError(f"unknown balancer {kind!r}")
