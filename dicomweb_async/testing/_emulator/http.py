"""The emulator's two front ends: an in-process httpx transport and a loopback server.

The transport hands httpx's request stream to the emulator piece by piece and answers with
a streamed :class:`httpx.AsyncByteStream`; a dropped response raises ``httpx.ReadError``
in the middle of the body, as a broken connection would.

The server speaks HTTP/1.1 on 127.0.0.1 from its own event loop in a background thread
(so it serves asyncio, trio and synchronous clients alike): keep-alive, Content-Length and
chunked request bodies, and streamed answers with an exact Content-Length. It is written on
:func:`asyncio.start_server` directly; a web framework would cost more than the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import traceback
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType

import anyio
import httpx

from .app import EmulatorApp
from .wire import REASONS, ClientDisconnected, Request, Response

__all__ = ["EmulatorServer", "EmulatorTransport"]

_HOST = "127.0.0.1"
_IO_SIZE = 1024 * 1024
_MAX_HEAD = 64 * 1024
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_NO_BODY_STATUSES = frozenset({204, 304})


# ---- in-process ----------------------------------------------------------------------------


async def _request_body(
    stream: httpx.SyncByteStream | httpx.AsyncByteStream,
) -> AsyncIterator[bytes]:
    if isinstance(stream, httpx.AsyncByteStream):
        async for chunk in stream:
            if chunk:
                yield bytes(chunk)
    else:
        for chunk in stream:
            if chunk:
                yield bytes(chunk)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        self._source: AsyncGenerator[bytes | memoryview, None] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        cut = self._response.cut_after
        sent = 0
        self._source = source = self._response.iter_body()
        async for chunk in source:
            if cut is not None and sent + len(chunk) > cut:
                if cut > sent:
                    yield bytes(chunk[: cut - sent])
                raise httpx.ReadError(
                    "the emulator dropped the connection in the middle of the body",
                    request=self._request,
                )
            sent += len(chunk)
            yield bytes(chunk)

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()


class EmulatorTransport(httpx.AsyncBaseTransport):
    """An httpx transport answering from an emulator in the same process.

    Request bodies are read piece by piece as httpx produces them; answers stream.
    """

    def __init__(self, app: EmulatorApp) -> None:
        self._app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer one request."""
        url = request.url
        body = _request_body(request.stream)
        emulated = Request(
            method=request.method.upper(),
            path=url.raw_path.split(b"?", 1)[0].decode("ascii"),
            query=url.query.decode("ascii"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body=body,
            origin=f"{url.scheme}://{url.netloc.decode('ascii')}",
        )
        response = await self._app.handle(emulated)
        # Whatever the handler left unread is consumed, so the client's body stream (which
        # may hold open files) runs to its end as it would over a socket.
        async for _ in body:
            pass
        headers = list(response.headers)
        if response.status not in _NO_BODY_STATUSES:
            headers.append(("Content-Length", str(response.content_length)))
        return httpx.Response(
            response.status,
            headers=headers,
            stream=_ResponseStream(response, request),
            request=request,
        )


# ---- loopback server -----------------------------------------------------------------------


class _BadRequest(ClientDisconnected):
    """The request is malformed; inside a body this ends the exchange like a disconnect."""


class _Dropped(Exception):
    """The server cut a response short on purpose."""


class _Head:
    def __init__(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        while lines and not lines[0]:
            lines.pop(0)  # RFC 9112 lets a client send empty lines before a request
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        self.method, target, self.version = parts[0].upper(), parts[1], parts[2]
        self.path, _, self.query = target.partition("?")
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip() or line[0] in " \t":
                raise _BadRequest("malformed header line")
            self.headers.append((name, value.strip()))

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


class _Body:
    """A request body read from the socket, for Content-Length or chunked framing."""

    def __init__(self, reader: asyncio.StreamReader, head: _Head) -> None:
        self._reader = reader
        self._chunked = "chunked" in (head.get("Transfer-Encoding") or "").lower()
        length = head.get("Content-Length")
        self._remaining = 0
        if not self._chunked and length is not None:
            if not length.strip().isdigit():
                raise _BadRequest("invalid Content-Length")
            self._remaining = int(length)
        self._done = not self._chunked and self._remaining == 0

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read(_IO_SIZE)
        if not data:
            raise StopAsyncIteration
        return data

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes; ``b""`` once the body is complete."""
        if self._done:
            return b""
        if self._chunked and self._remaining == 0:
            await self._next_chunk()
            if self._done:
                return b""
        data = await self._reader.read(min(limit, self._remaining))
        if not data:
            raise ClientDisconnected("connection closed inside the request body")
        self._remaining -= len(data)
        if self._remaining == 0:
            if self._chunked:
                if await self._line() != b"\r\n":
                    raise _BadRequest("chunk not followed by CRLF")
            else:
                self._done = True
        return data

    async def _line(self) -> bytes:
        # Framing errors end the exchange; they are the client's fault, not the emulator's.
        try:
            return await self._reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise ClientDisconnected("connection closed inside the request body") from None
        except asyncio.LimitOverrunError:
            raise _BadRequest("chunk size or trailer line too long") from None

    async def drain(self) -> None:
        """Read and drop whatever the handler left unread."""
        while await self.read(_IO_SIZE):
            pass

    async def _next_chunk(self) -> None:
        line = await self._line()
        try:
            size = int(line[:-2].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest("invalid chunk size") from None
        if size == 0:
            while await self._line() != b"\r\n":
                pass  # trailer fields carry nothing the emulator uses
            self._done = True
        self._remaining = size


def _head_bytes(response: Response, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if response.status not in _NO_BODY_STATUSES:
        lines.append(f"Content-Length: {response.content_length}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Loopback:
    """An HTTP/1.1 server for ``app`` on its own event loop in a background thread."""

    def __init__(self, app: EmulatorApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name="azure-dicom-emulator", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("the emulator's loopback server did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have ended already
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(_STOP_TIMEOUT)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _main(self) -> None:
        try:
            server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=_MAX_HEAD
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except _BadRequest as exc:
            with contextlib.suppress(ConnectionError):
                await self._send(writer, Response(400, body=str(exc).encode()), False)
        except (ConnectionError, asyncio.IncompleteReadError, ClientDisconnected, _Dropped):
            pass  # the peer went away, or a fault cut the connection on purpose
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. asyncio's stream protocol reads the result of
            # the connection task, and a cancelled one would be reported as an error.
            pass
        except Exception:  # a bug: keep the traceback for the tests to see
            self.app.record_error(traceback.format_exc())
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # closed between requests
        except asyncio.LimitOverrunError:
            await self._send(writer, Response(431), False)
            return False
        head = _Head(raw)
        body = _Body(reader, head)
        if (head.get("Expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        host = head.get("Host") or f"{self.host}:{self.port}"
        request = Request(head.method, head.path, head.query, head.headers, body, f"http://{host}")
        response = await self.app.handle(request)
        await body.drain()
        connection = (head.get("Connection") or "").lower()
        keep_alive = head.version == "HTTP/1.1" and "close" not in connection
        await self._send(writer, response, keep_alive, head_only=head.method == "HEAD")
        return keep_alive

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        keep_alive: bool,
        *,
        head_only: bool = False,
    ) -> None:
        writer.write(_head_bytes(response, keep_alive))
        if head_only or response.status in _NO_BODY_STATUSES:
            await writer.drain()
            return
        cut = response.cut_after
        sent = 0
        async with contextlib.aclosing(response.iter_body()) as chunks:
            async for chunk in chunks:
                if cut is not None and sent + len(chunk) > cut:
                    if cut > sent:
                        writer.write(chunk[: cut - sent])
                    # close() sends what is buffered before the FIN; the client sees a body
                    # shorter than its Content-Length.
                    writer.close()
                    raise _Dropped
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
        await writer.drain()


class EmulatorServer:
    """An :class:`AzureDicomEmulator` listening on a loopback port.

    Returned by :meth:`AzureDicomEmulator.serve`. Use it as a context manager, plain or
    async; entering starts the server (in a background thread with its own event loop) and
    gives the base URL, leaving stops it::

        with emulator.serve() as url:  # e.g. "http://127.0.0.1:40123/v2"
            ...

    Attributes
    ----------
    api_version : int
        The version segment of :attr:`url`.
    partition : str or None
        The data partition named in :attr:`url`, if any.
    """

    def __init__(
        self,
        app: EmulatorApp,
        *,
        port: int = 0,
        api_version: int = 2,
        partition: str | None = None,
    ) -> None:
        self.api_version = api_version
        self.partition = partition
        self._app = app
        self._requested_port = port
        self._server: _Loopback | None = None

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return f"<EmulatorServer {state}>"

    @property
    def port(self) -> int:
        """The port the server listens on (chosen when it started)."""
        if self._server is None:
            raise RuntimeError("the emulator server is not running")
        return self._server.port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:{port}``."""
        return f"http://{_HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL to give a client, e.g. ``http://127.0.0.1:40123/v2``."""
        url = f"{self.origin}/v{self.api_version}"
        return f"{url}/partitions/{self.partition}" if self.partition else url

    def start(self) -> str:
        """Start listening (again, after :meth:`stop`); returns :attr:`url`."""
        if self._server is None:
            server = _Loopback(self._app, _HOST, self._requested_port)
            server.start()
            self._server = server
        return self.url

    def stop(self) -> None:
        """Stop the server and close its connections."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> str:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
