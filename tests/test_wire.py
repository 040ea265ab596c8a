"""Wire format of every client operation, checked against mocked responses (respx).

Requests are compared with the request shapes of the Azure DICOM service's own conformance
collection (``reference/azure-api-operations.json``): method, path, raw query string, Accept
and Content-Type. Responses are built by hand, byte for byte, to check how the client reads
them: STOW-RS results, multipart/related downloads, frames, errors, retries and auth.

respx reads request bodies whole before answering, so nothing here says anything about
streaming or replaying bodies over a real socket; the loopback-server tests cover that.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import respx
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomweb_async import (
    AsyncDICOMwebClient,
    AuthenticationError,
    ConflictError,
    FailureReason,
    Frame,
    HTTPStatusError,
    MethodNotAllowedError,
    MultipartError,
    MultipartReader,
    NotAcceptableError,
    NotFoundError,
    PartData,
    PartEnd,
    PartStart,
    PermissionDeniedError,
    ProtocolError,
    RetryPolicy,
    ServerError,
    StoreFailedError,
    TransportError,
)

BASE = "http://127.0.0.1:8042/v2"
PREFIX = "/v2"

STUDY = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
SERIES = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
INSTANCE = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"

STUDY_PATH = f"/studies/{STUDY}"
SERIES_PATH = f"{STUDY_PATH}/series/{SERIES}"
INSTANCE_PATH = f"{SERIES_PATH}/instances/{INSTANCE}"

DICOM_JSON = "application/dicom+json"
ACCEPT_DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES_EVRLE = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)
ACCEPT_FRAMES_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
STOW_CONTENT_TYPE = re.compile(r'multipart/related; type="application/dicom"; boundary=(\S+)')

TOKEN = "secret-token"
FAST_RETRY = RetryPolicy(attempts=2, backoff=0.0)


# -- fixtures and helpers ----------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    path: Path
    data: bytes
    sop_instance_uid: str
    series_instance_uid: str


@pytest.fixture(scope="module")
def seeds(seed_files: list[Path]) -> list[Seed]:
    out = []
    for path in seed_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(
            Seed(path, path.read_bytes(), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
        )
    return out


@pytest.fixture
def router(request: pytest.FixtureRequest) -> Iterator[respx.MockRouter]:
    # An expected failure may stop before its request is sent; only the test reports it.
    all_called = request.node.get_closest_marker("xfail") is None
    with respx.mock(base_url=BASE, assert_all_called=all_called, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def make_client(
    router: respx.MockRouter,
) -> AsyncIterator[Callable[..., AsyncDICOMwebClient]]:
    clients: list[AsyncDICOMwebClient] = []

    def make(**kwargs: Any) -> AsyncDICOMwebClient:
        kwargs.setdefault("retry", FAST_RETRY)
        client = AsyncDICOMwebClient(BASE, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def client(make_client: Callable[..., AsyncDICOMwebClient]) -> AsyncDICOMwebClient:
    return make_client()


def only_request(route: respx.Route) -> httpx.Request:
    assert route.call_count == 1
    return route.calls.last.request


def assert_wire(
    request: httpx.Request,
    method: str,
    path: str,
    query: str = "",
    *,
    accept: str | None = None,
    content_type: str | None = None,
) -> None:
    """Method, raw path, raw query, Accept and Content-Type of one request."""
    assert request.method == method
    assert request.url.host == "127.0.0.1"
    assert request.url.port == 8042
    assert request.url.raw_path.decode("ascii") == PREFIX + path + (f"?{query}" if query else "")
    assert request.url.query.decode("ascii") == query
    if accept is not None:
        assert request.headers["Accept"] == accept
    if content_type is None:
        assert "Content-Type" not in request.headers
    else:
        assert request.headers["Content-Type"] == content_type


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body strictly by RFC 2046 framing (CRLF, no preamble or epilogue)."""
    dash = b"--" + boundary.encode("ascii")
    assert body.startswith(dash + b"\r\n")
    pos = len(dash) + 2
    parts = []
    while True:
        head_end = body.index(b"\r\n\r\n", pos)
        headers = {}
        for line in body[pos:head_end].split(b"\r\n"):
            name, sep, value = line.decode("ascii").partition(":")
            assert sep, line
            headers[name.strip().lower()] = value.strip()
        data_end = body.index(b"\r\n" + dash, head_end + 4)
        parts.append((headers, body[head_end + 4 : data_end]))
        pos = data_end + 2 + len(dash)
        if body[pos : pos + 2] == b"--":
            assert body[pos + 2 :] in (b"", b"\r\n")
            return parts
        assert body[pos : pos + 2] == b"\r\n"
        pos += 2


def read_with_project_reader(body: bytes, boundary: str, piece: int = 4099) -> list[bytes]:
    """Parse ``body`` with the package's own push reader, fed in small pieces."""
    reader = MultipartReader(boundary)
    parts: list[bytearray] = []
    ended = 0
    events = []
    for start in range(0, len(body), piece):
        events.extend(reader.feed(body[start : start + piece]))
    events.extend(reader.finish())
    for event in events:
        if isinstance(event, PartStart):
            parts.append(bytearray())
        elif isinstance(event, PartData):
            parts[event.index] += event.data
        elif isinstance(event, PartEnd):
            ended += 1
    assert reader.complete
    assert ended == len(parts)
    return [bytes(p) for p in parts]


def stow_boundary(request: httpx.Request) -> str:
    match = STOW_CONTENT_TYPE.fullmatch(request.headers["Content-Type"])
    assert match, request.headers["Content-Type"]
    return match.group(1)


def build_multipart(
    parts: list[tuple[dict[str, str], bytes]], boundary: str, *, close: bool = True
) -> bytes:
    """A multipart/related response body, framed by hand."""
    out = bytearray()
    for headers, data in parts:
        out += f"--{boundary}\r\n".encode("ascii")
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode("ascii")
        out += b"\r\n" + data + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode("ascii")
    return bytes(out)


