"""Load generators for the benchmark: wrk when installed, Locust headless otherwise.

Both are subprocesses (Locust monkey-patches the standard library on import: docs/known-defects.md),
pinned to their own CPU, bounded in time, and read back into one :class:`Result`.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests.servers import ROOT, pinned

WRK = shutil.which("wrk")

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_SIZES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


@dataclass(slots=True)
class Result:
    requests: int
    seconds: float
    rps: float
    bytes_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    detail: str = ""


def wrk(
    url: str,
    connections: int,
    seconds: float,
    *,
    cpus: str | None,
    timeout: float = 5.0,
) -> Result:
    """``wrk -t1 -cN -dS --latency``: non-2xx/3xx answers and socket errors count as errors."""
    return parse_wrk(wrk_output(url, connections, seconds, cpus=cpus, timeout=timeout))


def wrk_output(
    url: str, connections: int, seconds: float, *, cpus: str | None, timeout: float = 5.0
) -> str:
    """The text wrk prints for one run (for figures :class:`Result` does not hold)."""
    assert WRK is not None
    args = pinned(
        cpus,
        [
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout:g}s",
            "--latency",
            url,
        ],
    )
    return subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout


def parse_wrk(out: str) -> Result:
    def latency(pct: str) -> float:
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(found.group(1)) * UNITS[found.group(2)] if found else float("nan")

    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),\s+([\d.]+)([KMGT]?B) read", out)
    if done is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    requests = int(done.group(1))
    seconds = float(done.group(2)) * UNITS[done.group(3)] / 1e3
    read = float(done.group(4)) * _SIZES[done.group(5)]
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    detail = ""
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
        detail = socket_errors.group(0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
        detail = (detail + "; " if detail else "") + non_2xx.group(0)
    return Result(
        requests,
        seconds,
        requests / seconds if seconds else 0.0,
        read / seconds if seconds else 0.0,
        latency("50"),
        latency("99"),
        errors,
        detail,
    )


def locust(
    host: str,
    users: int,
    seconds: float,
    *,
    cpus: str | None,
    tags: list[str],
    csv_prefix: Path,
    html: Path | None = None,
    extra: list[str] | None = None,
) -> Result:
    """Locust headless, FastHttpUser scenarios from loadtests/locustfile.py."""
    args = pinned(
        cpus,
        [
            sys.executable,
            "-m",
            "locust",
            "--headless",
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--host",
            host,
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{max(1, round(seconds))}s",
            "--stop-timeout",
            "5",
            "--csv",
            str(csv_prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
            *(["--tags", *tags] if tags else []),
            *(["--html", str(html)] if html else []),
            *(extra or []),
        ],
    )
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120, cwd=ROOT)
    return read_locust_csv(Path(f"{csv_prefix}_stats.csv"), seconds)


def read_locust_csv(path: Path, seconds: float) -> Result:
    with path.open(newline="") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    row = rows["Aggregated"]
    requests = int(row["Request Count"])
    size = float(row["Average Content Size"] or 0)
    rps = float(row["Requests/s"])
    return Result(
        requests,
        seconds,
        rps,
        rps * size,
        float(row["50%"] or "nan"),
        float(row["99%"] or "nan"),
        int(row["Failure Count"]),
        f"{requests} requests via Locust",
    )
