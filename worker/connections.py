"""Connection options shared by every Kafka client the worker builds, and the start-up
check that they actually connect.

The consumer, the producer and the client helpers for producing services all take
their security settings from here, so TLS and SASL are configured once. Settings that
cannot work together are refused here, before any connection: SASL without a user
or password, TLS files that cannot be read, or TLS/SASL settings given while
``BW_KAFKA_SECURITY_PROTOCOL`` would ignore them (a forgotten protocol would
otherwise send credentials and jobs in the clear).

``check_kafka`` makes one connection the way every client will (TCP, TLS, SASL) and
turns a refusal into a ``ConfigError`` that names the bootstrap, the security
protocol and the reason, within ``BW_KAFKA_REQUEST_TIMEOUT_MS``: a wrong password or
certificate stops the worker at once instead of leaving it retrying in the dark.
Like the consumer and publisher modules, this one is a Kafka boundary: aiokafka's
errors are translated here.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError

from worker.errors import ConfigError, KafkaUnavailable
from worker.settings import Settings

_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every client, or None when the protocol is not TLS.

    Certificates are verified against ``BW_KAFKA_SSL_CAFILE`` (the system's CAs when
    unset, as for a managed Kafka with a public certificate) and, unless
    ``BW_KAFKA_SSL_CHECK_HOSTNAME=false``, must name the broker's host.
    """
    if settings.kafka_security_protocol not in _TLS_PROTOCOLS:
        return None
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load BW_KAFKA_SSL_CAFILE ({cafile}): {_reason(exc)}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise ConfigError("BW_KAFKA_SSL_KEYFILE is set without BW_KAFKA_SSL_CERTFILE")
    if settings.kafka_ssl_certfile:
        try:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "cannot load the Kafka client certificate (BW_KAFKA_SSL_CERTFILE="
                f"{settings.kafka_ssl_certfile}, BW_KAFKA_SSL_KEYFILE="
                f"{settings.kafka_ssl_keyfile}): {_reason(exc)}"
            ) from None
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client: bootstrap, TLS, SASL, timeouts."""
    _check_combination(settings)
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "client_id": f"budget-worker-{settings.worker_id}",
    }
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol in _SASL_PROTOCOLS:
        password = settings.kafka_sasl_password
        if not settings.kafka_sasl_mechanism or not settings.kafka_sasl_username or not password:
            raise ConfigError(
                f"BW_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
                "BW_KAFKA_SASL_MECHANISM, BW_KAFKA_SASL_USERNAME and BW_KAFKA_SASL_PASSWORD"
            )
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value(),
        )
    return options


def _check_combination(settings: Settings) -> None:
    """Refuse TLS or SASL settings that the chosen protocol would silently ignore."""
    protocol = settings.kafka_security_protocol
    if protocol not in _TLS_PROTOCOLS:
        tls = [
            name
            for name, value in (
                ("BW_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
                ("BW_KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
                ("BW_KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile),
            )
            if value
        ]
        if tls:
            raise ConfigError(
                f"{', '.join(tls)} set, but BW_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                "use TLS: set it to SSL or SASL_SSL (or unset the TLS files)"
            )
    if protocol not in _SASL_PROTOCOLS:
        sasl = [
            name
            for name, value in (
                ("BW_KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism),
                ("BW_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                ("BW_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
            )
            if value
        ]
        if sasl:
            raise ConfigError(
                f"{', '.join(sasl)} set, but BW_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                "use SASL: set it to SASL_SSL (or SASL_PLAINTEXT), or unset the SASL settings"
            )


def describe(settings: Settings) -> str:
    """How the worker connects, for messages: bootstrap, protocol, SASL user; no secret."""
    text = (
        f"Kafka at {settings.kafka_bootstrap} "
        f"(BW_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
    )
    if settings.kafka_security_protocol in _SASL_PROTOCOLS:
        text += f", SASL {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r}"
    return text + ")"


def unreachable(settings: Settings, exc: KafkaError) -> KafkaUnavailable:
    """The error of every client that could not reach the broker: which broker, how,
    and what to check. (``check_kafka`` gives the worker each server's own reason.)"""
    return KafkaUnavailable(
        f"cannot reach {describe(settings)}: {type(exc).__name__}. Check BW_KAFKA_BOOTSTRAP "
        "and that the broker is running"
    )


async def check_kafka(settings: Settings) -> None:
    """Connect to the bootstrap servers as every client will, until one accepts.

    Each server gets ``BW_KAFKA_REQUEST_TIMEOUT_MS`` for TCP, TLS, the version
    exchange and SASL together. Raises ``ConfigError`` naming the bootstrap, the
    protocol, the SASL user and each server's reason when none accepts; never a
    password.
    """
    options = kafka_options(settings)
    options.pop("bootstrap_servers")
    timeout_s = settings.kafka_request_timeout_ms / 1000
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    try:
        hosts = collect_hosts(settings.kafka_bootstrap, randomize=False)
    except (ValueError, KafkaError) as exc:
        raise ConfigError(f"BW_KAFKA_BOOTSTRAP is not a list of host:port: {exc}") from None
    reasons = []
    for host, port, _family in hosts:
        try:
            connection = await asyncio.wait_for(create_conn(host, port, **options), timeout_s)
        except (OSError, KafkaError, TimeoutError, ValueError) as exc:
            reason = _reason(exc) if not isinstance(exc, TimeoutError) else "no answer"
            if isinstance(exc, TimeoutError):
                reason += f" within {timeout_s:g} s (BW_KAFKA_REQUEST_TIMEOUT_MS)"
            if password:
                reason = reason.replace(password, "[redacted]")
            reasons.append(f"{host}:{port}: {reason}")
            continue
        connection.close()
        return
    raise ConfigError(
        f"cannot connect to {describe(settings)}: {'; '.join(reasons)}. Check "
        "BW_KAFKA_BOOTSTRAP, BW_KAFKA_SECURITY_PROTOCOL, BW_KAFKA_SASL_* and BW_KAFKA_SSL_*"
    )


def _reason(exc: BaseException) -> str:
    """A one-line reason: the exception's class and message (aiokafka's errors repeat
    their class name; TLS errors carry the OpenSSL reason)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text:
        return name
    if isinstance(exc, KafkaConnectionError) and "closed" in text:
        text += (
            " (the broker closed the connection: does the listener expect this protocol, "
            "and, for mutual TLS, a client certificate?)"
        )
    return text if name in text else f"{name}: {text}"
