"""Extended query tags of the Azure DICOM service.

Extended query tags make more attributes (standard or private) searchable with QIDO-RS.
Adding tags starts a re-indexing operation (see :mod:`._operations`); the other calls list,
read, enable or disable, and delete tags, and list the instances that failed to index.

Routes (relative to the versioned base URL, never to a data partition)::

    POST   /extendedquerytags                 add tags            -> 202 operation reference
    GET    /extendedquerytags?limit=&offset=  list tags           -> 200 [tag, ...]
    GET    /extendedquerytags/{path}          one tag             -> 200 tag
    PATCH  /extendedquerytags/{path}          {"QueryStatus": ..} -> 200 tag
    DELETE /extendedquerytags/{path}          delete              -> 204
    GET    /extendedquerytags/{path}/errors   indexing errors     -> 200 [error, ...]
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._core.exceptions import ProtocolError
from .._transport.transport import Transport
from .json_values import JSON, Fields, json_body, load_json_object, load_json_objects
from .operations import Operation, OperationReference, start_operation

__all__ = [
    "ExtendedQueryTag",
    "ExtendedQueryTagError",
    "ExtendedQueryTagSpec",
    "add_extended_query_tags",
    "delete_extended_query_tag",
    "get_extended_query_tag",
    "iter_extended_query_tag_errors",
    "iter_extended_query_tags",
    "list_extended_query_tag_errors",
    "list_extended_query_tags",
    "update_extended_query_tag",
]

JSONDict = dict[str, Any]

#: Value representations the service can index.
SUPPORTED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO"}
    | {"PN", "SH", "SL", "SS", "TM", "UI", "UL", "US"}
)
#: The service accepts at most this many tags in one request.
MAX_TAGS_PER_REQUEST = 128

_LEVELS = {"study": "Study", "series": "Series", "instance": "Instance"}
_QUERY_STATUSES = {"enabled": "Enabled", "disabled": "Disabled"}
_SPEC_KEYS = {"path": "Path", "vr": "VR", "level": "Level", "privatecreator": "PrivateCreator"}

# A tag is 8 hex digits or a keyword; a dotted path names an attribute inside a sequence.
# The path goes into the URL as given, so nothing but letters, digits and dots may pass.
_SEGMENT = r"[A-Za-z0-9]{1,64}"
_TAG_PATH_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT}){{0,7}}")
_HEX_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")

_BASE = "/extendedquerytags"


def check_tag_path(tag_path: str) -> str:
    """Return ``tag_path`` if it is a tag, keyword or dotted path, else raise ValueError.

    Parameters
    ----------
    tag_path : str
        ``"00101010"``, ``"PatientAge"`` or ``"00400275.00321060"``.
    """
    if not isinstance(tag_path, str) or not _TAG_PATH_RE.fullmatch(tag_path):
        raise ValueError(
            f"invalid extended query tag path: {tag_path!r} (8 hex digits or a keyword, "
            "optionally dotted into a sequence)"
        )
    return tag_path


def _is_private(tag_path: str) -> bool:
    last = tag_path.rsplit(".", 1)[-1]
    return bool(_HEX_TAG_RE.fullmatch(last)) and int(last[:4], 16) % 2 == 1


@dataclass(frozen=True)
class ExtendedQueryTagSpec:
    """An extended query tag to add.

    Parameters
    ----------
    path : str
        8 hex digits (``"00101010"``) or a keyword (``"PatientAge"``).
    vr : str or None
        Value representation, one of AE AS CS DA DS DT FD FL IS LO PN SH SL SS TM UI UL
        US. Required for private tags; None lets the service take a standard tag's own VR.
    level : {"Study", "Series", "Instance"}
        Level of the DICOM hierarchy the attribute belongs to (any case).
    private_creator : str, optional
        The private creator of a private tag.

    Raises
    ------
    ValueError
        If a value is not one the service accepts.
    """

    path: str
    vr: str | None
    level: str
    private_creator: str | None = None

    def __post_init__(self) -> None:
        check_tag_path(self.path)
        level = _LEVELS.get(str(self.level).lower())
        if level is None:
            raise ValueError(
                f"invalid extended query tag level {self.level!r}: use Study, Series or Instance"
            )
        # Frozen: normalised values are written through object.__setattr__.
        object.__setattr__(self, "level", level)
        if self.vr is not None:
            vr = str(self.vr).upper()
            if vr not in SUPPORTED_VRS:
                raise ValueError(
                    f"VR {self.vr!r} of {self.path} cannot be indexed; supported: "
                    + " ".join(sorted(SUPPORTED_VRS))
                )
            object.__setattr__(self, "vr", vr)
        private = _is_private(self.path)
        if private and self.vr is None:
            raise ValueError(f"private tag {self.path} needs a VR")
        if self.private_creator is not None and not private:
            raise ValueError(f"{self.path} is not a private tag: it takes no private creator")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ExtendedQueryTagSpec:
        """Build a spec from ``{"Path", "VR", "Level"[, "PrivateCreator"]}`` (any case)."""
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = _SPEC_KEYS.get(str(key).lower())
            if name is None:
                raise ValueError(f"unknown extended query tag field {key!r}")
            values[name] = value
        if "Path" not in values or "Level" not in values:
            raise ValueError("an extended query tag needs a Path and a Level")
        return cls(
            path=values["Path"],
            vr=values.get("VR"),
            level=values["Level"],
            private_creator=values.get("PrivateCreator"),
        )

    def to_json(self) -> dict[str, str]:
        """The JSON object the service expects."""
        data = {"Path": self.path}
        if self.vr is not None:
            data["VR"] = self.vr
        data["Level"] = self.level
        if self.private_creator is not None:
            data["PrivateCreator"] = self.private_creator
        return data


@dataclass(frozen=True)
class ExtendedQueryTag:
    """An extended query tag as the service reports it.

    Attributes
    ----------
    path : str
    vr : str or None
    level : str or None
        ``"Study"``, ``"Series"`` or ``"Instance"``.
    private_creator : str or None
    status : str or None
        ``"Adding"`` (being indexed), ``"Ready"`` or ``"Deleting"``.
    query_status : str or None
        ``"Enabled"`` or ``"Disabled"`` (indexing errors disable querying).
    errors_count : int
        Instances that failed to index.
    operation : OperationReference or None
        The indexing operation while the tag is being added.
    raw : dict
        The whole JSON object.
    """

    path: str
    vr: str | None
    level: str | None
    private_creator: str | None
    status: str | None
    query_status: str | None
    errors_count: int
    operation: OperationReference | None
    raw: JSONDict = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExtendedQueryTag:
        """Build a tag from the service's JSON.

        The count of errors is read from ``ErrorsCount`` or from the nested
        ``{"errors": {"count": ..., "href": ...}}`` that the service writes.
        """
        fields = Fields(data)
        path = fields.text("Path")
        if not path:
            raise ValueError("extended query tag without a Path")
        errors = fields.child("Errors")
        count = fields.integer("ErrorsCount")
        if count is None and errors is not None:
            count = errors.integer("Count")
        operation = fields.get("Operation")
        reference = None
        if isinstance(operation, dict) and operation:
            reference = OperationReference.from_json(operation)
        return cls(
            path=path,
            vr=fields.text("VR"),
            level=fields.text("Level"),
            private_creator=fields.text("PrivateCreator"),
            status=fields.text("Status"),
            query_status=fields.text("QueryStatus"),
            errors_count=count or 0,
            operation=reference,
            raw=dict(data),
        )


@dataclass(frozen=True)
class ExtendedQueryTagError:
    """An instance that could not be indexed on an extended query tag.

    Attributes
    ----------
    tag : str
        The tag path the errors were listed for.
    study_instance_uid, series_instance_uid, sop_instance_uid : str or None
    created_time : datetime or None
        When indexing failed (UTC).
    error_message : str
    raw : dict
        The whole JSON object.
    """

    tag: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    created_time: datetime | None
    error_message: str
    raw: JSONDict = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, tag: str, data: Mapping[str, Any]) -> ExtendedQueryTagError:
        """Build an error from the service's JSON."""
        fields = Fields(data)
        return cls(
            tag=tag,
            study_instance_uid=fields.text("StudyInstanceUid"),
            series_instance_uid=fields.text("SeriesInstanceUid"),
            sop_instance_uid=fields.text("SopInstanceUid"),
            created_time=fields.timestamp("CreatedTime"),
            error_message=fields.text("ErrorMessage") or "",
            raw=dict(data),
        )


