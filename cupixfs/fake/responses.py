"""Response values shared by the fake server's route modules.

Route logic (API, blob store, admin) returns plain values instead of writing to a socket, so it
can be read and tested without HTTP plumbing; only ``server.py`` turns them into bytes on the
wire. Two shapes exist: :class:`Response` (a small in-memory body) and :class:`FileBody` (a
slice of a blob file, sent with ``sendfile`` so large bodies are never held in memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, BinaryIO, Protocol
from xml.sax.saxutils import escape

__all__ = [
    "FileBody",
    "Headers",
    "Response",
    "api_error",
    "json_error",
    "json_response",
    "s3_error",
]


class Headers(Protocol):
    """Request headers, looked up case-insensitively (``email.message.Message`` fits)."""

    def get(self, name: str, failobj: None = None, /) -> str | None: ...


@dataclass
class Response:
    """A complete response whose body fits in memory."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FileBody:
    """A response whose body is ``length`` bytes of ``file`` from ``offset``.

    The server owns closing ``file``. ``blob_id`` is kept for the stats (which ranges were
    read). ``headers`` excludes Content-Length, which the server derives from ``length``.
    """

    status: int
    file: BinaryIO
    offset: int
    length: int
    blob_id: str
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    hdrs = [("Content-Type", "application/json; charset=utf-8"), *(headers or [])]
    return Response(status, body, hdrs)


def json_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """An admin route's error: ``{"error": message}``."""
    return json_response(status, {"error": message}, headers)


def api_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """The API's ``ErrorResponse``: ``{"result": {"code", "type", "reason", "message"}}``."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    result = {
        "code": status,
        "type": reason.lower().replace(" ", "_"),
        "reason": reason,
        "message": message,
    }
    return json_response(status, {"result": result, "session": None}, headers)


def s3_error(
    status: int,
    code: str,
    message: str,
    resource: str = "",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """An S3-style XML error document, as AWS storage returns for a refused or failed GET."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>FAKE0000CUPIXFS</RequestId></Error>"
    ).encode()
    return Response(status, body, [("Content-Type", "application/xml"), *(headers or [])])
