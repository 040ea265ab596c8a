"""Change feed: entry and cursor parsing, and the v1 / v2 paging rules on the wire (respx).

The mocked service keeps a list of entries and answers pages the way Azure's stored
procedures select them: v2 by position in a time window (``OFFSET``/``FETCH``), v1 by
sequence range (``Sequence BETWEEN offset+1 AND offset+limit``), so gaps in the sequence
numbers give empty pages in the middle of the feed, as they do on the real service.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx
import pytest
import respx
import trio
from pydicom.dataset import Dataset

from dicomweb_async import AzureDICOMwebClient, ProtocolError
from dicomweb_async._azure.changefeed import (
    ChangeFeed,
    ChangeFeedCursor,
    ChangeFeedEntry,
    get_changefeed_latest,
    infer_api_version,
)
from dicomweb_async._azure.json_values import format_timestamp, parse_timestamp
from dicomweb_async._transport.transport import Transport

BASE = "http://127.0.0.1:8042/v2"
BASE_V1 = "http://127.0.0.1:8042/v1"
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
T0 = datetime(2024, 3, 1, 10, 0, 0, tzinfo=timezone.utc)
UTC = timezone.utc


def azure_time(value: datetime) -> str:
    """A timestamp the way Azure writes it: seven fractional digits and ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def entry_json(sequence: int, *, when: datetime | None = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "Sequence": sequence,
        "StudyInstanceUid": STUDY,
        "SeriesInstanceUid": SERIES,
        "SopInstanceUid": f"1.2.826.0.1.3680043.8.498.3.{sequence}",
        "Action": "create",
        "Timestamp": azure_time(when or T0 + timedelta(seconds=sequence)),
        "State": "current",
        "Metadata": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": f"Doe^{sequence}"}]}},
    }
    obj.update(extra)
    return obj


class FakeFeed:
    """The change feed of one service version, answering as Azure selects its pages."""

    def __init__(self, version: str, sequences: Iterable[int] = ()):
        self.version = version
        self.entries: list[dict[str, Any]] = []
        self.queries: list[str] = []
        self.latest_queries: list[str] = []
        self.accepts: list[str | None] = []
        for sequence in sequences:
            self.add(sequence)

    def add(self, sequence: int) -> None:
        self.entries.append(entry_json(sequence))

    def page(self, request: httpx.Request) -> httpx.Response:
        query = request.url.query.decode()
        self.queries.append(query)
        self.accepts.append(request.headers.get("accept"))
        params = dict(parse_qsl(query))
        offset, limit = int(params["offset"]), int(params["limit"])
        if self.version == "v2":
            start = parse_timestamp(params.get("startTime", "0001-01-01T00:00:00Z"))
            end = parse_timestamp(params.get("endTime", "9999-12-31T23:59:59Z"))
            window = [e for e in self.entries if start <= parse_timestamp(e["Timestamp"]) < end]
            page = window[offset : offset + limit]
        else:
            page = [e for e in self.entries if offset < e["Sequence"] <= offset + limit]
        if params["includeMetadata"] == "false":
            page = [{**e, "Metadata": None} for e in page]
        return httpx.Response(200, json=page)

    def latest(self, request: httpx.Request) -> httpx.Response:
        self.latest_queries.append(request.url.query.decode())
        if not self.entries:
            return httpx.Response(204)
        return httpx.Response(200, json=self.entries[-1])

    def mount(self, router: respx.MockRouter) -> FakeFeed:
        router.get("/changefeed/latest").mock(side_effect=self.latest)
        router.get("/changefeed").mock(side_effect=self.page)
        return self


