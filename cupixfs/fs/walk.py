"""Fetching ahead of a reader that walks the tree: ``cp -r``, ``rsync``, ``tar``, a backup;
listing ahead of one that scans it: ``find``, ``du``.

Such a reader opens file after file in listing order, and before the first byte of each
it waits on a few round trips: the next directory's listing, the size check at open, the
stream's first byte. For small files those waits are most of the time: a ``strace`` of
``cp -r`` over a cluster of 8 MiB files showed 5.5 ms listing each sub, 5.6 ms opening
each file and 10.7 ms to its first MiB, against 8 ms reading the remaining 7 MiB.
Latency of a real link multiplies the waits and not the reading.

So when a reader opens the file that follows, in a depth-first walk of the listings, the
one it opened before, `WalkAhead` goes on ahead of it in that walk: it lists the
directories the reader will enter (the same API calls its ``readdir`` would make),
learns the sizes its ``ls``-like stats need, checks each file's size at storage (what
its open would do) and fetches the next files whole into the caches and the kernel's
page cache -- what the reader's own first read would do, a few files earlier. Only files
the data layer would fetch whole at a first read anyway (``WHOLE_FILE``) are fetched
ahead; for a larger file the waits are small next to its bytes. Past ``ahead_bytes`` of
file data the walk goes on without fetching bytes: it lists, loads documents and checks
sizes, the round trips a reader's listings and opens would wait on.

What it may cost in vain is bounded: one walk is never more than ``ahead_bytes`` of file
data (and a size check per file, of ``HEAD_SIZE`` bytes) and ``AHEAD_ENTRIES`` entries
ahead of the reader, and goes at most ``MAX_UP``
directories above the file it started from, only into those its reader has listed, and
past the end of the reader's directory only once the reader itself has gone from one
directory into the next (a file manager that reads the first bytes of each file it shows,
in listing order, never does). A reader that leaves the walk's order starts nothing.

A process that lists folder after folder in that order (``find``, ``du``, ``ls -R``,
rsync's file list) is scanning the tree, and the next folders are listed ahead of it, with
the sizes its listings carry (`WalkAhead.listed`).

The walk is decided here from the namespace's listings alone; what "listing" and
"fetching" a node means is the `Vfs`'s (its callbacks), so this module knows the tree's
shape and nothing of HTTP, blocks or the kernel.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import cachetools
import trio

from cupixfs.core.errors import CupixError, unwrap
from cupixfs.namespace.nodes import DirNode, FileNode
from cupixfs.namespace.tree import ROOT_INODE, Namespace

log = logging.getLogger(__name__)

MiB = 1 << 20
#: File bytes a walk fetches ahead of the reader's current file (two 8 MiB files, or
#: many small ones): enough to hide a file's waits behind the reader copying the one
#: before, little enough to hold in the memory cache until it is read.
AHEAD_BYTES = 16 * MiB
#: Entries (files and directories) a walk goes ahead, however small they are.
AHEAD_ENTRIES = 32
#: Directories a walk climbs above its file's to find the next files
#: (``/captures/<id>/videos/<file>`` to the next capture's videos is two).
MAX_UP = 2
#: Files a walk fetches at once.
FETCHES_AT_ONCE = 4
#: Directories a scan (``find``, ``du``, ``ls -R``, rsync's file list) is listed ahead.
DIRS_AHEAD = 8
#: Entries a scan round looks through for them (a folder of many files holds few folders).
SCAN_ENTRIES = 256
#: A listing that takes this long waited on the network (a request on the loopback takes
#: 1-3 ms). A scan whose first ``DIRS_AHEAD`` listings ahead took less is not followed
#: further: where listings cost no round trips, listing them twice only costs CPU.
SLOW_LISTING = 0.010
#: Directories listed ahead of scans at once (each runs its own size checks at once).
LISTINGS_AT_ONCE = 2
#: Reading processes followed at once (the least recent is forgotten).
READERS = 64
#: Files remembered as fetched or checked ahead (so a walk resumed further on skips them).
REMEMBERED = 256


@dataclass(eq=False)
class _Reader:
    """One reading process: the file it opened last, and where its walk is."""

    last: int | None = None
    #: Where the reader is in its walk, as of its last open (None: not walking).
    position: int | None = None
    #: Whether the walk took the reader from one directory into another: only then does
    #: the walk go past the end of the reader's directory.
    crossed: bool = False
    #: Whether a task follows this reader's walk now.
    followed: bool = False
    #: The directory it listed last, where its scan is (None: not scanning), and whether a
    #: task lists ahead of that scan now.
    last_dir: int | None = None
    scan_position: int | None = None
    scanning: bool = False
    #: The directory the scan is within (``find clusters``: clusters; ``find sub0 sub1``:
    #: their cluster): nothing outside it is listed ahead.
    scan_top: int = ROOT_INODE
    #: Listings done ahead of this scan, and how many of them waited on the network.
    scanned: int = 0
    scanned_slow: int = 0


class WalkAhead:
    """Follows the files each process opens; fetches ahead of one that walks the tree.

    Readers are told apart by process: two ``cp -r`` at once each walk, and a file
    manager or a status read meanwhile does not break either walk.

    *list_dir* lists a directory (as far as the namespace goes: no sizes); *fetch(inode,
    whole)* gets a file ready for its reader: with *whole*, as its open and first read
    would; without, as its open would (its size checked, a document loaded); *weight*
    says how many bytes of a file its reader will read, as far as is known without a
    request (None: not known until the file is fetched).
    """

    def __init__(
        self,
        namespace: Namespace,
        list_dir: Callable[[int], Awaitable[object]],
        fetch: Callable[[int, bool], Awaitable[object]],
        weight: Callable[[int], int | None],
        ahead_bytes: int = AHEAD_BYTES,
        list_full: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self._namespace = namespace
        self._list_dir = list_dir
        self._list_full = list_full
        self._fetch = fetch
        self._weight = weight
        self.ahead_bytes = ahead_bytes
        self._readers: cachetools.LRUCache[int, _Reader] = cachetools.LRUCache(READERS)
        self._slots = trio.Semaphore(FETCHES_AT_ONCE)
        self._listing_slots = trio.Semaphore(LISTINGS_AT_ONCE)
        #: Files fetched (True) or only checked (False) ahead, and directories listed ahead.
        self._fetched: cachetools.LRUCache[int, bool] = cachetools.LRUCache(REMEMBERED)
        self._scanned: cachetools.LRUCache[int, bool] = cachetools.LRUCache(REMEMBERED)
        self._nursery: trio.Nursery | None = None
        #: Walks and scans followed (for the status file, and the tests).
        self.walks = 0
        self.scans = 0

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def opened(self, inode: int, pid: int) -> None:
        """Process *pid* opened file *inode*: if it is the one after the file that
        process opened before, the reader walks, and the walk goes on ahead of it."""
        if self.ahead_bytes <= 0 or self._nursery is None:
            return
        reader = self._reader(pid)
        last, reader.last = reader.last, inode
        if last is None or last == inode or self.next_file(last) != inode:
            reader.position = None  # not (or no longer) walking: what is fetched stays
            reader.crossed = False
            return
        if reader.position is None:
            self.walks += 1
        reader.position = inode
        ns = self._namespace
        reader.crossed = reader.crossed or ns.parent(inode) != ns.parent(last)
        if not reader.followed:
            reader.followed = True
            self._nursery.start_soon(self._follow, reader)

    def _reader(self, pid: int) -> _Reader:
        reader = self._readers.get(pid)
        if reader is None:
            reader = self._readers[pid] = _Reader()
        return reader

    def listed(self, inode: int, pid: int) -> None:
        """Process *pid* opened directory *inode* to list it: if it is the directory after
        the one that process listed before, the reader scans the tree, and the next
        directories are listed ahead of it (with the sizes its stats will ask for)."""
        if self.ahead_bytes <= 0 or self._nursery is None or self._list_full is None:
            return
        reader = self._reader(pid)
        last, reader.last_dir = reader.last_dir, inode
        if last is None or last == inode or self.next_dir(last) != inode:
            reader.scan_position = None
            return
        if reader.scan_position is None:
            self.scans += 1
            reader.scan_top = last
            reader.scanned = reader.scanned_slow = 0
        # Within what the reader has scanned so far: `find sub0 sub1` goes from sub0's
        # tree into sub1, and then scans within their cluster.
        reader.scan_top = self._common_parent(reader.scan_top, inode)
        reader.scan_position = inode
        if reader.scanned >= DIRS_AHEAD and not reader.scanned_slow:
            return  # its listings cost no round trips: nothing to gain ahead of it
        if not reader.scanning:
            reader.scanning = True
            self._nursery.start_soon(self._follow_scan, reader)

    # -- the order of the walk ------------------------------------------------------------

    def _ancestors(self, inode: int) -> list[int]:
        """*inode* and the directories above it, up to the root."""
        chain = [inode]
        while chain[-1] != ROOT_INODE:
            chain.append(self._namespace.parent(chain[-1]))
        return chain

    def _common_parent(self, a: int, b: int) -> int:
        """The lowest directory above *b* that is *a* or above it."""
        above_a = set(self._ancestors(a))
        return next((i for i in self._ancestors(b)[1:] if i in above_a), ROOT_INODE)

    def next_dir(self, inode: int) -> int | None:
        """The directory after *inode* in a depth-first walk of the listings at hand: its
        first subdirectory, else the next directory after it, or None."""
        ns = self._namespace
        for child in ns.listed_after(inode) or ():
            if isinstance(ns.node(child), DirNode):
                return child
        current = inode
        while current != ROOT_INODE:
            parent = ns.parent(current)
            for sibling in ns.listed_after(parent, current) or ():
                if isinstance(ns.node(sibling), DirNode):
                    return sibling
            current = parent
        return None

    def next_file(self, inode: int) -> int | None:
        """The file after *inode* in a depth-first walk of the listings at hand, or None
        where that takes a listing that is not (the reader has not listed it either)."""
        ns = self._namespace
        current = inode
        while current != ROOT_INODE:
            parent = ns.parent(current)
            siblings = ns.listed_after(parent, current)
            if siblings is None:
                return None
            for sibling in siblings:
                found = self._first_file(sibling)
                if found != 0:
                    return found  # a file, or None: a listing is missing
            current = parent
        return None

    def _first_file(self, inode: int, depth: int = 0) -> int | None:
        """The first file in *inode* itself or under it (0: there is none, None: a
        listing is missing)."""
        ns = self._namespace
        node = ns.node(inode) if ns.known(inode) else None
        if isinstance(node, FileNode):
            return inode
        if not isinstance(node, DirNode) or depth > MAX_UP + 1:
            return 0
        children = ns.listed_after(inode)
        if children is None:
            return None
        for child in children:
            found = self._first_file(child, depth + 1)
            if found != 0:
                return found
        return 0

    async def _files_after(self, inode: int, climb: bool) -> AsyncGenerator[int, None]:
        """The entries after *inode* in the walk (directories, then what they hold),
        listing the directories below on the way.

        Past the end of *inode*'s directory only if *climb*: a file manager reading the
        first bytes of each file of the folder it shows opens them in listing order too,
        but never goes on into the next folder; a copy does, and then the walk does. And
        directories above are climbed only where their listing is at hand: the reader
        listed them, so it walks there. One it did not list is above where it started
        (``cp -r videos`` does not list ``/captures``, a listing of thousands).
        """
        ns = self._namespace
        current = inode
        for _up in range(MAX_UP + 1 if climb else 1):
            parent = ns.parent(current)
            siblings = ns.listed_after(parent, current)
            if siblings is None:
                return
            for sibling in siblings:
                async for entry in self._under(sibling, 0):
                    yield entry
            if parent == ROOT_INODE:
                return
            current = parent

    async def _under(self, inode: int, depth: int) -> AsyncGenerator[int, None]:
        ns = self._namespace
        node = ns.node(inode) if ns.known(inode) else None
        if node is None or (isinstance(node, DirNode) and node.derived):
            return  # gone, or made of a file already fetched (its reader reads that)
        yield inode
        if not isinstance(node, DirNode) or depth > MAX_UP:
            return
        await self._listed(inode)
        for child in ns.listed_after(inode) or ():
            async for entry in self._under(child, depth + 1):
                yield entry

    async def _listed(self, inode: int) -> None:
        """List *inode* unless its listing is at hand (then its reader listed it, or an
        earlier round did: listing it again would learn every entry's size again)."""
        if self._namespace.listed_after(inode) is None:
            await self._list_dir(inode)

    # -- the task ---------------------------------------------------------------------------

    async def _rounds(
        self,
        where: Callable[[], int | None],
        one_round: Callable[[int], Awaitable[None]],
        what: str,
    ) -> None:
        """Run *one_round* from where the reader is (*where*) until it stops, or a round
        ends with the reader where it started (then its next step starts this again)."""
        while (position := where()) is not None:
            try:
                await one_round(position)
            except Exception as exc:  # whatever it is, never the mount's end
                _failed(f"{what} stopped", exc)
                return
            if where() == position:
                return  # as far ahead as it goes, until the reader moves on

    async def _follow(self, reader: _Reader) -> None:
        """Walk ahead of *reader* until it stops walking or the walk is far enough ahead
        of where it is; its next open in the walk starts this again."""
        try:
            await self._rounds(
                lambda: reader.position, lambda at: self._walk(reader, at), "walk-ahead"
            )
        finally:
            reader.followed = False

    async def _walk(self, reader: _Reader, position: int) -> None:
        """Fetch ahead of *reader* at *position* until the walk is far enough ahead, or
        the reader has moved (then the next round starts from where it is).

        Files within ``ahead_bytes`` are fetched whole; past them, up to
        ``AHEAD_ENTRIES``, the walk only lists folders, loads documents and checks sizes:
        what the reader's listings and opens will wait on. Those cost round trips and
        hardly any bytes, and a reader copying a folder of one 8 MiB file and two
        documents in 7 ms otherwise caught up with them: with every response 20 ms
        late, each folder's listing waited for its ``meta.json``.

        Files are fetched several at once: on a link with latency, each costs round
        trips of its own (its size check, its first byte), and one after the other they
        would be no faster than the reader. A round does not wait for the fetches it
        started: the reader's next open starts the next round at once, and with every
        response 20 ms late, waiting for the slowest fetch of the round before (a
        download call and a size check) held back the next folder's documents until
        the reader was listing that folder itself.
        """
        assert self._nursery is not None
        ahead = entries = 0
        async with aclosing(self._files_after(position, reader.crossed)) as walk:
            async for entry in walk:
                if reader.position != position:
                    return
                entries += 1
                if entries > AHEAD_ENTRIES:
                    return
                if not isinstance(self._namespace.node(entry), FileNode):
                    continue
                whole = ahead < self.ahead_bytes
                weight = self._weight(entry)
                done = self._fetched.get(entry)
                if done is None or (whole and not done):
                    self._fetched[entry] = whole
                    await self._slots.acquire()
                    if whole and weight is None:  # its size is learnt by its fetch: wait
                        await self._fetch_one(entry, whole)
                        weight = self._weight(entry)
                    else:
                        self._nursery.start_soon(self._fetch_one, entry, whole)
                if whole:
                    ahead += weight or 0

    async def _fetch_one(self, inode: int, whole: bool) -> None:
        """Fetch *inode* (whole, or only what its open needs); whatever goes wrong is
        logged, never raised (this runs in the mount's nursery, beside the rounds that
        start it)."""
        try:
            await self._fetch(inode, whole)
        except Exception as exc:
            self._fetched.pop(inode, None)
            _failed(f"walk-ahead: inode {inode} not fetched", exc)
        finally:
            self._slots.release()

    async def _follow_scan(self, reader: _Reader) -> None:
        """List ahead of a scanning *reader* until it stops scanning or the listing is
        far enough ahead of where it is (its next listing in order starts this again).

        ``ls -lR``, ``find``, ``du`` and rsync's file list read each directory with its
        entries' sizes, one after another. A sub's listing waits on its ``meta.json``
        (one API call) and a folder of videos on a size check per video: round trips,
        which a listing done a few directories ahead overlaps.
        """
        try:
            await self._rounds(
                lambda: reader.scan_position, lambda at: self._scan(reader, at), "list-ahead"
            )
        finally:
            reader.scanning = False

    async def _scan(self, reader: _Reader, position: int) -> None:
        """List the directories after *position*, within the reader's scan, up to
        ``DIRS_AHEAD`` of them, or until the reader has moved."""
        assert self._nursery is not None
        dirs = entries = 0
        async with aclosing(self._files_after(position, True)) as walk:
            async for entry in walk:
                entries += 1
                if reader.scan_position != position or entries > SCAN_ENTRIES:
                    return
                if reader.scan_top not in self._ancestors(entry)[1:]:
                    return  # past the end of what the reader scans
                if not isinstance(self._namespace.node(entry), DirNode):
                    continue
                dirs += 1
                if dirs > DIRS_AHEAD:
                    return
                if entry not in self._scanned:
                    self._scanned[entry] = True
                    await self._listing_slots.acquire()
                    self._nursery.start_soon(self._scan_one, reader, entry)

    async def _scan_one(self, reader: _Reader, inode: int) -> None:
        """List *inode* with its entries' sizes; errors are its reader's to meet."""
        assert self._list_full is not None
        try:
            started = trio.current_time()
            await self._list_full(inode)
            reader.scanned += 1
            if trio.current_time() - started >= SLOW_LISTING:
                reader.scanned_slow += 1
        except Exception as exc:
            self._scanned.pop(inode, None)
            _failed(f"list-ahead: inode {inode} not listed", exc)
        finally:
            self._listing_slots.release()

    def forget(self, inode: int) -> None:
        """*inode* was dropped: it may be fetched (or listed) again (as a new one)."""
        self._fetched.pop(inode, None)
        self._scanned.pop(inode, None)


def _failed(what: str, exc: Exception) -> None:
    """Log what went wrong ahead of a reader. A network or API error is its reader's to
    meet, if it is real (debug); anything else is a bug, said as a warning."""
    error = unwrap(exc)
    if isinstance(error, CupixError | OSError):
        log.debug("%s: %s", what, error)
    else:
        log.warning("%s: %r", what, error, exc_info=error)
