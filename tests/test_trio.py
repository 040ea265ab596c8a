"""The client on trio: it is built on anyio, so it must not need asyncio underneath.

Each test is synchronous and runs its body with ``trio.run``, so pytest-asyncio plays no
part. Every body first checks that trio really is the running event loop.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pydicom
import pytest
import trio

from dicomweb_async import AsyncDICOMwebClient, AuthenticationError, DownloadedInstance
from dicomweb_async.testing import OrthancServer

STUDY_UID = "0020000D"
SOP_UID = "00080018"


def _assert_on_trio() -> None:
    trio.lowlevel.current_task()  # raises RuntimeError outside trio
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def study(seed_dir: Path) -> str:
    """The seed's one StudyInstanceUID, from ``dicom-metadata.csv``."""
    with open(seed_dir / "dicom-metadata.csv", newline="", encoding="utf-8") as f:
        (uid,) = {row["StudyInstanceUID"] for row in csv.DictReader(f)}
    return uid


def test_store_retrieve_and_search_on_trio(
    clean_orthanc: OrthancServer, seed_files: list[Path], study: str
) -> None:
    sops = sorted(_sop(p) for p in seed_files)

    async def main() -> None:
        _assert_on_trio()
        async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
            result = await client.store_instances(seed_files)
            assert result.status_code == 200
            assert sorted(o.sop_instance_uid or "" for o in result.stored) == sops
            assert result.failed == []

            datasets = await client.retrieve_study(study)
            assert sorted(ds.SOPInstanceUID for ds in datasets) == sops

            studies = await client.search_for_studies(search_filters={"PatientName": "Anony*"})
            assert [s[STUDY_UID]["Value"][0] for s in studies] == [study]
            found = [
                i[SOP_UID]["Value"][0] async for i in client.iter_search_for_instances(limit=1)
            ]
            assert sorted(found) == sops

    trio.run(main)


def test_concurrent_stores_and_download_on_trio(
    clean_orthanc: OrthancServer, seed_files: list[Path], study: str, tmp_path: Path
) -> None:
    expected_sizes = sorted(p.stat().st_size for p in seed_files)

    async def main() -> list[DownloadedInstance]:
        _assert_on_trio()
        async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
            statuses: list[int] = []

            async def store(path: Path) -> None:
                statuses.append((await client.store_instances([path])).status_code)

            async with trio.open_nursery() as nursery:
                for path in seed_files:
                    nursery.start_soon(store, path)
            assert statuses == [200, 200, 200]

            async with client.stream_study(study) as parts:
                sizes = sorted([len(await part.read()) async for part in parts])
            assert sizes == expected_sizes

            return await client.download_study(study, tmp_path)

    saved = trio.run(main)
    assert len(saved) == 3
    for download in saved:
        (source,) = [p for p in seed_files if _sop(p) == download.sop_instance_uid]
        assert download.path.read_bytes() == source.read_bytes()
    assert list(tmp_path.rglob("*.partial")) == []


def test_errors_on_trio(orthanc_basic: OrthancServer) -> None:
    async def main() -> None:
        _assert_on_trio()
        async with AsyncDICOMwebClient(orthanc_basic.dicomweb_url) as client:
            with pytest.raises(AuthenticationError):
                await client.search_for_studies()

    trio.run(main)
