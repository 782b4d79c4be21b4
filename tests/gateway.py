"""Test certificates, and a Kafka broker that checks them and passwords.

The embedded broker (Tansu 0.6) cannot serve TLS or SASL to aiokafka: its ``--cert``
option refuses ``--key`` and a combined PEM leaves the listener in plain TCP, and with
``--authentication`` its own ``user create`` is refused (``NotAuthenticated``), so no
user can ever log in to a memory-only broker. ``SecureKafka`` puts ``KafkaGateway`` in
front of a Tansu that advertises the gateway's address, so every client connection
(bootstrap, group coordinator, partition leaders) goes through the gateway: it
terminates TLS (optionally requiring a client certificate), runs the SASL exchange
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and checks the password as a Kafka broker
would, and only then forwards the connection's bytes to the broker unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import ssl
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from worker.dev.servers import LOOPBACK, ServerProcess, free_port, tansu_binary

# Kafka API keys and error codes the gateway speaks itself.
API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

SCRAM_ITERATIONS = 4096
_SCRAM_HASHES: dict[str, Callable[..., Any]] = {
    "SCRAM-SHA-256": hashlib.sha256,
    "SCRAM-SHA-512": hashlib.sha512,
}


# --- certificates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate,
    and a second CA that signed neither (to check that verification fails)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    localhost_only_cert: Path
    localhost_only_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def make_certificates(directory: Path) -> Certificates:
    """Generate the test PKI with the ``openssl`` CLI (skip the test without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot generate test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    def ca(name: str) -> None:
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt")  # fmt: skip

    def leaf(name: str, subject: str, extensions: str) -> None:
        (directory / f"{name}.ext").write_text(extensions)
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
            "-extfile", f"{name}.ext")  # fmt: skip

    ca("ca")
    ca("other-ca")
    server_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    leaf("server", "/CN=127.0.0.1", server_ext + "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    leaf("localhost", "/CN=localhost", server_ext + "subjectAltName=DNS:localhost\n")
    leaf("client", "/CN=bw-worker", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return Certificates(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
        localhost_only_cert=directory / "localhost.crt",
        localhost_only_key=directory / "localhost.key",
    )


# --- the gateway -----------------------------------------------------------------------


class _Closed(Exception):
    """The client broke the protocol or failed to authenticate: drop the connection."""


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= 1_000_000:
        raise _Closed(f"a pre-authentication frame of {size} bytes")
    return await reader.readexactly(size)


class _Request:
    """A request parsed up to its body: header v1 (api key, version, correlation id,
    client id). Good for SaslHandshake v0-1 and SaslAuthenticate v0-1."""

    def __init__(self, data: bytes) -> None:
        self.api_key, self.api_version, self.correlation_id = struct.unpack(">hhi", data[:8])
        (client_id_len,) = struct.unpack(">h", data[8:10])
        self.body = data[10 + max(client_id_len, 0) :]

    def string(self) -> str:
        (length,) = struct.unpack(">h", self.body[:2])
        return self.body[2 : 2 + length].decode()

    def bytes_field(self) -> bytes:
        (length,) = struct.unpack(">i", self.body[:4])
        return self.body[4 : 4 + length]


class _ScramServer:
    """RFC 5802 from the server's side, as Kafka runs it inside SaslAuthenticate."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = _SCRAM_HASHES[mechanism]
        self.users = users
        self.user = ""
        self.salt = os.urandom(16)
        self.nonce = ""
        self.client_first_bare = ""
        self.server_first = ""

    def first(self, message: bytes) -> bytes:
        text = message.decode()
        if not text.startswith("n,,"):
            raise _Closed("SCRAM: channel binding and authzid are not supported")
        self.client_first_bare = text[3:]
        fields = dict(part.split("=", 1) for part in self.client_first_bare.split(","))
        self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        self.nonce = fields["r"] + secrets.token_hex(12)
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={SCRAM_ITERATIONS}"
        return self.server_first.encode()

    def final(self, message: bytes) -> bytes | None:
        """The server-final message, or None when the proof is wrong."""
        text = message.decode()
        without_proof, _, proof = text.rpartition(",p=")
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        password = self.users.get(self.user)
        if password is None or fields.get("r") != self.nonce:
            return None
        name = self.hash().name
        salted = hashlib.pbkdf2_hmac(name, password.encode(), self.salt, SCRAM_ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        stored_key = self.hash(client_key).digest()
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, self.hash).digest()
        sent = base64.b64decode(proof)
        recovered = bytes(a ^ b for a, b in zip(sent, signature, strict=False))
        if not hmac.compare_digest(self.hash(recovered).digest(), stored_key):
            return None
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        verifier = hmac.new(server_key, auth_message, self.hash).digest()
        return b"v=" + base64.b64encode(verifier)


@dataclass
class KafkaGateway:
    """TLS and SASL in front of a plaintext broker on ``upstream_port``.

    ``users`` (name -> password) turns SASL on with ``mechanisms``; ``tls`` turns TLS
    on. ``logins`` records each successful (mechanism, user), ``refusals`` each failed
    one, ``client_subjects`` the common name of each client certificate presented.
    """

    upstream_port: int
    port: int = 0
    tls: ssl.SSLContext | None = None
    users: dict[str, str] | None = None
    mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    logins: list[tuple[str, str]] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept,
            LOOPBACK,
            self.port,
            ssl=self.tls,
            ssl_handshake_timeout=5 if self.tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            peer = writer.get_extra_info("peercert")
            if peer:
                subject = dict(item[0] for item in peer.get("subject", ()))
                self.client_subjects.append(str(subject.get("commonName", "")))
            up_reader, upstream = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            if self.users is not None:
                await self._authenticate(reader, writer, up_reader, upstream)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (_Closed, OSError, asyncio.IncompleteReadError, ValueError, KeyError):
            pass
        finally:
            self._tasks.discard(task)
            for stream in (writer, upstream):
                if stream is not None:
                    stream.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        """Answer requests until the client has logged in; ApiVersions is forwarded (a
        broker answers it before authentication), anything else closes the connection."""
        assert self.users is not None
        mechanism: str | None = None
        scram: _ScramServer | None = None
        while True:
            data = await _read_frame(reader)
            request = _Request(data)
            if request.api_key == API_VERSIONS:
                upstream.write(_frame(data))
                await upstream.drain()
                writer.write(_frame(await _read_frame(up_reader)))
                await writer.drain()
            elif request.api_key == API_SASL_HANDSHAKE and mechanism is None:
                mechanism = await self._handshake(writer, request)
                if mechanism in _SCRAM_HASHES:
                    scram = _ScramServer(mechanism, self.users)
            elif request.api_key == API_SASL_AUTHENTICATE and mechanism is not None:
                if request.api_version > 1:
                    raise _Closed("SaslAuthenticate v2+ is not spoken here")
                token = request.bytes_field()
                if scram is None:
                    _, user, password = token.decode().split("\0")
                    ok, answer = self.users.get(user) == password, b""
                elif not scram.server_first:
                    await _auth_reply(writer, request, 0, None, scram.first(token))
                    continue
                else:
                    user = scram.user
                    final = scram.final(token)
                    ok, answer = final is not None, final or b""
                if not ok:
                    self.refusals.append((mechanism, user))
                    message = f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"  # noqa: E501
                    await _auth_reply(writer, request, SASL_AUTHENTICATION_FAILED, message, b"")
                    raise _Closed("wrong credentials")
                self.logins.append((mechanism, user))
                await _auth_reply(writer, request, 0, None, answer)
                return
            else:
                raise _Closed(f"API {request.api_key} before authentication")

    async def _handshake(self, writer: asyncio.StreamWriter, request: _Request) -> str:
        """Answer SaslHandshake: the mechanism asked for, or close when it is not offered."""
        wanted = request.string()
        known = wanted in self.mechanisms
        error = 0 if known else UNSUPPORTED_SASL_MECHANISM
        body = struct.pack(">hi", error, len(self.mechanisms))
        body += b"".join(_string(name) for name in self.mechanisms)
        await _reply(writer, request, body)
        if not known:
            raise _Closed(f"unsupported mechanism {wanted}")
        return wanted


async def _reply(writer: asyncio.StreamWriter, request: _Request, body: bytes) -> None:
    writer.write(_frame(struct.pack(">i", request.correlation_id) + body))
    await writer.drain()


async def _auth_reply(
    writer: asyncio.StreamWriter, request: _Request, error: int, message: str | None, token: bytes
) -> None:
    body = struct.pack(">h", error) + _string(message) + struct.pack(">i", len(token)) + token
    if request.api_version >= 1:
        body += struct.pack(">q", 0)  # session lifetime: no re-authentication
    await _reply(writer, request, body)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


# --- a broker behind the gateway --------------------------------------------------------


class SecureKafka:
    """A memory-only Tansu reachable only through a ``KafkaGateway``.

    The broker advertises the gateway's port, so clients that bootstrap through the
    gateway keep using it. Topics are created on the broker's own port.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tls: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.broker_port = free_port()
        self.gateway = KafkaGateway(self.broker_port, port=free_port(), tls=tls, users=users)
        argv = [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{LOOPBACK}:{self.broker_port}",
            "--advertised-listener-url",
            f"tcp://{LOOPBACK}:{self.gateway.port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        log = workdir / f"tansu-secure-{self.broker_port}.log"
        self.server = ServerProcess("tansu", argv, self.broker_port, log)

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.gateway.port}"

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        try:
            await self.gateway.start()
        except BaseException:
            await asyncio.to_thread(self.server.stop)
            raise

    async def stop(self) -> None:
        await self.gateway.stop()
        await asyncio.to_thread(self.server.stop)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        result = subprocess.run(
            [tansu_binary(), "topic", "create", name, "--broker",
             f"tcp://{LOOPBACK}:{self.broker_port}", "--partitions", str(partitions)],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0 and "exists" not in output.lower():
            raise RuntimeError(f"creating topic {name!r} failed: {output.strip()}")
