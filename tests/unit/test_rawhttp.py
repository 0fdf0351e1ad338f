"""`rawhttp` against small local servers: TLS as signed storage URLs are (a self-signed
certificate made with the ``openssl`` command, trusted through ``SSL_CERT_FILE`` the way
httpx trusts it), a connection the server hung up on, and a malformed response."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cupixfs.core.retry import untrusted_certificate
from cupixfs.data.rawhttp import Interrupted, RawHttp

MiB = 1 << 20
BODY = bytes(range(256)) * (3 * MiB // 256)


class _Ranges(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as storage does
    #: Hang up after each response without saying so (an idle timeout on the server).
    hangs_up = False
    connections = 0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_GET(self) -> None:
        first, last = (int(v) for v in self.headers["Range"].split("=")[1].split("-"))
        part = BODY[first : last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(BODY)}")
        self.send_header("Content-Length", str(len(part)))
        self.send_header("ETag", '"tls"')
        self.end_headers()
        self.wfile.write(part)
        if self.hangs_up:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ranges)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/blob?sig=x", cert
    finally:
        server.shutdown()
        server.server_close()


def test_a_tls_body_is_read_whole_and_its_connection_kept(
    https_url: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = https_url
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    raw = RawHttp(httpx.Timeout(10.0), {})
    try:
        for first in (0, MiB + 7):
            head, body = raw.open(url, {"Range": f"bytes={first}-{first + 2 * MiB - 1}"})
            assert head.status_code == 206 and head.headers["etag"] == '"tls"'
            got = bytes(body.read(MiB)) + bytes(body.read(MiB))
            assert got == BODY[first : first + 2 * MiB]
            assert sum(len(kept) for kept in raw._idle.values()) == 1  # kept for the next
    finally:
        raw.close()


def test_an_untrusted_certificate_is_refused(
    https_url: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _cert = https_url
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    raw = RawHttp(httpx.Timeout(10.0), {})
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            raw.open(url, {"Range": "bytes=0-99"})
    finally:
        raw.close()
    # A read gives up at once on it, saying why (retrying cannot change a certificate),
    # where other connection faults are retried.
    error = untrusted_certificate(refused.value, "read videos/1")
    assert error is not None and "not trusted" in str(error) and "SSL_CERT_FILE" in str(error)
    assert untrusted_certificate(ConnectionResetError(), "read videos/1") is None
    try:
        raise httpx.ConnectError("handshake") from refused.value  # as httpx chains it
    except httpx.ConnectError as wrapped:
        assert untrusted_certificate(wrapped, "GET me") is not None


def test_a_kept_connection_the_server_closed_is_not_used(
    https_url: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = https_url
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setattr(_Ranges, "hangs_up", True)
    monkeypatch.setattr(_Ranges, "connections", 0)
    raw = RawHttp(httpx.Timeout(10.0), {})
    try:
        for first in (0, 100):
            _head, body = raw.open(url, {"Range": f"bytes={first}-{first + 999}"})
            assert body.read(1000) == BODY[first : first + 1000]
            time.sleep(0.2)  # the server's hang-up reaches us
        assert _Ranges.connections == 2  # the second request did not go down the dead one
    finally:
        raw.close()


def test_a_malformed_response_is_an_interruption() -> None:
    """Garbage where a status line belongs: `Interrupted` (retried), not a crash."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 2OO Fine\r\nno colon here\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    raw = RawHttp(httpx.Timeout(5.0), {})
    try:
        with pytest.raises(Interrupted, match="malformed"):
            raw.open(f"http://127.0.0.1:{listener.getsockname()[1]}/x", {"Range": "bytes=0-9"})
    finally:
        raw.close()
        listener.close()
        thread.join(5)
