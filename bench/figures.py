"""The benchmark figures: each is a function from a :class:`Context` to a :class:`Row`.

Measurements shared by several rows (curl and cupixfs on the 512 MiB video, the rclone reads)
are memoised in the context, so every row of one run quotes the same numbers and ``--only``
still measures whatever a row depends on. Every cold measurement starts from a fresh mount,
a fresh cache directory and a dropped page cache, with the server's blob files read back into
memory (see :func:`harness.cold`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import netns
from harness import (
    BenchError,
    GiB,
    Janitor,
    MiB,
    Mount,
    Server,
    Transfer,
    cold,
    cpu_seconds,
    cupixfs_mount,
    curl_read,
    dd_read,
    drop_caches,
    drop_dentries,
    environment,
    fake_server,
    fresh_dir,
    generate_data,
    minimal_mount,
    rclone_mount,
    read_timeout,
    self_signed,
    timed,
    vm_hwm,
    vm_rss,
)
from report import Row

T = TypeVar("T")

#: Latency the fake server adds before every response in ``ls_l_120``, ``shaped`` and the
#: scale figures.
LATENCY_S = 0.02
#: Items per page of the scale server (the issue's large account: 50 per page).
SCALE_PER_PAGE = 50


# --------------------------------------------------------------------------------------------
# What the bench data set holds, and where it appears in the mount
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    blob_id: str
    size: int
    mount_path: str  # relative to the mount root
    api_path: str  # the API route answering 302 to its signed URL
    plain_name: str  # its name under the fake server's /plain/ index


@dataclass(frozen=True)
class BenchData:
    captures: tuple[int, ...]
    video_512: Blob
    video_2g: Blob
    many_capture: int
    many_count: int
    mesh: Blob
    cpc_cluster: int
    cpcs: tuple[Blob, ...]
    #: The biggest pointcloud.ply (its pointcloud.las is beside it).
    ply: Blob

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> BenchData:
        """Find the bench profile's files in ``GET /_fake/dataset``."""
        captures = {c["name"]: c for c in model["captures"]}
        clusters = {c["name"]: c for c in model["clusters"]}
        videos = {v["id"]: v for v in model["videos"]}
        pcs = {p["id"]: p for p in model["pointclouds"]}
        try:
            large, many = captures["large"], captures["many"]
            big_mesh, many_subs = clusters["Big mesh"], clusters["Many subs"]
        except KeyError as exc:
            raise BenchError(f"the data set is not the bench profile (no {exc})") from None

        def video(vid: int) -> Blob:
            v = videos[vid]
            path = f"captures/{v['capture_id']}/videos/{v['attributes']['name']}"
            f = v["file"]
            return Blob(f["blob_id"], f["size"], path, f"/videos/{vid}/download", f["plain_name"])

        def sub_file(cluster: dict[str, Any], sub_id: int, kind: str) -> Blob:
            pc = pcs[sub_id]
            f = pc["files"][kind]
            if kind == "cpc":
                name, api = pc["attributes"]["name"], f"/pointclouds/{sub_id}/download"
            else:
                name = {"mesh": "mesh.zip", "ply": "pointcloud.ply"}[kind]
                api = f"/pointclouds/{sub_id}/resources/{kind}/download"
            path = f"clusters/{cluster['id']}/{sub_id}/{name}"
            return Blob(f["blob_id"], f["size"], path, api, f["plain_name"])

        large_videos = sorted((video(v) for v in large["video_ids"]), key=lambda b: b.size)
        mesh_sub = next(s for s in big_mesh["sub_ids"] if pcs[s]["files"]["mesh"])
        ply_sub = max(
            (s for s in big_mesh["sub_ids"] if pcs[s]["files"]["ply"]),
            key=lambda s: pcs[s]["files"]["ply"]["size"],
        )
        return cls(
            captures=(large["id"], many["id"]),
            video_512=large_videos[0],
            video_2g=large_videos[-1],
            many_capture=many["id"],
            many_count=len(many["video_ids"]),
            mesh=sub_file(big_mesh, mesh_sub, "mesh"),
            cpc_cluster=many_subs["id"],
            cpcs=tuple(sub_file(many_subs, s, "cpc") for s in many_subs["sub_ids"]),
            ply=sub_file(big_mesh, ply_sub, "ply"),
        )


# --------------------------------------------------------------------------------------------
# The context
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleData:
    """What the ``scale`` profile holds: a large team's account (see ``cupixfs.fake.sample``)."""

    captures: int
    projects: int
    levels: int
    clusters: int
    pointclouds: int
    subs: int
    video_capture: int
    video_count: int

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> ScaleData:
        if model.get("profile") != "scale":
            raise BenchError("the scale data set is not the scale profile")
        busiest = max(model["captures"], key=lambda c: len(c["video_ids"]))
        return cls(
            captures=len(model["captures"]),
            projects=len(model["facilities"]),
            levels=len(model["levels"]),
            clusters=len(model["clusters"]),
            pointclouds=len(model["pointclouds"]),
            subs=sum(1 for p in model["pointclouds"] if p["attributes"]["kind"] == "sub"),
            video_capture=busiest["id"],
            video_count=len(busiest["video_ids"]),
        )


