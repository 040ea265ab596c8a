"""Copies from one DICOMweb server to another: loopback servers, two real Orthancs, and
Orthanc into the Azure emulator.

Instances are compared byte for byte at both ends; the servers' request logs show what was
sent (nothing twice on a re-run, re-sends after a kill bounded by the concurrency); memory
is measured in a separate process copying a 1 GiB study.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from dicomweb_async import (
    AsyncDICOMwebClient,
    AzureDICOMwebClient,
    CopyReport,
    copy_studies,
    verify_copy,
)
from dicomweb_async._core.identity import read_uids
from dicomweb_async._core.multipart_writer import dataset_bytes
from dicomweb_async.testing import AzureDicomEmulator, OrthancServer
from tests.loopback_server import (
    DUPLICATE_INSTANCE,
    LoopbackServer,
    write_instance_files,
)

KIB = 1024
MIB = 1024 * KIB
STUDY = "1.2.826.0.1.3680043.8.498.4410001"
OTHER = "1.2.826.0.1.3680043.8.498.4410002"
VALIDATION_FAILED = 43264


@pytest.fixture
def source(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "source-store") as server:
        yield server
        assert server.errors == []


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "destination-store") as server:
        yield server
        assert server.errors == []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_copied_identically(source: LoopbackServer, destination: LoopbackServer) -> None:
    """Every instance at the source is at the destination, byte for byte."""
    at_source = {
        i.sop_uid: i for s in source.registry().values() for g in s.values() for i in g.values()
    }
    assert at_source
    for sop, instance in at_source.items():
        copied = destination.get_instance(sop)
        assert copied is not None, sop
        assert copied.sha256 == instance.sha256 or sha(copied.read_bytes()) == sha(
            instance.read_bytes()
        )


def stow_parts(server: LoopbackServer) -> list[str]:
    """SOP Instance UIDs of every part the server accepted, once per time it was sent."""
    return [
        part.sop_uid or ""
        for r in server.requests
        if r.method == "POST" and r.status in (200, 202)
        for part in r.parts
    ]


# -- loopback servers -------------------------------------------------------------------------


async def test_a_copy_streams_every_instance_unchanged(
    source: LoopbackServer, destination: LoopbackServer, tmp_path: Path
) -> None:
    source.add_synthetic_study(STUDY, 12, 64 * KIB, series_per_study=3)
    source.add_synthetic_study(OTHER, 2, 600 * KIB)
    spool = tmp_path / "spool"
    async with (
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(destination.url) as dst,
    ):
        # Parts above 100 KiB go through temporary files; the rest stay in memory.
        report = await copy_studies(
            src, dst, [STUDY, OTHER], spool_bytes=100 * KIB, spool_dir=spool
        )
        assert await verify_copy(src, dst, [STUDY, OTHER]) == []

    assert isinstance(report, CopyReport) and report.ok
    assert len(report.copied) == 14 and report.bytes_copied == 12 * 64 * KIB + 2 * 600 * KIB
    assert all(o.attempts == 1 and not o.converted for o in report.outcomes)
    assert_copied_identically(source, destination)
    # One source request per series, one instance per STOW-RS request, nothing left behind.
    gets = [r for r in source.requests if r.method == "GET" and "/series/" in r.path]
    assert len(gets) == 4 and all("/instances" not in r.path for r in gets)
    assert sorted(stow_parts(destination)) == sorted(o.sop_instance_uid for o in report.copied)
    assert list(spool.iterdir()) == []


async def test_instances_of_a_study_are_grouped_up_to_max_request_bytes(
    source: LoopbackServer, destination: LoopbackServer
) -> None:
    source.add_synthetic_study(STUDY, 10, 100 * KIB)
    async with (
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(destination.url) as dst,
    ):
        report = await copy_studies(src, dst, [STUDY], max_request_bytes=350 * KIB)

    assert report.ok and len(report.copied) == 10
    posts = [r for r in destination.requests if r.method == "POST"]
    assert [len(r.parts) for r in posts] == [3, 3, 3, 1]
    assert_copied_identically(source, destination)


async def test_a_second_run_sends_nothing_and_409s_count_as_already_present(
    source: LoopbackServer, destination: LoopbackServer
) -> None:
    source.add_synthetic_study(STUDY, 6, 32 * KIB, series_per_study=2)
    async with (
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(destination.url) as dst,
    ):
        first = await copy_studies(src, dst, [STUDY])
        destination.reset_stats()
        # The destination is listed first: what it has is not sent at all.
        second = await copy_studies(src, dst, [STUDY])
        assert destination.requests and {r.method for r in destination.requests} == {"GET"}
        # Without that listing, an Azure-like server answers 409 with 45070.
        destination.duplicate_policy = "conflict"
        third = await copy_studies(src, dst, [STUDY], skip_existing=False)

    assert len(first.copied) == 6
    assert second.ok and len(second.already_present) == 6 and not second.copied
    assert third.ok and len(third.already_present) == 6
    assert {o.reason for o in third.already_present} == {DUPLICATE_INSTANCE}


async def test_search_filters_and_verify_name_what_differs(
    source: LoopbackServer, destination: LoopbackServer
) -> None:
    sops = source.add_synthetic_study(STUDY, 4, 16 * KIB)
    source.add_synthetic_study(OTHER, 3, 16 * KIB)
    async with (
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(destination.url) as dst,
    ):
        report = await copy_studies(src, dst, {"StudyInstanceUID": STUDY})
        assert {o.study_instance_uid for o in report.outcomes} == {STUDY}
        await dst.delete_instance(STUDY, destination.get_instance(sops[0]).series_uid, sops[0])  # type: ignore[union-attr]
        differences = await verify_copy(src, dst, [STUDY, OTHER])

    assert len(report.copied) == 4
    by_study = {d.study_instance_uid: d for d in differences}
    assert by_study[STUDY].missing == {sops[0]} and not by_study[STUDY].extra
    assert len(by_study[OTHER].missing) == 3


async def test_a_refused_instance_is_reported_with_the_destination_reason(
    source: LoopbackServer, destination: LoopbackServer
) -> None:
    source.add_synthetic_study(STUDY, 4, 16 * KIB)
    destination.fail_instances_next(1, reason=VALIDATION_FAILED)
    async with (
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(destination.url) as dst,
    ):
        report = await copy_studies(src, dst, [STUDY], concurrency=1)

    (failed,) = report.failed
    assert failed.reason == VALIDATION_FAILED and "43264" in (failed.message or "")
    assert len(report.copied) == 3 and failed.attempts == 1  # refusals are not retried


async def test_a_copy_finishes_under_heavy_faults_at_both_ends(
    source: LoopbackServer, destination: LoopbackServer
) -> None:
    for study in (STUDY, OTHER):
        source.add_synthetic_study(study, 50, 16 * KIB, series_per_study=2)
    source.random_faults(0.2, 0.05, retry_after=1, seed=3)
    destination.random_faults(0.2, 0.05, retry_after=1, seed=4)
    async with (
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(destination.url) as dst,
    ):
        with anyio.fail_after(120):
            report = await copy_studies(src, dst, [STUDY, OTHER], concurrency=16)

    assert source.fault_counts["drop"] >= 1 and destination.fault_counts["drop"] >= 1
    assert destination.fault_counts["status"] >= 10
    assert report.ok, report.failed[:3]
    assert len(report.copied) == 100
    assert_copied_identically(source, destination)
    # Dropped uploads stored nothing: each instance was stored once.
    assert len(set(stow_parts(destination))) == len(stow_parts(destination)) == 100


MEMORY_SCRIPT = """
import anyio, json, sys, time
from pathlib import Path
from dicomweb_async import AsyncDICOMwebClient, copy_studies

