"""The Azure DICOM tutorial's steps, run against a real Orthanc with its DICOMweb plugin.

Every test starts from an empty server and works with the three seed instances of
``tests/data``: one study, a series with green-square and red-triangle, and a series with
blue-circle alone. Expected UIDs and attributes come from ``dicom-metadata.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomweb_async import (
    AsyncDICOMwebClient,
    AuthenticationError,
    DownloadedInstance,
    FailureReason,
    HTTPStatusError,
    MethodNotAllowedError,
    NotFoundError,
    RetryPolicy,
    StoreFailedError,
    StoreResult,
)
from dicomweb_async.testing import OrthancServer

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_MAGIC = b"\xff\xd8\xff"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1"

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
PATIENT_NAME = "00100010"
IMAGE_COMMENTS = "00204000"
ROWS = "00280010"
PIXEL_DATA = "7FE00010"


# -- the seed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedInstance:
    """One seed file and what ``dicom-metadata.csv`` says about it."""

    name: str
    path: Path
    study: str
    series: str
    sop: str
    patient_name: str
    image_comments: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def frame_size(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8


@dataclass(frozen=True)
class Seed:
    instances: tuple[SeedInstance, ...]

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def study(self) -> str:
        (study,) = {i.study for i in self.instances}
        return study

    @property
    def sops(self) -> set[str]:
        return {i.sop for i in self.instances}

    def series(self) -> dict[str, set[str]]:
        """Series UID to the SOP Instance UIDs in it."""
        found: dict[str, set[str]] = {}
        for i in self.instances:
            found.setdefault(i.series, set()).add(i.sop)
        return found

    def by_name(self, name: str) -> SeedInstance:
        (found,) = [i for i in self.instances if i.name == name]
        return found

    def shared_series(self) -> str:
        """The series that holds two instances."""
        (uid,) = [uid for uid, sops in self.series().items() if len(sops) == 2]
        return uid

    def single_series(self) -> str:
        """The series that holds one instance."""
        (uid,) = [uid for uid, sops in self.series().items() if len(sops) == 1]
        return uid


@pytest.fixture(scope="module")
def seed(seed_dir: Path) -> Seed:
    instances = []
    with open(seed_dir / "dicom-metadata.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # fname holds the path on the machine that made the files.
            filename = PureWindowsPath(row["fname"]).name
            instances.append(
                SeedInstance(
                    name=filename.removesuffix(".dcm"),
                    path=seed_dir / filename,
                    study=row["StudyInstanceUID"],
                    series=row["SeriesInstanceUID"],
                    sop=row["SOPInstanceUID"],
                    patient_name=row["PatientName"],
                    image_comments=row["ImageComments"],
                    rows=int(row["Rows"]),
                    columns=int(row["Columns"]),
                    samples_per_pixel=int(row["SamplesPerPixel"]),
                    bits_allocated=int(row["BitsAllocated"]),
                )
            )
    seed = Seed(tuple(sorted(instances, key=lambda i: i.name)))
    assert [i.name for i in seed.instances] == ["blue-circle", "green-square", "red-triangle"]
    assert all(i.path.is_file() for i in seed.instances)
    # The layout the tests rely on: one study, series of two and of one instance.
    assert sorted(len(sops) for sops in seed.series().values()) == [1, 2]
    return seed


@pytest.fixture
async def loaded(clean_orthanc: OrthancServer, seed: Seed) -> OrthancServer:
    """The empty server with the three seed instances stored."""
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        result = await client.store_instances(seed.paths)
    assert result.status_code == 200, result
    assert {o.sop_instance_uid for o in result.stored} == seed.sops
    return clean_orthanc


@pytest.fixture
async def client(loaded: OrthancServer) -> AsyncIterator[AsyncDICOMwebClient]:
    """A client of the server holding the seed."""
    async with AsyncDICOMwebClient(loaded.dicomweb_url) as client:
        yield client


# -- helpers --------------------------------------------------------------------------------


def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON dataset."""
    return item[tag]["Value"][0]


def values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return [value(i, tag) for i in items]


def person_name(item: dict[str, Any], tag: str = PATIENT_NAME) -> str:
    name: str = value(item, tag)["Alphabetic"]
    return name


async def stored_sops(client: AsyncDICOMwebClient) -> list[str]:
    return sorted(values(await client.search_for_instances(), SOP_UID))


