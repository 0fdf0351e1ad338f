"""Long storage bodies received straight off the socket, a whole block per system call.

httpx reads a body through httpcore and h11: every socket read is parsed, buffered and
copied a few times in Python before a block is joined from the pieces. For the one
long GET of a sequential stream that was the receiving thread's whole cost: measured
here, one thread gets about 900 MB/s from the fake server through the synchronous
httpx client, and about 2 GB/s with ``recv(1 MiB, MSG_WAITALL)``, which hands over
each block filled by the kernel, with no copy in Python: since then it is received
straight into the frame its disk slot is written from (`block_file.new_payload`).

So a body stream sends its GET itself: h11 writes the request and parses the
response's head (the same parser httpx uses), and the body is then read here. Only
plain, complete responses take this path: a body with a ``Content-Length`` and no
content or transfer coding (what storage sends for a range). Anything else is
refused before a byte of body is read, and a proxy in the environment (which httpx
would honour) makes the stream use httpx instead (`applies`).

Connections whose body was read to its end are kept for the next stream to the same
host (``cp -r`` of many files opens one per file); one the server may have closed
meanwhile (readable while idle) is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import h11
import httpx

from cupixfs.data import block_file

log = logging.getLogger(__name__)

#: Bytes of response head read per system call (the body is read by blocks).
HEAD_READ = 16 << 10
#: Most body bytes the kernel gathers before it wakes the receiving thread
#: (``SO_RCVLOWAT``). Without it, a thread in ``recv(MSG_WAITALL)`` is woken for every
#: few packets: on a 400 Mbit/s link, 130,000 times for 512 MiB, half a core.
WAKE_BYTES = 256 << 10
#: Idle connections kept per host, and for how long.
IDLE_PER_HOST = 4
IDLE_SECONDS = 30.0


class Interrupted(Exception):
    """The connection failed or stalled mid-body: what arrived is kept, the rest is to be
    asked for again from where it stopped."""


def applies(url: str) -> bool:
    """Whether *url* may be fetched directly: http(s), and no proxy from the environment
    (httpx would use it; this module does not speak to proxies)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


