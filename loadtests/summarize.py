"""Medians, with their spread, of several bench runs: the figures to publish.

    python -m loadtests.summarize loadtests/reports/bench-A.csv bench-B.csv bench-C.csv

One run on a shared machine can be off by a third; the median of three, with the lowest
and highest beside it, says how far to trust a figure. Ratios (quartgate/nginx, uvicorn
engine/Hypercorn engine, 256/64 connections) are taken within each run first, then their
median: the machine's load moves both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

Key = tuple[str, str, str, str]  # scenario, system, workers, conns
Run = dict[Key, dict[str, float]]


def read(path: Path) -> Run:
    rows: Run = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if row["scenario"] == "soak":
                continue
            key = (row["scenario"], row["system"], row["workers"], row["conns"])
            rows[key] = {
                name: float(row[name])
                for name in ("req/s", "MB/s", "p50 ms", "p99 ms", "errors", "CPU µs/req")
                if row.get(name) not in (None, "")
            }
    return rows


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as the reports print them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median_range(values: list[float], digits: int = 0) -> str:
    """``median (min-max)``, the short form the WebSocket and in-process benches print."""
    fmt = f",.{digits}f"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def spread(values: list[float], fmt: str) -> str:
    """``median (min to max)``."""
    if not values:
        return ""
    median = statistics.median(values)
    if len(values) == 1:
        return fmt.format(median)
    return f"{fmt.format(median)} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def ratios(runs: list[Run]) -> list[str]:
    """Per-run ratios against the targets, then their medians."""
    found: dict[str, list[float]] = defaultdict(list)
    for run in runs:

        def rps(
            scenario: str, system: str, conns: str, workers: str = "1", run: Run = run
        ) -> float | None:
            row = run.get((scenario, system, workers, conns))
            return row["req/s"] if row else None

        def p(scenario: str, system: str, conns: str, name: str, run: Run = run) -> float | None:
            row = run.get((scenario, system, "1", conns))
            return row[name] if row else None

        fast, slow = rps("small", "quartgate-uvicorn", "64"), rps("small", "quartgate", "64")
        if fast and slow:
            found["uvicorn engine / Hypercorn engine, req/s at 64"].append(fast / slow)
        for system in ("quartgate", "quartgate-uvicorn"):
            at64, at256 = rps("small", system, "64"), rps("small", system, "256")
            if at64 and at256:
                found[f"{system}: req/s at 256 / at 64"].append(at256 / at64)
            p50, p99 = p("small", system, "256", "p50 ms"), p("small", system, "256", "p99 ms")
            if p50 and p99:
                found[f"{system}: p99 / p50 at 256"].append(p99 / p50)
            p50, p99 = p("small", system, "64", "p50 ms"), p("small", system, "64", "p99 ms")
            if p50 and p99:
                found[f"{system}: p99 / p50 at 64"].append(p99 / p50)
            big = run.get(("large", system, "1", "16"))
            nginx = run.get(("large", "nginx", "1", "16"))
            if big and nginx and nginx["MB/s"]:
                found[f"{system}: 1 MiB bytes/s / nginx's"].append(big["MB/s"] / nginx["MB/s"])
            one, two = rps("small", system, "64"), rps("small", system, "64", "2")
            if one and two:
                found[f"{system}: 2 workers / 1 worker at 64"].append(two / one)
    return [f"| {name} | {spread(values, '{:.2f}')} |" for name, values in found.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.summarize", description=__doc__)
    parser.add_argument("csv", nargs="+", type=Path)
    args = parser.parse_args(argv)
    runs = [read(path) for path in args.csv]
    keys: list[Key] = []
    for run in runs:
        keys += [key for key in run if key not in keys]
    lines = [
        f"Median of {len(runs)} runs (lowest to highest):",
        "",
        "| scenario | system | workers | conns | req/s | p50 ms | p99 ms | errors | MB/s "
        "| CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        present = [run[key] for run in runs if key in run]

        def col(name: str, fmt: str, rows: list[dict[str, float]] = present) -> str:
            return spread([row[name] for row in rows if name in row], fmt)

        lines.append(
            f"| {' | '.join(key)} | {col('req/s', '{:,.0f}')} | {col('p50 ms', '{:.1f}')} "
            f"| {col('p99 ms', '{:.0f}')} | {col('errors', '{:.0f}')} | {col('MB/s', '{:,.0f}')} "
            f"| {col('CPU µs/req', '{:.0f}')} |"
        )
    lines += ["", "| ratio, within each run | median (lowest to highest) |", "|---|---|"]
    lines += ratios(runs)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