async def main():
    async with AsyncDICOMwebClient(sys.argv[1]) as src, AsyncDICOMwebClient(sys.argv[2]) as dst:
        started = time.perf_counter()
        report = await copy_studies(src, dst, [sys.argv[3]], spool_dir=sys.argv[4])
        return report, time.perf_counter() - started

report, elapsed = anyio.run(main)
peak = 0
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) * 1024
print(json.dumps({"copied": len(report.copied), "bytes": report.bytes_copied,
                  "failed": len(report.failed), "peak": peak, "elapsed": elapsed}))
"""


def test_a_1_gib_copy_stays_under_150_mb(tmp_path: Path) -> None:
    # 64 instances of 16 MiB; the destination keeps hashes, not bytes.
    with (
        LoopbackServer(hashing="parts") as src,
        LoopbackServer(hashing="parts") as dst,
    ):
        src.add_synthetic_study(STUDY, 64, 16 * MIB, series_per_study=2)
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, src.url, dst.url, STUDY, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        at_source = {i.sop_uid: i.sha256 for i in src.instances(STUDY)}
        at_destination = {i.sop_uid: i.sha256 for i in dst.instances(STUDY)}
    assert result["copied"] == 64 and result["failed"] == 0
    assert result["bytes"] == 64 * 16 * MIB
    assert at_destination == at_source
    assert result["peak"] < 150 * 1000 * 1000, result
    assert list(tmp_path.iterdir()) == []


# -- real servers -----------------------------------------------------------------------------


def _generated_study(folder: Path) -> list[Path]:
    """A study of two series, three instances each, on disk."""
    files = []
    for series in ("1.2.826.0.1.3680043.8.498.4420001", "1.2.826.0.1.3680043.8.498.4420002"):
        files += write_instance_files(
            folder / series[-1], 3, 24 * KIB, study_uid=OTHER, series_uid=series
        )
    return files


async def _stored(server: OrthancServer, study: str) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of each instance of ``study``, in its stored encoding."""
    found: dict[str, str] = {}
    async with AsyncDICOMwebClient(server.dicomweb_url, auth=server.auth) as client:
        if not await client.search_for_instances(study):
            return found
        async with client.stream_study(study) as parts:
            async for part in parts:
                data = await part.read()
                uids = read_uids(data[: 64 * KIB])
                assert uids is not None
                found[uids[2]] = sha(data)
    return found


def _stored_now(server: OrthancServer, study: str) -> dict[str, str]:
    return anyio.run(_stored, server, study)


