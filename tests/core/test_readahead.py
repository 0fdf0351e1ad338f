"""`ReadAhead`: the window grows on sequential reads and collapses on a seek."""

from __future__ import annotations

from cupixfs.data.readahead import BACKWARD_TOLERANCE, FORWARD_TOLERANCE, ReadAhead

MiB = 1 << 20


def test_the_window_doubles_on_sequential_reads_up_to_its_maximum() -> None:
    ahead = ReadAhead(initial=MiB, maximum=8 * MiB)
    windows = [ahead.observe(i * MiB, MiB) for i in range(6)]
    assert windows == [MiB, 2 * MiB, 4 * MiB, 8 * MiB, 8 * MiB, 8 * MiB]


def test_a_seek_collapses_the_window_and_sequential_reads_grow_it_again() -> None:
    ahead = ReadAhead(initial=MiB, maximum=8 * MiB)
    for i in range(4):
        ahead.observe(i * MiB, MiB)
    assert ahead.observe(100 * MiB, MiB) == 0  # far forward: random access
    assert ahead.observe(101 * MiB, MiB) == MiB  # sequential again, from the start
    assert ahead.observe(102 * MiB, MiB) == 2 * MiB
    assert ahead.observe(5 * MiB, MiB) == 0  # far backward


def test_the_kernel_s_slightly_out_of_order_reads_still_count_as_sequential() -> None:
    ahead = ReadAhead(initial=MiB, maximum=64 * MiB)
    ahead.observe(0, MiB)
    jump = MiB + FORWARD_TOLERANCE - 1
    assert ahead.observe(jump, MiB) == 2 * MiB  # a jump ahead, within the tolerance
    assert ahead.observe(jump + MiB - BACKWARD_TOLERANCE, 4096) == 4 * MiB  # a step back
    assert ahead.observe(jump + MiB - BACKWARD_TOLERANCE - 1, 4096) == 0  # one byte too far


def test_a_first_read_away_from_the_start_is_random_access() -> None:
    ahead = ReadAhead(initial=MiB, maximum=8 * MiB)
    assert ahead.observe(3 * MiB, 4096) == 0
    assert ahead.observe(3 * MiB + 4096, 4096) == MiB  # then it continues: sequential


def test_a_jump_over_what_was_pushed_ahead_of_the_reader_is_still_sequential() -> None:
    """The reader read the pushed blocks from the kernel's page cache, without us: its
    next read that reaches us may be far ahead, but not past what was delivered."""
    ahead = ReadAhead(initial=MiB, maximum=8 * MiB)
    ahead.observe(0, MiB)
    far = MiB + FORWARD_TOLERANCE + 8 * MiB
    assert ahead.observe(far, MiB, delivered=far + MiB) == 2 * MiB
    assert ahead.observe(far + 40 * MiB, MiB, delivered=far + 2 * MiB) == 0  # beyond it
