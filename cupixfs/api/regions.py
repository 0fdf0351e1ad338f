"""The Cupix regions: one API host per region, and where its users create tokens.

From the vendor's notes (``../shared/cupix-api/vendor-openapi-notes.md``): the API of a
region is ``https://api.<domain>/api/v1`` and its tokens are made at
``https://app.<domain>/settings/api``.
"""

from __future__ import annotations

#: Region name -> the domain its hosts live under.
REGIONS: dict[str, str] = {
    "us": "cupix.works",
    "eu": "cupix-eu.works",
    "au": "cupix-au.works",
    "jp": "cupix-jp.works",
    "sg": "cupix-sg.works",
    "ca": "cupix-ca.works",
}
DEFAULT_REGION = "us"


def parse_region(text: str) -> str:
    """A region name as the user may type it (``EU``, ``eu``), or `ValueError`."""
    region = text.strip().lower()
    if region not in REGIONS:
        raise ValueError(f"unknown region {text!r} (choose from {', '.join(REGIONS)})")
    return region


def api_url(region: str) -> str:
    return f"https://api.{REGIONS[region]}/api/v1"


def token_page(region: str) -> str:
    """Where a user of *region* creates an API token."""
    return f"https://app.{REGIONS[region]}/settings/api"
