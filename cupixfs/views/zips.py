"""The members of a remote zip archive as files, read through the data layer.

The archive's table of contents comes from its central directory, read with
`DataStore.read` like any other bytes (for a 256 MiB archive of 2000 members: the
probe's 64 KiB and the last block or two, as ``unzip -l`` through the mount). Those
blocks go to the disk cache, so a remount or an ``--offline`` mount lists ``mesh/``
again without the network. One index is kept per archive version.

A member of at most `SMALL_MEMBER` bytes in the archive is fetched at its open as one
exact range with its local header (`DataStore.read` with ``exact``), and kept in
memory: one small request, not a 1 MiB block. It is not kept on disk; prefetching
``mesh.zip`` is what makes members readable offline.
A bigger stored member is a byte range of the archive, read through the blocks: the
archive handle's read-ahead stops at the member's end. A deflated member is
inflated as it is read, into 1 MiB blocks kept in a memory LRU (bounded in bytes).
A sequential reader keeps one inflater going from block to block. For random reads,
the inflater's state is copied (``zlib`` ``Decompress.copy()``: its 32 KiB window and
a few KiB of state, about 45 KiB) at up to 16 evenly spaced block boundaries of each
member as they are first passed; a read of a block not in memory restarts from the
nearest copy before it, so it inflates at most 1/16 of the member (at least one
block), never the whole member from its start. Copies were chosen over keeping every
inflated block because they cost a few KiB each where blocks cost 1 MiB, and over
an index of deflate block boundaries because a deflate stream cannot be entered at
a block without the 32 KiB of output before it. The CRC of a member is checked when
its last block is inflated (every cursor descends from one that started at byte 0).

Inflating runs in a worker thread for anything bigger than 64 KiB, so the event loop
never waits on it.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field

import cachetools
import trio

from cupixfs.core.errors import NotFound, ProtocolError, RemoteChanged
from cupixfs.data.sources import RemoteFile
from cupixfs.data.store import Buffer, DataStore, OpenFile
from cupixfs.views import zipindex
from cupixfs.views.handles import REOPENS, DerivedHandle, read_on_new_version
from cupixfs.views.sources import ZipMember
from cupixfs.views.zipindex import STORED, Index, Member

log = logging.getLogger(__name__)

#: Inflated members are cached in blocks of this size.
INFLATED_BLOCK = 1 << 20
#: Inflater copies kept per member (evenly spaced).
MAX_CHECKPOINTS = 16
#: Compressed bytes read at once by an inflater.
COMPRESSED_CHUNK = 1 << 20
#: Inflating more than this at once goes to a worker thread.
INLINE_LIMIT = 64 << 10
INDEXES_KEPT = 64
STREAMS_KEPT = 16
STARTS_KEPT = 4096
#: A member this small in the archive is fetched as its own byte range, with its local
#: header, in one request, and kept in memory; a bigger one is read through the blocks.
SMALL_MEMBER = 1 << 20
#: Bytes fetched past a small member's local header for its name and extra field.
LOCAL_SLACK = 1024
#: Key (in place of a block number) of a small member's bytes as stored in the archive.
RAW = -1


@dataclass
class MemberHandle(DerivedHandle):
    """An open member: the archive's own handle (pinned to one version) and where it is."""

    member: Member | None = None
    #: Offset of the member's data in the archive.
    start: int = 0

    def take_over(self, fresh: MemberHandle) -> None:
        super().take_over(fresh)
        self.member, self.start = fresh.member, fresh.start


