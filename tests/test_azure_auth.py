"""AzureADAuth: tokens from azure-identity credentials, cached, shared and refreshed.

The credentials here are fakes that count their ``get_token`` calls and return azure-core's
real ``AccessToken``; requests go to the loopback server over real sockets (a request body
sent twice after a 401 can only be checked there), except for a few checks of the auth flow
itself, which drive it by hand or through ``httpx.MockTransport``.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx
import pytest
import trio
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from dicomweb_async import AsyncDICOMwebClient, AuthenticationError, RetryPolicy
from dicomweb_async._azure.auth import AZURE_DICOM_SCOPE, AzureADAuth, azure_scope
from tests.loopback_server import LoopbackServer

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

STUDY = "1.2.826.0.1.3680043.8.498.770001"
NOW = 1_700_000_000.0
HOUR = 3600
NO_RETRY = RetryPolicy(attempts=1)


class FakeClock:
    """A settable replacement for ``time.time``."""

    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


class _FakeCredential:
    """Counts ``get_token`` calls and hands out numbered tokens.

    Token ``n`` (1-based) is ``f"{prefix}{n}"`` and expires ``lifetime`` seconds after
    ``clock()`` at the call. ``delay`` makes each call take that long, so that concurrent
    requests pile up behind it. ``error``, when set, is raised instead.
    """

    def __init__(
        self,
        *,
        prefix: str = "t",
        lifetime: float = HOUR,
        clock: Callable[[], float] = time.time,
        delay: float = 0.0,
        error: Exception | None = None,
    ):
        self.prefix = prefix
        self.lifetime = lifetime
        self.clock = clock
        self.delay = delay
        self.error = error
        self.calls: list[tuple[str, ...]] = []
        self.threads: list[int] = []

    def _next(self, scopes: tuple[str, ...]) -> AccessToken:
        self.calls.append(scopes)
        self.threads.append(threading.get_ident())
        if self.error is not None:
            raise self.error
        return AccessToken(f"{self.prefix}{len(self.calls)}", int(self.clock() + self.lifetime))


class AsyncCredential(_FakeCredential):
    """Like ``azure.identity.aio`` credentials: ``get_token`` is a coroutine function."""

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        if self.delay:
            await anyio.sleep(self.delay)
        return self._next(scopes)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> AsyncCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


class SyncCredential(_FakeCredential):
    """Like ``azure.identity`` credentials: ``get_token`` blocks and returns the token."""

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        if self.delay:
            threading.Event().wait(self.delay)
        return self._next(scopes)


class WrappedAsyncCredential(_FakeCredential):
    """An async credential whose ``get_token`` is a plain function returning a coroutine."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Coroutine[Any, Any, AccessToken]:
        return self._get_token(scopes)

    async def _get_token(self, scopes: tuple[str, ...]) -> AccessToken:
        return self._next(scopes)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        srv.add_synthetic_study(STUDY, 2, 4096)
        yield srv
        assert srv.errors == []


def accept_only(*tokens: str) -> Callable[[str | None], bool]:
    """A ``require_auth`` check that accepts exactly these bearer tokens."""
    allowed = {f"Bearer {token}" for token in tokens}
    return lambda value: value in allowed


def auth_headers(server: LoopbackServer) -> list[str | None]:
    return [record.header("Authorization") for record in server.requests]


def client_for(
    server: LoopbackServer, auth: AzureADAuth, max_connections: int = 16
) -> AsyncDICOMwebClient:
    return AsyncDICOMwebClient(
        server.url, auth=auth, retry=NO_RETRY, max_connections=max_connections
    )


# --------------------------------------------------------------------------------------------
# Scope, caching and refresh ahead of expiry


def test_azure_scope() -> None:
    assert azure_scope() == "https://dicom.healthcareapis.azure.com/.default"
    assert azure_scope() == AZURE_DICOM_SCOPE
    assert azure_scope("https://example.org/app") == "https://example.org/app/.default"


