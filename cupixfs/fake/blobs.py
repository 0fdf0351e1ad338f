"""The blob store: signed ``/store/...`` URLs and unsigned ``/plain/...`` URLs over the same files.

``/store/<blob_id>/<quoted name>?<signature>`` behaves like a pre-signed S3 GET: signature and
expiry checked first (403 with an S3 XML error), HEAD refused (the signature covers the
method), single byte ranges answered with 206, unsatisfiable ranges with 416, and an ETag that
changes only when the blob is replaced. ``/plain/`` is an HTML index plus the same bytes without
signatures (HEAD allowed), so rclone's http backend can be benchmarked against identical data.

Nothing here touches a socket: a request becomes a :class:`Response` or a :class:`FileBody`
that the server streams with ``sendfile``.
"""

from __future__ import annotations

import html
from urllib.parse import quote, unquote

from . import signing
from .dataset import BlobMeta, Dataset
from .responses import FileBody, Headers, Response, s3_error

__all__ = ["BlobStore", "parse_range", "store_path"]

STORE_PREFIX = "/store/"
PLAIN_PREFIX = "/plain/"


class Unsatisfiable(Exception):
    """The Range header asks for bytes the blob does not have (answer 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` a ``Range`` header selects, or ``None`` for the whole body.

    Like S3: only one range is honoured (a multi-range or malformed header is ignored and the
    whole object sent), ``bytes=a-b`` is clamped to the size, ``bytes=-n`` is the last n bytes,
    and any range on an empty blob (or starting past the end, or ``bytes=-0``) is unsatisfiable.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    try:
        if first == "":
            suffix = int(last)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise Unsatisfiable
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


def store_path(blob_id: str, name: str) -> str:
    """The wire path of a blob's signed URL.

    Every byte of the name is percent-encoded except unreserved characters, and a name made only
    of dots is encoded too, because clients normalise ``.``/``..`` path segments away.
    """
    quoted = quote(name, safe="")
    if quoted and set(quoted) == {"."}:
        quoted = quoted.replace(".", "%2E")
    return f"{STORE_PREFIX}{quote(blob_id, safe='')}/{quoted}"


class BlobStore:
    """Answers blob requests for one :class:`Dataset` with one signing key."""

    def __init__(self, dataset: Dataset, key: bytes) -> None:
        self.dataset = dataset
        self.key = key

    def sign(self, blob_id: str, name: str, ttl: int, now: float) -> str:
        """Path and query of a fresh signed URL (the server prefixes its base URL)."""
        path = store_path(blob_id, name)
        return f"{path}?{signing.sign(path, ttl, now, key=self.key)}"

    def handle_store(
        self, method: str, path: str, query: str, headers: Headers, now: float
    ) -> Response | FileBody:
        rest = path[len(STORE_PREFIX) :]
        blob_id = unquote(rest.partition("/")[0])
        rejection = signing.verify(method, path, query, now, key=self.key)
        if rejection is not None:
            return s3_error(403, rejection.code, rejection.message, path)
        if blob_id not in self.dataset.blobs:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.", path)
        return self._serve(method, blob_id, headers, path)

    def handle_plain(self, method: str, path: str, headers: Headers) -> Response | FileBody:
        name = unquote(path[len(PLAIN_PREFIX) :])
        if name == "":
            return self._index()
        blob_id = self.dataset.plain_names.get(name)
        if blob_id is None:
            return Response(404, b"not found\n", [("Content-Type", "text/plain")])
        return self._serve(method, blob_id, headers, path)

    def _index(self) -> Response:
        rows = []
        for name in sorted(self.dataset.plain_names):
            meta = self.dataset.blob_meta(self.dataset.plain_names[name])
            href = html.escape(quote(name))
            rows.append(f'<a href="{href}">{html.escape(name)}</a> {meta.size}<br>')
        page = "<!DOCTYPE html>\n<html><head><title>Index of /plain/</title></head><body>\n"
        page += "<h1>Index of /plain/</h1>\n" + "\n".join(rows) + "\n</body></html>\n"
        # For HEAD the server sends these headers (with this body's length) and no body.
        return Response(200, page.encode(), [("Content-Type", "text/html; charset=utf-8")])

    @staticmethod
    def _headers(meta: BlobMeta) -> list[tuple[str, str]]:
        return [
            ("Content-Type", "binary/octet-stream"),
            ("ETag", f'"{meta.etag}"'),
            ("Last-Modified", meta.last_modified),
            ("Accept-Ranges", "bytes"),
        ]

    def _serve(
        self, method: str, blob_id: str, headers: Headers, resource: str
    ) -> Response | FileBody:
        meta, f = self.dataset.open_blob(blob_id)
        try:
            common = self._headers(meta)
            if_match = headers.get("If-Match")
            if if_match and if_match.strip() not in ("*", f'"{meta.etag}"', meta.etag):
                f.close()
                return s3_error(
                    412,
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                    resource,
                    common,
                )
            if_none = headers.get("If-None-Match")
            if if_none and if_none.strip() in ("*", f'"{meta.etag}"', meta.etag):
                f.close()
                return Response(304, b"", common)
            try:
                selected = parse_range(headers.get("Range"), meta.size)
            except Unsatisfiable:
                f.close()
                return s3_error(
                    416,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                    resource,
                    [("Content-Range", f"bytes */{meta.size}")],
                )
            if selected is None:
                status, start, length = 200, 0, meta.size
            else:
                start, end = selected
                status, length = 206, end - start + 1
                common.append(("Content-Range", f"bytes {start}-{end}/{meta.size}"))
            if method == "HEAD":
                f.close()
                return Response(status, b"", [*common, ("Content-Length", str(length))])
            return FileBody(status, f, start, length, blob_id, common)
        except BaseException:
            f.close()
            raise
