"""Process-level set-up of the worker: what ``serve`` does besides wiring the parts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from pathlib import Path

import aiohttp

from tests.support import Topics, settings_from, worker_env, write_models_file
from worker.dev.servers import EmbeddedKafka, free_port
from worker.service import freeze_start_up_objects, serve


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


async def test_a_worker_whose_redis_never_answered_is_not_ready(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """Today /readyz answers ready and bw_redis_up is 1 until the first job touches
    Redis: the documented alert would not fire on a fresh pod."""
    topics = Topics.fresh(kafka)
    port = free_port()
    settings = settings_from(
        worker_env(
            kafka,
            f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            write_models_file(tmp_path, "http://127.0.0.1:9/v1"),
            topics,
            metrics_port=port,
        )
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(settings, {}, stop))
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/healthz") as health:
                        if health.status == 200:
                            break
                await asyncio.sleep(0.05)
            async with session.get(f"{base}/readyz") as ready:
                assert ready.status == 503
            async with session.get(f"{base}/metrics") as metrics:
                assert "bw_redis_up 0.0" in await metrics.text()
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
