"""An aiohttp request body whose files the kernel sends (``sendfile``), for plain HTTP.

Reading a file into Python and writing it to the socket costs a copy into a buffer, a copy
into the transport's buffer for whatever the socket did not take at once, and the memory
to hold both while many requests are in flight. ``loop.sendfile`` hands the file to the
kernel instead, which moves the pages straight from the page cache to the socket: no
buffers in the process, no worker-thread reads. It works on asyncio's own socket
transports only; over TLS, or on a loop that lacks it (``SendfileNotAvailableError``
before any byte of the file went out), the file is read in pieces and written as usual.

A file is sent in pieces of ``piece`` bytes, with ``tick`` called before each, so the
engine's write timeout bounds each piece as it bounds each streamed chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import aiohttp.abc
import aiohttp.payload

from .._core.multipart_writer import BodyPart
from .bodies import READ_SIZE, Span, iter_part

__all__ = ["SendfilePayload"]

# How much of a file the kernel is asked to read ahead when it is opened; sendfile's own
# sequential read-ahead takes over from there.
_READ_AHEAD = 8 * 1024 * 1024


class SendfilePayload(aiohttp.payload.Payload):
    """A request body of bytes and whole files, the files sent with ``loop.sendfile``.

    Parameters
    ----------
    spans : sequence of bytes or BodyPart
        The body in order (see :meth:`FileBody.spans`).
    size : int
        The body's length (the request's Content-Length).
    tick : callable
        Called before each piece is sent.
    sent : callable
        Called once the whole body is sent, with the number of bytes ``sendfile`` sent.
    piece : int
        Largest number of bytes handed to one ``sendfile`` call.
    """

    def __init__(
        self,
        spans: Sequence[Span],
        size: int,
        tick: Callable[[], None],
        sent: Callable[[int], None],
        piece: int = READ_SIZE,
    ) -> None:
        super().__init__(spans, content_type=None)
        self._spans = spans
        self._size = size
        self._tick = tick
        self._sent = sent
        self._piece = piece
        #: Bytes of files that went through ``sendfile`` (the rest, if any, was read).
        self.sent_by_kernel = 0

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """Not text: a DICOM body has no string form."""
        raise TypeError("a request body of files has no text form")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        """Write the whole body to ``writer``'s connection."""
        native = True
        for span in self._spans:
            self._tick()
            if isinstance(span, bytes):
                await writer.write(span)
                continue
            if native:
                native = await self._send_file(writer, span)
            if not native:
                # Whatever sendfile did not send of this file (all of it, as it refuses
                # before the first byte) is read and written instead.
                await self._write_read(writer, span)
        self._sent(self.sent_by_kernel)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        """Write the whole body: its length is the request's own Content-Length."""
        await self.write(writer)

    async def _write_read(self, writer: aiohttp.abc.AbstractStreamWriter, part: BodyPart) -> None:
        async for chunk in iter_part(part, self._piece):
            await writer.write(chunk)
            self._tick()

    async def _send_file(self, writer: aiohttp.abc.AbstractStreamWriter, part: BodyPart) -> bool:
        """Send ``part``'s file with sendfile; False if sendfile cannot be used here."""
        loop = asyncio.get_running_loop()
        transport: Any = getattr(writer, "transport", None)
        sendfile = getattr(loop, "sendfile", None)
        if transport is None or sendfile is None or transport.get_extra_info("sslcontext"):
            return False
        if transport.is_closing():
            raise ConnectionResetError("the connection closed while the body was being sent")
        # The request line and headers may still wait to go out with the first write.
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()
        assert part.path is not None
        # Opening may wait on the disk (or a network file system): a worker thread does
        # it, and asks the kernel to start reading ahead, so sendfile finds the pages.
        file = await _open_in_thread(loop, part.path)
        try:
            if os.fstat(file.fileno()).st_size != part.size:
                raise _changed(part, os.fstat(file.fileno()).st_size)
            offset = 0
            while offset < part.size:
                if offset:
                    self._tick()
                count = min(self._piece, part.size - offset)
                try:
                    sent = await sendfile(transport, file, offset, count, fallback=False)
                except (asyncio.SendfileNotAvailableError, NotImplementedError):
                    if offset:
                        raise
                    return False
                if not sent:  # the file ended early
                    raise _changed(part, offset)
                offset += sent
                self.sent_by_kernel += sent
            # A file that grew while it was sent would not match what was announced.
            if os.fstat(file.fileno()).st_size != part.size:
                raise _changed(part, os.fstat(file.fileno()).st_size)
        finally:
            file.close()
        return True


async def _open_in_thread(loop: asyncio.AbstractEventLoop, path: Path) -> BinaryIO:
    opening = loop.run_in_executor(None, _open, path)
    try:
        # aiohttp cancels a body's writer with asyncio's own cancellation (a 401 that
        # arrives early, say), which no anyio scope holds back: the thread then still
        # opens the file, and this closes it.
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _open(path: Path) -> BinaryIO:
    file = open(path, "rb")  # noqa: SIM115 (closed by the caller, on the event loop)
    with contextlib.suppress(AttributeError, OSError):  # not every platform or file has it
        os.posix_fadvise(file.fileno(), 0, _READ_AHEAD, os.POSIX_FADV_WILLNEED)
    return file


def _changed(part: BodyPart, now: int) -> OSError:
    return OSError(f"{part.path} changed size while being uploaded ({part.size} -> {now})")
