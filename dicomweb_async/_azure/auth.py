"""Microsoft Entra ID (Azure AD) tokens for the Azure DICOM service, via azure-identity.

azure-identity is an optional dependency (the ``azure`` extra). This module never imports
it, nor azure-core, at run time: it only calls ``get_token`` on the credential it is given,
so importing the package works without them installed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .._transport.auth import TokenAuth

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = ["AZURE_DICOM_AUDIENCE", "AZURE_DICOM_SCOPE", "AzureADAuth", "azure_scope"]

logger = logging.getLogger("dicomweb_async")

#: Token audience (resource) of the Azure Health Data Services DICOM service.
AZURE_DICOM_AUDIENCE = "https://dicom.healthcareapis.azure.com"


def azure_scope(audience: str = AZURE_DICOM_AUDIENCE) -> str:
    """The azure-identity scope that asks for a token for ``audience``.

    Parameters
    ----------
    audience : str
        The resource the token is for; the default is the Azure DICOM service.

    Returns
    -------
    str
        ``audience + "/.default"``. An audience ending in ``/`` keeps it, giving ``//.default``,
        which is what Entra ID expects for such application ID URIs.
    """
    return audience + "/.default"


#: Scope of tokens for the Azure DICOM service.
AZURE_DICOM_SCOPE = azure_scope()


class _CachedToken:
    """A token, its expiry and which fetch produced it; its repr hides the token."""

    __slots__ = ("expires_on", "generation", "value")

    def __init__(self, value: str, expires_on: float, generation: int):
        self.value = value
        self.expires_on = expires_on
        self.generation = generation

    def __repr__(self) -> str:
        return f"<token #{self.generation} expires_on={self.expires_on:.0f} value=***>"


class AzureADAuth(TokenAuth):
    """``Authorization: Bearer`` with tokens from an azure-identity credential.

    The token is fetched on first use, cached, and fetched again ``refresh_margin`` seconds
    before it expires. However many requests run at once, one ``get_token`` call is in
    flight at a time and the others wait for its result. A 401 answer fetches a new token
    (unless another request already did since this one got its token) and sends the
    request once more, replaying its body; a second 401 is returned as it is, which the
    client raises as :class:`~dicomweb_async.AuthenticationError`.

    Works with ``httpx.AsyncClient`` only. The token never appears in ``repr()``, in log
    messages or in exceptions raised here; exceptions from the credential itself propagate
    unchanged.

    Parameters
    ----------
    credential : azure-identity credential
        An async credential (``azure.identity.aio``, whose ``get_token`` is awaited) or a
        sync one (``azure.identity``, whose ``get_token`` runs in a worker thread so that it
        does not block the event loop). It is not closed here: close it where it was made.
        The async credentials of azure-identity need asyncio; on trio use a sync one.
    scope : str
        Scope passed to ``get_token``; the default is the Azure DICOM service's.
    refresh_margin : float
        Seconds before expiry at which the cached token is replaced.
    clock : callable
        Current time in seconds since the epoch, the scale of ``AccessToken.expires_on``.

    Examples
    --------
    >>> from azure.identity.aio import DefaultAzureCredential
    >>> async with DefaultAzureCredential() as credential:
    ...     auth = AzureADAuth(credential)
    ...     async with AsyncDICOMwebClient(url, auth=auth) as client:
    ...         studies = await client.search_for_studies()
    """

    def __init__(
        self,
        credential: AsyncTokenCredential | TokenCredential,
        *,
        scope: str = AZURE_DICOM_SCOPE,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ):
        get_token = getattr(credential, "get_token", None)
        if not callable(get_token):
            raise TypeError(
                f"credential must have a get_token method, got {type(credential).__name__}"
            )
        if not isinstance(scope, str) or not scope:
            raise ValueError("scope must be a non-empty string")
        if refresh_margin < 0:
            raise ValueError(f"refresh_margin must be >= 0, got {refresh_margin}")
        self._credential = credential
        self._get_token: Callable[..., Any] = get_token
        self._is_async = inspect.iscoroutinefunction(get_token)
        self.scope = scope
        self.refresh_margin = float(refresh_margin)
        self._clock = clock
        self._cached: _CachedToken | None = None
        self._generation = 0
        # Created on first use so that it belongs to the event loop that runs the requests.
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        kind = type(self._credential).__name__
        cached = "cached" if self._cached is not None else "none"
        return f"<AzureADAuth credential={kind} scope={self.scope!r} token={cached}>"

    @property
    def token_fetches(self) -> int:
        """How many tokens have been fetched from the credential so far."""
        return self._generation

    def _due(self, cached: _CachedToken) -> bool:
        return cached.expires_on - self.refresh_margin <= self._clock()

    async def _call_credential(self) -> object:
        if self._is_async:
            result: object = await self._get_token(self.scope)
        else:
            # A sync credential does network I/O (or runs a CLI); keep it off the event loop.
            result = await anyio.to_thread.run_sync(functools.partial(self._get_token, self.scope))
        # A get_token wrapped so that it no longer looks like a coroutine function still
        # returns an awaitable; awaiting it here makes such credentials work too.
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _fetch(self) -> _CachedToken:
        result = await self._call_credential()
        value = getattr(result, "token", None)
        expires_on = getattr(result, "expires_on", None)
        if not isinstance(value, str) or not value or not isinstance(expires_on, (int, float)):
            # Only the type is named: the value may be a token in some unexpected wrapper.
            raise TypeError(
                f"{type(self._credential).__name__}.get_token returned "
                f"{type(result).__name__}, not an AccessToken(token, expires_on)"
            )
        self._generation += 1
        self._cached = _CachedToken(value, float(expires_on), self._generation)
        logger.debug(
            "fetched access token #%d for %s, valid for %.0f s",
            self._generation,
            self.scope,
            expires_on - self._clock(),
        )
        return self._cached

    async def _token(self, stale: int | None = None) -> _CachedToken:
        """The token to send; a new one if the cached one is due, or is ``stale``.

        ``stale`` is the generation of a token the server refused.
        """
        cached = self._cached
        if stale is None and cached is not None and not self._due(cached):
            return cached  # the common case takes no lock
        seen = stale if stale is not None else (cached.generation if cached else 0)
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            cached = self._cached
            # A token fetched while this request waited for the lock is fresh enough: taking
            # it is what keeps a crowd of requests down to a single get_token call.
            if cached is not None and cached.generation != seen:
                return cached
            return await self._fetch()

    async def token(self) -> str:
        return (await self._token()).value

    async def renew(self, refused: str) -> str:
        cached = self._cached
        # A token other than the refused one is already cached: another request renewed it.
        stale = cached.generation if cached is not None and cached.value == refused else -1
        return (await self._token(stale=stale)).value
