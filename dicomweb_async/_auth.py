"""Bearer-token authentication with refresh on 401."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator

import anyio
import httpx

__all__ = ["BearerAuth", "TokenProvider"]

#: An async callable returning a fresh access token.
TokenProvider = Callable[[], Awaitable[str]]


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` from a fixed token or an async token provider.

    With a provider, the token is fetched on first use and cached; a 401 answer fetches a
    new one once and sends the request again (the request body is replayed in full).
    Concurrent requests that meet the same expired token share one refresh.

    Parameters
    ----------
    token : str or async callable
        A token, or an async function returning one.
    """

    def __init__(self, token: str | TokenProvider):
        if isinstance(token, str):
            self._token: str | None = token
            self._provider: TokenProvider | None = None
        else:
            self._token = None
            self._provider = token
        self._lock: anyio.Lock | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        kind = "provider" if self._provider is not None else "static"
        return f"<BearerAuth {kind} token=***>"

    async def _current(self, stale: str | None = None) -> str:
        if self._provider is None:
            assert self._token is not None
            return self._token
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if self._token is None or self._token == stale:
                self._token = await self._provider()
                self.refreshes += 1
            return self._token

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("BearerAuth works with httpx.AsyncClient only")
        yield request  # pragma: no cover

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._current()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and self._provider is not None:
            token = await self._current(stale=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
