"""The emulator's two front ends: an in-process httpx transport and a loopback server.

The transport hands httpx's request stream to the emulator piece by piece and answers with
a streamed :class:`httpx.AsyncByteStream`; a dropped response raises ``httpx.ReadError``
in the middle of the body, as a broken connection would.

The server speaks HTTP/1.1 on 127.0.0.1 from its own event loop in a background thread
(so it serves asyncio, trio and synchronous clients alike): keep-alive, Content-Length and
chunked request bodies, and streamed answers with an exact Content-Length. It is written on
:func:`asyncio.start_server` directly, with the request parsing and raw response writing of
:mod:`.._http_server`; a web framework would cost more than the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType

import anyio
import httpx

from .._http_server import (
    CONTINUE,
    BodyReader,
    BodyWriter,
    ClientGone,
    MalformedRequest,
    read_head,
    response_head,
    serve_connection,
)
from .app import EmulatorApp
from .wire import ClientDisconnected, Request, Response

__all__ = ["EmulatorServer", "EmulatorTransport"]

_HOST = "127.0.0.1"
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


class _BadBody(MalformedRequest, ClientDisconnected):
    """Broken framing inside a body: the handlers see a disconnect, the client a 400."""


class _Body(BodyReader):
    """A request body in the errors the emulator's handlers expect."""

    async def read(self, limit: int) -> bytes:
        try:
            return await super().read(limit)
        except MalformedRequest as exc:
            raise _BadBody(exc.status, exc.message) from None
        except ClientGone as exc:
            raise ClientDisconnected(str(exc)) from None


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
        exchange = functools.partial(self._exchange, reader, writer)
        await serve_connection(writer, exchange, on_bug=self.app.record_error, tasks=self._tasks)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await read_head(reader, _MAX_HEAD)
            if head is None:
                return False  # closed between requests
            body = _Body(reader, head)
            if head.expects_continue:
                writer.write(CONTINUE)
            host = head.get("Host") or f"{self.host}:{self.port}"
            origin = f"http://{host}"
            request = Request(head.method, head.path, head.query, head.headers, body, origin)
            response = await self.app.handle(request)
            await body.drain()
        except MalformedRequest as exc:
            with contextlib.suppress(ConnectionError):
                await self._send(writer, Response(exc.status, body=exc.message.encode()), False)
            return False
        except ClientDisconnected:
            return False
        keep_alive = head.keep_alive
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
        headers = list(response.headers)
        if response.status not in _NO_BODY_STATUSES:
            headers.append(("Content-Length", str(response.content_length)))
        headers.append(("Connection", "keep-alive" if keep_alive else "close"))
        writer.write(response_head(response.status, headers))
        if head_only or response.status in _NO_BODY_STATUSES:
            await writer.drain()
            return
        cut = response.cut_after
        # The emulator cuts only a body longer than the allowance; one that fits goes out
        # whole on a connection that stays open.
        if cut is not None and cut >= response.content_length:
            cut = None
        body = BodyWriter(writer, allowance=cut)
        await body.start()
        async with contextlib.aclosing(response.iter_body()) as chunks:
            async for chunk in chunks:
                await body.write(chunk)
        await body.finish()


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
