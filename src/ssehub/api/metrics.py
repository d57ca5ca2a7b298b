"""``GET /metrics``: the hub's Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ssehub.hub import Hub
from ssehub.metrics import hub_registry


def add_metrics_route(router: APIRouter, hub: Hub) -> None:
    """Add ``/metrics`` in the Prometheus text format."""
    registry = hub_registry(hub)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        description="Open streams, connected users, messages accepted, delivered, replayed "
        "and queued for offline users, slow consumers dropped, store latency; all named "
        "`ssehub_*`.",
        tags=["operations"],
        response_class=Response,
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
