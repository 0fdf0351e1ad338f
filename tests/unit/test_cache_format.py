"""The cache directory's format marker: adopt today's caches, set aside other formats."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from cupixfs.core import cache_format
from cupixfs.core import cache_layout as layout


def _cache(root: Path, marker: str | None, content: str = "ours") -> Path:
    """A cache directory as some cupixfs left it, with *marker* as its marker file's text."""
    root.mkdir(exist_ok=True)
    for part in ("blocks/ab/abcd", "stats", "api"):
        (root / part).mkdir(parents=True, exist_ok=True)
    (root / "blocks/ab/abcd/0123-0").write_text(content)
    (root / "last-mount.json").write_text("{}")
    if marker is not None:
        (root / layout.FORMAT_FILE).write_text(marker)
    return root


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def _marker(root: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((root / layout.FORMAT_FILE).read_text())
    return loaded


def test_a_new_directory_gets_the_marker(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    cache.mkdir()
    assert cache_format.settle(cache) is None
    assert _files(cache).keys() == {layout.FORMAT_FILE}
    assert _marker(cache)["format"] == layout.FORMAT
    assert stat.S_IMODE((cache / layout.FORMAT_FILE).stat().st_mode) == 0o600
    assert cache_format.settle(cache) is None and _files(cache).keys() == {layout.FORMAT_FILE}


def test_a_cache_without_a_marker_is_in_the_first_format_and_set_aside(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "c", None)
    before = _files(cache)
    assert cache_format.settle(cache) is None
    aside = cache / f"old-format-{layout.UNMARKED_FORMAT}"
    assert _files(aside) == before  # moved whole, unread
    assert _marker(cache)["format"] == layout.FORMAT


def test_another_format_is_set_aside_whole_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = '{"format": 7, "written_by": "cupixfs 3.1"}'
    cache = _cache(tmp_path / "c", foreign, content="theirs")
    (cache / layout.DEMO_DATA).mkdir()
    with caplog.at_level(logging.INFO):
        assert cache_format.settle(cache) is None
    aside = cache / "old-format-7"
    assert _files(aside) == {
        "blocks/ab/abcd/0123-0": "theirs",
        "last-mount.json": "{}",
        layout.FORMAT_FILE: foreign,
    }
    assert sorted(p.name for p in cache.iterdir()) == [
        layout.FORMAT_FILE,
        layout.DEMO_DATA,
        "old-format-7",
    ]
    assert _marker(cache)["format"] == layout.FORMAT
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "format 7 (written by cupixfs 3.1)" in caplog.text and str(aside) in caplog.text
    assert cache_format.set_aside_dirs(cache) == [aside]


def test_versions_taking_turns_keep_one_copy_of_each(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    for turn in range(3):
        _cache(cache, '{"format": 7}', content=f"theirs {turn}")
        assert cache_format.settle(cache) is None
    assert [p.name for p in cache_format.set_aside_dirs(cache)] == ["old-format-7"]
    assert _files(cache / "old-format-7")["blocks/ab/abcd/0123-0"] == "theirs 2"


def test_setting_aside_cut_short_is_finished_by_the_next_mount(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "c", '{"format": 7}')
    (cache / "old-format-7").mkdir()
    (cache / "last-mount.json").rename(cache / "old-format-7" / "last-mount.json")  # a crash
    assert cache_format.settle(cache) is None
    assert set(_files(cache / "old-format-7")) == {
        "blocks/ab/abcd/0123-0",
        "last-mount.json",
        layout.FORMAT_FILE,
    }
    assert set(_files(cache)) == {
        layout.FORMAT_FILE,
        "old-format-7/blocks/ab/abcd/0123-0",
        "old-format-7/last-mount.json",
        f"old-format-7/{layout.FORMAT_FILE}",
    }


@pytest.mark.parametrize("marker", ["not json", "[1]", '{"format": "1"}', '{"format": true}'])
def test_a_marker_that_cannot_be_read_is_never_trusted(tmp_path: Path, marker: str) -> None:
    cache = _cache(tmp_path / "c", marker)
    assert cache_format.settle(cache) is None
    assert (cache / "old-format-unknown" / "blocks/ab/abcd/0123-0").exists()
    assert not (cache / "blocks").exists() and _marker(cache)["format"] == layout.FORMAT


def test_when_it_cannot_be_set_aside_the_reason_is_given(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "c", '{"format": 7}')
    (cache / "old-format-7").write_text("a file where the directory should go")
    problem = cache_format.settle(cache)
    assert problem is not None and problem.startswith("cannot set aside")
    assert (cache / "blocks/ab/abcd/0123-0").exists()  # nothing half-read, nothing lost


def test_a_private_json_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """The one writer of the cache dir's JSON files (stats, notes, API bodies, counters,
    the marker): 0600; a failed first write leaves no file, a failed later one leaves
    the old file; no temporary is left behind either way."""
    target = tmp_path / "entry.json"
    with pytest.raises(TypeError):
        layout.write_private_json(target, {"a": object()})  # JSON cannot hold it
    assert list(tmp_path.iterdir()) == []  # not a torn file that a reader would take
    layout.write_private_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(TypeError):
        layout.write_private_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    layout.write_private_json(target, {"b": [2, 3]})  # replaced, not appended to
    assert json.loads(target.read_text()) == {"b": [2, 3]}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.json"]
