"""``/projects/<project>/<level>/<date> <capture>``: links to ``/captures/<id>``, as the API places
them; names made safe and unique; graceful when the API refuses; served offline."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cupixfs.fake.sample import generate, profile
from cupixfs.fake.server import FakeServer
from cupixfs.namespace.names import NAME_MAX, assign_names
from tests.conftest import PER_PAGE, TOKEN, Mount
from tests.mounted.helpers import sha256_of
from tests.mounted.oracle import Oracle

Tree = dict[str, Any]  # a folder: name -> sub-folder (dict) or link target (str)
CAPTURE_FIELDS = "id,name,facility,level,captured_at,created_at"


def mounted_tree(folder: Path) -> Tree:
    """What the mount shows under *folder*, without following links."""
    tree: Tree = {}
    for entry in os.scandir(folder):
        if entry.is_symlink():
            tree[entry.name] = os.readlink(entry.path)
        else:
            assert entry.is_dir(follow_symlinks=False), entry.path
            tree[entry.name] = mounted_tree(Path(entry.path))
    return tree


def _entry_name(capture: dict[str, Any]) -> str:
    attrs = capture["attributes"]
    when = attrs.get("captured_at") or attrs.get("created_at")
    return f"{when[:10]} {attrs['name']}" if when else attrs["name"]


def _links(captures: list[dict[str, Any]], up: str, reserved: list[str]) -> Tree:
    ordered = sorted(captures, key=lambda c: (_entry_name(c), int(c["id"])))
    names = assign_names([(_entry_name(c), int(c["id"])) for c in ordered], reserved=reserved)
    return {name: f"{up}/captures/{c['id']}" for name, c in zip(names, ordered, strict=True)}


def expected_projects(oracle: Oracle) -> Tree:
    """The project tree the API describes, read with plain httpx."""
    facilities = oracle.list_all("facilities", fields="id,key,name")
    captures = oracle.list_all("captures", fields=CAPTURE_FIELDS)

    def ref(capture: dict[str, Any], what: str) -> int | None:
        value = capture["attributes"][what].get("id")
        return int(value) if value is not None else None

    tree: Tree = {}
    names = assign_names([(f["attributes"]["name"], int(f["id"])) for f in facilities])
    for name, facility in zip(names, facilities, strict=True):
        fid = int(facility["id"])
        levels = oracle.list_all(
            "levels", fields="id,name", facility_key=facility["attributes"]["key"]
        )
        level_names = assign_names([(lv["attributes"]["name"], int(lv["id"])) for lv in levels])
        folder: Tree = {}
        for level_name, level in zip(level_names, levels, strict=True):
            placed = [
                c
                for c in captures
                if ref(c, "facility") == fid and ref(c, "level") == int(level["id"])
            ]
            folder[level_name] = _links(placed, "../../..", [])
        level_ids = {int(lv["id"]) for lv in levels}
        loose = [
            c for c in captures if ref(c, "facility") == fid and ref(c, "level") not in level_ids
        ]
        folder.update(_links(loose, "../..", level_names))
        tree[name] = folder
    return tree


def test_the_projects_tree_is_what_the_api_says(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any]
) -> None:
    oracle = Oracle(fake)
    assert oracle.pages("captures", fields="id") > 3 and len(dataset["facilities"]) > PER_PAGE - 1
    with mounter() as m:
        found = mounted_tree(m.path / "projects")
    assert found == expected_projects(oracle)
    placed = {target for folder in found.values() for target in _targets(folder)}
    in_a_project = {c["id"] for c in dataset["captures"] if c["facility_id"] is not None}
    assert {int(t.rsplit("/", 1)[1]) for t in placed} == in_a_project


def _targets(tree: Tree | str) -> Iterator[str]:
    if isinstance(tree, str):
        yield tree
    else:
        for value in tree.values():
            yield from _targets(value)


def test_links_resolve_and_read_the_right_bytes(mounted: Mount, dataset: dict[str, Any]) -> None:
    link = mounted.path / "projects" / "Tower A _ Phase 2" / "Level 1" / "2023-11-17 main"
    assert link.name in os.listdir(link.parent)  # attributes as readdirplus gives them
    st = os.lstat(link)
    target = os.readlink(link)
    main = next(c for c in dataset["captures"] if c["name"] == "main")
    assert target == f"../../../captures/{main['id']}"
    assert stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777
    assert st.st_size == len(target) and st.st_uid == os.getuid()
    assert os.path.realpath(link) == str(mounted.path / "captures" / str(main["id"]))
    videos = {v["id"]: v for v in dataset["videos"]}
    for vid in main["video_ids"][:3]:
        video = videos[vid]
        through_link = link / "videos" / video["attributes"]["name"]
        direct = (
            mounted.path / "captures" / str(main["id"]) / "videos" / video["attributes"]["name"]
        )
        assert sha256_of(through_link) == video["file"]["sha256"]
        assert os.stat(through_link).st_ino == os.stat(direct).st_ino  # one file, one path
    with pytest.raises(OSError) as info:
        os.open(link, os.O_RDONLY | os.O_NOFOLLOW)
    assert info.value.errno == errno.ELOOP


def test_duplicate_and_hostile_names(mounted: Mount, dataset: dict[str, Any]) -> None:
    projects = mounted.path / "projects"
    facilities = {f["name"]: [] for f in dataset["facilities"]}
    for f in dataset["facilities"]:
        facilities[f["name"]].append(f["id"])
    depots = sorted(facilities["Depot"])
    assert sorted(os.listdir(projects)) == sorted(
        [
            "Tower A _ Phase 2",  # "/" cannot be in a name
            "Depot",  # the lowest id keeps the plain name...
            f"Depot~{depots[1]}",  # ...the other gets its id
            "Bare site",
            "No levels, no captures",
        ]
    )
    levels = {lv["id"]: lv for lv in dataset["levels"]}
    grounds = sorted(i for i, lv in levels.items() if lv["name"] == "Ground")
    # Two levels of one name, and one called "../..".
    assert set(os.listdir(projects / "Depot")) == {"Ground", f"Ground~{grounds[1]}", ".._.."}
    walks = sorted(c["id"] for c in dataset["captures"] if c["name"] == "Walk")
    assert sorted(os.listdir(projects / "Tower A _ Phase 2" / "Level 2")) == [
        "2023-12-01 Walk",
        f"2023-12-01 Walk~{walks[1]}",
    ]
    # A capture directly under its project whose name is taken by a level gets its id.
    clash = next(c for c in dataset["captures"] if c["name"] == "Same as a level")
    assert sorted(os.listdir(projects / "Bare site")) == [
        "2024-01-02 Same as a level",
        f"2024-01-02 Same as a level~{clash['id']}",
    ]
    assert (projects / "Bare site" / "2024-01-02 Same as a level").is_dir()
    assert os.readlink(projects / "Bare site" / f"2024-01-02 Same as a level~{clash['id']}") == (
        f"../../captures/{clash['id']}"
    )
    for dirpath, dirnames, filenames in os.walk(projects):
        for name in dirnames + filenames:
            assert 0 < len(name.encode()) <= NAME_MAX and "/" not in name and "\0" not in name
            assert os.path.exists(os.path.join(dirpath, name)), name  # every link resolves
    assert os.listdir(projects / "No levels, no captures") == []


def test_project_level_and_capture_xattrs(mounted: Mount, dataset: dict[str, Any]) -> None:
    tower = mounted.path / "projects" / "Tower A _ Phase 2"
    facility = next(f for f in dataset["facilities"] if f["name"] == "Tower A / Phase 2")
    assert os.getxattr(tower, "user.cupix.kind") == b"project"
    assert os.getxattr(tower, "user.cupix.id") == str(facility["id"]).encode()
    assert os.getxattr(tower, "user.cupix.key") == facility["key"].encode()
    level = next(lv for lv in dataset["levels"] if lv["name"] == "Level 1")
    assert os.getxattr(tower / "Level 1", "user.cupix.kind") == b"level"
    assert os.getxattr(tower / "Level 1", "user.cupix.id") == str(level["id"]).encode()
    link = tower / "Level 1" / "2023-11-17 main"  # xattrs of a link are its capture's
    main = next(c for c in dataset["captures"] if c["name"] == "main")
    assert os.getxattr(link, "user.cupix.kind") == b"capture"
    assert os.getxattr(link, "user.cupix.id") == str(main["id"]).encode()
    assert os.getxattr(link, "user.cupix.name") == b"main"


@pytest.fixture
def own_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """A fake server over data of its own (a test moves captures in it)."""
    data = generate(profile("test"), tmp_path_factory.mktemp("own-data"))
    with FakeServer(data, token=TOKEN, per_page=PER_PAGE) as server:
        yield server


def test_a_moved_capture_shows_in_its_new_place_after_the_listing_ttl(
    mounter: Any, own_fake: FakeServer
) -> None:
    main = next(c for c in own_fake.dataset.captures.values() if c["name"] == "main")
    basement = next(lv for lv in own_fake.dataset.levels.values() if lv["name"] == "Basement")
    tower = "Tower A _ Phase 2"
    with mounter("--listing-ttl", "1", server=own_fake) as m:
        level_1, below = (
            m.path / "projects" / tower / "Level 1",
            m.path / "projects" / tower / "Basement",
        )
        assert "2023-11-17 main" in os.listdir(level_1)
        assert "2023-11-17 main" not in os.listdir(below)
        moved = httpx.post(
            f"{own_fake.base_url}/_fake/captures/{main['id']}/move",
            json={"level_id": basement["id"]},
        )
        assert moved.status_code == 200
        time.sleep(1.5)  # the listing TTL, and the quarter of it a shared answer is kept
        assert "2023-11-17 main" not in os.listdir(level_1)
        assert "2023-11-17 main" in os.listdir(below)
        assert os.listdir(below / "2023-11-17 main" / "videos")  # and it leads to the capture
        httpx.post(f"{own_fake.base_url}/_fake/captures/{main['id']}/move", json={"level_id": None})
        time.sleep(1.5)
        assert "2023-11-17 main" in os.listdir(m.path / "projects" / tower)  # no level


@pytest.mark.parametrize(
    ("route", "status"),
    [
        ("GET /captures", 401),
        ("GET /captures", 403),
        ("GET /captures", 404),
        ("GET /facilities", 401),
        ("GET /facilities", 403),
        ("GET /facilities", 404),
        ("GET /levels", 401),
        ("GET /levels", 403),
        ("GET /levels", 404),
        ("GET /facilities", 405),  # missing on this deployment, in another way
    ],
)
def test_each_refusal_leaves_projects_empty_and_the_rest_working(
    mounter: Any, fake: FakeServer, dataset: dict[str, Any], route: str, status: int
) -> None:
    fake.api.configure(refuse={route: status})
    main = next(c for c in dataset["captures"] if c["name"] == "main")
    with mounter() as m:
        assert os.listdir(m.path / "projects") == []
        assert os.listdir(m.path / "projects") == []  # asked again: still one log line
        captures = os.listdir(m.path / "captures")
        if route == "GET /captures":
            assert captures == []  # as before the API could list them: by path only
        else:
            assert len(captures) == len(dataset["captures"])
        videos = m.path / "captures" / str(main["id"]) / "videos"
        name = sorted(os.listdir(videos))[0]
        assert (videos / name).read_bytes()  # the mount works
        lines = [line for line in m.log_text().splitlines() if "is not available" in line]
    assert len(lines) == 1, lines
    assert route in lines[0] and str(status) in lines[0] and "/projects stays empty" in lines[0]
    assert "Traceback" not in m.log_text()


def test_offline_serves_what_was_listed(mounter: Any, fake: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    with mounter(cache_dir=cache) as m:
        online = mounted_tree(m.path / "projects")
        captures = sorted(os.listdir(m.path / "captures"))
    with mounter("--offline", cache_dir=cache, token="") as m:
        assert mounted_tree(m.path / "projects") == online
        assert sorted(os.listdir(m.path / "captures")) == captures
    assert online and captures


def test_a_hostile_capture_name_is_made_safe(mounted: Mount, dataset: dict[str, Any]) -> None:
    hostile = next(c for c in dataset["captures"] if c["name"].startswith("a/b"))
    basement = mounted.path / "projects" / "Tower A _ Phase 2" / "Basement"
    entry = f"{hostile['captured_at'][:10]} a_b: .._c_d"  # "/" and a newline made "_"
    assert entry in os.listdir(basement)
    assert os.readlink(basement / entry) == f"../../../captures/{hostile['id']}"