def other_study_instance(seed: Seed) -> Dataset:
    """A copy of a seed instance moved into a study of its own."""
    ds = pydicom.dcmread(seed.instances[0].path)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["dicomweb-async other study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["dicomweb-async other series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["dicomweb-async other instance"])
    return ds


def assert_all_stored(result: StoreResult, sops: set[str]) -> None:
    assert result.status_code == 200
    assert result.ok
    assert result.failed == []
    assert result.warnings == []
    assert {o.sop_instance_uid for o in result.stored} == sops
    assert all(o.retrieve_url for o in result.stored)
    assert result.raise_for_failures() is result


# -- STOW-RS --------------------------------------------------------------------------------


async def test_store_one_file_per_request(clean_orthanc: OrthancServer, seed: Seed) -> None:
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        for instance in seed.instances:
            result = await client.store_instances([instance.path])
            assert_all_stored(result, {instance.sop})
            assert result.stored[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
            assert result.stored[0].retrieve_url is not None
            assert result.stored[0].retrieve_url.endswith(
                f"/studies/{instance.study}/series/{instance.series}/instances/{instance.sop}"
            )
        assert await stored_sops(client) == sorted(seed.sops)


async def test_store_several_files_in_one_request(
    clean_orthanc: OrthancServer, seed: Seed
) -> None:
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        result = await client.store_instances(seed.paths)
        assert_all_stored(result, seed.sops)
        assert result.retrieve_url is not None
        assert result.retrieve_url.endswith(f"/studies/{seed.study}")
        assert await stored_sops(client) == sorted(seed.sops)


async def test_store_into_study_route(clean_orthanc: OrthancServer, seed: Seed) -> None:
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        result = await client.store_instances(seed.paths, study_instance_uid=seed.study)
        assert_all_stored(result, seed.sops)
        assert await stored_sops(client) == sorted(seed.sops)


async def test_store_into_another_study_route_fails_that_instance(
    clean_orthanc: OrthancServer, seed: Seed
) -> None:
    instance = seed.instances[0]
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        result = await client.store_instances([instance.path], study_instance_uid=OTHER_STUDY)
        # Orthanc answers 409 with the instance in FailedSOPSequence, reason 272 (0x0110).
        assert result.status_code == 409
        assert not result.ok
        assert result.stored == []
        assert len(result.failed) == 1
        failed = result.failed[0]
        assert failed.sop_instance_uid == instance.sop
        assert failed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
        assert failed.reason == FailureReason.PROCESSING_FAILURE == 272
        with pytest.raises(StoreFailedError, match="FailureReason 272") as caught:
            result.raise_for_failures()
        assert caught.value.result is result
        assert await client.search_for_instances() == []


async def test_store_mixed_studies_into_study_route(
    clean_orthanc: OrthancServer, seed: Seed
) -> None:
    stranger = other_study_instance(seed)
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        result = await client.store_instances(
            [*seed.paths, stranger], study_instance_uid=seed.study
        )
        # The seed's instances are stored, the stranger is refused; Orthanc says 409.
        assert result.status_code == 409
        assert {o.sop_instance_uid for o in result.stored} == seed.sops
        assert [(f.sop_instance_uid, f.reason) for f in result.failed] == [
            (stranger.SOPInstanceUID, 272)
        ]
        with pytest.raises(StoreFailedError, match="1 instance"):
            result.raise_for_failures()
        assert await stored_sops(client) == sorted(seed.sops)


async def test_store_dataset_of_another_study(clean_orthanc: OrthancServer, seed: Seed) -> None:
    stranger = other_study_instance(seed)
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        result = await client.store_instances([stranger])
        assert_all_stored(result, {stranger.SOPInstanceUID})
        studies = await client.search_for_studies()
        assert values(studies, STUDY_UID) == [stranger.StudyInstanceUID]


async def test_store_same_instance_twice(clean_orthanc: OrthancServer, seed: Seed) -> None:
    instance = seed.instances[1]
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        first = await client.store_instances([instance.path])
        second = await client.store_instances([instance.path])
        # Orthanc accepts a duplicate silently: 200, neither failure nor warning.
        assert_all_stored(first, {instance.sop})
        assert_all_stored(second, {instance.sop})
        assert await stored_sops(client) == [instance.sop]


# -- WADO-RS: instances ---------------------------------------------------------------------


async def test_retrieve_study(client: AsyncDICOMwebClient, seed: Seed) -> None:
    datasets = await client.retrieve_study(seed.study)
    assert len(datasets) == 3
    assert {ds.SOPInstanceUID for ds in datasets} == seed.sops
    assert {ds.StudyInstanceUID for ds in datasets} == {seed.study}


async def test_retrieve_series(client: AsyncDICOMwebClient, seed: Seed) -> None:
    shared = await client.retrieve_series(seed.study, seed.shared_series())
    assert len(shared) == 2
    assert {ds.SOPInstanceUID for ds in shared} == seed.series()[seed.shared_series()]
    assert {ds.SeriesInstanceUID for ds in shared} == {seed.shared_series()}
    single = await client.retrieve_series(seed.study, seed.single_series())
    assert [ds.SOPInstanceUID for ds in single] == [seed.by_name("blue-circle").sop]


@pytest.mark.parametrize("name", ["blue-circle", "green-square", "red-triangle"])
async def test_retrieve_instance(client: AsyncDICOMwebClient, seed: Seed, name: str) -> None:
    instance = seed.by_name(name)
    ds = await client.retrieve_instance(instance.study, instance.series, instance.sop)
    assert ds.SOPInstanceUID == instance.sop
    assert ds.SeriesInstanceUID == instance.series
    assert ds.ImageComments == instance.image_comments
    assert ds.PixelData == pydicom.dcmread(instance.path).PixelData


async def test_iter_study(client: AsyncDICOMwebClient, seed: Seed) -> None:
    seen = [ds.SOPInstanceUID async for ds in client.iter_study(seed.study)]
    assert len(seen) == 3
    assert set(seen) == seed.sops
    async with client.iter_study(seed.study) as datasets:
        assert len([ds async for ds in datasets]) == 3


async def test_iter_study_left_early_releases_the_connection(
    loaded: OrthancServer, seed: Seed
) -> None:
    # With a single connection, a stream that kept it would make the next request wait.
    async with AsyncDICOMwebClient(loaded.dicomweb_url, max_connections=1, timeout=10) as client:
        async with client.iter_study(seed.study) as datasets:
            async for ds in datasets:
                assert ds.SOPInstanceUID in seed.sops
                break
        assert len(await client.retrieve_study(seed.study)) == 3


# -- WADO-RS: frames ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["blue-circle", "green-square"])
async def test_retrieve_frame(client: AsyncDICOMwebClient, seed: Seed, name: str) -> None:
    instance = seed.by_name(name)
    frames = await client.retrieve_instance_frames(
        instance.study, instance.series, instance.sop, [1]
    )
    assert len(frames) == 1
    frame = frames[0]
    assert len(frame) == instance.frame_size == 979 * 985 * 3
    assert frame.media_type == "application/octet-stream"
    assert frame.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert frame.content_location is not None
    assert frame.content_location.endswith(f"/instances/{instance.sop}/frames/1")
    pixel_data = pydicom.dcmread(instance.path).PixelData
    assert bytes(frame) == pixel_data[: instance.frame_size]


async def test_iter_instance_frames(client: AsyncDICOMwebClient, seed: Seed) -> None:
    instance = seed.by_name("red-triangle")
    async with client.iter_instance_frames(
        instance.study, instance.series, instance.sop, [1]
    ) as frames:
        got = [frame async for frame in frames]
    assert len(got) == 1
    assert len(got[0]) == instance.frame_size
    assert got[0].transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN


# -- WADO-RS: metadata ----------------------------------------------------------------------


async def test_study_metadata(client: AsyncDICOMwebClient, seed: Seed) -> None:
    metadata = await client.retrieve_study_metadata(seed.study)
    assert len(metadata) == 3
    assert set(values(metadata, SOP_UID)) == seed.sops
    assert set(values(metadata, STUDY_UID)) == {seed.study}


async def test_series_metadata(client: AsyncDICOMwebClient, seed: Seed) -> None:
    series = seed.shared_series()
    metadata = await client.retrieve_series_metadata(seed.study, series)
    assert len(metadata) == 2
    assert set(values(metadata, SOP_UID)) == seed.series()[series]
    assert set(values(metadata, SERIES_UID)) == {series}


async def test_instance_metadata(client: AsyncDICOMwebClient, seed: Seed) -> None:
    instance = seed.by_name("blue-circle")
    metadata = await client.retrieve_instance_metadata(
        instance.study, instance.series, instance.sop
    )
    assert value(metadata, SOP_UID) == instance.sop
    assert value(metadata, SERIES_UID) == instance.series
    assert value(metadata, STUDY_UID) == instance.study
    assert value(metadata, ROWS) == instance.rows
    assert value(metadata, IMAGE_COMMENTS) == instance.image_comments
    assert person_name(metadata) == instance.patient_name
    # Uncompressed pixel data is referenced, not inlined.
    assert "BulkDataURI" in metadata[PIXEL_DATA]


# -- WADO-RS: rendered ----------------------------------------------------------------------


async def test_rendered_instance(client: AsyncDICOMwebClient, seed: Seed) -> None:
    instance = seed.by_name("green-square")
    uids = (instance.study, instance.series, instance.sop)
    default = await client.retrieve_instance_rendered(*uids)
    assert default.startswith(JPEG_MAGIC)
    assert default.endswith(b"\xff\xd9")
    low = await client.retrieve_instance_rendered(*uids, params={"quality": 50})
    assert low.startswith(JPEG_MAGIC)
    # The parameter reached the server: a different encoding of the same image.
    assert low != default


# -- QIDO-RS --------------------------------------------------------------------------------


async def test_search_for_studies(client: AsyncDICOMwebClient, seed: Seed) -> None:
    studies = await client.search_for_studies()
    assert values(studies, STUDY_UID) == [seed.study]
    found = await client.search_for_studies(search_filters={"StudyInstanceUID": seed.study})
    assert values(found, STUDY_UID) == [seed.study]
    assert await client.search_for_studies(search_filters={"StudyInstanceUID": OTHER_STUDY}) == []


async def test_search_for_series(client: AsyncDICOMwebClient, seed: Seed) -> None:
    everything = await client.search_for_series()
    assert sorted(values(everything, SERIES_UID)) == sorted(seed.series())
    one = await client.search_for_series(
        search_filters={"SeriesInstanceUID": seed.single_series()}
    )
    assert values(one, SERIES_UID) == [seed.single_series()]
    assert values(one, STUDY_UID) == [seed.study]


async def test_search_for_series_in_study(client: AsyncDICOMwebClient, seed: Seed) -> None:
    in_study = await client.search_for_series(seed.study)
    assert sorted(values(in_study, SERIES_UID)) == sorted(seed.series())
    one = await client.search_for_series(
        seed.study, search_filters={"SeriesInstanceUID": seed.shared_series()}
    )
    assert values(one, SERIES_UID) == [seed.shared_series()]
    assert await client.search_for_series(OTHER_STUDY) == []


async def test_search_for_instances(client: AsyncDICOMwebClient, seed: Seed) -> None:
    everything = await client.search_for_instances()
    assert sorted(values(everything, SOP_UID)) == sorted(seed.sops)
    instance = seed.by_name("red-triangle")
    one = await client.search_for_instances(search_filters={"SOPInstanceUID": instance.sop})
    assert values(one, SOP_UID) == [instance.sop]
    assert values(one, SERIES_UID) == [instance.series]


async def test_search_for_instances_in_study(client: AsyncDICOMwebClient, seed: Seed) -> None:
    in_study = await client.search_for_instances(seed.study)
    assert sorted(values(in_study, SOP_UID)) == sorted(seed.sops)
    instance = seed.by_name("blue-circle")
    one = await client.search_for_instances(
        seed.study, search_filters={"SOPInstanceUID": instance.sop}
    )
    assert values(one, SOP_UID) == [instance.sop]


async def test_search_for_instances_in_series(client: AsyncDICOMwebClient, seed: Seed) -> None:
    for series, sops in seed.series().items():
        found = await client.search_for_instances(seed.study, series)
        assert sorted(values(found, SOP_UID)) == sorted(sops)
        assert set(values(found, SERIES_UID)) == {series}
    assert await client.search_for_instances(seed.study, OTHER_STUDY) == []


@pytest.mark.parametrize("pattern", ["Anony*", "anony*", "Anony?Mous", "*Mous"])
async def test_search_patient_name_wildcards(
    client: AsyncDICOMwebClient, seed: Seed, pattern: str
) -> None:
    studies = await client.search_for_studies(search_filters={"PatientName": pattern})
    assert values(studies, STUDY_UID) == [seed.study]
    assert [person_name(s) for s in studies] == ["Anony Mous"]
    instances = await client.search_for_instances(search_filters={"PatientName": pattern})
    assert sorted(values(instances, SOP_UID)) == sorted(seed.sops)


async def test_search_patient_name_without_match(client: AsyncDICOMwebClient) -> None:
    assert await client.search_for_studies(search_filters={"PatientName": "Nobody*"}) == []
    assert await client.search_for_studies(search_filters={"PatientName": "Anony"}) == []


async def test_search_with_fields(client: AsyncDICOMwebClient, seed: Seed) -> None:
    studies = await client.search_for_studies(fields=["PatientName"])
    assert [person_name(s) for s in studies] == [seed.instances[0].patient_name]
    # ImageComments is not among Orthanc's default attributes: only includefield brings it.
    plain = await client.search_for_instances()
    assert all(IMAGE_COMMENTS not in item for item in plain)
    instances = await client.search_for_instances(fields=["ImageComments"])
    comments = {value(i, SOP_UID): value(i, IMAGE_COMMENTS) for i in instances}
    assert comments == {i.sop: i.image_comments for i in seed.instances}


async def test_search_limit_and_offset(client: AsyncDICOMwebClient, seed: Seed) -> None:
    first = await client.search_for_instances(limit=2)
    rest = await client.search_for_instances(limit=2, offset=2)
    assert len(first) == 2
    assert len(rest) == 1
    assert sorted(values(first + rest, SOP_UID)) == sorted(seed.sops)
    assert await client.search_for_instances(limit=2, offset=3) == []
    series = await client.search_for_series(limit=1, offset=1)
    assert len(series) == 1


async def test_search_get_remaining(client: AsyncDICOMwebClient, seed: Seed) -> None:
    one_page = await client.search_for_instances(limit=1)
    assert len(one_page) == 1
    everything = await client.search_for_instances(limit=1, get_remaining=True)
    assert sorted(values(everything, SOP_UID)) == sorted(seed.sops)
    series = await client.search_for_series(seed.study, limit=1, get_remaining=True)
    assert sorted(values(series, SERIES_UID)) == sorted(seed.series())


async def test_iter_search_for_instances(client: AsyncDICOMwebClient, seed: Seed) -> None:
    paged = [value(i, SOP_UID) async for i in client.iter_search_for_instances(limit=1)]
    assert sorted(paged) == sorted(seed.sops)
    async with client.iter_search_for_instances(
        seed.study, seed.shared_series(), limit=1
    ) as results:
        in_series = [value(i, SOP_UID) async for i in results]
    assert sorted(in_series) == sorted(seed.series()[seed.shared_series()])
    unpaged = [value(i, SOP_UID) async for i in client.iter_search_for_instances()]
    assert sorted(unpaged) == sorted(seed.sops)


# -- round trips ----------------------------------------------------------------------------


def assert_downloaded(
    saved: list[DownloadedInstance], directory: Path, expected: list[SeedInstance]
) -> None:
    assert sorted(d.sop_instance_uid for d in saved) == sorted(i.sop for i in expected)
    for instance in expected:
        (download,) = [d for d in saved if d.sop_instance_uid == instance.sop]
        path = directory / instance.study / instance.series / f"{instance.sop}.dcm"
        assert download.path == path
        assert download.study_instance_uid == instance.study
        assert download.series_instance_uid == instance.series
        assert download.size == instance.path.stat().st_size
        assert path.read_bytes() == instance.data
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    assert files == sorted(d.path for d in saved)
    assert list(directory.rglob("*.partial")) == []


async def test_download_study_round_trip(
    client: AsyncDICOMwebClient, seed: Seed, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    saved = await client.download_study(seed.study, target)
    assert_downloaded(saved, target, list(seed.instances))


async def test_download_series_round_trip(
    client: AsyncDICOMwebClient, seed: Seed, tmp_path: Path
) -> None:
    series = seed.shared_series()
    saved = await client.download_series(seed.study, series, tmp_path)
    expected = [i for i in seed.instances if i.series == series]
    assert len(expected) == 2
    assert_downloaded(saved, tmp_path, expected)


async def test_stream_study_round_trip(client: AsyncDICOMwebClient, seed: Seed) -> None:
    bodies = []
    async with client.stream_study(seed.study) as parts:
        async for part in parts:
            assert part.media_type == "application/dicom"
            b = await part.read()
            assert part.size == len(b)
            bodies.append(b)
    assert len(bodies) == 3
    assert sorted(bodies) == sorted(i.data for i in seed.instances)


# -- errors ---------------------------------------------------------------------------------


async def test_single_part_instance_is_refused_by_orthanc(
    client: AsyncDICOMwebClient, seed: Seed
) -> None:
    instance = seed.by_name("green-square")
    with pytest.raises(HTTPStatusError) as caught:
        await client.retrieve_instance(
            instance.study, instance.series, instance.sop, multipart=False
        )
    error = caught.value
    assert type(error) is HTTPStatusError
    assert error.status_code == 400
    assert error.method == "GET"
    assert error.url is not None
    assert error.url.endswith(f"/instances/{instance.sop}")
    # Orthanc's own explanation travels with the error.
    assert "cannot generate the following content type: application/dicom" in str(error)


@pytest.mark.parametrize("level", ["study", "series", "instance"])
async def test_delete_is_not_allowed(client: AsyncDICOMwebClient, seed: Seed, level: str) -> None:
    instance = seed.by_name("red-triangle")
    with pytest.raises(MethodNotAllowedError) as caught:
        if level == "study":
            await client.delete_study(instance.study)
        elif level == "series":
            await client.delete_series(instance.study, instance.series)
        else:
            await client.delete_instance(instance.study, instance.series, instance.sop)
    error = caught.value
    assert error.status_code == 405
    assert error.method == "DELETE"
    allow = error.headers["allow"]
    assert allow.startswith("GET")
    message = str(error)
    assert "DELETE" in message
    assert "does not support DELETE" in message
    assert f"Allow: {allow}" in message
    assert await stored_sops(client) == sorted(seed.sops)


async def test_unknown_resources_are_not_found(client: AsyncDICOMwebClient, seed: Seed) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.retrieve_study(OTHER_STUDY)
    assert caught.value.status_code == 404
    assert OTHER_STUDY in str(caught.value)
    with pytest.raises(NotFoundError):
        await client.retrieve_study_metadata(OTHER_STUDY)
    with pytest.raises(NotFoundError):
        await client.retrieve_series(seed.study, OTHER_STUDY)
    with pytest.raises(NotFoundError):
        await client.retrieve_instance(seed.study, seed.single_series(), OTHER_STUDY)
    # A search is not a lookup: no match is an empty answer.
    assert await client.search_for_series(OTHER_STUDY) == []


# -- authentication and connections -----------------------------------------------------------


async def test_basic_auth(orthanc_basic: OrthancServer, seed: Seed) -> None:
    orthanc_basic.reset()
    url = orthanc_basic.dicomweb_url
    async with AsyncDICOMwebClient(url) as anonymous:
        with pytest.raises(AuthenticationError) as caught:
            await anonymous.search_for_studies()
        assert caught.value.status_code == 401
        with pytest.raises(AuthenticationError):
            await anonymous.store_instances(seed.paths)
    async with AsyncDICOMwebClient(url, auth=("user", "wrong")) as wrong:
        with pytest.raises(AuthenticationError):
            await wrong.store_instances(seed.paths)
    async with AsyncDICOMwebClient(url, auth=("user", "pass")) as client:
        assert await client.search_for_studies() == []
        assert_all_stored(await client.store_instances(seed.paths), seed.sops)
        assert len(await client.retrieve_study(seed.study)) == 3
        studies = await client.search_for_studies(search_filters={"PatientName": "Anony*"})
        assert values(studies, STUDY_UID) == [seed.study]
    async with AsyncDICOMwebClient(url) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.retrieve_study(seed.study)


@pytest.mark.parametrize("retry", [None, RetryPolicy(attempts=1)], ids=["default", "no-retry"])
async def test_reconnects_after_server_closes_idle_connection(
    clean_orthanc: OrthancServer, seed: Seed, retry: RetryPolicy | None
) -> None:
    # Orthanc closes keep-alive connections idle for more than a second. Without retries,
    # the requests after each pause pass only if the closed connection is not reused.
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url, retry=retry) as client:
        assert_all_stored(await client.store_instances(seed.paths[:1]), {seed.instances[0].sop})
        await anyio.sleep(1.5)
        assert_all_stored(await client.store_instances(seed.paths), seed.sops)
        await anyio.sleep(1.5)
        assert await stored_sops(client) == sorted(seed.sops)
        await anyio.sleep(1.5)
        assert len(await client.retrieve_study(seed.study)) == 3
