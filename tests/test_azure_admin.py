"""Azure administration calls on the wire: extended query tags, operations, bulk update,
export and data partitions.

Requests are compared with the shapes of the service's conformance collection
(``reference/azure-api-operations.json``): method, raw path, query, Content-Type and the JSON
body exactly. Responses are JSON written here after the service's documented examples, in
the camel case the service sends (its documentation tables use Pascal case; both are read).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
import respx
from pydicom.dataset import Dataset

import dicomweb_async
from dicomweb_async import (
    AzureDICOMwebClient,
    ConflictError,
    DICOMwebError,
    HTTPStatusError,
    NotFoundError,
    ProtocolError,
    RetryPolicy,
)
from dicomweb_async._azure.admin import Partition, export, list_partitions, update_studies
from dicomweb_async._azure.extended_query_tags import (
    ExtendedQueryTag,
    ExtendedQueryTagError,
    ExtendedQueryTagSpec,
    add_extended_query_tags,
    delete_extended_query_tag,
    get_extended_query_tag,
    iter_extended_query_tags,
    list_extended_query_tag_errors,
    list_extended_query_tags,
    update_extended_query_tag,
)
from dicomweb_async._azure.json_values import parse_time
from dicomweb_async._azure.operations import (
    Operation,
    OperationReference,
    OperationState,
    get_operation,
)
from dicomweb_async._transport.transport import Transport

BASE = "http://127.0.0.1:8042/v2"
PREFIX = "/v2"

STUDY = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
SERIES = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
INSTANCE = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"

OP_ID = "1323c079a1b64efcb8943ef7707b5438"
OP_HREF = f"{BASE}/operations/{OP_ID}"
JSON_TYPE = "application/json"

UTC = timezone.utc


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def transport(router: respx.MockRouter) -> AsyncIterator[Transport]:
    # No retries: every mocked answer is meant to be the final one.
    client = AzureDICOMwebClient(BASE, retry=RetryPolicy(attempts=1))
    try:
        yield client._transport
    finally:
        await client.aclose()


def only_request(route: respx.Route) -> httpx.Request:
    assert route.call_count == 1
    return route.calls.last.request


def assert_request(
    request: httpx.Request,
    method: str,
    path: str,
    query: str = "",
    *,
    content_type: str | None = None,
    body: Any = None,
) -> None:
    """Method, raw path and query, Content-Type, and the JSON body (parsed, compared exactly)."""
    assert request.method == method
    assert request.url.host == "127.0.0.1"
    assert request.url.port == 8042
    assert request.url.raw_path.decode("ascii") == PREFIX + path + (f"?{query}" if query else "")
    if content_type is None:
        assert "Content-Type" not in request.headers
        assert request.content == b""
    else:
        assert request.headers["Content-Type"] == content_type
        assert json.loads(request.content) == body


def reference(operation_id: str = OP_ID) -> dict[str, str]:
    return {"id": operation_id, "href": f"{BASE}/operations/{operation_id}"}


def operation_json(status: str, percent: int, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "operationId": OP_ID,
        "type": "reindex",
        "createdTime": "2021-10-06T16:40:02.5247083Z",
        "lastUpdatedTime": "2021-10-06T16:40:04.5152934Z",
        "status": status,
        "percentComplete": percent,
        "resources": [f"{BASE}/extendedquerytags/00101010"],
    }
    data.update(extra)
    return data


def tag_json(path: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "path": path,
        "vr": "LO",
        "level": "Series",
        "status": "Ready",
        "queryStatus": "Enabled",
    }
    data.update(extra)
    return data


def private_specs(count: int) -> list[ExtendedQueryTagSpec]:
    """``count`` distinct private tags of group 0011."""
    return [
        ExtendedQueryTagSpec(f"{0x00111000 + i:08X}", "LO", "Study", "Creator")
        for i in range(count)
    ]


# -- extended query tags: add -----------------------------------------------------------------


async def test_add_extended_query_tags_request_and_operation(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.post("/extendedquerytags").respond(202, json=reference())
    operation = await add_extended_query_tags(
        transport, [ExtendedQueryTagSpec("ManufacturerModelName", "LO", "Series")]
    )
    # The collection's Create-extended-query-tag: a JSON array of {Path, VR, Level}.
    assert_request(
        only_request(route),
        "POST",
        "/extendedquerytags",
        content_type=JSON_TYPE,
        body=[{"Path": "ManufacturerModelName", "VR": "LO", "Level": "Series"}],
    )
    assert isinstance(operation, Operation)
    assert operation.id == OP_ID
    assert operation.reference == OperationReference(OP_ID, OP_HREF)


async def test_add_extended_query_tags_from_mappings(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.post("/extendedquerytags").respond(202, json=reference())
    await add_extended_query_tags(
        transport,
        [
            {"Path": "04011001", "VR": "SS", "PrivateCreator": "MicrosoftPC", "Level": "instance"},
            {"path": "00100040", "level": "Study"},
            ExtendedQueryTagSpec("00101010", "as", "STUDY"),
        ],
    )
    assert json.loads(only_request(route).content) == [
        {"Path": "04011001", "VR": "SS", "Level": "Instance", "PrivateCreator": "MicrosoftPC"},
        {"Path": "00100040", "Level": "Study"},
        {"Path": "00101010", "VR": "AS", "Level": "Study"},
    ]


async def test_add_extended_query_tags_conflict(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.post("/extendedquerytags").respond(409, text="tag already exists")
    with pytest.raises(ConflictError):
        await add_extended_query_tags(transport, [ExtendedQueryTagSpec("00101010", "AS", "Study")])


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        pytest.param([], "no extended query tags", id="empty"),
        pytest.param(
            private_specs(129),
            "at most 128",
            id="129-tags",
        ),
        pytest.param([{"Path": "00101010", "VR": "SQ", "Level": "Study"}], "SQ", id="vr-SQ"),
        pytest.param([{"Path": "00101010", "VR": "OB", "Level": "Study"}], "OB", id="vr-OB"),
        pytest.param([{"Path": "00101010", "VR": "LO", "Level": "Patient"}], "level", id="level"),
        pytest.param([{"Path": "0010/1010", "VR": "LO", "Level": "Study"}], "path", id="slash"),
        pytest.param([{"Path": "../admin", "VR": "LO", "Level": "Study"}], "path", id="dots"),
        pytest.param([{"Path": "", "VR": "LO", "Level": "Study"}], "path", id="blank-path"),
        pytest.param([{"Path": "04011001", "Level": "Study"}], "needs a VR", id="private-no-vr"),
        pytest.param(
            [{"Path": "00100040", "VR": "CS", "Level": "Study", "PrivateCreator": "X"}],
            "not a private tag",
            id="creator-on-standard-tag",
        ),
        pytest.param([{"Path": "00100040", "Level": "Study", "Foo": 1}], "Foo", id="unknown-key"),
        pytest.param([{"Path": "00100040"}], "Level", id="no-level"),
    ],
)
async def test_add_extended_query_tags_validation(
    router: respx.MockRouter, transport: Transport, tags: list[Any], message: str
) -> None:
    # No route: a request reaching the router would fail the test on its own.
    with pytest.raises(ValueError, match=message):
        await add_extended_query_tags(transport, tags)


async def test_add_extended_query_tags_accepts_128(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.post("/extendedquerytags").respond(202, json=reference())
    await add_extended_query_tags(transport, private_specs(128))
    assert len(json.loads(only_request(route).content)) == 128


async def test_add_extended_query_tags_rejects_a_single_mapping(transport: Transport) -> None:
    with pytest.raises(TypeError):
        await add_extended_query_tags(
            transport,
            {"Path": "00100040", "Level": "Study"},  # type: ignore[arg-type]
        )


# -- extended query tags: list, get, update, delete, errors -----------------------------------


async def test_list_extended_query_tags_pages_until_a_short_page(
    router: respx.MockRouter, transport: Transport
) -> None:
    paths = [f"0010{i:04X}" for i in range(0x20, 0x25)]
    pages = [paths[0:2], paths[2:4], paths[4:5]]
    route = router.get("/extendedquerytags").mock(
        side_effect=[httpx.Response(200, json=[tag_json(p) for p in page]) for page in pages]
    )
    tags = await list_extended_query_tags(transport, limit=2)
    assert [tag.path for tag in tags] == paths
    queries = [call.request.url.query.decode() for call in route.calls]
    assert queries == ["limit=2&offset=0", "limit=2&offset=2", "limit=2&offset=4"]
    for call in route.calls:
        assert_request(call.request, "GET", "/extendedquerytags", call.request.url.query.decode())
        assert call.request.headers["Accept"] == JSON_TYPE


async def test_iter_extended_query_tags_full_last_page_then_empty(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.get("/extendedquerytags").mock(
        side_effect=[
            httpx.Response(200, json=[tag_json("00100020"), tag_json("00100030")]),
            httpx.Response(200, json=[]),
        ]
    )
    seen = [tag.path async for tag in iter_extended_query_tags(transport, limit=2, offset=10)]
    assert seen == ["00100020", "00100030"]
    assert [c.request.url.query.decode() for c in route.calls] == [
        "limit=2&offset=10",
        "limit=2&offset=12",
    ]


async def test_list_extended_query_tags_default_paging_and_204(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.get("/extendedquerytags").respond(204)
    assert await list_extended_query_tags(transport) == []
    assert only_request(route).url.query == b"limit=100&offset=0"


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (-1, 0), (10, -1), (True, 0)])
async def test_list_extended_query_tags_bad_paging(
    transport: Transport, limit: int, offset: int
) -> None:
    with pytest.raises(ValueError):
        await list_extended_query_tags(transport, limit=limit, offset=offset)


async def test_list_extended_query_tags_not_an_array(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.get("/extendedquerytags").respond(200, json={"path": "00100020"})
    with pytest.raises(ProtocolError, match="array"):
        await list_extended_query_tags(transport)


async def test_get_extended_query_tag_while_adding(
    router: respx.MockRouter, transport: Transport
) -> None:
    # The service's own example: a tag being indexed, with 21 errors so far.
    body = {
        "status": "Adding",
        "level": "Study",
        "errors": {"count": 21, "href": f"{BASE}/extendedquerytags/00101010/errors"},
        "operation": {"id": "1a5d0306d9624f699929ee1a59ed57a0", "href": f"{BASE}/operations/x"},
        "queryStatus": "Disabled",
        "path": "00101010",
        "vr": "AS",
    }
    route = router.get("/extendedquerytags/00101010").respond(200, json=body)
    tag = await get_extended_query_tag(transport, "00101010")
    assert_request(only_request(route), "GET", "/extendedquerytags/00101010")
    assert tag == ExtendedQueryTag(
        path="00101010",
        vr="AS",
        level="Study",
        private_creator=None,
        status="Adding",
        query_status="Disabled",
        errors_count=21,
        operation=OperationReference("1a5d0306d9624f699929ee1a59ed57a0", f"{BASE}/operations/x"),
        raw=body,
    )
    assert tag.raw == body


async def test_get_extended_query_tag_pascal_case_private(
    router: respx.MockRouter, transport: Transport
) -> None:
    body = {
        "Path": "04011001",
        "VR": "SS",
        "PrivateCreator": "MicrosoftPC",
        "Level": "Instance",
        "Status": "Ready",
        "QueryStatus": "Enabled",
        "ErrorsCount": 0,
    }
    router.get("/extendedquerytags/04011001").respond(200, json=body)
    tag = await get_extended_query_tag(transport, "04011001")
    assert (tag.path, tag.vr, tag.private_creator, tag.level) == (
        "04011001",
        "SS",
        "MicrosoftPC",
        "Instance",
    )
    assert (tag.status, tag.query_status, tag.errors_count, tag.operation) == (
        "Ready",
        "Enabled",
        0,
        None,
    )


@pytest.mark.parametrize("path", ["PatientAge", "00400275.00321060"])
async def test_tag_paths_go_into_the_url_as_given(
    router: respx.MockRouter, transport: Transport, path: str
) -> None:
    route = router.get(f"/extendedquerytags/{path}").respond(200, json=tag_json(path))
    assert (await get_extended_query_tag(transport, path)).path == path
    assert_request(only_request(route), "GET", f"/extendedquerytags/{path}")


@pytest.mark.parametrize("path", ["0010,1010", "00101010/errors", "a..b", "x y", "%2F"])
async def test_bad_tag_paths_never_reach_the_wire(transport: Transport, path: str) -> None:
    with pytest.raises(ValueError, match="tag path"):
        await get_extended_query_tag(transport, path)
    with pytest.raises(ValueError, match="tag path"):
        await delete_extended_query_tag(transport, path)


async def test_get_extended_query_tag_not_found(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.get("/extendedquerytags/00101010").respond(404)
    with pytest.raises(NotFoundError):
        await get_extended_query_tag(transport, "00101010")


async def test_update_extended_query_tag(router: respx.MockRouter, transport: Transport) -> None:
    answer = tag_json("00101010", vr="AS", level="Study", queryStatus="Disabled")
    route = router.patch("/extendedquerytags/00101010").respond(200, json=answer)
    tag = await update_extended_query_tag(transport, "00101010", "Disabled")
    # The collection's Update-extended-query-tag.
    assert_request(
        only_request(route),
        "PATCH",
        "/extendedquerytags/00101010",
        content_type=JSON_TYPE,
        body={"QueryStatus": "Disabled"},
    )
    assert tag.query_status == "Disabled"


async def test_update_extended_query_tag_enable(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.patch("/extendedquerytags/PatientAge").respond(
        200, json=tag_json("00101010", queryStatus="Enabled")
    )
    await update_extended_query_tag(transport, "PatientAge", query_status="enabled")
    assert json.loads(only_request(route).content) == {"QueryStatus": "Enabled"}


async def test_update_extended_query_tag_bad_status(transport: Transport) -> None:
    with pytest.raises(ValueError, match="Enabled"):
        await update_extended_query_tag(transport, "00101010", "Paused")


async def test_delete_extended_query_tag(router: respx.MockRouter, transport: Transport) -> None:
    route = router.delete("/extendedquerytags/00101010").respond(204)
    await delete_extended_query_tag(transport, "00101010")
    assert_request(only_request(route), "DELETE", "/extendedquerytags/00101010")


async def test_delete_extended_query_tag_not_found(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.delete("/extendedquerytags/00101010").respond(404)
    with pytest.raises(NotFoundError):
        await delete_extended_query_tag(transport, "00101010")


async def test_list_extended_query_tag_errors(
    router: respx.MockRouter, transport: Transport
) -> None:
    errors = [
        {
            "studyInstanceUid": STUDY,
            "seriesInstanceUid": SERIES,
            "sopInstanceUid": INSTANCE,
            "createdTime": "2021-10-06T16:41:44.4783136",
            "errorMessage": "Value length is not expected.",
        },
        {
            "StudyInstanceUid": "2.25.1",
            "SeriesInstanceUid": "2.25.2",
            "SopInstanceUid": "2.25.3",
            "CreatedTime": "2021-10-06T16:41:45Z",
            "ErrorMessage": "Value exceeds the maximum length.",
        },
    ]
    route = router.get("/extendedquerytags/00101010/errors").respond(200, json=errors)
    found = await list_extended_query_tag_errors(transport, "00101010", limit=5, offset=5)
    assert_request(
        only_request(route), "GET", "/extendedquerytags/00101010/errors", "limit=5&offset=5"
    )
    assert found[0] == ExtendedQueryTagError(
        tag="00101010",
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        sop_instance_uid=INSTANCE,
        created_time=datetime(2021, 10, 6, 16, 41, 44, 478313, tzinfo=UTC),
        error_message="Value length is not expected.",
        raw=errors[0],
    )
    assert found[1].sop_instance_uid == "2.25.3"
    assert found[1].created_time == datetime(2021, 10, 6, 16, 41, 45, tzinfo=UTC)
    assert found[1].error_message == "Value exceeds the maximum length."


async def test_list_extended_query_tag_errors_pages(
    router: respx.MockRouter, transport: Transport
) -> None:
    one = {"studyInstanceUid": STUDY, "errorMessage": "bad"}
    route = router.get("/extendedquerytags/PatientAge/errors").mock(
        side_effect=[httpx.Response(200, json=[one]), httpx.Response(204)]
    )
    found = await list_extended_query_tag_errors(transport, "PatientAge", limit=1)
    assert [e.error_message for e in found] == ["bad"]
    assert [c.request.url.query.decode() for c in route.calls] == [
        "limit=1&offset=0",
        "limit=1&offset=1",
    ]


# -- operations -------------------------------------------------------------------------------


async def test_get_operation_running(router: respx.MockRouter, transport: Transport) -> None:
    body = operation_json("Running", 10)
    route = router.get(f"/operations/{OP_ID}").respond(202, json=body)
    state = await get_operation(transport, OP_ID)
    # The collection's Get-operation.
    assert_request(only_request(route), "GET", f"/operations/{OP_ID}")
    assert state == OperationState(
        operation_id=OP_ID,
        type="reindex",
        status="Running",
        raw_status="Running",
        percent_complete=10,
        created_time=datetime(2021, 10, 6, 16, 40, 2, 524708, tzinfo=UTC),
        last_updated_time=datetime(2021, 10, 6, 16, 40, 4, 515293, tzinfo=UTC),
        resources=[f"{BASE}/extendedquerytags/00101010"],
        results=None,
        errors=[],
        raw=body,
        http_status=202,
    )
    assert not state.done
    assert not state.succeeded
    assert not state.failed
    assert state.raise_for_failure() is state


@pytest.mark.parametrize(
    ("raw", "status", "done", "succeeded", "failed"),
    [
        ("notStarted", "NotStarted", False, False, False),
        ("running", "Running", False, False, False),
        ("succeeded", "Succeeded", True, True, False),
        ("Succeeded", "Succeeded", True, True, False),
        ("completed", "Succeeded", True, True, False),
        ("Completed", "Succeeded", True, True, False),
        ("failed", "Failed", True, False, True),
        ("canceled", "Canceled", True, False, True),
    ],
)
async def test_operation_status_normalised(
    router: respx.MockRouter,
    transport: Transport,
    raw: str,
    status: str,
    done: bool,
    succeeded: bool,
    failed: bool,
) -> None:
    code = 200 if done else 202
    router.get(f"/operations/{OP_ID}").respond(code, json=operation_json(raw, 50))
    state = await get_operation(transport, OP_ID)
    assert (state.status, state.raw_status) == (status, raw)
    assert (state.done, state.succeeded, state.failed) == (done, succeeded, failed)


async def test_unknown_status_is_done_only_when_the_server_says_so(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.get(f"/operations/{OP_ID}").mock(
        side_effect=[
            httpx.Response(202, json=operation_json("Paused", 5)),
            httpx.Response(200, json=operation_json("Archived", 100)),
        ]
    )
    running = await get_operation(transport, OP_ID)
    finished = await get_operation(transport, OP_ID)
    assert (running.status, running.raw_status, running.done) == ("Unknown", "Paused", False)
    assert (finished.status, finished.raw_status, finished.done) == ("Unknown", "Archived", True)
    assert not finished.succeeded


async def test_bulk_update_results_and_failure(
    router: respx.MockRouter, transport: Transport
) -> None:
    body = {
        "operationId": OP_ID,
        "type": "update",
        "createdTime": "2023-05-08T05:01:30.1441374Z",
        "lastUpdatedTime": "2023-05-08T05:01:42.9067335Z",
        "status": "failed",
        "percentComplete": 100,
        "results": {
            "studyUpdated": 0,
            "studyFailed": 1,
            "instanceUpdated": 0,
            "errors": [f"Failed to update instances for study {STUDY}"],
        },
    }
    router.get(f"/operations/{OP_ID}").respond(200, json=body)
    state = await get_operation(transport, OP_ID)
    assert state.failed and state.done and not state.succeeded
    assert state.type == "update"
    assert state.results == body["results"]
    assert state.errors == [f"Failed to update instances for study {STUDY}"]
    assert state.resources == []
    with pytest.raises(DICOMwebError, match=f"{OP_ID}.*update.*Failed to update") as info:
        state.raise_for_failure()
    assert type(info.value) is DICOMwebError


async def test_failed_operation_without_messages(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.get(f"/operations/{OP_ID}").respond(200, json=operation_json("Failed", 40))
    state = await get_operation(transport, OP_ID)
    with pytest.raises(DICOMwebError, match="no error message"):
        state.raise_for_failure()


async def test_export_results(router: respx.MockRouter, transport: Transport) -> None:
    results = {
        "errorHref": "https://dicomexport.blob.core.windows.net/export/4853/errors.log",
        "exported": 1000,
        "skipped": 3,
    }
    body = {
        "operationId": OP_ID,
        "type": "export",
        "createdTime": "2022-09-08T16:40:36.2627618Z",
        "lastUpdatedTime": "2022-09-08T16:41:01.2776644Z",
        "status": "completed",
        "results": results,
    }
    router.get(f"/operations/{OP_ID}").respond(200, json=body)
    state = await get_operation(transport, OP_ID)
    assert state.succeeded
    assert state.results == results
    assert state.percent_complete is None
    assert state.errors == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"status": "Running"}'],
    ids=["not-json", "array", "no-operation-id"],
)
async def test_get_operation_bad_answers(
    router: respx.MockRouter, transport: Transport, body: bytes
) -> None:
    router.get(f"/operations/{OP_ID}").respond(202, content=body)
    with pytest.raises(ProtocolError):
        await get_operation(transport, OP_ID)


async def test_get_operation_not_found(router: respx.MockRouter, transport: Transport) -> None:
    router.get(f"/operations/{OP_ID}").respond(404)
    with pytest.raises(NotFoundError):
        await get_operation(transport, OP_ID)


@pytest.mark.parametrize("bad", ["", "../studies", "a/b", "abc?x=1", "x" * 200])
async def test_bad_operation_ids(transport: Transport, bad: str) -> None:
    with pytest.raises(ValueError, match="operation id"):
        await get_operation(transport, bad)
    with pytest.raises(ValueError, match="operation id"):
        Operation(transport, bad)


async def test_wait_polls_until_done(router: respx.MockRouter, transport: Transport) -> None:
    route = router.get(f"/operations/{OP_ID}").mock(
        side_effect=[
            httpx.Response(202, json=operation_json("NotStarted", 0)),
            httpx.Response(202, json=operation_json("Running", 60)),
            httpx.Response(200, json=operation_json("Completed", 100)),
        ]
    )
    operation = Operation(transport, OperationReference(OP_ID, OP_HREF))
    state = await operation.wait(interval=0.001, max_interval=0.002)
    assert route.call_count == 3
    assert state.succeeded
    assert state.raw_status == "Completed"
    assert state.percent_complete == 100
    assert repr(operation) == f"<Operation {OP_ID}>"


async def test_wait_backs_off_doubling_up_to_the_maximum(
    router: respx.MockRouter, transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    real_sleep = anyio.sleep

    async def record(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    # Patched on the anyio module, which the polling loop looks the function up in.
    monkeypatch.setattr(anyio, "sleep", record)
    running = [httpx.Response(202, json=operation_json("Running", 10 * i)) for i in range(5)]
    router.get(f"/operations/{OP_ID}").mock(
        side_effect=[*running, httpx.Response(200, json=operation_json("Succeeded", 100))]
    )
    state = await Operation(transport, OP_ID).wait(interval=1.0, max_interval=3.0)
    assert state.succeeded
    assert delays == [1.0, 2.0, 3.0, 3.0, 3.0]


async def test_wait_returns_a_failed_state(router: respx.MockRouter, transport: Transport) -> None:
    router.get(f"/operations/{OP_ID}").mock(
        side_effect=[
            httpx.Response(202, json=operation_json("Running", 20)),
            httpx.Response(200, json=operation_json("Failed", 20, errors=["disk full"])),
        ]
    )
    state = await Operation(transport, OP_ID).wait(interval=0.001)
    assert state.failed
    assert state.errors == ["disk full"]
    with pytest.raises(DICOMwebError, match="disk full"):
        state.raise_for_failure()


async def test_wait_timeout_names_the_operation(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.get(f"/operations/{OP_ID}").respond(202, json=operation_json("Running", 42))
    operation = Operation(transport, OP_ID)
    with pytest.raises(dicomweb_async.TimeoutError) as info:
        await operation.wait(timeout=0.05, interval=0.005, max_interval=0.01)
    message = str(info.value)
    assert OP_ID in message
    assert "42% complete" in message
    assert info.value.url == f"{BASE}/operations/{OP_ID}"
    assert route.call_count >= 2


async def test_wait_converts_only_its_own_deadline(
    router: respx.MockRouter, transport: Transport
) -> None:
    # A builtin TimeoutError from elsewhere is not the deadline and must not be relabelled.
    router.get(f"/operations/{OP_ID}").mock(side_effect=builtins.TimeoutError("elsewhere"))
    with pytest.raises(builtins.TimeoutError, match="elsewhere") as info:
        await Operation(transport, OP_ID).wait(timeout=5, interval=0.001)
    assert not isinstance(info.value, dicomweb_async.TimeoutError)


async def test_wait_returns_at_once_when_already_done(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.get(f"/operations/{OP_ID}").respond(200, json=operation_json("Succeeded", 100))
    with anyio.fail_after(5):
        state = await Operation(transport, OP_ID).wait(timeout=10, interval=60.0, max_interval=60)
    assert state.succeeded
    assert route.call_count == 1


@pytest.mark.parametrize(("interval", "max_interval"), [(-1.0, 1.0), (2.0, 1.0)])
async def test_wait_bad_intervals(
    transport: Transport, interval: float, max_interval: float
) -> None:
    with pytest.raises(ValueError):
        await Operation(transport, OP_ID).wait(interval=interval, max_interval=max_interval)


async def test_operation_http_errors_propagate_from_wait(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.get(f"/operations/{OP_ID}").respond(404)
    with pytest.raises(NotFoundError):
        await Operation(transport, OP_ID).wait(timeout=5, interval=0.001)


async def test_operation_reference_from_location_when_the_body_is_empty(
    router: respx.MockRouter, transport: Transport
) -> None:
    router.post("/export").respond(202, headers={"Location": OP_HREF})
    operation = await export(transport, source=[STUDY], destination="https://a.blob/c")
    assert operation.reference == OperationReference(OP_ID, OP_HREF)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(202, content=b"<html>"),
        httpx.Response(202, json={"href": OP_HREF}),
        httpx.Response(202, json={"id": "../x"}),
        httpx.Response(202),
    ],
    ids=["not-json", "no-id", "bad-id", "empty-without-location"],
)
async def test_bad_operation_references(
    router: respx.MockRouter, transport: Transport, answer: httpx.Response
) -> None:
    router.post("/export").mock(return_value=answer)
    with pytest.raises(ProtocolError):
        await export(transport, source=[STUDY], destination="https://a.blob/c")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-10-06T16:40:02.5247083Z", datetime(2021, 10, 6, 16, 40, 2, 524708, tzinfo=UTC)),
        ("2021-10-06T16:41:44.4783136", datetime(2021, 10, 6, 16, 41, 44, 478313, tzinfo=UTC)),
        ("2021-10-06T16:41:44", datetime(2021, 10, 6, 16, 41, 44, tzinfo=UTC)),
        ("2021-10-06T16:41:44.5z", datetime(2021, 10, 6, 16, 41, 44, 500000, tzinfo=UTC)),
        (
            "2021-10-06T18:41:44.1+02:00",
            datetime(2021, 10, 6, 18, 41, 44, 100000, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2021-10-06T18:41:44-0130", datetime(2021, 10, 6, 20, 11, 44, tzinfo=UTC)),
        ("yesterday", None),
        ("2021-13-06T16:41:44Z", None),
    ],
)
def test_parse_time(text: str, expected: datetime | None) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


# -- bulk update ------------------------------------------------------------------------------


CHANGE_DATASET = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New Patient Name"}]}}


async def test_update_studies_request(router: respx.MockRouter, transport: Transport) -> None:
    route = router.post("/studies/$bulkUpdate").respond(202, json=reference())
    operation = await update_studies(transport, [STUDY], CHANGE_DATASET)
    # The collection's Bulk-update-study body, with the documented "$bulkUpdate" casing.
    assert_request(
        only_request(route),
        "POST",
        "/studies/$bulkUpdate",
        content_type=JSON_TYPE,
        body={"studyInstanceUids": [STUDY], "changeDataset": CHANGE_DATASET},
    )
    assert operation.id == OP_ID


async def test_update_studies_from_a_dataset_in_a_partition(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.post("/partitions/Microsoft.Default/studies/$bulkUpdate").respond(
        202, json=reference()
    )
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-7"
    await update_studies(transport, [STUDY, "1.2.3"], ds, partition="Microsoft.Default")
    assert json.loads(only_request(route).content) == {
        "studyInstanceUids": [STUDY, "1.2.3"],
        "changeDataset": {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["PID-7"]},
        },
    }


@pytest.mark.parametrize(
    ("uids", "change", "error"),
    [
        pytest.param([], CHANGE_DATASET, ValueError, id="no-studies"),
        pytest.param(["1.2/../3"], CHANGE_DATASET, ValueError, id="bad-uid"),
        pytest.param(STUDY, CHANGE_DATASET, TypeError, id="uid-not-in-a-list"),
        pytest.param([STUDY], {}, ValueError, id="empty-change"),
        pytest.param([STUDY], {"PatientName": {"vr": "PN"}}, ValueError, id="keyword-key"),
        pytest.param([STUDY], {"00100010": "Doe^Jane"}, ValueError, id="not-dicom-json"),
        pytest.param([STUDY], ["00100010"], TypeError, id="not-a-mapping"),
    ],
)
async def test_update_studies_validation(
    transport: Transport, uids: Any, change: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await update_studies(transport, uids, change)


async def test_update_studies_bad_partition(transport: Transport) -> None:
    with pytest.raises(ValueError, match="partition"):
        await update_studies(transport, [STUDY], CHANGE_DATASET, partition="a/b")


# -- export -----------------------------------------------------------------------------------


async def test_export_request(router: respx.MockRouter, transport: Transport) -> None:
    route = router.post("/export").respond(202, json=reference())
    identifiers = [STUDY, f"{STUDY}/{SERIES}", f"{STUDY}/{SERIES}/{INSTANCE}"]
    operation = await export(
        transport,
        source=identifiers,
        destination="https://dicomexport.blob.core.windows.net/export",
    )
    assert_request(
        only_request(route),
        "POST",
        "/export",
        content_type=JSON_TYPE,
        body={
            "source": {"type": "identifiers", "settings": {"values": identifiers}},
            "destination": {
                "type": "azureblob",
                "settings": {
                    "blobContainerUri": "https://dicomexport.blob.core.windows.net/export",
                    "useManagedIdentity": True,
                },
            },
        },
    )
    assert operation.id == OP_ID


async def test_export_with_settings_and_whole_objects(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.post("/export").mock(
        side_effect=[httpx.Response(202, json=reference()), httpx.Response(202, json=reference())]
    )
    sas = "https://acct.blob.core.windows.net/export?sv=2022&sig=abc"
    await export(transport, source=[STUDY], destination=sas, use_managed_identity=False)
    settings = {"blobContainerName": "export", "connectionString": "UseDevelopmentStorage=true"}
    source = {"type": "identifiers", "settings": {"values": ["1.2.3"]}}
    await export(transport, source=source, destination=settings)
    first, second = (json.loads(call.request.content) for call in route.calls)
    assert first["destination"] == {
        "type": "azureblob",
        "settings": {"blobContainerUri": sas, "useManagedIdentity": False},
    }
    assert second == {"source": source, "destination": {"type": "azureblob", "settings": settings}}


async def test_export_whole_destination_object(
    router: respx.MockRouter, transport: Transport
) -> None:
    route = router.post("/export").respond(202, json=reference())
    destination = {"Type": "azureblob", "Settings": {"BlobContainerUri": "https://a/b"}}
    await export(transport, source=[STUDY], destination=destination)
    assert json.loads(only_request(route).content)["destination"] == destination


@pytest.mark.parametrize(
    ("source", "destination", "error"),
    [
        pytest.param([], "https://a/b", ValueError, id="nothing"),
        pytest.param([f"{STUDY}/{SERIES}/{INSTANCE}/1"], "https://a/b", ValueError, id="4-uids"),
        pytest.param([f"{STUDY}//{INSTANCE}"], "https://a/b", ValueError, id="empty-uid"),
        pytest.param(["1.2 3"], "https://a/b", ValueError, id="bad-uid"),
        pytest.param(STUDY, "https://a/b", TypeError, id="string-source"),
        pytest.param([1], "https://a/b", TypeError, id="int-identifier"),
        pytest.param([STUDY], "container", ValueError, id="not-a-url"),
    ],
)
async def test_export_validation(
    transport: Transport, source: Any, destination: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await export(transport, source=source, destination=destination)


# -- partitions -------------------------------------------------------------------------------


async def test_list_partitions(router: respx.MockRouter, transport: Transport) -> None:
    body = [
        {
            "partitionKey": 1,
            "partitionName": "Microsoft.Default",
            "createdDate": "2022-09-15T01:14:04.5613214Z",
        },
        {"PartitionKey": 2, "PartitionName": "clinic-2", "CreatedDate": "2023-01-02T03:04:05"},
    ]
    route = router.get("/partitions").respond(200, json=body)
    partitions = await list_partitions(transport)
    # The collection's Get-all-partitions.
    assert_request(only_request(route), "GET", "/partitions")
    assert partitions == [
        Partition(
            "Microsoft.Default",
            1,
            datetime(2022, 9, 15, 1, 14, 4, 561321, tzinfo=UTC),
            raw=body[0],
        ),
        Partition("clinic-2", 2, datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC), raw=body[1]),
    ]


async def test_list_partitions_none(router: respx.MockRouter, transport: Transport) -> None:
    router.get("/partitions").respond(204)
    assert await list_partitions(transport) == []


async def test_list_partitions_bad_entry(router: respx.MockRouter, transport: Transport) -> None:
    router.get("/partitions").respond(200, json=[{"partitionKey": 3}])
    with pytest.raises(ProtocolError, match="PartitionName"):
        await list_partitions(transport)


@pytest.mark.parametrize(
    ("status", "retried"), [(503, True), (429, True), (502, False), (504, False)]
)
async def test_starting_an_operation_is_repeated_only_when_the_server_did_not_process_it(
    status: int, retried: bool
) -> None:
    with respx.mock(base_url=BASE, assert_all_mocked=True) as router:
        route = router.post("/studies/$bulkUpdate").mock(
            side_effect=[
                httpx.Response(status, headers={"Retry-After": "0"}),
                httpx.Response(202, json={"id": "abc", "href": f"{BASE}/operations/abc"}),
            ]
        )
        async with AzureDICOMwebClient(BASE, retry=RetryPolicy(attempts=3, backoff=0.0)) as c:
            change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}}
            if retried:
                op = await c.update_studies(["1.2.3"], change)
                assert op.id == "abc"
            else:
                with pytest.raises(HTTPStatusError):
                    await c.update_studies(["1.2.3"], change)
    assert route.call_count == (2 if retried else 1)
