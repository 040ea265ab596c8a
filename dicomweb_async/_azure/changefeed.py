"""Azure change feed: the ordered log of instance creates, updates and deletes.

Two API versions page differently, and the version in the service URL decides which one the
server speaks:

- **v2** reads a time window (``startTime`` inclusive, ``endTime`` exclusive); ``offset``
  counts entries from the start of the window, so paging adds the length of each page and a
  short page is the end.
- **v1** has no window; ``offset`` is the sequence number to start *after*, and the server
  answers the entries whose sequence lies in ``(offset, offset + limit]``. Sequence numbers
  can skip, so an empty page is not the end: only ``/changefeed/latest`` tells.

:class:`ChangeFeed` iterates over entries in either version and keeps a
:class:`ChangeFeedCursor` that a pipeline can save and resume from later.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from .._core.datasets import dataset_from_json
from .._core.exceptions import ProtocolError
from .._core.urls import build_query
from .._transport.transport import Response, Transport
from .json_values import JSON, JSONDict, format_timestamp, load_json, parse_timestamp

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "ChangeFeed",
    "ChangeFeedCursor",
    "ChangeFeedEntry",
    "get_changefeed_latest",
    "infer_api_version",
]

_FEED_PATH = "/changefeed"
_LATEST_PATH = "/changefeed/latest"
_VERSIONS = ("v1", "v2")
# (default, largest) page size the service accepts for each version.
_LIMITS = {"v1": (10, 100), "v2": (100, 200)}

# The version segment of an Azure service URL: /v1, /v1.0-prerelease, /v2 ...
_VERSION_RE = re.compile(r"/v(\d+)(?:\.\d+)?(?:-prerelease)?(?=/|$)", re.IGNORECASE)


def _field(obj: JSONDict, name: str, kind: type, *, required: bool = True) -> Any:
    value = obj.get(name.lower())
    if value is None:
        if required:
            raise ProtocolError(f"change feed entry has no {name}")
        return None
    # bool is an int subclass; a sequence of true would be nonsense.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(
            f"change feed entry {name} is {type(value).__name__}, not {kind.__name__}"
        )
    return value


@dataclass(frozen=True)
class ChangeFeedEntry:
    """One change to one instance.

    Attributes
    ----------
    sequence : int
        Unique, increasing number of the change (not contiguous: it can skip).
    study_instance_uid, series_instance_uid, sop_instance_uid : str
        The instance changed.
    action : str
        ``"create"``, ``"update"`` or ``"delete"`` (lower case).
    state : str
        State of the instance now: ``"current"``, ``"replaced"`` or ``"deleted"``.
    timestamp : datetime
        When the change happened, timezone-aware in UTC.
    partition_name : str or None
        The data partition, on services that have them.
    metadata_json : dict or None
        The instance's current DICOM JSON metadata, when it was asked for and still exists.
    """

    sequence: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    action: str
    state: str
    timestamp: datetime
    partition_name: str | None = None
    # Excluded from hash (a dict cannot be hashed) and repr (it can be large).
    metadata_json: JSONDict | None = field(default=None, hash=False, repr=False)

    @classmethod
    def from_json(cls, obj: Any) -> ChangeFeedEntry:
        """Build an entry from the service's JSON object.

        Parameters
        ----------
        obj : dict
            With keys ``Sequence``, ``StudyInstanceUid``, ``SeriesInstanceUid``,
            ``SopInstanceUid``, ``Action``, ``Timestamp``, ``State`` and optionally
            ``Metadata`` and ``PartitionName``; key case does not matter.

        Returns
        -------
        ChangeFeedEntry

        Raises
        ------
        ProtocolError
            If a required key is missing or a value has the wrong type or form.
        """
        if not isinstance(obj, dict):
            raise ProtocolError(f"change feed entry is {type(obj).__name__}, not an object")
        lowered = {str(k).lower(): v for k, v in obj.items()}
        text = _field(lowered, "Timestamp", str)
        try:
            timestamp = parse_timestamp(text)
        except ValueError as exc:
            raise ProtocolError(f"change feed entry Timestamp: {exc}") from None
        return cls(
            sequence=_field(lowered, "Sequence", int),
            study_instance_uid=_field(lowered, "StudyInstanceUid", str),
            series_instance_uid=_field(lowered, "SeriesInstanceUid", str),
            sop_instance_uid=_field(lowered, "SopInstanceUid", str),
            action=_field(lowered, "Action", str).lower(),
            state=_field(lowered, "State", str).lower(),
            timestamp=timestamp,
            partition_name=_field(lowered, "PartitionName", str, required=False),
            metadata_json=_field(lowered, "Metadata", dict, required=False),
        )

    def metadata(self) -> Dataset | None:
        """The metadata as a pydicom ``Dataset``, built on each call.

        Returns
        -------
        pydicom.dataset.Dataset or None
            None when the entry carries no metadata: it was not asked for, or the instance
            has been deleted since.

        Raises
        ------
        ProtocolError
            If the metadata is not valid DICOM JSON.
        """
        if self.metadata_json is None:
            return None
        return dataset_from_json(
            self.metadata_json, f"change feed entry {self.sequence}: metadata"
        )


@dataclass(frozen=True)
class ChangeFeedCursor:
    """Where a change feed reading stopped, to resume from later.

    Attributes
    ----------
    api_version : {"v1", "v2"}
        The paging rules the position is expressed in.
    offset : int
        v2: entries already read from the start of the window. v1: the sequence number to
        resume after (the last one read, or further when a gap in the numbers was skipped).
    start_time, end_time : datetime or None
        v2 only: the window, timezone-aware (``end_time`` exclusive; None for open ends).

    Examples
    --------
    >>> saved = feed.cursor.to_json()  # doctest: +SKIP
    >>> feed = client.iter_changefeed(cursor=ChangeFeedCursor.from_json(saved))  # doctest: +SKIP
    """

    api_version: str = "v2"
    offset: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None

    def __post_init__(self) -> None:
        if self.api_version not in _VERSIONS:
            raise ValueError(f"api_version must be 'v1' or 'v2', not {self.api_version!r}")
        if not isinstance(self.offset, int) or isinstance(self.offset, bool) or self.offset < 0:
            raise ValueError(f"offset must be an integer >= 0, not {self.offset!r}")
        windowed = self.start_time is not None or self.end_time is not None
        if self.api_version == "v1" and windowed:
            raise ValueError("start_time and end_time need change feed v2")
        for value in (self.start_time, self.end_time):
            if value is not None:
                format_timestamp(value)  # raises for naive or non-datetime values
        if self.start_time and self.end_time and self.start_time >= self.end_time:
            raise ValueError("start_time must be before end_time")

    def to_json(self) -> str:
        """Serialise to a JSON string (times in UTC with ``Z``).

        Returns
        -------
        str
        """
        return json.dumps(
            {
                "api_version": self.api_version,
                "offset": self.offset,
                "start_time": _format_optional(self.start_time),
                "end_time": _format_optional(self.end_time),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ChangeFeedCursor:
        """Read a cursor written by :meth:`to_json`.

        Parameters
        ----------
        text : str or bytes

        Returns
        -------
        ChangeFeedCursor

        Raises
        ------
        ValueError
            If ``text`` is not a cursor.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a change feed cursor is a JSON object")
        unknown = set(data) - {"api_version", "offset", "start_time", "end_time"}
        if unknown:
            raise ValueError(f"unknown change feed cursor keys: {sorted(unknown)}")
        times = {}
        for key in ("start_time", "end_time"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"cursor {key} must be a string or null")
            times[key] = None if value is None else parse_timestamp(value)
        return cls(
            api_version=data.get("api_version", "v2"),
            offset=data.get("offset", 0),
            start_time=times["start_time"],
            end_time=times["end_time"],
        )


