"""What a worker is started with: topics, the model list, its environment and settings."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from worker.dev.servers import EmbeddedKafka
from worker.settings import Settings

MODEL = "gpt-4o-mini"
PRICE_IN = "0.00000015"  # USD per prompt token (gpt-4o-mini's list price)
PRICE_OUT = "0.0000006"  # USD per completion token
FAKE_API_KEY = "sk-fake-local"  # what the fake provider is given; never a real key
READY_TIMEOUT_S = 90.0


# --- topics and the model list -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """A worker's four topics."""

    jobs: str
    results: str
    dlq: str
    budget_events: str

    @classmethod
    def fresh(cls, kafka: EmbeddedKafka, partitions: int = 3, prefix: str = "") -> Topics:
        """New, uniquely named topics on ``kafka`` (results under ``llm.results.``, which
        the default ``reply_to`` pattern allows)."""
        suffix = uuid.uuid4().hex[:10]
        topics = cls(
            f"{prefix}jobs.{suffix}",
            f"llm.results.{prefix}{suffix}",
            f"{prefix}dlq.{suffix}",
            f"{prefix}budget-events.{suffix}",
        )
        topics.create(kafka, partitions)
        return topics

    def create(
        self, kafka: EmbeddedKafka, partitions: int = 3, results_partitions: int | None = None
    ) -> None:
        kafka.create_topic(self.jobs, partitions)
        kafka.create_topic(self.results, results_partitions or partitions)
        kafka.create_topic(self.dlq, 1)
        kafka.create_topic(self.budget_events, partitions)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of a model list: its name, litellm's model, and its prices per token
    (``None``: the cost map's)."""

    name: str
    model: str
    input_usd_per_token: Decimal | None = None
    output_usd_per_token: Decimal | None = None


# Priced explicitly, so that costs do not depend on the cost map.
GPT_4O_MINI = ModelSpec(MODEL, "openai/gpt-4o-mini", Decimal(PRICE_IN), Decimal(PRICE_OUT))


def models_yaml(
    api_base: str | None,
    models: Sequence[ModelSpec] = (GPT_4O_MINI,),
    api_key: str = FAKE_API_KEY,
) -> str:
    """A model list. With ``api_base`` every model is served there (the fake provider)
    with ``api_key``; without, by the real provider with ``OPENAI_API_KEY``."""
    lines = ["model_list:"]
    for spec in models:
        lines += [
            f"  - model_name: {spec.name}",
            "    litellm_params:",
            f"      model: {spec.model}",
        ]
        if api_base is None:
            lines.append("      api_key: os.environ/OPENAI_API_KEY")
        else:
            lines += [f"      api_base: {api_base}", f"      api_key: {api_key}"]
        if spec.input_usd_per_token is not None and spec.output_usd_per_token is not None:
            lines += [
                "    model_info:",
                f"      input_cost_per_token: {spec.input_usd_per_token}",
                f"      output_cost_per_token: {spec.output_usd_per_token}",
            ]
    return "\n".join(lines) + "\n"


def write_models_file(
    directory: Path,
    api_base: str | None,
    models: Sequence[ModelSpec] = (GPT_4O_MINI,),
    api_key: str = FAKE_API_KEY,
) -> Path:
    """``models_yaml`` in a new file of ``directory``."""
    path = directory / f"models-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(models_yaml(api_base, models, api_key))
    return path


# Short timeouts, so that a test's worker drains, retries and notices an outage in
# fractions of a second (``worker_env(..., **FAST)``).
FAST: dict[str, Any] = {
    "reply_to_pattern": r"^llm\.results(\.[A-Za-z0-9_-]{1,100})?$",
    "drain_timeout_s": 2,
    "shutdown_grace_s": 5,
    "model_timeout_s": 10,
    "retry_backoff_s": 0.05,
    "retry_backoff_max_s": 0.2,
    "redis_retry_s": 0.2,
    "redis_timeout_s": 0.5,
    "log_level": "INFO",
    # The embedded broker delays a new member's first assignment by about half of
    # it: 1.5 s instead of 5.
    "kafka_session_timeout_ms": 3_000,
}


def worker_env(
    kafka: EmbeddedKafka | str, redis_url: str, models_file: Path, topics: Topics, **settings: Any
) -> dict[str, str]:
    """The ``BW_`` variables of a worker on these servers and topics; ``settings`` as
    field names (``max_in_flight=100`` is ``BW_MAX_IN_FLIGHT=100``)."""
    env = {
        "BW_KAFKA_BOOTSTRAP": bootstrap_of(kafka),
        "BW_REDIS_URL": redis_url,
        "BW_MODELS_FILE": str(models_file),
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
        "BW_DLQ_TOPIC": topics.dlq,
        "BW_BUDGET_EVENTS_TOPIC": topics.budget_events,
        "BW_GROUP_ID": f"group-{topics.jobs}",
    }
    env.update({f"BW_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def bootstrap_of(kafka: EmbeddedKafka | str) -> str:
    return kafka if isinstance(kafka, str) else kafka.bootstrap


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings a worker reads from ``env`` (its ``BW_`` variables only: neither the
    caller's environment nor a ``.env`` file)."""
    values: dict[str, Any] = {
        key[3:].lower(): value for key, value in env.items() if key.startswith("BW_")
    }
    return Settings(_env_file=None, **values)
