"""Every setting of the worker, read from the environment (prefix ``BW_``) in one place.

Settings are built once at start-up (``Settings()``) and passed down; no other module
reads ``os.environ``. A ``.env`` file in the working directory is read too; real
environment variables win over it, and CLI flags win over both.

Every refusal is worded here, once (:func:`load_settings`): the variable (or the
flag) and the rule, never the value, which may be a password.
"""

from __future__ import annotations

import os
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.errors import ConfigError

BudgetPeriod = Literal["daily", "weekly", "monthly", "yearly", "none"]
AdmissionPolicy = Literal["reject", "clamp"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# What redis-py's from_url understands; anything else fails deep inside it.
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_REDIS_URL_FORM = (
    "must be a URL like redis://[[user]:password@]host:6379/0 (rediss:// for TLS, "
    "unix:///path/to/redis.sock for a socket)"
)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """The worker's configuration. Field ``x`` is read from ``BW_X``."""

    model_config = SettingsConfigDict(
        env_prefix="BW_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- Kafka -------------------------------------------------------------------
    kafka_bootstrap: str = "localhost:9092"
    jobs_topic: str = "llm.jobs"
    results_topic: str = "llm.results"
    dlq_topic: str = "llm.jobs.dlq"
    budget_events_topic: str = Field(
        default="llm.budget-events",
        description="Where budget.threshold_crossed events are published, keyed by scope.",
    )
    group_id: str = "budget-worker"
    reply_to_pattern: str = Field(
        default=r"^llm\.results(\.[A-Za-z0-9_-]{1,100})?$",
        description="Regex a job's reply_to topic must match (full match); others are invalid_job.",
    )
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_request_timeout_ms: int = Field(default=30_000, gt=0)
    kafka_fetch_max_wait_ms: int = Field(
        default=10,
        ge=0,
        description=(
            "How long a fetch waits for data. Some brokers answer a fetch only when this "
            "runs out, so it adds up to its value to an idle worker's latency "
            "(bench/latency: 100 ms gave 44 ms p50 at light load, 10 ms gave 22 ms)."
        ),
    )
    kafka_linger_ms: int = Field(default=0, ge=0, description="Producer batching delay.")
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description=(
            "How long the group waits for a silent member before it hands its partitions "
            "to the others (heartbeats every third of it, at most 3 s). The embedded "
            "broker also waits about half of it before a new member's first assignment."
        ),
    )

    # --- Redis -------------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False
    redis_max_connections: int = Field(default=256, gt=0)
    redis_timeout_s: float = Field(default=2.0, gt=0)

    # --- Models and money ---------------------------------------------------------
    models_file: Path | None = None
    default_max_tokens: int = Field(default=1024, gt=0)
    admission_policy: AdmissionPolicy = Field(
        default="clamp",
        description=(
            "What a job whose estimate does not fit gets: clamp (its max_tokens lowered to "
            "what is left, down to BW_CLAMP_MIN_TOKENS) or reject. docs/estimation.md "
            "has the trade, measured."
        ),
    )
    clamp_min_tokens: int = Field(
        default=16, gt=0, description="clamp: refuse rather than allow fewer output tokens."
    )
    default_budget_usd: Decimal | None = Field(default=None, ge=0)
    default_budget_period: BudgetPeriod = "daily"

    # --- Worker ------------------------------------------------------------------
    worker_id: str = Field(default_factory=_default_worker_id)
    max_in_flight: int = Field(default=64, gt=0)
    lease_ms: int = Field(
        default=15_000,
        ge=3_000,
        description=(
            "How long a reservation outlives a dead worker. Live workers renew their "
            "leases every lease/5, so a call may run longer than a lease; the lease must "
            "outlast a Redis outage the worker should ride out without cutting calls "
            "(lease - lease/5 - 1 s: 11 s by default)."
        ),
    )
    model_timeout_s: float = Field(default=60.0, gt=0)
    model_max_retries: int = Field(default=2, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    retry_backoff_max_s: float = Field(default=8.0, ge=0)
    rate_limit_max_wait_s: float = Field(
        default=30.0, ge=0, description="Upper bound on a job's max_wait_s."
    )
    park_max_wait_s: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "How long a job with on_budget_exceeded: wait may stay parked (its deadline "
            "may end the wait sooner) before it is rejected budget_exceeded."
        ),
    )
    park_poll_max_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest pause between two budget checks of a parked job (1 s, doubling): "
            "how late a grant or freed reservations are noticed at worst."
        ),
    )
    drain_timeout_s: float = Field(default=10.0, ge=0, description="Rebalance drain bound.")
    outbox_sweep_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How often some worker publishes threshold events left in an outbox (by a "
            "worker that died after deciding them, or by a settle outside any worker)."
        ),
    )
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    outcome_ttl_s: int = Field(default=7 * 86_400, gt=0, description="Charge markers kept.")
    redis_retry_s: float = Field(default=1.0, gt=0, description="Pause between Redis probes.")

    # --- Input limits --------------------------------------------------------------
    max_job_bytes: int = Field(default=1_048_576, gt=0)
    max_event_bytes: int = Field(
        default=1_048_576,
        gt=0,
        description=(
            "Largest event the broker takes (its max.message.bytes); larger events are "
            "sent gzip-compressed, and one too large even so is answered completion.failed "
            "(event_too_large) with what was charged."
        ),
    )
    max_messages: int = Field(default=256, gt=0)
    max_prompt_chars: int = Field(default=400_000, gt=0)

    # --- Admin API (budget-worker admin) --------------------------------------------
    admin_host: str = Field(
        default="127.0.0.1",
        description="Bind address of the admin API; loopback unless a TLS proxy fronts it.",
    )
    admin_port: int = Field(default=8470, ge=0, le=65535)
    admin_token: SecretStr | None = Field(
        default=None,
        description="The bearer token every admin request but /healthz must carry; required.",
    )
    admin_max_body_bytes: int = Field(
        default=65_536, gt=0, description="Largest admin request body; larger ones get 413."
    )
    admin_idempotency_ttl_s: int = Field(
        default=86_400,
        gt=0,
        description="How long an Idempotency-Key's first answer is kept and replayed.",
    )

    # --- Observability -------------------------------------------------------------
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_json: bool = True
    tracing_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        description=(
            "OpenTelemetry spans of each job (needs the tracing extra); otlp reads the "
            "standard OTEL_EXPORTER_OTLP_* variables. Off, trace headers pass through."
        ),
    )
    debug_log_prompts: bool = Field(
        default=False, description="Log prompt and response text. Never in production."
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name at least one host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_has_a_redis_scheme(cls, value: str) -> str:
        # Refused here so that "localhost:6380" is a settings error, not a traceback
        # from redis-py when the first connection is built.
        scheme, separator, _ = value.partition("://")
        if not separator or scheme.lower() not in _REDIS_SCHEMES:
            raise ValueError(_REDIS_URL_FORM)
        return value


class ExplicitSettings(Settings):
    """Settings from the values given and the defaults only: no ``BW_`` variable and no
    ``.env`` file is read. For the development rigs, which set up a system of their own
    (a local broker, no TLS) whatever the caller's shell holds for another one."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` (command-line flags: field
    ``redis_url`` is the flag ``--redis-url``) winning over it.

    Raises a ``ConfigError`` that names each bad variable (``BW_REDIS_URL``), or the
    flag when the value came from one, with its rule; it never echoes a value (it may
    be a password)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            _problem(error, overrides.keys())
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def _problem(error: ErrorDetails, flags: Any) -> str:
    """One refusal as ``NAME: rule``, without pydantic's "Value error, " prefix, which
    says nothing to the person who set the variable."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field = "_".join(map(str, error["loc"]))
    name = f"--{field.replace('_', '-')}" if field in flags else f"BW_{field.upper()}"
    return f"{name}: {message}"
