"""schemathesis against the server's own OpenAPI schema: no 5xx, no answer off its schema.

Bounded to run in CI: a few examples per operation and generation mode, stateless.
The endless stream routes are left out (the stream, presence and hostile tests try
them); the demo tasks run with a tiny step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ssehub.app import create_app
from ssehub.settings import Settings
from tests.conftest import ServerFactory

MAX_EXAMPLES = 20
STREAM_ROUTES = {"/sse/connect/{user_id}", "/sse/events/presence"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# The operations, read from the app's schema without starting anything.
_PATHS: dict[str, dict[str, Any]] = create_app(Settings(store="memory://")).openapi()["paths"]
OPERATIONS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, methods in sorted(_PATHS.items())
    if path not in STREAM_ROUTES
    for method, operation in methods.items()
    for mode in GenerationMode
    # Invalid input can only be made where the schema constrains something: a body or
    # a query parameter (path parameters are any non-empty string).
    if mode is GenerationMode.POSITIVE
    or "requestBody" in operation
    or any(p["in"] == "query" for p in operation.get("parameters", []))
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The OpenAPI schema of a real server, which the generated requests are sent to."""
    factory = ServerFactory(tmp_path_factory.mktemp("schema"))
    try:
        server = factory(env={"SSEHUB_DEMO_STEP": "0.0001", "SSEHUB_MAX_BATCH": "20"})
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    finally:
        factory.close()


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_operation_answers_5xx_or_off_its_schema(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Case[Any]) -> None:
        case.call_and_validate(checks=CHECKS, timeout=10)

    run()
