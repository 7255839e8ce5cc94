"""``quartgate serve | reload | check | routes | loadtest``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.config import (
    ENGINES,
    ConfigError,
    GatewayConfig,
    Problem,
    engine_warnings,
    load_config,
)
from gateway.environment import Environment
from gateway.version import __version__
from routes.model import RouteSpec
from upstreams.spec import TargetSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quartgate", description="An async HTTP API gateway.")
    parser.add_argument("--version", action="version", version=f"quartgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (Hypercorn or uvicorn)")
    serve.add_argument("-c", "--config", default="gateway.toml", help="gateway config (TOML)")
    serve.add_argument(
        "--server-config",
        default=None,
        help="Hypercorn settings (TOML); default: ./hypercorn.toml when it exists",
    )
    serve.add_argument("-b", "--bind", action="append", help="HOST:PORT (repeatable)")
    serve.add_argument("-w", "--workers", type=int, help="worker processes")
    serve.add_argument("--pid-file", help="write the server's pid here (for quartgate reload)")
    serve.add_argument(
        "--engine",
        choices=ENGINES,
        help="the server engine; default: [server] engine in the config, else hypercorn",
    )

    reload = commands.add_parser(
        "reload", help="check a config, then have the running gateway load it again (SIGHUP)"
    )
    reload.add_argument(
        "-c", "--config", default="gateway.toml", help="the file it serves (checked: exit 2 if not)"
    )
    target = reload.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid-file", help="the pid file given to quartgate serve")
    target.add_argument("--pid", type=int, help="the pid of quartgate serve")

    check = commands.add_parser("check", help="validate a config and print its route table")
    check.add_argument("-c", "--config", default="gateway.toml")

    routes = commands.add_parser("routes", help="print the route table")
    routes.add_argument("-c", "--config", default="gateway.toml")

    commands.add_parser(
        "loadtest",
        add_help=False,  # its own parser (python -m gateway.loadtest) answers --help
        help="load-test the routes of a config with Locust (quartgate loadtest --help)",
    )

    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["loadtest"]:
        # A fresh interpreter: Locust patches the standard library with gevent as it is
        # imported, before anything imports ssl; this process has imported it already.
        command = [sys.executable, "-m", "gateway.loadtest", *given[1:]]
        os.execv(sys.executable, command)
    args = parser.parse_args(argv)
    environment = Environment.read()  # once, here; what needs it is handed it
    if args.command == "serve":
        return _serve(args, environment)
    if args.command == "reload":
        from gateway.server.supervisor import reload_command

        return reload_command(args.config, args.pid_file, args.pid, environment.variables)
    kinds: dict[str, str] = {}
    deferred: list[Problem] = []  # a secret CI does not have: a warning, not an error
    try:
        config = load_config(args.config, environ=environment.variables, deferred=deferred)
        if args.command == "check":
            kinds = import_apps(config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    deferred += engine_warnings(config, config.server.engine, f"server.engine in {args.config}")
    for problem in deferred:
        print(f"warning: {problem}", file=sys.stderr)
    print(route_table(config))
    for name, kind in kinds.items():
        print(f"upstreams.{name}: in-process {kind} app ({config.app_upstreams[name].app})")
    if args.command == "check":
        n_routes = len(config.routes)
        n_upstreams = len(config.upstreams) + len(config.app_upstreams)
        counts = f"{_count(n_routes, 'route')}, {_count(n_upstreams, 'upstream')}"
        print(f"{args.config}: OK ({counts})")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def import_apps(config: GatewayConfig) -> dict[str, str]:
    """Import every in-process app upstream as the workers will, so that one that cannot be
    imported is a ``file: upstreams.NAME.app: reason`` here, not a traceback per worker;
    the kind of each (blueprint, asgi, wsgi), by upstream name."""
    from gateway.inprocess import WSGI, import_app

    problems: list[Problem] = []
    kinds: dict[str, str] = {}
    for name, spec in config.app_upstreams.items():
        try:
            kind, _ = import_app(spec, config.source)
        except ConfigError as error:
            problems += error.problems
            continue
        kinds[name] = f"{kind} (threads = {spec.threads})" if kind == WSGI else kind
    if problems:
        raise ConfigError(problems)
    return kinds


def route_table(config: GatewayConfig) -> str:
    from routes.model import RouteTable

    rows = [("ROUTE", "HOST", "PATH", "METHODS", "UPSTREAM", "REWRITE", "POLICIES")]
    for route in RouteTable(config.routes).routes:  # in match precedence order
        spec = route.spec
        targets = config.upstreams.get(spec.upstream)
        where = (
            f"{spec.upstream} ({', '.join(_target(t) for t in targets.targets)})"
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
                "strip_prefix"
                if spec.strip_prefix
                else f"prefix_rewrite={spec.prefix_rewrite}"
                if spec.prefix_rewrite is not None
                else "-",
                _policies(config, spec),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _target(target: TargetSpec) -> str:
    return target.location if target.weight == 1 else f"{target.location} [weight {target.weight}]"


def _policies(config: GatewayConfig, spec: RouteSpec) -> str:
    """What the route does besides forwarding, in pipeline order: ``cors,auth,...``."""
    policies = config.policies_of(spec)
    names = [
        name
        for name in ("cors", "auth", "rate_limit", "headers", "websocket", "retry")
        if getattr(policies, name) is not None
    ]
    if policies.timeout:
        names.append(f"timeout={policies.timeout:g}s")
    return ",".join(names) or "-"


def _serve(args: argparse.Namespace, environment: Environment) -> int:
    from gateway.observability.serving import add_admin_bind, shared_runtime
    from gateway.server.hypercorn_toml import load_server_config
    from gateway.server.supervisor import missing_packages, serve

    config_path = Path(args.config).resolve()
    server_path = args.server_config
    if server_path is None and Path("hypercorn.toml").exists():
        server_path = "hypercorn.toml"
    try:
        # Fail here, with every reason and no traceback, not inside each worker.
        config = load_config(config_path, environ=environment.variables)
        import_apps(config)
        engine = args.engine or config.server.engine
        chosen = f"server.engine in {config_path}" if args.engine is None else "--engine"
        for problem in engine_warnings(config, engine, chosen):
            print(f"warning: {problem}", file=sys.stderr)
        missing = missing_packages(engine)
        if missing:
            reason = f"{engine} needs {', '.join(missing)}: pip install -e '.[fast]'"
            where = str(config_path) if args.engine is None else "--engine"
            raise ConfigError([Problem(where, "server.engine", reason)])
        server = load_server_config(
            server_path, bind=args.bind, workers=args.workers, engine=engine
        )
        # Where each address came from, for the one line that says it is taken.
        public = "--bind" if args.bind else f"{server_path}: bind" if server_path else "bind"
        origins = dict.fromkeys(server.bind, public)
        add_admin_bind(config, server)
        if config.observability.admin is not None:
            origins[config.observability.admin.bind] = f"{config_path}: admin.bind"
        if args.pid_file:
            server.pid_path = args.pid_file
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    if server.workers == 1:
        server.workers = 0  # serve in this process: no supervisor needed for one worker
    with shared_runtime(server.workers, environment.metrics_dir) as runtime_dir:
        worker = Environment(str(config_path), engine, runtime_dir, environment.variables)
        # drain on SIGTERM, reload on SIGHUP (gateway/server/supervisor.py)
        return serve(server, worker, gateway=config, bind_origins=origins)


if __name__ == "__main__":
    sys.exit(main())
