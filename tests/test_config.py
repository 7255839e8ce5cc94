"""Config loading: every problem reported as ``file: key: reason``; valid files load typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.server import load_server_config

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
[upstreams.users]
targets = ["http://127.0.0.1:9001", { url = "http://127.0.0.1:9002", weight = 2 }]
max_connections = 64
connect_timeout = 1
http2 = false

[[routes]]
name = "users"
path = "/api/users"
methods = ["get", "POST"]
host = "api.example.com"
upstream = "users"
strip_prefix = true
"""


def problems_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_good_config_loads_typed(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    config = load_config(path)
    users = config.upstreams["users"]
    assert [t.url for t in users.targets] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert [t.weight for t in users.targets] == [1, 2]
    assert users.max_connections == 64
    assert users.connect_timeout == 1.0 and isinstance(users.connect_timeout, float)
    assert users.read_timeout == 30.0  # default
    route = config.routes[0]
    assert route.methods == {"GET", "HEAD", "POST"}
    assert route.strip_prefix and route.host == "api.example.com"


def test_unknown_keys_are_errors_with_full_key_path(tmp_path: Path) -> None:
    text = GOOD.replace("http2 = false", "http2 = false\nkeepalive_expiri = 3") + "\n[bogus]\n"
    found = problems_of(text, tmp_path)
    file = str(tmp_path / "bad.toml")
    assert (
        f"{file}: upstreams.users.keepalive_expiri: unknown key (did you mean 'keepalive_expiry'?)"
        in found
    )
    assert f"{file}: bogus: unknown key" in found


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = """
[upstreams.a]
targets = ["ftp://x", "http://h:99999", "http://h/path?q=1", 7]
max_connections = "many"
read_timeout = -1

[[routes]]
path = "no-slash"
upstream = "missing"
methods = ["FETCH"]

[[routes]]
name = "dup"
path = "/x"
upstream = "a"

[[routes]]
name = "dup"
path = "/x"
upstream = "a"
"""
    found = "\n".join(problems_of(text, tmp_path))
    for expected in (
        "upstreams.a.targets[0]: 'ftp://x' is not a valid URL: scheme must be http or https",
        "upstreams.a.targets[1]: 'http://h:99999' is not a valid URL",
        "upstreams.a.targets[2]: 'http://h/path?q=1': a target is scheme://host[:port][/path]",
        "upstreams.a.targets[3]: must be a URL string or a table, not an integer",
        "upstreams.a.max_connections: must be an integer, not a string",
        "upstreams.a.read_timeout: must be greater than 0",
        "routes[0].path: must start with '/'",
        "routes[0].upstream: names unknown upstream 'missing'",
        "routes[0].methods: unknown method(s) FETCH",
        'routes[2] "dup".name: duplicate route name (also routes[1])',
        'routes[2] "dup": duplicate route: same host, path and methods as routes[1]',
    ):
        assert expected in found, f"missing {expected!r} in:\n{found}"


def test_bool_is_not_an_integer() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "upstreams": {"u": {"targets": ["http://h"], "max_connections": True}},
                "routes": [{"path": "/", "upstream": "u"}],
            },
            "f.toml",
        )
    assert (
        str(info.value) == "f.toml: upstreams.u.max_connections: must be an integer, not a boolean"
    )


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    found = problems_of("[upstreams\n", tmp_path)
    assert found == [
        f"{tmp_path / 'bad.toml'}: line 1, column 11: "
        "invalid TOML: expected ']' at the end of a table declaration"
    ]
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert (
        str(info.value)
        == f"{tmp_path / 'absent.toml'}: cannot read file: No such file or directory"
    )