class RawHttp:
    """Opens raw body streams; keeps idle connections by host."""

    def __init__(self, timeout: httpx.Timeout, headers: dict[str, str]) -> None:
        self._connect_timeout = timeout.connect or 30.0
        self._read_timeout = timeout.read or 60.0
        self._headers = dict(headers)
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[tuple[float, socket.socket]]] = {}
        self._lock = threading.Lock()
        #: Hosts that sent a body this reader cannot take: httpx reads theirs from then on.
        self._refused: set[tuple[str, str, int]] = set()

    def usable(self, url: str) -> bool:
        """Whether *url*'s body is to be read here (see `applies`), its host not refused."""
        return applies(url) and _key(url) not in self._refused

    def refuse(self, url: str) -> None:
        """*url*'s host sent a coded or unsized body: leave its bodies to httpx."""
        key = _key(url)
        if key not in self._refused:
            self._refused.add(key)
            log.info("%s sends bodies in chunks or coded: reading them with httpx", key[1])

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:  # as httpx verifies: certifi, or SSL_CERT_FILE / SSL_CERT_DIR
            self._tls = httpx.create_ssl_context()
        return self._tls

    def open(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, RawBody]:
        """Send ``GET url`` and read the response's head (in a worker thread).

        Returns the head as an `httpx.Response` without a body (its status and headers
        are checked like any other) and the reader of its body. Raises `Interrupted`
        when the connection fails before a head arrives.
        """
        parts = urlsplit(url)
        key = _key(url)
        _scheme, host, port = key
        tls = parts.scheme == "https"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock = self._idle_connection(key)
        fresh = sock is None
        if sock is None:
            sock = self._connect(host, port, tls)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                ("Host", parts.netloc.rpartition("@")[2]),
                *self._headers.items(),
                *headers.items(),
            ],
        )
        conn = h11.Connection(our_role=h11.CLIENT)
        try:
            try:
                sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
            except OSError as exc:  # a broken pipe: a kept connection closed meanwhile
                raise Interrupted(f"send: {type(exc).__name__}") from None
            head = _read_head(sock, conn)
        except Interrupted:
            _close(sock)
            if fresh:
                raise
            return self.open(url, headers)  # a kept connection the server had closed
        except BaseException:
            _close(sock)
            raise
        response = httpx.Response(
            head.status_code,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers],
            request=httpx.Request("GET", url),
        )
        leftover, _closed = conn.trailing_data
        length = _plain_length(response)
        keep = (
            head.http_version == b"1.1"
            and response.headers.get("connection", "").lower() != "close"
        )
        body = RawBody(self, key if keep else None, sock, tls, leftover, length, self._read_timeout)
        return response, body

    def _connect(self, host: str, port: int, tls: bool) -> socket.socket:
        try:
            sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        except OSError as exc:
            raise Interrupted(f"connect: {type(exc).__name__}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = self._context().wrap_socket(sock, server_hostname=host)
            # Blocking, with the kernel's own receive timeout: recv(MSG_WAITALL) then
            # waits for a whole block, and still gives up on a stalled server.
            sock.settimeout(None)
            seconds = int(self._read_timeout)
            micros = int((self._read_timeout - seconds) * 1e6)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros)
            )
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros)
            )
        except ssl.SSLError:
            _close(sock)
            raise
        except OSError as exc:
            _close(sock)
            raise Interrupted(f"connect: {type(exc).__name__}") from None
        return sock

    def _idle_connection(self, key: tuple[str, str, int]) -> socket.socket | None:
        with self._lock:
            kept = self._idle.get(key, [])
            while kept:
                since, sock = kept.pop()
                try:
                    # Readable while idle: the server closed it (or sent what it must not).
                    stale = select.select([sock], [], [], 0)[0]
                except (OSError, ValueError):
                    stale = [sock]
                if time.monotonic() - since < IDLE_SECONDS and not stale:
                    return sock
                _close(sock)
        return None

    def keep(self, key: tuple[str, str, int], sock: socket.socket) -> None:
        with self._lock:
            kept = self._idle.setdefault(key, [])
            if len(kept) < IDLE_PER_HOST:
                kept.append((time.monotonic(), sock))
                return
        _close(sock)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for kept in idle.values():
            for _since, sock in kept:
                _close(sock)


