"""Kafka over TLS and SASL: every client the worker builds carries the settings, a
broker that checks certificates and passwords accepts the worker's whole pipeline, and
a refused handshake stops the worker at once with the reason.

The broker that checks is ``tests.gateway.SecureKafka``: the embedded broker behind a
TLS- and SASL-terminating gateway (the broker alone cannot do either).
"""

from __future__ import annotations

import ast
import asyncio
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr

import worker
from tests.gateway import Certificates, SecureKafka, make_certificates
from tests.support import MODEL, in_process_workers, job, write_models_file
from worker.client import JobClient, ResultWaiter
from worker.connections import check_kafka, kafka_options
from worker.consumer import JobConsumer
from worker.errors import ConfigError
from worker.ledger import Budget, Ledger
from worker.publisher import KafkaPublisher
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "bw-worker", "kafka-secret-7d1f"
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("kafka-certs"))


def secure_settings(bootstrap: str, certs: Certificates, **changes: Any) -> Settings:
    """SASL_SSL with SCRAM-SHA-512, a private CA and a client certificate."""
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": PASSWORD,
        "kafka_ssl_cafile": certs.ca,
        "kafka_ssl_certfile": certs.client_cert,
        "kafka_ssl_keyfile": certs.client_key,
        "kafka_request_timeout_ms": 5000,
        "lease_ms": 90_000,
        "worker_id": "sec",
    }
    values.update(changes)
    return Settings(**values)


