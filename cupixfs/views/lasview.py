"""``pointcloud.las``: a remote PLY's points as LAS, converted as they are read.

Its size needs only the PLY's header (vertex count), which the data layer's size probe
already holds. A read of points maps to one read of the PLY's vertex records through
the block cache, converted by numpy (in a worker thread past a few thousand points).
The LAS header needs the bounding box of every point: the first read of it makes one
streaming pass over the PLY, shared by every reader of that version. The pass converts
the points it reads and pushes them into the kernel's page cache, so a reader from the
start (the usual one) does not pay for a second pass. The box
is kept in the cache directory (`cupixfs.views.notes`) with the PLY's header, so a
remount neither repeats the pass nor reads the PLY to answer ``ls -l``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import cachetools
import trio

from cupixfs.core.errors import AuthError, CupixError, NotFound, ProtocolError, RemoteChanged
from cupixfs.data.sources import RemoteFile
from cupixfs.data.store import HEAD_SIZE, Buffer, DataStore, OpenFile, same_version
from cupixfs.data.stream import Push
from cupixfs.views import las
from cupixfs.views.handles import DerivedHandle, read_on_new_version
from cupixfs.views.notes import Notes
from cupixfs.views.ply import MAX_HEADER, NotConvertible, PlyLayout, header_end, parse_header
from cupixfs.views.sources import LasView

log = logging.getLogger(__name__)

NOTE_KIND = "las"
#: The bounding-box pass goes through the LAS in pieces of this size (of LAS bytes).
PASS_PIECE = 16 << 20
#: The pass pushes the points it converts into the kernel's page cache up to this far
#: into the LAS (the pages are the kernel's to keep or drop, not this process's memory).
PASS_PUSH = 512 << 20
#: Converting more points than this at once goes to a worker thread.
INLINE_POINTS = 4096
#: A sequential reader's points are converted and pushed into the kernel's page cache
#: up to this far ahead of the last read that reached us, in pieces of `PUSH_PIECE`,
#: starting `PUSH_GAP` past it (the kernel's own read-ahead asks for what is nearer).
PUSH_AHEAD = 32 << 20
PUSH_PIECE = 1 << 20
PUSH_GAP = 4 << 20
VERSIONS_KEPT = 256


@dataclass
class _Las:
    """What the LAS view of one PLY version needs: its layout, offsets and (once known) bbox."""

    layout: PlyLayout
    offsets: tuple[float, float, float]
    box: las.Bounds | None

    def note(self) -> dict[str, Any]:
        return {
            "header": self.layout.header.decode("latin-1"),
            "vertex_start": self.layout.vertex_start,
            "offsets": list(self.offsets),
            "box": [list(self.box[0]), list(self.box[1])] if self.box else None,
        }

    @classmethod
    def from_note(cls, note: dict[str, Any]) -> _Las | None:
        try:
            layout = parse_header(str(note["header"]).encode("latin-1"))
            if layout.vertex_start != note["vertex_start"]:
                return None
            offsets = tuple(float(v) for v in note["offsets"])
            box = note["box"]
            bounds: las.Bounds | None = None
            if box is not None:
                low, high = (tuple(int(v) for v in corner) for corner in box)
                bounds = ((low[0], low[1], low[2]), (high[0], high[1], high[2]))
            return cls(layout, (offsets[0], offsets[1], offsets[2]), bounds)
        except (KeyError, TypeError, ValueError, IndexError):
            return None  # an unreadable note: learn it again


@dataclass
class LasHandle(DerivedHandle):
    """An open LAS view: the PLY's own handle (pinned to one version) and its layout."""

    las: _Las | None = None
    #: Where the reader has got to (the end of the last read that reached us), and how
    #: far converted points have been pushed ahead of it.
    seen: int = 0
    pushed: int = 0
    #: The PLY handle the pushing reads with (its own sequential stream), once started.
    ahead_base: OpenFile | None = None
    pushing: bool = False
    closed: bool = False

    def take_over(self, fresh: LasHandle) -> None:
        super().take_over(fresh)
        self.las = fresh.las


