"""An async iterator that can also be used as an async context manager."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["ClosingIterator"]

T = TypeVar("T")


class ClosingIterator(Generic[T]):
    """Wraps an async generator that holds a connection while it runs.

    ``async for x in it`` works directly and releases the connection when the iteration
    ends; ``async with it: async for x in it: ...`` also releases it when the loop is
    left early (``break`` or an exception), without waiting for garbage collection.
    """

    def __init__(self, factory: Callable[[], AsyncGenerator[T]]):
        self._factory = factory
        self._agen: AsyncGenerator[T] | None = None
        self._closed = False

    def __aiter__(self) -> ClosingIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        if self._agen is None:
            self._agen = self._factory()
        try:
            return await self._agen.__anext__()
        except StopAsyncIteration:
            self._closed = True
            raise

    async def aclose(self) -> None:
        """Stop the iteration and release its connection."""
        self._closed = True
        if self._agen is not None:
            await self._agen.aclose()

    async def __aenter__(self) -> ClosingIterator[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
