"""Every request of the Azure DICOM service's own conformance collection, made by the client.

``COLLECTION`` below holds the request shapes of the service's Postman conformance
collection (39 requests: method, URL template, Accept/Content-Type and example JSON bodies).
Each request the client covers is mapped to the client call that produces it (``CALLS``) and
checked twice:

* on the wire (respx): method, path, query string, the headers the collection lists and the
  JSON body, equal to the collection's after placeholder substitution. Where the client sends
  something else on purpose, ``DEVIATIONS`` says what and why; a deviation that no longer
  applies fails the test, so the list stays true.
* against :class:`AzureDicomEmulator` (in-process), in one ordered walkthrough that expects
  the status the conformance statement promises for each request.

Every request is covered, the seven worklist (``/workitems``, UPS-RS) requests too. Their
example datasets are not copied here: the wire test compares the body with the dataset the
test itself gave the client. A request added to the collection without a client call fails
``test_every_request_has_a_client_call``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pydicom
import pytest
import respx

from dicomweb_async import AsyncDICOMwebClient, RetryPolicy
from dicomweb_async.testing import AzureDicomEmulator

DATA_DIR = Path(__file__).parent / "data"
SERVICE = "http://127.0.0.1:8042"
BASE = f"{SERVICE}/v2"
PREFIX = "/v2"
FAST_RETRY = RetryPolicy(attempts=1, backoff=0.0)

# -- the collection -------------------------------------------------------------------------

#: Where the table comes from (MIT-licensed data of microsoft/dicom-server).
SOURCE = (
    "microsoft/dicom-server docs/resources/Conformance-as-Postman.postman_collection.json "
    "(MIT), reduced to the request shapes"
)
#: The UIDs the collection's examples use; they are those of tests/data/red-triangle.dcm.
SAMPLE_UIDS = {
    "study": "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420",
    "series": "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652",
    "instance": "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395",
}
ACCEPT_DICOM_JSON = {"Accept": "application/dicom+json"}
STORE_SINGLE = {"Accept": "application/dicom+json", "Content-Type": "application/dicom"}
DICOM_JSON_BOTH = {"Accept": "application/dicom+json", "Content-Type": "application/dicom+json"}
UPS_BODY = {"Content-Type": "application/dicom+json"}
#: Stands for the example datasets of the worklist requests, which are not copied here.
OMITTED = "<workitem dataset: not copied; compared with the dataset the test sent>"


def _op(
    name: str,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body_mode: str | None = None,
    json_body: Any = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "method": method,
        "url": url,
        "headers": headers or {},
        "body_mode": body_mode,
        "json_body": json_body,
    }


INSTANCE_URL = "{base}/studies/{study}/series/{series}/instances/{instance}"
# fmt: off
COLLECTION: list[dict[str, Any]] = [
    _op("Store-single-instance (red-triangle.dcm)", "POST", "{base}/studies",
        STORE_SINGLE, "file"),
    _op("Store-single-instance (green-square.dcm)", "POST", "{base}/studies",
        STORE_SINGLE, "file"),
    _op("Store-single-instance (blue-circle.dcm)", "POST", "{base}/studies",
        STORE_SINGLE, "file"),
    _op("Store-instances-using-multipart/related", "POST", "{base}/studies",
        {"Accept": "application/dicom+json",
         "Content-Type": "multipart/related;boundary=ABCD1234"}, "formdata"),
    _op("Store-instances-for-a-specific-study", "POST", "{base}/studies/{study}",
        {}, "formdata"),
    _op("Retrieve-all-instances-within-a-study", "GET", "{base}/studies/{study}",
        {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
    _op("Retrieve-metadata-of-all-instances-in-study", "GET", "{base}/studies/{study}/metadata",
        ACCEPT_DICOM_JSON),
    _op("Retrieve-all-instances-within-a-series", "GET", "{base}/studies/{study}/series/{series}",
        {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
    _op("Retrieve-metadata-of-all-instances-within-a-series", "GET",
        "{base}/studies/{study}/series/{series}/metadata", ACCEPT_DICOM_JSON),
    _op("Retrieve-a-single-instance-within-a-series-of-a-study", "GET", INSTANCE_URL,
        {"Accept": "application/dicom; transfer-syntax=*"}),
    _op("Retrieve-metadata-of-a-single-instance-within-a-series-of-a-study", "GET",
        INSTANCE_URL + "/metadata", ACCEPT_DICOM_JSON),
    _op("Retrieve-rendered-image-of-a-single-instance-within-a-series", "GET",
        INSTANCE_URL + "/rendered?quality=100", {"Accept": "application/jpeg"}),
    _op("Retrieve-rendered-image-of-a-single-frame-within-a-instance", "GET",
        INSTANCE_URL + "/frames/{frame}/rendered?quality=100", {"Accept": "application/jpeg"}),
    _op("Retrieve-one-or-more-frames-from-a-single-instance", "GET", INSTANCE_URL + "/frames/1",
        {"Accept": 'multipart/related; type="application/octet-stream"; '
                   "transfer-syntax=1.2.840.10008.1.2.1"}),
    _op("Search-for-studies", "GET", "{base}/studies?StudyInstanceUID={study}",
        ACCEPT_DICOM_JSON),
    _op("Search-for-series", "GET", "{base}/series?SeriesInstanceUID={series}",
        ACCEPT_DICOM_JSON),
    _op("Search-for-series-within-a-study", "GET",
        "{base}/studies/{study}/series?SeriesInstanceUID={series}", ACCEPT_DICOM_JSON),
    _op("Search-for-instances", "GET", "{base}/instances?SOPInstanceUID={instance}",
        ACCEPT_DICOM_JSON),
    _op("Search-for-instances-within-a-study", "GET",
        "{base}/studies/{study}/instances?SOPInstanceUID={instance}", ACCEPT_DICOM_JSON),
    _op("Search-for-instances-within-a-study-and-series", "GET",
        "{base}/studies/{study}/series/{series}/instances?SOPInstanceUID={instance}",
        ACCEPT_DICOM_JSON),
    _op("Delete-a-specific-instance-within-a-study -and-series", "DELETE", INSTANCE_URL),
    _op("Delete-a-specific-series-within-a-study", "DELETE",
        "{base}/studies/{study}/series/{series}"),
    _op("Delete-a-specific-study", "DELETE", "{base}/studies/{study}"),
    _op("Create-extended-query-tag", "POST", "{base}/extendedquerytags",
        {"Content-Type": "application/json"}, "raw",
        [{"Path": "{{extendedQueryTag}}", "VR": "LO", "Level": "Series"}]),
    _op("List-extended-query-tags", "GET", "{base}/extendedquerytags", {}, "raw"),
    _op("Get-extended-query-tag", "GET", "{base}/extendedquerytags/{tag}", {}, "raw"),
    _op("Delete-extended-query-tag", "DELETE", "{base}/extendedquerytags/{tag}", {}, "raw"),
    _op("Update-extended-query-tag", "PATCH", "{base}/extendedquerytags/{tag}",
        {"Content-Type": "application/json"}, "raw", {"QueryStatus": "Disabled"}),
    _op("List-extended-query-tag-errors", "GET", "{base}/extendedquerytags/{tag}/errors",
        {}, "raw"),
    _op("Bulk-update-study", "POST", "{base}/studies/$bulkupdate", {}, "raw",
        {"studyInstanceUids": ["{{study1}}"],
         "changeDataset": {"00100010": {"vr": "PN",
                                        "Value": [{"Alphabetic": "New Patient Name"}]}}}),
    _op("Get-operation", "GET", "{base}/operations/{operation_id}", {}, "raw"),
    _op("Get-all-partitions", "GET", "{base}/partitions"),
    _op("Create-workitem", "POST", "{base}/workitems?{workitem}", DICOM_JSON_BOTH, "raw",
        OMITTED),
    _op("Search-for-workitems", "GET", "{base}/workitems?PatientName=Last^First",
        DICOM_JSON_BOTH, "raw", OMITTED),
    _op("Request-cancellation-workitem", "POST", "{base}/workitems/{workitem}/cancelrequest",
        UPS_BODY, "raw", OMITTED),
    _op("Change-Workitem-State", "PUT", "{base}/workitems/{workitem}/state", UPS_BODY, "raw",
        OMITTED),
    _op("Update-unclaimed-workitem", "POST", "{base}/workitems/{workitem}", UPS_BODY, "raw",
        OMITTED),
    _op("Update-claimed-workitem", "POST", "{base}/workitems/{workitem}?{transaction_uid}",
        UPS_BODY, "raw", OMITTED),
    _op("Retrieve-workitem", "GET", "{base}/workitems/{workitem}", ACCEPT_DICOM_JSON),
]
# fmt: on
BY_NAME = {op["name"]: op for op in COLLECTION}

#: The worklist (UPS-RS) requests.
WORKLIST = frozenset(
    {
        "Create-workitem",
        "Search-for-workitems",
        "Request-cancellation-workitem",
        "Change-Workitem-State",
        "Update-unclaimed-workitem",
        "Update-claimed-workitem",
        "Retrieve-workitem",
    }
)


# -- the sample and placeholders ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The values the collection's placeholders stand for."""

    study: str
    series: str
    instance: str
    #: SeriesDescription: LO at series level, and not searchable without a tag.
    tag: str = "0008103E"
    operation_id: str = "8b6a7b3a7a9d4e7c9f0e1d2c3b4a5968"
    frame: int = 1
    workitem: str = "1.2.826.0.1.3680043.8.498.4470001"
    transaction_uid: str = "1.2.826.0.1.3680043.8.498.4470002"


