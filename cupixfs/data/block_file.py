"""One version of a remote file on disk: a file of slots, block *i* in slot *i*.

A slot is ``SLOT`` bytes at ``i * SLOT``: a 4 KiB header page (a magic, this layout's
number, the payload's length and its CRC-32C, computed once, on the way in), then the
payload padded to 4 KiB. Slots never written are holes: the file is sparse, and a block
evicted alone is punched out of it (``FALLOC_FL_PUNCH_HOLE``). A block truncated or
corrupted by a power cut fails the length or CRC check when read, and is fetched
again, never served; a slot that is a hole reads as zeros and is simply absent.

Why one file per version, not per block: creating a file was the largest single cost
of writing the cache. A ``perf`` profile of a cold 512 MiB read had 16 % of the mount's
CPU in ``ext4_create`` (the inode allocator walks past recently deleted inodes on a
filesystem without a journal, which a cache that evicts keeps making). One file per
version creates one inode per file read, not one per MiB.

Why CRC-32C (google-crc32c): it is computed for every block written and checked for
every block read, and zlib's CRC-32 was the process's largest single cost on a cold read
(15 % of its CPU in a ``perf`` profile, about 0.35 ms per 1 MiB block at 3 GB/s). CRC-32C
has a CPU instruction: about 25 GB/s here, 0.04 ms per block; cold reads went from 473
to 540 MB/s (medians of three, alternating, same session).

Why pages: slots are written, and read one at a time, with ``O_DIRECT`` where the
filesystem allows it, straight between a reused, page-aligned buffer of the worker
thread and the disk. Going through the page cache would put every cached byte in memory
a second time (the kernel already holds the mounted file's own pages) and, on a machine
whose free memory is handed back to its host, pay a page fault per 4 KiB to get that
memory again: measured here at about 1.5 ms of CPU per MiB written, more than
everything else a block costs. A filesystem without ``O_DIRECT`` (tmpfs, some FUSE ones)
gets the same bytes through the page cache.

Why frames: a block received from the network is received straight into a `Frame`, the
slot's layout in memory (a page-aligned header page, the payload, the padding), and a
block read from disk is read into one. The payload the rest of the mount holds is a view
of the frame's payload, so writing the slot, or checking one read, makes no copy of the
payload. With a ``bytes`` block and one reused buffer per thread, that copy was one pass
over every byte written or read: 6-21 % of the mount's CPU on a cold read (``perf``).

A sequential reader's run of slots is the exception (`RunReader`): read through the
page cache, the kernel's read-ahead asks the disk for large pieces ahead of the reader,
where ``O_DIRECT`` waits for one block at a time, and the pages are dropped right behind
the reader, so they neither stay in memory twice nor are new memory to fault in. A
throwaway reader of a 512 MiB version's file, page cache dropped, read it at 1.6-2.5 GB/s
this way, against 0.74-1.2 GB/s with ``O_DIRECT`` 1 MiB reads (one thread or three).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable

import google_crc32c

PAGE = 4096
MAGIC = b"CPXB"
#: Whether CRC-32C runs compiled (``"c"``); the package's pure-Python fallback is
#: thousands of times slower, which a mount says in its log.
FAST_CHECKSUM = google_crc32c.implementation == "c"
#: 2: zlib's CRC-32; 3: CRC-32C (a file per block); 4: CRC-32C, a slot per block.
LAYOUT = 4
HEADER = struct.Struct("<4sIII")  # magic, layout, payload length, CRC-32C
#: The largest payload a buffer holds (a block).
MAX_PAYLOAD = 1 << 20
#: FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE (linux/falloc.h).
_PUNCH_HOLE = 0x01 | 0x02

#: A block's bytes as the mount holds them: ``bytes``, or the read-only view of a
#: `Frame`'s payload that a block received or read whole is.
Block = bytes | memoryview

_local = threading.local()


def _crc32c_without_gil() -> Callable[[memoryview], int] | None:
    """CRC-32C of a writable buffer, through ctypes (which releases the GIL), or None.

    google-crc32c's own ``value`` takes only ``bytes``: a frame's payload would have to be
    copied first. Its compiled library (loaded with the package's extension, a wheel's own
    copy or the system's) takes any buffer; it is found among the process's mappings.
    """
    if not FAST_CHECKSUM:
        return None
    found = None
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        found = next(
            (p for line in maps if "libcrc32c" in (p := line.split()[-1]).rsplit("/", 1)[-1]),
            None,
        )
    if found is None:
        return None
    try:
        function = ctypes.CDLL(found).crc32c_value
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    function.restype = ctypes.c_uint32

    def value(view: memoryview) -> int:
        if not len(view):
            return int(google_crc32c.value(b""))
        return int(function(ctypes.addressof(ctypes.c_char.from_buffer(view)), len(view)))

    # The standard check value: a library of that name that computes something else is
    # not used.
    return value if value(memoryview(bytearray(b"123456789"))) == 0xE3069283 else None


_crc_view = _crc32c_without_gil()


def _crc(view: memoryview) -> int:
    """CRC-32C of *view*, a writable view of a frame."""
    if _crc_view is not None:
        return _crc_view(view)
    return int(google_crc32c.value(bytes(view)))  # a copy: no library found to call


_resize = ctypes.pythonapi.PyByteArray_Resize
_resize.argtypes = [ctypes.py_object, ctypes.c_ssize_t]
_resize.restype = ctypes.c_int


class Frame(bytearray):
    """One slot laid out in memory, page-aligned inside the bytearray (for ``O_DIRECT``):
    the header page at `start`, the payload of `length` bytes at ``start + PAGE``, then
    the padding.

    Made by `new_payload` (uninitialised memory: ``bytearray(n)`` would zero every byte
    first, another pass over the block) and by the reads of this module. Only its
    payload, filled whole, is handed on; the header and padding are written before the
    slot goes to disk.
    """

    __slots__ = ("length", "start")
    start: int
    length: int


def _new_frame(length: int) -> Frame:
    frame = Frame()
    size = size_on_disk(length)
    if _resize(frame, size + PAGE):  # CPython's own resize: the new bytes are not zeroed
        raise MemoryError
    frame.start = -ctypes.addressof(ctypes.c_char.from_buffer(frame)) % PAGE
    frame.length = length
    return frame


def _slot(frame: Frame) -> memoryview:
    """The writable, page-aligned slot of *frame* (its payload's whole room)."""
    return memoryview(frame)[frame.start : frame.start + size_on_disk(frame.length)]


def new_payload(length: int) -> memoryview:
    """A writable view of *length* uninitialised bytes: the payload of a new frame.

    The caller fills it whole and hands on ``view.toreadonly()``; `write` then writes it
    without copying it. A view filled only in part must not be handed on (its other
    bytes are whatever the memory held): copy out what was filled.
    """
    frame = _new_frame(length)
    return _slot(frame)[PAGE : PAGE + length]


def _framed(payload: bytes | memoryview) -> memoryview | None:
    """The slot of *payload*, header filled in and padding zeroed, if *payload* is a
    frame's whole payload (`new_payload`, or a block read by this module); else None."""
    if not isinstance(payload, memoryview) or not isinstance(payload.obj, Frame):
        return None
    frame = payload.obj
    if len(payload) != frame.length:  # a piece of a payload, not the payload
        return None
    slot = _slot(frame)
    crc = _crc(slot[PAGE : PAGE + frame.length])
    slot[:PAGE] = bytes(PAGE)
    HEADER.pack_into(slot, 0, MAGIC, LAYOUT, frame.length, crc)
    slot[PAGE + frame.length :] = bytes(len(slot) - PAGE - frame.length)
    return slot


def size_on_disk(length: int) -> int:
    """The file size of a block of *length* bytes."""
    return PAGE + -(-length // PAGE) * PAGE


#: The bytes between two blocks' offsets in a version's file.
SLOT = size_on_disk(MAX_PAYLOAD)


class Missing(LookupError):
    """The slot holds no block: never written, punched out, or past the file's end."""


def _buffer() -> mmap.mmap:
    """This thread's page-aligned buffer (anonymous memory: mapped once, then reused)."""
    buf: mmap.mmap | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mmap.mmap(-1, size_on_disk(MAX_PAYLOAD))
    return buf


def encode_into(buf: mmap.mmap | bytearray, payload: bytes | memoryview) -> int:
    """Lay *payload* out in *buf* as its file; return the file's size."""
    length = len(payload)
    if length > MAX_PAYLOAD:
        raise ValueError(f"a block holds at most {MAX_PAYLOAD} bytes, not {length}")
    size = size_on_disk(length)
    view = memoryview(buf)
    view[:PAGE] = bytes(PAGE)
    view[PAGE : PAGE + length] = payload
    HEADER.pack_into(buf, 0, MAGIC, LAYOUT, length, _crc(view[PAGE : PAGE + length]))
    view[PAGE + length : size] = bytes(size - PAGE - length)
    return size


def encode(payload: bytes) -> bytes:
    """A block file's bytes (for tests, and for anything that writes one otherwise)."""
    buf = bytearray(size_on_disk(len(payload)))
    encode_into(buf, payload)
    return bytes(buf)


def decode(data: memoryview | bytes, exact: bool = True) -> bytes | None:
    """The payload of a slot's bytes, or None if they are not one, or not whole and true.

    *data* is the slot exactly (*exact*), or read from its start on (more may follow:
    a read of a whole slot's length). Raises `Missing` for a slot of zeros (a hole).
    """
    if (header := _header(data, exact)) is None:
        return None
    length, crc = header
    payload = bytes(data[PAGE : PAGE + length])
    return payload if google_crc32c.value(payload) == crc else None


def _header(data: memoryview | bytes, exact: bool) -> tuple[int, int] | None:
    """The payload length and CRC-32C a slot's bytes say they hold, if they are a whole
    slot of this layout (see `decode`); None if not. Raises `Missing` for a hole."""
    if len(data) < PAGE:
        if not any(data):
            raise Missing
        return None
    magic, layout, length, crc = HEADER.unpack_from(data, 0)
    if magic == bytes(len(MAGIC)) and not any(data[:PAGE]):
        raise Missing
    size = size_on_disk(length)
    if magic != MAGIC or layout != LAYOUT or len(data) < size or (exact and len(data) != size):
        return None
    return length, crc


def _open(path: str, flags: int) -> tuple[int, bool]:
    """Open *path* with O_DIRECT if the filesystem takes it; (fd, direct)."""
    try:
        return os.open(path, flags | os.O_DIRECT, 0o600), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(path, flags, 0o600), False


def write(path: str, index: int, payload: bytes | memoryview) -> int:
    """Write block *index* into its slot of the file at *path* (created if need be);
    return the slot's size on disk. Raises `OSError` (the caller cleans up)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a block holds at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    view = _framed(payload)
    if view is None:  # a block that came some other way: laid out in this thread's buffer
        view = memoryview(_buffer())[: encode_into(_buffer(), payload)]
    size = len(view)
    offset = index * SLOT
    fd, direct = _open(path, os.O_WRONLY | os.O_CREAT)
    try:
        try:
            done = os.pwrite(fd, view, offset)
        except OSError as exc:  # a filesystem that opens with O_DIRECT but refuses to write
            if not direct or exc.errno != errno.EINVAL:
                raise
            os.close(fd)
            fd, direct = os.open(path, os.O_WRONLY), False
            done = os.pwrite(fd, view, offset)
        while done < size:  # a short write: finish it (O_DIRECT writes whole pages)
            done += os.pwrite(fd, view[done:], offset + done)
    finally:
        os.close(fd)
    return size


def read(path: str, index: int) -> Block | None:
    """The payload of block *index* of the file at *path* (see `_payload`), or None
    if it is corrupt or truncated.

    Raises `Missing` if the slot holds no block, `OSError` when the file cannot be
    read at all (gone, unreadable).
    """
    frame = _new_frame(MAX_PAYLOAD)
    view = _slot(frame)
    offset = index * SLOT
    fd, direct = _open(path, os.O_RDONLY)
    try:
        try:
            got = os.preadv(fd, [view], offset)
        except OSError as exc:  # opened with O_DIRECT, but the filesystem will not read so
            if not direct or exc.errno != errno.EINVAL:
                raise
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                got = f.readinto(view) or 0
    finally:
        os.close(fd)
    return _payload(frame, got)


def _payload(frame: Frame, got: int) -> Block | None:
    """The payload of a slot read from its start into *frame*'s slot (*got* bytes; 0:
    none there), checked: a read-only view of the frame's payload (``bytes`` for a short
    block); None if it is not whole and true."""
    view = _slot(frame)[:got]
    if (header := _header(view, exact=False)) is None:
        return None
    length, crc = header
    payload = view[PAGE : PAGE + length]
    if _crc(payload) != crc:
        return None
    if length < MAX_PAYLOAD // 2:
        # A short block (a file's last) copied out: its frame has room for a whole one,
        # and the memory cache counts a block by its length.
        return bytes(payload)
    frame.length = length  # its slot is this block's: written again, it needs no copy
    return payload.toreadonly()


class RunReader:
    """Reads slots of one version's file in ascending order: a sequential reader's run.

    Through the page cache, unlike `read`: the kernel's read-ahead then keeps the disk
    busy with large requests while this thread checks and hands on the block before,
    where ``O_DIRECT`` reads wait for the disk one block at a time. Pages are dropped
    behind the reader (``POSIX_FADV_DONTNEED``), so the cache file's bytes do not stay
    in memory beside the mounted file's own pages, and the freed pages are reused by
    the next read-ahead. Each drop covers everything from the run's first slot on: the
    kernel only drops a large folio that lies wholly inside the range, and one may
    straddle the end of the last drop.
    """

    #: Slots read between two drops of the pages behind the reader.
    DROP_EVERY = 16

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        with contextlib.suppress(OSError):  # advice only: reads work without it
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._first: int | None = None  # the offset of the run's first slot
        self._undropped = 0  # slots read since the last drop

    def read(self, index: int) -> Block | None:
        """As `read`: the payload, None if corrupt, `Missing` for a hole or past the end."""
        frame = _new_frame(MAX_PAYLOAD)
        offset = index * SLOT
        got = os.preadv(self._fd, [_slot(frame)], offset)
        if self._first is None:
            self._first = offset
        self._undropped += 1
        if self._undropped >= self.DROP_EVERY:
            self._drop(offset + SLOT - self._first)
        return _payload(frame, got)

    def _drop(self, length: int) -> None:
        """Drop the pages of *length* bytes from the run's start (0: to the file's end)."""
        self._undropped = 0
        if self._first is not None:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, self._first, length, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Drop what is left of the run (and read ahead beyond it), and close the file."""
        try:
            self._drop(0)
        finally:
            os.close(self._fd)


_libc = ctypes.CDLL(None, use_errno=True)


def punch(path: str, index: int, size: int) -> None:
    """Give the disk back the *size* bytes of block *index*'s slot (the file keeps its
    length). Raises `OSError`: EOPNOTSUPP where the filesystem cannot punch holes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        if _libc.fallocate(fd, _PUNCH_HOLE, ctypes.c_int64(index * SLOT), ctypes.c_int64(size)):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def slots(path: str) -> dict[int, int]:
    """The slots of the file at *path* that hold bytes: block index -> bytes on disk.

    Found from the file's data and holes (``SEEK_DATA``/``SEEK_HOLE``), without reading
    it. A filesystem that cannot tell holes calls the whole file data: every slot then
    counts, and those that are zeros turn out `Missing` when read.
    """
    found: dict[int, int] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        position = 0
        while position < end:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole from here on
                    break
                raise
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            index = -(-start // SLOT)  # the first slot that begins inside the data
            while index * SLOT < stop:
                found[index] = min(stop, (index + 1) * SLOT) - index * SLOT
                index += 1
            position = stop
    finally:
        os.close(fd)
    return found
