"""``GET /metrics``: the hub's Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ssehub.hub import Hub
from ssehub.metrics import hub_registry
from ssehub.webhooks import WebhookStats


def add_metrics_route(router: APIRouter, hub: Hub, *, webhooks: WebhookStats | None = None) -> None:
    """Add ``/metrics`` in the Prometheus text format (with ``webhooks``' if given)."""
    registry = hub_registry(hub, webhooks=webhooks)

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