@pytest.fixture
def router() -> Any:
    with respx.mock(base_url=BASE, assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def router_v1() -> Any:
    with respx.mock(base_url=BASE_V1, assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    client = AzureDICOMwebClient(BASE)
    yield client._transport
    await client.aclose()


@pytest.fixture
async def transport_v1() -> AsyncIterator[Transport]:
    client = AzureDICOMwebClient(BASE_V1)
    yield client._transport
    await client.aclose()


async def collect(feed: ChangeFeed) -> list[int]:
    return [entry.sequence async for entry in feed]


# -- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-09-17T22:09:56.1234567Z", datetime(2020, 9, 17, 22, 9, 56, 123456, UTC)),
        ("2020-09-17T22:09:56.9999999Z", datetime(2020, 9, 17, 22, 9, 56, 999999, UTC)),
        ("2020-09-17T22:09:56Z", datetime(2020, 9, 17, 22, 9, 56, tzinfo=UTC)),
        ("2020-09-17T22:09:56.5z", datetime(2020, 9, 17, 22, 9, 56, 500000, UTC)),
        ("2020-09-17T22:09:56.12+02:00", datetime(2020, 9, 17, 20, 9, 56, 120000, UTC)),
        ("2020-09-17T22:09:56-0130", datetime(2020, 9, 17, 23, 39, 56, tzinfo=UTC)),
        ("2020-09-17T22:09:56.1234567+00:00", datetime(2020, 9, 17, 22, 9, 56, 123456, UTC)),
        ("2020-09-17T22:09:56", datetime(2020, 9, 17, 22, 9, 56, tzinfo=UTC)),
        ("2020-09-17 22:09", datetime(2020, 9, 17, 22, 9, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["", "2020-09-17", "yesterday", "2020-13-01T00:00:00Z", "2020-09-17T22:09:56ZZ"]
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_format_timestamp() -> None:
    assert format_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"
    paris = timezone(timedelta(hours=1))
    later = datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=paris)
    assert format_timestamp(later) == "2024-01-02T02:04:05.250000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2024, 1, 2))


# -- entries ---------------------------------------------------------------------------------


def test_entry_from_json() -> None:
    entry = ChangeFeedEntry.from_json(entry_json(7, PartitionName="Microsoft.Default"))
    assert entry.sequence == 7
    assert entry.study_instance_uid == STUDY
    assert entry.series_instance_uid == SERIES
    assert entry.sop_instance_uid == "1.2.826.0.1.3680043.8.498.3.7"
    assert (entry.action, entry.state) == ("create", "current")
    assert entry.timestamp == T0 + timedelta(seconds=7)
    assert entry.partition_name == "Microsoft.Default"
    dataset = entry.metadata()
    assert isinstance(dataset, Dataset)
    assert str(dataset.PatientName) == "Doe^7"
    # Built afresh each time, so a caller changing one does not change the entry.
    assert entry.metadata() is not dataset
    hash(entry)  # usable in sets although it holds a dict


def test_entry_keys_any_case_and_values_lowered() -> None:
    entry = ChangeFeedEntry.from_json(
        {
            "sequence": 3,
            "studyInstanceUid": STUDY,
            "SERIESINSTANCEUID": SERIES,
            "sopInstanceUID": "1.2.3",
            "action": "Delete",
            "timestamp": "2020-09-17T22:09:56Z",
            "state": "Deleted",
        }
    )
    assert (entry.sequence, entry.series_instance_uid, entry.sop_instance_uid) == (
        3,
        SERIES,
        "1.2.3",
    )
    assert (entry.action, entry.state) == ("delete", "deleted")
    assert entry.partition_name is None
    assert entry.metadata_json is None
    assert entry.metadata() is None


def test_entry_null_metadata() -> None:
    entry = ChangeFeedEntry.from_json(entry_json(1, Metadata=None))
    assert entry.metadata_json is None
    assert entry.metadata() is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Sequence": None}, "no Sequence"),
        ({"Sequence": "5"}, "Sequence is str"),
        ({"Sequence": True}, "Sequence is bool"),
        ({"StudyInstanceUid": 1}, "StudyInstanceUid is int"),
        ({"Timestamp": "last tuesday"}, "Timestamp"),
        ({"State": None}, "no State"),
        ({"Metadata": [1, 2]}, "Metadata is list"),
    ],
)
def test_entry_rejects(change: dict[str, Any], message: str) -> None:
    obj = {k: v for k, v in {**entry_json(1), **change}.items() if v is not None}
    with pytest.raises(ProtocolError, match=message):
        ChangeFeedEntry.from_json(obj)


def test_entry_rejects_non_object() -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        ChangeFeedEntry.from_json([entry_json(1)])


def test_entry_bad_metadata() -> None:
    entry = ChangeFeedEntry.from_json(entry_json(1, Metadata={"00100010": {"Value": ["x"]}}))
    with pytest.raises(ProtocolError, match="not DICOM JSON"):
        entry.metadata()


# -- cursors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        ChangeFeedCursor("v1", offset=1234),
        ChangeFeedCursor("v2"),
        ChangeFeedCursor(
            "v2",
            offset=400,
            start_time=datetime(2024, 1, 1, tzinfo=UTC),
            end_time=datetime(2024, 1, 2, 12, 30, 1, 5, tzinfo=UTC),
        ),
        ChangeFeedCursor("v2", offset=3, start_time=datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_cursor_round_trip(cursor: ChangeFeedCursor) -> None:
    text = cursor.to_json()
    assert isinstance(json.loads(text), dict)
    assert ChangeFeedCursor.from_json(text) == cursor
    assert ChangeFeedCursor.from_json(text.encode()) == cursor


def test_cursor_json_form() -> None:
    cursor = ChangeFeedCursor(
        "v2",
        offset=5,
        start_time=datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
    )
    assert json.loads(cursor.to_json()) == {
        "api_version": "v2",
        "offset": 5,
        "start_time": "2024-01-01T00:00:00Z",
        "end_time": None,
    }


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"api_version": "v3"}',
        '{"api_version": "v1", "offset": -1}',
        '{"api_version": "v1", "offset": 1.5}',
        '{"api_version": "v1", "offset": 2, "start_time": "2024-01-01T00:00:00Z"}',
        '{"api_version": "v2", "start_time": 5}',
        '{"api_version": "v2", "start_time": "soon"}',
        '{"api_version": "v2", "offset": 0, "sequence": 9}',
        '{"start_time": "2024-01-02T00:00:00Z", "end_time": "2024-01-01T00:00:00Z"}',
    ],
)
def test_cursor_from_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ChangeFeedCursor.from_json(text)


