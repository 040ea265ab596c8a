"""The public client, put together from its method groups, one per service."""

from __future__ import annotations

from .download import DownloadMethods
from .retrieve import RetrieveMethods
from .search import SearchMethods
from .store import StoreMethods
from .worklist import WorklistMethods

__all__ = ["AsyncDICOMwebClient"]


class AsyncDICOMwebClient(
    SearchMethods, RetrieveMethods, DownloadMethods, StoreMethods, WorklistMethods
):
    """Asyncio client for a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS, DELETE, UPS-RS).

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
        httpcore engine: read the socket in 1 MiB pieces instead of httpx's 64 KiB
        (faster downloads); applies only to the client created here.
    reader_limits : ReaderLimits, optional
        Limits on multipart responses (header size and count, number of parts).
    original_on_406 : bool
        When the server cannot produce a requested transfer syntax (406), ask once more
        for the stored one (``transfer-syntax=*``) instead of raising.
    max_page_size : int, optional
        Largest QIDO-RS ``limit`` the server accepts (Azure: 200); larger limits are
        lowered to it and paging continues where it stopped. Default: the profile's.
    reject_implicit_vr : bool, optional
        Refuse, before upload, files in implicit VR little endian, which some servers
        (Azure) reject; ``store_folder`` can convert them instead. Default: the
        profile's (True for ``azure``).
    engine : {"auto", "aiohttp", "httpcore"}
        The HTTP engine under httpx in the client created here: ``"auto"`` takes aiohttp
        on asyncio (the fastest) and httpcore on trio; the environment variable
        ``DICOMWEB_ASYNC_ENGINE`` can say which ``"auto"`` means.
    trust_env : bool
        Take proxies from ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and
        ``NO_PROXY`` (and, as httpx does, certificate and ``.netrc`` settings), on every
        engine.
    profile : str or ServerProfile, optional
        What the server accepts: ``"generic"`` (default), ``"azure"``, ``"orthanc"``,
        ``"dcm4chee"``, ``"google"``, ``"aws-healthimaging"`` (see :data:`PROFILES`), or
        a :class:`ServerProfile`. Requests a profile knows the server refuses (DELETE on
        Orthanc, thumbnails on Azure) raise ``ValueError`` before anything is sent.

    Examples
    --------
    >>> async with AsyncDICOMwebClient("http://127.0.0.1:8042/dicom-web") as client:
    ...     studies = await client.search_for_studies(search_filters={"PatientID": "ID1"})
    """
