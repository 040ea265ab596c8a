"""An httpx transport that spreads requests over several small connection pools.

httpcore's connection pool re-examines every one of its connections (closed, expired,
idle, socket readable) each time any request starts or ends, so the CPU cost of one
request grows with the size of the pool. With dozens of connections in one pool that
bookkeeping took most of the client's CPU time and uploads at high concurrency ran slower
than at low concurrency. :class:`ShardedTransport` keeps the same total number of
connections but splits them over several independent pools of a few connections each, so
each request start and end only looks at its own small pool.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx

from .network import install_large_reads

__all__ = ["DEFAULT_SHARD_SIZE", "ShardedTransport"]

#: Connections per inner pool. Small enough that a pool's per-request scan stays cheap,
#: large enough that a typical client (16 connections) needs only two pools.
DEFAULT_SHARD_SIZE = 8


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its shard once when the response is finished.

    The request counts as in flight until its body is exhausted or closed, since until then
    the inner pool keeps the connection busy for it.
    """

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def _done(self) -> None:
        # Exhaustion, an error and aclose may each reach here, aclose possibly twice; only
        # the first may decrement, or the counts would drift below the real load.
        release, self._release = self._release, None
        if release is not None:
            release()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except GeneratorExit:
            # The reader stopped early: the connection stays busy until aclose.
            raise
        except BaseException:
            # httpcore has already given the connection back (or dropped it) on errors.
            self._done()
            raise
        self._done()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._done()


def _split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible, larger shares first."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


class ShardedTransport(httpx.AsyncBaseTransport):
    """Send requests through several ``httpx.AsyncHTTPTransport`` pools of a few connections.

    Each request goes to the pool with the fewest requests in flight (the first such pool
    on a tie). A request is in flight from the moment it is handed to this transport until
    its response body has been read to the end or closed, or until sending it failed.

    Parameters
    ----------
    verify : ssl.SSLContext, str or bool
        TLS verification, passed to every inner transport.
    limits : httpx.Limits
        Limits for the transport as a whole. ``max_connections`` is divided between the
        pools so that their sum equals it (the first pools take one more when it does not
        divide evenly); each pool keeps up to ``ceil(max_keepalive_connections / K)`` idle
        connections, at most its own connection limit. ``keepalive_expiry`` applies to
        every pool. Without a connection limit there is a single pool.
    shard_size : int
        Target number of connections per pool; the number of pools ``K`` is
        ``max(1, ceil(max_connections / shard_size))``.
    trust_env : bool
        Passed to every inner transport (certificate locations from the environment).
    large_reads : bool
        Whether every pool gets the large-read network backend of ``_network``.
    proxy : str, optional
        Send every request through this proxy.

    Raises
    ------
    ValueError
        If ``shard_size`` or ``limits.max_connections`` is below 1.
    """

    def __init__(
        self,
        *,
        verify: Any = True,
        limits: httpx.Limits,
        shard_size: int = DEFAULT_SHARD_SIZE,
        trust_env: bool = True,
        large_reads: bool = True,
        proxy: str | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        total = limits.max_connections
        if total is not None and total < 1:
            raise ValueError(f"max_connections must be at least 1, got {total}")
        shard_limits = self._shard_limits(limits, shard_size)
        self._shards = tuple(
            httpx.AsyncHTTPTransport(verify=verify, limits=each, trust_env=trust_env, proxy=proxy)
            for each in shard_limits
        )
        if large_reads:
            for shard in self._shards:
                install_large_reads(getattr(shard, "_pool", None))
        self._in_flight = [0] * len(self._shards)

    @staticmethod
    def _shard_limits(limits: httpx.Limits, shard_size: int) -> list[httpx.Limits]:
        total = limits.max_connections
        if total is None:
            return [limits]
        count = max(1, math.ceil(total / shard_size))
        keepalive = limits.max_keepalive_connections
        result = []
        for connections in _split(total, count):
            # Idle slots are split by rounding up: they bound only idle sockets, and a pool
            # without any would open a new connection for every request it is given.
            idle = None if keepalive is None else min(connections, math.ceil(keepalive / count))
            result.append(
                httpx.Limits(
                    max_connections=connections,
                    max_keepalive_connections=idle,
                    keepalive_expiry=limits.keepalive_expiry,
                )
            )
        return result

    @property
    def shards(self) -> Sequence[httpx.AsyncHTTPTransport]:
        """The inner transports, one per pool."""
        return self._shards

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight per pool (a copy)."""
        return list(self._in_flight)

    def _pick(self) -> int:
        counts = self._in_flight
        # A linear scan: there are few pools, and min() returns the first minimum on ties.
        return min(range(len(counts)), key=counts.__getitem__)

    def _releaser(self, index: int) -> Callable[[], None]:
        def release() -> None:
            self._in_flight[index] -= 1

        return release

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the least busy pool."""
        index = self._pick()
        # Counted before awaiting, so that requests started together spread over the pools
        # instead of all choosing the one that was least busy when they began.
        self._in_flight[index] += 1
        release = self._releaser(index)
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):  # httpx's transports never do this
            release()
            return response
        response.stream = _CountedStream(stream, release)
        return response

    async def aclose(self) -> None:
        """Close every pool, even if closing one of them fails."""
        failure: BaseException | None = None
        for shard in self._shards:
            try:
                await shard.aclose()
            except BaseException as exc:  # close the others before reporting it
                failure = failure or exc
        if failure is not None:
            raise failure
