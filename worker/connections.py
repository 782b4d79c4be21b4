"""Connection options shared by every Kafka client the worker builds.

The consumer, the producer and the client helpers for producing services all take
their security settings from here, so TLS and SASL are configured once.
"""

from __future__ import annotations

import ssl
from typing import Any

from worker.errors import ConfigError
from worker.settings import Settings


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile:
        try:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the Kafka client certificate: {exc}") from exc
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client: bootstrap, TLS, SASL, timeouts."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "client_id": f"budget-worker-{settings.worker_id}",
    }
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        if not settings.kafka_sasl_mechanism or not settings.kafka_sasl_username:
            raise ConfigError(
                "BW_KAFKA_SECURITY_PROTOCOL=SASL_* needs BW_KAFKA_SASL_MECHANISM and "
                "BW_KAFKA_SASL_USERNAME (and BW_KAFKA_SASL_PASSWORD)"
            )
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else "",
        )
    return options
