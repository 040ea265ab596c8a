"""What the client does about servers that bend the standard, over a real loopback server.

A server that ignores ``offset`` answers every page with the first one; a server that
ignores the study in ``/studies/{study}/instances`` lists every instance it has. Neither
may turn a search into an endless loop or one study's download into the whole archive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dicomweb_async import AsyncDICOMwebClient, copy_studies
from tests.loopback_server import LoopbackServer

KIB = 1024
STUDIES = [f"1.2.826.0.1.3680043.8.498.45000{n}" for n in range(1, 6)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        for study in STUDIES:
            srv.add_synthetic_study(study, 3, 8 * KIB)
        yield srv
        assert srv.errors == []


def searches(server: LoopbackServer) -> list[str]:
    return [r.query for r in server.requests if r.method == "GET" and r.path == "/studies"]


@pytest.mark.parametrize("limit", [None, 2])
async def test_paging_stops_when_the_server_ignores_offset(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture, limit: int | None
) -> None:
    server.quirks = {"ignore_offset"}
    async with AsyncDICOMwebClient(server.url) as client:
        with anyio.fail_after(10), caplog.at_level(logging.WARNING, "dicomweb_async"):
            found = await client.search_for_studies(limit=limit, get_remaining=True)
            again = [s async for s in client.iter_search_for_studies(limit=limit)]
    # All the server would ever give (the first page), each once, in two requests each.
    assert len(found) == len(again) == (limit or len(STUDIES))
    assert len(searches(server)) == 4
    assert "seems to ignore offset" in caplog.text


async def test_paging_still_reaches_every_page_of_a_server_that_pages(
    server: LoopbackServer,
) -> None:
    async with AsyncDICOMwebClient(server.url) as client:
        found = await client.search_for_studies(limit=2, get_remaining=True)
    assert sorted(s["0020000D"]["Value"][0] for s in found) == STUDIES
    assert len(searches(server)) == 3  # 2 + 2 + 1


async def test_a_download_keeps_to_its_study_when_the_server_lists_every_study(
    server: LoopbackServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.quirks = {"ignore_study_path"}
    async with AsyncDICOMwebClient(server.url) as client:
        with caplog.at_level(logging.WARNING, "dicomweb_async"):
            report = await client.download_studies([STUDIES[0]], tmp_path / "out")
            one = await client.download_study(STUDIES[1], tmp_path / "one", concurrency=4)
    assert report.ok and len(report.downloaded) == 3
    assert {o.study_instance_uid for o in report.outcomes} == {STUDIES[0]}
    assert [p.name for p in (tmp_path / "out").iterdir()] == [STUDIES[0]]
    assert len(one) == 3 and {i.study_instance_uid for i in one} == {STUDIES[1]}
    assert "ignore the study in the search path" in caplog.text


async def test_a_copy_keeps_to_its_study_when_the_server_lists_every_study(
    server: LoopbackServer,
) -> None:
    server.quirks = {"ignore_study_path"}
    with LoopbackServer() as destination:
        async with (
            AsyncDICOMwebClient(server.url) as source,
            AsyncDICOMwebClient(destination.url) as target,
        ):
            report = await copy_studies(source, target, [STUDIES[0]])
        assert report.ok and len(report.copied) == 3
        assert list(destination.registry()) == [STUDIES[0]]


async def test_media_types_a_resource_cannot_have_are_refused_before_any_request(
    server: LoopbackServer,
) -> None:
    study = STUDIES[0]
    (instance,) = server.instances(study)[:1]
    series, sop = instance.series_uid, instance.sop_uid
    async with AsyncDICOMwebClient(server.url) as client:
        with pytest.raises(ValueError, match=r"'image/jpeg' cannot be asked for from instances"):
            await client.retrieve_study(study, media_types=["image/jpeg"])
        with pytest.raises(ValueError, match=r"allowed: application/dicom$"):
            await client.retrieve_series(study, series, media_types=[("image/png", "1.2")])
        with pytest.raises(ValueError, match=r"frames and bulk data; allowed: .*image/jls"):
            await client.retrieve_instance_frames(
                study, series, sop, [1], media_types=["application/dicom"]
            )
        with pytest.raises(ValueError, match="rendered resources"):
            await client.retrieve_instance_rendered(
                study, series, sop, media_types=["application/octet-stream"]
            )
        with pytest.raises(TypeError, match="sequence of media types"):
            await client.retrieve_study(study, media_types="application/dicom")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="StudyInstanceUID must be a str, not list"):
            await client.retrieve_study([study])  # type: ignore[arg-type]
        # What is allowed still goes through.
        assert len(await client.retrieve_study(study, media_types=["application/dicom"])) == 3
    assert [r.method for r in server.requests] == ["GET"]


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_multipart_without_a_boundary_is_read_by_its_first_delimiter(
    server: LoopbackServer, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    server.quirks = {"no_boundary"}
    study = STUDIES[0]
    expected = {i.sop_uid: i.read_bytes() for i in server.instances(study)}
    async with AsyncDICOMwebClient(server.url, engine=engine) as client:  # type: ignore[arg-type]
        with caplog.at_level(logging.DEBUG, "dicomweb_async"):
            datasets = await client.retrieve_study(study)
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(expected)
    assert "without a boundary" in caplog.text and "from the body" in caplog.text


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_a_bare_instance_labelled_multipart_is_read_as_one_part(
    server: LoopbackServer, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    server.quirks = {"bare_body_labelled_multipart"}
    instance = server.instances(STUDIES[0])[0]
    async with AsyncDICOMwebClient(server.url, engine=engine) as client:  # type: ignore[arg-type]
        with caplog.at_level(logging.DEBUG, "dicomweb_async"):
            async with client.stream_instance(
                STUDIES[0], instance.series_uid, instance.sop_uid
            ) as parts:
                received = [await part.read() async for part in parts]
    assert received == [instance.read_bytes()]
    assert "the body is not multipart" in caplog.text


async def test_frame_numbers_of_the_wrong_type_are_a_type_error(server: LoopbackServer) -> None:
    instance = server.instances(STUDIES[0])[0]
    where = (STUDIES[0], instance.series_uid, instance.sop_uid)
    async with AsyncDICOMwebClient(server.url) as client:
        with pytest.raises(TypeError, match="sequence of int"):
            await client.retrieve_instance_frames(*where, "1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="frame numbers are int, not str"):
            await client.retrieve_instance_frames(*where, ["1"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="1-based"):
            await client.retrieve_instance_frames(*where, [0])
    assert server.requests == []
