"""Upsert (``PUT /studies``, the Azure DICOM service API v2): on the emulator, which
replaces what it has and records an update in its change feed, and on Orthanc, which has
no such API and answers 405.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomweb_async import AsyncDICOMwebClient, AzureDICOMwebClient, MethodNotAllowedError
from dicomweb_async._core.multipart_writer import dataset_bytes
from dicomweb_async.testing import AzureDicomEmulator, OrthancServer


def _renamed(path: Path, name: str) -> bytes:
    """The file with a new PatientName, the same UIDs."""
    ds = pydicom.dcmread(path)
    ds.PatientName = name
    return dataset_bytes(ds)


async def test_upsert_replaces_an_instance_and_the_change_feed_says_so(
    seed_files: list[Path], tmp_path: Path
) -> None:
    emulator = AzureDicomEmulator()
    first = seed_files[0]
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    changed = _renamed(first, "Upserted^Again")
    async with emulator.serve(api_version=2) as url, AzureDICOMwebClient(url) as client:
        assert (await client.store_instances([first])).ok
        refused = await client.store_instances([changed])
        assert [o.reason for o in refused.failed] == [45070]
        replaced = await client.store_instances([changed], upsert=True)
        assert replaced.ok and len(replaced.stored) == 1
        again = await client.retrieve_instance(study, series, sop)
        assert str(again.PatientName) == "Upserted^Again"
        # store_folder takes upsert too: the seeds, one of them already there.
        folder = await client.store_folder(seed_files, upsert=True)
        assert folder.ok and len(folder.stored) == len(seed_files)
        entries = [e async for e in client.iter_changefeed()]
    actions = [(e.sop_instance_uid, e.action) for e in entries if e.sop_instance_uid == sop]
    assert actions == [(sop, "create"), (sop, "update"), (sop, "update")]
    assert emulator.errors == []


async def test_upsert_against_a_server_without_it_is_a_clear_error(
    clean_orthanc: OrthancServer, seed_files: list[Path]
) -> None:
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        with pytest.raises(MethodNotAllowedError) as raised:
            await client.store_instances(seed_files[:1], upsert=True)
        report = await client.store_folder(seed_files, upsert=True)
    assert raised.value.status_code == 405
    assert "upsert is an API of the Azure DICOM service" in str(raised.value)
    assert not report.ok and len(report.failed) == len(seed_files)
    assert all("upsert" in (o.message or "") for o in report.failed)