SAMPLE = Sample(**SAMPLE_UIDS)
CHANGE_DATASET = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New Patient Name"}]}}


def fill(text: str, sample: Sample) -> str:
    """The collection's text with its placeholders replaced by the sample's values."""
    for key, value in (
        ("{{extendedQueryTag}}", sample.tag),
        ("{{study1}}", sample.study),
        ("{base}", PREFIX),
        ("{study}", sample.study),
        ("{series}", sample.series),
        ("{instance}", sample.instance),
        ("{tag}", sample.tag),
        ("{operation_id}", sample.operation_id),
        ("{frame}", str(sample.frame)),
        ("{workitem}", sample.workitem),
        ("{transaction_uid}", sample.transaction_uid),
    ):
        text = text.replace(key, value)
    assert "{" not in text, f"unknown placeholder left in {text!r}"
    return text


def fill_json(value: Any, sample: Sample) -> Any:
    if isinstance(value, str):
        return fill(value, sample)
    if isinstance(value, list):
        return [fill_json(v, sample) for v in value]
    if isinstance(value, dict):
        return {k: fill_json(v, sample) for k, v in value.items()}
    return value


def seed_file(name: str) -> Path:
    """The file a ``Store-single-instance (name.dcm)`` request sends."""
    match = re.search(r"\(([\w-]+\.dcm)\)$", name)
    assert match, name
    return DATA_DIR / match.group(1)