@pytest.fixture
async def secure_kafka(tmp_path: Path, certs: Certificates) -> AsyncIterator[SecureKafka]:
    """A broker that wants TLS with a client certificate, then SASL as USER."""
    broker = SecureKafka(
        tmp_path, tls=certs.server_context(require_client_cert=True), users={USER: PASSWORD}
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- every client gets the settings ------------------------------------------------------


def client_settings(client: Any) -> dict[str, Any]:
    """What an aiokafka client will connect with (its AIOKafkaClient's attributes)."""
    return {
        "bootstrap": client._bootstrap_servers,
        "protocol": client._security_protocol,
        "mechanism": client._sasl_mechanism,
        "username": client._sasl_plain_username,
        "password": client._sasl_plain_password,
        "ssl_context": client._ssl_context,
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_the_consumer_and_the_producer_get_tls_and_sasl(
    certs: Certificates, mechanism: str
) -> None:
    settings = secure_settings("broker-1:9093,broker-2:9093", certs, kafka_sasl_mechanism=mechanism)
    publisher = KafkaPublisher(settings)
    consumer = JobConsumer(settings, *[cast(Any, None)] * 4)
    clients = {
        "producer": publisher._producer.client,
        "compressing producer": publisher._compressed.client,
        "consumer": consumer._consumer._client,
    }
    try:
        check_clients(clients, mechanism)
    finally:
        await publisher.stop()
        await consumer._consumer.stop()


def check_clients(clients: dict[str, Any], mechanism: str) -> None:
    for name, client in clients.items():
        seen = client_settings(client)
        assert seen["bootstrap"] == "broker-1:9093,broker-2:9093", name
        assert seen["protocol"] == "SASL_SSL", name
        assert (seen["mechanism"], seen["username"], seen["password"]) == (
            mechanism,
            USER,
            PASSWORD,
        ), name
        context = seen["ssl_context"]
        assert isinstance(context, ssl.SSLContext), name
        assert context.verify_mode == ssl.CERT_REQUIRED, name
        assert context.check_hostname, name
        trusted = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
        assert {"commonName": "ca"} in trusted, name


async def test_tls_without_sasl_and_no_hostname_check_reach_the_clients(
    certs: Certificates,
) -> None:
    settings = secure_settings(
        "broker:9093",
        certs,
        kafka_security_protocol="SSL",
        kafka_sasl_mechanism=None,
        kafka_sasl_username=None,
        kafka_sasl_password=None,
        kafka_ssl_check_hostname=False,
    )
    publisher = KafkaPublisher(settings)
    seen = client_settings(publisher._producer.client)
    await publisher.stop()
    assert (seen["protocol"], seen["username"], seen["password"]) == ("SSL", None, None)
    assert seen["ssl_context"].check_hostname is False
    assert seen["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def _target(node: ast.AST) -> str | None:
    """``x`` for a name, ``self.x`` for an attribute of self; None otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _from_kafka_options(scope: ast.AST) -> set[str]:
    """Names and ``self`` attributes in ``scope`` that hold ``kafka_options(...)``,
    directly or through other such names (``self._options = options``)."""

    def is_options_call(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "kafka_options"
        )

    derived: set[str] = set()
    while True:
        before = len(derived)
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and (
                is_options_call(node.value) or _target(node.value) in derived
            ):
                derived.update(t for t in map(_target, node.targets) if t is not None)
        if len(derived) == before:
            return derived


def _kafka_client_calls(tree: ast.Module) -> Iterable[tuple[ast.Call, ast.AST]]:
    """Every ``AIOKafka*(...)`` call, with the class (else function, else module) it is in."""
    scopes: list[ast.AST] = [tree]
    scopes += [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    scopes += [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and not any(n in ast.walk(c) for c in scopes[1:])
    ]
    seen: set[int] = set()
    for scope in reversed(scopes):  # the innermost scope first
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or id(node) in seen:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name.startswith("AIOKafka"):
                seen.add(id(node))
                yield node, scope


def _gets_kafka_options(call: ast.Call, scope: ast.AST) -> bool:
    """``**kafka_options(...)``, or ``**x`` where ``x`` holds kafka_options(...)."""
    derived = _from_kafka_options(scope)
    for keyword in call.keywords:
        if keyword.arg is not None:
            continue
        value = keyword.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "kafka_options":
            return True
        if _target(value) in derived:
            return True
    return False


def test_every_kafka_client_in_the_package_is_built_from_kafka_options() -> None:
    """A new client (the producing services' helpers, an admin client) that forgot the
    TLS and SASL settings would connect in the clear: none may exist."""
    package = Path(worker.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call, scope in _kafka_client_calls(tree):
            found.append(path.name)
            assert _gets_kafka_options(call, scope), (
                f"{path.name}:{call.lineno} builds an aiokafka client without kafka_options"
            )
    assert {"consumer.py", "publisher.py", "client.py"} <= set(found)


# --- settings that cannot work are refused before any connection --------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kafka_sasl_password": None}, "BW_KAFKA_SASL_PASSWORD"),
        ({"kafka_sasl_username": None}, "BW_KAFKA_SASL_USERNAME"),
        ({"kafka_sasl_mechanism": None}, "BW_KAFKA_SASL_MECHANISM"),
        ({"kafka_ssl_cafile": Path("/nonexistent/ca.pem")}, "BW_KAFKA_SSL_CAFILE"),
        ({"kafka_ssl_certfile": None}, "BW_KAFKA_SSL_KEYFILE is set without"),
        ({"kafka_ssl_keyfile": Path("/nonexistent/key.pem")}, "BW_KAFKA_SSL_KEYFILE"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT"},
            "BW_KAFKA_SSL_CAFILE, BW_KAFKA_SSL_CERTFILE, BW_KAFKA_SSL_KEYFILE set, but",
        ),
        (
            {
                "kafka_security_protocol": "SSL",
                "kafka_sasl_mechanism": None,
                "kafka_sasl_username": None,
            },
            "BW_KAFKA_SASL_PASSWORD set, but BW_KAFKA_SECURITY_PROTOCOL=SSL",
        ),
    ],
)
def test_unusable_security_settings_are_refused_by_name(
    certs: Certificates, changes: dict[str, Any], named: str
) -> None:
    settings = secure_settings("broker:9093", certs, **changes)
    with pytest.raises(ConfigError) as caught:
        kafka_options(settings)
    assert named in str(caught.value)
    assert PASSWORD not in str(caught.value)


# --- a broker that checks certificates and passwords ---------------------------------------


async def test_a_worker_runs_jobs_through_a_broker_that_wants_sasl_ssl_and_a_client_cert(
    secure_kafka: SecureKafka,
    certs: Certificates,
    redis_url: str,
    fake_provider: Any,
    tmp_path: Path,
) -> None:
    topics = {
        "jobs": "sec.jobs",
        "results": "llm.results.sec",
        "dlq": "sec.dlq",
        "budget": "sec.budget",
    }
    for name in topics.values():
        secure_kafka.create_topic(name, partitions=2)
    ledger = Ledger.from_url(redis_url)
    try:
        await ledger.set_budget("alice", Budget(limit_nanousd=10_000_000_000))
    finally:
        await ledger.close()
    env = {
        "BW_KAFKA_BOOTSTRAP": secure_kafka.bootstrap,
        "BW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "BW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "BW_KAFKA_SASL_USERNAME": USER,
        "BW_KAFKA_SASL_PASSWORD": PASSWORD,
        "BW_KAFKA_SSL_CAFILE": str(certs.ca),
        "BW_KAFKA_SSL_CERTFILE": str(certs.client_cert),
        "BW_KAFKA_SSL_KEYFILE": str(certs.client_key),
        "BW_REDIS_URL": redis_url,
        "BW_MODELS_FILE": str(write_models_file(tmp_path, fake_provider.url)),
        "BW_JOBS_TOPIC": topics["jobs"],
        "BW_RESULTS_TOPIC": topics["results"],
        "BW_DLQ_TOPIC": topics["dlq"],
        "BW_BUDGET_EVENTS_TOPIC": topics["budget"],
        "BW_GROUP_ID": "sec-group",
        "BW_METRICS_PORT": "0",
        "BW_MODEL_TIMEOUT_S": "10",
        "BW_KAFKA_SESSION_TIMEOUT_MS": "3000",
    }
    jobs = [job(f"sec-{n}", "alice") for n in range(3)]
    # The producing services' helpers connect the same way as the worker.
    clients = secure_settings(
        secure_kafka.bootstrap, certs, jobs_topic=topics["jobs"], results_topic=topics["results"]
    )
    async with (
        in_process_workers(env),
        ResultWaiter(clients) as waiter,
        JobClient(clients) as client,
    ):
        for body in jobs:
            await client.submit(body)
        events = {j["job_id"]: (await waiter.wait(j["job_id"], 60)).model_dump() for j in jobs}
    assert {e["type"] for e in events.values()} == {"completion.succeeded"}
    assert {e["model"] for e in events.values()} == {MODEL}
    gateway = secure_kafka.gateway
    assert gateway.refusals == []
    assert ("SCRAM-SHA-512", USER) in gateway.logins
    assert set(gateway.client_subjects) == {"bw-worker"}


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_check_kafka_passes_with_each_mechanism(
    secure_kafka: SecureKafka, certs: Certificates, mechanism: str
) -> None:
    await check_kafka(
        secure_settings(secure_kafka.bootstrap, certs, kafka_sasl_mechanism=mechanism)
    )
    assert secure_kafka.gateway.logins == [(mechanism, USER)]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kafka_sasl_password": SecretStr("wrong-password-1")}, "invalid credentials"),
        ({"kafka_sasl_username": "mallory"}, "invalid credentials"),
        ({"kafka_ssl_cafile": "OTHER_CA"}, "certificate verification failed"),
        ({"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None}, "client certificate"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_ssl_cafile": None,
                "kafka_ssl_certfile": None,
                "kafka_ssl_keyfile": None,
            },
            "closed the connection",
        ),
    ],
    ids=["wrong-password", "unknown-user", "untrusted-ca", "no-client-cert", "plaintext-to-tls"],
)
async def test_a_refused_connection_is_a_config_error_with_the_reason(
    secure_kafka: SecureKafka, certs: Certificates, changes: dict[str, Any], reason: str
) -> None:
    if changes.get("kafka_ssl_cafile") == "OTHER_CA":
        changes = {**changes, "kafka_ssl_cafile": certs.other_ca}
    settings = secure_settings(secure_kafka.bootstrap, certs, **changes)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        await check_kafka(settings)
    assert time.monotonic() - started < 6
    message = str(caught.value)
    assert f"Kafka at {secure_kafka.bootstrap}" in message
    assert f"BW_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}" in message
    assert reason in message
    for secret in (PASSWORD, "wrong-password-1"):
        assert secret not in message


async def test_the_hostname_is_checked_unless_turned_off(
    tmp_path: Path, certs: Certificates
) -> None:
    """A certificate for ``localhost`` does not do for ``127.0.0.1``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.localhost_only_cert, certs.localhost_only_key)
    broker = SecureKafka(tmp_path, tls=context)
    await broker.start()
    try:
        tls_only = {
            "kafka_security_protocol": "SSL",
            "kafka_sasl_mechanism": None,
            "kafka_sasl_username": None,
            "kafka_sasl_password": None,
        }
        with pytest.raises(ConfigError, match="certificate verification failed"):
            await check_kafka(secure_settings(broker.bootstrap, certs, **tls_only))
        unchecked = secure_settings(
            broker.bootstrap, certs, kafka_ssl_check_hostname=False, **tls_only
        )
        await check_kafka(unchecked)
    finally:
        await broker.stop()


# --- an endpoint that refuses the handshake stops `budget-worker run` ---------------------


@pytest.fixture
async def slammer() -> AsyncIterator[str]:
    """A TCP endpoint that accepts every connection and closes it at once."""

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_check_kafka_fails_fast_against_an_endpoint_that_closes(
    slammer: str, certs: Certificates
) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        await check_kafka(secure_settings(slammer, certs))
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert f"Kafka at {slammer}" in message
    assert "SASL_SSL" in message
    assert f"{slammer}: " in message  # the server's own reason follows its address


async def test_budget_worker_run_exits_with_the_reason_when_the_handshake_is_refused(
    slammer: str, certs: Certificates, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "BW_KAFKA_BOOTSTRAP": slammer,
        "BW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "BW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "BW_KAFKA_SASL_USERNAME": USER,
        "BW_KAFKA_SASL_PASSWORD": PASSWORD,
        "BW_KAFKA_SSL_CAFILE": str(certs.ca),
        "BW_KAFKA_REQUEST_TIMEOUT_MS": "5000",
        "BW_REDIS_URL": "redis://127.0.0.1:9/0",
        "BW_MODELS_FILE": str(write_models_file(tmp_path, "http://127.0.0.1:9/v1")),
        "BW_METRICS_PORT": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 45)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 2, text[-2000:]
    assert f"error: cannot connect to Kafka at {slammer}" in text
    assert "BW_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in text
    assert "Traceback" not in text
    assert PASSWORD not in text
