"""An aiohttp request body whose files the kernel sends (``sendfile``), for plain HTTP.

Reading a file into Python and writing it to the socket costs a copy into a buffer, a copy
into the transport's buffer for whatever the socket did not take at once, and the memory
to hold both while many requests are in flight. ``sendfile(2)`` moves the pages straight
from the page cache to the socket: no buffers in the process, no worker-thread reads.

Each piece is first offered to the socket directly, without waiting, when the transport
has nothing buffered; what the socket cannot take yet goes through ``loop.sendfile``,
which waits until it can write. Over TLS, on a transport without a socket, or where
sendfile refuses the file, the rest of the file is read in pieces and written as usual.

A file is sent in pieces of ``piece`` bytes, with ``tick`` called before each, so the
engine's write timeout bounds each piece as it bounds each streamed chunk.
"""

from __future__ import annotations

import asyncio
import errno
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


class SendfilePayload(aiohttp.payload.Payload):
    """A request body of bytes and whole files, the files sent with ``sendfile(2)``.

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
        Largest number of bytes handed to one ``sendfile`` call (and read at once where
        sendfile cannot be used).
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
            done = await self._send_file(writer, span) if native else 0
            if done < span.size:
                # Whatever sendfile could not send (all of it, where it is not available)
                # is read and written instead.
                native = False
                await self._write_read(writer, span, done)
        self._sent(self.sent_by_kernel)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        """Write the whole body: its length is the request's own Content-Length."""
        await self.write(writer)

    async def _write_read(
        self, writer: aiohttp.abc.AbstractStreamWriter, part: BodyPart, start: int
    ) -> None:
        async for chunk in iter_part(part, self._piece, start):
            await writer.write(chunk)
            self._tick()

    async def _send_file(self, writer: aiohttp.abc.AbstractStreamWriter, part: BodyPart) -> int:
        """Send ``part``'s file with sendfile; return how far it got (short where it cannot)."""
        loop = asyncio.get_running_loop()
        transport: Any = getattr(writer, "transport", None)
        if transport is None or transport.get_extra_info("sslcontext") is not None:
            return 0
        sock = transport.get_extra_info("socket")
        if sock is None:
            return 0
        if transport.is_closing():
            raise ConnectionResetError("the connection closed while the body was being sent")
        # The request line and headers may still wait to go out with the first write.
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()
        assert part.path is not None
        # Opened here rather than in a worker thread: open(2) of a local file takes
        # microseconds, and the hand-off to a thread and back cost 0.25 ms of CPU and
        # about 3 ms of latency per request at concurrency 16 (loopback, 20 ms server
        # latency, 512 KiB files). sendfile reads the file in this thread in any case,
        # as asyncio's own loop.sendfile does.
        file = _open(part.path)
        try:
            if os.fstat(file.fileno()).st_size != part.size:
                raise _changed(part, os.fstat(file.fileno()).st_size)
            offset = 0
            while offset < part.size:
                if offset:
                    self._tick()
                count = min(self._piece, part.size - offset)
                sent = _send_now(transport, sock, file, offset, count)
                if sent == _UNAVAILABLE:
                    return offset
                if sent is None:
                    # The socket is full (or the transport still holds bytes to send):
                    # asyncio's sendfile waits until it can write, in order.
                    sent = await _send_when_writable(loop, transport, file, offset, count)
                    if sent is None:
                        return offset
                if not sent:  # the file ended early
                    raise _changed(part, offset)
                offset += sent
                self.sent_by_kernel += sent
            # A file that grew while it was sent would not match what was announced.
            if os.fstat(file.fileno()).st_size != part.size:
                raise _changed(part, os.fstat(file.fileno()).st_size)
        finally:
            file.close()
        return offset


# What sendfile answers for a file or socket it cannot take: the bytes are read instead.
_NOT_SUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK})
_UNAVAILABLE = -1


def _send_now(transport: Any, sock: Any, file: BinaryIO, offset: int, count: int) -> int | None:
    """One non-blocking ``sendfile`` straight to the socket.

    Returns the bytes sent, None if it would have to wait, or ``_UNAVAILABLE``.

    Only when the transport has nothing buffered, so the bytes go out in order. This is
    what ``loop.sendfile`` does too, less its bookkeeping: it pauses reading, waits for the
    buffer to drain and, even when one call sent everything, for the socket to become
    writable again before it returns, which held each request back by milliseconds.
    """
    if transport.get_write_buffer_size():
        return None
    try:
        return os.sendfile(sock.fileno(), file.fileno(), offset, count)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED:
            return _UNAVAILABLE
        raise


async def _send_when_writable(
    loop: asyncio.AbstractEventLoop, transport: Any, file: BinaryIO, offset: int, count: int
) -> int | None:
    """``loop.sendfile`` for one piece; None where the loop or transport cannot do it."""
    sendfile = getattr(loop, "sendfile", None)
    if sendfile is None:
        return None
    try:
        sent: int = await sendfile(transport, file, offset, count, fallback=False)
    except (asyncio.SendfileNotAvailableError, NotImplementedError):
        return None
    return sent


def _open(path: Path) -> BinaryIO:
    return open(path, "rb")


def _changed(part: BodyPart, now: int) -> OSError:
    return OSError(f"{part.path} changed size while being uploaded ({part.size} -> {now})")
