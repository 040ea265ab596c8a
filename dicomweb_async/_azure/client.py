"""The client for the Azure DICOM service: the standard client and the service's own APIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._client.base import aiter_of
from .._client.client import AsyncDICOMwebClient
from .._core.aiter import ClosingIterator
from .._core.urls import check_partition
from .._transport.transport import Transport
from . import admin as _azure_admin
from . import changefeed as _changefeed
from . import extended_query_tags as _eqt
from . import operations as _operations
from .admin import Partition
from .auth import AZURE_DICOM_SCOPE, AzureADAuth
from .changefeed import ChangeFeed, ChangeFeedCursor, ChangeFeedEntry
from .extended_query_tags import ExtendedQueryTag, ExtendedQueryTagError, ExtendedQueryTagSpec
from .operations import Operation, OperationState

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["AZURE_MAX_PAGE_SIZE", "AzureDICOMwebClient"]

# Azure answers 400 to a QIDO-RS limit above this.
AZURE_MAX_PAGE_SIZE = 200


class AzureDICOMwebClient(AsyncDICOMwebClient):
    """Client for the Azure Health Data Services DICOM service.

    Everything :class:`AsyncDICOMwebClient` does, and the service's own APIs: the change
    feed, long-running operations, extended query tags, bulk update, export and
    partitions. :meth:`AsyncDICOMwebClient.for_azure` builds one from the service URL and
    an azure-identity credential; construct it directly for a versioned base URL you
    already have (the offline emulator's, say).

    Parameters
    ----------
    base_url : str
        The versioned service URL, with the partition if there is one:
        ``https://{ws}-{svc}.dicom.azurehealthcareapis.com/v2[/partitions/{name}]``.
    service_root : str, optional
        The versioned URL without the partition, where operations, extended query tags,
        export and the partition list live; by default ``base_url``.
    **kwargs
        Other :class:`AsyncDICOMwebClient` parameters. Unless given, QIDO-RS pages are
        capped at 200 (``max_page_size``) and implicit VR files are refused before upload
        (``reject_implicit_vr``), as the service requires.
    """

    def __init__(self, base_url: str, *, service_root: str | None = None, **kwargs: Any) -> None:
        # The service's page cap, request size and implicit VR refusal, among others.
        kwargs.setdefault("profile", "azure")
        super().__init__(base_url, **kwargs)
        #: The versioned root of the service, without a partition.
        self.service_root = (service_root or base_url).rstrip("/")
        # Operations, extended query tags, export and the partition list live at the
        # versioned root even when this client addresses a partition.
        self._root_transport = (
            self._transport
            if self.service_root == self.base_url
            else Transport(
                self.service_root,
                self._transport.client,
                owns_client=False,
                retry=self._transport.retry,
            )
        )

    @classmethod
    def for_service(
        cls,
        service_url: str,
        credential: Any = None,
        *,
        api_version: str = "v2",
        partition: str | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> AzureDICOMwebClient:
        """A client from the service URL (see :meth:`AsyncDICOMwebClient.for_azure`)."""
        root = f"{service_url.rstrip('/')}/{api_version.strip('/')}"
        base = root
        if partition is not None:
            check_partition(partition)
            base = f"{root}/partitions/{partition}"
        if credential is not None:
            if kwargs.get("auth") is not None:
                raise ValueError("give either credential or auth, not both")
            kwargs["auth"] = AzureADAuth(credential, scope=scope or AZURE_DICOM_SCOPE)
        return cls(base, service_root=root, **kwargs)

    # ------------------------------------------------------------------ change feed

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

    # ------------------------------------------------- operations and administration

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
            lambda: aiter_of(
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
