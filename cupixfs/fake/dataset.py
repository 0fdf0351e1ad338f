"""The fake server's view of a generated dataset: lookups, blob files, and blob replacement.

``dataset.json`` (written by :mod:`cupixfs.fake.sample`) is loaded once and indexed by id. Every
downloadable file is a dict ``{blob_id, name, size, sha256, generation, modified_at}`` shared
between the model and the blob index, so replacing a blob updates what the API, the blob store
and ``GET /_fake/dataset`` report in one place.

Blob access goes through :meth:`Dataset.open_blob`, which snapshots the file's metadata and
opens it under the same lock :meth:`Dataset.replace_blob` takes: a response's ETag and size
therefore always describe the bytes it sends, even while the blob is being replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, BinaryIO

from .sample import FORMAT_VERSION, blob_rng, iso_timestamp, write_model, write_random_blob

__all__ = ["BlobMeta", "Dataset"]


@dataclass(frozen=True)
class BlobMeta:
    """What a blob response needs to describe the bytes it is about to send."""

    blob_id: str
    name: str
    size: int
    etag: str
    last_modified: str


def _parse_iso(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _plain_name(blob_id: str, name: str) -> str:
    """A name safe in a URL and on any filesystem, unique because it starts with the blob id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80].strip("._")
    return f"{blob_id}-{safe}" if safe else blob_id


class Dataset:
    """A loaded dataset directory (``dataset.json`` + ``blobs/``)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.dir = Path(data_dir)
        path = self.dir / "dataset.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: generate a dataset first")
        self.model: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if self.model.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path} has format {self.model.get('format')}, need {FORMAT_VERSION}")
        self._lock = threading.Lock()
        self.captures = {c["id"]: c for c in self.model["captures"]}
        # Data sets written before projects existed have none (and still load).
        self.facilities = {f["id"]: f for f in self.model.get("facilities", [])}
        self.facility_keys = {f["key"]: f for f in self.facilities.values()}
        self.levels = {level["id"]: level for level in self.model.get("levels", [])}
        self.clusters = {c["id"]: c for c in self.model["clusters"]}
        self.records = {r["id"]: r for r in self.model["records"]}
        self.videos = {v["id"]: v for v in self.model["videos"]}
        self.pointclouds = {p["id"]: p for p in self.model["pointclouds"]}
        self.blobs: dict[str, dict[str, Any]] = {}
        for video in self.model["videos"]:
            self.blobs[video["file"]["blob_id"]] = video["file"]
        for pc in self.model["pointclouds"]:
            for f in pc["files"].values():
                if f is not None:
                    self.blobs[f["blob_id"]] = f
        self.plain_names = {_plain_name(b, f["name"]): b for b, f in self.blobs.items()}

    @property
    def seed(self) -> int:
        return int(self.model["seed"])

    def videos_of_capture(self, capture_id: int) -> list[dict[str, Any]]:
        return [self.videos[v] for v in self.captures[capture_id]["video_ids"]]

    def levels_of(self, facility_id: int) -> list[dict[str, Any]]:
        return [lv for lv in self.model.get("levels", []) if lv["facility_id"] == facility_id]

    def move_capture(self, capture_id: int, level_id: int | None) -> dict[str, Any]:
        """Place a capture in another level (of any project), or directly under its project
        (``level_id`` None): what a user does when they re-file an area in the web app.

        Raises ``KeyError`` for an unknown capture or level.
        """
        with self._lock:
            old = self.captures[capture_id]
            # A new dict, swapped in whole: a request being answered sees one placement.
            capture = dict(old, level_id=level_id, updated_at=iso_timestamp(datetime.now(UTC)))
            if level_id is not None:
                capture["facility_id"] = self.levels[level_id]["facility_id"]
            captures = self.model["captures"]
            captures[captures.index(old)] = capture
            self.captures[capture_id] = capture
            write_model(self.dir, self.model)
            return dict(capture)

    def _meta(self, f: dict[str, Any]) -> BlobMeta:
        token = f"{self.model['spec_hash']}:{f['blob_id']}:{f['generation']}"
        return BlobMeta(
            blob_id=f["blob_id"],
            name=f["name"],
            size=f["size"],
            etag=hashlib.sha1(token.encode()).hexdigest(),
            last_modified=format_datetime(_parse_iso(f["modified_at"]), usegmt=True),
        )

    def blob_meta(self, blob_id: str) -> BlobMeta:
        with self._lock:
            return self._meta(self.blobs[blob_id])

    def open_blob(self, blob_id: str) -> tuple[BlobMeta, BinaryIO]:
        """Metadata and an open file for ``blob_id``, consistent with each other.

        Raises ``KeyError`` for an unknown blob. The caller closes the file.
        """
        with self._lock:
            f = self.blobs[blob_id]
            return self._meta(f), open(self.dir / "blobs" / blob_id, "rb")

    def replace_blob(self, blob_id: str, size: int | None = None) -> dict[str, Any]:
        """Give ``blob_id`` new random content (same size unless ``size``) and a new ETag.

        Simulates a file changed on the remote. The new content is written to a temporary file
        and renamed into place, so responses already streaming keep the old bytes. The model on
        disk is rewritten too, so a restarted server still reports the new size and sha256.
        Returns a copy of the file's new entry. Raises ``KeyError`` for an unknown blob.
        """
        with self._lock:
            f = self.blobs[blob_id]
            new_size = f["size"] if size is None else int(size)
            if new_size < 0:
                raise ValueError("size must be >= 0")
            generation = f["generation"] + 1
            rng = blob_rng(self.seed, blob_id, generation)
            sha = write_random_blob(self.dir / "blobs" / blob_id, new_size, rng)
            f.update(
                size=new_size,
                sha256=sha,
                generation=generation,
                modified_at=iso_timestamp(datetime.now(UTC)),
            )
            write_model(self.dir, self.model)
            return dict(f)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the model, plus each blob's ETag and plain-route name."""
        with self._lock:
            model = copy.deepcopy(self.model)
            etags = {b: self._meta(f).etag for b, f in self.blobs.items()}
        plain = {b: n for n, b in self.plain_names.items()}
        for video in model["videos"]:
            video["file"]["etag"] = etags[video["file"]["blob_id"]]
            video["file"]["plain_name"] = plain[video["file"]["blob_id"]]
        for pc in model["pointclouds"]:
            for f in pc["files"].values():
                if f is not None:
                    f["etag"] = etags[f["blob_id"]]
                    f["plain_name"] = plain[f["blob_id"]]
        return model
