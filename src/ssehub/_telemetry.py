"""FastAPI's own OpenTelemetry for ssehub's app: off when nothing would record it.

FastAPI (0.165 and later) asks on every request whether a tracer, meter or logger
provider is configured, which reads the environment each time while none is: about 5 %
of the server's CPU per stream opened on the portable path. ssehub's app turns that
instrumentation off when no provider is configured as the app is made (nor asked for
with ``FASTAPI_OTEL_AUTO_CONFIGURE``); a provider configured before then, as
``opentelemetry-instrument`` does, keeps it on.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from fastapi import FastAPI

# The types the OpenTelemetry API returns while no provider is set.
_PLACEHOLDERS = frozenset({"ProxyTracerProvider", "_ProxyMeterProvider", "ProxyLoggerProvider"})
_OFF = {"tracing": False, "metrics": False, "logs": False}


def app_options() -> dict[str, Any]:
    """Keyword arguments for ``FastAPI(...)``: telemetry off when nothing records it."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}  # a FastAPI without it
    if os.getenv("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return {}  # FastAPI configures providers from the environment as it starts
    return {} if providers_configured() else {"telemetry": dict(_OFF)}


def providers_configured() -> bool:
    """A tracer, meter or logger provider is set (or named by the environment)."""
    try:
        from opentelemetry import _logs, metrics, trace
    except ImportError:
        return False
    found = (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider())
    return any(type(provider).__name__ not in _PLACEHOLDERS for provider in found)
