"""An httpx transport that sends requests with aiohttp, for the client's own pool on asyncio.

httpx stays the interface (auth flows, timeouts, headers, the response object); aiohttp
moves the bytes. On this kind of workload it costs about a third of httpcore's CPU per
small request and reads large responses without httpcore's 64 KiB steps. aiohttp runs on
asyncio only, so the engine choice (``engines.py``) keeps trio on httpcore.

What httpx users expect is kept:

* aiohttp's errors become httpx's (connect, read and write timeouts, a connection closed
  early, proxy failures), which the transport layer then maps to the package's own;
* the write timeout bounds each wait for the next piece of a request body (aiohttp has
  none of its own); the last piece's send is covered by the read timeout instead;
* bodies are neither compressed nor decompressed here: httpx decodes
  ``Content-Encoding`` itself, as with its own transport;
* proxies come from :class:`~.proxies.ProxyRules`, as httpx reads them from the
  environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import anyio
import httpx
import yarl

from .bodies import FileBody
from .proxies import ProxyRules
from .sendfile_payload import SendfilePayload

__all__ = ["AiohttpTransport"]

#: aiohttp's buffer for each response: flow control pauses the socket above it.
READ_BUFFER = 1024 * 1024
_MAX_CACHED = 64


@contextmanager
def _mapped_errors(request: httpx.Request, *, reading: bool) -> Iterator[None]:
    """Re-raise aiohttp's exceptions as the httpx exceptions they correspond to."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError) as exc:
        raise httpx.ProxyError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise httpx.RemoteProtocolError(
            str(exc) or "the server closed the connection", request=request
        ) from exc
    except aiohttp.ClientResponseError as exc:  # a malformed status line or header
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:
        kind = httpx.ReadError if reading else httpx.WriteError
        message = str(exc) or type(exc).__name__
        # aiohttp words a failed body write in general terms and keeps the reason (a file
        # that changed size, a reset connection) as the cause.
        cause = exc.__cause__
        if cause is not None and str(cause) and str(cause) not in message:
            message = f"{message}: {cause}"
        raise kind(message, request=request) from exc


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """Take the bytes still buffered in ``content`` (a private deque of aiohttp's)."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    # The first piece may have been read in part already.
    offset = getattr(content, "_buffer_offset", 0)
    data = bytes(buffer[0])[offset:] + b"".join(bytes(piece) for piece in list(buffer)[1:])
    buffer.clear()
    content._buffer_offset = 0
    return data


class _ReadWatchdog:
    """The read timeout of a response body, on one timer rather than one per chunk.

    aiohttp re-arms its ``sock_read`` timer for every piece the socket delivers (a
    cancelled handle and a new one each time, about a tenth of a second of CPU per GiB
    read). Once the headers are in, the body's read timeout is kept here instead: the
    stream notes when it starts waiting for data and when the wait ends, and a single
    timer, re-armed at most once per timeout period, fails the body (through aiohttp's
    own ``set_exception``) if one wait lasts longer than ``timeout``. Time the consumer
    spends away from the stream is not counted, as with aiohttp, which stops its timer
    while flow control holds the socket.
    """

    __slots__ = ("_content", "_handle", "_loop", "_timeout", "waiting_since")

    def __init__(self, content: aiohttp.StreamReader, timeout: float) -> None:
        self._content = content
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        #: Loop time at which the current wait for data began; None while not waiting.
        self.waiting_since: float | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._check)

    def now(self) -> float:
        return self._loop.time()

    def _check(self) -> None:
        since = self.waiting_since
        if since is None:
            self._handle = self._loop.call_later(self._timeout, self._check)
            return
        waited = self._loop.time() - since
        if waited < self._timeout:
            self._handle = self._loop.call_later(self._timeout - waited, self._check)
            return
        self._handle = None
        self._content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data"))

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _take_read_timeout(response: aiohttp.ClientResponse, timeout: float | None) -> bool:
    """Stop aiohttp's per-chunk read timer for the body; True if it was stopped."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if timeout is None or protocol is None or not hasattr(protocol, "read_timeout"):
        return False
    # The handle aiohttp armed last still guards the wait for the next piece; the next
    # piece cancels it without arming another. A pooled connection gets its timeout
    # back with its next request.
    protocol.read_timeout = None
    return True


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives, in whatever pieces are buffered."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        read_timeout: float | None = None,
    ) -> None:
        self._response = response
        self._request = request
        self._read_timeout = read_timeout
        self._watchdog: _ReadWatchdog | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        timeout = self._read_timeout
        watchdog = None if timeout is None else _ReadWatchdog(content, timeout)
        self._watchdog = watchdog
        try:
            with _mapped_errors(self._request, reading=True):
                while True:
                    try:
                        if watchdog is None:
                            chunk = await content.readany()
                        else:
                            watchdog.waiting_since = watchdog.now()
                            chunk = await content.readany()
                            watchdog.waiting_since = None
                    except Exception:
                        # aiohttp raises a connection error before handing over bytes
                        # that arrived ahead of it; those are real data (a complete
                        # instance, say), so they are passed on first, as httpcore does.
                        left = _buffered(content)
                        if left:
                            yield left
                        raise
                    if not chunk:
                        return
                    yield chunk
        finally:
            if watchdog is not None:
                watchdog.stop()

    async def aclose(self) -> None:
        # A consumer that stopped reading part-way leaves the iterator suspended; its
        # timer goes with the response rather than when the iterator is collected.
        if self._watchdog is not None:
            self._watchdog.stop()
        # A body read to its end lets the connection go back to the pool; anything else
        # leaves unread bytes on it, so it is closed.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests with one ``aiohttp.ClientSession``, created on first use.

    Parameters
    ----------
    verify : bool, str, ssl.SSLContext or callable
        TLS verification, as in httpx (a CA bundle path, a context, or False), or a
        function returning the context or False. Unless given as a context or False,
        the context is made at the first request that needs TLS: loading a CA bundle
        takes tens of milliseconds, which plain HTTP never needs.
    limits : httpx.Limits
        ``max_connections`` bounds the connections open at once (None: no bound) and
        ``keepalive_expiry`` how long an idle one is kept.
    proxies : ProxyRules
        Where requests go through a proxy.
    """

    def __init__(
        self,
        *,
        verify: Any = True,
        limits: httpx.Limits,
        proxies: ProxyRules | None = None,
    ) -> None:
        #: Bytes of request bodies that went from files to sockets by ``sendfile``.
        self.sent_by_kernel = 0
        self._ssl: ssl.SSLContext | bool | None = None
        self._make_ssl: Callable[[], ssl.SSLContext | bool] | None = None
        if verify is False or isinstance(verify, ssl.SSLContext):
            self._ssl = verify
        elif callable(verify):
            self._make_ssl = verify
        else:
            self._make_ssl = functools.partial(httpx.create_ssl_context, verify=verify)
        self._limits = limits
        self._proxies = proxies or ProxyRules()
        self._session: aiohttp.ClientSession | None = None
        # Per-request values that repeat: worked out once each (a handful of entries).
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        self._routes: dict[str, tuple[yarl.URL, str | None]] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            limits = self._limits
            connector = aiohttp.TCPConnector(
                limit=limits.max_connections or 0,
                keepalive_timeout=limits.keepalive_expiry,
                # Each request also names its TLS context (_ssl_for), made when needed.
                ssl=True if self._ssl is None else self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # httpx decodes Content-Encoding itself, and its headers say what to accept.
                auto_decompress=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=READ_BUFFER,
                timeout=aiohttp.ClientTimeout(total=None),
                # The proxies are chosen here (ProxyRules), not read again by aiohttp.
                trust_env=False,
            )
        return self._session

    def _ssl_for(self, url: httpx.URL | yarl.URL, proxy: str | None) -> ssl.SSLContext | bool:
        """The TLS context of a request, made on the first request that needs one."""
        if self._ssl is None:
            assert self._make_ssl is not None
            if url.scheme != "https" and not (proxy or "").startswith("https:"):
                return True  # no TLS on this request: aiohttp does not look at it
            self._ssl = self._make_ssl()
        return self._ssl

    def _timeout(self, given: dict[str, Any]) -> aiohttp.ClientTimeout:
        connect, pool, read = given.get("connect"), given.get("pool"), given.get("read")
        key = (connect, pool, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # aiohttp's connect timeout covers waiting for a pooled connection and making
            # one.
            acquire = None if connect is None or pool is None else connect + pool
            timeout = aiohttp.ClientTimeout(
                total=None, connect=acquire, sock_connect=connect, sock_read=read
            )
            if len(self._timeouts) < _MAX_CACHED:
                self._timeouts[key] = timeout
        return timeout

    def _route(self, url: httpx.URL) -> tuple[yarl.URL, str | None]:
        """The URL as aiohttp takes it, and the proxy to go through, if any."""
        text = str(url)
        route = self._routes.get(text)
        if route is None:
            # httpx has encoded the URL already: aiohttp must not encode it again.
            route = (yarl.URL(text, encoded=True), self._proxies.proxy_for(url.scheme, url.host))
            if "?" not in text and len(self._routes) < _MAX_CACHED:
                self._routes[text] = route
        return route

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response with the body unread."""
        session = self._get_session()
        timeouts = request.extensions.get("timeout", {})
        write_timeout = timeouts.get("write")
        # The write timeout is kept by cancelling the send if the next piece of a streamed
        # body is not taken in time; a body sent in one piece needs none.
        watchdog: anyio.CancelScope | None = None
        stream = request.stream
        data: bytes | AsyncIterator[bytes] | SendfilePayload | None = None
        if isinstance(stream, httpx.ByteStream):
            data = b"".join(stream)
        elif isinstance(stream, FileBody):
            # A small body held in memory goes out in one write with the request headers,
            # with no per-piece timing to do.
            data = stream.in_memory()
        url, proxy = self._route(request.url)
        if data is None:
            assert isinstance(stream, httpx.AsyncByteStream)
            watchdog = anyio.CancelScope()

            def tick() -> None:
                assert watchdog is not None
                if write_timeout is not None:
                    watchdog.deadline = anyio.current_time() + write_timeout

            def sent(by_kernel: int = 0) -> None:
                # Waiting for the answer is the read timeout's business.
                assert watchdog is not None
                watchdog.deadline = math.inf
                self.sent_by_kernel += by_kernel

            length = request.headers.get("content-length")
            if isinstance(stream, FileBody) and url.scheme == "http" and length is not None:
                # Files on a plain connection go from the page cache to the socket.
                data = SendfilePayload(stream.spans(), int(length), tick, sent)
            else:

                async def body() -> AsyncIterator[bytes]:
                    async for chunk in stream:
                        tick()
                        yield chunk
                    sent()

                data = body()
        with _mapped_errors(request, reading=False), watchdog or contextlib.nullcontext():
            response = await session.request(
                request.method,
                url,
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                timeout=self._timeout(timeouts),
                proxy=proxy,
                ssl=self._ssl_for(url, proxy),
            )
        if watchdog is not None and watchdog.cancelled_caught:
            raise httpx.WriteTimeout("timed out sending the request body", request=request)
        read_timeout = request.extensions.get("timeout", {}).get("read")
        if not _take_read_timeout(response, read_timeout):
            read_timeout = None
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request, read_timeout),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
            request=request,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
