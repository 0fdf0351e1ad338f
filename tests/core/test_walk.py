"""`WalkAhead` without a kernel or a network: which opens count as a walk, the order of the
walk across directories, and how far ahead it goes."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from cupixfs.core.errors import AuthError
from cupixfs.fake.server import FakeServer
from cupixfs.fs.walk import AHEAD_ENTRIES, DIRS_AHEAD, WalkAhead
from cupixfs.namespace.nodes import Children, DirNode, FileNode, Node
from cupixfs.namespace.tree import ROOT_INODE, Namespace
from tests.core.conftest import stack_of

MiB = 1 << 20


def _folder(*children: tuple[str, Node]) -> DirNode:
    async def list_children() -> Children:
        return list(children)

    return DirNode(list_children=list_children)


def _tree() -> DirNode:
    """root/{a/{1,2,3}, b/{4, deep/{5}}, empty/, c/{6, 7}}: files named by their walk order."""
    return _folder(
        ("a", _folder(("1", FileNode()), ("2", FileNode()), ("3", FileNode()))),
        ("b", _folder(("4", FileNode()), ("deep", _folder(("5", FileNode()))))),
        ("empty", _folder()),
        ("c", _folder(("6", FileNode()), ("7", FileNode()))),
    )


@asynccontextmanager
async def _running(walk: WalkAhead) -> AsyncIterator[None]:
    """*walk* started in a nursery of its own, stopped at the end."""
    async with trio.open_nursery() as nursery:
        walk.start(nursery)
        yield
        nursery.cancel_scope.cancel()


class _Walk:
    """A namespace of `_tree`, a walk over it, and what the walk fetched (by file name)."""

    def __init__(self, ahead_bytes: int = 100 * MiB, size: int = MiB) -> None:
        self.ns = Namespace(_tree())
        self.fetched: list[str] = []  # fetched whole
        self.checked: list[str] = []  # only what an open needs, past the bytes
        self.listed: list[int] = []

        async def list_dir(inode: int) -> object:
            self.listed.append(inode)
            return await self.ns.listdir(inode)

        async def fetch(inode: int, whole: bool) -> None:
            (self.fetched if whole else self.checked).append(self.ns.node(inode).name)

        self.walk = WalkAhead(self.ns, list_dir, fetch, lambda _inode: size, ahead_bytes)

    async def inode(self, path: str) -> int:
        """The inode of *path*, listed on the way (as the reader's own readdir does)."""
        inode = ROOT_INODE
        for name in path.split("/"):
            await self.ns.listdir(inode)
            inode = await self.ns.lookup(inode, name)
        return inode

    async def open(self, *paths: str, pid: int = 100) -> None:
        for path in paths:
            self.walk.opened(await self.inode(path), pid)
        await trio.testing.wait_all_tasks_blocked()


def test_the_walk_order_goes_down_and_up_across_directories() -> None:
    async def main() -> None:
        w = _Walk()
        for path in ("a/1", "a/2", "a/3", "b/4", "b/deep/5", "c/6"):
            await w.inode(path)  # every listing at hand (the reader listed them)
        await w.ns.listdir(await w.inode("empty"))
        order = ["a/1", "a/2", "a/3", "b/4", "b/deep/5", "c/6", "c/7"]
        for here, there in itertools.pairwise(order):
            assert w.walk.next_file(await w.inode(here)) == await w.inode(there), here
        assert w.walk.next_file(await w.inode("c/7")) is None

    trio.run(main)


def test_the_next_file_is_unknown_where_a_listing_is_not_at_hand() -> None:
    async def main() -> None:
        w = _Walk()
        # b is listed (its 4 is looked up) but not b/deep: what follows 4 is not known.
        assert w.walk.next_file(await w.inode("b/4")) is None

    trio.run(main)


def test_two_files_opened_in_walk_order_start_a_walk_that_fetches_what_follows() -> None:
    async def main() -> None:
        w = _Walk()
        async with _running(w.walk):
            await w.open("a/1")
            assert w.fetched == []  # one open is not a walk
            await w.open("a/2")
            assert w.fetched == ["3"]  # to the end of the reader's folder
            assert w.walk.walks == 1
            await w.open("a/3", "b/4")  # into the next folder: the walk goes on past it
            assert w.fetched == ["3", "5", "6", "7"]
            await w.open("b/deep/5")  # nothing is fetched twice
            assert w.fetched == ["3", "5", "6", "7"]
            assert w.walk.walks == 1

    trio.run(main)


def test_opens_out_of_walk_order_fetch_nothing() -> None:
    async def main() -> None:
        w = _Walk()
        async with _running(w.walk):
            await w.open("a/1", "a/3", "a/2", "c/6", "a/1", "a/1")
            assert w.fetched == []
            assert w.walk.walks == 0

    trio.run(main)


def test_the_walk_goes_no_further_ahead_than_its_bytes() -> None:
    async def main() -> None:
        w = _Walk(ahead_bytes=2 * MiB, size=MiB)
        async with _running(w.walk):
            await w.open("a/1", "a/2", "a/3", "b/4")  # at once: the walk starts at 4
            assert w.fetched == ["5", "6"]
            assert w.checked == ["7"]  # past its bytes: only what its open needs
            await w.open("b/deep/5")
            assert w.fetched == ["5", "6", "7"]  # now within them: fetched whole
            await w.open("a/1")  # left the walk: nothing more
            assert w.fetched == ["5", "6", "7"] and w.checked == ["7"]

    trio.run(main)


def test_a_round_does_not_wait_for_the_fetches_it_started() -> None:
    """A slow fetch (round trips on a link with latency) holds up no later round."""

    async def main() -> None:
        w = _Walk(ahead_bytes=MiB, size=MiB)
        started: list[str] = []
        released = trio.Event()

        async def fetch(inode: int, whole: bool) -> None:
            name = w.ns.node(inode).name
            started.append(name)
            if name == "3":
                await released.wait()

        w.walk = WalkAhead(w.ns, w.ns.listdir, fetch, lambda _inode: MiB, MiB)
        async with _running(w.walk):
            await w.open("a/1", "a/2")
            assert started == ["3"]
            await w.open("a/3", "b/4")  # 3's fetch still runs
            assert started == ["3", "5", "6", "7"]
            released.set()

    trio.run(main)


def test_a_file_too_big_to_fetch_ahead_stops_the_walk_there() -> None:
    async def main() -> None:
        w = _Walk(ahead_bytes=16 * MiB, size=64 * MiB)
        async with _running(w.walk):
            await w.open("a/1", "a/2")
            assert w.fetched == ["3"]  # its size is checked (its open would), no further

    trio.run(main)


def test_a_walk_of_ahead_bytes_zero_does_nothing() -> None:
    async def main() -> None:
        w = _Walk(ahead_bytes=0)
        async with _running(w.walk):
            await w.open("a/1", "a/2", "a/3")
            assert w.fetched == [] and w.walk.walks == 0

    trio.run(main)


def test_the_walk_lists_only_what_is_not_at_hand() -> None:
    async def main() -> None:
        w = _Walk()
        async with _running(w.walk):
            await w.open("a/1", "a/2", "a/3", "b/4")
            deep, empty, c = [await w.inode(p) for p in ("b/deep", "empty", "c")]
            # The reader had listed the root, a and b; the walk listed the rest, once each.
            assert sorted(w.listed) == sorted([deep, empty, c])

    trio.run(main)


def test_the_walk_is_bounded_in_entries_too() -> None:
    async def main() -> None:
        many = [(str(i), FileNode()) for i in range(AHEAD_ENTRIES * 3)]
        w = _Walk(size=0)
        w.ns = Namespace(_folder(("big", _folder(*many))))
        fetched: list[str] = []

        async def fetch(inode: int, whole: bool) -> None:
            fetched.append(w.ns.node(inode).name)

        walk = WalkAhead(w.ns, w.ns.listdir, fetch, lambda _inode: 0)
        async with _running(walk):
            for name in ("0", "1"):
                walk.opened(await w.inode(f"big/{name}"), 100)
            await trio.testing.wait_all_tasks_blocked()
            assert fetched == [str(i) for i in range(2, 2 + AHEAD_ENTRIES)]

    trio.run(main)


def test_each_process_walks_on_its_own() -> None:
    async def main() -> None:
        w = _Walk(ahead_bytes=MiB, size=MiB)
        async with _running(w.walk):
            await w.open("a/1", pid=1)
            await w.open("c/6", pid=2)  # another process, elsewhere: no walk broken
            await w.open("a/2", pid=1)
            assert w.fetched == ["3"] and w.walk.walks == 1
            await w.open("c/7", pid=2)  # its own walk, from its own last file
            assert w.walk.walks == 2
            await w.open("a/3", "b/4", pid=1)
            assert w.fetched == ["3", "5"]

    trio.run(main)


def test_a_file_of_unknown_size_is_fetched_before_the_walk_goes_on() -> None:
    async def main() -> None:
        w = _Walk(ahead_bytes=2 * MiB)
        sizes: dict[str, int] = {}

        async def fetch(inode: int, whole: bool) -> None:
            await trio.sleep(0.01)  # its size check
            name = w.ns.node(inode).name
            sizes[name] = MiB
            (w.fetched if whole else w.checked).append(name)

        walk = WalkAhead(w.ns, w.ns.listdir, fetch, lambda i: sizes.get(w.ns.node(i).name), 2 * MiB)
        async with _running(walk):
            for path in ("a/1", "a/2", "a/3", "b/4"):
                walk.opened(await w.inode(path), 100)
            await trio.sleep(1)
            assert w.fetched == ["5", "6"]  # each counted once its size was known
            assert w.checked == ["7"]  # past the bytes

    trio.run(main)


def test_a_walk_that_meets_an_error_stops_and_the_mount_goes_on() -> None:
    async def main() -> None:
        w = _Walk()
        fetched: list[str] = []

        async def list_dir(inode: int) -> object:
            raise AuthError("the API refused the token")

        async def fetch(inode: int, whole: bool) -> None:
            fetched.append(w.ns.node(inode).name)
            raise ValueError("a bug in a fetch")

        walk = WalkAhead(w.ns, list_dir, fetch, lambda _inode: MiB)
        async with _running(walk):
            for path in ("a/1", "a/2"):  # 3 is fetched (and fails), then b cannot be listed
                walk.opened(await w.inode(path), 100)
            await trio.testing.wait_all_tasks_blocked()
            assert fetched == ["3"]
            for path in ("a/3",):  # the next open walks again
                walk.opened(await w.inode(path), 100)
            await trio.testing.wait_all_tasks_blocked()

    trio.run(main)


def test_the_walk_never_lists_a_directory_above_where_its_reader_started() -> None:
    async def main() -> None:
        w = _Walk()
        async with _running(w.walk):
            four, five = await w.inode("b/4"), await w.inode("b/deep/5")
            # The root's listing is dropped, as if the reader had started in b/ (its
            # parent never listed): past b/deep/5 the walk goes no further.
            w.ns._listings.pop(ROOT_INODE)
            w.walk.opened(four, 200)
            w.walk.opened(five, 200)  # into b/deep: the walk may climb, but not to /
            await trio.testing.wait_all_tasks_blocked()
            assert w.walk.walks == 1 and w.listed == [] and w.fetched == []

    trio.run(main)


def test_a_reader_that_stays_in_its_folder_gets_nothing_of_the_next() -> None:
    """A file manager reads the first bytes of each file it shows, in listing order."""

    async def main() -> None:
        w = _Walk()
        async with _running(w.walk):
            await w.open("a/1", "a/2")
            await w.open("a/3")
            assert w.fetched == ["3"] and w.listed == []

    trio.run(main)


def _scan_walk(w: _Walk, ahead_bytes: int = 100 * MiB) -> tuple[WalkAhead, list[str]]:
    """A walk over *w*'s tree that records the directories it lists ahead (by name)."""
    scanned: list[str] = []

    async def list_full(inode: int) -> None:
        scanned.append(w.ns.node(inode).name)

    async def fetch(inode: int, whole: bool) -> None:
        pass

    walk = WalkAhead(w.ns, w.ns.listdir, fetch, lambda _inode: 0, ahead_bytes, list_full)
    return walk, scanned


def test_a_process_that_lists_directories_in_walk_order_gets_the_next_listed_ahead() -> None:
    async def main() -> None:
        w = _Walk()
        walk, scanned = _scan_walk(w)
        async with _running(walk):
            root, a, b, c = [await w.inode(p) if p else ROOT_INODE for p in ("", "a", "b", "c")]
            assert walk.next_dir(root) == a and walk.next_dir(a) == b
            walk.listed(root, 100)
            await trio.testing.wait_all_tasks_blocked()
            assert scanned == []  # one listing is not a scan
            walk.listed(a, 100)  # the directory after the one it listed: a scan
            await trio.testing.wait_all_tasks_blocked()
            assert scanned == ["b", "deep", "empty", "c"] and walk.scans == 1
            walk.listed(b, 100)  # on: nothing is listed twice
            await trio.testing.wait_all_tasks_blocked()
            assert scanned == ["b", "deep", "empty", "c"] and walk.scans == 1
            walk.listed(c, 200)  # another process, one listing: nothing
            walk.listed(a, 300)
            walk.listed(c, 300)  # out of order: nothing
            await trio.testing.wait_all_tasks_blocked()
            assert walk.scans == 1

    trio.run(main)


def test_a_scan_lists_nothing_ahead_outside_the_directory_it_scans() -> None:
    """``find b`` lists b, then b/deep: what follows b (empty, c) is not its to list."""

    async def main() -> None:
        w = _Walk()
        walk, scanned = _scan_walk(w)
        async with _running(walk):
            b, deep = await w.inode("b"), await w.inode("b/deep")
            walk.listed(b, 100)
            walk.listed(deep, 100)
            await trio.testing.wait_all_tasks_blocked()
            assert walk.scans == 1 and scanned == []
            a1, a = await w.inode("a/1"), await w.inode("a")
            assert a1 and walk.next_dir(a) == b
            walk.listed(a, 200)  # a, then b: the scan is within the root
            walk.listed(b, 200)
            await trio.testing.wait_all_tasks_blocked()
            assert scanned == ["empty", "c"]  # what follows b, within the root

    trio.run(main)


def test_a_scan_is_followed_only_while_its_listings_wait_on_the_network() -> None:
    """Listing ahead pays where a listing costs round trips; where listings are served at
    once, a scan is followed for its first listings ahead only."""

    def scan(seconds: float) -> list[str]:
        many = [(f"d{i}", _folder()) for i in range(40)]
        w = _Walk()
        w.ns = Namespace(_folder(*many))
        scanned: list[str] = []

        async def list_full(inode: int) -> None:
            await trio.sleep(seconds)
            scanned.append(w.ns.node(inode).name)

        async def fetch(inode: int, whole: bool) -> None:
            pass

        async def main() -> None:
            walk = WalkAhead(w.ns, w.ns.listdir, fetch, lambda _inode: 0, MiB, list_full)
            async with _running(walk):
                for i in range(13):
                    walk.listed(await w.inode(f"d{i}"), 100)
                    await trio.sleep(1)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        return scanned

    assert sorted(scan(0.0)) == sorted(f"d{i}" for i in range(2, 2 + DIRS_AHEAD))
    assert sorted(scan(0.02)) == sorted(f"d{i}" for i in range(2, 13 + DIRS_AHEAD))


def test_a_scan_is_listed_ahead_by_directories_and_not_with_walk_ahead_zero() -> None:
    async def main() -> None:
        many = [(f"d{i}", _folder()) for i in range(DIRS_AHEAD * 3)]
        w = _Walk()
        w.ns = Namespace(_folder(*many))
        walk, scanned = _scan_walk(w)
        async with _running(walk):
            walk.listed(await w.inode("d0"), 100)
            walk.listed(await w.inode("d1"), 100)
            await trio.testing.wait_all_tasks_blocked()
            assert scanned == [f"d{i}" for i in range(2, 2 + DIRS_AHEAD)]
        w.ns = Namespace(_folder(*many))
        walk, scanned = _scan_walk(w, ahead_bytes=0)
        async with _running(walk):
            walk.listed(await w.inode("d0"), 100)
            walk.listed(await w.inode("d1"), 100)
            await trio.testing.wait_all_tasks_blocked()
            assert scanned == [] and walk.scans == 0

    trio.run(main)


def test_a_mount_walks_at_most_half_its_memory_cache_ahead(
    server: FakeServer, tmp_path: Path
) -> None:
    """What a walk fetches waits in the memory cache for its reader."""

    async def main() -> None:
        async with stack_of(server, tmp_path, memory_cache=8 * MiB) as stack:
            assert stack.vfs.walk.ahead_bytes == 4 * MiB
        async with stack_of(server, tmp_path, walk_ahead=0) as stack:
            assert stack.vfs.walk.ahead_bytes == 0

    trio.run(main)
