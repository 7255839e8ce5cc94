"""A real nginx in front of the gateway: the client identity is the right-most untrusted hop
of the chain nginx builds, and a client cannot forge it by sending X-Forwarded-For."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.edge import NGINX, nginx_in_front
from tests.support.gateway import ROOT, GatewayProcess, free_port, serving
from tests.support.upstream import UpstreamServer

CONFIG = """
[gateway]
trusted_proxies = ["127.0.0.1/32"]

[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
[routes.headers]
request_set = {{ x-client = "{{client_ip}}" }}
"""


@pytest.fixture(scope="module")
def nginx_port(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("nginx")
    config = folder / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    gateway = GatewayProcess(config).start()
    try:
        with nginx_in_front(folder / "nginx", gateway.port) as port:
            yield port
    finally:
        assert gateway.stop() == 0, gateway.logs()


def via_nginx(port: int, source: str, headers: dict[str, str]) -> dict[str, str]:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.get(f"http://127.0.0.1:{port}/api/who", headers=headers)
    assert response.status_code == 200, response.text
    return dict(tuple(h) for h in json.loads(response.content)["headers"])


def test_client_behind_nginx_is_identified(nginx_port: int) -> None:
    # 127.0.0.5 is a client nginx sees; only nginx (127.0.0.1) is a trusted proxy.
    seen = via_nginx(nginx_port, "127.0.0.5", {})
    assert seen["x-client"] == "127.0.0.5"
    assert seen["x-forwarded-for"] == "127.0.0.5, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"  # set by nginx, believed from a trusted peer
    assert seen["x-forwarded-host"] == "public.example.com"


def test_client_cannot_forge_its_address_through_nginx(nginx_port: int) -> None:
    seen = via_nginx(nginx_port, "127.0.0.5", {"x-forwarded-for": "203.0.113.66"})
    # nginx appended the real peer; the walk stops at the right-most untrusted hop.
    assert seen["x-client"] == "127.0.0.5"
    assert seen["x-forwarded-for"] == "203.0.113.66, 127.0.0.5, 127.0.0.1"


def readme_nginx_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    (snippet,) = re.findall(r"```nginx\n(.*?)```", text, re.S)
    return snippet


def test_the_readme_nginx_snippet_passes_the_client_on(
    upstream: UpstreamServer, tmp_path: Path
) -> None:
    """The README's snippet, in a real nginx in front of a real gateway: the client at
    127.0.0.5 is who the gateway and the upstream see (a bare proxy_pass would say
    127.0.0.1, nginx)."""
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    gateway = GatewayProcess(config).start()
    try:
        port = free_port()
        snippet = readme_nginx_snippet()
        assert "server 127.0.0.1:8080;" in snippet and "listen 80;" in snippet
        snippet = snippet.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway.port};")
        snippet = snippet.replace("listen 80;", f"listen 127.0.0.1:{port};")
        folder = tmp_path / "nginx"
        folder.mkdir()
        conf = folder / "nginx.conf"
        conf.write_text(
            f"worker_processes 1;\npid {folder}/nginx.pid;\ndaemon off;\n"
            "events { worker_connections 64; }\n"
            f"http {{\naccess_log off;\nclient_body_temp_path {folder}/body;\n"
            f"proxy_temp_path {folder}/proxy;\n{snippet}\n}}\n"
        )
        args = [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]
        with serving(args, port, folder / "nginx.out"):
            seen = via_nginx(port, "127.0.0.5", {"x-forwarded-for": "203.0.113.66"})
    finally:
        assert gateway.stop() == 0, gateway.logs()
    assert seen["x-client"] == "127.0.0.5"
    assert seen["x-forwarded-for"] == "203.0.113.66, 127.0.0.5, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
