"""``python -m gateway.loadtest -c gateway.toml --host URL``, which ``quartgate loadtest``
execs: Locust's gevent patching must come before anything imports ``ssl`` or ``socket``,
so it is the first third-party import here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import locust  # noqa: F401  (patches the standard library with gevent)
except ImportError:  # pragma: no cover - the loadtest extra is not installed
    sys.exit("quartgate loadtest needs Locust: pip install 'quartgate[loadtest]'")

from gateway.config import ConfigError, load_config
from gateway.environment import Environment
from gateway.loadtest.plan import PlanError, header_lines, pairs, plan
from gateway.loadtest.run import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quartgate loadtest",
        description="Load-test a gateway's routes with Locust: one weighted task per route.",
    )
    add = parser.add_argument
    add("-c", "--config", default="gateway.toml", help="the config whose routes are tested")
    add("--host", required=True, help="the gateway's URL, e.g. http://127.0.0.1:8080")
    add("-u", "--users", type=int, default=16, help="concurrent users (connections)")
    add("-d", "--duration", type=float, default=20.0, help="seconds of load")
    add("--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="sent on every request; also includes the routes behind auth")  # fmt: skip
    add("--param", action="append", default=[], metavar="NAME=VALUE",
        help="a value for {NAME} path segments (default: a number per request)")  # fmt: skip
    add("--weight", action="append", default=[], metavar="ROUTE=N",
        help="a route's share of the requests (default 1; 0 leaves it out)")  # fmt: skip
    add("--path", action="append", default=[], metavar="ROUTE=PATH",
        help="the path requested for a route instead of its own")  # fmt: skip
    add("--websocket", action="store_true",
        help="WebSocket routes too: each task a session (handshake, close)")  # fmt: skip
    add("--out", default="loadtest-report", help="folder for the CSV files and the HTML report")
    args = parser.parse_args(argv)
    if args.users < 1 or args.duration <= 0:
        parser.error("--users must be at least 1 and --duration above 0")
    try:
        config = load_config(args.config, environ=Environment.read().variables, deferred=[])
        planned = plan(
            config,
            headers=header_lines(args.header),
            weights=pairs(args.weight, "--weight"),
            paths=pairs(args.path, "--path"),
            websocket=args.websocket,
        )
        params = pairs(args.param, "--param")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except PlanError as error:
        print(f"quartgate loadtest: {error}", file=sys.stderr)
        return 2
    for route, reason in planned.skipped.items():
        print(f"skipped {route}: {reason}")
    if not planned.tasks:
        print("quartgate loadtest: no route left to load", file=sys.stderr)
        return 2
    print(
        f"{len(planned.tasks)} routes, {args.users} users, {args.duration:g} s against {args.host}",
        flush=True,
    )
    return run(
        planned,
        args.host.rstrip("/"),
        users=args.users,
        duration=args.duration,
        params=params,
        out=Path(args.out),
    )


if __name__ == "__main__":
    sys.exit(main())
