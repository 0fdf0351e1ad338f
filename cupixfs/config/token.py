"""Where the API token comes from, and where ``cupixfs login`` keeps it.

Looked up in this order, first found wins:

1. ``--token-file FILE`` (or ``-o token_file=FILE``): said on this very command line;
2. ``CUPIX_API_TOKEN`` in the environment;
3. the profile's ``token_file`` in the config file;
4. the OS keyring entry ``cupixfs``/<profile name>, stored by ``cupixfs login``.

A token is never taken from argv, where every user's ``ps`` could read it. A
token file must be private (no group/other permission bits), for the same
reason. The keyring is optional (``pip install 'cupixfs[keyring]'``): without
it, or without a usable backend (a headless server), lookups skip it quietly
and ``login`` says so in one line.

`find_token` also says where it found the token (a `TokenSource`), so that a
running mount can look there again when the API starts refusing it: a token
rotated in its file or in the keyring is picked up without a remount.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, TextIO

from cupixfs.config.settings import UsageError

log = logging.getLogger(__name__)

ENV = "CUPIX_API_TOKEN"
KEYRING_SERVICE = "cupixfs"
NO_TOKEN = (
    f"no API token: set {ENV}, pass --token-file FILE (mode 600), or store one with: cupixfs login"
)


class TokenError(UsageError):
    """No token, or one that cannot be read safely."""


class KeyringUnavailable(UsageError):
    """The keyring package is missing or has no backend that can store a secret."""


def read_token_file(path: Path) -> str:
    """The token in *path*, refused when group or others may read the file."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(
                f"token file {path} is readable by others "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
            )
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"token file {path} is empty")
    return token


@dataclass(frozen=True)
class TokenSource:
    """Where a token was found, and how to read it there again after a rotation.

    A rotated token is written where the old one was: into the token file, or into
    the keyring by ``cupixfs login``. The environment of a running process never
    changes, so a token from ``CUPIX_API_TOKEN`` cannot be read again.
    """

    kind: Literal["file", "environment", "keyring", "none"]
    file: Path | None = None
    #: The keyring entry's profile name.
    profile: str = ""

    @property
    def rereadable(self) -> bool:
        return self.kind in ("file", "keyring")

    def read(self) -> str:
        """The token this source holds now; `TokenError` if it has none or cannot be re-read.

        Blocking (a file, or the keyring's D-Bus): call it from a worker thread.
        """
        if self.kind == "file" and self.file is not None:
            return read_token_file(self.file)
        if self.kind == "keyring":
            token = keyring_get(self.profile)
            if not token:
                raise TokenError(f"{self} holds no token")
            return token
        raise TokenError(f"a token from {self} cannot be read again by a running mount")

    def __str__(self) -> str:
        if self.kind == "file":
            return f"token file {self.file}"
        if self.kind == "keyring":
            return f"the keyring entry {KEYRING_SERVICE}/{self.profile}"
        return ENV if self.kind == "environment" else "no token source"


def find_token(
    cli_file: Path | None, profile_file: Path | None, profile: str, required: bool = True
) -> tuple[str, TokenSource]:
    """The token per the order above and where it came from; "" when none is found and
    none is *required*."""
    if cli_file is not None:  # absolute: a running mount may read it again from anywhere
        return read_token_file(cli_file), TokenSource("file", cli_file.absolute())
    token = os.environ.get(ENV, "").strip()
    if token:
        return token, TokenSource("environment")
    if profile_file is not None:
        return read_token_file(profile_file), TokenSource("file", profile_file.absolute())
    token = keyring_get(profile) or ""
    if not token and required:
        raise TokenError(NO_TOKEN)
    return token, TokenSource("keyring" if token else "none", profile=profile)


# -- the OS keyring ----------------------------------------------------------------------


def keyring_module() -> ModuleType:
    """The keyring module, if installed and backed by something that can keep a secret."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        raise KeyringUnavailable(
            "the keyring package is not installed (pip install 'cupixfs[keyring]'); "
            "put the token in a file instead and use --token-file FILE (mode 600)"
        ) from None
    if isinstance(keyring.get_keyring(), fail.Keyring):
        raise KeyringUnavailable(
            "no usable OS keyring on this machine; "
            "put the token in a file instead and use --token-file FILE (mode 600)"
        )
    return keyring


def keyring_get(profile: str) -> str | None:
    """The token ``cupixfs login`` stored for *profile*; None if there is none or no keyring."""
    try:
        return keyring_module().get_password(KEYRING_SERVICE, profile)
    except KeyringUnavailable:
        return None
    except Exception as exc:  # backends raise their own types (D-Bus, locked keychain, ...)
        log.debug("keyring lookup failed: %s", type(exc).__name__)
        return None


def keyring_set(profile: str, token: str) -> None:
    keyring = keyring_module()
    try:
        keyring.set_password(KEYRING_SERVICE, profile, token)
    except Exception as exc:  # as above: any backend failure is "cannot store it here"
        raise KeyringUnavailable(
            f"the OS keyring refused the token ({type(exc).__name__}: {exc}); "
            "put the token in a file instead and use --token-file FILE (mode 600)"
        ) from None


def prompt_token(stdin: TextIO | None = None) -> str:
    """A token typed at a hidden prompt, or the first line piped to stdin; never argv."""
    stdin = stdin or sys.stdin
    # getpass reads the terminal without echo; a pipe (echo ... | cupixfs login) is read as is.
    typed = getpass.getpass("Cupix API token: ") if stdin.isatty() else stdin.readline()
    token = typed.strip()
    if not token:
        raise TokenError("no token given (type it at the prompt, or pipe it to stdin)")
    return token
