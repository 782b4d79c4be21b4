"""Commit tracking: only the highest contiguous finished offset is ever committable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.offsets import OffsetTracker, PartitionOffsets


def test_nothing_is_committable_until_the_first_offset_finishes() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 6, 7):
        offsets.start(offset)
    offsets.finish(6)
    offsets.finish(7)
    assert offsets.committable() is None
    offsets.finish(5)
    assert offsets.committable() == 8


def test_a_gap_holds_the_commit_below_the_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    for offset in range(10):
        offsets.start(offset)
    for offset in (0, 1, 2, 4, 5):
        offsets.finish(offset)
    assert offsets.committable() == 3
    assert offsets.committable() is None
    assert offsets.pending == 10 - 5


def test_offsets_must_start_in_increasing_order() -> None:
    offsets = PartitionOffsets()
    offsets.start(3)
    with pytest.raises(ValueError):
        offsets.start(3)


@given(st.integers(1, 60).flatmap(lambda n: st.permutations(range(n))))
def test_committable_is_always_one_past_the_contiguous_finished_prefix(order: list[int]) -> None:
    offsets = PartitionOffsets()
    for offset in range(len(order)):
        offsets.start(offset)
    finished: set[int] = set()
    committed = 0
    for offset in order:
        offsets.finish(offset)
        finished.add(offset)
        prefix = 0
        while prefix in finished:
            prefix += 1
        result = offsets.committable()
        if prefix > committed:
            assert result == prefix
            committed = prefix
        else:
            assert result is None
    assert committed == len(order)


def test_revoked_partitions_are_forgotten_and_late_finishes_ignored() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start("p0", 0)
    tracker.start("p1", 0)
    tracker.forget({"p0"})
    tracker.finish("p0", 0)
    tracker.finish("p1", 0)
    assert tracker.committable() == {"p1": 1}
    assert tracker.pending("p0") == 0
