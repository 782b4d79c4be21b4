"""Process-level set-up of the worker: what ``serve`` does besides wiring the parts."""

from __future__ import annotations

import gc
import time

from worker.metrics import Metrics
from worker.service import freeze_start_up_objects


def test_freezing_start_up_objects_makes_a_full_collection_cheap() -> None:
    # worker.service imports litellm (through worker.provider): ~400,000 objects.
    gc.collect()
    started = time.perf_counter()
    gc.collect()
    unfrozen_s = time.perf_counter() - started
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > 100_000
        started = time.perf_counter()
        gc.collect()
        frozen_s = time.perf_counter() - started
    finally:
        gc.unfreeze()
    assert frozen_s < unfrozen_s / 5


def test_metrics_include_process_and_gc_collectors() -> None:
    text = Metrics().render().decode()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "bw_jobs_in_flight",
    ):
        assert name in text
