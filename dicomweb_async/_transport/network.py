"""A network backend for httpcore that reads from sockets in large pieces.

httpcore asks its socket stream for 64 KiB per read. On a fast link a multi-gigabyte
download then costs tens of thousands of read calls and event-loop turns, which capped
downloads well below what the socket can deliver. This backend wraps httpcore's own
AnyIO backend and raises every read request to at least ``min_read`` bytes. It is installed
only in the connection pool of the client this package creates, so other httpx users in
the same process are unaffected.
"""

from __future__ import annotations

import select
import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore

__all__ = ["LargeReadBackend", "install_large_reads"]

DEFAULT_MIN_READ = 1024 * 1024

_SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _LargeReadStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, min_read: int):
        self._inner = inner
        self._min_read = min_read
        self._socket: typing.Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, self._min_read), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _LargeReadStream(inner, self._min_read)

    def get_extra_info(self, info: str) -> typing.Any:
        if info in ("socket", "is_readable"):
            # httpcore asks every pooled connection whether its socket became readable
            # (closed by the server) each time any request starts or ends. AnyIO answers
            # by rebuilding its whole attribute table, peer address lookups included, so
            # with many connections that dominated the client's CPU time. The socket
            # object does not change, so it is looked up once.
            if self._socket is None:
                self._socket = self._inner.get_extra_info("socket")
            if info == "socket":
                return self._socket
            return _is_readable(self._socket)
        return self._inner.get_extra_info(info)


def _is_readable(sock: socket.socket | None) -> bool:
    """Whether a socket has data or an end of stream waiting (or is gone)."""
    if sock is None or sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """Wrap another httpcore backend so that its streams read ``min_read`` bytes or more.

    Parameters
    ----------
    inner : httpcore.AsyncNetworkBackend, optional
        The backend to wrap; httpcore's AnyIO backend by default.
    min_read : int
        Smallest read size requested from the socket.
    """

    def __init__(
        self, inner: httpcore.AsyncNetworkBackend | None = None, min_read: int = DEFAULT_MIN_READ
    ):
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()
        self.min_read = min_read

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _LargeReadStream(stream, self.min_read)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self.inner.connect_unix_socket(path, timeout, socket_options)
        return _LargeReadStream(stream, self.min_read)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def install_large_reads(pool: object, min_read: int = DEFAULT_MIN_READ) -> bool:
    """Give an httpcore connection pool the large-read backend, before it connects.

    httpx builds its pool privately, so the pool's backend attribute is replaced once,
    right after construction. Returns False (and changes nothing) if the pool does not
    look like an httpcore pool of a known shape, so a future httpcore degrades to its
    default reads instead of breaking.
    """
    if not isinstance(pool, httpcore.AsyncConnectionPool):
        return False
    current = getattr(pool, "_network_backend", None)
    if not isinstance(current, httpcore.AsyncNetworkBackend):
        return False
    if isinstance(current, LargeReadBackend):
        return True
    pool._network_backend = LargeReadBackend(current, min_read)
    return True