class LasViews:
    """Sizes and bytes of LAS views of PLY files."""

    def __init__(self, store: DataStore, notes: Notes | None, software: str) -> None:
        self._store = store
        self._notes = notes
        self._software = software
        #: PLY version -> what its LAS view needs, or why there is none.
        self._known: cachetools.LRUCache[str, _Las | str] = cachetools.LRUCache(VERSIONS_KEPT)
        self._locks: dict[str, trio.Lock] = {}
        #: Bounding-box passes made so far (a remount that had to make one is a bug).
        self.passes = 0

    async def convertible(self, ply: RemoteFile) -> bool:
        """Whether *ply* gets a LAS view. Said yes when the PLY cannot be read right now
        (the view is then listed and fails like its PLY would)."""
        base = None
        try:
            base = await self._open_base(ply, limit=HEAD_SIZE)
            await self._las(base)
        except NotConvertible:
            return False
        except AuthError:
            raise
        except CupixError as exc:
            log.debug("%s: its PLY header cannot be read now (%s)", ply.key, exc)
        finally:
            if base is not None:
                self._store.release(base)
        return True

    async def _open_base(self, ply: RemoteFile, limit: int | None = None) -> OpenFile:
        """A handle on *ply*; *limit* keeps its read-ahead short of the vertices when only
        the header is wanted (a listing must not fetch a block of points)."""
        handle = await self._store.open(ply)
        handle.shown = True  # pinned: a layout learnt from one version fits no other
        handle.limit = limit
        return handle

    def _lock(self, version: str) -> trio.Lock:
        return self._locks.setdefault(version, trio.Lock())

    async def _las(self, base: OpenFile) -> _Las:
        """The layout of *base*'s version: from memory, the note on disk, or its header."""
        version = base.version or ""
        known = self._known.get(version)
        if known is None:
            async with self._lock(version):
                known = self._known.get(version)
                if known is None:
                    known = await self._learn(base, version)
                    self._known[version] = known
        if isinstance(known, str):
            raise NotConvertible(known)
        return known

    async def _learn(self, base: OpenFile, version: str) -> _Las | str:
        ply = base.source
        assert isinstance(ply, RemoteFile)
        if self._notes is not None:
            note = await self._notes.load(ply.key, NOTE_KIND, version)
            if note is not None:
                found = _Las.from_note(note)
                if found is not None:
                    return found
        try:
            found = await self._read_layout(base)
        except NotConvertible as exc:
            log.info("%s: no pointcloud.las for this PLY: %s", ply.key, exc)
            return str(exc)
        await self._save(ply, version, found)
        return found

    async def _read_layout(self, base: OpenFile) -> _Las:
        size = await self._store.size(base.source)
        head = bytes(await self._store.read(base, 0, min(size, HEAD_SIZE)))
        while header_end(head) is None and len(head) < min(size, MAX_HEADER):
            more = min(size, 2 * len(head)) - len(head)
            head += bytes(await self._store.read(base, len(head), more))
        layout = parse_header(head)
        if layout.vertex_end > size:
            raise NotConvertible(
                f"the file ({size} bytes) is shorter than its header says ({layout.vertex_end})"
            )
        first = head[layout.vertex_start : layout.vertex_start + layout.stride]
        if layout.count and len(first) < layout.stride:
            first = bytes(await self._store.read(base, layout.vertex_start, layout.stride))
        return _Las(layout, las.offsets_for(first, layout), las.EMPTY if not layout.count else None)

    async def _save(self, ply: RemoteFile, version: str, found: _Las) -> None:
        if self._notes is not None:
            await self._notes.save(ply.key, NOTE_KIND, version, found.note())

    async def _box(self, base: OpenFile, found: _Las, reader: LasHandle | None) -> las.Bounds:
        """The stored bounding box of every point: one streaming pass, made once per version.

        The pass reads every vertex, which is what converting them takes too: so it
        converts those past `PUSH_GAP` and pushes them into the page cache of *reader*'s
        file (up to `PASS_PUSH`). A reader that started at the header (cp, dd, PDAL) then
        finds its next reads answered by the kernel, instead of reading and converting
        the PLY a second time once the header is out.
        """
        if found.box is not None:
            return found.box
        version = base.version or ""
        async with self._lock(version):  # readers of the header wait for one pass
            if found.box is not None:
                return found.box
            ply = base.source
            assert isinstance(ply, RemoteFile)
            started = time.monotonic()
            handle = await self._open_base(ply)  # its own read-ahead, from the first vertex on
            try:
                if handle.version is None or not same_version(version, handle.version):
                    raise RemoteChanged(f"{ply.key} changed remotely")
                layout = found.layout
                total = las.las_size(layout.count)
                push = reader.push if reader is not None and not reader.closed else None
                pushed = 0
                box: las.Bounds | None = None
                # The first piece ends where pushing starts; the others are whole pieces.
                starts = [0, *range(PUSH_GAP, total, PASS_PIECE)]
                pieces = [
                    (a, min(b, total)) for a, b in zip(starts, [*starts[1:], total], strict=True)
                ]
                vertices: list[Buffer] = []  # the next piece's, read ahead

                async def fetch(start: int, stop: int) -> None:
                    first, count, _skip = las.vertex_span(start, stop)
                    vertices.append(await self._read_vertices(handle, layout, first, count))

                await fetch(*pieces[0])
                for number, (start, stop) in enumerate(pieces):
                    data = vertices.pop()
                    into = push if start >= PUSH_GAP and stop <= PASS_PUSH else None
                    # The next piece is read while this one is converted (in a thread).
                    async with trio.open_nursery() as nursery:
                        if number + 1 < len(pieces):
                            nursery.start_soon(fetch, *pieces[number + 1])
                        part = await trio.to_thread.run_sync(
                            self._pass_piece, data, found, start, stop, into
                        )
                    box = las.merge(box, part)
                    if into is not None:
                        pushed = stop
            finally:
                self._store.release(handle)
            if reader is not None and pushed:
                reader.pushed = max(reader.pushed, pushed)
            found.box = box or las.EMPTY
            self.passes += 1
            log.info(
                "%s: bounding box of %d points computed in %.1f s",
                ply.key,
                layout.count,
                time.monotonic() - started,
            )
            await self._save(ply, version, found)
            return found.box

    @staticmethod
    def _pass_piece(
        data: Buffer, found: _Las, start: int, stop: int, push: Push | None
    ) -> las.Bounds | None:
        """The bounds of the vertices of LAS bytes ``[start, stop)``; with *push*, those
        bytes converted and pushed too (in a worker thread: pushing may wait)."""
        if push is None:
            return las.bounds(data, found.layout, found.offsets)
        records, part = las.points_and_bounds(data, found.layout, found.offsets)
        skip = las.vertex_span(start, stop)[2]
        push(start, records[skip : skip + (stop - start)])  # no copy: the kernel copies
        return part

    # -- the DerivedFiles side ---------------------------------------------------------

    async def _open(self, source: LasView, limit: int | None) -> tuple[OpenFile, _Las]:
        base = await self._open_base(source.base, limit)
        try:
            return base, await self._las(base)
        except NotConvertible as exc:
            self._store.release(base)
            raise NotFound(f"{source.base.key}: no LAS view: {exc}") from None
        except BaseException:
            self._store.release(base)
            raise

    async def size(self, source: LasView) -> int:
        base, found = await self._open(source, limit=HEAD_SIZE)
        self._store.release(base)
        return las.las_size(found.layout.count)

    async def open(
        self, source: LasView, cached_version: str | None, push: Push | None = None
    ) -> LasHandle:
        base, found = await self._open(source, limit=HEAD_SIZE)
        base.limit = None  # reading points: read-ahead as far as the reader goes
        version = f"{base.version}/las"
        return LasHandle(
            source,
            version=version,
            shown=version == cached_version,
            push=push,
            base=base,
            las=found,
        )

    async def read(self, handle: OpenFile, offset: int, size: int) -> Buffer:
        assert isinstance(handle, LasHandle) and isinstance(handle.source, LasView)
        source = handle.source
        data = await read_on_new_version(
            self._store,
            handle,
            lambda: self._read_las(handle, source, offset, size),
            lambda: self.open(source, None),
        )
        self._ahead(handle, offset + len(data))
        return data

    # -- pushing converted points ahead of a sequential reader -------------------------

    def _ahead(self, handle: LasHandle, end: int) -> None:
        """The reader got to *end*: keep converted points pushed ahead of it.

        Pushed pages are answered by the kernel, so a sequential reader's reads reach
        us only where the pushing has not got to; each one moves the pushing on.
        """
        nursery = self._store.background
        if handle.push is None or nursery is None or handle.closed or end <= handle.seen:
            return
        handle.seen = end
        if not handle.pushing:
            handle.pushing = True
            nursery.start_soon(self._push_ahead, handle)

    async def _push_ahead(self, handle: LasHandle) -> None:
        found, push = handle.las, handle.push
        assert found is not None and push is not None and isinstance(handle.source, LasView)
        total = las.las_size(found.layout.count)
        try:
            while not handle.closed:
                nearest = -(-handle.seen // PUSH_PIECE) * PUSH_PIECE + PUSH_GAP
                start = max(handle.pushed, nearest)
                stop = min(start + PUSH_PIECE, total, handle.seen + PUSH_AHEAD)
                if start >= stop:
                    break
                if handle.ahead_base is None:
                    handle.ahead_base = await self._open_base(handle.source.base)
                    if handle.base is None or handle.ahead_base.version != handle.base.version:
                        break  # a new version meanwhile: the reader's reads find it
                data = await self._points(handle.ahead_base, found, start, stop)
                await trio.to_thread.run_sync(push, start, data)
                handle.pushed = stop
        except CupixError as exc:  # pushing is an optimisation: the reads will do it
            log.debug("%s: pushing points ahead stopped: %s", handle.source.key, exc)
        finally:
            handle.pushing = False
            if handle.closed and handle.ahead_base is not None:
                self._store.release(handle.ahead_base)

    async def _read_las(self, handle: LasHandle, source: LasView, offset: int, size: int) -> Buffer:
        base, found = handle.base, handle.las
        assert base is not None and found is not None
        layout = found.layout
        end = min(offset + size, las.las_size(layout.count))
        if offset >= end:
            return b""
        parts: list[Buffer] = []
        if offset < las.HEADER_SIZE:
            box = await self._box(base, found, handle)
            head = las.header(layout.count, found.offsets, box, source.created, self._software)
            parts.append(head[offset : min(end, las.HEADER_SIZE)])
        if end > las.HEADER_SIZE:
            parts.append(await self._points(base, found, max(offset, las.HEADER_SIZE), end))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _points(self, base: OpenFile, found: _Las, offset: int, end: int) -> Buffer:
        """LAS bytes ``[offset, end)``, all past the header: one PLY range, converted."""
        layout = found.layout
        first, count, skip = las.vertex_span(offset, end)
        data = await self._read_vertices(base, layout, first, count)
        if count > INLINE_POINTS:
            records = await trio.to_thread.run_sync(las.points, data, layout, found.offsets)
        else:
            records = las.points(data, layout, found.offsets)
        return records[skip : skip + (end - offset)]

    async def _read_vertices(
        self, base: OpenFile, layout: PlyLayout, first: int, count: int
    ) -> Buffer:
        offset = layout.vertex_start + first * layout.stride
        data = await self._store.read(base, offset, count * layout.stride)
        if len(data) != count * layout.stride:
            raise ProtocolError(f"{base.source.key}: the PLY ends before its last vertex")
        return data
