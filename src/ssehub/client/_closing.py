"""``with`` and ``async with`` for the client's objects: leaving the block closes them."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosedOnExit:
    """``with obj:`` gives ``obj`` and calls its ``close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosedOnExit:
    """``async with obj:`` gives ``obj`` and awaits its ``aclose()`` on the way out."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
