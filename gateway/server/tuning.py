"""Process-wide settings of a serving worker, applied once after the app is built.

Measured under wrk load (loadtests/README.md): with CPython's defaults the collector took
about 8% of a worker's CPU, most of it in full collections that walk every long-lived
object of the app (Quart, the server, config, route tables) once a second. Freezing what
exists after start-up moves it out of the collector's sight, and a higher young-generation
threshold collects the short-lived request objects in larger, rarer batches: 0.2% of CPU.
A hot reload builds a new snapshot after the freeze; the old one is still freed by
reference counting, only reference cycles in it would stay (none are known). The same on
every engine.
"""

from __future__ import annotations

import gc

#: (young, middle, old): young collections every 10,000 net container allocations instead
#: of 700 (a few dozen requests instead of a few); the others as CPython's ratios.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
