"""Serving ssehub over HTTP/2 with TLS (``--http2``), against a real process."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import ipaddress
import signal
import ssl
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ssehub.client import EventStream, HubClient
from ssehub.exceptions import ConfigurationError
from ssehub.settings import Settings
from tests.conftest import ServerFactory, ServerProcess

pytest.importorskip("h2")
pytest.importorskip("zttp")
if "http2" not in inspect.signature(uvicorn.Config).parameters:
    pytest.skip("uvicorn before 0.54 serves no HTTP/2", allow_module_level=True)

TABS = 8  # more than the six HTTP/1.1 connections a browser opens to one origin


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def start_tls(start_server: ServerFactory, tmp_path: Path, *args: str) -> ServerProcess:
    cert_file, key_file = make_certificate(tmp_path)
    server = start_server(
        "--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file), *args, start=False
    )
    server.url = server.url.replace("http://", "https://")
    server.verify = ssl.create_default_context(cafile=str(cert_file))
    return server.start()


async def next_data(stream: EventStream) -> str:
    async with asyncio.timeout(10):
        async for event in stream:
            return event.data
    raise AssertionError("the stream ended")


@pytest.mark.anyio
async def test_many_tabs_share_one_http2_connection_and_all_get_each_message(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_tls(start_server, tmp_path, "--http2")
    http = httpx.AsyncClient(base_url=server.url, http2=True, verify=server.verify)
    async with http, HubClient(server.url, http=http) as client:
        opened = asyncio.Semaphore(0)
        streams = [
            client.events("alice", on_state=lambda state, detail: opened.release())
            for _ in range(TABS)
        ]
        readers = [asyncio.create_task(next_data(stream)) for stream in streams]
        async with asyncio.timeout(10):
            for _ in range(TABS):
                await opened.acquire()
        assert (await client.status("alice"))["connections"] == TABS
        await client.send("alice", "to every tab")
        assert await asyncio.gather(*readers) == ["to every tab"] * TABS

        answer = await http.get("/healthz")
        assert answer.http_version == "HTTP/2"
        assert answer.json()["streams"] == TABS
        # One TCP connection carried the eight streams and every request.
        pool = http._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1

        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        for stream in streams:
            await stream.aclose()


@pytest.mark.anyio
async def test_https_without_http2_still_streams(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_tls(start_server, tmp_path)
    http = httpx.AsyncClient(base_url=server.url, verify=server.verify)
    async with http, HubClient(server.url, http=http) as client:
        stream = client.events("bob", last_event_id=await client.send("bob", "zero"))
        reader = asyncio.create_task(next_data(stream))
        await client.send("bob", "one")  # live or replayed: after "zero" either way
        assert await reader == "one"
        await stream.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"http2": True}, "--http2 needs TLS"),
        ({"ssl_certfile": "cert.pem"}, "go together"),
    ],
)
def test_http2_and_tls_settings_are_checked_at_start_up(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings(**options).validate()  # type: ignore[arg-type]
