"""Server profiles: each one's settings applied, overridable, and refusals made before any
request reaches a real loopback server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomweb_async import (
    PROFILES,
    AsyncDICOMwebClient,
    AzureDICOMwebClient,
    ServerProfile,
)
from tests.loopback_server import LoopbackServer

STUDY = "1.2.826.0.1.3680043.8.498.4460001"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        srv.add_synthetic_study(STUDY, 2, 4096)
        yield srv
        assert srv.errors == []


def test_every_profile_is_named_and_documented() -> None:
    assert sorted(PROFILES) == [
        "aws-healthimaging",
        "azure",
        "dcm4chee",
        "generic",
        "google",
        "orthanc",
    ]
    from dicomweb_async._core import profiles

    for name, profile in PROFILES.items():
        assert profile.name == name
        assert f"``{name}``" in (profiles.__doc__ or ""), name


async def test_the_azure_profile_sets_the_services_limits(server: LoopbackServer) -> None:
    async with AzureDICOMwebClient(server.url) as azure:
        assert azure.profile is PROFILES["azure"]
        assert azure.max_page_size == 200 and azure.reject_implicit_vr
    async with AsyncDICOMwebClient(
        server.url, profile="azure", max_page_size=50, reject_implicit_vr=False
    ) as overridden:
        assert overridden.max_page_size == 50 and not overridden.reject_implicit_vr
        await overridden.search_for_studies(limit=1000)
    async with AsyncDICOMwebClient(server.url) as generic:
        assert generic.profile.name == "generic"
        assert generic.max_page_size is None and not generic.reject_implicit_vr
    (search,) = [r for r in server.requests if r.path == "/studies"]
    assert "limit=50" in search.query


async def test_what_a_profile_knows_is_refused_is_refused_before_sending(
    server: LoopbackServer, tmp_path: Path, seed_files: list[Path]
) -> None:
    sop = server.instances(STUDY)[0]
    async with AsyncDICOMwebClient(server.url, profile="orthanc") as orthanc:
        with pytest.raises(ValueError, match="'orthanc' server profile says"):
            await orthanc.delete_study(STUDY)
        with pytest.raises(ValueError, match="single-part STOW"):
            await orthanc.store_instances(seed_files[:1], single_part=True)
        with pytest.raises(ValueError, match="upsert"):
            await orthanc.store_instances(seed_files[:1], upsert=True)
        with pytest.raises(ValueError, match="upsert"):
            await orthanc.store_folder(seed_files, upsert=True)
        with pytest.raises(ValueError, match="fuzzymatching"):
            await orthanc.search_for_studies(fuzzymatching=True)
    async with AsyncDICOMwebClient(server.url, profile="azure") as azure:
        with pytest.raises(ValueError, match="thumbnails"):
            await azure.retrieve_instance_thumbnail(STUDY, sop.series_uid, sop.sop_uid)
    async with AsyncDICOMwebClient(server.url, profile="aws-healthimaging") as aws:
        with pytest.raises(ValueError, match="largest request"):
            await aws.store_folder(tmp_path, max_request_bytes=2 * 1000**3)
    assert server.requests == []


async def test_a_profile_knob_can_be_turned_back_on(server: LoopbackServer) -> None:
    profile = PROFILES["orthanc"].with_changes(delete=True)
    assert isinstance(profile, ServerProfile) and profile.fuzzy_matching is False
    async with AsyncDICOMwebClient(server.url, profile=profile) as client:
        await client.delete_study(STUDY)
    assert [r.method for r in server.requests] == ["DELETE"]
    with pytest.raises(TypeError, match="unknown profile settings: deletes"):
        PROFILES["orthanc"].with_changes(deletes=True)
    with pytest.raises(ValueError, match="unknown server profile 'pacs'"):
        AsyncDICOMwebClient(server.url, profile="pacs")


@pytest.mark.parametrize("quoted", [True, False])
async def test_the_multipart_type_is_quoted_as_the_profile_says(
    server: LoopbackServer, quoted: bool
) -> None:
    profile = PROFILES["generic"].with_changes(quote_multipart_type=quoted)
    async with AsyncDICOMwebClient(server.url, profile=profile) as client:
        datasets = await client.retrieve_study(STUDY)
    assert len(datasets) == 2
    (get,) = [r for r in server.requests if r.method == "GET" and r.path.endswith(STUDY)]
    accept = get.header("Accept") or ""
    assert ('type="application/dicom"' in accept) is quoted
    assert bool(re.search(r"type=application/dicom", accept)) is not quoted


def test_the_command_line_takes_a_profile(server: LoopbackServer) -> None:
    from tests.test_cli import run_cli

    result = run_cli(f"--profile orthanc delete {STUDY}", url=server.url)
    assert result.returncode == 1
    assert "server profile says the server does not support it" in result.stderr
    assert server.requests == []


def test_copy_takes_a_profile_per_server(server: LoopbackServer) -> None:
    from tests.test_cli import run_cli

    with LoopbackServer() as destination:
        command = (
            f"copy --from {server.url} --to {destination.url} {STUDY} "
            "--to-profile aws-healthimaging --max-request-bytes 2g"
        )
        result = run_cli(command)
        assert result.returncode == 1
        assert "'aws-healthimaging' server profile's largest request" in result.stderr
        assert destination.requests == [] and server.requests == []
