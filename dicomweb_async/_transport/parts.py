"""Body parts of a streamed response, consumed one at a time as they arrive."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from .._core.exceptions import MultipartError
from .._core.multipart_reader import (
    BoundarySniffer,
    Event,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    SinglePartReader,
)

__all__ = ["Part", "PartStream"]


class Part:
    """One part of a multipart/related response, readable once, piece by piece.

    Attributes
    ----------
    index : int
        Zero-based position in the response.
    headers : PartHeaders
        The part's headers (Content-Type with transfer syntax, Content-Location...).
    size : int or None
        Body size in bytes, known once the part has been read to its end.
    """

    def __init__(self, stream: PartStream, index: int, headers: PartHeaders):
        self._stream = stream
        self.index = index
        self.headers = headers
        self.size: int | None = None
        self._started = False

    @property
    def media_type(self) -> str:
        """The part's media type (e.g. ``application/dicom``)."""
        return self.headers.content_type.mime

    @property
    def transfer_syntax(self) -> str | None:
        """The part's transfer syntax UID, if the server stated one."""
        return self.headers.transfer_syntax

    @property
    def done(self) -> bool:
        """Whether the part's body has been read to its end."""
        return self.size is not None

    def __repr__(self) -> str:
        return f"<Part {self.index} {self.media_type or '?'} size={self.size}>"

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the part's body as it arrives.

        Raises
        ------
        MultipartError
            If the response ends inside this part.
        RuntimeError
            If the body was already (partly) read.
        """
        if self._started:
            raise RuntimeError(f"part {self.index} has already been read")
        self._started = True
        while True:
            event = await self._stream._next_event()
            if isinstance(event, PartData):
                yield event.data
            elif isinstance(event, PartEnd):
                self.size = event.size
                return
            else:  # pragma: no cover - the reader never starts a part inside another
                raise self._stream._error(f"unexpected {type(event).__name__} inside a part")

    async def read(self) -> bytes:
        """Read the whole part into memory."""
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def _skip(self) -> None:
        if self.size is None:
            if not self._started:
                async for _ in self.aiter_bytes():
                    pass
            else:
                # A consumer stopped part-way: drop the rest of this part's events.
                while self.size is None:
                    event = await self._stream._next_event()
                    if isinstance(event, PartEnd):
                        self.size = event.size


class PartStream:
    """Async iterator of :class:`Part` over a response body.

    Parameters
    ----------
    chunks : async iterator of bytes
        The response body as it arrives.
    reader : MultipartReader, SinglePartReader or BoundarySniffer
        The push parser for the response's Content-Type.
    method, url : str
        The request, named in errors.

    Notes
    -----
    Each part must be read (or abandoned) before the next one is requested; asking for
    the next part skips whatever is left of the current one. Iteration ends only after the
    closing boundary was seen: a truncated body raises :class:`MultipartError`.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        reader: MultipartReader | SinglePartReader | BoundarySniffer,
        *,
        method: str = "GET",
        url: str = "",
    ):
        self._chunks = chunks
        self._reader = reader
        self._events: deque[Event] = deque()
        self._eof = False
        self._current: Part | None = None
        self.method = method
        self.url = url

    def _error(self, message: str) -> MultipartError:
        return MultipartError(message, method=self.method, url=self.url)

    async def _next_event(self) -> Event | None:
        while not self._events:
            if self._eof:
                return None
            try:
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    self._eof = True
                    self._events.extend(self._reader.finish())
                    continue
                self._events.extend(self._reader.feed(chunk))
            except MultipartError as exc:
                exc.method, exc.url = self.method, self.url
                raise
        return self._events.popleft()

    def __aiter__(self) -> PartStream:
        return self

    async def __anext__(self) -> Part:
        if self._current is not None:
            await self._current._skip()
            self._current = None
        while True:
            event = await self._next_event()
            if event is None:
                raise StopAsyncIteration
            if isinstance(event, PartStart):
                self._current = Part(self, event.index, event.headers)
                return self._current
            # PartData/PartEnd outside a requested part cannot happen: _skip consumed them.
            raise self._error(f"unexpected {type(event).__name__} between parts")
