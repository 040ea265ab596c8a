"""Client options for servers that differ from the standard's easy path (Azure first):
406 answered by asking for the stored encoding, QIDO page-size caps, implicit VR files
caught before upload (or converted), conditional metadata and the pre-update version."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pydicom
import pytest
import respx
from pydicom.uid import ImplicitVRLittleEndian

from dicomweb_async import AsyncDICOMwebClient, FailureReason, NotAcceptableError, RetryPolicy
from dicomweb_async._bulk.implicit_vr import to_explicit_vr
from dicomweb_async._core.multipart_writer import dataset_bytes
from tests.loopback_server import LoopbackServer

BASE = "http://127.0.0.1:8042/v2"
STUDY = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
SERIES = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
SOP = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
INSTANCE = f"/v2/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
SPECIFIC = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'
ORIGINAL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    # Some tests check that a route was NOT called.
    with respx.mock(base_url=BASE, assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


def _multipart(data: bytes, boundary: str = "b0undary") -> httpx.Response:
    body = (
        (
            f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
            f"\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return httpx.Response(200, headers={"Content-Type": ctype}, content=body)


@pytest.fixture
def red(seed_files: list[Path]) -> bytes:
    return next(p for p in seed_files if p.name == "red-triangle.dcm").read_bytes()


@pytest.fixture
def implicit_file(tmp_path: Path, seed_files: list[Path]) -> Path:
    ds = pydicom.dcmread(next(p for p in seed_files if p.name == "red-triangle.dcm"))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    path.write_bytes(dataset_bytes(ds))
    return path


@pytest.fixture
async def client_factory() -> AsyncIterator[list[AsyncDICOMwebClient]]:
    made: list[AsyncDICOMwebClient] = []
    yield made
    for c in made:
        await c.aclose()


def _client(made: list[AsyncDICOMwebClient], url: str = BASE, **kw: object) -> AsyncDICOMwebClient:
    c = AsyncDICOMwebClient(url, retry=RetryPolicy(attempts=1), **kw)  # type: ignore[arg-type]
    made.append(c)
    return c


# -- 406 ------------------------------------------------------------------------------------


async def test_406_is_raised_unless_the_caller_allows_the_stored_encoding(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient]
) -> None:
    route = router.get(INSTANCE.removeprefix("/v2")).mock(return_value=httpx.Response(406))
    client = _client(client_factory)
    with pytest.raises(NotAcceptableError):
        await client.retrieve_instance(
            STUDY, SERIES, SOP, media_types=[("application/dicom", "1.2.840.10008.1.2.4.90")]
        )
    assert route.call_count == 1


async def test_406_then_asks_for_the_stored_encoding(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient], red: bytes
) -> None:
    route = router.get(INSTANCE.removeprefix("/v2")).mock(
        side_effect=[httpx.Response(406), _multipart(red)]
    )
    client = _client(client_factory, original_on_406=True)
    ds = await client.retrieve_instance(
        STUDY, SERIES, SOP, media_types=[("application/dicom", "1.2.840.10008.1.2.4.90")]
    )
    assert ds.SOPInstanceUID == SOP
    accepts = [call.request.headers["Accept"] for call in route.calls]
    assert accepts == [SPECIFIC, ORIGINAL]


async def test_406_fallback_for_frames(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient]
) -> None:
    frame_type = 'multipart/related; type="application/octet-stream"'
    route = router.get(f"{INSTANCE.removeprefix('/v2')}/frames/1").mock(
        side_effect=[
            httpx.Response(406),
            httpx.Response(
                200,
                headers={"Content-Type": f"{frame_type}; boundary=bb"},
                content=b"--bb\r\nContent-Type: application/octet-stream\r\n\r\nxyz\r\n--bb--\r\n",
            ),
        ]
    )
    client = _client(client_factory, original_on_406=True)
    frames = await client.retrieve_instance_frames(
        STUDY, SERIES, SOP, [1], media_types=[("application/octet-stream", "1.2.840.10008.1.2.1")]
    )
    assert frames == [b"xyz"]
    assert route.calls[1].request.headers["Accept"] == f"{frame_type}; transfer-syntax=*"


# -- QIDO page size -------------------------------------------------------------------------


async def test_limit_above_the_servers_maximum_is_lowered(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient]
) -> None:
    route = router.get("/studies").mock(return_value=httpx.Response(204))
    client = _client(client_factory, max_page_size=200)
    assert await client.search_for_studies(limit=500) == []
    assert route.calls.last.request.url.query == b"limit=200"


async def test_paging_with_the_cap_fetches_everything(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient]
) -> None:
    def page(n: int, start: int) -> list[dict[str, object]]:
        return [{"0020000D": {"vr": "UI", "Value": [f"1.2.{start + i}"]}} for i in range(n)]

    route = router.get("/studies").mock(
        side_effect=[
            httpx.Response(200, json=page(200, 0)),
            httpx.Response(200, json=page(200, 200)),
            httpx.Response(200, json=page(50, 400)),
        ]
    )
    client = _client(client_factory, max_page_size=200)
    found = await client.search_for_studies(get_remaining=True)
    assert len(found) == 450
    queries = [call.request.url.query for call in route.calls]
    assert queries == [b"limit=200", b"limit=200&offset=200", b"limit=200&offset=400"]


# -- implicit VR ----------------------------------------------------------------------------


async def test_implicit_vr_file_is_refused_before_upload(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient], implicit_file: Path
) -> None:
    route = router.post("/studies").mock(return_value=httpx.Response(200))
    client = _client(client_factory, reject_implicit_vr=True)
    with pytest.raises(ValueError, match="implicit VR"):
        await client.store_instances([implicit_file])
    assert route.call_count == 0


async def test_store_folder_reports_implicit_vr_files_or_converts_them(
    tmp_path: Path,
    implicit_file: Path,
    client_factory: list[AsyncDICOMwebClient],
) -> None:
    with LoopbackServer(storage_dir=tmp_path / "store") as server:
        client = _client(client_factory, server.url, reject_implicit_vr=True)
        report = await client.store_folder([implicit_file])
        assert [o.status for o in report.outcomes] == ["failed"]
        assert report.outcomes[0].reason == FailureReason.VALIDATION_FAILED
        assert "implicit VR" in (report.outcomes[0].message or "")
        assert server.requests == []

        report = await client.store_folder([implicit_file], convert_implicit_vr=True)
        assert [o.status for o in report.outcomes] == ["stored"]
        stored = server.get_instance(SOP)
        assert stored is not None
        sent = stored.read_bytes()
    assert sent == to_explicit_vr(implicit_file)
    ds = pydicom.dcmread(io.BytesIO(sent))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PixelData == pydicom.dcmread(implicit_file).PixelData


async def test_other_servers_get_implicit_vr_files_as_they_are(
    tmp_path: Path, implicit_file: Path, client_factory: list[AsyncDICOMwebClient]
) -> None:
    with LoopbackServer(storage_dir=tmp_path / "store") as server:
        client = _client(client_factory, server.url)
        report = await client.store_folder([implicit_file])
        assert [o.status for o in report.outcomes] == ["stored"]
        stored = server.get_instance(SOP)
        assert stored is not None
        sent = stored.read_bytes()
    assert sent == await anyio.Path(implicit_file).read_bytes()


# -- metadata: ETag and the pre-update version ---------------------------------------------


async def test_metadata_etag_and_not_modified(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient]
) -> None:
    item = {"00080018": {"vr": "UI", "Value": [SOP]}}
    route = router.get(f"{INSTANCE.removeprefix('/v2')}/metadata").mock(
        side_effect=[
            httpx.Response(200, json=[item], headers={"ETag": '"v1"'}),
            httpx.Response(304, headers={"ETag": '"v1"'}),
        ]
    )
    client = _client(client_factory)
    first = await client.retrieve_metadata(STUDY, SERIES, SOP)
    assert first.items == [item] and first.etag == '"v1"' and not first.not_modified
    again = await client.retrieve_metadata(STUDY, SERIES, SOP, if_none_match=first.etag)
    assert again.not_modified and again.items == [] and again.etag == '"v1"'
    assert "If-None-Match" not in route.calls[0].request.headers
    assert route.calls[1].request.headers["If-None-Match"] == '"v1"'


async def test_metadata_of_the_version_before_a_bulk_update(
    router: respx.MockRouter, client_factory: list[AsyncDICOMwebClient]
) -> None:
    route = router.get(f"/studies/{STUDY}/metadata").mock(
        return_value=httpx.Response(200, json=[])
    )
    client = _client(client_factory)
    await client.retrieve_study_metadata(STUDY, request_original=True)
    await client.retrieve_study_metadata(STUDY)
    assert route.calls[0].request.headers["msdicom-request-original"] == "true"
    assert "msdicom-request-original" not in route.calls[1].request.headers
    with pytest.raises(ValueError):
        await client.retrieve_metadata(STUDY, None, SOP)