async def test_a_copy_between_two_orthancs(
    clean_orthanc: OrthancServer,
    clean_second_orthanc: OrthancServer,
    seed_files: list[Path],
    tmp_path: Path,
) -> None:
    generated = _generated_study(tmp_path / "generated")
    seed_study = str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).StudyInstanceUID)
    async with (
        AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as src,
        AsyncDICOMwebClient(clean_second_orthanc.dicomweb_url) as dst,
    ):
        stored = await src.store_folder([*seed_files, *generated])
        assert stored.ok
        report = await copy_studies(src, dst, [seed_study, OTHER])
        again = await copy_studies(src, dst, [seed_study, OTHER])
        differences = await verify_copy(src, dst, [seed_study, OTHER])

    assert report.ok and len(report.copied) == len(seed_files) + len(generated)
    assert again.ok and not again.copied and len(again.already_present) == len(report.copied)
    assert differences == []
    for study in (seed_study, OTHER):
        assert await _stored(clean_second_orthanc, study) == await _stored(clean_orthanc, study)


def _journal_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def test_a_killed_copy_resumes_from_its_journal(
    clean_orthanc: OrthancServer, clean_second_orthanc: OrthancServer, tmp_path: Path
) -> None:
    count, concurrency = 60, 2
    files = write_instance_files(tmp_path / "in", count, 16 * KIB, study_uid=STUDY)
    with httpx.Client(timeout=30) as http:
        for path in files:
            http.post(
                f"{clean_orthanc.url}/instances", content=path.read_bytes()
            ).raise_for_status()
    journal = tmp_path / "copy.journal"
    argv = [
        sys.executable,
        "-m",
        "dicomweb_async",
        "-q",
        "copy",
        "--from",
        clean_orthanc.dicomweb_url,
        "--to",
        clean_second_orthanc.dicomweb_url,
        STUDY,
        "--journal",
        str(journal),
        "--concurrency",
        str(concurrency),
        "--no-skip-existing",
    ]
    # One instance per request and series of one: the copy goes instance by instance.
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _journal_lines(journal) < 0.4 * count:
        assert process.poll() is None, "the copy ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    confirmed = _journal_lines(journal)
    assert confirmed < count, "the copy finished before it could be killed"
    present = _stored_now(clean_second_orthanc, STUDY)

    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)

    assert again.returncode == 0, again.stderr
    copied = re.search(r"^  copied\s+(\d+)", again.stdout, re.M)
    assert copied is not None and int(copied.group(1)) == count - confirmed, again.stdout
    assert _stored_now(clean_second_orthanc, STUDY) == _stored_now(clean_orthanc, STUDY)
    # Sent twice: only what the destination stored but the journal had not yet recorded,
    # at most what was in flight.
    assert len(present) - confirmed <= concurrency


async def test_a_copy_from_orthanc_into_azure(
    clean_orthanc: OrthancServer, seed_files: list[Path]
) -> None:
    red = pydicom.dcmread(seed_files[2])
    red.SOPInstanceUID = red.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    red.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = dataset_bytes(red)
    study = str(red.StudyInstanceUID)
    emulator = AzureDicomEmulator()
    async with (
        emulator.serve(api_version=2) as url,
        AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as src,
        AzureDICOMwebClient(url) as dst,
    ):
        assert (await src.store_instances([*seed_files, implicit])).ok
        report = await copy_studies(src, dst, [study])
        rerun = await copy_studies(src, dst, [study], skip_existing=False)
        assert await verify_copy(src, dst, [study]) == []
    assert emulator.errors == []

    assert report.ok and len(report.copied) == len(seed_files) + 1
    (converted,) = report.converted
    assert converted.sop_instance_uid == red.SOPInstanceUID
    assert rerun.ok and len(rerun.already_present) == len(report.copied)
    assert {o.reason for o in rerun.already_present} == {45070}


async def test_a_refusal_of_implicit_vr_is_answered_by_converting(
    source: LoopbackServer, seed_files: list[Path]
) -> None:
    red = pydicom.dcmread(seed_files[2])
    red.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    sop = source.add_instance_bytes(dataset_bytes(red))
    source.add_file(seed_files[0])  # explicit VR: sent once, as it is
    study = str(red.StudyInstanceUID)
    emulator = AzureDicomEmulator()
    async with (
        emulator.serve(api_version=2) as url,
        AsyncDICOMwebClient(source.url) as src,
        AsyncDICOMwebClient(url) as dst,  # generic: not told the service refuses implicit VR
    ):
        assert not dst.reject_implicit_vr
        report = await copy_studies(src, dst, [study], concurrency=1)
        stored = await dst.retrieve_study_metadata(study)
    assert report.ok and len(report.copied) == 2
    (converted,) = report.converted
    assert converted.sop_instance_uid == sop and converted.attempts == 2
    posts = [r.status for r in emulator.requests if r.method == "POST"]
    assert sorted(posts) == [200, 200, 409]  # the implicit one refused once, then stored
    assert {item["00080018"]["Value"][0] for item in stored} == {
        sop,
        str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).SOPInstanceUID),
    }
    assert emulator.errors == []
