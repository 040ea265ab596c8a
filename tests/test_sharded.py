"""ShardedTransport against the loopback server: limits, routing, in-flight bookkeeping.

The transport splits one connection limit over several small httpcore pools and sends each
request to the pool with the fewest requests in flight. These tests check over real sockets
that the total limit holds, that requests spread evenly, that the in-flight counts return
to zero however a response ends, and that every pool gets the large-read backend and is
closed with the transport.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AsyncExitStack

import anyio
import httpcore
import httpx
import pytest
import trio

from dicomweb_async._transport.sharded import ShardedTransport, _CountedStream
from tests.loopback_server import LoopbackServer

STUDY = "1.2.826.0.1.3680043.8.498.990777"
KIB = 1024


def limits(n: int) -> httpx.Limits:
    return httpx.Limits(max_connections=n, max_keepalive_connections=n)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def pool_limit(shard: httpx.AsyncHTTPTransport) -> int:
    value: int = shard._pool._max_connections
    return value


def pool_connections(shard: httpx.AsyncHTTPTransport) -> list[httpcore.AsyncConnectionInterface]:
    return list(shard._pool.connections)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


async def wait_for_server_in_flight(server: LoopbackServer, n: int) -> None:
    # Polled: the server runs on another thread, so there is no event to wait on, and
    # polling instead of sleeping a fixed time lets a slow machine be slow.
    with anyio.fail_after(30):
        while server.in_flight < n:  # noqa: ASYNC110
            await anyio.sleep(0.005)


# --------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize(
    ("total", "shard_size", "expected"),
    [
        (16, 8, [8, 8]),
        (64, 8, [8] * 8),
        (20, 8, [7, 7, 6]),
        (9, 8, [5, 4]),
        (8, 8, [8]),
        (3, 8, [3]),
        (1, 8, [1]),
        (16, 1, [1] * 16),
    ],
)
def test_connections_are_split_without_exceeding_the_total(
    total: int, shard_size: int, expected: list[int]
) -> None:
    transport = ShardedTransport(limits=limits(total), shard_size=shard_size)
    assert [pool_limit(shard) for shard in transport.shards] == expected
    assert transport.in_flight == [0] * len(expected)


def test_keepalive_slots_are_split_rounding_up() -> None:
    transport = ShardedTransport(
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=5, keepalive_expiry=3)
    )
    pools = [shard._pool for shard in transport.shards]
    assert [pool._max_keepalive_connections for pool in pools] == [2, 2, 2]
    assert [pool._keepalive_expiry for pool in pools] == [3, 3, 3]


def test_no_connection_limit_means_one_pool() -> None:
    transport = ShardedTransport(limits=httpx.Limits(max_connections=None))
    assert len(transport.shards) == 1


@pytest.mark.parametrize(("total", "shard_size"), [(0, 8), (16, 0)])
def test_bad_sizes_are_refused(total: int, shard_size: int) -> None:
    with pytest.raises(ValueError):
        ShardedTransport(limits=limits(total), shard_size=shard_size)


async def test_many_concurrent_requests_stay_within_the_total_limit(
    server: LoopbackServer,
) -> None:
    server.latency = 0.05
    transport = ShardedTransport(limits=limits(16))
    statuses: list[int] = []

    async def get(client: httpx.AsyncClient) -> None:
        response = await client.get(f"{server.url}/studies")
        statuses.append(response.status_code)

    async with httpx.AsyncClient(transport=transport) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(get, client)
        per_pool = [len(pool_connections(shard)) for shard in transport.shards]
        assert transport.in_flight == [0, 0]

    assert statuses == [200] * 64
    assert server.max_in_flight <= 16
    assert server.connections <= 16
    # Both pools carried requests, neither beyond its own share.
    assert all(1 <= n <= 8 for n in per_pool), per_pool
    assert server.errors == []


async def test_a_single_connection_works(server: LoopbackServer) -> None:
    server.latency = 0.01
    transport = ShardedTransport(limits=limits(1))
    assert len(transport.shards) == 1
    async with httpx.AsyncClient(transport=transport) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(client.get, f"{server.url}/studies")
        assert transport.in_flight == [0]
    assert server.max_in_flight == 1
    assert server.connections == 1


# --------------------------------------------------------------------------------------------
# Routing


async def test_requests_held_open_are_spread_evenly(server: LoopbackServer) -> None:
    server.latency = 0.5
    transport = ShardedTransport(limits=limits(16), shard_size=8)
    async with httpx.AsyncClient(transport=transport) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(client.get, f"{server.url}/studies")
            await wait_for_server_in_flight(server, 16)
            assert transport.in_flight == [8, 8]
        assert transport.in_flight == [0, 0]
    assert server.max_in_flight == 16


async def test_a_finished_response_frees_its_pool_for_the_next_request(
    server: LoopbackServer,
) -> None:
    transport = ShardedTransport(limits=limits(16), shard_size=4)
    async with httpx.AsyncClient(transport=transport) as client, AsyncExitStack() as stack:
        url = f"{server.url}/studies"
        opened = [await stack.enter_async_context(client.stream("GET", url)) for _ in range(6)]
        # Six requests over four pools: the first two pools take the extra ones.
        assert transport.in_flight == [2, 2, 1, 1]
        await opened[1].aclose()  # the second request went to the second pool
        assert transport.in_flight == [2, 1, 1, 1]
        await stack.enter_async_context(client.stream("GET", url))
        assert transport.in_flight == [2, 2, 1, 1]
        await stack.enter_async_context(client.stream("GET", url))
        assert transport.in_flight == [2, 2, 2, 1]
    assert transport.in_flight == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------------
# In-flight counts return to zero


async def test_counts_return_to_zero_after_streams_closed_unread(server: LoopbackServer) -> None:
    server.add_synthetic_study(STUDY, 4, 256 * KIB)
    transport = ShardedTransport(limits=limits(4), shard_size=2)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            async with client.stream("GET", f"{server.url}/studies/{STUDY}") as response:
                assert response.status_code == 200
                assert sum(transport.in_flight) == 1
        assert transport.in_flight == [0, 0]
        # The pools are still usable afterwards.
        assert (await client.get(f"{server.url}/studies")).status_code == 200
        assert transport.in_flight == [0, 0]


async def test_counts_return_to_zero_after_a_connection_error() -> None:
    transport = ShardedTransport(limits=limits(16))
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{closed_port()}/studies")
        assert transport.in_flight == [0, 0]


async def test_counts_return_to_zero_after_a_response_cut_short(server: LoopbackServer) -> None:
    server.add_synthetic_study(STUDY, 2, 512 * KIB)
    transport = ShardedTransport(limits=limits(16))
    async with httpx.AsyncClient(transport=transport) as client:
        server.drop_next_response_after(100 * KIB)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{server.url}/studies/{STUDY}")
        assert transport.in_flight == [0, 0]
        assert (await client.get(f"{server.url}/studies/{STUDY}")).status_code == 200
        assert transport.in_flight == [0, 0]


async def test_counts_return_to_zero_when_a_waiting_request_is_cancelled(
    server: LoopbackServer,
) -> None:
    server.latency = 30
    transport = ShardedTransport(limits=limits(16))
    async with httpx.AsyncClient(transport=transport) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, f"{server.url}/studies")
            await wait_for_server_in_flight(server, 1)
            assert transport.in_flight == [1, 0]
            tg.cancel_scope.cancel()
        assert transport.in_flight == [0, 0]


async def test_closing_a_response_twice_counts_once(server: LoopbackServer) -> None:
    transport = ShardedTransport(limits=limits(2))
    async with httpx.AsyncClient(transport=transport) as client:
        request = client.build_request("GET", f"{server.url}/studies")
        first = await transport.handle_async_request(request)
        second = await transport.handle_async_request(request)
        assert transport.in_flight == [2]
        await first.aclose()
        await first.aclose()
        assert transport.in_flight == [1]
        await second.aread()
        await second.aclose()
        assert transport.in_flight == [0]


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], fail: bool = False) -> None:
        self.chunks = chunks
        self.fail = fail
        self.closed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail:
            raise httpx.ReadError("cut")

    async def aclose(self) -> None:
        self.closed += 1


async def test_counted_stream_releases_once_on_exhaustion_then_close() -> None:
    releases: list[None] = []
    inner = _Chunks([b"a", b"b"])
    stream = _CountedStream(inner, lambda: releases.append(None))
    assert [chunk async for chunk in stream] == [b"a", b"b"]
    assert len(releases) == 1
    await stream.aclose()
    await stream.aclose()
    assert len(releases) == 1
    assert inner.closed == 2


async def test_counted_stream_releases_once_on_error_then_close() -> None:
    releases: list[None] = []
    stream = _CountedStream(_Chunks([b"a"], fail=True), lambda: releases.append(None))
    with pytest.raises(httpx.ReadError):
        async for _ in stream:
            pass
    assert len(releases) == 1
    await stream.aclose()
    assert len(releases) == 1


async def test_counted_stream_waits_for_close_when_reading_stops_early() -> None:
    releases: list[None] = []
    stream = _CountedStream(_Chunks([b"a", b"b", b"c"]), lambda: releases.append(None))
    iterator = stream.__aiter__()
    assert isinstance(iterator, AsyncGenerator)
    assert await iterator.__anext__() == b"a"
    await iterator.aclose()
    assert releases == []
    await stream.aclose()
    assert len(releases) == 1


# --------------------------------------------------------------------------------------------
# Large reads and closing


@pytest.mark.parametrize("large_reads", [True, False])
def test_every_pool_gets_the_large_read_backend(large_reads: bool) -> None:
    transport = ShardedTransport(limits=limits(64), large_reads=large_reads)
    assert len(transport.shards) == 8
    names = [type(shard._pool._network_backend).__name__ for shard in transport.shards]
    assert (names == ["LargeReadBackend"] * 8) is large_reads
    assert ("LargeReadBackend" in names) is large_reads


async def test_large_reads_deliver_whole_bodies(server: LoopbackServer) -> None:
    server.add_synthetic_study(STUDY, 3, 3 * 1024 * KIB)
    transport = ShardedTransport(limits=limits(16))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{server.url}/studies/{STUDY}")
    assert response.status_code == 200
    assert len(response.content) > 3 * 3 * 1024 * KIB


async def test_aclose_closes_every_pool(server: LoopbackServer) -> None:
    transport = ShardedTransport(limits=limits(16))
    client = httpx.AsyncClient(transport=transport)
    async with AsyncExitStack() as stack:
        url = f"{server.url}/studies"
        opened = [await stack.enter_async_context(client.stream("GET", url)) for _ in range(4)]
        for response in opened:
            await response.aread()  # read to the end, so the connections stay open
    connections = [pool_connections(shard) for shard in transport.shards]
    assert [len(each) for each in connections] == [2, 2]  # idle, kept alive
    await client.aclose()
    assert [pool_connections(shard) for shard in transport.shards] == [[], []]
    assert all(c.is_closed() for each in connections for c in each)


async def test_aclose_closes_the_other_pools_when_one_fails(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = ShardedTransport(limits=limits(24))
    calls: list[int] = []
    for index, shard in enumerate(transport.shards):
        original = shard.aclose

        async def aclose(index: int = index, original: object = original) -> None:
            calls.append(index)
            if index == 0:
                raise RuntimeError("boom")
            await original()  # type: ignore[operator]

        monkeypatch.setattr(shard, "aclose", aclose)
    with pytest.raises(RuntimeError, match="boom"):
        await transport.aclose()
    assert calls == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# trio


def test_runs_on_trio(server: LoopbackServer) -> None:
    server.latency = 0.02

    async def main() -> list[int]:
        transport = ShardedTransport(limits=limits(4), shard_size=2)
        statuses: list[int] = []

        async def get(client: httpx.AsyncClient) -> None:
            statuses.append((await client.get(f"{server.url}/studies")).status_code)

        async with httpx.AsyncClient(transport=transport) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(get, client)
            assert transport.in_flight == [0, 0]
        return statuses

    assert trio.run(main) == [200] * 12
    assert server.max_in_flight <= 4
