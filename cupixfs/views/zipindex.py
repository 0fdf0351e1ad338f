"""A zip archive's table of contents, parsed from its central directory.

Pure functions over bytes: `find_end` reads the end records (the classic one and, where
present, Zip64's), `parse_central` the central directory, `data_start` a member's local
header. `cupixfs.views.zips` fetches those bytes through the block cache; nothing here
does I/O, so every odd archive can be tested without a server.

What a member shows: its name decoded as the archive says (UTF-8 when flag bit 11 is set
or an Info-ZIP Unicode path field is present, else code page 437, as the format
specifies), its sizes and CRC (Zip64 extra fields honoured), and its time (the extended
timestamp field in UTC when present, else the DOS date and time, read as UTC). Members
this reader cannot serve (encrypted, compressed with anything but stored or deflate,
symbolic links, or whose data would lie outside the archive) are left out, and the
reasons are counted so the caller can say why in one line.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cupixfs.core.errors import ProtocolError

STORED = 0
DEFLATED = 8

_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sIQI")
_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_EOCD64_SIG = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4sBBHHHHHIIIHHHHHII")
_CENTRAL_SIG = b"PK\x01\x02"
LOCAL = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIG = b"PK\x03\x04"

#: How much of an archive's end holds its end record: the record, a maximal comment,
#: and the Zip64 locator before it.
TAIL_SIZE = _EOCD.size + 0xFFFF + _LOCATOR.size

_METHODS = {
    1: "shrink",
    2: "reduce",
    3: "reduce",
    4: "reduce",
    5: "reduce",
    6: "implode",
    9: "deflate64",
    12: "bzip2",
    14: "lzma",
    93: "zstandard",
    95: "xz",
    96: "jpeg",
    97: "wavpack",
    98: "ppmd",
}
_EXTRA_ZIP64 = 0x0001
_EXTRA_TIME = 0x5455
_EXTRA_UNICODE_PATH = 0x7075
_FLAG_ENCRYPTED = 0x0001
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_UTF8 = 0x0800
_METHOD_AES = 99
_S_IFMT = 0o170000
_S_IFLNK = 0o120000
_S_IFDIR = 0o040000
_HOST_DOS = 0


@dataclass(frozen=True)
class End:
    """Where the central directory is, and how many entries it holds."""

    cd_offset: int
    cd_size: int
    entries: int
    #: Bytes prepended to the archive (a self-extractor's stub): every offset moves by it.
    shift: int = 0


@dataclass(frozen=True)
class Member:
    """One entry of the central directory that this reader can serve."""

    #: Its position in the central directory: stable for one version of the archive.
    entry: int
    name: str
    is_dir: bool
    method: int
    crc: int
    compressed_size: int
    size: int
    #: Offset of its local header in the archive (shift applied).
    header_offset: int
    mtime: datetime | None


@dataclass(eq=False)
class Index:
    """The members of one version of an archive, and what was left out."""

    members: list[Member]
    #: Why entries were left out: reason -> count (``"encrypted": 2``).
    skipped: Counter[str] = field(default_factory=Counter)
    #: Where the central directory starts: no member's data may reach past it.
    cd_offset: int = 0

    def __post_init__(self) -> None:
        self._by_entry = {m.entry: m for m in self.members}
        self._by_name: dict[str, Member] = {}
        for member in self.members:
            self._by_name.setdefault(member.name, member)

    def find(self, entry: int, name: str) -> Member | None:
        """The member at *entry* if it still has *name*, else the first one called *name*.

        A new version of the archive may have moved a member; its name finds it again.
        """
        member = self._by_entry.get(entry)
        if member is not None and member.name == name:
            return member
        return self._by_name.get(name)

    def skipped_text(self) -> str:
        """``2 encrypted, 1 compressed with bzip2 (method 12)``."""
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))


def find_end(tail: bytes, tail_offset: int) -> tuple[End, int | None]:
    """The end record in *tail* (the archive's last bytes, starting at *tail_offset*).

    Returns the classic record's view, and the offset of the Zip64 end record when a
    locator points to one (the caller reads it and calls `parse_end64`).
    """
    position = len(tail)
    while True:
        position = tail.rfind(_EOCD_SIG, 0, position)
        if position < 0:
            raise ProtocolError("not a zip archive (no end of central directory record)")
        if position + _EOCD.size <= len(tail):
            fields = _EOCD.unpack_from(tail, position)
            comment_length = fields[7]
            # The record's comment must end the file, which tells a real record from
            # its signature's bytes inside a comment or a member.
            if position + _EOCD.size + comment_length == len(tail):
                break
    _sig, disk, cd_disk, _on_disk, entries, cd_size, cd_offset, _ = fields
    if disk != 0 or cd_disk != 0:
        raise ProtocolError("a multi-part (spanned) zip archive is not supported")
    eocd_at = tail_offset + position
    locator_at = position - _LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == _LOCATOR_SIG:
        _sig, _disk, eocd64_at, _disks = _LOCATOR.unpack_from(tail, locator_at)
        record_at = locator_at - _EOCD64.size
        if record_at >= 0 and tail[record_at : record_at + 4] == _EOCD64_SIG:
            # Where writers put it: just before its locator (found even if the archive
            # has bytes prepended, which would make the stated offset wrong).
            return parse_end64(tail[record_at:locator_at], tail_offset + record_at, eocd64_at), None
        return End(cd_offset, cd_size, entries), eocd64_at
    shift = eocd_at - cd_size - cd_offset
    if shift < 0:
        raise ProtocolError("the end record points past itself")
    return End(cd_offset + shift, cd_size, entries, shift), None


def parse_end64(record: bytes, record_offset: int, stated_at: int) -> End:
    """The Zip64 end record read at *record_offset* (its locator said *stated_at*)."""
    if len(record) < _EOCD64.size or record[:4] != _EOCD64_SIG:
        raise ProtocolError("the Zip64 end record is missing where its locator points")
    fields = _EOCD64.unpack_from(record)
    _sig, _size, _made, _needed, disk, cd_disk, _on_disk, entries, cd_size, cd_offset = fields
    if disk != 0 or cd_disk != 0:
        raise ProtocolError("a multi-part (spanned) zip archive is not supported")
    shift = record_offset - stated_at
    return End(cd_offset + shift, cd_size, entries, shift)


def _extras(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    position = 0
    while position + 4 <= len(data):
        tag, length = struct.unpack_from("<HH", data, position)
        found.setdefault(tag, data[position + 4 : position + 4 + length])
        position += 4 + length
    return found


def _dos_time(date: int, time: int) -> datetime | None:
    try:
        return datetime(
            1980 + (date >> 9),
            (date >> 5) & 0xF,
            date & 0x1F,
            time >> 11,
            (time >> 5) & 0x3F,
            min((time & 0x1F) * 2, 59),
            tzinfo=UTC,
        )
    except ValueError:
        return None  # 0/0 and other impossible dates: the archive's own time is shown


def _decode_name(raw: bytes, flags: int, extras: dict[int, bytes]) -> str:
    unicode_path = extras.get(_EXTRA_UNICODE_PATH)
    if (
        unicode_path is not None
        and len(unicode_path) >= 5
        and unicode_path[0] == 1
        and struct.unpack_from("<I", unicode_path, 1)[0] == zlib.crc32(raw)
    ):
        return unicode_path[5:].decode("utf-8", "replace")
    if flags & _FLAG_UTF8:
        return raw.decode("utf-8", "replace")
    return raw.decode("cp437")


def parse_central(cd: bytes, end: End) -> Index:
    """Every entry of the central directory *cd*; the ones that cannot be served are counted."""
    members: list[Member] = []
    skipped: Counter[str] = Counter()
    position = 0
    entry = 0
    while position + _CENTRAL.size <= len(cd) and cd[position : position + 4] == _CENTRAL_SIG:
        (
            _sig,
            _made_version,
            made_host,
            _needed,
            flags,
            method,
            time,
            date,
            crc,
            compressed_size,
            size,
            name_length,
            extra_length,
            comment_length,
            disk,
            _internal,
            external,
            header_offset,
        ) = _CENTRAL.unpack_from(cd, position)
        start = position + _CENTRAL.size
        raw_name = cd[start : start + name_length]
        extras = _extras(cd[start + name_length : start + name_length + extra_length])
        position = start + name_length + extra_length + comment_length
        index, entry = entry, entry + 1
        zip64 = extras.get(_EXTRA_ZIP64, b"")
        values = list(struct.unpack_from(f"<{len(zip64) // 8}Q", zip64)) if zip64 else []
        if size == 0xFFFFFFFF and values:
            size = values.pop(0)
        if compressed_size == 0xFFFFFFFF and values:
            compressed_size = values.pop(0)
        if header_offset == 0xFFFFFFFF and values:
            header_offset = values.pop(0)
        header_offset += end.shift
        mode = external >> 16
        name = _decode_name(raw_name, flags, extras)
        is_dir = (
            name.endswith("/")
            or (mode & _S_IFMT) == _S_IFDIR
            or (made_host == _HOST_DOS and external & 0x10 != 0)
        )
        reason = None
        if flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION) or method == _METHOD_AES:
            reason = "encrypted"
        elif (mode & _S_IFMT) == _S_IFLNK:
            reason = "symbolic link"
        elif is_dir:
            reason = None
        elif method not in (STORED, DEFLATED):
            how = _METHODS.get(method, "an unknown method")
            reason = f"compressed with {how} (method {method})"
        elif method == STORED and compressed_size != size:
            reason = "stored with two different sizes"
        elif disk not in (0, 0xFFFF) or header_offset + compressed_size > end.cd_offset:
            reason = "with data outside the archive"
        if reason is not None:
            skipped[reason] += 1
            continue
        when = None
        stamp = extras.get(_EXTRA_TIME)
        if stamp is not None and len(stamp) >= 5 and stamp[0] & 1:
            when = datetime.fromtimestamp(struct.unpack_from("<i", stamp, 1)[0], UTC)
        members.append(
            Member(
                entry=index,
                name=name,
                is_dir=is_dir,
                method=method,
                crc=crc,
                compressed_size=compressed_size if not is_dir else 0,
                size=size if not is_dir else 0,
                header_offset=header_offset,
                mtime=when or _dos_time(date, time),
            )
        )
    # The stated entry count is not checked: archives of more than 65535 entries written
    # without Zip64 wrap it, and every reader lists what the directory holds.
    return Index(members, skipped, end.cd_offset)


def data_start(local: bytes, member: Member) -> int:
    """Where *member*'s data begins, from the first bytes of its local header.

    The local header's own name and extra lengths count, not the central directory's:
    they often differ (a local extended timestamp holds more fields).
    """
    if len(local) < LOCAL.size or local[:4] != _LOCAL_SIG:
        raise ProtocolError(f"zip member {member.name!r}: no local header where it should be")
    fields = LOCAL.unpack_from(local)
    name_length, extra_length = fields[9], fields[10]
    return member.header_offset + LOCAL.size + name_length + extra_length
