"""FastAPI's own OpenTelemetry in ssehub's app: off unless something records it."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace

from ssehub.app import create_app
from ssehub.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the lookups of the global tracer provider (one per call)."""
    calls: list[int] = []
    lookup = trace.get_tracer_provider

    def counted() -> trace.TracerProvider:
        calls.append(1)
        return lookup()

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    return calls


async def requests_lookups(lookups: list[int], requests: int = 3) -> int:
    """Lookups of the tracer provider made while ssehub's app answers ``requests``."""
    app = create_app(Settings(store="memory://"))
    lookups.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        for _ in range(requests):
            assert (await client.get("/ssehub.js")).status_code == 200
    return len(lookups)


async def test_no_provider_no_lookup_per_request(lookups: list[int]) -> None:
    assert await requests_lookups(lookups) == 0


async def test_a_configured_provider_keeps_fastapi_telemetry(
    lookups: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = trace.NoOpTracerProvider()  # not the API's placeholder: "configured"
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", configured)
    assert trace.get_tracer_provider() is configured
    assert await requests_lookups(lookups) >= 3


async def test_auto_configure_keeps_fastapi_telemetry(
    lookups: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    assert await requests_lookups(lookups) >= 3