SEEDS = [DATA_DIR / f"{n}.dcm" for n in ("red-triangle", "green-square", "blue-circle")]


# -- the client call behind each request ----------------------------------------------------

Call = Callable[[AsyncDICOMwebClient, Sample], Awaitable[Any]]


def _store_single(file_name: str) -> Call:
    async def call(client: AsyncDICOMwebClient, s: Sample) -> Any:
        return await client.store_instances([DATA_DIR / file_name], single_part=True)

    return call


async def _store_multipart(client: AsyncDICOMwebClient, s: Sample) -> Any:
    return await client.store_instances(SEEDS)


async def _store_into_study(client: AsyncDICOMwebClient, s: Sample) -> Any:
    return await client.store_instances(SEEDS, s.study)


async def _rendered_instance(client: AsyncDICOMwebClient, s: Sample) -> Any:
    # The client asks for image/jpeg by default; the collection's Accept is asked for here.
    return await client.retrieve_instance_rendered(
        s.study, s.series, s.instance, media_types=("application/jpeg",), params={"quality": 100}
    )


async def _rendered_frame(client: AsyncDICOMwebClient, s: Sample) -> Any:
    return await client.retrieve_instance_frames_rendered(
        s.study,
        s.series,
        s.instance,
        [s.frame],
        media_types=("application/jpeg",),
        params={"quality": 100},
    )


async def _frames(client: AsyncDICOMwebClient, s: Sample) -> Any:
    return await client.retrieve_instance_frames(
        s.study,
        s.series,
        s.instance,
        [1],
        media_types=[("application/octet-stream", "1.2.840.10008.1.2.1")],
    )


async def _add_tag(client: AsyncDICOMwebClient, s: Sample) -> Any:
    return await client.add_extended_query_tags([{"Path": s.tag, "VR": "LO", "Level": "Series"}])


#: The workitem the worklist requests create and change (the collection's own example has
#: more attributes; this one is the test's).
WORKITEM = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Last^First"}]},
    "00100020": {"vr": "LO", "Value": ["11111"]},
    "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
    "00741202": {"vr": "LO", "Value": ["Worklist Label"]},
}
WORKITEM_UPDATE = {"00741202": {"vr": "LO", "Value": ["New Worklist Label"]}}
CANCEL_REASON = "This Workitem should be cancelled."


def sent_body(name: str, sample: Sample) -> Any:
    """The body a worklist request sends, for the datasets above."""
    if name == "Create-workitem":
        return [WORKITEM]
    if name in ("Update-unclaimed-workitem", "Update-claimed-workitem"):
        return [WORKITEM_UPDATE]
    if name == "Change-Workitem-State":
        return [
            {
                "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
                "00081195": {"vr": "UI", "Value": [sample.transaction_uid]},
            }
        ]
    if name == "Request-cancellation-workitem":
        return [{"00741238": {"vr": "LT", "Value": [CANCEL_REASON]}}]
    raise AssertionError(name)


