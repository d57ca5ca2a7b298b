"""Webhooks of a real ``ssehub serve`` process."""

from __future__ import annotations

from tests.conftest import ServerFactory
from tests.test_metrics import scrape


def test_a_hub_with_a_webhook_url_reports_its_webhook_metrics(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "k", store="memory://"
    )
    samples = scrape(server.url)
    assert samples["ssehub_webhook_pending"] == 0
    assert samples["ssehub_webhook_deliveries_total{result=delivered}"] == 0
    assert samples["ssehub_webhook_failures_total{reason=timeout}"] == 0
    assert samples["ssehub_webhook_delivery_seconds_count"] == 0


def test_a_hub_without_a_webhook_url_has_no_webhook_metrics(start_server: ServerFactory) -> None:
    assert not any("webhook" in name for name in scrape(start_server().url))
