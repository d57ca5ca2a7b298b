"""The sample's demo routes, wired to `ssehub.demo`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from ssehub.api._errors import error_responses, json_response
from ssehub.api._params import UserIdPath
from ssehub.auth import Authenticator
from ssehub.demo import run_long_task, run_object_countdown
from ssehub.hub import Hub
from ssehub.limits import check_user_id

_RESULT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task finished.",
        "content": {"application/json": {"example": {
            "message": "Task completed",
            "data": "User 'alice' completed the task at: 2026-01-01T12:00:00.",
        }}},
    },
    **error_responses(400, 401, 403, 503),
}  # fmt: skip


def add_demo_routes(router: APIRouter, hub: Hub, auth: Authenticator, *, step: float) -> None:
    """Add the sample's long task and object countdown."""

    @router.get(
        "/sse/task/{user_id}",
        summary="Run a simulated long task",
        description="Sends `User '{user_id}', attempt i / 10` to the user once a second for "
        "ten seconds, then answers.",
        response_class=Response,
        responses=_RESULT,
        tags=["demo"],
    )
    async def task(request: Request, user_id: UserIdPath) -> Response:
        check_user_id(user_id, max_length=hub.limits.max_user_id_length)
        auth.publisher(request.headers, request.query_params)
        return json_response(200, (await run_long_task(hub, user_id, step=step)).as_json())

    @router.get(
        "/sse/task-with-obj/{user_id}",
        summary="Count down, then send an object",
        description="Sends `Object sent to user '{user_id}' in n...` for n = 5..1, one a "
        'second, then the object `{"Name":"Victor","Age":30,"Country":"Spain",'
        '"IsActive":true}`, then answers.',
        response_class=Response,
        responses=_RESULT,
        tags=["demo"],
    )
    async def task_with_object(request: Request, user_id: UserIdPath) -> Response:
        check_user_id(user_id, max_length=hub.limits.max_user_id_length)
        auth.publisher(request.headers, request.query_params)
        result = await run_object_countdown(hub, user_id, step=step)
        return json_response(200, result.as_json())