async def test_default_scope_is_passed_to_get_token(server: LoopbackServer) -> None:
    credential = AsyncCredential()
    async with client_for(server, AzureADAuth(credential)) as client:
        await client.search_for_studies()
    assert credential.calls == [("https://dicom.healthcareapis.azure.com/.default",)]
    assert auth_headers(server) == ["Bearer t1"]


async def test_custom_scope_is_passed_to_get_token(server: LoopbackServer) -> None:
    credential = AsyncCredential()
    auth = AzureADAuth(credential, scope="api://my-proxy/.default")
    async with client_for(server, auth) as client:
        await client.search_for_studies()
    assert credential.calls == [("api://my-proxy/.default",)]


async def test_token_is_cached_across_requests(server: LoopbackServer) -> None:
    credential = AsyncCredential()
    auth = AzureADAuth(credential)
    async with client_for(server, auth) as client:
        for _ in range(10):
            await client.search_for_studies()
    assert len(credential.calls) == 1
    assert auth.token_fetches == 1
    assert auth_headers(server) == ["Bearer t1"] * 10


async def test_token_is_refreshed_ahead_of_expiry(server: LoopbackServer) -> None:
    clock = FakeClock()
    credential = AsyncCredential(clock=clock, lifetime=HOUR)
    auth = AzureADAuth(credential, refresh_margin=300, clock=clock)
    expires = NOW + HOUR
    async with client_for(server, auth) as client:
        await client.search_for_studies()
        clock.now = expires - 301  # just outside the margin: keep the token
        await client.search_for_studies()
        clock.now = expires - 300  # inside the margin, though not expired: replace it
        await client.search_for_studies()
        await client.search_for_studies()
    assert len(credential.calls) == 2
    assert auth_headers(server) == ["Bearer t1", "Bearer t1", "Bearer t2", "Bearer t2"]


async def test_expired_token_is_replaced_with_zero_margin(server: LoopbackServer) -> None:
    clock = FakeClock()
    credential = AsyncCredential(clock=clock, lifetime=60)
    auth = AzureADAuth(credential, refresh_margin=0, clock=clock)
    async with client_for(server, auth) as client:
        await client.search_for_studies()
        clock.now += 59
        await client.search_for_studies()
        clock.now += 1
        await client.search_for_studies()
    assert auth_headers(server) == ["Bearer t1", "Bearer t1", "Bearer t2"]


