"""Two revisions of quartgate, benchmarked in one invocation: is a change cheaper or dearer?

    python -m loadtests.compare 66c331f HEAD                 # 3 rounds, both engines
    python -m loadtests.compare main~5 main --rounds 5 --engines uvicorn
    python -m loadtests.compare HEAD HEAD --b-setting 'server_timing = true'   # a setting's cost

Each revision is exported from git (``git archive``, no checkout) into a temporary folder
and runs its own ``loadtests/bench.py`` there, with the same upstream kind, CPU pinning and
load tool, so what differs between the two is the gateway's code. Runs alternate (A B A B
...) so a machine that slows down or speeds up during the comparison weighs on both alike.
What is compared is the figure a noisy machine disturbs least: the gateway's CPU time per
request (``CPU µs/req``, the process's user+system time over requests served), beside
requests per second and p99 latency. Printed: the median of the rounds per revision, their
spread (min-max), and B/A as a ratio; a difference inside both spreads is no difference.
``--a-setting`` / ``--b-setting`` add ``[gateway]`` lines to one side's config, so the same
revision can be compared with a setting off and on.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

from loadtests.servers import ROOT
from loadtests.summarize import median_range

#: (column in bench.py's CSV, label, digits): what is compared.
FIGURES = (("CPU µs/req", "CPU µs/req", 0), ("req/s", "req/s", 0), ("p99 ms", "p99 ms", 2))


def export(rev: str, into: Path) -> str:
    """``rev``'s tree written under ``into``; returns its short commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def bench_once(tree: Path, args: argparse.Namespace, settings: list[str]) -> list[dict[str, str]]:
    """One ``loadtests.bench`` run in ``tree``; the quartgate rows of its CSV."""
    reports = tree / "loadtests" / "reports"
    before = set(reports.glob("bench-*.csv")) if reports.exists() else set()
    command = [
        sys.executable, "-m", "loadtests.bench",
        "--scenarios", *args.scenarios, "--connections", str(args.connections),
        "--engines", *args.engines, "--warmup", str(args.warmup),
        "--duration", str(args.duration), "--skip-direct", "--skip-nginx", "--skip-locust",
    ]  # fmt: skip
    for line in settings:
        command += ["--gateway-setting", line]
    # The tree's own packages first: ``-m`` puts the working directory on sys.path, and
    # PYTHONPATH carries it into the gateway processes the bench starts.
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench failed in {tree}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (report,) = set(reports.glob("bench-*.csv")) - before
    with report.open(newline="") as file:
        return [row for row in csv.DictReader(file) if row["system"].startswith("quartgate")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare", description=__doc__)
    parser.add_argument("a", help="the revision before (any git revision)")
    parser.add_argument("b", help="the revision after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["hypercorn", "uvicorn"])
    parser.add_argument("--scenarios", nargs="+", default=["small"])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    for side in ("a", "b"):
        parser.add_argument(
            f"--{side}-setting", action="append", default=[], metavar="'KEY = VALUE'",
            help=f"a TOML line added to {side.upper()}'s [gateway] table (repeatable)",
        )  # fmt: skip
    args = parser.parse_args(argv)
    # (revision, scenario, system) -> figure -> one value per round
    results: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    with tempfile.TemporaryDirectory(prefix="quartgate-compare-") as tmp:
        commits, trees = {}, {}
        for label, rev in (("a", args.a), ("b", args.b)):
            trees[label] = Path(tmp) / label
            commits[label] = export(rev, trees[label])
        settings = {"a": args.a_setting, "b": args.b_setting}
        for round_no in range(1, args.rounds + 1):
            for label, tree in trees.items():
                print(f"round {round_no}/{args.rounds}: {label.upper()}", flush=True)
                for row in bench_once(tree, args, settings[label]):
                    key = (label, row["scenario"], row["system"])
                    for column, _, _ in FIGURES:
                        results[key][column].append(float(row[column] or "nan"))
    print(f"\n{args.rounds} alternating rounds, median (min-max); B/A is of the medians")
    for label, rev in (("a", args.a), ("b", args.b)):
        extra = "; ".join(settings[label])
        print(f"{label.upper()} = {commits[label]} ({rev}){f' with {extra}' if extra else ''}")
    print("\n| scenario | system | figure | A | B | B/A |\n|---|---|---|---|---|---|")
    for (label, scenario, system), figures in sorted(results.items()):
        if label != "a" or ("b", scenario, system) not in results:
            continue
        for column, name, digits in FIGURES:
            before, after = figures[column], results[("b", scenario, system)][column]
            ratio = statistics.median(after) / statistics.median(before)
            print(
                f"| {scenario} | {system} | {name} | {median_range(before, digits)} "
                f"| {median_range(after, digits)} | {ratio:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
