"""The Azure DICOM service emulator, driven by the package's own client.

Most tests run twice: in-process (``emulator.transport()``) and over a loopback socket
(``emulator.serve()``), so both front ends are held to the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import trio
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from dicomweb_async import (
    AsyncDICOMwebClient,
    AuthenticationError,
    FailureReason,
    HTTPStatusError,
    NotAcceptableError,
    NotFoundError,
    RetryPolicy,
    TransportError,
)
from dicomweb_async._core.multipart_writer import dataset_bytes
from dicomweb_async.testing import AzureDicomEmulator, EmulatorServer, RecordedRequest

STUDY = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
RED_SERIES = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
RED = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
GREEN = "1.2.826.0.1.3680043.8.498.12714725698140337137334606354172323212"
BLUE_SERIES = "1.2.826.0.1.3680043.8.498.77033797676425927098669402985243398207"
BLUE = "1.2.826.0.1.3680043.8.498.13273713909719068980354078852867170114"
FRAME_SIZE = 979 * 985 * 3
EXPLICIT = "1.2.840.10008.1.2.1"
DICOM_JSON = "application/dicom+json"
FAST_RETRY = RetryPolicy(attempts=3, backoff=0.0)

FRONTS = ("in-process", "loopback")


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _uids(items: list[dict[str, Any]], tag: str) -> list[str]:
    return [_value(i, tag) for i in items]


@contextlib.asynccontextmanager
async def connect(
    emulator: AzureDicomEmulator,
    front: str,
    *,
    api_version: int = 2,
    partition: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[AsyncDICOMwebClient]:
    """A client of ``emulator`` through the chosen front end."""
    kwargs.setdefault("retry", FAST_RETRY)
    if front == "in-process":
        base = f"http://emulator/v{api_version}"
        if partition:
            base += f"/partitions/{partition}"
        async with (
            httpx.AsyncClient(transport=emulator.transport()) as http,
            AsyncDICOMwebClient(base, http_client=http, **kwargs) as client,
        ):
            yield client
    else:
        server = emulator.serve(api_version=api_version, partition=partition)
        async with server as url, AsyncDICOMwebClient(url, **kwargs) as client:
            yield client
    assert emulator.errors == []


@pytest.fixture
def emulator() -> AzureDicomEmulator:
    return AzureDicomEmulator()


@pytest.fixture
def by_name(seed_files: list[Path]) -> dict[str, Path]:
    return {p.stem: p for p in seed_files}


def _variant(path: Path, change: Callable[[pydicom.Dataset], None]) -> bytes:
    """The seed file with new UIDs for its instance and ``change`` applied."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    change(ds)
    return dataset_bytes(ds)


async def _wait_for_operation(http: httpx.AsyncClient, href: str) -> dict[str, Any]:
    for _ in range(200):
        response = await http.get(href)
        if response.status_code == 200:
            result: dict[str, Any] = response.json()
            return result
        assert response.status_code == 202
        await asyncio.sleep(0.02)
    raise AssertionError("the operation did not complete")


