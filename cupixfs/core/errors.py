"""Every error cupixfs raises below the FUSE layer.

One hierarchy, so that `fuse_ops` can map each class to one errno in one place
and nothing else needs to know about errno at all.
"""


class CupixError(Exception):
    """Base class: something went wrong talking to Cupix or its storage."""


class AuthError(CupixError):
    """The token was refused (401/403 on an API call): the user must fix it."""


class NotFound(CupixError):
    """The API does not know this id (404), or the path names nothing."""


class NotCached(NotFound):
    """Offline, and this listing or document was never fetched (so it is not cached)."""


class Unavailable(CupixError):
    """The API or the storage could not be reached in time (network, 5xx, 429)."""


class ProtocolError(CupixError):
    """The server answered, but not in the shape the API pages promise."""


class RemoteChanged(CupixError):
    """The remote file changed (new ETag or size) while we were reading it."""


def unwrap(exc: BaseException) -> BaseException:
    """The most telling leaf of an exception group (trio nurseries wrap errors in groups).

    A cupixfs error is preferred over anything else, so that e.g. an `AuthError`
    in one of several parallel fetches is what the user gets to see.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [unwrap(e) for e in exc.exceptions]
    for leaf in leaves:
        if isinstance(leaf, CupixError):
            return leaf
    return leaves[0] if leaves else exc
