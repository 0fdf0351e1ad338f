"""Pre-signed blob URLs, modelled on S3 (AWS Signature V4 query parameters).

Cupix answers a download call with a 302 to a pre-signed AWS storage URL. What matters to a
client is how such a URL behaves, not the exact AWS canonicalisation: it expires after
``X-Amz-Expires`` seconds (403 ``AccessDenied``/"Request has expired"), any change to its path
or query breaks it (403 ``SignatureDoesNotMatch``), and because the signature covers the HTTP
method a URL signed for GET refuses HEAD — which is why clients learn sizes from ranged GETs.

The signature is an HMAC-SHA256 over ``method``, ``path`` (exactly as sent on the wire, still
percent-encoded), ``X-Amz-Date`` and ``X-Amz-Expires``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import parse_qs, urlencode

__all__ = ["DEFAULT_KEY", "Rejection", "sign", "verify"]

DEFAULT_KEY = b"cupixfs-fake-signing-key"
ALGORITHM = "AWS4-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
CREDENTIAL = "AKIAFAKECUPIXFS00000/{day}/us-east-1/s3/aws4_request"


class Rejection(NamedTuple):
    """Why a signed URL was refused: the S3 error ``code`` and its ``message``."""

    code: str
    message: str


def _signature(key: bytes, method: str, path: str, date: str, expires: str) -> str:
    msg = "\n".join((method.upper(), path, date, expires)).encode("utf-8", "surrogateescape")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(
    path: str, ttl: int, now: float | None = None, *, key: bytes = DEFAULT_KEY, method: str = "GET"
) -> str:
    """The query string that makes ``path`` fetchable with ``method`` for ``ttl`` seconds.

    ``now`` is truncated to whole seconds (``X-Amz-Date`` has no fraction), so a URL issued
    with ``ttl=0`` is already expired, which tests use to get an expired URL instantly.
    """
    moment = datetime.fromtimestamp(int(time.time() if now is None else now), UTC)
    date = moment.strftime(DATE_FORMAT)
    expires = str(int(ttl))
    params = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", CREDENTIAL.format(day=moment.strftime("%Y%m%d"))),
        ("X-Amz-Date", date),
        ("X-Amz-Expires", expires),
        ("X-Amz-SignedHeaders", "host"),
        ("X-Amz-Signature", _signature(key, method, path, date, expires)),
    ]
    return urlencode(params)


def verify(
    method: str, path: str, query: str, now: float | None = None, *, key: bytes = DEFAULT_KEY
) -> Rejection | None:
    """``None`` when ``method`` on ``path?query`` is allowed at ``now``, else the reason.

    The signature is checked before expiry, as S3 does: a tampered URL reports
    ``SignatureDoesNotMatch`` even when it is also old.
    """
    params = parse_qs(query, keep_blank_values=True)
    try:
        algorithm = params["X-Amz-Algorithm"][0]
        date = params["X-Amz-Date"][0]
        expires = params["X-Amz-Expires"][0]
        signature = params["X-Amz-Signature"][0]
    except (KeyError, IndexError):
        return Rejection(
            "AccessDenied",
            "Query-string authentication requires the Signature, Expires and "
            "AWSAccessKeyId parameters",
        )
    if algorithm != ALGORITHM:
        return Rejection("AuthorizationQueryParametersError", "Unsupported X-Amz-Algorithm")
    try:
        issued = datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC).timestamp()
        lifetime = int(expires)
    except ValueError:
        return Rejection(
            "AuthorizationQueryParametersError", "X-Amz-Date or X-Amz-Expires is malformed"
        )
    expected = _signature(key, method, path, date, expires)
    if not hmac.compare_digest(expected, signature):
        return Rejection(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )
    current = time.time() if now is None else now
    if current >= issued + lifetime:
        return Rejection("AccessDenied", "Request has expired")
    return None
