"""What every method group of the client shares: construction, lifecycle and helpers."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from .._bulk.units import StudySources
from .._core.datasets import first_value
from .._core.media import MediaTypeSpec, accept_header
from .._core.profiles import ServerProfile, resolve_profile
from .._core.retry import RetryPolicy
from .._services import qido as _qido
from .._services import wado as _wado
from .._services.wado import ReaderLimits
from .._transport.auth import BearerAuth
from .._transport.engines import Engine, check_engine
from .._transport.parts import PartStream
from .._transport.transport import Transport, make_http_client

if TYPE_CHECKING:
    from .._azure.client import AzureDICOMwebClient

__all__ = ["DEFAULT_TIMEOUT", "AuthLike", "ClientBase", "JSONDict", "MediaTypes", "aiter_of"]

JSONDict = dict[str, Any]
MediaTypes = Sequence[MediaTypeSpec] | None

#: Accepted forms of ``auth``: an httpx auth, ``(user, password)`` for Basic, a bearer
#: token string, or an async callable that returns a bearer token.
AuthLike = httpx.Auth | tuple[str, str] | str | Callable[[], Awaitable[str]] | None

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

_Client = TypeVar("_Client", bound="ClientBase")


def _build_auth(auth: AuthLike) -> httpx.Auth | None:
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    if isinstance(auth, tuple):
        user, password = auth
        return httpx.BasicAuth(user, password)
    if isinstance(auth, str) or callable(auth):
        return BearerAuth(auth)
    raise TypeError(f"unsupported auth: {type(auth).__name__}")


async def aiter_of(source: AsyncIterator[Any]) -> AsyncGenerator[Any]:
    """``source`` as an async generator, which :class:`ClosingIterator` can close."""
    async for item in source:
        yield item


class ClientBase:
    """The connection, options and request helpers that the method groups share.

    The parameters are those of :class:`AsyncDICOMwebClient`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: AuthLike = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        verify: Any = True,
        http_client: httpx.AsyncClient | None = None,
        max_connections: int = 16,
        retry: RetryPolicy | None = None,
        large_reads: bool = True,
        reader_limits: ReaderLimits | None = None,
        original_on_406: bool = False,
        max_page_size: int | None = None,
        reject_implicit_vr: bool | None = None,
        engine: Engine = "auto",
        trust_env: bool = True,
        profile: str | ServerProfile | None = None,
    ):
        self.profile = resolve_profile(profile)
        self.base_url = base_url.rstrip("/")
        built_auth = _build_auth(auth)
        if http_client is None:
            client = make_http_client(
                auth=built_auth,
                headers=headers,
                timeout=timeout,
                verify=verify,
                max_connections=max_connections,
                large_reads=large_reads,
                engine=check_engine(engine),
                trust_env=trust_env,
            )
            owns = True
        else:
            client = http_client
            owns = False
            if built_auth is not None:
                client.auth = built_auth
            if headers:
                client.headers.update(headers)
        self._transport = Transport(
            self.base_url,
            client,
            owns_client=owns,
            retry=retry or RetryPolicy(),
            quote_multipart_type=self.profile.quote_multipart_type,
        )
        # Bulk transfers are more patient than single calls, unless told otherwise.
        self._bulk_retry = retry or RetryPolicy.for_bulk()
        self.max_connections: int | None = max_connections if owns else None
        self._limits = reader_limits or ReaderLimits()
        self.original_on_406 = original_on_406
        self.max_page_size = (
            max_page_size if max_page_size is not None else (self.profile.max_page_size)
        )
        self.reject_implicit_vr = (
            reject_implicit_vr
            if reject_implicit_vr is not None
            else self.profile.implicit_vr is False
        )

    @classmethod
    def for_azure(
        cls,
        service_url: str,
        credential: Any = None,
        *,
        api_version: str = "v2",
        partition: str | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> AzureDICOMwebClient:
        """A client for the Azure Health Data Services DICOM service.

        Parameters
        ----------
        service_url : str
            ``https://{workspace}-{service}.dicom.azurehealthcareapis.com``.
        credential : azure-identity credential, optional
            E.g. ``azure.identity.aio.DefaultAzureCredential()``; tokens for ``scope``
            are fetched, cached and refreshed by :class:`AzureADAuth`. Leave it out to
            pass ``auth=`` yourself (or none, for the offline emulator).
        api_version : str
            The version segment of every path (``v2``, or ``v1``).
        partition : str, optional
            A data partition: requests go to ``.../{api_version}/partitions/{name}``.
        scope : str, optional
            The token scope; by default that of the Azure DICOM service
            (``https://dicom.healthcareapis.azure.com/.default``).
        **kwargs
            Other :class:`AsyncDICOMwebClient` parameters. By default the client caps
            QIDO-RS pages at 200 (``max_page_size``) and refuses implicit VR files before
            upload (``reject_implicit_vr``), as the service requires.

        Returns
        -------
        AzureDICOMwebClient
            The standard client with the service's own APIs (change feed, operations,
            extended query tags, bulk update, export, partitions).
        """
        # Imported here, not at the top: the generic client loads no Azure module until
        # an Azure client is asked for.
        from .._azure.client import AzureDICOMwebClient

        return AzureDICOMwebClient.for_service(
            service_url,
            credential,
            api_version=api_version,
            partition=partition,
            scope=scope,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The underlying ``httpx.AsyncClient``."""
        return self._transport.client

    async def aclose(self) -> None:
        """Close the HTTP client, if this object created it."""
        await self._transport.aclose()

    async def __aenter__(self: _Client) -> _Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ shared helpers

    def _search_params(
        self,
        level: str,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        *,
        limit: int | None = None,
        **kwargs: Any,
    ) -> _qido.SearchParams:
        if kwargs.get("fields"):
            self.profile.refuse("includefield", "includefield (fields=...)")
        if kwargs.get("fuzzymatching"):
            self.profile.refuse("fuzzy_matching", "fuzzymatching=True")
        cap = self.max_page_size
        if cap is not None and (limit is None or limit > cap):
            # Azure answers 400 above 200; a smaller page and more of them gives the
            # caller the same results.
            limit = cap
        return _qido.SearchParams(
            level, study_instance_uid, series_instance_uid, limit=limit, **kwargs
        )

    def _fallback_accept(
        self, media_types: MediaTypes, default: MediaTypeSpec, multipart: bool = True
    ) -> str | None:
        if not self.original_on_406:
            return None
        specs = media_types or (default,)
        mimes = [spec[0] if isinstance(spec, tuple) else spec for spec in specs]
        return accept_header(
            [(mime, _wado.ANY_SYNTAX) for mime in dict.fromkeys(mimes)],
            default=default,
            multipart=multipart,
        )

    def _stream(
        self, path: str, media_types: MediaTypes, default: MediaTypeSpec
    ) -> AbstractAsyncContextManager[PartStream]:
        accept = accept_header(media_types, default=default, multipart=True)
        return _wado.open_parts(
            self._transport,
            path,
            accept,
            limits=self._limits,
            fallback_accept=self._fallback_accept(media_types, default),
        )

    async def _studies_matching(self, studies: StudySources | Mapping[str, Any]) -> StudySources:
        """``studies`` as they are, or, given QIDO-RS search filters, the UIDs they find."""
        if not isinstance(studies, Mapping):
            return studies
        params = self._search_params("studies", search_filters=studies)
        found = await _qido.search(self._transport, params, get_remaining=True)
        return list(
            dict.fromkeys(uid for uid in (first_value(s, "0020000D") for s in found) if uid)
        )

    def _check_request_bytes(self, max_request_bytes: int | None) -> None:
        largest = self.profile.max_request_bytes
        if max_request_bytes is not None and largest is not None and max_request_bytes > largest:
            raise ValueError(
                f"max_request_bytes={max_request_bytes} is more than the {self.profile.name!r} "
                f"server profile's largest request, {largest} bytes"
            )

    def _check_concurrency(self, concurrency: int) -> None:
        if self.max_connections is not None and concurrency > self.max_connections:
            raise ValueError(
                f"concurrency {concurrency} exceeds the connection pool ({self.max_connections}"
                " connections): create the client with max_connections >= concurrency"
            )
