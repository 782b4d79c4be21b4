"""Redis with a least-privilege ACL user and TLS: the ledger and a whole worker
pipeline run under ``deploy/redis-acl.conf``'s ``budget-worker`` user (over
``rediss://`` when the local redis-server has TLS), no command is denied on the way,
and that user can do nothing outside the ledger's keys and commands."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.gateway import Certificates, make_certificates
from tests.support import (
    PRICE_IN,
    PRICE_OUT,
    Topics,
    in_process_workers,
    job,
    produce,
    wait_for_events,
    worker_env,
    write_models_file,
)
from worker import ledger as ledger_module
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis, free_port
from worker.errors import ConfigError, LedgerUnavailable
from worker.ledger import Budget, Grant, LeaseRef, Ledger, Scope
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)

ACL_FILE = Path(__file__).parent.parent / "deploy" / "redis-acl.conf"
WORKER_USER, WORKER_PASSWORD = "budget-worker", "worker-pw-5be0c2"
OPS_USER, OPS_PASSWORD = "ops", "ops-pw-91d4aa"
# How Redis words a refusal inside a script (the command or the key).
DENIED_IN_SCRIPT = r"(?i)noperm|no permissions|can't run this command"
# What a redis-server built without TLS says when given --tls-port.
NO_TLS = re.compile(
    r"(?i)bad directive|tls.{0,40}not (supported|built|available)|built without tls"
)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def acl_file_for_test(directory: Path) -> Path:
    """``deploy/redis-acl.conf`` with its password placeholders filled in."""
    text = ACL_FILE.read_text()
    text = text.replace(
        "#REPLACE_WITH_SHA256_HEX_OF_THE_WORKER_PASSWORD", "#" + _sha256(WORKER_PASSWORD)
    )
    text = text.replace("#REPLACE_WITH_SHA256_HEX_OF_THE_OPS_PASSWORD", "#" + _sha256(OPS_PASSWORD))
    assert "REPLACE" not in text
    path = directory / "redis-acl.conf"
    path.write_text(text)
    return path


@dataclass
class AclRedis:
    """A Redis loaded with the deploy ACL file; TLS only when ``certs`` is given."""

    server: EmbeddedRedis
    certs: Certificates | None

    @property
    def tls(self) -> bool:
        return self.certs is not None

    def url(self, user: str, password: str) -> str:
        scheme = "rediss" if self.tls else "redis"
        url = f"{scheme}://{quote(user)}:{quote(password)}@127.0.0.1:{self.server.port}/0"
        if self.certs is not None:
            url += f"?ssl_ca_certs={quote(str(self.certs.ca))}"
        return url

    @property
    def worker_url(self) -> str:
        return self.url(WORKER_USER, WORKER_PASSWORD)

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(OPS_USER, OPS_PASSWORD))

    def denied_log(self) -> list[dict[str, Any]]:
        """The server's ACL log: every command or key it refused since start."""
        client = self.admin()
        try:
            entries = client.execute_command("ACL", "LOG")
        finally:
            client.close()
        return [_entry(item) for item in entries]


def _entry(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {_text(k): _text(v) for k, v in item.items()}
    return {_text(item[i]): _text(item[i + 1]) for i in range(0, len(item), 2)}


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def start_acl_redis(directory: Path, certs: Certificates | None = None) -> AclRedis:
    args = ["--aclfile", str(acl_file_for_test(directory))]
    port = free_port()
    if certs is not None:
        args += [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
        ]  # fmt: skip
    server = EmbeddedRedis(directory, port=port, extra_args=args)
    server.start()
    return AclRedis(server, certs)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    """Plain TCP, the deploy ACL file."""
    server = start_acl_redis(tmp_path)
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture
def tls_acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    """TLS only (no plain port), the deploy ACL file."""
    certs = make_certificates(tmp_path / "certs")
    try:
        server = start_acl_redis(tmp_path, certs)
    except RuntimeError:
        log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("redis-*.log"))
        if NO_TLS.search(log):
            pytest.skip(f"the local redis-server has no TLS: {log.strip().splitlines()[-1]}")
        raise
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture
async def worker_ledger(acl_redis: AclRedis) -> AsyncIterator[Ledger]:
    ledger = Ledger.from_url(acl_redis.worker_url, default_budget=Budget(limit_nanousd=10**9))
    try:
        yield ledger
    finally:
        await ledger.close()


