"""Structured logs: one JSON object per line, with the job id and no prompt text.

Call sites pass context as ``extra={"job_id": ..., ...}``; the formatter writes every
extra field beside the message. Prompt and response text are never passed to a
logger unless ``BW_DEBUG_LOG_PROMPTS`` is set, which logs a loud warning at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}

log = logging.getLogger("budget_worker")

NOISY = ("aiokafka", "LiteLLM", "litellm", "httpx", "httpcore", "openai")
"""Libraries whose INFO lines are noise in a worker's log: logged at WARNING and up."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Send our logs to stderr; quiet the chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_kafka_client() -> Iterator[None]:
    """Keep aiokafka's own log lines out of a one-shot command's terminal.

    aiokafka logs every failed connection attempt; a command that reports the failure
    in one line of its own (``submit``, ``topics create``) would otherwise print each
    attempt first, unformatted. Restored on exit, so a process that goes on (a test
    runner) keeps its logging as it was."""
    logger = logging.getLogger("aiokafka")
    handler = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
