"""Ledger times (integer ms since the epoch, Redis's clock) as RFC 3339 UTC text, the
one form the CLI, the admin API and the events show them in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(ms: int | None) -> str | None:
    """A time in ms since the epoch as RFC 3339 UTC (``2025-01-02T00:00:00Z``)."""
    if ms is None:
        return None
    moment = EPOCH + timedelta(milliseconds=ms)
    timespec = "seconds" if ms % 1000 == 0 else "milliseconds"
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def epoch_ms(moment: datetime) -> int:
    """An aware datetime as ms since the epoch."""
    return int((moment - EPOCH) / timedelta(milliseconds=1))
