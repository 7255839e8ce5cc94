"""HTTP/2 to an ``https://`` target: negotiated with ALPN, and refused when the server
does not choose h2.

A real Hypercorn serves tests/support/h2_upstream.py over TLS with a certificate made here
for 127.0.0.1, which the gateway trusts through ``SSL_CERT_FILE`` (OpenSSL's default
verify path, which ``ssl.create_default_context()`` reads): the certificate is verified as
for any upstream, nothing is switched off for the test.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.gateway import GatewayProcess, bound_socket, port_of, serving

CONFIG = """
[upstreams.tls]
targets = ["https://127.0.0.1:{port}"]
http2 = true

[[routes]]
name = "tls"
path = "/"
upstream = "tls"
"""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_h2_upstream(certificate: tuple[Path, Path], tmp_path: Path) -> Iterator[int]:
    cert_file, key_file = certificate
    sock = bound_socket()
    port = port_of(sock)
    args = [
        sys.executable, "-m", "hypercorn", "tests.support.h2_upstream:app",
        "--certfile", str(cert_file), "--keyfile", str(key_file),
        "--bind", f"fd://{sock.fileno()}",
    ]  # fmt: skip
    with serving(args, port, tmp_path / "tls.log", sock=sock):
        yield port


def test_an_https_target_speaks_http2_negotiated_with_alpn(
    make_gateway: Callable[..., GatewayProcess],
    tls_h2_upstream: int,
    certificate: tuple[Path, Path],
) -> None:
    gateway = make_gateway(
        CONFIG.format(port=tls_h2_upstream), env={"SSL_CERT_FILE": str(certificate[0])}
    )
    response = httpx.get(gateway.url + "/over/tls?x=1", timeout=10)
    assert response.status_code == 200, response.text
    seen = response.json()
    assert (seen["http_version"], seen["path"], seen["query"]) == ("2", "/over/tls", "x=1")


def test_an_https_target_that_does_not_choose_h2_is_a_502_naming_why(
    make_gateway: Callable[..., GatewayProcess], certificate: tuple[Path, Path]
) -> None:
    """A TLS server offering only http/1.1: the gateway never sends it HTTP/2 frames."""
    cert_file, key_file = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        with listener:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(10)
                try:
                    received.append(conn.recv(65536))
                except OSError:
                    received.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    gateway = make_gateway(CONFIG.format(port=port), env={"SSL_CERT_FILE": str(cert_file)})
    response = httpx.get(gateway.url + "/x", timeout=10)
    assert response.status_code == 502
    assert response.json()["detail"].endswith("upstream does not speak HTTP/2")
    thread.join(10)
    assert received == [b""]  # the handshake, then the connection closed: no HTTP/2 preface