def test_cursor_rejects_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ChangeFeedCursor("v2", start_time=datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("url", "version"),
    [
        ("https://x.dicom.azurehealthcareapis.com/v1", "v1"),
        ("https://x.dicom.azurehealthcareapis.com/v1.0-prerelease", "v1"),
        ("https://x.dicom.azurehealthcareapis.com/v1/partitions/p1", "v1"),
        ("https://x.dicom.azurehealthcareapis.com/v2", "v2"),
        ("http://127.0.0.1:8042/dicom-web", "v2"),
        ("http://v1.example.org/dicom-web", "v2"),
    ],
)
def test_infer_api_version(url: str, version: str) -> None:
    assert infer_api_version(url) == version


# -- argument checks -------------------------------------------------------------------------


async def test_feed_argument_checks(transport: Transport) -> None:
    cursor = ChangeFeedCursor("v2", offset=3)
    with pytest.raises(ValueError, match="not both"):
        ChangeFeed(transport, cursor=cursor, offset=3)
    with pytest.raises(ValueError, match="not both"):
        ChangeFeed(transport, cursor=cursor, start_time=T0)
    with pytest.raises(ValueError, match="cursor is for change feed v2"):
        ChangeFeed(transport, cursor=cursor, api_version="v1")
    with pytest.raises(ValueError, match="need change feed v2"):
        ChangeFeed(transport, api_version="v1", start_time=T0)
    with pytest.raises(ValueError, match="limit"):
        ChangeFeed(transport, limit=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ChangeFeed(transport, start_time=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="api_version"):
        ChangeFeed(transport, api_version="2")


async def test_version_and_limits(transport: Transport, transport_v1: Transport) -> None:
    assert (ChangeFeed(transport).api_version, ChangeFeed(transport).limit) == ("v2", 100)
    assert (ChangeFeed(transport_v1).api_version, ChangeFeed(transport_v1).limit) == ("v1", 10)
    assert ChangeFeed(transport, limit=1000).limit == 200
    assert ChangeFeed(transport_v1, limit=1000).limit == 100
    assert ChangeFeed(transport, api_version="v1", limit=50).limit == 50


# -- latest ----------------------------------------------------------------------------------


async def test_get_latest(router: respx.MockRouter, transport: Transport) -> None:
    route = router.get("/changefeed/latest").mock(
        return_value=httpx.Response(200, json=entry_json(42))
    )
    entry = await get_changefeed_latest(transport, include_metadata=True)
    assert entry is not None
    assert entry.sequence == 42
    assert entry.metadata_json is not None
    request = route.calls.last.request
    assert request.url.path == "/v2/changefeed/latest"
    assert request.url.query == b"includeMetadata=true"
    assert request.headers["accept"] == "application/json"

    await get_changefeed_latest(transport)
    assert route.calls.last.request.url.query == b"includeMetadata=false"


@pytest.mark.parametrize("response", [httpx.Response(204), httpx.Response(200, text="null")])
async def test_get_latest_empty_feed(
    router: respx.MockRouter, transport: Transport, response: httpx.Response
) -> None:
    router.get("/changefeed/latest").mock(return_value=response)
    assert await get_changefeed_latest(transport) is None


# -- v2 --------------------------------------------------------------------------------------


async def test_v2_query_string(router: respx.MockRouter, transport: Transport) -> None:
    feed = FakeFeed("v2", range(1, 4)).mount(router)
    start = datetime(2024, 3, 1, 11, 0, 0, tzinfo=timezone(timedelta(hours=1)))  # 10:00Z
    end = datetime(2024, 3, 1, 10, 0, 2, 500000, tzinfo=UTC)
    got = ChangeFeed(transport, start_time=start, end_time=end, include_metadata=False)
    entries = [entry async for entry in got]
    # Seconds 1 and 2.5 bound the window: entries 1 and 2 fall inside it, 3 does not.
    assert [e.sequence for e in entries] == [1, 2]
    assert all(e.metadata_json is None for e in entries)
    assert feed.queries == [
        "startTime=2024-03-01T10:00:00Z&endTime=2024-03-01T10:00:02.500000Z"
        "&offset=0&limit=100&includeMetadata=false"
    ]
    assert feed.accepts == ["application/json"]
    assert feed.latest_queries == []


async def test_v2_default_query(router: respx.MockRouter, transport: Transport) -> None:
    feed = FakeFeed("v2", [1]).mount(router)
    entries = [entry async for entry in ChangeFeed(transport)]
    assert [e.sequence for e in entries] == [1]
    metadata = entries[0].metadata()
    assert metadata is not None
    assert str(metadata.PatientName) == "Doe^1"
    assert feed.queries == ["offset=0&limit=100&includeMetadata=true"]


async def test_v2_pages_by_offset_with_limit_clamped(
    router: respx.MockRouter, transport: Transport
) -> None:
    feed = FakeFeed("v2", range(1, 451)).mount(router)
    got = await collect(ChangeFeed(transport, limit=500, offset=10))
    assert got == list(range(11, 451))
    assert feed.queries == [
        "offset=10&limit=200&includeMetadata=true",
        "offset=210&limit=200&includeMetadata=true",
        "offset=410&limit=200&includeMetadata=true",
    ]


async def test_v2_full_last_page_needs_one_more_request(
    router: respx.MockRouter, transport: Transport
) -> None:
    feed = FakeFeed("v2", range(1, 5)).mount(router)
    assert await collect(ChangeFeed(transport, limit=2)) == [1, 2, 3, 4]
    assert [dict(parse_qsl(q))["offset"] for q in feed.queries] == ["0", "2", "4"]


async def test_v2_empty_feed(router: respx.MockRouter, transport: Transport) -> None:
    router.get("/changefeed").mock(return_value=httpx.Response(204))
    feed = ChangeFeed(transport)
    assert await collect(feed) == []
    assert feed.cursor == ChangeFeedCursor("v2", offset=0)


async def test_v2_cursor_moves_with_entries_handed_out(
    router: respx.MockRouter, transport: Transport
) -> None:
    FakeFeed("v2", range(1, 8)).mount(router)
    feed = ChangeFeed(transport, limit=5, start_time=T0)
    assert feed.cursor.offset == 0
    offsets = []
    async for _entry in feed:
        offsets.append(feed.cursor.offset)
    assert offsets == [1, 2, 3, 4, 5, 6, 7]
    assert feed.cursor == ChangeFeedCursor("v2", offset=7, start_time=T0)


async def test_v2_resume_from_saved_cursor(router: respx.MockRouter, transport: Transport) -> None:
    fake = FakeFeed("v2", range(1, 8)).mount(router)
    end = T0 + timedelta(hours=1)
    first = ChangeFeed(transport, limit=3, start_time=T0, end_time=end)
    seen = []
    async for entry in first:
        seen.append(entry.sequence)
        if len(seen) == 4:
            break
    saved = first.cursor.to_json()
    fake.queries.clear()

    second = ChangeFeed(transport, limit=3, cursor=ChangeFeedCursor.from_json(saved))
    rest = await collect(second)
    assert seen + rest == list(range(1, 8))
    assert fake.queries[0] == (
        "startTime=2024-03-01T10:00:00Z&endTime=2024-03-01T11:00:00Z"
        "&offset=4&limit=3&includeMetadata=true"
    )


async def test_v2_follow_polls_until_stopped(
    router: respx.MockRouter, transport: Transport
) -> None:
    fake = FakeFeed("v2", [1]).mount(router)
    feed = ChangeFeed(transport, follow=True, poll_interval=0.01)
    assert (await anext(feed)).sequence == 1
    fake.add(2)
    assert (await anext(feed)).sequence == 2
    assert [dict(parse_qsl(q))["offset"] for q in fake.queries] == ["0", "1"]
    # Nothing new: it keeps polling from the cursor instead of ending.
    with anyio.move_on_after(0.2):
        await anext(feed)
        pytest.fail("no entry should have arrived")
    assert len(fake.queries) >= 4
    assert {dict(parse_qsl(q))["offset"] for q in fake.queries[1:]} == {"1", "2"}
    assert feed.cursor.offset == 2
    await feed.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(feed)


def test_follow_on_trio() -> None:
    async def main() -> list[int]:
        trio.lowlevel.current_task()  # raises outside trio
        async with AzureDICOMwebClient(BASE) as client:
            fake = FakeFeed("v2", [1])
            with respx.mock(base_url=BASE, assert_all_called=False) as router:
                fake.mount(router)
                got = []
                async with ChangeFeed(client._transport, follow=True, poll_interval=0) as f:
                    async for entry in f:
                        got.append(entry.sequence)
                        if entry.sequence == 1:
                            fake.add(2)
                        else:
                            break
                return got

    assert trio.run(main) == [1, 2]


# -- v1 --------------------------------------------------------------------------------------


async def test_v1_pages_by_sequence(router_v1: respx.MockRouter, transport_v1: Transport) -> None:
    fake = FakeFeed("v1", range(1, 26)).mount(router_v1)
    feed = ChangeFeed(transport_v1, include_metadata=False)
    assert await collect(feed) == list(range(1, 26))
    assert fake.queries == [
        "offset=0&limit=10&includeMetadata=false",
        "offset=10&limit=10&includeMetadata=false",
        "offset=20&limit=10&includeMetadata=false",
        "offset=25&limit=10&includeMetadata=false",
    ]
    # The empty page alone does not end it; the latest entry, already read, does.
    assert fake.latest_queries == ["includeMetadata=false"]
    assert feed.cursor == ChangeFeedCursor("v1", offset=25)


async def test_v1_skips_empty_pages_while_latest_is_ahead(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    fake = FakeFeed("v1", [1, 2, 3, 40, 41, 55]).mount(router_v1)
    feed = ChangeFeed(transport_v1)
    assert await collect(feed) == [1, 2, 3, 40, 41, 55]
    assert [int(dict(parse_qsl(q))["offset"]) for q in fake.queries] == [
        0,
        3,  # (3, 13] empty, latest 55: step over
        13,
        23,
        33,  # (33, 43] holds 40 and 41
        41,  # (41, 51] empty, latest 55
        51,
        55,  # empty and latest is 55: the end
    ]
    assert len(fake.latest_queries) == 5
    assert feed.cursor.offset == 55


async def test_v1_never_steps_past_latest(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    # A server answering "first entries after offset" would give the latest entry after
    # an empty page only through a race; stepping by the full limit would then lose it.
    pages = iter([[], [entry_json(5)], []])
    router_v1.get("/changefeed").mock(
        side_effect=lambda request: httpx.Response(200, json=next(pages))
    )
    router_v1.get("/changefeed/latest").mock(return_value=httpx.Response(200, json=entry_json(5)))
    feed = ChangeFeed(transport_v1)
    assert await collect(feed) == [5]
    offsets = [
        dict(parse_qsl(c.request.url.query.decode()))["offset"]
        for c in router_v1.calls
        if c.request.url.path == "/v1/changefeed"
    ]
    assert offsets == ["0", "4", "5"]


async def test_v1_empty_feed(router_v1: respx.MockRouter, transport_v1: Transport) -> None:
    fake = FakeFeed("v1").mount(router_v1)
    assert await collect(ChangeFeed(transport_v1)) == []
    assert len(fake.queries) == 1
    assert len(fake.latest_queries) == 1


async def test_v1_limit_clamped(router_v1: respx.MockRouter, transport_v1: Transport) -> None:
    fake = FakeFeed("v1", [1]).mount(router_v1)
    await collect(ChangeFeed(transport_v1, limit=500, offset=0))
    assert fake.queries[0] == "offset=0&limit=100&includeMetadata=true"


async def test_v1_resume_from_saved_cursor(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    fake = FakeFeed("v1", [2, 4, 6, 8, 10, 12, 14]).mount(router_v1)
    first = ChangeFeed(transport_v1, limit=5)
    seen = []
    async for entry in first:
        seen.append(entry.sequence)
        if len(seen) == 3:
            break
    saved = first.cursor.to_json()
    assert json.loads(saved)["offset"] == 6
    fake.queries.clear()

    rest = await collect(
        ChangeFeed(transport_v1, limit=5, cursor=ChangeFeedCursor.from_json(saved))
    )
    assert seen + rest == [2, 4, 6, 8, 10, 12, 14]
    assert fake.queries[0] == "offset=6&limit=5&includeMetadata=true"


async def test_v1_follow_polls_from_cursor(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    fake = FakeFeed("v1", [1]).mount(router_v1)
    feed = ChangeFeed(transport_v1, follow=True, poll_interval=0.01)
    assert (await anext(feed)).sequence == 1
    with anyio.move_on_after(0.1):
        await anext(feed)
        pytest.fail("no entry should have arrived")
    polls = len(fake.queries)
    assert polls >= 3
    fake.add(3)
    assert (await anext(feed)).sequence == 3
    assert {dict(parse_qsl(q))["offset"] for q in fake.queries[1:]} == {"1"}
    assert feed.cursor == ChangeFeedCursor("v1", offset=3)


async def test_v1_latest_next_but_never_listed(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    page = router_v1.get("/changefeed").mock(return_value=httpx.Response(200, json=[]))
    router_v1.get("/changefeed/latest").mock(return_value=httpx.Response(200, json=entry_json(1)))
    with pytest.raises(ProtocolError, match="latest entry is 1"):
        await collect(ChangeFeed(transport_v1))
    # Asked twice, in case the entry was committed between the two requests.
    assert page.call_count == 2


async def test_v1_latest_committed_between_requests(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    pages = iter([[], [entry_json(1)], []])
    router_v1.get("/changefeed").mock(
        side_effect=lambda request: httpx.Response(200, json=next(pages))
    )
    router_v1.get("/changefeed/latest").mock(return_value=httpx.Response(200, json=entry_json(1)))
    assert await collect(ChangeFeed(transport_v1)) == [1]


# -- malformed answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, text="[{"), "not JSON"),
        (httpx.Response(200, json={"Sequence": 1}), "not a JSON array"),
        (httpx.Response(200, json=[{"Sequence": 1}]), "no Timestamp"),
        (httpx.Response(200, json=[entry_json(1, Timestamp="17/09/2020")]), "Timestamp"),
        (httpx.Response(200, json=["x"]), "not an object"),
    ],
)
async def test_malformed_page(
    router: respx.MockRouter, transport: Transport, response: httpx.Response, message: str
) -> None:
    router.get("/changefeed").mock(return_value=response)
    with pytest.raises(ProtocolError, match=message) as caught:
        await collect(ChangeFeed(transport))
    assert caught.value.url == f"{BASE}/changefeed?offset=0&limit=100&includeMetadata=true"


async def test_malformed_latest(router: respx.MockRouter, transport: Transport) -> None:
    router.get("/changefeed/latest").mock(return_value=httpx.Response(200, json=[entry_json(1)]))
    with pytest.raises(ProtocolError, match="not an object"):
        await get_changefeed_latest(transport)


async def test_v1_page_going_backwards(
    router_v1: respx.MockRouter, transport_v1: Transport
) -> None:
    router_v1.get("/changefeed").mock(return_value=httpx.Response(200, json=[entry_json(3)]))
    with pytest.raises(ProtocolError, match="only earlier entries"):
        await collect(ChangeFeed(transport_v1, offset=3))


async def test_v1_page_out_of_order(router_v1: respx.MockRouter, transport_v1: Transport) -> None:
    pages = iter([[entry_json(3), entry_json(1), entry_json(2)], []])
    router_v1.get("/changefeed").mock(
        side_effect=lambda request: httpx.Response(200, json=next(pages))
    )
    router_v1.get("/changefeed/latest").mock(return_value=httpx.Response(200, json=entry_json(3)))
    feed = ChangeFeed(transport_v1)
    cursors = []
    async for _entry in feed:
        cursors.append(feed.cursor.offset)
    # Handed out in sequence order, so a cursor saved after entry 1 does not skip entry 2.
    assert cursors == [1, 2, 3]


async def test_client_methods_use_the_feed(router: Any) -> None:
    route = router.get("/changefeed").mock(
        side_effect=[
            httpx.Response(200, json=[entry_json(1), entry_json(2)]),
            httpx.Response(200, json=[]),
        ]
    )
    latest = router.get("/changefeed/latest").mock(
        return_value=httpx.Response(200, json=entry_json(2))
    )
    async with AzureDICOMwebClient(BASE) as client:
        feed = client.iter_changefeed(limit=5, include_metadata=False)
        assert [entry.sequence async for entry in feed] == [1, 2]
        assert feed.cursor.offset == 2
        newest = await client.get_changefeed_latest()
    assert newest is not None and newest.sequence == 2
    query = dict(parse_qsl(route.calls[0].request.url.query.decode()))
    assert query == {"offset": "0", "limit": "5", "includeMetadata": "false"}
    assert latest.call_count == 1