CALLS: dict[str, Call] = {
    "Create-workitem": lambda c, s: c.create_workitem(WORKITEM, workitem_uid=s.workitem),
    "Search-for-workitems": lambda c, s: c.search_for_workitems({"PatientName": "Last^First"}),
    "Request-cancellation-workitem": (
        lambda c, s: c.request_workitem_cancellation(s.workitem, reason=CANCEL_REASON)
    ),
    "Change-Workitem-State": (
        lambda c, s: c.change_workitem_state(s.workitem, "IN PROGRESS", s.transaction_uid)
    ),
    "Update-unclaimed-workitem": lambda c, s: c.update_workitem(s.workitem, WORKITEM_UPDATE),
    "Update-claimed-workitem": (
        lambda c, s: c.update_workitem(s.workitem, WORKITEM_UPDATE, s.transaction_uid)
    ),
    "Retrieve-workitem": lambda c, s: c.retrieve_workitem(s.workitem),
    "Store-single-instance (red-triangle.dcm)": _store_single("red-triangle.dcm"),
    "Store-single-instance (green-square.dcm)": _store_single("green-square.dcm"),
    "Store-single-instance (blue-circle.dcm)": _store_single("blue-circle.dcm"),
    "Store-instances-using-multipart/related": _store_multipart,
    "Store-instances-for-a-specific-study": _store_into_study,
    "Retrieve-all-instances-within-a-study": lambda c, s: c.retrieve_study(s.study),
    "Retrieve-metadata-of-all-instances-in-study": lambda c, s: c.retrieve_study_metadata(s.study),
    "Retrieve-all-instances-within-a-series": lambda c, s: c.retrieve_series(s.study, s.series),
    "Retrieve-metadata-of-all-instances-within-a-series": (
        lambda c, s: c.retrieve_series_metadata(s.study, s.series)
    ),
    "Retrieve-a-single-instance-within-a-series-of-a-study": (
        lambda c, s: c.retrieve_instance(s.study, s.series, s.instance, multipart=False)
    ),
    "Retrieve-metadata-of-a-single-instance-within-a-series-of-a-study": (
        lambda c, s: c.retrieve_instance_metadata(s.study, s.series, s.instance)
    ),
    "Retrieve-rendered-image-of-a-single-instance-within-a-series": _rendered_instance,
    "Retrieve-rendered-image-of-a-single-frame-within-a-instance": _rendered_frame,
    "Retrieve-one-or-more-frames-from-a-single-instance": _frames,
    "Search-for-studies": lambda c, s: c.search_for_studies(
        search_filters={"StudyInstanceUID": s.study}
    ),
    "Search-for-series": lambda c, s: c.search_for_series(
        search_filters={"SeriesInstanceUID": s.series}
    ),
    "Search-for-series-within-a-study": lambda c, s: c.search_for_series(
        s.study, search_filters={"SeriesInstanceUID": s.series}
    ),
    "Search-for-instances": lambda c, s: c.search_for_instances(
        search_filters={"SOPInstanceUID": s.instance}
    ),
    "Search-for-instances-within-a-study": lambda c, s: c.search_for_instances(
        s.study, search_filters={"SOPInstanceUID": s.instance}
    ),
    "Search-for-instances-within-a-study-and-series": lambda c, s: c.search_for_instances(
        s.study, s.series, search_filters={"SOPInstanceUID": s.instance}
    ),
    "Delete-a-specific-instance-within-a-study -and-series": (
        lambda c, s: c.delete_instance(s.study, s.series, s.instance)
    ),
    "Delete-a-specific-series-within-a-study": lambda c, s: c.delete_series(s.study, s.series),
    "Delete-a-specific-study": lambda c, s: c.delete_study(s.study),
    "Create-extended-query-tag": _add_tag,
    "List-extended-query-tags": lambda c, s: c.list_extended_query_tags(),
    "Get-extended-query-tag": lambda c, s: c.get_extended_query_tag(s.tag),
    "Delete-extended-query-tag": lambda c, s: c.delete_extended_query_tag(s.tag),
    "Update-extended-query-tag": lambda c, s: c.update_extended_query_tag(s.tag, "Disabled"),
    "List-extended-query-tag-errors": lambda c, s: c.list_extended_query_tag_errors(s.tag),
    "Bulk-update-study": lambda c, s: c.update_studies([s.study], CHANGE_DATASET),
    "Get-operation": lambda c, s: c.get_operation(s.operation_id),
    "Get-all-partitions": lambda c, s: c.list_partitions(),
}
COVERED = [op["name"] for op in COLLECTION if op["name"] in CALLS]