# --- the ACL file ----------------------------------------------------------------------------


def test_the_deploy_acl_file_does_not_load_until_its_passwords_are_set(tmp_path: Path) -> None:
    """The shipped file holds placeholders, not usable passwords: a server given it as
    it is refuses to start rather than run with a known or empty password."""
    server = EmbeddedRedis(tmp_path, extra_args=["--aclfile", str(ACL_FILE.resolve())])
    with pytest.raises(RuntimeError, match="exited"):
        server.start()
    log = server.server.log_path.read_text(errors="replace")
    assert "password hash must be exactly 64 characters" in log


def test_the_deploy_acl_file_turns_the_default_user_off(acl_redis: AclRedis) -> None:
    client = redis.Redis(port=acl_redis.server.port, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis_errors.AuthenticationError):
            client.ping()
    finally:
        client.close()


def granted_commands() -> set[str]:
    """The ``+command`` grants of the worker's line in the deploy ACL file."""
    line = next(
        x for x in ACL_FILE.read_text().splitlines() if x.startswith(f"user {WORKER_USER} ")
    )
    return {token[1:].lower() for token in line.split() if token.startswith("+")}


def sent_commands() -> set[str]:
    """Every command the ledger sends: those its Lua scripts call, those its modules send
    itself, and what redis-py sends for it (EVALSHA, SCRIPT LOAD when a script is not
    cached, SELECT for a database other than 0)."""
    package = Path(ledger_module.__file__).parent
    lua = {
        name.lower()
        for path in (package / "lua").glob("*.lua")
        for name in re.findall(r"redis\.call\(\s*'([A-Za-z]+)'", path.read_text())
    }
    python = {
        name.lower()
        for path in package.glob("*.py")
        for name in re.findall(r'command\(\s*"([A-Z]+)"', path.read_text())
    }
    return lua | python | {"evalsha", "script|load", "select"}


def test_the_acl_grants_exactly_the_commands_the_ledger_sends() -> None:
    """A script calling a command the ACL lacks would fail in production only; a grant
    nothing uses is privilege for nothing."""
    assert granted_commands() == sent_commands()
    line = next(
        x for x in ACL_FILE.read_text().splitlines() if x.startswith(f"user {WORKER_USER} ")
    )
    assert "-@all" in line.split() and "resetkeys" in line.split()
    assert {t for t in line.split() if t.startswith(("~", "%", "&", "allkeys", "allcommands"))} == {
        "~bw:*",
        "~{bw:*}",  # the indexes and the directory: {bw:users}, {bw:teams}, {bw:orgs}, {bw:dir}
    }


# --- everything the ledger does is allowed -----------------------------------------------------


async def test_every_ledger_operation_runs_under_the_worker_acl(
    acl_redis: AclRedis, worker_ledger: Ledger
) -> None:
    ledger = worker_ledger
    await ledger.ping()
    await ledger.set_budget("alice", Budget(limit_nanousd=1_000_000, rpm=100, tpm=100_000))
    assert await ledger.get_budget("alice") is not None
    reserved = await ledger.reserve(
        "alice", "j1", cost_nanousd=1000, tokens=50, lease_ms=60_000, holder="h"
    )
    assert type(reserved).__name__ == "Reserved"
    assert await ledger.extend("alice", "j1", lease_ms=60_000, holder="h")
    assert await ledger.renew([LeaseRef("alice", "j1", "h")], lease_ms=60_000) == [True]
    settled = await ledger.settle(
        "alice", "j1", holder="h", cost_nanousd=900, tokens=40, model="m", outcome=b'{"e":1}'
    )
    assert settled.first
    await ledger.reserve("alice", "j2", cost_nanousd=1000, tokens=5, lease_ms=1, holder="h")
    time.sleep(0.01)  # noqa: ASYNC251  let the lease lapse, so the next script reclaims it
    assert await ledger.release("alice", "j2", holder="h", outcome=b'{"e":2}') is False
    finished = await ledger.finish("alice", "j3", outcome=b'{"e":3}')
    assert type(finished).__name__ == "Finished" and finished.outcome == b'{"e":3}'
    state = await ledger.state("alice")
    assert state is not None and state.model_spend_nanousd == {"m": 900}
    assert await ledger.reset("alice")
    # A user without a budget gets the default one, indexed in a second step.
    await ledger.reserve("carol", "j4", cost_nanousd=1, tokens=1, lease_ms=60_000, holder="h")
    assert await ledger.list_users() == ["alice", "carol"]
    assert await ledger.delete("carol")
    # Teams, membership (a move into an organisation's slot), credits and listings.
    await ledger.create_team("eng", "acme")
    await ledger.set_budget(Scope("team", "eng"), Budget(limit_nanousd=10**6, rpm=10))
    await ledger.set_membership("alice", team="eng")
    await ledger.grant("alice", Grant("g1", 500))
    assert (await ledger.adjust(Scope("team", "eng"), "a1", 300)).applied_nanousd == 300
    reserved = await ledger.reserve(
        "alice", "j5", cost_nanousd=10, tokens=1, lease_ms=60_000, holder="h", model="m"
    )
    assert type(reserved).__name__ == "Reserved"
    await ledger.settle(
        "alice", "j5", holder="h", cost_nanousd=10, tokens=1, model="m", outcome=b"{}"
    )
    assert [g.id for g in await ledger.grants("alice")] == ["g1"]
    assert len(await ledger.history(Scope("team", "eng"))) == 1
    assert (await ledger.list_scopes("team")).items == ["eng"]
    await ledger.set_membership("alice")  # and out again
    assert acl_redis.denied_log() == []


