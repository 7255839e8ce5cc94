"""The dashboard on the admin listener: its data summed over workers, its page in a real
headless Chromium (routes and live numbers drawn, an action refused without the admin
token and done with it), and never on the public port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.chromium import Page, browser
from tests.support.gateway import GatewayProcess
from tests.support.observability import TOKEN, Admin
from tests.support.upstream import UpstreamServer

ROUTES = """
[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"

[[routes]]
name = "quiet"
path = "/quiet"
upstream = "main"
"""

Start = Callable[..., GatewayProcess]


@pytest.fixture
def two_workers(
    make_gateway: Start, upstream: UpstreamServer
) -> Iterator[tuple[GatewayProcess, Admin]]:
    admin = Admin()
    gateway = make_gateway(admin.section() + ROUTES.format(upstream=upstream.url), workers=2)
    yield gateway, admin


def data(admin: Admin) -> dict[str, object]:
    response = httpx.get(admin.url + "/dashboard/data", timeout=30)  # no token: read-only
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def route(body: dict[str, object], name: str) -> dict[str, object]:
    routes = body["routes"]
    assert isinstance(routes, list)
    (found,) = [r for r in routes if r["name"] == name]
    return dict(found)


def test_the_data_is_the_sum_of_the_workers(
    two_workers: tuple[GatewayProcess, Admin], upstream: UpstreamServer
) -> None:
    gateway, admin = two_workers
    for _ in range(20):  # a connection each: the requests spread over both workers
        assert httpx.get(gateway.url + "/api/x", timeout=30).status_code == 200
    assert httpx.get(gateway.url + "/nowhere", timeout=30).status_code == 404
    # Whichever worker answers (a new connection each time), the totals are all 20.
    for _ in range(6):
        body = data(admin)
        api = route(body, "api")
        assert api["requests"] == 20
        assert api["status"] == {"2xx": 20}
        for part in ("duration", "upstream", "gateway"):
            histogram = api[part]
            assert isinstance(histogram, dict)
            assert histogram["le"][-1] is None  # +Inf
            assert histogram["counts"][-1] == 20, part
        assert route(body, "quiet")["requests"] == 0  # configured, idle: still a row
        missing = route(body, "(none)")
        assert missing["errors"] == {"route_not_found": 1}
    (main,) = body["upstreams"]  # type: ignore[misc]
    assert main["responses"] == {"200": 20}
    (target,) = main["targets"]
    assert target["url"] == upstream.url and target["healthy"] and not target["drained"]
    assert body["ready"] is True
    assert len(str(body["config"]["version"])) > 0  # type: ignore[index]


def test_read_only_and_never_on_the_public_port(
    two_workers: tuple[GatewayProcess, Admin],
) -> None:
    gateway, admin = two_workers
    page = httpx.get(admin.url + "/dashboard", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # The page runs only what it served itself, and cannot be framed by another site.
    assert page.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/dashboard/dashboard.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = httpx.get(admin.url + "/dashboard/dashboard.js", timeout=30)
    assert script.headers["content-type"].startswith("text/javascript")
    refused = httpx.post(admin.url + "/dashboard/data", timeout=30)
    assert refused.status_code == 405 and refused.json()["error"] == "method_not_allowed"
    assert httpx.get(admin.url + "/dashboard/nope.js", timeout=30).status_code == 404
    for path in ("/dashboard", "/dashboard/data"):
        public = httpx.get(gateway.url + path, timeout=30)
        assert public.status_code == 404 and public.json()["error"] == "route_not_found"


def rows(page: Page) -> list[str]:
    names = page.evaluate(
        "[...document.querySelectorAll('#routes tbody tr')].map(r => r.dataset.route)"
    )
    return list(names)


def test_the_page_in_chromium(
    two_workers: tuple[GatewayProcess, Admin], upstream: UpstreamServer, tmp_path: Path
) -> None:
    gateway, admin = two_workers
    target = f'[data-upstream="main"] tr[data-target="{upstream.url}"]'
    with browser() as page:
        page.goto(admin.url + "/dashboard")
        page.wait_for("Number(document.body.dataset.polls) >= 1")
        assert rows(page) == ["api", "quiet"]
        assert page.text('[data-route="api"] .requests') == "0"
        assert page.text("#ready") == "ready"

        # Live: traffic after the page opened shows up without a reload of the page.
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for _ in range(30):
                assert client.get("/api/x").status_code == 200
        page.wait_for(
            "document.querySelector('[data-route=\"api\"] .requests').textContent === '30'"
        )
        page.wait_for(
            "!isNaN(parseFloat(document.querySelector('[data-route=\"api\"] .p99').textContent))"
        )
        p99 = float(page.text('[data-route="api"] .p99'))
        upstream_p99 = float(page.text('[data-route="api"] .upstream-p99'))
        assert 0 < upstream_p99 <= p99 < 30_000  # ms; the upstream's part is within the whole
        assert page.text('[data-route="api"] .status') == "2xx 30"
        assert page.text(f"{target} .health") == "healthy"

        # An action without the token is refused, and nothing changes.
        page.click(f"{target} button.drain")
        message = page.wait_for("document.querySelector('#message').textContent")
        assert "401 unauthorized" in message, message
        upstreams = admin.get("/admin/upstreams").json()["upstreams"]
        assert upstreams[0]["targets"][0]["drained"] is False

        # With it, the target is drained, and the page shows it at its next poll.
        page.fill("#token", TOKEN)
        page.click(f"{target} button.drain")
        page.wait_for("document.querySelector('#message').textContent.endsWith(': done')")
        page.wait_for(f"document.querySelector('{target} .drained').textContent === 'yes'")
        upstreams = admin.get("/admin/upstreams").json()["upstreams"]
        assert upstreams[0]["targets"][0]["drained"] is True

        # A reload, asked from the page, is listed once the page sees it counted.
        page.click("#reload")
        page.wait_for("document.querySelector('#message').textContent === 'reload: done'")
        page.wait_for("document.querySelector('#reloads li')")
        assert "reloaded, version" in page.text("#reloads li")
        shot = page.screenshot(tmp_path / "dashboard.png")
        assert shot.startswith(b"\x89PNG")


def test_the_data_says_when_metrics_are_off(make_gateway: Start, upstream: UpstreamServer) -> None:
    admin = Admin()
    config = admin.section() + "[metrics]\nenabled = false\n" + ROUTES.format(upstream=upstream.url)
    make_gateway(config)
    response = httpx.get(admin.url + "/dashboard/data", timeout=30)
    assert response.status_code == 404
    assert response.json() == {"error": "metrics_disabled", "detail": "[metrics] enabled = false"}
    # The page itself still loads; it says why it has no numbers.
    with browser() as page:
        page.goto(admin.url + "/dashboard")
        message = page.wait_for("document.querySelector('#message').textContent")
        assert "metrics_disabled" in message