# -- the tutorial walkthrough -------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_tutorial_walkthrough(
    emulator: AzureDicomEmulator, front: str, by_name: dict[str, Path], seed_files: list[Path]
) -> None:
    red, green, blue = by_name["red-triangle"], by_name["green-square"], by_name["blue-circle"]
    async with connect(emulator, front) as client:
        # Store: multipart, into /studies/{study}, single part, then everything again.
        result = await client.store_instances([blue, green])
        assert result.status_code == 200
        assert {o.sop_instance_uid for o in result.stored} == {BLUE, GREEN}
        assert all(
            o.retrieve_url and o.retrieve_url.endswith(f"/instances/{o.sop_instance_uid}")
            for o in result.stored
        )
        result = await client.store_instances([red], STUDY)
        assert result.status_code == 200
        assert result.retrieve_url == f"{client.base_url}/studies/{STUDY}"
        result = await client.store_instances([red], single_part=True)
        assert result.status_code == 409
        assert [(o.sop_instance_uid, o.reason) for o in result.failed] == [
            (RED, FailureReason.ALREADY_STORED)
        ]
        result = await client.store_instances(seed_files)
        assert result.status_code == 409
        assert [o.reason for o in result.failed] == [FailureReason.ALREADY_STORED] * 3

        # Retrieve.
        assert len(await client.retrieve_study(STUDY)) == 3
        series = await client.retrieve_series(STUDY, RED_SERIES)
        assert {ds.SOPInstanceUID for ds in series} == {RED, GREEN}
        ds = await client.retrieve_instance(STUDY, RED_SERIES, RED)
        assert ds.SOPInstanceUID == RED
        ds = await client.retrieve_instance(STUDY, RED_SERIES, RED, multipart=False)
        assert ds.SOPInstanceUID == RED
        (frame,) = await client.retrieve_instance_frames(STUDY, RED_SERIES, RED, [1])
        assert len(frame) == FRAME_SIZE
        assert frame.transfer_syntax == EXPLICIT
        assert bytes(frame) == ds.PixelData[:FRAME_SIZE]
        assert len(await client.retrieve_study_metadata(STUDY)) == 3
        assert len(await client.retrieve_series_metadata(STUDY, RED_SERIES)) == 2
        meta = await client.retrieve_instance_metadata(STUDY, RED_SERIES, RED)
        assert _value(meta, "00080018") == RED
        assert "7FE00010" not in meta  # no OB/OW attributes in metadata
        jpeg = await client.retrieve_instance_rendered(
            STUDY, RED_SERIES, RED, params={"quality": 50}
        )
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
        png = await client.retrieve_instance_frames_rendered(
            STUDY, RED_SERIES, RED, [1], media_types=("image/png",)
        )
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(NotAcceptableError):
            await client.retrieve_instance_rendered(
                STUDY, RED_SERIES, RED, media_types=("image/gif",)
            )

        # Search: the six routes, a wildcard and fuzzy matching.
        searches = [
            client.search_for_studies(search_filters={"StudyInstanceUID": STUDY}),
            client.search_for_series(search_filters={"SeriesInstanceUID": RED_SERIES}),
            client.search_for_series(STUDY, search_filters={"SeriesInstanceUID": RED_SERIES}),
            client.search_for_instances(search_filters={"SOPInstanceUID": RED}),
            client.search_for_instances(STUDY, search_filters={"SOPInstanceUID": RED}),
            client.search_for_instances(STUDY, RED_SERIES, search_filters={"SOPInstanceUID": RED}),
        ]
        for search in searches:
            assert len(await search) == 1
        found = await client.search_for_studies(search_filters={"PatientName": "Anony*"})
        assert _uids(found, "0020000D") == [STUDY]
        assert await client.search_for_studies(search_filters={"PatientName": "anony"}) == []
        for fuzzy in ("anon", "mous", "Anony Mo"):
            found = await client.search_for_studies(
                fuzzymatching=True, search_filters={"PatientName": fuzzy}
            )
            assert len(found) == 1, fuzzy
        found = await client.search_for_studies(
            fuzzymatching=True, search_filters={"PatientName": "nony"}
        )
        assert found == []

        # Delete, level by level.
        await client.delete_instance(STUDY, RED_SERIES, RED)
        with pytest.raises(NotFoundError):
            await client.retrieve_instance(STUDY, RED_SERIES, RED)
        await client.delete_series(STUDY, RED_SERIES)
        with pytest.raises(NotFoundError):
            await client.retrieve_series(STUDY, RED_SERIES)
        await client.delete_study(STUDY)
        with pytest.raises(NotFoundError):
            await client.retrieve_study(STUDY)
        with pytest.raises(NotFoundError):
            await client.delete_study(STUDY)
    assert emulator.instance_count() == 0


@pytest.mark.parametrize("front", FRONTS)
async def test_round_trips_are_byte_identical(
    front: str, seed_files: list[Path], tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    emulator = AzureDicomEmulator(storage_dir=storage)
    async with connect(emulator, front) as client:
        assert (await client.store_instances(seed_files)).status_code == 200
        assert len(list(storage.iterdir())) == 3
        saved = await client.download_study(STUDY, tmp_path / "out")
        by_sop = {item.sop_instance_uid: item.path.read_bytes() for item in saved}
        originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in seed_files}
        assert by_sop == originals
        async with client.stream_instance(STUDY, RED_SERIES, RED) as parts:
            (data,) = [await part.read() async for part in parts]
        assert data == originals[RED]
        # The bulk paths: parallel download (listing through QIDO-RS), folder upload.
        report = await client.download_studies([STUDY], tmp_path / "bulk", concurrency=3)
        assert sorted(o.size for o in report.downloaded) == sorted(map(len, originals.values()))
        await client.delete_study(STUDY)
        assert list(storage.iterdir()) == []
        upload = await client.store_folder(seed_files[0].parent, concurrency=2)
        assert len(upload.stored) == 3
    assert emulator.instance_count() == 3


async def test_chunked_request_bodies_over_loopback(by_name: dict[str, Path]) -> None:
    emulator = AzureDicomEmulator()
    data = by_name["red-triangle"].read_bytes()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    async with emulator.serve() as url, httpx.AsyncClient() as http:
        response = await http.post(
            f"{url}/studies",
            content=pieces(),
            headers={"Content-Type": "application/dicom", "Accept": DICOM_JSON},
        )
        assert response.status_code == 200
        assert "chunked" in response.request.headers.get("transfer-encoding", "")
        again = await http.get(
            f"{url}/studies/{STUDY}/series/{RED_SERIES}/instances/{RED}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
        )
        assert again.content == data
        assert again.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert emulator.errors == []