def files_under(root: Path) -> dict[Path, bytes]:
    """Every file below ``root`` with its contents (temporary files included)."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def dicom_parts(seeds: list[Seed]) -> list[tuple[dict[str, str], bytes]]:
    ctype = f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    return [({"Content-Type": ctype}, s.data) for s in seeds]


def multipart_response(
    parts: list[tuple[dict[str, str], bytes]],
    part_type: str = "application/dicom",
    *,
    boundary: str = "d1c0m-b0undary-0042",
    close: bool = True,
) -> httpx.Response:
    body = build_multipart(parts, boundary, close=close)
    ctype = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return httpx.Response(200, headers={"Content-Type": ctype}, content=body)


def uid_item(tag: str, uid: str) -> dict[str, Any]:
    return {tag: {"vr": "UI", "Value": [uid]}}


def json_response(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, headers={"Content-Type": DICOM_JSON}, content=json.dumps(data).encode()
    )


def sop_ref(sop: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [SOP_CLASS]},
        "00081155": {"vr": "UI", "Value": [sop]},
    }
    item.update(extra)
    return item


def minimal_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "WIRE-1"
    ds.PatientName = "Wire^Test"
    ds.Modality = "OT"
    return ds


# -- STOW-RS: requests ---------------------------------------------------------------------


async def test_stow_multipart_to_studies_sends_every_file_in_order(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.post("/studies").mock(return_value=json_response({}))
    await client.store_instances([s.path for s in seeds])

    request = only_request(route)
    boundary = stow_boundary(request)
    assert_wire(
        request,
        "POST",
        "/studies",
        accept=DICOM_JSON,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    body = request.content
    assert request.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in request.headers

    parts = split_multipart(body, boundary)
    assert [data for _, data in parts] == [s.data for s in seeds]
    for headers, data in parts:
        assert headers["content-type"] == "application/dicom"
        assert headers["content-length"] == str(len(data))
        assert "content-disposition" not in headers
    assert read_with_project_reader(body, boundary) == [s.data for s in seeds]


async def test_stow_to_a_study_posts_to_its_path(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.post(STUDY_PATH).mock(return_value=json_response({}))
    await client.store_instances([s.path for s in seeds], study_instance_uid=STUDY)

    request = only_request(route)
    boundary = stow_boundary(request)
    assert_wire(
        request,
        "POST",
        STUDY_PATH,
        accept=DICOM_JSON,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    assert [d for _, d in split_multipart(request.content, boundary)] == [s.data for s in seeds]


async def test_external_metadata_goes_in_headers(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.post("/studies").mock(return_value=json_response({}))
    meta = router.get(f"{STUDY_PATH}/metadata").mock(return_value=json_response([]))
    await client.store_instances(
        [seeds[0].path],
        external_metadata={"00191100": ("PN", "Doe^Jane"), "001912ff": ("CS", "X")},
    )
    await client.retrieve_study_metadata(STUDY, external_metadata=True)
    headers = only_request(route).headers
    assert headers["msdicom-meta-PN-00191100"] == "Doe^Jane"
    assert headers["msdicom-meta-CS-001912FF"] == "X"
    assert only_request(meta).headers["msdicom-request-meta"] == "true"


@pytest.mark.parametrize("study", [None, STUDY])
async def test_upsert_puts_the_same_body(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed], study: str | None
) -> None:
    path = STUDY_PATH if study else "/studies"
    route = router.put(path).mock(return_value=json_response({}))
    await client.store_instances([s.path for s in seeds], study_instance_uid=study, upsert=True)

    request = only_request(route)
    boundary = stow_boundary(request)
    assert_wire(
        request,
        "PUT",
        path,
        accept=DICOM_JSON,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    assert [d for _, d in split_multipart(request.content, boundary)] == [s.data for s in seeds]


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_stow_single_part_sends_the_file_as_application_dicom(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed], index: int
) -> None:
    route = router.post("/studies").mock(return_value=json_response({}))
    await client.store_instances([seeds[index].path], single_part=True)

    request = only_request(route)
    assert_wire(request, "POST", "/studies", accept=DICOM_JSON, content_type="application/dicom")
    assert request.content == seeds[index].data
    assert request.headers["Content-Length"] == str(len(seeds[index].data))


async def test_stow_single_part_refuses_several_instances(
    client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await client.store_instances([s.path for s in seeds[:2]], single_part=True)


async def test_stow_bytes_and_dataset_inputs_keep_their_order(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.post("/studies").mock(return_value=json_response({}))
    from_file = pydicom.dcmread(seeds[2].path)
    await client.store_instances([seeds[0].data, seeds[1].path, from_file])

    request = only_request(route)
    parts = split_multipart(request.content, stow_boundary(request))
    assert len(parts) == 3
    assert parts[0][1] == seeds[0].data
    assert parts[1][1] == seeds[1].data
    decoded = pydicom.dcmread(io.BytesIO(parts[2][1]))
    assert decoded.SOPInstanceUID == seeds[2].sop_instance_uid
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.PixelData == from_file.PixelData
    assert parts[2][0]["content-length"] == str(len(parts[2][1]))
    assert request.headers["Content-Length"] == str(len(request.content))


async def test_stow_dataset_without_file_meta_is_encoded_as_explicit_vr_little_endian(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.post("/studies").mock(return_value=json_response({}))
    ds = minimal_dataset()
    await client.store_instances([ds])

    request = only_request(route)
    [(part_headers, data)] = split_multipart(request.content, stow_boundary(request))
    assert part_headers["content-length"] == str(len(data))
    assert data[128:132] == b"DICM"
    decoded = pydicom.dcmread(io.BytesIO(data))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert decoded.SOPInstanceUID == ds.SOPInstanceUID
    assert decoded.PatientName == "Wire^Test"
    assert not hasattr(ds, "file_meta")


async def test_stow_dataset_with_file_meta_is_encoded_as_a_part10_file(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.post("/studies").mock(return_value=json_response({}))
    ds = minimal_dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    await client.store_instances([ds], single_part=True)

    request = only_request(route)
    assert request.headers["Content-Type"] == "application/dicom"
    assert request.content[128:132] == b"DICM"
    decoded = pydicom.dcmread(io.BytesIO(request.content))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.file_meta.MediaStorageSOPClassUID == SOP_CLASS
    assert decoded.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert decoded.SOPInstanceUID == ds.SOPInstanceUID
    # The caller's file meta is left as it was.
    assert "MediaStorageSOPInstanceUID" not in ds.file_meta


# -- STOW-RS: responses --------------------------------------------------------------------


async def test_stow_200_lists_stored_instances(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    study_url = f"{BASE}{STUDY_PATH}"
    body = {
        "00081190": {"vr": "UR", "Value": [study_url]},
        "00081199": {
            "vr": "SQ",
            "Value": [
                sop_ref(
                    s.sop_instance_uid,
                    **{"00081190": {"vr": "UR", "Value": [f"{study_url}/{s.sop_instance_uid}"]}},
                )
                for s in seeds
            ],
        },
    }
    router.post("/studies").mock(return_value=json_response(body))
    result = await client.store_instances([s.path for s in seeds])

    assert result.status_code == 200
    assert result.ok
    assert result.retrieve_url == study_url
    assert [o.sop_instance_uid for o in result.stored] == [s.sop_instance_uid for s in seeds]
    assert all(o.sop_class_uid == SOP_CLASS for o in result.stored)
    assert result.stored[1].retrieve_url == f"{study_url}/{seeds[1].sop_instance_uid}"
    assert result.failed == []
    assert result.warnings == []
    assert result.raise_for_failures() is result


async def test_stow_202_separates_stored_warned_and_failed(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    ok, warned, failed = (s.sop_instance_uid for s in seeds)
    body = {
        "00081199": {
            "vr": "SQ",
            "Value": [
                sop_ref(ok),
                sop_ref(warned, **{"00081196": {"vr": "US", "Value": [45063]}}),
            ],
        },
        "00081198": {
            "vr": "SQ",
            "Value": [
                sop_ref(
                    failed,
                    **{
                        "00081197": {"vr": "US", "Value": [43265]},
                        "00741048": {
                            "vr": "SQ",
                            "Value": [
                                {
                                    "00000902": {
                                        "vr": "LO",
                                        "Value": ["StudyInstanceUID does not match"],
                                    }
                                }
                            ],
                        },
                    },
                )
            ],
        },
    }
    router.post(STUDY_PATH).mock(return_value=json_response(body, 202))
    result = await client.store_instances([s.path for s in seeds], study_instance_uid=STUDY)

    assert result.status_code == 202
    assert not result.ok
    assert [o.sop_instance_uid for o in result.stored] == [ok, warned]
    assert [(o.sop_instance_uid, o.reason) for o in result.warnings] == [(warned, 45063)]
    assert len(result.failed) == 1
    assert result.failed[0].sop_instance_uid == failed
    assert result.failed[0].reason == FailureReason.STUDY_UID_MISMATCH
    assert result.failed[0].error_comments == ("StudyInstanceUID does not match",)
    with pytest.raises(StoreFailedError, match="43265") as info:
        result.raise_for_failures()
    assert info.value.result is result


async def test_stow_409_already_stored_is_a_result_not_an_error(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    # Azure's answer when every instance of the request already exists.
    body = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                sop_ref(s.sop_instance_uid, **{"00081197": {"vr": "US", "Value": [45070]}})
                for s in seeds
            ],
        }
    }
    route = router.post("/studies").mock(return_value=json_response(body, 409))
    result = await client.store_instances([s.path for s in seeds])

    assert route.call_count == 1
    assert result.status_code == 409
    assert not result.ok
    assert result.stored == []
    assert [o.sop_instance_uid for o in result.failed] == [s.sop_instance_uid for s in seeds]
    assert {o.reason for o in result.failed} == {FailureReason.ALREADY_STORED}
    with pytest.raises(StoreFailedError, match="45070"):
        result.raise_for_failures()


async def test_stow_409_without_dicom_json_raises_conflict(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    router.post("/studies").mock(
        return_value=httpx.Response(409, text="duplicate instance, delete it first")
    )
    with pytest.raises(ConflictError) as info:
        await client.store_instances([seeds[0].path])
    assert info.value.status_code == 409
    assert info.value.method == "POST"
    assert info.value.url == f"{BASE}/studies"
    assert "duplicate instance" in info.value.body_excerpt


async def test_stow_503_is_retried_with_the_whole_body(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.post("/studies").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "0"}),
            json_response({"00081199": {"vr": "SQ", "Value": [sop_ref(INSTANCE)]}}),
        ]
    )
    result = await client.store_instances([s.path for s in seeds])

    assert route.call_count == 2
    assert result.status_code == 200
    first, second = (call.request for call in route.calls)
    assert second.content == first.content
    boundary = stow_boundary(second)
    assert [d for _, d in split_multipart(second.content, boundary)] == [s.data for s in seeds]


# -- WADO-RS: instances ----------------------------------------------------------------


async def test_retrieve_study_asks_for_original_syntax_and_decodes_every_part(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.get(STUDY_PATH).mock(return_value=multipart_response(dicom_parts(seeds)))
    datasets = await client.retrieve_study(STUDY)

    assert_wire(only_request(route), "GET", STUDY_PATH, accept=ACCEPT_DICOM_ANY)
    assert [str(ds.SOPInstanceUID) for ds in datasets] == [s.sop_instance_uid for s in seeds]
    assert all(isinstance(ds, Dataset) for ds in datasets)


async def test_retrieve_series_asks_for_original_syntax(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    in_series = [s for s in seeds if s.series_instance_uid == SERIES]
    route = router.get(SERIES_PATH).mock(return_value=multipart_response(dicom_parts(in_series)))
    datasets = await client.retrieve_series(STUDY, SERIES)

    assert_wire(only_request(route), "GET", SERIES_PATH, accept=ACCEPT_DICOM_ANY)
    assert [str(ds.SOPInstanceUID) for ds in datasets] == [s.sop_instance_uid for s in in_series]
    assert {str(ds.SeriesInstanceUID) for ds in datasets} == {SERIES}


async def test_iter_study_yields_datasets_as_they_arrive(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    router.get(STUDY_PATH).mock(return_value=multipart_response(dicom_parts(seeds)))
    uids = []
    async with client.iter_study(STUDY) as instances:
        async for ds in instances:
            uids.append(str(ds.SOPInstanceUID))
    assert uids == [s.sop_instance_uid for s in seeds]


async def test_retrieve_study_with_an_explicit_transfer_syntax(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.get(STUDY_PATH).mock(return_value=multipart_response(dicom_parts(seeds)))
    await client.retrieve_study(
        STUDY, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert_wire(
        only_request(route),
        "GET",
        STUDY_PATH,
        accept='multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
    )


async def test_retrieve_instance_single_part(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    red = seeds[2]
    route = router.get(INSTANCE_PATH).mock(
        return_value=httpx.Response(
            200,
            headers={
                "Content-Type": f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
            },
            content=red.data,
        )
    )
    ds = await client.retrieve_instance(STUDY, SERIES, INSTANCE, multipart=False)

    assert_wire(
        only_request(route), "GET", INSTANCE_PATH, accept="application/dicom; transfer-syntax=*"
    )
    assert ds.SOPInstanceUID == red.sop_instance_uid == INSTANCE


async def test_retrieve_instance_multipart_by_default(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    red = seeds[2]
    route = router.get(INSTANCE_PATH).mock(return_value=multipart_response(dicom_parts([red])))
    ds = await client.retrieve_instance(STUDY, SERIES, INSTANCE)

    assert_wire(only_request(route), "GET", INSTANCE_PATH, accept=ACCEPT_DICOM_ANY)
    assert ds.SOPInstanceUID == INSTANCE


async def test_truncated_multipart_response_raises_multipart_error(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    body = build_multipart(dicom_parts(seeds), "cut-here")
    cut = len(seeds[0].data) + len(seeds[1].data) // 2
    router.get(STUDY_PATH).mock(
        return_value=httpx.Response(
            200,
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=cut-here'
            },
            content=body[:cut],
        )
    )
    with pytest.raises(MultipartError) as info:
        await client.retrieve_study(STUDY)
    assert info.value.part_index == 1
    assert info.value.method == "GET"
    assert info.value.url == f"{BASE}{STUDY_PATH}"


async def test_multipart_response_without_closing_boundary_raises(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    router.get(STUDY_PATH).mock(return_value=multipart_response(dicom_parts(seeds), close=False))
    with pytest.raises(MultipartError):
        await client.retrieve_study(STUDY)


async def test_multipart_response_with_a_quoted_boundary(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    body = build_multipart(dicom_parts(seeds[:1]), "quoted:boundary")
    ctype = 'multipart/related; boundary="quoted:boundary"; type="application/dicom"'
    router.get(STUDY_PATH).mock(
        return_value=httpx.Response(200, headers={"Content-Type": ctype}, content=body)
    )
    [ds] = await client.retrieve_study(STUDY)
    assert ds.SOPInstanceUID == seeds[0].sop_instance_uid


async def test_retrieve_instance_without_parts_is_a_protocol_error(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    router.get(INSTANCE_PATH).mock(return_value=multipart_response([]))
    with pytest.raises(ProtocolError, match="no instance"):
        await client.retrieve_instance(STUDY, SERIES, INSTANCE)


async def test_not_acceptable_transfer_syntax_raises(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    jp2 = "1.2.840.10008.1.2.4.90"
    route = router.get(INSTANCE_PATH).mock(
        return_value=httpx.Response(406, text="transcoding is not supported")
    )
    with pytest.raises(NotAcceptableError, match="transcoding") as info:
        await client.retrieve_instance(
            STUDY, SERIES, INSTANCE, media_types=(("application/dicom", jp2),), multipart=False
        )
    assert route.call_count == 1
    assert only_request(route).headers["Accept"] == f"application/dicom; transfer-syntax={jp2}"
    assert info.value.url == f"{BASE}{INSTANCE_PATH}"


@pytest.mark.parametrize(
    ("method_name", "args", "path"),
    [
        ("stream_study", (STUDY,), STUDY_PATH),
        ("stream_series", (STUDY, SERIES), SERIES_PATH),
        ("stream_instance", (STUDY, SERIES, INSTANCE), INSTANCE_PATH),
    ],
    ids=["study", "series", "instance"],
)
async def test_stream_parts_carry_their_headers(
    router: respx.MockRouter,
    client: AsyncDICOMwebClient,
    seeds: list[Seed],
    method_name: str,
    args: tuple[str, ...],
    path: str,
) -> None:
    route = router.get(path).mock(return_value=multipart_response(dicom_parts(seeds)))
    received = []
    async with getattr(client, method_name)(*args) as parts:
        async for part in parts:
            received.append((part.media_type, part.transfer_syntax, await part.read()))
    assert_wire(only_request(route), "GET", path, accept=ACCEPT_DICOM_ANY)
    assert received == [("application/dicom", ExplicitVRLittleEndian, s.data) for s in seeds]


async def test_download_study_writes_each_instance(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed], tmp_path: Path
) -> None:
    route = router.get(STUDY_PATH).mock(return_value=multipart_response(dicom_parts(seeds)))
    saved = await client.download_study(STUDY, tmp_path)

    assert_wire(only_request(route), "GET", STUDY_PATH, accept=ACCEPT_DICOM_ANY)
    assert [d.sop_instance_uid for d in saved] == [s.sop_instance_uid for s in seeds]
    for item, seed in zip(saved, seeds, strict=True):
        assert item.path == tmp_path / STUDY / seed.series_instance_uid / (
            seed.sop_instance_uid + ".dcm"
        )
        assert item.size == len(seed.data)
        assert item.transfer_syntax == ExplicitVRLittleEndian
    assert files_under(tmp_path) == {
        item.path: seed.data for item, seed in zip(saved, seeds, strict=True)
    }


async def test_download_series_cut_short_keeps_complete_files_only(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed], tmp_path: Path
) -> None:
    in_series = [s for s in seeds if s.series_instance_uid == SERIES]
    body = build_multipart(dicom_parts(in_series), "b0undary")
    cut = len(body) - len(in_series[-1].data) // 2
    route = router.get(SERIES_PATH).mock(
        return_value=httpx.Response(
            200,
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'
            },
            content=body[:cut],
        )
    )
    with pytest.raises(MultipartError):
        await client.download_series(STUDY, SERIES, tmp_path)
    assert_wire(only_request(route), "GET", SERIES_PATH, accept=ACCEPT_DICOM_ANY)
    first = tmp_path / STUDY / SERIES / f"{in_series[0].sop_instance_uid}.dcm"
    assert files_under(tmp_path) == {first: in_series[0].data}


async def test_bulkdata_by_absolute_url(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    path = f"{INSTANCE_PATH}/bulkdata/7FE00010"
    route = router.get(path).mock(
        return_value=multipart_response(
            [({"Content-Type": "application/octet-stream"}, b"\x01\x02\x03")],
            "application/octet-stream",
        )
    )
    assert await client.retrieve_bulkdata(f"{BASE}{path}") == [b"\x01\x02\x03"]
    request = only_request(route)
    assert_wire(request, "GET", path, accept=ACCEPT_FRAMES_ANY)
    assert "Range" not in request.headers


async def test_bulkdata_by_relative_path_with_a_byte_range(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    # A server that ignores Range answers 200 with the whole resource.
    path = f"{INSTANCE_PATH}/bulkdata/7FE00010"
    route = router.get(path).mock(
        return_value=multipart_response(
            [({"Content-Type": "application/octet-stream"}, bytes(500))],
            "application/octet-stream",
        )
    )
    parts = [p async for p in client.iter_bulkdata(path.lstrip("/"), byte_range=(0, 99))]
    request = only_request(route)
    assert_wire(request, "GET", path, accept=ACCEPT_FRAMES_ANY)
    assert request.headers["Range"] == "bytes=0-99"
    assert parts == [bytes(500)]


async def test_bulkdata_byte_range_accepts_partial_content(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    path = f"{INSTANCE_PATH}/bulkdata/7FE00010"
    answer = multipart_response(
        [({"Content-Type": "application/octet-stream"}, bytes(100))], "application/octet-stream"
    )
    route = router.get(path).mock(
        return_value=httpx.Response(
            206,
            headers={
                "Content-Type": answer.headers["Content-Type"],
                "Content-Range": "bytes 0-99/5000",
            },
            content=answer.content,
        )
    )
    parts = await client.retrieve_bulkdata(path.lstrip("/"), byte_range=(0, 99))
    request = only_request(route)
    assert_wire(request, "GET", path, accept=ACCEPT_FRAMES_ANY)
    assert request.headers["Range"] == "bytes=0-99"
    assert parts == [bytes(100)]


async def test_rendered_series(router: respx.MockRouter, client: AsyncDICOMwebClient) -> None:
    route = router.get(f"{SERIES_PATH}/rendered").mock(
        return_value=httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=JPEG)
    )
    assert await client.retrieve_series_rendered(STUDY, SERIES) == JPEG
    assert_wire(only_request(route), "GET", f"{SERIES_PATH}/rendered", accept="image/jpeg")


# -- WADO-RS: metadata ---------------------------------------------------------------------


def metadata_for(seeds: list[Seed]) -> list[dict[str, Any]]:
    return [
        {
            **uid_item("0020000D", STUDY),
            **uid_item("0020000E", s.series_instance_uid),
            **uid_item("00080018", s.sop_instance_uid),
        }
        for s in seeds
    ]


async def test_study_metadata(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.get(f"{STUDY_PATH}/metadata").mock(
        return_value=json_response(metadata_for(seeds))
    )
    items = await client.retrieve_study_metadata(STUDY)
    assert_wire(only_request(route), "GET", f"{STUDY_PATH}/metadata", accept=DICOM_JSON)
    assert items == metadata_for(seeds)


async def test_series_metadata(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.get(f"{SERIES_PATH}/metadata").mock(
        return_value=json_response(metadata_for(seeds[1:]))
    )
    items = await client.retrieve_series_metadata(STUDY, SERIES)
    assert_wire(only_request(route), "GET", f"{SERIES_PATH}/metadata", accept=DICOM_JSON)
    assert items == metadata_for(seeds[1:])


async def test_instance_metadata_returns_one_dict(
    router: respx.MockRouter, client: AsyncDICOMwebClient, seeds: list[Seed]
) -> None:
    route = router.get(f"{INSTANCE_PATH}/metadata").mock(
        return_value=json_response(metadata_for(seeds[2:]))
    )
    item = await client.retrieve_instance_metadata(STUDY, SERIES, INSTANCE)
    assert_wire(only_request(route), "GET", f"{INSTANCE_PATH}/metadata", accept=DICOM_JSON)
    assert item == metadata_for(seeds[2:])[0]


# -- WADO-RS: rendered and frames ----------------------------------------------------------

# The conformance collection sends "Accept: application/jpeg", which is not a registered
# media type; the conformance statement names image/jpeg, which is what the client asks for.
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


async def test_rendered_instance_with_quality(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get(f"{INSTANCE_PATH}/rendered").mock(
        return_value=httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=JPEG)
    )
    data = await client.retrieve_instance_rendered(
        STUDY, SERIES, INSTANCE, params={"quality": 100}
    )
    assert_wire(
        only_request(route), "GET", f"{INSTANCE_PATH}/rendered", "quality=100", accept="image/jpeg"
    )
    assert data == JPEG


async def test_rendered_frame_with_quality(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    path = f"{INSTANCE_PATH}/frames/1/rendered"
    route = router.get(path).mock(
        return_value=httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=JPEG)
    )
    data = await client.retrieve_instance_frames_rendered(
        STUDY, SERIES, INSTANCE, [1], params={"quality": 100}
    )
    assert_wire(only_request(route), "GET", path, "quality=100", accept="image/jpeg")
    assert data == JPEG


async def test_rendered_png_on_request(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get(f"{INSTANCE_PATH}/rendered").mock(
        return_value=httpx.Response(200, headers={"Content-Type": "image/png"}, content=b"png")
    )
    await client.retrieve_instance_rendered(STUDY, SERIES, INSTANCE, media_types=("image/png",))
    assert_wire(only_request(route), "GET", f"{INSTANCE_PATH}/rendered", accept="image/png")


async def test_rendered_parameters_are_spelled_as_the_standard_says(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get(f"{INSTANCE_PATH}/rendered").mock(
        return_value=httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=JPEG)
    )
    params = {
        "quality": 80,
        "viewport": (512, 256),
        "window": (40, 400, "linear"),
        "annotation": ["patient", "technique"],
    }
    await client.retrieve_instance_rendered(STUDY, SERIES, INSTANCE, params=params)
    assert_wire(
        only_request(route),
        "GET",
        f"{INSTANCE_PATH}/rendered",
        "quality=80&viewport=512,256&window=40,400,linear&annotation=patient,technique",
        accept="image/jpeg",
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"quality": 0}, "1 to 100"),
        ({"quality": "90"}, "1 to 100"),
        ({"viewport": (512,)}, "2 or 6 values"),
        ({"window": (40, 400)}, "3 values"),
        ({"window": (40, 400, "cubic")}, "window function"),
        ({"annotation": "everything"}, "patient, technique"),
    ],
)
async def test_rendered_parameters_out_of_the_standard_are_refused(
    router: respx.MockRouter, client: AsyncDICOMwebClient, params: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await client.retrieve_instance_rendered(STUDY, SERIES, INSTANCE, params=params)
    assert not router.calls


@pytest.mark.parametrize("level", ["study", "series", "instance", "frame"])
async def test_thumbnails_of_each_level(
    router: respx.MockRouter, client: AsyncDICOMwebClient, level: str
) -> None:
    paths = {
        "study": f"{STUDY_PATH}/thumbnail",
        "series": f"{STUDY_PATH}/series/{SERIES}/thumbnail",
        "instance": f"{INSTANCE_PATH}/thumbnail",
        "frame": f"{INSTANCE_PATH}/frames/2/thumbnail",
    }
    route = router.get(paths[level]).mock(
        return_value=httpx.Response(200, headers={"Content-Type": "image/png"}, content=b"png")
    )
    calls = {
        "study": lambda kw: client.retrieve_study_thumbnail(STUDY, **kw),
        "series": lambda kw: client.retrieve_series_thumbnail(STUDY, SERIES, **kw),
        "instance": lambda kw: client.retrieve_instance_thumbnail(STUDY, SERIES, INSTANCE, **kw),
        "frame": lambda kw: client.retrieve_instance_frames_thumbnail(
            STUDY, SERIES, INSTANCE, [2], **kw
        ),
    }
    data = await calls[level]({"media_types": ["image/png"], "params": {"viewport": (64, 64)}})
    assert data == b"png"
    assert_wire(only_request(route), "GET", paths[level], "viewport=64,64", accept="image/png")


async def test_frames_in_explicit_vr_little_endian(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    path = f"{INSTANCE_PATH}/frames/1"
    pixels = bytes(range(256)) * 4
    part_type = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    route = router.get(path).mock(
        return_value=multipart_response(
            [({"Content-Type": part_type, "Content-Location": f"{BASE}{path}"}, pixels)],
            "application/octet-stream",
        )
    )
    frames = await client.retrieve_instance_frames(
        STUDY,
        SERIES,
        INSTANCE,
        [1],
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
    )
    assert_wire(only_request(route), "GET", path, accept=ACCEPT_FRAMES_EVRLE)
    [frame] = frames
    assert isinstance(frame, Frame)
    assert frame == pixels
    assert frame.media_type == "application/octet-stream"
    assert frame.transfer_syntax == ExplicitVRLittleEndian
    assert frame.content_location == f"{BASE}{path}"


async def test_several_frames_default_to_the_stored_syntax(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    path = f"{INSTANCE_PATH}/frames/1,3"
    jp2 = "1.2.840.10008.1.2.4.90"
    parts = [
        ({"Content-Type": f"application/octet-stream; transfer-syntax={jp2}"}, b"frame-one"),
        ({"Content-Type": f"application/octet-stream; transfer-syntax={jp2}"}, b"frame-three"),
    ]
    route = router.get(path).mock(
        return_value=multipart_response(parts, "application/octet-stream")
    )
    frames = []
    async for frame in client.iter_instance_frames(STUDY, SERIES, INSTANCE, [1, 3]):
        frames.append(frame)
    assert_wire(only_request(route), "GET", path, accept=ACCEPT_FRAMES_ANY)
    assert frames == [b"frame-one", b"frame-three"]
    assert [f.transfer_syntax for f in frames] == [jp2, jp2]


async def test_frame_parts_without_content_type_take_the_response_type(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    # Orthanc's form: the transfer syntax inside the quoted type parameter.
    path = f"{INSTANCE_PATH}/frames/2"
    route = router.get(path).mock(
        return_value=multipart_response(
            [({}, b"\x00\x01\x02")],
            f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}",
        )
    )
    [frame] = await client.retrieve_instance_frames(STUDY, SERIES, INSTANCE, [2])
    assert route.call_count == 1
    assert frame == b"\x00\x01\x02"
    assert frame.media_type == "application/octet-stream"
    assert frame.transfer_syntax == ExplicitVRLittleEndian


async def test_frame_transfer_syntax_from_the_response_content_type(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    path = f"{INSTANCE_PATH}/frames/1"
    body = build_multipart([({"Content-Type": "application/octet-stream"}, b"\x07" * 8)], "fr")
    ctype = (
        'multipart/related; type="application/octet-stream"; '
        f"transfer-syntax={ExplicitVRLittleEndian}; boundary=fr"
    )
    route = router.get(path).mock(
        return_value=httpx.Response(200, headers={"Content-Type": ctype}, content=body)
    )
    [frame] = await client.retrieve_instance_frames(STUDY, SERIES, INSTANCE, [1])
    assert route.call_count == 1
    assert frame == b"\x07" * 8
    assert frame.transfer_syntax == ExplicitVRLittleEndian


async def test_frame_numbers_are_checked_before_any_request(client: AsyncDICOMwebClient) -> None:
    with pytest.raises(ValueError, match="1-based"):
        await client.retrieve_instance_frames(STUDY, SERIES, INSTANCE, [0])


# -- QIDO-RS -------------------------------------------------------------------------------

QIDO_ROUTES = [
    ("studies", "/studies", "StudyInstanceUID", STUDY, {}),
    ("series", "/series", "SeriesInstanceUID", SERIES, {}),
    (
        "series",
        f"{STUDY_PATH}/series",
        "SeriesInstanceUID",
        SERIES,
        {"study_instance_uid": STUDY},
    ),
    ("instances", "/instances", "SOPInstanceUID", INSTANCE, {}),
    (
        "instances",
        f"{STUDY_PATH}/instances",
        "SOPInstanceUID",
        INSTANCE,
        {"study_instance_uid": STUDY},
    ),
    (
        "instances",
        f"{SERIES_PATH}/instances",
        "SOPInstanceUID",
        INSTANCE,
        {"study_instance_uid": STUDY, "series_instance_uid": SERIES},
    ),
]


@pytest.mark.parametrize(
    ("level", "path", "keyword", "uid", "scope"),
    QIDO_ROUTES,
    ids=[route[1].replace(STUDY, "{s}").replace(SERIES, "{se}") for route in QIDO_ROUTES],
)
async def test_qido_routes(
    router: respx.MockRouter,
    client: AsyncDICOMwebClient,
    level: str,
    path: str,
    keyword: str,
    uid: str,
    scope: dict[str, str],
) -> None:
    answer = [uid_item("0020000D", STUDY)]
    route = router.get(path).mock(return_value=json_response(answer))
    search = getattr(client, f"search_for_{level}")
    results = await search(**scope, search_filters={keyword: uid})

    assert_wire(only_request(route), "GET", path, f"{keyword}={uid}", accept=DICOM_JSON)
    assert results == answer


async def test_qido_wildcards_are_sent_literally(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(return_value=json_response([]))
    await client.search_for_studies(search_filters={"PatientName": "Anony*"})
    assert_wire(only_request(route), "GET", "/studies", "PatientName=Anony*", accept=DICOM_JSON)


async def test_qido_full_query_shape(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(return_value=json_response([]))
    await client.search_for_studies(
        fuzzymatching=True,
        limit=10,
        offset=20,
        fields=["PatientBirthDate", "00081030"],
        search_filters={"PatientName": "Anony*", "StudyDate": "20200101-20201231"},
    )
    assert_wire(
        only_request(route),
        "GET",
        "/studies",
        "PatientName=Anony*&StudyDate=20200101-20201231&fuzzymatching=true"
        "&includefield=PatientBirthDate&includefield=00081030&limit=10&offset=20",
        accept=DICOM_JSON,
    )


async def test_qido_value_encoding(router: respx.MockRouter, client: AsyncDICOMwebClient) -> None:
    route = router.get("/series").mock(return_value=json_response([]))
    await client.search_for_series(
        search_filters={
            "PatientName": "Doe^J?hn",
            "ModalitiesInStudy": ["CT", "MR"],
            "StudyDescription": "A&B = C+D",
            "00100020": "ID 1",
        },
        fields=["all"],
    )
    assert_wire(
        only_request(route),
        "GET",
        "/series",
        "PatientName=Doe^J?hn&ModalitiesInStudy=CT,MR&StudyDescription=A%26B%20%3D%20C%2BD"
        "&00100020=ID%201&includefield=all",
        accept=DICOM_JSON,
    )


async def test_qido_dates_and_booleans(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(return_value=json_response([]))
    await client.search_for_studies(
        fuzzymatching=False,
        search_filters={"StudyDate": datetime.date(2020, 1, 2), "PatientID": None},
    )
    assert_wire(
        only_request(route),
        "GET",
        "/studies",
        "StudyDate=20200102&fuzzymatching=false",
        accept=DICOM_JSON,
    )


async def test_qido_204_is_an_empty_result(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    router.get("/instances").mock(return_value=httpx.Response(204))
    assert await client.search_for_instances(search_filters={"Modality": "XA"}) == []


async def test_qido_series_uid_without_study_is_refused(client: AsyncDICOMwebClient) -> None:
    with pytest.raises(ValueError, match="without study"):
        await client.search_for_instances(series_instance_uid=SERIES)


def studies(*uids: str) -> list[dict[str, Any]]:
    return [uid_item("0020000D", uid) for uid in uids]


def offsets_of(route: respx.Route) -> list[str | None]:
    return [call.request.url.params.get("offset") for call in route.calls]


async def test_get_remaining_pages_until_a_short_page(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(
        side_effect=[
            json_response(studies("1.1", "1.2")),
            json_response(studies("1.2", "1.3")),  # 1.2 again: data arrived while paging
            json_response(studies("1.4")),
        ]
    )
    results = await client.search_for_studies(
        limit=2, search_filters={"PatientName": "Anony*"}, get_remaining=True
    )
    assert results == studies("1.1", "1.2", "1.3", "1.4")
    assert offsets_of(route) == [None, "2", "4"]
    queries = [call.request.url.query.decode() for call in route.calls]
    assert queries == [
        "PatientName=Anony*&limit=2",
        "PatientName=Anony*&limit=2&offset=2",
        "PatientName=Anony*&limit=2&offset=4",
    ]


async def test_get_remaining_stops_at_204(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(
        side_effect=[
            json_response(studies("1.1", "1.2")),
            json_response(studies("1.3", "1.4")),
            httpx.Response(204),
        ]
    )
    results = await client.search_for_studies(limit=2, offset=6, get_remaining=True)
    assert results == studies("1.1", "1.2", "1.3", "1.4")
    assert offsets_of(route) == ["6", "8", "10"]


async def test_without_get_remaining_one_page_is_fetched(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(return_value=json_response(studies("1.1", "1.2")))
    assert await client.search_for_studies(limit=2) == studies("1.1", "1.2")
    assert route.call_count == 1


async def test_iter_search_for_studies_pages(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    route = router.get("/studies").mock(
        side_effect=[json_response(studies("1.1", "1.2")), json_response(studies("1.3"))]
    )
    seen = [item async for item in client.iter_search_for_studies(limit=2)]
    assert seen == studies("1.1", "1.2", "1.3")
    assert offsets_of(route) == [None, "2"]


async def test_iter_search_for_series_in_a_study(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    page1 = [uid_item("0020000E", "2.1"), uid_item("0020000E", "2.2")]
    page2 = [uid_item("0020000E", "2.2"), uid_item("0020000E", "2.3")]
    route = router.get(f"{STUDY_PATH}/series").mock(
        side_effect=[json_response(page1), json_response(page2), httpx.Response(204)]
    )
    seen = []
    async with client.iter_search_for_series(STUDY, limit=2, fuzzymatching=True) as results:
        async for item in results:
            seen.append(item["0020000E"]["Value"][0])
    assert seen == ["2.1", "2.2", "2.3"]
    assert [c.request.url.query.decode() for c in route.calls] == [
        "fuzzymatching=true&limit=2",
        "fuzzymatching=true&limit=2&offset=2",
        "fuzzymatching=true&limit=2&offset=4",
    ]


async def test_iter_search_for_instances_in_a_series(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    items = [uid_item("00080018", f"3.{n}") for n in range(3)]
    route = router.get(f"{SERIES_PATH}/instances").mock(return_value=json_response(items))
    seen = [
        item
        async for item in client.iter_search_for_instances(
            STUDY, SERIES, fields=["00280008"], limit=5
        )
    ]
    assert seen == items
    assert_wire(
        only_request(route),
        "GET",
        f"{SERIES_PATH}/instances",
        "includefield=00280008&limit=5",
        accept=DICOM_JSON,
    )


# -- DELETE --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method_name", "args", "path"),
    [
        ("delete_instance", (STUDY, SERIES, INSTANCE), INSTANCE_PATH),
        ("delete_series", (STUDY, SERIES), SERIES_PATH),
        ("delete_study", (STUDY,), STUDY_PATH),
    ],
    ids=["instance", "series", "study"],
)
async def test_delete(
    router: respx.MockRouter,
    client: AsyncDICOMwebClient,
    method_name: str,
    args: tuple[str, ...],
    path: str,
) -> None:
    route = router.delete(path).mock(return_value=httpx.Response(204))
    assert await getattr(client, method_name)(*args) is None
    request = only_request(route)
    assert_wire(request, "DELETE", path)
    assert request.content == b""


async def test_delete_missing_study_raises_not_found(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    router.delete(STUDY_PATH).mock(return_value=httpx.Response(404, text="study not found"))
    with pytest.raises(NotFoundError, match="study not found"):
        await client.delete_study(STUDY)


async def test_delete_not_offered_names_the_allowed_methods(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    router.delete(SERIES_PATH).mock(
        return_value=httpx.Response(405, headers={"Allow": "GET, HEAD"})
    )
    with pytest.raises(MethodNotAllowedError) as info:
        await client.delete_series(STUDY, SERIES)
    assert "does not support DELETE" in str(info.value)
    assert "GET, HEAD" in str(info.value)


# -- error statuses ------------------------------------------------------------------------

ERROR_CASES = [
    (400, HTTPStatusError, 1),
    (401, AuthenticationError, 1),
    (403, PermissionDeniedError, 1),
    (404, NotFoundError, 1),
    (405, MethodNotAllowedError, 1),
    (406, NotAcceptableError, 1),
    (409, ConflictError, 1),
    (500, ServerError, 1),
    (503, ServerError, 2),
]


@pytest.mark.parametrize(
    ("status", "error", "calls"), ERROR_CASES, ids=[str(c[0]) for c in ERROR_CASES]
)
async def test_error_status_raises_its_class(
    router: respx.MockRouter,
    make_client: Callable[..., AsyncDICOMwebClient],
    status: int,
    error: type[HTTPStatusError],
    calls: int,
) -> None:
    client = make_client(auth=TOKEN)
    detail = f"server said no ({status})"
    route = router.get("/studies").mock(
        return_value=httpx.Response(status, json={"error": {"code": "Failed", "message": detail}})
    )
    with pytest.raises(error) as info:
        await client.search_for_studies(search_filters={"PatientName": "Anony*"})

    exc = info.value
    assert type(exc) is error
    assert route.call_count == calls
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert exc.status_code == status
    assert exc.method == "GET"
    assert exc.url == f"{BASE}/studies?PatientName=Anony*"
    assert detail in exc.body_excerpt
    text = str(exc)
    assert str(status) in text
    assert "GET" in text
    assert exc.url in text
    assert detail in text
    for shown in (text, repr(exc), repr(exc.args), repr(exc.headers), exc.body_excerpt):
        assert TOKEN not in shown


async def test_error_body_excerpt_is_short(
    router: respx.MockRouter, client: AsyncDICOMwebClient
) -> None:
    router.get(f"{STUDY_PATH}/metadata").mock(return_value=httpx.Response(500, text="x" * 100_000))
    with pytest.raises(ServerError) as info:
        await client.retrieve_study_metadata(STUDY)
    assert 0 < len(info.value.body_excerpt) <= 303
    assert info.value.body_excerpt.endswith("...")


async def test_error_never_shows_basic_credentials(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    client = make_client(auth=("user", "hunter2-pass"))
    router.get(STUDY_PATH).mock(return_value=httpx.Response(403, text="forbidden"))
    with pytest.raises(PermissionDeniedError) as info:
        await client.retrieve_study(STUDY)
    encoded = base64.b64encode(b"user:hunter2-pass").decode()
    for shown in (str(info.value), repr(info.value)):
        assert "hunter2-pass" not in shown
        assert encoded not in shown


async def test_503_is_retried_then_succeeds(
    router: respx.MockRouter,
    make_client: Callable[..., AsyncDICOMwebClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(auth=TOKEN)
    route = router.get("/studies").mock(
        side_effect=[httpx.Response(503), json_response(studies("1.1"))]
    )
    with caplog.at_level(logging.DEBUG):
        assert await client.search_for_studies() == studies("1.1")
    assert route.call_count == 2
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in route.calls)
    assert any("503" in record.getMessage() for record in caplog.records)
    assert TOKEN not in caplog.text


async def test_400_is_not_retried(router: respx.MockRouter, client: AsyncDICOMwebClient) -> None:
    route = router.get("/studies").mock(
        side_effect=[httpx.Response(400, text="limit out of range"), json_response([])]
    )
    with pytest.raises(HTTPStatusError, match="limit out of range"):
        await client.search_for_studies(limit=500)
    assert route.call_count == 1


async def test_connection_error_is_retried_then_translated(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    client = make_client(auth=TOKEN)
    route = router.get(f"{STUDY_PATH}/metadata").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    with pytest.raises(TransportError) as info:
        await client.retrieve_study_metadata(STUDY)
    assert route.call_count == 2
    assert info.value.method == "GET"
    assert info.value.url == f"{BASE}{STUDY_PATH}/metadata"
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


# -- authentication ------------------------------------------------------------------------


async def test_static_bearer_token(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    client = make_client(auth=TOKEN)
    route = router.get("/studies").mock(return_value=json_response([]))
    await client.search_for_studies()
    await client.search_for_studies()
    assert [c.request.headers["Authorization"] for c in route.calls] == [f"Bearer {TOKEN}"] * 2


async def test_static_bearer_token_is_not_resent_after_401(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    client = make_client(auth=TOKEN)
    route = router.get("/studies").mock(return_value=httpx.Response(401))
    with pytest.raises(AuthenticationError):
        await client.search_for_studies()
    assert route.call_count == 1


class TokenSource:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        return f"token-{self.calls}"


def accept_only(token: str, answer: Callable[[], httpx.Response]) -> Callable[..., Any]:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return httpx.Response(401, headers={"WWW-Authenticate": "Bearer"})
        return answer()

    return respond


async def test_token_provider_is_called_once_for_many_requests(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    source = TokenSource()
    client = make_client(auth=source)
    route = router.get("/studies").mock(return_value=json_response([]))
    for _ in range(3):
        await client.search_for_studies()
    assert source.calls == 1
    assert {c.request.headers["Authorization"] for c in route.calls} == {"Bearer token-1"}


async def test_token_provider_refreshes_once_after_401(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    source = TokenSource()
    client = make_client(auth=source)
    valid = ["token-1"]

    def respond(request: httpx.Request) -> httpx.Response:
        return accept_only(valid[0], lambda: json_response([]))(request)

    route = router.get("/studies").mock(side_effect=respond)
    await client.search_for_studies()
    valid[0] = "token-2"  # the first token expires
    await client.search_for_studies()
    await client.search_for_studies()

    assert source.calls == 2
    assert [c.request.headers["Authorization"] for c in route.calls] == [
        "Bearer token-1",
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
    ]
    assert [c.response.status_code for c in route.calls] == [200, 401, 200, 200]


async def test_token_refresh_resends_the_stow_body(
    router: respx.MockRouter,
    make_client: Callable[..., AsyncDICOMwebClient],
    seeds: list[Seed],
) -> None:
    source = TokenSource()
    client = make_client(auth=source)
    route = router.post("/studies").mock(
        side_effect=accept_only("token-2", lambda: json_response({}))
    )
    result = await client.store_instances([s.path for s in seeds])

    assert result.status_code == 200
    assert source.calls == 2
    first, second = (c.request for c in route.calls)
    assert second.headers["Authorization"] == "Bearer token-2"
    assert second.content == first.content
    assert second.headers["Content-Length"] == str(len(second.content))
    parts = split_multipart(second.content, stow_boundary(second))
    assert [d for _, d in parts] == [s.data for s in seeds]


async def test_concurrent_401s_share_one_refresh(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    source = TokenSource()
    client = make_client(auth=source)
    await asyncio.sleep(0)
    route = router.get("/studies").mock(
        side_effect=accept_only("token-2", lambda: json_response([]))
    )
    results = await asyncio.gather(*(client.search_for_studies() for _ in range(4)))
    assert results == [[]] * 4
    assert source.calls == 2
    assert route.call_count == 8


async def test_refreshed_token_rejected_again_raises(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    source = TokenSource()
    client = make_client(auth=source)
    route = router.get("/studies").mock(return_value=httpx.Response(401))
    with pytest.raises(AuthenticationError) as info:
        await client.search_for_studies()
    assert source.calls == 2
    assert route.call_count == 2
    assert "token-" not in str(info.value)
    assert "token-" not in repr(info.value)


async def test_basic_auth_tuple(
    router: respx.MockRouter, make_client: Callable[..., AsyncDICOMwebClient]
) -> None:
    client = make_client(auth=("user", "pass"))
    route = router.get(f"{SERIES_PATH}/metadata").mock(return_value=json_response([]))
    await client.retrieve_series_metadata(STUDY, SERIES)
    expected = "Basic " + base64.b64encode(b"user:pass").decode()
    assert only_request(route).headers["Authorization"] == expected