@dataclass
class Context:
    janitor: Janitor
    server: Server
    data: BenchData
    work: Path
    repeat: int = 1
    memo: dict[str, tuple[bool, Any]] = field(default_factory=dict)
    #: Every sample behind a median, by measurement (written to results.json).
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: Where the ``scale`` profile lives (generated and served on first use).
    scale_dir: Path | None = None
    #: Mount the cupixfs of this checkout instead of the installed one (a baseline run).
    src: Path | None = None
    #: What the run started on the way (the scale server), closed at its end.
    exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def say(self, message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    def once(self, key: str, measure: Callable[[], T]) -> T:
        """``measure()`` the first time; its value (or its error) every later time."""
        if key not in self.memo:
            try:
                self.memo[key] = (True, measure())
            except BenchError as exc:
                self.memo[key] = (False, str(exc))
        ok, value = self.memo[key]
        if not ok:
            raise BenchError(value)
        return value  # type: ignore[no-any-return]

    def files(self, *blobs: Blob) -> list[Path]:
        return [self.server.blob_file(b.blob_id) for b in blobs]

    @contextlib.contextmanager
    def cupixfs(
        self,
        name: str,
        cache: Path | None = None,
        server: Server | None = None,
        captures: tuple[int, ...] = (),
        extra: tuple[str, ...] = (),
    ) -> Iterator[Mount]:
        """A cupixfs mount under ``work/name``; a fresh cache directory unless ``cache``.

        A mount of another *server* pins *captures*; one of the bench server pins its own.
        """
        base = self.work / name
        cache = cache or fresh_dir(base / "cache")
        log = base / "cupixfs.log"
        base.mkdir(parents=True, exist_ok=True)
        with cupixfs_mount(
            self.janitor,
            server or self.server,
            base / "mnt",
            cache,
            log,
            self.data.captures if server is None else captures,
            self.src,
            extra,
        ) as mount:
            yield mount

    def scale(self) -> tuple[Server, ScaleData]:
        """The scale profile's own server (50 items per page), started on first use."""

        def start() -> tuple[Server, ScaleData]:
            if self.scale_dir is None:
                raise BenchError("no --scale-data directory")
            log = self.work / "scale-server.log"
            self.say(f"scale data in {self.scale_dir} (generated on first use, ~100 MB)")
            generate_data(self.scale_dir, self.work / "generate-scale.log", profile="scale")
            server = self.exits.enter_context(
                fake_server(
                    self.janitor,
                    self.scale_dir.resolve(),
                    log,
                    profile="scale",
                    per_page=SCALE_PER_PAGE,
                )
            )
            return server, ScaleData.from_model(server.dataset())

        return self.once("scale_server", start)

    def median(self, samples: list[float]) -> float:
        return statistics.median(samples)


def _cleanup(work: Path) -> None:
    """Delete a figure's caches, copies and mountpoint (keeping its logs), unless mounted."""
    if not work.is_dir():
        return
    with open("/proc/self/mounts") as f:
        if any(line.split()[1].startswith(str(work.resolve())) for line in f):
            return
    for child in work.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Shared measurements
# --------------------------------------------------------------------------------------------


def curl_512(ctx: Context) -> float:
    def measure() -> float:
        url = ctx.server.signed_url(ctx.data.video_512.api_path)
        samples = []
        for _ in range(ctx.repeat):
            cold(ctx.files(ctx.data.video_512))
            samples.append(curl_read(url, ctx.data.video_512.size).mb_s)
        ctx.say(f"curl on the signed URL: {_mbs(samples)}")
        ctx.samples["curl_mb_s"] = samples
        return ctx.median(samples)

    return ctx.once("curl_512", measure)


def _read_with_cpu(mount: Mount, blob: Blob) -> tuple[float, float]:
    """dd of *blob* through *mount*: MB/s, and the mount process's CPU seconds per GiB."""
    before = cpu_seconds(mount.pid)
    speed = dd_read(mount.path / blob.mount_path, blob.size).mb_s
    return speed, (cpu_seconds(mount.pid) - before) / (blob.size / GiB)


def cupixfs_cold_512(ctx: Context) -> float:
    def measure() -> float:
        blob = ctx.data.video_512
        samples, cpu = [], []
        for _ in range(ctx.repeat):
            with ctx.cupixfs("cold_seq") as mount:
                cold(ctx.files(blob))
                speed, cpu_per_gib = _read_with_cpu(mount, blob)
                samples.append(speed)
                cpu.append(cpu_per_gib)
        ctx.say(f"cupixfs cold read: {_mbs(samples)}; CPU {_cpu(cpu)}")
        ctx.samples["cupixfs_cold_mb_s"] = samples
        ctx.samples["cupixfs_cold_cpu_s_per_gib"] = cpu
        return ctx.median(samples)

    try:
        return ctx.once("cupixfs_cold_512", measure)
    finally:
        _cleanup(ctx.work / "cold_seq")


def rclone_off(ctx: Context) -> float:
    def measure() -> float:
        blob = ctx.data.video_512
        base = ctx.work / "rclone_off"
        samples = []
        try:
            for _ in range(ctx.repeat):
                cache = fresh_dir(base / "cache")
                with rclone_mount(
                    ctx.janitor, ctx.server, base / "mnt", cache, base / "rclone.log", "off"
                ) as mount:
                    cold(ctx.files(blob))
                    samples.append(dd_read(mount.path / blob.plain_name, blob.size).mb_s)
        finally:
            _cleanup(base)
        ctx.say(f"rclone --vfs-cache-mode off: {_mbs(samples)}")
        ctx.samples["rclone_off_mb_s"] = samples
        return ctx.median(samples)

    return ctx.once("rclone_off", measure)


@dataclass(frozen=True)
class RcloneFull:
    cold_mb_s: float
    warm_mb_s: float
    warm_plain_bytes: list[int]


def rclone_full(ctx: Context) -> RcloneFull:
    """Cold read with a fresh cache, then remount on the same cache, drop, read again."""

    def measure() -> RcloneFull:
        blob = ctx.data.video_512
        base = ctx.work / "rclone_full"
        cold_s, warm_s, sent = [], [], []
        try:
            for _ in range(ctx.repeat):
                cache = fresh_dir(base / "cache")
                log = base / "rclone.log"
                with rclone_mount(ctx.janitor, ctx.server, base / "mnt", cache, log, "full") as m:
                    cold(ctx.files(blob))
                    cold_s.append(dd_read(m.path / blob.plain_name, blob.size).mb_s)
                with rclone_mount(ctx.janitor, ctx.server, base / "mnt", cache, log, "full") as m:
                    drop_caches()
                    ctx.server.reset_stats()
                    warm_s.append(dd_read(m.path / blob.plain_name, blob.size).mb_s)
                    sent.append(int(ctx.server.stats()["plain_bytes"]))
        finally:
            _cleanup(base)
        ctx.say(f"rclone --vfs-cache-mode full: cold {_mbs(cold_s)}, warm {_mbs(warm_s)}")
        ctx.samples["rclone_full_cold_mb_s"] = cold_s
        ctx.samples["rclone_full_warm_mb_s"] = warm_s
        return RcloneFull(ctx.median(cold_s), ctx.median(warm_s), sent)

    return ctx.once("rclone_full", measure)


def cupixfs_warm_512(ctx: Context) -> tuple[float, float, list[int]]:
    """cupixfs: cold read, then (per repeat) remount on the same cache, drop, read again."""

    def measure() -> tuple[float, float, list[int]]:
        blob = ctx.data.video_512
        base = ctx.work / "warm_remount"
        warm_s, sent = [], []
        try:
            cache = fresh_dir(base / "cache")
            with ctx.cupixfs("warm_remount", cache) as mount:
                cold(ctx.files(blob))
                cold_read = dd_read(mount.path / blob.mount_path, blob.size).mb_s
            cpu = []
            for _ in range(ctx.repeat):
                with ctx.cupixfs("warm_remount", cache) as mount:
                    drop_caches()
                    ctx.server.reset_stats()
                    speed, cpu_per_gib = _read_with_cpu(mount, blob)
                    warm_s.append(speed)
                    cpu.append(cpu_per_gib)
                    sent.append(int(ctx.server.stats()["blob_bytes"]))
            ctx.samples["cupixfs_warm_cpu_s_per_gib"] = cpu
        finally:
            _cleanup(base)
        ctx.say(f"cupixfs: first read {cold_read:.0f} MB/s, after remount {_mbs(warm_s)}")
        ctx.samples["cupixfs_warm_mb_s"] = warm_s
        return cold_read, ctx.median(warm_s), sent

    return ctx.once("cupixfs_warm_512", measure)


def _mbs(samples: list[float]) -> str:
    return ", ".join(f"{s:.0f}" for s in samples) + " MB/s"


def _cpu(samples: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in samples) + " CPU s/GiB"


def _cpu_note(ctx: Context, key: str, what: str) -> str | None:
    samples = ctx.samples.get(key)
    if not samples:
        return None
    return f"cupixfs CPU {what}: {statistics.median(samples):.2f} s/GiB (median; {_cpu(samples)})"


def _add_cpu_note(row: Row, ctx: Context, key: str, what: str) -> None:
    note = _cpu_note(ctx, key, what)
    if note:
        row.notes.append(note)


def _try(label: str, measure: Callable[[], T], errors: list[str]) -> T | None:
    """``measure()``, or None with ``label: error`` added to ``errors``."""
    try:
        return measure()
    except BenchError as exc:
        errors.append(f"{label}: {exc}")
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def cold_seq(ctx: Context) -> Row:
    row = Row("cold_seq", "MB/s", baseline_label="curl", target="≥ 0.3, ≥ rclone off")
    errors: list[str] = []
    row.baseline = _try("curl", lambda: curl_512(ctx), errors)
    row.value = _try("cupixfs", lambda: cupixfs_cold_512(ctx), errors)
    row.ratio = _ratio(row.value, row.baseline)
    off = _try("rclone off", lambda: rclone_off(ctx), errors)
    full = _try("rclone full", lambda: rclone_full(ctx), errors)
    full_cold = full.cold_mb_s if full else None
    if row.ratio is not None and off is not None:
        assert row.value is not None
        row.passed = row.ratio >= 0.3 and row.value >= off
    row.details = {"rclone_off_mb_s": off, "rclone_full_cold_mb_s": full_cold}
    if off is not None and full_cold is not None:
        row.notes.append(f"rclone cold: off {off:.0f} MB/s, full {full_cold:.0f} MB/s")
    _add_cpu_note(row, ctx, "cupixfs_cold_cpu_s_per_gib", "cold")
    row.error = "; ".join(errors) or None
    return row


def _vs_rclone(
    ctx: Context,
    name: str,
    theirs: Callable[[], float],
    mine: Callable[[], float],
    target: float,
    target_text: str,
) -> Row:
    """A row comparing a cupixfs read with one rclone mode: cupixfs ÷ rclone vs ``target``."""
    row = Row(name, "MB/s", baseline_label="rclone", target=target_text)
    errors: list[str] = []
    row.baseline = _try("rclone", theirs, errors)
    curl = _try("curl", lambda: curl_512(ctx), errors)
    row.value = _try("cupixfs", mine, errors)
    row.ratio = _ratio(row.value, row.baseline)
    if row.ratio is not None:
        row.passed = row.ratio >= target if "≥" in target_text else row.ratio > target
    if row.baseline is not None and curl:
        row.notes.append(f"rclone reads at {row.baseline / curl:.2f} x curl")
    row.error = "; ".join(errors) or None
    return row


def rclone_off_row(ctx: Context) -> Row:
    return _vs_rclone(
        ctx, "rclone_off", lambda: rclone_off(ctx), lambda: cupixfs_cold_512(ctx), 1, "≥ 1"
    )


def rclone_full_cold_row(ctx: Context) -> Row:
    return _vs_rclone(
        ctx,
        "rclone_full_cold",
        lambda: rclone_full(ctx).cold_mb_s,
        lambda: cupixfs_cold_512(ctx),
        1,
        "> 1",
    )


def rclone_full_warm_row(ctx: Context) -> Row:
    row = _vs_rclone(
        ctx,
        "rclone_full_warm",
        lambda: rclone_full(ctx).warm_mb_s,
        lambda: cupixfs_warm_512(ctx)[1],
        2.5,
        "≥ 2.5 (= warm_remount)",
    )
    if row.baseline is not None:
        sent = rclone_full(ctx).warm_plain_bytes
        row.notes.append(f"rclone sent {_mib(sent)} during its warm read")
    return row


def warm_remount(ctx: Context) -> Row:
    first, warm, sent = cupixfs_warm_512(ctx)
    row = Row("warm_remount", "MB/s", value=warm, baseline_label="rclone full warm", target="≥ 2.5")
    row.details = {"first_read_mb_s": first, "warm_blob_bytes": sent}
    row.notes.append(
        f"first read {first:.0f} MB/s; server blob_bytes during the warm read: {_mib(sent)}"
        " (0 once the persistent cache works)"
    )
    _add_cpu_note(row, ctx, "cupixfs_warm_cpu_s_per_gib", "warm")
    errors: list[str] = []
    full = _try("rclone full", lambda: rclone_full(ctx), errors)
    if full is not None:
        row.baseline = full.warm_mb_s
        row.ratio = _ratio(warm, full.warm_mb_s)
        row.passed = None if row.ratio is None else row.ratio >= 2.5
    row.error = "; ".join(errors) or None
    return row


def shaped(ctx: Context) -> Row:
    """400 Mbit/s and 20 ms per response, server in a network namespace."""

    @contextlib.contextmanager
    def serve(base: Path) -> Iterator[Server]:
        with (
            netns.shaped_link(ctx.janitor) as ns,
            fake_server(
                ctx.janitor, ctx.server.data_dir, base / "server.log", host=netns.NS_ADDR, netns=ns
            ) as server,
        ):
            server.set_faults(latency_s=LATENCY_S)
            yield server

    row = Row("shaped", "MB/s", baseline_label="curl", target="≥ 0.95")
    _cold_against_curl(ctx, row, serve, "shaped link", "shaped", at_least=0.95)
    row.notes.append("400 Mbit/s tbf on the server's egress, +20 ms per response")
    return row


def cold_tls(ctx: Context) -> Row:
    """The cold 512 MiB read with the API and storage over HTTPS (the fake's ``--tls``),
    against curl of the same signed URL over the same TLS. The fake server encrypts in
    Python (no ``sendfile`` under TLS), so both are slower than over plain HTTP: the row
    shows what the mount's TLS path costs beside curl's, and its CPU per GiB."""

    @contextlib.contextmanager
    def serve(base: Path) -> Iterator[Server]:
        cert, key = self_signed(base)
        with (
            environment(SSL_CERT_FILE=str(cert), CURL_CA_BUNDLE=str(cert)),
            fake_server(
                ctx.janitor, ctx.server.data_dir, base / "server.log", tls=(cert, key)
            ) as server,
        ):
            yield server

    row = Row("cold_tls", "MB/s", baseline_label="curl", target="≥ 0.3 (as cold_seq)")
    _cold_against_curl(ctx, row, serve, "over TLS", "TLS", at_least=0.3)
    row.notes.append("API and storage over HTTPS; the fake server encrypts in Python")
    return row


def _cold_against_curl(
    ctx: Context,
    row: Row,
    serve: Callable[[Path], contextlib.AbstractContextManager[Server]],
    what: str,
    label: str,
    at_least: float,
) -> None:
    """Cold reads of the 512 MiB video from a server of the row's own (``serve(base)``, in
    a work folder removed afterwards), curl then a fresh mount, ``ctx.repeat`` times:
    medians, ratio (passed at *at_least*) and CPU note (*label*) into *row*."""
    blob = ctx.data.video_512
    name = row.figure
    curl_s: list[float] = []
    mine_s: list[float] = []
    cpu: list[float] = []
    base = ctx.work / name
    base.mkdir(parents=True, exist_ok=True)
    try:
        with serve(base) as server:
            url = server.signed_url(blob.api_path)
            for _ in range(ctx.repeat):
                cold(ctx.files(blob))
                curl_s.append(curl_read(url, blob.size).mb_s)
                with ctx.cupixfs(name, server=server) as mount:
                    cold(ctx.files(blob))
                    speed, cpu_per_gib = _read_with_cpu(mount, blob)
                    mine_s.append(speed)
                    cpu.append(cpu_per_gib)
    finally:
        _cleanup(base)
    ctx.say(f"{what}: curl {_mbs(curl_s)}, cupixfs {_mbs(mine_s)}")
    ctx.samples[f"{name}_curl_mb_s"] = curl_s
    ctx.samples[f"{name}_cupixfs_mb_s"] = mine_s
    ctx.samples[f"{name}_cpu_s_per_gib"] = cpu
    row.baseline = ctx.median(curl_s)
    row.value = ctx.median(mine_s)
    row.ratio = _ratio(row.value, row.baseline)
    row.passed = None if row.ratio is None else row.ratio >= at_least
    _add_cpu_note(row, ctx, f"{name}_cpu_s_per_gib", label)


#: One TCP flow on a link with a long round trip: its window per round trip (4 MiB over
#: 80 ms), whatever the link could carry; the fake paces each blob body so.
FLOW_MB_S = 50


def long_rtt(ctx: Context) -> Row:
    """A cold read where each flow is held back (``blob_flow_mb_s``): one body, as curl
    gets, against parts side by side."""
    blob = ctx.data.mesh  # 256 MiB: curl takes 5 s at one flow's pace
    row = Row("long_rtt", "MB/s", baseline_label="curl", target="> 1 (parts pay)")
    curl_s: list[float] = []
    mine_s: list[float] = []
    cpu: list[float] = []
    requests: list[int] = []
    try:
        ctx.server.set_faults(blob_flow_mb_s=FLOW_MB_S)
        url = ctx.server.signed_url(blob.api_path)
        for _ in range(ctx.repeat):
            cold(ctx.files(blob))
            curl_s.append(curl_read(url, blob.size).mb_s)
            with ctx.cupixfs("long_rtt") as mount:
                cold(ctx.files(blob))
                ctx.server.reset_stats()
                speed, cpu_per_gib = _read_with_cpu(mount, blob)
                requests.append(int(ctx.server.stats()["blob_requests"]))
                mine_s.append(speed)
                cpu.append(cpu_per_gib)
        ctx.say(f"long_rtt: curl {_mbs(curl_s)}, cupixfs {_mbs(mine_s)}; GETs {requests}")
        ctx.samples["long_rtt_cpu_s_per_gib"] = cpu
    finally:
        ctx.server.set_faults(blob_flow_mb_s=0)
        _cleanup(ctx.work / "long_rtt")
    row.baseline = ctx.median(curl_s)
    row.value = ctx.median(mine_s)
    row.ratio = _ratio(row.value, row.baseline)
    row.passed = None if row.ratio is None else row.ratio > 1
    row.notes.append(
        f"each blob body paced to {FLOW_MB_S} MB/s (one flow's window per round trip);"
        f" storage requests per read {requests}"
    )
    _add_cpu_note(row, ctx, "long_rtt_cpu_s_per_gib", "long_rtt")
    return row


_UNZIP_TOTAL = re.compile(r"^\s*(\d+)\s+(\d+) files?\s*$", re.MULTILINE)


def unzip_l(ctx: Context) -> Row:
    blob = ctx.data.mesh
    row = Row("unzip_l", "MiB", target="≤ 2 MiB")
    try:
        with ctx.cupixfs("unzip_l") as mount:
            cold(ctx.files(blob))
            ctx.server.reset_stats()
            seconds, done = timed(["unzip", "-l", str(mount.path / blob.mount_path)], 300)
            stats = ctx.server.stats()
    finally:
        _cleanup(ctx.work / "unzip_l")
    match = _UNZIP_TOTAL.search(done.stdout)
    if not match:
        raise BenchError(f"cannot parse the end of unzip -l: {done.stdout.strip()[-200:]!r}")
    row.value = stats["blob_bytes"] / MiB
    row.passed = row.value <= 2
    row.details = {
        "entries": int(match[2]),
        "blob_requests": stats["blob_requests"],
        "api_requests": stats["api_requests"],
        "seconds": seconds,
    }
    row.notes.append(
        f"{match[2]} entries listed in {seconds:.2f} s with {stats['blob_requests']} blob"
        f" and {stats['api_requests']} API requests"
    )
    return row


def zip_member(ctx: Context) -> Row:
    """Bytes moved to read one ~100 KiB member from the middle of the 256 MiB mesh.zip, cold.

    Measured from a fresh mount: the lookup of ``mesh/`` (the size probe and the central
    directory) plus the member. Done for a stored and a deflated member; the row shows the
    dearer one.
    """
    blob = ctx.data.mesh
    row = Row("zip_member", "MiB", target="≤ 2 MiB")
    with zipfile.ZipFile(ctx.server.blob_file(blob.blob_id)) as zf:
        infos = zf.infolist()
        middle = infos[len(infos) // 3 : 2 * len(infos) // 3]
        picks = []
        for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            found = [i for i in middle if i.compress_type == method and not i.is_dir()]
            if not found:
                raise BenchError(f"the bench mesh.zip has no member of method {method}")
            pick = min(found, key=lambda i: abs(i.file_size - 100 * 1024))
            picks.append((pick, zf.read(pick)))
    mesh_dir = Path(blob.mount_path).parent / "mesh"
    moved: dict[str, int] = {}
    ranges: dict[str, list[list[int]]] = {}
    try:
        for info, expected in picks:
            with ctx.cupixfs("zip_member") as mount:
                cold(ctx.files(blob))
                ctx.server.reset_stats()
                with open(mount.path / mesh_dir / info.filename, "rb") as f:
                    got = f.read()
                stats = ctx.server.stats()
            if got != expected:
                raise BenchError(f"{info.filename}: the mount's bytes differ from the archive's")
            kind = "stored" if info.compress_type == zipfile.ZIP_STORED else "deflated"
            moved[kind] = int(stats["blob_bytes"])
            ranges[kind] = [r[1:] for r in stats.get("blob_ranges", [])]
            row.notes.append(
                f"{kind} {info.filename} ({info.file_size / 1024:.0f} KiB,"
                f" {info.compress_size / 1024:.0f} KiB in the archive): {_mib([moved[kind]])}"
                f" in {stats['blob_requests']} blob requests"
            )
    finally:
        _cleanup(ctx.work / "zip_member")
    row.value = max(moved.values()) / MiB
    row.passed = row.value <= 2
    row.details = {"blob_bytes": moved, "archive_bytes": blob.size, "ranges": ranges}
    return row


def las_read(ctx: Context) -> Row:
    """Cold ``dd`` of pointcloud.las vs cold ``dd`` of the pointcloud.ply it comes from.

    Each read on a fresh mount with an empty cache; the LAS read includes the pass over
    the PLY that its header's bounding box needs.
    """
    blob = ctx.data.ply
    row = Row("las_read", "MB/s", baseline_label="ply", target="≥ 0.7")
    with open(ctx.server.blob_file(blob.blob_id), "rb") as f:
        head = f.read(4096)
    match = re.search(rb"element vertex (\d+)", head)
    if not match:
        raise BenchError("the bench PLY has no vertex count")
    points = int(match[1])
    las_size = 227 + 26 * points
    las_path = Path(blob.mount_path).with_name("pointcloud.las")
    las = Blob(blob.blob_id, las_size, str(las_path), blob.api_path, blob.plain_name)
    ply_s: list[float] = []
    las_s: list[float] = []
    ply_cpu: list[float] = []
    las_cpu: list[float] = []
    try:
        for _ in range(ctx.repeat):
            for read, speeds, cpu in ((blob, ply_s, ply_cpu), (las, las_s, las_cpu)):
                with ctx.cupixfs("las_read") as mount:
                    cold(ctx.files(blob))
                    speed, cpu_per_gib = _read_with_cpu(mount, read)
                    speeds.append(speed)
                    cpu.append(cpu_per_gib)
        ctx.say(f"pointcloud.ply {_mbs(ply_s)}; pointcloud.las {_mbs(las_s)}")
        ctx.samples["ply_mb_s"] = ply_s
        ctx.samples["las_mb_s"] = las_s
        ctx.samples["ply_cpu_s_per_gib"] = ply_cpu
        ctx.samples["las_cpu_s_per_gib"] = las_cpu
    finally:
        _cleanup(ctx.work / "las_read")
    row.value = ctx.median(las_s)
    row.baseline = ctx.median(ply_s)
    row.ratio = _ratio(row.value, row.baseline)
    row.passed = None if row.ratio is None else row.ratio >= 0.7
    ply_points = row.baseline * 1e6 / (blob.size / points)
    las_points = row.value * 1e6 / 26
    row.notes.append(
        f"{points:,} points: PLY {blob.size / MiB:.0f} MiB, LAS {las_size / MiB:.0f} MiB;"
        f" {las_points / 1e6:.1f} vs {ply_points / 1e6:.1f} M points/s"
        " (the LAS read includes the bounding-box pass)"
    )
    for key, what in (("las_cpu_s_per_gib", "LAS"), ("ply_cpu_s_per_gib", "PLY")):
        _add_cpu_note(row, ctx, key, what)
    return row


def ls_l_120(ctx: Context) -> Row:
    path_rel = f"captures/{ctx.data.many_capture}/videos"
    row = Row("ls_l_120", "s", target="≤ 1 s")
    try:
        with ctx.cupixfs("ls_l_120") as mount:
            ctx.server.set_faults(latency_s=LATENCY_S)
            try:
                ctx.server.reset_stats()
                seconds, done = timed(["ls", "-l", str(mount.path / path_rel)], 300)
                stats = ctx.server.stats()
            finally:
                ctx.server.reset_faults()
    finally:
        _cleanup(ctx.work / "ls_l_120")
    entries = [line for line in done.stdout.splitlines() if line.startswith("-")]
    if len(entries) != ctx.data.many_count:
        raise BenchError(f"ls -l listed {len(entries)} files, expected {ctx.data.many_count}")
    row.value = seconds
    row.passed = seconds <= 1
    row.details = {k: stats[k] for k in ("api_requests", "blob_requests", "api_by_route")}
    row.notes.append(
        f"+20 ms per response; {stats['api_requests']} API and {stats['blob_requests']}"
        " blob requests"
    )
    return row


def rss_2g(ctx: Context) -> Row:
    blob = ctx.data.video_2g
    row = Row("rss_2g", "MiB", target="≤ 200 MiB")
    try:
        with ctx.cupixfs("rss_2g") as mount:
            cold(ctx.files(blob))
            before = cpu_seconds(mount.pid)
            transfer = dd_read(mount.path / blob.mount_path, blob.size)
            cpu = (cpu_seconds(mount.pid) - before) / (blob.size / GiB)
            peak = vm_hwm(mount.pid)
    finally:
        _cleanup(ctx.work / "rss_2g")
    row.value = peak / MiB
    row.passed = row.value <= 200
    row.details = {"mb_s": transfer.mb_s}
    row.notes.append(
        f"VmHWM of the mount process; the 2 GiB read ran at {transfer.mb_s:.0f} MB/s,"
        f" cupixfs CPU {cpu:.2f} s/GiB"
    )
    return row


def cp_file(ctx: Context) -> Row:
    """A cold ``cp`` of the 512 MiB video into a local folder against ``curl -o`` of its
    signed URL into a file, alternating: a copy writes what it reads, in pieces of the
    size ``stat`` advises (``st_blksize``); ``dd bs=1M`` to /dev/null writes nothing."""
    blob = ctx.data.video_512
    base = ctx.work / "cp_file"
    row = Row("cp_file", "MB/s", baseline_label="curl -o", target="reported")
    cp_s: list[float] = []
    curl_s: list[float] = []
    cpu: list[float] = []
    try:
        for _ in range(ctx.repeat):
            dest = fresh_dir(base / "curl")
            url = ctx.server.signed_url(blob.api_path)
            cold(ctx.files(blob))
            seconds, _ = timed(
                ["curl", "-sS", "--fail", "-o", str(dest / "video"), url], read_timeout(blob.size)
            )
            curl_s.append(seconds)
            _check_size(dest / "video", blob.size)
            with ctx.cupixfs("cp_file") as mount:
                dest = fresh_dir(base / "copy")
                cold(ctx.files(blob))
                args = ["cp", str(mount.path / blob.mount_path), str(dest / "video")]
                seconds, used, _ = _timed_copy(ctx, mount, args, blob.size)
                cpu.append(used)
                cp_s.append(seconds)
            _check_size(dest / "video", blob.size)
        ctx.say(f"cp {_secs(cp_s)}; curl -o {_secs(curl_s)}")
        ctx.samples["cp_file_s"] = cp_s
        ctx.samples["cp_file_curl_s"] = curl_s
        ctx.samples["cp_file_cpu_s_per_gib"] = cpu
    finally:
        _cleanup(base)
    row.value = Transfer(blob.size, ctx.median(cp_s)).mb_s
    row.baseline = Transfer(blob.size, ctx.median(curl_s)).mb_s
    row.ratio = _ratio(row.value, row.baseline)
    row.notes.append(
        f"512 MiB into a local folder: cp {ctx.median(cp_s):.2f} s, curl -o"
        f" {ctx.median(curl_s):.2f} s (its URL resolved before the timing)"
    )
    _add_cpu_note(row, ctx, "cp_file_cpu_s_per_gib", "cp")
    return row


def _timed_copy(ctx: Context, mount: Mount, args: list[str], size: int) -> tuple[float, float, int]:
    """Run the copy *args* out of *mount* to completion: its seconds, the mount's CPU
    seconds per GiB of *size*, and the requests the server received meanwhile."""
    ctx.server.reset_stats()
    before = cpu_seconds(mount.pid)
    seconds, _ = timed(args, read_timeout(size))
    cpu = (cpu_seconds(mount.pid) - before) / (size / GiB)
    stats = ctx.server.stats()
    return seconds, cpu, stats["api_requests"] + stats["blob_requests"]


def _check_size(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        raise BenchError(f"{path.name}: {path.stat().st_size} bytes, expected {size}")


def _secs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " s"


def cp_r(ctx: Context) -> Row:
    """``cp -r`` of a 40-sub cluster vs curl fetching the same cpc blobs one after another,
    each through its download call (the 302 followed inside the timing)."""
    return _cp_r(ctx, "cp_r", latency=0.0)


def cp_r_rtt(ctx: Context) -> Row:
    """`cp_r` with every response of the server 20 ms late (API and storage alike), as
    on a link with latency: what a file's round trips cost, walked ahead or not."""
    return _cp_r(ctx, "cp_r_rtt", latency=LATENCY_S)


def _curl_cpcs(ctx: Context, base: Path, latency: float) -> float:
    """Seconds for curl to fetch the cluster's cpc files one after another, as a script
    would: each file's download call, its 302 followed inside the timing (curl -L keeps
    the connections of both hosts open across files)."""
    blobs = ctx.data.cpcs
    total = sum(b.size for b in blobs)
    dest = fresh_dir(base)
    args = ["curl", "-sS", "--fail", "-L", "-H", f"X-CUPIX-AUTH: {ctx.server.token}"]
    for i, blob in enumerate(blobs):
        args += ["-o", str(dest / f"{i}.cpc"), ctx.server.api_url + blob.api_path]
    cold(ctx.files(*blobs))
    if latency:
        ctx.server.set_faults(latency_s=latency)
    try:
        seconds, _ = timed(args, read_timeout(total))
    finally:
        ctx.server.reset_faults()
    _check_copy(dest, len(blobs), total)
    return seconds


def _cp_r(ctx: Context, name: str, latency: float, tool: str = "cp") -> Row:
    """A copy of the 40-sub cluster by *tool* (``cp -r`` or ``rsync -a``) against curl
    fetching its cpc files one after another, each with the same latency, alternating."""
    blobs = ctx.data.cpcs
    total = sum(b.size for b in blobs)
    base = ctx.work / name
    row = Row(name, "s", baseline_unit="s", baseline_label="curl", target="≥ 1")
    cp_s: list[float] = []
    curl_s: list[float] = []
    requests: list[float] = []
    cpu: list[float] = []
    try:
        for _ in range(ctx.repeat):
            curl_s.append(_curl_cpcs(ctx, base / "curl", latency))

            with ctx.cupixfs(name) as mount:
                dest = fresh_dir(base / "copy")
                cold(ctx.files(*blobs))
                source = mount.path / "clusters" / str(ctx.data.cpc_cluster)
                if latency:
                    ctx.server.set_faults(latency_s=latency)
                command = (
                    ["cp", "-r", str(source), str(dest)]
                    if tool == "cp"
                    else ["rsync", "-a", f"{source}/", f"{dest}/"]
                )
                try:
                    seconds, used, sent = _timed_copy(ctx, mount, command, total)
                finally:
                    ctx.server.reset_faults()
                cpu.append(used)
                cp_s.append(seconds)
                requests.append(sent)
            _check_copy(dest, len(blobs), total)
        ctx.say(f"{tool} {_secs(cp_s)}; curl {_secs(curl_s)}")
        ctx.samples[f"{name}_s"] = cp_s
        ctx.samples[f"{name}_curl_s"] = curl_s
        ctx.samples[f"{name}_cpu_s_per_gib"] = cpu
    finally:
        _cleanup(base)
    row.value = ctx.median(cp_s)
    row.baseline = ctx.median(curl_s)
    row.ratio = _ratio(row.baseline, row.value)
    row.passed = None if row.ratio is None else row.ratio >= 1
    row.details = {"requests": requests}
    late = f"; every response {latency * 1000:.0f} ms late" if latency else ""
    row.notes.append(
        f"{len(blobs)} cpc files, {total / MiB:.0f} MiB{late}; ratio = curl time ÷ {tool} time;"
        f" {tool} {Transfer(total, row.value).mb_s:.0f} MB/s; {ctx.median(requests):.0f} requests"
    )
    _add_cpu_note(row, ctx, f"{name}_cpu_s_per_gib", tool)
    return row


def _minimal_cp(ctx: Context, base: Path, disk: bool) -> tuple[float, float, int]:
    """``cp -r`` of the 40-sub cluster through ``bench/minimal_mount.py`` (with a disk cache
    if *disk*), as `_timed_copy` measures it."""
    blobs = ctx.data.cpcs
    total = sum(b.size for b in blobs)
    cache = fresh_dir(base / "cache") if disk else None
    with minimal_mount(
        ctx.janitor, ctx.server, base / "mnt", cache, base / "minimal.log", ctx.data.cpc_cluster
    ) as mount:
        dest = fresh_dir(base / "copy")
        cold(ctx.files(*blobs))
        measured = _timed_copy(ctx, mount, ["cp", "-r", str(mount.path), str(dest)], total)
    _check_copy(dest, len(blobs), total)
    return measured


def cp_r_minimal(ctx: Context) -> Row:
    """``cp_r`` beside the same copy through the smallest pyfuse3-on-trio mount that fetches
    whole files ahead (``bench/minimal_mount.py``), with and without a disk cache, and curl,
    same run: what the fixed stack reaches here without cupixfs's guarantees. The order turns from
    one repeat to the next: on this VM a copy's time depends on what ran just before it."""
    blobs = ctx.data.cpcs
    total = sum(b.size for b in blobs)
    base = ctx.work / "cp_r_minimal"
    row = Row(
        "cp_r_minimal",
        "s",
        baseline_unit="s",
        baseline_label="minimal mount, disk cache",
        target="reported",
    )
    runs: dict[str, list[float]] = {
        "curl": [],
        "cupixfs": [],
        "page cache": [],
        "disk": [],
        "memory": [],
    }
    cpu: dict[str, list[float]] = {"cupixfs": [], "disk": [], "memory": []}
    requests: dict[str, list[int]] = {"cupixfs": [], "disk": [], "memory": []}

    def curl() -> None:
        runs["curl"].append(_curl_cpcs(ctx, base / "curl", 0.0))

    def cupixfs() -> None:
        with ctx.cupixfs("cp_r_minimal") as mount:
            dest = fresh_dir(base / "copy")
            cold(ctx.files(*blobs))
            source = mount.path / "clusters" / str(ctx.data.cpc_cluster)
            args = ["cp", "-r", str(source), str(dest)]
            seconds, used, sent = _timed_copy(ctx, mount, args, total)
            runs["cupixfs"].append(seconds)
            cpu["cupixfs"].append(used)
            requests["cupixfs"].append(sent)
            _check_copy(dest, len(blobs), total)
            # Again, from the kernel's page cache (no read reaches the mount): what cp
            # itself costs here, into a folder made anew like every other copy's.
            dest = fresh_dir(base / "copy")
            seconds, _ = timed(["cp", "-r", str(source), str(dest)], read_timeout(total))
            runs["page cache"].append(seconds)
        _check_copy(dest, len(blobs), total)

    def minimal(name: str, disk: bool) -> Callable[[], None]:
        def run() -> None:
            seconds, used, sent = _minimal_cp(ctx, base / name, disk)
            runs[name].append(seconds)
            cpu[name].append(used)
            requests[name].append(sent)

        return run

    order = [curl, cupixfs, minimal("disk", True), minimal("memory", False)]
    try:
        for i in range(ctx.repeat):
            for measure in order[i % len(order) :] + order[: i % len(order)]:
                measure()
        ctx.say(", ".join(f"{k} {_secs(v)}" for k, v in runs.items()))
        for name, values in runs.items():
            ctx.samples[f"cp_r_minimal_{name.replace(' ', '_')}_s"] = values
    finally:
        _cleanup(base)
    med = {name: ctx.median(values) for name, values in runs.items()}
    row.value, row.baseline = med["cupixfs"], med["disk"]
    row.ratio = _ratio(row.baseline, row.value)
    row.details = {
        "seconds": med,
        "cpu_s_per_gib": {k: ctx.median(v) for k, v in cpu.items()},
        "requests": requests,
    }

    def against_curl(name: str) -> str:
        return (
            f"{med[name]:.2f} s, {_ratio(med['curl'], med[name]) or 0:.2f} x curl,"
            f" {ctx.median(requests[name]):.0f} requests"
        )

    row.notes.append(
        f"ratio = the minimal mount's time ÷ cupixfs's; curl {med['curl']:.2f} s; cupixfs"
        f" {against_curl('cupixfs')}, {ctx.median(cpu['cupixfs']):.2f} CPU s/GiB;"
        f" bench/minimal_mount.py with a disk cache {against_curl('disk')},"
        f" {ctx.median(cpu['disk']):.2f} CPU s/GiB, without one {against_curl('memory')},"
        f" {ctx.median(cpu['memory']):.2f} CPU s/GiB; cp -r again from the page cache"
        f" (no read reaching a mount) {med['page cache']:.2f} s"
    )
    return row


def rsync_rtt(ctx: Context) -> Row:
    """``rsync -a`` of the 40-sub cluster, every response 20 ms late, vs the same curl as
    ``cp_r_rtt``: rsync lists the whole tree before it copies, so both the listing ahead
    of scans and the walk-ahead count."""
    return _cp_r(ctx, "rsync_rtt", latency=LATENCY_S, tool="rsync")


def scan_rtt(ctx: Context) -> Row:
    """``du -s`` of the 40-sub cluster, every response 20 ms late: cupixfs vs the same
    mount with ``-o walk_ahead=0`` (no listing ahead of a scan), same run."""
    row = Row("scan_rtt", "s", baseline_unit="s", baseline_label="walk_ahead=0", target="< 1 s")
    samples: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for _ in range(ctx.repeat):
            for name, extra in (("on", ()), ("off", ("-o", "walk_ahead=0"))):
                with ctx.cupixfs("scan_rtt", extra=extra) as mount:
                    source = mount.path / "clusters" / str(ctx.data.cpc_cluster)
                    ctx.server.set_faults(latency_s=LATENCY_S)
                    try:
                        seconds, _ = timed(["du", "-s", str(source)], 120)
                    finally:
                        ctx.server.reset_faults()
                    samples[name].append(seconds)
        ctx.say(f"du -s {_secs(samples['on'])}; without listing ahead {_secs(samples['off'])}")
    finally:
        _cleanup(ctx.work / "scan_rtt")
    row.value = ctx.median(samples["on"])
    row.baseline = ctx.median(samples["off"])
    row.ratio = _ratio(row.baseline, row.value)
    row.passed = row.value < 1
    row.notes.append("du -s of 40 subs (a meta.json each), every response 20 ms late")
    return row


def _check_copy(dest: Path, count: int, total: int) -> None:
    sizes = [
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(dest)
        for f in files
        if f.endswith(".cpc")
    ]
    if len(sizes) != count or sum(sizes) != total:
        raise BenchError(
            f"copied {len(sizes)} cpc files / {sum(sizes)} bytes, expected {count} / {total}"
        )


def _mib(values: list[int]) -> str:
    return ", ".join(f"{v / MiB:.1f} MiB" for v in values)


# --------------------------------------------------------------------------------------------
# The scale figures: a large team's account (the ``scale`` profile, 50 items per page)
# --------------------------------------------------------------------------------------------


def plain_pages(server: Server, path: str, params: dict[str, Any]) -> tuple[float, int, int]:
    """A plain client: every page of one list call, one after another (seconds, items, pages)."""
    start = time.perf_counter()
    items = pages = 0
    page: int | None = 1
    with httpx.Client(headers={"X-CUPIX-AUTH": server.token}, timeout=60) as http:
        while page is not None:
            body = http.get(f"{server.api_url}/{path}", params={**params, "page": page})
            body.raise_for_status()
            result = body.json()["result"]
            items += len(result["data"])
            pages += 1
            page = result["pagination"].get("next_page")
    return time.perf_counter() - start, items, pages


def _first_listing(
    ctx: Context,
    name: str,
    command: list[str],
    captures: tuple[int, ...] = (),
) -> tuple[float, str, dict[str, Any]]:
    """Wall time of *command*, whose last argument is a path in a fresh mount of the scale
    server, at +20 ms per response: (seconds, its stdout, the server's counters and how
    much the mount's RSS grew)."""
    server, _ = ctx.scale()
    try:
        with ctx.cupixfs(name, server=server, captures=captures) as mount:
            args = [*command[:-1], str(mount.path / command[-1])]
            server.set_faults(latency_s=LATENCY_S)
            try:
                server.reset_stats()
                before = vm_rss(mount.pid)
                seconds, done = timed(args, 600)
                stats = {**server.stats(), "rss_growth": vm_rss(mount.pid) - before}
            finally:
                server.reset_faults()
    finally:
        _cleanup(ctx.work / name)
    return seconds, done.stdout, stats


def _listing_row(
    ctx: Context,
    figure: str,
    command: list[str],
    target_s: float,
    expected: int,
    count: Callable[[str], int],
    plain: tuple[str, dict[str, Any]] | None = None,
    captures: tuple[int, ...] = (),
) -> Row:
    """A first-listing figure: cupixfs's time; a plain sequential client's as the baseline
    where one call makes the listing (ratio = plain ÷ cupixfs: how many times faster)."""
    row = Row(
        figure, "s", baseline_unit="s", baseline_label="plain client", target=f"≤ {target_s:g} s"
    )
    server, _ = ctx.scale()
    samples = []
    stats: dict[str, Any] = {}
    for _ in range(ctx.repeat):
        seconds, out, stats = _first_listing(ctx, figure, command, captures)
        found = count(out)
        if found != expected:
            raise BenchError(f"{' '.join(command)} listed {found} entries, expected {expected}")
        samples.append(seconds)
    ctx.samples[f"{figure}_s"] = samples
    row.value = ctx.median(samples)
    row.passed = row.value <= target_s
    if plain is not None:
        server.set_faults(latency_s=LATENCY_S)
        try:
            plain_s, items, pages = plain_pages(server, *plain)
        finally:
            server.reset_faults()
        row.baseline = plain_s
        row.ratio = _ratio(plain_s, row.value)
        row.notes.append(f"plain client: {pages} pages of {items} items one after another")
    keys = ("api_requests", "blob_requests", "api_by_route", "rss_growth")
    row.details = {k: stats.get(k) for k in keys}
    row.notes.append(
        f"+20 ms per response, {SCALE_PER_PAGE} per page; {stats.get('api_requests')} API and"
        f" {stats.get('blob_requests')} blob requests; the mount's RSS grew by"
        f" {stats.get('rss_growth', 0) / MiB:.1f} MiB;"
        f" samples {_secs(samples)}"
    )
    return row


def _lines(out: str) -> int:
    return len([line for line in out.splitlines() if line.strip()])


def ls_clusters(ctx: Context) -> Row:
    _, data = ctx.scale()
    return _listing_row(
        ctx,
        "ls_clusters",
        ["ls", "clusters/"],
        1.0,
        data.clusters,
        _lines,
        plain=(
            "pointclouds",
            {"fields": "id,cluster,created_at,updated_at", "pointcloud_type": "all"},
        ),
    )


def ls_l_500(ctx: Context) -> Row:
    _, data = ctx.scale()
    return _listing_row(
        ctx,
        "ls_l_500",
        ["ls", "-l", f"captures/{data.video_capture}/videos"],
        1.5,
        data.video_count,
        lambda out: sum(1 for line in out.splitlines() if line.startswith("-")),
        captures=(data.video_capture,),
    )


def ls_captures(ctx: Context) -> Row:
    _, data = ctx.scale()
    return _listing_row(
        ctx,
        "ls_captures",
        ["ls", "captures/"],
        1.0,
        data.captures,
        _lines,
        plain=(
            "captures",
            {"fields": "id,name,facility,level,record,captured_at,created_at,updated_at"},
        ),
    )


def ls_r_projects(ctx: Context) -> Row:
    _, data = ctx.scale()
    # Every project and level directory, and one entry per capture (a symlink each).
    expected = data.projects + data.levels + data.captures
    return _listing_row(
        ctx,
        "ls_r_projects",
        ["ls", "-R", "projects/"],
        2.0,
        expected,
        lambda out: sum(1 for line in out.splitlines() if line.strip() and not line.endswith(":")),
    )


def _status(mount: Mount) -> dict[str, Any]:
    try:
        return dict(json.loads((mount.path / ".cupixfs" / "status").read_text()))
    except (OSError, ValueError):
        return {}


_TABLES = ("inodes", "listings", "listed_entries", "kernel_versions")


@dataclass(frozen=True)
class FindMemory:
    entries: int
    seconds: float
    cpu_seconds: float
    rss_mounted: int
    rss_cached: int
    rss_dropped: int
    tables_cached: dict[str, Any]
    tables_dropped: dict[str, Any]

    @property
    def per_entry(self) -> float:
        return (self.rss_cached - self.rss_mounted) / self.entries


def find_memory(ctx: Context) -> FindMemory:
    """RSS of the mount before and after ``find clusters`` (every entry), and after the
    kernel drops those dentries and inodes (``echo 2 > /proc/sys/vm/drop_caches``)."""

    def measure() -> FindMemory:
        server, data = ctx.scale()
        name = "find_rss"
        try:
            with ctx.cupixfs(name, server=server) as mount:
                os.listdir(mount.path)
                time.sleep(0.5)
                mounted = vm_rss(mount.pid)
                before = cpu_seconds(mount.pid)
                seconds, done = timed(["find", str(mount.path / "clusters")], 1200)
                cpu = cpu_seconds(mount.pid) - before
                entries = _lines(done.stdout) - 1  # find prints the start directory too
                time.sleep(0.5)
                cached, tables_cached = vm_rss(mount.pid), _status(mount)
                drop_dentries()
                time.sleep(3)  # the kernel's FORGETs arrive in batches
                dropped, tables_dropped = vm_rss(mount.pid), _status(mount)
        finally:
            _cleanup(ctx.work / name)
        expected = data.clusters + data.subs * 4
        if entries < expected:
            raise BenchError(f"find listed {entries} entries, expected at least {expected}")
        ctx.say(
            f"find of {entries} entries in {seconds:.1f} s: RSS {mounted / MiB:.0f} ->"
            f" {cached / MiB:.0f} MiB, after the drop {dropped / MiB:.0f} MiB"
        )
        pick = lambda t: {k: t.get(k) for k in _TABLES if k in t}  # noqa: E731
        return FindMemory(
            entries,
            seconds,
            cpu,
            mounted,
            cached,
            dropped,
            pick(tables_cached),
            pick(tables_dropped),
        )

    return ctx.once("find_memory", measure)


def find_time(ctx: Context) -> Row:
    """The same ``find``'s time: the cost per entry of a first walk of a large account (a
    ``meta.json`` per sub is an API call, its size a render; no latency added)."""
    m = find_memory(ctx)
    row = Row("find_time", "s", target="reported")
    row.value = m.seconds
    row.details = {"entries": m.entries, "cpu_seconds": m.cpu_seconds}
    row.notes.append(
        f"find of {m.entries} entries, no latency: {m.seconds / m.entries * 1e3:.2f} ms and"
        f" {m.cpu_seconds / m.entries * 1e3:.2f} ms of the mount's CPU per entry"
    )
    return row


def find_rss_cached(ctx: Context) -> Row:
    m = find_memory(ctx)
    row = Row("find_rss_cached", "KiB/entry", target="≤ 1 KiB per entry")
    row.value = m.per_entry / 1024
    row.passed = row.value <= 1.0
    row.details = {
        "entries": m.entries,
        "rss_mounted": m.rss_mounted,
        "rss_cached": m.rss_cached,
        "tables": m.tables_cached,
    }
    row.notes.append(
        f"RSS {m.rss_mounted / MiB:.1f} MiB mounted, {m.rss_cached / MiB:.1f} MiB after find of"
        f" {m.entries} entries; tables {m.tables_cached}"
    )
    return row


def find_rss_dropped(ctx: Context) -> Row:
    m = find_memory(ctx)
    row = Row("find_rss_dropped", "MiB", target="≤ 80 MiB")
    row.value = m.rss_dropped / MiB
    row.passed = row.value <= 80
    row.details = {"entries": m.entries, "rss_dropped": m.rss_dropped, "tables": m.tables_dropped}
    row.notes.append(
        "RSS after the kernel dropped those inodes (echo 2 > drop_caches);"
        f" tables {m.tables_dropped}"
    )
    return row


#: Every figure, in table order.
FIGURES: dict[str, Callable[[Context], Row]] = {
    "cold_seq": cold_seq,
    "rclone_off": rclone_off_row,
    "rclone_full_cold": rclone_full_cold_row,
    "rclone_full_warm": rclone_full_warm_row,
    "warm_remount": warm_remount,
    "shaped": shaped,
    "cold_tls": cold_tls,
    "long_rtt": long_rtt,
    "unzip_l": unzip_l,
    "zip_member": zip_member,
    "las_read": las_read,
    "ls_l_120": ls_l_120,
    "rss_2g": rss_2g,
    "cp_file": cp_file,
    "cp_r": cp_r,
    "cp_r_rtt": cp_r_rtt,
    "cp_r_minimal": cp_r_minimal,
    "rsync_rtt": rsync_rtt,
    "scan_rtt": scan_rtt,
    "ls_clusters": ls_clusters,
    "ls_l_500": ls_l_500,
    "find_time": find_time,
    "find_rss_cached": find_rss_cached,
    "find_rss_dropped": find_rss_dropped,
    "ls_captures": ls_captures,
    "ls_r_projects": ls_r_projects,
}

#: Figures ``--quick`` leaves out.
SLOW = ("shaped", "rss_2g")
