"""The smallest mount of the same stack: what a straightforward mount reaches on a copy.

``python bench/minimal_mount.py MOUNTPOINT --api-url URL --cluster ID [--cache-dir DIR]``
(token in ``CUPIX_API_TOKEN``) mounts one cluster's sub pointclouds as
``/<sub id>/<name>`` with pyfuse3 on trio, and nothing else. Opening a file starts
fetching it and the next ``AHEAD`` ones whole, each in a worker thread: its download call,
the 302 followed, one GET read in 1 MiB blocks straight into `block_file` frames. Reads
are answered from those blocks once the file is in. With ``--cache-dir`` every block is
also written to a cache file per sub by two writer threads, as cupixfs's disk cache
writes it (same slot layout, CRC-32C, ``O_DIRECT``, no copy of the payload).

What it leaves out is what cupixfs adds: versions pinned per handle, checks of every
response, retries and resume, bounded memory, an index of the disk cache, pushes to the
page cache, the rest of the tree. So its time is what this machine, this kernel and this
stack allow for the copy; the bench's ``cp_r_minimal`` row puts cupixfs beside it.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import queue
import stat
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cupixfs.data import block_file
from cupixfs.mount.lifecycle import raise_kernel_readahead

#: Files fetched at each open: the opened one and the next ones in listing order.
AHEAD = 2
BLOCK = block_file.MAX_PAYLOAD
FILE_INODES = 100_000


class Sub:
    """One sub pointcloud: its id, cpc name and size, and its blocks once fetched."""

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.id = int(attributes["id"])
        self.name = str(attributes["name"])
        self.size = int(attributes["filesize"])
        self.blocks: list[memoryview] = []
        self.done: trio.Event | None = None


def _is_cpc(attributes: dict[str, Any]) -> bool:
    return attributes.get("kind") == "sub" and attributes.get("filesize") is not None


class Minimal(pyfuse3.Operations):
    """Directories ``ROOT + 1 + i``, files ``FILE_INODES + i``; everything read-only."""

    def __init__(self, api: urllib.parse.SplitResult, token: str, cache: Path | None) -> None:
        super().__init__()
        self.api, self.token, self.cache = api, token, cache
        self.subs: list[Sub] = []
        self.writes: queue.Queue[tuple[str, int, memoryview] | None] = queue.Queue(16)
        self.local = threading.local()
        self.nursery: trio.Nursery | None = None

    # -- HTTP, in worker threads ------------------------------------------------------------

    def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        key = f"{url.hostname}:{url.port}"
        pool = self.local.__dict__.setdefault("pool", {})
        if key not in pool:
            pool[key] = http.client.HTTPConnection(url.hostname or "", url.port)
        return pool[key]  # type: ignore[no-any-return]

    def _get(self, url: urllib.parse.SplitResult, api: bool) -> http.client.HTTPResponse:
        connection = self._connection(url)
        headers = {"X-CUPIX-AUTH": self.token} if api else {}
        connection.request("GET", f"{url.path}?{url.query}", headers=headers)
        return connection.getresponse()

    def list_cluster(self, cluster: int) -> None:
        page: int | None = 1
        while page is not None:
            query = f"cluster_id={cluster}&fields=id,kind,name,filesize&page={page}"
            url = self.api._replace(path=self.api.path + "/pointclouds", query=query)
            result = json.loads(self._get(url, api=True).read())["result"]
            self.subs += [Sub(d["attributes"]) for d in result["data"] if _is_cpc(d["attributes"])]
            page = result["pagination"]["next_page"]

    def _fetch(self, sub: Sub) -> list[memoryview]:
        url = self.api._replace(path=f"{self.api.path}/pointclouds/{sub.id}/download", query="")
        redirect = self._get(url, api=True)
        redirect.read()
        body = self._get(urllib.parse.urlsplit(redirect.getheader("Location") or ""), api=False)
        blocks = []
        for index, start in enumerate(range(0, sub.size, BLOCK)):
            payload = block_file.new_payload(min(BLOCK, sub.size - start))
            got = 0
            while got < len(payload):
                n = body.readinto(payload[got:])
                if not n:
                    raise OSError(errno.EIO, f"sub {sub.id}: body ended at {start + got}")
                got += n
            block = payload.toreadonly()
            blocks.append(block)
            if self.cache is not None:
                self.writes.put((str(self.cache / str(sub.id)), index, block))
        body.read()
        return blocks

    def _writer(self) -> None:
        while (item := self.writes.get()) is not None:
            block_file.write(*item)

    # -- FUSE ---------------------------------------------------------------------------------

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = pyfuse3.InodeT(inode)
        entry.entry_timeout = entry.attr_timeout = 300
        if inode >= FILE_INODES:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_size = self.subs[inode - FILE_INODES].size
        else:
            entry.st_mode = stat.S_IFDIR | 0o555
        return entry

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        text = name.decode()
        for i, sub in enumerate(self.subs):
            if parent == pyfuse3.ROOT_INODE and text == str(sub.id):
                return self._attr(pyfuse3.ROOT_INODE + 1 + i)
            if parent == pyfuse3.ROOT_INODE + 1 + i and text == sub.name:
                return self._attr(FILE_INODES + i)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start: int, token: Any) -> None:
        if fh == pyfuse3.ROOT_INODE:
            entries = [(str(s.id), pyfuse3.ROOT_INODE + 1 + i) for i, s in enumerate(self.subs)]
        else:
            i = fh - pyfuse3.ROOT_INODE - 1
            entries = [(self.subs[i].name, FILE_INODES + i)]
        for k, (name, inode) in enumerate(entries[start:], start):
            if not pyfuse3.readdir_reply(token, name.encode(), self._attr(inode), k + 1):
                return

    def _start(self, i: int) -> None:
        sub = self.subs[i]
        if sub.done is not None or self.nursery is None:
            return
        done = sub.done = trio.Event()

        async def fetch() -> None:
            sub.blocks = await trio.to_thread.run_sync(self._fetch, sub)
            done.set()

        self.nursery.start_soon(fetch)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        i = inode - FILE_INODES
        for j in range(i, min(i + 1 + AHEAD, len(self.subs))):
            self._start(j)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode))

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        sub = self.subs[fh - FILE_INODES]
        assert sub.done is not None
        await sub.done.wait()
        index, within = divmod(offset, BLOCK)
        if index >= len(sub.blocks):
            return b""
        block = sub.blocks[index]
        if within + size <= len(block) or index + 1 == len(sub.blocks):
            return block[within : within + size]
        return bytes(block[within:]) + bytes(sub.blocks[index + 1][: within + size - BLOCK])

    async def release(self, fh: int) -> None:
        sub = self.subs[fh - FILE_INODES]
        sub.blocks, sub.done = [], None


async def _after_init(mountpoint: Path) -> None:
    await trio.to_thread.run_sync(os.stat, mountpoint)
    await trio.to_thread.run_sync(raise_kernel_readahead, mountpoint)


async def serve(ops: Minimal, mountpoint: Path) -> None:
    pyfuse3.init(ops, str(mountpoint), {"fsname=minimal", "ro"})
    try:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            # The readahead cupixfs sets, once the kernel has answered a stat (its
            # FUSE_INIT reply would reset an earlier setting): cupixfs's own function.
            nursery.start_soon(_after_init, mountpoint)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--cluster", type=int, required=True)
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args()
    ops = Minimal(
        urllib.parse.urlsplit(args.api_url), os.environ["CUPIX_API_TOKEN"], args.cache_dir
    )
    ops.list_cluster(args.cluster)
    writers = [threading.Thread(target=ops._writer, daemon=True) for _ in range(2)]
    for thread in writers:
        thread.start()
    try:
        trio.run(serve, ops, args.mountpoint)
    finally:
        for _ in writers:
            ops.writes.put(None)
        for thread in writers:
            thread.join()


if __name__ == "__main__":
    main()