class RawBody:
    """The body of one response, read by the thread that consumes it."""

    def __init__(
        self,
        owner: RawHttp,
        key: tuple[str, str, int] | None,
        sock: socket.socket,
        tls: bool,
        leftover: bytes,
        length: int | None,
        timeout: float,
    ) -> None:
        self._owner = owner
        self._key = key
        self._sock: socket.socket | None = sock
        self._tls = tls
        self._leftover = memoryview(leftover)
        #: Body bytes still to come (None: the head was refused, there is no body to read).
        self.left = length
        self._timeout = timeout
        self._lowat = 1

    def read(self, want: int) -> block_file.Block:
        """Up to *want* bytes of the body (all of them unless the connection fails; then
        what arrived, and `Interrupted` at the next call).

        A whole block comes as a read-only view of a `block_file.Frame`'s payload, the
        kernel's copy the only one made (its disk slot is then written without a copy);
        a block cut short comes as ``bytes`` of what arrived.
        """
        sock = self._sock
        if sock is None:
            raise Interrupted("closed")
        assert self.left is not None
        want = min(want, self.left)
        if want <= 0:
            raise Interrupted("past the end of the body")
        view = block_file.new_payload(want)
        got = 0
        if self._leftover:
            # The body's first bytes came with the head: a whole block still, the rest of
            # it read now (or what arrived, if the connection fails: the next call says so).
            got = min(want, len(self._leftover))
            view[:got] = self._leftover[:got]
            self._leftover = self._leftover[got:]
        if got < want:
            try:
                got += self._receive_into(sock, view[got:])
            except Interrupted:
                if not got:
                    raise
        self.left -= got
        if self.left == 0:
            self._finished()
        return view.toreadonly() if got == want else bytes(view[:got])

    def _receive_into(self, sock: socket.socket, view: memoryview) -> int:
        """Fill *view* from the socket; the bytes that came (fewer if the connection failed
        after some). Raises `Interrupted` if none came."""
        return self._read_tls(sock, view) if self._tls else self._read_plain(sock, view)

    def _read_plain(self, sock: socket.socket, view: memoryview) -> int:
        want = len(view)
        try:
            self._wake_after(sock, want)
            got = sock.recv_into(view, want, socket.MSG_WAITALL)
        except OSError as exc:  # timed out (EAGAIN), reset, or shut down by `close`
            raise Interrupted(type(exc).__name__) from None
        if not got:
            raise Interrupted("the server closed the connection")
        if got == want:
            return got  # the usual case: the whole block in one system call
        try:  # a receive timeout or a signal cut it: go on once, then report
            self._set_lowat(sock, 1)
            got += sock.recv_into(view[got:], want - got, socket.MSG_WAITALL)
        except OSError:
            pass
        return got

    def _wake_after(self, sock: socket.socket, want: int) -> None:
        """Let the kernel wake this thread only once many bytes have arrived.

        Only while more than ``WAKE_BYTES`` of the body will follow this block: the
        kernel wakes a waiting reader once that many bytes are queued, so for the last
        ones it must be 1 (they may be fewer; the head of the next response on a kept
        connection is, too). And at most an eighth of the receive buffer: a mark the
        buffer cannot hold twice over makes the kernel grow the buffer and clamp the TCP
        window to the mark, which would slow a link with a long round trip (the buffer
        grows on its own as the transfer goes, and the mark with it).
        """
        assert self.left is not None
        lowat = 1
        if self.left - want >= WAKE_BYTES:
            buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            lowat = max(1, min(WAKE_BYTES, buffer // 8))
        self._set_lowat(sock, lowat)

    def _set_lowat(self, sock: socket.socket, lowat: int) -> None:
        if lowat != self._lowat:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            self._lowat = lowat

    def _read_tls(self, sock: socket.socket, view: memoryview) -> int:
        want, got = len(view), 0
        while got < want:
            try:
                count = sock.recv_into(view[got:])
            except OSError as exc:
                if got:
                    break
                raise Interrupted(type(exc).__name__) from None
            if not count:
                if got:
                    break
                raise Interrupted("the server closed the connection")
            got += count
        return got

    def _finished(self) -> None:
        """The whole body was read: the connection may serve the next stream."""
        sock, self._sock = self._sock, None
        if sock is not None and self._key is not None:
            self._owner.keep(self._key, sock)
        elif sock is not None:
            _close(sock)

    def close(self) -> None:
        """Drop the connection (from any thread: a thread blocked in ``recv`` on it
        returns at once, as the socket is shut down first)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            _close(sock)


def _key(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
    )


def _read_head(sock: socket.socket, conn: h11.Connection) -> h11.Response:
    """The response's status line and headers. A malformed head counts as a broken
    connection (httpx, too, makes it a transport error, retried)."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise Interrupted(f"a malformed response ({exc})") from None
        if event is h11.NEED_DATA:
            try:
                data = sock.recv(HEAD_READ)
            except OSError as exc:
                raise Interrupted(type(exc).__name__) from None
            if not data:
                raise Interrupted("the server closed the connection before answering")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.InformationalResponse):
            continue  # 100 Continue and the like
        raise Interrupted(f"unexpected {type(event).__name__}")


def _plain_length(response: httpx.Response) -> int | None:
    """The body's length, if it is plain bytes of a stated length; None otherwise (the
    caller then reads no body: a status that is refused needs none)."""
    headers = response.headers
    if "transfer-encoding" in headers:
        return None
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        return None
    try:
        length = int(headers["content-length"])
    except (KeyError, ValueError):
        return None
    return length if length >= 0 else None


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected any more: nothing to shut down
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