# -- STOW-RS outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_store_validation_and_statuses(
    emulator: AzureDicomEmulator, front: str, by_name: dict[str, Path]
) -> None:
    red = by_name["red-triangle"]

    def implicit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    def no_patient_id(ds: pydicom.Dataset) -> None:
        del ds.PatientID

    def empty_patient_id(ds: pydicom.Dataset) -> None:
        ds.PatientID = ""

    async with connect(emulator, front) as client:
        # Partly stored: 202 with the stored and the failed instance.
        await client.store_instances([red])
        result = await client.store_instances([by_name["blue-circle"], red])
        assert result.status_code == 202
        assert [o.sop_instance_uid for o in result.stored] == [BLUE]
        assert [o.reason for o in result.failed] == [FailureReason.ALREADY_STORED]

        # Into the wrong study: 43265.
        result = await client.store_instances([by_name["green-square"]], "1.2.3.4")
        assert result.status_code == 409
        assert [o.reason for o in result.failed] == [FailureReason.STUDY_UID_MISMATCH]

        # Implicit VR and a missing PatientID fail validation; an empty one does not.
        result = await client.store_instances([_variant(red, implicit)])
        assert [o.reason for o in result.failed] == [FailureReason.VALIDATION_FAILED]
        assert "implicit VR" in result.failed[0].error_comments[0]
        result = await client.store_instances([_variant(red, no_patient_id)])
        assert [o.reason for o in result.failed] == [FailureReason.VALIDATION_FAILED]
        assert "(0010,0020)" in result.failed[0].error_comments[0]
        assert (await client.store_instances([_variant(red, empty_patient_id)])).ok

        # Not DICOM at all: 272.
        result = await client.store_instances([b"this is not DICOM"])
        assert result.status_code == 409
        assert [o.reason for o in result.failed] == [FailureReason.PROCESSING_FAILURE]

        # Other content types: 415; an empty request: 204.
        http = client.http_client
        response = await http.post(
            f"{client.base_url}/studies", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 415
        response = await http.post(
            f"{client.base_url}/studies",
            content=b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
            headers={"Content-Type": "multipart/related; boundary=b"},
        )
        assert response.status_code == 415
        response = await http.post(
            f"{client.base_url}/studies",
            content=b"",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
        assert response.status_code == 204
    assert emulator.instance_count() == 3


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid date
async def test_invalid_searchable_date_warns_in_v2_and_fails_in_v1(
    emulator: AzureDicomEmulator, by_name: dict[str, Path]
) -> None:
    data = by_name["red-triangle"].read_bytes()
    # Patch the value of StudyDate (0008,0020) in place: pydicom would refuse to write it.
    element = b"\x08\x00\x20\x00DA\x08\x0020200922"
    assert data.count(element) == 1
    data = data.replace(element, element[:8] + b"2020-922")
    async with connect(emulator, "in-process", api_version=1) as client:
        result = await client.store_instances([data])
        assert [o.reason for o in result.failed] == [FailureReason.VALIDATION_FAILED]
        assert "(0008,0020)" in result.failed[0].error_comments[0]
    async with connect(emulator, "in-process") as client:
        result = await client.store_instances([data])
        assert result.status_code == 202
        assert [w.reason for w in result.warnings] == [1]
        assert "YYYYMMDD" in result.warnings[0].error_comments[0]


# -- QIDO-RS --------------------------------------------------------------------------------


async def test_search_rules(emulator: AzureDicomEmulator, by_name: dict[str, Path]) -> None:
    async with connect(emulator, "in-process") as client:
        for name in ("blue-circle", "green-square", "red-triangle"):
            await client.store_instances([by_name[name]])

        # Newest first, paged by limit and offset; past the end is 204 (no results).
        found = await client.search_for_instances()
        assert _uids(found, "00080018") == [RED, GREEN, BLUE]
        page = await client.search_for_instances(limit=1, offset=1)
        assert _uids(page, "00080018") == [GREEN]
        assert await client.search_for_instances(offset=3) == []
        everything = await client.search_for_instances(limit=2, get_remaining=True)
        assert len(everything) == 3
        for limit in (0, 201):
            with pytest.raises(HTTPStatusError) as caught:
                await client.search_for_studies(limit=limit)
            assert caught.value.status_code == 400

        # Series of all studies carry study attributes; series newest first.
        series = await client.search_for_series()
        assert _uids(series, "0020000E") == [RED_SERIES, BLUE_SERIES]
        assert _value(series[0], "0020000D") == STUDY
        assert _value(series[0], "00100010") == {"Alphabetic": "Anony Mous"}

        # includefield by keyword, by tag, and all (with aggregates).
        (study,) = await client.search_for_studies(fields=["PatientSex", "00200010"])
        assert _value(study, "00100040") == "F"
        assert _value(study, "00200010") == "1"
        (study,) = await client.search_for_studies(fields=["all"])
        assert _value(study, "00201208") == 3
        assert _value(study, "00101010") == "024Y"
        (series_item,) = await client.search_for_series(STUDY, fields=["all"], limit=1)
        assert _value(series_item, "00201209") == 2

        # Matching: date ranges, UID lists, wildcards, case-insensitive strings, modalities.
        for date, count in (("20200101-20201231", 1), ("20200922-", 1), ("-20200921", 0)):
            found = await client.search_for_studies(search_filters={"StudyDate": date})
            assert len(found) == count, date
        found = await client.search_for_instances(
            search_filters={"SOPInstanceUID": f"{RED},{BLUE}"}
        )
        assert sorted(_uids(found, "00080018")) == sorted([RED, BLUE])
        assert len(await client.search_for_studies(search_filters={"PatientID": "?D*"})) == 1
        assert len(await client.search_for_series(search_filters={"Modality": "ot"})) == 2
        found = await client.search_for_studies(search_filters={"ModalitiesInStudy": "OT"})
        assert _value(found[0], "00080061") == "OT"
        found = await client.search_for_studies(search_filters={"ReferringPhysicianName": "doc"})
        assert found == []
        found = await client.search_for_studies(
            fuzzymatching=True, search_filters={"ReferringPhysicianName": "doc"}
        )
        assert len(found) == 1

        # Attributes a route cannot filter on are refused, as by the service.
        for search in (
            client.search_for_studies(search_filters={"Rows": "979"}),
            client.search_for_studies(search_filters={"Modality": "OT"}),
            client.search_for_series(STUDY, search_filters={"PatientID": "ID1"}),
            client.search_for_studies(search_filters={"NoSuchKeyword": "1"}),
        ):
            with pytest.raises(HTTPStatusError) as caught:
                await search
            assert caught.value.status_code == 400


# -- WADO-RS details ------------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_retrieve_negotiation_frames_and_etags(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path]
) -> None:
    async with connect(emulator, front) as client:
        await client.store_instances(seed_files)
        # No transcoding: another transfer syntax answers 406, the stored one is served.
        jpeg2000 = [("application/dicom", "1.2.840.10008.1.2.4.90")]
        with pytest.raises(NotAcceptableError):
            await client.retrieve_study(STUDY, media_types=jpeg2000)
        with pytest.raises(NotAcceptableError):
            await client.retrieve_instance(STUDY, RED_SERIES, RED, jpeg2000, multipart=False)
        explicit = [("application/dicom", EXPLICIT)]
        assert len(await client.retrieve_series(STUDY, RED_SERIES, media_types=explicit)) == 2

        http = client.http_client
        instance = f"{client.base_url}/studies/{STUDY}/series/{RED_SERIES}/instances/{RED}"
        response = await http.get(f"{client.base_url}/studies/{STUDY}", headers={"Accept": "*/*"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/related")
        response = await http.get(instance, headers={"Accept": "*/*"})
        assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"

        # Frames: single part on request, 404 past the last, 400 for 0, 406 for JPEG 2000.
        response = await http.get(
            f"{instance}/frames/1",
            headers={"Accept": "application/octet-stream; transfer-syntax=*"},
        )
        assert response.status_code == 200
        assert len(response.content) == FRAME_SIZE
        with pytest.raises(NotFoundError):
            await client.retrieve_instance_frames(STUDY, RED_SERIES, RED, [1, 2])
        response = await http.get(f"{instance}/frames/0")
        assert response.status_code == 400
        response = await http.get(
            f"{instance}/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'}
        )
        assert response.status_code == 406

        # Metadata: ETag and If-None-Match; a new instance changes the study's ETag.
        metadata = f"{client.base_url}/studies/{STUDY}/series/{RED_SERIES}/metadata"
        first = await http.get(metadata, headers={"Accept": DICOM_JSON})
        etag = first.headers["etag"]
        again = await http.get(metadata, headers={"Accept": DICOM_JSON, "If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        await client.delete_instance(STUDY, RED_SERIES, GREEN)
        changed = await http.get(metadata, headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        response = await http.get(metadata, headers={"Accept": "application/xml"})
        assert response.status_code == 406


# -- change feed ----------------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_change_feed_v2(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path]
) -> None:
    async with connect(emulator, front) as client:
        http = client.http_client
        assert (await http.get(f"{client.base_url}/changefeed/latest")).status_code == 204
        await client.store_instances(seed_files)
        await client.delete_instance(STUDY, RED_SERIES, RED)

        feed = (await http.get(f"{client.base_url}/changefeed")).json()
        assert [e["Sequence"] for e in feed] == [1, 2, 3, 4]
        assert [e["Action"] for e in feed] == ["create"] * 3 + ["delete"]
        states = {e["SopInstanceUid"]: e["State"] for e in feed[:3]}
        assert states == {RED: "deleted", GREEN: "current", BLUE: "current"}
        assert all(e["Timestamp"].endswith("Z") for e in feed)
        assert all(e["StudyInstanceUid"] == STUDY for e in feed)
        by_sop = {e["SopInstanceUid"]: e for e in feed[:3]}
        assert _value(by_sop[GREEN]["Metadata"], "00080018") == GREEN
        assert feed[3]["Metadata"] is None

        latest = (await http.get(f"{client.base_url}/changefeed/latest")).json()
        assert latest["Sequence"] == 4
        page = (
            await http.get(
                f"{client.base_url}/changefeed",
                params={"offset": 1, "limit": 2, "includeMetadata": "false"},
            )
        ).json()
        assert [e["Sequence"] for e in page] == [2, 3]
        assert all("Metadata" not in e for e in page)

        # startTime is inclusive, endTime exclusive.
        deleted_at = feed[3]["Timestamp"]
        window = await http.get(f"{client.base_url}/changefeed", params={"startTime": deleted_at})
        assert [e["Sequence"] for e in window.json()] == [4]
        window = await http.get(f"{client.base_url}/changefeed", params={"endTime": deleted_at})
        assert 4 not in [e["Sequence"] for e in window.json()]

        for params in ({"limit": 201}, {"limit": 0}, {"startTime": "yesterday"}):
            response = await http.get(f"{client.base_url}/changefeed", params=params)
            assert response.status_code == 400, params


async def test_change_feed_v1_with_skipped_sequence_numbers(seed_files: list[Path]) -> None:
    emulator = AzureDicomEmulator(sequence_step=5)
    async with connect(emulator, "in-process", api_version=1) as client:
        http = client.http_client
        await client.store_instances(seed_files)
        await client.delete_study(STUDY)
        emulator.skip_sequences(20)
        await client.store_instances(seed_files[:1])

        latest = (await http.get(f"{client.base_url}/changefeed/latest")).json()["Sequence"]
        assert latest == 51
        # v1 pages by sequence range: offset is the last sequence seen; gaps give short or
        # empty pages before the end, so a reader compares with /changefeed/latest.
        seen: list[int] = []
        offset, empty_pages = 0, 0
        while offset < latest:
            page = (
                await http.get(
                    f"{client.base_url}/changefeed", params={"offset": offset, "limit": 4}
                )
            ).json()
            empty_pages += not page
            seen += [e["Sequence"] for e in page]
            offset = page[-1]["Sequence"] if page else offset + 4
        assert seen == [1, 6, 11, 16, 21, 26, 51]
        assert empty_pages > 0
        default = (await http.get(f"{client.base_url}/changefeed")).json()
        assert [e["Sequence"] for e in default] == [1, 6]  # limit 10 by sequence range
        response = await http.get(f"{client.base_url}/changefeed", params={"limit": 101})
        assert response.status_code == 400


# -- extended query tags and operations -----------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_extended_query_tags(front: str, seed_files: list[Path]) -> None:
    emulator = AzureDicomEmulator(operation_delay=0.2)
    async with connect(emulator, front) as client:
        http = client.http_client
        base = client.base_url
        await client.store_instances(seed_files)
        tags = [
            {"Path": "InstanceNumber", "VR": "IS", "Level": "Instance"},
            {"Path": "00200011", "Level": "Series"},
        ]
        response = await http.post(f"{base}/extendedquerytags", json=tags)
        assert response.status_code == 202
        reference = response.json()
        assert set(reference) == {"id", "href"}
        assert reference["href"] == f"{base}/operations/{reference['id']}"

        tag = (await http.get(f"{base}/extendedquerytags/00200013")).json()
        assert (tag["Path"], tag["VR"], tag["Level"], tag["Status"]) == (
            "00200013",
            "IS",
            "Instance",
            "Adding",
        )
        with pytest.raises(HTTPStatusError) as caught:  # not ready yet
            await client.search_for_instances(search_filters={"InstanceNumber": "2"})
        assert caught.value.status_code == 400
        running = await http.get(reference["href"])
        assert running.status_code == 202
        assert running.json()["status"] == "Running"
        # One indexing operation at a time.
        response = await http.post(
            f"{base}/extendedquerytags", json=[{"Path": "PatientSex", "Level": "Study"}]
        )
        assert response.status_code == 409

        operation = await _wait_for_operation(http, reference["href"])
        assert operation["status"] == "Succeeded"
        assert operation["percentComplete"] == 100
        assert operation["type"] == "reindex"
        assert operation["resources"] == [
            f"{base}/extendedquerytags/00200013",
            f"{base}/extendedquerytags/00200011",
        ]
        listed = (await http.get(f"{base}/extendedquerytags")).json()
        assert [(t["Path"], t["Status"]) for t in listed] == [
            ("00200011", "Ready"),
            ("00200013", "Ready"),
        ]
        assert len((await http.get(f"{base}/extendedquerytags?limit=1&offset=1")).json()) == 1

        found = await client.search_for_instances(search_filters={"InstanceNumber": "2"})
        assert _uids(found, "00080018") == [GREEN]
        found = await client.search_for_series(search_filters={"SeriesNumber": 2})
        assert _uids(found, "0020000E") == [BLUE_SERIES]
        assert (await http.get(f"{base}/extendedquerytags/00200013/errors")).json() == []

        # Disabled tags cannot be queried; PATCH answers the tag.
        response = await http.patch(
            f"{base}/extendedquerytags/InstanceNumber", json={"QueryStatus": "Disabled"}
        )
        assert response.json()["QueryStatus"] == "Disabled"
        with pytest.raises(HTTPStatusError):
            await client.search_for_instances(search_filters={"InstanceNumber": "2"})

        # Refusals: duplicates, attributes searchable anyway, unknown VRs, too many tags.
        for body, status in (
            ([{"Path": "00200013", "Level": "Instance"}], 409),
            ([{"Path": "PatientName", "Level": "Study"}], 400),
            ([{"Path": "00200013", "VR": "LO", "Level": "Instance"}], 400),
            ([{"Path": "00091001", "Level": "Study"}], 400),
            ([], 400),
        ):
            response = await http.post(f"{base}/extendedquerytags", json=body)
            assert response.status_code == status, body
        too_many = [
            {"Path": f"0009{i:04X}", "VR": "LO", "Level": "Study", "PrivateCreator": "Test"}
            for i in range(0x1000, 0x1000 + 127)
        ]
        response = await http.post(f"{base}/extendedquerytags", json=too_many)
        assert response.status_code == 400

        assert (await http.delete(f"{base}/extendedquerytags/00200013")).status_code == 204
        assert (await http.get(f"{base}/extendedquerytags/00200013")).status_code == 404
        assert (await http.get(f"{base}/operations/{'0' * 32}")).status_code == 404


async def test_extended_query_tag_errors(by_name: dict[str, Path]) -> None:
    emulator = AzureDicomEmulator()

    def private(ds: pydicom.Dataset) -> None:
        block = ds.private_block(0x0009, "Emulator Test", create=True)
        block.add_new(0x01, "LO", "value")

    async with connect(emulator, "in-process") as client:
        http = client.http_client
        await client.store_instances([_variant(by_name["red-triangle"], private)])
        # The stored element is LO; declaring SH makes the instance an indexing error.
        body = [
            {"Path": "00091001", "VR": "SH", "Level": "Study", "PrivateCreator": "Emulator Test"}
        ]
        response = await http.post(f"{client.base_url}/extendedquerytags", json=body)
        assert response.status_code == 202
        tag = (await http.get(f"{client.base_url}/extendedquerytags/00091001")).json()
        assert tag["Status"] == "Ready"
        assert tag["PrivateCreator"] == "Emulator Test"
        assert tag["Errors"]["Count"] == 1
        errors = (await http.get(tag["Errors"]["Href"])).json()
        assert [e["StudyInstanceUid"] for e in errors] == [STUDY]
        assert "LO" in errors[0]["ErrorMessage"]


async def test_operations_say_completed_on_v1(seed_files: list[Path]) -> None:
    emulator = AzureDicomEmulator(operation_delay=60)
    async with connect(emulator, "in-process", api_version=1) as client:
        http = client.http_client
        response = await http.post(
            f"{client.base_url}/extendedquerytags",
            json=[{"Path": "PatientSex", "Level": "Study"}],
        )
        href = response.json()["href"]
        assert (await http.get(href)).status_code == 202
        emulator.complete_operations()
        done = await http.get(href)
        assert done.status_code == 200
        assert done.json()["status"] == "Completed"


# -- bulk update ----------------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_bulk_update_keeps_the_original(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path], by_name: dict[str, Path]
) -> None:
    async with connect(emulator, front) as client:
        http = client.http_client
        await client.store_instances(seed_files)
        change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}}
        response = await http.post(
            f"{client.base_url}/studies/$bulkUpdate",
            json={"studyInstanceUids": [STUDY], "changeDataset": change},
        )
        assert response.status_code == 202
        operation = await _wait_for_operation(http, response.json()["href"])
        assert operation["status"] == "Succeeded"
        assert operation["type"] == "update"
        assert operation["results"]["instanceUpdated"] == 3

        found = await client.search_for_studies(search_filters={"PatientName": "new*"})
        assert _uids(found, "0020000D") == [STUDY]
        assert await client.search_for_studies(search_filters={"PatientName": "Anony*"}) == []
        meta = await client.retrieve_instance_metadata(STUDY, RED_SERIES, RED)
        assert _value(meta, "00100010") == {"Alphabetic": "New^Name"}
        ds = await client.retrieve_instance(STUDY, RED_SERIES, RED)
        assert str(ds.PatientName) == "New^Name"
        assert ds.PixelData == pydicom.dcmread(by_name["red-triangle"]).PixelData

        # The version from before the update, on request.
        original = {"msdicom-request-original": "true"}
        url = f"{client.base_url}/studies/{STUDY}/series/{RED_SERIES}/instances/{RED}"
        response = await http.get(f"{url}/metadata", headers={**original, "Accept": DICOM_JSON})
        assert _value(response.json()[0], "00100010") == {"Alphabetic": "Anony Mous"}
        response = await http.get(
            url, headers={**original, "Accept": "application/dicom; transfer-syntax=*"}
        )
        assert response.content == by_name["red-triangle"].read_bytes()

        feed = (await http.get(f"{client.base_url}/changefeed")).json()
        assert [e["Action"] for e in feed] == ["create"] * 3 + ["update"] * 3
        assert [e["State"] for e in feed] == ["replaced"] * 3 + ["current"] * 3

        for body in (
            {"studyInstanceUids": [], "changeDataset": change},
            {"studyInstanceUids": [STUDY], "changeDataset": {"0020000D": change["00100010"]}},
        ):
            response = await http.post(f"{client.base_url}/studies/$bulkUpdate", json=body)
            assert response.status_code == 400


async def test_one_bulk_update_at_a_time(seed_files: list[Path]) -> None:
    emulator = AzureDicomEmulator(operation_delay=60)
    async with connect(emulator, "in-process") as client:
        await client.store_instances(seed_files)
        body = {
            "studyInstanceUids": [STUDY],
            "changeDataset": {"00081030": {"vr": "LO", "Value": ["Updated"]}},
        }
        url = f"{client.base_url}/studies/$bulkupdate"
        first = await client.http_client.post(url, json=body)
        assert first.status_code == 202
        assert (await client.http_client.post(url, json=body)).status_code == 409
        emulator.complete_operations()
        assert (await client.http_client.post(url, json=body)).status_code == 202
        found = await client.search_for_studies(search_filters={"StudyDescription": "updated"})
        assert len(found) == 1


# -- partitions, auth -----------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_partitions_are_isolated(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path]
) -> None:
    async with connect(emulator, front, partition="clinic-a") as client:
        result = await client.store_instances(seed_files)
        assert result.status_code == 200
        assert "/partitions/clinic-a/studies/" in (result.stored[0].retrieve_url or "")
        assert len(await client.search_for_studies()) == 1
    async with connect(emulator, front) as client:
        assert await client.search_for_studies() == []
        with pytest.raises(NotFoundError):
            await client.retrieve_study(STUDY)
        result = await client.store_instances(seed_files)  # no clash with clinic-a
        assert result.status_code == 200
        partitions = (await client.http_client.get(f"{client.base_url}/partitions")).json()
        assert [p["partitionName"] for p in partitions] == ["Microsoft.Default", "clinic-a"]
    assert emulator.partitions() == ["Microsoft.Default", "clinic-a"]
    assert emulator.instance_count("clinic-a") == 3

    plain = AzureDicomEmulator(data_partitions=False)
    async with connect(plain, front, partition="clinic-a") as client:
        with pytest.raises(HTTPStatusError) as caught:
            await client.search_for_studies()
        assert caught.value.status_code == 400


@pytest.mark.parametrize("front", FRONTS)
async def test_bearer_authentication(front: str) -> None:
    emulator = AzureDicomEmulator(require_auth=True)
    async with connect(emulator, front) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.search_for_studies()
        assert caught.value.headers["www-authenticate"].startswith("Bearer ")
    async with connect(emulator, front, auth="any-token") as client:
        assert await client.search_for_studies() == []

    checked = AzureDicomEmulator(token_validator=lambda token: token == "good")
    async with connect(checked, front, auth="bad") as client:
        with pytest.raises(AuthenticationError):
            await client.search_for_studies()
    async with connect(checked, front, auth="good") as client:
        assert await client.search_for_studies() == []

    open_door = AzureDicomEmulator()
    async with connect(open_door, front) as client:
        assert await client.search_for_studies() == []
    async with connect(open_door, front, auth=("user", "pass")) as client:
        with pytest.raises(AuthenticationError):  # Basic is not a bearer token
            await client.search_for_studies()


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_every_nth_request_fails_and_the_client_retries(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path]
) -> None:
    emulator.fail_every(2, retry_after=0)
    async with connect(emulator, front) as client:
        assert (await client.store_instances(seed_files)).status_code == 200
        for _ in range(3):
            assert len(await client.search_for_studies()) == 1
        assert len(await client.retrieve_study(STUDY)) == 3
    statuses = [r.status for r in emulator.requests]
    assert statuses.count(503) == emulator.request_count // 2
    assert all(isinstance(r, RecordedRequest) for r in emulator.requests)
    emulator.clear_faults()
    emulator.reset_counters()
    assert emulator.request_count == 0 and emulator.requests == []


