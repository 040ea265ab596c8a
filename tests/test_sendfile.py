"""Files of request bodies handed to the kernel (``sendfile``) on the aiohttp engine.

Over real loopback sockets: the bytes the server receives, the counter of bytes the kernel
sent, the read fallback (TLS, a loop without sendfile), files that change size, and a
server that stops reading the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dicomweb_async import AsyncDICOMwebClient, DICOMwebError, RetryPolicy, TimeoutError
from dicomweb_async._transport.aiohttp_engine import AiohttpTransport
from dicomweb_async._transport.engines import EngineTransport
from tests.loopback_server import LoopbackServer, write_instance_files
from tests.relay import Relay
from tests.test_streaming import tls_contexts

STUDY = "1.2.826.0.1.3680043.8.498.78"
MIB = 1024 * 1024


@pytest.fixture
def storing(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        yield srv
        assert srv.errors == []


def aiohttp_transport(client: AsyncDICOMwebClient) -> AiohttpTransport:
    engines = client.http_client._transport  # type: ignore[attr-defined]
    assert isinstance(engines, EngineTransport)
    transport = engines._aiohttp
    assert isinstance(transport, AiohttpTransport)
    return transport


def files(directory: Path, sizes: list[int]) -> list[Path]:
    paths: list[Path] = []
    for n, size in enumerate(sizes):
        paths += write_instance_files(directory / str(n), 1, size, study_uid=STUDY)
    return paths


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Sizes around the 1 MiB piece handed to one sendfile call.
SIZES = [4096, MIB - 2, MIB, MIB + 2, 3 * MIB + 6]


async def test_files_go_from_the_page_cache_to_the_socket_byte_for_byte(
    storing: LoopbackServer, tmp_path: Path
) -> None:
    paths = files(tmp_path / "in", SIZES)
    async with AsyncDICOMwebClient(storing.url, engine="aiohttp") as client:
        together = await client.store_instances(paths)  # one multipart request
        alone = [await client.store_instances([p], single_part=True) for p in paths[:2]]
        sent = aiohttp_transport(client).sent_by_kernel
    assert together.ok and all(r.ok for r in alone)
    assert sent == sum(SIZES) + SIZES[0] + SIZES[1]
    multipart, *single = storing.requests
    assert [(p.size, p.sha256) for p in multipart.parts] == [
        (path.stat().st_size, sha256(path.read_bytes())) for path in paths
    ]
    assert int(multipart.header("Content-Length") or -1) == multipart.body_size
    for record, path in zip(single, paths, strict=False):
        assert record.body_sha256 == sha256(path.read_bytes())
    for path in paths:
        stored = storing.get_instance(path.stem)
        assert stored is not None and stored.read_bytes() == path.read_bytes()


async def test_a_body_of_files_and_bytes_keeps_its_order(
    storing: LoopbackServer, tmp_path: Path
) -> None:
    [first, second] = files(tmp_path / "in", [MIB + 4, 70_000])
    [middle] = write_instance_files(tmp_path / "mem", 1, 5000, study_uid=STUDY)
    items: list[Any] = [first, middle.read_bytes(), second]
    async with AsyncDICOMwebClient(storing.url, engine="aiohttp") as client:
        assert (await client.store_instances(items)).ok
        assert aiohttp_transport(client).sent_by_kernel == MIB + 4 + 70_000
    [record] = storing.requests
    assert [p.sha256 for p in record.parts] == [
        sha256(first.read_bytes()),
        sha256(middle.read_bytes()),
        sha256(second.read_bytes()),
    ]


@pytest.mark.parametrize("refused_at", [0, MIB])
async def test_where_sendfile_refuses_a_file_the_rest_is_read_and_written(
    storing: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: int
) -> None:
    calls: list[int] = []
    real = os.sendfile

    def refusing(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(offset)
        if offset >= refused_at:
            raise OSError(errno.EINVAL, "not for this file")
        return real(out_fd, in_fd, offset, min(count, refused_at - offset))

    monkeypatch.setattr(os, "sendfile", refusing)
    paths = files(tmp_path / "in", [3 * MIB, 10_000])
    async with AsyncDICOMwebClient(storing.url, engine="aiohttp") as client:
        assert (await client.store_instances(paths)).ok
        assert aiohttp_transport(client).sent_by_kernel == refused_at
    # (asyncio's own sendfile, for a socket that is full, calls os.sendfile too.) Refused
    # once, at the first offset past refused_at; the rest of that file and the other file
    # are read.
    assert calls[-1] == refused_at and calls.count(refused_at) == 1
    [record] = storing.requests
    assert [p.sha256 for p in record.parts] == [sha256(p.read_bytes()) for p in paths]


async def test_over_tls_the_files_are_read(storing: LoopbackServer, tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    paths = files(tmp_path / "in", [2 * MIB])
    async with Relay(storing.port, ssl_context=server_context) as relay:
        url = f"https://127.0.0.1:{relay.port}"
        async with AsyncDICOMwebClient(url, verify=client_context, engine="aiohttp") as client:
            assert (await client.store_instances(paths)).ok
            assert aiohttp_transport(client).sent_by_kernel == 0
    stored = storing.get_instance(paths[0].stem)
    assert stored is not None and stored.read_bytes() == paths[0].read_bytes()


@pytest.mark.parametrize("change", [-MIB, -1, +1])
async def test_a_file_that_changed_size_fails_its_request(
    storing: LoopbackServer, tmp_path: Path, change: int
) -> None:
    [path] = files(tmp_path / "in", [2 * MIB])
    once = RetryPolicy(attempts=1)
    async with AsyncDICOMwebClient(storing.url, engine="aiohttp", retry=once) as client:
        # The body is planned with the file's size; the file changes before it is sent.
        real_spans = aiohttp_transport_spans()

        def changing(body: Any) -> Any:
            spans = real_spans(body)
            path.write_bytes(path.read_bytes()[: 2 * MIB + change] + b"x" * max(change, 0))
            return spans

        with patched_spans(changing), pytest.raises(DICOMwebError, match="changed size"):
            await client.store_instances([path])
    assert storing.registry() == {}


def aiohttp_transport_spans() -> Any:
    from dicomweb_async._transport.bodies import MultipartBody

    return MultipartBody.spans


@contextlib.contextmanager
def patched_spans(replacement: Any) -> Iterator[None]:
    from dicomweb_async._transport.bodies import MultipartBody

    real = MultipartBody.spans
    MultipartBody.spans = replacement  # type: ignore[method-assign]
    try:
        yield
    finally:
        MultipartBody.spans = real  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def deaf_server() -> AsyncIterator[str]:
    """A server that takes the request headers and then never reads again."""
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, limit=64 * 1024)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_a_server_that_stops_reading_the_body_times_out(engine: str, tmp_path: Path) -> None:
    # Larger than what the two sockets' buffers can hold between them.
    [path] = files(tmp_path / "in", [64 * MIB])
    timeout = httpx.Timeout(10.0, write=0.5)
    async with (
        deaf_server() as url,
        AsyncDICOMwebClient(
            url, engine=engine, timeout=timeout, retry=RetryPolicy(attempts=1)
        ) as client,  # type: ignore[arg-type]
    ):
        started = anyio.current_time()
        with anyio.fail_after(20), pytest.raises(TimeoutError):
            await client.store_instances([path])
        assert anyio.current_time() - started < 8.0
