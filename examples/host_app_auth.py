"""An application with its own sign-in (here: a session cookie) that mounts ssehub.

Who may open ``/sse/connect/{user_id}`` is decided by the application's own
dependency, ``current_user``; other services publish with an API key; the
application's own code sends through the ``Messenger``.

Run it with ``PUBLISH_KEY=change-me uvicorn --app-dir examples host_app_auth:app``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Cookie, Depends, FastAPI, HTTPException, Response

from ssehub import Hub, MemoryStore, Messenger, create_router, messenger_dependency
from ssehub.auth import KeyAuthenticator

# Session id -> user id. A real application uses its own session store.
SESSIONS: dict[str, str] = {}


async def current_user(session: Annotated[str | None, Cookie()] = None) -> str | None:
    """The signed-in user's id, or None: ssehub answers 401 for None, 403 for another."""
    return SESSIONS.get(session) if session else None


hub = Hub(MemoryStore(), keepalive=float(os.environ.get("KEEPALIVE", "15")))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with hub.running():
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(
    create_router(
        hub,
        identify=current_user,  # streams: the application's sign-in decides
        auth=KeyAuthenticator(publish_keys=[os.environ["PUBLISH_KEY"]]),
        publish=True,  # other services may publish over HTTP, with the key
    )
)
MessengerDep = Annotated[Messenger, Depends(messenger_dependency(hub))]
UserDep = Annotated[str | None, Depends(current_user)]


@app.post("/login/{user_id}")
async def login(user_id: str, response: Response) -> dict[str, str]:
    """Stands in for the application's real sign-in."""
    session = secrets.token_urlsafe(16)
    SESSIONS[session] = user_id
    response.set_cookie("session", session, httponly=True, samesite="lax")
    return {"user_id": user_id}


@app.post("/reports")
async def make_report(user: UserDep, messenger: MessengerDep) -> dict[str, str]:
    """Application code: tell the signed-in user their report is ready."""
    if user is None:
        raise HTTPException(401, "sign in first")
    event_id = await messenger.send(user, {"report": "ready"}, event="report")
    return {"event_id": event_id}