def _tag_path(tag_path: str) -> str:
    return f"{_BASE}/{check_tag_path(tag_path)}"


def _check_paging(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, not {offset!r}")


async def _iter_pages(
    transport: Transport, path: str, limit: int, offset: int, what: str
) -> AsyncIterator[JSONDict]:
    _check_paging(limit, offset)
    while True:
        response, body = await transport.request(
            "GET",
            path,
            query=f"limit={limit}&offset={offset}",
            headers={"Accept": JSON},
            ok=(200, 204),
        )
        page = load_json_objects(response, body, what)
        for item in page:
            yield item
        # A short page is the last one; asking once more would only get an empty page.
        if len(page) < limit:
            return
        offset += len(page)


def _tag(data: Mapping[str, Any], method: str, url: str) -> ExtendedQueryTag:
    try:
        return ExtendedQueryTag.from_json(data)
    except ValueError as exc:
        raise ProtocolError(f"extended query tag: {exc}", method=method, url=url) from None


async def add_extended_query_tags(
    transport: Transport, tags: Sequence[ExtendedQueryTagSpec | Mapping[str, Any]]
) -> Operation:
    """Add extended query tags and start indexing the instances already stored.

    Parameters
    ----------
    transport : Transport
    tags : sequence of ExtendedQueryTagSpec or mapping
        At most 128. A mapping has the service's keys ``Path``, ``VR``, ``Level`` and
        optionally ``PrivateCreator``.

    Returns
    -------
    Operation
        The re-indexing operation; ``await op.wait()`` until the tags are ``Ready``.

    Raises
    ------
    ValueError
        If there are no tags or more than 128, or a tag has an unsupported VR or level.
    ConflictError
        If a tag is already an extended query tag (409).
    """
    if isinstance(tags, Mapping | ExtendedQueryTagSpec):
        raise TypeError("tags must be a sequence of tags, not a single tag")
    specs = [
        tag if isinstance(tag, ExtendedQueryTagSpec) else ExtendedQueryTagSpec.from_mapping(tag)
        for tag in tags
    ]
    if not specs:
        raise ValueError("no extended query tags to add")
    if len(specs) > MAX_TAGS_PER_REQUEST:
        raise ValueError(
            f"{len(specs)} extended query tags: the service takes at most "
            f"{MAX_TAGS_PER_REQUEST} per request"
        )
    return await start_operation(transport, _BASE, [spec.to_json() for spec in specs])


async def iter_extended_query_tags(
    transport: Transport, *, limit: int = 100, offset: int = 0
) -> AsyncIterator[ExtendedQueryTag]:
    """Yield every extended query tag, fetching ``limit`` at a time.

    Parameters
    ----------
    transport : Transport
    limit : int
        Page size.
    offset : int
        Number of tags to skip.
    """
    async for item in _iter_pages(transport, _BASE, limit, offset, "extended query tags"):
        yield _tag(item, "GET", transport.url(_BASE))


async def list_extended_query_tags(
    transport: Transport, *, limit: int = 100, offset: int = 0
) -> list[ExtendedQueryTag]:
    """Collect :func:`iter_extended_query_tags` into a list."""
    return [tag async for tag in iter_extended_query_tags(transport, limit=limit, offset=offset)]


async def get_extended_query_tag(transport: Transport, tag_path: str) -> ExtendedQueryTag:
    """Fetch one extended query tag.

    Raises
    ------
    NotFoundError
        If the tag is not an extended query tag.
    """
    path = _tag_path(tag_path)
    response, body = await transport.request("GET", path, headers={"Accept": JSON})
    data = load_json_object(response, body, "extended query tag")
    return _tag(data, response.method, response.url)


async def update_extended_query_tag(
    transport: Transport, tag_path: str, query_status: str = "Disabled"
) -> ExtendedQueryTag:
    """Enable or disable QIDO-RS on an extended query tag.

    Parameters
    ----------
    transport : Transport
    tag_path : str
    query_status : {"Enabled", "Disabled"}
        ``"Enabled"`` allows queries on a tag despite indexing errors.

    Returns
    -------
    ExtendedQueryTag
        The tag as updated.
    """
    status = _QUERY_STATUSES.get(str(query_status).lower())
    if status is None:
        raise ValueError(f"query_status must be 'Enabled' or 'Disabled', not {query_status!r}")
    path = _tag_path(tag_path)
    response, body = await transport.request(
        "PATCH",
        path,
        headers={"Accept": JSON, "Content-Type": JSON},
        body=json_body({"QueryStatus": status}),
    )
    data = load_json_object(response, body, "extended query tag")
    return _tag(data, response.method, response.url)


async def delete_extended_query_tag(transport: Transport, tag_path: str) -> None:
    """Delete an extended query tag (its index is dropped; stored instances stay).

    Raises
    ------
    NotFoundError
        If the tag is not an extended query tag.
    """
    await transport.request("DELETE", _tag_path(tag_path), ok=(204, 200))


async def iter_extended_query_tag_errors(
    transport: Transport, tag_path: str, *, limit: int = 100, offset: int = 0
) -> AsyncIterator[ExtendedQueryTagError]:
    """Yield the instances that failed to index on a tag, fetching ``limit`` at a time.

    Parameters
    ----------
    transport : Transport
    tag_path : str
    limit : int
        Page size.
    offset : int
        Number of errors to skip.
    """
    path = _tag_path(tag_path) + "/errors"
    async for item in _iter_pages(transport, path, limit, offset, "extended query tag errors"):
        yield ExtendedQueryTagError.from_json(tag_path, item)


async def list_extended_query_tag_errors(
    transport: Transport, tag_path: str, *, limit: int = 100, offset: int = 0
) -> list[ExtendedQueryTagError]:
    """Collect :func:`iter_extended_query_tag_errors` into a list."""
    return [
        error
        async for error in iter_extended_query_tag_errors(
            transport, tag_path, limit=limit, offset=offset
        )
    ]