@dataclass
class _Cursor:
    """An inflater positioned at the start of output block *block*."""

    block: int
    #: Compressed bytes consumed so far, from the start of the member's data.
    consumed: int
    inflater: zlib._Decompress
    #: CRC-32 of the output so far (every cursor starts at byte 0 or copies one that did).
    crc: int
    #: Compressed bytes read but not yet consumed (they start at *consumed*).
    pending: Buffer = b""

    @classmethod
    def fresh(cls) -> _Cursor:
        return cls(0, 0, zlib.decompressobj(-zlib.MAX_WBITS), 0)

    def copy(self) -> _Cursor:
        """A copy that can go its own way (its pending input is re-read, not kept)."""
        return _Cursor(self.block, self.consumed, self.inflater.copy(), self.crc)

    def step(self, limit: int) -> bytes:
        """Inflate up to *limit* bytes from the pending input."""
        before = len(self.pending)
        try:
            out = self.inflater.decompress(self.pending, limit)
        except zlib.error as exc:
            raise ProtocolError(f"the deflate stream is corrupt ({exc})") from None
        tail = self.inflater.unconsumed_tail
        self.consumed += before - len(tail) - len(self.inflater.unused_data)
        self.pending = b"" if self.inflater.eof else tail
        self.crc = zlib.crc32(out, self.crc)
        if not out and before and len(tail) == before and not self.inflater.eof:
            raise ProtocolError("the deflate stream makes no progress")
        return out


