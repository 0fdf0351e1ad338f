"""Keep secrets out of logs and error messages.

Signed URLs carry their signature in the query string, and the API accepts the
token as a query parameter too, so every URL we print goes through here first.
"""

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: object) -> str:
    """Return *url* with its query string and any userinfo removed."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
