"""Bearer-token authentication with one renewal after a 401."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator

import anyio
import httpx

__all__ = ["BearerAuth", "TokenAuth", "TokenProvider"]

logger = logging.getLogger("dicomweb_async")

#: An async callable returning a fresh access token.
TokenProvider = Callable[[], Awaitable[str]]


class TokenAuth(httpx.Auth):
    """``Authorization: Bearer`` from :meth:`token`, renewed once when the server answers 401.

    The request flow lives here, so that token sources above the transport (Azure AD)
    need not import httpx: they implement :meth:`token` and :meth:`renew`. The request
    body is replayed in full on the second attempt; a second 401 is returned as it is.
    """

    async def token(self) -> str:
        """The token to send with a request."""
        raise NotImplementedError

    async def renew(self, refused: str) -> str | None:
        """A token to replace ``refused``, or None to give the 401 back to the caller."""
        raise NotImplementedError

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError(f"{type(self).__name__} works with httpx.AsyncClient only")
        yield request  # pragma: no cover

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        renewed = await self.renew(token)
        if renewed is None:
            return
        # Only the method and path are logged: the query may carry patient attributes.
        logger.debug(
            "%s %s answered 401; sending it again with a new token",
            request.method,
            request.url.path,
        )
        request.headers["Authorization"] = f"Bearer {renewed}"
        yield request


class BearerAuth(TokenAuth):
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

    async def token(self) -> str:
        return await self._current()

    async def renew(self, refused: str) -> str | None:
        if self._provider is None:
            return None  # a fixed token would be refused again
        return await self._current(stale=refused)
