"""Admin routes under ``/_fake/`` (JSON, no auth), the test harness's remote control.

Tests that run the filesystem in a subprocess cannot reach into the server's objects, so every
knob a test turns is also an HTTP call: read/reset stats, set fault knobs, replace a blob's
content (a file changed on the remote), move a capture to another level, refuse routes or
answer unknown ids with empty lists (``/_fake/api``), read the model with sizes and sha256 to
compare bytes read through the mount, and set the valid tokens (revocation). Admin requests
are exempt from faults and from the stats, so turning a fault off always works and polling
never skews counts.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from .responses import Response, json_error, json_response

if TYPE_CHECKING:
    from .server import FakeServer

__all__ = ["Admin"]

_REPLACE = re.compile(r"^/_fake/blobs/(?P<blob_id>[^/]+)/replace$")
_MOVE = re.compile(r"^/_fake/captures/(?P<capture_id>[0-9]+)/move$")


class Admin:
    """Routes ``/_fake/...`` requests to the server's faults, stats, dataset and tokens."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def handle(self, method: str, path: str, body: bytes) -> Response:
        path = path.rstrip("/")
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            return json_error(400, "body must be JSON")
        if not isinstance(payload, dict):
            return json_error(400, "body must be a JSON object")
        try:
            return self._route(method, path, payload)
        except ValueError as e:
            return json_error(400, str(e))

    def _route(self, method: str, path: str, payload: dict[str, Any]) -> Response:
        server = self.server
        if (method, path) == ("GET", "/_fake/health"):
            return json_response(200, {"ok": True})
        if (method, path) == ("GET", "/_fake/stats"):
            return json_response(200, server.stats.snapshot())
        if (method, path) == ("POST", "/_fake/stats/reset"):
            server.stats.reset()
            return json_response(200, server.stats.snapshot())
        if (method, path) == ("GET", "/_fake/faults"):
            return json_response(200, server.faults.to_dict())
        if (method, path) == ("POST", "/_fake/faults"):
            server.faults.update(**payload)
            return json_response(200, server.faults.to_dict())
        if (method, path) == ("POST", "/_fake/faults/reset"):
            server.faults.reset()
            return json_response(200, server.faults.to_dict())
        if (method, path) == ("GET", "/_fake/dataset"):
            return json_response(200, server.dataset.snapshot())
        if (method, path) == ("GET", "/_fake/tokens"):
            return json_response(200, {"valid": sorted(server.tokens)})
        if (method, path) == ("POST", "/_fake/tokens"):
            valid = payload.get("valid")
            if not isinstance(valid, list) or not all(isinstance(t, str) for t in valid):
                raise ValueError('expected {"valid": [token, ...]}')
            server.set_tokens(valid)
            return json_response(200, {"valid": sorted(server.tokens)})
        if (method, path) == ("GET", "/_fake/api"):
            return json_response(200, server.api.behaviour())
        if (method, path) == ("POST", "/_fake/api"):
            unknown = set(payload) - {"refuse", "unknown_ids"}
            if unknown:
                raise ValueError(f"unknown key(s): {', '.join(sorted(unknown))}")
            return json_response(200, server.api.configure(**payload))
        if (method, path) == ("POST", "/_fake/api/reset"):
            server.api.reset()
            return json_response(200, server.api.behaviour())
        move = _MOVE.match(path)
        if move and method == "POST":
            level = payload.get("level_id")
            if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
                raise ValueError("level_id must be an integer or null")
            try:
                capture = server.dataset.move_capture(int(move["capture_id"]), level)
            except KeyError:
                return json_error(404, f"no capture {move['capture_id']} or no level {level}")
            return json_response(200, capture)
        match = _REPLACE.match(path)
        if match and method == "POST":
            size = payload.get("size")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
                raise ValueError("size must be an integer")
            try:
                entry = server.dataset.replace_blob(match["blob_id"], size)
            except KeyError:
                return json_error(404, f"no blob {match['blob_id']}")
            entry["etag"] = server.dataset.blob_meta(match["blob_id"]).etag
            return json_response(200, entry)
        return json_error(404, f"no admin route {method} {path}")