async def test_the_worker_user_runs_only_the_ledger_on_its_own_keys(
    acl_redis: AclRedis, worker_ledger: Ledger
) -> None:
    admin = acl_redis.admin()
    try:
        admin.set("session:42", "someone else's data")
    finally:
        admin.close()
    client = aioredis.Redis.from_url(acl_redis.worker_url)
    denied = [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("GET", "session:42"),
        ("SET", "session:42", "x"),
        ("DEL", "session:42"),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "appendonly", "no"),
        ("ACL", "LIST"),
        ("SHUTDOWN", "NOSAVE"),
        ("EVAL", "return 1", "0"),
        ("SCRIPT", "FLUSH"),
        ("FUNCTION", "LIST"),
        ("MONITOR",),
        ("CLIENT", "LIST"),
        ("INFO",),
        ("SUBSCRIBE", "chan"),
        ("PUBLISH", "chan", "x"),
        ("MIGRATE", "127.0.0.1", "1", "bw:x", "0", "1000"),
        ("RENAME", "bw:a", "session:42"),
    ]
    try:
        for command in denied:
            with pytest.raises(redis_errors.NoPermissionError):
                await client.execute_command(*command)
        # A script the user may load still runs with the user's rights: it cannot
        # reach another key either.
        sha = await client.script_load("return redis.call('GET', KEYS[1])")
        with pytest.raises(redis_errors.ResponseError, match=DENIED_IN_SCRIPT):
            await client.evalsha(sha, 1, "session:42")
        with pytest.raises(redis_errors.ResponseError, match=DENIED_IN_SCRIPT):
            await client.evalsha(await client.script_load("return redis.call('FLUSHALL')"), 0)
    finally:
        await client.aclose()
    admin = acl_redis.admin()
    try:
        assert admin.get("session:42") == b"someone else's data"
    finally:
        admin.close()


async def test_a_wrong_redis_password_is_unavailable_and_never_echoed(
    acl_redis: AclRedis,
) -> None:
    ledger = Ledger.from_url(acl_redis.url(WORKER_USER, "not-the-password-3e1"), timeout_s=1)
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            await ledger.ping()
    finally:
        await ledger.close()
    message = str(caught.value)
    assert "AuthenticationError" in message
    assert "not-the-password-3e1" not in message and WORKER_PASSWORD not in message