UNCLOSED = """\
[upstreams.api]
targets = ["http://10.0.0.5:8080",
           "http://10.0.0.6:8080"

[[routes]]
path = "/api"
upstream = "api"
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # tomllib stops at the next table, four lines below: the open array's line is named.
        (
            UNCLOSED,
            "line 2: invalid TOML: the array begun here is not closed "
            "(the parser stopped at line 5, column 1: unclosed array)",
        ),
        (
            'a = ["x",\n  "y"',
            "line 1: invalid TOML: the array begun here is not closed "
            "(the parser stopped at end of file: ",
        ),
        # A wrong value inside an array that is closed later is the value's fault.
        ('a = [\n  "x",\n  nope,\n]\n', "line 3, column 3: invalid TOML: invalid value"),
        # Brackets inside strings and comments, and table headers, are no arrays.
        ('a = "[" # [\n[t]\nb = ["]",\nc = 1\n', "line 3: invalid TOML: the array begun here"),
    ],
)
def test_a_toml_syntax_error_names_the_line_of_the_mistake(
    tmp_path: Path, text: str, expected: str
) -> None:
    (found,) = problems_of(text, tmp_path)
    assert found.startswith(f"{tmp_path / 'bad.toml'}: {expected}"), found


def test_a_target_url_may_carry_a_path_of_url_characters() -> None:
    def targets(*urls: str) -> dict[str, object]:
        return {
            "upstreams": {"u": {"targets": list(urls)}},
            "routes": [{"path": "/", "upstream": "u"}],
        }

    config = parse_config(targets("http://h:81/v2/", "http://k/a%20b", "http://m/"), "f.toml")
    paths = [t.path for t in config.upstreams["u"].targets]
    assert paths == ["/v2", "/a%20b", ""]  # the trailing slash goes: /v2 + /users/7
    assert config.upstreams["u"].targets[0].location == "http://h:81/v2"
    assert config.upstreams["u"].targets[0].url == "http://h:81"  # the server, as before
    for bad, reason in (
        ("http://h/v2#x", "no query, fragment or user"),
        ("http://u@h/v2", "no query, fragment or user"),
        ("http://h/a b", "the path must be made of URL path characters"),
    ):
        with pytest.raises(ConfigError, match=reason):
            parse_config(targets(bad), "f.toml")


def test_routes_required() -> None:
    with pytest.raises(ConfigError, match="routes: at least one"):
        parse_config({"upstreams": {"u": {"targets": ["http://h"]}}}, "f.toml")


def test_trusted_proxies_parsed_and_checked() -> None:
    config = parse_config(
        {
            "gateway": {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1"]},
            "upstreams": {"u": {"targets": ["http://h"]}},
            "routes": [{"path": "/", "upstream": "u"}],
        },
    )
    assert [str(n) for n in config.gateway.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]
    with pytest.raises(ConfigError, match=r"gateway.trusted_proxies\[0\]: 'nope' is not an IP"):
        parse_config(
            {
                "gateway": {"trusted_proxies": ["nope"]},
                "upstreams": {},
                "routes": [{"path": "/", "upstream": "u"}],
            }
        )


def test_shipped_hypercorn_toml_has_only_real_keys() -> None:
    import tomllib

    from hypercorn.config import Config

    data = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    assert data, "hypercorn.toml is empty"
    for key in data:
        assert hasattr(Config, key), f"hypercorn.toml: {key} is not a Hypercorn setting"
    config = load_server_config(ROOT / "hypercorn.toml")
    assert config.worker_class == "uvloop"
    assert config.keep_alive_max_requests == data["keep_alive_max_requests"]


def test_misspelt_hypercorn_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hypercorn.toml"
    path.write_text("keep_alive_timout = 5\n")
    with pytest.raises(ConfigError, match="keep_alive_timout: not a Hypercorn setting"):
        load_server_config(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_check_prints_route_table_for_example() -> None:
    result = run_cli("check", "-c", "examples/gateway.toml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["ROUTE", "HOST", "PATH", "METHODS", "UPSTREAM", "REWRITE", "POLICIES"]
    assert lines[0].split() == header
    assert any(line.split()[:3] == ["api", "*", "/api"] for line in lines)
    assert lines[-1] == "examples/gateway.toml: OK (4 routes, 2 upstreams)"


def test_check_fails_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[routes]]\npath = "/"\nupstream = "nope"\ncolour = "red"\n')
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 1
    assert f"{path}: routes[0].colour: unknown key" in result.stderr
    assert f"{path}: routes[0].upstream: names unknown upstream 'nope'" in result.stderr


def test_serve_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[routes]]\npath = "/"\n')
    result = run_cli("serve", "-c", str(path), "--bind", "127.0.0.1:0")
    assert result.returncode == 1
    assert f"{path}: routes[0].upstream: is required" in result.stderr


def test_adaptive_concurrency_is_a_table_with_defaults_and_checked_bounds(tmp_path: Path) -> None:
    """``[upstreams.NAME.adaptive_concurrency]``: an empty table turns it on with every
    default; bounds across keys are checked with the key that is wrong."""
    on = GOOD.replace("http2 = false\n", "http2 = false\n[upstreams.users.adaptive_concurrency]\n")
    path = tmp_path / "on.toml"
    path.write_text(on)
    spec = load_config(path).upstreams["users"].adaptive_concurrency
    assert spec is not None and (spec.min_limit, spec.initial_limit, spec.max_limit) == (
        2,
        20,
        1000,
    )
    path.write_text(GOOD)
    assert load_config(path).upstreams["users"].adaptive_concurrency is None
    keys = "initial_limit = 5000\nqueue_timeout = 0\nwindw = 1\n"
    bad = on.replace("adaptive_concurrency]\n", "adaptive_concurrency]\n" + keys)
    where = f"{tmp_path / 'bad.toml'}: upstreams.users.adaptive_concurrency"
    assert problems_of(bad, tmp_path) == [
        f"{where}.queue_timeout: must be greater than 0",
        f"{where}.windw: unknown key (did you mean 'window'?)",
    ]
    bounds = on.replace("adaptive_concurrency]\n", "adaptive_concurrency]\ninitial_limit = 5000\n")
    assert problems_of(bounds, tmp_path) == [
        f"{where}.initial_limit: must be between min_limit (2) and max_limit (1000)"
    ]
