"""A TCP relay on 127.0.0.1 in front of a test server, run on the test's own event loop."""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType

KIB = 1024


class Relay:
    """Forwards every connection it accepts to ``upstream_port`` on 127.0.0.1.

    ``ssl_context`` makes it terminate TLS (the upstream speaks plain TCP). Responses are
    read and passed on ``piece`` bytes at a time; ``pause`` sleeps that long after each
    piece, stretching a download out so that a test can interrupt it mid-instance.
    ``hold_after`` forwards only that many bytes of each response and then stalls without
    closing, like a server that stops sending mid-body; ``held`` is set when it does.
    ``upload_pause`` does for requests what ``pause`` does for responses: a slow uplink.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        piece: int = 256 * KIB,
        pause: float = 0.0,
        hold_after: int | None = None,
        upload_pause: float = 0.0,
    ):
        self._upstream_port = upstream_port
        self._ssl = ssl_context
        self._piece = piece
        self._pause = pause
        self._hold_after = hold_after
        self._upload_pause = upload_pause
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.held = asyncio.Event()
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._closing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        # Aborted transports end every pump, so the handlers return on their own.
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 30)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        opened = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
            opened.append(up_writer)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, pause=self._upload_pause),
                self._pump(up_reader, writer, pause=self._pause, limit=self._hold_after),
                return_exceptions=True,
            )
        finally:
            for each in opened:
                self._writers.discard(each)
                each.close()  # flushes what is still buffered, then closes
            self._tasks.discard(task)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        target: asyncio.StreamWriter,
        *,
        pause: float = 0.0,
        limit: int | None = None,
    ) -> None:
        sent = 0
        try:
            while data := await source.read(self._piece):
                if limit is not None and sent + len(data) >= limit:
                    target.write(data[: limit - sent])
                    await target.drain()
                    self.held.set()
                    await self._closing.wait()  # stall, connection open, until the end
                    return
                target.write(data)
                await target.drain()
                sent += len(data)
                if pause:
                    await asyncio.sleep(pause)
        except OSError:  # ConnectionError and ssl.SSLError among them
            target.transport.abort()
            return
        # The sender finished: pass the end of its stream on.
        if target.can_write_eof():
            target.write_eof()
        else:
            target.close()
