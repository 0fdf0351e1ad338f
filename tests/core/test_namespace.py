"""`Namespace` without a kernel: lookup counts, forget, pins, the bounded listing cache, and
inode numbers that are never reused for another file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import trio

from cupixfs.core.errors import NotFound
from cupixfs.core.memory import give_back
from cupixfs.data.sources import RemoteFile
from cupixfs.fs.vfs import GIVE_BACK_AFTER, Vfs
from cupixfs.namespace.nodes import Children, DirNode, FileNode, LinkNode, Node
from cupixfs.namespace.tree import ROOT_INODE, Namespace


def _file(key: str) -> FileNode:
    return FileNode(source=RemoteFile(key, f"{key}/download"))


def _folder(children: Callable[[], Children]) -> DirNode:
    async def list_children() -> Children:
        return children()

    return DirNode(list_children=list_children)


def _tree(files: dict[str, list[str]]) -> DirNode:
    """A root with one folder per key of *files*, each holding files named after their keys."""
    return _folder(
        lambda: [
            (name, _folder(lambda keys=keys: [(k.replace("/", "_"), _file(k)) for k in keys]))
            for name, keys in files.items()
        ]
    )


async def _walk(ns: Namespace, remember: bool = True) -> list[int]:
    """Every inode below the root, each looked up once (as ``find`` makes the kernel do)."""
    seen = []
    pending = [ROOT_INODE]
    while pending:
        folder = pending.pop()
        for _name, child in await ns.listdir(folder):
            if remember:
                ns.ref(child)
            seen.append(child)
            if isinstance(ns.node(child), DirNode):
                pending.append(child)
    return seen


def test_what_the_kernel_forgets_is_dropped_with_its_listing_and_file_data() -> None:
    dropped: list[tuple[int, str | None]] = []

    async def main() -> None:
        ns = Namespace(_tree({"a": ["videos/1", "videos/2"], "b": ["videos/3"]}))
        ns.on_drop = lambda inode, key: dropped.append((inode, key))
        inodes = await _walk(ns)
        assert ns.table_sizes()["inodes"] == 1 + len(inodes) == 6
        assert ns.table_sizes()["source_keys"] == 3
        assert ns.table_sizes()["listings"] == 3
        for inode in reversed(inodes):  # the kernel forgets leaves first, then their folders
            ns.unref(inode)
        sizes = ns.table_sizes()
        # Only the root stays, with its own listing (the root is never forgotten).
        assert sizes == {
            "inodes": 1,
            "listings": 1,
            "listed_entries": 3,
            "source_keys": 0,
            "unlisted": 0,
        }
        assert sorted(key for _, key in dropped if key) == ["videos/1", "videos/2", "videos/3"]
        # What the kernel asks again gets new inodes, never the old ones.
        again = await _walk(ns, remember=False)
        assert not set(again) & set(inodes)

    trio.run(main)


def test_an_entry_not_handed_to_the_kernel_lives_as_long_as_its_listing() -> None:
    async def main() -> None:
        ns = Namespace(_tree({"a": ["videos/1", "videos/2"]}))
        [(_, a)] = await ns.listdir(ROOT_INODE)
        ns.ref(a)
        [(_, first), (_, second)] = await ns.listdir(a)
        ns.ref(second)  # the kernel got only the second (say, readdir stopped early)
        assert ns.known(first) and ns.known(second)
        ns.unref(a)  # the folder is forgotten: its listing goes, and what only it held
        assert not ns.known(a) and not ns.known(first)
        assert ns.known(second)  # the kernel still holds this one
        ns.unref(second)
        assert ns.table_sizes()["inodes"] == 1

    trio.run(main)


def test_an_open_handle_pins_an_inode_the_kernel_has_forgotten() -> None:
    async def main() -> None:
        ns = Namespace(_tree({"a": ["videos/1"]}))
        [(_, a)] = await ns.listdir(ROOT_INODE)
        [(_, video)] = await ns.listdir(a)
        ns.ref(a)
        ns.ref(video)
        ns.ref(video)  # open()
        ns.unref(video)  # forget() arrives before release()
        ns.unref(a)
        assert ns.known(video)
        ns.unref(video)  # release()
        assert not ns.known(video)

    trio.run(main)


def test_listings_are_bounded_and_an_evicted_listing_lets_its_children_go() -> None:
    async def main() -> None:
        files = {f"f{i}": [f"videos/{i}0", f"videos/{i}1"] for i in range(10)}
        ns = Namespace(_tree(files), max_listed=12)
        folders = await ns.listdir(ROOT_INODE)  # 10 entries (+1)
        for _name, folder in folders:
            ns.ref(folder)  # readdirplus hands each to the kernel
        for _name, folder in folders:
            await ns.listdir(folder)  # 2 entries (+1) each: older listings are evicted
        sizes = ns.table_sizes()
        assert sizes["listed_entries"] <= 12
        assert sizes["inodes"] < 1 + 10 + 20  # the evicted listings' files went with them
        assert all(ns.known(folder) for _, folder in folders)  # the kernel knows these
        # An evicted listing is listed again on demand, with the same inodes for what is known.
        again = await ns.listdir(ROOT_INODE)
        assert again == folders

    trio.run(main)


def test_an_inode_is_never_reused_for_another_file() -> None:
    keys = {"name": "videos/1"}

    async def list_root() -> Children:
        node: Node = _file(keys["name"]) if keys["name"] else DirNode(list_children=None)
        return [("entry", node), ("link", LinkNode(target=f"../captures/{keys['name']}"))]

    async def main() -> None:
        ns = Namespace(DirNode(list_children=list_root), listing_ttl=0.01)
        first = dict(await ns.listdir(ROOT_INODE))
        ns.ref(first["entry"])
        await trio.sleep(0.02)
        assert dict(await ns.listdir(ROOT_INODE)) == first  # the same file: the same inode
        keys["name"] = "videos/2"  # another file under the same name
        await trio.sleep(0.02)
        second = dict(await ns.listdir(ROOT_INODE))
        assert second["entry"] != first["entry"] and second["link"] != first["link"]
        assert ns.known(first["entry"])  # the kernel still knows the old one
        keys["name"] = ""  # the name became a folder
        await trio.sleep(0.02)
        third = dict(await ns.listdir(ROOT_INODE))
        assert len({first["entry"], second["entry"], third["entry"]}) == 3
        ns.unref(first["entry"])
        assert not ns.known(first["entry"])

    trio.run(main)


def test_a_lookup_of_its_own_answers_without_listing_the_folder() -> None:
    listed = 0

    async def list_children() -> Children:
        nonlocal listed
        listed += 1
        return [("1", DirNode())]

    async def lookup(name: str) -> Node | None:
        if not name.isdigit():
            raise NotFound(name)
        return DirNode() if name != "404" else None

    async def main() -> None:
        root = DirNode(list_children=list_children, lookup_extra=lookup)
        ns = Namespace(root)
        found = await ns.lookup(ROOT_INODE, "7")
        ns.ref(found)  # the kernel got it
        assert listed == 0 and ns.known(found)
        with pytest.raises(NotFound):
            await ns.lookup(ROOT_INODE, "x")
        assert listed == 0
        with pytest.raises(NotFound):
            await ns.lookup(ROOT_INODE, "404")  # the lookup cannot tell: the listing decides
        assert listed == 1
        assert dict(await ns.listdir(ROOT_INODE)).keys() == {"1"}
        assert await ns.lookup(ROOT_INODE, "7") == found  # the same inode, now also listed
        assert dict(await ns.listdir(ROOT_INODE)).keys() == {"1", "7"}

    trio.run(main)


def test_the_vfs_drops_what_it_keeps_per_file_and_gives_memory_back_after_a_big_forget() -> None:
    forgotten: list[str] = []

    class Data:
        def forget(self, key: str) -> None:
            forgotten.append(key)

        def table_sizes(self) -> dict[str, int]:
            return {}

    async def main() -> None:
        count = GIVE_BACK_AFTER + 10
        ns = Namespace(_tree({"a": [f"videos/{i}" for i in range(count)]}))
        vfs = Vfs(ns, Data(), datetime.now(UTC))  # type: ignore[arg-type]
        inodes = await _walk(ns)
        assert not vfs.forget([(inodes[-1], 1)])  # one file: nothing worth giving back
        assert forgotten == [f"videos/{count - 1}"]
        assert vfs.forget([(inode, 1) for inode in inodes[:-1]])  # thousands at once
        assert len(forgotten) == count and vfs.table_sizes()["inodes"] == 1
        give_back()  # returns what the allocator can (a no-op without glibc)

    trio.run(main)


def test_listed_after_gives_the_children_after_one_in_listing_order() -> None:
    async def main() -> None:
        ns = Namespace(_tree({"a": ["videos/1", "videos/2", "videos/3"], "b": []}))
        assert ns.listed_after(ROOT_INODE) is None  # not listed yet: no API call here
        (_, a), (_, b) = await ns.listdir(ROOT_INODE)
        files = [inode for _name, inode in await ns.listdir(a)]
        assert list(ns.listed_after(a) or ()) == files
        assert list(ns.listed_after(a, files[0]) or ()) == files[1:]
        assert list(ns.listed_after(a, files[2]) or ()) == []
        assert ns.listed_after(a, b) is None  # not a child of a
        later = ns.listed_after(a, files[0])
        assert later is not None and next(later) == files[1]
        ns.expire_listings()  # stale now: nothing is at hand
        assert ns.listed_after(a) is None
        await ns.listdir(a)  # listed again: the iterator over the old listing ends
        assert list(later) == []
        assert list(ns.listed_after(a, files[0]) or ()) == files[1:]  # same inodes

    trio.run(main)