@pytest.mark.parametrize("front", FRONTS)
async def test_a_response_dropped_mid_body_raises(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path]
) -> None:
    async with connect(emulator, front) as client:
        await client.store_instances(seed_files)
        emulator.drop_next_response_after(1_000_000)
        with pytest.raises(TransportError):
            await client.retrieve_study(STUDY)
        assert len(await client.retrieve_study(STUDY)) == 3  # only the next one is cut


async def test_latency_is_added(emulator: AzureDicomEmulator) -> None:
    emulator.latency = 0.1
    async with connect(emulator, "in-process") as client:
        started = time.perf_counter()
        await client.search_for_studies()
        assert time.perf_counter() - started >= 0.09


# -- the package itself ---------------------------------------------------------------------


def test_importing_the_testing_package_stays_light() -> None:
    code = (
        "import sys, dicomweb_async.testing\n"
        "heavy = [m for m in ('pydicom', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_server_object(emulator: AzureDicomEmulator) -> None:
    server = emulator.serve(api_version=1, partition="p1")
    assert isinstance(server, EmulatorServer)
    assert repr(server) == "<EmulatorServer stopped>"
    with server as url:
        assert url == f"http://127.0.0.1:{server.port}/v1/partitions/p1"
        response = httpx.get(f"{server.origin}/v1/studies", headers={"Accept": DICOM_JSON})
        assert response.status_code == 204
        assert response.headers["api-supported-versions"] == "1, 2"
        assert httpx.get(f"{server.origin}/studies").status_code == 404
        assert httpx.get(f"{server.origin}/v3/studies").status_code == 400
        assert httpx.patch(f"{server.origin}/v2/studies").status_code == 405
        assert httpx.put(f"{server.origin}/v1/studies").status_code == 405  # upsert is v2
    with pytest.raises(RuntimeError):
        _ = server.port
    with server:  # a stopped server starts again
        assert httpx.get(f"{server.origin}/v2/partitions").status_code == 200
    with pytest.raises(ValueError):
        emulator.serve(api_version=3)


def test_the_emulator_works_on_trio(seed_files: list[Path]) -> None:
    emulator = AzureDicomEmulator()

    async def main() -> None:
        trio.lowlevel.current_task()  # raises outside trio
        async with connect(emulator, "in-process") as client:
            assert (await client.store_instances(seed_files)).status_code == 200
            assert len(await client.retrieve_study(STUDY)) == 3
        async with connect(emulator, "loopback") as client:
            assert len(await client.search_for_instances(STUDY)) == 3

    trio.run(main)


@pytest.mark.parametrize("front", FRONTS)
async def test_thumbnails_at_every_level(
    emulator: AzureDicomEmulator, front: str, seed_files: list[Path]
) -> None:
    import io

    from PIL import Image

    async with connect(emulator, front) as client:
        assert (await client.store_instances(seed_files)).ok
        images = [
            await client.retrieve_study_thumbnail(STUDY),
            await client.retrieve_series_thumbnail(STUDY, RED_SERIES),
            await client.retrieve_instance_thumbnail(STUDY, RED_SERIES, RED),
            await client.retrieve_instance_frames_thumbnail(STUDY, RED_SERIES, RED, [1]),
        ]
        small = await client.retrieve_instance_thumbnail(
            STUDY, RED_SERIES, RED, media_types=["image/png"], params={"viewport": (32, 32)}
        )
        rendered = await client.retrieve_instance_rendered(
            STUDY, RED_SERIES, RED, params={"viewport": (200, 100)}
        )
        with pytest.raises(NotFoundError):
            await client.retrieve_instance_frames_thumbnail(STUDY, RED_SERIES, RED, [2])
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and max(image.size) == 128  # 985 x 979, scaled down
    with Image.open(io.BytesIO(small)) as image:
        assert image.format == "PNG" and max(image.size) == 32
    with Image.open(io.BytesIO(rendered)) as image:
        assert image.size[1] == 100 and image.size[0] <= 200  # fits the viewport, same aspect
