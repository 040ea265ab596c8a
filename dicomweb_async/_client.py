"""The public client: a thin facade over the QIDO, WADO, STOW and DELETE services."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from . import _azure_admin, _changefeed, _operations, _qido, _stow, _wado
from . import _extended_query_tags as _eqt
from ._aiter import ClosingIterator
from ._auth import BearerAuth
from ._azure_admin import Partition
from ._azure_auth import AZURE_DICOM_SCOPE, AzureADAuth
from ._bulk_download import DownloadPipeline, DownloadReport, StudySources, run_download
from ._bulk_upload import Sources, UploadPipeline, UploadReport
from ._bulk_upload import store_folder as run_upload
from ._changefeed import ChangeFeed, ChangeFeedCursor, ChangeFeedEntry
from ._download import DownloadedInstance, save_parts
from ._exceptions import MethodNotAllowedError, ProtocolError
from ._extended_query_tags import ExtendedQueryTag, ExtendedQueryTagError, ExtendedQueryTagSpec
from ._journal import Journal
from ._media import MediaTypeSpec, accept_header
from ._multipart_writer import StoreItem
from ._operations import Operation, OperationState
from ._parts import PartStream
from ._progress import ProgressCallback
from ._retry import RetryPolicy
from ._store_result import StoreResult
from ._transport import Transport, make_http_client
from ._urls import check_partition, check_uid, instance_path, series_path, study_path
from ._wado import Frame, Metadata, ReaderLimits

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["AsyncDICOMwebClient", "AuthLike"]

JSONDict = dict[str, Any]

# Azure answers 400 to a QIDO-RS limit above this.
AZURE_MAX_PAGE_SIZE = 200
MediaTypes = Sequence[MediaTypeSpec] | None

#: Accepted forms of ``auth``: an httpx auth, ``(user, password)`` for Basic, a bearer
#: token string, or an async callable that returns a bearer token.
AuthLike = httpx.Auth | tuple[str, str] | str | Callable[[], Awaitable[str]] | None

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_RENDERED_DEFAULT: MediaTypeSpec = "image/jpeg"


def _build_auth(auth: AuthLike) -> httpx.Auth | None:
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    if isinstance(auth, tuple):
        user, password = auth
        return httpx.BasicAuth(user, password)
    if isinstance(auth, str) or callable(auth):
        return BearerAuth(auth)
    raise TypeError(f"unsupported auth: {type(auth).__name__}")


class AsyncDICOMwebClient:
    """Asyncio client for a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS, DELETE).

    Method names and parameters follow dicomweb-client's ``DICOMClient``; here they are
    awaited, and ``iter_*`` methods are async iterators. Downloads and uploads stream:
    files are sent from disk in pieces and responses are parsed as they arrive.

    Parameters
    ----------
    base_url : str
        Service root, e.g. ``http://127.0.0.1:8042/dicom-web`` or
        ``https://ws-svc.dicom.azurehealthcareapis.com/v2``.
    auth : httpx.Auth, (str, str), str or async callable, optional
        Basic credentials as a tuple, a bearer token, an async token provider (refreshed
        once on 401), or any ``httpx.Auth``.
    headers : mapping, optional
        Headers sent with every request.
    timeout : httpx.Timeout or float, optional
        Per-operation timeouts (connect, read, write, pool).
    verify : bool, str or ssl.SSLContext
        TLS verification, as in httpx.
    http_client : httpx.AsyncClient, optional
        Use this client instead of creating one; it is not closed by :meth:`aclose`.
    max_connections : int
        Size of the connection pool of the client created here.
    retry : RetryPolicy, optional
        When to retry transient failures (429, 502, 503, 504, dropped connections).
    large_reads : bool
        Read the socket in 1 MiB pieces instead of httpx's 64 KiB (faster downloads);
        applies only to the client created here.
    reader_limits : ReaderLimits, optional
        Limits on multipart responses (header size and count, number of parts).
    original_on_406 : bool
        When the server cannot produce a requested transfer syntax (406), ask once more
        for the stored one (``transfer-syntax=*``) instead of raising.
    max_page_size : int, optional
        Largest QIDO-RS ``limit`` the server accepts (Azure: 200); larger limits are
        lowered to it and paging continues where it stopped.
    reject_implicit_vr : bool
        Refuse, before upload, files in implicit VR little endian, which some servers
        (Azure) reject; ``store_folder`` can convert them instead.

    Examples
    --------
    >>> async with AsyncDICOMwebClient("http://127.0.0.1:8042/dicom-web") as client:
    ...     studies = await client.search_for_studies(search_filters={"PatientID": "ID1"})
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
        reject_implicit_vr: bool = False,
    ):
        self.base_url = base_url.rstrip("/")
        #: The versioned root of an Azure service (without a partition), for the routes
        #: that are not per partition; the base URL for other servers.
        self.service_root = self.base_url
        built_auth = _build_auth(auth)
        if http_client is None:
            client = make_http_client(
                auth=built_auth,
                headers=headers,
                timeout=timeout,
                verify=verify,
                max_connections=max_connections,
                large_reads=large_reads,
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
            self.base_url, client, owns_client=owns, retry=retry or RetryPolicy()
        )
        self.max_connections: int | None = max_connections if owns else None
        self._limits = reader_limits or ReaderLimits()
        self.original_on_406 = original_on_406
        self.max_page_size = max_page_size
        self.reject_implicit_vr = reject_implicit_vr

    @classmethod
    def for_azure(
        cls,
        service_url: str,
        credential: Any = None,
        *,
        api_version: str = "v2",
        partition: str | None = None,
        scope: str = AZURE_DICOM_SCOPE,
        **kwargs: Any,
    ) -> AsyncDICOMwebClient:
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
        scope : str
            The token scope.
        **kwargs
            Other :class:`AsyncDICOMwebClient` parameters. By default the client caps
            QIDO-RS pages at 200 (``max_page_size``) and refuses implicit VR files before
            upload (``reject_implicit_vr``), as the service requires.

        Returns
        -------
        AsyncDICOMwebClient
        """
        root = f"{service_url.rstrip('/')}/{api_version.strip('/')}"
        base = root
        if partition is not None:
            check_partition(partition)
            base = f"{root}/partitions/{partition}"
        if credential is not None:
            if kwargs.get("auth") is not None:
                raise ValueError("give either credential or auth, not both")
            kwargs["auth"] = AzureADAuth(credential, scope=scope)
        kwargs.setdefault("max_page_size", AZURE_MAX_PAGE_SIZE)
        kwargs.setdefault("reject_implicit_vr", True)
        client = cls(base, **kwargs)
        client.service_root = root
        return client

    def __repr__(self) -> str:
        return f"<AsyncDICOMwebClient {self.base_url}>"

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The underlying ``httpx.AsyncClient``."""
        return self._transport.client

    async def aclose(self) -> None:
        """Close the HTTP client, if this object created it."""
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncDICOMwebClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ QIDO-RS

    async def search_for_studies(
        self,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[JSONDict]:
        """Search for studies (``GET /studies``).

        Parameters
        ----------
        fuzzymatching : bool, optional
            Ask the server for fuzzy matching of person names.
        limit, offset : int, optional
            Paging.
        fields : sequence of str, optional
            Extra attributes to include (``includefield``), or ``["all"]``.
        search_filters : mapping, optional
            Attribute keyword or tag to value, e.g. ``{"PatientName": "Anony*"}``.
            Wildcards ``*`` and ``?`` are sent literally.
        get_remaining : bool
            Fetch further pages until the server has no more.

        Returns
        -------
        list of dict
            DICOM JSON datasets.
        """
        params = self._search_params(
            "studies",
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            fields=fields,
            search_filters=search_filters,
        )
        return await _qido.search(self._transport, params, get_remaining=get_remaining)

    async def search_for_series(
        self,
        study_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[JSONDict]:
        """Search for series (``GET /series`` or ``/studies/{study}/series``).

        Parameters are those of :meth:`search_for_studies`, plus ``study_instance_uid``.
        """
        params = self._search_params(
            "series",
            study_instance_uid,
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            fields=fields,
            search_filters=search_filters,
        )
        return await _qido.search(self._transport, params, get_remaining=get_remaining)

    async def search_for_instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[JSONDict]:
        """Search for instances (``/instances``, ``/studies/{s}/instances`` or
        ``/studies/{s}/series/{se}/instances``).

        Parameters are those of :meth:`search_for_studies`, plus the UIDs that narrow
        the route.
        """
        params = self._search_params(
            "instances",
            study_instance_uid,
            series_instance_uid,
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            fields=fields,
            search_filters=search_filters,
        )
        return await _qido.search(self._transport, params, get_remaining=get_remaining)

    def _iter_search(self, params: _qido.SearchParams) -> ClosingIterator[JSONDict]:
        return ClosingIterator(lambda: _gen(_qido.iter_search(self._transport, params)))

    def iter_search_for_studies(
        self,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ) -> ClosingIterator[JSONDict]:
        """Iterate over every matching study, fetching pages of ``limit`` as needed.

        Paging stops at an empty page (or 204) or a page shorter than ``limit``; an entry
        that a later page repeats is yielded once.
        """
        return self._iter_search(
            self._search_params(
                "studies",
                fuzzymatching=fuzzymatching,
                limit=limit,
                offset=offset,
                fields=fields,
                search_filters=search_filters,
            )
        )

    def iter_search_for_series(
        self,
        study_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ) -> ClosingIterator[JSONDict]:
        """Iterate over every matching series (see :meth:`iter_search_for_studies`)."""
        return self._iter_search(
            self._search_params(
                "series",
                study_instance_uid,
                fuzzymatching=fuzzymatching,
                limit=limit,
                offset=offset,
                fields=fields,
                search_filters=search_filters,
            )
        )

    def iter_search_for_instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ) -> ClosingIterator[JSONDict]:
        """Iterate over every matching instance (see :meth:`iter_search_for_studies`)."""
        return self._iter_search(
            self._search_params(
                "instances",
                study_instance_uid,
                series_instance_uid,
                fuzzymatching=fuzzymatching,
                limit=limit,
                offset=offset,
                fields=fields,
                search_filters=search_filters,
            )
        )

    # ------------------------------------------------------------------ WADO-RS: streams

    def _search_params(
        self,
        level: str,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        *,
        limit: int | None = None,
        **kwargs: Any,
    ) -> _qido.SearchParams:
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

    def stream_study(
        self, study_instance_uid: str, media_types: MediaTypes = None
    ) -> AbstractAsyncContextManager[PartStream]:
        """Open a study's instances as a stream of parts.

        Use as ``async with client.stream_study(uid) as parts: async for part in parts:``;
        each part's bytes arrive through ``part.aiter_bytes()``. The connection is held
        until the block is left.

        Parameters
        ----------
        study_instance_uid : str
        media_types : sequence of str or (str, str), optional
            Acceptable media types and transfer syntaxes; by default the stored encoding
            (``application/dicom`` with ``transfer-syntax=*``).
        """
        return self._stream(
            study_path(study_instance_uid), media_types, _wado.DEFAULT_INSTANCE_TYPE
        )

    def stream_series(
        self, study_instance_uid: str, series_instance_uid: str, media_types: MediaTypes = None
    ) -> AbstractAsyncContextManager[PartStream]:
        """Open a series' instances as a stream of parts (see :meth:`stream_study`)."""
        return self._stream(
            series_path(study_instance_uid, series_instance_uid),
            media_types,
            _wado.DEFAULT_INSTANCE_TYPE,
        )

    def stream_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
    ) -> AbstractAsyncContextManager[PartStream]:
        """Open one instance as a stream of parts (see :meth:`stream_study`)."""
        return self._stream(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            media_types,
            _wado.DEFAULT_INSTANCE_TYPE,
        )

    async def _download(
        self,
        stream: AbstractAsyncContextManager[PartStream],
        directory: str | os.PathLike[str],
        study: str,
        series: str | None,
    ) -> list[DownloadedInstance]:
        root = Path(directory)
        await anyio.Path(root).mkdir(parents=True, exist_ok=True)
        async with stream as parts:
            return await save_parts(
                parts, root, study_instance_uid=study, series_instance_uid=series
            )

    async def download_study(
        self,
        study_instance_uid: str,
        directory: str | os.PathLike[str],
        media_types: MediaTypes = None,
        *,
        concurrency: int = 1,
    ) -> list[DownloadedInstance]:
        """Write every instance of a study to ``directory/<study>/<series>/<sop>.dcm``.

        Instances are written as they stream in, each through a temporary name renamed
        once complete; memory use does not grow with the study's size. If the response
        breaks off, the instances completed so far stay on disk, no partial file is
        left, and the error is raised.

        Parameters
        ----------
        study_instance_uid : str
        directory : path
        media_types : sequence, optional
            Acceptable media types and transfer syntaxes (default: stored encoding).
        concurrency : int
            1 fetches the study in one request. More lists the study's instances with
            QIDO-RS and fetches its series (or single instances) in parallel; see
            :meth:`download_studies` for skipping files already on disk.

        Returns
        -------
        list of DownloadedInstance
        """
        if concurrency > 1:
            return await self._download_parallel(
                study_instance_uid, None, directory, media_types, concurrency
            )
        return await self._download(
            self.stream_study(study_instance_uid, media_types),
            directory,
            study_instance_uid,
            None,
        )

    async def download_series(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        directory: str | os.PathLike[str],
        media_types: MediaTypes = None,
        *,
        concurrency: int = 1,
    ) -> list[DownloadedInstance]:
        """Write every instance of a series to disk (see :meth:`download_study`).

        With ``concurrency`` above 1 the series' instances are fetched one per request,
        that many at a time.
        """
        if concurrency > 1:
            return await self._download_parallel(
                study_instance_uid, series_instance_uid, directory, media_types, concurrency
            )
        return await self._download(
            self.stream_series(study_instance_uid, series_instance_uid, media_types),
            directory,
            study_instance_uid,
            series_instance_uid,
        )

    async def _download_parallel(
        self,
        study: str,
        series: str | None,
        directory: str | os.PathLike[str],
        media_types: MediaTypes,
        concurrency: int,
    ) -> list[DownloadedInstance]:
        self._check_concurrency(concurrency)
        pipeline = DownloadPipeline(
            self._transport,
            self._limits,
            study,
            directory,
            concurrency=concurrency,
            skip_existing=False,
            series=series,
            media_types=media_types,
            split_series=series is not None,
        )
        report = (await run_download(pipeline)).raise_for_failures()
        return [
            DownloadedInstance(
                o.path,
                o.study_instance_uid,
                o.series_instance_uid or "",
                o.sop_instance_uid or "",
                o.size,
                None,
            )
            for o in report.downloaded
            if o.path is not None
        ]

    def download_pipeline(
        self,
        studies: StudySources,
        directory: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        skip_existing: bool = True,
        progress: ProgressCallback | None = None,
        media_types: MediaTypes = None,
    ) -> DownloadPipeline:
        """Download studies as they come; iterate per-instance outcomes as they complete.

        Use as ``async with client.download_pipeline(uids, "out/") as outcomes: async for
        o in outcomes: ...``; ``studies`` may be an async iterable fed by an earlier
        pipeline stage. Parameters are those of :meth:`download_studies`.
        """
        self._check_concurrency(concurrency)
        return DownloadPipeline(
            self._transport,
            self._limits,
            studies,
            directory,
            concurrency=concurrency,
            skip_existing=skip_existing,
            progress=progress,
            media_types=media_types,
        )

    async def download_studies(
        self,
        studies: StudySources | Mapping[str, Any],
        directory: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        skip_existing: bool = True,
        progress: ProgressCallback | None = None,
        media_types: MediaTypes = None,
    ) -> DownloadReport:
        """Download many studies to ``directory/<study>/<series>/<sop>.dcm``.

        Parameters
        ----------
        studies : str, iterable of str, async iterable of str, or mapping
            Study Instance UIDs, or QIDO-RS search filters (a mapping such as
            ``{"PatientID": "ID1"}``) whose matching studies are downloaded.
        directory : path
        concurrency : int
            Requests in flight at once (series, or single instances, in parallel).
        skip_existing : bool
            Files appear under their final names only once complete, so the directory
            is its own journal: a re-run skips instances already on disk.
        progress : callable, optional
            Called with :class:`Progress` events.
        media_types : sequence, optional
            Acceptable media types and transfer syntaxes (default: stored encoding).

        Returns
        -------
        DownloadReport
            One :class:`DownloadOutcome` per instance: downloaded, skipped (already on
            disk) or failed. Failures do not raise; call ``report.raise_for_failures()``.
        """
        if isinstance(studies, Mapping):
            found = await self.search_for_studies(search_filters=studies, get_remaining=True)
            studies = [uid for uid in (_qido.first_value(s, "0020000D") for s in found) if uid]
        return await run_download(
            self.download_pipeline(
                studies,
                directory,
                concurrency=concurrency,
                skip_existing=skip_existing,
                progress=progress,
                media_types=media_types,
            )
        )

    # ------------------------------------------------------------------ WADO-RS: datasets

    def _iter_datasets(
        self,
        path: str,
        media_types: MediaTypes,
        default: MediaTypeSpec = _wado.DEFAULT_INSTANCE_TYPE,
    ) -> ClosingIterator[Dataset]:
        async def gen() -> AsyncGenerator[Dataset]:
            async with self._stream(path, media_types, default) as parts:
                async for part in parts:
                    yield await _wado.dataset_from_part(part, parts)

        return ClosingIterator(gen)

    async def retrieve_study(
        self, study_instance_uid: str, media_types: MediaTypes = None
    ) -> list[Dataset]:
        """Retrieve every instance of a study as pydicom Datasets.

        Holds the whole study in memory; prefer :meth:`iter_study` or
        :meth:`download_study` for large studies.
        """
        return [ds async for ds in self.iter_study(study_instance_uid, media_types)]

    def iter_study(
        self, study_instance_uid: str, media_types: MediaTypes = None
    ) -> ClosingIterator[Dataset]:
        """Yield a study's instances one Dataset at a time as they arrive."""
        return self._iter_datasets(study_path(study_instance_uid), media_types)

    async def retrieve_series(
        self, study_instance_uid: str, series_instance_uid: str, media_types: MediaTypes = None
    ) -> list[Dataset]:
        """Retrieve every instance of a series as pydicom Datasets."""
        return [
            ds
            async for ds in self.iter_series(study_instance_uid, series_instance_uid, media_types)
        ]

    def iter_series(
        self, study_instance_uid: str, series_instance_uid: str, media_types: MediaTypes = None
    ) -> ClosingIterator[Dataset]:
        """Yield a series' instances one Dataset at a time as they arrive."""
        return self._iter_datasets(
            series_path(study_instance_uid, series_instance_uid), media_types
        )

    async def retrieve_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
        *,
        multipart: bool = True,
    ) -> Dataset:
        """Retrieve one instance as a pydicom Dataset.

        Parameters
        ----------
        study_instance_uid, series_instance_uid, sop_instance_uid : str
        media_types : sequence of str or (str, str), optional
            Acceptable types and transfer syntaxes (default: the stored encoding).
        multipart : bool
            Ask for ``multipart/related`` (the standard, and what every server serves);
            False asks for a single-part ``application/dicom`` answer (Azure).
        """
        path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        accept = accept_header(
            media_types, default=_wado.DEFAULT_INSTANCE_TYPE, multipart=multipart
        )
        fallback = self._fallback_accept(media_types, _wado.DEFAULT_INSTANCE_TYPE, multipart)
        async with _wado.open_parts(
            self._transport, path, accept, limits=self._limits, fallback_accept=fallback
        ) as parts:
            found: Dataset | None = None
            async for part in parts:
                if found is None:
                    found = await _wado.dataset_from_part(part, parts)
            if found is None:
                raise _no_parts(parts)
            return found

    async def retrieve_study_metadata(
        self, study_instance_uid: str, *, request_original: bool = False
    ) -> list[JSONDict]:
        """Metadata of every instance of a study, as DICOM JSON.

        ``request_original=True`` sends ``msdicom-request-original: true``: Azure then
        returns the metadata as it was before a bulk update.
        """
        return await _wado.retrieve_metadata(
            self._transport, study_path(study_instance_uid), request_original=request_original
        )

    async def retrieve_series_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        *,
        request_original: bool = False,
    ) -> list[JSONDict]:
        """Metadata of every instance of a series, as DICOM JSON."""
        return await _wado.retrieve_metadata(
            self._transport,
            series_path(study_instance_uid, series_instance_uid),
            request_original=request_original,
        )

    async def retrieve_instance_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        *,
        request_original: bool = False,
    ) -> JSONDict:
        """Metadata of one instance, as a DICOM JSON dict."""
        items = await _wado.retrieve_metadata(
            self._transport,
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            request_original=request_original,
        )
        if not items:
            raise ProtocolError("instance metadata response is an empty array")
        return items[0]

    async def retrieve_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        if_none_match: str | None = None,
        request_original: bool = False,
    ) -> Metadata:
        """Metadata of a study, series or instance with its ETag, fetched conditionally.

        Parameters
        ----------
        study_instance_uid, series_instance_uid, sop_instance_uid : str
            The resource; leave out the narrower UIDs for a series or a study.
        if_none_match : str, optional
            An ETag from an earlier call: a server that supports it answers 304 when
            nothing changed, returned as ``Metadata(not_modified=True)`` without a body.
        request_original : bool
            Ask Azure for the version from before a bulk update.

        Returns
        -------
        Metadata
        """
        if sop_instance_uid is not None:
            if series_instance_uid is None:
                raise ValueError("sop_instance_uid given without series_instance_uid")
            path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        elif series_instance_uid is not None:
            path = series_path(study_instance_uid, series_instance_uid)
        else:
            path = study_path(study_instance_uid)
        return await _wado.fetch_metadata(
            self._transport, path, if_none_match=if_none_match, request_original=request_original
        )

    # ------------------------------------------------------------------ WADO-RS: frames

    def iter_instance_frames(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
    ) -> ClosingIterator[Frame]:
        """Yield the requested frames one at a time, in the order the server sends them.

        Each :class:`Frame` is ``bytes`` with ``media_type`` and ``transfer_syntax``.
        """
        path = _wado.frames_path(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            frame_numbers,
        )
        return ClosingIterator(
            lambda: _gen(
                _wado.iter_frames(
                    self._transport,
                    path,
                    media_types,
                    self._limits,
                    self._fallback_accept(media_types, _wado.DEFAULT_FRAME_TYPE),
                )
            )
        )

    async def retrieve_instance_frames(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
    ) -> list[Frame]:
        """Retrieve frames (1-based numbers) of an instance.

        By default asks for the stored encoding (``application/octet-stream`` with
        ``transfer-syntax=*``); each returned :class:`Frame` carries the media type and
        transfer syntax the server stated.
        """
        return [
            frame
            async for frame in self.iter_instance_frames(
                study_instance_uid,
                series_instance_uid,
                sop_instance_uid,
                frame_numbers,
                media_types,
            )
        ]

    # ------------------------------------------------------------------ WADO-RS: rendered

    async def _rendered(
        self, path: str, media_types: MediaTypes, params: Mapping[str, Any] | None
    ) -> bytes:
        accept = accept_header(media_types, default=_RENDERED_DEFAULT, multipart=False)
        return await _wado.read_bytes(
            self._transport, path, accept, query=_wado.rendered_query(params)
        )

    async def retrieve_instance_rendered(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """An instance rendered as an image (``image/jpeg`` unless asked otherwise).

        ``params`` become query parameters (e.g. ``{"quality": 90}``).
        """
        path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        return await self._rendered(f"{path}/rendered", media_types, params)

    async def retrieve_instance_frames_rendered(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Frames of an instance rendered as an image."""
        path = _wado.frames_path(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            frame_numbers,
        )
        return await self._rendered(f"{path}/rendered", media_types, params)

    async def retrieve_series_rendered(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A series rendered as an image."""
        path = series_path(study_instance_uid, series_instance_uid)
        return await self._rendered(f"{path}/rendered", media_types, params)

    # ------------------------------------------------------------------ WADO-RS: bulk data

    def iter_bulkdata(
        self,
        url: str,
        media_types: MediaTypes = None,
        byte_range: tuple[int, int] | None = None,
    ) -> ClosingIterator[bytes]:
        """Yield the parts of a bulk data resource (e.g. a BulkDataURI from metadata).

        Parameters
        ----------
        url : str
            Absolute URL, or a path relative to the service root.
        media_types : sequence of str or (str, str), optional
            Default: ``application/octet-stream`` in its stored transfer syntax.
        byte_range : (int, int), optional
            Inclusive first and last byte to retrieve (sent as a Range header).
        """
        accept = accept_header(media_types, default=_wado.DEFAULT_FRAME_TYPE, multipart=True)
        headers = {}
        if byte_range is not None:
            start, end = byte_range
            headers["Range"] = f"bytes={start}-{end}"
        path = url if url.startswith(("http://", "https://", "/")) else f"/{url}"

        async def gen() -> AsyncGenerator[bytes]:
            async with _wado.open_parts(
                self._transport, path, accept, limits=self._limits, headers=headers, ok=(200, 206)
            ) as parts:
                async for part in parts:
                    yield await part.read()

        return ClosingIterator(gen)

    async def retrieve_bulkdata(
        self,
        url: str,
        media_types: MediaTypes = None,
        byte_range: tuple[int, int] | None = None,
    ) -> list[bytes]:
        """Retrieve the parts of a bulk data resource (see :meth:`iter_bulkdata`)."""
        return [part async for part in self.iter_bulkdata(url, media_types, byte_range)]

    # ------------------------------------------------------------------ STOW-RS

    async def store_instances(
        self,
        datasets: Sequence[StoreItem],
        study_instance_uid: str | None = None,
        *,
        single_part: bool = False,
    ) -> StoreResult:
        """Store instances in one STOW-RS request.

        Parameters
        ----------
        datasets : sequence of path, bytes or Dataset
            Files are streamed from disk as they are (never re-encoded); bytes are sent
            as they are; Datasets are encoded as DICOM files.
        study_instance_uid : str, optional
            POST to ``/studies/{study}``; the server refuses instances of other studies.
        single_part : bool
            Send one instance as a plain ``application/dicom`` body (Azure only).

        Returns
        -------
        StoreResult
            Stored, failed and warning outcomes for 200, 202 and 409 answers alike; call
            ``result.raise_for_failures()`` to turn failures into an exception.
        """
        if study_instance_uid is not None:
            check_uid(study_instance_uid, "StudyInstanceUID")
        return await _stow.store(
            self._transport,
            datasets,
            study_instance_uid,
            single_part=single_part,
            reject_implicit_vr=self.reject_implicit_vr,
        )

    # ------------------------------------------------------------------ bulk upload

    def _check_concurrency(self, concurrency: int) -> None:
        if self.max_connections is not None and concurrency > self.max_connections:
            raise ValueError(
                f"concurrency {concurrency} exceeds the connection pool ({self.max_connections}"
                " connections): create the client with max_connections >= concurrency"
            )

    def upload_pipeline(
        self,
        sources: Sources,
        *,
        concurrency: int = 8,
        max_request_bytes: int | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        convert_implicit_vr: bool = False,
    ) -> UploadPipeline:
        """Upload files as they come; iterate their outcomes as they complete.

        Use as ``async with client.upload_pipeline(paths) as outcomes: async for o in
        outcomes: ...``. ``sources`` may be an async iterable, so a pipeline stage can
        feed files in while earlier ones are uploading. Parameters are those of
        :meth:`store_folder`.
        """
        self._check_concurrency(concurrency)
        return UploadPipeline(
            self._transport,
            sources,
            concurrency=concurrency,
            max_request_bytes=max_request_bytes,
            journal=journal,
            progress=progress,
            reject_implicit_vr=self.reject_implicit_vr,
            convert_implicit_vr=convert_implicit_vr,
        )

    async def store_folder(
        self,
        sources: Sources,
        *,
        concurrency: int = 8,
        max_request_bytes: int | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        convert_implicit_vr: bool = False,
    ) -> UploadReport:
        """Upload every DICOM file in folders (recursively) or in a list of paths.

        Parameters
        ----------
        sources : path, or (async) iterable of paths
            Files and folders.
        concurrency : int
            Requests in flight at once (at most the client's ``max_connections``).
        max_request_bytes : int or None
            None (default) sends one instance per request; a number groups consecutive
            instances of one study into requests of up to that many bytes (the Azure
            DICOM service takes at most 4 GB per request).
        journal : path or Journal, optional
            A file recording every instance the server confirmed. Re-running the same
            upload with it after a crash or Ctrl-C skips those and sends the rest.
        progress : callable, optional
            Called with :class:`Progress` events as files finish.
        convert_implicit_vr : bool
            For a client created with ``reject_implicit_vr=True`` (Azure): re-encode
            implicit VR little endian files as explicit VR and send those, instead of
            reporting them as failed.

        Returns
        -------
        UploadReport
            One :class:`FileOutcome` per input file: stored, already stored (409 with
            FailureReason 45070, or recorded in the journal), failed (with the reason or
            error), or skipped (not DICOM, with why). Failures do not raise; call
            ``report.raise_for_failures()`` for that.

        Notes
        -----
        Headers are read (up to the pixel data) in worker threads; files are sent as
        they are, re-read from disk on every retry. 429, 502, 503, 504, dropped
        connections and FailureReason 45071 are retried; validation failures are not.
        """
        return await run_upload(
            self.upload_pipeline(
                sources,
                concurrency=concurrency,
                max_request_bytes=max_request_bytes,
                journal=journal,
                progress=progress,
                convert_implicit_vr=convert_implicit_vr,
            )
        )

    # ------------------------------------------------------------------ Azure: change feed

    def iter_changefeed(
        self,
        *,
        api_version: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        offset: int = 0,
        limit: int | None = None,
        include_metadata: bool = True,
        cursor: ChangeFeedCursor | None = None,
        follow: bool = False,
        poll_interval: float = 5.0,
    ) -> ChangeFeed:
        """Iterate over the Azure DICOM service's change feed.

        Parameters
        ----------
        api_version : {"v1", "v2"}, optional
            Paging rules; by default those of the version in the base URL.
        start_time, end_time : datetime, optional
            v2 window (start inclusive, end exclusive; timezone-aware).
        offset : int
            v2: position within the window; v1: the sequence number to start after.
        limit : int, optional
            Page size (v2 up to 200, v1 up to 100).
        include_metadata : bool
            Ask for each instance's metadata (``entry.metadata()``).
        cursor : ChangeFeedCursor, optional
            Resume where an earlier iteration stopped (its ``feed.cursor``).
        follow : bool
            Keep polling for new entries instead of ending.
        poll_interval : float
            Seconds between polls in follow mode.

        Returns
        -------
        ChangeFeed
            An async iterator of :class:`ChangeFeedEntry` whose ``cursor`` can be saved
            (``cursor.to_json()``) at any point.
        """
        return ChangeFeed(
            self._transport,
            api_version=api_version,
            start_time=start_time,
            end_time=end_time,
            offset=offset,
            limit=limit,
            include_metadata=include_metadata,
            cursor=cursor,
            follow=follow,
            poll_interval=poll_interval,
        )

    async def get_changefeed_latest(
        self, *, include_metadata: bool = False
    ) -> ChangeFeedEntry | None:
        """The newest change feed entry, or None when the feed is empty."""
        return await _changefeed.get_changefeed_latest(
            self._transport, include_metadata=include_metadata
        )

    # ------------------------------------------------------------------ Azure: administration

    @property
    def _root_transport(self) -> Transport:
        # Operations, extended query tags, export and the partition list live at the
        # versioned root even when this client addresses a partition.
        if self.service_root == self.base_url:
            return self._transport
        return Transport(
            self.service_root,
            self._transport.client,
            owns_client=False,
            retry=self._transport.retry,
        )

    async def get_operation(self, operation_id: str) -> OperationState:
        """The state of a long-running operation (``GET /operations/{id}``)."""
        return await _operations.get_operation(self._root_transport, operation_id)

    def operation(self, operation_id: str) -> Operation:
        """A handle on an existing operation, to ``await op.wait()`` for it."""
        return Operation(self._root_transport, operation_id)

    async def add_extended_query_tags(
        self, tags: Sequence[ExtendedQueryTagSpec | Mapping[str, Any]]
    ) -> Operation:
        """Add extended query tags; returns the indexing operation.

        Each tag is an :class:`ExtendedQueryTagSpec` or a mapping with ``Path``, ``VR``
        (required for private tags) and ``Level`` (Study, Series or Instance).
        """
        return await _eqt.add_extended_query_tags(self._root_transport, tags)

    def iter_extended_query_tags(
        self, *, limit: int = 100, offset: int = 0
    ) -> ClosingIterator[ExtendedQueryTag]:
        """Iterate over every extended query tag, fetching pages of ``limit``."""
        return ClosingIterator(
            lambda: _gen(
                _eqt.iter_extended_query_tags(self._root_transport, limit=limit, offset=offset)
            )
        )

    async def list_extended_query_tags(
        self, *, limit: int = 100, offset: int = 0
    ) -> list[ExtendedQueryTag]:
        """Every extended query tag (all pages)."""
        return await _eqt.list_extended_query_tags(
            self._root_transport, limit=limit, offset=offset
        )

    async def get_extended_query_tag(self, tag_path: str) -> ExtendedQueryTag:
        """One extended query tag, by tag path (``00101001``) or keyword."""
        return await _eqt.get_extended_query_tag(self._root_transport, tag_path)

    async def update_extended_query_tag(
        self, tag_path: str, query_status: str = "Disabled"
    ) -> ExtendedQueryTag:
        """Enable or disable querying by an extended query tag (``QueryStatus``)."""
        return await _eqt.update_extended_query_tag(self._root_transport, tag_path, query_status)

    async def delete_extended_query_tag(self, tag_path: str) -> None:
        """Delete an extended query tag."""
        await _eqt.delete_extended_query_tag(self._root_transport, tag_path)

    async def list_extended_query_tag_errors(
        self, tag_path: str, *, limit: int = 100, offset: int = 0
    ) -> list[ExtendedQueryTagError]:
        """Instances whose value could not be indexed for an extended query tag."""
        return await _eqt.list_extended_query_tag_errors(
            self._root_transport, tag_path, limit=limit, offset=offset
        )

    async def update_studies(
        self, study_uids: Sequence[str], change_dataset: Mapping[str, Any] | Dataset
    ) -> Operation:
        """Bulk update: change attributes of every instance of some studies (Azure).

        ``change_dataset`` is DICOM JSON (``{"00100010": {"vr": "PN", "Value": [...]}}``) or
        a Dataset. The change applies when the returned operation completes; the previous
        version stays readable with ``request_original=True`` on metadata.
        """
        started = await _azure_admin.update_studies(self._transport, study_uids, change_dataset)
        # The update is sent inside the partition; its operation is watched at the root.
        return Operation(self._root_transport, started.reference)

    async def export(
        self,
        *,
        source: Mapping[str, Any] | Sequence[str],
        destination: Mapping[str, Any] | str,
        use_managed_identity: bool = True,
    ) -> Operation:
        """Export instances to Azure Blob Storage; returns the export operation.

        ``source`` is a list of ``study[/series[/instance]]`` identifiers (or Azure's own
        source object); ``destination`` a blob container URL (or Azure's own object).
        """
        return await _azure_admin.export(
            self._root_transport,
            source=source,
            destination=destination,
            use_managed_identity=use_managed_identity,
        )

    async def list_partitions(self) -> list[Partition]:
        """The service's data partitions (``GET /partitions``)."""
        return await _azure_admin.list_partitions(self._root_transport)

    # ------------------------------------------------------------------ DELETE

    async def _delete(self, path: str) -> None:
        try:
            await self._transport.request("DELETE", path, ok=(200, 202, 204))
        except MethodNotAllowedError as exc:
            allow = exc.headers.get("allow")
            exc.message = "the server does not support DELETE on this resource" + (
                f" (Allow: {allow})" if allow else ""
            )
            raise

    async def delete_study(self, study_instance_uid: str) -> None:
        """Delete a study (``DELETE /studies/{study}``; not all servers offer it)."""
        await self._delete(study_path(study_instance_uid))

    async def delete_series(self, study_instance_uid: str, series_instance_uid: str) -> None:
        """Delete a series."""
        await self._delete(series_path(study_instance_uid, series_instance_uid))

    async def delete_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> None:
        """Delete an instance."""
        await self._delete(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        )


async def _gen(source: AsyncIterator[Any]) -> AsyncGenerator[Any]:
    async for item in source:
        yield item


def _no_parts(parts: PartStream) -> Exception:
    return ProtocolError("the response contained no instance", method=parts.method, url=parts.url)
