"""Process-level set-up of the worker: what ``serve`` does besides wiring the parts."""

from __future__ import annotations

import gc

from worker.metrics import Metrics
from worker.service import freeze_start_up_objects


def test_freezing_start_up_objects_hides_them_from_the_collector() -> None:
    # worker.service imports litellm (through worker.provider): ~400,000 objects. Frozen,
    # a full collection no longer walks them (its time is measured in bench/, not here).
    gc.collect()
    tracked = len(gc.get_objects())
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > 100_000
        assert len(gc.get_objects()) < tracked / 5
    finally:
        gc.unfreeze()


def test_metrics_include_process_and_gc_collectors() -> None:
    text = Metrics().render().decode()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "bw_jobs_in_flight",
    ):
        assert name in text
