"""Two revisions of quartgate, benchmarked in one invocation: is a change cheaper or dearer?

    python -m loadtests.compare 66c331f HEAD                 # 3 rounds, both engines
    python -m loadtests.compare main~5 main --rounds 5 --engines uvicorn

Each revision is exported from git (``git archive``, no checkout) into a temporary folder
and runs its own ``loadtests/bench.py`` there, with the same upstream kind, CPU pinning and
load tool, so what differs between the two is the gateway's code. Runs alternate (A B A B
...) so a machine that slows down or speeds up during the comparison weighs on both alike.
What is compared is the figure a noisy machine disturbs least: the gateway's CPU time per
request (``CPU µs/req``, the process's user+system time over requests served), beside
requests per second and p99 latency. Printed: the median of the rounds per revision, their
spread (min-max), and B/A as a ratio; a difference inside both spreads is no difference.
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


def bench_once(tree: Path, args: argparse.Namespace) -> list[dict[str, str]]:
    """One ``loadtests.bench`` run in ``tree``; the quartgate rows of its CSV."""
    reports = tree / "loadtests" / "reports"
    before = set(reports.glob("bench-*.csv")) if reports.exists() else set()
    command = [
        sys.executable, "-m", "loadtests.bench",
        "--scenarios", *args.scenarios, "--connections", str(args.connections),
        "--engines", *args.engines, "--warmup", str(args.warmup),
        "--duration", str(args.duration), "--skip-direct", "--skip-nginx", "--skip-locust",
    ]  # fmt: skip
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
    args = parser.parse_args(argv)
    # (revision, scenario, system) -> figure -> one value per round
    results: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    with tempfile.TemporaryDirectory(prefix="quartgate-compare-") as tmp:
        trees = {}
        for label, rev in (("a", args.a), ("b", args.b)):
            tree = Path(tmp) / label
            trees[export(rev, tree)] = tree
        for round_no in range(1, args.rounds + 1):
            for commit, tree in trees.items():
                print(f"round {round_no}/{args.rounds}: {commit}", flush=True)
                for row in bench_once(tree, args):
                    key = (commit, row["scenario"], row["system"])
                    for column, _, _ in FIGURES:
                        results[key][column].append(float(row[column] or "nan"))
    (a, b) = trees
    print(f"\n{args.rounds} alternating rounds, median (min-max); B/A is of the medians")
    print(f"A = {a} ({args.a}), B = {b} ({args.b})\n")
    print("| scenario | system | figure | A | B | B/A |\n|---|---|---|---|---|---|")
    for (commit, scenario, system), figures in sorted(results.items()):
        if commit != a or (b, scenario, system) not in results:
            continue
        for column, label, digits in FIGURES:
            before, after = figures[column], results[(b, scenario, system)][column]
            ratio = statistics.median(after) / statistics.median(before)
            print(
                f"| {scenario} | {system} | {label} | {median_range(before, digits)} "
                f"| {median_range(after, digits)} | {ratio:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
