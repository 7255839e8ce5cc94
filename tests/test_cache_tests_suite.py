"""The public HTTP cache test suite (http-tests/cache-tests, the suite behind cache-tests.fyi,
npm ``http-cache-tests`` pinned in scripts/test.sh) against the gateway with
``[routes.cache]`` in front of the suite's own origin server.

Scored with the suite's own list: a test of kind ``required`` passes when its result is
``true`` (tests/support/cache_tests_score.mjs). The floor is what this gateway reached when
the test was written; the suite's bundled results of the same version (0.4.5) score squid
134 of 157, Apache 124, Traffic Server 119 of 151, Varnish 118, nginx 96. The required tests
it fails are named in docs/cache.md, each with why; a change that loses one fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ROOT, GatewayProcess, free_port, wait_for_port

SUITE = ROOT / ".venv" / "cache-tests" / "node_modules" / "http-cache-tests"
SCORE = ROOT / "tests" / "support" / "cache_tests_score.mjs"
#: Required tests passed when this test was written (157 required in 0.4.5).
FLOOR = 145
#: The required tests it fails on purpose or for a reason outside the cache (docs/cache.md).
EXPECTED_FAILURES = {
    "age-parse-prefix",  # "0,7200" fresh while "0, 0" is stale: no one rule passes both
    "stale-close-must-revalidate",  # these four depend on serving stale when the origin
    "stale-close-proxy-revalidate",  # closes the connection (a check, not done here);
    "stale-close-no-cache",  # the suite's bundled results fail them all
    "stale-close-s-maxage=2",
    "headers-store-Set-Cookie",  # never stored: one user's cookie never reaches another
    "304-etag-update-response-Set-Cookie",  # a 304's cookie goes to its client only
    "headers-store-Transfer-Encoding",  # a coding other than chunked: 502 (strict parser)
    "invalidate-M-SEARCH",  # an unknown method is 501 at the edge: it never reaches
    "invalidate-M-SEARCH-cl",  # the cache
    "partial-use-headers",  # partial content is never stored
    "other-date-update",  # the server engine writes Date on every response
}

CONFIG = """
[upstreams.origin]
targets = ["http://127.0.0.1:{port}"]

[[routes]]
name = "suite"
path = "/"
upstream = "origin"
preserve_host = true
[routes.cache]
"""


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[int]:
    """The suite's origin server (``npm run server``), on a port of its own."""
    assert (SUITE / "package.json").exists(), f"{SUITE} missing: run bash scripts/test.sh"
    port = free_port()
    env = dict(
        os.environ,
        npm_config_port=str(port),
        npm_config_protocol="http",
        npm_config_pidfile=str(tmp_path / "origin.pid"),
    )
    log = tmp_path / "origin.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["node", "server/server.mjs"], cwd=SUITE, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, time.monotonic() + 30, process, log)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_the_cache_tests_suite_passes_at_least_the_floor(
    origin: int, make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = make_gateway(CONFIG.format(port=origin))
    env = dict(os.environ, npm_config_base=gateway.url, npm_package_config_id="")
    done = subprocess.run(
        ["node", "--no-warnings", "cli.mjs"],
        cwd=SUITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = tmp_path / "results.json"
    results.write_text(done.stdout)
    scored = subprocess.run(
        ["node", str(SCORE), str(SUITE), str(results)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    score = json.loads(scored.stdout)
    failed = set(score["failed"])
    print(f"cache-tests: {score['passed']} of {score['required']} required passed")
    assert score["passed"] >= FLOOR, sorted(failed - EXPECTED_FAILURES)
    assert failed <= EXPECTED_FAILURES, f"newly failing: {sorted(failed - EXPECTED_FAILURES)}"
    # The never-rules, in the suite's own words.
    passed = json.loads(done.stdout)
    for never in ("cc-resp-no-store", "cc-resp-private-shared", "ccreq-no-store"):
        assert passed[never] is True, (never, passed[never])
