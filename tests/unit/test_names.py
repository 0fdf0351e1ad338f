"""Names from the API can never escape a directory or collide (property-based)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from cupixfs.namespace.names import NAME_MAX, assign_names, safe_name

hostile = st.one_of(
    st.text(max_size=400),
    st.sampled_from(["", ".", "..", "../../etc/passwd", "a/b", "x\x00y", "a\nb", "é" * 300]),
)


def _valid(name: str) -> bool:
    encoded = name.encode("utf-8")
    return (
        0 < len(encoded) <= NAME_MAX
        and "/" not in name
        and "\x00" not in name
        and name not in (".", "..")
    )


@settings(max_examples=400)
@given(st.lists(st.tuples(hostile, st.integers(1, 10**9)), max_size=30, unique_by=lambda t: t[1]))
def test_assigned_names_are_valid_and_unique(items: list[tuple[str, int]]) -> None:
    names = assign_names(items, reserved=["meta.json"])
    assert len(names) == len(items)
    assert all(_valid(n) for n in names)
    assert len(set(names)) == len(names)
    assert "meta.json" not in names


@given(st.lists(st.tuples(hostile, st.integers(1, 10**9)), max_size=20, unique_by=lambda t: t[1]))
def test_names_do_not_depend_on_listing_order(items: list[tuple[str, int]]) -> None:
    forward = dict(zip([i for _, i in items], assign_names(items), strict=True))
    backward_items = list(reversed(items))
    backward = dict(zip([i for _, i in backward_items], assign_names(backward_items), strict=True))
    assert forward == backward


def test_examples() -> None:
    assert safe_name("../../etc/passwd") == ".._.._etc_passwd"
    assert safe_name("a/b.insv") == "a_b.insv"
    assert safe_name("x\x00y") == "x_y"
    assert safe_name("..") == "_.."
    assert safe_name("") == "_"
    long = safe_name("é" * 300 + ".insv")
    assert long.endswith(".insv") and len(long.encode()) <= NAME_MAX
    assert assign_names([("v.insv", 7), ("v.insv", 3)]) == ["v~7.insv", "v.insv"]
