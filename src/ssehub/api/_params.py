"""Path parameters shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

UserIdPath = Annotated[str, Path(description="the user's id", examples=["alice"])]
