"""``X-Forwarded-Port`` and ``Via`` through a real gateway: a client's own X-Forwarded-Port
never reaches the upstream, a trusted proxy's does, and ``[gateway] x_forwarded_port`` and
``via`` add the gateway's when asked (both off by default, as in nginx and Envoy)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

CONFIG = """
[gateway]
trusted_proxies = ["127.0.0.1/32"]
{extra}

[upstreams.main]
targets = ["{upstream}"]

[[routes]]
path = "/"
upstream = "main"
"""


def seen(gateway: GatewayProcess, source: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.get(f"http://127.0.0.1:{gateway.port}/echo", headers=headers)
    assert response.status_code == 200, response.text
    return response


def upstream_headers(response: httpx.Response) -> dict[str, str]:
    return dict(tuple(h) for h in json.loads(response.content)["headers"])


def test_by_default_a_clients_port_is_dropped_a_proxys_kept_and_no_via(
    make_gateway: Callable[..., GatewayProcess], upstream: UpstreamServer
) -> None:
    gateway = make_gateway(CONFIG.format(extra="", upstream=upstream.url))
    # 127.0.0.5 is no trusted proxy: its X-Forwarded-Port is a claim, dropped.
    untrusted = seen(gateway, "127.0.0.5", {"x-forwarded-port": "1", "via": "1.1 someone"})
    headers = upstream_headers(untrusted)
    assert "x-forwarded-port" not in headers
    assert headers["via"] == "1.1 someone"  # the client's Via is passed on; no Via of ours
    assert "via" not in untrusted.headers
    # 127.0.0.1 is a trusted proxy: what it says the client connected to is passed on.
    trusted = seen(gateway, "127.0.0.1", {"x-forwarded-port": "8443"})
    assert upstream_headers(trusted)["x-forwarded-port"] == "8443"


def test_x_forwarded_port_and_via_when_asked(
    make_gateway: Callable[..., GatewayProcess], upstream: UpstreamServer
) -> None:
    extra = 'x_forwarded_port = true\nvia = "quartgate"'
    gateway = make_gateway(CONFIG.format(extra=extra, upstream=upstream.url))
    untrusted = seen(gateway, "127.0.0.5", {"x-forwarded-port": "1"})
    headers = upstream_headers(untrusted)
    assert headers["x-forwarded-port"] == str(gateway.port)  # what the client connected to
    assert headers["via"] == "1.1 quartgate"
    assert untrusted.headers["via"] == "1.1 quartgate"  # and on the response
    trusted = seen(gateway, "127.0.0.1", {"x-forwarded-port": "8443"})
    assert upstream_headers(trusted)["x-forwarded-port"] == "8443"  # the proxy knows better
