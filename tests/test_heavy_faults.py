"""Bulk transfers finish under heavy transient faults with default settings, and stalls end.

The loopback server answers one request in five with 503 (Retry-After: 1) and drops one
in twenty mid-body, drawn from a seeded generator; bulk uploads and downloads with the
client's defaults must still end with every instance transferred, byte for byte, in
bounded time. A server that reads a request's head and then says nothing is given up on
within the read timeout, and the request is sent again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import httpx
import pydicom
import pytest

from dicomweb_async import AsyncDICOMwebClient, RetryPolicy, ServerError
from tests.loopback_server import LoopbackServer, write_instance_files
from tests.relay import Relay

KIB = 1024
SIZE = 16 * KIB
STUDIES = [f"1.2.826.0.1.3680043.8.498.66000{n}" for n in range(1, 5)]


@pytest.fixture
def server(tmp_path: Path) -> object:
    with LoopbackServer(storage_dir=tmp_path / "server-store") as srv:
        yield srv
        assert srv.errors == []


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def stored_posts(server: LoopbackServer) -> int:
    return sum(1 for r in server.requests if r.method == "POST")


async def test_store_folder_finishes_under_heavy_faults(
    server: LoopbackServer, tmp_path: Path
) -> None:
    files: list[Path] = []
    for number, study in enumerate(STUDIES):
        files += write_instance_files(tmp_path / "in" / str(number), 50, SIZE, study_uid=study)
    server.random_faults(0.2, 0.05, retry_after=1, seed=20261207)

    async with AsyncDICOMwebClient(server.url) as client:
        with anyio.fail_after(120):
            report = await client.store_folder(tmp_path / "in", concurrency=8)

    faults = server.fault_counts
    assert faults["status"] >= 30 and faults["drop"] >= 5, faults
    assert report.ok, report.failed[:3]
    assert len(report.stored) == len(files) == 200
    # Every file is on the server once, byte for byte (dropped requests stored nothing).
    for path in files:
        instance = server.get_instance(sop_of(path))
        assert instance is not None
        assert instance.read_bytes() == path.read_bytes(), path
    # The report counts every request that carried a file, retries included.
    assert sum(o.attempts for o in report.outcomes) == stored_posts(server)
    assert max(o.attempts for o in report.outcomes) > 1


async def test_download_studies_finishes_under_heavy_faults(
    server: LoopbackServer, tmp_path: Path
) -> None:
    for study in STUDIES:
        server.add_synthetic_study(study, 50, SIZE, series_per_study=2)
    server.random_faults(0.2, 0.05, retry_after=1, seed=7)

    async with AsyncDICOMwebClient(server.url) as client:
        with anyio.fail_after(120):
            report = await client.download_studies(STUDIES, tmp_path / "out", concurrency=8)

    faults = server.fault_counts
    assert faults["status"] >= 5 and faults["drop"] >= 1, faults
    assert report.ok, report.failed[:3]
    assert len(report.downloaded) == 200
    for outcome in report.downloaded:
        assert outcome.path is not None and outcome.sop_instance_uid is not None
        instance = server.get_instance(outcome.sop_instance_uid)
        assert instance is not None
        assert (
            hashlib.sha256(outcome.path.read_bytes()).hexdigest()
            == hashlib.sha256(instance.read_bytes()).hexdigest()
        )
    assert not list((tmp_path / "out").rglob("*.partial"))


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_a_stalled_upload_is_given_up_within_the_read_timeout_and_sent_again(
    server: LoopbackServer, tmp_path: Path, engine: str
) -> None:
    files = write_instance_files(tmp_path / "in", 4, SIZE)
    server.stall_next(2, method="POST")
    timeout = httpx.Timeout(30.0, read=0.5)

    async with AsyncDICOMwebClient(server.url, timeout=timeout, engine=engine) as client:  # type: ignore[arg-type]
        started = anyio.current_time()
        with anyio.fail_after(20):
            report = await client.store_folder(tmp_path / "in", concurrency=1)
        elapsed = anyio.current_time() - started

    assert report.ok and len(report.stored) == 4
    assert [r.stalled for r in server.requests if r.method == "POST"].count(True) == 2
    # Two read timeouts of 0.5 s and two backoffs (0.25-0.5 s, then 0.5-1 s), not 30 s.
    assert elapsed < 10
    for path in files:
        instance = server.get_instance(sop_of(path))
        assert instance is not None and instance.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_a_stalled_retrieval_is_given_up_within_the_read_timeout_and_asked_again(
    server: LoopbackServer, tmp_path: Path, engine: str
) -> None:
    server.add_synthetic_study(STUDIES[0], 6, SIZE, series_per_study=2)
    server.stall_next(1, method="GET")  # the study's listing
    timeout = httpx.Timeout(30.0, read=0.5)

    async with AsyncDICOMwebClient(server.url, timeout=timeout, engine=engine) as client:  # type: ignore[arg-type]
        with anyio.fail_after(20):
            report = await client.download_studies([STUDIES[0]], tmp_path / "out")

    assert report.ok and len(report.downloaded) == 6
    assert [r.stalled for r in server.requests].count(True) == 1


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_slow_transfers_that_keep_moving_are_never_cut_by_a_deadline(
    server: LoopbackServer, tmp_path: Path, engine: str
) -> None:
    # Every timeout is 1.5 s; the upload and the download each take about 3 s, in 256 KiB
    # pieces 30 ms apart. Only a wait without progress may end a transfer. (The socket
    # buffers hold a few MiB: draining them at this rate stays well within 1.5 s.)
    files = write_instance_files(tmp_path / "in", 1, 24 * 1024 * KIB)
    timeout = httpx.Timeout(1.5)
    async with (
        Relay(server.port, piece=256 * KIB, pause=0.03, upload_pause=0.03) as relay,
        AsyncDICOMwebClient(relay.url, timeout=timeout, engine=engine) as client,  # type: ignore[arg-type]
    ):
        started = anyio.current_time()
        stored = await client.store_folder(files[0], retry=RetryPolicy(attempts=1))
        uploaded = anyio.current_time() - started
        study = stored.outcomes[0].study_instance_uid
        assert study is not None
        started = anyio.current_time()
        down = await client.download_studies(
            [study], tmp_path / "out", retry=RetryPolicy(attempts=1)
        )
        downloaded = anyio.current_time() - started

    assert stored.ok and down.ok, (stored.failed, down.failed)
    assert uploaded > 2.25 and downloaded > 2.25, (uploaded, downloaded)
    (outcome,) = down.downloaded
    assert outcome.path is not None and outcome.path.read_bytes() == files[0].read_bytes()


async def test_a_deadline_stops_the_retries_of_a_request(server: LoopbackServer) -> None:
    server.fail_next(10, 503, retry_after=1, method="GET")
    policy = RetryPolicy(attempts=10, deadline=1.5)
    async with AsyncDICOMwebClient(server.url, retry=policy) as client:
        started = anyio.current_time()
        with pytest.raises(ServerError):
            await client.search_for_studies()
        elapsed = anyio.current_time() - started
    # The first retry waits 1 s; a second would end after 2 s, past the deadline.
    assert [r.status for r in server.requests] == [503, 503]
    assert 0.9 < elapsed < 1.5