async def test_the_worker_refuses_to_start_with_credentials_redis_rejects(
    acl_redis: AclRedis, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A wrong password is not an outage: waiting does not cure it. Without a check the
    worker would report ready and stall on its first job."""
    from worker.service import serve

    wrong = "not-the-password-77c"
    topics = Topics.fresh(kafka)
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=acl_redis.url(WORKER_USER, wrong),
        redis_timeout_s=1,
        models_file=write_models_file(tmp_path, "http://127.0.0.1:9/v1"),
        jobs_topic=topics.jobs,
        results_topic=topics.results,
        dlq_topic=topics.dlq,
        budget_events_topic=topics.budget_events,
        metrics_port=0,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(4, stop.set)
    with pytest.raises(ConfigError) as caught:
        await serve(settings, {}, stop)
    message = str(caught.value)
    assert "BW_REDIS_URL" in message and "AuthenticationError" in message
    assert wrong not in message and WORKER_PASSWORD not in message


# --- TLS ---------------------------------------------------------------------------------------


async def test_rediss_verifies_the_server_against_the_ca(tls_acl_redis: AclRedis) -> None:
    ledger = Ledger.from_url(tls_acl_redis.worker_url)
    try:
        await ledger.ping()
    finally:
        await ledger.close()
    assert tls_acl_redis.certs is not None
    untrusted = tls_acl_redis.worker_url.replace(
        quote(str(tls_acl_redis.certs.ca)), quote(str(tls_acl_redis.certs.other_ca))
    )
    plain = tls_acl_redis.worker_url.replace("rediss://", "redis://").split("?")[0]
    for url in (untrusted, plain):
        ledger = Ledger.from_url(url, timeout_s=1)
        try:
            with pytest.raises(LedgerUnavailable):
                await ledger.ping()
        finally:
            await ledger.close()


# --- a whole pipeline under the ACL, over TLS -------------------------------------------------


def write_two_models(directory: Path, api_base: str) -> Path:
    """The fake provider's model, and one whose endpoint refuses connections (a
    failing call: retried, then released)."""
    entry = (
        "  - model_name: {name}\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        "      api_base: {base}\n"
        "      api_key: sk-fake-test-key\n"
        "    model_info:\n"
        f"      input_cost_per_token: {PRICE_IN}\n"
        f"      output_cost_per_token: {PRICE_OUT}\n"
    )
    path = directory / "models.yaml"
    path.write_text(
        "model_list:\n"
        + entry.format(name="gpt-4o-mini", base=api_base)
        + entry.format(name="broken", base=f"http://127.0.0.1:{free_port()}/v1")
    )
    return path


async def test_a_worker_pipeline_runs_under_the_acl_over_tls(
    tls_acl_redis: AclRedis, kafka: EmbeddedKafka, fake_provider: Any, tmp_path: Path
) -> None:
    topics = Topics.fresh(kafka, partitions=2)
    env = worker_env(
        kafka,
        tls_acl_redis.worker_url,
        write_two_models(tmp_path, fake_provider.url),
        topics,
        default_budget_usd="1",
        model_max_retries=1,
    )
    ledger = Ledger.from_url(tls_acl_redis.worker_url)  # the budget CLI's rights suffice
    try:
        await ledger.set_budget("alice", Budget(limit_nanousd=10_000_000_000))
        await ledger.set_budget("bob", Budget(limit_nanousd=1))
        tag = uuid.uuid4().hex[:6]
        jobs = [
            job(f"ok-{tag}-1", "alice"),
            job(f"ok-{tag}-2", "alice"),
            job(f"new-user-{tag}", "carol"),  # gets the default budget
            job(f"poor-{tag}", "bob"),
            job(f"fails-{tag}", "alice", model="broken"),
            job(f"bad-{tag}", "alice", params={"api_base": "http://evil.example"}),
        ]
        async with in_process_workers(env):
            await produce(kafka, topics.jobs, jobs)
            events = await wait_for_events(kafka, topics.results, {j["job_id"] for j in jobs})
        outcome = {
            job_id.split("-")[0]: (
                items[0]["type"],
                items[0].get("reason") or items[0].get("error_type"),
            )
            for job_id, items in events.items()
        }
        assert outcome == {
            "ok": ("completion.succeeded", None),
            "new": ("completion.succeeded", None),
            "poor": ("completion.rejected", "budget_exceeded"),
            "fails": ("completion.failed", "connection_error"),
            "bad": ("completion.rejected", "invalid_job"),
        }
        failed = next(
            items[0] for items in events.values() if items[0]["type"] == "completion.failed"
        )
        assert failed["attempts"] == 2  # one retry: the lease was extended under the ACL
        state = await ledger.state("alice")
        assert state is not None and state.snapshot.reserved_nanousd == 0
        assert state.snapshot.spent_nanousd > 0
        assert sorted(await ledger.list_users()) == ["alice", "bob", "carol"]
    finally:
        await ledger.close()
    assert tls_acl_redis.denied_log() == [], json.dumps(tls_acl_redis.denied_log(), indent=1)
