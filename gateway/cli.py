"""``quartgate serve | check | routes``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quartgate", description="An async HTTP API gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway under Hypercorn")
    serve.add_argument("-c", "--config", default="gateway.toml", help="gateway config (TOML)")
    serve.add_argument(
        "--server-config",
        default=None,
        help="Hypercorn settings (TOML); default: ./hypercorn.toml when it exists",
    )
    serve.add_argument("-b", "--bind", action="append", help="HOST:PORT (repeatable)")
    serve.add_argument("-w", "--workers", type=int, help="worker processes")
    serve.add_argument("--pid-file", help="write the server's pid here (for quartgate reload)")

    reload = commands.add_parser(
        "reload", help="check a config, then have the running gateway load it again (SIGHUP)"
    )
    reload.add_argument("-c", "--config", default="gateway.toml", help="the file it serves")
    target = reload.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid-file", help="the pid file given to quartgate serve")
    target.add_argument("--pid", type=int, help="the pid of quartgate serve")

    check = commands.add_parser("check", help="validate a config and print its route table")
    check.add_argument("-c", "--config", default="gateway.toml")

    routes = commands.add_parser("routes", help="print the route table")
    routes.add_argument("-c", "--config", default="gateway.toml")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "reload":
        from gateway.server.supervisor import reload_command

        return reload_command(args.config, args.pid_file, args.pid)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    print(route_table(config))
    if args.command == "check":
        print(
            f"{args.config}: OK ({len(config.routes)} routes, "
            f"{len(config.upstreams) + len(config.app_upstreams)} upstreams)"
        )
    return 0


def route_table(config: GatewayConfig) -> str:
    from routes.matching import RouteTable

    rows = [("ROUTE", "HOST", "PATH", "METHODS", "UPSTREAM", "REWRITE")]
    for route in RouteTable(config.routes).routes:  # in match precedence order
        spec = route.spec
        targets = config.upstreams.get(spec.upstream)
        where = (
            f"{spec.upstream} ({', '.join(t.url for t in targets.targets)})"
            if targets
            else f"{spec.upstream} (in-process app)"
        )
        rows.append(
            (
                spec.name,
                spec.host or "*",
                spec.path,
                ",".join(sorted(spec.methods)) if spec.methods else "*",
                where,
                "strip_prefix" if spec.strip_prefix else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _serve(args: argparse.Namespace) -> int:
    from gateway.server.settings import load_server_config
    from gateway.server.supervisor import serve

    config_path = Path(args.config).resolve()
    server_path = args.server_config
    if server_path is None and Path("hypercorn.toml").exists():
        server_path = "hypercorn.toml"
    from gateway.observability.serving import add_admin_bind, shared_runtime

    try:
        config = load_config(config_path)  # fail here, with every reason, not inside a worker
        server = load_server_config(server_path, bind=args.bind, workers=args.workers)
        add_admin_bind(config, server)
        if args.pid_file:
            server.pid_path = args.pid_file
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    os.environ["QUARTGATE_CONFIG"] = str(config_path)
    if server.workers == 1:
        server.workers = 0  # serve in this process: no supervisor needed for one worker
    with shared_runtime(server.workers):
        return serve(server)  # drain on SIGTERM, reload on SIGHUP (gateway/server/supervisor.py)


if __name__ == "__main__":
    sys.exit(main())
