"""Publishing and state: one message, a batch, broadcast, a user's status, the user list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from ssehub.api._errors import error_responses, json_response
from ssehub.api._params import UserIdPath
from ssehub.api._publishing import Publishing
from ssehub.auth import Authenticator
from ssehub.hub import Hub
from ssehub.limits import check_user_id
from ssehub.stores.base import UserState

_DATA_SCHEMA: dict[str, Any] = {
    "description": "a string (sent as it is) or any JSON value (sent as compact JSON)",
}
_EVENT_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "description": "event name (EventSource: addEventListener(name)); default 'message'",
}
_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": _DATA_SCHEMA, "event": _EVENT_SCHEMA},
}
_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["user_id", "data"],
                "properties": {
                    "user_id": {"type": "string", "minLength": 1, "maxLength": 256},
                    "data": _DATA_SCHEMA,
                    "event": _EVENT_SCHEMA,
                },
            },
        }
    },
}
_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "user_id": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in UserState]},
        "connections": {"type": "integer"},
        "last_seen": {"type": ["string", "null"], "format": "date-time"},
        "pending": {"type": "integer"},
    },
}
_ERRORS = error_responses(400, 401, 403, 413, 503)
_PUBLISH_ERRORS = error_responses(400, 401, 403, 409, 413, 503)
_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Makes a retry safe: a publish repeated with the same key (same route, "
    "target and body) answers the first one's answer and delivers nothing twice. "
    "Kept at least as long as the history.",
}
_READ_ERRORS = error_responses(400, 401, 403, 503)


def _body_doc(schema: dict[str, Any], example: object) -> dict[str, Any]:
    return {
        "parameters": [_KEY_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def add_publish_routes(router: APIRouter, publishing: Publishing) -> None:
    """Add the routes that send: one message, a batch, a broadcast (their work is
    ``publishing``'s)."""

    @router.post(
        "/sse/users/{user_id}/messages",
        summary="Send a message to a user",
        description="Every open stream of the user receives it; if none is open, it waits "
        "for the next connect. Answers with the event id and the user's status.",
        status_code=202,
        openapi_extra=_body_doc(_MESSAGE_SCHEMA, {"data": "Your report is ready", "event": None}),
        responses={202: _json({"type": "object"}, "Accepted."), **_PUBLISH_ERRORS},
        tags=["publish"],
    )
    async def send_one(request: Request, user_id: UserIdPath) -> Response:
        return await publishing.send_one(request, user_id)

    @router.post(
        "/sse/messages",
        summary="Send a batch of messages",
        description=f"Up to {publishing.limits.max_batch} messages, to any users, in one "
        "request. Answers with one event id per message, in order.",
        status_code=202,
        openapi_extra=_body_doc(
            _BATCH_SCHEMA,
            {
                "messages": [
                    {"user_id": "alice", "data": "hi"},
                    {"user_id": "bob", "data": {"n": 1}},
                ]
            },
        ),
        responses={202: _json({"type": "object"}, "Accepted."), **_PUBLISH_ERRORS},
        tags=["publish"],
    )
    async def send_batch(request: Request) -> Response:
        return await publishing.send_batch(request)

    @router.post(
        "/sse/broadcast",
        summary="Send a message to every connected user",
        status_code=202,
        openapi_extra=_body_doc(_MESSAGE_SCHEMA, {"data": "Maintenance at 22:00"}),
        responses={202: _json({"type": "object"}, "Accepted."), **_PUBLISH_ERRORS},
        tags=["publish"],
    )
    async def broadcast(request: Request) -> Response:
        return await publishing.broadcast(request)


def add_state_routes(router: APIRouter, hub: Hub, auth: Authenticator) -> None:
    """Add the read-only state routes: a user's status and the list of users."""
    limits = hub.limits

    @router.get(
        "/sse/users/{user_id}",
        summary="A user's status",
        description="connected (with the number of open streams), disconnected, or unknown; "
        "when the user was last seen; how many messages wait for them.",
        responses={200: _json(_STATUS_SCHEMA, "The user's status."), **_READ_ERRORS},
        response_class=Response,
        tags=["state"],
    )
    async def user_status(request: Request, user_id: UserIdPath) -> Response:
        check_user_id(user_id, max_length=limits.max_user_id_length)
        auth.user_or_publisher(user_id, request.headers, request.query_params)
        return json_response(200, (await hub.status(user_id)).as_json())

    @router.get(
        "/sse/users",
        summary="List known users",
        description="A page of users ordered by id; pass the answer's `next` as `after` "
        "for the next page.",
        responses={
            200: _json(
                {"type": "object", "properties": {
                    "users": {"type": "array", "items": _STATUS_SCHEMA},
                    "next": {"type": ["string", "null"]}}},
                "A page of users.",
            ),
            **_ERRORS,
        },
        response_class=Response,
        tags=["state"],
    )  # fmt: skip
    async def list_users(
        request: Request,
        status: Annotated[UserState | None, Query(description="only users in this state")] = None,
        after: Annotated[
            str | None, Query(max_length=256, description="user id to start after")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="users per page")] = 100,
    ) -> Response:  # fmt: skip
        auth.publisher(request.headers, request.query_params)
        records = await hub.store.list_users(state=status, after=after, limit=limit)
        users = [hub.user_status(record).as_json() for record in records]
        next_after = records[-1].user_id if len(records) == limit else None
        return json_response(200, {"users": users, "next": next_after})
