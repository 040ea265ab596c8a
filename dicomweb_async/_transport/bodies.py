"""Replayable request bodies that stream files from disk.

httpx sends a request body again after an auth challenge or on a retry. A body made by an
async generator can be iterated only once; these are classes whose every iteration starts
over from the sources, re-opening files, so every attempt sends the full body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import anyio
import httpx

from .._core.multipart_writer import BodyPart, MultipartWriter

__all__ = ["FileBody", "MultipartBody", "SinglePartBody", "Span", "iter_part"]

READ_SIZE = 1024 * 1024
# Pieces smaller than _ALONE are joined with their framing (and each other) up to
# _COALESCE bytes rather than written separately.
_ALONE = 64 * 1024
_COALESCE = 256 * 1024

ProgressCallback = Callable[[int], None]


async def iter_part(
    part: BodyPart, read_size: int = READ_SIZE, start: int = 0
) -> AsyncIterator[bytes]:
    """Yield the bytes of one part from offset ``start``, reading files in ``read_size`` pieces.

    Raises
    ------
    OSError
        If the file cannot be read, or its size changed since the body was planned
        (the declared Content-Length would otherwise be wrong).
    """
    if part.data is not None:
        if part.data[start:]:
            yield part.data[start:]
        return
    assert part.path is not None
    # Each read opens the file at its offset, so no file stays open across a yield (a body
    # abandoned when a connection drops may never be closed, which would leave the file to
    # the garbage collector). Each asks one byte more than is left: a file that grew
    # shows, and a short read is the end, so a file that fits one read costs one
    # worker-thread trip in all.
    sent = start
    while True:
        asked = min(read_size, part.size - sent + 1)
        chunk = await anyio.to_thread.run_sync(_read_at, part.path, sent, asked)
        sent += len(chunk)
        if not chunk or sent > part.size:
            break
        yield chunk
        if len(chunk) < asked:
            break
    if sent != part.size:
        raise OSError(f"{part.path} changed size while being uploaded ({part.size} -> {sent})")


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        if offset:
            f.seek(offset)
        return f.read(size)


Span: TypeAlias = "bytes | BodyPart"


class FileBody(httpx.AsyncByteStream):
    """A replayable request body that may also be had whole, when it is small and in memory."""

    iterations: int

    def spans(self) -> list[Span]:
        """The body as bytes to send and whole files (:class:`BodyPart` with a path), in order.

        An engine that can hand a file to the kernel (``sendfile``) takes this instead of
        iterating; it counts as one iteration. Adjacent bytes are joined.
        """
        raise NotImplementedError

    def in_memory(self) -> bytes | None:
        """The whole body at once, if every part is in memory and it is small.

        An engine that can send ``bytes`` in one write (aiohttp) takes this instead of
        iterating; it counts as one iteration.
        """
        raise NotImplementedError

    def release(self) -> None:
        """Let go of the instances' bytes once the exchange is over.

        httpx keeps each response in a reference cycle with its stream, and the response
        keeps its request and so this body: without this, the bytes of every instance sent
        from memory would stay until the garbage collector next runs (measured: 11 of
        16 MiB each, 176 MiB, during a copy of 64).
        """
        raise NotImplementedError


class MultipartBody(FileBody):
    """A ``multipart/related`` request body over in-memory and on-disk parts.

    Parameters
    ----------
    parts : sequence of BodyPart
        The instances, in order.
    writer : MultipartWriter, optional
        Framing (and boundary) to use.
    read_size : int
        File read size.
    """

    def __init__(
        self,
        parts: Sequence[BodyPart],
        writer: MultipartWriter | None = None,
        read_size: int = READ_SIZE,
    ):
        self.parts = list(parts)
        self.writer = writer or MultipartWriter()
        self.read_size = read_size
        self.content_length = self.writer.content_length(self.parts)
        self.iterations = 0

    def release(self) -> None:
        """See :meth:`FileBody.release`."""
        self.parts = []

    @property
    def headers(self) -> dict[str, str]:
        """Content-Type and Content-Length of this body."""
        return {
            "Content-Type": self.writer.content_type,
            "Content-Length": str(self.content_length),
        }

    def in_memory(self) -> bytes | None:
        """See :meth:`FileBody.in_memory`."""
        if self.content_length > _COALESCE or any(p.data is None for p in self.parts):
            return None
        self.iterations += 1
        pieces: list[bytes] = []
        for part in self.parts:
            assert part.data is not None
            pieces += (self.writer.head(part), part.data, self.writer.part_end())
        pieces.append(self.writer.tail())
        return b"".join(pieces)

    def spans(self) -> list[Span]:
        """See :meth:`FileBody.spans`."""
        self.iterations += 1
        spans: list[Span] = []
        pending: list[bytes] = []
        for part in self.parts:
            pending.append(self.writer.head(part))
            if part.data is not None and len(part.data) < _ALONE:
                pending.append(part.data)
            else:
                # A file, or bytes too large to be worth copying next to their framing.
                spans += (b"".join(pending), part.data if part.data is not None else part)
                pending = []
            pending.append(self.writer.part_end())
        pending.append(self.writer.tail())
        spans.append(b"".join(pending))
        return spans

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.iterations += 1
        # Framing is a few dozen bytes and a small instance a few kilobytes; each piece sent
        # on its own costs a socket write (and an event-loop turn), more than copying them
        # together. So small pieces are gathered up to _COALESCE: a request of small
        # instances goes out as one piece, framing and all. Large pieces go as they are:
        # copying a megabyte costs more than one more write.
        pending: list[bytes] = []
        held = 0
        for part in self.parts:
            pending.append(self.writer.head(part))
            async for chunk in iter_part(part, self.read_size):
                if len(chunk) >= _ALONE:
                    yield b"".join(pending)
                    yield chunk
                    pending, held = [], 0
                    continue
                pending.append(chunk)
                held += len(chunk)
                if held >= _COALESCE:
                    yield b"".join(pending)
                    pending, held = [], 0
            pending.append(self.writer.part_end())
        pending.append(self.writer.tail())
        yield b"".join(pending)


class SinglePartBody(FileBody):
    """One instance sent as a plain ``application/dicom`` body (Azure's single-part STOW)."""

    def __init__(self, part: BodyPart, read_size: int = READ_SIZE):
        self.part = part
        self.read_size = read_size
        self.iterations = 0

    def release(self) -> None:
        """See :meth:`FileBody.release`."""
        self.part = BodyPart(size=self.part.size, path=self.part.path)

    @property
    def headers(self) -> dict[str, str]:
        """Content-Type and Content-Length of this body."""
        return {"Content-Type": self.part.content_type, "Content-Length": str(self.part.size)}

    def in_memory(self) -> bytes | None:
        """See :meth:`FileBody.in_memory`."""
        data = self.part.data
        if data is None or len(data) > _COALESCE:
            return None
        self.iterations += 1
        return data

    def spans(self) -> list[Span]:
        """See :meth:`FileBody.spans`."""
        self.iterations += 1
        return [self.part] if self.part.data is None else [self.part.data]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.iterations += 1
        async for chunk in iter_part(self.part, self.read_size):
            yield chunk