async def test_100_concurrent_requests_make_one_get_token_call(server: LoopbackServer) -> None:
    # The slow credential keeps the first call in flight while the other 99 requests arrive.
    credential = AsyncCredential(delay=0.2)
    auth = AzureADAuth(credential)
    async with (
        client_for(server, auth, max_connections=100) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(100):
            tg.start_soon(client.search_for_studies)
    assert len(credential.calls) == 1
    assert auth_headers(server) == ["Bearer t1"] * 100


async def test_concurrent_requests_share_one_refresh_ahead_of_expiry(
    server: LoopbackServer,
) -> None:
    clock = FakeClock()
    credential = AsyncCredential(clock=clock, delay=0.1)
    auth = AzureADAuth(credential, clock=clock)
    async with client_for(server, auth, max_connections=50) as client:
        await client.search_for_studies()
        clock.now += HOUR  # expired: every request below finds the token due
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(client.search_for_studies)
    assert len(credential.calls) == 2
    assert auth_headers(server) == ["Bearer t1"] + ["Bearer t2"] * 50


# --------------------------------------------------------------------------------------------
# 401: one refresh, one resend


async def test_401_fetches_a_new_token_and_resends_once(server: LoopbackServer) -> None:
    server.require_auth(accept_only("t2"))
    credential = AsyncCredential()
    auth = AzureADAuth(credential)
    async with client_for(server, auth) as client:
        studies = await client.search_for_studies()
        await client.search_for_studies()
    assert len(studies) == 1
    assert len(credential.calls) == 2
    assert auth_headers(server) == ["Bearer t1", "Bearer t2", "Bearer t2"]
    assert [r.status for r in server.requests] == [401, 200, 200]


async def test_upload_body_is_replayed_in_full_after_401(
    server: LoopbackServer, seed_files: list[Path]
) -> None:
    server.require_auth(accept_only("t2"))
    credential = AsyncCredential()
    path = seed_files[0]
    async with client_for(server, AzureADAuth(credential)) as client:
        result = await client.store_instances([path])
    assert result.ok and len(result.stored) == 1
    first, second = server.requests
    assert (first.method, first.status, first.header("Authorization")) == (
        "POST",
        401,
        "Bearer t1",
    )
    assert (second.method, second.status, second.header("Authorization")) == (
        "POST",
        200,
        "Bearer t2",
    )
    full_size = int(second.header("Content-Length") or -1)
    assert first.body_size == second.body_size == full_size > path.stat().st_size
    assert first.body_sha256 == second.body_sha256 is not None
    file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert [part.sha256 for part in second.parts] == [file_digest]


async def test_100_concurrent_401s_make_one_extra_get_token_call(server: LoopbackServer) -> None:
    server.require_auth(accept_only("t2"))
    credential = AsyncCredential(delay=0.05)
    auth = AzureADAuth(credential)
    async with (
        client_for(server, auth, max_connections=100) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(100):
            tg.start_soon(client.search_for_studies)
    assert len(credential.calls) == 2
    seen = Counter((r.header("Authorization"), r.status) for r in server.requests)
    assert seen == {("Bearer t1", 401): 100, ("Bearer t2", 200): 100}


async def test_persistent_401_raises_after_one_resend(server: LoopbackServer) -> None:
    server.require_auth(lambda value: False)
    credential = AsyncCredential(prefix="eyJ-secret-")
    auth = AzureADAuth(credential)
    async with client_for(server, auth) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.search_for_studies()
    assert caught.value.status_code == 401
    assert len(credential.calls) == 2
    assert auth_headers(server) == ["Bearer eyJ-secret-1", "Bearer eyJ-secret-2"]
    assert "eyJ-secret-" not in str(caught.value)
    assert "eyJ-secret-" not in repr(caught.value)


async def test_401_does_not_refresh_a_token_another_request_already_replaced() -> None:
    # Two requests take token 1; the first one's 401 fetches token 2, and the second one's
    # 401, arriving later, must take token 2 rather than fetch token 3.
    credential = AsyncCredential()
    auth = AzureADAuth(credential)
    unauthorized = httpx.Response(401)
    flow_a = auth.async_auth_flow(httpx.Request("GET", "http://127.0.0.1/a"))
    flow_b = auth.async_auth_flow(httpx.Request("GET", "http://127.0.0.1/b"))
    request_a = await flow_a.__anext__()
    request_b = await flow_b.__anext__()
    assert request_a.headers["Authorization"] == request_b.headers["Authorization"] == "Bearer t1"
    assert (await flow_a.asend(unauthorized)).headers["Authorization"] == "Bearer t2"
    assert (await flow_b.asend(unauthorized)).headers["Authorization"] == "Bearer t2"
    assert len(credential.calls) == 2
    # Each flow resends once only: the answer to the resent request ends it.
    for flow in (flow_a, flow_b):
        with pytest.raises(StopAsyncIteration):
            await flow.asend(unauthorized)


async def test_other_error_statuses_do_not_refresh(server: LoopbackServer) -> None:
    server.fail_next(1, 403, retry_after=None)
    credential = AsyncCredential()
    async with client_for(server, AzureADAuth(credential)) as client:
        with pytest.raises(Exception) as caught:
            await client.search_for_studies()
    assert getattr(caught.value, "status_code", None) == 403
    assert len(credential.calls) == 1
    assert len(server.requests) == 1


# --------------------------------------------------------------------------------------------
# Kinds of credentials


async def test_sync_credential_runs_in_a_worker_thread(server: LoopbackServer) -> None:
    credential = SyncCredential(delay=0.05)
    auth = AzureADAuth(credential)
    async with (
        client_for(server, auth, max_connections=20) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(20):
            tg.start_soon(client.search_for_studies)
    assert credential.calls == [(AZURE_DICOM_SCOPE,)]
    assert credential.threads[0] != threading.get_ident()
    assert auth_headers(server) == ["Bearer t1"] * 20


def test_sync_credential_on_trio(server: LoopbackServer) -> None:
    server.require_auth(accept_only("t2"))
    credential = SyncCredential()
    auth = AzureADAuth(credential)

    async def main() -> None:
        trio.lowlevel.current_task()  # raises outside trio
        async with client_for(server, auth) as client:
            await client.search_for_studies()

    trio.run(main)
    assert len(credential.calls) == 2
    assert auth_headers(server) == ["Bearer t1", "Bearer t2"]


async def test_get_token_returning_an_awaitable_is_awaited(server: LoopbackServer) -> None:
    credential = WrappedAsyncCredential()
    auth = AzureADAuth(cast("AsyncTokenCredential", credential))
    async with client_for(server, auth) as client:
        await client.search_for_studies()
    assert auth_headers(server) == ["Bearer t1"]


@pytest.mark.parametrize("kind", [AsyncCredential, SyncCredential])
async def test_credential_errors_propagate_and_are_not_cached(
    kind: type[AsyncCredential | SyncCredential], server: LoopbackServer
) -> None:
    credential = kind(error=ClientAuthenticationError("no identity available"))
    auth = AzureADAuth(credential)
    async with client_for(server, auth) as client:
        with pytest.raises(ClientAuthenticationError, match="no identity available"):
            await client.search_for_studies()
        credential.error = None
        await client.search_for_studies()
    assert len(credential.calls) == 2
    assert auth_headers(server) == ["Bearer t2"]


async def test_get_token_returning_something_else_is_a_type_error() -> None:
    class Odd:
        async def get_token(self, *scopes: str) -> str:
            return "eyJ-secret-raw-string"

    auth = AzureADAuth(Odd())  # type: ignore[arg-type]
    flow = auth.async_auth_flow(httpx.Request("GET", "http://127.0.0.1/"))
    with pytest.raises(TypeError, match=r"Odd\.get_token returned str") as caught:
        await flow.__anext__()
    assert "eyJ-secret" not in str(caught.value)


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="get_token"):
        AzureADAuth(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        AzureADAuth(AsyncCredential(), scope="")
    with pytest.raises(ValueError, match="refresh_margin"):
        AzureADAuth(AsyncCredential(), refresh_margin=-1)


def test_sync_client_is_refused() -> None:
    credential = AsyncCredential()
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with (
        httpx.Client(auth=AzureADAuth(credential), transport=transport) as client,
        pytest.raises(RuntimeError, match="AsyncClient only"),
    ):
        client.get("http://127.0.0.1/")
    assert credential.calls == []


# --------------------------------------------------------------------------------------------
# The token stays secret


async def test_token_not_in_repr_logs_or_errors(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("dicomweb_async", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    server.require_auth(accept_only("eyJ-secret-2"))
    credential = AsyncCredential(prefix="eyJ-secret-")
    auth = AzureADAuth(credential)
    async with client_for(server, auth) as client:
        await client.search_for_studies()  # 401, refresh, resend
        server.require_auth(lambda value: False)
        with pytest.raises(AuthenticationError) as caught:
            await client.search_for_studies()
    assert len(credential.calls) == 3
    assert auth_headers(server)[-1] == "Bearer eyJ-secret-3"

    texts = [repr(auth), str(auth), repr(auth._cached), str(caught.value), repr(caught.value)]
    texts += [record.getMessage() for record in caplog.records]
    texts.append(caplog.text)
    for text in texts:
        assert "eyJ-secret" not in text
    # The check means something only if there were messages to leak into.
    loggers = {record.name for record in caplog.records}
    assert "dicomweb_async" in loggers
    assert "httpx" in loggers
    assert "cached" in repr(auth) and "credential=AsyncCredential" in repr(auth)


def test_importing_the_package_does_not_import_azure() -> None:
    code = (
        "import sys, dicomweb_async, dicomweb_async._azure.auth; "
        "print(sorted(m for m in sys.modules if m == 'azure' or m.startswith('azure.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