@dataclass(frozen=True)
class Deviation:
    """A part of a request that the client sends differently from the collection, on purpose.

    ``field`` is ``method``, ``path``, ``query`` or a header name; ``table`` is the
    collection's value (after substitution, headers normalised by :func:`header_value`) and
    ``client`` what the client sends instead.
    """

    field: str
    table: Any
    client: Any
    reason: str


def _qido_page_cap(table_query: str) -> Deviation:
    return Deviation(
        "query",
        table_query,
        f"{table_query}&limit=200",
        "for_azure caps QIDO-RS pages at the service's maximum (200) and says so in every "
        "search; without it the service pages by 100",
    )


_EQT_PAGING = "extended query tags and their errors are read page by page (limit/offset)"
DEVIATIONS: dict[str, tuple[Deviation, ...]] = {
    "Store-instances-using-multipart/related": (
        Deviation(
            "Content-Type",
            ("multipart/related", ()),
            ("multipart/related", (("type", "application/dicom"),)),
            "PS3.18 STOW-RS and the conformance statement name the part type: "
            'multipart/related; type="application/dicom"; the collection leaves it out',
        ),
    ),
    "Search-for-studies": (_qido_page_cap(f"StudyInstanceUID={SAMPLE.study}"),),
    "Search-for-series": (_qido_page_cap(f"SeriesInstanceUID={SAMPLE.series}"),),
    "Search-for-series-within-a-study": (_qido_page_cap(f"SeriesInstanceUID={SAMPLE.series}"),),
    "Search-for-instances": (_qido_page_cap(f"SOPInstanceUID={SAMPLE.instance}"),),
    "Search-for-instances-within-a-study": (_qido_page_cap(f"SOPInstanceUID={SAMPLE.instance}"),),
    "Search-for-instances-within-a-study-and-series": (
        _qido_page_cap(f"SOPInstanceUID={SAMPLE.instance}"),
    ),
    "List-extended-query-tags": (Deviation("query", "", "limit=100&offset=0", _EQT_PAGING),),
    "List-extended-query-tag-errors": (Deviation("query", "", "limit=100&offset=0", _EQT_PAGING),),
    "Search-for-workitems": (
        _qido_page_cap("PatientName=Last^First"),
        Deviation(
            "Content-Type",
            ("application/dicom+json", ()),
            ("<not sent>", ()),
            "a search is a GET without a body, so it has no Content-Type",
        ),
    ),
    "Bulk-update-study": (
        Deviation(
            "path",
            "/v2/studies/$bulkupdate",
            "/v2/studies/$bulkUpdate",
            "the documentation writes $bulkUpdate, the collection $bulkupdate; the service's "
            "routes ignore case",
        ),
    ),
}


# -- test helpers ---------------------------------------------------------------------------


def header_value(name: str, value: str) -> Any:
    """Accept as it is; Content-Type as (type, parameters other than the random boundary)."""
    if name.lower() != "content-type":
        return value
    mime, *params = (piece.strip() for piece in value.split(";"))
    pairs = []
    for param in params:
        key, _, raw = param.partition("=")
        if key.strip().lower() != "boundary":
            pairs.append((key.strip().lower(), raw.strip().strip('"')))
    return (mime.lower(), tuple(sorted(pairs)))


def table_request(name: str, sample: Sample) -> dict[str, Any]:
    """What the collection's request looks like: method, path, query and listed headers."""
    op = BY_NAME[name]
    path, _, query = fill(op["url"], sample).partition("?")
    shape = {"method": op["method"], "path": path, "query": query}
    for header, value in op["headers"].items():
        shape[header] = header_value(header, fill(value, sample))
    return shape


def expected_request(name: str, sample: Sample) -> dict[str, Any]:
    """The collection's request with the client's deliberate deviations applied."""
    shape = table_request(name, sample)
    for deviation in DEVIATIONS.get(name, ()):
        assert shape.get(deviation.field) == deviation.table, (
            f"{name}: the deviation of {deviation.field} no longer matches the collection"
        )
        shape[deviation.field] = deviation.client
    return shape


def actual_request(request: httpx.Request, headers: list[str]) -> dict[str, Any]:
    path, _, query = request.url.raw_path.decode("ascii").partition("?")
    shape = {"method": request.method, "path": path, "query": query}
    for header in headers:
        shape[header] = header_value(header, request.headers.get(header, "<not sent>"))
    return shape


def boundary_of(request: httpx.Request) -> str:
    match = re.search(r'boundary="?([^";]+)"?', request.headers.get("Content-Type", ""))
    assert match, request.headers.get("Content-Type")
    return match.group(1)


