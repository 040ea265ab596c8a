"""Azure DICOM service administration: bulk update of studies, export, data partitions.

Bulk update and export start long-running operations (see :mod:`._operations`); listing
partitions is a plain ``GET``. The routes are relative to the versioned base URL; bulk update
may also be sent inside a data partition (``/partitions/{name}/studies/$bulkUpdate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._core.datasets import dicom_json
from .._core.exceptions import ProtocolError
from .._core.urls import check_partition, check_uid
from .._transport.transport import Transport
from .json_values import JSON, Fields, load_json_objects
from .operations import Operation, start_operation

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Partition", "export", "list_partitions", "update_studies"]

JSONDict = dict[str, Any]


def _change_dataset_json(change_dataset: Mapping[str, Any] | Dataset) -> JSONDict:
    # Keywords ("PatientName") are not DICOM JSON; the service would reject the whole
    # update, so the shared check says which key is wrong before sending.
    data = dicom_json(change_dataset, "change_dataset")
    if not data:
        raise ValueError("change_dataset is empty: nothing to update")
    return data


async def update_studies(
    transport: Transport,
    study_uids: Sequence[str],
    change_dataset: Mapping[str, Any] | Dataset,
    *,
    partition: str | None = None,
) -> Operation:
    """Change attributes of every instance of some studies (Azure bulk update).

    Parameters
    ----------
    transport : Transport
    study_uids : sequence of str
        The studies to update (the service takes up to 50 at once).
    change_dataset : mapping or pydicom.dataset.Dataset
        The new values as DICOM JSON (``{"00100010": {"vr": "PN", "Value": [...]}}``), or a
        Dataset holding them. Only patient and general-study attributes may be changed.
    partition : str, optional
        The data partition holding the studies.

    Returns
    -------
    Operation
        The update operation; the service runs one at a time.

    Raises
    ------
    ValueError
        If there are no studies, a UID is malformed, or ``change_dataset`` is not DICOM JSON.
    """
    if isinstance(study_uids, str):
        raise TypeError("study_uids must be a sequence of UIDs, not a single string")
    uids = [check_uid(uid, "StudyInstanceUID") for uid in study_uids]
    if not uids:
        raise ValueError("no studies to update")
    payload = {"studyInstanceUids": uids, "changeDataset": _change_dataset_json(change_dataset)}
    prefix = f"/partitions/{check_partition(partition)}" if partition is not None else ""
    # The service documents the route as "$bulkUpdate"; its own request collection writes
    # "$bulkupdate". ASP.NET routes match either, so the documented casing is sent.
    return await start_operation(transport, f"{prefix}/studies/$bulkUpdate", payload)


def _identifier(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"export identifiers are strings, not {type(value).__name__}")
    uids = value.split("/")
    if not 1 <= len(uids) <= 3:
        raise ValueError(f"export identifier {value!r} is not 'study[/series[/instance]]'")
    names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    for uid, name in zip(uids, names[: len(uids)], strict=True):
        check_uid(uid, name)
    return value


def _export_source(source: Mapping[str, Any] | Sequence[str]) -> JSONDict:
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str):
        raise TypeError("source must be a sequence of identifiers, not a single string")
    values = [_identifier(item) for item in source]
    if not values:
        raise ValueError("nothing to export")
    return {"type": "identifiers", "settings": {"values": values}}


def _export_destination(
    destination: Mapping[str, Any] | str, use_managed_identity: bool
) -> JSONDict:
    if isinstance(destination, str):
        if not destination.startswith(("https://", "http://")):
            raise ValueError("destination must be a blob container URL or a mapping")
        settings: JSONDict = {
            "blobContainerUri": destination,
            "useManagedIdentity": use_managed_identity,
        }
        return {"type": "azureblob", "settings": settings}
    if any(str(key).lower() == "type" for key in destination):
        return dict(destination)
    return {"type": "azureblob", "settings": dict(destination)}


async def export(
    transport: Transport,
    *,
    source: Mapping[str, Any] | Sequence[str],
    destination: Mapping[str, Any] | str,
    use_managed_identity: bool = True,
) -> Operation:
    """Export studies, series or instances to Azure Blob Storage (``POST /export``).

    Parameters
    ----------
    transport : Transport
    source : sequence of str or mapping
        Identifiers ``"study"``, ``"study/series"`` or ``"study/series/instance"``; or the
        service's whole source object (``{"type": "identifiers", "settings": {...}}``).
    destination : str or mapping
        A blob container URL; or the settings of an ``azureblob`` destination
        (``{"blobContainerUri": ..., "useManagedIdentity": ...}``); or, with a ``type``
        key, the service's whole destination object.
    use_managed_identity : bool
        With a container URL: let the service write with its managed identity (the managed
        service requires this; pass False for a URL that carries a SAS token).

    Returns
    -------
    Operation
        The export operation; its results name an error log in the container.
    """
    payload = {
        "source": _export_source(source),
        "destination": _export_destination(destination, use_managed_identity),
    }
    return await start_operation(transport, "/export", payload)


@dataclass(frozen=True)
class Partition:
    """A data partition of the service.

    Attributes
    ----------
    name : str
        ``PartitionName``, used in ``{base}/partitions/{name}/...``.
    key : int or None
        ``PartitionKey``, the service's own number for it.
    created_date : datetime or None
        UTC.
    raw : dict
        The whole JSON object.
    """

    name: str
    key: int | None
    created_date: datetime | None
    raw: JSONDict = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Partition:
        """Build a partition from the service's JSON."""
        fields = Fields(data)
        name = fields.text("PartitionName")
        if not name:
            raise ValueError("partition without a PartitionName")
        return cls(
            name=name,
            key=fields.integer("PartitionKey"),
            created_date=fields.timestamp("CreatedDate"),
            raw=dict(data),
        )


async def list_partitions(transport: Transport) -> list[Partition]:
    """List the data partitions (``GET /partitions``); 204 means there are none.

    Raises
    ------
    HTTPStatusError
        400 if data partitions are not enabled on the service.
    """
    response, body = await transport.request(
        "GET", "/partitions", headers={"Accept": JSON}, ok=(200, 204)
    )
    partitions = []
    for item in load_json_objects(response, body, "partition list"):
        try:
            partitions.append(Partition.from_json(item))
        except ValueError as exc:
            raise ProtocolError(str(exc), method=response.method, url=response.url) from None
    return partitions
