"""The fake Cupix server: one loopback HTTP/1.1 server for the API, the blob store and admin.

Why one process with threads: tests and benchmarks need a server that starts in milliseconds,
keeps connections alive like a real CDN/API front, survives clients that hang up mid-body, and
streams large blobs at loopback speed. ``ThreadingHTTPServer`` with daemon threads gives the
first three; ``socket.sendfile`` (zero-copy ``os.sendfile``) gives the last, so a 2 GiB video
is never read into Python memory.

The handler here only does transport: it reads the request, applies the fault decision
(:mod:`.faults`), counts (:mod:`.stats`), and writes what the route modules return
(:mod:`.api`, :mod:`.blobs`, :mod:`.admin`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from .admin import Admin
from .api import CupixApi
from .blobs import PLAIN_PREFIX, STORE_PREFIX, BlobStore
from .dataset import Dataset
from .faults import Decision, Faults
from .responses import FileBody, Response, api_error, json_error, s3_error
from .stats import Stats

__all__ = ["FakeServer"]

log = logging.getLogger(__name__)

Kind = Literal["api", "blob", "plain", "admin", "other"]

#: Largest request body read (admin JSON); bigger bodies get the connection closed.
MAX_BODY = 1 << 20

#: Errors that only mean "the client went away"; never worth a traceback.
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def _kind(path: str) -> Kind:
    if path.startswith("/_fake/"):
        return "admin"
    if path.startswith("/api/"):
        return "api"
    if path.startswith(STORE_PREFIX):
        return "blob"
    if path.startswith(PLAIN_PREFIX):
        return "plain"
    return "other"


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that remembers its open connections so ``stop()`` can end them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], fake: FakeServer) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def close_connections(self) -> None:
        """Wake every handler blocked on an idle keep-alive connection."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up is normal; anything else is a bug in the fake worth a trace."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # includes every DISCONNECTS error
            return
        log.exception("fake server: unexpected error handling a request from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    """One connection: a keep-alive loop of requests, each dispatched by path prefix."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeCupix/0.1"
    sys_version = ""
    #: Idle keep-alive connections are closed after this, as real fronts do.
    timeout = 60
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)
        if isinstance(self.connection, ssl.SSLSocket):
            # In this connection's own thread, not the accepting one: a client that
            # never finishes its handshake holds up only itself (`timeout` applies).
            self.connection.do_handshake()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silent by default: per-request logging would dominate benchmark time."""
        if self.server.fake.verbose:
            log.info("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except DISCONNECTS:
            self.close_connection = True

    # Every method goes through the same dispatcher; routes decide what they accept.
    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        fake = self.server.fake
        method = self.command
        path, _, query = self.path.partition("?")
        kind = _kind(path)
        body = self._read_body()
        if body is None:
            return
        if kind == "admin":
            self._send(fake.admin.handle(method, path, body))
            return

        route = fake.api.route_template(path) if kind == "api" else ""
        if kind == "api":
            fake.stats.api_request(route)
            fake.stats.api_started()
            try:
                self._answer(kind, method, path, query)
            finally:
                fake.stats.api_finished()
            return
        if kind == "blob":
            fake.stats.blob_request()
        elif kind == "plain":
            fake.stats.plain_request()
        self._answer(kind, method, path, query)

    def _answer(self, kind: Kind, method: str, path: str, query: str) -> None:
        """Apply the fault decision, then send what the route returns."""
        fake = self.server.fake
        decision = fake.faults.decide("blob" if kind in ("blob", "plain") else "api")
        if decision.abort == "outage":
            fake.stats.fault("outage")
            self._abort()
            return
        if decision.latency_s > 0:
            time.sleep(decision.latency_s)
        if decision.abort == "reset":
            fake.stats.fault("reset")
            self._abort()
            return
        if decision.status is not None:
            fake.stats.fault(f"{'blob' if kind in ('blob', 'plain') else 'api'}_{decision.status}")
            self._send(self._fault_response(kind, decision, path))
            return

        try:
            result: Response | FileBody
            if kind == "api":
                _, result = fake.api.handle(method, path, query, self.headers)
            elif kind == "blob":
                now = time.time() + fake.faults.current("clock_offset_s")
                result = fake.blobs.handle_store(method, path, query, self.headers, now)
            elif kind == "plain":
                if method not in ("GET", "HEAD"):
                    result = Response(405, b"method not allowed\n")
                else:
                    result = fake.blobs.handle_plain(method, path, self.headers)
            else:
                result = json_error(404, f"no route for {method} {path}")
        except DISCONNECTS:
            raise
        except Exception:
            log.exception("fake server: route failed for %s %s", method, path)
            result = json_error(500, "internal error in the fake server")
        if isinstance(result, FileBody):
            self._send_file(result, kind, decision.cut)
        else:
            self._send(result)

    @staticmethod
    def _fault_response(kind: Kind, decision: Decision, path: str) -> Response:
        status = decision.status or 503
        headers = []
        if status in (429, 503) and (status == 429 or kind in ("blob", "plain")):
            headers.append(("Retry-After", str(decision.retry_after_s)))
        if kind in ("blob", "plain"):
            message = "Please reduce your request rate."
            return s3_error(status, "SlowDown", message, path, headers)
        message = {429: "Too many requests", 500: "Internal server error"}.get(
            status, "Service unavailable"
        )
        return api_error(status, message, headers)

    def _read_body(self) -> bytes | None:
        """Read the request body so the next keep-alive request starts at the right byte."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send(json_error(411, "chunked request bodies are not supported"))
            self.close_connection = True
            return None
        try:
            length = int(self.headers.get("Content-Length", "0") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._send(json_error(413, "request body too large or malformed"))
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    # --- writing ---------------------------------------------------------------------------

    def _start(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
        self.send_response(status)
        names = {k.lower() for k, _ in headers}
        for key, value in headers:
            self.send_header(key, value)
        if length is not None and "content-length" not in names:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, resp: Response) -> None:
        fake = self.server.fake
        if not self.path.startswith("/_fake/"):
            fake.stats.status(resp.status)
        try:
            self._start(resp.status, resp.headers, len(resp.body))
            if resp.body and self.command != "HEAD":
                self.wfile.write(resp.body)
        except OSError:  # the client went away (DISCONNECTS) or the socket broke
            self.close_connection = True

    def _send_file(self, body: FileBody, kind: Kind, cut: bool) -> None:
        """Stream ``body`` with sendfile; with ``cut``, send a random prefix and hang up."""
        fake = self.server.fake
        fake.stats.status(body.status)
        if kind == "blob":
            fake.stats.blob_range(body.blob_id, body.offset, body.offset + body.length - 1)
        cut = cut and body.length > 0
        if kind == "blob" and not cut and fake.faults.current("blob_chunked"):
            self._send_chunked(body)
            return
        to_send = fake.faults.cut_length(body.length) if cut else body.length
        flow, link = (fake.faults.current(k) * 1e6 for k in ("blob_flow_mb_s", "blob_link_mb_s"))
        sent = 0
        try:
            self._start(body.status, body.headers, body.length)
            if to_send and kind == "blob" and (flow or link):
                sent = self._send_paced(body, to_send, flow, link)
            elif to_send:
                sent = self.connection.sendfile(body.file, body.offset, to_send)
        except OSError:  # the client went away (DISCONNECTS) or the socket broke
            sent = max(0, body.file.tell() - body.offset)
            self.close_connection = True
        finally:
            body.file.close()
            fake.stats.body_sent(kind, sent)
        if cut:
            fake.stats.fault("cut")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_paced(self, body: FileBody, length: int, flow: float, link: float) -> int:
        """Send *length* bytes of *body* no faster than *flow* bytes/s on this connection
        and *link* bytes/s across all of them (0: no such limit); return the bytes sent."""
        start, sent = time.monotonic(), 0
        while sent < length:
            piece = min(PACED_PIECE, length - sent)
            due = start + (sent + piece) / flow if flow else 0.0
            if link:
                due = max(due, self.server.fake.link.reserve(piece, link))
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            if not (done := self.connection.sendfile(body.file, body.offset + sent, piece)):
                break  # the file ended early: the client finds the body short
            sent += done
        return sent

    def _send_chunked(self, body: FileBody) -> None:
        """Send ``body`` framed in chunks, with no Content-Length (the ``blob_chunked`` knob)."""
        fake = self.server.fake
        sent = 0
        try:
            headers = [*body.headers, ("Transfer-Encoding", "chunked")]
            self._start(body.status, headers, None)
            body.file.seek(body.offset)
            while sent < body.length:
                piece = body.file.read(min(256 << 10, body.length - sent))
                if not piece:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            body.file.close()
            fake.stats.body_sent("blob", sent)

    def _abort(self) -> None:
        """Drop the connection with a TCP reset and no response, like a crashed or absent host.

        ``SO_LINGER`` 0 turns close into RST; the socket object is marked closed now and the
        descriptor really closes when the handler's file objects are released in ``finish``.
        """
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


#: Bytes sent at a time by a paced body (``blob_flow_mb_s``, ``blob_link_mb_s``).
PACED_PIECE = 64 << 10


class Link:
    """The one link all paced blob bodies share (``blob_link_mb_s``): each piece is given
    the next free slot of time on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free = 0.0

    def reserve(self, nbytes: int, rate: float) -> float:
        """When *nbytes* sent now at *rate* bytes/s have passed, after those before them."""
        with self._lock:
            self._free = max(time.monotonic(), self._free) + nbytes / rate
            return self._free


class FakeServer:
    """The fake Cupix service over a generated dataset directory.

    >>> with FakeServer(data_dir, per_page=5) as srv:   # doctest: +SKIP
    ...     httpx.get(srv.api_url + "/videos", params=..., headers={"X-CUPIX-AUTH": srv.token})

    ``token`` is the initial valid API token (more can be set with :meth:`set_tokens` or
    ``POST /_fake/tokens``). ``per_page`` is the default page size of list calls.
    """

    def __init__(
        self,
        data_dir: str | Path,
        token: str = "fake-token",
        per_page: int = 30,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: Faults | None = None,
        signing_key: bytes | None = None,
        verbose: bool = False,
        tls: tuple[str | Path, str | Path] | None = None,
    ) -> None:
        self.dataset = Dataset(data_dir)
        self.token = token
        self.per_page = per_page
        self.host = host
        self.verbose = verbose
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.link = Link()
        self._tokens = frozenset({token})
        self.blobs = BlobStore(self.dataset, signing_key or secrets.token_bytes(32))
        self.api = CupixApi(self.dataset, lambda: self._tokens, self.sign_url, per_page)
        self.admin = Admin(self)
        self._httpd = _HTTPServer((host, port), self)
        self.scheme = "http"
        if tls is not None:  # (certificate, key) files: the API and the storage on HTTPS
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Serve in a background daemon thread; returns self for chaining."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-cupix-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end open connections, and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/v1"

    @property
    def plain_url(self) -> str:
        return self.base_url + PLAIN_PREFIX

    # --- tokens and URLs -------------------------------------------------------------------

    @property
    def tokens(self) -> frozenset[str]:
        return self._tokens

    def set_tokens(self, tokens: Iterable[str]) -> None:
        """Replace the valid tokens (an empty set revokes everything)."""
        self._tokens = frozenset(tokens)

    def sign_url(self, blob_id: str, name: str) -> str:
        """An absolute signed URL for a blob, valid for the current ``url_ttl_s``."""
        ttl = self.faults.current("url_ttl_s")
        return self.base_url + self.blobs.sign(blob_id, name, ttl, time.time())

    def info(self) -> dict[str, str]:
        """What a client needs to connect (the CLI prints this as one JSON line)."""
        return {
            "api_url": self.api_url,
            "base_url": self.base_url,
            "plain_url": self.plain_url,
            "token": self.token,
        }