def dicom_json_response(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, headers={"Content-Type": "application/dicom+json"}, content=json.dumps(data)
    )


def multipart_response(parts: list[tuple[str, bytes]], type_param: str) -> httpx.Response:
    boundary = "conformance-collection-boundary"
    body = b""
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    header = f'multipart/related; type="{type_param}"; boundary={boundary}'
    return httpx.Response(200, headers={"Content-Type": header}, content=body)


def uid(tag: str, value: str) -> dict[str, Any]:
    return {tag: {"vr": "UI", "Value": [value]}}


def operation_reference(sample: Sample) -> httpx.Response:
    href = f"{BASE}/operations/{sample.operation_id}"
    return httpx.Response(202, json={"id": sample.operation_id, "href": href})


def tag_json(sample: Sample, query_status: str = "Enabled") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "Path": sample.tag,
            "VR": "LO",
            "Level": "Series",
            "Status": "Ready",
            "QueryStatus": query_status,
            "ErrorsCount": 0,
        },
    )


def reply_for(name: str, sample: Sample) -> httpx.Response:
    """A plausible answer of the service to the request, for the client to read."""
    red = SEEDS[0].read_bytes()
    if name.startswith("Store-"):
        stored = uid("00081150", "1.2.840.10008.5.1.4.1.1.7") | uid("00081155", sample.instance)
        return dicom_json_response({"00081199": {"vr": "SQ", "Value": [stored]}})
    if name.startswith("Delete-"):
        return httpx.Response(204)
    if name == "Create-workitem":
        return httpx.Response(201, headers={"Location": f"{BASE}/workitems/{sample.workitem}"})
    if name == "Request-cancellation-workitem":
        return httpx.Response(202)
    if name in ("Change-Workitem-State", "Update-unclaimed-workitem", "Update-claimed-workitem"):
        return httpx.Response(200)
    if name == "Retrieve-workitem":
        return dicom_json_response([{**WORKITEM, **uid("00080018", sample.workitem)}])
    if name.startswith("Search-"):
        return dicom_json_response([])
    if "rendered" in name:
        return httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=b"\xff\xd8")
    if name == "Retrieve-one-or-more-frames-from-a-single-instance":
        media = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        return multipart_response([(media, b"\x00" * 16)], "application/octet-stream")
    if name == "Retrieve-a-single-instance-within-a-series-of-a-study":
        return httpx.Response(200, headers={"Content-Type": "application/dicom"}, content=red)
    if name.startswith("Retrieve-metadata"):
        return dicom_json_response([uid("00080018", sample.instance)])
    if name.startswith("Retrieve-all-instances"):
        return multipart_response([("application/dicom", red)], "application/dicom")
    if name in ("Create-extended-query-tag", "Bulk-update-study"):
        return operation_reference(sample)
    if name in ("List-extended-query-tags", "List-extended-query-tag-errors"):
        return httpx.Response(200, json=[])
    if name == "Get-extended-query-tag":
        return tag_json(sample)
    if name == "Update-extended-query-tag":
        return tag_json(sample, "Disabled")
    if name == "Get-operation":
        return httpx.Response(
            200,
            json={"operationId": sample.operation_id, "type": "reindex", "status": "Succeeded"},
        )
    if name == "Get-all-partitions":
        return httpx.Response(200, json=[{"PartitionName": "Microsoft.Default"}])
    raise AssertionError(f"no reply for {name}")


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def azure_client(router: respx.MockRouter) -> AsyncIterator[AsyncDICOMwebClient]:
    async with AsyncDICOMwebClient.for_azure(SERVICE, retry=FAST_RETRY) as client:
        assert client.base_url == BASE
        yield client


# -- the collection itself ------------------------------------------------------------------


def test_the_table_is_the_whole_collection() -> None:
    assert SOURCE.startswith("microsoft/dicom-server ")
    assert len(COLLECTION) == 39
    assert len(BY_NAME) == len(COLLECTION), "request names are not unique"
    for op in COLLECTION:
        assert op["url"].startswith("{base}/"), op["name"]
        assert op["method"] in {"GET", "POST", "PUT", "PATCH", "DELETE"}, op["name"]


def test_every_request_has_a_client_call() -> None:
    assert set(CALLS) == set(BY_NAME), set(BY_NAME) ^ set(CALLS)
    assert len(WORKLIST) == 7
    assert {name for name in BY_NAME if "/workitems" in BY_NAME[name]["url"]} == WORKLIST
    assert len(COVERED) == 39


