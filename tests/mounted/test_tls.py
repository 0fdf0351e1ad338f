"""The API and storage over HTTPS, as a real account has them: the fake server with a
certificate made by the ``openssl`` command, trusted (or not) through ``SSL_CERT_FILE``."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cupixfs.fake.server import FakeServer
from tests.conftest import PER_PAGE, TOKEN, mount_env, run_cupixfs
from tests.mounted.helpers import sha256_of, video_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(test_data: Path, certificate: tuple[Path, Path]) -> Iterator[FakeServer]:
    with FakeServer(test_data, token=TOKEN, per_page=PER_PAGE, tls=certificate) as server:
        yield server


def test_a_mount_over_https_reads_every_byte(
    mounter: Any,
    tls_server: FakeServer,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listings from the API and files from storage, both over TLS: the same bytes as the
    server's blobs, received by the mount's own TLS reader (whole blocks, kept connections)."""
    assert tls_server.base_url.startswith("https://")
    cert, _key = certificate
    trust = ssl.create_default_context(cafile=str(cert))
    dataset = httpx.get(tls_server.base_url + "/_fake/dataset", verify=trust).json()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    video = max(dataset["videos"], key=lambda v: v["file"]["size"])
    blob = tls_server.dataset.dir / "blobs" / video["file"]["blob_id"]
    with mounter(server=tls_server, cache_dir=tmp_path / "cache") as m:
        source = video_path(m.path, video)
        copy = tmp_path / "copy.insv"
        shutil.copyfile(source, copy)
        assert sha256_of(copy) == sha256_of(blob)
        assert m.status()["blob_requests"] >= 1
        assert "Traceback" not in m.log_text()


def test_a_mount_that_does_not_trust_the_certificate_fails_at_once_and_says_why(
    tls_server: FakeServer, tmp_path: Path
) -> None:
    """Retrying cannot change a certificate: the mount fails at its first attempt, long
    before its retry deadline (the run would time out), and the error says what to do."""
    env = {k: v for k, v in mount_env().items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    mount = ("mount", str(tmp_path), "--api-url", tls_server.api_url, "--timeout", "90")
    result = run_cupixfs(*mount, env=env, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TLS certificate is not trusted" in lines[0], result.stderr
    assert "SSL_CERT_FILE" in lines[0] and "Traceback" not in result.stderr
