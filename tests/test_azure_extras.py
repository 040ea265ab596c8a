"""Azure extras on the emulator and on the wire: external metadata headers on STOW and
metadata, and the URLs a service behind a proxy returns (X-Forwarded-Host/-Prefix)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomweb_async import AzureDICOMwebClient
from dicomweb_async.testing import AzureDicomEmulator

EXTERNAL = {"00191100": ("PN", "Doe^Jane"), "001912FF": ("CS", "TRIAGED")}


async def test_external_metadata_is_stored_and_returned_on_request(
    seed_files: list[Path],
) -> None:
    emulator = AzureDicomEmulator()
    study = str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).StudyInstanceUID)
    async with emulator.serve(api_version=2) as url, AzureDICOMwebClient(url) as client:
        stored = await client.store_instances(seed_files, external_metadata=EXTERNAL)
        assert stored.ok
        (post,) = [r for r in emulator.requests if r.method == "POST"]
        plain = await client.retrieve_study_metadata(study)
        with_external = await client.retrieve_study_metadata(study, external_metadata=True)
        one = await client.retrieve_instance_metadata(
            study,
            str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).SeriesInstanceUID),
            str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).SOPInstanceUID),
            external_metadata=True,
        )
    assert post.status == 200
    assert all("00191100" not in item for item in plain)
    assert len(with_external) == len(seed_files)
    for item in [*with_external, one]:
        assert item["00191100"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
        assert item["001912FF"] == {"vr": "CS", "Value": ["TRIAGED"]}
    assert emulator.errors == []


@pytest.mark.parametrize(
    ("external", "message"),
    [
        ({"00100010": ("PN", "Doe")}, "private tags only"),
        ({"0019100": ("LO", "x")}, "not 8 hex digits"),
        ({"00191000": ("SQ", "x")}, "VR 'SQ' is not taken"),
        ({"00191000": ("LO", "two\nlines")}, "one non-empty line"),
    ],
)
async def test_external_metadata_is_checked_before_sending(
    seed_files: list[Path], external: dict[str, tuple[str, str]], message: str
) -> None:
    emulator = AzureDicomEmulator()
    async with emulator.serve(api_version=2) as url, AzureDICOMwebClient(url) as client:
        with pytest.raises(ValueError, match=message):
            await client.store_instances(seed_files[:1], external_metadata=external)
    assert emulator.requests == []


async def test_urls_returned_behind_a_proxy_name_the_proxy(seed_files: list[Path]) -> None:
    emulator = AzureDicomEmulator()
    proxy = {"X-Forwarded-Host": "dicom.hospital.example", "X-Forwarded-Prefix": "/pacs"}
    async with (
        emulator.serve(api_version=2) as url,
        AzureDICOMwebClient(url, headers={**proxy, "X-Forwarded-Proto": "https"}) as client,
    ):
        result = await client.store_instances(seed_files[:1])
    (stored,) = result.stored
    assert stored.retrieve_url is not None
    assert stored.retrieve_url.startswith("https://dicom.hospital.example/pacs/v2/studies/")
