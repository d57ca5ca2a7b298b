"""``GET /sse/events/presence``: the presence events as SSE, for backends that pull."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from ssehub.api._errors import error_responses
from ssehub.api.streams import EventStreamResponse, check_stream_request
from ssehub.auth import Authenticator
from ssehub.hub import Hub
from ssehub.stores._presence import PRESENCE_LOG

PRESENCE_PATH = "/sse/events/presence"

DESCRIPTION = """\
Every presence event of the whole hub (every node), as Server-Sent Events:
`event:` the type (`user.online`, `user.offline`, `message.undelivered`), `data:` the
same JSON body a webhook carries, `id:` the event's id (the webhook's id too). Live from
the moment of connecting; with `Last-Event-ID` (header, or the `last_event_id` query
parameter) it first replays the events after that id that the store still keeps.
A `keepalive` event comes every few seconds. Needs publisher credentials.

    curl -N -H 'X-API-Key: KEY' http://127.0.0.1:8000/sse/events/presence
"""


def add_presence_routes(router: APIRouter, hub: Hub, auth: Authenticator) -> None:
    """Add ``GET /sse/events/presence`` (publisher credentials)."""

    @router.get(
        PRESENCE_PATH,
        summary="Stream the presence events",
        description=DESCRIPTION,
        response_class=Response,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
            **error_responses(400, 401, 403, 503),
        },
        tags=["streams"],
    )
    async def presence_events(
        request: Request,
        last_event_id_header: Annotated[
            str | None, Header(alias="Last-Event-ID", description="resume after this id")
        ] = None,
        last_event_id: Annotated[str | None, Query(description="resume after this id")] = None,
        accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        grant = auth.publisher(request.headers, request.query_params)
        opening = check_stream_request(grant, last_event_id_header, last_event_id, accept)
        return EventStreamResponse(hub, PRESENCE_LOG, opening)

    # HEAD answers the stream's headers after the same checks, and holds no stream
    # (`EventStreamResponse` sees the method); undocumented, as the other HEADs are.
    router.add_api_route(
        PRESENCE_PATH,
        presence_events,
        methods=["HEAD"],
        response_class=Response,
        include_in_schema=False,
    )