def test_deviations_name_covered_requests() -> None:
    assert set(DEVIATIONS) <= set(CALLS)
    for name, deviations in DEVIATIONS.items():
        fields = [d.field for d in deviations]
        assert len(fields) == len(set(fields)), name
        for deviation in deviations:
            assert deviation.table != deviation.client, name
            assert deviation.reason, name


def test_the_sample_uids_are_those_of_the_seed_files() -> None:
    red = pydicom.dcmread(DATA_DIR / "red-triangle.dcm", stop_before_pixels=True)
    assert (red.StudyInstanceUID, red.SeriesInstanceUID, red.SOPInstanceUID) == (
        SAMPLE.study,
        SAMPLE.series,
        SAMPLE.instance,
    )
    for path in SEEDS:
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == SAMPLE.study


# -- on the wire ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", COVERED)
async def test_wire_shape(
    name: str, router: respx.MockRouter, azure_client: AsyncDICOMwebClient
) -> None:
    op = BY_NAME[name]
    route = router.route(host="127.0.0.1", port=8042).mock(return_value=reply_for(name, SAMPLE))
    await CALLS[name](azure_client, SAMPLE)
    assert route.call_count == 1
    request = route.calls.last.request

    expected = expected_request(name, SAMPLE)
    actual = actual_request(request, list(op["headers"]))
    if name == "Bulk-update-study":
        # The one path compared without regard to case (see DEVIATIONS).
        assert actual["path"].lower() == table_request(name, SAMPLE)["path"].lower()
    assert actual == expected

    if op["json_body"] == OMITTED and op["method"] != "GET":
        assert json.loads(request.content) == sent_body(name, SAMPLE)
    elif op["json_body"] is not None and op["json_body"] != OMITTED:
        assert json.loads(request.content) == fill_json(op["json_body"], SAMPLE)
    if op["body_mode"] == "file":
        assert request.content == seed_file(name).read_bytes()
    elif op["body_mode"] == "formdata":
        # The collection's form data: every seed file, as parts of one multipart body.
        assert header_value("Content-Type", request.headers["Content-Type"])[0] == (
            "multipart/related"
        )
        boundary = boundary_of(request).encode()
        parts = request.content.split(b"--" + boundary)[1:-1]
        assert len(parts) == len(SEEDS)
        for part, path in zip(parts, SEEDS, strict=True):
            assert part.endswith(b"\r\n\r\n" + path.read_bytes() + b"\r\n")
    elif op["method"] in ("GET", "DELETE"):
        assert request.content == b""


# -- against the emulator -------------------------------------------------------------------

#: The statuses the conformance statement promises for each request.
PROMISED: dict[str, tuple[int, ...]] = {
    **dict.fromkeys([n for n in COVERED if n.startswith("Store-")], (200,)),
    **dict.fromkeys([n for n in COVERED if n.startswith(("Retrieve-", "Search-"))], (200,)),
    **dict.fromkeys([n for n in COVERED if n.startswith("Delete-")], (204,)),
    "Create-extended-query-tag": (202,),
    "List-extended-query-tags": (200,),
    "Get-extended-query-tag": (200,),
    "Update-extended-query-tag": (200,),
    "List-extended-query-tag-errors": (200,),
    "Bulk-update-study": (202,),
    "Get-operation": (200, 202),
    "Get-all-partitions": (200,),
    "Create-workitem": (201,),
    "Request-cancellation-workitem": (202,),
    "Change-Workitem-State": (200,),
    "Update-unclaimed-workitem": (200,),
    "Update-claimed-workitem": (200,),
}
RENDERED = [n for n in COVERED if "rendered" in n]


def test_every_covered_request_has_a_promised_status() -> None:
    assert set(PROMISED) == set(CALLS)


@dataclass
class Walk:
    """Runs collection requests against the emulator, one step at a time."""

    emulator: AzureDicomEmulator
    client: AsyncDICOMwebClient
    sample: Sample
    done: list[str]

    async def step(
        self,
        name: str,
        statuses: tuple[int, ...] | None = None,
        *,
        raises: type[Exception] | None = None,
    ) -> Any:
        self.emulator.reset_counters()
        result = None
        if raises is None:
            result = await CALLS[name](self.client, self.sample)
        else:
            with pytest.raises(raises):
                await CALLS[name](self.client, self.sample)
        self._check(name, statuses or PROMISED[name])
        return result

    def _check(self, name: str, statuses: tuple[int, ...]) -> None:
        (request,) = self.emulator.requests
        table = table_request(name, self.sample)
        path = unquote(request.path)
        if name == "Bulk-update-study":
            path, table["path"] = path.lower(), table["path"].lower()
        assert (request.method, path) == (table["method"], table["path"]), name
        assert request.status in statuses, f"{name}: {request.status}, promised {statuses}"
        self.done.append(name)


