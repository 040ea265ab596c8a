"""Redirects, over real loopback sockets: which are followed, with what, and what is said.

A small server answers every request with a redirect (or, under ``/moved``, with an empty
search result) and records what it received; the loopback DICOMweb server stands for
where a redirect leads on another port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dicomweb_async import AsyncDICOMwebClient, HTTPStatusError
from tests.loopback_server import LoopbackServer

ENGINES = ["aiohttp", "httpcore"]


@dataclass
class Hit:
    method: str
    target: str
    authorization: str | None


@dataclass
class Redirector:
    url: str = ""
    status: int = 301
    location: str = ""  # a prefix the request's target is appended to
    hits: list[Hit] = field(default_factory=list)


@contextlib.asynccontextmanager
async def redirector(status: int, location: str) -> AsyncIterator[Redirector]:
    state = Redirector(status=status, location=location)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
                }
                if int(headers.get("content-length", "0")):
                    await reader.readexactly(int(headers["content-length"]))
                state.hits.append(Hit(method, target, headers.get("authorization")))
                if target.startswith("/moved"):
                    reply = (
                        "HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
                        "Content-Length: 2\r\n\r\n[]"
                    )
                else:
                    reply = (
                        f"HTTP/1.1 {state.status} Moved\r\nLocation: {state.location}{target}\r\n"
                        "Content-Length: 0\r\n\r\n"
                    )
                writer.write(reply.encode("latin-1"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as server:
        yield server
        assert server.errors == []


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_searches_follow_a_redirect_without_the_credentials_to_another_port(
    target: LoopbackServer, engine: str, status: int, seed_files: list[Path]
) -> None:
    target.add_file(seed_files[0])
    async with (
        redirector(status, target.url) as moved,
        AsyncDICOMwebClient(moved.url, auth="secret-token", engine=engine) as client,  # type: ignore[arg-type]
    ):
        found = await client.search_for_studies()
    assert len(found) == 1
    assert moved.hits[0].authorization == "Bearer secret-token"
    (seen,) = [r for r in target.requests if r.method == "GET"]
    assert seen.header("Authorization") is None  # another origin: no credentials


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_redirect_within_the_origin_keeps_the_credentials(engine: str) -> None:
    async with redirector(308, "") as moved:
        moved.location = moved.url + "/moved"
        async with AsyncDICOMwebClient(moved.url, auth="secret-token", engine=engine) as client:  # type: ignore[arg-type]
            assert await client.search_for_studies() == []
    assert [h.target.split("?")[0] for h in moved.hits] == ["/studies", "/moved/studies"]
    assert all(h.authorization == "Bearer secret-token" for h in moved.hits)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_store_follows_307_and_308_with_its_body_but_not_301(
    target: LoopbackServer, engine: str, seed_files: list[Path]
) -> None:
    for status in (307, 308):
        async with (
            redirector(status, target.url) as moved,
            AsyncDICOMwebClient(moved.url, engine=engine) as client,  # type: ignore[arg-type]
        ):
            result = await client.store_instances(seed_files[:1])
        assert result.ok and len(result.stored) == 1
    assert len(target.registry()) == 1
    target.reset_stats()
    async with (
        redirector(301, target.url) as moved,
        AsyncDICOMwebClient(moved.url, engine=engine) as client,  # type: ignore[arg-type]
    ):
        with pytest.raises(HTTPStatusError) as raised:
            await client.store_instances(seed_files[1:2])
    assert raised.value.status_code == 301
    assert f"to {target.url}/studies" in str(raised.value)
    assert "re-sent only after 307 or 308" in str(raised.value)
    assert target.requests == []


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_redirect_to_another_host_is_not_followed_and_says_where(
    target: LoopbackServer, engine: str
) -> None:
    elsewhere = f"http://localhost:{target.port}"
    async with (
        redirector(301, elsewhere) as moved,
        AsyncDICOMwebClient(moved.url, auth="secret-token", engine=engine) as client,  # type: ignore[arg-type]
    ):
        with pytest.raises(HTTPStatusError) as raised:
            await client.search_for_studies()
    message = str(raised.value)
    assert f"to {elsewhere}/studies" in message and "another host" in message
    assert target.requests == []


async def test_redirects_end_after_five_hops() -> None:
    async with redirector(302, "") as moved:
        moved.location = moved.url  # to itself, forever
        async with AsyncDICOMwebClient(moved.url) as client:
            with pytest.raises(HTTPStatusError, match="too many redirects"):
                await client.search_for_studies()
    assert len(moved.hits) == 6
