"""sd_notify without libsystemd: one datagram to a path or an abstract socket, never a crash."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import pytest

from cupixfs.mount import systemd


def test_nothing_is_sent_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_one_datagram_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cupixfs-unit-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1", "STATUS=mounted") is True
        assert systemd.reloading() is True
        assert receiver.recv(4096) == b"READY=1\nSTATUS=mounted"
        reloading = receiver.recv(4096).decode().splitlines()
    assert reloading[0] == "RELOADING=1" and int(reloading[1].split("=")[1]) > 0


def test_a_socket_that_is_gone_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with tempfile.TemporaryDirectory() as gone:
        monkeypatch.setenv("NOTIFY_SOCKET", str(Path(gone) / "notify"))
        with caplog.at_level(logging.WARNING):
            assert systemd.notify("STOPPING=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not a kind we speak
    with caplog.at_level(logging.WARNING):
        assert systemd.notify("READY=1") is False
    assert len(caplog.records) == 2
