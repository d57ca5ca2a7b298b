"""Reading publish bodies: bounded, parsed once with orjson, checked by hand.

Publishing is on the hot path, so bodies are not turned into pydantic models; the
shapes here match the OpenAPI schemas declared in `ssehub.api.publish`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from ssehub.events import check_event_name
from ssehub.exceptions import InvalidInput, PayloadTooLarge


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """Read and parse a JSON body of at most ``max_bytes``.

    Raises:
        PayloadTooLarge: the body is larger than ``max_bytes``.
        InvalidInput: the body is empty or not JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise InvalidInput("request body is empty: expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc


def message_fields(value: Any, *, where: str = "body") -> tuple[Any, str | None]:
    """Return ``(data, event)`` from ``{"data": ..., "event": ...?}``.

    Raises:
        InvalidInput: not an object, no ``data``, or a bad ``event``.
    """
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object with a 'data' field")
    if "data" not in value:
        raise InvalidInput(f"{where} lacks the 'data' field")
    event = value.get("event")
    if event is not None and not isinstance(event, str):
        raise InvalidInput(f"{where}: 'event' must be a string")
    check_event_name(event)
    return value["data"], event
