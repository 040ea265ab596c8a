"""A forward HTTP proxy on 127.0.0.1 for tests, run on the test's own asyncio event loop.

It takes absolute-form requests (``GET http://host:port/path``) and ``CONNECT host:port``
tunnels (for https). It connects to the upstream named by a connection's first request,
passes that request on in origin form and from then on pumps bytes both ways: later
requests on the connection reach the same upstream in absolute form, which servers accept
(the test servers do), so every request of one client connection must go to one upstream,
as they do in these tests. The first request line of each connection is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit


class Proxy:
    """Records ``(method, target, proxy_authorization)`` for each request it forwards."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
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
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ")
            auth = None
            for header in rest.decode("latin-1").split("\r\n"):
                name, _, value = header.partition(":")
                if name.strip().lower() == "proxy-authorization":
                    auth = value.strip()
            self.seen.append((method, target, auth))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, upstream = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                parts = urlsplit(target)
                up_reader, upstream = await asyncio.open_connection(
                    parts.hostname, parts.port or 80
                )
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream.write(f"{method} {path} {version}\r\n".encode("latin-1") + rest)
            await writer.drain()
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(256 * 1024):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.write_eof()
