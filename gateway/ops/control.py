"""Operator decisions that outlive a request and a reload: drained targets, gateway drain,
cache purges.

With one worker they live in memory. With several, the admin request lands in one worker
only, so the decisions are kept in a small JSON file in the runtime directory that
``quartgate serve`` creates; every worker checks the file's mtime once a second and applies
what changed (a read-modify-write under ``flock``, so two admin calls never lose one). The
file is read whole each time, not judged by its mtime: coarse file timestamps would hide a
second change made within the same tick.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

CONTROL_FILE = "control.json"
PURGES_KEPT = 64


class Control:
    def __init__(self, runtime_dir: str | None = None) -> None:
        #: True while the whole gateway is drained: /readyz fails, traffic still served.
        self.draining = False
        #: (upstream, target URL) pairs that get no new requests.
        self.drained: set[tuple[str, str]] = set()
        #: Bumped by every reload request, so each worker reloads once per bump.
        self.generation = 0
        #: Reloads the supervisor checked (refused or passed on to every worker), by result,
        #: not yet in a worker's metrics: the first worker to sync takes and counts them,
        #: so a reload is counted once, not once per worker.
        self.reloads_to_count: dict[str, int] = {}
        #: Cache purges asked for (docs/cache.md): (number, route or "", path or ""), the
        #: latest :data:`PURGES_KEPT`; each worker applies those it has not applied yet.
        self.purges: list[tuple[int, str, str]] = []
        self._path = Path(runtime_dir) / CONTROL_FILE if runtime_dir else None
        self._seen: str | None = None

    @property
    def shared(self) -> bool:
        return self._path is not None

    def is_drained(self, upstream: str, target: str) -> bool:
        return (upstream, target) in self.drained

    def drained_targets(self, upstream: str) -> frozenset[str]:
        return frozenset(t for u, t in self.drained if u == upstream)

    @contextlib.contextmanager
    def change(self) -> Iterator[Control]:
        """Read-modify-write: the latest shared decisions are loaded, edited, saved."""
        if self._path is None:
            yield self
            return
        lock = self._path.with_suffix(".lock")
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._load()
                yield self
                self._save()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def poll(self) -> bool:
        """Reload the shared file if another worker changed it; True when something did."""
        if self._path is None:
            return False
        return self._load()

    def _load(self) -> bool:
        assert self._path is not None
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False
        if text == self._seen:
            return False
        self._seen = text
        data = json.loads(text)
        before = (
            self.draining, self.drained, self.generation, self.reloads_to_count, self.purges
        )  # fmt: skip
        self.draining = bool(data.get("draining", False))
        self.drained = {(str(u), str(t)) for u, t in data.get("drained", [])}
        self.generation = int(data.get("generation", 0))
        counts = data.get("reloads_to_count", {})
        self.reloads_to_count = {str(k): int(v) for k, v in counts.items()}
        self.purges = [(int(n), str(r), str(p)) for n, r, p in data.get("purges", [])]
        after = (self.draining, self.drained, self.generation, self.reloads_to_count, self.purges)
        return before != after

    def _save(self) -> None:
        assert self._path is not None
        data = {
            "draining": self.draining,
            "drained": sorted(self.drained),
            "generation": self.generation,
            "reloads_to_count": self.reloads_to_count,
            "purges": self.purges[-PURGES_KEPT:],
        }
        text = json.dumps(data)
        temp = self._path.with_name(f".{CONTROL_FILE}.{os.getpid()}")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, self._path)
        self._seen = text

    def purge(self, route: str, path: str) -> int:
        """Record a cache purge for every worker; its number."""
        number = (self.purges[-1][0] if self.purges else 0) + 1
        self.purges.append((number, route, path))
        del self.purges[:-PURGES_KEPT]
        return number