@pytest.fixture
async def walk() -> AsyncIterator[Walk]:
    emulator = AzureDicomEmulator()
    async with (
        httpx.AsyncClient(transport=emulator.transport()) as http,
        AsyncDICOMwebClient.for_azure(SERVICE, http_client=http, retry=FAST_RETRY) as client,
    ):
        yield Walk(emulator, client, SAMPLE, [])
    assert emulator.errors == []


async def test_emulator_walkthrough_in_collection_order(walk: Walk) -> None:
    emulator = walk.emulator

    # Store: each seed on its own (200), one of them again (409, already stored).
    for name in COVERED[:3]:
        result = await walk.step(name)
        assert result.status_code == 200
    repeat = await walk.step("Store-single-instance (red-triangle.dcm)", (409,))
    assert [o.sop_instance_uid for o in repeat.failed] == [SAMPLE.instance]
    # The multipart stores send the same three files, so each starts from an empty service.
    emulator.clear()
    await walk.step("Store-instances-using-multipart/related")
    emulator.clear()
    await walk.step("Store-instances-for-a-specific-study")
    assert emulator.instance_count() == 3

    # Retrieve.
    assert len(await walk.step("Retrieve-all-instances-within-a-study")) == 3
    assert len(await walk.step("Retrieve-metadata-of-all-instances-in-study")) == 3
    assert len(await walk.step("Retrieve-all-instances-within-a-series")) == 2
    assert len(await walk.step("Retrieve-metadata-of-all-instances-within-a-series")) == 2
    ds = await walk.step("Retrieve-a-single-instance-within-a-series-of-a-study")
    assert ds.SOPInstanceUID == SAMPLE.instance
    await walk.step("Retrieve-metadata-of-a-single-instance-within-a-series-of-a-study")
    for name in RENDERED:
        assert (await walk.step(name))[:2] == b"\xff\xd8"  # JPEG
    (frame,) = await walk.step("Retrieve-one-or-more-frames-from-a-single-instance")
    assert frame.transfer_syntax == "1.2.840.10008.1.2.1"

    # Search: each route finds the one sample resource.
    for name in [n for n in COVERED if n.startswith("Search-") and n not in WORKLIST]:
        assert len(await walk.step(name)) == 1, name

    # Extended query tags: errors, get and update before the delete.
    await walk.step("Create-extended-query-tag")
    assert [t.path for t in await walk.step("List-extended-query-tags")] == [SAMPLE.tag]
    assert (await walk.step("Get-extended-query-tag")).status == "Ready"
    assert (await walk.step("Update-extended-query-tag")).query_status == "Disabled"
    assert await walk.step("List-extended-query-tag-errors") == []
    await walk.step("Delete-extended-query-tag")

    # Bulk update, then its operation.
    operation = await walk.step("Bulk-update-study")
    walk.sample = replace(walk.sample, operation_id=operation.id)
    state = await walk.step("Get-operation")
    assert state.operation_id == operation.id
    partitions = await walk.step("Get-all-partitions")
    assert "Microsoft.Default" in [p.name for p in partitions]

    # The worklist: created, found, changed while unclaimed, claimed, changed with the
    # transaction UID, then asked to be canceled (passed on: it is IN PROGRESS).
    await walk.step("Create-workitem")
    item = await walk.step("Retrieve-workitem")
    assert item.uid == walk.sample.workitem and item.state == "SCHEDULED"
    assert [w.uid for w in await walk.step("Search-for-workitems")] == [walk.sample.workitem]
    await walk.step("Update-unclaimed-workitem")
    await walk.step("Change-Workitem-State")
    await walk.step("Update-claimed-workitem")
    await walk.step("Request-cancellation-workitem")
    final = await walk.client.retrieve_workitem(walk.sample.workitem)
    assert final.state == "IN PROGRESS" and final.value("00741202") == "New Worklist Label"

    # Delete last, narrowest first.
    await walk.step("Delete-a-specific-instance-within-a-study -and-series")
    await walk.step("Delete-a-specific-series-within-a-study")
    await walk.step("Delete-a-specific-study")
    assert emulator.instance_count() == 0

    assert sorted(set(walk.done)) == sorted(COVERED)
    assert len(walk.done) == len(COVERED) + 1  # the repeated store


@pytest.mark.parametrize("name", RENDERED)
async def test_emulator_renders_as_promised(walk: Walk, name: str) -> None:
    await walk.client.store_instances(SEEDS)
    image = await CALLS[name](walk.client, walk.sample)
    assert image[:2] == b"\xff\xd8"
