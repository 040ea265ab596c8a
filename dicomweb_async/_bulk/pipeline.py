"""The shape shared by bulk pipelines: worker tasks feeding one consumer.

A pipeline is an async context manager whose value is iterated. Entering it starts its
tasks in a task group; they send results into a bounded stream that the consumer reads,
so a slow consumer slows the tasks instead of growing memory. Leaving the block before
the results are exhausted cancels the tasks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.groups import single_error

__all__ = ["Pipeline", "put", "taken", "two_passes"]

logger = logging.getLogger("dicomweb_async")

T = TypeVar("T")
W = TypeVar("W")
P = TypeVar("P", bound="Pipeline[Any]")


async def put(stream: MemoryObjectSendStream[T], item: T) -> None:
    """Send ``item``, waiting only when the stream is full.

    anyio's ``send`` goes once round the event loop even when there is room; with a few
    sends per instance, those turns cost more than the rest of the hand-over.
    """
    try:
        stream.send_nowait(item)
    except (anyio.WouldBlock, anyio.BrokenResourceError):
        # Full: wait for room. Broken (the consumer left): ``send`` raises the task's
        # cancellation first if there is one, as it would have without this shortcut.
        await stream.send(item)


async def taken(stream: MemoryObjectReceiveStream[T]) -> AsyncIterator[T]:
    """The items of ``stream`` until it ends, waiting only when it is empty."""
    while True:
        try:
            item = stream.receive_nowait()
        except anyio.WouldBlock:
            try:
                item = await stream.receive()
            except anyio.EndOfStream:
                return
        except anyio.EndOfStream:
            return
        yield item


async def two_passes(
    results: MemoryObjectSendStream[T],
    concurrency: int,
    produce: Callable[
        [MemoryObjectSendStream[W], MemoryObjectSendStream[T]], Coroutine[Any, Any, None]
    ],
    work: Callable[
        [MemoryObjectReceiveStream[W], MemoryObjectSendStream[T], bool],
        Coroutine[Any, Any, None],
    ],
    take_deferred: Callable[[], list[W]],
    what: str,
) -> None:
    """Run a bulk job: a producer feeding ``concurrency`` workers, then one final pass.

    The workers set aside (``take_deferred`` hands over) the work that failed transiently
    after every retry; once everything else is done, it is done once more, by workers told
    it is the last pass (``work(..., True)``), which report what fails again as failed.
    Closes ``results`` (a clone of its own) at the end.
    """
    async with results:
        send, receive = anyio.create_memory_object_stream[W](concurrency)
        async with anyio.create_task_group() as tg:
            with receive:
                tg.start_soon(produce, send, results.clone())
                for _ in range(concurrency):
                    tg.start_soon(work, receive.clone(), results.clone(), False)
        deferred = take_deferred()
        if not deferred:
            return
        logger.warning(
            "%d %s failed transiently after every retry; one more pass", len(deferred), what
        )
        send, receive = anyio.create_memory_object_stream[W](concurrency)
        async with anyio.create_task_group() as tg:
            with receive:
                for _ in range(min(concurrency, len(deferred))):
                    tg.start_soon(work, receive.clone(), results.clone(), True)
            async with send:
                for item in deferred:
                    await put(send, item)


class Pipeline(Generic[T]):
    """Base of :class:`UploadPipeline` and :class:`DownloadPipeline`."""

    #: How many results may wait for the consumer.
    result_buffer = 64

    _tg: TaskGroup | None = None
    _results: MemoryObjectReceiveStream[T] | None = None
    _drained = False

    async def _open(self) -> None:
        """Prepare before the tasks start (open files, create folders)."""

    def _start(self, tg: TaskGroup, results: MemoryObjectSendStream[T]) -> None:
        """Start the tasks; each must use (and close) its own clone of ``results``."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Clean up once the tasks have ended, however they ended."""

    async def __aenter__(self: P) -> P:
        await self._open()
        send, self._results = anyio.create_memory_object_stream[Any](self.result_buffer)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        async with send:
            self._start(self._tg, send)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None and self._results is not None
        try:
            if exc_type is not None or not self._drained:
                self._tg.cancel_scope.cancel()
            await self._results.aclose()
            try:
                return await self._tg.__aexit__(exc_type, exc, tb)
            except BaseException as error:
                # Callers expect a task's own error, not the task group's wrapper.
                inner = single_error(error)
                if inner is error:
                    raise
                raise inner from None
        finally:
            await self._close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        assert self._results is not None, "use `async with` before iterating"
        async for item in taken(self._results):
            yield item
        self._drained = True
