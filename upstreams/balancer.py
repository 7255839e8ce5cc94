"""Choosing a target for each request. Each choice is O(1) or O(targets) with tiny constants."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Balancer(Protocol[T_co]):
    def pick(self) -> T_co: ...


class RoundRobin(Generic[T]):
    """Each target in turn."""

    def __init__(self, items: Sequence[T]) -> None:
        self._next = itertools.cycle(items).__next__

    def pick(self) -> T:
        return self._next()


class SmoothWeighted(Generic[T]):
    """Nginx's smooth weighted round robin.

    Weights 5,1,1 give a,a,b,a,c,a,a: spread out, not five a's then b, c.
    """

    def __init__(self, items: Sequence[T], weights: Sequence[int]) -> None:
        self._items = list(items)
        self._weights = list(weights)
        self._current = [0] * len(items)
        self._total = sum(weights)

    def pick(self) -> T:
        current = self._current
        best = 0
        for i, weight in enumerate(self._weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._items[best]


class Single(Generic[T]):
    def __init__(self, item: T) -> None:
        self._item = item

    def pick(self) -> T:
        return self._item


def make_balancer(kind: str, items: Sequence[T], weights: Sequence[int]) -> Balancer[T]:
    if len(items) == 1:
        return Single(items[0])
    if kind == "weighted" or (kind == "round_robin" and len(set(weights)) > 1):
        return SmoothWeighted(items, weights)
    if kind == "round_robin":
        return RoundRobin(items)
    raise ValueError(f"unknown balancer {kind!r}")
