"""Profile quartgate under wrk load with py-spy and summarise where the time goes.

    python -m loadtests.profile --seconds 20 --connections 64 [--native] [--top 40]

Same setup as the benchmark (gateway on CPU 0, nginx upstream and wrk on CPU 1). Writes
py-spy's collapsed stacks and a flame graph (SVG) under loadtests/reports/, then prints the
functions with the most samples, inclusive and self, and the share of time by package.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loadtests import loadgen, servers
from loadtests.bench import REPORTS, running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.profile")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--path", default="/json")
    parser.add_argument("--native", action="store_true", help="include C frames (slower)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    REPORTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = REPORTS / f"profile-{stamp}.txt"
    with tempfile.TemporaryDirectory(prefix="quartgate-profile-") as tmp:
        work = Path(tmp)
        upstream = servers.static_upstream(work, cpus="1")
        with running(upstream):
            gateway = servers.quartgate(work, upstream, cpus="0")
            with running(gateway):
                loadgen.wrk(gateway.url + args.path, args.connections, 3, cpus="1")  # warm-up
                result: list[loadgen.Result] = []
                load = threading.Thread(
                    target=lambda: result.append(
                        loadgen.wrk(
                            gateway.url + args.path, args.connections, args.seconds + 2, cpus="1"
                        )
                    )
                )
                load.start()
                time.sleep(1)
                pid = gateway.worker_pids()[0]
                cmd = [spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r"]
                cmd += [str(args.rate), "-f", "raw", "-o", str(raw), "--nonblocking"]
                subprocess.run([*cmd, *(["--native"] if args.native else [])], check=True)
                load.join()
    text = raw.read_text()
    stacks = [line.rsplit(" ", 1) for line in text.splitlines() if line.strip()]
    _summarise([(s, int(n)) for s, n in stacks], args.top)
    print(f"\nload during profile: {result[0].rps:,.0f} req/s (py-spy slows the target)")
    print(f"collapsed stacks: {raw}  (flamegraph.pl or speedscope.app render them)")
    return 0


def _summarise(stacks: list[tuple[str, int]], top: int) -> None:
    total = sum(n for _, n in stacks) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    for stack, count in stacks:
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[_short(frame)] += count
        own[_short(frames[-1])] += count
        packages[_package(frames[-1])] += count
    print(f"{total} samples\n\nself time by package:")
    for name, count in packages.most_common(15):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\nself time by function:")
    for name, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\ninclusive time by function:")
    for name, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")


def _package(frame: str) -> str:
    """``func (hypercorn/protocol/h11.py:12)`` -> ``hypercorn``; ``<frozen runpy>`` as is."""
    found = re.search(r"\(([^/():]+)[/.:]", frame)
    return found.group(1) if found else frame.split(" ")[0] or "(native)"


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    found = re.match(r"(.*) \((.*?):?\d*\)$", frame)
    if not found:
        return frame
    name, path = found.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path.rstrip(':0123456789')})"


if __name__ == "__main__":
    sys.exit(main())
