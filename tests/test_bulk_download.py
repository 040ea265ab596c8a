"""Bulk downloads (``download_studies``, ``download_pipeline``, ``download_study(...,
concurrency=N)``) against real servers.

Files are compared byte for byte with the server's copies; the server's request log shows
what was fetched (whole series, single instances, nothing at all on a re-run); responses
cut off mid-body and cancelled runs leave no ``.partial`` files and a re-run completes them.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl

import anyio
import pydicom
import pytest

from dicomweb_async import (
    AsyncDICOMwebClient,
    BulkTransferError,
    DownloadOutcome,
    DownloadReport,
    Progress,
    RetryPolicy,
)
from dicomweb_async.testing import OrthancServer
from tests import bulk_fixtures
from tests.bulk_fixtures import RETRY
from tests.loopback_server import LoopbackServer, RequestRecord, make_instance_bytes
from tests.relay import Relay

KIB = 1024
MIB = 1024 * KIB
SIZE = 8 * KIB
STUDY_1 = "1.2.826.0.1.3680043.8.498.770001"
STUDY_2 = "1.2.826.0.1.3680043.8.498.770002"
MISSING_STUDY = "1.2.826.0.1.3680043.8.498.770999"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers

# Bound to module names so that pytest finds them here.
server = bulk_fixtures.server
client = bulk_fixtures.client


def retrievals(server: LoopbackServer) -> list[RequestRecord]:
    """WADO-RS GETs (study, series, instance resources), not QIDO-RS searches."""
    return [
        r
        for r in server.requests
        if r.method == "GET" and len(r.path.strip("/").split("/")) % 2 == 0
    ]


def series_url(study: str, series: str) -> str:
    return f"/studies/{study}/series/{series}"


def instance_url(study: str, series: str, sop: str) -> str:
    return f"{series_url(study, series)}/instances/{sop}"


def expected_files(server: LoopbackServer, root: Path, *studies: str) -> dict[Path, str]:
    """Target path -> SOP Instance UID for every instance of the studies."""
    return {
        root / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm": i.sop_uid
        for study in studies
        for i in server.instances(study)
    }


def files_on_disk(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def partial_files(root: Path) -> list[Path]:
    return list(root.rglob("*.partial"))


def assert_identical(server: LoopbackServer, root: Path, *studies: str) -> None:
    """Every instance of the studies is on disk, byte for byte, and nothing else."""
    expected = expected_files(server, root, *studies)
    assert files_on_disk(root) == set(expected)
    for path, sop in expected.items():
        instance = server.get_instance(sop)
        assert instance is not None
        assert path.read_bytes() == instance.read_bytes(), path


def assert_complete_files_only(server: LoopbackServer, root: Path) -> None:
    """Whatever is on disk is a complete instance under its final name."""
    assert partial_files(root) == []
    for path in files_on_disk(root):
        instance = server.get_instance(path.stem)
        assert instance is not None, path
        assert path == root / instance.study_uid / instance.series_uid / path.name
        assert path.read_bytes() == instance.read_bytes(), path


def statuses(report: DownloadReport) -> dict[str, str]:
    sops = [o.sop_instance_uid for o in report.outcomes]
    assert len(sops) == len(set(sops)), "an instance was reported more than once"
    return {o.sop_instance_uid or "": o.status for o in report.outcomes}


# --------------------------------------------------------------------------------------------
# Many studies, many series, in parallel


async def test_download_studies_byte_identical(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 9, SIZE, series_per_study=3)
    server.add_synthetic_study(STUDY_2, 4, SIZE, series_per_study=2)
    target = tmp_path / "out"

    report = await client.download_studies([STUDY_1, STUDY_2], target, concurrency=4)

    assert report.ok, report.summary()
    assert set(statuses(report).values()) == {"downloaded"}
    expected = expected_files(server, target, STUDY_1, STUDY_2)
    assert {o.path for o in report.outcomes} == set(expected)
    for outcome in report.outcomes:
        assert outcome.path is not None and outcome.size == SIZE
        assert outcome.path.parent.name == outcome.series_instance_uid
        assert outcome.path.parent.parent.name == outcome.study_instance_uid
    assert report.bytes_downloaded == 13 * SIZE
    assert_identical(server, target, STUDY_1, STUDY_2)
    # Nothing on disk yet: each series was fetched whole, in one request.
    fetched = sorted(r.path for r in retrievals(server))
    registry = server.registry()
    assert fetched == sorted(
        series_url(study, series) for study in registry for series in registry[study]
    )
    assert all(r.status == 200 for r in retrievals(server))


async def test_the_download_directory_is_its_own_journal(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 9, SIZE, series_per_study=3)
    server.add_synthetic_study(STUDY_2, 4, SIZE, series_per_study=2)
    target = tmp_path / "out"
    first = await client.download_studies([STUDY_1, STUDY_2], target, concurrency=4)
    assert len(first.downloaded) == 13

    server.reset_stats()
    again = await client.download_studies([STUDY_1, STUDY_2], target, concurrency=4)
    assert set(statuses(again).values()) == {"skipped"} and len(again.outcomes) == 13
    assert all(o.path is not None and o.path.exists() for o in again.outcomes)
    assert retrievals(server) == []

    # Remove one instance of one series and a whole other series.
    series_a, series_b = list(server.registry()[STUDY_1])[:2]
    one = server.instances(STUDY_1, series_a)[1]
    (target / STUDY_1 / series_a / f"{one.sop_uid}.dcm").unlink()
    shutil.rmtree(target / STUDY_1 / series_b)
    removed = {one.sop_uid} | {i.sop_uid for i in server.instances(STUDY_1, series_b)}

    server.reset_stats()
    third = await client.download_studies([STUDY_1, STUDY_2], target, concurrency=4)

    found = statuses(third)
    assert {sop for sop, status in found.items() if status == "downloaded"} == removed
    assert {sop for sop, status in found.items() if status == "skipped"} == (set(found) - removed)
    assert sorted(r.path for r in retrievals(server)) == sorted(
        [instance_url(STUDY_1, series_a, one.sop_uid), series_url(STUDY_1, series_b)]
    )
    assert_identical(server, target, STUDY_1, STUDY_2)


async def test_download_studies_matching_search_filters(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 3, SIZE, series_per_study=2)
    server.add_synthetic_study(STUDY_2, 2, SIZE)

    report = await client.download_studies({"PatientID": "LOOPBACK"}, tmp_path, concurrency=2)

    assert len(report.downloaded) == 5 and report.ok
    searches = [r for r in server.requests if r.path == "/studies"]
    assert searches and all(("PatientID", "LOOPBACK") in parse_qsl(r.query) for r in searches), [
        r.query for r in searches
    ]
    assert_identical(server, tmp_path, STUDY_1, STUDY_2)


async def test_download_studies_matching_search_filters_on_orthanc(
    clean_orthanc: OrthancServer, tmp_path: Path, seed_files: list[Path]
) -> None:
    other = make_instance_bytes(4096, patient_id="SOMEONE-ELSE")
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        stored = await client.store_instances([*seed_files, other])
        assert len(stored.stored) == 4

        report = await client.download_studies({"PatientID": "ID1"}, tmp_path, concurrency=2)

    assert report.ok and len(report.downloaded) == 3
    by_sop = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in seed_files
    }
    assert {o.sop_instance_uid for o in report.outcomes} == set(by_sop)
    for outcome in report.outcomes:
        assert outcome.path is not None
        assert outcome.path.read_bytes() == by_sop[outcome.sop_instance_uid or ""].read_bytes()
    assert len(files_on_disk(tmp_path)) == 3


async def test_unknown_and_invalid_studies_fail_once_each(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 2, SIZE)

    report = await client.download_studies(
        [MISSING_STUDY, STUDY_1, "not-a-uid"], tmp_path, concurrency=2
    )

    assert len(report.downloaded) == 2
    failed = {o.study_instance_uid: o for o in report.failed}
    assert set(failed) == {MISSING_STUDY, "not-a-uid"} and len(report.failed) == 2
    for outcome in failed.values():
        assert outcome.sop_instance_uid is None and outcome.message
    assert not report.ok
    with pytest.raises(BulkTransferError) as raised:
        report.raise_for_failures()
    assert raised.value.report is report
    assert_identical(server, tmp_path, STUDY_1)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_response_cut_mid_body(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path, framing: str
) -> None:
    size = 64 * KIB
    server.framing = framing  # type: ignore[assignment]
    server.add_synthetic_study(STUDY_1, 9, size, series_per_study=3)
    cut_at = size + size // 2  # inside the second instance of the first series fetched
    server.drop_next_response_after(cut_at)

    # One try: the cut is reported, and a re-run completes it.
    once = RetryPolicy(attempts=1)
    report = await client.download_studies([STUDY_1], tmp_path, concurrency=4, retry=once)

    (cut,) = [r for r in retrievals(server) if r.aborted]
    assert cut.response_body_bytes == cut_at
    series = cut.path.rsplit("/", 1)[1]
    instances = server.instances(STUDY_1, series)
    found = statuses(report)
    assert {sop for sop, status in found.items() if status == "failed"} == {
        i.sop_uid for i in instances[1:]
    }
    assert all(o.message for o in report.failed)
    assert len(report.downloaded) == 7 and found[instances[0].sop_uid] == "downloaded"
    assert_complete_files_only(server, tmp_path)

    server.reset_stats()
    again = await client.download_studies([STUDY_1], tmp_path, concurrency=4)

    assert again.ok
    assert {o.sop_instance_uid for o in again.downloaded} == {i.sop_uid for i in instances[1:]}
    assert len(again.skipped) == 7
    assert sorted(r.path for r in retrievals(server)) == sorted(
        instance_url(STUDY_1, series, i.sop_uid) for i in instances[1:]
    )
    assert_identical(server, tmp_path, STUDY_1)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_a_cut_response_is_resumed_in_the_same_run(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path, framing: str
) -> None:
    size = 64 * KIB
    server.framing = framing  # type: ignore[assignment]
    server.add_synthetic_study(STUDY_1, 9, size, series_per_study=3)
    server.drop_next_response_after(size + size // 2)

    report = await client.download_studies([STUDY_1], tmp_path, concurrency=4)

    assert report.ok and len(report.downloaded) == 9
    (cut,) = [r for r in retrievals(server) if r.aborted]
    series = cut.path.rsplit("/", 1)[1]
    instances = server.instances(STUDY_1, series)
    # The instance saved before the cut is not fetched again; the rest one by one.
    assert sorted(r.path for r in retrievals(server) if not r.aborted) == sorted(
        [series_url(STUDY_1, s) for s in server.registry()[STUDY_1] if s != series]
        + [instance_url(STUDY_1, series, i.sop_uid) for i in instances[1:]]
    )
    attempts = {o.sop_instance_uid: o.attempts for o in report.outcomes}
    assert attempts[instances[0].sop_uid] == 1
    assert all(attempts[i.sop_uid] == 2 for i in instances[1:])
    assert_complete_files_only(server, tmp_path)
    assert_identical(server, tmp_path, STUDY_1)


# --------------------------------------------------------------------------------------------
# Concurrency


async def test_download_requests_in_flight_stay_within_concurrency(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    # Single-instance series: one request per instance.
    server.add_synthetic_study(STUDY_1, 16, SIZE, series_per_study=16)
    server.latency = 0.05
    server.reset_stats()

    report = await client.download_studies([STUDY_1], tmp_path, concurrency=4)

    assert len(report.downloaded) == 16
    assert 2 <= server.max_in_flight <= 4


async def test_download_of_several_studies_stays_within_concurrency(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    for study in (STUDY_1, STUDY_2):
        server.add_synthetic_study(study, 8, SIZE, series_per_study=8)
    server.latency = 0.05
    server.reset_stats()

    report = await client.download_studies([STUDY_1, STUDY_2], tmp_path, concurrency=2)

    assert len(report.downloaded) == 16
    assert server.max_in_flight <= 2


async def test_study_that_cannot_be_listed_does_not_refetch_files_on_disk(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 4, SIZE, series_per_study=2)
    first = await client.download_studies([STUDY_1], tmp_path)
    assert len(first.downloaded) == 4
    server.reset_stats()
    # The QIDO-RS listing fails on every try (the retry policy allows four).
    server.fail_next(RETRY.attempts, 503, retry_after=0, method="GET")

    report = await client.download_studies([STUDY_1], tmp_path)

    assert [r.status for r in server.requests][: RETRY.attempts] == [503] * RETRY.attempts
    # Files already complete on disk are not downloaded (and rewritten) again; the study
    # is reported as failed, with the reason, so that a re-run can finish it.
    assert report.downloaded == []
    assert [o.status for o in report.outcomes] == ["failed"]
    assert "could not list" in (report.outcomes[0].message or "")


async def test_concurrency_above_the_connection_pool_is_refused(
    server: LoopbackServer, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 2, SIZE)
    async with AsyncDICOMwebClient(server.url, max_connections=2) as client:
        with pytest.raises(ValueError, match="max_connections"):
            await client.download_studies([STUDY_1], tmp_path, concurrency=3)
        with pytest.raises(ValueError, match="max_connections"):
            client.download_pipeline([STUDY_1], tmp_path, concurrency=3)
        with pytest.raises(ValueError, match="max_connections"):
            await client.download_study(STUDY_1, tmp_path, concurrency=3)
        assert server.requests == []
        saved = await client.download_study(STUDY_1, tmp_path, concurrency=2)
    assert len(saved) == 2


async def test_download_study_with_concurrency(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 6, SIZE, series_per_study=3)

    saved = await client.download_study(STUDY_1, tmp_path, concurrency=4)

    assert sorted(d.sop_instance_uid for d in saved) == sorted(
        i.sop_uid for i in server.instances(STUDY_1)
    )
    assert all(d.path.exists() and d.size == SIZE for d in saved)
    assert len(retrievals(server)) == 3
    assert_identical(server, tmp_path, STUDY_1)


async def test_download_study_with_concurrency_from_orthanc(
    clean_orthanc: OrthancServer, tmp_path: Path, seed_files: list[Path]
) -> None:
    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        (await client.store_instances(seed_files)).raise_for_failures()
        study = str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).StudyInstanceUID)

        saved = await client.download_study(study, tmp_path, concurrency=4)

    assert len(saved) == 3
    originals = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in seed_files
    }
    for item in saved:
        assert item.path == tmp_path / study / item.series_instance_uid / item.path.name
        assert item.path.read_bytes() == originals[item.sop_instance_uid].read_bytes()
    assert files_on_disk(tmp_path) == {item.path for item in saved}


# --------------------------------------------------------------------------------------------
# Pipelines and progress


async def test_download_pipeline_fed_by_an_async_source(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 4, SIZE, series_per_study=2)
    server.add_synthetic_study(STUDY_2, 3, SIZE)
    first_seen = anyio.Event()
    pulled: list[str] = []

    async def studies() -> AsyncIterator[str]:
        pulled.append(STUDY_1)
        yield STUDY_1
        # The second study is asked for only once the first one's outcomes flow.
        with anyio.fail_after(20):
            await first_seen.wait()
        pulled.append(STUDY_2)
        yield STUDY_2

    received: list[DownloadOutcome] = []
    async with client.download_pipeline(studies(), tmp_path, concurrency=2) as outcomes:
        async for outcome in outcomes:
            if outcome.study_instance_uid == STUDY_1:
                first_seen.set()
            else:
                assert first_seen.is_set()
            received.append(outcome)

    assert pulled == [STUDY_1, STUDY_2]
    # Outcomes come as they complete: once the second study is pulled, its instances may
    # interleave with the first study's remaining ones, but none can come before the first.
    assert received[0].study_instance_uid == STUDY_1
    assert sorted(o.study_instance_uid for o in received) == [STUDY_1] * 4 + [STUDY_2] * 3
    assert all(o.status == "downloaded" for o in received)
    assert_identical(server, tmp_path, STUDY_1, STUDY_2)


async def test_download_progress_adds_up_to_the_report(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 8, SIZE, series_per_study=8)
    server.add_synthetic_study(STUDY_2, 4, SIZE, series_per_study=2)
    await client.download_studies([STUDY_2], tmp_path)
    server.latency = 0.02
    events: list[Progress] = []

    report = await client.download_studies(
        [STUDY_1, STUDY_2, MISSING_STUDY], tmp_path, concurrency=2, progress=events.append
    )

    assert events
    for earlier, later in itertools.pairwise(events):
        assert later.done >= earlier.done and later.skipped >= earlier.skipped
        assert later.failed >= earlier.failed and later.bytes_done >= earlier.bytes_done
    assert [e.final for e in events] == [False] * (len(events) - 1) + [True]
    final = events[-1]
    assert final.operation == "download"
    assert (final.done, final.skipped, final.failed) == (8, 4, 1)
    assert (len(report.downloaded), len(report.skipped), len(report.failed)) == (8, 4, 1)
    assert final.bytes_done == report.bytes_downloaded == 8 * SIZE
    assert final.total == 12  # the instances listed; the missing study has none


# --------------------------------------------------------------------------------------------
# Cancellation


async def test_cancelled_download_leaves_no_partial_files(
    server: LoopbackServer, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 6, 1 * MIB, series_per_study=2)
    target = tmp_path / "out"
    seen_partial = False

    async with (
        Relay(server.port, piece=32 * KIB, pause=0.002) as relay,
        AsyncDICOMwebClient(relay.url, retry=RETRY) as client,
        anyio.create_task_group() as tg,
    ):

        async def download() -> None:
            await client.download_studies([STUDY_1], target, concurrency=2)
            pytest.fail("the download finished before it could be cancelled")

        async def cancel_mid_instance() -> None:
            nonlocal seen_partial
            with anyio.fail_after(30):
                for _ in itertools.count():
                    if partial_files(target):
                        break
                    await anyio.sleep(0.001)
            seen_partial = True
            tg.cancel_scope.cancel()

        tg.start_soon(download)
        tg.start_soon(cancel_mid_instance)

    assert seen_partial
    assert_complete_files_only(server, target)
    assert len(files_on_disk(target)) < 6

    async with AsyncDICOMwebClient(server.url, retry=RETRY) as client:
        report = await client.download_studies([STUDY_1], target)
    assert report.ok and len(report.outcomes) == 6
    assert_identical(server, target, STUDY_1)


async def test_leaving_a_download_pipeline_early_leaves_no_partial_files(
    server: LoopbackServer, tmp_path: Path
) -> None:
    server.add_synthetic_study(STUDY_1, 8, 512 * KIB, series_per_study=8)
    target = tmp_path / "out"

    async with (
        Relay(server.port, piece=32 * KIB, pause=0.002) as relay,
        AsyncDICOMwebClient(relay.url, retry=RETRY) as client,
    ):
        async with client.download_pipeline([STUDY_1], target, concurrency=4) as outcomes:
            async for outcome in outcomes:
                assert outcome.status == "downloaded"
                break
        assert_complete_files_only(server, target)
        assert 1 <= len(files_on_disk(target)) < 8

    async with AsyncDICOMwebClient(server.url, retry=RETRY) as client:
        report = await client.download_studies([STUDY_1], target)
    assert report.ok and len(report.skipped) >= 1
    assert_identical(server, target, STUDY_1)