@dataclass
class _Stream:
    """The inflaters of one member of one archive version."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    #: The inflater a sequential reader left where it stopped.
    cursor: _Cursor | None = None
    #: Copies of an inflater at block boundaries: block -> cursor.
    checkpoints: dict[int, _Cursor] = field(default_factory=dict)


class ZipViews:
    """Indexes, sizes and bytes of zip members."""

    def __init__(self, store: DataStore, inflated_bytes: int) -> None:
        self._store = store
        self._indexes: cachetools.LRUCache[str, Index] = cachetools.LRUCache(INDEXES_KEPT)
        self._loading: dict[str, trio.Lock] = {}
        self._starts: cachetools.LRUCache[tuple[str, int], int] = cachetools.LRUCache(STARTS_KEPT)
        self._inflated: cachetools.LRUCache[tuple[str, int, int], bytes] = cachetools.LRUCache(
            maxsize=max(inflated_bytes, 2 * INFLATED_BLOCK), getsizeof=len
        )
        self._streams: cachetools.LRUCache[tuple[str, int], _Stream] = cachetools.LRUCache(
            STREAMS_KEPT
        )

    # -- the index -------------------------------------------------------------------

    async def index(self, archive: RemoteFile) -> Index:
        """The members of *archive*'s current version."""
        base = await self._open_base(archive)
        try:
            return await self._index(base)
        finally:
            self._store.release(base)

    async def _open_base(self, archive: RemoteFile) -> OpenFile:
        handle = await self._store.open(archive)
        # Pinned from the start: offsets learnt from one version must never be applied
        # to another, so a change of version is an error (RemoteChanged), not a switch.
        handle.shown = True
        return handle

    async def _index(self, base: OpenFile) -> Index:
        version = base.version or ""
        found = self._indexes.get(version)
        if found is not None:
            return found
        lock = self._loading.setdefault(version, trio.Lock())
        try:
            async with lock:  # one reading of a central directory, however many ask
                found = self._indexes.get(version)
                if found is None:
                    found = await self._read_index(base)
                    self._indexes[version] = found
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._loading.pop(version, None)
        return found

    async def _read_index(self, base: OpenFile) -> Index:
        archive = base.source
        assert isinstance(archive, RemoteFile)
        size = await self._store.size(archive)
        try:
            tail_start = max(0, size - zipindex.TAIL_SIZE - 56)
            # Through the blocks, not as exact ranges: they land in the disk cache, so
            # a remount, or an --offline one, lists mesh/ as it was listed online.
            tail = bytes(await self._read(base, tail_start, size - tail_start))
            end, end64_at = zipindex.find_end(tail, tail_start)
            if end64_at is not None:
                record = bytes(await self._read(base, end64_at, 56))
                end = zipindex.parse_end64(record, end64_at, end64_at)
            if end.cd_offset + end.cd_size > size:
                raise ProtocolError("the central directory lies past the end of the file")
            if end.cd_offset >= tail_start:
                cd = tail[end.cd_offset - tail_start : end.cd_offset - tail_start + end.cd_size]
            else:
                cd = bytes(await self._read(base, end.cd_offset, end.cd_size))
            if end.cd_size > INLINE_LIMIT:
                index = await trio.to_thread.run_sync(zipindex.parse_central, cd, end)
            else:
                index = zipindex.parse_central(cd, end)
        except ProtocolError as exc:
            raise ProtocolError(f"{archive.key}: cannot list the zip archive: {exc}") from None
        if index.skipped:
            total = len(index.members) + index.skipped.total()
            log.info(
                "%s: %d of %d zip entries are not shown in mesh/: %s",
                archive.key,
                index.skipped.total(),
                total,
                index.skipped_text(),
            )
        return index

    async def _read(self, base: OpenFile, offset: int, size: int, exact: bool = False) -> Buffer:
        data = await self._store.read(base, offset, size, exact=exact)
        if len(data) != size:
            raise ProtocolError(f"the archive ends at {offset + len(data)}, before {offset + size}")
        return data

    # -- members -----------------------------------------------------------------------

    def _member(self, index: Index, source: ZipMember) -> Member:
        member = index.find(source.entry, source.name)
        if member is None or member.is_dir:
            raise NotFound(f"{source.base.key}: no zip member {source.name!r} any more")
        return member

    async def size(self, source: ZipMember) -> int:
        index = await self.index(source.base)
        return self._member(index, source).size

    async def open(self, source: ZipMember, cached_version: str | None) -> MemberHandle:
        for attempt in range(REOPENS + 1):
            base = await self._open_base(source.base)
            try:
                index = await self._index(base)
                member = self._member(index, source)
                start = await self._data_start(base, index, member)
            except BaseException as exc:
                self._store.release(base)
                if not isinstance(exc, RemoteChanged) or attempt == REOPENS:
                    raise
                continue
            base.limit = start + member.compressed_size
            version = f"{base.version}/{member.entry}"
            return MemberHandle(
                source,
                version=version,
                shown=version == cached_version,
                base=base,
                member=member,
                start=start,
            )
        raise AssertionError("unreachable")

    async def _data_start(self, base: OpenFile, index: Index, member: Member) -> int:
        """Where *member*'s data starts (its local header says). A small member's data
        comes with its header in one exact read and is kept, so opening and reading it
        costs one request of about its own size."""
        key = (base.version or "", member.entry)
        start = self._starts.get(key)
        if start is not None:
            return start
        small = member.compressed_size <= SMALL_MEMBER
        ask = zipindex.LOCAL.size
        if small:
            ask += LOCAL_SLACK + member.compressed_size
        ask = max(zipindex.LOCAL.size, min(ask, index.cd_offset - member.header_offset))
        head = await self._read(base, member.header_offset, ask, exact=True)
        start = zipindex.data_start(bytes(head[: zipindex.LOCAL.size]), member)
        if start + member.compressed_size > index.cd_offset:
            raise ProtocolError(f"zip member {member.name!r} overlaps the central directory")
        self._starts[key] = start
        if small:
            skip = start - member.header_offset
            raw = bytes(head[skip : skip + member.compressed_size])
            if len(raw) < member.compressed_size:  # a long name or extra field
                rest = await self._read(
                    base, start + len(raw), member.compressed_size - len(raw), exact=True
                )
                raw += bytes(rest)
            self._inflated[(*key, RAW)] = raw
        return start

    async def _compressed(self, handle: MemberHandle, offset: int, size: int) -> Buffer:
        """*size* bytes at *offset* of the member's data as stored in the archive."""
        member, base = handle.member, handle.base
        assert member is not None and base is not None
        if member.compressed_size > SMALL_MEMBER:
            return await self._read(base, handle.start + offset, size)
        key = (base.version or "", member.entry, RAW)
        raw = self._inflated.get(key)
        if raw is None:  # dropped from memory since the open
            raw = bytes(await self._read(base, handle.start, member.compressed_size, exact=True))
            self._inflated[key] = raw
        return memoryview(raw)[offset : offset + size]

    async def read(self, handle: OpenFile, offset: int, size: int) -> Buffer:
        assert isinstance(handle, MemberHandle) and isinstance(handle.source, ZipMember)
        source = handle.source
        return await read_on_new_version(
            self._store,
            handle,
            lambda: self._read_member(handle, offset, size),
            lambda: self.open(source, None),
        )

    async def _read_member(self, handle: MemberHandle, offset: int, size: int) -> Buffer:
        member, base = handle.member, handle.base
        assert member is not None and base is not None
        end = min(offset + size, member.size)
        if offset >= end:
            return b""
        if member.method == STORED:
            return await self._compressed(handle, offset, end - offset)
        first, last = offset // INFLATED_BLOCK, (end - 1) // INFLATED_BLOCK
        blocks = [await self._inflated_block(handle, index) for index in range(first, last + 1)]
        skip = offset - first * INFLATED_BLOCK
        data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        return data[skip : skip + (end - offset)]

    # -- inflating ---------------------------------------------------------------------

    async def _inflated_block(self, handle: MemberHandle, index: int) -> bytes:
        assert handle.member is not None and handle.base is not None
        stream_key = (handle.base.version or "", handle.member.entry)
        key = (*stream_key, index)
        data = self._inflated.get(key)
        if data is not None:
            return data
        stream = self._streams.get(stream_key)
        if stream is None:
            stream = self._streams[stream_key] = _Stream()
        async with stream.lock:  # one inflater at work per member
            data = self._inflated.get(key)
            if data is None:
                data = await self._inflate_to(handle, stream, index)
        return data

    def _start(self, stream: _Stream, target: int) -> _Cursor:
        """The inflater nearest before block *target*: the live one, a copy, or a new one."""
        best: _Cursor | None = None
        if stream.cursor is not None and stream.cursor.block <= target:
            best = stream.cursor
        for block, checkpoint in stream.checkpoints.items():
            if block <= target and (best is None or block > best.block):
                best = checkpoint
        if best is None:
            return _Cursor.fresh()
        if best is stream.cursor:
            stream.cursor = None  # ours now; given back once it stops in a sane state
            return best
        return best.copy()

    async def _inflate_to(self, handle: MemberHandle, stream: _Stream, target: int) -> bytes:
        member, base = handle.member, handle.base
        assert member is not None and base is not None
        blocks = math.ceil(member.size / INFLATED_BLOCK)
        spacing = max(1, math.ceil(blocks / MAX_CHECKPOINTS))
        cursor = self._start(stream, target)
        while True:
            data = await self._next_block(handle, cursor)
            self._inflated[(base.version or "", member.entry, cursor.block)] = data
            cursor.block += 1
            if (
                cursor.block < blocks
                and cursor.block % spacing == 0
                and cursor.block not in stream.checkpoints
            ):
                stream.checkpoints[cursor.block] = cursor.copy()
            if cursor.block > target:
                stream.cursor = cursor if cursor.block < blocks else None
                return data

    async def _next_block(self, handle: MemberHandle, cursor: _Cursor) -> bytes:
        member, base = handle.member, handle.base
        assert member is not None and base is not None
        want = min(INFLATED_BLOCK, member.size - cursor.block * INFLATED_BLOCK)
        pieces: list[bytes] = []
        got = 0
        try:
            while got < want:
                if cursor.inflater.eof:
                    raise ProtocolError("its deflate stream ends before its stated size")
                if not cursor.pending:
                    left = member.compressed_size - cursor.consumed
                    if left <= 0:
                        raise ProtocolError("its compressed data ends before its stated size")
                    cursor.pending = await self._compressed(
                        handle, cursor.consumed, min(COMPRESSED_CHUNK, left)
                    )
                need = want - got
                if need > INLINE_LIMIT:
                    piece = await trio.to_thread.run_sync(cursor.step, need)
                else:
                    piece = cursor.step(need)
                pieces.append(piece)
                got += len(piece)
            if cursor.block * INFLATED_BLOCK + want == member.size and cursor.crc != member.crc:
                raise ProtocolError("its CRC-32 does not match")
        except ProtocolError as exc:
            raise ProtocolError(f"{base.source.key}: zip member {member.name!r}: {exc}") from None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