def _format_optional(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def infer_api_version(base_url: str) -> str:
    """The change feed version of a service URL: ``"v1"`` for ``.../v1``, else ``"v2"``.

    Parameters
    ----------
    base_url : str
        E.g. ``https://x.dicom.azurehealthcareapis.com/v1``.

    Returns
    -------
    str
    """
    matches = _VERSION_RE.findall(base_url)
    if matches and int(matches[-1]) < 2:
        return "v1"
    return "v2"


async def _get_json(transport: Transport, path: str, query: str) -> tuple[Response, Any]:
    response, body = await transport.request(
        "GET", path, query=query, headers={"Accept": JSON}, ok=(200, 204)
    )
    if response.status_code == 204 or not body.strip():
        return response, None
    return response, load_json(response, body, "change feed response")


def _entry(obj: Any, response: Response) -> ChangeFeedEntry:
    try:
        return ChangeFeedEntry.from_json(obj)
    except ProtocolError as exc:
        # Re-raised with the request, which the parser alone does not know.
        raise ProtocolError(exc.message, method="GET", url=response.url) from None


async def get_changefeed_latest(
    transport: Transport, *, include_metadata: bool = False
) -> ChangeFeedEntry | None:
    """Read the latest entry of the change feed (``GET /changefeed/latest``).

    Parameters
    ----------
    transport : Transport
    include_metadata : bool
        Ask for the instance's metadata too.

    Returns
    -------
    ChangeFeedEntry or None
        None when the feed is empty (204, an empty body or ``null``).

    Raises
    ------
    ProtocolError
        If the answer is not one entry.
    """
    query = build_query(extra=[("includeMetadata", include_metadata)])
    response, data = await _get_json(transport, _LATEST_PATH, query)
    if data is None:
        return None
    return _entry(data, response)


class ChangeFeed:
    """Async iterator over change feed entries, with a resumable :attr:`cursor`.

    Pages are read as the consumer asks for entries; nothing is read ahead of the current
    page. The iteration ends at the end of the feed (or of the window), or, with
    ``follow=True``, keeps polling for new entries until the consumer stops or is
    cancelled.

    Parameters
    ----------
    transport : Transport
    api_version : {"v1", "v2"}, optional
        Paging rules; they must match the version in the service URL, from which they are
        taken when not given (``.../v1`` is v1, anything else v2).
    start_time, end_time : datetime, optional
        v2 only: the window, timezone-aware; ``start_time`` inclusive, ``end_time``
        exclusive. Sent as ``startTime`` / ``endTime`` in UTC.
    offset : int
        v2: entries to skip from the start of the window. v1: the sequence number to start
        after (0 reads from the beginning).
    limit : int, optional
        Page size; v2 defaults to 100 and is capped at 200, v1 defaults to 10 and is
        capped at 100.
    include_metadata : bool
        Ask for each instance's DICOM JSON metadata (``includeMetadata``).
    cursor : ChangeFeedCursor, optional
        Resume where an earlier reading stopped; replaces ``start_time``, ``end_time``
        and ``offset``, which must not be given with it.
    follow : bool
        At the end of the feed, sleep ``poll_interval`` seconds and poll again, forever
        (even once ``end_time`` has passed).
    poll_interval : float
        Seconds between polls in follow mode.

    Examples
    --------
    >>> feed = ChangeFeed(transport, follow=True)  # doctest: +SKIP
    >>> async for entry in feed:  # doctest: +SKIP
    ...     handle(entry)
    ...     save(feed.cursor.to_json())
    """

    def __init__(
        self,
        transport: Transport,
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
    ):
        if cursor is not None:
            if start_time is not None or end_time is not None or offset:
                raise ValueError("give either cursor or start_time/end_time/offset, not both")
            if api_version is not None and api_version != cursor.api_version:
                raise ValueError(
                    f"cursor is for change feed {cursor.api_version}, not {api_version}"
                )
        else:
            cursor = ChangeFeedCursor(
                api_version or infer_api_version(transport.base_url),
                offset=offset,
                start_time=start_time,
                end_time=end_time,
            )
        default, largest = _LIMITS[cursor.api_version]
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        if poll_interval < 0:
            raise ValueError(f"poll_interval must be >= 0, not {poll_interval}")
        self._transport = transport
        self._cursor = cursor
        # Larger pages are refused by the service, so they are lowered, not passed on.
        self.limit = min(limit or default, largest)
        self.include_metadata = include_metadata
        self.follow = follow
        self.poll_interval = poll_interval
        self._buffer: deque[ChangeFeedEntry] = deque()
        self._at_end = False
        self._stalled = False
        self._closed = False

    @property
    def cursor(self) -> ChangeFeedCursor:
        """Position after the last entry returned; save it to resume from there."""
        return self._cursor

    @property
    def api_version(self) -> str:
        """The paging rules in use, ``"v1"`` or ``"v2"``."""
        return self._cursor.api_version

    def __aiter__(self) -> ChangeFeed:
        return self

    async def __anext__(self) -> ChangeFeedEntry:
        while not self._closed:
            if self._buffer:
                entry = self._buffer.popleft()
                # Only entries handed out move the cursor, so a cursor saved after handling
                # an entry never skips the rest of the page it came in.
                if self._cursor.api_version == "v2":
                    self._cursor = replace(self._cursor, offset=self._cursor.offset + 1)
                else:
                    offset = max(self._cursor.offset, entry.sequence)
                    self._cursor = replace(self._cursor, offset=offset)
                return entry
            if self._at_end:
                if not self.follow:
                    self._closed = True
                    break
                await anyio.sleep(self.poll_interval)
                self._at_end = False
                # Re-check: the feed may have been closed while it slept.
                continue
            if self._cursor.api_version == "v2":
                await self._fill_v2()
            else:
                await self._fill_v1()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the iteration; later calls to ``__anext__`` end it at once."""
        self._closed = True
        self._buffer.clear()

    async def __aenter__(self) -> ChangeFeed:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _query(self, offset: int) -> str:
        pairs: list[tuple[str, Any]] = []
        if self._cursor.start_time is not None:
            pairs.append(("startTime", format_timestamp(self._cursor.start_time)))
        if self._cursor.end_time is not None:
            pairs.append(("endTime", format_timestamp(self._cursor.end_time)))
        pairs += [
            ("offset", offset),
            ("limit", self.limit),
            ("includeMetadata", self.include_metadata),
        ]
        return build_query(extra=pairs)

    async def _page(self, offset: int) -> list[ChangeFeedEntry]:
        response, data = await _get_json(self._transport, _FEED_PATH, self._query(offset))
        if data is None:
            return []
        if not isinstance(data, list):
            raise ProtocolError(
                "change feed response is not a JSON array", method="GET", url=response.url
            )
        return [_entry(item, response) for item in data]

    async def _fill_v2(self) -> None:
        page = await self._page(self._cursor.offset)
        self._buffer.extend(page)
        if len(page) < self.limit:
            self._at_end = True

    async def _fill_v1(self) -> None:
        offset = self._cursor.offset
        page = await self._page(offset)
        # Sorted so that the cursor, which follows the entries handed out, never passes an
        # entry still waiting in the buffer.
        fresh = sorted((e for e in page if e.sequence > offset), key=lambda e: e.sequence)
        if page and not fresh:
            # Paging from the last sequence again would fetch this page forever.
            raise ProtocolError(
                f"change feed page after sequence {offset} holds only earlier entries",
                method="GET",
                url=self._transport.url(_FEED_PATH, self._query(offset)),
            )
        if fresh:
            self._stalled = False
            self._buffer.extend(fresh)
            return
        latest = await get_changefeed_latest(self._transport)
        if latest is None or latest.sequence <= offset:
            self._at_end = True
            return
        # The page (offset, offset + limit] is empty but the feed goes on: the numbers
        # skipped. Step over the empty range, but never past the latest entry itself.
        target = min(offset + self.limit, latest.sequence - 1)
        if target > offset:
            self._stalled = False
            self._cursor = replace(self._cursor, offset=target)
            return
        # The latest entry is the very next sequence yet was not listed: it may have been
        # committed between the two requests, so ask once more before calling it an error.
        if self._stalled:
            raise ProtocolError(
                f"change feed lists nothing after sequence {offset}, "
                f"but its latest entry is {latest.sequence}",
                method="GET",
                url=self._transport.url(_LATEST_PATH),
            )
        self._stalled = True
