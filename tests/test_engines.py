"""The HTTP engines under the client: which one runs, proxies, TLS and errors on each.

Everything goes over real loopback sockets: the loopback DICOMweb server, a real forward
proxy (``tests/proxy.py``) and a TLS relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dicomweb_async import AsyncDICOMwebClient, TimeoutError, TransportError
from dicomweb_async._transport.engines import EngineTransport
from dicomweb_async._transport.proxies import ProxyRules
from tests.loopback_server import LoopbackServer, write_instance_files
from tests.proxy import Proxy
from tests.relay import Relay
from tests.test_streaming import served, tls_contexts

STUDY = "1.2.826.0.1.3680043.8.498.77"
MIB = 1024 * 1024
ENGINES = ["aiohttp", "httpcore"]
PROXY_VARIABLES = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def storing(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*PROXY_VARIABLES, "DICOMWEB_ASYNC_ENGINE"]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def engines_of(client: AsyncDICOMwebClient) -> EngineTransport:
    transport = client.http_client._transport  # type: ignore[attr-defined]
    assert isinstance(transport, EngineTransport)
    return transport


# -- which engine ------------------------------------------------------------------------------


async def test_auto_takes_aiohttp_on_asyncio(server: LoopbackServer) -> None:
    async with AsyncDICOMwebClient(server.url) as client:
        assert await client.search_for_studies() == []
        assert engines_of(client).chosen == "aiohttp"


async def test_the_environment_says_what_auto_means(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMWEB_ASYNC_ENGINE", "httpcore")
    async with AsyncDICOMwebClient(server.url) as client:
        await client.search_for_studies()
        assert engines_of(client).chosen == "httpcore"
    # An explicit engine wins over the environment.
    async with AsyncDICOMwebClient(server.url, engine="aiohttp") as client:
        await client.search_for_studies()
        assert engines_of(client).chosen == "aiohttp"


async def test_a_misspelt_engine_is_refused(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, aiohttp, httpcore"):
        AsyncDICOMwebClient(server.url, engine="curl")  # type: ignore[arg-type]
    monkeypatch.setenv("DICOMWEB_ASYNC_ENGINE", "requests")
    async with AsyncDICOMwebClient(server.url) as client:
        with pytest.raises(ValueError, match="'requests'"):
            await client.search_for_studies()


def test_trio_gets_httpcore_and_refuses_aiohttp(server: LoopbackServer) -> None:
    pytest.importorskip("trio")

    async def main() -> tuple[str | None, str]:
        async with AsyncDICOMwebClient(server.url) as client:
            await client.search_for_studies()
            chosen = engines_of(client).chosen
        async with AsyncDICOMwebClient(server.url, engine="aiohttp") as client:
            with pytest.raises(RuntimeError, match="asyncio only, not trio") as caught:
                await client.search_for_studies()
        return chosen, str(caught.value)

    chosen, message = anyio.run(main, backend="trio")
    assert chosen == "httpcore"
    assert "engine='httpcore'" in message


# -- proxies from the environment -------------------------------------------------------------


def test_proxy_rules_read_the_environment_as_httpx_does() -> None:
    rules = ProxyRules.from_env(
        {"https_proxy": "proxy.example:3128", "ALL_PROXY": "http://all:1", "NO_PROXY": ""}
    )
    assert rules.https == "http://proxy.example:3128"
    assert rules.http == "http://all:1"
    bypass = ProxyRules.from_env(
        {"HTTP_PROXY": "http://p:1", "no_proxy": "localhost, .internal,example.org,10.0.0.0/8"}
    )
    assert bypass.proxy_for("http", "localhost") is None
    assert bypass.proxy_for("http", "pacs.internal") is None
    assert bypass.proxy_for("http", "a.example.org") is None
    assert bypass.proxy_for("http", "example.org") is None
    assert bypass.proxy_for("http", "10.1.2.3") is None
    assert bypass.proxy_for("http", "badexample.org") == "http://p:1"
    assert bypass.proxy_for("http", "11.1.2.3") == "http://p:1"
    assert bypass.proxy_for("https", "anything") is None  # no HTTPS_PROXY, no ALL_PROXY
    assert not ProxyRules.from_env({"HTTP_PROXY": "http://p:1", "NO_PROXY": "*"})


async def _round_trip(url: str, server: LoopbackServer, tmp_path: Path, **kwargs: object) -> None:
    """Upload two instances, search, and download them byte for byte through ``url``."""
    study = f"{STUDY}.{len(server.registry()) + 1}"
    files = write_instance_files(tmp_path / "in", 2, 256 * 1024, study_uid=study)
    async with AsyncDICOMwebClient(url, **kwargs) as client:  # type: ignore[arg-type]
        result = await client.store_instances(files)
        assert len(result.stored) == 2
        assert len(await client.search_for_instances(study)) == 2
        saved = await client.download_study(study, tmp_path / "out")
    assert len(saved) == 2
    for item in saved:
        assert item.path.read_bytes() == served(server, item.sop_instance_uid)
    sent = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    assert {i.sha256 for i in server.instances(study)} == sent


@pytest.mark.parametrize("engine", ENGINES)
async def test_requests_go_through_the_proxy_in_the_environment(
    engine: str, storing: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        await _round_trip(storing.url, storing, tmp_path, engine=engine)
    methods = {method for method, _, _ in proxy.seen}
    assert methods <= {"GET", "POST"} and "POST" in methods
    assert all(target.startswith(storing.origin) for _, target, _ in proxy.seen)


@pytest.mark.parametrize("engine", ENGINES)
async def test_all_proxy_and_proxy_credentials(
    engine: str, server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        monkeypatch.setenv("ALL_PROXY", f"http://alice:s3cret@127.0.0.1:{proxy.port}")
        async with AsyncDICOMwebClient(server.url, engine=engine) as client:  # type: ignore[arg-type]
            await client.search_for_studies()
    assert proxy.seen
    for _, _, auth in proxy.seen:
        assert auth is not None and auth.startswith("Basic ")


@pytest.mark.parametrize("engine", ENGINES)
async def test_no_proxy_and_trust_env_false_go_directly(
    engine: str, storing: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        await _round_trip(storing.url, storing, tmp_path / "bypass", engine=engine)
        monkeypatch.delenv("NO_PROXY")
        await _round_trip(
            storing.url, storing, tmp_path / "untrusted", engine=engine, trust_env=False
        )
    assert proxy.seen == []


@pytest.mark.parametrize("engine", ENGINES)
async def test_https_goes_through_a_connect_tunnel(
    engine: str, server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    server.add_synthetic_study(STUDY, 2, 1 * MIB)
    async with Relay(server.port, ssl_context=server_context) as relay, Proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        url = f"https://127.0.0.1:{relay.port}"
        async with AsyncDICOMwebClient(url, verify=client_context, engine=engine) as client:  # type: ignore[arg-type]
            saved = await client.download_study(STUDY, tmp_path / "out")
    assert len(saved) == 2
    for item in saved:
        assert item.path.read_bytes() == served(server, item.sop_instance_uid)
    assert proxy.seen and {method for method, _, _ in proxy.seen} == {"CONNECT"}
    assert {target for _, target, _ in proxy.seen} == {f"127.0.0.1:{relay.port}"}


# -- TLS and errors on each engine ------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_tls_is_verified(engine: str, server: LoopbackServer, tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    server.add_synthetic_study(STUDY, 1, 64 * 1024)
    async with Relay(server.port, ssl_context=server_context) as relay:
        url = f"https://127.0.0.1:{relay.port}"
        # The system's CAs do not know the throwaway CA of the relay's certificate.
        async with AsyncDICOMwebClient(url, engine=engine) as client:  # type: ignore[arg-type]
            with pytest.raises(TransportError):
                await client.search_for_studies()
        async with AsyncDICOMwebClient(url, verify=client_context, engine=engine) as client:  # type: ignore[arg-type]
            assert len(await client.search_for_studies()) == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_tls_context_is_built_once_and_only_for_tls(
    engine: str, server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs.get("verify"))
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    server.add_synthetic_study(STUDY, 1, 64 * 1024)
    async with AsyncDICOMwebClient(server.url, engine=engine) as client:  # type: ignore[arg-type]
        for _ in range(2):
            assert len(await client.search_for_studies()) == 1
    # Plain HTTP on aiohttp never loads a CA bundle; httpcore's pools take one up front.
    assert made == ([] if engine == "aiohttp" else [True])
    made.clear()
    server_context, _ = tls_contexts(tmp_path)
    async with Relay(server.port, ssl_context=server_context) as relay:
        url = f"https://127.0.0.1:{relay.port}"
        async with AsyncDICOMwebClient(url, engine=engine, retry=None) as client:  # type: ignore[arg-type]
            for _ in range(2):  # verified (the relay's CA is unknown), with one context
                with pytest.raises(TransportError):
                    await client.search_for_studies()
    assert made == [True]


@pytest.mark.parametrize("engine", ENGINES)
async def test_refused_connections_and_read_timeouts(engine: str, server: LoopbackServer) -> None:
    with anyio.fail_after(30):
        closed = LoopbackServer()
        closed.start()
        url = closed.url
        closed.stop()
        async with AsyncDICOMwebClient(url, engine=engine, retry=None) as client:  # type: ignore[arg-type]
            with pytest.raises(TransportError) as refused:
                await client.search_for_studies()
        assert not isinstance(refused.value, TimeoutError)

        server.latency = 1.0
        timeout = httpx.Timeout(5.0, read=0.2)
        async with AsyncDICOMwebClient(server.url, engine=engine, timeout=timeout) as client:  # type: ignore[arg-type]
            with pytest.raises(TimeoutError, match="timed out"):
                await client.search_for_studies()


# -- cookies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_cookies_a_server_sets_are_sent_back(engine: str) -> None:
    # Load balancers in front of cloud services pin a client to one backend with a
    # cookie; the client's own jar skips responses without Set-Cookie, not the cookie.
    from aiohttp import web

    seen: list[str | None] = []

    async def studies(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response([], content_type="application/dicom+json")
        if len(seen) == 2:
            response.set_cookie("affinity", "backend-2")
        return response

    app = web.Application()
    app.router.add_get("/studies", studies)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with AsyncDICOMwebClient(f"http://127.0.0.1:{port}", engine=engine) as client:  # type: ignore[arg-type]
            for _ in range(4):
                assert await client.search_for_studies() == []
    finally:
        await runner.cleanup()
    assert seen == [None, None, "affinity=backend-2", "affinity=backend-2"]


# -- read timeouts inside a body ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def stalling_server(sent: bytes, length: int) -> AsyncIterator[str]:
    """A server whose answers send ``sent`` and 100 bytes of a ``length``-byte body, then stall."""
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        writer.write(head.encode("ascii") + sent)
        await writer.drain()
        # More after a pause shorter than the timeout: the body is under way, then stalls.
        await asyncio.sleep(0.1)
        writer.write(b" " * 100)
        await writer.drain()
        await release.wait()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_body_that_stalls_midway_times_out(engine: str) -> None:
    timeout = httpx.Timeout(5.0, read=0.3)
    async with (
        stalling_server(b"[" + b" " * 5000, 100_000) as url,
        AsyncDICOMwebClient(url, engine=engine, timeout=timeout, retry=None) as client,  # type: ignore[arg-type]
    ):
        started = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(TimeoutError, match="timed out"):
            await client.search_for_studies()
        assert anyio.current_time() - started < 5.0


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_consumer_slower_than_the_read_timeout_is_not_timed_out(
    engine: str, server: LoopbackServer
) -> None:
    sops = server.add_synthetic_study(STUDY, 4, 256 * 1024)
    timeout = httpx.Timeout(5.0, read=0.2)
    received = []
    async with (
        AsyncDICOMwebClient(server.url, engine=engine, timeout=timeout) as client,  # type: ignore[arg-type]
        client.stream_study(STUDY) as parts,
    ):
        async for part in parts:
            data = await part.read()
            received.append(data)
            await anyio.sleep(0.5)  # the whole rest of the body may be waiting meanwhile
    assert received == [served(server, sop) for sop in sops]


async def test_a_body_left_part_read_stops_its_read_timer(server: LoopbackServer) -> None:
    server.add_synthetic_study(STUDY, 8, 1 * MIB)
    timeout = httpx.Timeout(5.0, read=30.0)
    async with AsyncDICOMwebClient(server.url, engine="aiohttp", timeout=timeout) as client:
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)  # type: ignore[attr-defined]
        async with client.stream_study(STUDY) as parts:
            async for part in parts:
                async for _ in part.aiter_bytes():
                    break
                break
        # The response is closed; no timer of its body is left on the loop.
        pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert len(pending) <= before


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_pooled_connection_keeps_its_read_timeout(
    engine: str, server: LoopbackServer
) -> None:
    server.add_synthetic_study(STUDY, 1, 64 * 1024)
    timeout = httpx.Timeout(5.0, read=0.3)
    async with AsyncDICOMwebClient(
        server.url,
        engine=engine,
        timeout=timeout,
        retry=None,  # type: ignore[arg-type]
    ) as client:
        assert len(await client.search_for_studies()) == 1
        server.latency = 1.0  # the next answer, on the same connection, comes too late
        with anyio.fail_after(10), pytest.raises(TimeoutError, match="timed out"):
            await client.search_for_studies()
