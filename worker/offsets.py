"""Which offset of each partition may be committed while many jobs run at once.

Jobs of one partition finish out of order (model calls take seconds, and take
different seconds). Kafka's committed offset means "everything below is done", so a
partition may only commit up to its lowest job still running: the highest contiguous
finished offset, plus one. Anything after a crash is then redelivered, never skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class PartitionOffsets:
    """Offsets of one partition, started in increasing order, finished in any order."""

    __slots__ = ("_committed", "_finished", "_started")

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._finished: set[int] = set()
        self._committed: int | None = None

    def start(self, offset: int) -> None:
        if self._started and offset <= self._started[-1]:
            raise ValueError(f"offset {offset} started after {self._started[-1]}")
        self._started.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)

    @property
    def pending(self) -> int:
        """Jobs started and not yet finished."""
        return len(self._started) - len(self._finished)

    def committable(self) -> int | None:
        """The offset to commit now (next to read), or None when nothing new is done."""
        advanced = False
        last = -1
        while self._started and self._started[0] in self._finished:
            last = self._started.popleft()
            self._finished.discard(last)
            advanced = True
        if not advanced:
            return None
        self._committed = last + 1
        return self._committed


class OffsetTracker(Generic[P]):
    """PartitionOffsets for every assigned partition."""

    def __init__(self) -> None:
        self._partitions: dict[P, PartitionOffsets] = {}

    def start(self, partition: P, offset: int) -> None:
        self._partitions.setdefault(partition, PartitionOffsets()).start(offset)

    def finish(self, partition: P, offset: int) -> None:
        """Mark a job done; a partition revoked meanwhile is ignored (its new owner
        re-reads everything this worker did not commit)."""
        offsets = self._partitions.get(partition)
        if offsets is not None:
            offsets.finish(offset)

    def pending(self, partition: P) -> int:
        offsets = self._partitions.get(partition)
        return offsets.pending if offsets is not None else 0

    def committable(self, partitions: set[P] | None = None) -> dict[P, int]:
        """Offsets to commit now, for the given partitions (default: all)."""
        result: dict[P, int] = {}
        for partition, offsets in self._partitions.items():
            if partitions is not None and partition not in partitions:
                continue
            offset = offsets.committable()
            if offset is not None:
                result[partition] = offset
        return result

    def forget(self, partitions: set[P]) -> None:
        """Drop revoked partitions: their unfinished jobs will be redelivered elsewhere."""
        for partition in partitions:
            self._partitions.pop(partition, None)
